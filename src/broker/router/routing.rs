//! Routing and subscriptions: PUBLISH in, acknowledgements, SUBSCRIBE /
//! UNSUBSCRIBE, and fan-out through the trie.

use super::*;
use crate::broker::persist::unix_now_ms;
use crate::protocol::{PropertyFields, RetainHandling};
use durable::{Control, Waiter};
use rumqttc::v5::mqttbytes::v5::{
    Packet as P5, SubAck as SubAck5, SubscribeReasonCode as SubscribeReasonCode5,
    UnsubAck as UnsubAck5, UnsubAckReason,
};

/// Whether `session` may receive a message on `topic`: the ACL's read
/// check per delivery (as Mosquitto does), so a `deny` narrower than the
/// subscription filter still holds. Local links are trusted.
pub(super) fn may_read(security: &Security, session: &Session, topic: &str) -> bool {
    match (&security.acl, &session.origin) {
        (Some(acl), Origin::Network { username }) => {
            acl.check(username.as_deref(), &session.client_id, Op::Read, topic)
        }
        _ => true,
    }
}

/// The limit a network client's new subscription to `filter` would break,
/// if any. Replacing an existing subscription breaks none; in-process links
/// (pipes, configured by the operator) are never limited. `other_nodes`:
/// the share groups' trie, which counts against the same node limit.
pub(super) fn subscription_limit<T>(
    limits: &Limits,
    session: &Session,
    subs: &FilterTrie<T>,
    filter: &str,
    other_nodes: usize,
) -> Option<SubRefuseReason> {
    if matches!(session.origin, Origin::Local) || session.subscriptions.contains_key(filter) {
        return None;
    }
    if session.subscriptions.len() >= limits.max_subscriptions_per_client {
        return Some(SubRefuseReason::SubscriptionsPerClient);
    }
    if subs.node_count() + other_nodes + subs.nodes_needed(filter) > limits.max_trie_nodes {
        return Some(SubRefuseReason::TrieNodes);
    }
    None
}

/// Publishes the trie's size, with the share groups' `shared_nodes`, to
/// the `trie_nodes` gauge.
pub(super) fn count_trie_nodes<T>(counters: &Counters, subs: &FilterTrie<T>, shared_nodes: usize) {
    counters
        .trie_nodes
        .store((subs.node_count() + shared_nodes) as u64, Relaxed);
}

impl Router {
    pub(super) fn publish(
        &mut self,
        conn: ConnId,
        publish: Publish,
        properties: Option<MessageProperties>,
        refused: Option<ReasonCode>,
    ) {
        let cap = self.hard_cap;
        let pkid = publish.pkid;
        let route = refused.is_none();
        let Some(&sid) = self.by_conn.get(&conn) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let mut action = session.on_publish(publish, Instant::now());
        if let IncomingAction::Deliver { message, .. } = &mut action {
            message.properties = properties;
        }
        if let Some(code) = refused
            && matches!(action, IncomingAction::Deliver { token: Some(_), .. })
        {
            session.owe_reason(pkid, code);
        }
        // A QoS 2 id is remembered (stored) with the message it routes, so a
        // redelivery after a restart is known as a duplicate.
        // It must be on disk before the PUBREC, like the message.
        let mut marked = false;
        // A refused one is not: its failing PUBREC ends the flow.
        if let (IncomingAction::Deliver { message, .. }, Some(stored)) = (&action, session.stored)
            && message.qos == QoS::ExactlyOnce
            && route
        {
            self.journal.put_incoming(stored, pkid);
            marked = true;
        }
        match action {
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
                if !self.journal.enabled() {
                    // Nothing can wait for the disk: acknowledge first, as
                    // before the broker had a store.
                    self.ack_publisher(conn, token);
                    if route {
                        self.route(message, true, Some(sid));
                    }
                    return;
                }
                let stored = route && self.route(message, true, Some(sid));
                self.release(Waiter::Publisher(conn, token), stored || marked);
            }
            IncomingAction::Deliver {
                message,
                token: None,
            } => {
                if route {
                    self.route(message, true, Some(sid));
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
    pub(super) fn ack_publisher(&mut self, conn: ConnId, token: AckToken) {
        let cap = self.hard_cap;
        if let Some(session) = self.session_of(conn) {
            for packet in session.flows().incoming.ack(token) {
                session.send_control(packet, cap);
            }
        }
    }

    /// A PUBACK/PUBREC/PUBCOMP from a subscriber: advances its outgoing flow.
    pub(super) fn ack(&mut self, conn: ConnId, kind: Ack, pkid: u16) {
        let name = self.name.clone();
        let counters = self.counters.clone();
        let hard_cap = self.hard_cap;
        let Some(&sid) = self.by_conn.get(&conn) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let journal = &mut self.journal;
        let result = match kind {
            Ack::PubAck => session.on_puback(pkid, journal).map(|()| None),
            Ack::PubRec => session.on_pubrec(pkid, journal).map(Some),
            Ack::PubComp => session.on_pubcomp(pkid, journal).map(|()| None),
        };
        let local = session.origin == Origin::Local;
        match result {
            Ok(Some(pubrel)) => session.send_control(pubrel, hard_cap),
            Ok(None) => {
                session.pump(&counters, journal, Instant::now());
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

    /// Removes the retained messages whose expiry interval has passed at
    /// `now`, from the store too [MQTT-3.3.2-5].
    pub(super) fn expire_retained(&mut self, now: Instant) {
        let gone = self.retained.expire(now);
        if gone.is_empty() {
            return;
        }
        for topic in &gone {
            if !topic.starts_with('$') {
                self.journal.remove_retained(topic);
            }
        }
        debug!(broker = %self.name, expired = gone.len(), "retained messages expired");
        self.counters
            .retained
            .store(self.retained.len() as u64, Relaxed);
        self.counters
            .retained_stored
            .store(self.retained.stored_len() as u64, Relaxed);
    }

    /// A failing PUBREC from an MQTT 5 subscriber: the message is released
    /// from its session (its stored copy too) and the window slot freed;
    /// no PUBREL follows (spec 4.3.3, 4.9).
    pub(super) fn pubrec_failed(&mut self, conn: ConnId, pkid: u16, reason: ReasonCode) {
        let name = self.name.clone();
        let counters = self.counters.clone();
        let Some(&sid) = self.by_conn.get(&conn) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let journal = &mut self.journal;
        match session.on_pubrec_failed(pkid, journal) {
            Ok(()) => {
                debug!(broker = %name, client_id = %session.client_id, pkid, %reason, "subscriber refused a QoS 2 message");
                session.pump(&counters, journal, Instant::now());
            }
            Err(violation) => {
                crate::warn_limited!(format!("unexpected-ack:{name}"), broker = %name, client_id = %session.client_id, %violation, "unexpected acknowledgement ignored");
            }
        }
    }

    pub(super) fn subscribe(
        &mut self,
        conn: ConnId,
        filters: Vec<(String, Result<Subscription, ReasonCode>)>,
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
        for (filter, asked) in filters {
            let asked = asked
                .and_then(|sub| {
                    if shared::valid(&filter) {
                        Ok(sub)
                    } else {
                        Err(ReasonCode::TopicFilterInvalid)
                    }
                })
                .and_then(|sub| {
                    let limit = if shared::is_shared(&filter) {
                        let main_nodes = self.subs.node_count();
                        self.shared.limit(&self.limits, session, &filter, main_nodes)
                    } else {
                        let shared_nodes = self.shared.node_count();
                        subscription_limit(&self.limits, session, &self.subs, &filter, shared_nodes)
                    };
                    match limit {
                    Some(reason) => {
                        self.counters.sub_refused(reason);
                        crate::warn_limited!(format!("subscription-limit:{}", self.name), broker = %self.name, client_id = %session.client_id, ?reason, "subscription refused (0x80, MQTT 5: 0x97): limit");
                        Err(ReasonCode::QuotaExceeded)
                    }
                    None => Ok(sub),
                }
            });
            granted.push(asked);
            let Ok(sub) = asked else { continue };
            let existed = session.subscriptions.insert(filter.clone(), sub).is_some();
            if !existed {
                self.counters.subscriptions.fetch_add(1, Relaxed);
            }
            if !self.shared.join(&filter, sid) {
                if existed {
                    self.subs.remove(&filter, |v| v.0 == sid);
                }
                self.subs.insert(&filter, (sid, sub));
            }
            // Retain handling [MQTT-3.3.1-9, MQTT-3.3.1-10, MQTT-3.3.1-11];
            // never on a shared subscription (MQTT 5 3.8.4).
            let send_retained = shared::sends_retained(&filter)
                && match sub.options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                accepted.push((filter, sub));
            }
        }
        count_trie_nodes(&self.counters, &self.subs, self.shared.node_count());
        session.save(&mut self.journal);
        let stored = session.stored.is_some();
        let v5 = session.is_v5();
        match reply {
            Reply::Packet(pkid) => {
                let packet = if v5 {
                    Control::V5(Box::new(P5::SubAck(SubAck5 {
                        pkid,
                        return_codes: granted.iter().map(suback_code_v5).collect(),
                        properties: None,
                    })))
                } else {
                    let codes = granted
                        .iter()
                        .map(|g| match g {
                            Ok(sub) => SubscribeReasonCode::Success(WireQoS::from(sub.options.qos)),
                            Err(_) => SubscribeReasonCode::Failure,
                        })
                        .collect();
                    Control::V3(Packet::SubAck(SubAck::new(pkid, codes)))
                };
                // A stored session's SUBACK waits until the subscription is
                // on disk; its retained messages follow the SUBACK.
                let waiter = Waiter::Control {
                    conn,
                    packet,
                    retained: accepted,
                };
                self.release(waiter, stored);
            }
            Reply::Local(done) => {
                let _ = done.send(Ok(granted
                    .iter()
                    .map(|g| g.as_ref().ok().map(|sub| sub.options.qos))
                    .collect()));
                self.send_retained(conn, accepted);
            }
        }
    }

    /// Retained messages for the new subscriptions `accepted` of `conn`'s
    /// session (after its SUBACK), retain=1, QoS min(stored, granted), with
    /// the subscription's identifier; a filter unsubscribed in the
    /// meantime gets none.
    pub(super) fn send_retained(&mut self, conn: ConnId, accepted: Vec<(String, Subscription)>) {
        let Some(&sid) = self.by_conn.get(&conn) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let now = Instant::now();
        for (filter, sub) in accepted {
            if !session.subscriptions.contains_key(&filter) {
                continue;
            }
            // Each with the expiry interval it has left [MQTT-3.3.2-6].
            for mut m in self.retained.matching(&filter, now) {
                if !may_read(&self.security, session, &m.topic) {
                    continue;
                }
                m.qos = m.qos.min(sub.options.qos);
                set_subscription_ids(&mut m, sub.id.into_iter().collect());
                session.deliver(m, &self.limits, &self.counters, &mut self.journal, now);
            }
        }
    }

    pub(super) fn unsubscribe(&mut self, conn: ConnId, filters: Vec<String>, reply: Reply<()>) {
        let Some(&sid) = self.by_conn.get(&conn) else {
            if let Reply::Local(done) = reply {
                let _ = done.send(Err(LinkError::Closed));
            }
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let mut reasons = Vec::with_capacity(filters.len());
        for filter in &filters {
            // Not a filter at all: 0x8F (MQTT 5 3.11.3), not 0x11.
            if crate::topic::validate_filter(filter).is_err() || !shared::valid(filter) {
                reasons.push(UnsubAckReason::TopicFilterInvalid);
            } else if session.subscriptions.remove(filter).is_some() {
                if !self.shared.leave(filter, sid) {
                    self.subs.remove(filter, |v| v.0 == sid);
                }
                self.counters.subscriptions.fetch_sub(1, Relaxed);
                reasons.push(UnsubAckReason::Success);
            } else {
                reasons.push(UnsubAckReason::NoSubscriptionExisted);
            }
        }
        count_trie_nodes(&self.counters, &self.subs, self.shared.node_count());
        session.save(&mut self.journal);
        let stored = session.stored.is_some();
        let v5 = session.is_v5();
        match reply {
            Reply::Packet(pkid) => {
                let packet = if v5 {
                    Control::V5(Box::new(P5::UnsubAck(UnsubAck5 {
                        pkid,
                        reasons,
                        properties: None,
                    })))
                } else {
                    Control::V3(Packet::UnsubAck(UnsubAck::new(pkid)))
                };
                // Like a SUBACK: once the removal is on disk.
                let waiter = Waiter::Control {
                    conn,
                    packet,
                    retained: Vec::new(),
                };
                self.release(waiter, stored);
            }
            Reply::Local(done) => {
                let _ = done.send(Ok(()));
            }
        }
    }

    /// Routes one message: retained store first, then one copy per matching
    /// session at the highest granted QoS (MQTT-3.3.5-1) and one per matching
    /// share group ([`shared`]), QoS min(published, granted), retain as
    /// published only where the subscription asks (MQTT 5), every matching
    /// subscription identifier; a subscription with no local gets nothing
    /// its own session (`from`) published. True when a QoS 1/2 copy (or the
    /// retained message) went to the store: the publisher's acknowledgement
    /// then waits for durability.
    pub(super) fn route(&mut self, message: Message, count: bool, from: Option<SessionId>) -> bool {
        let mut stored = false;
        if count {
            self.counters.msgs_in.fetch_add(1, Relaxed);
            self.counters
                .bytes_in
                .fetch_add(message.payload.len() as u64, Relaxed);
        }
        let now = Instant::now();
        if message.retain {
            self.retained.store(&message, now);
            self.counters
                .retained
                .store(self.retained.len() as u64, Relaxed);
            // `$SYS` is republished at every interval: not worth a write.
            if self.journal.enabled() && !message.topic.starts_with('$') {
                // Its expiry keeps counting across a restart.
                let arrived = crate::broker::persist::arrival(&message, unix_now_ms());
                self.journal.put_retained(&message, arrived);
                self.counters
                    .retained_stored
                    .store(self.retained.stored_len() as u64, Relaxed);
                stored |= message.qos != QoS::AtMostOnce;
            }
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.subs.for_each_match(&message.topic, |_, &(sid, sub)| {
            // No local [MQTT-3.8.3-3].
            if !(sub.options.no_local && from == Some(sid)) {
                scratch.push((sid, sub));
            }
        });
        if scratch.len() > 1 {
            // Highest QoS first within a session.
            scratch
                .sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.options.qos.cmp(&a.1.options.qos)));
        }
        let mut i = 0;
        while let Some(&(sid, best)) = scratch.get(i) {
            let mut ids: Vec<u32> = Vec::new();
            let mut j = i;
            while let Some(&(other, sub)) = scratch.get(j) {
                if other != sid {
                    break;
                }
                ids.extend(sub.id);
                j += 1;
            }
            i = j;
            if let Some(session) = self.sessions.get_mut(&sid) {
                if !may_read(&self.security, session, &message.topic) {
                    continue;
                }
                let mut m = message.clone();
                m.qos = m.qos.min(best.options.qos);
                m.retain = message.retain && best.options.retain_as_published;
                m.dup = false;
                set_subscription_ids(&mut m, ids);
                stored |= session.deliver(m, &self.limits, &self.counters, &mut self.journal, now);
            }
        }
        self.scratch = scratch;
        stored | self.route_shared(&message, now)
    }
}

/// Puts the subscription identifiers of the delivering subscriptions on a
/// message, replacing any it carried [MQTT-3.3.4-3, MQTT-3.3.4-4].
pub(super) fn set_subscription_ids(m: &mut Message, ids: Vec<u32>) {
    match &mut m.properties {
        Some(p) => {
            if !(ids.is_empty() && p.subscription_identifiers.is_empty()) {
                p.subscription_identifiers = ids;
            }
            if p.is_empty() {
                m.properties = None;
            }
        }
        None if ids.is_empty() => {}
        None => {
            m.properties = Some(MessageProperties::from(PropertyFields {
                subscription_identifiers: ids,
                ..Default::default()
            }));
        }
    }
}

/// The v5 SUBACK code of one filter's outcome.
fn suback_code_v5(g: &Result<Subscription, ReasonCode>) -> SubscribeReasonCode5 {
    match g {
        Ok(sub) => SubscribeReasonCode5::Success(sub.options.qos.into()),
        Err(ReasonCode::NotAuthorized) => SubscribeReasonCode5::NotAuthorized,
        Err(ReasonCode::TopicFilterInvalid) => SubscribeReasonCode5::TopicFilterInvalid,
        Err(ReasonCode::QuotaExceeded) => SubscribeReasonCode5::QuotaExceeded,
        Err(ReasonCode::SharedSubscriptionsNotSupported) => {
            SubscribeReasonCode5::SharedSubscriptionsNotSupported
        }
        Err(_) => SubscribeReasonCode5::Unspecified,
    }
}
