//! Endpoint pool with failover and failback: a pure state machine that takes
//! `now`; the connection task does the IO and asks it what to do next.
//!
//! - Endpoints are in priority order; index 0 is the primary.
//! - A failed connect or a lost link moves to the next endpoint (wrapping
//!   around) after the backoff delay.
//! - While connected to a secondary, the primary is probed every
//!   `probe_interval` (TCP + TLS handshake, never a CONNECT with our client id);
//!   only `probes_required` consecutive good probes trigger a failback, and a
//!   failing probe resets the count (hysteresis against a flapping primary).

use std::time::{Duration, Instant};

use super::backoff::Backoff;
use super::options::{Endpoint, FailbackOptions};

/// The index of the endpoint an MQTT 5 server reference names, if it names
/// one of ours: the reference is a space-separated list of `host` or
/// `host:port` (`[v6]:port` too); the first entry that matches wins. A bare
/// host matches on the host alone. Hosts are compared after normalising
/// (case, a trailing dot, brackets, IP address spelling).
pub(crate) fn referenced_endpoint(reference: &str, endpoints: &[Endpoint]) -> Option<usize> {
    reference.split_whitespace().find_map(|entry| {
        let (host, port) = match entry.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !h.ends_with(':') => match p.parse::<u16>() {
                Ok(port) => (h, Some(port)),
                Err(_) => (entry, None),
            },
            _ => (entry, None),
        };
        let host = normal_host(host);
        endpoints
            .iter()
            .position(|e| normal_host(&e.host) == host && port.is_none_or(|p| p == e.port))
    })
}

/// A host as compared: an IP address in its canonical spelling, a name in
/// lower case without the root's trailing dot; brackets around an IPv6
/// address dropped.
fn normal_host(host: &str) -> String {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => bare.trim_end_matches('.').to_ascii_lowercase(),
    }
}

/// What to do after a failure: wait `delay`, then dial `endpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Index of the endpoint to dial next.
    pub endpoint: usize,
    /// Backoff delay before dialing.
    pub delay: Duration,
    /// The endpoint that failed.
    pub from: usize,
}

impl Retry {
    /// Whether this retry moves to another endpoint (a failover).
    pub fn is_failover(&self) -> bool {
        self.endpoint != self.from
    }
}

/// Outcome of a probe result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeVerdict {
    /// Keep the current (secondary) endpoint; probe again later.
    Stay {
        /// Consecutive good probes so far.
        good: u32,
    },
    /// Enough consecutive good probes: disconnect gracefully and dial the primary.
    FailBack,
}

/// Endpoint selection state of one broker connection.
#[derive(Debug)]
pub struct Failover {
    count: usize,
    current: usize,
    backoff: Backoff,
    failback: FailbackOptions,
    /// Consecutive good probes of the primary.
    good_probes: u32,
    /// When the next probe is due; `Some` only while connected to a secondary
    /// with failback enabled.
    next_probe: Option<Instant>,
}

impl Failover {
    /// A pool of `count` endpoints (at least 1 is assumed; 0 behaves like 1).
    pub fn new(count: usize, backoff: Backoff, failback: FailbackOptions) -> Self {
        Failover {
            count: count.max(1),
            current: 0,
            backoff,
            failback,
            good_probes: 0,
            next_probe: None,
        }
    }

    /// The endpoint currently in use or being dialed.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The link to the current endpoint came up (CONNACK accepted) at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.backoff.connected(now);
        self.good_probes = 0;
        self.next_probe = (self.current != 0 && self.failback.enabled && self.count > 1)
            .then(|| now + self.failback.probe_interval);
    }

    /// A connect attempt failed, or the link was lost, at `now`: move on.
    pub fn failed(&mut self, now: Instant) -> Retry {
        self.backoff.disconnected(now);
        self.next_probe = None;
        self.good_probes = 0;
        let from = self.current;
        self.current = (self.current + 1) % self.count;
        Retry {
            endpoint: self.current,
            delay: self.backoff.next_delay(),
            from,
        }
    }

    /// While backing off, endpoint `index` answered a probe: dial it next.
    /// Out-of-range indexes are ignored. Returns the endpoint to dial.
    pub fn answered(&mut self, index: usize) -> usize {
        if index < self.count {
            self.current = index;
        }
        self.current
    }

    /// When the next probe of the primary is due, if one is.
    pub fn probe_due(&self) -> Option<Instant> {
        self.next_probe
    }

    /// Records a probe result at `now`.
    pub fn probe_result(&mut self, now: Instant, ok: bool) -> ProbeVerdict {
        if self.next_probe.is_none() {
            // Not on a secondary any more (a stale probe): ignore it.
            return ProbeVerdict::Stay { good: 0 };
        }
        self.good_probes = if ok { self.good_probes + 1 } else { 0 };
        if self.good_probes >= self.failback.probes_required.max(1) {
            self.next_probe = None;
            self.good_probes = 0;
            ProbeVerdict::FailBack
        } else {
            self.next_probe = Some(now + self.failback.probe_interval);
            ProbeVerdict::Stay {
                good: self.good_probes,
            }
        }
    }

    /// The link to the secondary was closed gracefully for a failback at
    /// `now`: the primary is dialed at once (it just passed its probes).
    pub fn fail_back(&mut self, now: Instant) -> usize {
        self.backoff.disconnected(now);
        self.next_probe = None;
        self.good_probes = 0;
        self.current = 0;
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::options::BackoffOptions;

    #[test]
    fn a_server_reference_names_one_of_our_endpoints_or_none() {
        let eps = [
            Endpoint::tcp("a.example", 1883),
            Endpoint::tcp("b.example", 1883),
            Endpoint::tcp("b.example", 8883),
            Endpoint::tcp("::1", 1883),
        ];
        assert_eq!(referenced_endpoint("b.example:8883", &eps), Some(2));
        assert_eq!(referenced_endpoint("B.EXAMPLE", &eps), Some(1));
        assert_eq!(
            referenced_endpoint("x.example c.example a.example:1883", &eps),
            Some(0)
        );
        assert_eq!(referenced_endpoint("[::1]:1883", &eps), Some(3));
        assert_eq!(referenced_endpoint("[0:0::0001]:1883", &eps), Some(3));
        assert_eq!(referenced_endpoint("b.Example.:8883", &eps), Some(2));
        // The first entry that names one of ours wins.
        assert_eq!(
            referenced_endpoint("b.example:8883 a.example", &eps),
            Some(2)
        );
        assert_eq!(referenced_endpoint("a.example.evil:1883", &eps), None);
        assert_eq!(referenced_endpoint("a.example:9999", &eps), None);
        assert_eq!(referenced_endpoint("elsewhere", &eps), None);
        assert_eq!(referenced_endpoint("", &eps), None);
    }

    fn pool(count: usize, probes_required: u32) -> Failover {
        let backoff = Backoff::new(&BackoffOptions {
            min: Duration::from_millis(100),
            max: Duration::from_secs(2),
            jitter: false,
            stable_after: Duration::from_secs(10),
            probe_interval: Duration::ZERO,
        });
        Failover::new(
            count,
            backoff,
            FailbackOptions {
                enabled: true,
                probe_interval: Duration::from_secs(5),
                probes_required,
            },
        )
    }

    #[test]
    fn failures_rotate_through_endpoints_with_growing_delay() {
        let t = Instant::now();
        let mut f = pool(3, 2);
        assert_eq!(f.current(), 0);
        let r = f.failed(t);
        assert_eq!(
            (r.from, r.endpoint, r.delay),
            (0, 1, Duration::from_millis(100))
        );
        assert!(r.is_failover());
        let r = f.failed(t);
        assert_eq!((r.endpoint, r.delay), (2, Duration::from_millis(200)));
        let r = f.failed(t);
        assert_eq!((r.endpoint, r.delay), (0, Duration::from_millis(400)));
    }

    #[test]
    fn single_endpoint_retries_itself() {
        let mut f = pool(1, 2);
        let r = f.failed(Instant::now());
        assert_eq!(r.endpoint, 0);
        assert!(!r.is_failover());
        f.connected(Instant::now());
        assert_eq!(f.probe_due(), None);
    }

    #[test]
    fn no_probes_on_primary() {
        let t = Instant::now();
        let mut f = pool(2, 2);
        f.connected(t);
        assert_eq!(f.probe_due(), None);
    }

    #[test]
    fn failback_needs_consecutive_good_probes() {
        let t = Instant::now();
        let mut f = pool(2, 3);
        f.failed(t);
        f.connected(t);
        assert_eq!(f.current(), 1);
        assert_eq!(f.probe_due(), Some(t + Duration::from_secs(5)));
        let s = |n| ProbeVerdict::Stay { good: n };
        assert_eq!(f.probe_result(t, true), s(1));
        assert_eq!(f.probe_result(t, true), s(2));
        // A flapping primary: one bad probe starts the count over.
        assert_eq!(f.probe_result(t, false), s(0));
        assert_eq!(f.probe_result(t, true), s(1));
        assert_eq!(f.probe_result(t, true), s(2));
        let later = t + Duration::from_secs(30);
        assert_eq!(f.probe_result(later, true), ProbeVerdict::FailBack);
        assert_eq!(f.probe_due(), None);
        assert_eq!(f.fail_back(later), 0);
        assert_eq!(f.current(), 0);
    }

    #[test]
    fn probe_schedule_follows_interval() {
        let t = Instant::now();
        let mut f = pool(2, 5);
        f.failed(t);
        f.connected(t);
        let t1 = t + Duration::from_secs(5);
        f.probe_result(t1, true);
        assert_eq!(f.probe_due(), Some(t1 + Duration::from_secs(5)));
    }

    #[test]
    fn losing_the_secondary_stops_probing() {
        let t = Instant::now();
        let mut f = pool(3, 2);
        f.failed(t);
        f.connected(t);
        f.probe_result(t, true);
        let r = f.failed(t);
        assert_eq!(r.endpoint, 2);
        assert_eq!(f.probe_due(), None);
        assert_eq!(f.probe_result(t, true), ProbeVerdict::Stay { good: 0 });
        // Connected to the third endpoint: probing (the primary) starts again from zero.
        f.connected(t);
        assert_eq!(f.probe_result(t, true), ProbeVerdict::Stay { good: 1 });
    }

    #[test]
    fn failback_disabled_never_probes() {
        let t = Instant::now();
        let mut f = pool(2, 1);
        f.failback.enabled = false;
        f.failed(t);
        f.connected(t);
        assert_eq!(f.probe_due(), None);
    }

    proptest::proptest! {
        /// Whatever the sequence of failures, connects and probes, the current
        /// endpoint stays in range and failback only follows enough good probes.
        #[test]
        fn random_event_sequences(ops in proptest::collection::vec(0u8..4, 0..200), count in 1usize..5, req in 1u32..4) {
            let t = Instant::now();
            let mut f = pool(count, req);
            let mut streak = 0u32;
            let mut on_secondary_connected = false;
            for op in ops {
                match op {
                    0 => { f.failed(t); on_secondary_connected = false; streak = 0; }
                    1 => { f.connected(t); on_secondary_connected = f.current() != 0; streak = 0; }
                    _ => {
                        let ok = op == 2;
                        let v = f.probe_result(t, ok);
                        if on_secondary_connected {
                            streak = if ok { streak + 1 } else { 0 };
                            if v == ProbeVerdict::FailBack {
                                proptest::prop_assert!(streak >= req);
                                f.fail_back(t);
                                on_secondary_connected = false;
                                streak = 0;
                            }
                        } else {
                            proptest::prop_assert_eq!(v, ProbeVerdict::Stay { good: 0 });
                        }
                    }
                }
                proptest::prop_assert!(f.current() < count);
            }
        }
    }

    #[test]
    fn an_answering_endpoint_is_dialed_next() {
        let t0 = Instant::now();
        let mut f = pool(3, 1);
        assert_eq!(f.failed(t0).endpoint, 1);
        // Endpoint 0 answered a probe while waiting for endpoint 1.
        assert_eq!(f.answered(0), 0);
        assert_eq!(f.current(), 0);
        // Nonsense is ignored.
        assert_eq!(f.answered(7), 0);
    }
}
