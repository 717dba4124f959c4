//! `ws://` and `wss://` listeners: the HTTP upgrade (subprotocol `mqtt`, any
//! path), then the usual connection on the WebSocket's binary frames.

use std::net::SocketAddr;
use std::sync::Arc;

use super::connection;
use super::connection::Context;
use super::handshake::Handshake;
use super::stats::RefuseReason;
use crate::protocol::websocket::{self, SUBPROTOCOL};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

/// Upgrades `stream` inside the socket's handshake budget (its timeout and
/// eviction, as for a TLS handshake) and serves MQTT on it; a failed or late
/// upgrade is counted as a refused connection.
pub(crate) async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    cert_cn: Option<String>,
    handshake: Handshake,
    ctx: Arc<Context>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let upgrade = tokio_tungstenite::accept_hdr_async(stream, negotiate);
    match handshake.bound(upgrade).await {
        Ok(Ok(ws)) => {
            connection::run(websocket::byte_stream(ws), peer, cert_cn, handshake, ctx).await
        }
        Ok(Err(e)) => {
            crate::warn_limited!(format!("ws-upgrade:{}", ctx.broker), broker = %ctx.broker, %peer, error = %e, "WebSocket upgrade failed, connection closed");
            ctx.counters.refused(RefuseReason::Protocol);
        }
        Err(cut) => {
            if let Some(reason) = cut.refuse_reason() {
                ctx.counters.refused(reason);
            }
        }
    }
}

/// Picks the `mqtt` subprotocol. A client that offers subprotocols but not
/// `mqtt` is refused (it speaks something else); one that offers none is
/// accepted, as Mosquitto does.
#[allow(clippy::result_large_err)] // the callback type is tungstenite's
fn negotiate(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered: Vec<&str> = req
        .headers()
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if offered.is_empty() {
        return Ok(resp);
    }
    if !offered.iter().any(|p| p.eq_ignore_ascii_case(SUBPROTOCOL)) {
        let mut refusal = ErrorResponse::new(Some(format!(
            "this endpoint speaks the `{SUBPROTOCOL}` WebSocket subprotocol"
        )));
        *refusal.status_mut() = http::StatusCode::BAD_REQUEST;
        return Err(refusal);
    }
    resp.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(protocols: Option<&str>) -> Request {
        let mut b = http::Request::builder().uri("/mqtt");
        if let Some(p) = protocols {
            b = b.header("Sec-WebSocket-Protocol", p);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn picks_mqtt_among_offers() {
        let resp =
            negotiate(&request(Some("mqttv3.1, mqtt")), Response::new(())).expect("accepted");
        assert_eq!(resp.headers()["sec-websocket-protocol"], "mqtt");
    }

    #[test]
    fn no_offer_is_accepted_without_a_subprotocol() {
        let resp = negotiate(&request(None), Response::new(())).expect("accepted");
        assert!(!resp.headers().contains_key("sec-websocket-protocol"));
    }

    #[test]
    fn other_subprotocols_are_refused() {
        let refused =
            negotiate(&request(Some("graphql-ws")), Response::new(())).expect_err("refused");
        assert_eq!(refused.status(), http::StatusCode::BAD_REQUEST);
    }
}
