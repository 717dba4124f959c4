//! Certificate files checked when the config is loaded, so `validate` (not
//! the first TLS handshake) says that a file cannot work with rustls, and why.

use std::path::Path;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_rustls::rustls;

/// What a certificate file is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertUse {
    /// A certificate chain we present (our client certificate, or a listener's
    /// server certificate): every certificate must be X.509 v3.
    Chain,
    /// CA certificates we trust: any parsable certificate (webpki also takes
    /// v1 roots).
    Trust,
}

/// Why a certificate file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertFileError {
    /// The file holds no `-----BEGIN CERTIFICATE-----` block.
    #[error("no PEM certificate found (expected `-----BEGIN CERTIFICATE-----`)")]
    NoCertificate,
    /// The PEM framing is broken.
    #[error("not a readable PEM file: {0}")]
    Pem(String),
    /// Certificate `index` (1-based) is X.509 v1 (or v2).
    #[error(
        "certificate {index} is X.509 v1; rustls needs v3 (regenerate it with extensions, e.g. `openssl x509 -req … -extfile v3.ext -extensions client`, as in examples/certs/README.md)"
    )]
    NotV3 {
        /// Position in the file, from 1.
        index: usize,
    },
    /// Certificate `index` does not parse as X.509.
    #[error("certificate {index} is not a valid X.509 certificate ({reason})")]
    Invalid {
        /// Position in the file, from 1.
        index: usize,
        /// webpki's reason.
        reason: String,
    },
}

/// Checks the certificates in the PEM text `pem` for `usage`.
pub fn check_pem(pem: &[u8], usage: CertUse) -> Result<(), CertFileError> {
    let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertFileError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(CertFileError::NoCertificate);
    }
    for (i, der) in certs.iter().enumerate() {
        let index = i + 1;
        let res = match usage {
            CertUse::Chain => webpki::EndEntityCert::try_from(der).map(drop),
            CertUse::Trust => webpki::anchor_from_trusted_cert(der).map(drop),
        };
        match res {
            Ok(()) => {}
            Err(webpki::Error::UnsupportedCertVersion) => {
                return Err(CertFileError::NotV3 { index });
            }
            Err(e) => {
                return Err(CertFileError::Invalid {
                    index,
                    reason: describe(&e),
                });
            }
        }
    }
    Ok(())
}

/// webpki's refusal of a certificate file, in the user's terms.
fn describe(e: &webpki::Error) -> String {
    use webpki::Error as E;
    match e {
        E::BadDer | E::TrailingData(_) => "it is not valid DER inside the PEM block".into(),
        E::BadDerTime => "its validity dates cannot be read".into(),
        E::CaUsedAsEndEntity => "it is a CA certificate where an end-entity one is needed".into(),
        E::EndEntityUsedAsCa => "it is an end-entity certificate where a CA is needed".into(),
        E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            "it is signed with an algorithm rustls does not support".into()
        }
        E::ExtensionValueInvalid | E::UnsupportedCriticalExtension => {
            "it has an extension that is invalid or not supported".into()
        }
        other => format!("webpki refuses it ({other:?})"),
    }
}

/// Why rustls refused *our own* certificate chain and key (rustls says
/// "invalid peer certificate" with its Debug text even for our own files):
/// in user terms, for a message that names the files.
pub fn own_certificate_error(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))
            if matches!(
                other.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::UnsupportedCertVersion)
            ) =>
        {
            CertFileError::NotV3 { index: 1 }.to_string()
        }
        rustls::Error::InvalidCertificate(c) => format!("the certificate is unusable ({c:?})"),
        rustls::Error::InconsistentKeys(_) => {
            "the private key does not belong to the certificate".to_owned()
        }
        other => other.to_string(),
    }
}

/// [`check_pem`] on a file (`Ok` when it cannot be read: the caller reports that).
pub fn check_file(path: &Path, usage: CertUse) -> Result<(), CertFileError> {
    match std::fs::read(path) {
        Ok(pem) => check_pem(&pem, usage),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &[u8] = include_bytes!("../../tests/certs/x509-v1.pem");
    const CLIENT: &[u8] = include_bytes!("../../examples/certs/client.pem");
    const CA: &[u8] = include_bytes!("../../examples/certs/ca.pem");

    #[test]
    fn v1_chain_certificates_are_refused_with_the_reason() {
        let err = check_pem(V1, CertUse::Chain).unwrap_err();
        assert_eq!(err, CertFileError::NotV3 { index: 1 });
        assert!(
            err.to_string().contains("X.509 v1; rustls needs v3"),
            "{err}"
        );
    }

    #[test]
    fn shipped_example_certificates_pass() {
        assert_eq!(check_pem(CLIENT, CertUse::Chain), Ok(()));
        assert_eq!(check_pem(CA, CertUse::Trust), Ok(()));
        assert_eq!(check_pem(CA, CertUse::Chain), Ok(()));
    }

    #[test]
    fn own_v1_certificate_error_is_in_plain_words() {
        let e = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
            rustls::OtherError(std::sync::Arc::new(webpki::Error::UnsupportedCertVersion)),
        ));
        let text = own_certificate_error(&e);
        assert!(text.contains("X.509 v1; rustls needs v3"), "{text}");
        assert!(
            !text.contains("peer") && !text.contains("OtherError"),
            "{text}"
        );
    }

    #[test]
    fn junk_is_refused() {
        assert_eq!(
            check_pem(b"hello", CertUse::Trust),
            Err(CertFileError::NoCertificate)
        );
        let bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = check_pem(bad, CertUse::Chain).unwrap_err();
        assert!(
            matches!(err, CertFileError::Invalid { index: 1, .. }),
            "{err:?}"
        );
        // In the user's terms, not webpki's Debug text.
        let text = err.to_string();
        assert!(text.contains("not valid DER"), "{text}");
        assert!(!text.contains("BadDer"), "{text}");
    }
}
