//! The built-in MQTT broker: 3.1, 3.1.1 and 5 clients on the same listeners.
//!
//! Shape (as rumqttd): [`listener`] accepts TCP/TLS connections under a
//! handshake budget ([`handshake`]), and a connection takes its place under
//! the connection semaphore once its CONNECT is accepted; each connection then runs one task
//! ([`connection`]: reads and writes in one loop) that only does IO, authentication and ACL checks; ONE router
//! task ([`router`]) owns every session, subscription and retained message and
//! drives the shared protocol state machines (`protocol::Outgoing` towards
//! subscribers, `protocol::Incoming` from publishers). Everything reaches the
//! router over channels; nothing is locked. In-process links ([`local`]) are
//! sessions like any other, so a pipe cannot tell a local broker from a remote one;
//! but they live in their own session namespace: a network client cannot
//! resume or take over a link's session, and a CONNECT with a link's client
//! id is refused with CONNACK 0x02 (identifier rejected).
//!
//! A connection's version comes from its CONNECT (`protocol::version`):
//! `MQIsdp` level 3, `MQTT` level 4 and `MQTT` level 5 are spoken; another
//! level of a known name is answered with CONNACK 0x01 (3.x) or 0x84 (5 and
//! above) and closed, an unknown protocol name is closed without an answer
//! [MQTT-3.1.2-1, 3.1.2-2]. Messages cross versions as the version-free
//! `protocol::Message` (properties dropped towards 3.x clients).

mod acl;
mod auth;
mod connection;
mod handshake;
mod listener;
mod local;
mod outlet;
mod persist;
mod problem;
pub(crate) mod record;
mod retained;
mod router;
mod session;
mod stats;
mod sys;
mod tls;
mod v5conn;
mod websocket;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::link::{Delivery, Link};

pub use acl::{Acl, AclError, Op as AclOp};
pub use auth::{AuthError, PasswordFile};
pub use stats::{BrokerStats, DropReason, RefuseReason, SubRefuseReason};

/// Default `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Default `max_packet_size` (bytes, whole packet).
pub const DEFAULT_MAX_PACKET_SIZE: usize = 1024 * 1024;
/// Default `max_inflight` (unacknowledged QoS 1/2 messages per client).
pub const DEFAULT_MAX_INFLIGHT: u16 = 100;
/// Default `max_queued_messages` per session.
pub const DEFAULT_MAX_QUEUED: usize = 1000;
/// Default time a new socket has to get through its handshake (transport
/// handshake, CONNECT, credential check).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `max_pending_handshakes` (sockets between accept and an accepted CONNECT).
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 1000;
/// Default `max_pending_per_ip` (pending handshakes per IPv4 address or IPv6 /64).
pub const DEFAULT_MAX_PENDING_PER_IP: usize = 64;
/// Default `max_topic_levels` of filters and published topic names (Mosquitto's limit).
pub const DEFAULT_MAX_TOPIC_LEVELS: usize = 200;
/// Default `max_filters_per_subscribe`.
pub const DEFAULT_MAX_FILTERS_PER_SUBSCRIBE: usize = 100;
/// Default `max_subscriptions_per_client`.
pub const DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT: usize = 1000;
/// Default `max_trie_nodes`: distinct filter levels over all subscriptions.
pub const DEFAULT_MAX_TRIE_NODES: usize = 1_000_000;

/// Options of one built-in broker.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Broker name (log field `broker`, link name).
    pub name: String,
    /// Listeners to bind (port 0 allowed; see [`Broker::local_addrs`]).
    pub listeners: Vec<ListenerOptions>,
    /// Accept clients without username (and, with TLS CN mapping, without certificate).
    pub allow_anonymous: bool,
    /// Password file in `mosquitto_passwd` format; `None` = no password checks.
    pub password_file: Option<PathBuf>,
    /// ACL file in Mosquitto's format; `None` = everything allowed.
    pub acl_file: Option<PathBuf>,
    /// Resource limits.
    pub limits: Limits,
    /// Publish the `$SYS/broker/...` tree this often; `None` = off.
    pub sys_interval: Option<Duration>,
    /// Where persistent sessions and retained messages are kept across
    /// restarts; `None`: in memory only (lost when the process ends).
    pub store: Option<crate::store::Store>,
    /// Persistent network sessions away this long are removed with their
    /// messages; `None` = never (Mosquitto's `persistent_client_expiration`).
    pub session_expiry: Option<Duration>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            name: "broker".into(),
            listeners: Vec::new(),
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
            limits: Limits::default(),
            sys_interval: None,
            store: None,
            session_expiry: None,
        }
    }
}

/// One listener.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// Address to bind.
    pub addr: SocketAddr,
    /// TLS settings; `None` = plain TCP.
    pub tls: Option<ServerTls>,
    /// Carry MQTT in WebSocket binary frames (`ws://`, or `wss://` with `tls`):
    /// any request path, subprotocol `mqtt`, for browser clients.
    pub websocket: bool,
}

/// TLS settings of a listener.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA bundle used to verify client certificates.
    pub client_ca_file: Option<PathBuf>,
    /// Refuse clients without a valid certificate (needs `client_ca_file`).
    pub require_client_cert: bool,
    /// Use the client certificate's subject CN as the username (password not checked).
    pub cert_cn_as_username: bool,
}

/// What a full session queue does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Drop the oldest queued message to make room (default).
    #[default]
    DropOldest,
    /// Drop the new message.
    DropNewest,
}

/// Resource limits; exceeding one closes (or drops for) that client only.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent network connections; more are closed at once.
    pub max_connections: usize,
    /// Largest accepted packet, in bytes (fixed header included).
    pub max_packet_size: usize,
    /// Unacknowledged QoS 1/2 messages in flight towards one client.
    pub max_inflight: u16,
    /// Messages queued per session beyond the inflight window (also bounds
    /// the QoS 0 backlog of a slow consumer).
    pub max_queued_messages: usize,
    /// What happens at `max_queued_messages`.
    pub overflow: OverflowPolicy,
    /// Time a new socket has from accept until its CONNECT is accepted
    /// (TLS handshake, CONNECT, credential check).
    pub handshake_timeout: Duration,
    /// Sockets in their handshake at once, over all listeners; a new socket
    /// beyond this closes the oldest pending one. They do not count against
    /// `max_connections` until their CONNECT is accepted.
    pub max_pending_handshakes: usize,
    /// Pending handshakes per source (IPv4 address or IPv6 /64); more are
    /// closed at once.
    pub max_pending_per_ip: usize,
    /// Most levels in a network client's subscription filter (refused with
    /// SUBACK 0x80) or published topic name (the connection is closed).
    pub max_topic_levels: usize,
    /// Filters of one SUBSCRIBE honoured; the rest are refused (0x80).
    pub max_filters_per_subscribe: usize,
    /// Subscriptions one network client's session may hold.
    pub max_subscriptions_per_client: usize,
    /// Nodes of the subscription trie (one per distinct filter level prefix)
    /// network clients may grow it to; in-process links are exempt.
    pub max_trie_nodes: usize,
    /// Topic aliases an MQTT 5 client may set on its PUBLISHes to us (our
    /// CONNACK's Topic Alias Maximum; 0: none, the property is left out).
    pub topic_alias_maximum: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            max_queued_messages: DEFAULT_MAX_QUEUED,
            overflow: OverflowPolicy::DropOldest,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
            max_pending_per_ip: DEFAULT_MAX_PENDING_PER_IP,
            max_topic_levels: DEFAULT_MAX_TOPIC_LEVELS,
            max_filters_per_subscribe: DEFAULT_MAX_FILTERS_PER_SUBSCRIBE,
            max_subscriptions_per_client: DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT,
            max_trie_nodes: DEFAULT_MAX_TRIE_NODES,
            topic_alias_maximum: DEFAULT_TOPIC_ALIAS_MAXIMUM,
        }
    }
}

/// Default `topic_alias_maximum`: topic aliases an MQTT 5 client may set on
/// its PUBLISHes to us.
pub const DEFAULT_TOPIC_ALIAS_MAXIMUM: u16 = 64;

/// What MQTT 5 clients are told and held to: our Receive Maximum is
/// `max_inflight` (the same window as towards them), our Maximum Packet
/// Size `max_packet_size`, our Topic Alias Maximum `topic_alias_maximum`,
/// the longest Session Expiry Interval the
/// broker's `session_expiry` (none: any). No enhanced authentication
/// method is accepted (0x8C). Retain, wildcards, subscription identifiers
/// and shared subscriptions are available.
pub(crate) fn server_limits(
    limits: &Limits,
    session_expiry: Option<Duration>,
) -> crate::protocol::negotiate::ServerLimits {
    crate::protocol::negotiate::ServerLimits {
        receive_maximum: limits.max_inflight.max(1),
        maximum_packet_size: u32::try_from(limits.max_packet_size).unwrap_or(u32::MAX),
        topic_alias_maximum: limits.topic_alias_maximum,
        max_session_expiry: session_expiry.map_or(u32::MAX, |d| {
            u32::try_from(d.as_secs()).unwrap_or(u32::MAX - 1)
        }),
        ..Default::default()
    }
}

/// Errors starting a broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A listener address could not be bound.
    ///
    /// The message already includes the IO error, so it is a plain field and
    /// not a `source`: an error chain printed in full shows it once.
    #[error("broker {broker}: cannot listen on {addr}: {error}")]
    Bind {
        /// Broker name.
        broker: String,
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        error: std::io::Error,
    },
    /// TLS files could not be loaded.
    #[error("broker {broker}: TLS listener {addr}: {reason}")]
    Tls {
        /// Broker name.
        broker: String,
        /// The listener address.
        addr: SocketAddr,
        /// What is wrong.
        reason: String,
    },
    /// The password file is unreadable or malformed (the message includes
    /// the cause, so it is not chained as a `source`).
    #[error("broker {0}: {1}")]
    Password(String, AuthError),
    /// The ACL file is unreadable or malformed (cause included, not chained).
    #[error("broker {0}: {1}")]
    Acl(String, AclError),
    /// The broker's keyspaces in the store could not be opened.
    #[error("broker {0}: {1}")]
    Store(String, crate::store::StoreError),
}

/// Shared, read-only security settings used by every connection.
#[derive(Debug)]
pub(crate) struct Security {
    pub allow_anonymous: bool,
    pub passwords: Option<PasswordFile>,
    pub acl: Option<Acl>,
}

/// A running broker. Dropping it does not stop it; cancel the token given to
/// [`Broker::start`], then await [`Broker::closed`].
#[derive(Debug, Clone)]
pub struct Broker {
    name: String,
    addrs: Vec<SocketAddr>,
    router: router::RouterHandle,
    counters: Arc<stats::Counters>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// The client id of the bridge's own in-process link on built-in broker
/// `broker` (a network CONNECT with it is refused).
pub fn bridge_link_id(broker: &str) -> String {
    format!("mqbridge-bridge-{broker}")
}

/// Keeps a link held down (see [`Broker::hold_link_down`]) until dropped.
#[derive(Debug)]
pub struct LinkHold {
    _release: tokio_util::sync::DropGuard,
}

impl Broker {
    /// Loads the password and ACL files and TLS material, binds every
    /// listener and starts the router and the accept loops. Everything stops
    /// when `shutdown` is cancelled.
    pub async fn start(
        opts: BrokerOptions,
        shutdown: CancellationToken,
    ) -> Result<Broker, BrokerError> {
        let name = opts.name.clone();
        let passwords = match &opts.password_file {
            Some(p) => {
                Some(PasswordFile::load(p).map_err(|e| BrokerError::Password(name.clone(), e))?)
            }
            None => None,
        };
        let acl = match &opts.acl_file {
            Some(p) => Some(Acl::load(p).map_err(|e| BrokerError::Acl(name.clone(), e))?),
            None => None,
        };
        let security = Arc::new(Security {
            allow_anonymous: opts.allow_anonymous,
            passwords,
            acl,
        });
        let mut bound = Vec::new();
        for l in &opts.listeners {
            let acceptor = match &l.tls {
                Some(tls) => Some(tls::acceptor(tls).map_err(|reason| BrokerError::Tls {
                    broker: name.clone(),
                    addr: l.addr,
                    reason,
                })?),
                None => None,
            };
            let listener = tokio::net::TcpListener::bind(l.addr)
                .await
                .map_err(|error| BrokerError::Bind {
                    broker: name.clone(),
                    addr: l.addr,
                    error,
                })?;
            let transport = listener::Transport::new(acceptor, l.websocket);
            bound.push((l.addr, listener, transport, l.tls.clone()));
        }
        let counters = Arc::new(stats::Counters::default());
        let tracker = TaskTracker::new();
        let limits = Arc::new(opts.limits.clone());
        let mut journal = match &opts.store {
            Some(store) => persist::Journal::open(store, &name, counters.clone())
                .map_err(|e| BrokerError::Store(name.clone(), e))?,
            None => persist::Journal::disabled(counters.clone()),
        };
        let loaded = journal.load(&name);
        let persistence = router::Persistence {
            loaded,
            journal,
            session_expiry: opts.session_expiry,
        };
        let keepalive_clock = outlet::KeepaliveClock::new();
        let config = router::RouterConfig {
            name: name.clone(),
            keepalive_clock,
            security: security.clone(),
            limits: limits.clone(),
            counters: counters.clone(),
            sys_interval: opts.sys_interval,
        };
        let router = router::spawn(&tracker, config, persistence, shutdown.clone());
        let semaphore = Arc::new(tokio::sync::Semaphore::new(opts.limits.max_connections));
        let handshakes = Arc::new(handshake::Budget::new(
            opts.limits.max_pending_handshakes,
            opts.limits.max_pending_per_ip,
            opts.limits.handshake_timeout,
            counters.clone(),
        ));
        let server = Arc::new(server_limits(&opts.limits, opts.session_expiry));
        let mut addrs = Vec::new();
        for (configured, listener, transport, tls) in bound {
            let addr = listener.local_addr().map_err(|error| BrokerError::Bind {
                broker: name.clone(),
                addr: configured,
                error,
            })?;
            addrs.push(addr);
            let ctx = connection::Context {
                broker: name.clone(),
                router: router.clone(),
                security: security.clone(),
                limits: limits.clone(),
                counters: counters.clone(),
                semaphore: semaphore.clone(),
                handshakes: handshakes.clone(),
                shutdown: shutdown.clone(),
                tracker: tracker.clone(),
                cert_cn_as_username: tls.as_ref().is_some_and(|t| t.cert_cn_as_username),
                server: server.clone(),
                keepalive_clock,
            };
            tracker.spawn(listener::run(listener, transport, ctx));
        }
        tracker.close();
        tracing::info!(broker = %name, addrs = %crate::metrics::jsonlog::list(&addrs), "broker started");
        Ok(Broker {
            name,
            addrs,
            router,
            counters,
            tracker,
            shutdown,
        })
    }

    /// The broker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The addresses the listeners actually bound (real ports for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// Opens an in-process link with session `client_id`: the pipe-facing
    /// [`Link`] and its deliveries. A persistent session (`clean_session =
    /// false`) keeps subscriptions and unacked QoS 1/2 messages across links.
    /// A second link with the same id takes the session over (the first
    /// link is then closed for good). Link ids are a namespace of their own:
    /// no network client can reach the session, and a network CONNECT with
    /// the id of an existing link session is refused (0x02). A link closed
    /// for any other reason re-attaches by itself (see [`local`]).
    pub fn link(&self, client_id: &str, clean_session: bool) -> (Link, mpsc::Receiver<Delivery>) {
        local::open(
            &self.name,
            &self.router,
            &self.tracker,
            &self.shutdown,
            client_id,
            clean_session,
        )
    }

    /// Fault drill: closes the attachment of link `client_id` as a failure
    /// would and refuses its re-attach attempts (its state shows
    /// `Disconnected`) until the returned guard is dropped; then the link
    /// re-attaches within its retry interval (at most 2 s). `None` when no
    /// such link session exists.
    pub async fn hold_link_down(&self, client_id: &str) -> Option<LinkHold> {
        let hold = CancellationToken::new();
        let (reply, rx) = tokio::sync::oneshot::channel();
        let event = router::Event::HoldLink {
            client_id: client_id.to_owned(),
            hold: hold.clone(),
            reply,
        };
        if !self.router.send(event).await {
            return None;
        }
        rx.await.unwrap_or(false).then(|| LinkHold {
            _release: hold.drop_guard(),
        })
    }

    /// A snapshot of the counters and gauges.
    pub fn stats(&self) -> BrokerStats {
        self.counters.snapshot()
    }

    /// Resolves when every task of the broker has ended (after cancellation).
    pub async fn closed(&self) {
        self.tracker.wait().await;
    }
}
