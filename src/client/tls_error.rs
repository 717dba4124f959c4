//! TLS handshake failures in the user's terms: which side refused what, and
//! what to check in the config — instead of rustls' Debug text
//! (`invalid peer certificate: Other(OtherError(UnsupportedCertVersion))`).
//! Matching is on rustls' and webpki's error types, never on their text.

use std::io;

use tokio_rustls::rustls::{AlertDescription, CertificateError, Error as TlsError};

/// What went wrong in a handshake where we are the client (the peer is the
/// server), from the IO error tokio-rustls returns.
pub fn describe(e: &io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<TlsError>()) {
        Some(tls) => describe_tls(tls),
        None => e.to_string(),
    }
}

fn describe_tls(e: &TlsError) -> String {
    match e {
        TlsError::InvalidCertificate(c) => {
            format!("the server's certificate was refused: {}", certificate(c))
        }
        TlsError::AlertReceived(alert) => match alert {
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked => format!(
                "the server refused our client certificate (alert `{alert:?}`): check `tls.cert_file` and `tls.key_file`, and that the server trusts their CA"
            ),
            AlertDescription::NoApplicationProtocol => {
                "the server accepts none of our ALPN protocols (`tls.alpn`)".to_owned()
            }
            other => format!("the server ended the handshake (alert `{other:?}`)"),
        },
        TlsError::NoApplicationProtocol => {
            "the server accepts none of our ALPN protocols (`tls.alpn`)".to_owned()
        }
        other => other.to_string(),
    }
}

/// Why the server's certificate was refused.
fn certificate(c: &CertificateError) -> String {
    match c {
        CertificateError::UnknownIssuer => {
            "it is not signed by a CA we trust (`tls.ca_file`, or the system roots without it)"
                .to_owned()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "it is not valid for the host name we connect to (set `tls.server_name` if the broker's name differs)".to_owned()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "it has expired".to_owned()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "it is not valid yet (check this machine's clock)".to_owned()
        }
        CertificateError::BadEncoding => "it is not valid DER".to_owned(),
        CertificateError::BadSignature => "its signature does not verify".to_owned(),
        CertificateError::Revoked => "it has been revoked".to_owned(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "it is not a server certificate (extended key usage)".to_owned()
        }
        CertificateError::Other(other) => {
            match other.0.downcast_ref::<webpki::Error>() {
                Some(webpki::Error::UnsupportedCertVersion) => {
                    "it is X.509 v1; rustls needs v3 (the broker's certificate must be regenerated with extensions)".to_owned()
                }
                Some(webpki::Error::CaUsedAsEndEntity) => {
                    "it is a CA certificate, not a server certificate".to_owned()
                }
                Some(w) => format!("{w:?}"),
                None => other.to_string(),
            }
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_rustls::rustls::OtherError;

    use super::*;

    fn io(e: TlsError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn v1_server_certificate_is_named_without_debug_text() {
        let e = io(TlsError::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(webpki::Error::UnsupportedCertVersion)),
        )));
        let text = describe(&e);
        assert_eq!(
            text,
            "the server's certificate was refused: it is X.509 v1; rustls needs v3 (the broker's certificate must be regenerated with extensions)"
        );
        assert!(!text.contains("OtherError"));
    }

    #[test]
    fn common_failures_say_what_to_check() {
        let unknown = describe(&io(TlsError::InvalidCertificate(
            CertificateError::UnknownIssuer,
        )));
        assert!(unknown.contains("tls.ca_file"), "{unknown}");
        let alert = describe(&io(TlsError::AlertReceived(
            AlertDescription::CertificateRequired,
        )));
        assert!(alert.contains("our client certificate"), "{alert}");
        let plain = describe(&io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(
            plain,
            io::Error::from(io::ErrorKind::ConnectionReset).to_string()
        );
    }
}
