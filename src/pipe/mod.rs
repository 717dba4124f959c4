//! Pipes: subscribe → filter/exclude/remap → publish, with the QoS hand-off.
//!
//! Shape at run time: one [`Link`] per broker, shared by every pipe that uses
//! it. Per source broker, one dispatcher task subscribes to the union of its
//! pipes' filters and routes each incoming message to the matching pipes; per
//! pipe, one worker task publishes to the destination with a bounded window
//! of publishes in flight. A QoS 1/2 message is acknowledged to its source
//! only after every pipe it matched is done with it (see [`handoff`]).
//!
//! No sockets, no reconnect logic here: links hide all of that.

pub mod handoff;
pub(crate) mod inbox;
pub mod loopguard;
pub mod queue;
pub mod ratelimit;
pub mod rules;
pub mod stats;

mod dispatch;
mod worker;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::link::{Delivery, Link};
use crate::protocol::QoS;
use crate::topic::FilterTrie;

use dispatch::{Dispatcher, Route};
use inbox::Inbox;
use loopguard::{BrokerIx, LoopGuard};
use queue::WhenFull;
use ratelimit::TokenBucket;
use rules::PipeRules;
use stats::PipeStats;
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

/// The running pipes.
#[derive(Debug)]
pub struct Pipes {
    stats: Vec<(String, Arc<PipeStats>)>,
    links: Vec<Link>,
    intake: CancellationToken,
    abort: CancellationToken,
    tasks: TaskTracker,
    /// Number of sources whose subscriptions were acknowledged, and how many there are.
    subscribed: watch::Receiver<usize>,
    sources: usize,
}

/// Starts dispatchers and workers for `specs` over `brokers`.
pub fn start(brokers: Vec<BrokerLink>, specs: Vec<PipeSpec>) -> Result<Pipes, PipeError> {
    for s in &specs {
        for index in [s.source, s.dest] {
            if index >= brokers.len() {
                return Err(PipeError::UnknownBroker {
                    pipe: s.name.clone(),
                    index,
                });
            }
        }
    }
    let intake = CancellationToken::new();
    let abort = CancellationToken::new();
    let tasks = TaskTracker::new();
    let links: Vec<Link> = brokers.iter().map(|b| b.link.clone()).collect();
    let is_source: Vec<bool> = (0..brokers.len())
        .map(|i| specs.iter().any(|s| s.source == i))
        .collect();
    let is_dest: Vec<bool> = (0..brokers.len())
        .map(|i| specs.iter().any(|s| s.dest == i))
        .collect();
    let guard = Arc::new(Mutex::new(LoopGuard::default()));
    let mut stats = Vec::new();

    let mut per_source: BTreeMap<BrokerIx, Vec<PipeSpec>> = BTreeMap::new();
    for s in specs {
        per_source.entry(s.source).or_default().push(s);
    }
    let sources = per_source.len();
    let (subscribed_tx, subscribed) = watch::channel(0usize);
    let subscribed_tx = Arc::new(subscribed_tx);
    for (ix, broker) in brokers.into_iter().enumerate() {
        let Some(pipes) = per_source.remove(&ix) else {
            // Not a source: nothing is subscribed, so nothing is delivered;
            // keep the receiver alive so the link owner never sees it closed.
            let mut deliveries = broker.deliveries;
            let intake = intake.clone();
            tasks.spawn(async move {
                tokio::select! {
                    () = intake.cancelled() => {}
                    _ = async { while deliveries.recv().await.is_some() {} } => {}
                }
            });
            continue;
        };
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let mut trie = FilterTrie::new();
        let mut union: BTreeMap<String, QoS> = BTreeMap::new();
        let mut routes = Vec::new();
        for (route_ix, spec) in pipes.into_iter().enumerate() {
            let pipe_stats = Arc::new(PipeStats::default());
            stats.push((spec.name.clone(), pipe_stats.clone()));
            let inbox = Arc::new(Inbox::new(
                spec.queue_size,
                spec.when_full,
                pipe_stats.clone(),
            ));
            for (filter, qos) in &spec.filters {
                trie.insert(filter, (route_ix, *qos));
                let q = union.entry(filter.clone()).or_insert(*qos);
                *q = (*q).max(*qos);
            }
            let worker = Worker {
                name: spec.name.clone(),
                inbox: inbox.clone(),
                link: links[spec.dest].clone(),
                stats: pipe_stats.clone(),
                done: done_tx.clone(),
                guard: is_source[spec.dest].then(|| (guard.clone(), spec.dest)),
                window: spec.inflight,
                rate: spec.rate_limit.map(|(per_second, burst)| {
                    TokenBucket::new(
                        f64::from(per_second),
                        burst,
                        tokio::time::Instant::now().into_std(),
                    )
                }),
                abort: abort.clone(),
            };
            tasks.spawn(
                worker
                    .run()
                    .instrument(tracing::info_span!("pipe", pipe = %spec.name)),
            );
            routes.push(Route {
                name: spec.name,
                dest: spec.dest,
                rules: spec.rules,
                inbox,
                stats: pipe_stats,
            });
        }
        drop(done_tx);
        let filters: Vec<(String, QoS)> = union.into_iter().collect();
        tasks.spawn(subscribe(
            broker.name.clone(),
            broker.link.clone(),
            filters,
            intake.clone(),
            subscribed_tx.clone(),
        ));
        let dispatcher = Dispatcher {
            source: ix,
            source_name: broker.name.clone(),
            deliveries: broker.deliveries,
            trie,
            routes,
            done: done_rx,
            guard: is_dest[ix].then(|| guard.clone()),
            max_pending: broker.max_pending.max(1),
            intake: intake.clone(),
            abort: abort.clone(),
        };
        tasks.spawn(
            dispatcher
                .run()
                .instrument(tracing::info_span!("source", broker = %broker.name)),
        );
    }
    tasks.close();
    Ok(Pipes {
        stats,
        links,
        intake,
        abort,
        tasks,
        subscribed,
        sources,
    })
}

/// Subscribes a source link to the union of its pipes' filters. Runs as its
/// own task: the SUBACK may only come after a (re)connect, and deliveries
/// from a resumed session must keep flowing meanwhile.
async fn subscribe(
    name: String,
    link: Link,
    filters: Vec<(String, QoS)>,
    intake: CancellationToken,
    subscribed: Arc<watch::Sender<usize>>,
) {
    let asked = filters.clone();
    let result = tokio::select! {
        r = link.subscribe(filters) => r,
        () = intake.cancelled() => return,
    };
    match result {
        Ok(granted) => {
            subscribed.send_modify(|n| *n += 1);
            for ((filter, _), g) in asked.iter().zip(granted.iter()) {
                match g {
                    Some(q) => {
                        tracing::info!(broker = %name, filter = %filter, qos = q.as_u8(), "subscribed")
                    }
                    None => {
                        tracing::error!(broker = %name, filter = %filter, "subscription refused by the broker")
                    }
                }
            }
        }
        Err(err) => tracing::error!(broker = %name, error = %err, "subscribe failed"),
    }
}

impl Pipes {
    /// Every pipe's counters, by name.
    pub fn stats(&self) -> &[(String, Arc<PipeStats>)] {
        &self.stats
    }

    /// Counters of one pipe.
    pub fn pipe_stats(&self, name: &str) -> Option<Arc<PipeStats>> {
        self.stats
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
    }

    /// The links, indexed like the broker list given to [`start`].
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// Resolves once every source broker acknowledged its subscriptions
    /// (SUBACK; a refused filter is logged, not waited for).
    pub fn subscribed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.subscribed.clone();
        let sources = self.sources;
        async move {
            let _ = rx.wait_for(|n| *n >= sources).await;
        }
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
            for (name, s) in &self.stats {
                if s.busy() {
                    let snap = s.snapshot();
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
