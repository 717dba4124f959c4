//! Accept loops: one per listener. A new socket is bounded by the handshake
//! budget ([`super::handshake`]) until its CONNECT is accepted, then by a
//! connection semaphore whose owned permit moves into the connection task
//! (as mini-redis does). The listener's [`Transport`] turns each accepted
//! socket into the byte stream the one connection engine
//! ([`connection::run`]) serves.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, info_span};

use super::connection::{self, Context};
use super::handshake::{Handshake, SourceFull};
use super::stats::RefuseReason;
use super::websocket;

/// Pause after an accept error (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// How a listener turns an accepted TCP socket into an MQTT byte stream.
#[derive(Clone)]
pub(crate) enum Transport {
    /// MQTT on the socket (`tcp://`).
    Tcp,
    /// MQTT in TLS (`tls://`).
    Tls(TlsAcceptor),
    /// MQTT in WebSocket binary frames (`ws://`).
    Ws,
    /// MQTT in WebSocket frames in TLS (`wss://`).
    Wss(TlsAcceptor),
}

impl Transport {
    /// The transport of a listener: TLS when it has an acceptor, WebSocket when asked.
    pub(crate) fn new(tls: Option<TlsAcceptor>, websocket: bool) -> Self {
        match (tls, websocket) {
            (None, false) => Transport::Tcp,
            (Some(a), false) => Transport::Tls(a),
            (None, true) => Transport::Ws,
            (Some(a), true) => Transport::Wss(a),
        }
    }
}

/// Accepts until shutdown. A new socket only takes a place in the
/// handshake budget; its connection permit is taken once its CONNECT is
/// accepted (in [`connection::run`]).
pub(crate) async fn run(listener: TcpListener, transport: Transport, ctx: Context) {
    // One allocation shared by the listener's connections: each task holds
    // a pointer, not a copy of every handle (issue 10: idle clients).
    let ctx = Arc::new(ctx);
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (socket, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                crate::warn_limited!(format!("accept-failed:{}", ctx.broker), broker = %ctx.broker, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let handshake = match ctx.handshakes.admit(peer.ip(), &ctx.shutdown) {
            Ok((handshake, made_room)) => {
                if made_room {
                    crate::warn_limited!(format!("max-pending-handshakes:{}", ctx.broker), broker = %ctx.broker, %peer, "max_pending_handshakes reached, closing the oldest pending socket");
                }
                handshake
            }
            Err(SourceFull) => {
                ctx.counters.refused(RefuseReason::HandshakePerIp);
                crate::warn_limited!(format!("max-pending-per-ip:{}", ctx.broker), broker = %ctx.broker, %peer, "max_pending_per_ip reached, connection closed");
                drop(socket);
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let ctx2 = ctx.clone();
        let transport = transport.clone();
        ctx.tracker.spawn(
            serve(socket, peer, transport, handshake, ctx2).instrument(info_span!("conn", %peer)),
        );
    }
}

/// Runs the transport handshake, then the MQTT connection. Every transport
/// handshake runs inside [`Handshake::bound`], so the budget's timeout and
/// eviction cover it. The task's future is as large as its largest state,
/// so each branch is boxed: a plain TCP connection must not pay for a TLS
/// session's size.
async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    handshake: Handshake,
    ctx: Arc<Context>,
) {
    match transport {
        Transport::Tcp => Box::pin(connection::run(socket, peer, None, handshake, ctx)).await,
        Transport::Ws => Box::pin(websocket::serve(socket, peer, None, handshake, ctx)).await,
        Transport::Tls(acceptor) => {
            Box::pin(serve_tls(socket, peer, acceptor, false, handshake, ctx)).await
        }
        Transport::Wss(acceptor) => {
            Box::pin(serve_tls(socket, peer, acceptor, true, handshake, ctx)).await
        }
    }
}

/// The TLS handshake, then MQTT (or, for `wss://`, the WebSocket upgrade) on it.
async fn serve_tls(
    socket: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    websocket: bool,
    handshake: Handshake,
    ctx: Arc<Context>,
) {
    let stream = match handshake.bound(acceptor.accept(socket)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tls_failed(&ctx, peer, &e);
            return;
        }
        Err(cut) => {
            if let Some(reason) = cut.refuse_reason() {
                ctx.counters.refused(reason);
            }
            return;
        }
    };
    let cn = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| super::tls::subject_cn(c));
    if websocket {
        websocket::serve(stream, peer, cn, handshake, ctx).await;
    } else {
        connection::run(stream, peer, cn, handshake, ctx).await;
    }
}

/// A failed TLS handshake: counted as `tls` and logged at warn, rate-limited
/// per broker (a scanner or a fleet with a wrong certificate would flood).
fn tls_failed(ctx: &Context, peer: SocketAddr, error: &std::io::Error) {
    ctx.counters.refused(RefuseReason::Tls);
    crate::warn_limited!(format!("tls-handshake:{}", ctx.broker), broker = %ctx.broker, %peer, %error, "TLS handshake failed, connection closed");
}
