//! One task per source broker: takes each incoming [`Delivery`], finds the
//! pipes whose filters match (through a [`FilterTrie`]), applies each pipe's
//! rules, queues the copies, and acknowledges the source through the
//! [`HandOff`] join once every pipe is done with the message.
//!
//! The dispatcher lives as long as its source link and owns the link's
//! delivery receiver (dropping it would lose what the link still holds). A
//! reload swaps its routes through [`Control::Update`], applied between two
//! deliveries: each message is routed wholly by the old or wholly by the new
//! table. A removed route's inbox is closed, and its worker still finishes
//! (or, at its drain deadline, releases) every part it holds, so the join
//! acknowledges each message upstream exactly once.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::link::{AckHandle, Delivery};
use crate::protocol::{Message, QoS};
use crate::topic::FilterTrie;

use super::handoff::{HandOff, Seq};
use super::inbox::{Inbox, Item};
use super::loopguard::{BrokerIx, BrokerSet, LoopGuard};
use super::rules::PipeRules;
use super::stats::{DropReason, PipeStats};

/// Deliveries taken per wake-up beyond the first.
const BATCH: usize = 64;
/// Pipe completions taken per wake-up.
const COMPLETION_BATCH: usize = 256;
/// Under a flood the tokens are checked directly every this many turns.
const CHECK_EVERY: u32 = 32;

/// The dispatcher's view of one pipe.
pub(crate) struct Route {
    pub name: String,
    /// The pipe's subscription filters with their QoS (its trie entries).
    pub filters: Vec<(String, QoS)>,
    pub dest: BrokerIx,
    pub rules: PipeRules,
    pub inbox: Arc<Inbox>,
    pub stats: Arc<PipeStats>,
}

/// A change of the dispatcher's routes (a reload).
pub(crate) enum Control {
    /// Stop routing to the pipes named in `remove` (their inboxes are
    /// closed; their workers finish what they hold) and start routing to
    /// `add`. `applied` is dropped (cancelling its token) once done.
    Update {
        /// Pipes to stop routing to.
        remove: Vec<String>,
        /// Pipes to start routing to.
        add: Vec<Route>,
        /// Dropped when the new table is in effect.
        applied: DropGuard,
    },
    /// Stop taking deliveries (the broker is being removed); end once every
    /// admitted message is acknowledged.
    Stop,
}

/// The dispatcher of one source.
pub(crate) struct Dispatcher {
    pub source: BrokerIx,
    pub source_name: String,
    pub deliveries: mpsc::Receiver<Delivery>,
    /// filter → (index into `routes`, the filter's QoS). Rebuilt from
    /// `routes` on every [`Control::Update`].
    pub trie: FilterTrie<(usize, QoS)>,
    pub routes: Vec<Route>,
    pub done: mpsc::UnboundedReceiver<Seq>,
    /// Route changes.
    pub control: mpsc::UnboundedReceiver<Control>,
    /// The loop guard, consulted only while `is_dest` is set: some pipe
    /// publishes into this source broker, so our own copies can come back.
    pub guard: Arc<Mutex<LoopGuard>>,
    /// See `guard`; flipped by reloads.
    pub is_dest: Arc<AtomicBool>,
    /// Messages admitted and not yet acknowledged upstream, at most; beyond
    /// it the dispatcher stops taking deliveries (bounded memory).
    pub max_pending: usize,
    /// Cancelled to stop taking new messages (start of shutdown).
    pub intake: CancellationToken,
    /// Cancelled when the shutdown deadline passed.
    pub abort: CancellationToken,
    /// Cancels its token when the dispatcher ends.
    pub _finished: DropGuard,
}

impl Dispatcher {
    pub(crate) async fn run(mut self) {
        let mut handoff: HandOff<AckHandle> = HandOff::new();
        let mut stopping = false;
        let mut scratch = Scratch::default();
        let mut completed: Vec<Seq> = Vec::with_capacity(COMPLETION_BATCH);
        // Polled by reference across turns (each token registers its waiter
        // once), and last: a wake-up for a delivery or a completion does not
        // poll them. They cannot starve under a flood: both are also
        // checked directly every `CHECK_EVERY` turns.
        let mut abort = pin!(self.abort.clone().cancelled_owned());
        let mut intake = pin!(self.intake.clone().cancelled_owned());
        let mut turn: u32 = 0;
        loop {
            turn = turn.wrapping_add(1);
            if turn.is_multiple_of(CHECK_EVERY) {
                // Shutdown deadline: whatever is not acked is redelivered later.
                if self.abort.is_cancelled() {
                    break;
                }
                // Shutdown begins: stop taking, keep acking what completes.
                if !stopping && self.intake.is_cancelled() {
                    stopping = true;
                    self.close_inboxes();
                }
            }
            tokio::select! {
                biased;
                // Pipes finished their parts of messages: all that is ready
                // in one go, then one release (acks upstream in a batch).
                // (0 means every sender is gone: the branch is off for this turn.)
                1..=usize::MAX = self.done.recv_many(&mut completed, COMPLETION_BATCH) => {
                    for seq in completed.drain(..) {
                        if let Err(err) = handoff.complete(seq) {
                            tracing::error!(broker = %self.source_name, error = %err, "hand-off bookkeeping error");
                        }
                    }
                    release(&mut handoff);
                }
                // A reload: swap routes between two deliveries.
                Some(control) = self.control.recv() => match control {
                    Control::Update { remove, add, applied } => {
                        self.update(&remove, add, stopping);
                        drop(applied);
                    }
                    Control::Stop => {
                        stopping = true;
                        self.close_inboxes();
                    }
                },
                // Guarded: only while the pending window has room (backpressure
                // to the source, whose broker then holds the backlog).
                d = self.deliveries.recv(), if !stopping && handoff.len() < self.max_pending => {
                    match d {
                        Some(d) => {
                            self.dispatch(d, &mut handoff, &mut scratch);
                            // Take what else is ready in one go (bounded, so
                            // completions are not starved).
                            for _ in 0..BATCH {
                                if handoff.len() >= self.max_pending {
                                    break;
                                }
                                match self.deliveries.try_recv() {
                                    Ok(d) => self.dispatch(d, &mut handoff, &mut scratch),
                                    Err(_) => break,
                                }
                            }
                            // Spooling pipes write the turn's messages as one block.
                            for r in &self.routes {
                                r.inbox.flush();
                            }
                        }
                        None => {
                            tracing::info!(broker = %self.source_name, "source link closed");
                            stopping = true;
                            self.close_inboxes();
                        }
                    }
                }
                () = &mut intake, if !stopping => {
                    stopping = true;
                    self.close_inboxes();
                }
                () = &mut abort => break,
            }
            if stopping && handoff.is_empty() {
                break;
            }
        }
        self.close_inboxes();
    }

    fn close_inboxes(&self) {
        for r in &self.routes {
            r.inbox.close();
        }
    }

    /// Removes the routes named in `remove` (closing their inboxes), adds
    /// `add`, and rebuilds the trie.
    fn update(&mut self, remove: &[String], add: Vec<Route>, stopping: bool) {
        self.routes.retain(|r| {
            let keep = !remove.contains(&r.name);
            if !keep {
                r.inbox.close();
            }
            keep
        });
        for r in add {
            if stopping {
                r.inbox.close();
            }
            self.routes.push(r);
        }
        let mut trie = FilterTrie::new();
        for (ix, r) in self.routes.iter().enumerate() {
            for (filter, qos) in &r.filters {
                // A shared subscription's messages match its filter.
                trie.insert(crate::protocol::shared::topic_filter(filter), (ix, *qos));
            }
        }
        self.trie = trie;
        tracing::debug!(broker = %self.source_name, routes = self.routes.len(), "routes updated");
    }

    fn dispatch(
        &mut self,
        delivery: Delivery,
        handoff: &mut HandOff<AckHandle>,
        scratch: &mut Scratch,
    ) {
        let Scratch { matched, copies } = scratch;
        let Delivery { message, ack } = delivery;
        let now = Instant::now();
        matched.clear();
        self.trie.for_each_match(&message.topic, |_, &(ix, qos)| {
            match matched.iter_mut().find(|(i, _)| *i == ix) {
                Some((_, q)) => *q = (*q).max(qos),
                None => matched.push((ix, qos)),
            }
        });
        let visited_in = if !matched.is_empty() && self.is_dest.load(Ordering::Relaxed) {
            self.guard.lock().unwrap_or_else(|e| e.into_inner()).take(
                self.source,
                &message.topic,
                &message.payload,
                now,
            )
        } else {
            None
        };
        copies.clear();
        for &(ix, filter_qos) in matched.iter() {
            let Some(route) = self.routes.get(ix) else {
                continue;
            };
            route.stats.received.fetch_add(1, Ordering::Relaxed);
            if visited_in.is_some_and(|v| v.contains(route.dest)) {
                route.stats.drop_one(DropReason::Loop);
                tracing::debug!(pipe = %route.name, "dropped our own copy coming back (loop)");
                continue;
            }
            match route.rules.apply(&message, filter_qos) {
                Ok(copy) => copies.push((ix, copy)),
                Err(dropped) => {
                    route.stats.drop_one(dropped.reason);
                    match dropped.error {
                        Some(err) => {
                            // Per message: rate-limited (at most one per pipe per 10 s).
                            if let Some(suppressed) = crate::metrics::ratelimit::allow(&format!(
                                "remap-failed:{}",
                                route.name
                            )) {
                                tracing::warn!(pipe = %route.name, error = %err, suppressed, "remap failed; message dropped")
                            }
                        }
                        None => {
                            tracing::debug!(pipe = %route.name, reason = dropped.reason.as_str(), "message dropped")
                        }
                    }
                }
            }
        }
        let seq = ack
            .is_required()
            .then(|| handoff.admit(ack, u32::try_from(copies.len()).unwrap_or(u32::MAX)));
        let visited = visited_in.unwrap_or(BrokerSet::EMPTY).with(self.source);
        for (ix, copy) in copies.drain(..) {
            if let Some(route) = self.routes.get(ix) {
                route.inbox.push(Item::new(copy, seq, visited, now));
            }
        }
        if seq.is_some() {
            release(handoff);
        }
    }
}

/// Buffers `dispatch` reuses from one message to the next.
#[derive(Default)]
struct Scratch {
    /// (route index, highest matching filter QoS) per matched pipe.
    matched: Vec<(usize, QoS)>,
    /// (route index, the copy to queue) per forwarding pipe.
    copies: Vec<(usize, Message)>,
}

/// Acknowledges upstream, in arrival order, every message all pipes are done with.
fn release(handoff: &mut HandOff<AckHandle>) {
    handoff.drain_ready_with(AckHandle::ack);
}
