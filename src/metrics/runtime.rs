//! Wiring for `lib::run`: one call per broker and pipe, then [`Observability::start`].
//!
//! Owns the status board, the metric handles, the client event watchers,
//! the stall watchdog (whose reconnect hook is each remote client's
//! [`ClientOptions::reconnect`]) and the HTTP endpoint. `run` stays a list
//! of small calls; nothing here knows MQTT.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::events::ReloadApplied;
use super::health::{Action, BrokerKind, PipeProgress};
use super::reload::{ReloadPlan, diff};
use super::server::{self, Collector, ServerState};
use super::status::StatusBoard;
use super::watch::{ClientEventSink, WatchedPipe, run_watchdog, watch_client};
use super::{BuiltinBrokerMetrics, MetricsError, PipeMetrics, RemoteBrokerMetrics};
use crate::broker::Broker;
use crate::client::ClientOptions;
use crate::config::{BrokerPlan, Plan, RemotePlan};
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
    /// The metrics listener could not be bound.
    #[error("metrics listener {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
}

struct PipeEntry {
    watched: WatchedPipe,
    stats: Arc<PipeStats>,
}

/// Observability being set up; see the module docs.
pub struct Observability {
    board: Arc<StatusBoard>,
    prometheus: Option<(PrometheusHandle, TcpListener)>,
    stall_after: Duration,
    reconnect: BTreeMap<String, Arc<Notify>>,
    watchers: Vec<(
        broadcast::Receiver<crate::client::ClientEvent>,
        ClientEventSink,
    )>,
    builtins: Vec<(BuiltinBrokerMetrics, Broker)>,
    pipes: Vec<PipeEntry>,
}

impl std::fmt::Debug for Observability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observability")
            .field("stall_after", &self.stall_after)
            .field("pipes", &self.pipes.len())
            .finish_non_exhaustive()
    }
}

impl Observability {
    /// Installs the recorder and binds the metrics listener (when enabled),
    /// and declares every broker on the status board. Call it first: a bind
    /// error then leaves nothing to undo.
    pub async fn new(plan: &Plan) -> Result<Self, ObservabilityError> {
        let prometheus = if plan.metrics.enabled {
            let handle = super::install()?;
            let addr = plan.metrics.listen;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ObservabilityError::Bind { addr, source })?;
            Some((handle, listener))
        } else {
            None
        };
        let board = Arc::new(StatusBoard::new());
        for (name, b) in &plan.brokers {
            match &b.kind {
                crate::config::BrokerKind::Remote(r) => {
                    board.add_broker(name, BrokerKind::Remote, r.required)
                }
                crate::config::BrokerKind::BuiltIn(_) => {
                    board.add_broker(name, BrokerKind::Builtin, true)
                }
            }
        }
        Ok(Observability {
            board,
            prometheus,
            stall_after: plan.watchdog.stall_after,
            reconnect: BTreeMap::new(),
            watchers: Vec::new(),
            builtins: Vec::new(),
            pipes: Vec::new(),
        })
    }

    /// Hooks a remote broker's client: lifecycle events feed its metrics and
    /// the board, and the watchdog gets its reconnect trigger.
    pub fn remote(&mut self, name: &str, plan: &RemotePlan, opts: &mut ClientOptions) {
        let endpoints: Vec<String> = plan.endpoints.iter().map(|e| e.url.clone()).collect();
        let metrics = RemoteBrokerMetrics::new(name, &endpoints);
        let (tx, rx) = broadcast::channel(EVENT_CAPACITY);
        opts.events = Some(tx);
        opts.metrics = Some(metrics.clone());
        let notify = Arc::new(Notify::new());
        opts.reconnect = Some(notify.clone());
        self.reconnect.insert(name.to_owned(), notify);
        self.watchers
            .push((rx, ClientEventSink::new(metrics, self.board.clone())));
    }

    /// Registers a started built-in broker (sampled on each scrape).
    pub fn builtin(&mut self, broker: &Broker) {
        self.builtins
            .push((BuiltinBrokerMetrics::new(broker.name()), broker.clone()));
    }

    /// Registers the running pipes (`stats` from the pipe runtime).
    pub fn pipes(&mut self, plan: &Plan, stats: &[(String, Arc<PipeStats>)]) {
        for (name, st) in stats {
            let Some(p) = plan.pipes.get(name) else {
                continue;
            };
            let probe_stats = st.clone();
            self.pipes.push(PipeEntry {
                watched: WatchedPipe {
                    name: name.clone(),
                    destination: p.to.clone(),
                    metrics: PipeMetrics::new(name),
                    probe: Arc::new(move || {
                        let s = probe_stats.snapshot();
                        PipeProgress {
                            forwarded: s.forwarded,
                            pending: s.inflight + s.queue_depth,
                        }
                    }),
                },
                stats: st.clone(),
            });
        }
    }

    /// Spawns the watchers, the watchdog and the HTTP endpoint.
    pub fn start(self) -> ObservabilityHandle {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        for (rx, sink) in self.watchers {
            tracker.spawn(watch_client(rx, sink, token.clone()));
        }
        let watched: Vec<WatchedPipe> = self.pipes.iter().map(|p| p.watched.clone()).collect();
        let reconnect = self.reconnect;
        let on_action = move |action: Action| {
            let Action::ReconnectDestination { pipe, destination } = action;
            match reconnect.get(&destination) {
                Some(n) => {
                    info!(pipe = %pipe, broker = %destination, "watchdog: reconnecting destination link");
                    n.notify_waiters();
                }
                None => {
                    debug!(pipe = %pipe, broker = %destination, "watchdog: destination is built-in; nothing to reconnect")
                }
            }
        };
        let (stall_tx, stall_rx) = watch::channel(self.stall_after);
        let control = ObservabilityControl {
            board: self.board.clone(),
            stall_after: Arc::new(stall_tx),
        };
        tracker.spawn(run_watchdog(
            stall_rx,
            move || watched.clone(),
            self.board.clone(),
            on_action,
            token.clone(),
        ));
        let mut addr = None;
        if let Some((prometheus, listener)) = self.prometheus {
            addr = listener.local_addr().ok();
            let pipes: Vec<(PipeMetrics, Arc<PipeStats>)> = self
                .pipes
                .iter()
                .map(|p| (p.watched.metrics.clone(), p.stats.clone()))
                .collect();
            let builtins = self.builtins;
            let collect = Collector(Arc::new(move || {
                for (m, s) in &pipes {
                    m.observe_stats(s);
                }
                for (m, b) in &builtins {
                    m.observe(&b.stats());
                }
            }));
            let state = ServerState {
                prometheus,
                board: self.board.clone(),
                collect: Some(collect),
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
        tracker.close();
        ObservabilityHandle {
            addr,
            control,
            token,
            tracker,
        }
    }
}

/// What a reload can change while everything keeps running: the readiness
/// requirements and the watchdog threshold. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ObservabilityControl {
    board: Arc<StatusBoard>,
    stall_after: Arc<watch::Sender<Duration>>,
}

impl ObservabilityControl {
    /// The status board (readiness as `/readyz` reports it).
    pub fn board(&self) -> &Arc<StatusBoard> {
        &self.board
    }

    /// Marks whether readiness requires broker `name`.
    pub fn set_required(&self, name: &str, required: bool) {
        self.board.set_required(name, required);
    }

    /// Changes the watchdog's stall threshold.
    pub fn set_stall_after(&self, stall_after: Duration) {
        self.stall_after.send_replace(stall_after);
    }

    /// Reloads to the valid plan `new`: applies what can change while
    /// running — readiness requirements, the watchdog threshold, and each
    /// changed broker that `apply_broker(name, old, new)` manages to hand to
    /// its running connection — and updates `current` accordingly; every
    /// other change is reported as pending (logged; it takes effect at the
    /// next restart). Logs and counts the reload.
    pub fn reload(
        &self,
        current: &mut Plan,
        new: &Plan,
        mut apply_broker: impl FnMut(&str, &BrokerPlan, &BrokerPlan) -> Result<(), String>,
    ) -> ReloadPlan {
        let d = diff(current, new);
        let mut applied = Vec::new();
        let mut pending = Vec::new();
        for name in &d.brokers.changed {
            let (Some(old), Some(nb)) = (current.brokers.get(name), new.brokers.get(name)) else {
                continue;
            };
            match apply_broker(name, old, nb) {
                Ok(()) => {
                    if let crate::config::BrokerKind::Remote(r) = &nb.kind {
                        self.set_required(name, r.required);
                    }
                    current.brokers.insert(name.clone(), nb.clone());
                    applied.push(format!("broker {name} reconnects with new settings"));
                }
                Err(why) => pending.push(format!("broker {name} changed ({why})")),
            }
        }
        for name in &d.readiness_changed {
            if let (Some(crate::config::BrokerKind::Remote(nr)), Some(cur)) = (
                new.brokers.get(name).map(|b| &b.kind),
                current.brokers.get_mut(name),
            ) && let crate::config::BrokerKind::Remote(cr) = &mut cur.kind
            {
                cr.required = nr.required;
                self.set_required(name, nr.required);
                applied.push(format!("broker {name} required={}", nr.required));
            }
        }
        if d.watchdog_changed {
            current.watchdog = new.watchdog.clone();
            self.set_stall_after(new.watchdog.stall_after);
            applied.push(format!(
                "watchdog.stall_after={:?}",
                new.watchdog.stall_after
            ));
        }
        for (what, c) in [("broker", &d.brokers), ("pipe", &d.pipes)] {
            pending.extend(c.added.iter().map(|n| format!("{what} {n} added")));
            if what == "pipe" {
                pending.extend(c.changed.iter().map(|n| format!("pipe {n} changed")));
            }
            pending.extend(c.removed.iter().map(|n| format!("{what} {n} removed")));
        }
        if d.metrics_changed {
            pending.push("metrics settings changed".to_owned());
        }
        ReloadApplied {
            applied: &applied,
            pending: &pending,
        }
        .emit();
        d
    }
}

/// Running observability tasks.
#[derive(Debug)]
pub struct ObservabilityHandle {
    addr: Option<SocketAddr>,
    control: ObservabilityControl,
    token: CancellationToken,
    tracker: TaskTracker,
}

impl ObservabilityHandle {
    /// The bound metrics address (the real port when configured with port 0).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The live-reconfiguration handle.
    pub fn control(&self) -> ObservabilityControl {
        self.control.clone()
    }

    /// Stops the endpoint, the watchdog and the watchers, and waits for them.
    pub async fn stop(self) {
        self.token.cancel();
        self.tracker.wait().await;
    }
}
