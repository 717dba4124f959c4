//! `lib::run`: turns a checked [`Plan`] into running brokers, links and pipes,
//! reloads it live, and shuts it down gracefully.
//!
//! One connection per broker, shared by every pipe that uses it: a remote
//! broker gets one client task ([`client::spawn`]), a built-in broker is
//! started ([`Broker::start`]) and the bridge opens one persistent in-process
//! session on it ([`Broker::link`]).
//!
//! Shutdown order (when the token given to [`run`] is cancelled): stop taking
//! messages, drain queued and in-flight ones until `shutdown_timeout`, log the
//! pipes still busy, close every remote link (it publishes the retained
//! `offline` status, then DISCONNECTs, so no will), then stop the built-in
//! brokers.

pub mod check;
pub mod client_events;
pub mod filewatch;
pub(crate) mod observe;
mod options;
mod reload;
pub mod watchdog;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{self, Broker};
use crate::client::{self, SettingsSlot};
use crate::config::ConfigErrors;
use crate::config::diff::ReloadPlan;
use crate::config::plan::{BrokerKind, BrokerPlan, Plan};
use crate::link::Link;
use crate::metrics::events::ReloadFailed;
use crate::pipe::loopguard::BrokerIx;
use crate::pipe::stats::PipeStats;
use crate::pipe::{self, BrokerLink, PipeError, Pipes};
use crate::store::{Store, StoreError};
use observe::{Observability, ObservabilityControl, ObservabilityError, ObservabilityHandle};

use options::{broker_options, client_options, pipe_spec, publishes_to, spool_spec};

/// Publishes in flight from one pipe into a built-in broker, at most.
const BUILTIN_PIPE_INFLIGHT: usize = 100;
/// How long the links may take to publish `offline` and DISCONNECT at shutdown.
const LINK_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A built-in broker could not start (listener bind, TLS, password or ACL file).
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// The pipes could not be wired (a bug: the plan is checked).
    #[error(transparent)]
    Pipe(#[from] PipeError),
    /// The metrics endpoint could not start (listener bind, recorder).
    #[error(transparent)]
    Observability(#[from] ObservabilityError),
    /// The local store (`storage.dir`) could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a reload was not applied (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// A new built-in broker could not start (e.g. its port is taken).
    #[error(transparent)]
    Start(#[from] RunError),
    /// The bridge is shutting down.
    #[error("the bridge is shutting down")]
    Stopped,
}

/// What a finished run reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Pipes that still had messages queued or in flight at the shutdown deadline.
    pub busy_pipes: Vec<String>,
}

/// One running broker.
struct BrokerRt {
    ix: BrokerIx,
    link: Link,
    /// Publish window of a pipe into this broker.
    window: usize,
    /// Stops this broker's client task or built-in broker alone (a child of
    /// the run's links token).
    token: CancellationToken,
    builtin: Option<Broker>,
    /// Remote: where a reload puts new connection settings, and the trigger
    /// that makes the running connection pick them up.
    remote: Option<(SettingsSlot, Arc<Notify>)>,
}

/// Everything a running bridge owns; reloads and the stop sequence take turns on it.
struct Bridge {
    /// The configuration in effect (reloads update the parts they apply).
    plan: Plan,
    /// `None` once the stop sequence took it.
    pipes: Option<Pipes>,
    brokers: BTreeMap<String, BrokerRt>,
    obs: ObservabilityControl,
    links_token: CancellationToken,
    /// Client tasks and broker removals.
    tracker: TaskTracker,
    /// The local store (built-in brokers keep their persistent state in it).
    store: Store,
}

/// A running bridge.
pub struct RunHandle {
    bridge: Arc<Mutex<Bridge>>,
    stats: Vec<(String, Arc<PipeStats>)>,
    builtin_addrs: BTreeMap<String, Vec<SocketAddr>>,
    builtins: BTreeMap<String, Broker>,
    links: BTreeMap<String, Link>,
    metrics_addr: Option<SocketAddr>,
    /// Subscription changes not yet acknowledged by the brokers.
    pending_subscriptions: watch::Receiver<usize>,
    store: Store,
    spools: crate::spool::SpoolBoard,
    done: JoinHandle<RunReport>,
}

impl std::fmt::Debug for RunHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHandle")
            .field("pipes", &self.stats.len())
            .field("builtin_addrs", &self.builtin_addrs)
            .finish_non_exhaustive()
    }
}

impl RunHandle {
    /// Every running pipe's counters, by pipe name.
    pub fn stats(&self) -> &[(String, Arc<PipeStats>)] {
        &self.stats
    }

    /// One running pipe's counters.
    pub fn pipe_stats(&self, pipe: &str) -> Option<Arc<PipeStats>> {
        self.stats
            .iter()
            .find(|(n, _)| n == pipe)
            .map(|(_, s)| s.clone())
    }

    /// The addresses a built-in broker's listeners bound (real ports for port 0).
    pub fn builtin_addrs(&self, broker: &str) -> Option<&[SocketAddr]> {
        self.builtin_addrs.get(broker).map(Vec::as_slice)
    }

    /// The open local store (`storage.dir`).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Every spool's numbers now (running pipes and orphaned spools).
    pub fn spools(&self) -> Vec<crate::spool::SpoolRow> {
        self.spools.rows(crate::spool::now_ms())
    }

    /// The bound address of `/metrics`, `/healthz`, `/readyz` (`None` when
    /// `metrics.enabled` is false; the real port when configured with port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Reloads to a valid plan, reconciling live (see "Reload" in
    /// `docs/operating.md`): pipes and brokers whose settings did not change keep
    /// running untouched; removed pipes drain and stop, changed ones drain
    /// and restart with the new settings, new ones start (with their new
    /// brokers); a removed broker is closed once its pipes have drained; a
    /// remote broker's new connection settings make its link reconnect
    /// underneath its pipes; `required`, the watchdog threshold and
    /// `shutdown_timeout` apply at once. Logged as pending until a restart:
    /// built-in broker settings, a remote broker's `inflight`, a broker's
    /// type, and metrics settings.
    ///
    /// Returns once every dispatcher routes by the new table; new
    /// subscriptions complete in the background (await [`RunHandle::ready`]).
    /// Logs and counts the reload (a new built-in broker that cannot start
    /// fails it, and nothing is changed).
    pub async fn reload(&mut self, new: &Plan) -> Result<ReloadPlan, ReloadError> {
        let mut bridge = self.bridge.lock().await;
        let result = bridge.reload(new).await;
        if let Some(pipes) = &bridge.pipes {
            self.stats = pipes.stats();
        }
        self.links = bridge
            .brokers
            .iter()
            .map(|(n, b)| (n.clone(), b.link.clone()))
            .collect();
        self.builtin_addrs = bridge
            .brokers
            .iter()
            .filter_map(|(n, b)| Some((n.clone(), b.builtin.as_ref()?.local_addrs())))
            .collect();
        self.builtins = builtins(&bridge.brokers);
        result
    }

    /// Re-reads `path` (SIGHUP): an invalid file is rejected with every
    /// error logged and counted, and the running configuration stays.
    pub async fn reload_file(&mut self, path: &std::path::Path) -> Result<ReloadPlan, ReloadError> {
        match crate::config::load(path) {
            Ok((plan, warnings)) => {
                for w in &warnings {
                    tracing::warn!(warning = %w, "config warning");
                }
                self.reload(&plan).await
            }
            Err(errors) => {
                let lines: Vec<String> = errors.errors.iter().map(ToString::to_string).collect();
                ReloadFailed { errors: &lines }.emit();
                Err(errors.into())
            }
        }
    }

    /// A running built-in broker (e.g. for a fault drill on its link).
    pub fn builtin(&self, broker: &str) -> Option<&Broker> {
        self.builtins.get(broker)
    }

    /// The bridge's link to a broker (e.g. to watch its state).
    pub fn link(&self, broker: &str) -> Option<&Link> {
        self.links.get(broker)
    }

    /// Resolves once the source brokers acknowledged every subscription
    /// change so far (at start, and after each reload): from then on, what
    /// is published there is forwarded.
    pub async fn ready(&mut self) {
        let _ = self.pending_subscriptions.wait_for(|n| *n == 0).await;
    }

    /// Waits until the bridge has shut down (after the token given to [`run`]
    /// was cancelled).
    pub async fn finished(self) -> RunReport {
        self.done.await.unwrap_or_default()
    }
}

/// Starts one broker: a built-in one binds its listeners (the step that can
/// fail); a remote one gets its client task. Returns it with the link the
/// pipe runtime takes (`ix` is set by the caller).
async fn start_broker(
    name: &str,
    bp: &BrokerPlan,
    publishes: bool,
    obs: &ObservabilityControl,
    links_token: &CancellationToken,
    tracker: &TaskTracker,
    store: &Store,
) -> Result<(BrokerRt, BrokerLink), RunError> {
    let token = links_token.child_token();
    match &bp.kind {
        BrokerKind::Remote(r) => {
            let mut opts = client_options(name, r);
            opts.publishes = publishes;
            opts.store = Some(store.clone());
            obs.remote(name, r, &mut opts);
            let slot = SettingsSlot::default();
            opts.settings = Some(slot.clone());
            let remote = opts.reconnect.clone().map(|t| (slot, t));
            let (link, deliveries) = client::spawn(opts, token.clone(), tracker);
            let window = usize::from(r.inflight).max(1);
            Ok((
                BrokerRt {
                    ix: 0,
                    link: link.clone(),
                    window,
                    token,
                    builtin: None,
                    remote,
                },
                BrokerLink {
                    name: name.to_owned(),
                    link,
                    deliveries,
                    max_pending: window,
                },
            ))
        }
        BrokerKind::BuiltIn(b) => {
            let broker =
                Broker::start(broker_options(name, b, Some(store.clone())), token.clone()).await?;
            // The bridge's own persistent session on its built-in broker.
            let (link, deliveries) = broker.link(&broker::bridge_link_id(name), false);
            obs.builtin(&broker, &link);
            Ok((
                BrokerRt {
                    ix: 0,
                    link: link.clone(),
                    window: BUILTIN_PIPE_INFLIGHT,
                    token,
                    builtin: Some(broker),
                    remote: None,
                },
                BrokerLink {
                    name: name.to_owned(),
                    link,
                    deliveries,
                    max_pending: pipe::DEFAULT_MAX_PENDING,
                },
            ))
        }
    }
}

/// The built-in brokers among `brokers`.
fn builtins(brokers: &BTreeMap<String, BrokerRt>) -> BTreeMap<String, Broker> {
    brokers
        .iter()
        .filter_map(|(n, b)| Some((n.clone(), b.builtin.clone()?)))
        .collect()
}

/// Stops brokers started by a start or reload that then failed.
async fn discard(brokers: Vec<(String, BrokerRt)>, obs: &ObservabilityControl) {
    for (name, b) in brokers {
        obs.remove_broker(&name);
        b.token.cancel();
        if let Some(broker) = &b.builtin {
            broker.closed().await;
        }
    }
}

/// How long a start waits for a store another process holds (a
/// `mqbridge spool` reading it) before it gives up.
const STORE_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Starts everything in `plan`; cancel `shutdown` to stop gracefully, then
/// await [`RunHandle::finished`]. Built-in listeners may use port 0.
pub async fn run(plan: Plan, shutdown: CancellationToken) -> Result<RunHandle, RunError> {
    // First, so a metrics bind or store error leaves nothing running.
    let store = Store::open_waiting(&plan.storage, STORE_LOCK_WAIT).await?;
    tracing::info!(dir = %store.dir().display(), fsync = ?store.fsync(), "store open");
    let mut obs = Observability::new(&plan).await?;
    let control = obs.control();
    // The links and brokers stop on this token, cancelled only at the end of
    // the graceful sequence (after the drain), not on the caller's token.
    let links_token = CancellationToken::new();
    let tracker = TaskTracker::new();

    // Built-in brokers first: binding a listener is what can fail, and then
    // no remote connection has been opened yet.
    let builtin_first = plan
        .brokers
        .iter()
        .filter(|(_, b)| matches!(b.kind, BrokerKind::BuiltIn(_)))
        .chain(
            plan.brokers
                .iter()
                .filter(|(_, b)| matches!(b.kind, BrokerKind::Remote(_))),
        );
    let mut started: Vec<(String, BrokerRt)> = Vec::new();
    let mut pipes = Pipes::with_store(store.clone())?;
    for p in plan.pipes.values() {
        if let Some(spec) = spool_spec(p) {
            pipes.open_spool(&p.name, &spec)?;
        }
    }
    for (name, bp) in builtin_first {
        let publishes = publishes_to(&plan, name);
        match start_broker(
            name,
            bp,
            publishes,
            &control,
            &links_token,
            &tracker,
            &store,
        )
        .await
        {
            Ok((mut rt, link)) => {
                rt.ix = pipes.add_broker(link);
                started.push((name.clone(), rt));
            }
            Err(err) => {
                discard(started, &control).await;
                links_token.cancel();
                return Err(err);
            }
        }
    }
    let brokers: BTreeMap<String, BrokerRt> = started.into_iter().collect();
    let specs = plan
        .pipes
        .values()
        .filter_map(|p| {
            let (s, d) = (brokers.get(&p.from)?, brokers.get(&p.to)?);
            Some(pipe_spec(p, s.ix, d.ix, d.window))
        })
        .collect();
    // The routes are in place before any subscription goes out; the
    // subscriptions complete in the background (see `RunHandle::ready`).
    match pipes.update(&[], specs, plan.shutdown_timeout) {
        Ok(routed) => drop(routed),
        Err(err) => {
            discard(brokers.into_iter().collect(), &control).await;
            links_token.cancel();
            return Err(err.into());
        }
    }
    tracing::info!(
        brokers = plan.brokers.len(),
        pipes = plan.pipes.len(),
        "bridge running"
    );
    let stats = pipes.stats();
    let spools = pipes.spool_board();
    report_orphans(&pipes);
    obs.pipes(&plan, &stats);
    obs.spools(spool_view(&store, &spools));
    let obs = obs.start();
    let metrics_addr = obs.addr();
    let pending_subscriptions = pipes.pending_subscriptions();
    let links = brokers
        .iter()
        .map(|(n, b)| (n.clone(), b.link.clone()))
        .collect();
    let builtin_addrs = brokers
        .iter()
        .filter_map(|(n, b)| Some((n.clone(), b.builtin.as_ref()?.local_addrs())))
        .collect();
    let builtins = builtins(&brokers);
    let bridge = Arc::new(Mutex::new(Bridge {
        plan,
        pipes: Some(pipes),
        brokers,
        obs: control,
        links_token,
        tracker,
        store: store.clone(),
    }));
    let done = tokio::spawn(stop(bridge.clone(), shutdown, obs));
    Ok(RunHandle {
        bridge,
        stats,
        builtin_addrs,
        builtins,
        links,
        metrics_addr,
        pending_subscriptions,
        store,
        spools,
        done,
    })
}

/// What the observability layer reads for the spool metrics, `/readyz`
/// and `/spool.json`.
fn spool_view(store: &Store, board: &crate::spool::SpoolBoard) -> crate::metrics::spool::SpoolView {
    let (store, board) = (store.clone(), board.clone());
    crate::metrics::spool::SpoolView(Arc::new(move || crate::metrics::spool::SpoolReport {
        spools: board.rows(crate::spool::now_ms()),
        store: crate::spool::store_row(&store),
    }))
}

/// Warns about spools no configured pipe uses: kept on disk (and counted
/// against `storage.max_bytes`) until `mqbridge spool --drop <pipe>`.
fn report_orphans(pipes: &Pipes) {
    for (name, spool, used) in pipes.spools() {
        if !used {
            let snap = spool.snapshot(crate::spool::now_ms());
            tracing::warn!(pipe = %name, messages = snap.depth, bytes = snap.bytes, "orphaned spool: no configured pipe uses it; kept until `mqbridge spool --drop {name}`");
        }
    }
}

/// Waits for the shutdown signal, then runs the graceful stop sequence.
async fn stop(
    bridge: Arc<Mutex<Bridge>>,
    shutdown: CancellationToken,
    obs: ObservabilityHandle,
) -> RunReport {
    shutdown.cancelled().await;
    // A reload in progress finishes first.
    let mut bridge = bridge.lock().await;
    let deadline = bridge.plan.shutdown_timeout;
    tracing::info!(timeout = ?deadline, "shutting down: draining pipes");
    let busy_pipes = match bridge.pipes.take() {
        Some(pipes) => pipes.drain(deadline).await,
        None => Vec::new(),
    };
    if !busy_pipes.is_empty() {
        tracing::warn!(pipes = %crate::metrics::jsonlog::list(&busy_pipes), "pipes still busy at the deadline; their unacknowledged messages will be redelivered by the sources");
    }
    // Each remote link publishes its retained `offline` status, then sends
    // DISCONNECT (so the broker drops the will).
    // Bounded: a link whose request queue is full (destination down) may
    // not take the request; cancelling `links_token` below stops it anyway.
    let _ = tokio::time::timeout(
        LINK_CLOSE_TIMEOUT,
        futures_util::future::join_all(bridge.brokers.values().map(|b| b.link.shutdown())),
    )
    .await;
    bridge.tracker.close();
    if tokio::time::timeout(LINK_CLOSE_TIMEOUT, bridge.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("links did not close in time; cancelling");
    }
    bridge.links_token.cancel();
    bridge.tracker.wait().await;
    for b in bridge.brokers.values() {
        if let Some(broker) = &b.builtin {
            broker.closed().await;
        }
    }
    // Last: health and metrics stay visible during the drain.
    obs.stop().await;
    tracing::info!("bridge stopped");
    RunReport { busy_pipes }
}
