//! Observability, a leaf: metric names, typed handles fed plain samples,
//! the health model, the HTTP endpoint, log setup and the warning limiter.
//!
//! It imports nothing from the bridge's other modules: brokers, clients and
//! pipes hand it plain numbers and events, and `run` wires them to it
//! (`run::observe`, `run::watchdog`, `run::client_events`).
//!
//! - [`names`]: every metric name and label key.
//! - [`PipeMetrics`], [`RemoteBrokerMetrics`], [`BuiltinBrokerMetrics`]:
//!   typed handles created once per pipe/broker, fed [`PipeSample`]s,
//!   [`BrokerStats`](builtin::BrokerStats) and reasons
//!   ([`DisconnectReason`], [`DropReason`]).
//! - [`events`]: lifecycle events that log and count.
//! - [`health`]: pure readiness model and stall [`Watchdog`](health::Watchdog)
//!   state machine (its loop and reconnects are `run::watchdog`).
//! - [`status`]: the shared board read by `/readyz`.
//! - [`server`]: `/metrics`, `/healthz`, `/readyz`, the status page `/` and
//!   `/status.json` over axum.
//! - [`statuspage`]: the status page's data and HTML (pure).
//! - [`inspect`]: `mqbridge health`/`status`, which read those endpoints.
//! - [`logging`], [`jsonlog`], [`ratelimit`]: log setup and the
//!   repeated-warning limiter.

pub(crate) mod builtin;
pub(crate) mod events;
pub mod health;
pub mod inspect;
pub mod jsonlog;
pub mod logging;
pub(crate) mod names;
pub mod pipe;
pub(crate) mod ratelimit;
mod reasons;
pub(crate) mod remote;
pub mod server;
pub mod spool;
pub mod status;
pub(crate) mod statuspage;

pub use builtin::BuiltinBrokerMetrics;
pub use pipe::{PipeMetrics, PipeSample};
pub use reasons::{DisconnectReason, DropReason};
pub use remote::RemoteBrokerMetrics;

use std::sync::OnceLock;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use names::*;

/// Why the metrics recorder could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The exporter rejected its configuration or a recorder is already installed
    /// (the message includes the cause, so it is not chained as a `source`).
    #[error("metrics recorder: {0}")]
    Build(BuildError),
    /// A different global metrics recorder is already installed.
    #[error("another metrics recorder is already installed")]
    OtherRecorder,
}

/// The exporter configuration: the forward-latency and spool-fsync
/// histograms get real Prometheus buckets ([`LATENCY_BUCKETS_SECONDS`]).
pub fn builder() -> Result<PrometheusBuilder, MetricsError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(PIPE_FORWARD_LATENCY_SECONDS.to_owned()),
            LATENCY_BUCKETS_SECONDS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(PIPE_SPOOL_FSYNC_SECONDS.to_owned()),
                LATENCY_BUCKETS_SECONDS,
            )
        })
        .map_err(MetricsError::Build)
}

static INSTALLED: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder, registers the metric descriptions and build
/// info, and returns the handle that renders `/metrics`. Idempotent: later
/// calls (e.g. several runs in one test process) return the same handle.
/// The caller runs [`server::serve`], which also does upkeep.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    if let Some(h) = INSTALLED.get() {
        return Ok(h.clone());
    }
    let recorder = builder()?.build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        // Someone else installed a recorder first (or we raced another
        // caller of `install`, which then set INSTALLED).
        return INSTALLED.get().cloned().ok_or(MetricsError::OtherRecorder);
    }
    let handle = INSTALLED.get_or_init(|| handle).clone();
    describe_all();
    Ok(handle)
}

/// Registers HELP text and units for every metric, and `mqbridge_build_info`,
/// in the current recorder.
pub fn describe_all() {
    for (name, help) in [
        (
            PIPE_MESSAGES_RECEIVED,
            "Messages taken from the source by the pipe.",
        ),
        (
            PIPE_MESSAGES_FORWARDED,
            "Messages acknowledged by the destination.",
        ),
        (
            PIPE_MESSAGES_DROPPED,
            "Messages dropped on purpose, by reason.",
        ),
        (PIPE_STALLS, "Stall episodes detected by the watchdog."),
        (
            PIPE_SPOOL_DAMAGED_RECORDS,
            "Damaged spool records found and skipped.",
        ),
        (
            REMOTE_CONNECTION_ATTEMPTS,
            "Connection attempts per endpoint.",
        ),
        (
            REMOTE_DISCONNECTS,
            "Established connections lost, by reason.",
        ),
        (
            REMOTE_FAILOVERS,
            "Switches away from the endpoint last in use.",
        ),
        (
            REMOTE_CONNECT_FAILURES,
            "Connection attempts that failed before CONNACK, by reason.",
        ),
        (REMOTE_FAILBACKS, "Switches back to the primary endpoint."),
        (
            REMOTE_MESSAGES_IN,
            "PUBLISH packets received from the broker.",
        ),
        (REMOTE_MESSAGES_OUT, "PUBLISH packets sent to the broker."),
        (
            BROKER_MESSAGES_IN,
            "PUBLISH messages received from clients.",
        ),
        (
            BROKER_MESSAGES_OUT,
            "PUBLISH messages delivered to clients.",
        ),
        (
            BROKER_CONNECTIONS_REFUSED,
            "Connections refused, by reason.",
        ),
        (
            BROKER_MESSAGES_DROPPED,
            "Messages the broker dropped instead of delivering, by reason.",
        ),
        (
            BROKER_PUBLISHES_HELD_BACK_TOTAL,
            "Client QoS 1/2 publishes ever held back (ack withheld) by a full bridge link session.",
        ),
        (
            BROKER_RECORDS_DAMAGED_TOTAL,
            "Stored records found damaged at start (logged and skipped).",
        ),
        (
            BROKER_SESSIONS_EXPIRED_TOTAL,
            "Persistent sessions removed by session_expiry.",
        ),
        (
            BROKER_SHARED_REDELIVERED_TOTAL,
            "Unacknowledged messages of a removed shared-subscription member handed to another member.",
        ),
        (
            BROKER_PUBLISHES_REFUSED_STORE_FULL_TOTAL,
            "Client QoS 1/2 publishes refused (unacknowledged, connection closed): storage.max_bytes reached.",
        ),
        (
            BROKER_SUBSCRIPTIONS_REFUSED,
            "Subscription filters refused (SUBACK 0x80) for a limit, by reason.",
        ),
        (RELOADS, "Configuration reloads applied."),
        (RELOAD_FAILURES, "Configuration reloads rejected."),
        (
            LOG_WARNINGS_SUPPRESSED,
            "Warnings swallowed by the log rate limiter.",
        ),
    ] {
        describe_counter!(name, Unit::Count, help);
    }
    for (name, help) in [
        (PIPE_BYTES_FORWARDED, "Payload bytes forwarded."),
        (REMOTE_BYTES_IN, "Payload bytes received from the broker."),
        (REMOTE_BYTES_OUT, "Payload bytes sent to the broker."),
        (BROKER_BYTES_IN, "Payload bytes received from clients."),
        (BROKER_BYTES_OUT, "Payload bytes delivered to clients."),
    ] {
        describe_counter!(name, Unit::Bytes, help);
    }
    for (name, help) in [
        (
            PIPE_INFLIGHT_MESSAGES,
            "Messages sent to the destination, not yet acknowledged.",
        ),
        (
            PIPE_QUEUE_DEPTH_MESSAGES,
            "Messages waiting in the pipe's queue.",
        ),
        (
            PIPE_QUEUE_CAPACITY_MESSAGES,
            "Size of the pipe's queue (queue.size).",
        ),
        (PIPE_STALLED, "1 while the pipe is stalled."),
        (
            PIPE_SPOOL_MESSAGES,
            "Spooled messages not yet acknowledged by the destination.",
        ),
        (PIPE_SPOOL_BYTES, "Encoded bytes of the spooled messages."),
        (
            PIPE_SPOOL_OLDEST_AGE_SECONDS,
            "Age of the oldest spooled message.",
        ),
        (
            PIPE_SPOOL_DISK_BYTES,
            "Bytes the pipe's spool tables take on disk.",
        ),
        (
            PIPE_SPOOL_RECOVERED_RECORDS,
            "Spool records found intact when the spool was opened.",
        ),
        (STORE_DISK_USED_BYTES, "Bytes the store's files take."),
        (
            STORE_DISK_FREE_BYTES,
            "Bytes free on the store's file system.",
        ),
        (REMOTE_CONNECTED, "1 while connected to the broker."),
        (REMOTE_ENDPOINT_ACTIVE, "1 for the endpoint in use."),
        (
            REMOTE_INFLIGHT_MESSAGES,
            "Outgoing QoS 1/2 publishes awaiting acknowledgement.",
        ),
        (
            BROKER_CLIENTS_CONNECTED,
            "Network clients connected (the bridge's own links not included).",
        ),
        (
            BROKER_LINKS_CONNECTED,
            "The bridge's in-process links attached.",
        ),
        (
            BROKER_PUBLISHES_HELD_BACK,
            "Client QoS 1/2 publishes held back now (ack withheld) by a full bridge link session.",
        ),
        (
            BROKER_PERSISTED_SESSIONS,
            "Persistent sessions kept in the store.",
        ),
        (
            BROKER_STORED_MESSAGES,
            "QoS 1/2 messages of persistent sessions kept in the store.",
        ),
        (
            BROKER_RETAINED_STORED,
            "Retained messages kept in the store.",
        ),
        (BROKER_SESSIONS, "Sessions held."),
        (BROKER_SUBSCRIPTIONS, "Subscriptions held."),
        (BROKER_RETAINED_MESSAGES, "Retained messages stored."),
        (BROKER_QUEUED_MESSAGES, "Messages queued for sessions."),
        (
            BROKER_SUBSCRIPTION_TRIE_NODES,
            "Nodes of the subscription trie.",
        ),
        (
            BROKER_HANDSHAKES_PENDING,
            "Sockets accepted whose CONNECT is not accepted yet.",
        ),
        (BUILD_INFO, "Always 1; the version is a label."),
    ] {
        describe_gauge!(name, help);
    }
    describe_histogram!(
        PIPE_FORWARD_LATENCY_SECONDS,
        Unit::Seconds,
        "Source receive to destination acknowledgement."
    );
    describe_histogram!(
        PIPE_SPOOL_FSYNC_SECONDS,
        Unit::Seconds,
        "Spool write to durable, per group commit the pipe waited for."
    );
    gauge!(BUILD_INFO, LABEL_VERSION => env!("CARGO_PKG_VERSION")).set(1.0);
    // Process-wide counters exist from the start (at 0), not only after
    // their first event: Prometheus' `increase()` needs a sample before the
    // first reload, or the first failure is never seen (the
    // MqbridgeReloadFailed alert in deploy/prometheus/alerts.yaml).
    for name in [RELOADS, RELOAD_FAILURES, LOG_WARNINGS_SUPPRESSED] {
        counter!(name).increment(0);
    }
}
