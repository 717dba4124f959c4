//! Small runtime glue: turns link state changes and pipe progress into
//! metrics, log events and status-board updates.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::events::{EndpointSwitched, PipeRecovered, PipeStalled};
use super::health::{Action, PipeProgress, Transition, Watchdog};
use super::pipe::PipeMetrics;
use super::reasons::DisconnectReason;
use super::remote::RemoteBrokerMetrics;
use super::status::StatusBoard;
use crate::link::LinkState;

/// What a link state change means for metrics (see [`LinkTracker`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A connection attempt to this endpoint started.
    Attempt(String),
    /// Connected to this endpoint.
    Connected(String),
    /// Connected to a different endpoint than last time.
    Switched {
        /// The endpoint in use before.
        from: String,
        /// The endpoint in use now.
        to: String,
        /// `to` is the primary endpoint.
        failback: bool,
    },
    /// An established connection was lost.
    Disconnected(DisconnectReason),
    /// An attempt failed before the connection was established.
    ConnectFailed(DisconnectReason),
}

/// Maps a free-text disconnect reason onto the fixed label enum (the text
/// itself is only logged, never a label).
pub fn classify_disconnect(reason: &str) -> DisconnectReason {
    let r = reason.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| r.contains(w));
    if has(&["keepalive", "keep-alive", "ping"]) {
        DisconnectReason::KeepaliveTimeout
    } else if has(&["tls", "certificate", "handshake"]) {
        DisconnectReason::Tls
    } else if has(&["refused", "connack", "not authorized", "bad user"]) {
        DisconnectReason::Refused
    } else if has(&["protocol", "malformed", "packet"]) {
        DisconnectReason::Protocol
    } else if has(&["requested", "shutdown", "stall", "reload", "failback"]) {
        DisconnectReason::Requested
    } else if has(&[
        "i/o",
        "io error",
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

/// Derives attempts, failovers, failbacks and disconnects from the sequence
/// of [`LinkState`]s of one link. Pure.
#[derive(Debug, Clone)]
pub struct LinkTracker {
    primary: Option<String>,
    last_endpoint: Option<String>,
    connected: bool,
}

impl LinkTracker {
    /// A tracker for a link whose first configured endpoint is `primary`.
    pub fn new(primary: Option<String>) -> Self {
        LinkTracker {
            primary,
            last_endpoint: None,
            connected: false,
        }
    }

    /// Feeds the next state; returns what happened.
    pub fn on_state(&mut self, state: &LinkState) -> Vec<LinkEvent> {
        match state {
            LinkState::Connecting { endpoint, .. } => vec![LinkEvent::Attempt(endpoint.clone())],
            LinkState::Connected { endpoint, .. } => {
                let mut out = Vec::new();
                if let Some(prev) = self.last_endpoint.as_ref().filter(|p| *p != endpoint) {
                    out.push(LinkEvent::Switched {
                        from: prev.clone(),
                        to: endpoint.clone(),
                        failback: self.primary.as_deref() == Some(endpoint.as_str()),
                    });
                }
                self.last_endpoint = Some(endpoint.clone());
                self.connected = true;
                out.push(LinkEvent::Connected(endpoint.clone()));
                out
            }
            LinkState::Disconnected { reason } => {
                let reason = classify_disconnect(reason);
                if std::mem::replace(&mut self.connected, false) {
                    vec![LinkEvent::Disconnected(reason)]
                } else {
                    vec![LinkEvent::ConnectFailed(reason)]
                }
            }
            LinkState::Closed => {
                if std::mem::replace(&mut self.connected, false) {
                    vec![LinkEvent::Disconnected(DisconnectReason::Requested)]
                } else {
                    Vec::new()
                }
            }
        }
    }
}

/// Follows one remote link's state until it closes (or `shutdown`),
/// updating its metrics and the status board.
///
/// A watch channel keeps only the latest state, so a burst of quick
/// transitions may be seen as fewer attempts; connected/endpoint are exact.
pub async fn watch_link(
    mut state: watch::Receiver<LinkState>,
    metrics: RemoteBrokerMetrics,
    primary: Option<String>,
    board: Arc<StatusBoard>,
    shutdown: CancellationToken,
) {
    let mut tracker = LinkTracker::new(primary);
    let broker = metrics.broker().to_owned();
    loop {
        let current = state.borrow_and_update().clone();
        for ev in tracker.on_state(&current) {
            match ev {
                LinkEvent::Attempt(ep) => metrics.attempt(&ep),
                LinkEvent::Connected(ep) => {
                    metrics.connected(&ep);
                    board.set_connected(&broker, true, Some(ep));
                }
                LinkEvent::Switched { from, to, failback } => EndpointSwitched {
                    broker: &broker,
                    from: &from,
                    to: &to,
                    failback,
                }
                .emit(&metrics),
                LinkEvent::Disconnected(reason) => {
                    metrics.disconnected(reason);
                    board.set_connected(&broker, false, None);
                }
                LinkEvent::ConnectFailed(reason) => metrics.connect_failed(reason),
            }
        }
        if current == LinkState::Closed {
            break;
        }
        // Cancel safety: `changed` only marks the value seen; nothing is lost
        // if the shutdown branch wins.
        tokio::select! {
            changed = state.changed() => if changed.is_err() { break },
            () = shutdown.cancelled() => break,
        }
    }
    board.set_connected(&broker, false, None);
    debug!(broker = %broker, "link watcher ended");
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

/// Runs the watchdog every `tick` until `shutdown`. `pipes` returns the
/// current pipe set (it may change with reloads); `on_action` carries out
/// each [`Action`] (e.g. asks the destination link to reconnect).
pub async fn run_watchdog(
    mut watchdog: Watchdog,
    tick: Duration,
    pipes: impl Fn() -> Vec<WatchedPipe>,
    board: Arc<StatusBoard>,
    mut on_action: impl FnMut(Action),
    shutdown: CancellationToken,
) {
    let mut known = BTreeSet::new();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
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

    fn connected(ep: &str) -> LinkState {
        LinkState::Connected {
            endpoint: ep.into(),
            session_present: false,
        }
    }

    #[test]
    fn tracker_counts_failover_and_failback() {
        let mut t = LinkTracker::new(Some("a".into()));
        assert_eq!(
            t.on_state(&LinkState::Connecting {
                endpoint: "a".into(),
                attempt: 1
            }),
            vec![LinkEvent::Attempt("a".into())]
        );
        assert_eq!(
            t.on_state(&connected("a")),
            vec![LinkEvent::Connected("a".into())]
        );
        assert_eq!(
            t.on_state(&LinkState::Disconnected {
                reason: "connection reset by peer".into()
            }),
            vec![LinkEvent::Disconnected(DisconnectReason::Io)]
        );
        // A failed attempt while down is not another disconnect.
        assert_eq!(
            t.on_state(&LinkState::Disconnected {
                reason: "connection refused".into()
            }),
            vec![LinkEvent::ConnectFailed(DisconnectReason::Refused)]
        );
        assert_eq!(
            t.on_state(&connected("b")),
            vec![
                LinkEvent::Switched {
                    from: "a".into(),
                    to: "b".into(),
                    failback: false
                },
                LinkEvent::Connected("b".into())
            ]
        );
        t.on_state(&LinkState::Disconnected {
            reason: "failback to primary requested".into(),
        });
        assert_eq!(
            t.on_state(&connected("a"))[0],
            LinkEvent::Switched {
                from: "b".into(),
                to: "a".into(),
                failback: true
            }
        );
        assert_eq!(
            t.on_state(&LinkState::Closed),
            vec![LinkEvent::Disconnected(DisconnectReason::Requested)]
        );
    }

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
        assert_eq!(classify_disconnect("???"), DisconnectReason::Other);
    }
}
