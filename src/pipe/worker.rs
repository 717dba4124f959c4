//! One task per pipe: takes messages from its inbox, publishes them to the
//! destination link with a bounded number in flight, and reports each
//! finished hand-off part back to the source's dispatcher.
//!
//! A reload that removes or changes the pipe closes its inbox: the worker
//! delivers what it holds and ends. If its drain deadline passes first,
//! `retire` is cancelled and it releases every part it still holds (counted
//! as dropped, reason `reload`), so the source is never wedged by a pipe
//! that no longer exists; in spool mode the records in flight stay in the
//! spool (not dropped: a later instance sends them). The successor of a changed pipe starts once its
//! predecessor has ended (`after`), so the pipe's messages stay in order.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::link::{Completion, Link, LinkError, Origin};
use crate::protocol::{QoS, expiry};

use super::handoff::Seq;
use super::inbox::{Inbox, Item};
use super::loopguard::{BrokerIx, LoopGuard};
use super::ratelimit::TokenBucket;
use super::stats::{DropReason, PipeStats};

/// What a finished publish reports.
struct Sent {
    seq: Option<Seq>,
    bytes: u64,
    received_at: Instant,
}

/// The worker of one pipe.
pub(crate) struct Worker {
    pub name: String,
    pub inbox: Arc<Inbox>,
    pub link: Link,
    pub stats: Arc<PipeStats>,
    /// Completed hand-off parts, to the source's dispatcher.
    pub done: mpsc::UnboundedSender<Seq>,
    /// The loop guard and the destination's index: while the destination
    /// is also a source (`dest_is_source`, flipped by reloads), record what
    /// we publish there so our own copy is recognised when it comes back.
    pub guard: (Arc<Mutex<LoopGuard>>, BrokerIx),
    /// See `guard`.
    pub dest_is_source: Arc<AtomicBool>,
    /// Publishes handed to the link and not yet acknowledged, at most.
    pub window: usize,
    pub rate: Option<TokenBucket>,
    /// Hard stop (the shutdown deadline passed).
    pub abort: CancellationToken,
    /// The previous instance of this pipe (changed by a reload); this one
    /// starts publishing once it has ended.
    pub after: Option<CancellationToken>,
    /// Cancelled when a removed or changed pipe's drain deadline passed.
    pub retire: CancellationToken,
    /// Cancels its token when the worker ends.
    pub _finished: DropGuard,
}

/// Publishes handed to the link and not yet finished, by tag.
type Inflight = HashMap<u64, Sent, foldhash::fast::RandomState>;

/// Completions taken per wake-up.
const COMPLETION_BATCH: usize = 256;
/// Under a flood the tokens are checked directly every this many turns.
const CHECK_EVERY: u32 = 32;

impl Worker {
    pub(crate) async fn run(mut self) {
        // Publishes handed to the link and not yet finished, by tag (our
        // own counter, so a fast hash).
        let mut inflight: Inflight = HashMap::default();
        // The link reports every finished publish here, tagged; one channel
        // for the pipe, no future or channel per message.
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Completion>();
        let mut finished: Vec<Completion> = Vec::with_capacity(COMPLETION_BATCH);
        let mut next_tag: u64 = 0;
        // Polled by reference across turns, so each token registers its
        // waiter once, not on every turn of the loop.
        let mut abort = pin!(self.abort.clone().cancelled_owned());
        let mut retire = pin!(self.retire.clone().cancelled_owned());
        if let Some(previous) = self.after.take() {
            tokio::select! {
                () = previous.cancelled() => {}
                () = &mut abort => return,
                () = &mut retire => return self.release(&inflight),
            }
        }
        let window = self.window.max(1);
        let pipe: Arc<str> = self.name.as_str().into();
        let mut rate_wait: Option<tokio::time::Instant> = None;
        let mut turn: u32 = 0;
        loop {
            // Fill the window from the inbox.
            while inflight.len() < window && rate_wait.is_none() {
                if let Some(bucket) = self.rate.as_mut() {
                    if !self.inbox.has_items() {
                        break;
                    }
                    if let Err(wait) = bucket.try_take(tokio::time::Instant::now().into_std()) {
                        rate_wait = Some(tokio::time::Instant::now() + wait);
                        break;
                    }
                }
                let Some(mut item) = self.inbox.pop() else {
                    break;
                };
                // The time spent in the bridge comes off the message's
                // lifetime; one that has none left is not sent.
                if expiry::age(&mut item.msg, item.received_at, Instant::now()).is_err() {
                    self.stats.drop_one(DropReason::Expired);
                    tracing::debug!(pipe = %self.name, "message expired in the bridge; dropped");
                    self.complete(item.seq);
                    continue;
                }
                if self.dest_is_source.load(Ordering::Relaxed) {
                    let (guard, dest) = &self.guard;
                    let mut g = guard.lock().unwrap_or_else(|e| e.into_inner());
                    g.record(
                        *dest,
                        &item.msg.topic,
                        &item.msg.payload,
                        item.visited,
                        Instant::now(),
                    );
                }
                let origin = origin(&pipe, &self.inbox, &item);
                let tag = next_tag;
                next_tag += 1;
                // Recorded before the link has it, so a retire while the
                // link's request queue is full still releases this part.
                inflight.insert(
                    tag,
                    Sent {
                        seq: item.seq,
                        bytes: item.msg.payload.len() as u64,
                        received_at: item.received_at,
                    },
                );
                self.stats.inflight.fetch_add(1, Ordering::Relaxed);
                // Cancel safety: if aborted while the link's request queue is
                // full, the message is simply not sent and not acked upstream.
                let queued = tokio::select! {
                    biased;
                    r = self.link.publish_tagged_from(item.msg, tag, origin, &done_tx) => r,
                    () = &mut abort => return,
                    () = &mut retire => {
                        self.stats.inflight.fetch_sub(inflight.len() as u64, Ordering::Relaxed);
                        return self.release(&inflight);
                    }
                };
                if let Err(err) = queued {
                    self.stats.inflight.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(pipe = %self.name, error = %err, "destination link closed; pipe stops");
                    return;
                }
            }
            if inflight.is_empty() && self.inbox.is_finished() {
                return;
            }
            // Polled last below, so a wake-up for a completion or new work
            // does not poll the tokens; checked directly every
            // `CHECK_EVERY` turns, so a flood cannot starve them.
            turn = turn.wrapping_add(1);
            if turn.is_multiple_of(CHECK_EVERY) {
                if self.abort.is_cancelled() {
                    return;
                }
                if self.retire.is_cancelled() {
                    self.stats
                        .inflight
                        .fetch_sub(inflight.len() as u64, Ordering::Relaxed);
                    return self.release(&inflight);
                }
            }
            tokio::select! {
                biased;
                // Publishes were acknowledged (or failed): frees window slots.
                // `recv_many` is cancel safe; the channel never closes (we
                // hold a sender).
                _ = done_rx.recv_many(&mut finished, COMPLETION_BATCH), if !inflight.is_empty() => {
                    for (tag, result) in finished.drain(..) {
                        if let Some(sent) = inflight.remove(&tag) {
                            self.stats.inflight.fetch_sub(1, Ordering::Relaxed);
                            self.finish(result, sent);
                        }
                    }
                }
                // The rate limit has a token again.
                () = tokio::time::sleep_until(rate_wait.unwrap_or_else(tokio::time::Instant::now)), if rate_wait.is_some() => {
                    rate_wait = None;
                }
                // New work (or close) in the inbox while the window has room.
                () = self.inbox.changed(), if inflight.len() < window && rate_wait.is_none() => {}
                // Deadline of a shutdown drain passed: stop; unacked messages are redelivered.
                () = &mut abort => return,
                // Drain deadline of a removed/changed pipe passed: release
                // what is left (the publishes stay with the link).
                () = &mut retire => {
                    self.stats.inflight.fetch_sub(inflight.len() as u64, Ordering::Relaxed);
                    return self.release(&inflight);
                }
            }
        }
    }

    fn finish(&self, result: Result<(), LinkError>, sent: Sent) {
        match result {
            Ok(()) => {
                self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes_forwarded
                    .fetch_add(sent.bytes, Ordering::Relaxed);
                self.stats.latency.observe(sent.received_at.elapsed());
                self.complete(sent.seq);
            }
            Err(LinkError::Closed) => {
                // Shutting down: not forwarded, so not acked upstream either;
                // the source redelivers it after a restart.
                tracing::debug!(pipe = %self.name, "publish abandoned: link closed");
            }
            Err(err @ (LinkError::Rejected(_) | LinkError::Refused(_))) => {
                // The destination will never take it: a deliberate, counted drop.
                // Per message: rate-limited (at most one per pipe per 10 s).
                if let Some(suppressed) =
                    crate::metrics::ratelimit::allow(&format!("rejected:{}", self.name))
                {
                    tracing::warn!(pipe = %self.name, error = %err, suppressed, "destination rejected a message; dropped");
                }
                self.stats.drop_one(DropReason::Rejected);
                self.complete(sent.seq);
            }
        }
    }

    /// Completes every part this retired pipe still holds — in flight
    /// (`inflight`) or queued — as dropped (reason `reload`). In spool mode
    /// what is in flight is a spool record: it stays on disk for the pipe's
    /// next instance, so it is neither completed nor counted as dropped.
    fn release(&self, inflight: &Inflight) {
        let queued = self.inbox.take_all();
        let outstanding: Vec<Seq> = inflight.values().filter_map(|s| s.seq).collect();
        let held = outstanding.len();
        let kept = release_inflight(
            self.inbox.is_spooled(),
            outstanding,
            &self.stats,
            &self.done,
        );
        let n = queued.len() + held - kept;
        for item in queued {
            self.stats.drop_one(DropReason::Reload);
            self.complete(item.seq);
        }
        if kept > 0 {
            tracing::info!(pipe = %self.name, messages = kept, "pipe removed by a reload did not drain in time; its spooled messages stay in the spool");
        }
        if n > 0 {
            tracing::warn!(pipe = %self.name, messages = n, "pipe removed by a reload did not drain in time; its remaining messages are released to the source unforwarded");
        }
    }

    fn complete(&self, seq: Option<Seq>) {
        if let Some(seq) = seq {
            // The dispatcher may be gone (shutdown deadline); then nothing is acked.
            let _ = self.done.send(seq);
        }
    }
}

/// Spool mode, QoS 2: where the record comes from, so a destination client
/// that keeps its QoS 2 flows on disk continues the flow it already holds
/// for it after a restart instead of publishing it again. QoS 0/1 and
/// `end_to_end` carry none.
fn origin(pipe: &Arc<str>, inbox: &Inbox, item: &Item) -> Option<Origin> {
    if item.msg.qos != QoS::ExactlyOnce {
        return None;
    }
    Some(Origin {
        pipe: pipe.clone(),
        seq: item.seq?,
        floor: inbox.spool_cursor()?,
    })
}

/// Releases a retired pipe's in-flight parts `outstanding`: each completed
/// towards the source (`done`) and counted as dropped `reload`, unless the
/// inbox is `spooled` (they are spool records, kept). How many were kept.
fn release_inflight(
    spooled: bool,
    mut outstanding: Vec<Seq>,
    stats: &PipeStats,
    done: &mpsc::UnboundedSender<Seq>,
) -> usize {
    if spooled {
        return outstanding.len();
    }
    // Arrival order, as the hand-off join releases them.
    outstanding.sort_unstable();
    for seq in outstanding {
        stats.drop_one(DropReason::Reload);
        // The dispatcher may be gone (shutdown deadline); then nothing is acked.
        let _ = done.send(seq);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retired_spool_pipe_keeps_its_in_flight_records_uncounted() {
        let stats = PipeStats::default();
        let (done, mut completed) = mpsc::unbounded_channel();
        assert_eq!(release_inflight(true, vec![4, 2], &stats, &done), 2);
        assert_eq!(stats.dropped(DropReason::Reload), 0, "nothing is lost");
        assert!(completed.try_recv().is_err(), "no part completed");

        assert_eq!(release_inflight(false, vec![4, 2], &stats, &done), 0);
        assert_eq!(stats.dropped(DropReason::Reload), 2);
        assert_eq!(completed.try_recv().ok(), Some(2), "in arrival order");
        assert_eq!(completed.try_recv().ok(), Some(4));
    }
}
