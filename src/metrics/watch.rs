//! Small runtime glue: turns client connection events and pipe progress into
//! metrics, log events and status-board updates.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::events::{PipeRecovered, PipeStalled};
use super::health::{Action, PipeProgress, Transition, Watchdog};
use super::pipe::PipeMetrics;
use super::reasons::DisconnectReason;
use super::remote::{RemoteBrokerMetrics, endpoint_label};
use super::status::StatusBoard;
use crate::client::ClientEvent;

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

/// One pipe as the watchdog sees it.
#[derive(Clone)]
pub struct WatchedPipe {
    /// Pipe name.
    pub name: String,
    /// Destination broker name.
    pub destination: String,
    /// The pipe's metric handles (stall counter and gauge).
    pub metrics: PipeMetrics,
    /// Reads the pipe's current progress (cheap: a few atomic loads).
    pub probe: Arc<dyn Fn() -> PipeProgress + Send + Sync>,
}

impl std::fmt::Debug for WatchedPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedPipe")
            .field("name", &self.name)
            .field("destination", &self.destination)
            .finish_non_exhaustive()
    }
}

/// One watchdog round at `now`: observes every pipe, emits stall/recovery
/// events, updates the board, forgets pipes that disappeared, and returns
/// the actions to carry out.
pub fn check_pipes(
    watchdog: &mut Watchdog,
    pipes: &[WatchedPipe],
    known: &mut BTreeSet<String>,
    board: &StatusBoard,
    now: Instant,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut seen = BTreeSet::new();
    for p in pipes {
        seen.insert(p.name.clone());
        let progress = (p.probe)();
        let (transition, action) = watchdog.observe(&p.name, &p.destination, progress, now);
        match transition {
            Some(Transition::Stalled { idle_for, pending }) => PipeStalled {
                pipe: &p.name,
                destination: &p.destination,
                pending,
                idle_for,
            }
            .emit(&p.metrics),
            Some(Transition::Recovered { stalled_for }) => PipeRecovered {
                pipe: &p.name,
                stalled_for,
            }
            .emit(&p.metrics),
            Some(Transition::StillStalled) => {
                debug!(pipe = %p.name, "pipe still stalled; reconnecting destination again")
            }
            None => {}
        }
        actions.extend(action);
        if let Some(status) = watchdog.status(&p.name, now) {
            board.set_pipe(status);
        }
    }
    for gone in known.difference(&seen) {
        watchdog.remove(gone);
        board.remove_pipe(gone);
    }
    *known = seen;
    actions
}

/// The watchdog checks pipes at a quarter of `stall_after`, within these bounds.
pub const MIN_TICK: Duration = Duration::from_millis(10);
/// See [`MIN_TICK`].
pub const MAX_TICK: Duration = Duration::from_secs(1);

fn tick_for(stall_after: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval((stall_after / 4).clamp(MIN_TICK, MAX_TICK));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// Runs the watchdog until `shutdown`, with the threshold from `stall_after`
/// (a reload may change it). `pipes` returns the current pipe set;
/// `on_action` carries out each [`Action`] (e.g. asks the destination link
/// to reconnect).
pub async fn run_watchdog(
    mut stall_after: watch::Receiver<Duration>,
    pipes: impl Fn() -> Vec<WatchedPipe>,
    board: Arc<StatusBoard>,
    mut on_action: impl FnMut(Action),
    shutdown: CancellationToken,
) {
    let mut watchdog = Watchdog::new(*stall_after.borrow_and_update());
    let mut known = BTreeSet::new();
    let mut interval = tick_for(watchdog.stall_after());
    // Guard: once the sender is gone, `changed` would be ready forever.
    let mut reconfigurable = true;
    loop {
        // Cancel safety: `tick`, `changed` and `cancelled` lose nothing.
        tokio::select! {
            _ = interval.tick() => {}
            changed = stall_after.changed(), if reconfigurable => {
                match changed {
                    Ok(()) => {
                        let d = *stall_after.borrow_and_update();
                        watchdog.set_stall_after(d);
                        interval = tick_for(d);
                    }
                    Err(_) => reconfigurable = false,
                }
                continue;
            }
            () = shutdown.cancelled() => break,
        }
        let current = pipes();
        for action in check_pipes(&mut watchdog, &current, &mut known, &board, Instant::now()) {
            on_action(action);
        }
    }
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
