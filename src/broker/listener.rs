//! Accept loops: one per listener, bounded by a connection semaphore whose
//! owned permit moves into the connection task (as mini-redis does). The
//! listener's [`Transport`] turns each accepted socket into the byte stream
//! the one connection engine ([`connection::run`]) serves.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use super::connection;
use super::router::RouterHandle;
use super::stats::{Counters, RefuseReason};
use super::websocket;
use super::{Limits, Security};

/// Pause after an accept error (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// What every connection of a broker shares.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub broker: String,
    pub router: RouterHandle,
    pub security: Arc<Security>,
    pub limits: Arc<Limits>,
    pub counters: Arc<Counters>,
    pub semaphore: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// TLS listener: the client certificate CN is the username.
    pub cert_cn_as_username: bool,
}

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

/// Accepts until shutdown.
pub(crate) async fn run(listener: TcpListener, transport: Transport, ctx: Context) {
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (socket, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!(broker = %ctx.broker, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = ctx.semaphore.clone().try_acquire_owned() else {
            ctx.counters.refused(RefuseReason::Limit);
            // Per connection attempt: rate-limited (one per broker per 10 s).
            if let Some(suppressed) =
                crate::metrics::ratelimit::allow(&format!("max-connections:{}", ctx.broker))
            {
                warn!(broker = %ctx.broker, %peer, suppressed, "max_connections reached, connection closed");
            }
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let ctx2 = ctx.clone();
        let transport = transport.clone();
        ctx.tracker.spawn(
            async move {
                serve(socket, peer, transport, ctx2).await;
                drop(permit);
            }
            .instrument(info_span!("conn", %peer)),
        );
    }
}

/// The task's future is as large as its largest state, so each branch is
/// boxed: a plain TCP connection must not pay for a TLS session's size.
async fn serve(socket: TcpStream, peer: SocketAddr, transport: Transport, ctx: Context) {
    match transport {
        Transport::Tcp => Box::pin(connection::run(socket, peer, None, ctx)).await,
        Transport::Ws => Box::pin(websocket::serve(socket, peer, None, ctx)).await,
        Transport::Tls(acceptor) => Box::pin(serve_tls(socket, peer, acceptor, false, ctx)).await,
        Transport::Wss(acceptor) => Box::pin(serve_tls(socket, peer, acceptor, true, ctx)).await,
    }
}

/// The TLS handshake, then MQTT (or, for `wss://`, the WebSocket upgrade) on it.
async fn serve_tls(
    socket: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    websocket: bool,
    ctx: Context,
) {
    {
        {
            let limit = ctx.limits.connect_timeout;
            let handshake = tokio::time::timeout(limit, acceptor.accept(socket)).await;
            let stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(broker = %ctx.broker, %peer, error = %e, "TLS handshake failed");
                    ctx.counters.refused(RefuseReason::Protocol);
                    return;
                }
                Err(_) => {
                    ctx.counters.refused(RefuseReason::Timeout);
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
                websocket::serve(stream, peer, cn, ctx).await;
            } else {
                connection::run(stream, peer, cn, ctx).await;
            }
        }
    }
}
