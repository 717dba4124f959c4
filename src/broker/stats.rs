//! Counters and gauges of the built-in broker, kept in atomics so any task can
//! bump them without locks; [`Broker::stats`](super::Broker::stats) takes a
//! snapshot for metrics (issue 6) and `$SYS`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub use crate::metrics::builtin::BrokerStats;

/// Why a connection was refused or closed by the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// Bad username/password, anonymous not allowed, or missing client certificate CN.
    Auth,
    /// A valid CONNECT while `max_connections` clients are connected
    /// (answered with CONNACK 0x03, server unavailable).
    Limit,
    /// Malformed input or a protocol violation.
    Protocol,
    /// The handshake (transport handshake and CONNECT) did not finish within
    /// `handshake_timeout`.
    Timeout,
    /// The client id is one of the bridge's in-process links (CONNACK 0x02).
    ClientId,
    /// A pending handshake closed to make room for a newer socket at
    /// `max_pending_handshakes`.
    HandshakeLimit,
    /// A socket closed at once: its source already had `max_pending_per_ip`
    /// handshakes pending.
    HandshakePerIp,
    /// The TLS handshake failed (untrusted or missing client certificate,
    /// no common protocol version or cipher, not TLS at all).
    Tls,
}

/// Why one filter of a SUBSCRIBE was refused (SUBACK 0x80) for a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubRefuseReason {
    /// The filter has more than `max_topic_levels` levels.
    TopicLevels,
    /// Beyond the first `max_filters_per_subscribe` filters of the packet.
    FiltersPerSubscribe,
    /// The session already holds `max_subscriptions_per_client` filters.
    SubscriptionsPerClient,
    /// Storing the filter would grow the subscription trie past `max_trie_nodes`.
    TrieNodes,
}

/// Why a message was dropped instead of delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A publish the ACL denies (QoS 1/2 still acknowledged).
    Acl,
    /// A client publish to `$SYS/...`.
    SysTopic,
    /// A session queue was full (`max_queued_messages`).
    QueueFull,
    /// Larger than an MQTT 5 client's Maximum Packet Size: not sent to it.
    TooLarge,
    /// Its MQTT 5 Message Expiry Interval passed while it was queued.
    Expired,
}

/// Live counters (monotonic) and gauges (up/down).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub clients_connected: AtomicU64,
    pub links_connected: AtomicU64,
    pub sessions: AtomicU64,
    pub subscriptions: AtomicU64,
    pub retained: AtomicU64,
    pub queued: AtomicU64,
    pub msgs_in: AtomicU64,
    pub msgs_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub refused_auth: AtomicU64,
    pub refused_limit: AtomicU64,
    pub refused_protocol: AtomicU64,
    pub refused_timeout: AtomicU64,
    pub refused_client_id: AtomicU64,
    pub refused_handshake_limit: AtomicU64,
    pub refused_handshake_per_ip: AtomicU64,
    pub refused_tls: AtomicU64,
    pub sub_refused_topic_levels: AtomicU64,
    pub sub_refused_per_subscribe: AtomicU64,
    pub sub_refused_per_client: AtomicU64,
    pub sub_refused_trie_nodes: AtomicU64,
    pub trie_nodes: AtomicU64,
    pub handshakes_pending: AtomicU64,
    pub dropped_acl: AtomicU64,
    pub dropped_sys: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_too_large: AtomicU64,
    pub dropped_expired: AtomicU64,
    pub held_back: AtomicU64,
    pub held_back_total: AtomicU64,
    pub persisted_sessions: AtomicU64,
    pub stored_messages: AtomicU64,
    pub retained_stored: AtomicU64,
    pub records_damaged: AtomicU64,
    pub sessions_expired: AtomicU64,
    pub shared_redelivered: AtomicU64,
    pub store_full: AtomicU64,
}

impl Counters {
    pub fn refused(&self, reason: RefuseReason) {
        let c = match reason {
            RefuseReason::Auth => &self.refused_auth,
            RefuseReason::Limit => &self.refused_limit,
            RefuseReason::Protocol => &self.refused_protocol,
            RefuseReason::Timeout => &self.refused_timeout,
            RefuseReason::ClientId => &self.refused_client_id,
            RefuseReason::HandshakeLimit => &self.refused_handshake_limit,
            RefuseReason::HandshakePerIp => &self.refused_handshake_per_ip,
            RefuseReason::Tls => &self.refused_tls,
        };
        c.fetch_add(1, Relaxed);
    }

    pub fn sub_refused(&self, reason: SubRefuseReason) {
        let c = match reason {
            SubRefuseReason::TopicLevels => &self.sub_refused_topic_levels,
            SubRefuseReason::FiltersPerSubscribe => &self.sub_refused_per_subscribe,
            SubRefuseReason::SubscriptionsPerClient => &self.sub_refused_per_client,
            SubRefuseReason::TrieNodes => &self.sub_refused_trie_nodes,
        };
        c.fetch_add(1, Relaxed);
    }

    pub fn dropped(&self, reason: DropReason, n: u64) {
        let c = match reason {
            DropReason::Acl => &self.dropped_acl,
            DropReason::SysTopic => &self.dropped_sys,
            DropReason::QueueFull => &self.dropped_queue_full,
            DropReason::TooLarge => &self.dropped_too_large,
            DropReason::Expired => &self.dropped_expired,
        };
        c.fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self) -> BrokerStats {
        BrokerStats {
            clients_connected: self.clients_connected.load(Relaxed),
            links_connected: self.links_connected.load(Relaxed),
            sessions: self.sessions.load(Relaxed),
            subscriptions: self.subscriptions.load(Relaxed),
            retained: self.retained.load(Relaxed),
            queued: self.queued.load(Relaxed),
            msgs_in: self.msgs_in.load(Relaxed),
            msgs_out: self.msgs_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            refused_auth: self.refused_auth.load(Relaxed),
            refused_limit: self.refused_limit.load(Relaxed),
            refused_protocol: self.refused_protocol.load(Relaxed),
            refused_timeout: self.refused_timeout.load(Relaxed),
            refused_client_id: self.refused_client_id.load(Relaxed),
            refused_handshake_limit: self.refused_handshake_limit.load(Relaxed),
            refused_handshake_per_ip: self.refused_handshake_per_ip.load(Relaxed),
            refused_tls: self.refused_tls.load(Relaxed),
            sub_refused_topic_levels: self.sub_refused_topic_levels.load(Relaxed),
            sub_refused_per_subscribe: self.sub_refused_per_subscribe.load(Relaxed),
            sub_refused_per_client: self.sub_refused_per_client.load(Relaxed),
            sub_refused_trie_nodes: self.sub_refused_trie_nodes.load(Relaxed),
            trie_nodes: self.trie_nodes.load(Relaxed),
            handshakes_pending: self.handshakes_pending.load(Relaxed),
            dropped_acl: self.dropped_acl.load(Relaxed),
            dropped_sys: self.dropped_sys.load(Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Relaxed),
            dropped_too_large: self.dropped_too_large.load(Relaxed),
            dropped_expired: self.dropped_expired.load(Relaxed),
            held_back: self.held_back.load(Relaxed),
            held_back_total: self.held_back_total.load(Relaxed),
            persisted_sessions: self.persisted_sessions.load(Relaxed),
            stored_messages: self.stored_messages.load(Relaxed),
            retained_stored: self.retained_stored.load(Relaxed),
            records_damaged: self.records_damaged.load(Relaxed),
            sessions_expired: self.sessions_expired.load(Relaxed),
            shared_redelivered: self.shared_redelivered.load(Relaxed),
            store_full: self.store_full.load(Relaxed),
        }
    }
}
