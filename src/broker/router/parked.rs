//! Parked publishes: QoS 1/2 publishes held back (not acknowledged) while
//! a local link session they go to is full.

use super::*;

/// A QoS 1/2 publish held back because a local link session it goes to is
/// full: routed, and acknowledged to its publisher, once that session has room.
#[derive(Debug)]
pub(super) struct Parked {
    pub(super) message: Message,
    pub(super) token: AckToken,
}

/// Drops the parked publishes of a connection that went away (never
/// acknowledged, so the client sends them again).
pub(super) fn forget_parked(
    parked: &mut BTreeMap<ConnId, VecDeque<Parked>>,
    counters: &Counters,
    conn: ConnId,
) {
    if let Some(queue) = parked.remove(&conn) {
        counters.held_back.fetch_sub(queue.len() as u64, Relaxed);
    }
}

impl Router {
    /// Whether a QoS 1/2 message on `topic` would overflow (drop from) a
    /// local link session's queue. Network sessions keep the Mosquitto-like
    /// drop at `max_queued_messages`; the bridge's own sessions push back.
    pub(super) fn link_full(&mut self, topic: &str) -> bool {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.subs
            .for_each_match(topic, |_, &(sid, sub)| scratch.push((sid, sub)));
        let full = scratch.iter().any(|&(sid, granted)| {
            granted.options.qos != QoS::AtMostOnce
                && self
                    .sessions
                    .get(&sid)
                    .is_some_and(|s| s.origin == Origin::Local && s.would_drop(&self.limits))
        });
        self.scratch = scratch;
        full || self.shared_link_full(topic)
    }

    /// Whether a client's QoS 1/2 publish on `topic` (about `bytes` to
    /// store) would be stored for a persistent session while the store has
    /// no room under `storage.max_bytes` (spools and stored messages).
    pub(super) fn store_full_for(&mut self, topic: &str, qos: QoS, bytes: u64) -> bool {
        if qos == QoS::AtMostOnce || !self.journal.would_overflow(bytes) {
            return false;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.subs
            .for_each_match(topic, |_, &(sid, sub)| scratch.push((sid, sub)));
        let full = scratch.iter().any(|&(sid, granted)| {
            granted.options.qos != QoS::AtMostOnce
                && self.sessions.get(&sid).is_some_and(|s| s.stored.is_some())
        });
        self.scratch = scratch;
        full || self.shared_stores(topic)
    }

    /// Refuses a client's QoS 1/2 `publish` that a persistent session would
    /// have to store while the store is full: not acknowledged (nor marked
    /// received, so its resend is routed), the connection closed, counted.
    /// Checked before the publish enters the session's incoming state.
    pub(super) fn refuse_if_store_full(&mut self, conn: ConnId, publish: &Publish) -> bool {
        let bytes = (publish.topic.len() + publish.payload.len()) as u64;
        if !self.store_full_for(&publish.topic, publish.qos.into(), bytes) {
            return false;
        }
        self.counters.store_full.fetch_add(1, Relaxed);
        let name = self.name.clone();
        if let Some(session) = self.session_of(conn) {
            crate::warn_limited!(format!("store-full:{name}"), broker = %name, client_id = %session.client_id, "storage.max_bytes reached: QoS 1/2 publish for a persistent session not acknowledged, connection closed");
            if let Some(att) = &session.conn {
                att.outlet.abort();
            }
        }
        true
    }

    pub(super) fn park(&mut self, conn: ConnId, message: Message, token: AckToken) {
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
    pub(super) fn unpark(&mut self) {
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
                let from = self.by_conn.get(&conn).copied();
                let stored = self.route(next.message, true, from);
                self.release(Waiter::Publisher(conn, next.token), stored);
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
}
