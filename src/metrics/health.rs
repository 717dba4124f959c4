//! Readiness model and the stall watchdog. Pure: no tokio, time is an argument.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What `/readyz` knows about one broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerStatus {
    /// Broker name.
    pub name: String,
    /// `remote` or `builtin`.
    pub kind: BrokerKind,
    /// Whether readiness requires this broker to be connected.
    pub required: bool,
    /// Connected (remote), or the bridge's in-process link attached (built-in).
    pub connected: bool,
    /// Endpoint in use, for a connected remote broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Kind of broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerKind {
    /// A remote broker reached by our client.
    Remote,
    /// Our built-in broker.
    Builtin,
}

/// Forwarding state of a pipe, as judged by the watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PipeState {
    /// Nothing waiting or inflight.
    Idle,
    /// Work pending and forwards completing.
    Flowing,
    /// Work pending but no forward completed for `stall_after`.
    Stalled,
}

/// What `/readyz` knows about one pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeStatus {
    /// Pipe name.
    pub name: String,
    /// Destination broker name.
    pub destination: String,
    /// Watchdog verdict.
    pub state: PipeState,
    /// Messages queued plus inflight at the last check.
    pub pending: u64,
    /// Messages forwarded so far.
    pub forwarded: u64,
    /// Seconds since the last completed forward while work was pending
    /// (0 when idle or progressing).
    pub idle_seconds: u64,
}

/// The readiness verdict with its reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// True when every required broker is connected and no pipe is stalled.
    pub ready: bool,
    /// Why not ready, one line per cause (empty when ready).
    pub reasons: Vec<String>,
    /// Every broker.
    pub brokers: Vec<BrokerStatus>,
    /// Every pipe.
    pub pipes: Vec<PipeStatus>,
}

/// Judges readiness: every required broker connected, no pipe stalled.
pub fn readiness(brokers: Vec<BrokerStatus>, pipes: Vec<PipeStatus>) -> Readiness {
    let mut reasons = Vec::new();
    for b in &brokers {
        if b.required && !b.connected {
            reasons.push(format!("broker {} is not connected", b.name));
        }
    }
    for p in &pipes {
        if p.state == PipeState::Stalled {
            reasons.push(format!(
                "pipe {} is stalled ({} pending, no forward for {}s)",
                p.name, p.pending, p.idle_seconds
            ));
        }
    }
    Readiness {
        ready: reasons.is_empty(),
        reasons,
        brokers,
        pipes,
    }
}

/// A pipe's progress counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PipeProgress {
    /// Cumulative forwards completed (destination acks).
    pub forwarded: u64,
    /// Messages queued plus inflight now.
    pub pending: u64,
}

/// What the watchdog asks the runtime to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Drop and re-establish the destination link of `pipe`: a wedged
    /// inflight window must not stay wedged.
    ReconnectDestination {
        /// The stalled pipe.
        pipe: String,
        /// Its destination broker.
        destination: String,
    },
}

/// A change in a pipe's stall state, reported by [`Watchdog::observe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The pipe just became stalled (log once, count once, reconnect).
    Stalled {
        /// Time since the last progress.
        idle_for: Duration,
        /// Pending messages.
        pending: u64,
    },
    /// Still stalled a further `stall_after` after the last reconnect: reconnect again (quietly).
    StillStalled,
    /// Progress resumed (or nothing is pending any more).
    Recovered {
        /// How long the stall lasted.
        stalled_for: Duration,
    },
}

#[derive(Debug, Clone)]
struct Track {
    destination: String,
    forwarded: u64,
    pending: u64,
    /// Last time the pipe made progress or had nothing pending.
    last_progress: Instant,
    stalled_since: Option<Instant>,
    last_action: Option<Instant>,
}

/// The stall watchdog: fed each pipe's [`PipeProgress`] periodically.
///
/// A pipe is stalled when it has pending work (queued or inflight) and its
/// forward counter has not moved for `stall_after`. Entering a stall yields
/// [`Transition::Stalled`] and an [`Action::ReconnectDestination`]; while the
/// stall lasts, the reconnect is repeated every `stall_after`.
#[derive(Debug, Clone)]
pub struct Watchdog {
    stall_after: Duration,
    pipes: BTreeMap<String, Track>,
}

impl Watchdog {
    /// A watchdog that calls a pipe stalled after `stall_after` without progress.
    pub fn new(stall_after: Duration) -> Self {
        Watchdog {
            stall_after,
            pipes: BTreeMap::new(),
        }
    }

    /// Changes the stall threshold (a reload); running stall episodes keep going.
    pub fn set_stall_after(&mut self, stall_after: Duration) {
        self.stall_after = stall_after;
    }

    /// The configured stall threshold.
    pub fn stall_after(&self) -> Duration {
        self.stall_after
    }

    /// Feeds one observation of `pipe` (going to `destination`) at `now`.
    /// Returns the transition, if any, and the action to take, if any.
    pub fn observe(
        &mut self,
        pipe: &str,
        destination: &str,
        progress: PipeProgress,
        now: Instant,
    ) -> (Option<Transition>, Option<Action>) {
        let track = self.pipes.entry(pipe.to_owned()).or_insert_with(|| Track {
            destination: destination.to_owned(),
            forwarded: progress.forwarded,
            pending: progress.pending,
            last_progress: now,
            stalled_since: None,
            last_action: None,
        });
        track.destination = destination.to_owned();
        let moved = progress.forwarded != track.forwarded;
        track.forwarded = progress.forwarded;
        track.pending = progress.pending;
        if moved || progress.pending == 0 {
            track.last_progress = now;
            track.last_action = None;
            return match track.stalled_since.take() {
                Some(since) => (
                    Some(Transition::Recovered {
                        stalled_for: now.saturating_duration_since(since),
                    }),
                    None,
                ),
                None => (None, None),
            };
        }
        let idle_for = now.saturating_duration_since(track.last_progress);
        if idle_for < self.stall_after {
            return (None, None);
        }
        let action = Action::ReconnectDestination {
            pipe: pipe.to_owned(),
            destination: track.destination.clone(),
        };
        match (track.stalled_since, track.last_action) {
            (None, _) => {
                track.stalled_since = Some(now);
                track.last_action = Some(now);
                (
                    Some(Transition::Stalled {
                        idle_for,
                        pending: progress.pending,
                    }),
                    Some(action),
                )
            }
            (Some(_), Some(last)) if now.saturating_duration_since(last) >= self.stall_after => {
                track.last_action = Some(now);
                (Some(Transition::StillStalled), Some(action))
            }
            (Some(_), _) => (None, None),
        }
    }

    /// Forgets a pipe (removed by a reload).
    pub fn remove(&mut self, pipe: &str) {
        self.pipes.remove(pipe);
    }

    /// The status of `pipe` at `now`, if it was ever observed.
    pub fn status(&self, pipe: &str, now: Instant) -> Option<PipeStatus> {
        let t = self.pipes.get(pipe)?;
        let state = if t.stalled_since.is_some() {
            PipeState::Stalled
        } else if t.pending == 0 {
            PipeState::Idle
        } else {
            PipeState::Flowing
        };
        let idle_seconds = if t.pending == 0 {
            0
        } else {
            now.saturating_duration_since(t.last_progress).as_secs()
        };
        Some(PipeStatus {
            name: pipe.to_owned(),
            destination: t.destination.clone(),
            state,
            pending: t.pending,
            forwarded: t.forwarded,
            idle_seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(30);

    fn p(forwarded: u64, pending: u64) -> PipeProgress {
        PipeProgress { forwarded, pending }
    }

    fn broker(name: &str, required: bool, connected: bool) -> BrokerStatus {
        BrokerStatus {
            name: name.into(),
            kind: BrokerKind::Remote,
            required,
            connected,
            endpoint: None,
        }
    }

    #[test]
    fn ready_needs_required_brokers_connected() {
        let r = readiness(
            vec![broker("cloud", true, false), broker("aux", false, false)],
            vec![],
        );
        assert!(!r.ready);
        assert_eq!(r.reasons, vec!["broker cloud is not connected".to_string()]);
        let r = readiness(
            vec![broker("cloud", true, true), broker("aux", false, false)],
            vec![],
        );
        assert!(r.ready, "an optional broker being down does not matter");
    }

    #[test]
    fn stalled_pipe_makes_not_ready() {
        let mut w = Watchdog::new(STALL);
        let t0 = Instant::now();
        w.observe("a", "cloud", p(0, 5), t0);
        w.observe("a", "cloud", p(0, 5), t0 + STALL);
        let st = w.status("a", t0 + STALL).unwrap();
        assert_eq!(st.state, PipeState::Stalled);
        let r = readiness(vec![broker("cloud", true, true)], vec![st]);
        assert!(!r.ready);
        assert!(
            r.reasons[0].contains("pipe a is stalled"),
            "{:?}",
            r.reasons
        );
    }

    #[test]
    fn no_stall_while_forwards_complete() {
        let mut w = Watchdog::new(STALL);
        let t0 = Instant::now();
        for i in 0..10u64 {
            let (tr, act) = w.observe("a", "cloud", p(i, 5), t0 + STALL * i as u32);
            assert_eq!((tr, act), (None, None));
        }
        assert_eq!(
            w.status("a", t0 + STALL * 10).unwrap().state,
            PipeState::Flowing
        );
    }

    #[test]
    fn no_stall_when_idle() {
        let mut w = Watchdog::new(STALL);
        let t0 = Instant::now();
        w.observe("a", "cloud", p(3, 0), t0);
        let (tr, _) = w.observe("a", "cloud", p(3, 0), t0 + STALL * 10);
        assert_eq!(tr, None);
        assert_eq!(w.status("a", t0).unwrap().state, PipeState::Idle);
    }

    #[test]
    fn stall_reported_once_with_reconnect_then_retries_then_recovers() {
        let mut w = Watchdog::new(STALL);
        let t0 = Instant::now();
        // Pending work appears; the clock starts from the first sight of it.
        assert_eq!(w.observe("a", "cloud", p(7, 2), t0), (None, None));
        assert_eq!(
            w.observe("a", "cloud", p(7, 2), t0 + STALL - Duration::from_millis(1)),
            (None, None)
        );
        let (tr, act) = w.observe("a", "cloud", p(7, 2), t0 + STALL);
        assert_eq!(
            tr,
            Some(Transition::Stalled {
                idle_for: STALL,
                pending: 2
            })
        );
        assert_eq!(
            act,
            Some(Action::ReconnectDestination {
                pipe: "a".into(),
                destination: "cloud".into()
            })
        );
        // Within the next period: silent.
        assert_eq!(
            w.observe("a", "cloud", p(7, 2), t0 + STALL + Duration::from_secs(1)),
            (None, None)
        );
        // A full period later: reconnect again, no new stall.
        let (tr, act) = w.observe("a", "cloud", p(7, 2), t0 + STALL * 2);
        assert_eq!(tr, Some(Transition::StillStalled));
        assert!(act.is_some());
        // A forward completes: recovered.
        let (tr, act) = w.observe("a", "cloud", p(8, 1), t0 + STALL * 2 + STALL / 2);
        assert_eq!(
            tr,
            Some(Transition::Recovered {
                stalled_for: STALL + STALL / 2
            })
        );
        assert_eq!(act, None);
        assert_eq!(
            w.status("a", t0 + STALL * 3).unwrap().state,
            PipeState::Flowing
        );
        // A second episode is reported again.
        let t1 = t0 + STALL * 3;
        w.observe("a", "cloud", p(8, 1), t1);
        let (tr, _) = w.observe("a", "cloud", p(8, 1), t1 + STALL * 2);
        assert!(matches!(tr, Some(Transition::Stalled { .. })));
    }

    #[test]
    fn draining_to_zero_without_forward_recovers() {
        let mut w = Watchdog::new(STALL);
        let t0 = Instant::now();
        w.observe("a", "cloud", p(0, 1), t0);
        w.observe("a", "cloud", p(0, 1), t0 + STALL);
        let (tr, _) = w.observe("a", "cloud", p(0, 0), t0 + STALL * 2);
        assert!(matches!(tr, Some(Transition::Recovered { .. })));
        assert_eq!(w.status("a", t0).unwrap().state, PipeState::Idle);
    }

    #[test]
    fn pipes_are_independent_and_removable() {
        let mut w = Watchdog::new(STALL);
        let t0 = Instant::now();
        w.observe("a", "cloud", p(0, 1), t0);
        w.observe("b", "edge", p(0, 1), t0);
        w.observe("b", "edge", p(1, 1), t0 + STALL);
        let (tr, _) = w.observe("a", "cloud", p(0, 1), t0 + STALL);
        assert!(matches!(tr, Some(Transition::Stalled { .. })));
        assert_eq!(w.status("b", t0 + STALL).unwrap().state, PipeState::Flowing);
        w.remove("a");
        assert!(w.status("a", t0).is_none());
    }
}
