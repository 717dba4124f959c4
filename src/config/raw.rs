//! Stage one: serde structs mirroring `bridges.yaml` exactly.
//!
//! Every struct denies unknown fields. Every scalar leaf is kept as located text
//! (`Spanned<String>`) so that `compile` can substitute `${VAR}`, parse it, and
//! report *all* bad values with their line and column instead of stopping at
//! the first one. Required-looking fields are `Option` here for the same reason:
//! `compile` reports a missing one alongside every other error.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_saphyr::Spanned;

/// A located scalar, as written (before `${VAR}` substitution).
pub type Text = Spanned<String>;

/// Named defaults, used by `compile` when a field is absent (and quoted in `docs/configuration.md`).
pub mod defaults {
    use super::Duration;

    /// A pipe's `loop_guard.hop_property`.
    pub const HOP_PROPERTY: &str = "mqbridge-hops";
    /// A pipe's `loop_guard.max_hops`.
    pub const MAX_HOPS: u32 = 8;
    /// `shutdown_timeout`.
    pub fn shutdown_timeout() -> Duration {
        Duration::from_secs(10)
    }
    /// `metrics.listen`.
    pub fn metrics_listen() -> &'static str {
        "127.0.0.1:9464"
    }
    /// `watchdog.stall_after`.
    pub fn stall_after() -> Duration {
        Duration::from_secs(60)
    }
    /// `storage.dir`, relative to the config file's directory.
    pub const STORAGE_DIR: &str = "mqbridge-data";
    /// `storage.max_bytes`.
    pub const STORAGE_MAX_BYTES: u64 = 1 << 30;
    /// Remote `keepalive`.
    pub fn keepalive() -> Duration {
        Duration::from_secs(60)
    }
    /// Largest keepalive MQTT can express (65,535 s = 18h12m15s).
    pub fn keepalive_max() -> Duration {
        Duration::from_secs(u16::MAX as u64)
    }
    /// `reconnect.min`.
    pub fn reconnect_min() -> Duration {
        Duration::from_secs(1)
    }
    /// `reconnect.max`.
    pub fn reconnect_max() -> Duration {
        Duration::from_secs(60)
    }
    /// `reconnect.stable_after`.
    pub fn stable_after() -> Duration {
        Duration::from_secs(30)
    }
    /// `reconnect.probe_interval`.
    pub fn reconnect_probe_interval() -> Duration {
        Duration::from_secs(1)
    }
    /// `failback.probe_interval`.
    pub fn probe_interval() -> Duration {
        Duration::from_secs(30)
    }
    /// `failback.probes_required`.
    pub fn probes_required() -> u32 {
        3
    }
    /// Built-in `sys_interval` (Mosquitto's default).
    pub fn sys_interval() -> Duration {
        Duration::from_secs(10)
    }
    /// Remote `connect_timeout`.
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(10)
    }
    /// Built-in `limits.handshake_timeout`.
    pub fn handshake_timeout() -> Duration {
        Duration::from_secs(5)
    }
    /// Built-in `limits.max_pending_handshakes`.
    pub fn max_pending_handshakes() -> usize {
        1000
    }
    /// Built-in `limits.max_pending_per_ip`.
    pub fn max_pending_per_ip() -> usize {
        64
    }
    /// Built-in `limits.max_topic_levels`.
    pub fn max_topic_levels() -> usize {
        200
    }
    /// Built-in `limits.max_filters_per_subscribe`.
    pub fn max_filters_per_subscribe() -> usize {
        100
    }
    /// Built-in `limits.max_subscriptions_per_client`.
    pub fn max_subscriptions_per_client() -> usize {
        1000
    }
    /// Built-in `limits.max_trie_nodes`.
    pub fn max_trie_nodes() -> usize {
        1_000_000
    }
    /// Built-in `limits.topic_alias_maximum`.
    pub fn topic_alias_maximum() -> u16 {
        64
    }
    /// Largest MQTT packet (remaining length 268,435,455 bytes); the remote default.
    pub fn max_packet_size() -> u64 {
        268_435_455
    }
    /// Remote `inflight`: a window that does not collapse on a long link
    /// (4,000 in flight over a 50 ms round trip is 80,000 msg/s; see
    /// docs/delivery.md, "Windows for long links").
    pub fn inflight() -> u16 {
        4000
    }
    /// `status.online`.
    pub fn status_online() -> &'static str {
        "online"
    }
    /// `status.offline`.
    pub fn status_offline() -> &'static str {
        "offline"
    }
    /// Built-in `limits.max_connections`.
    pub fn max_connections() -> usize {
        10_000
    }
    /// Built-in `limits.max_packet_size`.
    pub fn builtin_max_packet_size() -> u64 {
        1 << 20
    }
    /// Built-in `limits.max_queued_messages`.
    pub fn max_queued_messages() -> usize {
        1000
    }
    /// Built-in `limits.max_inflight`.
    pub fn max_inflight() -> u16 {
        20
    }
    /// Pipe `queue.size`.
    pub fn queue_size() -> usize {
        1000
    }
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Brokers by name, in file order.
    #[serde(default)]
    pub brokers: Option<Spanned<Entries<RawBroker>>>,
    /// Pipes by name, in file order.
    #[serde(default)]
    pub pipes: Option<Spanned<Entries<RawPipe>>>,
    /// Drain deadline on shutdown.
    #[serde(default)]
    pub shutdown_timeout: Option<Text>,
    /// Metrics/health HTTP server.
    #[serde(default)]
    pub metrics: Option<Spanned<RawMetrics>>,
    /// Forwarding watchdog.
    #[serde(default)]
    pub watchdog: Option<Spanned<RawWatchdog>>,
    /// The local store (spools, built-in broker state).
    #[serde(default)]
    pub storage: Option<Spanned<RawStorage>>,
}

/// `storage:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// Data directory.
    #[serde(default)]
    pub dir: Option<Text>,
    /// `batch`, `never`, or an interval such as `10ms`.
    #[serde(default)]
    pub fsync: Option<Text>,
    /// Bound on the bytes the store's records take.
    #[serde(default)]
    pub max_bytes: Option<Text>,
}

/// `metrics:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// On/off.
    #[serde(default)]
    pub enabled: Option<Text>,
    /// `host:port` to bind.
    #[serde(default)]
    pub listen: Option<Text>,
}

/// `watchdog:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWatchdog {
    /// Stall threshold.
    #[serde(default)]
    pub stall_after: Option<Text>,
}

/// One broker. Remote and built-in settings share this struct so that a field
/// of the wrong kind gets a precise error from `compile` ("`listen` is only for
/// `type: builtin`") rather than a generic serde one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBroker {
    /// `remote` or `builtin`.
    #[serde(rename = "type", default)]
    pub kind: Option<Text>,
    // ---- remote ----
    /// Endpoint URLs in priority order (a single string is a one-element list).
    #[serde(default)]
    pub endpoints: Option<Spanned<TextList>>,
    /// MQTT version: `5`, `3.1.1` or `3.1` (absent: 5, falling back to 3.1.1).
    #[serde(default)]
    pub protocol: Option<Text>,
    /// Client id.
    #[serde(default)]
    pub client_id: Option<Text>,
    /// Username.
    #[serde(default)]
    pub username: Option<Text>,
    /// Password (inline; prefer `${VAR}` or `password_file`).
    #[serde(default)]
    pub password: Option<Text>,
    /// Remote: file holding our password. Built-in: Mosquitto password file.
    #[serde(default)]
    pub password_file: Option<Text>,
    /// Keepalive interval.
    #[serde(default)]
    pub keepalive: Option<Text>,
    /// Clean session flag.
    #[serde(default)]
    pub clean_session: Option<Text>,
    /// TLS settings.
    #[serde(default)]
    pub tls: Option<Spanned<RawTls>>,
    /// Extra HTTP headers of the WebSocket upgrade request (`ws://`/`wss://` endpoints).
    #[serde(default)]
    pub ws_headers: Option<Spanned<std::collections::BTreeMap<String, Text>>>,
    /// Reconnect backoff.
    #[serde(default)]
    pub reconnect: Option<Spanned<RawReconnect>>,
    /// Failback to the primary.
    #[serde(default)]
    pub failback: Option<Spanned<RawFailback>>,
    /// Connect timeout.
    #[serde(default)]
    pub connect_timeout: Option<Text>,
    /// Max packet size.
    #[serde(default)]
    pub max_packet_size: Option<Text>,
    /// Inflight window.
    #[serde(default)]
    pub inflight: Option<Text>,
    /// Status notifications.
    #[serde(default)]
    pub status: Option<Spanned<RawStatus>>,
    /// Needed for readiness.
    #[serde(default)]
    pub required: Option<Text>,
    // ---- built-in ----
    /// Listeners.
    #[serde(default)]
    pub listen: Option<Spanned<Vec<Spanned<OrMap<RawListener>>>>>,
    /// Anonymous access.
    #[serde(default)]
    pub allow_anonymous: Option<Text>,
    /// Mosquitto ACL file.
    #[serde(default)]
    pub acl_file: Option<Text>,
    /// Limits.
    #[serde(default)]
    pub limits: Option<Spanned<RawLimits>>,
    /// `$SYS` publishing interval (`0` / `off` disables).
    #[serde(default)]
    pub sys_interval: Option<Text>,
    /// Built-in: persistent sessions away this long are removed (`never`: kept).
    #[serde(default)]
    pub session_expiry: Option<Text>,
}

/// Remote `tls:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// CA bundle.
    #[serde(default)]
    pub ca_file: Option<Text>,
    /// Client certificate.
    #[serde(default)]
    pub cert_file: Option<Text>,
    /// Client key.
    #[serde(default)]
    pub key_file: Option<Text>,
    /// SNI / verification name override.
    #[serde(default)]
    pub server_name: Option<Text>,
    /// ALPN protocols.
    #[serde(default)]
    pub alpn: Option<Vec<Text>>,
    /// Skip verification.
    #[serde(default)]
    pub insecure: Option<Text>,
}

/// Remote `reconnect:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReconnect {
    /// First delay.
    #[serde(default)]
    pub min: Option<Text>,
    /// Largest delay.
    #[serde(default)]
    pub max: Option<Text>,
    /// Jitter on/off.
    #[serde(default)]
    pub jitter: Option<Text>,
    /// Uptime before the backoff resets.
    #[serde(default)]
    pub stable_after: Option<Text>,
    /// TCP probes while backing off (`0s` = off).
    #[serde(default)]
    pub probe_interval: Option<Text>,
}

/// Remote `failback:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailback {
    /// On/off.
    #[serde(default)]
    pub enabled: Option<Text>,
    /// Time between probes.
    #[serde(default)]
    pub probe_interval: Option<Text>,
    /// Good probes needed.
    #[serde(default)]
    pub probes_required: Option<Text>,
}

/// Remote `status:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    /// On/off.
    #[serde(default)]
    pub enabled: Option<Text>,
    /// Topic.
    #[serde(default)]
    pub topic: Option<Text>,
    /// Online payload.
    #[serde(default)]
    pub online: Option<Text>,
    /// Offline payload.
    #[serde(default)]
    pub offline: Option<Text>,
}

/// A built-in listener in long form (the short form is just the URL).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// `tcp://host:port` or `tls://host:port`.
    #[serde(default)]
    pub url: Option<Text>,
    /// Server certificate (TLS).
    #[serde(default)]
    pub cert_file: Option<Text>,
    /// Server key (TLS).
    #[serde(default)]
    pub key_file: Option<Text>,
    /// CA for client certificates.
    #[serde(default)]
    pub client_ca_file: Option<Text>,
    /// Require client certificates.
    #[serde(default)]
    pub require_client_cert: Option<Text>,
    /// Certificate CN becomes the username.
    #[serde(default)]
    pub cert_cn_as_username: Option<Text>,
}

/// Built-in `limits:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Connections.
    #[serde(default)]
    pub max_connections: Option<Text>,
    /// Packet size.
    #[serde(default)]
    pub max_packet_size: Option<Text>,
    /// Queued per session.
    #[serde(default)]
    pub max_queued_messages: Option<Text>,
    /// Inflight per client.
    #[serde(default)]
    pub max_inflight: Option<Text>,
    /// Old name of `handshake_timeout` (accepted with a warning).
    #[serde(default)]
    pub connect_timeout: Option<Text>,
    /// Accept → CONNECT accepted.
    #[serde(default)]
    pub handshake_timeout: Option<Text>,
    /// Sockets in their handshake at once.
    #[serde(default)]
    pub max_pending_handshakes: Option<Text>,
    /// Pending handshakes per source.
    #[serde(default)]
    pub max_pending_per_ip: Option<Text>,
    /// Levels of filters and topic names.
    #[serde(default)]
    pub max_topic_levels: Option<Text>,
    /// Filters honoured per SUBSCRIBE.
    #[serde(default)]
    pub max_filters_per_subscribe: Option<Text>,
    /// Subscriptions per client session.
    #[serde(default)]
    pub max_subscriptions_per_client: Option<Text>,
    /// Subscription trie nodes over all clients.
    #[serde(default)]
    pub max_trie_nodes: Option<Text>,
    /// Topic aliases an MQTT 5 client may set (0: none).
    #[serde(default)]
    pub topic_alias_maximum: Option<Text>,
}

/// One pipe.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipe {
    /// Source broker.
    #[serde(default)]
    pub from: Option<Text>,
    /// Destination broker.
    #[serde(default)]
    pub to: Option<Text>,
    /// Filters: `"a/#"` or `{filter: "a/#", qos: 1}`.
    #[serde(default)]
    pub topics: Option<Spanned<Vec<Spanned<OrMap<RawTopic>>>>>,
    /// Exclusion filters.
    #[serde(default)]
    pub exclude: Option<Vec<Text>>,
    /// Remap rules, first match wins.
    #[serde(default)]
    pub remap: Option<Vec<Spanned<RawRemapRule>>>,
    /// `{max: N}` or `{force: N}`.
    #[serde(default)]
    pub qos: Option<Spanned<RawQos>>,
    /// `keep`, `clear` or `as_published`.
    #[serde(default)]
    pub retain: Option<Text>,
    /// `keep` (default) or `remap`: the MQTT 5 response topic.
    #[serde(default)]
    pub response_topic: Option<Text>,
    /// MQTT 5 user properties to remove and add.
    #[serde(default)]
    pub user_properties: Option<Spanned<RawUserProperties>>,
    /// Hop-count loop guard across chains of bridges.
    #[serde(default)]
    pub loop_guard: Option<Spanned<RawLoopGuard>>,
    /// Largest payload forwarded.
    #[serde(default)]
    pub max_payload: Option<Text>,
    /// Rate limit.
    #[serde(default)]
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    /// QoS 0 queue.
    #[serde(default)]
    pub queue: Option<Spanned<RawQueue>>,
    /// Static loop check on/off.
    #[serde(default)]
    pub loop_check: Option<Text>,
    /// `spool` (default) or `end_to_end`.
    #[serde(default)]
    pub delivery: Option<Text>,
    /// `memory` (default) or `spool`.
    #[serde(default)]
    pub qos0: Option<Text>,
    /// Spool bound and full policy.
    #[serde(default)]
    pub spool: Option<Spanned<RawSpool>>,
}

/// A pipe's `user_properties:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUserProperties {
    /// Pairs appended after the message's own, in file order.
    #[serde(default)]
    pub add: Option<Spanned<Entries<Text>>>,
    /// Names whose every pair is removed.
    #[serde(default)]
    pub remove: Option<Vec<Text>>,
}

/// A pipe's `loop_guard:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoopGuard {
    /// Name of the hop-count user property.
    #[serde(default)]
    pub hop_property: Option<Text>,
    /// Hops at which a message is dropped.
    #[serde(default)]
    pub max_hops: Option<Text>,
}

/// A pipe's `spool:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpool {
    /// Bound on the pipe's spooled bytes.
    #[serde(default)]
    pub max_bytes: Option<Text>,
    /// `block` (default) or `drop_oldest`.
    #[serde(default)]
    pub when_full: Option<Text>,
}

/// A filter in long form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopic {
    /// The filter.
    #[serde(default)]
    pub filter: Option<Text>,
    /// Subscription QoS.
    #[serde(default)]
    pub qos: Option<Text>,
}

/// One remap rule; exactly one of the three pairs must be present.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRemapRule {
    /// Prefix rule: text removed from the start.
    #[serde(default)]
    pub strip_prefix: Option<Text>,
    /// Prefix rule: text put in front.
    #[serde(default)]
    pub add_prefix: Option<Text>,
    /// Template rule: the filter whose captures the template uses.
    #[serde(default)]
    pub from: Option<Text>,
    /// Template rule: the new topic with `{1}`, `{2}`… and `{#}`.
    #[serde(default)]
    pub to: Option<Text>,
    /// Regex rule: the pattern.
    #[serde(default)]
    pub regex: Option<Text>,
    /// Regex rule: the replacement with `$1`, `${name}`.
    #[serde(default)]
    pub replace: Option<Text>,
}

/// `qos:` of a pipe.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQos {
    /// Cap.
    #[serde(default)]
    pub max: Option<Text>,
    /// Force.
    #[serde(default)]
    pub force: Option<Text>,
}

/// `rate_limit:` of a pipe.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Messages per second.
    #[serde(default)]
    pub per_second: Option<Text>,
    /// Burst size.
    #[serde(default)]
    pub burst: Option<Text>,
}

/// `queue:` of a pipe.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    /// Capacity.
    #[serde(default)]
    pub size: Option<Text>,
    /// `drop_oldest` or `drop_newest`.
    #[serde(default)]
    pub when_full: Option<Text>,
}

/// A YAML map kept in file order with located keys (duplicate keys are already
/// refused by the parser).
#[derive(Debug)]
pub struct Entries<V>(pub Vec<(Text, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map from names to settings")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Entries(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(k) = m.next_key::<Text>()? {
                    v.push((k, m.next_value()?));
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(Vis(PhantomData))
    }
}

/// A list of strings, where a single string stands for a one-element list
/// (`endpoints: mqtt://a:1883`). Items of a real list keep their own
/// location; the single string's location is unknown here, so
/// [`TextList::located`] gives it the location of the whole value.
#[derive(Debug)]
pub struct TextList(pub Vec<Text>);

impl TextList {
    /// The items, each with a known location (the single-string form takes
    /// the location of `whole`).
    pub fn located(whole: &Spanned<TextList>) -> Vec<Text> {
        whole
            .value
            .0
            .iter()
            .map(|t| {
                if t.referenced == serde_saphyr::Location::UNKNOWN {
                    Spanned::new(t.value.clone(), whole.referenced, whole.defined)
                } else {
                    t.clone()
                }
            })
            .collect()
    }
}

impl<'de> Deserialize<'de> for TextList {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis;
        impl<'de> Visitor<'de> for Vis {
            type Value = TextList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of strings (or one string)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                let unknown = serde_saphyr::Location::UNKNOWN;
                Ok(TextList(vec![Spanned::new(
                    v.to_string(),
                    unknown,
                    unknown,
                )]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(t) = s.next_element::<Text>()? {
                    v.push(t);
                }
                Ok(TextList(v))
            }
        }
        d.deserialize_any(Vis)
    }
}

/// A list item written either as a short string or as a map.
#[derive(Debug)]
pub enum OrMap<T> {
    /// `- a/#`
    Short(String),
    /// `- {filter: a/#, qos: 1}`
    Full(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OrMap<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Vis<T> {
            type Value = OrMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a map")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(OrMap::Short(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(OrMap::Short(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(OrMap::Short(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(OrMap::Short(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(m)).map(OrMap::Full)
            }
        }
        d.deserialize_any(Vis(PhantomData))
    }
}
