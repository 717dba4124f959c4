//! Test PKI generated with `rcgen`: a CA, a server certificate for
//! `localhost`/`127.0.0.1` and a client certificate, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// PEM files of one generated PKI.
pub struct Pki {
    /// CA certificate.
    pub ca: PathBuf,
    /// Server certificate (SAN `localhost`, `127.0.0.1`).
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate (CN `client_cn` unless chosen by [`generate_for`]).
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
}

/// Generates a fresh PKI into `dir`, file names prefixed with `prefix`; the
/// client certificate's CN is `client_cn`.
pub fn generate(dir: &Path, prefix: &str) -> Pki {
    generate_for(dir, prefix, "client_cn")
}

/// [`generate`] with a chosen client certificate CN (e.g. a broker that takes
/// the CN as the username).
pub fn generate_for(dir: &Path, prefix: &str, client_cn: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{prefix} test CA"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
        .expect("ca cert");

    let mut server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().expect("server key");
    let server_cert = server.signed_by(&server_key, &ca).expect("server cert");

    let mut client = CertificateParams::new(Vec::<String>::new()).expect("client params");
    client
        .distinguished_name
        .push(DnType::CommonName, client_cn);
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().expect("client key");
    let client_cert = client.signed_by(&client_key, &ca).expect("client cert");

    let write = |name: &str, pem: String| {
        let path = dir.join(format!("{prefix}-{name}.pem"));
        std::fs::write(&path, pem).expect("write pem");
        path
    };
    Pki {
        ca: write("ca", ca.pem()),
        server_cert: write("server", server_cert.pem()),
        server_key: write("server-key", server_key.serialize_pem()),
        client_cert: write("client", client_cert.pem()),
        client_key: write("client-key", client_key.serialize_pem()),
    }
}

/// The throw-away PKI shipped in `examples/certs/`, copied into `dir` (so a
/// Mosquitto that drops root privileges can read it); the bridge itself reads
/// the shipped files through the examples' default paths.
pub fn shipped_copy(dir: &Path) -> Pki {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/certs");
    let copy = |name: &str| {
        let to = dir.join(format!("shipped-{name}"));
        std::fs::copy(shipped.join(name), &to)
            .unwrap_or_else(|e| panic!("examples/certs/{name}: {e}"));
        to
    };
    Pki {
        ca: copy("ca.pem"),
        server_cert: copy("server.pem"),
        server_key: copy("server.key"),
        client_cert: copy("client.pem"),
        client_key: copy("client.key"),
    }
}

impl Pki {
    /// Mosquitto listener options for TLS with this PKI (append after the listener line).
    pub fn mosquitto_conf(&self, require_certificate: bool) -> String {
        format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
            self.ca.display(),
            self.server_cert.display(),
            self.server_key.display(),
            require_certificate
        )
    }
}
