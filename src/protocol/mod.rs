//! Protocol pieces shared by the client core and the built-in broker:
//! the internal message type, the codec adapter over `rumqttc::mqttbytes`,
//! the sans-IO session state machines and the keepalive timing. Only
//! [`framed`] touches tokio (it wraps a byte stream); the rest is pure.

pub mod codec;
pub mod framed;
pub mod keepalive;
pub mod message;
pub mod session;

pub use codec::{
    CodecError, MAX_STRING_LEN, decode, encode, filter_is_valid, message_from_publish,
    publish_from_message, topic_name_is_valid,
};
pub use framed::{Framed, MQTT_MAX_PACKET_SIZE, PacketReader, PacketWriter};
pub use keepalive::Keepalive;
pub use message::{Message, MessageProperties, QoS};
pub use session::{Full, Incoming, IncomingAction, Outgoing, PacketIds, ProtocolViolation};

/// rumqttc's wire QoS (used inside `v4` packets); converts from/to [`QoS`].
pub use rumqttc::mqttbytes::QoS as WireQoS;
/// The rumqttc MQTT 3.1.1 packet types (`v4::Packet`, `v4::Publish`, ...).
pub use rumqttc::mqttbytes::v4;
