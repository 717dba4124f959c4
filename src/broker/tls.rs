//! TLS listener configuration (rustls) and the client certificate's CN.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

use super::ServerTls;

/// Builds the acceptor of a TLS listener; the error names the failing file.
pub(crate) fn acceptor(tls: &ServerTls) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("certificate file {}: {e}", tls.cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "certificate file {}: no certificate",
            tls.cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| format!("key file {}: {e}", tls.key_file.display()))?;
    let builder = ServerConfig::builder();
    let builder = match &tls.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("client CA file {}: {e}", ca.display()))?;
            for c in cas {
                roots
                    .add(c)
                    .map_err(|e| format!("client CA file {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            let verifier = if tls.require_client_cert {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| format!("client CA file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None if tls.require_client_cert => {
            return Err("require_client_cert needs client_ca_file".into());
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "certificate {} / key {}: {}",
            tls.cert_file.display(),
            tls.key_file.display(),
            crate::config::certs::own_certificate_error(&e)
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The subject common name of a DER certificate, if it has one. A minimal,
/// bounds-checked DER walk: Certificate → TBSCertificate → subject Name →
/// the attribute with OID 2.5.4.3.
pub(crate) fn subject_cn(der: &[u8]) -> Option<String> {
    const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
    let (_, cert, _) = tlv(der)?; // Certificate SEQUENCE
    let (_, mut tbs, _) = tlv(cert)?; // TBSCertificate SEQUENCE
    // Optional [0] version.
    let (tag, _, rest) = tlv(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        tbs = tlv(tbs)?.2;
    }
    let (_, mut name, _) = tlv(tbs)?;
    let mut cn = None;
    while !name.is_empty() {
        let (_, mut set, rest) = tlv(name)?; // RelativeDistinguishedName SET
        name = rest;
        while !set.is_empty() {
            let (_, atv, rest) = tlv(set)?; // AttributeTypeAndValue SEQUENCE
            set = rest;
            let (tag, oid, value) = tlv(atv)?;
            if tag == 0x06 && oid == OID_CN {
                let (_, v, _) = tlv(value)?;
                cn = String::from_utf8(v.to_vec()).ok();
            }
        }
    }
    cn
}

/// Splits one DER TLV off `input`: (tag, contents, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for _ in 0..n {
            let (&b, r) = rest.split_first()?;
            rest = r;
            len = (len << 8) | usize::from(b);
        }
        len
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cn_from_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Org");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "device-42");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(subject_cn(cert.der()).as_deref(), Some("device-42"));
    }

    #[test]
    fn garbage_has_no_cn() {
        assert_eq!(subject_cn(&[]), None);
        assert_eq!(subject_cn(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject_cn(&[0x30, 0x03, 0x30, 0x01]), None);
    }
}
