//! The router: ONE task owns every session, the subscription trie and the
//! retained store, fed by a channel of [`Event`]s (no locks, as rumqttd's
//! router). It drives the shared protocol state machines and writes to each
//! client through its [`Outlet`]; it never awaits a client.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::acl::Op;
use super::outlet::Outlet;
use super::retained::Retained;
use super::session::{Attached, ConnId, Origin, Session, SessionKey};
use super::stats::{Counters, SubRefuseReason};
use super::sys;
use super::{Limits, Security};
use crate::link::{AckToken, LinkError, PublishDone};
use crate::protocol::v4::{
    ConnAck, ConnectReturnCode, Packet, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use crate::protocol::{IncomingAction, Message, QoS, WireQoS};
use crate::topic::FilterTrie;

/// Capacity of the router's inbox: publishers wait (backpressure) when the
/// router is this far behind.
const INBOX: usize = 4096;
/// Control packets (acks) beyond the QoS 0 and inflight bounds a client may
/// leave unread before its connection is aborted.
const HARD_CAP_SLACK: usize = 1024;
/// Events handled per wake-up.
const BATCH: usize = 256;
/// Un-acknowledged publishes the router may hold parked for one network
/// connection; its reader stops reading at this count. A client keeping to
/// its own inflight window (typically 10–100) never gets near it.
pub(crate) const MAX_PARKED: usize = 1024;

type SessionId = u64;

/// How a session's connection is ended by the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takeover {
    /// A new connection (or link) of the same key takes the session.
    Replaced,
    /// Closed with no successor (a link re-attaches).
    Closed,
}

/// A QoS 1/2 publish held back because a local link session it goes to is
/// full: routed, and acknowledged to its publisher, once that session has room.
#[derive(Debug)]
struct Parked {
    message: Message,
    token: AckToken,
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
    /// A PUBLISH from a network client; `route` is false for a publish the
    /// ACL denied or to `$SYS` (acknowledged, not routed).
    Publish {
        /// Connection.
        conn: ConnId,
        /// The packet.
        publish: Publish,
        /// Route it (false: only acknowledge).
        route: bool,
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
    /// PUBREL from a publisher.
    PubRel {
        /// Connection.
        conn: ConnId,
        /// Packet id.
        pkid: u16,
    },
    /// SUBSCRIBE: filters with the QoS to grant (`None`: refuse with 0x80,
    /// already decided for invalid filters and ACL denials).
    Subscribe {
        /// Connection.
        conn: ConnId,
        /// (filter, granted).
        filters: Vec<(String, Option<QoS>)>,
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
    /// The connection ended; `will` is published (it was checked against the ACL).
    Disconnected {
        /// Connection.
        conn: ConnId,
        /// The will to publish, if the end was not graceful.
        will: Option<Message>,
    },
}

/// Sender side of the router's inbox.
#[derive(Debug, Clone)]
pub(crate) struct RouterHandle {
    tx: mpsc::Sender<Event>,
}

impl RouterHandle {
    /// Sends an event, waiting while the inbox is full; false when the router is gone.
    pub async fn send(&self, event: Event) -> bool {
        self.tx.send(event).await.is_ok()
    }
}

/// Starts the router task.
pub(crate) fn spawn(
    tracker: &TaskTracker,
    name: String,
    security: Arc<Security>,
    limits: Arc<Limits>,
    counters: Arc<Counters>,
    sys_interval: Option<Duration>,
    shutdown: CancellationToken,
) -> RouterHandle {
    let (tx, rx) = mpsc::channel(INBOX);
    let router = Router {
        name,
        security,
        counters,
        sessions: HashMap::new(),
        by_client: HashMap::new(),
        holds: HashMap::new(),
        by_conn: HashMap::new(),
        subs: FilterTrie::new(),
        retained: Retained::default(),
        next_session: 0,
        scratch: Vec::new(),
        parked: BTreeMap::new(),
        started: Instant::now(),
        hard_cap: limits.max_queued_messages + usize::from(limits.max_inflight) + HARD_CAP_SLACK,
        limits,
    };
    tracker.spawn(router.run(rx, sys_interval, shutdown));
    RouterHandle { tx }
}

async fn tick(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Whether `session` may receive a message on `topic`: the ACL's read
/// check per delivery (as Mosquitto does), so a `deny` narrower than the
/// subscription filter still holds. Local links are trusted.
fn may_read(security: &Security, session: &Session, topic: &str) -> bool {
    match (&security.acl, &session.origin) {
        (Some(acl), Origin::Network { username }) => {
            acl.check(username.as_deref(), &session.client_id, Op::Read, topic)
        }
        _ => true,
    }
}

/// The limit a network client's new subscription to `filter` would break,
/// if any. Replacing an existing subscription breaks none; in-process links
/// (pipes, configured by the operator) are never limited.
fn subscription_limit<T>(
    limits: &Limits,
    session: &Session,
    subs: &FilterTrie<T>,
    filter: &str,
) -> Option<SubRefuseReason> {
    if matches!(session.origin, Origin::Local) || session.subscriptions.contains_key(filter) {
        return None;
    }
    if session.subscriptions.len() >= limits.max_subscriptions_per_client {
        return Some(SubRefuseReason::SubscriptionsPerClient);
    }
    if subs.node_count() + subs.nodes_needed(filter) > limits.max_trie_nodes {
        return Some(SubRefuseReason::TrieNodes);
    }
    None
}

/// Publishes the trie's size to the `trie_nodes` gauge.
fn count_trie_nodes<T>(counters: &Counters, subs: &FilterTrie<T>) {
    counters.trie_nodes.store(subs.node_count() as u64, Relaxed);
}

/// Drops the parked publishes of a connection that went away (never
/// acknowledged, so the client sends them again).
fn forget_parked(
    parked: &mut BTreeMap<ConnId, VecDeque<Parked>>,
    counters: &Counters,
    conn: ConnId,
) {
    if let Some(queue) = parked.remove(&conn) {
        counters.held_back.fetch_sub(queue.len() as u64, Relaxed);
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
    /// Every subscription: filter → (session, granted QoS).
    subs: FilterTrie<(SessionId, QoS)>,
    retained: Retained,
    next_session: SessionId,
    /// Reused buffer of matching subscriptions.
    scratch: Vec<(SessionId, QoS)>,
    /// Per publishing connection, in arrival order: QoS 1/2 publishes waiting
    /// for room in a full local link session (end-to-end backpressure: not
    /// acknowledged, so the publisher's own inflight window fills). Bounded
    /// by [`MAX_PARKED`] per connection.
    parked: BTreeMap<ConnId, VecDeque<Parked>>,
    started: Instant,
    /// Unwritten packets after which a connection is aborted (see `Session::send_control`).
    hard_cap: usize,
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
            }
        }
        for s in self.sessions.values() {
            if let Some(c) = &s.conn {
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
            self.route(msg, false);
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
                reply,
            } => self.connect(conn, client_id, clean, outlet, origin, reply),
            Event::Publish {
                conn,
                publish,
                route,
            } => self.publish(conn, publish, route),
            Event::LocalPublish {
                conn,
                message,
                done,
            } => {
                if self.by_conn.contains_key(&conn) {
                    self.route(message, true);
                    let _ = done.send(Ok(()));
                } else {
                    let _ = done.send(Err(LinkError::Closed));
                }
            }
            Event::Ack { conn, kind, pkid } => self.ack(conn, kind, pkid),
            Event::PubRel { conn, pkid } => {
                let cap = self.hard_cap;
                if let Some(s) = self.session_of(conn) {
                    let packet = s.incoming.on_pubrel(pkid);
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
            Event::Disconnected { conn, will } => self.disconnected(conn, will),
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
                }
            }
        }
    }

    fn session_of(&mut self, conn: ConnId) -> Option<&mut Session> {
        let sid = self.by_conn.get(&conn)?;
        self.sessions.get_mut(sid).map(|s| &mut **s)
    }

    fn connect(
        &mut self,
        conn: ConnId,
        client_id: String,
        clean: bool,
        outlet: Outlet,
        origin: Origin,
        reply: oneshot::Sender<Result<bool, ConnectRefused>>,
    ) {
        if let Err(refused) = self.admit(&client_id, &origin, &outlet) {
            let _ = reply.send(Err(refused));
            return;
        }
        let key = SessionKey::of(&origin, &client_id);
        let mut session_present = false;
        if let Some(&sid) = self.by_client.get(&key) {
            let mut keep = false;
            if let Some(old) = self.sessions.get(&sid) {
                if old.conn.is_some() {
                    info!(broker = %self.name, client_id = %client_id, "session taken over by a new connection");
                    self.detach(sid, Takeover::Replaced);
                }
                keep = !clean && self.sessions.get(&sid).is_some_and(|old| !old.clean);
            }
            if keep {
                session_present = true;
            } else {
                self.remove_session(sid);
            }
        }
        let sid = match self.by_client.get(&key) {
            Some(&sid) => sid,
            None => {
                let sid = self.next_session;
                self.next_session += 1;
                self.sessions.insert(
                    sid,
                    Box::new(Session::new(client_id, clean, origin.clone(), &self.limits)),
                );
                self.by_client.insert(key, sid);
                self.counters.sessions.fetch_add(1, Relaxed);
                sid
            }
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        if matches!(origin, Origin::Network { .. }) {
            outlet.send(Packet::ConnAck(ConnAck::new(
                ConnectReturnCode::Success,
                session_present,
            )));
        }
        session.origin = origin;
        session.incoming.reset_connection();
        session.attach(
            Attached { id: conn, outlet },
            session_present,
            &self.counters,
        );
        let link = session.is_link();
        self.connected_gauge(link).fetch_add(1, Relaxed);
        self.by_conn.insert(conn, sid);
        let _ = reply.send(Ok(session_present));
    }

    /// Refuses a network CONNECT with the client id of an in-process link
    /// (CONNACK 0x02 on its outlet), and a held-down link's attach.
    fn admit(
        &mut self,
        client_id: &str,
        origin: &Origin,
        outlet: &Outlet,
    ) -> Result<(), ConnectRefused> {
        match origin {
            Origin::Network { .. } => {
                if self
                    .by_client
                    .contains_key(&SessionKey::Link(client_id.to_owned()))
                {
                    outlet.send(Packet::ConnAck(ConnAck::new(
                        ConnectReturnCode::BadClientId,
                        false,
                    )));
                    outlet.close();
                    return Err(ConnectRefused::LinkClientId);
                }
            }
            Origin::Local => {
                if let Some(hold) = self.holds.get(client_id) {
                    if !hold.is_cancelled() {
                        return Err(ConnectRefused::LinkHeld);
                    }
                    self.holds.remove(client_id);
                }
            }
        }
        Ok(())
    }

    /// The connected gauge of links or of network clients.
    fn connected_gauge(&self, link: bool) -> &std::sync::atomic::AtomicU64 {
        if link {
            &self.counters.links_connected
        } else {
            &self.counters.clients_connected
        }
    }

    /// Closes the connection attached to session `sid` (if any); the session stays.
    fn detach(&mut self, sid: SessionId, how: Takeover) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(att) = session.conn.take() else {
            return;
        };
        let link = session.is_link();
        match (link, how) {
            // A link replaced by another link must not come back for the session.
            (true, Takeover::Replaced) => att.outlet.replaced(),
            // A link sees the Close and re-attaches.
            (true, Takeover::Closed) => att.outlet.close(),
            // Network: at once, not after queued packets (the old client may
            // not be reading).
            (false, _) => {
                att.outlet.abort();
                att.outlet.close();
            }
        }
        self.by_conn.remove(&att.id);
        shrink(&mut self.by_conn);
        // Never acknowledged: the client sends them again.
        forget_parked(&mut self.parked, &self.counters, att.id);
        self.connected_gauge(link).fetch_sub(1, Relaxed);
    }

    /// See [`Event::HoldLink`].
    fn hold_link(&mut self, client_id: String, hold: CancellationToken) -> bool {
        let Some(&sid) = self.by_client.get(&SessionKey::Link(client_id.clone())) else {
            return false;
        };
        warn!(broker = %self.name, client_id = %client_id, "fault drill: link held down");
        self.holds.insert(client_id, hold);
        self.detach(sid, Takeover::Closed);
        if self.sessions.get(&sid).is_some_and(|s| s.clean) {
            self.remove_session(sid);
        }
        true
    }

    fn remove_session(&mut self, sid: SessionId) {
        let Some(mut s) = self.sessions.remove(&sid) else {
            return;
        };
        self.by_client.remove(&s.key());
        for filter in s.subscriptions.keys() {
            self.subs.remove(filter, |v| v.0 == sid);
        }
        count_trie_nodes(&self.counters, &self.subs);
        self.counters
            .subscriptions
            .fetch_sub(s.subscriptions.len() as u64, Relaxed);
        s.discard(&self.counters);
        self.counters.sessions.fetch_sub(1, Relaxed);
        shrink(&mut self.sessions);
        shrink(&mut self.by_client);
    }

    fn disconnected(&mut self, conn: ConnId, will: Option<Message>) {
        // Never acknowledged: a persistent client sends them again.
        forget_parked(&mut self.parked, &self.counters, conn);
        let sid = self.by_conn.remove(&conn);
        shrink(&mut self.by_conn);
        if let Some(sid) = sid {
            let (link, clean) = match self.sessions.get_mut(&sid) {
                Some(s) => {
                    s.conn = None;
                    (s.is_link(), s.clean)
                }
                None => (false, false),
            };
            self.connected_gauge(link).fetch_sub(1, Relaxed);
            if clean {
                self.remove_session(sid);
            }
        }
        if let Some(will) = will {
            debug!(broker = %self.name, topic = %will.topic, "publishing will");
            self.route(will, true);
        }
    }

    fn publish(&mut self, conn: ConnId, publish: Publish, route: bool) {
        let cap = self.hard_cap;
        let Some(session) = self.session_of(conn) else {
            return;
        };
        match session.incoming.on_publish(publish, Instant::now()) {
            IncomingAction::Deliver {
                message,
                token: Some(token),
            } => {
                // Behind an earlier parked publish of the same client (order),
                // or bound to a full local link session: park, do not ack.
                if route && (self.parked.contains_key(&conn) || self.link_full(&message.topic)) {
                    self.park(conn, message, token);
                    return;
                }
                self.ack_publisher(conn, token);
                if route {
                    self.route(message, true);
                }
            }
            IncomingAction::Deliver {
                message,
                token: None,
            } => {
                if route {
                    self.route(message, true);
                }
            }
            IncomingAction::Duplicate { resend } => {
                if let Some(packet) = resend {
                    session.send_control(packet, cap);
                }
            }
        }
    }

    /// Releases the PUBACK/PUBREC of `token` (in arrival order).
    fn ack_publisher(&mut self, conn: ConnId, token: AckToken) {
        let cap = self.hard_cap;
        if let Some(session) = self.session_of(conn) {
            for packet in session.incoming.ack(token) {
                session.send_control(packet, cap);
            }
        }
    }

    /// Whether a QoS 1/2 message on `topic` would overflow (drop from) a
    /// local link session's queue. Network sessions keep the Mosquitto-like
    /// drop at `max_queued_messages`; the bridge's own sessions push back.
    fn link_full(&mut self, topic: &str) -> bool {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.subs
            .for_each_match(topic, |_, &(sid, qos)| scratch.push((sid, qos)));
        let full = scratch.iter().any(|&(sid, granted)| {
            granted != QoS::AtMostOnce
                && self
                    .sessions
                    .get(&sid)
                    .is_some_and(|s| s.origin == Origin::Local && s.would_drop(&self.limits))
        });
        self.scratch = scratch;
        full
    }

    fn park(&mut self, conn: ConnId, message: Message, token: AckToken) {
        let Some(session) = self.session_of(conn) else {
            return;
        };
        if let Some(att) = &session.conn {
            att.outlet.parked().add();
        }
        let client_id = session.client_id.clone();
        self.counters.held_back.fetch_add(1, Relaxed);
        self.counters.held_back_total.fetch_add(1, Relaxed);
        let queue = self.parked.entry(conn).or_default();
        queue.push_back(Parked { message, token });
        if queue.len() == 1 {
            debug!(broker = %self.name, client_id = %client_id, "local link session full: holding back acknowledgements");
        }
    }

    /// Routes and acknowledges parked publishes, oldest first per publisher,
    /// while the local link sessions they go to have room.
    fn unpark(&mut self) {
        let conns: Vec<ConnId> = self.parked.keys().copied().collect();
        for conn in conns {
            let mut released = 0;
            while let Some(next) = self.parked.get_mut(&conn).and_then(VecDeque::pop_front) {
                if self.link_full(&next.message.topic) {
                    if let Some(queue) = self.parked.get_mut(&conn) {
                        queue.push_front(next);
                    }
                    break;
                }
                released += 1;
                self.ack_publisher(conn, next.token);
                self.route(next.message, true);
            }
            if self.parked.get(&conn).is_some_and(VecDeque::is_empty) {
                self.parked.remove(&conn);
            }
            self.counters.held_back.fetch_sub(released as u64, Relaxed);
            if released > 0
                && let Some(session) = self.session_of(conn)
                && let Some(att) = &session.conn
            {
                att.outlet.parked().sub(released);
            }
        }
    }

    fn ack(&mut self, conn: ConnId, kind: Ack, pkid: u16) {
        let name = self.name.clone();
        let counters = self.counters.clone();
        let hard_cap = self.hard_cap;
        let Some(session) = self.session_of(conn) else {
            return;
        };
        let result = match kind {
            Ack::PubAck => session.outgoing.on_puback(pkid).map(|_| None),
            Ack::PubRec => session.outgoing.on_pubrec(pkid).map(Some),
            Ack::PubComp => session.outgoing.on_pubcomp(pkid).map(|_| None),
        };
        let local = session.origin == Origin::Local;
        match result {
            Ok(Some(pubrel)) => session.send_control(pubrel, hard_cap),
            Ok(None) => {
                session.pump(&counters);
                // Room in a link session: parked publishes first, before
                // newer ones in this batch take it.
                if local && !self.parked.is_empty() {
                    self.unpark();
                }
            }
            Err(violation) => {
                crate::warn_limited!(format!("unexpected-ack:{name}"), broker = %name, client_id = %session.client_id, %violation, "unexpected acknowledgement ignored");
            }
        }
    }

    fn subscribe(
        &mut self,
        conn: ConnId,
        filters: Vec<(String, Option<QoS>)>,
        reply: Reply<Vec<Option<QoS>>>,
    ) {
        let Some(&sid) = self.by_conn.get(&conn) else {
            if let Reply::Local(done) = reply {
                let _ = done.send(Err(LinkError::Closed));
            }
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let mut granted = Vec::with_capacity(filters.len());
        let mut accepted = Vec::new();
        for (filter, qos) in filters {
            let qos = qos.filter(|_| {
                match subscription_limit(&self.limits, session, &self.subs, &filter) {
                    Some(reason) => {
                        self.counters.sub_refused(reason);
                        crate::warn_limited!(format!("subscription-limit:{}", self.name), broker = %self.name, client_id = %session.client_id, ?reason, "subscription refused (0x80): limit");
                        false
                    }
                    None => true,
                }
            });
            granted.push(qos);
            let Some(qos) = qos else { continue };
            if session.subscriptions.insert(filter.clone(), qos).is_some() {
                self.subs.remove(&filter, |v| v.0 == sid);
            } else {
                self.counters.subscriptions.fetch_add(1, Relaxed);
            }
            self.subs.insert(&filter, (sid, qos));
            accepted.push((filter, qos));
        }
        count_trie_nodes(&self.counters, &self.subs);
        match reply {
            Reply::Packet(pkid) => {
                let codes = granted
                    .iter()
                    .map(|g| match g {
                        Some(q) => SubscribeReasonCode::Success(WireQoS::from(*q)),
                        None => SubscribeReasonCode::Failure,
                    })
                    .collect();
                session.send_control(Packet::SubAck(SubAck::new(pkid, codes)), self.hard_cap);
            }
            Reply::Local(done) => {
                let _ = done.send(Ok(granted));
            }
        }
        // Retained messages after the SUBACK, retain=1, QoS min(stored, granted).
        for (filter, qos) in accepted {
            for m in self.retained.matching(&filter) {
                if !may_read(&self.security, session, &m.topic) {
                    continue;
                }
                let mut m = m.clone();
                m.qos = m.qos.min(qos);
                session.deliver(m, &self.limits, &self.counters);
            }
        }
    }

    fn unsubscribe(&mut self, conn: ConnId, filters: Vec<String>, reply: Reply<()>) {
        let Some(&sid) = self.by_conn.get(&conn) else {
            if let Reply::Local(done) = reply {
                let _ = done.send(Err(LinkError::Closed));
            }
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        for filter in &filters {
            if session.subscriptions.remove(filter).is_some() {
                self.subs.remove(filter, |v| v.0 == sid);
                self.counters.subscriptions.fetch_sub(1, Relaxed);
            }
        }
        count_trie_nodes(&self.counters, &self.subs);
        match reply {
            Reply::Packet(pkid) => {
                session.send_control(Packet::UnsubAck(UnsubAck::new(pkid)), self.hard_cap)
            }
            Reply::Local(done) => {
                let _ = done.send(Ok(()));
            }
        }
    }

    /// Routes one message: retained store first, then one copy per matching
    /// session at the highest granted QoS (MQTT-3.3.5-1), QoS min(published,
    /// granted), retain=0 for these established subscriptions.
    fn route(&mut self, message: Message, count: bool) {
        if count {
            self.counters.msgs_in.fetch_add(1, Relaxed);
            self.counters
                .bytes_in
                .fetch_add(message.payload.len() as u64, Relaxed);
        }
        if message.retain {
            self.retained.store(&message);
            self.counters
                .retained
                .store(self.retained.len() as u64, Relaxed);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.subs
            .for_each_match(&message.topic, |_, &(sid, qos)| scratch.push((sid, qos)));
        if scratch.len() > 1 {
            // Highest QoS first within a session, then keep the first of each.
            scratch.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            scratch.dedup_by_key(|e| e.0);
        }
        for &(sid, granted) in &scratch {
            if let Some(session) = self.sessions.get_mut(&sid) {
                if !may_read(&self.security, session, &message.topic) {
                    continue;
                }
                let mut m = message.clone();
                m.qos = m.qos.min(granted);
                m.retain = false;
                m.dup = false;
                session.deliver(m, &self.limits, &self.counters);
            }
        }
        self.scratch = scratch;
    }
}
