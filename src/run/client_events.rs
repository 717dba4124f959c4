//! Remote broker connections as observability sees them: a client's
//! [`ClientEvent`]s feed its metrics and the status board.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::client::{ClientEvent, ErrorKind, Stage};
use crate::metrics::DisconnectReason;
use crate::metrics::remote::{RemoteBrokerMetrics, endpoint_label};
use crate::metrics::status::StatusBoard;

/// The metric label of a failed attempt or a lost connection, from the
/// error's kind (its text is only logged, never read).
pub fn disconnect_reason(kind: ErrorKind) -> DisconnectReason {
    match kind {
        ErrorKind::Unreachable | ErrorKind::Io | ErrorKind::Closed => DisconnectReason::Io,
        ErrorKind::Timeout(Stage::TlsHandshake) | ErrorKind::Tls | ErrorKind::TlsConfig => {
            DisconnectReason::Tls
        }
        ErrorKind::Timeout(
            Stage::Dial
            | Stage::WebSocketHandshake
            | Stage::SendConnect
            | Stage::Connack
            | Stage::Write,
        ) => DisconnectReason::Io,
        ErrorKind::Refused => DisconnectReason::Refused,
        ErrorKind::Protocol | ErrorKind::WebSocket => DisconnectReason::Protocol,
        ErrorKind::ReconnectRequested => DisconnectReason::Requested,
        ErrorKind::KeepaliveTimeout => DisconnectReason::KeepaliveTimeout,
        ErrorKind::ServerDisconnect(_) | ErrorKind::QuotaExceeded => DisconnectReason::Other,
    }
}

/// Connection bookkeeping of one remote broker, fed with the client's
/// [`ClientEvent`]s (the client logs them itself; this only counts them and
/// updates the status board).
#[derive(Debug)]
pub struct ClientEventSink {
    metrics: RemoteBrokerMetrics,
    board: Arc<StatusBoard>,
    connected: bool,
}

impl ClientEventSink {
    /// A sink for the broker the `metrics` belong to.
    pub fn new(metrics: RemoteBrokerMetrics, board: Arc<StatusBoard>) -> Self {
        ClientEventSink {
            metrics,
            board,
            connected: false,
        }
    }

    /// Applies one event.
    pub fn apply(&mut self, event: &ClientEvent) {
        let broker = self.metrics.broker().to_owned();
        match event {
            ClientEvent::ConnectAttempt { endpoint } => self.metrics.attempt(endpoint),
            ClientEvent::Connected { endpoint, .. } => {
                self.connected = true;
                self.metrics.connected(endpoint);
                self.board
                    .set_connected(&broker, true, Some(endpoint_label(endpoint)));
            }
            ClientEvent::Disconnected { kind, .. } => {
                let reason = disconnect_reason(*kind);
                if std::mem::replace(&mut self.connected, false) {
                    self.metrics.disconnected(reason);
                    self.board.set_connected(&broker, false, None);
                } else {
                    self.metrics.connect_failed(reason);
                }
            }
            ClientEvent::Failover { .. } => self.metrics.failover(),
            ClientEvent::Failback { .. } => {
                // The client leaves the secondary on purpose to reconnect to the primary.
                self.metrics.failback();
                if std::mem::replace(&mut self.connected, false) {
                    self.metrics.disconnected(DisconnectReason::Requested);
                    self.board.set_connected(&broker, false, None);
                }
            }
            ClientEvent::Probe { .. } => {}
        }
    }

    /// Marks the broker disconnected (the link closed).
    pub fn closed(&mut self) {
        if std::mem::replace(&mut self.connected, false) {
            self.metrics.disconnected(DisconnectReason::Requested);
        }
        self.board.set_connected(self.metrics.broker(), false, None);
    }
}

/// Applies a client's events until its sender is gone or `shutdown`.
/// A lagging receiver skips what it missed (counts may then be low; the
/// connected state is corrected by the next Connected/Disconnected).
pub async fn watch_client(
    mut events: broadcast::Receiver<ClientEvent>,
    mut sink: ClientEventSink,
    shutdown: CancellationToken,
) {
    loop {
        // Cancel safety: `recv` on a broadcast receiver loses nothing when
        // the shutdown branch wins.
        let event = tokio::select! {
            e = events.recv() => e,
            () = shutdown.cancelled() => break,
        };
        match event {
            Ok(e) => sink.apply(&e),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                debug!(broker = %sink.metrics.broker(), missed = n, "client events lagged")
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    sink.closed();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnect_reasons_come_from_the_error_kind() {
        use DisconnectReason as R;
        for (kind, want) in [
            (ErrorKind::Unreachable, R::Io),
            (ErrorKind::Io, R::Io),
            (ErrorKind::Closed, R::Io),
            (ErrorKind::Tls, R::Tls),
            (ErrorKind::TlsConfig, R::Tls),
            (ErrorKind::Timeout(Stage::TlsHandshake), R::Tls),
            // Neither a TLS failure nor a refusal: nothing answered in time.
            (ErrorKind::Timeout(Stage::Dial), R::Io),
            (ErrorKind::Timeout(Stage::Connack), R::Io),
            (ErrorKind::Timeout(Stage::SendConnect), R::Io),
            (ErrorKind::Timeout(Stage::WebSocketHandshake), R::Io),
            (ErrorKind::Timeout(Stage::Write), R::Io),
            (ErrorKind::Refused, R::Refused),
            (ErrorKind::Protocol, R::Protocol),
            (ErrorKind::WebSocket, R::Protocol),
            (ErrorKind::ReconnectRequested, R::Requested),
            (ErrorKind::KeepaliveTimeout, R::KeepaliveTimeout),
            (
                ErrorKind::ServerDisconnect(
                    crate::protocol::reason::ReasonCode::ServerShuttingDown,
                ),
                R::Other,
            ),
            (ErrorKind::QuotaExceeded, R::Other),
        ] {
            assert_eq!(disconnect_reason(kind), want, "{kind:?}");
        }
    }

    #[test]
    fn timeouts_are_not_classified_by_their_text() {
        // "timed out connecting (TCP/TLS)" read as text was `tls`, and
        // "timed out waiting for CONNACK" was `refused`.
        for stage in [Stage::Dial, Stage::Connack] {
            let err = crate::client::ClientError::Timeout {
                endpoint: "mqtts://tls.example:8883".into(),
                stage,
            };
            assert_eq!(err.kind(), ErrorKind::Timeout(stage));
            assert_eq!(disconnect_reason(err.kind()), DisconnectReason::Io, "{err}");
        }
    }
}
