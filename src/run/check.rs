//! `mqbridge validate --check-endpoints`: after a successful compile, dial
//! every remote endpoint (TCP + TLS handshake, never an MQTT CONNECT) and
//! bind-then-drop every built-in listener, all at once.
//!
//! A remote endpoint is dialed with exactly the options `run` would use
//! (the same plan → [`ClientOptions`](crate::client::ClientOptions) mapping),
//! within its broker's `connect_timeout`. A required broker with no reachable
//! endpoint, or a listener that cannot be bound, fails the check; an
//! unreachable endpoint of a broker that still has a reachable one (failover
//! covers it), or of a broker that is not required, is a warning.

use std::fmt;
use std::net::SocketAddr;

use futures_util::future::join_all;

use super::options::client_options;
use crate::client::{self, ClientError};
use crate::config::plan::{BrokerKind, Plan};

/// How one checked endpoint or listener came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Reachable (endpoint) or bindable (listener).
    Ok,
    /// Unreachable, but the bridge can still run as configured.
    Warning,
    /// The bridge cannot run as configured.
    Error,
}

/// One output line: an endpoint or a listener with its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    /// Severity.
    pub level: Level,
    /// The broker it belongs to.
    pub broker: String,
    /// `endpoint <url>` or `listener <url>`.
    pub target: String,
    /// `ok`, or what failed and its consequence.
    pub detail: String,
}

impl fmt::Display for CheckLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.level {
            Level::Ok => "",
            Level::Warning => "warning: ",
            Level::Error => "error: ",
        };
        write!(
            f,
            "{prefix}{}: {}: {}",
            self.broker, self.target, self.detail
        )
    }
}

/// Everything the check found, in plan order (brokers by name, endpoints and
/// listeners in configured order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// One line per endpoint and listener.
    pub lines: Vec<CheckLine>,
    /// Required remote brokers with no reachable endpoint.
    pub unreachable_required: Vec<String>,
}

impl CheckReport {
    /// Whether the bridge can run as configured (no [`Level::Error`] line).
    pub fn passed(&self) -> bool {
        self.lines.iter().all(|l| l.level != Level::Error)
    }
}

/// The level of each endpoint of one remote broker, from whether each one
/// was reachable, and whether the broker as a whole fails the check.
pub fn classify(required: bool, reachable: &[bool]) -> (Vec<Level>, bool) {
    let any = reachable.iter().any(|&r| r);
    let failed = required && !any;
    let levels = reachable
        .iter()
        .map(|&r| match (r, any, required) {
            (true, _, _) => Level::Ok,
            (false, true, _) | (false, false, false) => Level::Warning,
            (false, false, true) => Level::Error,
        })
        .collect();
    (levels, failed)
}

/// The error without the endpoint URL it repeats (the line names it).
fn reason(e: &ClientError) -> String {
    match e {
        ClientError::Io { source, .. } | ClientError::Unreachable { source, .. } => {
            source.to_string()
        }
        ClientError::Tls { source, .. } => {
            format!(
                "TLS handshake failed: {}",
                crate::client::describe_tls(source)
            )
        }
        ClientError::WebSocket { reason, .. } => format!("WebSocket handshake failed: {reason}"),
        ClientError::Timeout { stage, .. } => format!("timed out {stage}"),
        other => other.to_string(),
    }
}

/// Binds `addr` and drops the listener at once.
async fn bind_once(addr: SocketAddr) -> Result<SocketAddr, std::io::Error> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    l.local_addr()
}

/// Runs every check of `plan` concurrently and reports them in plan order.
/// Must be called inside a tokio runtime.
pub async fn check_plan(plan: &Plan) -> CheckReport {
    let mut report = CheckReport::default();
    let remote = plan.brokers.iter().filter_map(|(name, b)| match &b.kind {
        BrokerKind::Remote(r) => Some((name, r)),
        BrokerKind::BuiltIn(_) => None,
    });
    let remote_checks = join_all(remote.map(|(name, r)| async move {
        // The same mapping `run` uses: endpoints, TLS and connect timeout.
        let o = client_options(name, r);
        let results = join_all(
            o.endpoints
                .iter()
                .map(|ep| client::check_endpoint(ep, &o.tls, &o.ws_headers, o.connect_timeout)),
        )
        .await;
        (name, r.required, o.endpoints, results)
    }));
    let builtin = plan.brokers.iter().filter_map(|(name, b)| match &b.kind {
        BrokerKind::BuiltIn(bi) => Some((name, bi)),
        BrokerKind::Remote(_) => None,
    });
    let listener_checks = join_all(builtin.map(|(name, bi)| async move {
        let results = join_all(bi.listeners.iter().map(|l| bind_once(l.addr))).await;
        (name, &bi.listeners, results)
    }));
    let (remote_done, listeners_done) = tokio::join!(remote_checks, listener_checks);

    for (name, required, endpoints, results) in remote_done {
        let reachable: Vec<bool> = results.iter().map(Result::is_ok).collect();
        let any = reachable.contains(&true);
        let (levels, failed) = classify(required, &reachable);
        for ((ep, result), level) in endpoints.iter().zip(&results).zip(levels) {
            let detail = match result {
                Ok(()) => "ok".to_string(),
                Err(e) if any => format!("unreachable ({}); failover covers it", reason(e)),
                Err(e) if !required => {
                    format!("unreachable ({}); broker not required", reason(e))
                }
                Err(e) => format!("unreachable ({})", reason(e)),
            };
            report.lines.push(CheckLine {
                level,
                broker: name.clone(),
                target: format!("endpoint {ep}"),
                detail,
            });
        }
        if failed {
            report.unreachable_required.push(name.clone());
        }
    }
    for (name, listeners, results) in listeners_done {
        for (l, result) in listeners.iter().zip(results) {
            let (level, detail) = match result {
                Ok(bound) if l.addr.port() == 0 => (Level::Ok, format!("ok (bound {bound})")),
                Ok(_) => (Level::Ok, "ok".to_string()),
                Err(e) => (Level::Error, format!("cannot bind {}: {e}", l.addr)),
            };
            report.lines.push(CheckLine {
                level,
                broker: name.clone(),
                target: format!("listener {}", l.url),
                detail,
            });
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reachable_endpoint_carries_the_broker() {
        let (levels, failed) = classify(true, &[false, true]);
        assert_eq!(levels, vec![Level::Warning, Level::Ok]);
        assert!(!failed);
    }

    #[test]
    fn a_required_broker_with_nothing_reachable_fails() {
        let (levels, failed) = classify(true, &[false, false]);
        assert_eq!(levels, vec![Level::Error, Level::Error]);
        assert!(failed);
    }

    #[test]
    fn an_optional_broker_only_warns() {
        let (levels, failed) = classify(false, &[false]);
        assert_eq!(levels, vec![Level::Warning]);
        assert!(!failed);
        assert_eq!(classify(false, &[true]), (vec![Level::Ok], false));
    }
}
