//! Run-time loop protection by fingerprint: the one that also works with MQTT
//! 3.1.1 peers (no No Local, no user properties to mark our own messages).
//! With MQTT 5 it runs on top of No Local on the bridge's own subscriptions
//! (`pipe::subs`) and the hop-count user property (`pipe::properties`).
//!
//! Before the bridge publishes a message to a broker it records a fingerprint
//! `(destination broker, topic, payload hash)` together with the set of brokers
//! the message has already visited. When a message later arrives *from* that
//! broker and matches a recent fingerprint, it is our own copy coming back:
//! [`LoopGuard::take`] consumes the fingerprint (once per recorded publish) and
//! returns the visited set, and a pipe whose destination is in that set drops
//! it as a loop. Pipes to brokers the message has not visited still forward it,
//! so chains (A → B → C) keep working.
//!
//! The QoS is deliberately NOT part of the fingerprint: a copy comes back at
//! min(published QoS, subscription QoS), so a QoS 1 publish may return as QoS 0.
//! Neither is the retain flag (brokers clear it for live subscribers). The
//! price: another client publishing the identical topic and payload to that
//! broker within the window is mistaken for our copy (once per recorded publish).
//!
//! Memory is bounded: entries expire after `window`, and at most `capacity`
//! records are kept (the oldest is evicted first). Pure: takes `now`.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::{Duration, Instant};

/// Default time a fingerprint is remembered.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// Default maximum number of remembered publishes.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Index of a broker in the run's broker table (`< 64` to be tracked).
pub type BrokerIx = usize;

/// A set of broker indices (bit `i` = broker `i`). Brokers with index ≥ 64 are
/// not tracked in visited sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerSet(u64);

impl BrokerSet {
    /// The empty set.
    pub const EMPTY: BrokerSet = BrokerSet(0);

    /// The set as plain bits (to store it with a spooled record).
    pub fn bits(self) -> u64 {
        self.0
    }

    /// A set from [`BrokerSet::bits`].
    pub fn from_bits(bits: u64) -> BrokerSet {
        BrokerSet(bits)
    }

    /// This set plus `b`.
    pub fn with(self, b: BrokerIx) -> BrokerSet {
        match u32::try_from(b).ok().and_then(|b| 1u64.checked_shl(b)) {
            Some(bit) => BrokerSet(self.0 | bit),
            None => self,
        }
    }

    /// Whether `b` is in the set.
    pub fn contains(self, b: BrokerIx) -> bool {
        u32::try_from(b)
            .ok()
            .and_then(|b| 1u64.checked_shl(b))
            .is_some_and(|bit| self.0 & bit != 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    broker: BrokerIx,
    hash: u64,
}

#[derive(Debug)]
struct Record {
    id: u64,
    visited: BrokerSet,
}

/// Recent fingerprints of what the bridge published, per destination broker.
#[derive(Debug)]
pub struct LoopGuard {
    window: Duration,
    capacity: usize,
    hasher: RandomState,
    next_id: u64,
    /// Every record in insertion order (id, time, key); may hold ids already
    /// consumed, which are skipped when they reach the front.
    order: VecDeque<(u64, Instant, Key)>,
    /// Live records per key, oldest first.
    live: HashMap<Key, VecDeque<Record>>,
}

impl Default for LoopGuard {
    fn default() -> Self {
        LoopGuard::new(DEFAULT_WINDOW, DEFAULT_CAPACITY)
    }
}

impl LoopGuard {
    /// A guard remembering publishes for `window`, at most `capacity` of them.
    pub fn new(window: Duration, capacity: usize) -> Self {
        LoopGuard {
            window,
            capacity: capacity.max(1),
            hasher: RandomState::new(),
            next_id: 0,
            order: VecDeque::new(),
            live: HashMap::new(),
        }
    }

    fn key(&self, broker: BrokerIx, topic: &str, payload: &[u8]) -> Key {
        let mut h = self.hasher.build_hasher();
        topic.hash(&mut h);
        payload.hash(&mut h);
        Key {
            broker,
            hash: h.finish(),
        }
    }

    /// Records that the bridge is about to publish `topic`/`payload` to
    /// `broker`; `visited` are the brokers the message passed before (its
    /// source included).
    pub fn record(
        &mut self,
        broker: BrokerIx,
        topic: &str,
        payload: &[u8],
        visited: BrokerSet,
        now: Instant,
    ) {
        self.expire(now);
        while self.order.len() >= self.capacity {
            self.evict_front();
        }
        let key = self.key(broker, topic, payload);
        let id = self.next_id;
        self.next_id += 1;
        self.order.push_back((id, now, key));
        self.live
            .entry(key)
            .or_default()
            .push_back(Record { id, visited });
    }

    /// Checks a message arriving from `broker`. If it matches a live record,
    /// consumes that record and returns the brokers the message had visited.
    pub fn take(
        &mut self,
        broker: BrokerIx,
        topic: &str,
        payload: &[u8],
        now: Instant,
    ) -> Option<BrokerSet> {
        self.expire(now);
        let key = self.key(broker, topic, payload);
        let records = self.live.get_mut(&key)?;
        let rec = records.pop_front();
        if records.is_empty() {
            self.live.remove(&key);
        }
        rec.map(|r| r.visited)
    }

    /// Number of live (unconsumed, unexpired) records.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live.values().map(VecDeque::len).sum()
    }

    /// Whether no record is live.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(_, at, _)) = self.order.front() {
            if now.saturating_duration_since(at) < self.window {
                break;
            }
            self.evict_front();
        }
    }

    fn evict_front(&mut self) {
        let Some((id, _, key)) = self.order.pop_front() else {
            return;
        };
        if let Some(records) = self.live.get_mut(&key) {
            // Records of one key are in id order, so the evicted one (if not
            // consumed already) is at the front.
            if records.front().is_some_and(|r| r.id == id) {
                records.pop_front();
            }
            if records.is_empty() {
                self.live.remove(&key);
            }
        }
    }

    /// Age of the oldest record kept (live or consumed, not yet evicted).
    #[cfg(test)]
    pub fn oldest_age(&self, now: Instant) -> Option<Duration> {
        self.order
            .front()
            .map(|&(_, at, _)| now.saturating_duration_since(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn own_copy_is_recognised_once() {
        let t0 = Instant::now();
        let mut g = LoopGuard::new(Duration::from_secs(10), 100);
        let visited = BrokerSet::EMPTY.with(0);
        g.record(1, "a/b", b"x", visited, t0);
        assert_eq!(g.take(1, "a/b", b"x", t0), Some(visited));
        assert_eq!(g.take(1, "a/b", b"x", t0), None, "consumed once");
    }

    #[test]
    fn two_publishes_are_two_records() {
        let t0 = Instant::now();
        let mut g = LoopGuard::new(Duration::from_secs(10), 100);
        g.record(1, "t", b"p", BrokerSet::EMPTY.with(0), t0);
        g.record(1, "t", b"p", BrokerSet::EMPTY.with(2), t0);
        assert_eq!(g.take(1, "t", b"p", t0), Some(BrokerSet::EMPTY.with(0)));
        assert_eq!(g.take(1, "t", b"p", t0), Some(BrokerSet::EMPTY.with(2)));
        assert_eq!(g.take(1, "t", b"p", t0), None);
    }

    #[test]
    fn other_broker_topic_or_payload_does_not_match() {
        let t0 = Instant::now();
        let mut g = LoopGuard::new(Duration::from_secs(10), 100);
        g.record(1, "t", b"p", BrokerSet::EMPTY.with(0), t0);
        assert_eq!(g.take(0, "t", b"p", t0), None);
        assert_eq!(g.take(1, "u", b"p", t0), None);
        assert_eq!(g.take(1, "t", b"q", t0), None);
        assert!(g.take(1, "t", b"p", t0).is_some());
    }

    #[test]
    fn records_expire_after_the_window() {
        let t0 = Instant::now();
        let mut g = LoopGuard::new(Duration::from_secs(10), 100);
        g.record(1, "t", b"p", BrokerSet::EMPTY, t0);
        g.record(1, "u", b"p", BrokerSet::EMPTY, t0 + Duration::from_secs(5));
        assert_eq!(g.take(1, "t", b"p", t0 + Duration::from_secs(10)), None);
        assert!(g.take(1, "u", b"p", t0 + Duration::from_secs(14)).is_some());
        assert!(g.is_empty());
    }

    #[test]
    fn capacity_evicts_oldest_first() {
        let t0 = Instant::now();
        let mut g = LoopGuard::new(Duration::from_secs(10), 2);
        g.record(1, "a", b"", BrokerSet::EMPTY, t0);
        g.record(1, "b", b"", BrokerSet::EMPTY, t0);
        g.record(1, "c", b"", BrokerSet::EMPTY, t0);
        assert_eq!(g.len(), 2);
        assert_eq!(g.take(1, "a", b"", t0), None);
        assert!(g.take(1, "b", b"", t0).is_some());
        assert!(g.take(1, "c", b"", t0).is_some());
    }

    #[test]
    fn broker_set_ignores_large_indices() {
        let s = BrokerSet::EMPTY.with(3).with(64).with(usize::MAX);
        assert!(s.contains(3));
        assert!(!s.contains(64));
        assert!(!s.contains(4));
    }

    proptest! {
        /// Memory stays bounded by the capacity whatever is recorded or taken.
        #[test]
        fn bounded(ops in prop::collection::vec((any::<bool>(), 0usize..3, 0u8..20, 0u64..30), 0..400)) {
            let t0 = Instant::now();
            let mut g = LoopGuard::new(Duration::from_secs(10), 16);
            let mut t = t0;
            for (rec, b, topic, dt) in ops {
                t += Duration::from_millis(dt * 100);
                let topic = format!("t/{topic}");
                if rec { g.record(b, &topic, b"p", BrokerSet::EMPTY, t); }
                else { g.take(b, &topic, b"p", t); }
                prop_assert!(g.len() <= 16);
                prop_assert!(g.order.len() <= 16);
                if let Some(age) = g.oldest_age(t) { prop_assert!(age < Duration::from_secs(10)); }
            }
        }
    }
}
