//! One task per pipe: takes messages from its inbox, publishes them to the
//! destination link with a bounded number in flight, and reports each
//! finished hand-off part back to the source's dispatcher.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::link::{Link, LinkError};

use super::handoff::Seq;
use super::inbox::Inbox;
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
    /// Set when the destination is also a source: record what we publish
    /// there so our own copy is recognised when it comes back.
    pub guard: Option<(Arc<Mutex<LoopGuard>>, BrokerIx)>,
    /// Publishes handed to the link and not yet acknowledged, at most.
    pub window: usize,
    pub rate: Option<TokenBucket>,
    /// Hard stop (the shutdown deadline passed).
    pub abort: CancellationToken,
}

impl Worker {
    pub(crate) async fn run(mut self) {
        let window = self.window.max(1);
        let mut inflight = FuturesUnordered::new();
        let mut rate_wait: Option<tokio::time::Instant> = None;
        loop {
            // Fill the window from the inbox.
            while inflight.len() < window && rate_wait.is_none() && self.inbox.has_items() {
                if let Some(bucket) = self.rate.as_mut()
                    && let Err(wait) = bucket.try_take(tokio::time::Instant::now().into_std())
                {
                    rate_wait = Some(tokio::time::Instant::now() + wait);
                    break;
                }
                let Some(item) = self.inbox.pop() else { break };
                if let Some((guard, dest)) = &self.guard {
                    let mut g = guard.lock().unwrap_or_else(|e| e.into_inner());
                    g.record(
                        *dest,
                        &item.msg.topic,
                        &item.msg.payload,
                        item.visited,
                        Instant::now(),
                    );
                }
                let sent = Sent {
                    seq: item.seq,
                    bytes: item.msg.payload.len() as u64,
                    received_at: item.received_at,
                };
                // Cancel safety: if aborted while the link's request queue is
                // full, the message is simply not sent and not acked upstream.
                let publish = tokio::select! {
                    r = self.link.publish(item.msg) => r,
                    () = self.abort.cancelled() => return,
                };
                match publish {
                    Ok(ack) => {
                        self.stats.inflight.fetch_add(1, Ordering::Relaxed);
                        inflight.push(async move { (ack.wait().await, sent) });
                    }
                    Err(err) => {
                        tracing::warn!(pipe = %self.name, error = %err, "destination link closed; pipe stops");
                        return;
                    }
                }
            }
            if self.inbox.is_finished() && inflight.is_empty() {
                return;
            }
            tokio::select! {
                biased;
                // Deadline of a shutdown drain passed: stop; unacked messages are redelivered.
                () = self.abort.cancelled() => return,
                // A publish was acknowledged (or failed): frees a window slot.
                Some((result, sent)) = inflight.next(), if !inflight.is_empty() => {
                    self.stats.inflight.fetch_sub(1, Ordering::Relaxed);
                    self.finish(result, sent);
                }
                // The rate limit has a token again.
                () = tokio::time::sleep_until(rate_wait.unwrap_or_else(tokio::time::Instant::now)), if rate_wait.is_some() => {
                    rate_wait = None;
                }
                // New work (or close) in the inbox while the window has room.
                () = self.inbox.changed(), if inflight.len() < window && rate_wait.is_none() => {}
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

    fn complete(&self, seq: Option<Seq>) {
        if let Some(seq) = seq {
            // The dispatcher may be gone (shutdown deadline); then nothing is acked.
            let _ = self.done.send(seq);
        }
    }
}
