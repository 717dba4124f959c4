//! Cached metric handles of one remote broker connection.

use metrics::{Counter, Gauge, counter, gauge};

use super::names::*;
use super::reasons::DisconnectReason;

#[derive(Debug, Clone)]
struct EndpointHandles {
    label: String,
    active: Gauge,
    attempts: Counter,
}

/// Metric handles of one remote broker, created once. Per-endpoint series
/// exist for every configured endpoint from the start (zero until used).
#[derive(Debug, Clone)]
pub struct RemoteBrokerMetrics {
    broker: String,
    connected: Gauge,
    endpoints: Vec<EndpointHandles>,
    disconnects: [Counter; DisconnectReason::ALL.len()],
    connect_failures: [Counter; DisconnectReason::ALL.len()],
    failovers: Counter,
    failbacks: Counter,
    inflight: Gauge,
    messages_in: Counter,
    messages_out: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
}

/// The `endpoint` label for an endpoint URL: scheme, host and port only
/// (any `user:password@` part is removed so no secret reaches a label).
pub fn endpoint_label(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, _) = rest.split_at(authority_end);
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}")
        }
        None => url.rsplit_once('@').map_or(url, |(_, h)| h).to_owned(),
    }
}

impl RemoteBrokerMetrics {
    /// Registers the series of broker `broker` with its configured endpoints.
    pub fn new(broker: &str, endpoints: &[String]) -> Self {
        let b = broker.to_owned();
        let endpoints = endpoints
            .iter()
            .map(|e| Self::endpoint_handles(&b, e))
            .collect();
        RemoteBrokerMetrics {
            connected: gauge!(REMOTE_CONNECTED, LABEL_BROKER => b.clone()),
            endpoints,
            disconnects: DisconnectReason::ALL.map(|r| {
                counter!(REMOTE_DISCONNECTS, LABEL_BROKER => b.clone(), LABEL_REASON => r.as_label())
            }),
            connect_failures: DisconnectReason::ALL.map(|r| {
                counter!(REMOTE_CONNECT_FAILURES, LABEL_BROKER => b.clone(), LABEL_REASON => r.as_label())
            }),
            failovers: counter!(REMOTE_FAILOVERS, LABEL_BROKER => b.clone()),
            failbacks: counter!(REMOTE_FAILBACKS, LABEL_BROKER => b.clone()),
            inflight: gauge!(REMOTE_INFLIGHT_MESSAGES, LABEL_BROKER => b.clone()),
            messages_in: counter!(REMOTE_MESSAGES_IN, LABEL_BROKER => b.clone()),
            messages_out: counter!(REMOTE_MESSAGES_OUT, LABEL_BROKER => b.clone()),
            bytes_in: counter!(REMOTE_BYTES_IN, LABEL_BROKER => b.clone()),
            bytes_out: counter!(REMOTE_BYTES_OUT, LABEL_BROKER => b.clone()),
            broker: b,
        }
    }

    fn endpoint_handles(broker: &str, endpoint: &str) -> EndpointHandles {
        let label = endpoint_label(endpoint);
        EndpointHandles {
            active: gauge!(REMOTE_ENDPOINT_ACTIVE, LABEL_BROKER => broker.to_owned(), LABEL_ENDPOINT => label.clone()),
            attempts: counter!(REMOTE_CONNECTION_ATTEMPTS, LABEL_BROKER => broker.to_owned(), LABEL_ENDPOINT => label.clone()),
            label,
        }
    }

    /// The broker name these handles belong to.
    pub fn broker(&self) -> &str {
        &self.broker
    }

    /// Handles of `endpoint`; an endpoint missing from the configured list
    /// (should not happen) is registered on the spot — connection events are rare.
    fn endpoint(&self, endpoint: &str) -> EndpointHandles {
        let label = endpoint_label(endpoint);
        match self.endpoints.iter().find(|e| e.label == label) {
            Some(h) => h.clone(),
            None => Self::endpoint_handles(&self.broker, endpoint),
        }
    }

    /// A connection attempt to `endpoint` started.
    pub fn attempt(&self, endpoint: &str) {
        self.endpoint(endpoint).attempts.increment(1);
    }

    /// Connected to `endpoint`: connected=1, `endpoint` active, others 0.
    pub fn connected(&self, endpoint: &str) {
        let label = endpoint_label(endpoint);
        for e in &self.endpoints {
            e.active.set(if e.label == label { 1.0 } else { 0.0 });
        }
        if !self.endpoints.iter().any(|e| e.label == label) {
            self.endpoint(endpoint).active.set(1.0);
        }
        self.connected.set(1.0);
    }

    /// Connection lost: connected=0, no endpoint active, disconnect counted.
    pub fn disconnected(&self, reason: DisconnectReason) {
        self.connected.set(0.0);
        for e in &self.endpoints {
            e.active.set(0.0);
        }
        if let Some(c) = DisconnectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.disconnects.get(i))
        {
            c.increment(1);
        }
    }

    /// A connection attempt failed before CONNACK.
    pub fn connect_failed(&self, reason: DisconnectReason) {
        if let Some(c) = DisconnectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.connect_failures.get(i))
        {
            c.increment(1);
        }
    }

    /// Switched away from the endpoint last in use.
    pub fn failover(&self) {
        self.failovers.increment(1);
    }

    /// Switched back to the primary endpoint.
    pub fn failback(&self) {
        self.failbacks.increment(1);
    }

    /// Current outgoing inflight count.
    pub fn set_inflight(&self, n: u64) {
        self.inflight.set(n as f64);
    }

    /// One PUBLISH received with `bytes` of payload.
    pub fn message_in(&self, bytes: usize) {
        self.messages_in.increment(1);
        self.bytes_in.increment(bytes as u64);
    }

    /// One PUBLISH sent with `bytes` of payload.
    pub fn message_out(&self, bytes: usize) {
        self.messages_out.increment(1);
        self.bytes_out.increment(bytes as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint_label;

    #[test]
    fn endpoint_label_strips_credentials_and_path() {
        assert_eq!(endpoint_label("mqtt://h:1883"), "mqtt://h:1883");
        assert_eq!(endpoint_label("mqtts://u:p@h:8883/x"), "mqtts://h:8883");
        assert_eq!(endpoint_label("u:p@h:1"), "h:1");
    }
}
