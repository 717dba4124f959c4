//! The client core: one task per remote broker that dials its endpoints
//! (TCP/TLS), speaks MQTT 5, 3.1.1 or 3.1 (5 by default, falling back to
//! 3.1.1; see [`wire`]) through the shared protocol state machines,
//! reconnects with backoff, fails over and fails back, and serves a [`Link`].
//!
//! Entry point: [`spawn`]. Pure parts: [`backoff`] and [`failover`].
//!
//! [`Link`]: crate::link::Link

pub(crate) mod backoff;
mod conn;
mod connection;
pub(crate) mod durable;
#[cfg(test)]
mod durable_tests;
pub(crate) mod failover;
pub(crate) mod options;
pub(crate) mod recovery;
mod session;
mod subs;
mod task;
mod tls_error;
pub(crate) mod transport;
pub(crate) mod wire;

use std::io;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::link::{Delivery, Link, LinkState};
use crate::protocol::reason::ReasonCode;

pub use options::{
    BackoffOptions, ClientOptions, Endpoint, FailbackOptions, SettingsSlot, TlsOptions,
};
pub use tls_error::describe as describe_tls;
pub use transport::check_endpoint;

/// Why connecting to, or talking with, an endpoint failed. Every variant that
/// concerns one endpoint names it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TLS settings cannot be turned into a rustls configuration.
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// Nothing answered: the TCP connect failed or timed out.
    #[error("{endpoint}: {source}")]
    Unreachable {
        /// Endpoint URL.
        endpoint: String,
        /// The IO error (a timeout is `ErrorKind::TimedOut`).
        source: io::Error,
    },
    /// Socket IO failed on a connected socket.
    #[error("{endpoint}: {source}")]
    Io {
        /// Endpoint URL.
        endpoint: String,
        /// The IO error.
        source: io::Error,
    },
    /// The TLS handshake failed (e.g. unknown CA, name mismatch).
    #[error("{endpoint}: TLS handshake failed: {}", tls_error::describe(source))]
    Tls {
        /// Endpoint URL.
        endpoint: String,
        /// The handshake error from rustls.
        source: io::Error,
    },
    /// The WebSocket upgrade failed (e.g. an HTTP error status, a wrong path,
    /// or a server that did not accept the `mqtt` subprotocol).
    #[error("{endpoint}: WebSocket handshake failed: {reason}")]
    WebSocket {
        /// Endpoint URL.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// A step did not finish in time.
    #[error("{endpoint}: timed out {stage}")]
    Timeout {
        /// Endpoint URL.
        endpoint: String,
        /// The step that ran out of time.
        stage: Stage,
    },
    /// The broker refused the CONNECT.
    #[error("{endpoint}: connection refused by broker: {reason}")]
    Refused {
        /// Endpoint URL.
        endpoint: String,
        /// CONNACK return code, described.
        reason: String,
        /// The server reference of an MQTT 5 refusal with 0x9C (use another
        /// server) or 0x9D (server moved), if it carried one.
        server_reference: Option<String>,
    },
    /// The broker sent something that is not valid MQTT, or broke the protocol.
    #[error("{endpoint}: protocol error: {reason}")]
    Protocol {
        /// Endpoint URL.
        endpoint: String,
        /// What was wrong.
        reason: String,
    },
    /// The broker closed the connection.
    #[error("{endpoint}: connection closed by broker")]
    Closed {
        /// Endpoint URL.
        endpoint: String,
    },
    /// The connection was dropped on request (the stall watchdog's reconnect).
    #[error("{endpoint}: reconnect requested")]
    ReconnectRequested {
        /// Endpoint URL.
        endpoint: String,
    },
    /// No PINGRESP (or any packet) within 1.5 × keepalive: a half-open link.
    #[error("{endpoint}: keepalive timeout, no answer from broker")]
    KeepaliveTimeout {
        /// Endpoint URL.
        endpoint: String,
    },
    /// The broker ended the connection with an MQTT 5 DISCONNECT (0x8B
    /// server shutting down, 0x9C use another server...). The server
    /// reference of a 0x9C/0x9D one, if it names one of our endpoints, is
    /// dialed next.
    #[error("{endpoint}: broker disconnected: {code}{}{}",
        reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default(),
        server_reference.as_deref().map(|r| format!(", server reference {r}")).unwrap_or_default())]
    ServerDisconnect {
        /// Endpoint URL.
        endpoint: String,
        /// The DISCONNECT's reason code.
        code: ReasonCode,
        /// Its server reference, if any.
        server_reference: Option<String>,
        /// Its reason string, if any.
        reason: Option<String>,
    },
    /// The broker answered a PUBLISH with 0x97 (quota exceeded): we drop
    /// the connection and send the message again after the backoff.
    #[error("{endpoint}: broker quota exceeded (0x97), backing off")]
    QuotaExceeded {
        /// Endpoint URL.
        endpoint: String,
    },
}

/// The step of a connection that ran out of time ([`ClientError::Timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// TCP connect plus any TLS or WebSocket handshake, in one budget (an
    /// endpoint check or failback probe).
    Dial,
    /// The TLS handshake (`mqtts://`, `wss://`).
    TlsHandshake,
    /// The WebSocket upgrade (`ws://`).
    WebSocketHandshake,
    /// Sending CONNECT.
    SendConnect,
    /// Waiting for the broker's CONNACK.
    Connack,
    /// Writing to a connected broker.
    Write,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Dial => "connecting (TCP/TLS)",
            Stage::TlsHandshake => "in the TLS handshake",
            Stage::WebSocketHandshake => "in the WebSocket handshake",
            Stage::SendConnect => "sending CONNECT",
            Stage::Connack => "waiting for CONNACK",
            Stage::Write => "writing to the broker",
        })
    }
}

/// What kind of failure a [`ClientError`] is, for callers that act on it
/// (metric labels, retry decisions) without reading its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// [`ClientError::TlsConfig`]: the TLS settings are unusable.
    TlsConfig,
    /// [`ClientError::Unreachable`]: the TCP connect failed or timed out.
    Unreachable,
    /// [`ClientError::Io`]: socket IO failed on a connected socket.
    Io,
    /// [`ClientError::Tls`]: the TLS handshake failed.
    Tls,
    /// [`ClientError::WebSocket`]: the WebSocket upgrade failed.
    WebSocket,
    /// [`ClientError::Timeout`]: the step named ran out of time.
    Timeout(Stage),
    /// [`ClientError::Refused`]: the broker refused the CONNECT.
    Refused,
    /// [`ClientError::Protocol`]: the broker broke the protocol.
    Protocol,
    /// [`ClientError::Closed`]: the broker closed the connection.
    Closed,
    /// [`ClientError::ReconnectRequested`]: we dropped the connection on purpose.
    ReconnectRequested,
    /// [`ClientError::KeepaliveTimeout`]: no answer within the keepalive allowance.
    KeepaliveTimeout,
    /// [`ClientError::ServerDisconnect`]: the broker sent DISCONNECT.
    ServerDisconnect(ReasonCode),
    /// [`ClientError::QuotaExceeded`]: the broker's quota ran out (0x97).
    QuotaExceeded,
}

impl ClientError {
    /// The kind of failure, to act on without reading the text.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::TlsConfig(_) => ErrorKind::TlsConfig,
            ClientError::Unreachable { .. } => ErrorKind::Unreachable,
            ClientError::Io { .. } => ErrorKind::Io,
            ClientError::Tls { .. } => ErrorKind::Tls,
            ClientError::WebSocket { .. } => ErrorKind::WebSocket,
            ClientError::Timeout { stage, .. } => ErrorKind::Timeout(*stage),
            ClientError::Refused { .. } => ErrorKind::Refused,
            ClientError::Protocol { .. } => ErrorKind::Protocol,
            ClientError::Closed { .. } => ErrorKind::Closed,
            ClientError::ReconnectRequested { .. } => ErrorKind::ReconnectRequested,
            ClientError::KeepaliveTimeout { .. } => ErrorKind::KeepaliveTimeout,
            ClientError::ServerDisconnect { code, .. } => ErrorKind::ServerDisconnect(*code),
            ClientError::QuotaExceeded { .. } => ErrorKind::QuotaExceeded,
        }
    }

    /// The server reference of a CONNACK refusal or DISCONNECT with 0x9C
    /// (use another server) or 0x9D (server moved): another server to use.
    pub fn server_reference(&self) -> Option<&str> {
        match self {
            ClientError::ServerDisconnect {
                code: ReasonCode::UseAnotherServer | ReasonCode::ServerMoved,
                server_reference,
                ..
            }
            | ClientError::Refused {
                server_reference, ..
            } => server_reference.as_deref(),
            _ => None,
        }
    }

    /// Whether nothing answered on the endpoint (TCP connect refused or timed
    /// out), as opposed to a peer that answered and then failed us.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

/// A lifecycle event of one broker connection, for metrics and tests.
/// Sent on [`ClientOptions::events`] when set (a full or absent receiver never blocks the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Dialing `endpoint` (TCP, TLS, CONNECT).
    ConnectAttempt {
        /// Endpoint URL.
        endpoint: String,
    },
    /// CONNACK accepted on `endpoint`.
    Connected {
        /// Endpoint URL.
        endpoint: String,
        /// Whether the broker resumed our session.
        session_present: bool,
    },
    /// A connect attempt failed or an established link was lost.
    Disconnected {
        /// Endpoint URL.
        endpoint: String,
        /// What kind of failure it was (metric labels come from this).
        kind: ErrorKind,
        /// Human reason, for logs (never parsed).
        reason: String,
    },
    /// Moving to another endpoint after a failure.
    Failover {
        /// Endpoint that failed.
        from: String,
        /// Endpoint to dial next.
        to: String,
    },
    /// A probe of the primary (TCP + TLS handshake) finished.
    Probe {
        /// The primary's URL.
        endpoint: String,
        /// Whether the probe succeeded.
        ok: bool,
    },
    /// Enough good probes: leaving the secondary for the primary.
    Failback {
        /// The primary's URL.
        to: String,
    },
}

/// Starts the connection task of one remote broker on `tracker` and returns
/// the [`Link`] pipes use plus the stream of incoming messages.
///
/// The task runs until `shutdown` is cancelled or [`Link::shutdown`] is
/// called; it then sends DISCONNECT (no will), fails whatever is still
/// pending with `LinkError::Closed` and sets the state to `Closed`. When every
/// clone of the `Link` is dropped, it first finishes the publishes in flight
/// (reconnecting if it must), then closes the same way. Wait for it with
/// `tracker.close(); tracker.wait()`.
///
/// Must be called inside a tokio runtime. Configuration problems that only
/// show when dialing (unreadable TLS files, ...) are reported as
/// `Disconnected { reason }` and retried with backoff.
pub fn spawn(
    opts: ClientOptions,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> (Link, mpsc::Receiver<Delivery>) {
    let (req_tx, req_rx) = mpsc::channel(opts.request_capacity.max(1));
    let (del_tx, del_rx) = mpsc::channel(opts.delivery_capacity.max(1));
    let first = opts
        .endpoints
        .first()
        .map(Endpoint::url)
        .unwrap_or_default();
    let (state_tx, state_rx) = watch::channel(LinkState::Connecting {
        endpoint: first,
        attempt: 1,
    });
    let link = Link::new(opts.name.clone(), req_tx, state_rx);
    // Debug level: entered on every poll of the connection task, an info
    // span costs ~1k instructions per message; its events name the broker.
    let span = tracing::debug_span!("client", broker = %opts.name);
    let task = task::Task::new(opts, shutdown, req_rx, del_tx, state_tx);
    tracker.spawn(task.run().instrument(span));
    (link, del_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_0x9c_and_0x9d_carry_a_server_reference_to_follow() {
        let disconnect = |code| ClientError::ServerDisconnect {
            endpoint: "mqtt://a:1883".into(),
            code,
            server_reference: Some("b:1883".into()),
            reason: None,
        };
        assert_eq!(
            disconnect(ReasonCode::UseAnotherServer).server_reference(),
            Some("b:1883")
        );
        assert_eq!(
            disconnect(ReasonCode::ServerMoved).server_reference(),
            Some("b:1883")
        );
        assert_eq!(
            disconnect(ReasonCode::ServerShuttingDown).server_reference(),
            None
        );
        let refused = ClientError::Refused {
            endpoint: "mqtt://a:1883".into(),
            reason: "server moved (0x9D)".into(),
            server_reference: Some("b".into()),
        };
        assert_eq!(refused.server_reference(), Some("b"));
    }
}
