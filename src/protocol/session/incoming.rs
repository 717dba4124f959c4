//! QoS 1/2 flows of the messages WE receive: deliver once, acknowledge in
//! arrival order when the application is done, suppress QoS 2 duplicates.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use rumqttc::mqttbytes::v4::{Packet, PubAck, PubComp, PubRec, Publish};

use crate::protocol::AckToken;
use crate::protocol::codec::message_from_publish;
use crate::protocol::message::{Message, QoS};

/// What to do with an incoming PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncomingAction {
    /// A new message: hand it to the application. `token` is `Some` for
    /// QoS 1/2; pass it to [`Incoming::ack`] when the message is handled.
    Deliver {
        /// The message as received (DUP as the peer set it).
        message: Message,
        /// Acknowledgement token; `None` for QoS 0.
        token: Option<AckToken>,
    },
    /// A QoS 2 packet id that was received and not yet released: the
    /// message is NOT delivered again. `resend` is the PUBREC to send again
    /// when the original was already acknowledged (the peer missed it);
    /// `None` while the application still holds the original (its PUBREC
    /// goes out in order when it is acked).
    Duplicate {
        /// PUBREC to send, if any.
        resend: Option<Packet>,
    },
}

/// A QoS 1/2 delivery waiting for the application, in arrival order.
#[derive(Debug)]
struct Pending {
    id: u64,
    pkid: u16,
    exactly_once: bool,
    acked: bool,
    arrived: Instant,
}

/// State of a QoS 2 packet id on the receiving side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qos2 {
    /// Delivered to the application, PUBREC not sent yet.
    Delivered,
    /// PUBREC sent; waiting for PUBREL. Survives reconnects of a persistent
    /// session, so a redelivered PUBLISH is not delivered twice.
    Received,
}

/// Incoming QoS 1/2 state of one session.
///
/// Ordering: [`Incoming::ack`] returns PUBACK/PUBREC strictly in arrival
/// order; an ack for a later message is held until every earlier one is
/// acked (MQTT-4.6.0-2/3).
///
/// Generations: every token carries the connection generation it was issued
/// on. [`Incoming::reset_connection`] starts a new generation and forgets
/// deliveries not yet acknowledged to the peer (the peer redelivers them
/// with DUP); tokens of an older generation are then ignored by `ack`. The
/// application may so see a message twice (at-least-once), never zero times.
#[derive(Debug, Default)]
pub struct Incoming {
    generation: u64,
    next_id: u64,
    pending: VecDeque<Pending>,
    qos2: HashMap<u16, Qos2>,
}

impl Incoming {
    /// Empty state, generation 0.
    pub fn new() -> Self {
        Incoming::default()
    }

    /// The current connection generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// QoS 1/2 deliveries not yet acknowledged to the peer. A broker
    /// enforcing a maximum inflight per client closes the connection when
    /// this exceeds it (MQTT 3.1.1 has no flow control of its own).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// QoS 2 packet ids remembered (delivered or PUBREC sent, not released).
    pub fn qos2_len(&self) -> usize {
        self.qos2.len()
    }

    /// Arrival time of the oldest delivery the peer is still waiting on
    /// (for stall detection and metrics).
    pub fn oldest_pending_since(&self) -> Option<Instant> {
        self.pending.front().map(|p| p.arrived)
    }

    /// Handles a decoded PUBLISH that arrived at `now`.
    pub fn on_publish(&mut self, publish: Publish, now: Instant) -> IncomingAction {
        let pkid = publish.pkid;
        let message = message_from_publish(publish);
        let exactly_once = match message.qos {
            QoS::AtMostOnce => {
                return IncomingAction::Deliver {
                    message,
                    token: None,
                };
            }
            QoS::AtLeastOnce => false,
            QoS::ExactlyOnce => true,
        };
        if exactly_once {
            match self.qos2.get(&pkid) {
                Some(Qos2::Delivered) => return IncomingAction::Duplicate { resend: None },
                Some(Qos2::Received) => {
                    return IncomingAction::Duplicate {
                        resend: Some(Packet::PubRec(PubRec::new(pkid))),
                    };
                }
                None => {
                    self.qos2.insert(pkid, Qos2::Delivered);
                }
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.push_back(Pending {
            id,
            pkid,
            exactly_once,
            acked: false,
            arrived: now,
        });
        IncomingAction::Deliver {
            message,
            token: Some(AckToken {
                generation: self.generation,
                id,
                pkid,
                qos: if exactly_once {
                    QoS::ExactlyOnce
                } else {
                    QoS::AtLeastOnce
                },
            }),
        }
    }

    /// The application is done with the message of `token`. Returns the
    /// PUBACK/PUBREC packets that may go out now, in arrival order (empty
    /// while an earlier message is unacked). Tokens of an older generation,
    /// unknown ids and repeated acks are ignored (empty result).
    pub fn ack(&mut self, token: AckToken) -> Vec<Packet> {
        let mut out = Vec::new();
        self.ack_each(token, |p| out.push(p));
        out
    }

    /// As [`Incoming::ack`], handing each packet to `send` in order instead
    /// of collecting them (no allocation per ack).
    pub fn ack_each(&mut self, token: AckToken, mut send: impl FnMut(Packet)) {
        if token.generation != self.generation {
            return;
        }
        // `pending` is sorted by id: ids are handed out increasing.
        let Ok(index) = self.pending.binary_search_by_key(&token.id, |p| p.id) else {
            return;
        };
        if let Some(p) = self.pending.get_mut(index) {
            p.acked = true;
        }
        while self.pending.front().is_some_and(|p| p.acked) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            if p.exactly_once {
                self.qos2.insert(p.pkid, Qos2::Received);
                send(Packet::PubRec(PubRec::new(p.pkid)));
            } else {
                send(Packet::PubAck(PubAck::new(p.pkid)));
            }
        }
    }

    /// PUBREL received: releases the QoS 2 packet id and returns the PUBCOMP.
    /// An unknown id still gets its PUBCOMP (MQTT-4.3.3-11: the PUBREL may
    /// repeat after a reconnect). A PUBREL for a message still held by the
    /// application (peer violation) only forgets the id, so a reused id is
    /// not mistaken for a duplicate; its PUBREC still goes out in order.
    pub fn on_pubrel(&mut self, pkid: u16) -> Packet {
        self.qos2.remove(&pkid);
        Packet::PubComp(PubComp::new(pkid))
    }

    /// Remembers QoS 2 packet id `pkid` as received and acknowledged (PUBREC
    /// sent) before a restart: a redelivery is a duplicate, not a new message.
    pub fn restore_received(&mut self, pkid: u16) {
        self.qos2.insert(pkid, Qos2::Received);
    }

    /// A new connection on the same session: starts a new generation,
    /// forgets deliveries not yet acknowledged to the peer (it redelivers
    /// them, with DUP) and keeps the QoS 2 ids already PUBREC'd.
    pub fn reset_connection(&mut self) {
        self.generation += 1;
        self.pending.clear();
        self.qos2.retain(|_, s| *s == Qos2::Received);
    }

    /// A new session (clean session, or the peer lost ours): like
    /// [`Incoming::reset_connection`] but also forgets the QoS 2 ids.
    pub fn clear_session(&mut self) {
        self.generation += 1;
        self.pending.clear();
        self.qos2.clear();
    }
}
