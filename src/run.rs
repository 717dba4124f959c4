//! `lib::run`: turns a checked [`Plan`] into running brokers, links and pipes,
//! and shuts them down gracefully.
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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{self, Broker, BrokerOptions};
use crate::client::{
    self, BackoffOptions, ClientOptions, Endpoint, FailbackOptions, SettingsSlot, TlsOptions,
};
use crate::config::ConfigErrors;
use crate::config::plan::{
    BrokerKind, BuiltInPlan, DropPolicy, Plan, QosRule, RemotePlan, RetainRule, Scheme,
};
use crate::link::Link;
use crate::metrics::events::ReloadFailed;
use crate::metrics::reload::ReloadPlan;
use crate::metrics::runtime::{
    Observability, ObservabilityControl, ObservabilityError, ObservabilityHandle,
};
use crate::pipe::queue::WhenFull;
use crate::pipe::rules::{PipeRules, QosPolicy};
use crate::pipe::stats::PipeStats;
use crate::pipe::{self, BrokerLink, PipeError, PipeSpec, Pipes};
use crate::protocol::{Message, QoS};

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
}

/// What a finished run reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Pipes that still had messages queued or in flight at the shutdown deadline.
    pub busy_pipes: Vec<String>,
}

/// A running bridge.
pub struct RunHandle {
    stats: Vec<(String, Arc<PipeStats>)>,
    builtin_addrs: BTreeMap<String, Vec<SocketAddr>>,
    links: BTreeMap<String, Link>,
    metrics_addr: Option<SocketAddr>,
    /// The configuration in effect (reloads update the parts they apply).
    plan: Plan,
    control: ObservabilityControl,
    /// Per remote broker: where a reload puts new connection settings, and
    /// the trigger that makes the running connection pick them up.
    remotes: BTreeMap<String, (SettingsSlot, Arc<Notify>)>,
    /// `None` once resolved (a finished future must not be polled again).
    subscribed: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
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
    /// Every pipe's counters, by pipe name.
    pub fn stats(&self) -> &[(String, Arc<PipeStats>)] {
        &self.stats
    }

    /// One pipe's counters.
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

    /// The bound address of `/metrics`, `/healthz`, `/readyz` (`None` when
    /// `metrics.enabled` is false; the real port when configured with port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Reloads to a valid plan. Applied at once: readiness requirements
    /// (`required`), the watchdog threshold, and new connection settings of
    /// a remote broker (credentials, endpoints, TLS, keepalive…: its link
    /// reconnects underneath its pipes, which keep running). Logged as
    /// pending until a restart: added, removed or changed pipes, added or
    /// removed brokers, built-in broker settings, a remote broker's
    /// `inflight`, and metrics settings. Logs and counts the reload.
    pub fn reload(&mut self, new: &Plan) -> ReloadPlan {
        let remotes = &self.remotes;
        self.control.reload(&mut self.plan, new, |name, old, new| {
            match (&old.kind, &new.kind) {
                (BrokerKind::Remote(o), BrokerKind::Remote(n)) => {
                    if o.inflight != n.inflight {
                        return Err("`inflight` needs a restart".into());
                    }
                    let Some((slot, trigger)) = remotes.get(name) else {
                        return Err("not running".into());
                    };
                    *slot
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(client_options(name, n));
                    // A stored permit: a live connection drops at once; an
                    // offline client takes the settings before its next dial.
                    trigger.notify_one();
                    Ok(())
                }
                _ => Err("built-in broker settings need a restart".into()),
            }
        })
    }

    /// Re-reads `path` (SIGHUP): an invalid file is rejected with every
    /// error logged and counted, and the running configuration stays.
    pub fn reload_file(&mut self, path: &std::path::Path) -> Result<ReloadPlan, ConfigErrors> {
        match crate::config::load(path) {
            Ok((plan, warnings)) => {
                for w in &warnings {
                    tracing::warn!(warning = %w, "config warning");
                }
                Ok(self.reload(&plan))
            }
            Err(errors) => {
                let lines: Vec<String> = errors.errors.iter().map(ToString::to_string).collect();
                ReloadFailed { errors: &lines }.emit();
                Err(errors)
            }
        }
    }

    /// The bridge's link to a broker (e.g. to watch its state).
    pub fn link(&self, broker: &str) -> Option<&Link> {
        self.links.get(broker)
    }

    /// Resolves once every source broker acknowledged the bridge's
    /// subscriptions: from then on, what is published there is forwarded.
    pub async fn ready(&mut self) {
        if let Some(f) = self.subscribed.as_mut() {
            f.await;
            self.subscribed = None;
        }
    }

    /// Waits until the bridge has shut down (after the token given to [`run`]
    /// was cancelled).
    pub async fn finished(self) -> RunReport {
        self.done.await.unwrap_or_default()
    }
}

/// Starts everything in `plan`; cancel `shutdown` to stop gracefully, then
/// await [`RunHandle::finished`]. Built-in listeners may use port 0.
pub async fn run(plan: Plan, shutdown: CancellationToken) -> Result<RunHandle, RunError> {
    // The links and brokers stop on this token, cancelled only at the end of
    // the graceful sequence (after the drain), not on the caller's token.
    // First, so a metrics bind error leaves nothing running.
    let mut obs = Observability::new(&plan).await?;
    let effective = plan.clone();
    let mut remotes = BTreeMap::new();
    let links_token = CancellationToken::new();
    let tracker = TaskTracker::new();

    // Built-in brokers first: binding a listener is what can fail, and then
    // no remote connection has been opened yet.
    let mut builtins: Vec<Broker> = Vec::new();
    let mut builtin_addrs = BTreeMap::new();
    for (name, bp) in &plan.brokers {
        let BrokerKind::BuiltIn(b) = &bp.kind else {
            continue;
        };
        match Broker::start(broker_options(name, b), links_token.clone()).await {
            Ok(broker) => {
                builtin_addrs.insert(name.clone(), broker.local_addrs());
                builtins.push(broker);
            }
            Err(err) => {
                links_token.cancel();
                for b in &builtins {
                    b.closed().await;
                }
                return Err(err.into());
            }
        }
    }
    let mut broker_links = Vec::new();
    let mut windows = Vec::new();
    for (name, bp) in &plan.brokers {
        match &bp.kind {
            BrokerKind::Remote(r) => {
                let mut opts = client_options(name, r);
                obs.remote(name, r, &mut opts);
                let slot = SettingsSlot::default();
                opts.settings = Some(slot.clone());
                if let Some(trigger) = &opts.reconnect {
                    remotes.insert(name.clone(), (slot, trigger.clone()));
                }
                let (link, deliveries) = client::spawn(opts, links_token.clone(), &tracker);
                windows.push(usize::from(r.inflight).max(1));
                broker_links.push(BrokerLink {
                    name: name.clone(),
                    link,
                    deliveries,
                    max_pending: usize::from(r.inflight).max(1),
                });
            }
            BrokerKind::BuiltIn(_) => {
                let Some(broker) = builtins.iter().find(|b| b.name() == name) else {
                    continue; // started above
                };
                // The bridge's own persistent session on its built-in broker.
                let (link, deliveries) = broker.link(&format!("mqbridge-bridge-{name}"), false);
                obs.builtin(broker);
                windows.push(BUILTIN_PIPE_INFLIGHT);
                broker_links.push(BrokerLink {
                    name: name.clone(),
                    link,
                    deliveries,
                    max_pending: pipe::DEFAULT_MAX_PENDING,
                });
            }
        }
    }
    // Pipe endpoints are indices into `broker_links`.
    let names: Vec<String> = broker_links.iter().map(|b| b.name.clone()).collect();
    let index = |name: &str| names.iter().position(|n| n == name);
    let links: BTreeMap<String, Link> = broker_links
        .iter()
        .map(|b| (b.name.clone(), b.link.clone()))
        .collect();

    let mut specs = Vec::new();
    for p in plan.pipes.values() {
        let (Some(source), Some(dest)) = (index(&p.from), index(&p.to)) else {
            continue; // unreachable for a checked plan
        };
        specs.push(PipeSpec {
            name: p.name.clone(),
            source,
            dest,
            filters: p.filters.clone(),
            rules: PipeRules::new(
                &p.exclude,
                p.remap.clone(),
                match p.qos {
                    QosRule::Max(q) => QosPolicy::Max(q),
                    QosRule::Force(q) => QosPolicy::Force(q),
                },
                p.retain == RetainRule::Clear,
                p.max_payload,
            ),
            queue_size: p.queue.size,
            when_full: match p.queue.when_full {
                DropPolicy::DropOldest => WhenFull::DropOldest,
                DropPolicy::DropNewest => WhenFull::DropNewest,
            },
            rate_limit: p.rate_limit.as_ref().map(|r| (r.per_second, r.burst)),
            inflight: windows.get(dest).copied().unwrap_or(BUILTIN_PIPE_INFLIGHT),
        });
    }
    let pipes = match pipe::start(broker_links, specs) {
        Ok(p) => p,
        Err(err) => {
            links_token.cancel();
            tracker.close();
            tracker.wait().await;
            return Err(err.into());
        }
    };
    tracing::info!(
        brokers = plan.brokers.len(),
        pipes = plan.pipes.len(),
        "bridge running"
    );
    let stats = pipes.stats().to_vec();
    obs.pipes(&plan, &stats);
    let obs = obs.start();
    let metrics_addr = obs.addr();
    let control = obs.control();
    let subscribed = Some(Box::pin(pipes.subscribed()) as _);
    let done = tokio::spawn(stop(
        pipes,
        shutdown,
        plan.shutdown_timeout,
        links.values().cloned().collect(),
        links_token,
        tracker,
        builtins,
        obs,
    ));
    Ok(RunHandle {
        stats,
        builtin_addrs,
        links,
        metrics_addr,
        plan: effective,
        control,
        remotes,
        subscribed,
        done,
    })
}

/// Waits for the shutdown signal, then runs the graceful stop sequence.
#[allow(clippy::too_many_arguments)]
async fn stop(
    pipes: Pipes,
    shutdown: CancellationToken,
    deadline: Duration,
    links: Vec<Link>,
    links_token: CancellationToken,
    tracker: TaskTracker,
    builtins: Vec<Broker>,
    obs: ObservabilityHandle,
) -> RunReport {
    shutdown.cancelled().await;
    tracing::info!(timeout = ?deadline, "shutting down: draining pipes");
    let busy_pipes = pipes.drain(deadline).await;
    if !busy_pipes.is_empty() {
        tracing::warn!(pipes = ?busy_pipes, "pipes still busy at the deadline; their unacknowledged messages will be redelivered by the sources");
    }
    // Each remote link publishes its retained `offline` status, then sends
    // DISCONNECT (so the broker drops the will).
    // Bounded: a link whose request queue is full (destination down) may
    // not take the request; cancelling `links_token` below stops it anyway.
    let _ = tokio::time::timeout(
        LINK_CLOSE_TIMEOUT,
        futures_util::future::join_all(links.iter().map(Link::shutdown)),
    )
    .await;
    tracker.close();
    if tokio::time::timeout(LINK_CLOSE_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("links did not close in time; cancelling");
    }
    links_token.cancel();
    tracker.wait().await;
    for b in &builtins {
        b.closed().await;
    }
    // Last: health and metrics stay visible during the drain.
    obs.stop().await;
    tracing::info!("bridge stopped");
    RunReport { busy_pipes }
}

fn status_message(topic: &str, payload: &str) -> Message {
    Message::new(topic, payload.as_bytes().to_vec(), QoS::AtLeastOnce, true)
}

/// Maps a remote broker's plan onto the client's options.
fn client_options(name: &str, r: &RemotePlan) -> ClientOptions {
    let endpoints = r
        .endpoints
        .iter()
        .map(|e| Endpoint {
            host: e.host.clone(),
            port: e.port,
            tls: e.scheme == Scheme::Tls,
        })
        .collect();
    let mut o = ClientOptions::new(name, endpoints, r.client_id.clone());
    o.username = r.username.clone();
    o.password = r.password.clone();
    o.keepalive = r.keepalive;
    o.clean_session = r.clean_session;
    if let Some(t) = &r.tls {
        o.tls = TlsOptions {
            ca_file: t.ca_file.clone(),
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            server_name: t.server_name.clone(),
            alpn: t.alpn.clone(),
            insecure: t.insecure,
        };
    }
    o.backoff = BackoffOptions {
        min: r.reconnect.min,
        max: r.reconnect.max,
        jitter: r.reconnect.jitter,
        stable_after: r.reconnect.stable_after,
    };
    o.failback = FailbackOptions {
        enabled: r.failback.enabled,
        probe_interval: r.failback.probe_interval,
        probes_required: r.failback.probes_required,
    };
    o.connect_timeout = r.connect_timeout;
    o.max_packet_size = r.max_packet_size;
    o.inflight = usize::from(r.inflight).max(1);
    if let Some(s) = &r.status {
        o.will = Some(status_message(&s.topic, &s.offline));
        o.birth = Some(status_message(&s.topic, &s.online));
    }
    o
}

/// Maps a built-in broker's plan onto the broker's options.
fn broker_options(name: &str, b: &BuiltInPlan) -> BrokerOptions {
    BrokerOptions {
        name: name.to_string(),
        listeners: b
            .listeners
            .iter()
            .map(|l| broker::ListenerOptions {
                addr: l.addr,
                tls: l.tls.as_ref().map(|t| broker::ServerTls {
                    cert_file: t.cert_file.clone(),
                    key_file: t.key_file.clone(),
                    client_ca_file: t.client_ca_file.clone(),
                    require_client_cert: t.require_client_cert,
                    cert_cn_as_username: t.cert_cn_as_username,
                }),
            })
            .collect(),
        allow_anonymous: b.allow_anonymous,
        password_file: b.password_file.clone(),
        acl_file: b.acl_file.clone(),
        limits: broker::Limits {
            max_connections: b.limits.max_connections,
            max_packet_size: b.limits.max_packet_size,
            max_inflight: b.limits.max_inflight,
            max_queued_messages: b.limits.max_queued_messages,
            overflow: broker::OverflowPolicy::DropOldest,
            connect_timeout: b.limits.connect_timeout,
        },
        sys_interval: None,
    }
}
