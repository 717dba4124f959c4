//! One client's session as the router keeps it: subscriptions, the shared
//! protocol state machines (`Outgoing` towards the client, `Incoming` from
//! it), and a bounded queue of QoS 1/2 messages waiting for an inflight slot
//! or for the client to come back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;

use super::outlet::Outlet;
use super::stats::{Counters, DropReason};
use super::{Limits, OverflowPolicy};
use crate::protocol::v4::Packet;
use crate::protocol::{Full, Incoming, Message, Outgoing, QoS};

/// Id of one network connection or local link (its "generation").
pub(crate) type ConnId = u64;

/// The connection a session is attached to.
#[derive(Debug)]
pub(crate) struct Attached {
    /// Connection id.
    pub id: ConnId,
    /// Where packets for the client go.
    pub outlet: Outlet,
}

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

/// One session.
#[derive(Debug)]
pub(crate) struct Session {
    /// The client id.
    pub client_id: String,
    /// Clean session: discarded when the connection ends.
    pub clean: bool,
    /// Filter → granted QoS (mirrors the router's trie).
    pub subscriptions: HashMap<String, QoS>,
    /// QoS 1/2 flows towards the client.
    pub outgoing: Outgoing<()>,
    /// QoS 1/2 flows from the client (QoS 2 duplicate suppression).
    pub incoming: Incoming,
    /// Messages waiting for an inflight slot or for the client.
    pub queue: VecDeque<Message>,
    /// The live connection, if any.
    pub conn: Option<Attached>,
    /// Who connected last (read ACL subject). Its kind (link or network)
    /// never changes: it is part of the session's [`SessionKey`].
    pub origin: Origin,
}

impl Session {
    /// A fresh session of `origin`.
    pub fn new(client_id: String, clean: bool, origin: Origin, limits: &Limits) -> Self {
        Session {
            client_id,
            clean,
            subscriptions: HashMap::new(),
            outgoing: Outgoing::new(usize::from(limits.max_inflight)),
            incoming: Incoming::new(),
            queue: VecDeque::new(),
            conn: None,
            origin,
        }
    }

    /// The session's key in the router.
    pub fn key(&self) -> SessionKey {
        SessionKey::of(&self.origin, &self.client_id)
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

    /// Starts the flow of `msg` and hands it to the connection, if any: an
    /// in-process link gets the message itself (no PUBLISH encoded here and
    /// decoded there), a network client the PUBLISH.
    fn start(&mut self, msg: Message, counters: &Counters) -> Result<(), Full<()>> {
        if !self.is_link() {
            let (packet, _) = self.outgoing.publish(msg, ())?;
            self.send(packet, counters);
            return Ok(());
        }
        let (pkid, mut message, _) = self.outgoing.publish_message(msg, ())?;
        // A new flow, as a fresh PUBLISH would say (resends go as packets).
        message.dup = false;
        if let Some(conn) = &self.conn {
            counters.msgs_out.fetch_add(1, Relaxed);
            counters
                .bytes_out
                .fetch_add(message.payload.len() as u64, Relaxed);
            conn.outlet.send_publish(message, pkid);
        }
        Ok(())
    }

    /// Sends a control packet (SUBACK, acks) if connected. A client that
    /// keeps publishing but never reads would pile up acks: past `hard_cap`
    /// unwritten packets its connection is aborted.
    pub fn send_control(&self, packet: Packet, hard_cap: usize) {
        if let Some(conn) = &self.conn {
            if conn.outlet.pending() >= hard_cap {
                crate::warn_limited!("client-not-reading", client_id = %self.client_id, pending = conn.outlet.pending(), "client does not read its socket, connection aborted");
                conn.outlet.abort();
                return;
            }
            conn.outlet.send(packet);
        }
    }

    /// Delivers `msg` (QoS already min(published, granted)): sent at once when
    /// the window allows, queued (bounded) otherwise. QoS 0 is never queued:
    /// it is dropped when the client is away (as Mosquitto does by default)
    /// or when its connection already has `max_queued_messages` unwritten.
    pub fn deliver(&mut self, msg: Message, limits: &Limits, counters: &Counters) {
        if msg.qos == QoS::AtMostOnce {
            let Some(conn) = &self.conn else { return };
            if conn.outlet.pending() >= limits.max_queued_messages {
                counters.dropped(DropReason::QueueFull, 1);
                return;
            }
            let _ = self.start(msg, counters);
            return;
        }
        if self.conn.is_some() && self.queue.is_empty() && self.outgoing.has_room() {
            if let Err(full) = self.start(msg, counters) {
                self.enqueue(full.message, limits, counters);
            }
        } else {
            self.enqueue(msg, limits, counters);
        }
    }

    /// Whether a QoS 1/2 message delivered now would overflow the queue
    /// (and so drop a message).
    pub fn would_drop(&self, limits: &Limits) -> bool {
        let direct = self.conn.is_some() && self.queue.is_empty() && self.outgoing.has_room();
        !direct && self.queue.len() >= limits.max_queued_messages
    }

    fn enqueue(&mut self, msg: Message, limits: &Limits, counters: &Counters) {
        if self.queue.len() >= limits.max_queued_messages {
            counters.dropped(DropReason::QueueFull, 1);
            match limits.overflow {
                OverflowPolicy::DropNewest => return,
                OverflowPolicy::DropOldest => {
                    if self.queue.pop_front().is_some() {
                        counters.queued.fetch_sub(1, Relaxed);
                    }
                }
            }
            if limits.max_queued_messages == 0 {
                return;
            }
        }
        self.queue.push_back(msg);
        counters.queued.fetch_add(1, Relaxed);
    }

    /// Moves queued messages into the inflight window while there is room.
    pub fn pump(&mut self, counters: &Counters) {
        if self.conn.is_none() {
            return;
        }
        while self.outgoing.has_room() {
            let Some(msg) = self.queue.pop_front() else {
                break;
            };
            counters.queued.fetch_sub(1, Relaxed);
            match self.start(msg, counters) {
                Ok(()) => {}
                Err(full) => {
                    self.queue.push_front(full.message);
                    counters.queued.fetch_add(1, Relaxed);
                    break;
                }
            }
        }
    }

    /// Attaches a new connection and sends what a resumed session owes the
    /// client: unacknowledged PUBLISH with DUP, PUBREL, then queued messages.
    pub fn attach(&mut self, conn: Attached, session_present: bool, counters: &Counters) {
        self.conn = Some(conn);
        for packet in self.outgoing.resume(session_present) {
            self.send(packet, counters);
        }
        self.pump(counters);
    }

    /// Drops everything the session holds (gauges follow).
    pub fn discard(&mut self, counters: &Counters) {
        counters.queued.fetch_sub(self.queue.len() as u64, Relaxed);
        self.queue.clear();
        let _ = self.outgoing.drain();
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
                    Out::Close | Out::Replaced => {}
                }
            }
        }
        out
    }

    #[test]
    fn window_then_bounded_queue_drop_oldest() {
        let counters = Counters::default();
        let l = limits(2, OverflowPolicy::DropOldest);
        let mut s = Session::new("c".into(), false, Origin::Local, &l);
        let (tx, mut rx) = outlet();
        s.attach(Attached { id: 1, outlet: tx }, false, &counters);
        for n in 0..6 {
            s.deliver(msg(n, QoS::AtLeastOnce), &l, &counters);
        }
        assert_eq!(drain_payloads(&mut rx), ["0", "1"]);
        assert_eq!(s.queue.len(), 2);
        assert_eq!(counters.snapshot().dropped_queue_full, 2);
        assert_eq!(counters.snapshot().queued, 2);
        // PUBACK frees a slot: the oldest surviving queued message goes out.
        s.outgoing.on_puback(1).unwrap();
        s.pump(&counters);
        assert_eq!(drain_payloads(&mut rx), ["4"]);
    }

    #[test]
    fn drop_newest_and_offline_qos0() {
        let counters = Counters::default();
        let l = limits(1, OverflowPolicy::DropNewest);
        let mut s = Session::new("c".into(), false, Origin::Local, &l);
        s.deliver(msg(0, QoS::AtMostOnce), &l, &counters);
        s.deliver(msg(1, QoS::ExactlyOnce), &l, &counters);
        s.deliver(msg(2, QoS::ExactlyOnce), &l, &counters);
        assert_eq!(s.queue.len(), 1);
        assert_eq!(counters.snapshot().dropped_queue_full, 1);
        let (tx, mut rx) = outlet();
        s.attach(Attached { id: 1, outlet: tx }, true, &counters);
        assert_eq!(drain_payloads(&mut rx), ["1"]);
        assert_eq!(counters.snapshot().queued, 0);
    }

    #[test]
    fn would_drop_only_when_the_queue_is_full() {
        let counters = Counters::default();
        let l = limits(2, OverflowPolicy::DropOldest);
        let mut s = Session::new("c".into(), false, Origin::Local, &l);
        // Away with an empty queue: queued, not dropped.
        assert!(!s.would_drop(&l));
        let (tx, _rx) = outlet();
        s.attach(Attached { id: 1, outlet: tx }, false, &counters);
        for n in 0..4 {
            assert!(!s.would_drop(&l), "message {n} fits");
            s.deliver(msg(n, QoS::AtLeastOnce), &l, &counters);
        }
        // Window (2) and queue (2) full.
        assert!(s.would_drop(&l));
        assert_eq!(counters.snapshot().dropped_queue_full, 0);
        // max_queued_messages 0: only the window.
        let l0 = limits(0, OverflowPolicy::DropOldest);
        let mut z = Session::new("z".into(), false, Origin::Local, &l0);
        let (tx, _rx0) = outlet();
        z.attach(Attached { id: 2, outlet: tx }, false, &counters);
        assert!(!z.would_drop(&l0));
        z.deliver(msg(0, QoS::AtLeastOnce), &l0, &counters);
        z.deliver(msg(1, QoS::AtLeastOnce), &l0, &counters);
        assert!(z.would_drop(&l0));
    }
}
