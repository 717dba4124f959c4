//! Test PKI generated with `rcgen`: a CA, a server certificate for
//! `localhost`/`127.0.0.1` and a client certificate with a chosen CN.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// PEM files of one generated PKI.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Generates a fresh PKI into `dir`; the client certificate's CN is `client_cn`.
pub fn generate(dir: &Path, client_cn: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "broker test CA");
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
        let path = dir.join(format!("{name}.pem"));
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
