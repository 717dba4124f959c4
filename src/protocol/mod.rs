//! Protocol pieces shared by the client core and the built-in broker:
//! the internal message type, the codec adapters over `rumqttc::mqttbytes`
//! (3.1/3.1.1 in `codec`, 5 in [`v5`], one entry point in [`version`]),
//! the sans-IO session state machines and the keepalive timing, and the
//! pure MQTT 5 pieces: [`reason`] codes, the PUBLISH mapping
//! ([`convert`]), topic [`alias`] tables, flow control ([`quota`]),
//! message [`expiry`], [`shared`] subscriptions and the CONNECT
//! [`negotiate`]-ion. Only [`framed`], [`websocket`] and [`quickack`]
//! touch tokio (they wrap byte streams); the rest is pure.

pub mod alias;
pub(crate) mod codec;
pub mod convert;
pub(crate) mod expiry;
pub(crate) mod framed;
pub(crate) mod keepalive;
pub(crate) mod message;
pub(crate) mod negotiate;
pub(crate) mod quickack;
pub(crate) mod quota;
pub mod reason;
pub(crate) mod session;
pub(crate) mod shared;
pub(crate) mod subscription;
pub mod v5;
pub mod version;
pub(crate) mod websocket;

pub use codec::{
    CodecError, MAX_STRING_LEN, decode, encode, filter_is_valid, message_from_publish,
    publish_from_message, topic_name_is_valid,
};
pub use framed::{Framed, MQTT_MAX_PACKET_SIZE};
pub use keepalive::Keepalive;
pub use message::{AckToken, Message, MessageProperties, PropertyFields, QoS, Topic};
pub use session::{
    AckKind, Full, Incoming, IncomingAction, Outgoing, PacketIds, ProtocolViolation,
};
pub use subscription::{RetainHandling, SubscribeOptions};

/// rumqttc's wire QoS (used inside `v4` packets); converts from/to [`QoS`].
pub use rumqttc::mqttbytes::QoS as WireQoS;
/// The rumqttc MQTT 3.1.1 packet types (`v4::Packet`, `v4::Publish`, ...).
pub use rumqttc::mqttbytes::v4;

/// The packet type's name as the spec writes it (`CONNECT`, `PUBLISH`, ...), for logs and errors.
pub fn packet_name(p: &v4::Packet) -> &'static str {
    use v4::Packet;
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}
