//! Sans-IO MQTT session state: packet ids, the QoS 1/2 flows of messages we
//! send ([`Outgoing`]) and of messages we receive ([`Incoming`]). Pure and
//! synchronous; methods take a packet and return the packets to send, the
//! caller does the IO. One implementation serves both the client core and
//! the built-in broker (the flows are symmetric in MQTT 3.1.1).
//!
//! A QoS 2 message from a sender's [`Outgoing`] to a receiver's [`Incoming`]
//! (the connection task moves the packets over the wire):
//!
//! ```
//! use std::time::Instant;
//! use mqbridge::protocol::{Incoming, IncomingAction, Message, Outgoing, QoS, v4::Packet};
//!
//! let mut sender: Outgoing<&str> = Outgoing::new(16);
//! let mut receiver = Incoming::new();
//!
//! let message = Message::new("a/b", "hi", QoS::ExactlyOnce, false);
//! let (Packet::Publish(publish), None) = sender.publish(message, "caller token").unwrap() else {
//!     unreachable!()
//! };
//! let pkid = publish.pkid;
//! let IncomingAction::Deliver { message, token: Some(token) } =
//!     receiver.on_publish(publish, Instant::now())
//! else {
//!     unreachable!()
//! };
//! assert_eq!(message.topic, "a/b");
//! // The application (a pipe) acks; PUBREC goes out in arrival order.
//! let acks = receiver.ack(token);
//! assert!(matches!(acks.as_slice(), [Packet::PubRec(r)] if r.pkid == pkid));
//! let pubrel = sender.on_pubrec(pkid).unwrap();
//! assert!(matches!(pubrel, Packet::PubRel(_)));
//! let pubcomp = receiver.on_pubrel(pkid);
//! assert!(matches!(pubcomp, Packet::PubComp(_)));
//! assert_eq!(sender.on_pubcomp(pkid), Ok("caller token"));
//! ```

mod incoming;
mod outgoing;
mod packet_id;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use incoming::{Incoming, IncomingAction};
pub use outgoing::{Full, Outgoing, Resend};
pub use packet_id::PacketIds;

/// An acknowledgement from the peer that does not fit our state. MQTT 3.1.1
/// gives no way to answer it; callers log it (with the peer) and carry on,
/// as Mosquitto does, or count it. Never a reason to panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolViolation {
    /// The packet id is not in flight (late duplicate ack, or a confused peer).
    #[error("{kind} for unknown packet id {pkid}")]
    UnknownPacketId {
        /// PUBACK, PUBREC or PUBCOMP.
        kind: AckKind,
        /// The packet id.
        pkid: u16,
    },
    /// The packet id is in flight but in another stage (e.g. PUBACK for a
    /// QoS 2 message, PUBCOMP before PUBREC). The flow is left unchanged.
    #[error("{kind} for packet id {pkid} in the wrong state")]
    UnexpectedAck {
        /// PUBACK, PUBREC or PUBCOMP.
        kind: AckKind,
        /// The packet id.
        pkid: u16,
    },
}

/// Which acknowledgement a [`ProtocolViolation`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckKind {
    /// QoS 1 acknowledgement.
    PubAck,
    /// QoS 2 first acknowledgement.
    PubRec,
    /// QoS 2 completion.
    PubComp,
}

impl std::fmt::Display for AckKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AckKind::PubAck => "PUBACK",
            AckKind::PubRec => "PUBREC",
            AckKind::PubComp => "PUBCOMP",
        })
    }
}
