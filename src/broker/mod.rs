//! The built-in MQTT 3.1.1 broker.
//!
//! Shape (as rumqttd): [`listener`] accepts TCP/TLS connections under a
//! connection semaphore; each connection runs a reader and a writer task
//! ([`connection`]) that only do IO, authentication and ACL checks; ONE router
//! task ([`router`]) owns every session, subscription and retained message and
//! drives the shared protocol state machines (`protocol::Outgoing` towards
//! subscribers, `protocol::Incoming` from publishers). Everything reaches the
//! router over channels; nothing is locked. In-process links ([`local`]) are
//! sessions like any other, so a pipe cannot tell a local broker from a remote one.
//!
//! MQTT 3.1 (`MQIsdp`, level 3) is refused with CONNACK 0x01 (unacceptable
//! protocol version), as is any level other than 4.

mod acl;
mod auth;
mod connection;
mod listener;
mod local;
mod outlet;
mod retained;
mod router;
mod session;
mod stats;
mod sys;
mod tls;
mod websocket;

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
pub use stats::{BrokerStats, DropReason, RefuseReason};

/// Default `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Default `max_packet_size` (bytes, whole packet).
pub const DEFAULT_MAX_PACKET_SIZE: usize = 1024 * 1024;
/// Default `max_inflight` (unacknowledged QoS 1/2 messages per client).
pub const DEFAULT_MAX_INFLIGHT: u16 = 100;
/// Default `max_queued_messages` per session.
pub const DEFAULT_MAX_QUEUED: usize = 1000;
/// Default time a new socket has to send its CONNECT.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Time a new socket has to send CONNECT.
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            max_queued_messages: DEFAULT_MAX_QUEUED,
            overflow: OverflowPolicy::DropOldest,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// Errors starting a broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A listener address could not be bound.
    #[error("broker {broker}: cannot listen on {addr}: {source}")]
    Bind {
        /// Broker name.
        broker: String,
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
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
    /// The password file is unreadable or malformed.
    #[error("broker {0}: {1}")]
    Password(String, #[source] AuthError),
    /// The ACL file is unreadable or malformed.
    #[error("broker {0}: {1}")]
    Acl(String, #[source] AclError),
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
                .map_err(|source| BrokerError::Bind {
                    broker: name.clone(),
                    addr: l.addr,
                    source,
                })?;
            let transport = listener::Transport::new(acceptor, l.websocket);
            bound.push((l.addr, listener, transport, l.tls.clone()));
        }
        let counters = Arc::new(stats::Counters::default());
        let tracker = TaskTracker::new();
        let limits = Arc::new(opts.limits.clone());
        let router = router::spawn(
            &tracker,
            name.clone(),
            security.clone(),
            limits.clone(),
            counters.clone(),
            opts.sys_interval,
            shutdown.clone(),
        );
        let semaphore = Arc::new(tokio::sync::Semaphore::new(opts.limits.max_connections));
        let mut addrs = Vec::new();
        for (configured, listener, transport, tls) in bound {
            let addr = listener.local_addr().map_err(|source| BrokerError::Bind {
                broker: name.clone(),
                addr: configured,
                source,
            })?;
            addrs.push(addr);
            let ctx = listener::Context {
                broker: name.clone(),
                router: router.clone(),
                security: security.clone(),
                limits: limits.clone(),
                counters: counters.clone(),
                semaphore: semaphore.clone(),
                shutdown: shutdown.clone(),
                tracker: tracker.clone(),
                cert_cn_as_username: tls.as_ref().is_some_and(|t| t.cert_cn_as_username),
            };
            tracker.spawn(listener::run(listener, transport, ctx));
        }
        tracker.close();
        tracing::info!(broker = %name, addrs = ?addrs, "broker started");
        Ok(Broker {
            name,
            addrs,
            router,
            counters,
            tracker,
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
    /// A second link with the same id takes the session over.
    pub fn link(&self, client_id: &str, clean_session: bool) -> (Link, mpsc::Receiver<Delivery>) {
        local::open(
            &self.name,
            &self.router,
            &self.tracker,
            client_id,
            clean_session,
        )
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
