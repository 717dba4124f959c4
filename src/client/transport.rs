//! Dialing an endpoint: TCP, optionally wrapped in TLS (rustls with ring via
//! tokio-rustls), optionally upgraded to a WebSocket carrying MQTT in binary
//! frames (tokio-tungstenite on our own TCP/TLS stream, so `wss://` uses the
//! same TLS options as `mqtts://`). Also the failback probe (the same steps,
//! no MQTT) and the bare TCP probe made while backing off.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use super::ClientError;
use super::options::{Endpoint, TlsOptions};
use crate::config::certs::own_certificate_error;
use crate::protocol::quickack::QuickAck;
use crate::protocol::websocket;

/// A connected byte stream (plain TCP, TLS, or either carrying WebSocket frames).
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

/// A boxed connected stream.
pub type BoxStream = Box<dyn AsyncStream>;

/// Builds the rustls client configuration from [`TlsOptions`]: the CA file or
/// the system roots, an optional client certificate and key, ALPN, and no
/// verification at all when `insecure` is set.
pub fn client_config(opts: &TlsOptions) -> Result<ClientConfig, ClientError> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::TlsConfig(e.to_string()))?;
    let builder = if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        builder.with_root_certificates(root_store(opts.ca_file.as_deref())?)
    };
    let mut config = match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| {
                ClientError::TlsConfig(format!(
                    "client certificate {} / key {}: {}",
                    cert.display(),
                    key.display(),
                    own_certificate_error(&e)
                ))
            })?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(ClientError::TlsConfig(
                "cert_file and key_file must be given together".into(),
            ));
        }
    };
    config.alpn_protocols = opts.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}

fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, ClientError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = read_certs(path)?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ClientError::TlsConfig(format!(
                    "{}: no usable CA certificate",
                    path.display()
                )));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(ClientError::TlsConfig(format!(
                    "no system root certificates found ({} errors); set ca_file",
                    native.errors.len()
                )));
            }
        }
    }
    Ok(roots)
}

fn read_file(path: &Path) -> Result<Vec<u8>, ClientError> {
    fs::read(path).map_err(|e| ClientError::TlsConfig(format!("{}: {e}", path.display())))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::TlsConfig(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ClientError::TlsConfig(format!(
            "{}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ClientError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| ClientError::TlsConfig(format!("{}: private key: {e}", path.display())))
}

/// Dials endpoints of one broker; holds the TLS connector built once.
#[derive(Clone)]
pub struct Dialer {
    tls: Option<TlsConnector>,
    server_name: Option<String>,
    ws_headers: Vec<(String, String)>,
}

impl Dialer {
    /// A dialer for `opts`; builds the TLS config only if an endpoint uses TLS.
    /// `ws_headers` go into the upgrade request of WebSocket endpoints.
    pub fn new(
        endpoints: &[Endpoint],
        opts: &TlsOptions,
        ws_headers: &[(String, String)],
    ) -> Result<Self, ClientError> {
        let tls = if endpoints.iter().any(|e| e.tls) {
            Some(TlsConnector::from(Arc::new(client_config(opts)?)))
        } else {
            None
        };
        Ok(Dialer {
            tls,
            server_name: opts.server_name.clone(),
            ws_headers: ws_headers.to_vec(),
        })
    }

    /// TCP connect, for a TLS endpoint the TLS handshake, and for a WebSocket
    /// endpoint the upgrade. The caller bounds the time (connect timeout).
    pub async fn dial(&self, ep: &Endpoint) -> Result<BoxStream, ClientError> {
        let tcp = tcp_connect(ep).await?;
        self.wrap(ep, QuickAck::new(tcp)).await
    }

    /// For a TLS endpoint, the TLS handshake over `tcp`; for a WebSocket
    /// endpoint, then the upgrade; else `tcp` as is. The caller bounds the
    /// time (connect timeout).
    pub async fn wrap(&self, ep: &Endpoint, tcp: QuickAck) -> Result<BoxStream, ClientError> {
        // MQTT packets are small and latency matters more than batching.
        let _ = tcp.tcp.set_nodelay(true);
        if !ep.tls {
            return self.maybe_upgrade(ep, tcp).await;
        }
        let connector = self.tls.as_ref().ok_or_else(|| {
            ClientError::TlsConfig(format!("{}: TLS endpoint without TLS config", ep.url()))
        })?;
        let name = self.server_name.as_deref().unwrap_or(&ep.host);
        let server_name = ServerName::try_from(name.to_owned()).map_err(|e| {
            ClientError::TlsConfig(format!("invalid TLS server name {name:?}: {e}"))
        })?;
        let tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| ClientError::Tls {
                endpoint: ep.url(),
                source: e,
            })?;
        self.maybe_upgrade(ep, tls).await
    }

    /// For a WebSocket endpoint, the HTTP upgrade on `stream` (subprotocol
    /// `mqtt`, our extra headers); otherwise `stream` as it is.
    async fn maybe_upgrade<S>(&self, ep: &Endpoint, stream: S) -> Result<BoxStream, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(path) = &ep.ws_path else {
            return Ok(Box::new(stream));
        };
        let ws_err = |reason: String| ClientError::WebSocket {
            endpoint: ep.url(),
            reason,
        };
        let request = ws_request(ep, path, &self.ws_headers).map_err(ws_err)?;
        let (ws, _response) = tokio_tungstenite::client_async(request, stream)
            .await
            .map_err(|e| match e {
                tungstenite::Error::Io(source) => ClientError::Io {
                    endpoint: ep.url(),
                    source,
                },
                other => ws_err(other.to_string()),
            })?;
        Ok(Box::new(websocket::byte_stream(ws)))
    }
}

/// TCP connect to `ep`; a failure is [`ClientError::Unreachable`] (nothing
/// answered). The caller bounds the time.
pub async fn tcp_connect(ep: &Endpoint) -> Result<TcpStream, ClientError> {
    TcpStream::connect((ep.host.as_str(), ep.port))
        .await
        .map_err(|source| ClientError::Unreachable {
            endpoint: ep.url(),
            source,
        })
}

/// Whether `ep` accepts a TCP connection within `limit` (no TLS, no MQTT:
/// the cheap probe made while backing off; the socket is closed at once).
pub async fn tcp_answers(ep: &Endpoint, limit: std::time::Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, tcp_connect(ep)).await,
        Ok(Ok(_))
    )
}

/// The upgrade request of a WebSocket endpoint: its URL, `Sec-WebSocket-Protocol: mqtt`
/// and the extra headers (the handshake's own headers are filled in by tungstenite).
fn ws_request(
    ep: &Endpoint,
    path: &str,
    headers: &[(String, String)],
) -> Result<tungstenite::handshake::client::Request, String> {
    let scheme = if ep.tls { "wss" } else { "ws" };
    let host = if ep.host.contains(':') {
        format!("[{}]", ep.host)
    } else {
        ep.host.clone()
    };
    let mut request = format!("{scheme}://{host}:{}{path}", ep.port)
        .into_client_request()
        .map_err(|e| format!("invalid request URL: {e}"))?;
    let h = request.headers_mut();
    h.insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static(websocket::SUBPROTOCOL),
    );
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name `{name}`"))?;
        let value = http::HeaderValue::from_str(value)
            .map_err(|_| format!("invalid value for header `{name}`"))?;
        h.insert(name, value);
    }
    Ok(request)
}

/// Checks that `ep` is reachable: TCP connect and, for a TLS endpoint, a full
/// TLS handshake with `tls`, for a WebSocket endpoint the upgrade (with
/// `ws_headers`), within `limit`. No MQTT is spoken (this is the failback
/// probe, also usable by `mqbridge validate --check-endpoints`).
pub async fn check_endpoint(
    ep: &Endpoint,
    tls: &TlsOptions,
    ws_headers: &[(String, String)],
    limit: std::time::Duration,
) -> Result<(), ClientError> {
    let dialer = Dialer::new(std::slice::from_ref(ep), tls, ws_headers)?;
    match tokio::time::timeout(limit, dialer.dial(ep)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ClientError::Timeout {
            endpoint: ep.url(),
            stage: super::Stage::Dial,
        }),
    }
}

/// A verifier that accepts any server certificate (`insecure: true`). Signatures
/// are still checked so the handshake itself is sound.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(opts: &TlsOptions) -> String {
        match client_config(opts) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn config_errors_are_clear() {
        let missing = TlsOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsOptions::default()
        };
        assert!(err(&missing).contains("/nonexistent/ca.pem"));

        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let no_pem = TlsOptions {
            ca_file: Some(junk.clone()),
            ..TlsOptions::default()
        };
        assert!(
            err(&no_pem).contains("no PEM certificate"),
            "{}",
            err(&no_pem)
        );

        let half = TlsOptions {
            insecure: true,
            cert_file: Some(junk),
            ..TlsOptions::default()
        };
        assert!(err(&half).contains("together"));
    }

    #[test]
    fn insecure_config_with_alpn_builds() {
        let opts = TlsOptions {
            insecure: true,
            alpn: vec!["x-amzn-mqtt-ca".into()],
            ..TlsOptions::default()
        };
        let config = client_config(&opts).expect("config");
        assert_eq!(config.alpn_protocols, vec![b"x-amzn-mqtt-ca".to_vec()]);
    }

    #[test]
    fn plain_endpoints_need_no_tls_config() {
        let bad = TlsOptions {
            ca_file: Some("/nonexistent".into()),
            ..TlsOptions::default()
        };
        assert!(Dialer::new(&[Endpoint::tcp("h", 1)], &bad, &[]).is_ok());
        assert!(Dialer::new(&[Endpoint::ws("h", 1, "/")], &bad, &[]).is_ok());
        assert!(Dialer::new(&[Endpoint::tls("h", 1)], &bad, &[]).is_err());
        assert!(Dialer::new(&[Endpoint::ws("h", 1, "/").with_tls()], &bad, &[]).is_err());
    }

    #[test]
    fn ws_request_carries_path_subprotocol_and_headers() {
        let ep = Endpoint::ws("::1", 8080, "/mqtt?x=1").with_tls();
        let headers = [("X-Api-Key".to_string(), "secret".to_string())];
        let r = ws_request(&ep, "/mqtt?x=1", &headers).expect("request");
        assert_eq!(r.uri().to_string(), "wss://[::1]:8080/mqtt?x=1");
        assert_eq!(r.headers()["sec-websocket-protocol"], "mqtt");
        assert_eq!(r.headers()["x-api-key"], "secret");
        assert!(r.headers().contains_key("sec-websocket-key"));
        let bad = [("bad name".to_string(), "v".to_string())];
        assert!(ws_request(&ep, "/", &bad).is_err());
    }
}
