//! Why a v5 packet was refused, and the reason code that tells the peer.

use rumqttc::v5::mqttbytes;

use crate::protocol::reason::ReasonCode;

/// One broken rule, named after the normative statement where the spec has
/// one. Carried by [`V5Error::Malformed`] and [`V5Error::Protocol`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A field runs past the end of the packet.
    #[error("packet ends inside a field")]
    Truncated,
    /// Bytes after the last field of a packet without a payload.
    #[error("{0} bytes after the last field")]
    TrailingBytes(usize),
    /// A variable byte integer longer than 4 bytes or not in its shortest
    /// form [MQTT-1.5.5-1].
    #[error("variable byte integer not in its shortest form (MQTT-1.5.5-1)")]
    VariableByteInteger,
    /// A string that is not well-formed UTF-8 [MQTT-1.5.4-1].
    #[error("{0} is not valid UTF-8 (MQTT-1.5.4-1)")]
    InvalidUtf8(&'static str),
    /// A string with U+0000 [MQTT-1.5.4-2].
    #[error("{0} contains U+0000 (MQTT-1.5.4-2)")]
    NulInString(&'static str),
    /// Packet type 0, or reserved fixed-header flag bits [MQTT-2.1.3-1].
    #[error("reserved fixed header flags {flags:#06b} on packet type {packet_type} (MQTT-2.1.3-1)")]
    ReservedFlags {
        /// Packet type.
        packet_type: u8,
        /// The flag nibble.
        flags: u8,
    },
    /// PUBLISH QoS 3 [MQTT-3.3.1-4].
    #[error("PUBLISH QoS 3 (MQTT-3.3.1-4)")]
    PublishQos3,
    /// DUP on a QoS 0 PUBLISH [MQTT-3.3.1-2].
    #[error("DUP on a QoS 0 PUBLISH (MQTT-3.3.1-2)")]
    DupOnQos0,
    /// Packet identifier 0 where one is required [MQTT-2.2.1-3].
    #[error("packet identifier 0 in {0} (MQTT-2.2.1-3)")]
    PacketIdZero(&'static str),
    /// A property identifier that does not exist or that this packet (or
    /// the will) may not carry: a Malformed Packet (spec 2.2.2.2).
    #[error("property {id:#04x} is not allowed in {packet}")]
    PropertyNotAllowed {
        /// Property identifier.
        id: u32,
        /// Where it appeared.
        packet: &'static str,
    },
    /// A property the spec allows once, twice.
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// A property with a value the spec forbids (0 for receive maximum,
    /// maximum packet size, subscription identifier; not 0/1 for the flags).
    #[error("property {id:#04x} has the invalid value {value}")]
    PropertyValue {
        /// Property identifier.
        id: u8,
        /// The value received.
        value: u32,
    },
    /// Authentication data without an authentication method.
    #[error("authentication data without authentication method")]
    AuthDataWithoutMethod,
    /// A reason code the packet type may not carry.
    #[error("reason code {code:#04x} is not valid in {packet}")]
    ReasonCode {
        /// The byte received.
        code: u8,
        /// Packet name.
        packet: &'static str,
    },
    /// CONNECT reserved flag set [MQTT-3.1.2-3].
    #[error("CONNECT reserved flag set (MQTT-3.1.2-3)")]
    ConnectReservedFlag,
    /// Will QoS or retain set without the will flag [MQTT-3.1.2-11, MQTT-3.1.2-13].
    #[error("will QoS/retain without the will flag (MQTT-3.1.2-11/13)")]
    WillFlags,
    /// Will QoS 3 [MQTT-3.1.2-12].
    #[error("will QoS 3 (MQTT-3.1.2-12)")]
    WillQos3,
    /// CONNACK acknowledge flags bits 7-1 set [MQTT-3.2.2-1].
    #[error("CONNACK reserved flags set (MQTT-3.2.2-1)")]
    ConnAckReservedFlags,
    /// CONNACK with session present and a failure code [MQTT-3.2.2-6].
    #[error("CONNACK session present with a failure code (MQTT-3.2.2-6)")]
    SessionPresentOnFailure,
    /// An empty PUBLISH topic without a topic alias (spec 3.3.2.1).
    #[error("PUBLISH with an empty topic and no topic alias")]
    EmptyTopicWithoutAlias,
    /// A subscription identifier on a PUBLISH from a client [MQTT-3.3.4-6].
    #[error("subscription identifier on a PUBLISH from a client (MQTT-3.3.4-6)")]
    SubscriptionIdFromClient,
    /// A response topic with wildcards [MQTT-3.3.2-14].
    #[error("response topic with wildcards (MQTT-3.3.2-14)")]
    ResponseTopicWildcard,
    /// SUBSCRIBE or UNSUBSCRIBE without a filter [MQTT-3.8.3-2, MQTT-3.10.3-2].
    #[error("{0} without filters (MQTT-3.8.3-2/MQTT-3.10.3-2)")]
    NoFilters(&'static str),
    /// SUBSCRIBE options with reserved bits set [MQTT-3.8.3-5].
    #[error("subscription options {0:#04x} with reserved bits (MQTT-3.8.3-5)")]
    SubscriptionOptionsReserved(u8),
    /// SUBSCRIBE option QoS 3.
    #[error("subscription QoS 3")]
    SubscriptionQos3,
    /// SUBSCRIBE option retain handling 3.
    #[error("retain handling 3")]
    RetainHandling3,
    /// No Local on a shared subscription [MQTT-3.8.3-4].
    #[error("no local on a shared subscription (MQTT-3.8.3-4)")]
    NoLocalOnShared,
    /// SUBACK or UNSUBACK without reason codes.
    #[error("{0} without reason codes")]
    NoReasonCodes(&'static str),
    /// A session expiry interval on a DISCONNECT from the server [MQTT-3.14.2-2].
    #[error("session expiry interval on a DISCONNECT from the server (MQTT-3.14.2-2)")]
    SessionExpiryFromServer,
    /// CONNECT with a protocol name other than `MQTT` [MQTT-3.1.2-1].
    #[error("CONNECT with an unknown protocol name (MQTT-3.1.2-1)")]
    ProtocolName,
    /// A packet type this side never receives (a client sending CONNACK,
    /// a server sending CONNECT...).
    #[error("{0} sent in the wrong direction")]
    WrongDirection(&'static str),
}

/// Why a v5 packet could not be decoded or encoded. [`V5Error::reason_code`]
/// is what to put in the DISCONNECT (or CONNACK) before closing.
#[derive(Debug, thiserror::Error)]
pub enum V5Error {
    /// A malformed packet (DISCONNECT 0x81).
    #[error("malformed packet: {0}")]
    Malformed(Violation),
    /// A protocol error (DISCONNECT 0x82).
    #[error("protocol error: {0}")]
    Protocol(Violation),
    /// Topic alias 0 (DISCONNECT 0x94) [MQTT-3.3.2-8].
    #[error("topic alias 0 (MQTT-3.3.2-8)")]
    TopicAliasZero,
    /// A PUBLISH (or will) topic name with wildcards (DISCONNECT 0x90) [MQTT-3.3.2-2].
    #[error("topic name with wildcards (MQTT-3.3.2-2)")]
    TopicNameInvalid,
    /// A packet over our maximum, refused from its fixed header (DISCONNECT 0x95) [MQTT-3.2.2-15].
    #[error("incoming packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Announced total size.
        size: usize,
        /// Our maximum.
        max: usize,
    },
    /// CONNECT that is not `MQTT` level 5 (CONNACK 0x84, then close) [MQTT-3.1.2-2].
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// Encode: the packet is larger than the peer's maximum packet size; it
    /// must not be sent [MQTT-3.1.2-24]. Not a connection error.
    #[error("outgoing packet of {size} bytes exceeds the peer's maximum of {max}")]
    OutgoingTooLarge {
        /// Encoded size.
        size: usize,
        /// The peer's maximum.
        max: usize,
    },
    /// Encode: a string or binary field over 65,535 bytes (rumqttc would
    /// truncate its length prefix silently).
    #[error("{field} is {len} bytes, over the 65,535 byte limit")]
    StringTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// Encode: a packet rumqttc cannot write (it would panic: a CONNACK
    /// with one of the 3.1.1-only codes 0x01-0x03).
    #[error("cannot encode: {0}")]
    Unencodable(&'static str),
    /// Encode: a packet over the largest remaining length (268,435,455).
    #[error("packet body of {0} bytes exceeds the largest remaining length")]
    RemainingLengthTooLarge(usize),
    /// rumqttc refused the bytes after our checks passed (DISCONNECT 0x81).
    #[error("malformed packet: {0}")]
    Codec(#[source] mqttbytes::Error),
}

impl V5Error {
    /// The reason code to send before closing: in a DISCONNECT, or in the
    /// CONNACK when this happened on the CONNECT.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            V5Error::Malformed(_) | V5Error::Codec(_) => ReasonCode::MalformedPacket,
            V5Error::Protocol(_) => ReasonCode::ProtocolError,
            V5Error::TopicAliasZero => ReasonCode::TopicAliasInvalid,
            V5Error::TopicNameInvalid => ReasonCode::TopicNameInvalid,
            V5Error::PacketTooLarge { .. } | V5Error::OutgoingTooLarge { .. } => {
                ReasonCode::PacketTooLarge
            }
            V5Error::UnsupportedProtocolVersion(_) => ReasonCode::UnsupportedProtocolVersion,
            V5Error::StringTooLong { .. }
            | V5Error::Unencodable(_)
            | V5Error::RemainingLengthTooLarge(_) => ReasonCode::ImplementationSpecificError,
        }
    }
}
