//! The hand-over point between a source's dispatcher and one pipe's worker.
//!
//! `delivery: end_to_end`: two queues in memory, messages that carry an
//! upstream acknowledgement (bounded by the dispatcher's pending limit,
//! never dropped here) and messages that do not (source QoS 0: the bounded
//! [`DropQueue`] with the pipe's policy). The worker takes them in arrival
//! order across both, and its completions go back to the dispatcher.
//!
//! `delivery: spool` ([`SpoolStage`]): a message with an upstream
//! acknowledgement (and QoS 0 with `qos0: spool`) is written to the pipe's
//! [`Spool`]; its hand-off part completes once the write is durable (the
//! committer task), so the source is acknowledged then. The worker forwards
//! from the spool in order; its completions carry spool sequence numbers and
//! go to the acker task, which advances the spool's cursor (and saves it, with
//! the deletes, in batches: see [`crate::spool`]). When the spool is
//! full with `when_full: block`, messages wait in memory (`blocked`) with
//! their hand-off parts open, so the dispatcher's pending window fills and
//! the source keeps the backlog.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{Notify, mpsc};

use crate::protocol::{Message, QoS};
use crate::spool::{Appended, Record, Spool, now_ms};

use super::handoff::Seq;
use super::loopguard::BrokerSet;
use super::queue::{DropQueue, WhenFull};
use super::stats::{DropReason, PipeStats};

/// The spool side of an inbox in `delivery: spool` mode.
#[derive(Debug)]
pub(crate) struct SpoolStage {
    /// The pipe's spool (shared with later instances of the pipe).
    pub spool: Arc<Spool>,
    /// `qos0: spool`: QoS 0 goes through the spool too.
    pub qos0: bool,
    /// Hand-off parts to complete once what was written is durable.
    pub commit: mpsc::UnboundedSender<Seq>,
    /// The dispatcher's completions (for parts released without a write).
    pub done: mpsc::UnboundedSender<Seq>,
}

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
    /// Spool mode: waiting to be written, pushed since the last flush or
    /// waiting for room in a full spool (`block`).
    blocked: VecDeque<Item>,
    closed: bool,
}

/// Shared between one dispatcher (producer) and one worker (consumer). The
/// std `Mutex` is held only for queue operations, never across an `.await`.
#[derive(Debug)]
pub(crate) struct Inbox {
    state: Mutex<State>,
    notify: Notify,
    stats: Arc<PipeStats>,
    stage: Option<SpoolStage>,
}

impl Inbox {
    pub(crate) fn new(size: usize, when_full: WhenFull, stats: Arc<PipeStats>) -> Self {
        Inbox {
            state: Mutex::new(State {
                next_order: 0,
                acked: VecDeque::new(),
                lossy: DropQueue::new(size, when_full),
                blocked: VecDeque::new(),
                closed: false,
            }),
            notify: Notify::new(),
            stats,
            stage: None,
        }
    }

    /// An inbox in `delivery: spool` mode.
    pub(crate) fn spooled(
        size: usize,
        when_full: WhenFull,
        stats: Arc<PipeStats>,
        stage: SpoolStage,
    ) -> Self {
        stats.spooled.store(stage.spool.depth(), Ordering::Relaxed);
        let mut inbox = Inbox::new(size, when_full, stats);
        inbox.stage = Some(stage);
        inbox
    }

    /// Whether this inbox is in `delivery: spool` mode.
    pub(crate) fn is_spooled(&self) -> bool {
        self.stage.is_some()
    }

    /// Spool mode: the spool's acknowledged cursor (see [`Spool::cursor`]).
    pub(crate) fn spool_cursor(&self) -> Option<u64> {
        self.stage.as_ref().map(|s| s.spool.cursor())
    }

    /// Whether `item` goes through the spool.
    fn spools(&self, item: &Item) -> bool {
        self.stage
            .as_ref()
            .is_some_and(|s| item.seq.is_some() || (s.qos0 && item.msg.qos == QoS::AtMostOnce))
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
        if self.spools(&item) {
            return self.push_spooled(item);
        }
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

    /// Spool mode: queues `item` for the next [`Inbox::flush`], behind
    /// anything waiting for room in a full spool.
    fn push_spooled(&self, item: Item) {
        self.lock().blocked.push_back(item);
        self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
    }

    /// Spool mode: writes what was pushed since the last flush to the spool,
    /// in order, as one block (one store write for a dispatcher's turn).
    /// The dispatcher calls it before it waits again.
    pub(crate) fn flush(&self) {
        if self.stage.is_none() {
            return;
        }
        let mut st = self.lock();
        let wrote = self.write_waiting(&mut st);
        drop(st);
        if wrote {
            self.notify.notify_one();
        }
    }

    /// Writes the items waiting in `blocked`, oldest first, as one block,
    /// until one does not fit a full `block` spool (it and what follows keep
    /// waiting, their parts open). A written item's part completes once the
    /// block is durable (the committer); a dropped one's at once. Returns
    /// whether anything was written.
    fn write_waiting(&self, st: &mut State) -> bool {
        let Some(stage) = &self.stage else {
            return false;
        };
        if st.blocked.is_empty() {
            return false;
        }
        let (wall, mono) = (now_ms(), Instant::now());
        let mut writer = stage.spool.writer();
        let mut commits = Vec::new();
        let mut written = 0usize;
        let mut taken = 0u64;
        while let Some(item) = st.blocked.front() {
            let age = mono.saturating_duration_since(item.received_at);
            let rec = Record {
                msg: item.msg.clone(),
                received_ms: wall.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(0)),
                visited: item.visited.bits(),
            };
            match writer.append(rec) {
                Ok(Appended::Written { dropped, .. }) => {
                    for _ in 0..dropped {
                        self.stats.drop_one(DropReason::SpoolFull);
                    }
                    commits.extend(item.seq);
                    written += 1;
                }
                Ok(Appended::Full) if item.seq.is_some() => break,
                Ok(outcome @ (Appended::Full | Appended::Refused { .. })) => {
                    let dropped = match outcome {
                        Appended::Refused { dropped } => dropped,
                        _ => 0,
                    };
                    for _ in 0..=dropped {
                        self.stats.drop_one(DropReason::SpoolFull);
                    }
                    if let Some(seq) = item.seq {
                        let _ = stage.done.send(seq);
                    }
                }
                // The store failed (I/O): the part stays open, so the source
                // is never acknowledged for what is not on disk.
                Err(err) => self.write_failed(stage, &err),
            }
            st.blocked.pop_front();
            taken += 1;
        }
        self.stats.queue_depth.fetch_sub(taken, Ordering::Relaxed);
        let wrote = match writer.commit() {
            Ok(()) => {
                for seq in commits {
                    let _ = stage.commit.send(seq);
                }
                // QoS 0 (`qos0: spool`) has no part, but the worker must
                // still hear of it.
                written > 0
            }
            Err(err) => {
                self.write_failed(stage, &err);
                false
            }
        };
        self.stats
            .spooled
            .store(stage.spool.depth(), Ordering::Relaxed);
        wrote
    }

    fn write_failed(&self, stage: &SpoolStage, err: &crate::spool::SpoolError) {
        if let Some(suppressed) =
            crate::metrics::ratelimit::allow(&format!("spool-write:{}", stage.spool.name()))
        {
            tracing::error!(error = %err, suppressed, "spool write failed; the messages stay unacknowledged at their source");
        }
    }

    /// Spool mode: the destination acknowledged spool records `seqs`;
    /// writes what waited for the room this made. Returns whether
    /// acknowledgements wait to be saved ([`Inbox::spool_save`]).
    pub(crate) fn spool_ack(&self, seqs: &[u64]) -> bool {
        let Some(stage) = &self.stage else {
            return false;
        };
        let unsaved = match stage.spool.ack_many(seqs) {
            Ok(acked) => {
                self.stats.spooled.store(acked.depth, Ordering::Relaxed);
                acked.unsaved
            }
            Err(err) => {
                tracing::error!(error = %err, "spool: recording an acknowledgement failed");
                self.stats
                    .spooled
                    .store(stage.spool.depth(), Ordering::Relaxed);
                stage.spool.unsaved()
            }
        };
        let mut st = self.lock();
        let wrote = self.write_waiting(&mut st);
        drop(st);
        if wrote {
            self.notify.notify_one();
        }
        unsaved
    }

    /// Spool mode: deletes the acknowledged records and saves the cursor
    /// now (see [`Spool::save`]).
    pub(crate) fn spool_save(&self) {
        let Some(stage) = &self.stage else { return };
        if let Err(err) = stage.spool.save() {
            tracing::error!(error = %err, "spool: saving the acknowledged cursor failed");
        }
    }

    /// The next spooled record as an item (its `seq` is the spool's).
    fn pop_spooled(&self) -> Option<Item> {
        let stage = self.stage.as_ref()?;
        match stage.spool.next() {
            Ok(Some((seq, rec))) => {
                let age = now_ms().saturating_sub(rec.received_ms);
                let now = Instant::now();
                let received_at = now
                    .checked_sub(std::time::Duration::from_millis(age))
                    .unwrap_or(now);
                Some(Item::new(
                    rec.msg,
                    Some(seq),
                    BrokerSet::from_bits(rec.visited),
                    received_at,
                ))
            }
            Ok(None) => None,
            Err(err) => {
                tracing::error!(error = %err, "spool read failed");
                None
            }
        }
    }

    /// Takes the oldest item: in spool mode the spool first (it holds the
    /// acknowledged messages in order), then QoS 0 from memory.
    pub(crate) fn pop(&self) -> Option<Item> {
        if self.stage.is_some() {
            if !self.lock().closed
                && let Some(item) = self.pop_spooled()
            {
                return Some(item);
            }
            let item = self.lock().lossy.pop();
            if item.is_some() {
                self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
            }
            return item;
        }
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
    /// In spool mode, what waited for room in a full spool is released here
    /// (its parts completed, counted as dropped `reload`), and the spool's
    /// records stay on disk.
    pub(crate) fn take_all(&self) -> Vec<Item> {
        let mut st = self.lock();
        if let Some(stage) = &self.stage {
            for item in st.blocked.drain(..) {
                self.stats.drop_one(DropReason::Reload);
                self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                if let Some(seq) = item.seq {
                    let _ = stage.done.send(seq);
                }
            }
        }
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
    /// In spool mode a closed inbox offers no more spooled records: they
    /// stay on disk for the next start (or the pipe's next instance).
    pub(crate) fn has_items(&self) -> bool {
        let st = self.lock();
        let spooled = !st.closed && self.stage.as_ref().is_some_and(|s| s.spool.has_unsent());
        spooled || !st.acked.is_empty() || !st.lossy.is_empty()
    }

    /// No more items will be pushed; the worker ends once it has drained.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    /// Closed and empty.
    pub(crate) fn is_finished(&self) -> bool {
        let st = self.lock();
        st.closed && st.acked.is_empty() && st.lossy.is_empty() && st.blocked.is_empty()
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
