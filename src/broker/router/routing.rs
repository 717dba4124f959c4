//! Routing and subscriptions: PUBLISH in, acknowledgements, SUBSCRIBE /
//! UNSUBSCRIBE, and fan-out through the trie.

use super::*;
use durable::Waiter;

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
    pub(super) fn publish(&mut self, conn: ConnId, publish: Publish, route: bool) {
        let cap = self.hard_cap;
        let pkid = publish.pkid;
        let Some(&sid) = self.by_conn.get(&conn) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let action = session.incoming.on_publish(publish, Instant::now());
        // A QoS 2 id is remembered (stored) with the message it routes, so a
        // redelivery after a restart is known as a duplicate.
        // It must be on disk before the PUBREC, like the message.
        let mut marked = false;
        if let (IncomingAction::Deliver { message, .. }, Some(stored)) = (&action, session.stored)
            && message.qos == QoS::ExactlyOnce
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
                        self.route(message, true);
                    }
                    return;
                }
                let stored = route && self.route(message, true);
                self.release(Waiter::Publisher(conn, token), stored || marked);
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
    pub(super) fn ack_publisher(&mut self, conn: ConnId, token: AckToken) {
        let cap = self.hard_cap;
        if let Some(session) = self.session_of(conn) {
            for packet in session.incoming.ack(token) {
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
                session.pump(&counters, journal);
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

    pub(super) fn subscribe(
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
            let qos = qos.filter(|_| shared::valid(&filter)).filter(|_| {
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
                        crate::warn_limited!(format!("subscription-limit:{}", self.name), broker = %self.name, client_id = %session.client_id, ?reason, "subscription refused (0x80): limit");
                        false
                    }
                    None => true,
                }
            });
            granted.push(qos);
            let Some(qos) = qos else { continue };
            let replaced = session.subscriptions.insert(filter.clone(), qos).is_some();
            if !replaced {
                self.counters.subscriptions.fetch_add(1, Relaxed);
            }
            if !self.shared.join(&filter, sid) {
                if replaced {
                    self.subs.remove(&filter, |v| v.0 == sid);
                }
                self.subs.insert(&filter, (sid, qos));
            }
            accepted.push((filter, qos));
        }
        count_trie_nodes(&self.counters, &self.subs, self.shared.node_count());
        session.save(&mut self.journal);
        let stored = session.stored.is_some();
        match reply {
            Reply::Packet(pkid) => {
                let codes = granted
                    .iter()
                    .map(|g| match g {
                        Some(q) => SubscribeReasonCode::Success(WireQoS::from(*q)),
                        None => SubscribeReasonCode::Failure,
                    })
                    .collect();
                // A stored session's SUBACK waits until the subscription is
                // on disk; its retained messages follow the SUBACK.
                let waiter = Waiter::Control {
                    conn,
                    packet: Packet::SubAck(SubAck::new(pkid, codes)),
                    retained: accepted,
                };
                self.release(waiter, stored);
            }
            Reply::Local(done) => {
                let _ = done.send(Ok(granted));
                self.send_retained(conn, accepted);
            }
        }
    }

    /// Retained messages for the new subscriptions `accepted` of `conn`'s
    /// session (after its SUBACK), retain=1, QoS min(stored, granted); a
    /// filter unsubscribed in the meantime gets none.
    pub(super) fn send_retained(&mut self, conn: ConnId, accepted: Vec<(String, QoS)>) {
        let Some(&sid) = self.by_conn.get(&conn) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        for (filter, qos) in accepted {
            if !session.subscriptions.contains_key(&filter) || !shared::sends_retained(&filter) {
                continue;
            }
            for m in self.retained.matching(&filter) {
                if !may_read(&self.security, session, &m.topic) {
                    continue;
                }
                let mut m = m.clone();
                m.qos = m.qos.min(qos);
                session.deliver(m, &self.limits, &self.counters, &mut self.journal);
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
        for filter in &filters {
            if session.subscriptions.remove(filter).is_some() {
                if !self.shared.leave(filter, sid) {
                    self.subs.remove(filter, |v| v.0 == sid);
                }
                self.counters.subscriptions.fetch_sub(1, Relaxed);
            }
        }
        count_trie_nodes(&self.counters, &self.subs, self.shared.node_count());
        session.save(&mut self.journal);
        let stored = session.stored.is_some();
        match reply {
            Reply::Packet(pkid) => {
                // Like a SUBACK: once the removal is on disk.
                let waiter = Waiter::Control {
                    conn,
                    packet: Packet::UnsubAck(UnsubAck::new(pkid)),
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
    /// share group ([`shared`]), QoS min(published,
    /// granted), retain=0 for these established subscriptions. True when a
    /// QoS 1/2 copy (or the retained message) went to the store: the
    /// publisher's acknowledgement then waits for durability.
    pub(super) fn route(&mut self, message: Message, count: bool) -> bool {
        let mut stored = false;
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
            // `$SYS` is republished at every interval: not worth a write.
            if self.journal.enabled() && !message.topic.starts_with('$') {
                self.journal.put_retained(&message);
                self.counters
                    .retained_stored
                    .store(self.retained.stored_len() as u64, Relaxed);
                stored |= message.qos != QoS::AtMostOnce;
            }
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
                stored |= session.deliver(m, &self.limits, &self.counters, &mut self.journal);
            }
        }
        self.scratch = scratch;
        stored | self.route_shared(&message)
    }
}
