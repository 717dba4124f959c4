//! The bounded per-pipe queue for messages that carry no upstream
//! acknowledgement (QoS 0 at the source). When it is full, the configured
//! policy decides which message is dropped; the caller counts every drop.

use std::collections::VecDeque;

/// What to drop when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Drop the oldest queued message to make room (the default: fresh data wins).
    #[default]
    DropOldest,
    /// Drop the incoming message.
    DropNewest,
}

/// A bounded FIFO with a drop policy. Pure.
#[derive(Debug)]
pub struct DropQueue<T> {
    items: VecDeque<T>,
    capacity: usize,
    when_full: WhenFull,
}

impl<T> DropQueue<T> {
    /// A queue holding at most `capacity` items (at least 1).
    pub fn new(capacity: usize, when_full: WhenFull) -> Self {
        DropQueue {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            when_full,
        }
    }

    /// Appends `item`; returns the item dropped to respect the bound, if any
    /// (the oldest one or `item` itself, per the policy).
    pub fn push(&mut self, item: T) -> Option<T> {
        if self.items.len() < self.capacity {
            self.items.push_back(item);
            return None;
        }
        match self.when_full {
            WhenFull::DropNewest => Some(item),
            WhenFull::DropOldest => {
                let dropped = self.items.pop_front();
                self.items.push_back(item);
                dropped
            }
        }
    }

    /// Removes the oldest item.
    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    /// The oldest item, without removing it.
    pub fn front(&self) -> Option<&T> {
        self.items.front()
    }

    /// Queued items.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn drop_oldest_keeps_the_newest() {
        let mut q = DropQueue::new(2, WhenFull::DropOldest);
        assert_eq!(q.push(1), None);
        assert_eq!(q.push(2), None);
        assert_eq!(q.push(3), Some(1));
        assert_eq!(q.pop(), Some(2));
        assert_eq!(q.pop(), Some(3));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn drop_newest_keeps_the_oldest() {
        let mut q = DropQueue::new(2, WhenFull::DropNewest);
        q.push(1);
        q.push(2);
        assert_eq!(q.push(3), Some(3));
        assert_eq!(q.pop(), Some(1));
    }

    proptest! {
        /// Never above capacity; every push either stays or is reported dropped.
        #[test]
        fn bounded_and_accounted(cap in 1usize..8, newest in any::<bool>(), ops in prop::collection::vec(any::<bool>(), 0..100)) {
            let policy = if newest { WhenFull::DropNewest } else { WhenFull::DropOldest };
            let mut q = DropQueue::new(cap, policy);
            let (mut pushed, mut dropped, mut popped) = (0usize, 0usize, 0usize);
            for push in ops {
                if push { pushed += 1; if q.push(pushed).is_some() { dropped += 1; } }
                else if q.pop().is_some() { popped += 1; }
                prop_assert!(q.len() <= cap);
                prop_assert_eq!(pushed, dropped + popped + q.len());
            }
        }
    }
}
