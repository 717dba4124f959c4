//! QoS 1/2 flows of the messages WE send: PUBLISH → PUBACK, and
//! PUBLISH → PUBREC → PUBREL → PUBCOMP; resend on reconnect.

use std::collections::{HashMap, HashSet};
use std::fmt;

use rumqttc::mqttbytes::v4::{Packet, PubRel};

use super::packet_id::PacketIds;
use super::{AckKind, ProtocolViolation};
use crate::protocol::codec::publish_from_message;
use crate::protocol::message::{Message, QoS};

/// The inflight window is full (or, with a window of 65,535, no packet id is
/// free). Gives the message and token back so nothing is lost.
pub struct Full<T> {
    /// The message that was not published.
    pub message: Message,
    /// The caller's token, untouched.
    pub token: T,
}

impl<T> fmt::Debug for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Full")
            .field("topic", &self.message.topic)
            .finish_non_exhaustive()
    }
}

/// What [`Outgoing::resume_messages`] asks to send again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resend {
    /// The message again under its packet id.
    Publish {
        /// The message, DUP set for a resend to a session that was kept.
        message: Message,
        /// Its packet id.
        pkid: u16,
    },
    /// PUBREL of a QoS 2 flow past PUBREC.
    PubRel(u16),
}

/// Where an outgoing QoS 1/2 flow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// PUBLISH sent (or to be sent); waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    AwaitAck,
    /// QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP.
    AwaitComp,
}

/// The message is kept, not its encoded PUBLISH: it shares topic and
/// payload with the caller's copy, and the packet is built again only for a
/// resend.
#[derive(Debug)]
struct Flow<T> {
    message: Message,
    /// Publish order: flows resume and drain sorted by it.
    seq: u64,
    stage: Stage,
    token: T,
}

/// Outgoing QoS 1/2 state of one session. `T` is the caller's opaque token
/// (a oneshot sender, a local message id...), handed back when the flow
/// completes. Each flow carries its publish sequence number: acks find a
/// flow by packet id in one hash lookup, and [`Outgoing::resume`] and
/// [`Outgoing::drain`] (rare) sort by it to keep publish order.
///
/// Packet ids: PUBLISH, SUBSCRIBE and UNSUBSCRIBE share one id space per
/// direction; a client takes the SUBSCRIBE/UNSUBSCRIBE ids from
/// [`Outgoing::reserve_id`] so they never collide with a PUBLISH in flight.
#[derive(Debug)]
pub struct Outgoing<T> {
    window: usize,
    ids: PacketIds,
    reserved: HashSet<u16>,
    /// Flows by packet id; looked up on every ack, so a fast
    /// (non-DoS-resistant) hash: we pick the keys, the peer picks none.
    flows: HashMap<u16, Flow<T>, foldhash::fast::RandomState>,
    next_seq: u64,
}

impl<T> Outgoing<T> {
    /// Empty state with at most `window` QoS 1/2 messages in flight
    /// (clamped to 1..=65,535).
    pub fn new(window: usize) -> Self {
        Outgoing {
            window: window.clamp(1, usize::from(u16::MAX)),
            ids: PacketIds::new(),
            reserved: HashSet::new(),
            flows: HashMap::default(),
            next_seq: 0,
        }
    }

    /// The inflight window.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Changes the inflight window (clamped to 1..=65,535), e.g. to an MQTT 5
    /// peer's Receive Maximum on a new connection. Flows already in flight
    /// stay; no new one starts until they fall below the window.
    pub fn set_window(&mut self, window: usize) {
        self.window = window.clamp(1, usize::from(u16::MAX));
    }

    /// The message of the flow with packet id `pkid`, if one is in flight.
    pub fn message(&self, pkid: u16) -> Option<&Message> {
        self.flows.get(&pkid).map(|f| &f.message)
    }

    /// Whether a QoS 1/2 publish would be accepted now (use as a `select!` guard).
    pub fn has_room(&self) -> bool {
        self.flows.len() < self.window && self.ids.len() < usize::from(u16::MAX)
    }

    /// QoS 1/2 messages in flight (for metrics).
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Starts publishing `message` and returns the PUBLISH to send.
    ///
    /// QoS 0 keeps no state and ignores the window: the token comes straight
    /// back as `Some(token)` (complete it once the packet is written). QoS 1/2
    /// get a fresh packet id and return `None`; the token comes back from
    /// [`Outgoing::on_puback`] or [`Outgoing::on_pubcomp`]. If the packet
    /// cannot be sent now (disconnected), just keep it: [`Outgoing::resume`]
    /// sends it on the next connection (possibly with DUP set, which is
    /// harmless).
    pub fn publish(&mut self, message: Message, token: T) -> Result<(Packet, Option<T>), Full<T>> {
        let (pkid, message, qos0) = self.publish_message(message, token)?;
        Ok((
            Packet::Publish(publish_from_message(&message, pkid, false)),
            qos0,
        ))
    }

    /// As [`Outgoing::publish`], without building the PUBLISH: the packet id
    /// given to the flow (0 for QoS 0) and the message to hand over (sharing
    /// topic and payload with the copy kept for a resend), for a receiver in
    /// the same process that takes the message itself.
    pub fn publish_message(
        &mut self,
        message: Message,
        token: T,
    ) -> Result<(u16, Message, Option<T>), Full<T>> {
        if message.qos == QoS::AtMostOnce {
            return Ok((0, message, Some(token)));
        }
        if !self.has_room() {
            return Err(Full { message, token });
        }
        let Some(pkid) = self.ids.allocate() else {
            return Err(Full { message, token });
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.flows.insert(
            pkid,
            Flow {
                message: message.clone(),
                seq,
                stage: Stage::AwaitAck,
                token,
            },
        );
        Ok((pkid, message, None))
    }

    fn flow_mut(&mut self, kind: AckKind, pkid: u16) -> Result<&mut Flow<T>, ProtocolViolation> {
        self.flows
            .get_mut(&pkid)
            .ok_or(ProtocolViolation::UnknownPacketId { kind, pkid })
    }

    fn finish(&mut self, pkid: u16) -> Option<T> {
        let flow = self.flows.remove(&pkid)?;
        self.ids.release(pkid);
        Some(flow.token)
    }

    /// The flows in publish order.
    fn in_order(&mut self) -> Vec<(u16, &mut Flow<T>)> {
        let mut flows: Vec<_> = self.flows.iter_mut().map(|(&k, f)| (k, f)).collect();
        flows.sort_unstable_by_key(|(_, f)| f.seq);
        flows
    }

    /// PUBACK received: completes a QoS 1 flow and returns its token.
    /// Unknown ids and QoS 2 ids are violations to log and ignore.
    pub fn on_puback(&mut self, pkid: u16) -> Result<T, ProtocolViolation> {
        let kind = AckKind::PubAck;
        let flow = self.flow_mut(kind, pkid)?;
        if flow.message.qos != QoS::AtLeastOnce {
            return Err(ProtocolViolation::UnexpectedAck { kind, pkid });
        }
        self.finish(pkid)
            .ok_or(ProtocolViolation::UnknownPacketId { kind, pkid })
    }

    /// PUBREC received: moves a QoS 2 flow to "released" and returns the
    /// PUBREL to send (again, for a repeated PUBREC).
    pub fn on_pubrec(&mut self, pkid: u16) -> Result<Packet, ProtocolViolation> {
        let kind = AckKind::PubRec;
        let flow = self.flow_mut(kind, pkid)?;
        if flow.message.qos != QoS::ExactlyOnce {
            return Err(ProtocolViolation::UnexpectedAck { kind, pkid });
        }
        flow.stage = Stage::AwaitComp;
        Ok(Packet::PubRel(PubRel::new(pkid)))
    }

    /// PUBCOMP received: completes a released QoS 2 flow and returns its token.
    /// A PUBCOMP before PUBREC is a violation and changes nothing.
    pub fn on_pubcomp(&mut self, pkid: u16) -> Result<T, ProtocolViolation> {
        let kind = AckKind::PubComp;
        let flow = self.flow_mut(kind, pkid)?;
        if flow.stage != Stage::AwaitComp {
            return Err(ProtocolViolation::UnexpectedAck { kind, pkid });
        }
        self.finish(pkid)
            .ok_or(ProtocolViolation::UnknownPacketId { kind, pkid })
    }

    /// Packets to send after (re)connecting, in original publish order.
    ///
    /// `session_present = true` (the peer kept our session): unacknowledged
    /// PUBLISH again with DUP=1 and the same packet id; PUBREL for flows past
    /// PUBREC (MQTT-4.4.0-1).
    ///
    /// `session_present = false` (the peer lost it): every unacknowledged
    /// message is published again as new (DUP=0), nothing dropped. That
    /// includes QoS 2 flows already past PUBREC: the old receiver may have
    /// delivered them already, so across a lost session QoS 2 degrades to
    /// at-least-once (a duplicate is possible, a loss is not).
    pub fn resume(&mut self, session_present: bool) -> Vec<Packet> {
        self.resume_messages(session_present)
            .into_iter()
            .map(|r| match r {
                Resend::Publish { message, pkid } => {
                    Packet::Publish(publish_from_message(&message, pkid, message.dup))
                }
                Resend::PubRel(pkid) => Packet::PubRel(PubRel::new(pkid)),
            })
            .collect()
    }

    /// As [`Outgoing::resume`], with the messages themselves (DUP set on
    /// the message as the PUBLISH would carry it), for a connection that
    /// sends more than a 3.1.1 PUBLISH holds (MQTT 5 properties).
    pub fn resume_messages(&mut self, session_present: bool) -> Vec<Resend> {
        self.in_order()
            .into_iter()
            .map(|(pkid, flow)| {
                if !session_present {
                    flow.stage = Stage::AwaitAck;
                }
                match flow.stage {
                    Stage::AwaitAck => {
                        let mut message = flow.message.clone();
                        message.dup = session_present && message.qos != QoS::AtMostOnce;
                        Resend::Publish { message, pkid }
                    }
                    Stage::AwaitComp => Resend::PubRel(pkid),
                }
            })
            .collect()
    }

    /// Removes every flow (e.g. the link is closing for good) and returns
    /// the messages with their tokens, in publish order, so the caller can
    /// fail or re-queue them. Reserved ids stay reserved.
    pub fn drain(&mut self) -> Vec<(Message, T)> {
        let mut flows: Vec<(u16, Flow<T>)> = self.flows.drain().collect();
        flows.sort_unstable_by_key(|(_, f)| f.seq);
        for (pkid, _) in &flows {
            self.ids.release(*pkid);
        }
        flows
            .into_iter()
            .map(|(_, f)| {
                let mut message = f.message;
                message.dup = false;
                (message, f.token)
            })
            .collect()
    }

    /// Like [`Outgoing::drain`], but returns only the messages the peer has
    /// not acknowledged receiving (no PUBACK/PUBREC yet): the ones another
    /// receiver must get when this one is gone. QoS 2 flows past PUBREC are
    /// dropped (the peer has the message).
    pub fn drain_unreceived(&mut self) -> Vec<(Message, T)> {
        let ids = &mut self.ids;
        self.flows.retain(|&pkid, f| {
            let keep = f.stage == Stage::AwaitAck;
            if !keep {
                ids.release(pkid);
            }
            keep
        });
        self.drain()
    }

    /// Puts back a QoS 1/2 flow that was in flight before a restart, under
    /// its original packet id (`released`: PUBREC was received, PUBREL is
    /// owed). Gives the message back when the id is taken or invalid.
    pub fn restore(
        &mut self,
        message: Message,
        pkid: u16,
        released: bool,
        token: T,
    ) -> Result<(), Full<T>> {
        if message.qos == QoS::AtMostOnce || !self.ids.claim(pkid) {
            return Err(Full { message, token });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let stage = if released {
            Stage::AwaitComp
        } else {
            Stage::AwaitAck
        };
        self.flows.insert(
            pkid,
            Flow {
                message,
                seq,
                stage,
                token,
            },
        );
        Ok(())
    }

    /// The token of the flow under `pkid` (e.g. to hand a restored flow's
    /// completion to whoever asks for it again).
    pub fn token_mut(&mut self, pkid: u16) -> Option<&mut T> {
        self.flows.get_mut(&pkid).map(|f| &mut f.token)
    }

    /// A packet id for a SUBSCRIBE/UNSUBSCRIBE, never one in flight;
    /// `None` when all ids are in use. Give it back with [`Outgoing::release_id`].
    pub fn reserve_id(&mut self) -> Option<u16> {
        let id = self.ids.allocate()?;
        self.reserved.insert(id);
        Some(id)
    }

    /// Releases an id from [`Outgoing::reserve_id`] (on SUBACK/UNSUBACK);
    /// false (and nothing freed) for any other id.
    pub fn release_id(&mut self, id: u16) -> bool {
        self.reserved.remove(&id) && self.ids.release(id)
    }
}
