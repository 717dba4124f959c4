//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, and the status page
//! `/` with its data `/status.json`.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;

use super::health::{BrokerStatus, PipeStatus};
use super::spool::{SpoolReport, SpoolView};
use super::status::StatusBoard;
use super::statuspage::{self, Rates, Scrape};

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
    /// The spools (`/spool.json`, and their state in `/readyz`); `None`
    /// when the process has none.
    pub spools: Option<SpoolView>,
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
    /// Spools at or above 80 % of their bound (the bridge stays ready).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    brokers: Vec<BrokerStatus>,
    pipes: Vec<PipeStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spool: Option<SpoolReport>,
}

/// The handlers' state: the caller's plus the status page's rate history.
#[derive(Debug, Clone)]
struct App {
    s: ServerState,
    /// A std `Mutex`: held only to record or read samples, never across `.await`.
    rates: Arc<Mutex<Rates>>,
}

impl App {
    /// Collects, renders and parses the metrics, and records the pipes'
    /// counters for the last-minute rates.
    fn sample(&self) -> (super::health::Readiness, Scrape) {
        let scrape = Scrape::parse(&render(&self.s));
        let readiness = self.s.board.readiness();
        let now = Instant::now();
        let mut rates = self.rates.lock().unwrap_or_else(PoisonError::into_inner);
        let names: Vec<&str> = readiness.pipes.iter().map(|p| p.name.as_str()).collect();
        rates.retain(&names);
        for p in &names {
            rates.record(now, p, statuspage::pipe_counters(&scrape, p));
        }
        drop(rates);
        (readiness, scrape)
    }

    fn status(&self) -> statuspage::Status {
        let (readiness, scrape) = self.sample();
        let rates = self.rates.lock().unwrap_or_else(PoisonError::into_inner);
        statuspage::status(readiness, self.s.board.started().elapsed(), &scrape, &rates)
    }
}

/// The router, for embedding or testing.
pub fn router(state: ServerState) -> Router {
    app_router(App {
        s: state,
        rates: Arc::default(),
    })
}

fn app_router(app: App) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/status.json", get(status_json))
        .route("/spool.json", get(spool_json))
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(app)
}

/// Serves on an already bound `listener` until `shutdown` resolves; runs the
/// exporter's upkeep every [`UPKEEP_INTERVAL`] meanwhile.
pub async fn serve(
    listener: TcpListener,
    state: ServerState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = App {
        s: state,
        rates: Arc::default(),
    };
    let upkeep_app = app.clone();
    let upkeep = async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            let app = upkeep_app.clone();
            // Samples for the status page's rates even while nobody looks.
            let sampled = off_loop(move || {
                app.s.prometheus.run_upkeep();
                app.sample();
            })
            .await;
            if sampled.is_err() {
                tracing::warn!(
                    "metrics upkeep failed (a panic while sampling); next try in {UPKEEP_INTERVAL:?}"
                );
            }
        }
    };
    let server = axum::serve(listener, app_router(app)).with_graceful_shutdown(shutdown);
    // The upkeep loop never ends; the server ends on shutdown and takes it along.
    tokio::select! {
        res = server => res,
        _ = upkeep => Ok(()),
    }
}

/// Runs `work` on the runtime's blocking pool and waits for it. Rendering
/// and sampling cost time in proportion to the series and to the latency
/// observations recorded since the last render (milliseconds at tens of
/// thousands of messages per second); on the runtime's own thread that
/// would hold up forwarding for as long. `Err`: `work` panicked.
async fn off_loop<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StatusCode> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

/// Runs the collector, then renders the Prometheus text.
fn render(s: &ServerState) -> String {
    if let Some(Collector(collect)) = &s.collect {
        collect();
    }
    s.prometheus.render()
}

async fn metrics_handler(State(app): State<App>) -> Result<impl IntoResponse, StatusCode> {
    let text = off_loop(move || render(&app.s)).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

async fn status_json(State(app): State<App>) -> Result<impl IntoResponse, StatusCode> {
    let status = off_loop(move || app.status()).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(status)))
}

fn spool_report(s: &ServerState) -> SpoolReport {
    s.spools.as_ref().map(|v| (v.0)()).unwrap_or_default()
}

async fn spool_json(State(app): State<App>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(spool_report(&app.s)),
    )
}

async fn status_page(State(app): State<App>) -> Result<impl IntoResponse, StatusCode> {
    let html = off_loop(move || statuspage::render_html(&app.status())).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    ))
}

async fn healthz(State(app): State<App>) -> impl IntoResponse {
    let s = &app.s;
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

async fn readyz(State(app): State<App>) -> impl IntoResponse {
    let s = &app.s;
    let r = s.board.readiness();
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let spool = s.spools.as_ref().map(|v| (v.0)());
    (
        code,
        Json(ReadyBody {
            status: if r.ready { "ready" } else { "not_ready" },
            reasons: r.reasons,
            warnings: spool
                .as_ref()
                .map(SpoolReport::warnings)
                .unwrap_or_default(),
            brokers: r.brokers,
            pipes: r.pipes,
            spool,
        }),
    )
}
