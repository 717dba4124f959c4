//! The built-in broker's persistent state in the shared store: persistent
//! sessions (subscriptions, queued and in-flight QoS 1/2 messages, QoS 2
//! state on both sides) and retained messages, one keyspace per kind and
//! broker (`broker.<name>.sessions`, `.messages`, `.flows`, `.incoming`,
//! `.retained`).
//!
//! Only the router writes ([`Journal`]): changes collect during one batch of
//! router events (the last change to a key wins) and go to the store as one
//! atomic batch at its end ([`Journal::commit`]); the router then waits for
//! the group commit ([`crate::store::Store::durable`]) off its loop before
//! acknowledging the publishes that needed it. [`Journal::load`] reads everything back
//! at start; a damaged record is logged, counted, deleted and skipped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tracing::warn;

use super::record::{self, Flow, RecordError, StoredSession};
use super::stats::Counters;
use crate::protocol::Message;
use crate::protocol::expiry::Expiry;
use crate::store::{Keyspace, Store, StoreError};
use std::time::{Duration, Instant};

/// The keyspaces of one broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Ks {
    Sessions,
    Messages,
    Flows,
    Incoming,
    Retained,
}

const ALL: [(Ks, &str); 5] = [
    (Ks::Sessions, "sessions"),
    (Ks::Messages, "messages"),
    (Ks::Flows, "flows"),
    (Ks::Incoming, "incoming"),
    (Ks::Retained, "retained"),
];

struct Open {
    store: Store,
    keyspaces: HashMap<Ks, Keyspace>,
}

impl Open {
    fn ks(&self, which: Ks) -> Result<&Keyspace, StoreError> {
        self.keyspaces
            .get(&which)
            .ok_or_else(|| StoreError::Io(format!("keyspace {which:?} not open")))
    }
}

/// The router's writer: a no-op without a store.
pub(crate) struct Journal {
    open: Option<Open>,
    /// Changes of the current batch: key → new value (`None`: delete).
    pending: BTreeMap<(Ks, Vec<u8>), Option<Vec<u8>>>,
    counters: Arc<Counters>,
    /// Bytes of each stored message by (session, seq), counted against
    /// `storage.max_bytes` (the store's [`Store::used`]).
    sizes: HashMap<(u64, u64), u64>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("enabled", &self.open.is_some())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Journal {
    /// A journal that writes nothing (no store: in-process tests).
    pub fn disabled(counters: Arc<Counters>) -> Self {
        Journal {
            open: None,
            pending: BTreeMap::new(),
            counters,
            sizes: HashMap::new(),
        }
    }

    /// Opens (creating) the keyspaces of broker `broker`.
    pub fn open(store: &Store, broker: &str, counters: Arc<Counters>) -> Result<Self, StoreError> {
        let mut keyspaces = HashMap::new();
        for (which, suffix) in ALL {
            keyspaces.insert(which, store.keyspace(&format!("broker.{broker}.{suffix}"))?);
        }
        Ok(Journal {
            open: Some(Open {
                store: store.clone(),
                keyspaces,
            }),
            pending: BTreeMap::new(),
            counters,
            sizes: HashMap::new(),
        })
    }

    /// Whether changes go to disk (persistent sessions are stored).
    pub fn enabled(&self) -> bool {
        self.open.is_some()
    }

    /// The store, to wait for durability.
    pub fn store(&self) -> Option<&Store> {
        self.open.as_ref().map(|o| &o.store)
    }

    /// Whether storing `n` more bytes would pass `storage.max_bytes`
    /// (never without a store).
    pub fn would_overflow(&self, n: u64) -> bool {
        self.open
            .as_ref()
            .is_some_and(|o| o.store.would_overflow(n))
    }

    /// Counts (`Some(bytes)`) or uncounts (`None`) message `(sid, seq)`
    /// against `storage.max_bytes`.
    fn account(&mut self, sid: u64, seq: u64, bytes: Option<u64>) {
        let Some(open) = &self.open else { return };
        let used = open.store.used();
        if let Some(old) = self.sizes.remove(&(sid, seq)) {
            sub_used(used, old);
        }
        if let Some(n) = bytes {
            self.sizes.insert((sid, seq), n);
            used.fetch_add(n, Relaxed);
        }
    }

    fn set(&mut self, ks: Ks, key: &[u8], value: Option<Vec<u8>>) {
        if self.open.is_some() {
            self.pending.insert((ks, key.to_vec()), value);
        }
    }

    /// Writes (replaces) session `sid`'s record.
    pub fn put_session(&mut self, sid: u64, s: &StoredSession) {
        if self.open.is_some() {
            self.set(
                Ks::Sessions,
                &record::session_key(sid),
                Some(record::encode_session(s)),
            );
        }
    }

    /// Stores message `seq` of session `sid`, whose expiry interval counts
    /// from unix milliseconds `arrived`.
    pub fn put_message(&mut self, sid: u64, seq: u64, m: &Message, arrived: Option<u64>) {
        if self.open.is_some() {
            let key = record::seq_key(sid, seq);
            let value = record::encode_message(m, arrived);
            self.account(sid, seq, Some((key.len() + value.len()) as u64));
            self.set(Ks::Messages, &key, Some(value));
            self.counters.stored_messages.fetch_add(1, Relaxed);
        }
    }

    /// Deletes message `seq` of session `sid` and its QoS 2 flow record.
    pub fn remove_message(&mut self, sid: u64, seq: u64) {
        if self.open.is_some() {
            let key = record::seq_key(sid, seq);
            self.set(Ks::Messages, &key, None);
            self.set(Ks::Flows, &key, None);
            self.account(sid, seq, None);
            self.counters.stored_messages.fetch_sub(1, Relaxed);
        }
    }

    /// Records where the QoS 2 flow of message `seq` stands.
    pub fn put_flow(&mut self, sid: u64, seq: u64, flow: Flow) {
        self.set(
            Ks::Flows,
            &record::seq_key(sid, seq),
            Some(record::encode_flow(flow)),
        );
    }

    /// A QoS 2 packet id received (and routed) from session `sid`'s client.
    pub fn put_incoming(&mut self, sid: u64, pkid: u16) {
        self.set(
            Ks::Incoming,
            &record::pkid_key(sid, pkid),
            Some(record::encode_marker()),
        );
    }

    /// The client released QoS 2 packet id `pkid` (PUBREL).
    pub fn remove_incoming(&mut self, sid: u64, pkid: u16) {
        self.set(Ks::Incoming, &record::pkid_key(sid, pkid), None);
    }

    /// Sets or (empty payload) deletes the retained message of `m.topic`,
    /// whose expiry interval counts from unix milliseconds `arrived`.
    pub fn put_retained(&mut self, m: &Message, arrived: Option<u64>) {
        let value = (!m.payload.is_empty()).then(|| record::encode_message(m, arrived));
        self.set(Ks::Retained, m.topic.as_bytes(), value);
    }

    /// Deletes the retained message of `topic` (it expired).
    pub fn remove_retained(&mut self, topic: &str) {
        self.set(Ks::Retained, topic.as_bytes(), None);
    }

    /// Deletes session `sid` with every message, flow and QoS 2 id it holds;
    /// `messages` is how many stored messages it held (for the gauge).
    pub fn remove_session(&mut self, sid: u64, messages: u64) {
        if self.open.is_none() {
            return;
        }
        let mut freed = 0;
        self.sizes.retain(|&(s, _), n| {
            let keep = s != sid;
            if !keep {
                freed += *n;
            }
            keep
        });
        if let Some(open) = &self.open {
            sub_used(open.store.used(), freed);
        }
        // Pending writes of this session must reach the keyspaces before the
        // scan below can see (and delete) them.
        if let Err(e) = self.commit() {
            warn!(error = %e, "store write failed");
        }
        let Some(open) = &self.open else { return };
        let prefix = record::session_key(sid);
        let mut batch = open.store.db().batch();
        for ks in [Ks::Messages, Ks::Flows, Ks::Incoming] {
            let Ok(keyspace) = open.ks(ks) else { continue };
            for guard in keyspace.prefix(prefix) {
                match guard.key() {
                    Ok(key) => batch.remove(keyspace, key),
                    Err(e) => warn!(error = %e, "store read failed"),
                }
            }
        }
        if let Ok(keyspace) = open.ks(Ks::Sessions) {
            batch.remove(keyspace, prefix);
        }
        if let Err(e) = batch.commit() {
            warn!(error = %e, "store write failed");
        }
        self.counters.stored_messages.fetch_sub(messages, Relaxed);
    }

    /// Writes the batch's changes to the store as one atomic batch; true
    /// when there was anything to write.
    pub fn commit(&mut self) -> Result<bool, StoreError> {
        let Some(open) = &self.open else {
            return Ok(false);
        };
        if self.pending.is_empty() {
            return Ok(false);
        }
        let mut batch = open.store.db().batch();
        for ((ks, key), value) in std::mem::take(&mut self.pending) {
            let keyspace = open.ks(ks)?;
            match value {
                Some(v) => batch.insert(keyspace, key, v),
                None => batch.remove(keyspace, key),
            }
        }
        batch.commit()?;
        Ok(true)
    }

    /// Everything stored, for the router to rebuild its state from. Damaged
    /// records (and messages of a session that is gone) are logged,
    /// counted, deleted and skipped.
    pub fn load(&mut self, broker: &str) -> Loaded {
        let mut loaded = Loaded::default();
        let Some(open) = &self.open else {
            return loaded;
        };
        let mut damaged = Vec::new();
        // Records of a session that is gone (its record was damaged).
        let mut orphans = Vec::new();
        let mut note = |ks: Ks, key: &[u8], err: RecordError| {
            warn!(broker = %broker, keyspace = ?ks, error = %err, "damaged record skipped");
            damaged.push((ks, key.to_vec()));
        };
        for (key, value) in scan(open, Ks::Sessions) {
            match record::parse_session_key(&key)
                .and_then(|sid| Ok((sid, record::decode_session(&value)?)))
            {
                Ok((sid, record)) => {
                    loaded.sessions.insert(
                        sid,
                        LoadedSession {
                            record,
                            messages: Vec::new(),
                            incoming: Vec::new(),
                        },
                    );
                }
                Err(e) => note(Ks::Sessions, &key, e),
            }
        }
        let mut flows = HashMap::new();
        // Sizes of the messages kept, counted against `storage.max_bytes`.
        let mut sizes = Vec::new();
        for (key, value) in scan(open, Ks::Flows) {
            match record::split_key(&key).and_then(|k| Ok((k, record::decode_flow(&value)?))) {
                Ok((k, flow)) => {
                    flows.insert(k, flow);
                }
                Err(e) => note(Ks::Flows, &key, e),
            }
        }
        for (key, value) in scan(open, Ks::Messages) {
            let parsed =
                record::split_key(&key).and_then(|k| Ok((k, record::decode_message(&value)?)));
            match parsed {
                Ok(((sid, seq), (message, arrived))) => match loaded.sessions.get_mut(&sid) {
                    Some(s) => {
                        sizes.push(((sid, seq), (key.len() + value.len()) as u64));
                        s.messages.push(StoredMessage {
                            seq,
                            message,
                            arrived,
                            flow: flows.remove(&(sid, seq)),
                        });
                    }
                    None => orphans.push((Ks::Messages, key.to_vec())),
                },
                Err(e) => note(Ks::Messages, &key, e),
            }
        }
        for (key, value) in scan(open, Ks::Incoming) {
            let parsed = record::split_key(&key).and_then(|k| {
                record::decode_marker(&value)?;
                Ok(k)
            });
            match parsed {
                Ok((sid, pkid)) => match loaded.sessions.get_mut(&sid) {
                    Some(s) => s.incoming.push(u16::try_from(pkid).unwrap_or(0)),
                    None => orphans.push((Ks::Incoming, key.to_vec())),
                },
                Err(e) => note(Ks::Incoming, &key, e),
            }
        }
        for (key, value) in scan(open, Ks::Retained) {
            match record::decode_message(&value) {
                Ok((m, arrived)) if m.topic.as_bytes() == &key[..] => {
                    loaded.retained.push((m, arrived));
                }
                Ok(_) => note(
                    Ks::Retained,
                    &key,
                    RecordError::Malformed("retained topic differs from its key"),
                ),
                Err(e) => note(Ks::Retained, &key, e),
            }
        }
        loaded.damaged = damaged.len() as u64;
        // Flows whose message is gone are leftovers, not damage.
        let leftovers = flows
            .into_keys()
            .map(|(sid, seq)| (Ks::Flows, record::seq_key(sid, seq).to_vec()));
        let mut batch = open.store.db().batch();
        for (ks, key) in damaged.into_iter().chain(orphans).chain(leftovers) {
            if let Ok(keyspace) = open.ks(ks) {
                batch.remove(keyspace, key);
            }
        }
        if let Err(e) = batch.commit() {
            warn!(broker = %broker, error = %e, "cannot delete damaged records");
        }
        let stored: usize = loaded.sessions.values().map(|s| s.messages.len()).sum();
        self.counters.stored_messages.store(stored as u64, Relaxed);
        self.counters
            .records_damaged
            .fetch_add(loaded.damaged, Relaxed);
        for ((sid, seq), n) in sizes {
            self.account(sid, seq, Some(n));
        }
        loaded
    }
}

/// Takes `n` bytes off the store's `used` (never below zero).
fn sub_used(used: &std::sync::atomic::AtomicU64, n: u64) {
    let _ = used.fetch_update(Relaxed, Relaxed, |u| Some(u.saturating_sub(n)));
}

/// Every (key, value) of one keyspace; unreadable entries are logged and skipped.
fn scan(open: &Open, ks: Ks) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(keyspace) = open.ks(ks) else {
        return Vec::new();
    };
    keyspace
        .iter()
        .filter_map(|guard| match guard.into_inner() {
            Ok((k, v)) => Some((k.to_vec(), v.to_vec())),
            Err(e) => {
                warn!(keyspace = ?ks, error = %e, "store read failed");
                None
            }
        })
        .collect()
}

/// One stored session as loaded.
#[derive(Debug)]
pub(crate) struct LoadedSession {
    /// Its record.
    pub record: StoredSession,
    /// Messages in sequence order.
    pub messages: Vec<StoredMessage>,
    /// QoS 2 packet ids received from the client and not yet released.
    pub incoming: Vec<u16>,
}

/// One stored message of a session as loaded.
#[derive(Debug)]
pub(crate) struct StoredMessage {
    /// Its sequence number in the session.
    pub seq: u64,
    /// The message.
    pub message: Message,
    /// Unix milliseconds its expiry interval counts from (`None`: it has
    /// none, or a record written before this was stored).
    pub arrived: Option<u64>,
    /// The QoS 2 flow it is in, if in flight.
    pub flow: Option<Flow>,
}

/// Everything [`Journal::load`] found.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// Sessions by id.
    pub sessions: BTreeMap<u64, LoadedSession>,
    /// Retained messages, with the unix milliseconds their expiry interval
    /// counts from.
    pub retained: Vec<(Message, Option<u64>)>,
    /// Damaged records skipped.
    pub damaged: u64,
}

/// Whether a persistent session that went away at `disconnected_at` (unix
/// seconds) has expired at `now` under `expiry` (`None`: never).
pub(crate) fn expired(
    disconnected_at: Option<u64>,
    now: u64,
    expiry: Option<std::time::Duration>,
) -> bool {
    match (disconnected_at, expiry) {
        (Some(at), Some(expiry)) => now.saturating_sub(at) >= expiry.as_secs().max(1),
        _ => false,
    }
}

/// Unix seconds now (0 before 1970, which no clock here reports).
pub(crate) fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

/// Unix milliseconds now (0 before 1970).
pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The arrival to store with `m` (`Some(now_ms)` when it has a Message
/// Expiry Interval, which counts from now; else nothing to store).
pub(crate) fn arrival(m: &Message, now_ms: u64) -> Option<u64> {
    m.properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .map(|_| now_ms)
}

/// The expiry of a stored `message` on this run's monotonic clock: its
/// interval counts from `arrived` (unix milliseconds), so the time the
/// broker was down counts too. `now_ms` and `now` are the same moment on
/// both clocks. A record with no arrival (written before it was stored)
/// counts from `now`; a wall clock that went back counts no time. When
/// the monotonic clock is younger than the wait (the machine rebooted),
/// the message's interval is cut to what is left of it (rounded up), from
/// `now`. `None`: the message never expires.
pub(crate) fn restored_expiry(
    message: &mut Message,
    arrived: Option<u64>,
    now_ms: u64,
    now: Instant,
) -> Option<Expiry> {
    let secs = message.properties.as_ref()?.message_expiry_interval?;
    let Some(arrived) = arrived else {
        return Expiry::of(message, now);
    };
    let held = Duration::from_millis(now_ms.saturating_sub(arrived));
    if let Some(received) = now.checked_sub(held) {
        return Expiry::of(message, received);
    }
    let left = Duration::from_secs(u64::from(secs)).saturating_sub(held);
    let left_secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    if let Some(p) = message.properties.as_mut() {
        p.message_expiry_interval = Some(u32::try_from(left_secs).unwrap_or(u32::MAX));
    }
    Expiry::of(message, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::expiry::Remaining;
    use crate::protocol::{MessageProperties, PropertyFields, QoS};

    fn expiring(secs: u32) -> Message {
        let mut m = Message::new("t", "p", QoS::AtLeastOnce, false);
        m.properties = Some(MessageProperties::from(PropertyFields {
            message_expiry_interval: Some(secs),
            ..Default::default()
        }));
        m
    }

    /// [MQTT-3.3.2-5, MQTT-3.3.2-6] across a restart: the interval counts
    /// from the stored arrival, so the downtime counts too.
    #[test]
    fn restored_expiry_counts_from_the_stored_arrival() {
        let now = Instant::now() + Duration::from_secs(1000);
        let now_ms = 1_700_000_000_000;
        let mut m = expiring(60);
        // Arrived 20.5 s ago: 39.5 s left, sent as 40.
        let e = restored_expiry(&mut m, Some(now_ms - 20_500), now_ms, now).expect("expiry");
        assert_eq!(e.remaining(now), Remaining::Seconds(40));
        // Arrived 60 s ago or more: expired.
        let e = restored_expiry(&mut m, Some(now_ms - 60_000), now_ms, now).expect("expiry");
        assert_eq!(e.remaining(now), Remaining::Expired);
        // No arrival stored (an older record): counts from now.
        let e = restored_expiry(&mut m, None, now_ms, now).expect("expiry");
        assert_eq!(e.remaining(now), Remaining::Seconds(60));
        // A wall clock that went back counts no time.
        let e = restored_expiry(&mut m, Some(now_ms + 5_000), now_ms, now).expect("expiry");
        assert_eq!(e.remaining(now), Remaining::Seconds(60));
        // No interval: never.
        let mut plain = Message::new("t", "p", QoS::AtLeastOnce, false);
        assert_eq!(restored_expiry(&mut plain, Some(0), now_ms, now), None);
        assert_eq!(arrival(&plain, now_ms), None);
        assert_eq!(arrival(&m, now_ms), Some(now_ms));
    }

    /// A wait longer than the monotonic clock has run (a reboot): the
    /// interval is cut to what is left of it.
    #[test]
    fn restored_expiry_after_a_reboot_cuts_the_interval() {
        let now = Instant::now();
        let now_ms = 1_700_000_000_000;
        let long_ago = 10 * 365 * 24 * 3600 * 1000;
        let mut m = expiring(u32::MAX);
        let e = restored_expiry(&mut m, Some(now_ms - long_ago), now_ms, now).expect("expiry");
        let left = u64::from(u32::MAX) - long_ago / 1000;
        assert_eq!(e.remaining(now), Remaining::Seconds(left as u32));
        let mut gone = expiring(60);
        let e = restored_expiry(&mut gone, Some(now_ms - long_ago), now_ms, now).expect("expiry");
        assert_eq!(e.remaining(now), Remaining::Expired);
    }

    #[test]
    fn expiry_counts_from_the_disconnect() {
        let h = Some(Duration::from_secs(3600));
        assert!(!expired(None, 10_000, h), "connected sessions never expire");
        assert!(!expired(Some(100), 10_000, None), "no expiry configured");
        assert!(!expired(Some(100), 3_699, h));
        assert!(expired(Some(100), 3_700, h));
        assert!(
            !expired(Some(100), 50, h),
            "a clock going back does not expire"
        );
    }
}
