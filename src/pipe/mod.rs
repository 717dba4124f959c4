//! Pipes: subscribe → filter/exclude/remap → publish, with the QoS hand-off.
//!
//! Shape at run time: one [`Link`] per broker, shared by every pipe that uses
//! it. Per source broker, one dispatcher task subscribes to the union of its
//! pipes' filters and routes each incoming message to the matching pipes; per
//! pipe, one worker task publishes to the destination with a bounded window
//! of publishes in flight. A QoS 1/2 message is acknowledged to its source
//! only after every pipe it matched is done with it (see [`handoff`]).
//!
//! A reload changes the pipe set while everything runs ([`Pipes::update`]):
//! each dispatcher keeps its source's delivery receiver and only swaps its
//! routes, so pipes not named in the change are untouched.
//!
//! No sockets, no reconnect logic here: links hide all of that.

pub(crate) mod handoff;
pub(crate) mod inbox;
pub mod loopguard;
pub mod queue;
pub(crate) mod ratelimit;
pub(crate) mod rules;
pub mod stats;

mod dispatch;
mod subs;
mod worker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::link::{Delivery, Link};
use crate::protocol::QoS;
use crate::topic::FilterTrie;

use dispatch::{Control, Dispatcher, Route};
use handoff::Seq;
use inbox::Inbox;
use loopguard::{BrokerIx, LoopGuard};
use queue::WhenFull;
use ratelimit::TokenBucket;
use rules::PipeRules;
use stats::PipeStats;
use subs::{SubOp, SubTable};
use worker::Worker;

/// Default for [`BrokerLink::max_pending`].
pub const DEFAULT_MAX_PENDING: usize = 100;

/// One broker's link and its incoming deliveries.
#[derive(Debug)]
pub struct BrokerLink {
    /// Broker name (for logs).
    pub name: String,
    /// The shared link.
    pub link: Link,
    /// Messages the broker delivers to the bridge's session.
    pub deliveries: mpsc::Receiver<Delivery>,
    /// QoS 1/2 messages taken from this source and not yet acknowledged to
    /// it, at most. Beyond it the dispatcher stops taking deliveries and the
    /// source broker keeps the backlog. It bounds the bridge's memory and
    /// the duplicates a crash can cause (the source redelivers these).
    pub max_pending: usize,
}

/// A pipe compiled for the runtime.
#[derive(Debug)]
pub struct PipeSpec {
    /// The pipe's name.
    pub name: String,
    /// Index of the source broker in the broker list given to [`start`].
    pub source: BrokerIx,
    /// Index of the destination broker.
    pub dest: BrokerIx,
    /// Subscription filters with their QoS.
    pub filters: Vec<(String, QoS)>,
    /// Exclusions, remap, QoS, retain, payload limit.
    pub rules: PipeRules,
    /// Capacity of the QoS 0 queue.
    pub queue_size: usize,
    /// What the full QoS 0 queue drops.
    pub when_full: WhenFull,
    /// Optional rate limit: (messages per second, burst).
    pub rate_limit: Option<(u32, u32)>,
    /// Publishes in flight to the destination, at most.
    pub inflight: usize,
}

/// Misconfiguration of [`start`] (a bug in the caller: the plan is checked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipeError {
    /// A pipe names a broker index that does not exist.
    #[error("pipe {pipe}: unknown broker index {index}")]
    UnknownBroker {
        /// The pipe.
        pipe: String,
        /// The bad index.
        index: usize,
    },
}

/// One broker as the pipe runtime sees it: its link, its dispatcher (every
/// broker has one, for the life of its link, whether or not it is a source
/// right now) and its subscriptions.
#[derive(Debug)]
struct Source {
    name: String,
    link: Link,
    control: mpsc::UnboundedSender<Control>,
    /// Completions towards this source's dispatcher (cloned into each worker).
    done: mpsc::UnboundedSender<Seq>,
    subs: SubTable,
    ops: mpsc::UnboundedSender<SubOp>,
    /// Some pipe reads from this broker (its workers' loop-guard records matter).
    is_source: Arc<AtomicBool>,
    /// Some pipe publishes into this broker (its dispatcher checks the guard).
    is_dest: Arc<AtomicBool>,
    /// Cancelled when the dispatcher has ended.
    finished: CancellationToken,
}

/// A pipe instance whose worker runs.
#[derive(Debug)]
struct Instance {
    source: BrokerIx,
    dest: BrokerIx,
    stats: Arc<PipeStats>,
    /// Cancelled when the worker has ended.
    finished: CancellationToken,
    /// Cancel to make the worker release what it holds and end.
    retire: CancellationToken,
}

/// The running pipes. Brokers and pipes can be added and removed while
/// running ([`Pipes::add_broker`], [`Pipes::update`], [`Pipes::remove_broker`]).
#[derive(Debug)]
pub struct Pipes {
    sources: BTreeMap<BrokerIx, Source>,
    running: BTreeMap<String, Instance>,
    /// Removed or replaced instances still draining.
    retiring: Vec<(String, Instance)>,
    guard: Arc<Mutex<LoopGuard>>,
    intake: CancellationToken,
    abort: CancellationToken,
    tasks: TaskTracker,
    /// Subscription changes queued or in progress, over all sources.
    pending: Arc<watch::Sender<usize>>,
}

impl Default for Pipes {
    fn default() -> Self {
        Self::new()
    }
}

/// Starts dispatchers for `brokers` (indices = positions) and the pipes `specs`.
pub fn start(brokers: Vec<BrokerLink>, specs: Vec<PipeSpec>) -> Result<Pipes, PipeError> {
    let mut pipes = Pipes::new();
    for b in brokers {
        pipes.add_broker(b);
    }
    // The subscriptions proceed in the background; see `Pipes::subscribed`.
    drop(pipes.update(&[], specs, Duration::ZERO)?);
    Ok(pipes)
}

impl Pipes {
    /// No brokers, no pipes.
    pub fn new() -> Self {
        let tasks = TaskTracker::new();
        // Spawning after `close` is allowed; `close` only lets `wait` finish.
        tasks.close();
        Pipes {
            sources: BTreeMap::new(),
            running: BTreeMap::new(),
            retiring: Vec::new(),
            guard: Arc::new(Mutex::new(LoopGuard::default())),
            intake: CancellationToken::new(),
            abort: CancellationToken::new(),
            tasks,
            pending: Arc::new(watch::channel(0usize).0),
        }
    }

    /// Adds a broker and starts its dispatcher (with no routes yet); returns
    /// its index (the lowest free one, so indices stay small for the loop
    /// guard's visited sets).
    pub fn add_broker(&mut self, broker: BrokerLink) -> BrokerIx {
        let ix = (0..)
            .find(|i| !self.sources.contains_key(i))
            .unwrap_or_default();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let finished = CancellationToken::new();
        let is_dest = Arc::new(AtomicBool::new(false));
        self.tasks.spawn(
            subs::run_subscriber(
                broker.name.clone(),
                broker.link.clone(),
                ops_rx,
                self.intake.clone(),
                self.pending.clone(),
            )
            .instrument(tracing::info_span!("subscriber", broker = %broker.name)),
        );
        let dispatcher = Dispatcher {
            source: ix,
            source_name: broker.name.clone(),
            deliveries: broker.deliveries,
            trie: FilterTrie::new(),
            routes: Vec::new(),
            done: done_rx,
            control: control_rx,
            guard: self.guard.clone(),
            is_dest: is_dest.clone(),
            max_pending: broker.max_pending.max(1),
            intake: self.intake.clone(),
            abort: self.abort.clone(),
            _finished: finished.clone().drop_guard(),
        };
        self.tasks.spawn(
            dispatcher
                .run()
                // Debug level: a span entered on every poll costs more than
                // routing a message; events carry `broker`/`pipe` themselves.
                .instrument(tracing::debug_span!("source", broker = %broker.name)),
        );
        self.sources.insert(
            ix,
            Source {
                name: broker.name,
                link: broker.link,
                control: control_tx,
                done: done_tx,
                subs: SubTable::default(),
                ops: ops_tx,
                is_source: Arc::new(AtomicBool::new(false)),
                is_dest,
                finished,
            },
        );
        ix
    }

    /// Changes the pipe set: the pipes named in `remove` stop receiving and
    /// drain (after `drain`, whatever they still hold is released, counted
    /// as dropped `reload`); `add` start. A pipe in both is restarted with
    /// its new settings: its counters carry on, and the new instance starts
    /// once the old one has ended. Pipes not named keep running untouched.
    ///
    /// Subscribes only new filters and unsubscribes only filters no pipe
    /// uses any more, in the background. The returned future resolves once
    /// every affected dispatcher routes by its new table.
    pub fn update(
        &mut self,
        remove: &[String],
        add: Vec<PipeSpec>,
        drain: Duration,
    ) -> Result<impl std::future::Future<Output = ()> + Send + 'static, PipeError> {
        for s in &add {
            for index in [s.source, s.dest] {
                if !self.sources.contains_key(&index) {
                    return Err(PipeError::UnknownBroker {
                        pipe: s.name.clone(),
                        index,
                    });
                }
            }
        }
        #[derive(Default)]
        struct Step {
            remove: Vec<String>,
            routes: Vec<Route>,
            filters: Vec<(String, Vec<(String, QoS)>)>,
        }
        let mut steps: BTreeMap<BrokerIx, Step> = BTreeMap::new();
        let mut predecessors = BTreeMap::new();
        // A running pipe added again is a change: never two live instances.
        let mut remove = remove.to_vec();
        for s in &add {
            if self.running.contains_key(&s.name) && !remove.contains(&s.name) {
                remove.push(s.name.clone());
            }
        }
        for name in &remove {
            let Some(old) = self.running.remove(name) else {
                continue;
            };
            steps
                .entry(old.source)
                .or_default()
                .remove
                .push(name.clone());
            let (finished, retire, abort) =
                (old.finished.clone(), old.retire.clone(), self.abort.clone());
            let pipe = name.clone();
            self.tasks.spawn(async move {
                tokio::select! {
                    () = finished.cancelled() => {}
                    () = abort.cancelled() => {}
                    () = tokio::time::sleep(drain) => {
                        tracing::warn!(pipe = %pipe, timeout = ?drain, "removed pipe still busy at its drain deadline");
                        retire.cancel();
                    }
                }
            });
            predecessors.insert(name.clone(), (old.finished.clone(), old.stats.clone()));
            self.retiring.push((name.clone(), old));
        }
        self.retiring.retain(|(_, i)| !i.finished.is_cancelled());
        for spec in add {
            let (after, stats) = match predecessors.remove(&spec.name) {
                Some((finished, stats)) => (Some(finished), stats),
                None => (None, Arc::new(PipeStats::default())),
            };
            let (Some(src), Some(dst)) =
                (self.sources.get(&spec.source), self.sources.get(&spec.dest))
            else {
                continue; // checked above
            };
            let inbox = Arc::new(Inbox::new(spec.queue_size, spec.when_full, stats.clone()));
            let finished = CancellationToken::new();
            let retire = CancellationToken::new();
            let worker = Worker {
                name: spec.name.clone(),
                inbox: inbox.clone(),
                link: dst.link.clone(),
                stats: stats.clone(),
                done: src.done.clone(),
                guard: (self.guard.clone(), spec.dest),
                dest_is_source: dst.is_source.clone(),
                window: spec.inflight,
                rate: spec.rate_limit.map(|(per_second, burst)| {
                    TokenBucket::new(
                        f64::from(per_second),
                        burst,
                        tokio::time::Instant::now().into_std(),
                    )
                }),
                abort: self.abort.clone(),
                after,
                retire: retire.clone(),
                _finished: finished.clone().drop_guard(),
            };
            self.tasks.spawn(
                worker
                    .run()
                    .instrument(tracing::debug_span!("pipe", pipe = %spec.name)),
            );
            let step = steps.entry(spec.source).or_default();
            step.filters.push((spec.name.clone(), spec.filters.clone()));
            step.routes.push(Route {
                name: spec.name.clone(),
                filters: spec.filters,
                dest: spec.dest,
                rules: spec.rules,
                inbox,
                stats: stats.clone(),
            });
            self.running.insert(
                spec.name,
                Instance {
                    source: spec.source,
                    dest: spec.dest,
                    stats,
                    finished,
                    retire,
                },
            );
        }
        // Loop-guard flags first: they must hold before the routes go live.
        self.update_flags();
        let mut applied = Vec::new();
        for (ix, step) in steps {
            let Some(src) = self.sources.get_mut(&ix) else {
                continue;
            };
            let token = CancellationToken::new();
            applied.push(token.clone());
            let change = src.subs.change(&step.remove, &step.filters);
            // Dropped unprocessed if the dispatcher is gone: then the token
            // is cancelled too, and nobody waits forever.
            let _ = src.control.send(Control::Update {
                remove: step.remove,
                add: step.routes,
                applied: token.clone().drop_guard(),
            });
            self.pending.send_modify(|n| *n += 1);
            if src
                .ops
                .send(SubOp {
                    routed: token,
                    change,
                })
                .is_err()
            {
                self.pending.send_modify(|n| *n = n.saturating_sub(1));
            }
        }
        Ok(async move {
            for t in applied {
                t.cancelled().await;
            }
        })
    }

    /// Sets each broker's loop-guard flags from the pipes running or draining.
    fn update_flags(&self) {
        let live = || {
            self.running
                .values()
                .chain(self.retiring.iter().map(|(_, i)| i))
                .filter(|i| !i.finished.is_cancelled())
        };
        for (ix, src) in &self.sources {
            src.is_source
                .store(live().any(|i| i.source == *ix), Ordering::Relaxed);
            src.is_dest
                .store(live().any(|i| i.dest == *ix), Ordering::Relaxed);
        }
    }

    /// Removes a broker no running pipe uses (remove its pipes with
    /// [`Pipes::update`] first): its dispatcher stops taking deliveries. The
    /// returned future resolves once the dispatcher has acknowledged all it
    /// admitted and every draining pipe from or to the broker has ended;
    /// then the caller may close the link.
    pub fn remove_broker(
        &mut self,
        ix: BrokerIx,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut waits: Vec<CancellationToken> = self
            .retiring
            .iter()
            .filter(|(_, i)| i.source == ix || i.dest == ix)
            .map(|(_, i)| i.finished.clone())
            .collect();
        if let Some(src) = self.sources.remove(&ix) {
            tracing::debug!(broker = %src.name, "stopping the dispatcher");
            let _ = src.control.send(Control::Stop);
            waits.push(src.finished.clone());
        }
        async move {
            for w in waits {
                w.cancelled().await;
            }
        }
    }

    /// Every running pipe's counters, by name.
    pub fn stats(&self) -> Vec<(String, Arc<PipeStats>)> {
        self.running
            .iter()
            .map(|(n, i)| (n.clone(), i.stats.clone()))
            .collect()
    }

    /// Counters of one running pipe.
    pub fn pipe_stats(&self, name: &str) -> Option<Arc<PipeStats>> {
        self.running.get(name).map(|i| i.stats.clone())
    }

    /// The link of broker `ix`.
    pub fn link(&self, ix: BrokerIx) -> Option<&Link> {
        self.sources.get(&ix).map(|s| &s.link)
    }

    /// Resolves once every subscription change queued so far is done
    /// (SUBACK/UNSUBACK; a refused filter is logged, not waited for).
    pub fn subscribed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.pending.subscribe();
        async move {
            let _ = rx.wait_for(|n| *n == 0).await;
        }
    }

    /// The number of subscription changes queued or in progress.
    pub fn pending_subscriptions(&self) -> watch::Receiver<usize> {
        self.pending.subscribe()
    }

    /// Graceful stop: stop taking messages, let queued and in-flight ones
    /// finish until `deadline`, then abort. Returns the pipes still busy at
    /// the deadline (their unacknowledged messages are redelivered later).
    /// Does not close the links.
    pub async fn drain(self, deadline: Duration) -> Vec<String> {
        self.intake.cancel();
        let mut busy = Vec::new();
        if tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            let all = self.running.iter().chain(
                self.retiring
                    .iter()
                    .filter(|(_, i)| !i.finished.is_cancelled())
                    .map(|(n, i)| (n, i)),
            );
            for (name, i) in all {
                if i.stats.busy() && !busy.contains(name) {
                    let snap = i.stats.snapshot();
                    tracing::warn!(pipe = %name, inflight = snap.inflight, queued = snap.queue_depth, "pipe still busy at the shutdown deadline");
                    busy.push(name.clone());
                }
            }
        }
        self.abort.cancel();
        self.tasks.wait().await;
        busy
    }
}

#[cfg(test)]
mod tests;
