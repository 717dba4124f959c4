//! The hand-over point between a source's dispatcher and one pipe's worker.
//!
//! Two queues: messages that carry an upstream acknowledgement (bounded by
//! the dispatcher's pending limit, never dropped here) and messages that do
//! not (source QoS 0: the bounded [`DropQueue`] with the pipe's policy). The
//! worker takes them in arrival order across both.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

use crate::protocol::Message;

use super::handoff::Seq;
use super::loopguard::BrokerSet;
use super::queue::{DropQueue, WhenFull};
use super::stats::{DropReason, PipeStats};

/// One message on its way through a pipe.
#[derive(Debug)]
pub(crate) struct Item {
    /// The copy to publish (rules already applied).
    pub msg: Message,
    /// The hand-off part to complete, if the source needs an acknowledgement.
    pub seq: Option<Seq>,
    /// Brokers this copy has visited (for the loop guard record).
    pub visited: BrokerSet,
    /// When the source delivered it (for the latency histogram).
    pub received_at: Instant,
    /// Arrival order within the pipe.
    order: u64,
}

impl Item {
    pub(crate) fn new(
        msg: Message,
        seq: Option<Seq>,
        visited: BrokerSet,
        received_at: Instant,
    ) -> Self {
        Item {
            msg,
            seq,
            visited,
            received_at,
            order: 0,
        }
    }
}

#[derive(Debug)]
struct State {
    next_order: u64,
    acked: VecDeque<Item>,
    lossy: DropQueue<Item>,
    closed: bool,
}

/// Shared between one dispatcher (producer) and one worker (consumer). The
/// std `Mutex` is held only for queue operations, never across an `.await`.
#[derive(Debug)]
pub(crate) struct Inbox {
    state: Mutex<State>,
    notify: Notify,
    stats: Arc<PipeStats>,
}

impl Inbox {
    pub(crate) fn new(size: usize, when_full: WhenFull, stats: Arc<PipeStats>) -> Self {
        Inbox {
            state: Mutex::new(State {
                next_order: 0,
                acked: VecDeque::new(),
                lossy: DropQueue::new(size, when_full),
                closed: false,
            }),
            notify: Notify::new(),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-operation;
        // the queues are still structurally valid.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an item. Items with a hand-off part are never dropped; others go
    /// through the bounded queue, whose drops are counted as `queue_full`.
    ///
    /// The depth gauge is moved by deltas, not set: during a reload the old
    /// and the new inbox of a changed pipe share the pipe's counters.
    pub(crate) fn push(&self, mut item: Item) {
        let mut st = self.lock();
        let was_empty = st.acked.is_empty() && st.lossy.is_empty();
        item.order = st.next_order;
        st.next_order += 1;
        if item.seq.is_some() {
            st.acked.push_back(item);
            self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
        } else if st.lossy.push(item).is_some() {
            // One in, one out: the depth is unchanged.
            self.stats.drop_one(DropReason::QueueFull);
        } else {
            self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
        }
        drop(st);
        // Only the first item wakes the worker: it takes items until the
        // inbox is empty before it waits again, so a wake-up per item would
        // only cost it an empty turn.
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Takes the oldest item across both queues.
    pub(crate) fn pop(&self) -> Option<Item> {
        let mut st = self.lock();
        let take_acked = match (st.acked.front(), st.lossy.front()) {
            (Some(a), Some(l)) => a.order < l.order,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let item = if take_acked {
            st.acked.pop_front()
        } else {
            st.lossy.pop()
        };
        if item.is_some() {
            self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
        }
        item
    }

    /// Takes every waiting item (a retired pipe releasing what it holds).
    pub(crate) fn take_all(&self) -> Vec<Item> {
        let mut st = self.lock();
        let mut items: Vec<Item> = st.acked.drain(..).collect();
        while let Some(i) = st.lossy.pop() {
            items.push(i);
        }
        self.stats
            .queue_depth
            .fetch_sub(items.len() as u64, Ordering::Relaxed);
        items
    }

    /// Whether an item is waiting.
    pub(crate) fn has_items(&self) -> bool {
        let st = self.lock();
        !st.acked.is_empty() || !st.lossy.is_empty()
    }

    /// No more items will be pushed; the worker ends once it has drained.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    /// Closed and empty.
    pub(crate) fn is_finished(&self) -> bool {
        let st = self.lock();
        st.closed && st.acked.is_empty() && st.lossy.is_empty()
    }

    /// Resolves after the next `push` into an empty inbox or `close` (or at
    /// once if one happened since the last wait: `Notify` keeps one permit).
    /// The consumer must take items until [`Inbox::pop`] returns `None`
    /// before it waits here.
    pub(crate) async fn changed(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::protocol::QoS;

    fn item(seq: Option<Seq>) -> Item {
        let msg = Message::new("t", b"x".to_vec(), QoS::AtLeastOnce, false);
        Item::new(msg, seq, BrokerSet::EMPTY, Instant::now())
    }

    #[test]
    fn only_a_push_into_an_empty_inbox_wakes_the_worker() {
        let inbox = Inbox::new(10, WhenFull::DropOldest, Arc::new(PipeStats::default()));
        assert!(
            inbox.changed().now_or_never().is_none(),
            "nothing pushed yet"
        );
        inbox.push(item(Some(0)));
        inbox.push(item(None));
        inbox.push(item(Some(1)));
        assert!(
            inbox.changed().now_or_never().is_some(),
            "the first push woke"
        );
        assert!(
            inbox.changed().now_or_never().is_none(),
            "pushes into a non-empty inbox do not (no empty turns)"
        );
        let orders: Vec<u64> = std::iter::from_fn(|| inbox.pop())
            .map(|i| i.order)
            .collect();
        assert_eq!(orders, vec![0, 1, 2], "arrival order across both queues");
        inbox.push(item(Some(2)));
        assert!(
            inbox.changed().now_or_never().is_some(),
            "empty again: wakes"
        );
        assert!(inbox.pop().is_some());
        inbox.close();
        assert!(inbox.changed().now_or_never().is_some(), "close wakes");
        assert!(inbox.is_finished());
    }
}
