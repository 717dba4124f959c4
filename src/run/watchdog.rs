//! The stall watchdog: watches every pipe's progress, emits stall and
//! recovery events, keeps the status board's pipe entries, and asks the
//! caller to reconnect a stalled pipe's destination.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::metrics::PipeMetrics;
use crate::metrics::events::{PipeRecovered, PipeStalled};
use crate::metrics::health::{Action, PipeProgress, Transition, Watchdog};
use crate::metrics::status::StatusBoard;

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
