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
pub(crate) mod loopguard;
pub(crate) mod properties;
pub(crate) mod queue;
pub(crate) mod ratelimit;
pub(crate) mod rules;
pub mod stats;

mod dispatch;
mod subs;
mod worker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::link::{Delivery, Link};
use crate::protocol::QoS;
use crate::spool::{SAVE_AFTER, Spool, SpoolBoard, WhenFull as SpoolWhenFull};
use crate::store::Store;
use crate::topic::FilterTrie;

use dispatch::{Control, Dispatcher, Route};
use handoff::Seq;
use inbox::{Inbox, SpoolStage};
use loopguard::{BrokerIx, LoopGuard};
use queue::WhenFull;
use ratelimit::TokenBucket;
use rules::PipeRules;
use stats::PipeStats;
use subs::{PipeSub, SubOp, SubTable};
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
    /// Exclusions, remap, QoS, retain, payload limit, properties.
    pub rules: PipeRules,
    /// `retain: as_published`: subscribe with the MQTT 5 option Retain As
    /// Published, so the retain flag arrives (and is forwarded) as the
    /// publisher set it (a 3.1.1 source ignores it).
    pub retain_as_published: bool,
    /// Capacity of the QoS 0 queue.
    pub queue_size: usize,
    /// What the full QoS 0 queue drops.
    pub when_full: WhenFull,
    /// Optional rate limit: (messages per second, burst).
    pub rate_limit: Option<(u32, u32)>,
    /// Publishes in flight to the destination, at most.
    pub inflight: usize,
    /// End-to-end or spooled.
    pub delivery: DeliveryMode,
}

/// How a pipe takes responsibility for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// The source is acknowledged once the destination acknowledged (no
    /// local state).
    EndToEnd,
    /// The source is acknowledged once the message is durable in the pipe's
    /// spool; the worker forwards from the spool.
    Spool(SpoolSpec),
}

/// The spool settings of a pipe in spool mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolSpec {
    /// `qos0: spool`: QoS 0 messages go through the spool too.
    pub qos0: bool,
    /// `spool.max_bytes`; `None` = only `storage.max_bytes` bounds it.
    pub max_bytes: Option<u64>,
    /// What a full spool does.
    pub when_full: SpoolWhenFull,
}

/// Misconfiguration of [`start`] (a bug in the caller: the plan is checked),
/// or a spool that cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipeError {
    /// A pipe in spool mode, but the runtime has no store.
    #[error("pipe {pipe}: spool delivery needs a store")]
    NoStore {
        /// The pipe.
        pipe: String,
    },
    /// The pipe's spool could not be opened.
    #[error("pipe {pipe}: cannot open its spool: {error}")]
    Spool {
        /// The pipe.
        pipe: String,
        /// Why.
        error: String,
    },
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

/// What [`Pipes::update`] tells one source's dispatcher and subscriber.
#[derive(Default)]
struct Step {
    /// The source's subscriptions carry no local after this step.
    no_local: bool,
    remove: Vec<String>,
    routes: Vec<Route>,
    filters: Vec<subs::PipeFilters>,
}

/// A removed or changed instance, as its successor sees it.
struct Predecessor {
    finished: CancellationToken,
    stats: Arc<PipeStats>,
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
    /// The store the spools live in (`None`: spool mode is refused).
    store: Option<Store>,
    /// Every open spool by pipe name, running or not (a removed pipe's
    /// spool stays on disk and keeps counting against `storage.max_bytes`).
    spools: BTreeMap<String, Arc<Spool>>,
    /// Bytes of every open spool and stored broker message (the store's
    /// counter, for `storage.max_bytes`).
    spool_total: Arc<AtomicU64>,
    /// The spools as the status endpoints see them.
    board: SpoolBoard,
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
            store: None,
            spools: BTreeMap::new(),
            spool_total: Arc::new(AtomicU64::new(0)),
            board: SpoolBoard::default(),
        }
    }

    /// No brokers, no pipes; spooled pipes keep their spools in `store`.
    /// Spools found in the store that no pipe names yet are opened too
    /// (their bytes count against `storage.max_bytes`); see
    /// [`Pipes::orphaned_spools`].
    pub fn with_store(store: Store) -> Result<Self, PipeError> {
        let mut pipes = Pipes::new();
        // One bound for the spools and the built-in brokers' messages.
        pipes.spool_total = store.used().clone();
        for name in crate::spool::spool_names(&store) {
            let spool = Spool::open(
                &store,
                &name,
                None,
                SpoolWhenFull::Block,
                pipes.spool_total.clone(),
            )
            .map_err(|e| PipeError::Spool {
                pipe: name.clone(),
                error: e.to_string(),
            })?;
            pipes.spools.insert(name, Arc::new(spool));
        }
        pipes.store = Some(store);
        pipes.publish_spools();
        Ok(pipes)
    }

    /// The spools as the status endpoints see them (kept current).
    pub fn spool_board(&self) -> SpoolBoard {
        self.board.clone()
    }

    fn publish_spools(&self) {
        self.board.set(
            self.spools()
                .into_iter()
                .map(|(_, s, used)| (s, used))
                .collect(),
        );
    }

    /// Every spool with whether a running pipe uses it (false: orphaned,
    /// kept until `mqbridge spool --drop`).
    pub fn spools(&self) -> Vec<(String, Arc<Spool>, bool)> {
        self.spools
            .iter()
            .map(|(n, s)| (n.clone(), s.clone(), self.running.contains_key(n)))
            .collect()
    }

    /// Spools no running pipe uses.
    pub fn orphaned_spools(&self) -> Vec<String> {
        self.spools()
            .into_iter()
            .filter(|(_, _, used)| !used)
            .map(|(n, _, _)| n)
            .collect()
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
    /// A spooled pipe keeps its spool across the change (the new instance
    /// sends what is unacknowledged again); a removed one leaves it on disk.
    ///
    /// Subscribes only new filters and unsubscribes only filters no pipe
    /// uses any more, in the background. The returned future resolves once
    /// every affected dispatcher routes by its new table.
    pub fn update(
        &mut self,
        remove: &[String],
        add: Vec<PipeSpec>,
        drain: Duration,
    ) -> Result<impl std::future::Future<Output = ()> + Send + use<>, PipeError> {
        self.check(&add)?;
        let mut steps: BTreeMap<BrokerIx, Step> = BTreeMap::new();
        let remove = self.with_restarts(remove, &add);
        let mut predecessors = self.retire(&remove, drain, &mut steps);
        for spec in add {
            let predecessor = predecessors.remove(&spec.name);
            self.start_instance(spec, predecessor, &mut steps);
        }
        // Loop-guard flags first: they must hold before the routes go live.
        self.update_flags();
        self.no_local_steps(&mut steps);
        self.publish_spools();
        let applied = self.send_steps(steps);
        Ok(async move {
            for t in applied {
                t.cancelled().await;
            }
        })
    }

    /// Every broker `add` names exists, and every spooled pipe's spool opens.
    fn check(&mut self, add: &[PipeSpec]) -> Result<(), PipeError> {
        for s in add {
            for index in [s.source, s.dest] {
                if !self.sources.contains_key(&index) {
                    return Err(PipeError::UnknownBroker {
                        pipe: s.name.clone(),
                        index,
                    });
                }
            }
            if let DeliveryMode::Spool(spec) = &s.delivery {
                self.open_spool(&s.name, spec)?;
            }
        }
        Ok(())
    }

    /// `remove` plus every running pipe added again (a change: never two
    /// live instances of one pipe).
    fn with_restarts(&self, remove: &[String], add: &[PipeSpec]) -> Vec<String> {
        let mut remove = remove.to_vec();
        for s in add {
            if self.running.contains_key(&s.name) && !remove.contains(&s.name) {
                remove.push(s.name.clone());
            }
        }
        remove
    }

    /// Stops routing to the pipes in `remove` and arms their drain
    /// deadlines. Returns each one's end token and counters (for a successor).
    fn retire(
        &mut self,
        remove: &[String],
        drain: Duration,
        steps: &mut BTreeMap<BrokerIx, Step>,
    ) -> BTreeMap<String, Predecessor> {
        let mut predecessors = BTreeMap::new();
        for name in remove {
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
            predecessors.insert(
                name.clone(),
                Predecessor {
                    finished: old.finished.clone(),
                    stats: old.stats.clone(),
                },
            );
            self.retiring.push((name.clone(), old));
        }
        self.retiring.retain(|(_, i)| !i.finished.is_cancelled());
        predecessors
    }

    /// Starts one pipe instance: its inbox (with the spool stage in spool
    /// mode), its worker, and its route in the source's step.
    fn start_instance(
        &mut self,
        spec: PipeSpec,
        predecessor: Option<Predecessor>,
        steps: &mut BTreeMap<BrokerIx, Step>,
    ) {
        let (after, stats) = match predecessor {
            Some(p) => (Some(p.finished), p.stats),
            None => (None, Arc::new(PipeStats::default())),
        };
        let (Some(src), Some(dst)) = (self.sources.get(&spec.source), self.sources.get(&spec.dest))
        else {
            return; // checked by `check`
        };
        let finished = CancellationToken::new();
        let retire = CancellationToken::new();
        let (inbox, done) = match &spec.delivery {
            DeliveryMode::EndToEnd => (
                Arc::new(Inbox::new(spec.queue_size, spec.when_full, stats.clone())),
                src.done.clone(),
            ),
            DeliveryMode::Spool(s) => {
                let Some(spool) = self.spools.get(&spec.name).cloned() else {
                    return; // opened by `check`
                };
                let skipped = spool.rewind();
                tracing::debug!(pipe = %spec.name, unacknowledged = skipped, "spool: forwarding resumes at the oldest unacknowledged record");
                self.spool_stage(&spec, s.qos0, spool, src.done.clone(), &stats, &retire)
            }
        };
        let worker = Worker {
            name: spec.name.clone(),
            inbox: inbox.clone(),
            link: dst.link.clone(),
            stats: stats.clone(),
            done,
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
        let subs = spec
            .filters
            .iter()
            .map(|(f, qos)| {
                let sub = PipeSub {
                    qos: *qos,
                    retain_as_published: spec.retain_as_published,
                };
                (f.clone(), sub)
            })
            .collect();
        step.filters.push((spec.name.clone(), subs));
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

    /// A spooled inbox with its two helper tasks: the committer (a written
    /// part completes towards the source once durable) and the acker (the
    /// worker's completions, spool sequence numbers, advance the cursor).
    /// Returns the inbox and the worker's completion sender.
    fn spool_stage(
        &self,
        spec: &PipeSpec,
        qos0: bool,
        spool: Arc<Spool>,
        dispatcher: mpsc::UnboundedSender<Seq>,
        stats: &Arc<PipeStats>,
        retire: &CancellationToken,
    ) -> (Arc<Inbox>, mpsc::UnboundedSender<Seq>) {
        let (commit_tx, commit_rx) = mpsc::unbounded_channel();
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let inbox = Arc::new(Inbox::spooled(
            spec.queue_size,
            spec.when_full,
            stats.clone(),
            SpoolStage {
                spool,
                qos0,
                commit: commit_tx,
                done: dispatcher.clone(),
            },
        ));
        let span = tracing::debug_span!("spool", pipe = %spec.name);
        if let Some(store) = self.store.clone() {
            self.tasks.spawn(
                committer(store, commit_rx, dispatcher, stats.clone()).instrument(span.clone()),
            );
        }
        self.tasks
            .spawn(acker(inbox.clone(), ack_rx, retire.clone()).instrument(span));
        (inbox, ack_tx)
    }

    /// Opens (once) the spool of pipe `name` ahead of [`Pipes::update`]
    /// (so a store error stops a start before any connection is made).
    pub fn open_spool(&mut self, name: &str, spec: &SpoolSpec) -> Result<Arc<Spool>, PipeError> {
        if let Some(s) = self.spools.get(name) {
            s.set_limits(spec.max_bytes, spec.when_full);
            return Ok(s.clone());
        }
        let store = self.store.clone().ok_or_else(|| PipeError::NoStore {
            pipe: name.to_owned(),
        })?;
        let spool = Spool::open(
            &store,
            name,
            spec.max_bytes,
            spec.when_full,
            self.spool_total.clone(),
        )
        .map_err(|e| PipeError::Spool {
            pipe: name.to_owned(),
            error: e.to_string(),
        })?;
        let spool = Arc::new(spool);
        self.spools.insert(name.to_owned(), spool.clone());
        Ok(spool)
    }

    /// Tells each affected dispatcher its new routes and each subscriber its
    /// subscription change. Returns one token per dispatcher, cancelled once
    /// it routes by the new table.
    fn send_steps(&mut self, steps: BTreeMap<BrokerIx, Step>) -> Vec<CancellationToken> {
        let mut applied = Vec::new();
        for (ix, step) in steps {
            let Some(src) = self.sources.get_mut(&ix) else {
                continue;
            };
            let token = CancellationToken::new();
            applied.push(token.clone());
            let change = src.subs.change(&step.remove, &step.filters, step.no_local);
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
        applied
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

    /// Sets each step's no local, and adds a step for every source whose
    /// no local flips without a pipe of its own changing (its filters are
    /// subscribed again with the new option).
    fn no_local_steps(&self, steps: &mut BTreeMap<BrokerIx, Step>) {
        let pipes: Vec<(BrokerIx, BrokerIx)> =
            self.running.values().map(|i| (i.source, i.dest)).collect();
        for (ix, src) in &self.sources {
            let no_local = subs::no_local_is_safe(*ix, &pipes);
            if no_local != src.subs.no_local() || steps.contains_key(ix) {
                steps.entry(*ix).or_default().no_local = no_local;
            }
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

/// Completes hand-off parts towards the source once what was written for
/// them is durable: one `durable()` wait serves every part queued meanwhile
/// (group commit). A failed sync leaves the parts open (the source keeps the
/// messages and redelivers them).
async fn committer(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Seq>,
    done: mpsc::UnboundedSender<Seq>,
    stats: Arc<PipeStats>,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 4096).await > 0 {
        let started = std::time::Instant::now();
        match store.durable().await {
            Ok(()) => {
                stats.fsync.observe(started.elapsed());
                for seq in batch.drain(..) {
                    let _ = done.send(seq);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, messages = batch.len(), "spool: sync failed; these messages stay unacknowledged at their source");
                batch.clear();
            }
        }
    }
}

/// Applies the worker's completions (spool sequence numbers) to the spool,
/// in batches, and saves the cursor at most [`SAVE_AFTER`] after an
/// acknowledgement left it unsaved (and once more at the end). After the
/// instance was retired, completions are ignored: the worker releases what
/// it held without forwarding it, and those records must stay in the spool
/// for the pipe's next instance.
async fn acker(inbox: Arc<Inbox>, mut rx: mpsc::UnboundedReceiver<Seq>, retire: CancellationToken) {
    let mut batch = Vec::new();
    // One timer for the task's life, re-armed only when an unsaved
    // acknowledgement appears (a timer registered per batch would cost more
    // than the batch).
    let save = tokio::time::sleep(SAVE_AFTER);
    tokio::pin!(save);
    let mut armed = false;
    loop {
        tokio::select! {
            biased;
            // Cancel safe: `recv_many` loses nothing when not completed.
            n = rx.recv_many(&mut batch, 1024) => {
                if n == 0 {
                    break;
                }
                let unsaved = !retire.is_cancelled() && inbox.spool_ack(&batch);
                batch.clear();
                if unsaved && !armed {
                    save.as_mut().reset(tokio::time::Instant::now() + SAVE_AFTER);
                    armed = true;
                }
            }
            () = save.as_mut(), if armed => {
                armed = false;
                inbox.spool_save();
            }
        }
    }
    inbox.spool_save();
}

#[cfg(test)]
mod tests;
