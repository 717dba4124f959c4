//! The spool's bookkeeping, pure and synchronous: which sequence numbers
//! are written and not yet acknowledged, the contiguous acknowledged cursor,
//! what is next to send, depth in messages and bytes, and the oldest age.
//!
//! Acknowledgements arrive out of order (a window of publishes is in flight);
//! the cursor advances only over a contiguous acknowledged prefix, and each
//! advance names the range of records it passed (the spool deletes them from
//! disk, with the cursor, in batches: see [`super`]).
//!
//! Sequence numbers are issued in order, so the records from the cursor to
//! the head sit in a ring indexed by `seq - cursor` (a slot is empty once
//! its record is acknowledged or dropped, or if it was never found at
//! recovery): appending, acknowledging and finding the next record to send
//! cost no tree search and no allocation per record.

use std::collections::VecDeque;
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
    /// The next sequence number to send (records below it were handed to
    /// the destination at least once since the pipe started).
    next_send: SpoolSeq,
    /// One slot per sequence number from `cursor` to the head (exclusive):
    /// the record's entry while it is written and not acknowledged. The
    /// first slot, when there is one, is never empty except after a
    /// recovery that found a gap (the next advance removes it).
    slots: VecDeque<Option<Entry>>,
    /// Live (non-empty) slots.
    live: u64,
    /// Sum of the live records' bytes.
    bytes: u64,
}

impl Book {
    /// An empty book whose cursor (and head) is `cursor`.
    pub fn new(cursor: SpoolSeq) -> Self {
        Book {
            cursor,
            next_send: cursor,
            ..Book::default()
        }
    }

    fn slot(&self, seq: SpoolSeq) -> Option<&Option<Entry>> {
        let ix = usize::try_from(seq.checked_sub(self.cursor)?).ok()?;
        self.slots.get(ix)
    }

    fn slot_mut(&mut self, seq: SpoolSeq) -> Option<&mut Option<Entry>> {
        let ix = usize::try_from(seq.checked_sub(self.cursor)?).ok()?;
        self.slots.get_mut(ix)
    }

    /// Registers a record found on disk at open (`seq >= cursor`).
    pub fn recover(&mut self, seq: SpoolSeq, bytes: u64, received_ms: u64) {
        if seq < self.cursor || self.is_live(seq) {
            return;
        }
        let Ok(ix) = usize::try_from(seq - self.cursor) else {
            return;
        };
        if ix >= self.slots.len() {
            self.slots.resize(ix + 1, None);
        }
        self.slots[ix] = Some(Entry { bytes, received_ms });
        self.live += 1;
        self.bytes += bytes;
    }

    /// Makes the head at least `head` (sequence numbers a recovery found
    /// used, even by damaged records, are never issued again).
    pub fn extend_to(&mut self, head: SpoolSeq) {
        if let Ok(len) = usize::try_from(head.saturating_sub(self.cursor))
            && len > self.slots.len()
        {
            self.slots.resize(len, None);
        }
    }

    /// Forgets the records from `from` to the head and issues their
    /// sequence numbers again (a write that failed before anything of it
    /// was handed out).
    pub fn truncate(&mut self, from: SpoolSeq) {
        while self.head() > from.max(self.cursor) {
            if let Some(Some(e)) = self.slots.pop_back() {
                self.live -= 1;
                self.bytes -= e.bytes;
            }
        }
        self.next_send = self.next_send.min(self.head());
    }

    /// Assigns the next sequence number to a record of `bytes`.
    pub fn append(&mut self, bytes: u64, received_ms: u64) -> SpoolSeq {
        let seq = self.head();
        self.slots.push_back(Some(Entry { bytes, received_ms }));
        self.live += 1;
        self.bytes += bytes;
        seq
    }

    /// The first live record at or after `next_send`.
    fn first_live_from(&self, from: SpoolSeq) -> Option<SpoolSeq> {
        let start = usize::try_from(from.saturating_sub(self.cursor)).ok()?;
        self.slots
            .range(start.min(self.slots.len())..)
            .position(Option::is_some)
            .map(|i| self.cursor.max(from) + i as u64)
    }

    /// The next record to send, marked as sent; `None` when every live
    /// record was handed out.
    pub fn next_to_send(&mut self) -> Option<SpoolSeq> {
        let seq = self.first_live_from(self.next_send)?;
        self.next_send = seq + 1;
        Some(seq)
    }

    /// The next record to send, without marking it.
    pub fn first_unsent(&self) -> Option<SpoolSeq> {
        self.first_live_from(self.next_send)
    }

    /// Whether a live record waits to be sent.
    pub fn has_unsent(&self) -> bool {
        self.first_unsent().is_some()
    }

    /// Live records not yet handed out.
    pub fn unsent(&self) -> u64 {
        let start = usize::try_from(self.next_send.saturating_sub(self.cursor))
            .unwrap_or(usize::MAX)
            .min(self.slots.len());
        self.slots.range(start..).filter(|s| s.is_some()).count() as u64
    }

    /// Sends everything live again from the start (a new pipe instance).
    pub fn rewind(&mut self) {
        self.next_send = self.cursor;
    }

    /// Acknowledges `seq`. Returns the range to delete when the contiguous
    /// cursor advanced (`None` for an unknown or repeated ack, or one that
    /// leaves a gap before it).
    pub fn ack(&mut self, seq: SpoolSeq) -> Option<Range<SpoolSeq>> {
        let e = self.slot_mut(seq)?.take()?;
        self.live -= 1;
        self.bytes -= e.bytes;
        self.advance()
    }

    /// Drops the oldest live record (a full spool with `drop_oldest`).
    /// Returns its sequence number and the range to delete.
    pub fn drop_oldest(&mut self) -> Option<(SpoolSeq, Range<SpoolSeq>)> {
        let seq = self.first_live_from(self.cursor)?;
        let e = self.slot_mut(seq)?.take()?;
        self.live -= 1;
        self.bytes -= e.bytes;
        let range = self.advance().unwrap_or(seq..seq + 1);
        Some((seq, range))
    }

    /// Moves the cursor over the empty slots at the front.
    fn advance(&mut self) -> Option<Range<SpoolSeq>> {
        let old = self.cursor;
        while self.slots.front().is_some_and(Option::is_none) {
            self.slots.pop_front();
            self.cursor += 1;
        }
        if self.cursor == old {
            return None;
        }
        self.next_send = self.next_send.max(self.cursor);
        Some(old..self.cursor)
    }

    /// The acknowledged cursor.
    pub fn cursor(&self) -> SpoolSeq {
        self.cursor
    }

    /// The next sequence number to write.
    pub fn head(&self) -> SpoolSeq {
        self.cursor + self.slots.len() as u64
    }

    /// Records written and not acknowledged.
    pub fn depth(&self) -> u64 {
        self.live
    }

    /// Their bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether `seq` is written and not acknowledged.
    pub fn is_live(&self, seq: SpoolSeq) -> bool {
        self.slot(seq).is_some_and(Option::is_some)
    }

    /// Age in milliseconds of the oldest live record at `now_ms` (wall
    /// clock, milliseconds since the Unix epoch); 0 when empty.
    pub fn oldest_age_ms(&self, now_ms: u64) -> u64 {
        self.slots
            .iter()
            .flatten()
            .next()
            .map_or(0, |e| now_ms.saturating_sub(e.received_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

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
    fn a_failed_write_gives_its_numbers_back() {
        let mut b = Book::new(0);
        for _ in 0..3 {
            b.append(10, 0);
        }
        assert_eq!(b.next_to_send(), Some(0));
        b.truncate(1);
        assert_eq!((b.head(), b.depth(), b.bytes()), (1, 1, 10));
        assert_eq!(b.next_to_send(), None);
        assert_eq!(b.append(5, 0), 1, "the number is issued again");
        assert_eq!(b.next_to_send(), Some(1));
        // Never below the cursor.
        b.ack(0);
        b.ack(1);
        b.truncate(0);
        assert_eq!((b.cursor(), b.head(), b.depth()), (2, 2, 0));
        // A recovery's gap keeps its numbers used.
        let mut r = Book::new(0);
        r.recover(1, 1, 0);
        r.extend_to(4);
        assert_eq!((r.head(), r.depth()), (4, 1));
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

        /// The ring answers exactly as a map of the live records would:
        /// send order (with rewinds), liveness, depth, head, oldest age and
        /// unsent count, after a recovery with gaps and any mix of appends,
        /// sends, acks and drops.
        #[test]
        fn ring_matches_a_map_model(
            cursor in 0u64..1000,
            found in prop::collection::btree_set(0u64..40, 0..20),
            ops in prop::collection::vec((0u8..7, any::<prop::sample::Index>()), 1..200),
        ) {
            let mut b = Book::new(cursor);
            // live seq -> received_ms; the model's cursor and next to send.
            let mut live: BTreeMap<u64, u64> = BTreeMap::new();
            for s in &found {
                b.recover(cursor + s, 1, cursor + s);
                live.insert(cursor + s, cursor + s);
            }
            let mut head = live.keys().next_back().map_or(cursor, |s| s + 1);
            let mut next_send = cursor;
            for (op, ix) in ops {
                match op {
                    0 | 1 => {
                        let s = b.append(1, head);
                        prop_assert_eq!(s, head);
                        live.insert(s, head);
                        head += 1;
                    }
                    2 => {
                        let want = live.range(next_send..).next().map(|(s, _)| *s);
                        prop_assert_eq!(b.next_to_send(), want);
                        if let Some(s) = want { next_send = s + 1; }
                    }
                    3 => {
                        let keys: Vec<u64> = live.range(..next_send).map(|(s, _)| *s).collect();
                        if keys.is_empty() { continue; }
                        let s = keys[ix.index(keys.len())];
                        live.remove(&s);
                        b.ack(s);
                        prop_assert_eq!(b.ack(s), None, "repeated ack");
                    }
                    4 => {
                        let want = live.keys().next().copied();
                        prop_assert_eq!(b.drop_oldest().map(|(s, _)| s), want);
                        if let Some(s) = want { live.remove(&s); }
                    }
                    5 => { b.rewind(); next_send = b.cursor(); }
                    _ => {
                        // A failed write takes back its newest, unsent records.
                        let unsent: Vec<u64> = live.range(next_send.max(b.cursor())..).map(|(s, _)| *s).collect();
                        if unsent.is_empty() { continue; }
                        let from = unsent[ix.index(unsent.len())];
                        if live.range(from..).count() != unsent.iter().filter(|s| **s >= from).count() { continue; }
                        b.truncate(from);
                        live.retain(|s, _| *s < from);
                        head = from;
                    }
                }
                prop_assert_eq!(b.head(), head);
                prop_assert_eq!(b.depth(), live.len() as u64);
                prop_assert_eq!(b.bytes(), live.len() as u64);
                prop_assert_eq!(b.unsent(), live.range(next_send..).count() as u64);
                prop_assert_eq!(b.first_unsent(), live.range(next_send..).next().map(|(s, _)| *s));
                prop_assert_eq!(b.oldest_age_ms(10_000), live.values().next().map_or(0, |r| 10_000 - r));
                for s in cursor..head + 2 {
                    prop_assert_eq!(b.is_live(s), live.contains_key(&s));
                }
                next_send = next_send.max(b.cursor());
            }
        }
    }
}
