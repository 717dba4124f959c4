//! The internal message type: what pipes, the client core and the broker
//! pass around. Codec types from `rumqttc` never leave `protocol::codec`.

use bytes::Bytes;

/// MQTT quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    /// QoS 0: fire and forget.
    #[default]
    AtMostOnce = 0,
    /// QoS 1: PUBLISH → PUBACK.
    AtLeastOnce = 1,
    /// QoS 2: PUBLISH → PUBREC → PUBREL → PUBCOMP.
    ExactlyOnce = 2,
}

impl QoS {
    /// Converts a wire value; `None` for 3 and above.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// An application message, independent of protocol version and codec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name (never contains wildcards once accepted from the wire).
    pub topic: String,
    /// Payload bytes; cheap to clone.
    pub payload: Bytes,
    /// Quality of service of this delivery.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// DUP flag as received (informational; senders set it themselves on resend).
    pub dup: bool,
    /// MQTT 5 properties, carried opaquely; `None` on 3.1.1 links.
    pub properties: Option<MessageProperties>,
}

/// The MQTT 5 publish properties a bridge forwards. Empty for now; reserved so
/// adding v5 does not change every signature.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageProperties {
    /// User properties (key, value) in order.
    pub user_properties: Vec<(String, String)>,
    /// Content type, if any.
    pub content_type: Option<String>,
}

impl Message {
    /// A message with DUP off and no properties.
    pub fn new(
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
            dup: false,
            properties: None,
        }
    }
}

/// Acknowledgement token of an incoming message, sent back to the link owner
/// when a pipe has finished with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckToken {
    /// Connection generation the message arrived on; acks from an older
    /// generation are ignored (the broker redelivers on the new connection).
    pub generation: u64,
    /// Chosen by the owner to find the message again: the client session's
    /// arrival sequence number, a local link's `qos << 16 | pkid`.
    pub id: u64,
}
