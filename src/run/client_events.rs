//! Remote broker connections as observability sees them: a client's
//! [`ClientEvent`]s feed its metrics and the status board.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::client::ClientEvent;
use crate::metrics::DisconnectReason;
use crate::metrics::remote::{RemoteBrokerMetrics, endpoint_label};
use crate::metrics::status::StatusBoard;

/// Maps a free-text disconnect reason onto the fixed label enum (the text
/// itself is only logged, never a label).
pub fn classify_disconnect(reason: &str) -> DisconnectReason {
    let r = reason.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| r.contains(w));
    if has(&["keepalive", "keep-alive", "ping"]) {
        DisconnectReason::KeepaliveTimeout
    } else if has(&["tls", "certificate", "handshake"]) {
        DisconnectReason::Tls
    } else if has(&["refused by broker", "connack", "not authorized", "bad user"]) {
        DisconnectReason::Refused
    } else if has(&["protocol", "malformed", "packet"]) {
        DisconnectReason::Protocol
    } else if has(&["requested", "shutdown", "stall", "reload", "failback"]) {
        DisconnectReason::Requested
    } else if has(&[
        "i/o",
        "io error",
        "os error",
        "connection refused",
        "reset",
        "closed",
        "eof",
        "broken pipe",
        "timed out",
        "unreachable",
    ]) {
        DisconnectReason::Io
    } else {
        DisconnectReason::Other
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
            ClientEvent::Disconnected { endpoint, reason } => {
                // The client formats reasons as "<endpoint>: <what>"; only
                // the "what" is classified, so a host name cannot sway it.
                let what = reason
                    .strip_prefix(endpoint.as_str())
                    .map_or(reason.as_str(), |r| r.trim_start_matches(':'));
                let reason = classify_disconnect(what);
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
    fn disconnect_reasons_map_to_fixed_labels() {
        assert_eq!(
            classify_disconnect("keepalive timeout"),
            DisconnectReason::KeepaliveTimeout
        );
        assert_eq!(
            classify_disconnect("TLS handshake failed: bad certificate"),
            DisconnectReason::Tls
        );
        assert_eq!(
            classify_disconnect("CONNACK refused: not authorized"),
            DisconnectReason::Refused
        );
        assert_eq!(
            classify_disconnect("malformed packet"),
            DisconnectReason::Protocol
        );
        assert_eq!(classify_disconnect("eof"), DisconnectReason::Io);
        // A TCP-level refusal is IO; a CONNACK refusal is `refused`.
        assert_eq!(
            classify_disconnect("Connection refused (os error 111)"),
            DisconnectReason::Io
        );
        assert_eq!(
            classify_disconnect("connection refused by broker: bad user name or password"),
            DisconnectReason::Refused
        );
        assert_eq!(classify_disconnect("???"), DisconnectReason::Other);
    }
}
