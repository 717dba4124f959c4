//! Cached metric handles of one built-in broker, fed a plain [`BrokerStats`]
//! sample (the broker takes it from its own atomics).

use metrics::{Counter, Gauge, counter, gauge};

use super::names::*;

/// `reason` labels of refused connections, in [`BuiltinBrokerMetrics`] order.
pub const REFUSE_REASONS: [&str; 8] = [
    "auth",
    "limit",
    "protocol",
    "timeout",
    "client_id",
    "handshake_limit",
    "handshake_per_ip",
    "tls",
];
/// `reason` labels of subscription filters refused for a limit, in
/// [`BuiltinBrokerMetrics`] order.
pub const SUBSCRIBE_REFUSE_REASONS: [&str; 4] = [
    "topic_levels",
    "filters_per_subscribe",
    "subscriptions_per_client",
    "trie_nodes",
];
/// `reason` labels of dropped messages, in [`BuiltinBrokerMetrics`] order.
pub const BROKER_DROP_REASONS: [&str; 5] =
    ["acl", "sys_topic", "queue_full", "too_large", "expired"];

/// Metric handles of one built-in broker, created once.
#[derive(Debug, Clone)]
pub struct BuiltinBrokerMetrics {
    clients_connected: Gauge,
    links_connected: Gauge,
    sessions: Gauge,
    subscriptions: Gauge,
    retained: Gauge,
    queued: Gauge,
    messages_in: Counter,
    messages_out: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    refused: [Counter; REFUSE_REASONS.len()],
    subscriptions_refused: [Counter; SUBSCRIBE_REFUSE_REASONS.len()],
    trie_nodes: Gauge,
    handshakes_pending: Gauge,
    dropped: [Counter; BROKER_DROP_REASONS.len()],
    held_back: Gauge,
    held_back_total: Counter,
    persisted_sessions: Gauge,
    stored_messages: Gauge,
    retained_stored: Gauge,
    records_damaged: Counter,
    sessions_expired: Counter,
    shared_redelivered: Counter,
    store_full: Counter,
}

impl BuiltinBrokerMetrics {
    /// Registers the series of built-in broker `broker`.
    pub fn new(broker: &str) -> Self {
        let b = broker.to_owned();
        BuiltinBrokerMetrics {
            clients_connected: gauge!(BROKER_CLIENTS_CONNECTED, LABEL_BROKER => b.clone()),
            links_connected: gauge!(BROKER_LINKS_CONNECTED, LABEL_BROKER => b.clone()),
            sessions: gauge!(BROKER_SESSIONS, LABEL_BROKER => b.clone()),
            subscriptions: gauge!(BROKER_SUBSCRIPTIONS, LABEL_BROKER => b.clone()),
            retained: gauge!(BROKER_RETAINED_MESSAGES, LABEL_BROKER => b.clone()),
            queued: gauge!(BROKER_QUEUED_MESSAGES, LABEL_BROKER => b.clone()),
            messages_in: counter!(BROKER_MESSAGES_IN, LABEL_BROKER => b.clone()),
            messages_out: counter!(BROKER_MESSAGES_OUT, LABEL_BROKER => b.clone()),
            bytes_in: counter!(BROKER_BYTES_IN, LABEL_BROKER => b.clone()),
            bytes_out: counter!(BROKER_BYTES_OUT, LABEL_BROKER => b.clone()),
            refused: REFUSE_REASONS.map(|r| {
                counter!(BROKER_CONNECTIONS_REFUSED, LABEL_BROKER => b.clone(), LABEL_REASON => r)
            }),
            subscriptions_refused: SUBSCRIBE_REFUSE_REASONS.map(|r| {
                counter!(BROKER_SUBSCRIPTIONS_REFUSED, LABEL_BROKER => b.clone(), LABEL_REASON => r)
            }),
            trie_nodes: gauge!(BROKER_SUBSCRIPTION_TRIE_NODES, LABEL_BROKER => b.clone()),
            handshakes_pending: gauge!(BROKER_HANDSHAKES_PENDING, LABEL_BROKER => b.clone()),
            dropped: BROKER_DROP_REASONS.map(|r| {
                counter!(BROKER_MESSAGES_DROPPED, LABEL_BROKER => b.clone(), LABEL_REASON => r)
            }),
            held_back: gauge!(BROKER_PUBLISHES_HELD_BACK, LABEL_BROKER => b.clone()),
            held_back_total: counter!(BROKER_PUBLISHES_HELD_BACK_TOTAL, LABEL_BROKER => b.clone()),
            persisted_sessions: gauge!(BROKER_PERSISTED_SESSIONS, LABEL_BROKER => b.clone()),
            stored_messages: gauge!(BROKER_STORED_MESSAGES, LABEL_BROKER => b.clone()),
            retained_stored: gauge!(BROKER_RETAINED_STORED, LABEL_BROKER => b.clone()),
            records_damaged: counter!(BROKER_RECORDS_DAMAGED_TOTAL, LABEL_BROKER => b.clone()),
            sessions_expired: counter!(BROKER_SESSIONS_EXPIRED_TOTAL, LABEL_BROKER => b.clone()),
            shared_redelivered: counter!(BROKER_SHARED_REDELIVERED_TOTAL, LABEL_BROKER => b.clone()),
            store_full: counter!(BROKER_PUBLISHES_REFUSED_STORE_FULL_TOTAL, LABEL_BROKER => b),
        }
    }

    /// Copies a snapshot: gauges set, counters set to their absolute totals
    /// (so sampling twice counts nothing twice).
    pub fn observe(&self, s: &BrokerStats) {
        self.clients_connected.set(s.clients_connected as f64);
        self.links_connected.set(s.links_connected as f64);
        self.sessions.set(s.sessions as f64);
        self.subscriptions.set(s.subscriptions as f64);
        self.retained.set(s.retained as f64);
        self.queued.set(s.queued as f64);
        self.messages_in.absolute(s.msgs_in);
        self.messages_out.absolute(s.msgs_out);
        self.bytes_in.absolute(s.bytes_in);
        self.bytes_out.absolute(s.bytes_out);
        let refused = [
            s.refused_auth,
            s.refused_limit,
            s.refused_protocol,
            s.refused_timeout,
            s.refused_client_id,
            s.refused_handshake_limit,
            s.refused_handshake_per_ip,
            s.refused_tls,
        ];
        for (c, v) in self.refused.iter().zip(refused) {
            c.absolute(v);
        }
        let subscriptions_refused = [
            s.sub_refused_topic_levels,
            s.sub_refused_per_subscribe,
            s.sub_refused_per_client,
            s.sub_refused_trie_nodes,
        ];
        for (c, v) in self.subscriptions_refused.iter().zip(subscriptions_refused) {
            c.absolute(v);
        }
        self.trie_nodes.set(s.trie_nodes as f64);
        self.handshakes_pending.set(s.handshakes_pending as f64);
        let dropped = [
            s.dropped_acl,
            s.dropped_sys,
            s.dropped_queue_full,
            s.dropped_too_large,
            s.dropped_expired,
        ];
        for (c, v) in self.dropped.iter().zip(dropped) {
            c.absolute(v);
        }
        self.held_back.set(s.held_back as f64);
        self.held_back_total.absolute(s.held_back_total);
        self.persisted_sessions.set(s.persisted_sessions as f64);
        self.stored_messages.set(s.stored_messages as f64);
        self.retained_stored.set(s.retained_stored as f64);
        self.records_damaged.absolute(s.records_damaged);
        self.sessions_expired.absolute(s.sessions_expired);
        self.shared_redelivered.absolute(s.shared_redelivered);
        self.store_full.absolute(s.store_full);
    }
}

/// A snapshot of a built-in broker's counters and gauges: the sample
/// [`BuiltinBrokerMetrics::observe`] is fed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Gauge: network clients currently connected (in-process links not included).
    pub clients_connected: u64,
    /// Gauge: the bridge's in-process links currently attached.
    pub links_connected: u64,
    /// Gauge: sessions held (connected or persistent and away).
    pub sessions: u64,
    /// Gauge: subscriptions over all sessions.
    pub subscriptions: u64,
    /// Gauge: retained messages stored.
    pub retained: u64,
    /// Gauge: messages queued in sessions (waiting for an inflight slot or an absent client).
    pub queued: u64,
    /// Counter: PUBLISH messages received from clients and links.
    pub msgs_in: u64,
    /// Counter: PUBLISH messages sent to clients and links.
    pub msgs_out: u64,
    /// Counter: payload bytes received.
    pub bytes_in: u64,
    /// Counter: payload bytes sent.
    pub bytes_out: u64,
    /// Counter: connections refused for credentials.
    pub refused_auth: u64,
    /// Counter: valid CONNECTs refused at `max_connections`.
    pub refused_limit: u64,
    /// Counter: connections closed for malformed input or protocol violations.
    pub refused_protocol: u64,
    /// Counter: sockets closed for not finishing the handshake in time.
    pub refused_timeout: u64,
    /// Counter: CONNECTs refused (0x02) for using an in-process link's client id.
    pub refused_client_id: u64,
    /// Counter: pending handshakes closed to make room at `max_pending_handshakes`.
    pub refused_handshake_limit: u64,
    /// Counter: sockets closed at once at `max_pending_per_ip`.
    pub refused_handshake_per_ip: u64,
    /// Counter: failed TLS handshakes.
    pub refused_tls: u64,
    /// Counter: filters refused for `max_topic_levels`.
    pub sub_refused_topic_levels: u64,
    /// Counter: filters refused for `max_filters_per_subscribe`.
    pub sub_refused_per_subscribe: u64,
    /// Counter: filters refused for `max_subscriptions_per_client`.
    pub sub_refused_per_client: u64,
    /// Counter: filters refused for `max_trie_nodes`.
    pub sub_refused_trie_nodes: u64,
    /// Gauge: nodes of the subscription trie (one per distinct filter level
    /// prefix); falls back as subscriptions go.
    pub trie_nodes: u64,
    /// Gauge: sockets between accept and an accepted CONNECT.
    pub handshakes_pending: u64,
    /// Counter: publishes dropped by the ACL.
    pub dropped_acl: u64,
    /// Counter: client publishes to `$SYS/...` dropped.
    pub dropped_sys: u64,
    /// Counter: messages dropped at a full session queue.
    pub dropped_queue_full: u64,
    /// Counter: messages not sent to an MQTT 5 client because they exceed
    /// its Maximum Packet Size.
    pub dropped_too_large: u64,
    /// Counter: queued messages whose MQTT 5 Message Expiry Interval passed.
    pub dropped_expired: u64,
    /// Gauge: QoS 1/2 client publishes held back now, unacknowledged, while
    /// a local link session they go to is full (end-to-end backpressure).
    pub held_back: u64,
    /// Counter: QoS 1/2 client publishes ever held back (each counted once).
    pub held_back_total: u64,
    /// Gauge: persistent sessions kept in the store.
    pub persisted_sessions: u64,
    /// Gauge: QoS 1/2 messages of persistent sessions kept in the store.
    pub stored_messages: u64,
    /// Gauge: retained messages kept in the store.
    pub retained_stored: u64,
    /// Counter: stored records found damaged at start (logged and skipped).
    pub records_damaged: u64,
    /// Counter: persistent sessions removed by `session_expiry`.
    pub sessions_expired: u64,
    /// Counter: QoS 1/2 messages of a removed shared-subscription member
    /// handed to another member of its share group.
    pub shared_redelivered: u64,
    /// Counter: client QoS 1/2 publishes refused (not acknowledged, the
    /// connection closed) because `storage.max_bytes` was reached.
    pub store_full: u64,
}
