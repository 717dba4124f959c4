//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;

use super::health::{BrokerStatus, PipeStatus};
use super::status::StatusBoard;

/// How often the exporter's upkeep (histogram draining) runs.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A hook run before each `/metrics` render, e.g. to copy the pipes' and
/// brokers' own atomic counters into the recorder (`observe(sample)`).
#[derive(Clone)]
pub struct Collector(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Collector")
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ServerState {
    /// Renders the Prometheus text format.
    pub prometheus: PrometheusHandle,
    /// Broker and pipe health.
    pub board: Arc<StatusBoard>,
    /// Run before rendering `/metrics`; `None` when everything is recorded live.
    pub collect: Option<Collector>,
}

#[derive(Debug, Serialize)]
struct HealthBody {
    status: &'static str,
    version: &'static str,
    uptime_seconds: u64,
    ready: bool,
    brokers: Vec<BrokerStatus>,
    pipes: Vec<PipeStatus>,
}

#[derive(Debug, Serialize)]
struct ReadyBody {
    status: &'static str,
    reasons: Vec<String>,
    brokers: Vec<BrokerStatus>,
    pipes: Vec<PipeStatus>,
}

/// The router, for embedding or testing.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves on an already bound `listener` until `shutdown` resolves; runs the
/// exporter's upkeep every [`UPKEEP_INTERVAL`] meanwhile.
pub async fn serve(
    listener: TcpListener,
    state: ServerState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let upkeep_handle = state.prometheus.clone();
    let upkeep = async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep_handle.run_upkeep();
        }
    };
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown);
    // The upkeep loop never ends; the server ends on shutdown and takes it along.
    tokio::select! {
        res = server => res,
        _ = upkeep => Ok(()),
    }
}

async fn metrics_handler(State(s): State<ServerState>) -> impl IntoResponse {
    if let Some(Collector(collect)) = &s.collect {
        collect();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.prometheus.render(),
    )
}

async fn healthz(State(s): State<ServerState>) -> impl IntoResponse {
    let r = s.board.readiness();
    Json(HealthBody {
        status: "alive",
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: s.board.started().elapsed().as_secs(),
        ready: r.ready,
        brokers: r.brokers,
        pipes: r.pipes,
    })
}

async fn readyz(State(s): State<ServerState>) -> impl IntoResponse {
    let r = s.board.readiness();
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(ReadyBody {
            status: if r.ready { "ready" } else { "not_ready" },
            reasons: r.reasons,
            brokers: r.brokers,
            pipes: r.pipes,
        }),
    )
}
