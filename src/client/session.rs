//! The protocol state of one remote-broker client, kept across connections:
//! outgoing QoS flows (and the QoS 2 limit), incoming QoS flows, the
//! subscriptions to restore, the QoS 0 backlog taken while disconnected, and
//! the keepalive bookkeeping of the live connection.
//!
//! On an MQTT 5 connection the session also honours what the broker granted
//! in its CONNACK ([`Grant`]: receive maximum bounds the window, maximum
//! packet size, maximum QoS, retain available, server keep alive), hands
//! PUBLISH and SUBSCRIBE out with their properties and options, and acts on
//! failure reason codes in PUBACK/PUBREC ([`ClientSession::on_refused`]).
//!
//! Pure and synchronous (sans-IO): methods take a decoded packet or a request
//! plus `now`, and hand what must be sent and which publishes completed to an
//! [`Output`]; what the application must see comes back as a return value.
//! The IO driver ([`super::connection`]) reads and writes frames, feeds the
//! session and forwards its outputs. Generic over the publish completion `D`
//! so tests use plain values.

use std::collections::VecDeque;
use std::time::Instant;

use rumqttc::mqttbytes::v4::{Packet, Publish};

use super::durable::{Ledger, Match, Restore, Write};
use super::subs::{SubDone, SubOp, Subs, UnsubDone};
use super::wire::Grant;
use crate::link::{AckToken, LinkError, Origin};
use crate::protocol::reason::ReasonCode;
use crate::protocol::{
    AckKind, Incoming, IncomingAction, Keepalive, Message, MessageProperties, Outgoing, QoS,
    SubscribeOptions, filter_is_valid, packet_name, topic_name_is_valid,
};

/// Bytes of fixed header, topic length and packet id around a PUBLISH payload.
const PUBLISH_OVERHEAD: usize = 5 + 2 + 2;

/// An upper bound of the bytes `p` takes in an MQTT 5 PUBLISH (property
/// length, identifiers, length prefixes), to refuse what a broker's
/// maximum packet size would never take before it is sent.
fn properties_size(p: &MessageProperties) -> usize {
    let string = |s: &Option<String>| s.as_ref().map_or(0, |s| 3 + s.len());
    4 + p.payload_is_utf8.map_or(0, |_| 2)
        + p.message_expiry_interval.map_or(0, |_| 5)
        + string(&p.content_type)
        + string(&p.response_topic)
        + p.correlation_data.as_ref().map_or(0, |d| 3 + d.len())
        + p.user_properties
            .iter()
            .map(|(k, v)| 5 + k.len() + v.len())
            .sum::<usize>()
        + p.subscription_identifiers.len() * 5
        + 3
}

/// What the session hands to the IO driver while it handles an input.
pub(crate) trait Output<D> {
    /// Queue `packet` for the next flush.
    fn send(&mut self, packet: &Packet);
    /// Queue `packet`, a PUBLISH, with its message's properties (sent on MQTT 5).
    fn send_publish(&mut self, packet: &Packet, properties: Option<&MessageProperties>);
    /// Queue `packet`, a SUBSCRIBE, with each filter's options (sent on MQTT 5).
    fn send_subscribe(&mut self, packet: &Packet, options: &[SubscribeOptions]);
    /// A QoS 0 publish was queued: complete `done` once it is flushed.
    fn complete_after_flush(&mut self, done: D);
    /// A publish completed now (acknowledged, rejected or failed).
    fn complete(&mut self, done: D, result: Result<(), LinkError>);
    /// Apply a change to the stored QoS 2 flows now ([`super::durable`]).
    /// Only called while connected.
    fn persist(&mut self, write: Write);
    /// Queue `packet` to go out once everything persisted so far is
    /// durable; packets sent after it wait behind it, so order is kept.
    fn send_when_durable(&mut self, packet: &Packet, properties: Option<&MessageProperties>);
}

/// What `Outgoing` keeps per QoS 1/2 flow: the completion, and whether the
/// flow counts against the QoS 2 limit.
#[derive(Debug)]
pub(crate) struct Flow<D> {
    pub(crate) done: D,
    pub(crate) exactly_once: bool,
}

/// A packet from the broker the session cannot take: the connection is lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected {0} from broker")]
pub(crate) struct Unexpected(pub(crate) &'static str);

/// A PUBACK/PUBREC with 0x97 (quota exceeded): the message stays in flight
/// and the connection is dropped, so it goes again after the backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuotaExceeded;

/// The broker was silent for 1.5 × keepalive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeepaliveDead;

/// Limits and names the session needs from the client options.
#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    /// Broker name (logs).
    pub(crate) name: String,
    /// Outgoing QoS 1/2 window.
    pub(crate) inflight: usize,
    /// QoS 2 flows allowed in the window at once.
    pub(crate) inflight_qos2: usize,
    /// Largest packet the broker takes.
    pub(crate) max_packet_size: usize,
}

/// Keepalive bookkeeping of the live connection.
#[derive(Debug, Clone, Copy)]
struct Liveness {
    keepalive: Keepalive,
    last_sent: Instant,
    last_received: Instant,
    ping_outstanding: bool,
}

/// The protocol state of one client, across connections.
pub(crate) struct ClientSession<D> {
    name: String,
    max_packet_size: usize,
    /// The configured window; a broker's receive maximum may lower it per connection.
    window: usize,
    /// The configured keepalive; a broker's server keep alive may replace it per connection.
    keepalive: Keepalive,
    /// What the broker of the live (or last) connection granted.
    grant: Grant,
    /// Whether the live (or last) connection carries message properties (MQTT 5).
    properties_on_wire: bool,
    qos2_limit: usize,
    outgoing: Outgoing<Flow<D>>,
    /// QoS 2 flows in `outgoing` (limited by `qos2_limit`).
    qos2_inflight: usize,
    /// A QoS 2 publish waiting for the QoS 2 limit; while it waits no other
    /// request is taken (order is kept).
    stashed: Option<(Message, D)>,
    /// The origin of the stashed publish, if its caller named one.
    stashed_origin: Option<Origin>,
    /// QoS 0 publishes accepted while disconnected (bounded by the window).
    qos0_backlog: VecDeque<(Message, D)>,
    /// Flows of `outgoing` not yet resent on this connection (PUBLISH again,
    /// or PUBREL), in order, each with whether it waits for the store: a
    /// broker that lowered its receive maximum below what is in flight gets
    /// at most that many at once, the rest as its acks free the window.
    resend: VecDeque<(Packet, bool)>,
    /// QoS 2 flows of spooled pipes kept on disk (`None`: not kept).
    ledger: Option<Ledger>,
    incoming: Incoming,
    subs: Subs,
    /// Endpoint of the live connection (logs); `None` while disconnected.
    endpoint: Option<String>,
    live: Liveness,
}

impl<D> ClientSession<D> {
    pub(crate) fn new(config: SessionConfig, keepalive: Keepalive, now: Instant) -> Self {
        ClientSession {
            name: config.name,
            max_packet_size: config.max_packet_size,
            window: config.inflight.max(1),
            keepalive,
            grant: Grant::v3(false),
            properties_on_wire: false,
            qos2_limit: config.inflight_qos2.max(1),
            outgoing: Outgoing::new(config.inflight.max(1)),
            qos2_inflight: 0,
            stashed: None,
            stashed_origin: None,
            qos0_backlog: VecDeque::new(),
            resend: VecDeque::new(),
            ledger: None,
            incoming: Incoming::new(),
            subs: Subs::default(),
            endpoint: None,
            live: Liveness {
                keepalive,
                last_sent: now,
                last_received: now,
                ping_outstanding: false,
            },
        }
    }

    /// Keeps spooled pipes' QoS 2 flows on disk from now on, starting with
    /// the flows found there at start: they go back into the window under
    /// their packet ids, in publish order, each completing `detached()`
    /// until the pipe that sent it asks for it again. Call before the first
    /// connection.
    pub(crate) fn restore_durable(&mut self, found: Restore, mut detached: impl FnMut() -> D) {
        for f in found.flows {
            let flow = Flow {
                done: detached(),
                exactly_once: true,
            };
            if self
                .outgoing
                .restore(f.message, f.pkid, f.released, flow)
                .is_ok()
            {
                self.qos2_inflight += 1;
            }
        }
        self.ledger = Some(found.ledger);
    }

    /// Replacement settings from a reload (they hold from the next
    /// connection on; the flows are kept).
    pub(crate) fn set_limits(&mut self, keepalive: Keepalive, max_packet_size: usize) {
        self.keepalive = keepalive;
        self.live.keepalive = keepalive;
        self.max_packet_size = max_packet_size;
    }

    /// Whether a new request may be taken: room in the inflight window and no
    /// QoS 2 publish waiting for its limit.
    pub(crate) fn can_take(&self) -> bool {
        self.outgoing.has_room() && self.stashed.is_none()
    }

    /// Whether another QoS 0 publish may wait for the next connection.
    pub(crate) fn backlog_has_room(&self) -> bool {
        self.qos0_backlog.len() < self.outgoing.window()
    }

    /// Nothing left to deliver to the broker.
    pub(crate) fn is_idle(&self) -> bool {
        self.outgoing.is_empty() && self.stashed.is_none() && self.qos0_backlog.is_empty()
    }

    /// QoS 1/2 flows in flight.
    pub(crate) fn inflight(&self) -> usize {
        self.outgoing.len()
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.endpoint.is_some()
    }

    /// A connection was accepted (CONNACK): resend (DUP) or re-publish what is
    /// unacknowledged, in order, then what queued up while we were away, then
    /// subscriptions (restored when the broker has no session), then `birth`.
    /// At most the broker's receive maximum of the flows goes out at once
    /// (the rest as acks come, in order); a PUBLISH that no longer fits its
    /// maximum packet size ends as a `rejected` drop instead of staying in
    /// flight forever.
    ///
    /// `grant` is what the broker's CONNACK allowed ([`Grant::v3`] on 3.1.1);
    /// `properties_on_wire` whether the connection speaks MQTT 5.
    pub(crate) fn connected(
        &mut self,
        endpoint: String,
        grant: Grant,
        properties_on_wire: bool,
        birth: Option<(Message, D)>,
        now: Instant,
        out: &mut impl Output<D>,
    ) {
        let session_present = grant.session_present;
        self.outgoing
            .set_window(self.window.min(usize::from(grant.receive_maximum)));
        self.live.keepalive = grant.keepalive.map_or(self.keepalive, Keepalive::new);
        self.grant = grant;
        self.properties_on_wire = properties_on_wire;
        self.endpoint = Some(endpoint);
        self.live.last_sent = now;
        self.live.last_received = now;
        self.live.ping_outstanding = false;
        if !session_present {
            self.incoming.clear_session();
        }
        // Stored flows: their records are written again first, and what
        // is resent waits until they are durable.
        let gate = match &mut self.ledger {
            Some(l) if l.live() > 0 => {
                for w in l.resume(session_present) {
                    out.persist(w);
                }
                true
            }
            _ => false,
        };
        self.resend.clear();
        for p in self.outgoing.resume(session_present) {
            if let Packet::Publish(publish) = &p
                && let Some(too_large) = self.too_large(publish.pkid)
            {
                self.drop_flow(publish.pkid, too_large, out);
                continue;
            }
            self.resend.push_back((p, gate));
        }
        self.send_resends(out);
        self.release_stashed(out);
        while let Some((message, done)) = self.qos0_backlog.pop_front() {
            self.publish(message, done, out);
        }
        for p in self.subs.connected(session_present, &mut self.outgoing) {
            self.send(&p, out);
        }
        if let Some((message, done)) = birth {
            self.publish(message, done, out);
        }
    }

    /// The connection ended: in-flight flows wait for the next one.
    pub(crate) fn disconnected(&mut self) {
        self.endpoint = None;
        self.resend.clear();
        self.incoming.reset_connection();
        self.subs.disconnected(&mut self.outgoing);
    }

    /// A publish request with no origin (tests).
    #[cfg(test)]
    pub(crate) fn publish_request(&mut self, message: Message, done: D, out: &mut impl Output<D>) {
        self.publish_request_from(message, None, done, out);
    }

    /// A publish request. Connected: the PUBLISH is sent. Disconnected: QoS 0
    /// waits in the backlog, QoS 1/2 in `Outgoing` for the next connection.
    /// `origin` names a spooled pipe's record: with the QoS 2 flows kept on
    /// disk, a flow already held for it is continued instead of publishing
    /// the message again.
    pub(crate) fn publish_request_from(
        &mut self,
        message: Message,
        origin: Option<Origin>,
        done: D,
        out: &mut impl Output<D>,
    ) {
        if let Err(e) = self.check_publish(&message) {
            out.complete(done, Err(e));
            return;
        }
        let origin = origin.filter(|_| message.qos == QoS::ExactlyOnce && self.ledger.is_some());
        let done = match &origin {
            Some(o) => match self.attach(o, done, out) {
                Some(done) => done,
                None => return,
            },
            None => done,
        };
        if !self.is_connected() && message.qos == QoS::AtMostOnce {
            self.qos0_backlog.push_back((message, done));
        } else {
            self.publish_from(message, origin, done, out);
        }
    }

    /// A QoS 2 publish from `origin`: forgets completion marks below the
    /// pipe's cursor, then continues the flow held for it (the caller's
    /// completion replaces the one it had), or completes at once if it was
    /// delivered already. Gives `done` back when there is nothing to attach to.
    fn attach(&mut self, origin: &Origin, done: D, out: &mut impl Output<D>) -> Option<D> {
        let ledger = self.ledger.as_mut()?;
        if self.endpoint.is_some() {
            for w in ledger.collect(origin) {
                out.persist(w);
            }
        }
        match ledger.lookup(origin) {
            Match::Live(pkid) => match self.outgoing.token_mut(pkid) {
                Some(flow) => {
                    flow.done = done;
                    None
                }
                None => Some(done),
            },
            Match::Completed => {
                out.complete(done, Ok(()));
                None
            }
            Match::New => Some(done),
        }
    }

    /// A subscribe request (restored on every connection without a session).
    pub(crate) fn subscribe(
        &mut self,
        filters: Vec<(String, SubscribeOptions)>,
        done: SubDone,
        out: &mut impl Output<D>,
    ) {
        if let Some((f, _)) = filters.iter().find(|(f, _)| !filter_is_valid(f)) {
            let _ = done.send(Err(LinkError::Rejected(format!("invalid filter {f:?}"))));
        } else if filters.is_empty() {
            let _ = done.send(Ok(Vec::new()));
        } else {
            self.subs.push(SubOp::Subscribe {
                filters,
                done: Some(done),
            });
            self.send_sub_packets(out);
        }
    }

    /// An unsubscribe request.
    pub(crate) fn unsubscribe(
        &mut self,
        filters: Vec<String>,
        done: UnsubDone,
        out: &mut impl Output<D>,
    ) {
        if filters.is_empty() {
            let _ = done.send(Ok(()));
        } else {
            self.subs.push(SubOp::Unsubscribe { filters, done });
            self.send_sub_packets(out);
        }
    }

    fn send_sub_packets(&mut self, out: &mut impl Output<D>) {
        if self.is_connected() {
            for p in self.subs.take_packets(&mut self.outgoing) {
                self.send(&p, out);
            }
        }
    }

    /// Sends a packet of the flows: a PUBLISH with its message's properties,
    /// a SUBSCRIBE with its options, anything else as it is.
    fn send(&self, p: &Packet, out: &mut impl Output<D>) {
        match p {
            Packet::Publish(_) => out.send_publish(p, self.properties_of(p)),
            Packet::Subscribe(sub) => out.send_subscribe(p, &self.subs.options(sub.pkid)),
            other => out.send(other),
        }
    }

    /// Like [`ClientSession::send`], once everything persisted so far is durable.
    fn send_when_durable(&self, p: &Packet, out: &mut impl Output<D>) {
        out.send_when_durable(p, self.properties_of(p));
    }

    /// The MQTT 5 properties of an in-flight PUBLISH's message (the flow
    /// keeps the message; the packet does not carry them).
    fn properties_of(&self, p: &Packet) -> Option<&MessageProperties> {
        match p {
            Packet::Publish(publish) => self
                .outgoing
                .message(publish.pkid)
                .and_then(|m| m.properties.as_ref()),
            _ => None,
        }
    }

    /// QoS 2 flows allowed at once: ours, or fewer if the broker's grant
    /// says so ([`Grant::exactly_once_limit`]).
    fn qos2_limit(&self) -> usize {
        self.grant.exactly_once_limit.map_or(self.qos2_limit, |l| {
            self.qos2_limit.min(usize::from(l).max(1))
        })
    }

    /// The largest PUBLISH the broker takes: ours, or less if it said so.
    fn packet_limit(&self) -> usize {
        let granted = self
            .grant
            .max_packet_size
            .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
        self.max_packet_size.min(granted)
    }

    /// Rejects what can never be sent: an invalid topic, or a packet over the
    /// maximum size (it would otherwise be retried forever).
    fn check_publish(&self, m: &Message) -> Result<(), LinkError> {
        if !topic_name_is_valid(&m.topic) {
            return Err(LinkError::Rejected(format!(
                "invalid topic name {:?}",
                m.topic
            )));
        }
        self.check_size(m)
    }

    /// Rejects a PUBLISH of `m` over the maximum packet size (ours, or the
    /// broker's if it granted less).
    fn check_size(&self, m: &Message) -> Result<(), LinkError> {
        let props = match (&m.properties, self.properties_on_wire) {
            (Some(p), true) => properties_size(p),
            _ => 0,
        };
        let size = PUBLISH_OVERHEAD + m.topic.len() + m.payload.len() + props;
        let limit = self.packet_limit();
        if size > limit {
            return Err(LinkError::Rejected(format!(
                "PUBLISH of {size} bytes exceeds the maximum packet size {limit}"
            )));
        }
        Ok(())
    }

    /// Why the in-flight PUBLISH under `pkid` no longer fits this
    /// connection's maximum packet size (the broker lowered it), if it does not.
    fn too_large(&self, pkid: u16) -> Option<LinkError> {
        self.check_size(self.outgoing.message(pkid)?).err()
    }

    /// Ends the flow under `pkid`, whose PUBLISH can never be sent again,
    /// with `error` (the pipe counts a `rejected` drop). Its stored record,
    /// if any, becomes a completion mark, so a restart does not send it again.
    fn drop_flow(&mut self, pkid: u16, error: LinkError, out: &mut impl Output<D>) {
        let topic = self
            .outgoing
            .message(pkid)
            .map(|m| m.topic.to_string())
            .unwrap_or_default();
        let flow = match self.outgoing.on_puback(pkid) {
            Ok(flow) => Ok(flow),
            // QoS 2 (before PUBREC: only a PUBLISH is ever dropped).
            Err(_) => self
                .outgoing
                .on_pubrec(pkid)
                .and_then(|_| self.outgoing.on_pubcomp(pkid)),
        };
        let Ok(flow) = flow else {
            return;
        };
        if let Some(w) = self.ledger.as_mut().and_then(|l| l.completed(pkid)) {
            out.persist(w);
        }
        crate::warn_limited!(format!("resend-too-large:{}", self.name), broker = %self.name, endpoint = %self.endpoint(), topic = %topic, error = %error, "broker lowered its maximum packet size: an unacknowledged message no longer fits and is dropped");
        if flow.exactly_once {
            self.qos2_inflight = self.qos2_inflight.saturating_sub(1);
        }
        out.complete(flow.done, Err(error));
    }

    /// Sends what waits to be resent while the window has room (flows
    /// resent on this connection stay below the window).
    fn send_resends(&mut self, out: &mut impl Output<D>) {
        while !self.resend.is_empty()
            && self.outgoing.len().saturating_sub(self.resend.len()) < self.outgoing.window()
        {
            let Some((p, gated)) = self.resend.pop_front() else {
                break;
            };
            if gated {
                self.send_when_durable(&p, out);
            } else {
                self.send(&p, out);
            }
        }
    }

    /// The broker answered for `pkid`: a resend still waiting for it is moot.
    fn forget_resend(&mut self, pkid: u16) {
        if !self.resend.is_empty() {
            self.resend.retain(|(p, _)| match p {
                Packet::Publish(publish) => publish.pkid != pkid,
                Packet::PubRel(rel) => rel.pkid != pkid,
                _ => true,
            });
        }
    }

    /// Starts a publish; connected, the PUBLISH is sent, otherwise a QoS 1/2
    /// flow waits in `Outgoing` for [`ClientSession::connected`]. A QoS 2
    /// publish over the QoS 2 limit is stashed until a QoS 2 flow completes.
    fn publish(&mut self, message: Message, done: D, out: &mut impl Output<D>) {
        self.publish_from(message, None, done, out);
    }

    /// As [`ClientSession::publish`]; a QoS 2 flow from `origin` is kept on
    /// disk (the ledger is set), and its PUBLISH waits until its record is
    /// durable.
    fn publish_from(
        &mut self,
        mut message: Message,
        origin: Option<Origin>,
        done: D,
        out: &mut impl Output<D>,
    ) {
        self.fit_grant(&mut message);
        let exactly_once = message.qos == QoS::ExactlyOnce;
        if exactly_once && self.qos2_inflight >= self.qos2_limit() {
            self.stashed = Some((message, done));
            self.stashed_origin = origin;
            return;
        }
        let kept = origin.map(|o| (o, message.clone()));
        // QoS 0 keeps no flow to find the properties in later.
        let qos0_props = match message.qos {
            QoS::AtMostOnce => message.properties.clone(),
            _ => None,
        };
        match self.outgoing.publish(message, Flow { done, exactly_once }) {
            Ok((packet, qos0)) => {
                if exactly_once {
                    self.qos2_inflight += 1;
                }
                let record = match (&packet, kept, &mut self.ledger) {
                    (Packet::Publish(p), Some((o, m)), Some(l)) => {
                        Some(l.published(p.pkid, &o, &m))
                    }
                    _ => None,
                };
                if self.is_connected() {
                    // While disconnected the record is written by `connected`.
                    match record {
                        Some(w) => {
                            out.persist(w);
                            self.send_when_durable(&packet, out);
                        }
                        None if qos0.is_some() => out.send_publish(&packet, qos0_props.as_ref()),
                        None => self.send(&packet, out),
                    }
                    if let Some(flow) = qos0 {
                        out.complete_after_flush(flow.done);
                    }
                } else if let Some(flow) = qos0 {
                    // Not reached through `publish_request` (QoS 0 waits in
                    // the backlog while disconnected): nothing was sent.
                    out.complete(flow.done, Err(LinkError::Closed));
                }
            }
            Err(full) => {
                // The driver's guard keeps this from happening for callers;
                // an internal publish (birth) may hit it.
                crate::warn_limited!(format!("inflight-full:{}", self.name), broker = %self.name, topic = %full.message.topic, "inflight window full, publish refused");
                out.complete(
                    full.token.done,
                    Err(LinkError::Rejected("inflight window full".into())),
                );
            }
        }
    }

    /// Fits a message to what the broker granted: QoS lowered to its
    /// maximum QoS [MQTT-3.2.2-11], the retain flag cleared when it has no
    /// retained messages [MQTT-3.2.2-14] (both logged, rate-limited).
    fn fit_grant(&self, message: &mut Message) {
        if message.qos > self.grant.max_qos {
            crate::warn_limited!(format!("max-qos:{}", self.name), broker = %self.name, topic = %message.topic, max_qos = ?self.grant.max_qos, "broker's maximum QoS is lower: publishing at it");
            message.qos = self.grant.max_qos;
        }
        if message.retain && !self.grant.retain_available {
            crate::warn_limited!(format!("retain-unavailable:{}", self.name), broker = %self.name, topic = %message.topic, "broker has no retained messages: publishing without retain");
            message.retain = false;
        }
    }

    /// A PUBACK or PUBREC with a failure reason code (MQTT 5). 0x97 (quota
    /// exceeded) leaves the message in flight and returns
    /// [`QuotaExceeded`]: the caller drops the connection and the message
    /// goes again after the backoff. Any other code ends the flow with
    /// `LinkError::Rejected` (a counted drop, never a retry loop).
    pub(crate) fn on_refused(
        &mut self,
        kind: AckKind,
        pkid: u16,
        code: ReasonCode,
        out: &mut impl Output<D>,
    ) -> Result<(), QuotaExceeded> {
        if code == ReasonCode::QuotaExceeded {
            return Err(QuotaExceeded);
        }
        self.forget_resend(pkid);
        let topic = self
            .outgoing
            .message(pkid)
            .map(|m| m.topic.to_string())
            .unwrap_or_default();
        let flow = match kind {
            // A refused PUBREC ends a QoS 2 flow: no PUBREL follows.
            AckKind::PubRec => self
                .outgoing
                .on_pubrec(pkid)
                .and_then(|_| self.outgoing.on_pubcomp(pkid)),
            _ => self.outgoing.on_puback(pkid),
        };
        match flow {
            Ok(flow) => {
                crate::warn_limited!(format!("refused:{}", self.name), broker = %self.name, endpoint = %self.endpoint(), topic = %topic, reason = ?code, "broker refused a message: dropped");
                self.flow_finished(
                    flow,
                    Err(LinkError::Rejected(format!("{kind} {code}"))),
                    out,
                );
            }
            Err(v) => self.unexpected_ack(&v),
        }
        Ok(())
    }

    /// A QoS 1/2 flow completed (PUBACK/PUBCOMP): resolve it, and release a
    /// stashed QoS 2 publish if the limit allows now.
    fn flow_done(&mut self, flow: Flow<D>, out: &mut impl Output<D>) {
        self.flow_finished(flow, Ok(()), out);
    }

    /// A QoS 1/2 flow ended with `result`; as [`ClientSession::flow_done`].
    fn flow_finished(
        &mut self,
        flow: Flow<D>,
        result: Result<(), LinkError>,
        out: &mut impl Output<D>,
    ) {
        if flow.exactly_once {
            self.qos2_inflight = self.qos2_inflight.saturating_sub(1);
        }
        out.complete(flow.done, result);
        self.send_resends(out);
        self.release_stashed(out);
    }

    /// Publishes the stashed QoS 2 message once the QoS 2 limit and the
    /// window allow (after every resend, so order is kept).
    fn release_stashed(&mut self, out: &mut impl Output<D>) {
        if self.qos2_inflight < self.qos2_limit()
            && self.resend.is_empty()
            && self.outgoing.has_room()
            && let Some((message, done)) = self.stashed.take()
        {
            let origin = self.stashed_origin.take();
            self.publish_from(message, origin, done, out);
        }
    }

    /// The application is done with an incoming message: send the
    /// PUBACK/PUBREC that may go out now (in arrival order). Tokens of an
    /// earlier connection are ignored.
    pub(crate) fn on_ack(&mut self, token: AckToken, out: &mut impl Output<D>) {
        if self.is_connected() {
            self.incoming.ack_each(token, |p| out.send(&p));
        } else {
            let _ = self.incoming.ack(token);
        }
    }

    /// Input arrived (any packet): the broker is alive.
    pub(crate) fn received(&mut self, now: Instant) {
        self.live.last_received = now;
    }

    /// Output was written to the socket.
    pub(crate) fn sent(&mut self, now: Instant) {
        self.live.last_sent = now;
    }

    /// A packet from the broker. Returns the message to hand to the
    /// application, if any (with its ack token for QoS 1/2).
    pub(crate) fn on_packet(
        &mut self,
        packet: Packet,
        now: Instant,
        out: &mut impl Output<D>,
    ) -> Result<Option<(Message, Option<AckToken>)>, Unexpected> {
        match packet {
            Packet::Publish(publish) => return Ok(self.on_publish(publish, None, now, out)),
            Packet::PubAck(ack) => match self.forget_then(ack.pkid).outgoing.on_puback(ack.pkid) {
                Ok(flow) => self.flow_done(flow, out),
                Err(v) => self.unexpected_ack(&v),
            },
            Packet::PubRec(rec) => match self.forget_then(rec.pkid).outgoing.on_pubrec(rec.pkid) {
                // A stored flow: "PUBREC received" is on disk before the PUBREL.
                Ok(rel) => match self.ledger.as_mut().and_then(|l| l.released(rec.pkid)) {
                    Some(w) => {
                        out.persist(w);
                        out.send_when_durable(&rel, None);
                    }
                    None => out.send(&rel),
                },
                Err(v) => self.unexpected_ack(&v),
            },
            Packet::PubComp(comp) => {
                match self.forget_then(comp.pkid).outgoing.on_pubcomp(comp.pkid) {
                    Ok(flow) => {
                        // Written before the pipe hears of it (and moves its cursor).
                        if let Some(w) = self.ledger.as_mut().and_then(|l| l.completed(comp.pkid)) {
                            out.persist(w);
                        }
                        self.flow_done(flow, out);
                    }
                    Err(v) => self.unexpected_ack(&v),
                }
            }
            Packet::PubRel(rel) => out.send(&self.incoming.on_pubrel(rel.pkid)),
            Packet::SubAck(ack) => {
                let pkid = ack.pkid;
                if !self.subs.on_suback(ack, &mut self.outgoing) {
                    crate::warn_limited!(format!("unknown-suback:{}", self.name), broker = %self.name, endpoint = %self.endpoint(), pkid, "SUBACK for unknown packet id ignored");
                }
                self.send_sub_packets(out);
            }
            Packet::UnsubAck(ack) => {
                if !self.subs.on_unsuback(ack.pkid, &mut self.outgoing) {
                    crate::warn_limited!(format!("unknown-unsuback:{}", self.name), broker = %self.name, endpoint = %self.endpoint(), pkid = ack.pkid, "UNSUBACK for unknown packet id ignored");
                }
                self.send_sub_packets(out);
            }
            Packet::PingResp => self.live.ping_outstanding = false,
            other => return Err(Unexpected(packet_name(&other))),
        }
        Ok(None)
    }

    /// A PUBLISH from the broker with its MQTT 5 properties, if any.
    /// Returns the message to hand to the application, if any.
    pub(crate) fn on_publish(
        &mut self,
        publish: Publish,
        properties: Option<MessageProperties>,
        now: Instant,
        out: &mut impl Output<D>,
    ) -> Option<(Message, Option<AckToken>)> {
        match self.incoming.on_publish(publish, now) {
            IncomingAction::Deliver { mut message, token } => {
                message.properties = properties;
                Some((message, token))
            }
            IncomingAction::Duplicate { resend } => {
                if let Some(p) = resend {
                    self.send(&p, out);
                }
                None
            }
        }
    }

    fn endpoint(&self) -> &str {
        self.endpoint.as_deref().unwrap_or("")
    }

    /// [`ClientSession::forget_resend`], then the session (to chain).
    fn forget_then(&mut self, pkid: u16) -> &mut Self {
        self.forget_resend(pkid);
        self
    }

    fn unexpected_ack(&self, v: &impl std::fmt::Display) {
        crate::warn_limited!(format!("unexpected-ack:{}", self.name), broker = %self.name, endpoint = %self.endpoint(), violation = %v, "ignored");
    }

    /// When the next keepalive action is due: a PINGREQ after `interval` of
    /// silence in either direction, death after 1.5 × interval without input.
    /// While reading is `paused` (backpressure) only our PINGREQs are due, so
    /// the broker keeps us; silence from it then proves nothing.
    pub(crate) fn next_keepalive(&self, paused: bool) -> Option<Instant> {
        let l = &self.live;
        if !l.keepalive.is_enabled() {
            return None;
        }
        if paused {
            return Some(l.last_sent + l.keepalive.interval);
        }
        let dead = l.last_received + l.keepalive.dead_after();
        if l.ping_outstanding {
            return Some(dead);
        }
        let ping = l.last_sent.min(l.last_received) + l.keepalive.interval;
        Some(ping.min(dead))
    }

    /// The keepalive timer fired (possibly early): send a PINGREQ if one is
    /// due, or declare the link dead.
    pub(crate) fn on_timer(
        &mut self,
        now: Instant,
        paused: bool,
        out: &mut impl Output<D>,
    ) -> Result<(), KeepaliveDead> {
        let l = &mut self.live;
        if !l.keepalive.is_enabled() {
            return Ok(());
        }
        if paused {
            if now >= l.last_sent + l.keepalive.interval {
                out.send(&Packet::PingReq);
            }
            return Ok(());
        }
        if now >= l.last_received + l.keepalive.dead_after() {
            return Err(KeepaliveDead);
        }
        let ping_at = l.last_sent.min(l.last_received) + l.keepalive.interval;
        if !l.ping_outstanding && now >= ping_at {
            out.send(&Packet::PingReq);
            l.ping_outstanding = true;
        }
        Ok(())
    }

    /// Fails everything still pending (the link closes).
    pub(crate) fn close(&mut self, out: &mut impl Output<D>) {
        for (_, flow) in self.outgoing.drain() {
            out.complete(flow.done, Err(LinkError::Closed));
        }
        self.qos2_inflight = 0;
        self.resend.clear();
        if let Some((_, done)) = self.stashed.take() {
            out.complete(done, Err(LinkError::Closed));
        }
        self.stashed_origin = None;
        for (_, done) in self.qos0_backlog.drain(..) {
            out.complete(done, Err(LinkError::Closed));
        }
        self.subs.close();
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use rumqttc::mqttbytes::QoS as W;
    use rumqttc::mqttbytes::v4::{PubAck, PubComp, PubRec, SubAck, SubscribeReasonCode};
    use tokio::sync::oneshot;

    use super::*;

    /// Records what the session hands out; completions are plain numbers.
    #[derive(Default)]
    pub(super) struct Rec {
        pub(super) sent: Vec<Packet>,
        /// Properties of each PUBLISH sent, in order.
        pub(super) properties: Vec<Option<MessageProperties>>,
        /// Options of each SUBSCRIBE sent, in order.
        pub(super) options: Vec<Vec<SubscribeOptions>>,
        pub(super) after_flush: Vec<u32>,
        pub(super) completed: Vec<(u32, Result<(), LinkError>)>,
    }

    impl Output<u32> for Rec {
        fn send(&mut self, packet: &Packet) {
            self.sent.push(packet.clone());
        }
        fn send_publish(&mut self, packet: &Packet, properties: Option<&MessageProperties>) {
            self.sent.push(packet.clone());
            self.properties.push(properties.cloned());
        }
        fn send_subscribe(&mut self, packet: &Packet, options: &[SubscribeOptions]) {
            self.sent.push(packet.clone());
            self.options.push(options.to_vec());
        }
        fn complete_after_flush(&mut self, done: u32) {
            self.after_flush.push(done);
        }
        fn complete(&mut self, done: u32, result: Result<(), LinkError>) {
            self.completed.push((done, result));
        }
        // No flows are stored here (see `durable_tests` for those).
        fn persist(&mut self, _write: Write) {}
        fn send_when_durable(&mut self, packet: &Packet, _: Option<&MessageProperties>) {
            self.sent.push(packet.clone());
        }
    }

    impl Rec {
        pub(super) fn take(&mut self) -> Vec<Packet> {
            std::mem::take(&mut self.sent)
        }
    }

    pub(super) fn session(keepalive_secs: u16, t0: Instant) -> ClientSession<u32> {
        ClientSession::new(
            SessionConfig {
                name: "b".into(),
                inflight: 10,
                inflight_qos2: 1,
                max_packet_size: 1024,
            },
            Keepalive::from_secs(keepalive_secs),
            t0,
        )
    }

    pub(super) fn msg(topic: &str, qos: QoS) -> Message {
        Message::new(topic, Bytes::from_static(b"p"), qos, false)
    }

    /// (topic, pkid, dup) of each PUBLISH in `packets`.
    fn publishes(packets: &[Packet]) -> Vec<(String, u16, bool)> {
        packets
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some((p.topic.clone(), p.pkid, p.dup)),
                _ => None,
            })
            .collect()
    }

    pub(super) fn connect(s: &mut ClientSession<u32>, present: bool, now: Instant, out: &mut Rec) {
        s.connected(
            "mqtt://b:1883".into(),
            Grant::v3(present),
            false,
            None,
            now,
            out,
        );
    }

    #[test]
    fn reconnect_resends_unacknowledged_publishes_with_dup_in_order() {
        let t0 = Instant::now();
        let mut s = session(0, t0);
        let mut out = Rec::default();
        connect(&mut s, false, t0, &mut out);
        for (i, topic) in ["a", "b", "c"].into_iter().enumerate() {
            s.publish_request(msg(topic, QoS::AtLeastOnce), i as u32, &mut out);
        }
        let first = publishes(&out.take());
        assert_eq!(first.iter().map(|p| p.2).collect::<Vec<_>>(), [false; 3]);
        // "b" is acknowledged; the connection drops before "a" and "c" are.
        assert_eq!(
            s.on_packet(Packet::PubAck(PubAck::new(first[1].1)), t0, &mut out),
            Ok(None)
        );
        assert_eq!(out.completed, vec![(1, Ok(()))]);
        s.disconnected();
        // Requests while away wait for the next connection, unsent.
        s.publish_request(msg("d", QoS::AtLeastOnce), 3, &mut out);
        s.publish_request(msg("q0", QoS::AtMostOnce), 4, &mut out);
        assert!(out.sent.is_empty());
        assert!(!s.is_idle());

        connect(&mut s, true, t0, &mut out);
        let again = publishes(&out.take());
        let topics: Vec<&str> = again.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(topics, ["a", "c", "d", "q0"]);
        // Resent flows keep their packet ids and carry DUP. A QoS 1 flow
        // taken while away is in `Outgoing` too and resumes with it (DUP, as
        // before the split); the QoS 0 backlog is new.
        assert_eq!(again[0], ("a".into(), first[0].1, true));
        assert_eq!(again[1], ("c".into(), first[2].1, true));
        assert!(again[2].2);
        assert!(!again[3].2);
        // The QoS 0 backlog completes once flushed.
        assert_eq!(out.after_flush, vec![4]);
    }

    #[test]
    fn puback_completes_the_publish_it_names() {
        let t0 = Instant::now();
        let mut s = session(0, t0);
        let mut out = Rec::default();
        connect(&mut s, false, t0, &mut out);
        s.publish_request(msg("a", QoS::AtLeastOnce), 10, &mut out);
        s.publish_request(msg("b", QoS::AtLeastOnce), 20, &mut out);
        let sent = publishes(&out.take());
        assert_eq!(s.inflight(), 2);
        s.on_packet(Packet::PubAck(PubAck::new(sent[1].1)), t0, &mut out)
            .unwrap();
        assert_eq!(out.completed, vec![(20, Ok(()))]);
        // An ack for an id not in flight is ignored, nothing completes.
        s.on_packet(Packet::PubAck(PubAck::new(sent[1].1)), t0, &mut out)
            .unwrap();
        assert_eq!(out.completed.len(), 1);
        s.on_packet(Packet::PubAck(PubAck::new(sent[0].1)), t0, &mut out)
            .unwrap();
        assert_eq!(out.completed, vec![(20, Ok(())), (10, Ok(()))]);
        assert!(s.is_idle());
    }

    #[test]
    fn qos2_limit_stashes_until_pubcomp_then_sends() {
        let t0 = Instant::now();
        let mut s = session(0, t0);
        let mut out = Rec::default();
        connect(&mut s, false, t0, &mut out);
        s.publish_request(msg("x", QoS::ExactlyOnce), 1, &mut out);
        s.publish_request(msg("y", QoS::ExactlyOnce), 2, &mut out);
        let sent = publishes(&out.take());
        assert_eq!(sent.len(), 1, "the limit is one QoS 2 flow");
        assert!(!s.can_take(), "nothing is taken while one waits");
        s.on_packet(Packet::PubRec(PubRec::new(sent[0].1)), t0, &mut out)
            .unwrap();
        assert!(matches!(out.take().as_slice(), [Packet::PubRel(_)]));
        s.on_packet(Packet::PubComp(PubComp::new(sent[0].1)), t0, &mut out)
            .unwrap();
        assert_eq!(out.completed, vec![(1, Ok(()))]);
        assert_eq!(publishes(&out.take())[0].0, "y");
        assert!(s.can_take());
    }

    #[test]
    fn keepalive_pings_after_the_interval_and_is_dead_after_one_and_a_half() {
        let t0 = Instant::now();
        let mut s = session(10, t0);
        let mut out = Rec::default();
        connect(&mut s, false, t0, &mut out);
        let sec = Duration::from_secs(1);
        assert_eq!(s.next_keepalive(false), Some(t0 + 10 * sec));
        // Early wake-up: nothing due.
        assert_eq!(s.on_timer(t0 + 9 * sec, false, &mut out), Ok(()));
        assert!(out.sent.is_empty());
        assert_eq!(s.on_timer(t0 + 10 * sec, false, &mut out), Ok(()));
        assert_eq!(out.take(), vec![Packet::PingReq]);
        // One PINGREQ outstanding at a time; next due is death at 15 s.
        assert_eq!(s.next_keepalive(false), Some(t0 + 15 * sec));
        assert_eq!(s.on_timer(t0 + 12 * sec, false, &mut out), Ok(()));
        assert!(out.sent.is_empty());
        assert_eq!(
            s.on_timer(t0 + 15 * sec, false, &mut out),
            Err(KeepaliveDead)
        );

        // A PINGRESP in time keeps the link; the next ping counts from there.
        let mut s = session(10, t0);
        connect(&mut s, false, t0, &mut out);
        s.on_timer(t0 + 10 * sec, false, &mut out).unwrap();
        s.sent(t0 + 10 * sec);
        s.received(t0 + 11 * sec);
        s.on_packet(Packet::PingResp, t0 + 11 * sec, &mut out)
            .unwrap();
        assert_eq!(s.next_keepalive(false), Some(t0 + 20 * sec));
        assert_eq!(s.on_timer(t0 + 16 * sec, false, &mut out), Ok(()));
    }

    #[test]
    fn paused_reading_only_pings_and_never_declares_death() {
        let t0 = Instant::now();
        let mut s = session(10, t0);
        let mut out = Rec::default();
        connect(&mut s, false, t0, &mut out);
        let at = t0 + Duration::from_secs(60);
        assert_eq!(s.on_timer(at, true, &mut out), Ok(()));
        assert_eq!(out.take(), vec![Packet::PingReq]);
        s.sent(at);
        assert_eq!(s.next_keepalive(true), Some(at + Duration::from_secs(10)));
    }

    #[test]
    fn keepalive_zero_never_pings() {
        let t0 = Instant::now();
        let mut s = session(0, t0);
        let mut out = Rec::default();
        connect(&mut s, false, t0, &mut out);
        assert_eq!(s.next_keepalive(false), None);
        let late = t0 + Duration::from_secs(3600);
        assert_eq!(s.on_timer(late, false, &mut out), Ok(()));
        assert!(out.sent.is_empty());
    }

    fn subscribes(packets: &[Packet]) -> Vec<(u16, Vec<String>)> {
        packets
            .iter()
            .filter_map(|p| match p {
                Packet::Subscribe(s) => {
                    Some((s.pkid, s.filters.iter().map(|f| f.path.clone()).collect()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn subscriptions_are_restored_only_when_the_broker_has_no_session() {
        let t0 = Instant::now();
        let mut s = session(0, t0);
        let mut out = Rec::default();
        connect(&mut s, false, t0, &mut out);
        let (tx, mut rx) = oneshot::channel();
        s.subscribe(vec![("a/#".into(), QoS::AtLeastOnce.into())], tx, &mut out);
        let subs = subscribes(&out.take());
        assert_eq!(subs.len(), 1);
        let ack = SubAck::new(
            subs[0].0,
            vec![SubscribeReasonCode::Success(W::AtLeastOnce)],
        );
        s.on_packet(Packet::SubAck(ack), t0, &mut out).unwrap();
        assert_eq!(rx.try_recv(), Ok(Ok(vec![Some(QoS::AtLeastOnce)])));

        s.disconnected();
        connect(&mut s, true, t0, &mut out);
        assert!(subscribes(&out.take()).is_empty(), "the broker kept them");
        s.disconnected();
        connect(&mut s, false, t0, &mut out);
        let restored = subscribes(&out.take());
        assert_eq!(restored.len(), 1);
        assert_eq!(restored[0].1, vec!["a/#".to_string()]);
    }

    #[test]
    fn incoming_qos1_is_reported_and_acked_in_arrival_order() {
        let t0 = Instant::now();
        let mut s = session(0, t0);
        let mut out = Rec::default();
        connect(&mut s, false, t0, &mut out);
        let mut tokens = Vec::new();
        for pkid in [7, 8] {
            let mut p = Publish::new("t", W::AtLeastOnce, vec![1u8]);
            p.pkid = pkid;
            let (message, token) = s
                .on_packet(Packet::Publish(p), t0, &mut out)
                .unwrap()
                .expect("delivered");
            assert_eq!(message.topic.as_str(), "t");
            tokens.push(token.expect("QoS 1 carries a token"));
        }
        // The second is done first: its PUBACK waits for the first.
        s.on_ack(tokens[1], &mut out);
        assert!(out.sent.is_empty());
        s.on_ack(tokens[0], &mut out);
        let acked: Vec<u16> = out
            .take()
            .iter()
            .filter_map(|p| match p {
                Packet::PubAck(a) => Some(a.pkid),
                _ => None,
            })
            .collect();
        assert_eq!(acked, [7, 8]);
    }

    #[test]
    fn packets_a_client_never_gets_end_the_connection_and_bad_publishes_are_rejected() {
        let t0 = Instant::now();
        let mut s = session(0, t0);
        let mut out = Rec::default();
        connect(&mut s, false, t0, &mut out);
        assert_eq!(
            s.on_packet(Packet::PingReq, t0, &mut out),
            Err(Unexpected("PINGREQ"))
        );
        s.publish_request(msg("a/+", QoS::AtLeastOnce), 1, &mut out);
        let big = Message::new("t", Bytes::from(vec![0u8; 2000]), QoS::AtMostOnce, false);
        s.publish_request(big, 2, &mut out);
        assert!(out.sent.is_empty());
        assert!(matches!(out.completed[0], (1, Err(LinkError::Rejected(_)))));
        assert!(matches!(out.completed[1], (2, Err(LinkError::Rejected(_)))));
    }

    #[test]
    fn close_fails_everything_pending() {
        let t0 = Instant::now();
        let mut s = session(0, t0);
        let mut out = Rec::default();
        s.publish_request(msg("q1", QoS::AtLeastOnce), 1, &mut out);
        s.publish_request(msg("q0", QoS::AtMostOnce), 2, &mut out);
        s.close(&mut out);
        assert_eq!(
            out.completed,
            vec![(1, Err(LinkError::Closed)), (2, Err(LinkError::Closed))]
        );
        assert!(s.is_idle());
    }
}

#[cfg(test)]
#[path = "session_v5_tests.rs"]
mod v5_tests;
