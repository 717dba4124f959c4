//! The checked plan: what `compile` produces from `bridges.yaml`.
//!
//! Pure data. Every default is resolved, durations are [`Duration`]s, secrets
//! are read from their files, file paths are absolute-or-relative-to-the-config
//! and were readable at load time, filters are valid and remaps compiled.
//! The client, broker and pipe modules map this onto their own option structs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::QoS;
use crate::topic::Remap;

/// The whole checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The file the plan was loaded from (as given by the user).
    pub source_file: PathBuf,
    /// Brokers by name (the YAML key; usable as a metric label).
    pub brokers: BTreeMap<String, BrokerPlan>,
    /// Pipes by name (the YAML key; usable as a metric label).
    pub pipes: BTreeMap<String, PipePlan>,
    /// How long a shutdown waits for inflight deliveries before giving up.
    pub shutdown_timeout: Duration,
    /// The metrics/health HTTP endpoint.
    pub metrics: MetricsPlan,
    /// The forwarding watchdog.
    pub watchdog: WatchdogPlan,
    /// The local store.
    pub storage: StoragePlan,
}

/// One broker: remote (we connect to it) or built-in (we are it).
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerPlan {
    /// The broker's name (its YAML key).
    pub name: String,
    /// Remote or built-in, with the settings of that kind.
    pub kind: BrokerKind,
}

/// The two kinds of broker.
// A handful of these exist per process, built once at load: boxing the larger
// variant would only make every consumer's match noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerKind {
    /// A broker we connect to as a client (`type: remote`).
    Remote(RemotePlan),
    /// Our own broker with listeners (`type: builtin`).
    BuiltIn(BuiltInPlan),
}

/// A remote broker: one MQTT client connection (5, 3.1.1 or 3.1) with failover over `endpoints`.
#[derive(Debug, Clone, PartialEq)]
pub struct RemotePlan {
    /// Endpoints in priority order; the first is the primary (non-empty).
    pub endpoints: Vec<EndpointPlan>,
    /// The MQTT version to speak (`protocol:`; default: 5, falling back to
    /// 3.1.1 on a refusal or, towards a pipe's destination, a small receive maximum).
    pub protocol: crate::protocol::version::ProtocolChoice,
    /// MQTT client id (default `mqbridge-<config stem>-<broker name>`, stable across restarts).
    pub client_id: String,
    /// Username for CONNECT.
    pub username: Option<String>,
    /// Password for CONNECT (from `password` or read from `password_file`, trailing newline trimmed).
    /// Only set together with `username` (MQTT 3.1.1 forbids a password without a username).
    pub password: Option<String>,
    /// Keepalive interval; zero disables keepalive. At most 65,535 s.
    pub keepalive: Duration,
    /// Clean session flag (default false: a persistent session, so the broker keeps our backlog).
    pub clean_session: bool,
    /// TLS settings; `Some` exactly when at least one endpoint is `mqtts://` or `wss://`.
    pub tls: Option<TlsPlan>,
    /// Extra HTTP headers of the WebSocket upgrade request (name, value), sorted by
    /// name; empty unless an endpoint is `ws://` or `wss://`.
    pub ws_headers: Vec<(String, String)>,
    /// Reconnect backoff.
    pub reconnect: BackoffPlan,
    /// Failback to the primary endpoint.
    pub failback: FailbackPlan,
    /// Time allowed for TCP + TLS + CONNACK.
    pub connect_timeout: Duration,
    /// Largest packet we send or accept, in bytes (≤ 268,435,455).
    pub max_packet_size: usize,
    /// Outgoing QoS 1/2 messages awaiting acknowledgement at once (≥ 1, ≤ 65,535).
    pub inflight: u16,
    /// Retained online/offline status topic (`None` when disabled).
    pub status: Option<StatusPlan>,
    /// Whether `/readyz` requires this broker to be connected.
    pub required: bool,
}

/// One remote endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPlan {
    /// The URL as written (after `${VAR}` substitution), e.g. `mqtts://iot.example.com:8883`.
    pub url: String,
    /// Plain TCP (`mqtt://`), TLS (`mqtts://`), WebSocket (`ws://`) or WebSocket over TLS (`wss://`).
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port (default 1883 for `mqtt://`, 8883 for `mqtts://`, 80 for `ws://`, 443 for `wss://`).
    pub port: u16,
    /// WebSocket request path (`/` when the URL has none); `None` for `mqtt://` and `mqtts://`.
    pub path: Option<String>,
}

/// Transport of an endpoint or listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// MQTT over WebSocket (binary frames, subprotocol `mqtt`).
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl Scheme {
    /// Whether the transport includes TLS (`mqtts://`, `tls://`, `wss://`).
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Tls | Scheme::Wss)
    }

    /// Whether MQTT is carried in WebSocket frames (`ws://`, `wss://`).
    pub fn is_websocket(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }
}

/// Client-side TLS settings of a remote broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPlan {
    /// CA bundle (PEM); `None` = the system's root certificates.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; set together with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM); set together with `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Name to verify the server certificate against (default: the endpoint host).
    pub server_name: Option<String>,
    /// ALPN protocols to offer, in order (e.g. `x-amzn-mqtt-ca` for AWS IoT on port 443).
    pub alpn: Vec<String>,
    /// Skip server certificate verification (dangerous; the client logs a warning).
    pub insecure: bool,
}

/// Exponential reconnect backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffPlan {
    /// First delay (≤ `max`).
    pub min: Duration,
    /// Largest delay, jitter included.
    pub max: Duration,
    /// Randomise delays.
    pub jitter: bool,
    /// A link must stay up this long before the backoff resets to `min`.
    pub stable_after: Duration,
    /// TCP-probe the endpoints this often while backing off after "nothing
    /// answered"; zero = no probes.
    pub probe_interval: Duration,
}

/// Switching back to the primary endpoint after a failover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailbackPlan {
    /// Probe the primary while on a secondary.
    pub enabled: bool,
    /// Time between probes.
    pub probe_interval: Duration,
    /// Consecutive good probes needed before switching back (≥ 1).
    pub probes_required: u32,
}

/// Retained status notifications on a remote broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPlan {
    /// Topic (default `mqbridge/<client id>/status`); a valid topic name.
    pub topic: String,
    /// Payload published (retained) after connecting.
    pub online: String,
    /// Payload of the will (retained), and published on clean shutdown.
    pub offline: String,
}

/// Our own broker.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltInPlan {
    /// Listeners (non-empty). Port 0 asks the OS for a free port.
    pub listeners: Vec<ListenerPlan>,
    /// Accept clients without credentials (default: true only when there is no password file).
    pub allow_anonymous: bool,
    /// Mosquitto-format password file (`mosquitto_passwd`), checked readable.
    pub password_file: Option<PathBuf>,
    /// Mosquitto-format ACL file, checked readable.
    pub acl_file: Option<PathBuf>,
    /// Resource limits.
    pub limits: LimitsPlan,
    /// Publish the `$SYS/broker/...` tree this often (default 10 s); `None` = off.
    pub sys_interval: Option<std::time::Duration>,
    /// Persistent network sessions away this long are removed; `None` = never.
    pub session_expiry: Option<std::time::Duration>,
}

/// One listening socket of the built-in broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerPlan {
    /// The URL as written, e.g. `tcp://127.0.0.1:1883`.
    pub url: String,
    /// Address to bind.
    pub addr: SocketAddr,
    /// TLS settings; `None` for `tcp://` and `ws://`.
    pub tls: Option<ListenerTlsPlan>,
    /// MQTT over WebSocket (`ws://`, `wss://`): any request path, subprotocol `mqtt`.
    pub websocket: bool,
}

/// Server-side TLS of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTlsPlan {
    /// Server certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Server private key (PEM).
    pub key_file: PathBuf,
    /// CA (PEM) that client certificates must chain to.
    pub client_ca_file: Option<PathBuf>,
    /// Refuse clients without a valid certificate (needs `client_ca_file`).
    pub require_client_cert: bool,
    /// Use the client certificate's CN as the username (needs `require_client_cert`).
    pub cert_cn_as_username: bool,
}

/// Limits of the built-in broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsPlan {
    /// Connected clients at once.
    pub max_connections: usize,
    /// Largest packet accepted, in bytes.
    pub max_packet_size: usize,
    /// QoS 1/2 messages queued per session while its client is away or slow.
    pub max_queued_messages: usize,
    /// Outgoing QoS 1/2 messages in flight per client.
    pub max_inflight: u16,
    /// Time a new socket has from accept until its CONNECT is accepted.
    pub handshake_timeout: Duration,
    /// Sockets in their handshake at once (the oldest is closed beyond).
    pub max_pending_handshakes: usize,
    /// Pending handshakes per IPv4 address or IPv6 /64.
    pub max_pending_per_ip: usize,
    /// Most levels in a subscription filter or published topic name.
    pub max_topic_levels: usize,
    /// Filters honoured per SUBSCRIBE.
    pub max_filters_per_subscribe: usize,
    /// Subscriptions one client session may hold.
    pub max_subscriptions_per_client: usize,
    /// Subscription trie nodes network clients may grow it to.
    pub max_trie_nodes: usize,
    /// Topic aliases an MQTT 5 client may set on its PUBLISHes (0: none).
    pub topic_alias_maximum: u16,
}

/// One pipe: from a source broker through filters and remaps to a destination broker.
///
/// `PartialEq` is written by hand because [`Remap`] holds compiled regexes,
/// which have no equality; two remaps are equal when their rules read the same.
#[derive(Debug, Clone)]
pub struct PipePlan {
    /// The pipe's name (its YAML key).
    pub name: String,
    /// Source broker name (exists in [`Plan::brokers`]).
    pub from: String,
    /// Destination broker name (exists in [`Plan::brokers`]).
    pub to: String,
    /// Subscription filters with their subscription QoS (non-empty, valid).
    pub filters: Vec<(String, QoS)>,
    /// Messages matching any of these filters are not forwarded.
    pub exclude: Vec<String>,
    /// Topic rewriting; the first rule that applies rewrites, none → unchanged.
    pub remap: Remap,
    /// QoS of the forwarded message.
    pub qos: QosRule,
    /// Retain flag of the forwarded message.
    pub retain: RetainRule,
    /// What the pipe does with MQTT 5 properties.
    pub properties: PropertiesPlan,
    /// Larger payloads are dropped (and counted); `None` = no limit.
    pub max_payload: Option<usize>,
    /// Optional rate limit.
    pub rate_limit: Option<RateLimitPlan>,
    /// QoS 0 buffer.
    pub queue: QueuePlan,
    /// Whether the static loop check covers this pipe (false = rely on runtime loop protection).
    pub loop_check: bool,
    /// How the pipe takes responsibility for a message.
    pub delivery: DeliveryPlan,
}

/// `delivery:` of a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryPlan {
    /// `end_to_end`: the source is acknowledged after the destination.
    EndToEnd,
    /// `spool` (default): the source is acknowledged once the message is
    /// durable in the pipe's spool.
    Spool(SpoolPlan),
}

/// A spooled pipe's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolPlan {
    /// `qos0: spool` (true) or `memory` (false, default).
    pub qos0: bool,
    /// `spool.max_bytes`; `None` = bounded by `storage.max_bytes` only.
    pub max_bytes: Option<u64>,
    /// `spool.when_full`.
    pub when_full: SpoolFullPolicy,
}

/// `spool.when_full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolFullPolicy {
    /// Withhold the source's acknowledgements (default).
    Block,
    /// Drop the oldest spooled messages (counted).
    DropOldest,
}

impl PartialEq for PipePlan {
    fn eq(&self, other: &Self) -> bool {
        let rules = |r: &Remap| r.rules.iter().map(|r| r.describe()).collect::<Vec<_>>();
        self.name == other.name
            && self.from == other.from
            && self.to == other.to
            && self.filters == other.filters
            && self.exclude == other.exclude
            && rules(&self.remap) == rules(&other.remap)
            && self.qos == other.qos
            && self.retain == other.retain
            && self.properties == other.properties
            && self.max_payload == other.max_payload
            && self.rate_limit == other.rate_limit
            && self.queue == other.queue
            && self.delivery == other.delivery
            && self.loop_check == other.loop_check
    }
}

/// The QoS of forwarded messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosRule {
    /// min(incoming QoS, this) — default `Max(ExactlyOnce)`, i.e. keep the incoming QoS.
    Max(QoS),
    /// Always this QoS.
    Force(QoS),
}

/// The retain flag of forwarded messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainRule {
    /// Keep the incoming flag (default).
    Keep,
    /// Always clear it.
    Clear,
    /// Subscribe with MQTT 5 Retain As Published, so the flag arrives as
    /// the publisher set it, and keep it.
    AsPublished,
}

/// A pipe's MQTT 5 property options (`response_topic`, `user_properties`,
/// `loop_guard`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PropertiesPlan {
    /// `response_topic: remap` (true) or `keep` (false, default).
    pub remap_response_topic: bool,
    /// `user_properties.remove`: names whose every pair is removed.
    pub remove: Vec<String>,
    /// `user_properties.add`: pairs appended, in file order.
    pub add: Vec<(String, String)>,
    /// `loop_guard`: the hop-count property and its limit.
    pub hops: Option<HopPlan>,
}

/// `loop_guard:` of a pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopPlan {
    /// `hop_property`.
    pub property: String,
    /// `max_hops`.
    pub max_hops: u32,
}

/// A token-bucket rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPlan {
    /// Sustained messages per second (≥ 1).
    pub per_second: u32,
    /// Bucket size: messages that may pass at once (default = `per_second`).
    pub burst: u32,
}

/// The bounded QoS 0 queue of a pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePlan {
    /// Capacity in messages (≥ 1).
    pub size: usize,
    /// What to drop when full.
    pub when_full: DropPolicy,
}

/// What a full queue drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropPolicy {
    /// Drop the oldest queued message (default).
    DropOldest,
    /// Drop the message that just arrived.
    DropNewest,
}

/// The metrics and health HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsPlan {
    /// Serve `/metrics`, `/healthz`, `/readyz`.
    pub enabled: bool,
    /// Address to bind (default `127.0.0.1:9464`).
    pub listen: SocketAddr,
}

/// The forwarding watchdog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogPlan {
    /// A pipe with work pending that completed no forward for this long is stalled.
    pub stall_after: Duration,
}

/// The local store: one data directory for every spool and the built-in
/// brokers' persistent state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoragePlan {
    /// The data directory (created on start).
    pub dir: PathBuf,
    /// When writes reach the disk.
    pub fsync: FsyncPolicy,
    /// The bytes the store's records may take, at most.
    pub max_bytes: u64,
}

/// When the store's writes are flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Group commit: a write is on disk before whoever waits on it (e.g. a
    /// source waiting for its acknowledgement) is told it is durable.
    Batch,
    /// Flushed at this interval; a power loss can lose the last interval.
    Interval(Duration),
    /// Left to the operating system (a process crash loses nothing, a power
    /// loss can lose what the OS had not written).
    Never,
}

impl Plan {
    /// The pipes whose source is `broker`, in name order.
    pub fn pipes_from<'a>(&'a self, broker: &'a str) -> impl Iterator<Item = &'a PipePlan> + 'a {
        self.pipes.values().filter(move |p| p.from == broker)
    }
}
