//! Every metric name and label key, in one place.
//!
//! Names follow `mqbridge_<noun>_<unit>_total` for counters (unit `messages`,
//! `bytes`, …); gauges and histograms drop the `_total`. Labels stay
//! low-cardinality: `pipe` and `broker` are config keys (validated as label
//! values by the config compiler), `endpoint` comes from the config's
//! endpoint list, and `reason` from a fixed enum. Never a topic, a device
//! client id or error text.

/// Label key: pipe name (config key).
pub const LABEL_PIPE: &str = "pipe";
/// Label key: broker name (config key).
pub const LABEL_BROKER: &str = "broker";
/// Label key: remote endpoint from the config's endpoint list.
pub const LABEL_ENDPOINT: &str = "endpoint";
/// Label key: a reason from a fixed enum.
pub const LABEL_REASON: &str = "reason";
/// Label key: crate version (build info only).
pub const LABEL_VERSION: &str = "version";

// --- pipes -------------------------------------------------------------------

/// Counter `{pipe}`: messages the pipe took from its source (after filter match).
pub const PIPE_MESSAGES_RECEIVED: &str = "mqbridge_pipe_messages_received_total";
/// Counter `{pipe}`: messages acknowledged by the destination (or handed over, QoS 0).
pub const PIPE_MESSAGES_FORWARDED: &str = "mqbridge_pipe_messages_forwarded_total";
/// Counter `{pipe, reason}`: messages dropped on purpose, by [`DropReason`](super::DropReason).
pub const PIPE_MESSAGES_DROPPED: &str = "mqbridge_pipe_messages_dropped_total";
/// Counter `{pipe}`: payload bytes of forwarded messages.
pub const PIPE_BYTES_FORWARDED: &str = "mqbridge_pipe_bytes_forwarded_total";
/// Gauge `{pipe}`: messages published to the destination and not yet acknowledged.
pub const PIPE_INFLIGHT_MESSAGES: &str = "mqbridge_pipe_inflight_messages";
/// Gauge `{pipe}`: messages waiting in the pipe's queue.
pub const PIPE_QUEUE_DEPTH_MESSAGES: &str = "mqbridge_pipe_queue_depth_messages";
/// Gauge `{pipe}`: size of the pipe's queue (`queue.size`), to judge the depth against.
pub const PIPE_QUEUE_CAPACITY_MESSAGES: &str = "mqbridge_pipe_queue_capacity_messages";
/// Histogram `{pipe}`: source receive → destination ack, in seconds.
pub const PIPE_FORWARD_LATENCY_SECONDS: &str = "mqbridge_pipe_forward_latency_seconds";
/// Counter `{pipe}`: stall episodes detected by the watchdog.
pub const PIPE_STALLS: &str = "mqbridge_pipe_stalls_total";
/// Gauge `{pipe}`: 1 while the watchdog considers the pipe stalled.
pub const PIPE_STALLED: &str = "mqbridge_pipe_stalled";
/// Gauge `{pipe}`: spooled messages not yet acknowledged by the destination.
pub const PIPE_SPOOL_MESSAGES: &str = "mqbridge_pipe_spool_messages";
/// Gauge `{pipe}`: their encoded bytes.
pub const PIPE_SPOOL_BYTES: &str = "mqbridge_pipe_spool_bytes";
/// Gauge `{pipe}`: age of the oldest spooled message.
pub const PIPE_SPOOL_OLDEST_AGE_SECONDS: &str = "mqbridge_pipe_spool_oldest_age_seconds";
/// Gauge `{pipe}`: bytes the spool's tables take on disk.
pub const PIPE_SPOOL_DISK_BYTES: &str = "mqbridge_pipe_spool_disk_bytes";
/// Gauge `{pipe}`: records found intact when the spool was opened.
pub const PIPE_SPOOL_RECOVERED_RECORDS: &str = "mqbridge_pipe_spool_recovered_records";
/// Counter `{pipe}`: damaged records found and skipped.
pub const PIPE_SPOOL_DAMAGED_RECORDS: &str = "mqbridge_pipe_spool_damaged_records_total";
/// Histogram `{pipe}`: spool write to durable (one per group commit waited for).
pub const PIPE_SPOOL_FSYNC_SECONDS: &str = "mqbridge_pipe_spool_fsync_seconds";
/// Gauge: bytes the store's files take.
pub const STORE_DISK_USED_BYTES: &str = "mqbridge_store_disk_used_bytes";
/// Gauge: bytes free on the store's file system.
pub const STORE_DISK_FREE_BYTES: &str = "mqbridge_store_disk_free_bytes";

// --- remote brokers ----------------------------------------------------------

/// Gauge `{broker}`: 1 while connected (CONNACK accepted), else 0.
pub const REMOTE_CONNECTED: &str = "mqbridge_remote_connected";
/// Gauge `{broker, endpoint}`: 1 for the endpoint in use, 0 for the others seen.
pub const REMOTE_ENDPOINT_ACTIVE: &str = "mqbridge_remote_endpoint_active";
/// Counter `{broker, endpoint}`: connection attempts (dial + handshake).
pub const REMOTE_CONNECTION_ATTEMPTS: &str = "mqbridge_remote_connection_attempts_total";
/// Counter `{broker, reason}`: connections lost, by [`DisconnectReason`](super::DisconnectReason).
pub const REMOTE_DISCONNECTS: &str = "mqbridge_remote_disconnects_total";
/// Counter `{broker, reason}`: connection attempts that failed before CONNACK, by reason.
pub const REMOTE_CONNECT_FAILURES: &str = "mqbridge_remote_connect_failures_total";
/// Counter `{broker}`: switches away from the endpoint that was last in use.
pub const REMOTE_FAILOVERS: &str = "mqbridge_remote_failovers_total";
/// Counter `{broker}`: switches back to the primary (first) endpoint.
pub const REMOTE_FAILBACKS: &str = "mqbridge_remote_failbacks_total";
/// Gauge `{broker}`: outgoing QoS 1/2 publishes awaiting acknowledgement.
pub const REMOTE_INFLIGHT_MESSAGES: &str = "mqbridge_remote_inflight_messages";
/// Counter `{broker}`: PUBLISH packets received from the broker.
pub const REMOTE_MESSAGES_IN: &str = "mqbridge_remote_messages_in_total";
/// Counter `{broker}`: PUBLISH packets sent to the broker.
pub const REMOTE_MESSAGES_OUT: &str = "mqbridge_remote_messages_out_total";
/// Counter `{broker}`: payload bytes received.
pub const REMOTE_BYTES_IN: &str = "mqbridge_remote_bytes_in_total";
/// Counter `{broker}`: payload bytes sent.
pub const REMOTE_BYTES_OUT: &str = "mqbridge_remote_bytes_out_total";

// --- built-in brokers --------------------------------------------------------

/// Gauge `{broker}`: network clients currently connected (the bridge's own
/// in-process links are not clients: see [`BROKER_LINKS_CONNECTED`]).
pub const BROKER_CLIENTS_CONNECTED: &str = "mqbridge_broker_clients_connected";
/// Gauge `{broker}`: the bridge's in-process links currently attached.
pub const BROKER_LINKS_CONNECTED: &str = "mqbridge_broker_links_connected";
/// Gauge `{broker}`: sessions held (connected and persistent offline ones).
pub const BROKER_SESSIONS: &str = "mqbridge_broker_sessions";
/// Gauge `{broker}`: subscriptions across all sessions.
pub const BROKER_SUBSCRIPTIONS: &str = "mqbridge_broker_subscriptions";
/// Gauge `{broker}`: retained messages stored.
pub const BROKER_RETAINED_MESSAGES: &str = "mqbridge_broker_retained_messages";
/// Gauge `{broker}`: messages queued for sessions (offline or over their inflight window).
pub const BROKER_QUEUED_MESSAGES: &str = "mqbridge_broker_queued_messages";
/// Counter `{broker}`: PUBLISH messages received from clients.
pub const BROKER_MESSAGES_IN: &str = "mqbridge_broker_messages_in_total";
/// Counter `{broker}`: PUBLISH messages delivered to clients.
pub const BROKER_MESSAGES_OUT: &str = "mqbridge_broker_messages_out_total";
/// Counter `{broker}`: payload bytes received.
pub const BROKER_BYTES_IN: &str = "mqbridge_broker_bytes_in_total";
/// Counter `{broker}`: payload bytes delivered.
pub const BROKER_BYTES_OUT: &str = "mqbridge_broker_bytes_out_total";
/// Counter `{broker, reason}`: connections refused or closed by the broker,
/// `reason` in [`REFUSE_REASONS`](super::builtin::REFUSE_REASONS).
pub const BROKER_CONNECTIONS_REFUSED: &str = "mqbridge_broker_connections_refused_total";
/// Counter `{broker, reason}`: messages the broker dropped instead of delivering,
/// `reason` in [`BROKER_DROP_REASONS`](super::builtin::BROKER_DROP_REASONS).
pub const BROKER_MESSAGES_DROPPED: &str = "mqbridge_broker_messages_dropped_total";
/// Counter `{broker, reason}`: subscription filters refused (SUBACK 0x80)
/// for a limit, `reason` in [`SUBSCRIBE_REFUSE_REASONS`](super::builtin::SUBSCRIBE_REFUSE_REASONS).
pub const BROKER_SUBSCRIPTIONS_REFUSED: &str = "mqbridge_broker_subscriptions_refused_total";
/// Gauge `{broker}`: nodes of the subscription trie (distinct filter level prefixes).
pub const BROKER_SUBSCRIPTION_TRIE_NODES: &str = "mqbridge_broker_subscription_trie_nodes";
/// Gauge `{broker}`: sockets between accept and an accepted CONNECT.
pub const BROKER_HANDSHAKES_PENDING: &str = "mqbridge_broker_handshakes_pending";
/// Gauge `{broker}`: client QoS 1/2 publishes held back now (PUBACK/PUBREC
/// withheld) while a bridge link session they go to is full.
pub const BROKER_PUBLISHES_HELD_BACK: &str = "mqbridge_broker_publishes_held_back";
/// Counter `{broker}`: client QoS 1/2 publishes ever held back that way.
pub const BROKER_PUBLISHES_HELD_BACK_TOTAL: &str = "mqbridge_broker_publishes_held_back_total";
/// Gauge `{broker}`: persistent sessions kept in the store.
pub const BROKER_PERSISTED_SESSIONS: &str = "mqbridge_broker_persisted_sessions";
/// Gauge `{broker}`: QoS 1/2 messages of persistent sessions kept in the store.
pub const BROKER_STORED_MESSAGES: &str = "mqbridge_broker_stored_messages";
/// Gauge `{broker}`: retained messages kept in the store.
pub const BROKER_RETAINED_STORED: &str = "mqbridge_broker_retained_stored";
/// Counter `{broker}`: stored records found damaged at start (skipped).
pub const BROKER_RECORDS_DAMAGED_TOTAL: &str = "mqbridge_broker_records_damaged_total";
/// Counter `{broker}`: persistent sessions removed by `session_expiry`.
pub const BROKER_SESSIONS_EXPIRED_TOTAL: &str = "mqbridge_broker_sessions_expired_total";
/// Counter `{broker}`: QoS 1/2 messages of a removed shared-subscription
/// member handed to another member of its share group.
pub const BROKER_SHARED_REDELIVERED_TOTAL: &str = "mqbridge_broker_shared_redelivered_total";
/// Counter `{broker}`: client QoS 1/2 publishes refused because the store
/// reached `storage.max_bytes` (not acknowledged; the connection closed).
pub const BROKER_PUBLISHES_REFUSED_STORE_FULL_TOTAL: &str =
    "mqbridge_broker_publishes_refused_store_full_total";

// --- process -----------------------------------------------------------------

/// Gauge `{version}`: always 1; carries the version as a label.
pub const BUILD_INFO: &str = "mqbridge_build_info";
/// Counter: configuration reloads applied.
pub const RELOADS: &str = "mqbridge_reloads_total";
/// Counter: configuration reloads rejected (invalid config; the old one keeps running).
pub const RELOAD_FAILURES: &str = "mqbridge_reload_failures_total";
/// Counter: warnings suppressed by the log rate limiter.
pub const LOG_WARNINGS_SUPPRESSED: &str = "mqbridge_log_warnings_suppressed_total";

/// Upper bounds (seconds) of the forward-latency histogram: 100 µs … 10 s,
/// roughly 1-2.5-5 per decade.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
