//! Packet-id allocation that never hands out an id still in flight.

use std::collections::HashSet;

/// Allocates packet ids 1..=65535 round-robin, skipping ids in use. Memory is
/// proportional to the ids in use (a broker keeps one per session). The set
/// takes one insert and one remove per QoS 1/2 message, so it hashes with
/// foldhash, not SipHash: we pick the ids, a peer picks none.
#[derive(Debug, Clone, Default)]
pub struct PacketIds {
    in_use: HashSet<u16, foldhash::fast::RandomState>,
    /// The last id handed out (0 before the first).
    last: u16,
}

impl PacketIds {
    /// All 65,535 ids free.
    pub fn new() -> Self {
        PacketIds::default()
    }

    /// The next free id after the last one handed out, wrapping from 65535
    /// to 1; `None` when all 65,535 are in use.
    pub fn allocate(&mut self) -> Option<u16> {
        if self.in_use.len() >= usize::from(u16::MAX) {
            return None;
        }
        let mut id = self.last;
        loop {
            id = if id == u16::MAX { 1 } else { id + 1 };
            if self.in_use.insert(id) {
                self.last = id;
                return Some(id);
            }
        }
    }

    /// Marks `id` as in use (e.g. restoring a session); false if it already
    /// was or is 0.
    pub fn claim(&mut self, id: u16) -> bool {
        id != 0 && self.in_use.insert(id)
    }

    /// Frees `id`; false if it was not in use.
    pub fn release(&mut self, id: u16) -> bool {
        self.in_use.remove(&id)
    }

    /// Whether `id` is in flight.
    pub fn is_in_use(&self, id: u16) -> bool {
        self.in_use.contains(&id)
    }

    /// Number of ids in use.
    pub fn len(&self) -> usize {
        self.in_use.len()
    }

    /// True when no id is in use.
    pub fn is_empty(&self) -> bool {
        self.in_use.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_one_and_counts_up() {
        let mut ids = PacketIds::new();
        assert_eq!(ids.allocate(), Some(1));
        assert_eq!(ids.allocate(), Some(2));
        assert!(ids.release(1));
        // Round-robin: a freed id is not reused at once.
        assert_eq!(ids.allocate(), Some(3));
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn wraps_and_skips_ids_in_use() {
        let mut ids = PacketIds::new();
        assert!(ids.claim(1));
        assert!(ids.claim(65535));
        ids.last = 65534;
        assert_eq!(ids.allocate(), Some(2));
        assert!(!ids.claim(0));
        assert!(!ids.claim(2));
    }

    #[test]
    fn full_returns_none_until_released() {
        let mut ids = PacketIds::new();
        for want in 1..=u16::MAX {
            assert_eq!(ids.allocate(), Some(want));
        }
        assert_eq!(ids.allocate(), None);
        assert!(ids.release(40_000));
        assert_eq!(ids.allocate(), Some(40_000));
        assert_eq!(ids.allocate(), None);
        assert!(!ids.release(0));
    }

    use proptest::prelude::*;

    proptest! {
        /// Against a set model, from any starting point (so wrap-around is
        /// covered): an allocated id is never one in use, and never 0.
        #[test]
        fn never_hands_out_an_id_in_use(
            start in any::<u16>(),
            ops in proptest::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 1..300),
        ) {
            let mut ids = PacketIds { last: start, ..PacketIds::new() };
            let mut model: Vec<u16> = Vec::new();
            for (alloc, pick) in ops {
                if alloc || model.is_empty() {
                    let id = ids.allocate().expect("never full here");
                    prop_assert!(id != 0 && !model.contains(&id), "id {} reused", id);
                    model.push(id);
                } else {
                    let id = model.swap_remove(pick.index(model.len()));
                    prop_assert!(ids.release(id));
                }
                prop_assert_eq!(ids.len(), model.len());
            }
        }
    }
}
