//! Outgoing QoS 2 flows kept on disk, so a spooled pipe's QoS 2 messages
//! reach a destination that kept our session exactly once across a restart
//! of mqbridge (pure bookkeeping and the record codec; the driver does the
//! store IO).
//!
//! After a restart with CONNACK session present = 1, a QoS 2 flow must go on
//! under the packet id it had: PUBLISH again with DUP=1 if PUBREC was not
//! received (the receiver answers PUBREC without delivering again), PUBREL
//! if it was (the receiver answers PUBCOMP even for an id it forgot). So two
//! facts must be on disk *before* the wire sees them, and the driver holds
//! the packet back until `Store::durable` says so:
//! - the packet id given to a message ([`Ledger::published`], before its
//!   first PUBLISH);
//! - "PUBREC received" ([`Ledger::released`], before the PUBREL).
//!
//! Each record names its origin (pipe and spool sequence number). When the
//! pipe sends its unacknowledged spool records again after the restart, the
//! client looks the origin up ([`Ledger::lookup`]) and attaches the pipe's
//! completion to the flow it restored instead of publishing a second copy.
//!
//! PUBCOMP does not delete the record: it becomes a completion mark
//! ([`Ledger::completed`]). The pipe's acknowledged spool cursor is written
//! after the mark (the pipe learns of the PUBCOMP from us), so a crash in
//! between leaves the mark, and a replay of that record is completed at once
//! without being sent. A mark is deleted once a later publish from the pipe
//! reports a cursor past it ([`Ledger::collect`]): the pipe never sends that
//! record again. So marks are bounded by the pipe's window.
//!
//! Key: the flow's order (`u64`, big-endian, increasing: restore keeps
//! publish order). Value, in the store's record codec (version, CRC-32):
//! `phase u8 | pkid u16 | pipe | seq u64 | message`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::link::Origin;
use crate::protocol::{Message, QoS};
use crate::store::record::{Reader, RecordError, open, put_bytes, put_message, seal};

/// Prefix of a remote broker's keyspace of QoS 2 flows; the broker's name follows.
pub(crate) const KEYSPACE_PREFIX: &str = "qos2-out.";

/// The keyspace name of `broker`'s outgoing QoS 2 flows.
pub(crate) fn keyspace_name(broker: &str) -> String {
    format!("{KEYSPACE_PREFIX}{broker}")
}

/// Where a stored flow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The packet id is given; PUBLISH sent or about to be; no PUBREC yet.
    Published,
    /// PUBREC received; PUBREL owed until PUBCOMP.
    Released,
    /// PUBCOMP received; kept until the pipe's cursor passes the record.
    Completed,
}

impl Phase {
    fn as_u8(self) -> u8 {
        match self {
            Phase::Published => 0,
            Phase::Released => 1,
            Phase::Completed => 2,
        }
    }

    fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Phase::Published),
            1 => Some(Phase::Released),
            2 => Some(Phase::Completed),
            _ => None,
        }
    }
}

/// One stored flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlowRecord {
    pub(crate) phase: Phase,
    pub(crate) pkid: u16,
    pub(crate) pipe: Arc<str>,
    pub(crate) seq: u64,
    pub(crate) message: Message,
}

/// The key of the flow with `order`.
pub(crate) fn key(order: u64) -> [u8; 8] {
    order.to_be_bytes()
}

/// Encodes `rec` (with its checksum). DUP is not stored.
pub(crate) fn encode(rec: &FlowRecord) -> Vec<u8> {
    let m = &rec.message;
    let mut body = Vec::with_capacity(16 + rec.pipe.len() + m.topic.len() + m.payload.len());
    body.push(rec.phase.as_u8());
    body.extend_from_slice(&rec.pkid.to_be_bytes());
    put_bytes(&mut body, rec.pipe.as_bytes());
    body.extend_from_slice(&rec.seq.to_be_bytes());
    put_message(&mut body, m);
    seal(&body)
}

/// Decodes bytes written by [`encode`]; anything else (damage, a packet id
/// of 0, a message that is not QoS 2) is an error.
pub(crate) fn decode(bytes: &[u8]) -> Result<FlowRecord, RecordError> {
    let mut r = Reader(open(bytes)?);
    let phase = Phase::from_u8(r.u8()?).ok_or(RecordError::Malformed("phase"))?;
    let pkid = r.u16()?;
    if pkid == 0 {
        return Err(RecordError::Malformed("packet id"));
    }
    let pipe: Arc<str> = r.string("pipe")?.into();
    let seq = r.u64()?;
    let message = r.message()?;
    if message.qos != QoS::ExactlyOnce {
        return Err(RecordError::Malformed("qos"));
    }
    r.end()?;
    Ok(FlowRecord {
        phase,
        pkid,
        pipe,
        seq,
        message,
    })
}

/// A change to the keyspace, for the driver to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Write {
    /// Insert or replace the record under this key.
    Put([u8; 8], Vec<u8>),
    /// Delete the record under this key.
    Delete([u8; 8]),
}

/// A flow to put back into `Outgoing` at start, in publish order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Restored {
    pub(crate) message: Message,
    pub(crate) pkid: u16,
    /// PUBREC was received: PUBREL is owed.
    pub(crate) released: bool,
}

/// What the client holds for a publish from a given origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Match {
    /// A flow in progress under this packet id: attach to it.
    Live(u16),
    /// The flow completed (PUBCOMP): the message was delivered; do not send it.
    Completed,
    /// Nothing: publish it as a new flow.
    New,
}

/// What [`Ledger::restore`] found.
#[derive(Debug, Default)]
pub(crate) struct Restore {
    pub(crate) ledger: Ledger,
    /// Flows in progress, in publish order.
    pub(crate) flows: Vec<Restored>,
    /// Keys of damaged records (and of records that repeat a packet id in
    /// progress): skipped, to delete.
    pub(crate) damaged: Vec<Vec<u8>>,
}

#[derive(Debug)]
struct Live {
    order: u64,
    phase: Phase,
    pipe: Arc<str>,
    seq: u64,
    message: Message,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Live(u16),
    /// A completion mark, by order.
    Completed(u64),
}

/// The stored QoS 2 flows of one client, in memory.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    next_order: u64,
    /// Flows in progress, by packet id.
    live: HashMap<u16, Live>,
    /// Every flow and completion mark by origin (ordered, for
    /// [`Ledger::collect`]'s range).
    by_origin: BTreeMap<(Arc<str>, u64), Slot>,
}

impl Ledger {
    /// Rebuilds the ledger from the keyspace's `(key, value)` pairs. Damaged
    /// records are skipped and named for deletion, never trusted.
    pub(crate) fn restore(entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Restore {
        let mut out = Restore::default();
        let mut found: Vec<(u64, FlowRecord)> = Vec::new();
        for (k, v) in entries {
            let order = <[u8; 8]>::try_from(k.as_slice()).map(u64::from_be_bytes);
            match (order, decode(&v)) {
                (Ok(order), Ok(rec)) => found.push((order, rec)),
                _ => out.damaged.push(k),
            }
        }
        found.sort_by_key(|(order, _)| *order);
        let ledger = &mut out.ledger;
        for (order, rec) in found {
            ledger.next_order = ledger.next_order.max(order.saturating_add(1));
            let origin = (rec.pipe.clone(), rec.seq);
            if rec.phase == Phase::Completed {
                ledger.by_origin.insert(origin, Slot::Completed(order));
                continue;
            }
            if ledger.live.contains_key(&rec.pkid) {
                out.damaged.push(key(order).to_vec());
                continue;
            }
            out.flows.push(Restored {
                message: rec.message.clone(),
                pkid: rec.pkid,
                released: rec.phase == Phase::Released,
            });
            ledger.by_origin.insert(origin, Slot::Live(rec.pkid));
            ledger.live.insert(
                rec.pkid,
                Live {
                    order,
                    phase: rec.phase,
                    pipe: rec.pipe,
                    seq: rec.seq,
                    message: rec.message,
                },
            );
        }
        out
    }

    /// Whether the flow under `pkid` is kept on disk.
    #[cfg(test)]
    pub(crate) fn holds(&self, pkid: u16) -> bool {
        self.live.contains_key(&pkid)
    }

    /// Flows in progress.
    pub(crate) fn live(&self) -> usize {
        self.live.len()
    }

    /// Completion marks kept.
    pub(crate) fn marks(&self) -> usize {
        self.by_origin.len() - self.live.len()
    }

    /// What the client holds for a publish from `origin`.
    pub(crate) fn lookup(&self, origin: &Origin) -> Match {
        match self.by_origin.get(&(origin.pipe.clone(), origin.seq)) {
            Some(Slot::Live(pkid)) => Match::Live(*pkid),
            Some(Slot::Completed(_)) => Match::Completed,
            None => Match::New,
        }
    }

    /// The pipe's cursor is at `origin.floor`: its records below it are
    /// never sent again, so their completion marks go.
    pub(crate) fn collect(&mut self, origin: &Origin) -> Vec<Write> {
        let from = (origin.pipe.clone(), 0);
        let to = (origin.pipe.clone(), origin.floor);
        let gone: Vec<((Arc<str>, u64), u64)> = self
            .by_origin
            .range(from..to)
            .filter_map(|(o, slot)| match slot {
                Slot::Completed(order) => Some((o.clone(), *order)),
                Slot::Live(_) => None,
            })
            .collect();
        gone.into_iter()
            .map(|(o, order)| {
                self.by_origin.remove(&o);
                Write::Delete(key(order))
            })
            .collect()
    }

    /// A new flow from `origin` got packet id `pkid`: the record to make
    /// durable before its first PUBLISH.
    pub(crate) fn published(&mut self, pkid: u16, origin: &Origin, message: &Message) -> Write {
        let order = self.next_order;
        self.next_order += 1;
        let live = Live {
            order,
            phase: Phase::Published,
            pipe: origin.pipe.clone(),
            seq: origin.seq,
            message: message.clone(),
        };
        let write = put(pkid, &live);
        self.by_origin
            .insert((origin.pipe.clone(), origin.seq), Slot::Live(pkid));
        self.live.insert(pkid, live);
        write
    }

    /// PUBREC for `pkid`: the record to make durable before the PUBREL;
    /// `None` for a flow not kept here.
    pub(crate) fn released(&mut self, pkid: u16) -> Option<Write> {
        let live = self.live.get_mut(&pkid)?;
        live.phase = Phase::Released;
        Some(put(pkid, live))
    }

    /// PUBCOMP for `pkid`: the flow's record becomes a completion mark (no
    /// need to wait for it: nothing is sent after it). `None` for a flow not
    /// kept here.
    pub(crate) fn completed(&mut self, pkid: u16) -> Option<Write> {
        let mut live = self.live.remove(&pkid)?;
        live.phase = Phase::Completed;
        self.by_origin
            .insert((live.pipe.clone(), live.seq), Slot::Completed(live.order));
        Some(put(pkid, &live))
    }

    /// (Re)connected: every flow's record written again with the phase it
    /// resumes in — with `session_present` false the broker lost the
    /// session and every flow starts again from PUBLISH (at least once).
    /// Written before anything is resent, so a failed earlier write cannot
    /// leave the disk behind the wire.
    pub(crate) fn resume(&mut self, session_present: bool) -> Vec<Write> {
        let mut flows: Vec<(&u16, &mut Live)> = self.live.iter_mut().collect();
        flows.sort_by_key(|(_, l)| l.order);
        flows
            .into_iter()
            .map(|(pkid, live)| {
                if !session_present {
                    live.phase = Phase::Published;
                }
                put(*pkid, live)
            })
            .collect()
    }
}

fn put(pkid: u16, live: &Live) -> Write {
    Write::Put(
        key(live.order),
        encode(&FlowRecord {
            phase: live.phase,
            pkid,
            pipe: live.pipe.clone(),
            seq: live.seq,
            message: live.message.clone(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    fn origin(pipe: &str, seq: u64, floor: u64) -> Origin {
        Origin {
            pipe: pipe.into(),
            seq,
            floor,
        }
    }

    fn msg(topic: &str) -> Message {
        Message::new(topic, Bytes::from_static(b"p"), QoS::ExactlyOnce, false)
    }

    /// Applies writes to a map standing in for the keyspace.
    fn apply(disk: &mut BTreeMap<Vec<u8>, Vec<u8>>, writes: impl IntoIterator<Item = Write>) {
        for w in writes {
            match w {
                Write::Put(k, v) => disk.insert(k.to_vec(), v),
                Write::Delete(k) => disk.remove(&k[..]),
            };
        }
    }

    fn reopen(disk: &BTreeMap<Vec<u8>, Vec<u8>>) -> Restore {
        Ledger::restore(disk.clone())
    }

    #[test]
    fn restore_keeps_publish_order_phases_and_origins() {
        let mut disk = BTreeMap::new();
        let mut l = Ledger::default();
        // Packet ids out of order on purpose: order is the publish order.
        apply(&mut disk, [l.published(9, &origin("p", 10, 0), &msg("a"))]);
        apply(&mut disk, [l.published(3, &origin("p", 11, 0), &msg("b"))]);
        apply(&mut disk, [l.published(5, &origin("q", 4, 0), &msg("c"))]);
        apply(&mut disk, l.released(3));
        apply(&mut disk, l.completed(5));
        let r = reopen(&disk);
        assert!(r.damaged.is_empty());
        let flows: Vec<(&str, u16, bool)> = r
            .flows
            .iter()
            .map(|f| (&*f.message.topic, f.pkid, f.released))
            .collect();
        assert_eq!(flows, [("a", 9, false), ("b", 3, true)]);
        let l2 = r.ledger;
        assert_eq!(l2.lookup(&origin("p", 10, 0)), Match::Live(9));
        assert_eq!(l2.lookup(&origin("p", 11, 0)), Match::Live(3));
        assert_eq!(l2.lookup(&origin("q", 4, 0)), Match::Completed);
        assert_eq!(l2.lookup(&origin("q", 5, 0)), Match::New);
        assert_eq!(l2.lookup(&origin("p", 4, 0)), Match::New, "another pipe");
        assert!(l2.holds(9) && l2.holds(3) && !l2.holds(5));
        // New flows after a restart sort after the restored ones.
        let mut l2 = l2;
        apply(&mut disk, [l2.published(5, &origin("p", 12, 0), &msg("d"))]);
        let topics: Vec<String> = reopen(&disk)
            .flows
            .iter()
            .map(|f| f.message.topic.to_string())
            .collect();
        assert_eq!(topics, ["a", "b", "d"]);
    }

    #[test]
    fn completion_marks_go_only_once_the_cursor_passed_them() {
        let mut disk = BTreeMap::new();
        let mut l = Ledger::default();
        for (pkid, seq) in [(1, 7), (2, 8), (3, 9)] {
            apply(
                &mut disk,
                [l.published(pkid, &origin("p", seq, 7), &msg("t"))],
            );
        }
        apply(&mut disk, l.completed(1));
        apply(&mut disk, l.completed(3));
        assert_eq!(l.marks(), 2);
        // Another pipe's cursor says nothing about this one.
        assert!(l.collect(&origin("other", 100, 100)).is_empty());
        // Cursor 9: seq 7 is never sent again; 9 may be (8 is in flight).
        apply(&mut disk, l.collect(&origin("p", 10, 9)));
        assert_eq!(l.lookup(&origin("p", 7, 0)), Match::New);
        assert_eq!(l.lookup(&origin("p", 8, 0)), Match::Live(2));
        assert_eq!(l.lookup(&origin("p", 9, 0)), Match::Completed);
        let r = reopen(&disk);
        assert_eq!(r.ledger.marks(), 1);
        assert_eq!(r.ledger.live(), 1);
    }

    #[test]
    fn a_lost_session_restarts_every_flow_from_publish() {
        let mut disk = BTreeMap::new();
        let mut l = Ledger::default();
        apply(&mut disk, [l.published(1, &origin("p", 0, 0), &msg("a"))]);
        apply(&mut disk, l.released(1));
        apply(&mut disk, l.resume(true));
        assert!(reopen(&disk).flows[0].released, "kept session: PUBREL owed");
        apply(&mut disk, l.resume(false));
        assert!(
            !reopen(&disk).flows[0].released,
            "lost session: PUBLISH again"
        );
    }

    #[test]
    fn damaged_records_are_skipped_and_named_for_deletion() {
        let mut disk = BTreeMap::new();
        let mut l = Ledger::default();
        apply(&mut disk, [l.published(1, &origin("p", 0, 0), &msg("a"))]);
        apply(&mut disk, [l.published(2, &origin("p", 1, 0), &msg("b"))]);
        apply(&mut disk, [l.published(3, &origin("p", 2, 0), &msg("c"))]);
        // A flipped bit in "b", a key of the wrong size, and a second
        // record under a packet id already in progress.
        if let Some(v) = disk.get_mut(&key(1)[..])
            && let Some(b) = v.last_mut()
        {
            *b ^= 1;
        }
        disk.insert(b"junk".to_vec(), b"x".to_vec());
        let mut dup = Ledger {
            next_order: 9,
            ..Ledger::default()
        };
        apply(&mut disk, [dup.published(3, &origin("p", 5, 0), &msg("e"))]);
        let r = reopen(&disk);
        let topics: Vec<String> = r
            .flows
            .iter()
            .map(|f| f.message.topic.to_string())
            .collect();
        assert_eq!(topics, ["a", "c"]);
        let mut damaged = r.damaged.clone();
        damaged.sort();
        let mut want = vec![key(1).to_vec(), key(9).to_vec(), b"junk".to_vec()];
        want.sort();
        assert_eq!(damaged, want);
    }

    #[test]
    fn records_round_trip_and_reject_what_no_writer_makes() {
        let rec = FlowRecord {
            phase: Phase::Released,
            pkid: 65535,
            pipe: "a-pipe".into(),
            seq: u64::MAX,
            message: msg("x/y"),
        };
        assert_eq!(decode(&encode(&rec)), Ok(rec.clone()));
        let zero = FlowRecord {
            pkid: 0,
            ..rec.clone()
        };
        assert!(decode(&encode(&zero)).is_err());
        let mut qos1 = rec;
        qos1.message.qos = QoS::AtLeastOnce;
        assert!(decode(&encode(&qos1)).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(
            k in prop::collection::vec(any::<u8>(), 0..12),
            v in prop::collection::vec(any::<u8>(), 0..120),
        ) {
            let r = Ledger::restore([(k, v)]);
            prop_assert_eq!(r.flows.len() + r.damaged.len() + r.ledger.marks(), 1);
        }

        /// Whatever the sequence of events, what a reopen finds agrees with
        /// the ledger that wrote it.
        #[test]
        fn reopen_agrees_with_the_writer(ops in prop::collection::vec((0u8..4, 1u16..6, 0u64..8), 0..60)) {
            let mut disk = BTreeMap::new();
            let mut l = Ledger::default();
            let mut seq = 0u64;
            for (op, pkid, floor) in ops {
                match op {
                    0 if !l.holds(pkid) => {
                        apply(&mut disk, [l.published(pkid, &origin("p", seq, 0), &msg("t"))]);
                        seq += 1;
                    }
                    1 => apply(&mut disk, l.released(pkid)),
                    2 => apply(&mut disk, l.completed(pkid)),
                    _ => apply(&mut disk, l.collect(&origin("p", seq, floor))),
                }
            }
            let r = reopen(&disk);
            prop_assert!(r.damaged.is_empty());
            prop_assert_eq!(r.ledger.live(), l.live());
            prop_assert_eq!(r.ledger.marks(), l.marks());
            for s in 0..seq {
                let o = origin("p", s, 0);
                prop_assert_eq!(r.ledger.lookup(&o), l.lookup(&o));
            }
        }
    }
}
