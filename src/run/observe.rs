//! Wires brokers, clients and pipes to observability for `run`: one call per
//! broker and pipe, then [`Observability::start`].
//!
//! Owns the status board, the metric handles, the client event watchers,
//! the stall watchdog (whose reconnect hook is each remote client's
//! [`ClientOptions::reconnect`]) and the HTTP endpoint. `run` stays a list
//! of small calls; nothing here knows MQTT. After start, a reload adds and
//! removes brokers and pipes through [`ObservabilityControl`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::client_events::{ClientEventSink, watch_client};
use super::watchdog::{WatchedPipe, run_watchdog};
use crate::broker::Broker;
use crate::client::ClientOptions;
use crate::config::{BrokerPlan, Plan, RemotePlan};
use crate::link::{Link, LinkState};
use crate::metrics::health::{Action, BrokerKind, PipeProgress, PipeState, PipeStatus};
use crate::metrics::pipe::LatencySample;
use crate::metrics::server::{self, Collector, ServerState};
use crate::metrics::spool::SpoolView;
use crate::metrics::status::StatusBoard;
use crate::metrics::{
    BuiltinBrokerMetrics, DropReason, MetricsError, PipeMetrics, PipeSample, RemoteBrokerMetrics,
};
use crate::pipe::stats::PipeStats;

/// Capacity of each client's event channel (events are rare; a lagging
/// watcher only loses counts, never blocks the client).
const EVENT_CAPACITY: usize = 64;

/// Why observability could not start.
#[derive(Debug, thiserror::Error)]
pub enum ObservabilityError {
    /// The metrics recorder could not be installed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The metrics listener could not be bound (the message includes the IO
    /// error, so it is not chained as a `source`).
    #[error("metrics listener {addr}: {error}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The bind error.
        error: std::io::Error,
    },
}

struct PipeEntry {
    watched: WatchedPipe,
    stats: Arc<PipeStats>,
}

/// What the watchdog, the scrape collector and the reconnect hook read.
/// Reloads add and remove entries. A std `Mutex`: short sections, no `.await`.
#[derive(Default)]
struct Registry {
    pipes: BTreeMap<String, PipeEntry>,
    builtins: BTreeMap<String, (BuiltinBrokerMetrics, Broker)>,
    reconnect: BTreeMap<String, Arc<Notify>>,
}

type Shared = Arc<Mutex<Registry>>;

fn lock(r: &Shared) -> MutexGuard<'_, Registry> {
    // Single inserts/removes: a poisoned lock still holds consistent maps.
    r.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Observability being set up; see the module docs.
pub struct Observability {
    control: ObservabilityControl,
    prometheus: Option<(PrometheusHandle, TcpListener)>,
    stall_rx: watch::Receiver<Duration>,
    spools: Option<SpoolView>,
}

impl std::fmt::Debug for Observability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observability")
            .field("stall_after", &*self.stall_rx.borrow())
            .finish_non_exhaustive()
    }
}

impl Observability {
    /// Installs the recorder and binds the metrics listener (when enabled),
    /// and declares every broker on the status board. Call it first: a bind
    /// error then leaves nothing to undo.
    pub async fn new(plan: &Plan) -> Result<Self, ObservabilityError> {
        let prometheus = if plan.metrics.enabled {
            let handle = crate::metrics::install()?;
            let addr = plan.metrics.listen;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|error| ObservabilityError::Bind { addr, error })?;
            Some((handle, listener))
        } else {
            None
        };
        let board = Arc::new(StatusBoard::new());
        for (name, b) in &plan.brokers {
            declare(&board, name, b);
        }
        let (stall_tx, stall_rx) = watch::channel(plan.watchdog.stall_after);
        let tracker = TaskTracker::new();
        tracker.close();
        Ok(Observability {
            control: ObservabilityControl {
                board,
                stall_after: Arc::new(stall_tx),
                registry: Shared::default(),
                token: CancellationToken::new(),
                tracker,
            },
            prometheus,
            stall_rx,
            spools: None,
        })
    }

    /// The live-reconfiguration handle (usable before [`Observability::start`]).
    pub fn control(&self) -> ObservabilityControl {
        self.control.clone()
    }

    /// Registers the running pipes (`stats` from the pipe runtime).
    pub fn pipes(&mut self, plan: &Plan, stats: &[(String, Arc<PipeStats>)]) {
        self.control.set_pipes(plan, stats);
    }

    /// Registers the spools (metrics, `/readyz`, `/spool.json`).
    pub fn spools(&mut self, view: SpoolView) {
        self.spools = Some(view);
    }

    /// Spawns the watchdog and the HTTP endpoint.
    pub fn start(self) -> ObservabilityHandle {
        let control = self.control;
        let token = control.token.clone();
        let tracker = control.tracker.clone();
        let registry = control.registry.clone();
        let on_action = move |action: Action| {
            let Action::ReconnectDestination { pipe, destination } = action;
            match lock(&registry).reconnect.get(&destination) {
                Some(n) => {
                    info!(pipe = %pipe, broker = %destination, "watchdog: reconnecting destination link");
                    n.notify_waiters();
                }
                None => {
                    debug!(pipe = %pipe, broker = %destination, "watchdog: destination is built-in; nothing to reconnect")
                }
            }
        };
        let registry = control.registry.clone();
        tracker.spawn(run_watchdog(
            self.stall_rx,
            move || {
                lock(&registry)
                    .pipes
                    .values()
                    .map(|p| p.watched.clone())
                    .collect()
            },
            control.board.clone(),
            on_action,
            token.clone(),
        ));
        let mut addr = None;
        if let Some((prometheus, listener)) = self.prometheus {
            addr = listener.local_addr().ok();
            let registry = control.registry.clone();
            let spools = self.spools.clone();
            let collect = Collector(Arc::new(move || {
                if let Some(v) = &spools {
                    (v.0)().observe();
                }
                let r = lock(&registry);
                for p in r.pipes.values() {
                    observe_pipe(&p.watched.metrics, &p.stats);
                }
                for (m, b) in r.builtins.values() {
                    m.observe(&b.stats());
                }
            }));
            let state = ServerState {
                prometheus,
                board: control.board.clone(),
                collect: Some(collect),
                spools: self.spools,
            };
            let stop = token.clone();
            tracker.spawn(async move {
                if let Err(e) =
                    server::serve(listener, state, async move { stop.cancelled().await }).await
                {
                    tracing::warn!(error = %e, "metrics endpoint failed");
                }
            });
            if let Some(a) = addr {
                info!(addr = %a, "serving /metrics, /healthz, /readyz");
            }
        }
        ObservabilityHandle {
            addr,
            _control: control,
            token,
            tracker,
        }
    }
}

/// Mirrors a built-in broker's link state onto the board until the link
/// closes for good or observability stops.
async fn watch_link(
    name: String,
    mut state: watch::Receiver<LinkState>,
    board: Arc<StatusBoard>,
    stop: CancellationToken,
) {
    loop {
        let up = matches!(*state.borrow_and_update(), LinkState::Connected { .. });
        board.set_connected(&name, up, None);
        tokio::select! {
            _ = stop.cancelled() => return,
            // Cancel safe: a missed change is read by `borrow_and_update`.
            changed = state.changed() => if changed.is_err() { return },
        }
    }
}

/// Declares a broker on the board (a remote one initially disconnected).
fn declare(board: &StatusBoard, name: &str, b: &BrokerPlan) {
    match &b.kind {
        crate::config::BrokerKind::Remote(r) => {
            board.add_broker(name, BrokerKind::Remote, r.required)
        }
        crate::config::BrokerKind::BuiltIn(_) => board.add_broker(name, BrokerKind::Builtin, true),
    }
}

/// What a reload can change while everything keeps running: readiness
/// requirements, the watchdog threshold, and the set of brokers and pipes
/// that are watched and scraped. Cheap to clone.
#[derive(Clone)]
pub struct ObservabilityControl {
    board: Arc<StatusBoard>,
    stall_after: Arc<watch::Sender<Duration>>,
    registry: Shared,
    /// Stops the event watchers, the watchdog and the endpoint.
    token: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for ObservabilityControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservabilityControl")
            .field("pipes", &lock(&self.registry).pipes.len())
            .finish_non_exhaustive()
    }
}

impl ObservabilityControl {
    /// Marks whether readiness requires broker `name`.
    pub fn set_required(&self, name: &str, required: bool) {
        self.board.set_required(name, required);
    }

    /// Changes the watchdog's stall threshold.
    pub fn set_stall_after(&self, stall_after: Duration) {
        self.stall_after.send_replace(stall_after);
    }

    /// Hooks a remote broker's client: lifecycle events feed its metrics and
    /// the board (on which it is declared), and the watchdog gets its
    /// reconnect trigger (`opts.reconnect`).
    pub fn remote(&self, name: &str, plan: &RemotePlan, opts: &mut ClientOptions) {
        self.board
            .add_broker(name, BrokerKind::Remote, plan.required);
        let endpoints: Vec<String> = plan.endpoints.iter().map(|e| e.url.clone()).collect();
        let metrics = RemoteBrokerMetrics::new(name, &endpoints);
        let (tx, rx) = broadcast::channel(EVENT_CAPACITY);
        opts.events = Some(tx);
        opts.metrics = Some(metrics.clone());
        let notify = Arc::new(Notify::new());
        opts.reconnect = Some(notify.clone());
        lock(&self.registry)
            .reconnect
            .insert(name.to_owned(), notify);
        self.tracker.spawn(watch_client(
            rx,
            ClientEventSink::new(metrics, self.board.clone()),
            self.token.clone(),
        ));
    }

    /// Registers a started built-in broker (declared on the board, sampled
    /// on each scrape). The bridge's `link` to it feeds the board: the
    /// broker counts as connected only while the link is attached, so a
    /// link that was closed shows in `/readyz` until it has re-attached.
    pub fn builtin(&self, broker: &Broker, link: &Link) {
        let name = broker.name().to_owned();
        self.board.add_broker(&name, BrokerKind::Builtin, true);
        lock(&self.registry).builtins.insert(
            name.clone(),
            (BuiltinBrokerMetrics::new(&name), broker.clone()),
        );
        self.tracker.spawn(watch_link(
            name,
            link.state(),
            self.board.clone(),
            self.token.clone(),
        ));
    }

    /// Forgets a broker removed by a reload.
    pub fn remove_broker(&self, name: &str) {
        let mut r = lock(&self.registry);
        r.builtins.remove(name);
        r.reconnect.remove(name);
        drop(r);
        self.board.remove_broker(name);
    }

    /// Sets the watched and scraped pipes to `stats` (the running pipes). A
    /// pipe already known keeps its metric handles (its series carry on);
    /// pipes not in `stats` are no longer watched.
    pub fn set_pipes(&self, plan: &Plan, stats: &[(String, Arc<PipeStats>)]) {
        let mut r = lock(&self.registry);
        let mut old = std::mem::take(&mut r.pipes);
        for (name, st) in stats {
            let Some(p) = plan.pipes.get(name) else {
                continue;
            };
            let metrics = match old.remove(name) {
                Some(e) => e.watched.metrics,
                None => {
                    // On the board (`/readyz`, the status page) from now on,
                    // not only after the watchdog's next round.
                    let s = st.snapshot();
                    let pending = s.queue_depth + s.inflight.max(s.spooled);
                    self.board.set_pipe(PipeStatus {
                        name: name.clone(),
                        destination: p.to.clone(),
                        state: if pending == 0 {
                            PipeState::Idle
                        } else {
                            PipeState::Flowing
                        },
                        pending,
                        forwarded: s.forwarded,
                        idle_seconds: 0,
                    });
                    PipeMetrics::new(name)
                }
            };
            metrics.set_queue_capacity(p.queue.size);
            let probe_stats = st.clone();
            r.pipes.insert(
                name.clone(),
                PipeEntry {
                    watched: WatchedPipe {
                        name: name.clone(),
                        destination: p.to.clone(),
                        metrics,
                        probe: Arc::new(move || {
                            let s = probe_stats.snapshot();
                            PipeProgress {
                                forwarded: s.forwarded,
                                pending: s.queue_depth + s.inflight.max(s.spooled),
                            }
                        }),
                    },
                    stats: st.clone(),
                },
            );
        }
        // A removed pipe's series keep their last values; sample them once more.
        for e in old.values() {
            observe_pipe(&e.watched.metrics, &e.stats);
        }
    }
}

/// Running observability tasks.
#[derive(Debug)]
pub struct ObservabilityHandle {
    addr: Option<SocketAddr>,
    /// Held so the stall setting's sender lives as long as the tasks
    /// watching it.
    _control: ObservabilityControl,
    token: CancellationToken,
    tracker: TaskTracker,
}

impl ObservabilityHandle {
    /// The bound metrics address (the real port when configured with port 0).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Stops the endpoint, the watchdog and the watchers, and waits for them.
    pub async fn stop(self) {
        self.token.cancel();
        self.tracker.wait().await;
    }
}

/// Copies a pipe's own atomic counters (see [`PipeStats`]) into its metric
/// handles: counters, gauges and the latency histogram. Called before each
/// render.
fn observe_pipe(metrics: &PipeMetrics, s: &PipeStats) {
    let snap = s.snapshot();
    metrics.observe(&PipeSample {
        received: snap.received,
        forwarded: snap.forwarded,
        bytes_forwarded: snap.bytes_forwarded,
        dropped: DropReason::ALL.map(|r| snap.dropped(r)),
        inflight: snap.inflight,
        queue_depth: snap.queue_depth,
    });
    metrics.observe_latency(&LatencySample {
        buckets: s.latency.buckets(),
        sum: s.latency.sum(),
    });
    metrics.observe_fsync(&LatencySample {
        buckets: s.fsync.buckets(),
        sum: s.fsync.sum(),
    });
}
