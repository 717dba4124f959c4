//! Plain option structs for one remote broker connection. The pipe helper maps
//! the config `Plan` onto these; nothing here reads files or spawns tasks.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, broadcast};

use super::ClientEvent;
use crate::protocol::Message;
use crate::protocol::version::ProtocolChoice;

/// One network endpoint of a remote broker, in priority order within
/// [`ClientOptions::endpoints`] (index 0 is the primary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address (also the default TLS server name).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Whether to wrap the TCP stream in TLS.
    pub tls: bool,
    /// WebSocket request path (e.g. `/mqtt`): `Some` carries MQTT in WebSocket
    /// frames (`ws://`, or `wss://` with `tls`); `None` speaks MQTT on the stream.
    pub ws_path: Option<String>,
}

impl Endpoint {
    /// A plain TCP endpoint.
    pub fn tcp(host: impl Into<String>, port: u16) -> Self {
        Endpoint {
            host: host.into(),
            port,
            tls: false,
            ws_path: None,
        }
    }

    /// A TLS endpoint.
    pub fn tls(host: impl Into<String>, port: u16) -> Self {
        Endpoint {
            host: host.into(),
            port,
            tls: true,
            ws_path: None,
        }
    }

    /// A WebSocket endpoint (`ws://host:port/path`); see [`Endpoint::with_tls`] for `wss://`.
    pub fn ws(host: impl Into<String>, port: u16, path: impl Into<String>) -> Self {
        Endpoint {
            host: host.into(),
            port,
            tls: false,
            ws_path: Some(path.into()),
        }
    }

    /// The same endpoint with TLS (e.g. `wss://` from `ws://`).
    pub fn with_tls(self) -> Self {
        Endpoint { tls: true, ..self }
    }

    /// Display URL, e.g. `mqtts://broker.example:8883`; used in logs and states.
    pub fn url(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match (self.tls, self.ws_path.is_some()) {
            (false, false) => "mqtt",
            (true, false) => "mqtts",
            (false, true) => "ws",
            (true, true) => "wss",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)?;
        }
        match &self.ws_path {
            Some(path) if path != "/" => f.write_str(path),
            _ => Ok(()),
        }
    }
}

/// TLS settings shared by every TLS endpoint of a broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file with the CA certificate(s) to trust; `None` = the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS (needs `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Server name for SNI and certificate verification; `None` = the endpoint host.
    pub server_name: Option<String>,
    /// ALPN protocols, e.g. `x-amzn-mqtt-ca` for AWS IoT on port 443.
    pub alpn: Vec<String>,
    /// Skip server certificate verification (logged as a warning at start).
    pub insecure: bool,
}

/// Reconnect backoff settings (see [`crate::client::backoff`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffOptions {
    /// First delay.
    pub min: Duration,
    /// Upper bound of any delay, jitter included.
    pub max: Duration,
    /// Add random jitter (up to the current delay, then clamped to `max`).
    pub jitter: bool,
    /// A link that stayed up this long resets the schedule to `min`.
    pub stable_after: Duration,
    /// While waiting out a delay after "nothing answered", TCP-probe the
    /// endpoints this often and dial as soon as one answers (see
    /// [`crate::client::recovery`]); `Duration::ZERO` = no probes.
    pub probe_interval: Duration,
}

impl Default for BackoffOptions {
    fn default() -> Self {
        BackoffOptions {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: true,
            stable_after: Duration::from_secs(30),
            probe_interval: Duration::from_secs(1),
        }
    }
}

/// Failback settings: returning to the primary endpoint once it is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailbackOptions {
    /// Probe the primary while on a secondary endpoint and switch back.
    pub enabled: bool,
    /// Time between two probes of the primary.
    pub probe_interval: Duration,
    /// Consecutive good probes needed before switching back (hysteresis).
    pub probes_required: u32,
}

impl Default for FailbackOptions {
    fn default() -> Self {
        FailbackOptions {
            enabled: true,
            probe_interval: Duration::from_secs(30),
            probes_required: 3,
        }
    }
}

/// Everything one remote broker connection needs. `Debug` redacts the password.
#[derive(Clone)]
pub struct ClientOptions {
    /// Broker name (config map key); the `broker` field of every log line.
    pub name: String,
    /// Endpoints in priority order; index 0 is the primary. Must not be empty.
    pub endpoints: Vec<Endpoint>,
    /// The MQTT version to speak: by default 5, falling back to 3.1.1 on an
    /// endpoint that refuses it, or — when [`ClientOptions::publishes`] —
    /// that grants a receive maximum below `inflight` (remembered per
    /// endpoint for the process).
    pub protocol: ProtocolChoice,
    /// Whether this broker is the destination of at least one pipe (set by
    /// whoever builds clients from the config). With `protocol` left to
    /// default, an MQTT 5 broker that grants a receive maximum below
    /// `inflight` is then spoken to in 3.1.1 instead (see
    /// [`ClientOptions::protocol`]); a broker we only read from keeps MQTT 5.
    pub publishes: bool,
    /// MQTT client id used on every endpoint.
    pub client_id: String,
    /// Optional user name.
    pub username: Option<String>,
    /// Optional password (sent only with a user name, as MQTT 3.1.1 requires).
    pub password: Option<String>,
    /// Keepalive sent in CONNECT; `Duration::ZERO` disables PINGREQ.
    pub keepalive: Duration,
    /// Clean session flag in CONNECT.
    pub clean_session: bool,
    /// TLS settings for endpoints with `tls: true`.
    pub tls: TlsOptions,
    /// Extra HTTP headers (name, value) of the WebSocket upgrade request of
    /// endpoints with a `ws_path` (e.g. an API key a proxy checks).
    pub ws_headers: Vec<(String, String)>,
    /// Reconnect backoff.
    pub backoff: BackoffOptions,
    /// Failback to the primary endpoint.
    pub failback: FailbackOptions,
    /// Time allowed for TCP connect + TLS handshake + CONNACK.
    pub connect_timeout: Duration,
    /// Largest packet we send or accept, in bytes. Larger publishes are
    /// refused to the caller; a larger incoming packet closes the connection
    /// (and the broker would redeliver it), so keep this at least as large as
    /// the broker's own limit.
    pub max_packet_size: usize,
    /// Maximum unacknowledged outgoing QoS 1/2 publishes; more requests wait.
    pub inflight: usize,
    /// Maximum unacknowledged outgoing QoS 2 publishes (within `inflight`).
    /// Mosquitto silently discards QoS 2 PUBLISHes from a 3.1.1 client beyond
    /// its `max_inflight_messages` (default 20), so keep this at or below it.
    pub inflight_qos2: usize,
    /// Capacity of the bounded request channel behind the [`crate::link::Link`].
    pub request_capacity: usize,
    /// Capacity of the bounded delivery channel (incoming messages).
    pub delivery_capacity: usize,
    /// Last will, set in every CONNECT (e.g. retained `offline` status). On a
    /// graceful close (shutdown, failback) the client publishes it itself
    /// (at QoS 0) just before DISCONNECT, since the broker then drops the will.
    pub will: Option<Message>,
    /// Published after every successful connect, as given (set `retain: true`
    /// for a status topic such as `online`).
    pub birth: Option<Message>,
    /// Where to send lifecycle events (metrics, tests); `None` = nowhere.
    pub events: Option<broadcast::Sender<ClientEvent>>,
    /// Out-of-band "drop this connection and reconnect" trigger (the stall
    /// watchdog's hook; `notify_waiters` affects only a live connection).
    /// Separate from the request channel, which is not read while the
    /// inflight window is full — exactly when a reconnect is needed.
    pub reconnect: Option<Arc<Notify>>,
    /// Metric handles for messages/bytes in and out and the inflight gauge.
    pub metrics: Option<crate::metrics::RemoteBrokerMetrics>,
    /// Replacement connection settings from a config reload (credential
    /// rotation, new endpoints, TLS files…), taken before the next dial;
    /// trigger it with [`ClientOptions::reconnect`]'s `notify_one`.
    pub settings: Option<SettingsSlot>,
    /// The store: with a persistent session (`clean_session: false`), the
    /// QoS 2 flows of spooled pipes are kept there, so they reach this
    /// broker exactly once across a restart of mqbridge
    /// (see `client/durable.rs`). `None`: kept in memory only.
    pub store: Option<crate::store::Store>,
}

/// Where a reload puts new [`ClientOptions`] for a running client. Only the
/// connection settings are taken from it (endpoints, protocol, client id, credentials,
/// keepalive, clean session, TLS, backoff, failback, connect timeout, packet
/// size, will and birth); the session (inflight window, subscriptions) stays.
pub type SettingsSlot = Arc<Mutex<Option<ClientOptions>>>;

impl ClientOptions {
    /// Options with the defaults for everything but the name, endpoints and
    /// client id (the same defaults as `bridges.yaml`: keepalive 60 s,
    /// persistent session, reconnect 1 s..60 s with jitter, stable after 30 s,
    /// failback probes every 30 s ×3, connect timeout 10 s, inflight 100).
    pub fn new(
        name: impl Into<String>,
        endpoints: Vec<Endpoint>,
        client_id: impl Into<String>,
    ) -> Self {
        ClientOptions {
            name: name.into(),
            endpoints,
            protocol: ProtocolChoice::Auto,
            publishes: false,
            client_id: client_id.into(),
            username: None,
            password: None,
            keepalive: Duration::from_secs(60),
            clean_session: false,
            tls: TlsOptions::default(),
            ws_headers: Vec::new(),
            backoff: BackoffOptions::default(),
            failback: FailbackOptions::default(),
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 1024 * 1024,
            inflight: 100,
            inflight_qos2: 20,
            request_capacity: 256,
            delivery_capacity: 256,
            will: None,
            birth: None,
            events: None,
            reconnect: None,
            metrics: None,
            settings: None,
            store: None,
        }
    }

    /// Display URL of all endpoints, comma separated (for logs).
    pub fn display_url(&self) -> String {
        self.endpoints
            .iter()
            .map(Endpoint::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("name", &self.name)
            .field("endpoints", &self.display_url())
            .field("protocol", &self.protocol)
            .field("publishes", &self.publishes)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("keepalive", &self.keepalive)
            .field("clean_session", &self.clean_session)
            .field("tls", &self.tls)
            .field(
                "ws_headers",
                &self.ws_headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("backoff", &self.backoff)
            .field("failback", &self.failback)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_packet_size", &self.max_packet_size)
            .field("inflight", &self.inflight)
            .field("inflight_qos2", &self.inflight_qos2)
            .field("request_capacity", &self.request_capacity)
            .field("delivery_capacity", &self.delivery_capacity)
            .field("will", &self.will.as_ref().map(|m| &m.topic))
            .field("birth", &self.birth.as_ref().map(|m| &m.topic))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_and_redacted_debug() {
        assert_eq!(Endpoint::tcp("h", 1883).url(), "mqtt://h:1883");
        assert_eq!(Endpoint::tls("::1", 8883).url(), "mqtts://[::1]:8883");
        let mut o = ClientOptions::new(
            "b",
            vec![Endpoint::tcp("a", 1), Endpoint::tls("c", 2)],
            "id",
        );
        assert_eq!(o.display_url(), "mqtt://a:1,mqtts://c:2");
        o.password = Some("hunter2".into());
        let dbg = format!("{o:?}");
        assert!(
            !dbg.contains("hunter2") && dbg.contains("<redacted>"),
            "{dbg}"
        );
    }
}
