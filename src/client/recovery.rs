//! Waiting out a reconnect backoff without sleeping through the destination's
//! return: while the delay runs, the endpoints are probed (TCP connect only,
//! no TLS, no CONNECT) every `probe_interval`, and the wait ends as soon as
//! one answers or a reconnect is forced (the stall watchdog). Pure: time
//! comes in as `now`; the connection task does the probing.
//!
//! Probes only make sense when the last failure was "nothing answered"
//! (TCP connect refused or timed out): a broker that accepts TCP and refuses
//! CONNECT would otherwise be dialed every `probe_interval`, defeating the
//! backoff. The caller decides that when it builds the wait.

use std::time::{Duration, Instant};

/// What the waiting task should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Dial now: the delay ran out, a probe answered, or a reconnect was forced.
    Connect,
    /// Probe the endpoints now (TCP connect only) and report with [`RecoveryWait::probed`].
    Probe,
    /// Nothing to do before `until` (or before the running probe reports).
    Wait {
        /// The next instant at which [`RecoveryWait::step`] has something to say.
        until: Instant,
    },
}

/// One backoff wait, with its probe schedule.
#[derive(Debug, Clone)]
pub struct RecoveryWait {
    deadline: Instant,
    interval: Option<Duration>,
    /// When the next probe is due; `None` when no further probe fits before
    /// the deadline, or while one runs.
    next_probe: Option<Instant>,
    probing: bool,
    connect_now: bool,
}

impl RecoveryWait {
    /// A wait of `delay` from `now`. With `probe_interval` set (and above
    /// zero), the first probe is due one interval from now; a probe that
    /// would fall on or after the deadline is not made (the dial comes then).
    pub fn new(now: Instant, delay: Duration, probe_interval: Option<Duration>) -> Self {
        let interval = probe_interval.filter(|i| !i.is_zero());
        let deadline = now + delay;
        RecoveryWait {
            deadline,
            interval,
            next_probe: interval.map(|i| now + i).filter(|at| *at < deadline),
            probing: false,
            connect_now: false,
        }
    }

    /// What to do at `now`. Returns [`Step::Probe`] once per due probe (the
    /// schedule then waits for [`Self::probed`]).
    pub fn step(&mut self, now: Instant) -> Step {
        if self.connect_now || now >= self.deadline {
            return Step::Connect;
        }
        match self.next_probe {
            Some(at) if !self.probing && now >= at => {
                self.probing = true;
                self.next_probe = None;
                Step::Probe
            }
            Some(at) if !self.probing => Step::Wait {
                until: at.min(self.deadline),
            },
            _ => Step::Wait {
                until: self.deadline,
            },
        }
    }

    /// The probe started by [`Step::Probe`] finished at `now`: an answer ends
    /// the wait; silence schedules the next probe one interval later.
    pub fn probed(&mut self, now: Instant, answered: bool) {
        self.probing = false;
        if answered {
            self.connect_now = true;
            return;
        }
        self.next_probe = self
            .interval
            .map(|i| now + i)
            .filter(|at| *at < self.deadline);
    }

    /// A reconnect was forced (the stall watchdog): end the wait.
    pub fn force(&mut self) {
        self.connect_now = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: u64) -> Duration {
        Duration::from_secs(v)
    }

    /// Drives the schedule through a destination that is down until `up_at`
    /// (probes answer from then on); returns when the dial happens and the
    /// number of probes made. Each probe takes 1 ms.
    fn drive(delay: Duration, interval: Option<Duration>, up_at: Duration) -> (Duration, usize) {
        let t0 = Instant::now();
        let mut w = RecoveryWait::new(t0, delay, interval);
        let mut now = t0;
        let mut probes = 0;
        loop {
            match w.step(now) {
                Step::Connect => return (now - t0, probes),
                Step::Probe => {
                    probes += 1;
                    now += Duration::from_millis(1);
                    w.probed(now, now - t0 >= up_at);
                }
                Step::Wait { until } => {
                    assert!(until > now, "no progress at {:?}", now - t0);
                    now = until;
                }
            }
        }
    }

    #[test]
    fn without_probes_the_full_delay_is_waited() {
        assert_eq!(drive(s(60), None, s(1)), (s(60), 0));
        assert_eq!(drive(s(60), Some(Duration::ZERO), s(1)), (s(60), 0));
    }

    #[test]
    fn an_answering_probe_ends_the_wait_within_one_interval() {
        // Destination back 20.5 s into a 60 s wait; 1 s probes.
        let (at, probes) = drive(s(60), Some(s(1)), Duration::from_millis(20_500));
        assert!(at >= Duration::from_millis(20_500), "{at:?}");
        assert!(at <= Duration::from_millis(21_500), "{at:?}");
        assert_eq!(probes, 21);
    }

    #[test]
    fn a_short_delay_makes_no_probe() {
        // The dial itself comes before a probe would.
        assert_eq!(drive(s(1), Some(s(1)), s(0)), (s(1), 0));
        assert_eq!(
            drive(Duration::from_millis(500), Some(s(1)), s(0)),
            (Duration::from_millis(500), 0)
        );
    }

    #[test]
    fn a_silent_destination_gets_the_full_delay() {
        let (at, probes) = drive(s(10), Some(s(1)), s(1000));
        assert_eq!(at, s(10));
        assert_eq!(probes, 9);
    }

    #[test]
    fn no_second_probe_while_one_runs() {
        let t0 = Instant::now();
        let mut w = RecoveryWait::new(t0, s(10), Some(s(1)));
        assert_eq!(w.step(t0 + s(1)), Step::Probe);
        // The probe hangs: only the deadline is left to wake for.
        assert_eq!(w.step(t0 + s(3)), Step::Wait { until: t0 + s(10) });
        w.probed(t0 + s(4), false);
        assert_eq!(w.step(t0 + s(4)), Step::Wait { until: t0 + s(5) });
        assert_eq!(w.step(t0 + s(10)), Step::Connect);
    }

    #[test]
    fn a_forced_reconnect_ends_the_wait() {
        let t0 = Instant::now();
        let mut w = RecoveryWait::new(t0, s(60), None);
        assert_eq!(w.step(t0), Step::Wait { until: t0 + s(60) });
        w.force();
        assert_eq!(w.step(t0 + s(1)), Step::Connect);
    }

    proptest::proptest! {
        /// With probes every `interval`, the dial comes at most one interval
        /// (plus the probe's own time) after the destination is back, and
        /// never after the backoff deadline.
        #[test]
        fn dial_within_one_interval_of_return(
            delay_ms in 1u64..120_000,
            interval_ms in 1u64..5_000,
            up_ms in 0u64..200_000,
        ) {
            let delay = Duration::from_millis(delay_ms);
            let interval = Duration::from_millis(interval_ms);
            let up = Duration::from_millis(up_ms);
            let (at, _) = drive(delay, Some(interval), up);
            proptest::prop_assert!(at <= delay);
            let bound = up + interval + Duration::from_millis(1);
            proptest::prop_assert!(at <= bound || at == delay, "dial at {:?}, up at {:?}", at, up);
        }
    }
}
