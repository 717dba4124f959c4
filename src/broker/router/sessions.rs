//! Sessions: CONNECT and attach, takeover, detach, link holds, removal,
//! disconnects, expiry, and the rebuild from the store at start.

use super::*;
use crate::broker::persist::{expired, restored_expiry, unix_now, unix_now_ms};
use crate::broker::session::DelayedWill;

impl Router {
    /// A CONNECT (or a link's attach) of the connection `attached`.
    pub(super) fn connect(
        &mut self,
        attached: Attached,
        client_id: String,
        clean: bool,
        origin: Origin,
        reply: oneshot::Sender<Result<bool, ConnectRefused>>,
    ) {
        let Attached {
            id: conn,
            outlet,
            v5,
        } = attached;
        // MQTT 5: clean start discards an old session; the session then
        // ends with the connection only when its expiry interval is 0.
        // 3.x: clean session does both.
        let ends_with_connection = match v5 {
            Some(v) => v.session_expiry == 0,
            None => clean,
        };
        if let Err(refused) = self.admit(&client_id, &origin, &outlet) {
            let _ = reply.send(Err(refused));
            return;
        }
        let key = SessionKey::of(&origin, &client_id);
        let mut session_present = false;
        if let Some(&sid) = self.by_client.get(&key) {
            let mut keep = false;
            let mut old_conn = None;
            if let Some(old) = self.sessions.get(&sid) {
                if let Some(c) = &old.conn {
                    old_conn = Some(c.id);
                    info!(broker = %self.name, client_id = %client_id, "session taken over by a new connection");
                    self.detach(sid, Takeover::Replaced);
                }
                keep = !clean && self.sessions.get(&sid).is_some_and(|old| !old.clean);
            }
            if keep {
                session_present = true;
                // Its end comes later: its delayed will is then not
                // published, as this resumes the session [MQTT-3.1.3-9].
                if let Some(c) = old_conn.filter(|_| matches!(origin, Origin::Network { .. })) {
                    self.taken_over.insert(c);
                }
            } else {
                self.remove_session(sid);
            }
        }
        let sid = match self.by_client.get(&key) {
            Some(&sid) => sid,
            None => {
                let sid = self.next_session;
                self.next_session += 1;
                let mut session = Session::new(
                    client_id,
                    ends_with_connection,
                    origin.clone(),
                    &self.limits,
                );
                if !ends_with_connection && self.journal.enabled() {
                    session.stored = Some(sid);
                    self.counters.persisted_sessions.fetch_add(1, Relaxed);
                }
                self.sessions.insert(sid, Box::new(session));
                self.by_client.insert(key, sid);
                self.counters.sessions.fetch_add(1, Relaxed);
                sid
            }
        };
        // The client is back in time: its delayed will is not published
        // [MQTT-3.1.3-9].
        self.wills.remove(&sid);
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        session.will = None;
        session.clean = ends_with_connection;
        session.expiry = v5.map(|v| v.session_expiry);
        if matches!(origin, Origin::Network { .. }) {
            outlet.send(Packet::ConnAck(ConnAck::new(
                ConnectReturnCode::Success,
                session_present,
            )));
        }
        session.origin = origin;
        session.reset_incoming();
        session.attach(
            Attached {
                id: conn,
                outlet,
                v5,
            },
            session_present,
            &self.counters,
            &mut self.journal,
            Instant::now(),
        );
        session.save(&mut self.journal);
        let link = session.is_link();
        self.connected_gauge(link).fetch_add(1, Relaxed);
        self.by_conn.insert(conn, sid);
        let _ = reply.send(Ok(session_present));
    }

    /// Stops the connections whose keepalive deadline passed (each moves
    /// its deadline as it reads; checked on the router's tick, so a dead
    /// client is cut at most one tick after its 1.5 × keep alive).
    pub(super) fn expire_keepalives(&mut self) {
        let now = self.keepalive_clock.millis(tokio::time::Instant::now());
        for session in self.sessions.values() {
            if let Some(c) = &session.conn {
                c.outlet.expire_keepalive(now);
            }
        }
    }

    /// Refuses a network CONNECT with the client id of an in-process link
    /// (CONNACK 0x02 on its outlet), and a held-down link's attach.
    pub(super) fn admit(
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
    pub(super) fn connected_gauge(&self, link: bool) -> &std::sync::atomic::AtomicU64 {
        if link {
            &self.counters.links_connected
        } else {
            &self.counters.clients_connected
        }
    }

    /// Closes the connection attached to session `sid` (if any); the session stays.
    pub(super) fn detach(&mut self, sid: SessionId, how: Takeover) {
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
            // An MQTT 5 client is told 0x8E first [MQTT-3.1.4-3] when its
            // connection has nothing unwritten (else it may not be reading).
            (false, Takeover::Replaced) if att.v5.is_some() && att.outlet.pending() == 0 => {
                att.outlet
                    .send_v5(rumqttc::v5::mqttbytes::v5::Packet::Disconnect(
                        rumqttc::v5::mqttbytes::v5::Disconnect::new(
                            rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver,
                        ),
                    ));
                att.outlet.close();
            }
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
    pub(super) fn hold_link(&mut self, client_id: String, hold: CancellationToken) -> bool {
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

    pub(super) fn remove_session(&mut self, sid: SessionId) {
        let Some(mut s) = self.sessions.remove(&sid) else {
            return;
        };
        // A will still delayed goes when its session ends [MQTT-3.1.3-9].
        self.wills.remove(&sid);
        if let Some(will) = s.will.take() {
            self.route(will.message, true, None);
        }
        self.by_client.remove(&s.key());
        for filter in s.subscriptions.keys() {
            if !self.shared.leave(filter, sid) {
                self.subs.remove(filter, |v| v.0 == sid);
            }
        }
        count_trie_nodes(&self.counters, &self.subs, self.shared.node_count());
        self.counters
            .subscriptions
            .fetch_sub(s.subscriptions.len() as u64, Relaxed);
        self.redeliver_shared(sid, &mut s);
        s.discard(&self.counters);
        if let Some(stored) = s.stored {
            self.journal.remove_session(stored, s.stored_messages);
            self.counters.persisted_sessions.fetch_sub(1, Relaxed);
        }
        self.counters.sessions.fetch_sub(1, Relaxed);
        shrink(&mut self.sessions);
        shrink(&mut self.by_client);
    }

    pub(super) fn disconnected(
        &mut self,
        conn: ConnId,
        will: Option<(Message, Duration)>,
        session_expiry: Option<u32>,
    ) {
        // Never acknowledged: a persistent client sends them again.
        forget_parked(&mut self.parked, &self.counters, conn);
        let sid = self.by_conn.remove(&conn);
        shrink(&mut self.by_conn);
        let resumed = self.taken_over.remove(&conn);
        let mut will = will;
        if let Some(sid) = sid {
            let (link, clean) = match self.sessions.get_mut(&sid) {
                Some(s) => {
                    s.conn = None;
                    s.disconnected_at = Some(unix_now());
                    if let Some(expiry) = session_expiry {
                        s.expiry = Some(expiry);
                        s.clean = expiry == 0;
                    }
                    // A will with a delay waits while the session lives,
                    // stored with it.
                    if !s.clean
                        && let Some((message, delay)) = will.take_if(|(_, d)| !d.is_zero())
                    {
                        let at = Instant::now() + delay;
                        let due_ms = unix_now_ms()
                            .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                        s.will = Some(Box::new(DelayedWill {
                            message,
                            at,
                            due_ms,
                        }));
                        self.wills.insert(sid, at);
                    }
                    s.save(&mut self.journal);
                    (s.is_link(), s.clean)
                }
                None => (false, false),
            };
            self.connected_gauge(link).fetch_sub(1, Relaxed);
            if clean {
                self.remove_session(sid);
            }
        }
        if let Some((will, delay)) = will {
            if resumed && !delay.is_zero() {
                // Taken over by a connection that resumed the session
                // before the delay passed [MQTT-3.1.3-9].
                debug!(broker = %self.name, topic = %will.topic, "delayed will dropped: the session was resumed by a new connection");
            } else {
                debug!(broker = %self.name, topic = %will.topic, "publishing will");
                self.route(will, true, None);
            }
        }
    }

    /// Publishes the delayed wills due at `now`.
    pub(super) fn publish_due_wills(&mut self, now: Instant) {
        if self.wills.is_empty() {
            return;
        }
        let due: Vec<SessionId> = self
            .wills
            .iter()
            .filter(|&(_, at)| *at <= now)
            .map(|(&sid, _)| sid)
            .collect();
        for sid in due {
            self.wills.remove(&sid);
            let Some(session) = self.sessions.get_mut(&sid) else {
                continue;
            };
            let Some(will) = session.will.take() else {
                continue;
            };
            session.save(&mut self.journal);
            debug!(broker = %self.name, topic = %will.message.topic, "publishing delayed will");
            self.route(will.message, true, None);
        }
    }

    /// Rebuilds the state the store kept: retained messages and persistent
    /// sessions (with their subscriptions in the trie), then drops the
    /// sessions that expired while the broker was down.
    pub(super) fn restore(&mut self, loaded: Loaded) {
        let now_ms = unix_now_ms();
        let now = now_ms / 1000;
        let at = Instant::now();
        for (mut m, arrived) in loaded.retained {
            // Expiry counts from the stored arrival: the downtime counts.
            let expiry = restored_expiry(&mut m, arrived, now_ms, at);
            self.retained.store_until(m, expiry);
        }
        self.expire_retained(at);
        let retained = self.retained.len() as u64;
        self.counters.retained.store(retained, Relaxed);
        self.counters
            .retained_stored
            .store(self.retained.stored_len() as u64, Relaxed);
        let sessions = loaded.sessions.len();
        for (sid, stored) in loaded.sessions {
            let session = Session::restore(
                sid,
                stored,
                &self.limits,
                &self.counters,
                &mut self.journal,
                (now_ms, at),
            );
            for (filter, sub) in &session.subscriptions {
                if !self.shared.join(filter, sid) {
                    self.subs.insert(filter, (sid, *sub));
                }
            }
            self.counters
                .subscriptions
                .fetch_add(session.subscriptions.len() as u64, Relaxed);
            self.by_client.insert(session.key(), sid);
            if let Some(will) = &session.will {
                self.wills.insert(sid, will.at);
            }
            self.sessions.insert(sid, Box::new(session));
            self.counters.sessions.fetch_add(1, Relaxed);
            self.counters.persisted_sessions.fetch_add(1, Relaxed);
            self.next_session = self.next_session.max(sid + 1);
        }
        count_trie_nodes(&self.counters, &self.subs, self.shared.node_count());
        if sessions > 0 || retained > 0 || loaded.damaged > 0 {
            info!(broker = %self.name, sessions, retained, damaged = loaded.damaged, "persistent state restored");
        }
        self.expire_sessions(now);
        // Wills that fell due while the broker was down.
        self.publish_due_wills(at);
    }

    /// Removes the persistent network sessions away for their expiry at
    /// `now` (unix seconds), with everything they hold: an MQTT 5 session's
    /// own interval (already capped by `session_expiry`; `u32::MAX`: never
    /// spec 3.1.2.11.2), else `session_expiry`. Link sessions never expire.
    pub(super) fn expire_sessions(&mut self, now: u64) {
        let server = self.session_expiry;
        let gone: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                let expiry = match s.expiry {
                    Some(u32::MAX) => None,
                    Some(secs) => Some(Duration::from_secs(u64::from(secs))),
                    None => server,
                };
                !s.is_link()
                    && !s.clean
                    && s.conn.is_none()
                    && expired(s.disconnected_at, now, expiry)
            })
            .map(|(&sid, _)| sid)
            .collect();
        for sid in gone {
            if let Some(s) = self.sessions.get(&sid) {
                info!(broker = %self.name, client_id = %s.client_id, queued = s.queue_len(), "persistent session expired");
            }
            self.remove_session(sid);
            self.counters.sessions_expired.fetch_add(1, Relaxed);
        }
    }
}
