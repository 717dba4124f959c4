//! Cached metric handles of one built-in broker.

use metrics::{Counter, Gauge, counter, gauge};

use super::names::*;
use super::reasons::RefuseReason;

/// A snapshot of a built-in broker's counters and levels (mapped from the
/// broker's own stats snapshot); see [`BuiltinBrokerMetrics::observe`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuiltinSample {
    /// Network clients connected now.
    pub clients_connected: u64,
    /// Sessions held now.
    pub sessions: u64,
    /// Subscriptions now.
    pub subscriptions: u64,
    /// Retained messages now.
    pub retained: u64,
    /// Queued messages now.
    pub queued: u64,
    /// PUBLISH messages received so far.
    pub messages_in: u64,
    /// PUBLISH messages delivered so far.
    pub messages_out: u64,
    /// Payload bytes received so far.
    pub bytes_in: u64,
    /// Payload bytes delivered so far.
    pub bytes_out: u64,
    /// Connections refused so far, indexed like [`RefuseReason::ALL`].
    pub refused: [u64; RefuseReason::ALL.len()],
}

/// Metric handles of one built-in broker, created once.
#[derive(Debug, Clone)]
pub struct BuiltinBrokerMetrics {
    clients_connected: Gauge,
    sessions: Gauge,
    subscriptions: Gauge,
    retained: Gauge,
    queued: Gauge,
    messages_in: Counter,
    messages_out: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    refused: [Counter; RefuseReason::ALL.len()],
}

impl BuiltinBrokerMetrics {
    /// Registers the series of built-in broker `broker`.
    pub fn new(broker: &str) -> Self {
        let b = broker.to_owned();
        BuiltinBrokerMetrics {
            clients_connected: gauge!(BROKER_CLIENTS_CONNECTED, LABEL_BROKER => b.clone()),
            sessions: gauge!(BROKER_SESSIONS, LABEL_BROKER => b.clone()),
            subscriptions: gauge!(BROKER_SUBSCRIPTIONS, LABEL_BROKER => b.clone()),
            retained: gauge!(BROKER_RETAINED_MESSAGES, LABEL_BROKER => b.clone()),
            queued: gauge!(BROKER_QUEUED_MESSAGES, LABEL_BROKER => b.clone()),
            messages_in: counter!(BROKER_MESSAGES_IN, LABEL_BROKER => b.clone()),
            messages_out: counter!(BROKER_MESSAGES_OUT, LABEL_BROKER => b.clone()),
            bytes_in: counter!(BROKER_BYTES_IN, LABEL_BROKER => b.clone()),
            bytes_out: counter!(BROKER_BYTES_OUT, LABEL_BROKER => b.clone()),
            refused: RefuseReason::ALL.map(|r| {
                counter!(BROKER_CONNECTIONS_REFUSED, LABEL_BROKER => b.clone(), LABEL_REASON => r.as_label())
            }),
        }
    }

    /// One connection refused (event style, when the broker reports refusals one by one).
    pub fn refused(&self, reason: RefuseReason) {
        if let Some(c) = RefuseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.refused.get(i))
        {
            c.increment(1);
        }
    }

    /// Copies a snapshot: gauges set, counters set to their absolute totals.
    pub fn observe(&self, s: &BuiltinSample) {
        self.clients_connected.set(s.clients_connected as f64);
        self.sessions.set(s.sessions as f64);
        self.subscriptions.set(s.subscriptions as f64);
        self.retained.set(s.retained as f64);
        self.queued.set(s.queued as f64);
        self.messages_in.absolute(s.messages_in);
        self.messages_out.absolute(s.messages_out);
        self.bytes_in.absolute(s.bytes_in);
        self.bytes_out.absolute(s.bytes_out);
        for (c, v) in self.refused.iter().zip(s.refused.iter()) {
            c.absolute(*v);
        }
    }
}
