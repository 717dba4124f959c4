//! MQTT 5 reason codes (spec section 2.4), typed, with the set each packet
//! type may carry. Shared by the v5 codec adapter (which refuses codes a
//! packet may not carry) and by the code that acts on acks and DISCONNECTs.

/// An MQTT 5 reason code. `0x00` has three names in the spec (Success,
/// Normal disconnection, Granted QoS 0); it is [`ReasonCode::Success`] here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReasonCode {
    /// 0x00: success / normal disconnection / granted QoS 0.
    Success = 0x00,
    /// 0x01: granted QoS 1 (SUBACK).
    GrantedQos1 = 0x01,
    /// 0x02: granted QoS 2 (SUBACK).
    GrantedQos2 = 0x02,
    /// 0x04: disconnect with will message (DISCONNECT from a client).
    DisconnectWithWill = 0x04,
    /// 0x10: no matching subscribers (PUBACK, PUBREC).
    NoMatchingSubscribers = 0x10,
    /// 0x11: no subscription existed (UNSUBACK).
    NoSubscriptionExisted = 0x11,
    /// 0x18: continue authentication (AUTH).
    ContinueAuthentication = 0x18,
    /// 0x19: re-authenticate (AUTH).
    ReAuthenticate = 0x19,
    /// 0x80: unspecified error.
    UnspecifiedError = 0x80,
    /// 0x81: malformed packet.
    MalformedPacket = 0x81,
    /// 0x82: protocol error.
    ProtocolError = 0x82,
    /// 0x83: implementation specific error.
    ImplementationSpecificError = 0x83,
    /// 0x84: unsupported protocol version (CONNACK).
    UnsupportedProtocolVersion = 0x84,
    /// 0x85: client identifier not valid (CONNACK).
    ClientIdentifierNotValid = 0x85,
    /// 0x86: bad user name or password (CONNACK).
    BadUserNameOrPassword = 0x86,
    /// 0x87: not authorized.
    NotAuthorized = 0x87,
    /// 0x88: server unavailable (CONNACK).
    ServerUnavailable = 0x88,
    /// 0x89: server busy.
    ServerBusy = 0x89,
    /// 0x8A: banned (CONNACK).
    Banned = 0x8A,
    /// 0x8B: server shutting down (DISCONNECT).
    ServerShuttingDown = 0x8B,
    /// 0x8C: bad authentication method.
    BadAuthenticationMethod = 0x8C,
    /// 0x8D: keep alive timeout (DISCONNECT).
    KeepAliveTimeout = 0x8D,
    /// 0x8E: session taken over (DISCONNECT).
    SessionTakenOver = 0x8E,
    /// 0x8F: topic filter invalid.
    TopicFilterInvalid = 0x8F,
    /// 0x90: topic name invalid.
    TopicNameInvalid = 0x90,
    /// 0x91: packet identifier in use.
    PacketIdentifierInUse = 0x91,
    /// 0x92: packet identifier not found (PUBREL, PUBCOMP).
    PacketIdentifierNotFound = 0x92,
    /// 0x93: receive maximum exceeded (DISCONNECT).
    ReceiveMaximumExceeded = 0x93,
    /// 0x94: topic alias invalid (DISCONNECT).
    TopicAliasInvalid = 0x94,
    /// 0x95: packet too large.
    PacketTooLarge = 0x95,
    /// 0x96: message rate too high (DISCONNECT).
    MessageRateTooHigh = 0x96,
    /// 0x97: quota exceeded.
    QuotaExceeded = 0x97,
    /// 0x98: administrative action (DISCONNECT).
    AdministrativeAction = 0x98,
    /// 0x99: payload format invalid.
    PayloadFormatInvalid = 0x99,
    /// 0x9A: retain not supported.
    RetainNotSupported = 0x9A,
    /// 0x9B: QoS not supported.
    QosNotSupported = 0x9B,
    /// 0x9C: use another server.
    UseAnotherServer = 0x9C,
    /// 0x9D: server moved.
    ServerMoved = 0x9D,
    /// 0x9E: shared subscriptions not supported.
    SharedSubscriptionsNotSupported = 0x9E,
    /// 0x9F: connection rate exceeded.
    ConnectionRateExceeded = 0x9F,
    /// 0xA0: maximum connect time (DISCONNECT).
    MaximumConnectTime = 0xA0,
    /// 0xA1: subscription identifiers not supported.
    SubscriptionIdentifiersNotSupported = 0xA1,
    /// 0xA2: wildcard subscriptions not supported.
    WildcardSubscriptionsNotSupported = 0xA2,
}

/// Every reason code, for lookups and tests.
pub const ALL: [ReasonCode; 43] = {
    use ReasonCode::*;
    [
        Success,
        GrantedQos1,
        GrantedQos2,
        DisconnectWithWill,
        NoMatchingSubscribers,
        NoSubscriptionExisted,
        ContinueAuthentication,
        ReAuthenticate,
        UnspecifiedError,
        MalformedPacket,
        ProtocolError,
        ImplementationSpecificError,
        UnsupportedProtocolVersion,
        ClientIdentifierNotValid,
        BadUserNameOrPassword,
        NotAuthorized,
        ServerUnavailable,
        ServerBusy,
        Banned,
        ServerShuttingDown,
        BadAuthenticationMethod,
        KeepAliveTimeout,
        SessionTakenOver,
        TopicFilterInvalid,
        TopicNameInvalid,
        PacketIdentifierInUse,
        PacketIdentifierNotFound,
        ReceiveMaximumExceeded,
        TopicAliasInvalid,
        PacketTooLarge,
        MessageRateTooHigh,
        QuotaExceeded,
        AdministrativeAction,
        PayloadFormatInvalid,
        RetainNotSupported,
        QosNotSupported,
        UseAnotherServer,
        ServerMoved,
        SharedSubscriptionsNotSupported,
        ConnectionRateExceeded,
        MaximumConnectTime,
        SubscriptionIdentifiersNotSupported,
        WildcardSubscriptionsNotSupported,
    ]
};

/// The packet types that carry a reason code, for [`ReasonCode::allowed_in`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckPacket {
    /// CONNACK.
    ConnAck,
    /// PUBACK.
    PubAck,
    /// PUBREC.
    PubRec,
    /// PUBREL.
    PubRel,
    /// PUBCOMP.
    PubComp,
    /// SUBACK (one code per filter).
    SubAck,
    /// UNSUBACK (one code per filter).
    UnsubAck,
    /// DISCONNECT.
    Disconnect,
    /// AUTH.
    Auth,
}

/// The code in words and hex, as users read it: `not authorized (0x87)`.
impl std::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The variant names are the spec's names in CamelCase.
        let name = format!("{self:?}");
        let mut words = String::with_capacity(name.len() + 8);
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                words.push(' ');
            }
            words.push(c.to_ascii_lowercase());
        }
        write!(f, "{words} ({:#04x})", self.as_u8())
    }
}

impl ReasonCode {
    /// The code for a wire byte; `None` for bytes the spec assigns no meaning.
    pub fn from_u8(v: u8) -> Option<ReasonCode> {
        ALL.iter().copied().find(|c| c.as_u8() == v)
    }

    /// The wire byte.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// True for failures (0x80 and above) [MQTT-2.4].
    pub fn is_error(self) -> bool {
        self.as_u8() >= 0x80
    }

    /// Whether `self` may appear in `packet` (the tables of sections 3.2.2.2,
    /// 3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1, 3.9.3, 3.11.3, 3.14.2.1, 3.15.2.1).
    pub fn allowed_in(self, packet: AckPacket) -> bool {
        use ReasonCode::*;
        match packet {
            AckPacket::ConnAck => matches!(
                self,
                Success
                    | UnspecifiedError
                    | MalformedPacket
                    | ProtocolError
                    | ImplementationSpecificError
                    | UnsupportedProtocolVersion
                    | ClientIdentifierNotValid
                    | BadUserNameOrPassword
                    | NotAuthorized
                    | ServerUnavailable
                    | ServerBusy
                    | Banned
                    | BadAuthenticationMethod
                    | TopicNameInvalid
                    | PacketTooLarge
                    | QuotaExceeded
                    | PayloadFormatInvalid
                    | RetainNotSupported
                    | QosNotSupported
                    | UseAnotherServer
                    | ServerMoved
                    | ConnectionRateExceeded
            ),
            AckPacket::PubAck | AckPacket::PubRec => matches!(
                self,
                Success
                    | NoMatchingSubscribers
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicNameInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | PayloadFormatInvalid
            ),
            AckPacket::PubRel | AckPacket::PubComp => {
                matches!(self, Success | PacketIdentifierNotFound)
            }
            AckPacket::SubAck => matches!(
                self,
                Success
                    | GrantedQos1
                    | GrantedQos2
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | SharedSubscriptionsNotSupported
                    | SubscriptionIdentifiersNotSupported
                    | WildcardSubscriptionsNotSupported
            ),
            AckPacket::UnsubAck => matches!(
                self,
                Success
                    | NoSubscriptionExisted
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
            ),
            AckPacket::Disconnect => matches!(
                self,
                Success
                    | DisconnectWithWill
                    | UnspecifiedError
                    | MalformedPacket
                    | ProtocolError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | ServerBusy
                    | ServerShuttingDown
                    | KeepAliveTimeout
                    | SessionTakenOver
                    | TopicFilterInvalid
                    | TopicNameInvalid
                    | ReceiveMaximumExceeded
                    | TopicAliasInvalid
                    | PacketTooLarge
                    | MessageRateTooHigh
                    | QuotaExceeded
                    | AdministrativeAction
                    | PayloadFormatInvalid
                    | RetainNotSupported
                    | QosNotSupported
                    | UseAnotherServer
                    | ServerMoved
                    | SharedSubscriptionsNotSupported
                    | ConnectionRateExceeded
                    | MaximumConnectTime
                    | SubscriptionIdentifiersNotSupported
                    | WildcardSubscriptionsNotSupported
            ),
            AckPacket::Auth => matches!(self, Success | ContinueAuthentication | ReAuthenticate),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_unknown_bytes_are_none() {
        for v in 0..=u8::MAX {
            match ReasonCode::from_u8(v) {
                Some(c) => assert_eq!(c.as_u8(), v),
                None => assert!(ALL.iter().all(|c| c.as_u8() != v)),
            }
        }
        assert_eq!(ReasonCode::from_u8(0x03), None);
        assert_eq!(ReasonCode::from_u8(0xA3), None);
        // The spec defines 43 distinct values.
        assert_eq!((0..=u8::MAX).filter_map(ReasonCode::from_u8).count(), 43);
    }

    #[test]
    fn packet_tables_match_the_spec_samples() {
        use ReasonCode::*;
        assert!(NoMatchingSubscribers.allowed_in(AckPacket::PubAck));
        assert!(!NoMatchingSubscribers.allowed_in(AckPacket::PubComp));
        assert!(PacketIdentifierNotFound.allowed_in(AckPacket::PubRel));
        assert!(!NotAuthorized.allowed_in(AckPacket::PubRel));
        assert!(GrantedQos2.allowed_in(AckPacket::SubAck));
        assert!(!GrantedQos2.allowed_in(AckPacket::UnsubAck));
        assert!(DisconnectWithWill.allowed_in(AckPacket::Disconnect));
        assert!(!UnsupportedProtocolVersion.allowed_in(AckPacket::Disconnect));
        assert!(UnsupportedProtocolVersion.allowed_in(AckPacket::ConnAck));
        assert!(ReAuthenticate.allowed_in(AckPacket::Auth));
        assert!(!MalformedPacket.allowed_in(AckPacket::Auth));
        assert!(QuotaExceeded.is_error() && !NoMatchingSubscribers.is_error());
    }

    #[test]
    fn codes_display_in_words_with_their_value() {
        assert_eq!(
            ReasonCode::NotAuthorized.to_string(),
            "not authorized (0x87)"
        );
        assert_eq!(
            ReasonCode::BadUserNameOrPassword.to_string(),
            "bad user name or password (0x86)"
        );
        assert_eq!(ReasonCode::Success.to_string(), "success (0x00)");
    }
}
