//! The router: ONE task owns every session, the subscription trie and the
//! retained store, fed by a channel of [`Event`]s (no locks, as rumqttd's
//! router). It drives the shared protocol state machines and writes to each
//! client through its [`Outlet`]; it never awaits a client.
//!
//! By concern: [`sessions`] (CONNECT, takeover, disconnects), [`routing`]
//! (publishes, acknowledgements, subscriptions, fan-out) and [`parked`]
//! (publishes held back while a link session is full); [`durable`] holds
//! back the acknowledgements of publishes stored for persistent sessions
//! until the store's group commit has them on disk; [`shared`] holds the
//! share groups of shared subscriptions.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::acl::Op;
use super::outlet::{KeepaliveClock, Outlet};
use super::persist::{Journal, Loaded};
use super::retained::Retained;
use super::session::{Attached, ConnId, Origin, Session, SessionKey, Subscription, V5Attached};
use super::stats::{Counters, SubRefuseReason};
use super::sys;
use super::{Limits, Security};
use crate::link::{AckToken, LinkError, PublishDone};
use crate::protocol::reason::ReasonCode;
use crate::protocol::v4::{
    ConnAck, ConnectReturnCode, Packet, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use crate::protocol::{IncomingAction, Message, MessageProperties, QoS, WireQoS};
use crate::topic::FilterTrie;

/// Capacity of the router's inbox: publishers wait (backpressure) when the
/// router is this far behind.
const INBOX: usize = 4096;
/// Control packets (acks) beyond the QoS 0 and inflight bounds a client may
/// leave unread before its connection is aborted.
const HARD_CAP_SLACK: usize = 1024;
/// How often session expiry, will delays and retained messages' expiry
/// are checked.
const LIFETIME_TICK: Duration = Duration::from_secs(1);
/// Events handled per wake-up.
const BATCH: usize = 256;
/// Un-acknowledged publishes the router may hold parked for one network
/// connection; its reader stops reading at this count. A client keeping to
/// its own inflight window (typically 10–100) never gets near it.
pub(crate) const MAX_PARKED: usize = 1024;

mod durable;
mod parked;
mod routing;
mod sessions;
mod shared;

use durable::Waiter;

use parked::{Parked, forget_parked};
use routing::count_trie_nodes;

type SessionId = u64;

/// How a session's connection is ended by the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takeover {
    /// A new connection (or link) of the same key takes the session.
    Replaced,
    /// Closed with no successor (a link re-attaches).
    Closed,
}

pub(crate) use crate::protocol::session::AckKind as Ack;

/// Where a SUBACK/UNSUBACK goes.
#[derive(Debug)]
pub(crate) enum Reply<T> {
    /// Network client: the packet id to answer with.
    Packet(u16),
    /// Local link: the waiting caller.
    Local(oneshot::Sender<Result<T, LinkError>>),
}

/// Why the router refused a CONNECT (or a link's attach).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectRefused {
    /// A network client sent the client id of an in-process link: CONNACK
    /// 0x02 (identifier rejected) went out on its outlet.
    LinkClientId,
    /// The link is held down ([`super::Broker::hold_link_down`]); it retries.
    LinkHeld,
}

/// Everything the router is told.
#[derive(Debug)]
pub(crate) enum Event {
    /// A client passed CONNECT checks; the router answers CONNACK on `outlet`
    /// and `reply` gets `session_present`, or why it refused.
    Connect {
        /// New connection id.
        conn: ConnId,
        /// Client id (assigned already if the client sent none).
        client_id: String,
        /// Clean session flag.
        clean: bool,
        /// The connection's outlet.
        outlet: Outlet,
        /// Network client (CONNACK sent, ACL applies) or local link.
        origin: Origin,
        /// What an MQTT 5 client negotiated (`None`: 3.x or a link).
        v5: Option<V5Attached>,
        /// Receives `session_present`, or the refusal.
        reply: oneshot::Sender<Result<bool, ConnectRefused>>,
    },
    /// Fault drill: close link `client_id`'s attachment as a failure would,
    /// and refuse its re-attach until `hold` is cancelled. `reply` gets
    /// whether such a link session exists.
    HoldLink {
        /// The link id.
        client_id: String,
        /// Cancelled when the link may come back.
        hold: CancellationToken,
        /// Whether the link session exists.
        reply: oneshot::Sender<bool>,
    },
    /// A PUBLISH from a network client; `refused` is set for a publish the
    /// ACL denied, to `$SYS`, or (MQTT 5) with an invalid UTF-8 payload:
    /// acknowledged (with that reason code to an MQTT 5 client), not routed.
    Publish {
        /// Connection.
        conn: ConnId,
        /// The packet.
        publish: Publish,
        /// Its MQTT 5 properties (`None` from 3.x or when there are none).
        properties: Option<MessageProperties>,
        /// Why it is not routed, if it is not.
        refused: Option<ReasonCode>,
    },
    /// A publish from a local link; `done` once routed.
    LocalPublish {
        /// Link connection.
        conn: ConnId,
        /// The message.
        message: Message,
        /// Completion.
        done: PublishDone,
    },
    /// PUBACK/PUBREC/PUBCOMP from a subscriber.
    Ack {
        /// Connection.
        conn: ConnId,
        /// Which.
        kind: Ack,
        /// Packet id.
        pkid: u16,
    },
    /// An MQTT 5 subscriber's PUBREC with a reason code of 0x80 or more:
    /// the QoS 2 flow ends there, with no PUBREL (spec 4.3.3, 4.9).
    PubRecFailed {
        /// Connection.
        conn: ConnId,
        /// Packet id.
        pkid: u16,
        /// The subscriber's reason code (logged).
        reason: ReasonCode,
    },
    /// PUBREL from a publisher.
    PubRel {
        /// Connection.
        conn: ConnId,
        /// Packet id.
        pkid: u16,
    },
    /// SUBSCRIBE: filters with the subscription asked for, or the reason
    /// code refusing it (0x80 to 3.x), already decided for limits of the
    /// packet, invalid filters and ACL denials.
    Subscribe {
        /// Connection.
        conn: ConnId,
        /// (filter, subscription or refusal).
        filters: Vec<(String, Result<Subscription, ReasonCode>)>,
        /// Where the SUBACK goes.
        reply: Reply<Vec<Option<QoS>>>,
    },
    /// UNSUBSCRIBE.
    Unsubscribe {
        /// Connection.
        conn: ConnId,
        /// Filters.
        filters: Vec<String>,
        /// Where the UNSUBACK goes.
        reply: Reply<()>,
    },
    /// PINGREQ: answered by the router, so a PINGRESP also tells the client
    /// that everything it sent before has been routed.
    Ping {
        /// Connection.
        conn: ConnId,
    },
    /// The store's group commit finished for every epoch up to `through`
    /// (see [`durable`]): acknowledgements waiting on them go out.
    Durable {
        /// Last epoch made durable.
        through: u64,
        /// Whether the sync succeeded.
        result: Result<(), crate::store::StoreError>,
    },
    /// The connection ended; `will` is published (it was checked against
    /// the ACL) after its delay, unless the session resumes first.
    Disconnected {
        /// Connection.
        conn: ConnId,
        /// The will to publish and its MQTT 5 Will Delay Interval.
        will: Option<(Message, Duration)>,
        /// An MQTT 5 client's Session Expiry Interval from its DISCONNECT
        /// (or its CONNECT's when the DISCONNECT set none).
        session_expiry: Option<u32>,
    },
}

/// Sender side of the router's inbox.
#[derive(Debug, Clone)]
pub(crate) struct RouterHandle {
    tx: mpsc::Sender<Event>,
}

/// What [`RouterHandle::send_now`] did.
#[derive(Debug)]
pub(crate) enum SendNow {
    Sent,
    /// The inbox is full: the event, to send with [`RouterHandle::send`].
    Full(Event),
    /// The router is gone.
    Gone,
}

impl RouterHandle {
    /// Sends an event, waiting while the inbox is full; false when the router is gone.
    pub async fn send(&self, event: Event) -> bool {
        self.tx.send(event).await.is_ok()
    }

    /// Sends an event if the inbox has room now; else hands it back.
    pub fn send_now(&self, event: Event) -> SendNow {
        match self.tx.try_send(event) {
            Ok(()) => SendNow::Sent,
            Err(mpsc::error::TrySendError::Full(event)) => SendNow::Full(event),
            Err(mpsc::error::TrySendError::Closed(_)) => SendNow::Gone,
        }
    }
}

/// What the router is started with (besides its persistent state).
#[derive(Debug)]
pub(crate) struct RouterConfig {
    /// Broker name (log field).
    pub name: String,
    /// Passwords and ACL.
    pub security: Arc<Security>,
    /// Resource limits.
    pub limits: Arc<Limits>,
    /// Counters and gauges.
    pub counters: Arc<Counters>,
    /// `$SYS` interval; `None` = off.
    pub sys_interval: Option<Duration>,
    /// The clock of the connections' keepalive deadlines, checked on
    /// the router's tick.
    pub keepalive_clock: KeepaliveClock,
}

/// Starts the router task.
pub(crate) fn spawn(
    tracker: &TaskTracker,
    config: RouterConfig,
    persistence: Persistence,
    shutdown: CancellationToken,
) -> RouterHandle {
    let RouterConfig {
        name,
        security,
        limits,
        counters,
        sys_interval,
        keepalive_clock,
    } = config;
    let (tx, rx) = mpsc::channel(INBOX);
    let Persistence {
        journal,
        loaded,
        session_expiry,
    } = persistence;
    let commit = journal
        .store()
        .map(|store| durable::spawn_committer(tracker, store.clone(), tx.clone()));
    let mut router = Router {
        name,
        security,
        counters,
        sessions: HashMap::new(),
        by_client: HashMap::new(),
        holds: HashMap::new(),
        by_conn: HashMap::new(),
        subs: FilterTrie::new(),
        shared: shared::Shared::default(),
        retained: Retained::default(),
        next_session: 0,
        scratch: Vec::new(),
        wills: HashMap::new(),
        taken_over: std::collections::HashSet::new(),
        parked: BTreeMap::new(),
        started: Instant::now(),
        hard_cap: limits.max_queued_messages + usize::from(limits.max_inflight) + HARD_CAP_SLACK,
        limits,
        journal,
        waiting: VecDeque::new(),
        epoch: 0,
        commit,
        session_expiry,
        keepalive_clock,
    };
    router.restore(loaded);
    tracker.spawn(router.run(rx, sys_interval, shutdown));
    RouterHandle { tx }
}

/// What the router persists, and what it found at start.
#[derive(Debug)]
pub(crate) struct Persistence {
    /// The writer (disabled without a store).
    pub journal: Journal,
    /// The state stored by the last run.
    pub loaded: Loaded,
    /// Persistent network sessions away this long are removed (`None`: never).
    pub session_expiry: Option<Duration>,
}

async fn tick(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Gives a map's room back once it holds under a quarter of it, so the
/// memory of many clients that left comes back (halving at most once per
/// fourfold drop, so the cost stays amortised).
fn shrink<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

struct Router {
    name: String,
    security: Arc<Security>,
    limits: Arc<Limits>,
    counters: Arc<Counters>,
    /// Boxed: the table has room for more entries than it holds, and an
    /// empty slot then costs a pointer, not a whole session.
    sessions: HashMap<SessionId, Box<Session>>,
    /// Sessions by namespaced key: a network client id never finds a link's session.
    by_client: HashMap<SessionKey, SessionId>,
    /// Links held down by a fault drill (by link id), until the token is cancelled.
    holds: HashMap<String, CancellationToken>,
    by_conn: HashMap<ConnId, SessionId>,
    /// Every subscription but the shared ones: filter → (session, options and identifier).
    subs: FilterTrie<(SessionId, Subscription)>,
    /// Shared subscriptions' groups ([`shared`]).
    shared: shared::Shared,
    retained: Retained,
    next_session: SessionId,
    /// Reused buffer of matching subscriptions.
    scratch: Vec<(SessionId, Subscription)>,
    /// Deadlines of the wills waiting for their Will Delay Interval (MQTT
    /// 5; the will itself is the session's [`Session::will`]), by session:
    /// published at the deadline or when the session ends, dropped when
    /// the client comes back first [MQTT-3.1.3-9].
    wills: HashMap<SessionId, Instant>,
    /// Connections taken over by a connection that resumed their session
    /// (Clean Start 0), until their end is reported: their delayed will is
    /// not published, the session having been resumed within its delay
    /// [MQTT-3.1.3-9].
    taken_over: std::collections::HashSet<ConnId>,
    /// Per publishing connection, in arrival order: QoS 1/2 publishes waiting
    /// for room in a full local link session (end-to-end backpressure: not
    /// acknowledged, so the publisher's own inflight window fills). Bounded
    /// by [`MAX_PARKED`] per connection.
    parked: BTreeMap<ConnId, VecDeque<Parked>>,
    started: Instant,
    /// Unwritten packets after which a connection is aborted (see `Session::send_control`).
    hard_cap: usize,
    /// Persistent state's writer.
    journal: Journal,
    /// Acknowledgements waiting for the group commit of their epoch, in order.
    waiting: VecDeque<(u64, Waiter)>,
    /// The epoch of the writes of the current batch of events.
    epoch: u64,
    /// To the committer task: an epoch to make durable (`None` without a store).
    commit: Option<mpsc::UnboundedSender<u64>>,
    /// See [`Persistence::session_expiry`].
    session_expiry: Option<Duration>,
    /// See [`RouterConfig::keepalive_clock`].
    keepalive_clock: KeepaliveClock,
}

impl Router {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Event>,
        sys_interval: Option<Duration>,
        shutdown: CancellationToken,
    ) {
        let mut sys_tick = sys_interval.map(|d| {
            let mut i = tokio::time::interval(d.max(Duration::from_millis(10)));
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        // Every second: MQTT 5 sessions carry their own expiry interval
        // and wills their delay (one pass over the sessions: cheap next to
        // the traffic of that many clients).
        let mut expiry_tick = {
            let mut i = tokio::time::interval(LIFETIME_TICK);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            Some(i)
        };
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                // Shutdown wins: connections are cancelled by the same token.
                biased;
                _ = shutdown.cancelled() => break,
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    for event in batch.drain(..) {
                        self.handle(event);
                    }
                    // Subscriptions, sessions or links may have changed.
                    if !self.parked.is_empty() {
                        self.unpark();
                    }
                }
                // Never fires when `$SYS` is off.
                _ = tick(sys_tick.as_mut()) => self.publish_sys(),
                _ = tick(expiry_tick.as_mut()) => {
                    self.expire_sessions(super::persist::unix_now());
                    let now = Instant::now();
                    self.expire_keepalives();
                    self.publish_due_wills(now);
                    self.expire_retained(now);
                }
            }
            // What this wake-up changed goes to the store as one batch.
            self.flush();
        }
        self.flush();
        for s in self.sessions.values() {
            if let Some(c) = &s.conn {
                if matches!(s.origin, Origin::Network { .. }) {
                    // Closes without its will and tells an MQTT 5
                    // client why itself.
                    c.outlet.shut_down();
                    continue;
                }
                if c.v5.is_some() {
                    // MQTT 5 clients are told why [MQTT-4.13.1-1].
                    c.outlet
                        .send_v5(rumqttc::v5::mqttbytes::v5::Packet::Disconnect(
                        rumqttc::v5::mqttbytes::v5::Disconnect::new(
                            rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::ServerShuttingDown,
                        ),
                    ));
                }
                c.outlet.close();
            }
        }
        // Parked publishes die with the router (never acknowledged).
        self.counters.held_back.store(0, Relaxed);
        info!(broker = %self.name, "router stopped");
    }

    fn publish_sys(&mut self) {
        let stats = self.counters.snapshot();
        for msg in sys::messages(&stats, self.started.elapsed()) {
            self.route(msg, false, None);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Connect {
                conn,
                client_id,
                clean,
                outlet,
                origin,
                v5,
                reply,
            } => {
                let attached = Attached {
                    id: conn,
                    outlet,
                    v5,
                };
                self.connect(attached, client_id, clean, origin, reply)
            }
            Event::Publish {
                conn,
                publish,
                properties,
                refused,
            } => {
                if !(refused.is_none() && self.refuse_if_store_full(conn, &publish)) {
                    self.publish(conn, publish, properties, refused);
                }
            }
            Event::LocalPublish {
                conn,
                message,
                done,
            } => {
                if let Some(&sid) = self.by_conn.get(&conn) {
                    let stored = self.route(message, true, Some(sid));
                    self.release(Waiter::Local(done), stored);
                } else {
                    let _ = done.send(Err(LinkError::Closed));
                }
            }
            Event::Ack { conn, kind, pkid } => self.ack(conn, kind, pkid),
            Event::PubRecFailed { conn, pkid, reason } => self.pubrec_failed(conn, pkid, reason),
            Event::PubRel { conn, pkid } => {
                let cap = self.hard_cap;
                let Some(&sid) = self.by_conn.get(&conn) else {
                    return;
                };
                if let Some(s) = self.sessions.get_mut(&sid) {
                    let packet = s.flows().incoming.on_pubrel(pkid);
                    if let Some(stored) = s.stored {
                        self.journal.remove_incoming(stored, pkid);
                    }
                    s.send_control(packet, cap);
                }
            }
            Event::Subscribe {
                conn,
                filters,
                reply,
            } => self.subscribe(conn, filters, reply),
            Event::Unsubscribe {
                conn,
                filters,
                reply,
            } => self.unsubscribe(conn, filters, reply),
            Event::Disconnected {
                conn,
                will,
                session_expiry,
            } => self.disconnected(conn, will, session_expiry),
            Event::Durable { through, result } => self.durable(through, result),
            Event::HoldLink {
                client_id,
                hold,
                reply,
            } => {
                let _ = reply.send(self.hold_link(client_id, hold));
            }
            Event::Ping { conn } => {
                let cap = self.hard_cap;
                if let Some(s) = self.session_of(conn) {
                    s.send_control(Packet::PingResp, cap);
                    // A client with nothing in flight pings when idle: a
                    // cheap moment to give its QoS state back.
                    s.release_idle();
                }
            }
        }
    }

    fn session_of(&mut self, conn: ConnId) -> Option<&mut Session> {
        let sid = self.by_conn.get(&conn)?;
        self.sessions.get_mut(sid).map(|s| &mut **s)
    }
}
