//! Live reconciliation on reload: from the diff of the running and the new
//! plan to started, restarted and stopped brokers and pipes.
//!
//! Order: new brokers start first (the only step that can fail; then
//! nothing else has changed yet); changed remote brokers get their new
//! settings; the pipe set is swapped in one step per source dispatcher;
//! removed brokers close in the background once their pipes have drained.

use std::time::Duration;

use super::{Bridge, BrokerRt, LINK_CLOSE_TIMEOUT, ReloadError, RunError, discard, start_broker};
use crate::config::diff::{ReloadPlan, diff};
use crate::config::plan::{BrokerKind, Plan, RemotePlan};
use crate::link::LinkState;
use crate::metrics::events::{ReloadApplied, ReloadFailed};
use crate::pipe::PipeSpec;

use super::options::{client_options, pipe_spec, publishes_to};
use crate::client::ClientOptions;

/// How long a reload waits for the dispatchers to take their new routes
/// (they do it between two deliveries: normally at once).
const ROUTE_SWAP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a reload did (`applied`) and what waits for a restart (`pending`).
#[derive(Default)]
struct Report {
    applied: Vec<String>,
    pending: Vec<String>,
}

/// A broker a reload started, not yet part of the running set.
type Started = (String, BrokerRt, crate::pipe::BrokerLink);

impl Bridge {
    /// Applies the valid plan `new`; see [`super::RunHandle::reload`].
    pub(super) async fn reload(&mut self, new: &Plan) -> Result<ReloadPlan, ReloadError> {
        if self.pipes.is_none() {
            return Err(ReloadError::Stopped);
        }
        let d = diff(&self.plan, new);
        let mut report = Report::default();
        let started = self.start_brokers(&d, new).await?;
        self.adopt_brokers(started, new, &mut report)?;
        self.update_brokers(&d, new, &mut report);
        self.update_settings(&d, new, &mut report);
        let routed = self.swap_pipes(&d, new, &mut report)?;
        self.remove_brokers(&d, &mut report)?;
        if d.metrics_changed {
            report.pending.push("metrics settings changed".to_owned());
        }
        if tokio::time::timeout(ROUTE_SWAP_TIMEOUT, routed)
            .await
            .is_err()
        {
            tracing::warn!("a dispatcher did not take its new routes in time");
        }
        ReloadApplied {
            applied: &report.applied,
            pending: &report.pending,
        }
        .emit();
        Ok(d)
    }

    /// Step 1: starts the new brokers. All or nothing: a failure stops the
    /// ones started, and nothing else has changed yet.
    async fn start_brokers(&self, d: &ReloadPlan, new: &Plan) -> Result<Vec<Started>, ReloadError> {
        let mut started: Vec<Started> = Vec::new();
        for name in &d.brokers.added {
            let Some(bp) = new.brokers.get(name) else {
                continue;
            };
            let result = start_broker(
                name,
                bp,
                publishes_to(new, name),
                &self.obs,
                &self.links_token,
                &self.tracker,
                &self.store,
            )
            .await;
            match result {
                Ok((rt, link)) => started.push((name.clone(), rt, link)),
                Err(err) => {
                    let rollback = started.into_iter().map(|(n, rt, _)| (n, rt)).collect();
                    discard(rollback, &self.obs).await;
                    let lines = vec![format!("broker {name}: {err}")];
                    ReloadFailed { errors: &lines }.emit();
                    return Err(err.into());
                }
            }
        }
        Ok(started)
    }

    /// Step 2: the started brokers join the running set and the pipes' links.
    fn adopt_brokers(
        &mut self,
        started: Vec<Started>,
        new: &Plan,
        report: &mut Report,
    ) -> Result<(), ReloadError> {
        let pipes = self.pipes.as_mut().ok_or(ReloadError::Stopped)?;
        for (name, mut rt, link) in started {
            rt.ix = pipes.add_broker(link);
            if let Some(bp) = new.brokers.get(&name) {
                self.plan.brokers.insert(name.clone(), bp.clone());
            }
            self.brokers.insert(name.clone(), rt);
            report.applied.push(format!("broker {name} started"));
        }
        Ok(())
    }

    /// Step 3: a changed remote broker reconnects with its new settings;
    /// what cannot change live is reported as pending.
    fn update_brokers(&mut self, d: &ReloadPlan, new: &Plan, report: &mut Report) {
        for name in &d.brokers.changed {
            let (Some(old), Some(nb)) = (self.plan.brokers.get(name), new.brokers.get(name)) else {
                continue;
            };
            let why = match (&old.kind, &nb.kind) {
                (BrokerKind::Remote(o), BrokerKind::Remote(n)) if o.inflight == n.inflight => {
                    if self.reconnect_with(name, n, new) {
                        self.obs.set_required(name, n.required);
                        self.plan.brokers.insert(name.clone(), nb.clone());
                        report
                            .applied
                            .push(format!("broker {name} reconnects with new settings"));
                        continue;
                    }
                    "not running"
                }
                (BrokerKind::Remote(_), BrokerKind::Remote(_)) => "`inflight` needs a restart",
                (BrokerKind::BuiltIn(_), BrokerKind::BuiltIn(_)) => {
                    "built-in broker settings need a restart"
                }
                _ => "a broker's type needs a restart",
            };
            report
                .pending
                .push(format!("broker {name} changed ({why})"));
        }
    }

    /// Hands the running remote broker `name` its settings `n` and drops
    /// its connection (a stored permit: a live connection drops at once; an
    /// offline client takes the settings before its next dial). False if
    /// it does not run.
    fn reconnect_with(&self, name: &str, n: &RemotePlan, new: &Plan) -> bool {
        let Some((slot, trigger)) = self.brokers.get(name).and_then(|b| b.remote.as_ref()) else {
            return false;
        };
        *slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ClientOptions {
            publishes: publishes_to(new, name),
            ..client_options(name, n)
        });
        trigger.notify_one();
        true
    }

    /// Step 4: readiness, the watchdog, the shutdown timeout; storage
    /// changes wait for a restart.
    fn update_settings(&mut self, d: &ReloadPlan, new: &Plan, report: &mut Report) {
        for name in &d.readiness_changed {
            if let (Some(BrokerKind::Remote(nr)), Some(cur)) = (
                new.brokers.get(name).map(|b| &b.kind),
                self.plan.brokers.get_mut(name),
            ) && let BrokerKind::Remote(cr) = &mut cur.kind
            {
                cr.required = nr.required;
                self.obs.set_required(name, nr.required);
                report
                    .applied
                    .push(format!("broker {name} required={}", nr.required));
            }
        }
        if d.watchdog_changed {
            self.plan.watchdog = new.watchdog.clone();
            self.obs.set_stall_after(new.watchdog.stall_after);
            report.applied.push(format!(
                "watchdog.stall_after={:?}",
                new.watchdog.stall_after
            ));
        }
        if d.storage_changed {
            report
                .pending
                .push("storage changed (needs a restart)".to_string());
        }
        if self.plan.shutdown_timeout != new.shutdown_timeout {
            self.plan.shutdown_timeout = new.shutdown_timeout;
            report
                .applied
                .push(format!("shutdown_timeout={:?}", new.shutdown_timeout));
        }
    }

    /// Step 5: the pipe set, swapped in one step per source (unchanged pipes
    /// are not named). Returns when the dispatchers took their new routes.
    fn swap_pipes(
        &mut self,
        d: &ReloadPlan,
        new: &Plan,
        report: &mut Report,
    ) -> Result<impl std::future::Future<Output = ()> + Send + use<>, ReloadError> {
        let remove: Vec<String> = d
            .pipes
            .removed
            .iter()
            .chain(&d.pipes.changed)
            .cloned()
            .collect();
        let mut add: Vec<PipeSpec> = Vec::new();
        for name in d.pipes.added.iter().chain(&d.pipes.changed) {
            let Some(p) = new.pipes.get(name) else {
                continue;
            };
            let (Some(s), Some(t)) = (self.brokers.get(&p.from), self.brokers.get(&p.to)) else {
                continue; // unreachable: a checked plan names existing brokers
            };
            add.push(pipe_spec(p, s.ix, t.ix, t.window));
        }
        let pipes = self.pipes.as_mut().ok_or(ReloadError::Stopped)?;
        let routed = pipes
            .update(&remove, add, new.shutdown_timeout)
            .map_err(RunError::from)?;
        new_destinations(&self.plan, &self.brokers, new, d, &mut report.applied);
        self.plan.pipes = new.pipes.clone();
        self.obs.set_pipes(&self.plan, &pipes.stats());
        let named = |names: &[String], what: &str| -> Vec<String> {
            names.iter().map(|n| format!("pipe {n} {what}")).collect()
        };
        report.applied.extend(named(&d.pipes.added, "started"));
        report.applied.extend(named(&d.pipes.changed, "restarted"));
        report.applied.extend(named(&d.pipes.removed, "stopped"));
        Ok(routed)
    }

    /// Step 6: removed brokers close in the background once their pipes
    /// have drained.
    fn remove_brokers(&mut self, d: &ReloadPlan, report: &mut Report) -> Result<(), ReloadError> {
        let pipes = self.pipes.as_mut().ok_or(ReloadError::Stopped)?;
        for name in &d.brokers.removed {
            let Some(b) = self.brokers.remove(name) else {
                continue;
            };
            self.plan.brokers.remove(name);
            self.obs.remove_broker(name);
            let drained = pipes.remove_broker(b.ix);
            let broker = name.clone();
            self.tracker.spawn(async move {
                drained.await;
                close_broker(&broker, b).await;
            });
            report.applied.push(format!("broker {name} stopped"));
        }
        Ok(())
    }
}

/// A running remote broker that the new pipes make a destination for
/// the first time: its client learns it on its next connection (the
/// default protocol's choice for a small receive maximum depends on
/// it). Not a reconnect: the live connection keeps working as it is.
fn new_destinations(
    plan: &Plan,
    brokers: &std::collections::BTreeMap<String, BrokerRt>,
    new: &Plan,
    d: &ReloadPlan,
    applied: &mut Vec<String>,
) {
    for (name, nb) in &new.brokers {
        let BrokerKind::Remote(n) = &nb.kind else {
            continue;
        };
        if d.brokers.added.contains(name)
            || d.brokers.changed.contains(name)
            || publishes_to(plan, name)
            || !publishes_to(new, name)
        {
            continue;
        }
        if let Some((slot, _)) = brokers.get(name).and_then(|b| b.remote.as_ref()) {
            *slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ClientOptions {
                publishes: true,
                ..client_options(name, n)
            });
            applied.push(format!(
                "broker {name} is now a destination (its protocol choice applies from its next connection)"
            ));
        }
    }
}

/// Closes a removed broker: a remote link publishes `offline` and
/// DISCONNECTs (bounded), a built-in broker stops its listeners and sessions.
async fn close_broker(name: &str, b: BrokerRt) {
    let mut state = b.link.state();
    let graceful = async {
        b.link.shutdown().await;
        let _ = state.wait_for(|s| *s == LinkState::Closed).await;
    };
    if tokio::time::timeout(LINK_CLOSE_TIMEOUT, graceful)
        .await
        .is_err()
    {
        tracing::warn!(broker = %name, "link did not close in time; cancelling");
    }
    b.token.cancel();
    if let Some(broker) = &b.builtin {
        broker.closed().await;
    }
    tracing::info!(broker = %name, "broker removed by a reload stopped");
}
