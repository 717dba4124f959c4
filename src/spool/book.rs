//! The spool's bookkeeping, pure and synchronous: which sequence numbers
//! are written and not yet acknowledged, the contiguous acknowledged cursor,
//! what is next to send, depth in messages and bytes, and the oldest age.
//!
//! Acknowledgements arrive out of order (a window of publishes is in flight);
//! the cursor advances only over a contiguous acknowledged prefix, and each
//! advance names the range of records it passed (the spool deletes them from
//! disk, with the cursor, in batches: see [`super`]).

use std::collections::BTreeMap;
use std::ops::Range;

/// Sequence number of a spooled record (its key, big-endian on disk).
pub type SpoolSeq = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    bytes: u64,
    received_ms: u64,
}

/// The bookkeeping of one spool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Book {
    /// Every sequence number below it is acknowledged (deleted).
    cursor: SpoolSeq,
    /// The next sequence number to write.
    head: SpoolSeq,
    /// The next sequence number to send (records below it were handed to
    /// the destination at least once since the pipe started).
    next_send: SpoolSeq,
    /// Written and not acknowledged, by sequence number.
    live: BTreeMap<SpoolSeq, Entry>,
    /// Sum of `live` bytes.
    bytes: u64,
}

impl Book {
    /// An empty book whose cursor (and head) is `cursor`.
    pub fn new(cursor: SpoolSeq) -> Self {
        Book {
            cursor,
            head: cursor,
            next_send: cursor,
            ..Book::default()
        }
    }

    /// Registers a record found on disk at open (`seq >= cursor`).
    pub fn recover(&mut self, seq: SpoolSeq, bytes: u64, received_ms: u64) {
        if seq < self.cursor || self.live.contains_key(&seq) {
            return;
        }
        self.live.insert(seq, Entry { bytes, received_ms });
        self.bytes += bytes;
        self.head = self.head.max(seq + 1);
    }

    /// Assigns the next sequence number to a record of `bytes`.
    pub fn append(&mut self, bytes: u64, received_ms: u64) -> SpoolSeq {
        let seq = self.head;
        self.head += 1;
        self.live.insert(seq, Entry { bytes, received_ms });
        self.bytes += bytes;
        seq
    }

    /// The next record to send, marked as sent; `None` when every live
    /// record was handed out.
    pub fn next_to_send(&mut self) -> Option<SpoolSeq> {
        let (&seq, _) = self.live.range(self.next_send..).next()?;
        self.next_send = seq + 1;
        Some(seq)
    }

    /// The next record to send, without marking it.
    pub fn first_unsent(&self) -> Option<SpoolSeq> {
        self.live.range(self.next_send..).next().map(|(s, _)| *s)
    }

    /// Whether a live record waits to be sent.
    pub fn has_unsent(&self) -> bool {
        self.live.range(self.next_send..).next().is_some()
    }

    /// Live records not yet handed out.
    pub fn unsent(&self) -> u64 {
        self.live.range(self.next_send..).count() as u64
    }

    /// Sends everything live again from the start (a new pipe instance).
    pub fn rewind(&mut self) {
        self.next_send = self.cursor;
    }

    /// Acknowledges `seq`. Returns the range to delete when the contiguous
    /// cursor advanced (`None` for an unknown or repeated ack, or one that
    /// leaves a gap before it).
    pub fn ack(&mut self, seq: SpoolSeq) -> Option<Range<SpoolSeq>> {
        let e = self.live.remove(&seq)?;
        self.bytes -= e.bytes;
        self.advance()
    }

    /// Drops the oldest live record (a full spool with `drop_oldest`).
    /// Returns its sequence number and the range to delete.
    pub fn drop_oldest(&mut self) -> Option<(SpoolSeq, Range<SpoolSeq>)> {
        let (seq, e) = self.live.pop_first()?;
        self.bytes -= e.bytes;
        let range = self.advance().unwrap_or(seq..seq + 1);
        Some((seq, range))
    }

    fn advance(&mut self) -> Option<Range<SpoolSeq>> {
        let new = self.live.keys().next().copied().unwrap_or(self.head);
        if new <= self.cursor {
            return None;
        }
        let old = std::mem::replace(&mut self.cursor, new);
        self.next_send = self.next_send.max(new);
        Some(old..new)
    }

    /// The acknowledged cursor.
    pub fn cursor(&self) -> SpoolSeq {
        self.cursor
    }

    /// The next sequence number to write.
    pub fn head(&self) -> SpoolSeq {
        self.head
    }

    /// Records written and not acknowledged.
    pub fn depth(&self) -> u64 {
        self.live.len() as u64
    }

    /// Their bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether `seq` is written and not acknowledged.
    pub fn is_live(&self, seq: SpoolSeq) -> bool {
        self.live.contains_key(&seq)
    }

    /// Age in milliseconds of the oldest live record at `now_ms` (wall
    /// clock, milliseconds since the Unix epoch); 0 when empty.
    pub fn oldest_age_ms(&self, now_ms: u64) -> u64 {
        self.live
            .values()
            .next()
            .map_or(0, |e| now_ms.saturating_sub(e.received_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn out_of_order_acks_advance_contiguously() {
        let mut b = Book::new(10);
        let s: Vec<_> = (0..4).map(|i| b.append(100, 1000 + i)).collect();
        assert_eq!(s, vec![10, 11, 12, 13]);
        assert_eq!((b.depth(), b.bytes()), (4, 400));
        assert_eq!(b.oldest_age_ms(1500), 500);
        assert_eq!(b.ack(12), None, "gap before 12");
        assert_eq!(b.ack(10), Some(10..11));
        assert_eq!(b.ack(11), Some(11..13));
        assert_eq!(b.ack(11), None, "repeated ack");
        assert_eq!(b.oldest_age_ms(1500), 497);
        assert_eq!(b.ack(13), Some(13..14));
        assert_eq!((b.depth(), b.bytes(), b.cursor()), (0, 0, 14));
        assert_eq!(b.oldest_age_ms(1500), 0);
    }

    #[test]
    fn send_order_rewind_and_drop_oldest() {
        let mut b = Book::new(0);
        for _ in 0..3 {
            b.append(1, 0);
        }
        assert_eq!(b.next_to_send(), Some(0));
        assert_eq!(b.next_to_send(), Some(1));
        b.rewind();
        assert_eq!(b.next_to_send(), Some(0));
        assert_eq!(b.drop_oldest(), Some((0, 0..1)));
        assert_eq!(b.ack(2), None);
        assert_eq!(b.next_to_send(), Some(1));
        assert_eq!(b.next_to_send(), None);
        assert_eq!(b.drop_oldest(), Some((1, 1..3)));
        assert_eq!(b.drop_oldest(), None);
    }

    #[test]
    fn recovery_resumes_after_the_last_record() {
        let mut b = Book::new(5);
        b.recover(3, 9, 0); // below the cursor: ignored
        b.recover(7, 10, 0);
        b.recover(6, 10, 0);
        assert_eq!((b.head(), b.depth(), b.bytes()), (8, 2, 20));
        assert_eq!(b.next_to_send(), Some(6));
        assert_eq!(b.append(1, 0), 8);
    }

    proptest! {
        /// Whatever order acks and drops come in: the cursor never passes a
        /// live record, every deleted range holds only acknowledged or
        /// dropped records, ranges never overlap, and bytes add up.
        #[test]
        fn cursor_never_passes_a_live_record(
            ops in prop::collection::vec((0u8..4, any::<prop::sample::Index>(), 1u64..50), 1..200),
        ) {
            let mut b = Book::new(0);
            let mut live: BTreeMap<u64, u64> = BTreeMap::new();
            let mut deleted_to = 0u64;
            for (op, ix, bytes) in ops {
                match op {
                    0 | 1 => { let s = b.append(bytes, 0); live.insert(s, bytes); }
                    2 => {
                        if live.is_empty() { continue; }
                        let keys: Vec<u64> = live.keys().copied().collect();
                        let s = keys[ix.index(keys.len())];
                        live.remove(&s);
                        if let Some(r) = b.ack(s) {
                            prop_assert_eq!(r.start, deleted_to);
                            prop_assert!(live.range(r.clone()).next().is_none());
                            deleted_to = r.end;
                        }
                    }
                    _ => {
                        if let Some((s, r)) = b.drop_oldest() {
                            prop_assert_eq!(live.keys().next().copied(), Some(s));
                            live.remove(&s);
                            prop_assert!(live.range(r.clone()).next().is_none());
                            deleted_to = deleted_to.max(r.end);
                        }
                    }
                }
                prop_assert_eq!(b.depth(), live.len() as u64);
                prop_assert_eq!(b.bytes(), live.values().sum::<u64>());
                prop_assert!(live.keys().next().is_none_or(|f| *f >= b.cursor()));
            }
        }
    }
}
