//! One client's session as the router keeps it: subscriptions, the shared
//! protocol state machines (`Outgoing` towards the client, `Incoming` from
//! it), and a bounded queue of QoS 1/2 messages waiting for an inflight slot
//! or for the client to come back. A persistent session with a store keeps
//! each QoS 1/2 message it takes in the [`Journal`] until it is acknowledged.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::outlet::Outlet;
use super::persist::{
    Journal, LoadedSession, StoredMessage, arrival, restored_expiry, unix_now_ms,
};
use super::record::{Flow, Kind, StoredSession, StoredWill};
use super::stats::{Counters, DropReason};
use super::{Limits, OverflowPolicy};
use crate::protocol::expiry::{Expiry, Remaining};
use crate::protocol::reason::ReasonCode;
use crate::protocol::session::{ProtocolViolation, Resend};
use crate::protocol::v4::Packet;
use crate::protocol::{
    Full, Incoming, IncomingAction, Message, Outgoing, QoS, message_from_publish,
    publish_from_message,
};
use rumqttc::v5::mqttbytes::v5::{
    Packet as P5, PubAck as PubAck5, PubAckReason, PubRec as PubRec5, PubRecReason,
};

/// Our QoS of a codec QoS.
fn msg_qos(q: rumqttc::mqttbytes::QoS) -> QoS {
    match q {
        rumqttc::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// The size of `message`'s MQTT 5 PUBLISH with its full topic name (an
/// alias only makes it smaller) and a packet id.
fn v5_publish_size(message: &Message) -> u64 {
    use crate::protocol::convert::{TopicForm, v5_publish_from_message};
    let expiry = message
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval);
    let publish = v5_publish_from_message(message, 1, false, TopicForm::Name, expiry);
    P5::Publish(publish).size() as u64
}

/// Id of one network connection or local link (its "generation").
pub(crate) type ConnId = u64;

/// The connection a session is attached to.
#[derive(Debug)]
pub(crate) struct Attached {
    /// Connection id.
    pub id: ConnId,
    /// Where packets for the client go.
    pub outlet: Outlet,
    /// What an MQTT 5 client negotiated; `None` for 3.x and local links.
    pub v5: Option<V5Attached>,
}

/// What an MQTT 5 connection negotiated that the session acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct V5Attached {
    /// Session Expiry Interval in force (seconds; 0: ends with the connection).
    pub session_expiry: u32,
    /// The client's Receive Maximum: QoS 1/2 PUBLISHes in flight to it.
    pub receive_maximum: u16,
    /// The client's Maximum Packet Size.
    pub max_packet: u32,
}

pub(crate) use crate::protocol::subscription::Subscription;

/// Who is attached to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// An in-process link (trusted: no ACL, no CONNACK).
    Local,
    /// A network client with its username (ACL subject).
    Network {
        /// Username from CONNECT or the certificate CN.
        username: Option<String>,
    },
}

/// How the router finds a session. Network clients and in-process links
/// live in separate namespaces: a network CONNECT can never reach, resume or
/// take over a link's session, whatever client id it sends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum SessionKey {
    /// A network client's session, by its client id.
    Network(String),
    /// An in-process link's session, by its link id.
    Link(String),
}

impl SessionKey {
    /// The key of `client_id` connecting as `origin`.
    pub fn of(origin: &Origin, client_id: &str) -> Self {
        match origin {
            Origin::Local => SessionKey::Link(client_id.to_owned()),
            Origin::Network { .. } => SessionKey::Network(client_id.to_owned()),
        }
    }
}

/// What a session keeps with a QoS 1/2 flow towards its client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct InFlight {
    /// The message's sequence number in the store, if stored.
    pub seq: Option<u64>,
    /// When its MQTT 5 Message Expiry Interval ends; `None`: never.
    pub expiry: Option<Expiry>,
}

/// Puts on an in-flight `message` being sent again the expiry interval it
/// has left at `now` [MQTT-3.3.2-6]. One whose interval ran out while it
/// was in flight still goes (its onward delivery had started), with an
/// interval of 1 s, the shortest there is: 0 is no lifetime, and some
/// brokers (Mosquitto) read 0 as "never expires".
pub(crate) fn set_expiry_left(message: &mut Message, expiry: Expiry, now: Instant) {
    let left = match expiry.remaining(now) {
        Remaining::Seconds(left) => left,
        Remaining::Expired => 1,
    };
    if let Some(p) = message.properties.as_mut() {
        p.message_expiry_interval = Some(left);
    }
}

/// A message waiting in a session's queue.
#[derive(Debug)]
pub(crate) struct Queued {
    /// The message (QoS already min(published, granted)).
    pub message: Message,
    /// Its sequence number in the store, if stored.
    pub seq: Option<u64>,
    /// When its MQTT 5 Message Expiry Interval ends (from when it was
    /// queued); `None`: it never expires.
    pub expiry: Option<Expiry>,
}

/// A session's QoS 1/2 state: allocated on first use and released once it
/// holds nothing again (at the client's next PINGREQ, or when it goes), so
/// an idle client that never had a QoS 1/2 flow carries none of it (issue
/// 10: 10,000 idle clients must stay cheap).
#[derive(Debug)]
pub(crate) struct Flows {
    /// QoS 1/2 flows towards the client, each with its stored sequence
    /// number and expiry.
    pub outgoing: Outgoing<InFlight>,
    /// QoS 1/2 flows from the client (QoS 2 duplicate suppression).
    pub incoming: Incoming,
    /// Messages waiting for an inflight slot or for the client.
    pub queue: VecDeque<Queued>,
    /// Reason codes owed on the PUBACK/PUBREC of refused MQTT 5 publishes,
    /// by packet id (empty for everyone else).
    ack_reasons: HashMap<u16, ReasonCode>,
    /// Stored QoS 2 flows in flight: packet id → sequence number.
    qos2_seq: HashMap<u16, u64>,
}

impl Flows {
    fn new(window: usize) -> Self {
        Flows {
            outgoing: Outgoing::new(window),
            incoming: Incoming::new(),
            queue: VecDeque::new(),
            ack_reasons: HashMap::new(),
            qos2_seq: HashMap::new(),
        }
    }

    /// Nothing in flight either way, nothing queued, nothing owed: a fresh
    /// `Flows` would behave the same (an incoming ack token is only ever
    /// used on the connection that took it, and none is outstanding).
    fn is_idle(&self) -> bool {
        self.outgoing.is_empty()
            && self.incoming.pending_len() == 0
            && self.incoming.qos2_len() == 0
            && self.queue.is_empty()
            && self.ack_reasons.is_empty()
            && self.qos2_seq.is_empty()
    }
}

/// One session.
#[derive(Debug)]
pub(crate) struct Session {
    /// The client id.
    pub client_id: String,
    /// Clean session: discarded when the connection ends.
    pub clean: bool,
    /// Filter → subscription (mirrors the router's trie).
    pub subscriptions: HashMap<String, Subscription>,
    /// The MQTT 5 Session Expiry Interval (seconds; `u32::MAX`: never);
    /// `None` for a 3.x or link session, which the broker's
    /// `session_expiry` governs.
    pub expiry: Option<u32>,
    /// The QoS 1/2 state, `None` while there is none (see [`Flows`]).
    flows: Option<Box<Flows>>,
    /// The inflight window a new [`Flows`] starts with (`max_inflight`,
    /// lowered to an MQTT 5 client's Receive Maximum while it is attached).
    window: u16,
    /// The live connection, if any.
    pub conn: Option<Attached>,
    /// Who connected last (read ACL subject). Its kind (link or network)
    /// never changes: it is part of the session's [`SessionKey`].
    pub origin: Origin,
    /// The session's id in the store when it is persisted (persistent, and
    /// the broker has a store).
    pub stored: Option<u64>,
    /// Next message sequence number in the store.
    next_seq: u64,
    /// `max_inflight`: the window towards a client, lowered to an MQTT 5
    /// client's Receive Maximum while it is attached.
    limits_window: u16,
    /// Messages of this session in the store.
    pub stored_messages: u64,
    /// Unix seconds of the last disconnect; `None` while connected.
    pub disconnected_at: Option<u64>,
    /// The MQTT 5 will waiting for its Will Delay Interval (stored with
    /// the session, so it survives a restart); the router indexes it by
    /// deadline. Boxed: most sessions have none.
    pub will: Option<Box<DelayedWill>>,
}

/// A will waiting for its Will Delay Interval.
#[derive(Debug, Clone)]
pub(crate) struct DelayedWill {
    /// The will message.
    pub message: Message,
    /// When it is due on the monotonic clock.
    pub at: Instant,
    /// The same moment in unix milliseconds (what the store keeps).
    pub due_ms: u64,
}

impl Session {
    /// A fresh session of `origin`.
    pub fn new(client_id: String, clean: bool, origin: Origin, limits: &Limits) -> Self {
        Session {
            client_id,
            clean,
            subscriptions: HashMap::new(),
            expiry: None,
            flows: None,
            window: limits.max_inflight,
            conn: None,
            origin,
            stored: None,
            next_seq: 0,
            limits_window: limits.max_inflight,
            stored_messages: 0,
            disconnected_at: None,
            will: None,
        }
    }

    /// Rebuilds stored session `sid` after a restart: subscriptions, the
    /// QoS 2 flows in flight under their packet ids, queued messages in
    /// order, the QoS 2 ids received. Disconnected since `now` (unix
    /// milliseconds, and the same moment on the monotonic clock) if it was
    /// connected at the crash. Message expiry counts from each message's
    /// stored arrival: a queued message that expired while the broker was
    /// down is dropped (counted, deleted from the store); a QoS 2 flow
    /// already in flight is kept (its onward delivery had started).
    pub fn restore(
        sid: u64,
        loaded: LoadedSession,
        limits: &Limits,
        counters: &Counters,
        journal: &mut Journal,
        (now_ms, at): (u64, Instant),
    ) -> Self {
        let record = loaded.record;
        let origin = match record.kind {
            Kind::Link => Origin::Local,
            Kind::Network => Origin::Network {
                username: record.username,
            },
        };
        let mut s = Session::new(record.client_id, false, origin, limits);
        s.subscriptions = record.subscriptions.into_iter().collect();
        s.expiry = record.expiry;
        s.stored = Some(sid);
        s.disconnected_at = Some(record.disconnected_at.unwrap_or(now_ms / 1000));
        // A delayed will keeps its wall-clock deadline (due at once if it
        // passed while the broker was down).
        s.will = record.will.map(|w| {
            Box::new(DelayedWill {
                at: at + Duration::from_millis(w.due.saturating_sub(now_ms)),
                message: w.message,
                due_ms: w.due,
            })
        });
        for stored in loaded.messages {
            let StoredMessage {
                seq,
                mut message,
                arrived,
                flow,
            } = stored;
            s.next_seq = s.next_seq.max(seq + 1);
            s.stored_messages += 1;
            let expiry = restored_expiry(&mut message, arrived, now_ms, at);
            let token = InFlight {
                seq: Some(seq),
                expiry,
            };
            let restored = match flow {
                Some(f) if message.qos == QoS::ExactlyOnce => {
                    let flows = s.flows();
                    flows
                        .outgoing
                        .restore(message, f.pkid, f.released, token)
                        .map(|()| {
                            flows.qos2_seq.insert(f.pkid, seq);
                        })
                }
                _ => Err(Full { message, token }),
            };
            if let Err(full) = restored {
                if expiry.is_some_and(|e| e.remaining(at) == Remaining::Expired) {
                    counters.dropped(DropReason::Expired, 1);
                    s.forget(Some(seq), journal);
                    continue;
                }
                s.flows().queue.push_back(Queued {
                    message: full.message,
                    seq: full.token.seq,
                    expiry,
                });
                counters.queued.fetch_add(1, Relaxed);
            }
        }
        for pkid in loaded.incoming {
            s.flows().incoming.restore_received(pkid);
        }
        s
    }

    /// The session's record in the store.
    pub fn record(&self) -> StoredSession {
        let (kind, username) = match &self.origin {
            Origin::Local => (Kind::Link, None),
            Origin::Network { username } => (Kind::Network, username.clone()),
        };
        let mut subscriptions: Vec<(String, Subscription)> = self
            .subscriptions
            .iter()
            .map(|(f, sub)| (f.clone(), *sub))
            .collect();
        subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
        StoredSession {
            kind,
            client_id: self.client_id.clone(),
            username,
            subscriptions,
            disconnected_at: self.disconnected_at,
            expiry: self.expiry,
            will: self.will.as_ref().map(|w| StoredWill {
                message: w.message.clone(),
                due: w.due_ms,
            }),
        }
    }

    /// Writes the session's record, if it is stored.
    pub fn save(&self, journal: &mut Journal) {
        if let Some(sid) = self.stored {
            journal.put_session(sid, &self.record());
        }
    }

    /// Stores `msg` for a stored session; its sequence number.
    fn store(&mut self, msg: &Message, journal: &mut Journal) -> Option<u64> {
        let sid = self.stored?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.stored_messages += 1;
        // Its expiry keeps counting across a restart.
        journal.put_message(sid, seq, msg, arrival(msg, unix_now_ms()));
        Some(seq)
    }

    /// Deletes stored message `seq` (acknowledged or dropped).
    fn forget(&mut self, seq: Option<u64>, journal: &mut Journal) {
        if let (Some(sid), Some(seq)) = (self.stored, seq) {
            self.stored_messages = self.stored_messages.saturating_sub(1);
            journal.remove_message(sid, seq);
        }
    }

    /// Starts the flow of `msg` (stored as `token.seq`) and hands it to the
    /// connection, if any: an in-process link gets the message itself (no
    /// PUBLISH encoded here and decoded there), a network client the PUBLISH.
    fn start(
        &mut self,
        msg: Message,
        token: InFlight,
        counters: &Counters,
        journal: &mut Journal,
    ) -> Result<(), Full<InFlight>> {
        let seq = token.seq;
        if let Some(max) = self.conn.as_ref().and_then(|c| c.v5).map(|v| v.max_packet)
            && v5_publish_size(&msg) > u64::from(max)
        {
            // Never sent to this client, as if delivered [MQTT-3.1.2-25]:
            // it must not hold a window slot waiting for an ack.
            counters.dropped(DropReason::TooLarge, 1);
            self.forget(seq, journal);
            return Ok(());
        }
        if msg.qos == QoS::AtMostOnce {
            // No state: what `Outgoing::publish` would return, without
            // allocating the session's flows for a QoS 0 subscriber.
            if !self.is_link() && !self.is_v5() {
                self.send(
                    Packet::Publish(publish_from_message(&msg, 0, false)),
                    counters,
                );
            } else {
                let mut message = msg;
                message.dup = false;
                self.send_message(message, 0, counters);
            }
            return Ok(());
        }
        if !self.is_link() && !self.is_v5() {
            let (packet, _) = self.flows().outgoing.publish(msg, token)?;
            if let Packet::Publish(p) = &packet {
                self.note_flow(p.pkid, msg_qos(p.qos), seq, journal);
            }
            self.send(packet, counters);
            return Ok(());
        }
        let (pkid, mut message, _) = self.flows().outgoing.publish_message(msg, token)?;
        // A new flow, as a fresh PUBLISH would say (resends go as packets).
        message.dup = false;
        self.note_flow(pkid, message.qos, seq, journal);
        self.send_message(message, pkid, counters);
        Ok(())
    }

    /// A stored QoS 2 flow started under `pkid`: remember where it stands.
    fn note_flow(&mut self, pkid: u16, qos: QoS, seq: Option<u64>, journal: &mut Journal) {
        if let (Some(sid), Some(seq), QoS::ExactlyOnce) = (self.stored, seq, qos) {
            self.flows().qos2_seq.insert(pkid, seq);
            let flow = Flow {
                pkid,
                released: false,
            };
            journal.put_flow(sid, seq, flow);
        }
    }

    /// PUBACK: the flow's stored message goes.
    pub fn on_puback(&mut self, pkid: u16, journal: &mut Journal) -> Result<(), ProtocolViolation> {
        let token = self.flows().outgoing.on_puback(pkid)?;
        self.forget(token.seq, journal);
        Ok(())
    }

    /// PUBREC: the PUBREL to send; a stored flow is marked released.
    pub fn on_pubrec(
        &mut self,
        pkid: u16,
        journal: &mut Journal,
    ) -> Result<Packet, ProtocolViolation> {
        let stored = self.stored;
        let flows = self.flows();
        let pubrel = flows.outgoing.on_pubrec(pkid)?;
        if let (Some(sid), Some(&seq)) = (stored, flows.qos2_seq.get(&pkid)) {
            journal.put_flow(
                sid,
                seq,
                Flow {
                    pkid,
                    released: true,
                },
            );
        }
        Ok(pubrel)
    }

    /// A PUBREC with a failure code: the flow ends without a PUBREL, and
    /// its stored message goes. The shared state machine knows only the
    /// PUBREC → PUBCOMP path: the flow is walked through it at once, and
    /// the PUBREL it returns is never sent.
    pub fn on_pubrec_failed(
        &mut self,
        pkid: u16,
        journal: &mut Journal,
    ) -> Result<(), ProtocolViolation> {
        let flows = self.flows();
        let _unsent_pubrel = flows.outgoing.on_pubrec(pkid)?;
        let token = flows.outgoing.on_pubcomp(pkid)?;
        flows.qos2_seq.remove(&pkid);
        self.forget(token.seq, journal);
        Ok(())
    }

    /// PUBCOMP: the flow's stored message goes.
    pub fn on_pubcomp(
        &mut self,
        pkid: u16,
        journal: &mut Journal,
    ) -> Result<(), ProtocolViolation> {
        let flows = self.flows();
        let token = flows.outgoing.on_pubcomp(pkid)?;
        flows.qos2_seq.remove(&pkid);
        self.forget(token.seq, journal);
        Ok(())
    }

    /// The session's key in the router.
    pub fn key(&self) -> SessionKey {
        SessionKey::of(&self.origin, &self.client_id)
    }

    /// Whether the attached connection speaks MQTT 5.
    pub fn is_v5(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.v5.is_some())
    }

    /// Remembers the reason code to put on the PUBACK/PUBREC of `pkid`
    /// (an MQTT 5 publish that was refused); nothing for 3.x.
    pub fn owe_reason(&mut self, pkid: u16, code: ReasonCode) {
        if self.is_v5() && pkid != 0 {
            self.flows().ack_reasons.insert(pkid, code);
        }
    }

    /// Whether an in-process link owns this session.
    pub fn is_link(&self) -> bool {
        self.origin == Origin::Local
    }

    fn send(&self, packet: Packet, counters: &Counters) {
        if let Some(conn) = &self.conn {
            if let Packet::Publish(p) = &packet {
                counters.msgs_out.fetch_add(1, Relaxed);
                counters
                    .bytes_out
                    .fetch_add(p.payload.len() as u64, Relaxed);
            }
            conn.outlet.send(packet);
        }
    }

    /// Sends a control packet (SUBACK, acks) if connected. A client that
    /// keeps publishing but never reads would pile up acks: past `hard_cap`
    /// unwritten packets its connection is aborted.
    pub fn send_control(&mut self, packet: Packet, hard_cap: usize) {
        let owed = self
            .flows
            .as_mut()
            .map(|f| &mut f.ack_reasons)
            .filter(|r| !r.is_empty());
        let reason = match (&packet, owed) {
            (Packet::PubAck(a), Some(owed)) => owed.remove(&a.pkid).map(|r| (a.pkid, r, true)),
            (Packet::PubRec(r), Some(owed)) => owed.remove(&r.pkid).map(|c| (r.pkid, c, false)),
            _ => None,
        };
        if let Some(conn) = &self.conn {
            if conn.outlet.pending() >= hard_cap {
                crate::warn_limited!("client-not-reading", client_id = %self.client_id, pending = conn.outlet.pending(), "client does not read its socket, connection aborted");
                conn.outlet.abort();
                return;
            }
            match reason {
                Some((pkid, code, true)) => {
                    let mut ack = PubAck5::new(pkid, None);
                    ack.reason =
                        PubAckReason::try_from(code).unwrap_or(PubAckReason::UnspecifiedError);
                    conn.outlet.send_v5(P5::PubAck(ack));
                }
                Some((pkid, code, false)) => {
                    // A PUBREC with a failure code ends the QoS 2 flow: no
                    // PUBREL follows, and the client may reuse the id for a
                    // new message, which must not pass for a duplicate.
                    if let Some(f) = self.flows.as_mut() {
                        let _ = f.incoming.on_pubrel(pkid);
                    }
                    let mut rec = PubRec5::new(pkid, None);
                    rec.reason =
                        PubRecReason::try_from(code).unwrap_or(PubRecReason::UnspecifiedError);
                    conn.outlet.send_v5(P5::PubRec(rec));
                }
                None => {
                    conn.outlet.send(packet);
                }
            }
        }
    }

    /// Sends an MQTT 5 control packet (SUBACK, UNSUBACK with reason codes)
    /// if connected, bounded as [`Session::send_control`].
    pub fn send_control_v5(&self, packet: P5, hard_cap: usize) {
        if let Some(conn) = &self.conn {
            if conn.outlet.pending() >= hard_cap {
                crate::warn_limited!("client-not-reading", client_id = %self.client_id, pending = conn.outlet.pending(), "client does not read its socket, connection aborted");
                conn.outlet.abort();
                return;
            }
            conn.outlet.send_v5(packet);
        }
    }

    /// Hands `message` under `pkid` to the connection as the message itself
    /// (an in-process link, or an MQTT 5 client whose writer encodes its
    /// properties).
    fn send_message(&self, message: Message, pkid: u16, counters: &Counters) {
        if let Some(conn) = &self.conn {
            counters.msgs_out.fetch_add(1, Relaxed);
            counters
                .bytes_out
                .fetch_add(message.payload.len() as u64, Relaxed);
            conn.outlet.send_publish(message, pkid);
        }
    }

    /// Delivers `msg` (QoS already min(published, granted)): sent at once when
    /// the window allows, queued (bounded) otherwise; true when a stored
    /// session wrote it to the journal (its publisher waits for durability). QoS 0 is never queued:
    /// it is dropped when the client is away (as Mosquitto does by default)
    /// or when its connection already has `max_queued_messages` unwritten.
    pub fn deliver(
        &mut self,
        msg: Message,
        limits: &Limits,
        counters: &Counters,
        journal: &mut Journal,
        now: Instant,
    ) -> bool {
        if msg.qos == QoS::AtMostOnce {
            let Some(conn) = &self.conn else { return false };
            if conn.outlet.pending() >= limits.max_queued_messages {
                counters.dropped(DropReason::QueueFull, 1);
                return false;
            }
            let _ = self.start(msg, InFlight::default(), counters, journal);
            return false;
        }
        let seq = self.store(&msg, journal);
        let token = InFlight {
            seq,
            expiry: Expiry::of(&msg, now),
        };
        if self.direct() {
            if let Err(full) = self.start(msg, token, counters, journal) {
                self.enqueue(full.message, full.token, limits, counters, journal);
            }
        } else {
            self.enqueue(msg, token, limits, counters, journal);
        }
        seq.is_some()
    }

    /// Whether a QoS 1/2 message delivered now would overflow the queue
    /// (and so drop a message).
    pub fn would_drop(&self, limits: &Limits) -> bool {
        !self.direct() && self.queue_len() >= limits.max_queued_messages
    }

    /// Whether a QoS 1/2 message delivered now goes straight out
    /// (connected, nothing queued before it, room in the window).
    fn direct(&self) -> bool {
        self.conn.is_some()
            && self
                .flows
                .as_ref()
                .is_none_or(|f| f.queue.is_empty() && f.outgoing.has_room())
    }

    /// The QoS 1/2 state, allocated if the session had none.
    pub fn flows(&mut self) -> &mut Flows {
        let window = usize::from(self.window);
        self.flows
            .get_or_insert_with(|| Box::new(Flows::new(window)))
    }

    /// The QoS 1/2 state if the session has some.
    pub fn flows_mut(&mut self) -> Option<&mut Flows> {
        self.flows.as_deref_mut()
    }

    /// Messages queued.
    pub fn queue_len(&self) -> usize {
        self.flows.as_ref().map_or(0, |f| f.queue.len())
    }

    /// Releases the QoS 1/2 state if it holds nothing (an idle client).
    pub fn release_idle(&mut self) {
        if self.flows.as_ref().is_some_and(|f| f.is_idle()) {
            self.flows = None;
        }
    }

    /// Whether the session holds QoS 1/2 state.
    #[cfg(test)]
    pub fn has_flows(&self) -> bool {
        self.flows.is_some()
    }

    /// A PUBLISH from the client: QoS 0 keeps no state (and allocates
    /// none), QoS 1/2 go through [`Incoming::on_publish`].
    pub fn on_publish(
        &mut self,
        publish: crate::protocol::v4::Publish,
        now: Instant,
    ) -> IncomingAction {
        if publish.qos == rumqttc::mqttbytes::QoS::AtMostOnce {
            return IncomingAction::Deliver {
                message: message_from_publish(publish),
                token: None,
            };
        }
        self.flows().incoming.on_publish(publish, now)
    }

    /// A new connection: incoming deliveries not yet acknowledged are
    /// forgotten (see [`Incoming::reset_connection`]).
    pub fn reset_incoming(&mut self) {
        if let Some(f) = self.flows.as_mut() {
            f.incoming.reset_connection();
        }
    }

    fn enqueue(
        &mut self,
        message: Message,
        token: InFlight,
        limits: &Limits,
        counters: &Counters,
        journal: &mut Journal,
    ) {
        let InFlight { seq, expiry } = token;
        if self.queue_len() >= limits.max_queued_messages {
            counters.dropped(DropReason::QueueFull, 1);
            match limits.overflow {
                OverflowPolicy::DropNewest => {
                    self.forget(seq, journal);
                    return;
                }
                OverflowPolicy::DropOldest => {
                    if let Some(old) = self.flows().queue.pop_front() {
                        counters.queued.fetch_sub(1, Relaxed);
                        self.forget(old.seq, journal);
                    }
                }
            }
            if limits.max_queued_messages == 0 {
                self.forget(seq, journal);
                return;
            }
        }
        self.flows().queue.push_back(Queued {
            message,
            seq,
            expiry,
        });
        counters.queued.fetch_add(1, Relaxed);
    }

    /// Moves queued messages into the inflight window while there is room;
    /// a message whose expiry interval passed at `now` is dropped
    /// (counted), one still alive goes out with the interval it has left
    /// [MQTT-3.3.2-5, MQTT-3.3.2-6].
    pub fn pump(&mut self, counters: &Counters, journal: &mut Journal, now: Instant) {
        if self.conn.is_none() {
            return;
        }
        while let Some(f) = self.flows.as_mut().filter(|f| f.outgoing.has_room()) {
            let Some(mut next) = f.queue.pop_front() else {
                break;
            };
            counters.queued.fetch_sub(1, Relaxed);
            match next.expiry.map(|e| e.remaining(now)) {
                Some(Remaining::Expired) => {
                    counters.dropped(DropReason::Expired, 1);
                    self.forget(next.seq, journal);
                    continue;
                }
                Some(Remaining::Seconds(left)) => {
                    if let Some(p) = next.message.properties.as_mut() {
                        p.message_expiry_interval = Some(left);
                    }
                }
                None => {}
            }
            let token = InFlight {
                seq: next.seq,
                expiry: next.expiry,
            };
            match self.start(next.message, token, counters, journal) {
                Ok(()) => {}
                Err(full) => {
                    self.flows().queue.push_front(Queued {
                        message: full.message,
                        seq: full.token.seq,
                        expiry: full.token.expiry,
                    });
                    counters.queued.fetch_add(1, Relaxed);
                    break;
                }
            }
        }
    }

    /// Attaches a new connection and sends what a resumed session owes the
    /// client: unacknowledged PUBLISH with DUP, PUBREL, then queued messages.
    pub fn attach(
        &mut self,
        conn: Attached,
        session_present: bool,
        counters: &Counters,
        journal: &mut Journal,
        now: Instant,
    ) {
        let window = match &conn.v5 {
            Some(v5) => usize::from(v5.receive_maximum).min(usize::from(self.limits_window)),
            None => usize::from(self.limits_window),
        };
        self.window = u16::try_from(window).unwrap_or(u16::MAX);
        if let Some(f) = self.flows.as_mut() {
            f.outgoing.set_window(window);
            f.ack_reasons.clear();
        }
        self.conn = Some(conn);
        self.disconnected_at = None;
        // An in-process link and an MQTT 5 client get the messages with
        // their properties; a 3.x client gets 3.1.1 packets.
        if self.is_v5() || self.is_link() {
            let resends = match self.flows.as_mut() {
                Some(f) => f.outgoing.resume_messages(session_present),
                None => Vec::new(),
            };
            for resend in resends {
                match resend {
                    Resend::Publish { mut message, pkid } => {
                        let expiry = self
                            .flows
                            .as_mut()
                            .and_then(|f| f.outgoing.token_mut(pkid))
                            .and_then(|t| t.expiry);
                        if let Some(e) = expiry {
                            set_expiry_left(&mut message, e, now);
                        }
                        self.send_message(message, pkid, counters);
                    }
                    Resend::PubRel(pkid) => self.send(
                        Packet::PubRel(crate::protocol::v4::PubRel::new(pkid)),
                        counters,
                    ),
                }
            }
        } else {
            let packets = match self.flows.as_mut() {
                Some(f) => f.outgoing.resume(session_present),
                None => Vec::new(),
            };
            for packet in packets {
                self.send(packet, counters);
            }
        }
        self.pump(counters, journal, now);
    }

    /// Drops everything the session holds (gauges follow).
    pub fn discard(&mut self, counters: &Counters) {
        if let Some(f) = self.flows.as_mut() {
            counters.queued.fetch_sub(f.queue.len() as u64, Relaxed);
            f.queue.clear();
            let _ = f.outgoing.drain();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::outlet::{Out, outlet};

    fn limits(queue: usize, overflow: OverflowPolicy) -> Limits {
        Limits {
            max_inflight: 2,
            max_queued_messages: queue,
            overflow,
            ..Limits::default()
        }
    }

    fn msg(n: u32, qos: QoS) -> Message {
        Message::new("t", n.to_string(), qos, false)
    }

    fn drain_payloads(rx: &mut crate::broker::outlet::OutletRx) -> Vec<String> {
        use futures_util::FutureExt;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(n) = rx.recv_many(&mut buf, 100).now_or_never() {
            if n == 0 {
                break;
            }
            for o in buf.drain(..) {
                match o {
                    Out::Packet(b) => {
                        if let Packet::Publish(p) = *b {
                            out.push(String::from_utf8_lossy(&p.payload).into_owned());
                        }
                    }
                    Out::Publish(b) => out.push(String::from_utf8_lossy(&b.0.payload).into_owned()),
                    Out::V5(_) | Out::Close | Out::Replaced => {}
                }
            }
        }
        out
    }

    #[test]
    fn window_then_bounded_queue_drop_oldest() {
        let counters = Counters::default();
        let mut j = Journal::disabled(Default::default());
        let l = limits(2, OverflowPolicy::DropOldest);
        let mut s = Session::new("c".into(), false, Origin::Local, &l);
        let (tx, mut rx) = outlet();
        s.attach(
            Attached {
                id: 1,
                outlet: tx,
                v5: None,
            },
            false,
            &counters,
            &mut j,
            Instant::now(),
        );
        for n in 0..6 {
            s.deliver(
                msg(n, QoS::AtLeastOnce),
                &l,
                &counters,
                &mut j,
                Instant::now(),
            );
        }
        assert_eq!(drain_payloads(&mut rx), ["0", "1"]);
        assert_eq!(s.queue_len(), 2);
        assert_eq!(counters.snapshot().dropped_queue_full, 2);
        assert_eq!(counters.snapshot().queued, 2);
        // PUBACK frees a slot: the oldest surviving queued message goes out.
        s.flows().outgoing.on_puback(1).unwrap();
        s.pump(&counters, &mut j, Instant::now());
        assert_eq!(drain_payloads(&mut rx), ["4"]);
    }

    #[test]
    fn drop_newest_and_offline_qos0() {
        let counters = Counters::default();
        let mut j = Journal::disabled(Default::default());
        let l = limits(1, OverflowPolicy::DropNewest);
        let mut s = Session::new("c".into(), false, Origin::Local, &l);
        s.deliver(
            msg(0, QoS::AtMostOnce),
            &l,
            &counters,
            &mut j,
            Instant::now(),
        );
        s.deliver(
            msg(1, QoS::ExactlyOnce),
            &l,
            &counters,
            &mut j,
            Instant::now(),
        );
        s.deliver(
            msg(2, QoS::ExactlyOnce),
            &l,
            &counters,
            &mut j,
            Instant::now(),
        );
        assert_eq!(s.queue_len(), 1);
        assert_eq!(counters.snapshot().dropped_queue_full, 1);
        let (tx, mut rx) = outlet();
        s.attach(
            Attached {
                id: 1,
                outlet: tx,
                v5: None,
            },
            true,
            &counters,
            &mut j,
            Instant::now(),
        );
        assert_eq!(drain_payloads(&mut rx), ["1"]);
        assert_eq!(counters.snapshot().queued, 0);
    }

    #[test]
    fn would_drop_only_when_the_queue_is_full() {
        let counters = Counters::default();
        let mut j = Journal::disabled(Default::default());
        let l = limits(2, OverflowPolicy::DropOldest);
        let mut s = Session::new("c".into(), false, Origin::Local, &l);
        // Away with an empty queue: queued, not dropped.
        assert!(!s.would_drop(&l));
        let (tx, _rx) = outlet();
        s.attach(
            Attached {
                id: 1,
                outlet: tx,
                v5: None,
            },
            false,
            &counters,
            &mut j,
            Instant::now(),
        );
        for n in 0..4 {
            assert!(!s.would_drop(&l), "message {n} fits");
            s.deliver(
                msg(n, QoS::AtLeastOnce),
                &l,
                &counters,
                &mut j,
                Instant::now(),
            );
        }
        // Window (2) and queue (2) full.
        assert!(s.would_drop(&l));
        assert_eq!(counters.snapshot().dropped_queue_full, 0);
        // max_queued_messages 0: only the window.
        let l0 = limits(0, OverflowPolicy::DropOldest);
        let mut z = Session::new("z".into(), false, Origin::Local, &l0);
        let (tx, _rx0) = outlet();
        z.attach(
            Attached {
                id: 2,
                outlet: tx,
                v5: None,
            },
            false,
            &counters,
            &mut j,
            Instant::now(),
        );
        assert!(!z.would_drop(&l0));
        z.deliver(
            msg(0, QoS::AtLeastOnce),
            &l0,
            &counters,
            &mut j,
            Instant::now(),
        );
        z.deliver(
            msg(1, QoS::AtLeastOnce),
            &l0,
            &counters,
            &mut j,
            Instant::now(),
        );
        assert!(z.would_drop(&l0));
    }

    /// Issue 10: a session holds no QoS 1/2 state until it has a QoS 1/2
    /// flow (QoS 0 either way allocates none), and gives it back once
    /// nothing is in flight, queued or owed; the window it was given on
    /// attach still holds for state allocated later.
    #[test]
    fn qos_state_is_allocated_on_first_use_and_released_when_idle() {
        let counters = Counters::default();
        let mut j = Journal::disabled(Default::default());
        let l = limits(10, OverflowPolicy::DropOldest);
        let mut s = Session::new("c".into(), false, Origin::Local, &l);
        let (tx, mut rx) = outlet();
        s.attach(
            Attached {
                id: 1,
                outlet: tx,
                v5: Some(V5Attached {
                    session_expiry: 0,
                    receive_maximum: 1,
                    max_packet: u32::MAX,
                }),
            },
            false,
            &counters,
            &mut j,
            Instant::now(),
        );
        s.reset_incoming();
        assert!(!s.has_flows(), "attached without any state");
        s.deliver(
            msg(0, QoS::AtMostOnce),
            &l,
            &counters,
            &mut j,
            Instant::now(),
        );
        let publish =
            rumqttc::mqttbytes::v4::Publish::new("t", rumqttc::mqttbytes::QoS::AtMostOnce, "x");
        assert!(matches!(
            s.on_publish(publish, Instant::now()),
            IncomingAction::Deliver { token: None, .. }
        ));
        assert!(!s.has_flows(), "QoS 0 both ways keeps none");
        assert_eq!(drain_payloads(&mut rx), ["0"]);
        for n in 1..=2 {
            s.deliver(
                msg(n, QoS::AtLeastOnce),
                &l,
                &counters,
                &mut j,
                Instant::now(),
            );
        }
        assert!(s.has_flows());
        // The client's Receive Maximum (1) holds: one in flight, one queued.
        assert_eq!(drain_payloads(&mut rx), ["1"]);
        assert_eq!(s.queue_len(), 1);
        s.release_idle();
        assert!(s.has_flows(), "kept while a flow is in flight");
        s.on_puback(1, &mut j).unwrap();
        s.pump(&counters, &mut j, Instant::now());
        assert_eq!(drain_payloads(&mut rx), ["2"]);
        s.release_idle();
        assert!(s.has_flows(), "kept while a flow is in flight");
        s.on_puback(2, &mut j).unwrap();
        s.release_idle();
        assert!(!s.has_flows(), "released once idle");
        // An incoming QoS 1 flow is state too, until it is acknowledged.
        let mut publish =
            rumqttc::mqttbytes::v4::Publish::new("t", rumqttc::mqttbytes::QoS::AtLeastOnce, "x");
        publish.pkid = 7;
        let IncomingAction::Deliver {
            token: Some(token), ..
        } = s.on_publish(publish, Instant::now())
        else {
            panic!("a QoS 1 delivery with a token");
        };
        s.release_idle();
        assert!(
            s.has_flows(),
            "kept while the publisher waits for its PUBACK"
        );
        assert_eq!(s.flows().incoming.ack(token).len(), 1);
        s.release_idle();
        assert!(!s.has_flows());
    }

    fn expiring(n: u32, secs: u32) -> Message {
        let mut m = msg(n, QoS::AtLeastOnce);
        m.properties = Some(crate::protocol::MessageProperties::from(
            crate::protocol::PropertyFields {
                message_expiry_interval: Some(secs),
                ..Default::default()
            },
        ));
        m
    }

    fn drain_expiry(rx: &mut crate::broker::outlet::OutletRx) -> Vec<(String, Option<u32>)> {
        use futures_util::FutureExt;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(n) = rx.recv_many(&mut buf, 100).now_or_never() {
            if n == 0 {
                break;
            }
            for o in buf.drain(..) {
                if let Out::Publish(b) = o {
                    let m = b.0;
                    let left = m.properties.and_then(|p| p.message_expiry_interval);
                    out.push((String::from_utf8_lossy(&m.payload).into_owned(), left));
                }
            }
        }
        out
    }

    /// MQTT-3.3.2-5/-6: a queued message is sent with the interval it has
    /// left, and dropped (counted) once it has none.
    #[test]
    fn queued_messages_expire_and_go_out_with_the_interval_left() {
        let counters = Counters::default();
        let mut j = Journal::disabled(Default::default());
        let l = limits(10, OverflowPolicy::DropOldest);
        let mut s = Session::new("c".into(), false, Origin::Local, &l);
        let t0 = Instant::now();
        s.deliver(expiring(0, 5), &l, &counters, &mut j, t0);
        s.deliver(expiring(1, 60), &l, &counters, &mut j, t0);
        s.deliver(msg(2, QoS::AtLeastOnce), &l, &counters, &mut j, t0);
        assert_eq!(s.queue_len(), 3, "away: all queued");
        let (tx, mut rx) = outlet();
        let later = t0 + std::time::Duration::from_secs(10);
        s.attach(
            Attached {
                id: 1,
                outlet: tx,
                v5: None,
            },
            true,
            &counters,
            &mut j,
            later,
        );
        assert_eq!(
            drain_expiry(&mut rx),
            [("1".to_string(), Some(50)), ("2".to_string(), None)]
        );
        assert_eq!(counters.snapshot().dropped_expired, 1);
        assert_eq!(counters.snapshot().queued, 0);
    }
}
