//! The QoS hand-off join: one per source link.
//!
//! A QoS 1/2 message that matched N pipes is admitted with `N` outstanding
//! parts. Each pipe completes its part once the destination acknowledged the
//! forwarded copy, or once it dropped the message on purpose (excluded,
//! oversize, QoS 0 policy, loop). The upstream acknowledgement is released
//! only when every part is complete, and releases happen in ARRIVAL order: a
//! finished message waits behind an earlier unfinished one.
//!
//! Pure and synchronous; generic over the acknowledgement handle so tests can
//! use plain values.

use std::collections::VecDeque;

/// Sequence number of an admitted message, in arrival order.
pub type Seq = u64;

/// Misuse of the join (a bug in the caller, never caused by peers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandOffError {
    /// The sequence number was never admitted or already released.
    #[error("unknown hand-off sequence {0}")]
    Unknown(Seq),
    /// More completions than parts for this sequence.
    #[error("hand-off sequence {0} completed too often")]
    OverCompleted(Seq),
}

#[derive(Debug)]
struct Entry<H> {
    remaining: u32,
    handle: H,
}

/// The arrival-ordered join of pipe completions for one source.
#[derive(Debug)]
pub struct HandOff<H> {
    /// Sequence number of `entries[0]`.
    front_seq: Seq,
    entries: VecDeque<Entry<H>>,
}

impl<H> Default for HandOff<H> {
    fn default() -> Self {
        HandOff {
            front_seq: 0,
            entries: VecDeque::new(),
        }
    }
}

impl<H> HandOff<H> {
    /// An empty join.
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits a message with `parts` outstanding pipe completions and returns
    /// its sequence number. With `parts == 0` it is complete at once (call
    /// [`HandOff::drain_ready_with`]).
    pub fn admit(&mut self, handle: H, parts: u32) -> Seq {
        let seq = self.front_seq + self.entries.len() as Seq;
        self.entries.push_back(Entry {
            remaining: parts,
            handle,
        });
        seq
    }

    /// Marks one part of `seq` complete.
    pub fn complete(&mut self, seq: Seq) -> Result<(), HandOffError> {
        let idx = seq
            .checked_sub(self.front_seq)
            .ok_or(HandOffError::Unknown(seq))?;
        let idx = usize::try_from(idx).map_err(|_| HandOffError::Unknown(seq))?;
        let entry = self
            .entries
            .get_mut(idx)
            .ok_or(HandOffError::Unknown(seq))?;
        entry.remaining = entry
            .remaining
            .checked_sub(1)
            .ok_or(HandOffError::OverCompleted(seq))?;
        Ok(())
    }

    /// Removes and returns, in arrival order, the handles of every complete
    /// message at the front (stopping at the first incomplete one).
    #[cfg(test)]
    pub fn drain_ready(&mut self) -> Vec<H> {
        let mut out = Vec::new();
        self.drain_ready_with(|h| out.push(h));
        out
    }

    /// Removes, in arrival order, the handles of every complete message at
    /// the front (stopping at the first incomplete one), handing each to `f`
    /// (no allocation on the per-message path).
    pub fn drain_ready_with(&mut self, mut f: impl FnMut(H)) {
        while self.entries.front().is_some_and(|e| e.remaining == 0) {
            if let Some(e) = self.entries.pop_front() {
                f(e.handle);
                self.front_seq += 1;
            }
        }
    }

    /// Messages admitted and not yet released.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn releases_in_arrival_order() {
        let mut h = HandOff::new();
        let a = h.admit("a", 1);
        let b = h.admit("b", 2);
        let c = h.admit("c", 1);
        h.complete(c).unwrap();
        assert!(h.drain_ready().is_empty(), "c waits behind a and b");
        h.complete(b).unwrap();
        assert!(h.drain_ready().is_empty(), "b still has one part");
        h.complete(a).unwrap();
        assert_eq!(h.drain_ready(), vec!["a"]);
        h.complete(b).unwrap();
        assert_eq!(h.drain_ready(), vec!["b", "c"]);
        assert!(h.is_empty());
    }

    #[test]
    fn zero_parts_is_ready_at_once() {
        let mut h = HandOff::new();
        h.admit(1, 0);
        assert_eq!(h.drain_ready(), vec![1]);
    }

    #[test]
    fn misuse_is_an_error_not_a_panic() {
        let mut h = HandOff::new();
        let a = h.admit((), 1);
        h.complete(a).unwrap();
        assert_eq!(h.complete(a), Err(HandOffError::OverCompleted(a)));
        assert_eq!(h.complete(99), Err(HandOffError::Unknown(99)));
        h.drain_ready();
        assert_eq!(h.complete(a), Err(HandOffError::Unknown(a)));
    }

    proptest! {
        /// Whatever order the pipes finish in, every message is released
        /// exactly once, in arrival order, and never before all its parts.
        #[test]
        fn any_completion_order_releases_in_order(
            parts in prop::collection::vec(0u32..4, 1..40),
            shuffle in prop::collection::vec(any::<prop::sample::Index>(), 0..200),
        ) {
            let mut h = HandOff::new();
            let mut todo = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                let seq = h.admit(i, *p);
                for _ in 0..*p { todo.push(seq); }
            }
            let mut released = h.drain_ready();
            let mut remaining: Vec<u32> = parts.clone();
            let mut k = 0;
            while !todo.is_empty() {
                let idx = shuffle.get(k).map(|ix| ix.index(todo.len())).unwrap_or(0);
                k += 1;
                let seq = todo.swap_remove(idx);
                h.complete(seq).unwrap();
                remaining[seq as usize] -= 1;
                for r in h.drain_ready() {
                    prop_assert_eq!(remaining[r], 0);
                    released.push(r);
                }
            }
            prop_assert_eq!(released, (0..parts.len()).collect::<Vec<_>>());
            prop_assert!(h.is_empty());
        }
    }
}
