//! The PUBLISH mapping between the MQTT 5 wire packet and the version-free
//! [`Message`] (the 3.1/3.1.1 mapping is `codec::{message_from_publish,
//! publish_from_message}`, which drops properties: the rules are on
//! [`MessageProperties`]), and rumqttc's per-packet reason enums to and
//! from the typed [`ReasonCode`].

use rumqttc::v5::mqttbytes::v5::{
    DisconnectReasonCode, PubAckReason, PubCompReason, PubRecReason, PubRelReason, Publish,
    PublishProperties, SubscribeReasonCode, UnsubAckReason,
};

use bytes::Bytes;

use super::message::{Message, MessageProperties, PropertyFields, QoS};
use super::reason::ReasonCode;

/// How the topic of an outgoing v5 PUBLISH is written, as the connection's
/// outbound alias table decided (`protocol::alias::Outbound`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicForm {
    /// The topic name, no alias.
    Name,
    /// The topic name and a new alias for it.
    NameAndAlias(u16),
    /// An empty topic name and an alias the peer already knows.
    AliasOnly(u16),
}

/// A v5 PUBLISH decoded into a [`Message`]; `topic_alias` is for the
/// connection's inbound alias table, which supplies the topic when the
/// PUBLISH carried an empty one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The message; its topic is empty when only an alias was sent.
    pub message: Message,
    /// The PUBLISH's topic alias, if any.
    pub topic_alias: Option<u16>,
}

/// Maps a PUBLISH the v5 codec accepted (its topic is checked UTF-8 there;
/// any other bytes become U+FFFD rather than panic) to a [`Message`].
pub fn message_from_v5_publish(p: Publish) -> Inbound {
    let (properties, topic_alias) = split_v5_properties(p.properties);
    let topic = String::from_utf8_lossy(&p.topic);
    let mut message = Message::new(&*topic, p.payload, p.qos.into(), p.retain);
    message.dup = p.dup;
    message.properties = properties;
    Inbound {
        message,
        topic_alias,
    }
}

/// A v5 PUBLISH's property section as the message's properties (`None`
/// when empty) and its topic alias, which is not a message property.
pub fn split_v5_properties(
    p: Option<PublishProperties>,
) -> (Option<MessageProperties>, Option<u16>) {
    match p {
        Some(props) => {
            let alias = props.topic_alias;
            (
                Some(properties_from_v5(props)).filter(|p| !p.is_empty()),
                alias,
            )
        }
        None => (None, None),
    }
}

/// The message properties of a v5 PUBLISH (the topic alias is not one).
pub fn properties_from_v5(p: PublishProperties) -> MessageProperties {
    MessageProperties::from(PropertyFields {
        payload_is_utf8: p.payload_format_indicator.map(|v| v == 1),
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        subscription_identifiers: p
            .subscription_identifiers
            .into_iter()
            .filter_map(|id| u32::try_from(id).ok())
            .collect(),
    })
}

/// Builds the v5 PUBLISH for `message`: packet id `pkid` (0 for QoS 0),
/// DUP (off for QoS 0), the topic as `topic` says, and `expiry` as the
/// message expiry interval to send (the remaining one, from
/// `protocol::expiry`; `None` when the message has none). A server's
/// PUBLISH: subscription identifiers are carried.
pub fn v5_publish_from_message(
    message: &Message,
    pkid: u16,
    dup: bool,
    topic: TopicForm,
    expiry: Option<u32>,
) -> Publish {
    let parts = Parts {
        topic: &message.topic,
        payload: &message.payload,
        qos: message.qos,
        retain: message.retain,
        dup,
        pkid,
    };
    let props = message.properties.as_ref();
    parts.publish(topic, v5_properties(props, topic.alias(), expiry, true))
}

/// Builds the v5 PUBLISH a client sends for a 3.1.1 `publish` of its
/// session with the message's `properties` (as [`v5_publish_from_message`],
/// without building a [`Message`]): subscription identifiers are dropped,
/// a client may not send them [MQTT-3.3.4-6].
pub fn v5_publish_from_v4(
    publish: &super::v4::Publish,
    properties: Option<&MessageProperties>,
    topic: TopicForm,
    expiry: Option<u32>,
) -> Publish {
    let parts = Parts {
        topic: &publish.topic,
        payload: &publish.payload,
        qos: QoS::from(publish.qos),
        retain: publish.retain,
        dup: publish.dup,
        pkid: publish.pkid,
    };
    parts.publish(
        topic,
        v5_properties(properties, topic.alias(), expiry, false),
    )
}

/// The fields of a PUBLISH besides its properties, from either path.
struct Parts<'a> {
    topic: &'a str,
    payload: &'a Bytes,
    qos: QoS,
    retain: bool,
    dup: bool,
    pkid: u16,
}

impl Parts<'_> {
    /// The PUBLISH: packet id 0 and DUP off for QoS 0, the topic name
    /// left out when `form` sends the alias only.
    fn publish(self, form: TopicForm, properties: Option<PublishProperties>) -> Publish {
        let qos0 = self.qos == QoS::AtMostOnce;
        Publish {
            dup: self.dup && !qos0,
            qos: self.qos.into(),
            retain: self.retain,
            topic: match form {
                TopicForm::AliasOnly(_) => Bytes::new(),
                TopicForm::Name | TopicForm::NameAndAlias(_) => {
                    Bytes::copy_from_slice(self.topic.as_bytes())
                }
            },
            pkid: if qos0 { 0 } else { self.pkid },
            payload: self.payload.clone(),
            properties,
        }
    }
}

impl TopicForm {
    /// The topic alias this form sends, if any.
    fn alias(self) -> Option<u16> {
        match self {
            TopicForm::Name => None,
            TopicForm::NameAndAlias(a) | TopicForm::AliasOnly(a) => Some(a),
        }
    }
}

/// A v5 PUBLISH's property section (`None` when there is nothing to send).
fn v5_properties(
    props: Option<&MessageProperties>,
    alias: Option<u16>,
    expiry: Option<u32>,
    subscription_ids: bool,
) -> Option<PublishProperties> {
    if props.is_none() && alias.is_none() && expiry.is_none() {
        return None;
    }
    let wire = PublishProperties {
        payload_format_indicator: props.and_then(|p| p.payload_is_utf8).map(u8::from),
        message_expiry_interval: expiry,
        topic_alias: alias,
        response_topic: props.and_then(|p| p.response_topic.clone()),
        correlation_data: props.and_then(|p| p.correlation_data.clone()),
        user_properties: props.map(|p| p.user_properties.clone()).unwrap_or_default(),
        subscription_identifiers: props
            .filter(|_| subscription_ids)
            .map(|p| {
                p.subscription_identifiers
                    .iter()
                    .map(|&id| id as usize)
                    .collect()
            })
            .unwrap_or_default(),
        content_type: props.and_then(|p| p.content_type.clone()),
    };
    Some(wire).filter(|w| *w != PublishProperties::default())
}

/// False when the message declares a UTF-8 payload that is not: a receiver
/// answers 0x99 (payload format invalid) in the PUBACK/PUBREC, or in a
/// DISCONNECT for QoS 0 [MQTT-3.3.2.3.2].
pub fn payload_format_valid(message: &Message) -> bool {
    let declared_utf8 = message
        .properties
        .as_ref()
        .and_then(|p| p.payload_is_utf8)
        .unwrap_or(false);
    !declared_utf8 || std::str::from_utf8(&message.payload).is_ok()
}

impl From<QoS> for rumqttc::v5::mqttbytes::QoS {
    fn from(q: QoS) -> Self {
        match q {
            QoS::AtMostOnce => Self::AtMostOnce,
            QoS::AtLeastOnce => Self::AtLeastOnce,
            QoS::ExactlyOnce => Self::ExactlyOnce,
        }
    }
}

impl From<rumqttc::v5::mqttbytes::QoS> for QoS {
    fn from(q: rumqttc::v5::mqttbytes::QoS) -> Self {
        match q {
            rumqttc::v5::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
            rumqttc::v5::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
        }
    }
}

/// Maps a rumqttc reason enum to and from [`ReasonCode`], both ways, so
/// code that acts on acks and DISCONNECTs matches on our typed codes.
macro_rules! reason_map {
    ($ty:ty { $($var:ident => $code:ident),+ $(,)? }) => {
        impl From<$ty> for ReasonCode {
            fn from(r: $ty) -> ReasonCode {
                match r {
                    $(<$ty>::$var => ReasonCode::$code,)+
                }
            }
        }

        impl TryFrom<ReasonCode> for $ty {
            type Error = ReasonCode;
            /// Fails with the code itself when the packet type cannot carry it.
            fn try_from(code: ReasonCode) -> Result<$ty, ReasonCode> {
                match code {
                    $(ReasonCode::$code => Ok(<$ty>::$var),)+
                    other => Err(other),
                }
            }
        }
    };
}

reason_map!(PubAckReason {
    Success => Success,
    NoMatchingSubscribers => NoMatchingSubscribers,
    UnspecifiedError => UnspecifiedError,
    ImplementationSpecificError => ImplementationSpecificError,
    NotAuthorized => NotAuthorized,
    TopicNameInvalid => TopicNameInvalid,
    PacketIdentifierInUse => PacketIdentifierInUse,
    QuotaExceeded => QuotaExceeded,
    PayloadFormatInvalid => PayloadFormatInvalid,
});

reason_map!(PubRecReason {
    Success => Success,
    NoMatchingSubscribers => NoMatchingSubscribers,
    UnspecifiedError => UnspecifiedError,
    ImplementationSpecificError => ImplementationSpecificError,
    NotAuthorized => NotAuthorized,
    TopicNameInvalid => TopicNameInvalid,
    PacketIdentifierInUse => PacketIdentifierInUse,
    QuotaExceeded => QuotaExceeded,
    PayloadFormatInvalid => PayloadFormatInvalid,
});

reason_map!(PubRelReason {
    Success => Success,
    PacketIdentifierNotFound => PacketIdentifierNotFound,
});

reason_map!(PubCompReason {
    Success => Success,
    PacketIdentifierNotFound => PacketIdentifierNotFound,
});

reason_map!(UnsubAckReason {
    Success => Success,
    NoSubscriptionExisted => NoSubscriptionExisted,
    UnspecifiedError => UnspecifiedError,
    ImplementationSpecificError => ImplementationSpecificError,
    NotAuthorized => NotAuthorized,
    TopicFilterInvalid => TopicFilterInvalid,
    PacketIdentifierInUse => PacketIdentifierInUse,
});

reason_map!(DisconnectReasonCode {
    NormalDisconnection => Success,
    DisconnectWithWillMessage => DisconnectWithWill,
    UnspecifiedError => UnspecifiedError,
    MalformedPacket => MalformedPacket,
    ProtocolError => ProtocolError,
    ImplementationSpecificError => ImplementationSpecificError,
    NotAuthorized => NotAuthorized,
    ServerBusy => ServerBusy,
    ServerShuttingDown => ServerShuttingDown,
    KeepAliveTimeout => KeepAliveTimeout,
    SessionTakenOver => SessionTakenOver,
    TopicFilterInvalid => TopicFilterInvalid,
    TopicNameInvalid => TopicNameInvalid,
    ReceiveMaximumExceeded => ReceiveMaximumExceeded,
    TopicAliasInvalid => TopicAliasInvalid,
    PacketTooLarge => PacketTooLarge,
    MessageRateTooHigh => MessageRateTooHigh,
    QuotaExceeded => QuotaExceeded,
    AdministrativeAction => AdministrativeAction,
    PayloadFormatInvalid => PayloadFormatInvalid,
    RetainNotSupported => RetainNotSupported,
    QoSNotSupported => QosNotSupported,
    UseAnotherServer => UseAnotherServer,
    ServerMoved => ServerMoved,
    SharedSubscriptionNotSupported => SharedSubscriptionsNotSupported,
    ConnectionRateExceeded => ConnectionRateExceeded,
    MaximumConnectTime => MaximumConnectTime,
    SubscriptionIdentifiersNotSupported => SubscriptionIdentifiersNotSupported,
    WildcardSubscriptionsNotSupported => WildcardSubscriptionsNotSupported,
});

/// The reason code of a SUBACK entry (a granted QoS is a success code).
pub fn suback_reason(code: SubscribeReasonCode) -> ReasonCode {
    use rumqttc::v5::mqttbytes::QoS as W;
    match code {
        SubscribeReasonCode::Success(W::AtMostOnce) => ReasonCode::Success,
        SubscribeReasonCode::Success(W::AtLeastOnce) => ReasonCode::GrantedQos1,
        SubscribeReasonCode::Success(W::ExactlyOnce) => ReasonCode::GrantedQos2,
        SubscribeReasonCode::Failure | SubscribeReasonCode::Unspecified => {
            ReasonCode::UnspecifiedError
        }
        SubscribeReasonCode::ImplementationSpecific => ReasonCode::ImplementationSpecificError,
        SubscribeReasonCode::NotAuthorized => ReasonCode::NotAuthorized,
        SubscribeReasonCode::TopicFilterInvalid => ReasonCode::TopicFilterInvalid,
        SubscribeReasonCode::PkidInUse => ReasonCode::PacketIdentifierInUse,
        SubscribeReasonCode::QuotaExceeded => ReasonCode::QuotaExceeded,
        SubscribeReasonCode::SharedSubscriptionsNotSupported => {
            ReasonCode::SharedSubscriptionsNotSupported
        }
        SubscribeReasonCode::SubscriptionIdNotSupported => {
            ReasonCode::SubscriptionIdentifiersNotSupported
        }
        SubscribeReasonCode::WildcardSubscriptionsNotSupported => {
            ReasonCode::WildcardSubscriptionsNotSupported
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::codec::{message_from_publish, publish_from_message};
    use crate::protocol::reason::{ALL, AckPacket};

    fn full_message() -> Message {
        let mut m = Message::new("a/b", "{\"x\":1}", QoS::AtLeastOnce, true);
        m.properties = Some(MessageProperties::from(PropertyFields {
            payload_is_utf8: Some(true),
            message_expiry_interval: Some(60),
            content_type: Some("application/json".into()),
            response_topic: Some("reply/1".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![
                ("b".into(), "2".into()),
                ("a".into(), "1".into()),
                ("b".into(), "3".into()),
            ],
            subscription_identifiers: vec![5, 300],
        }));
        m
    }

    #[test]
    fn v5_publish_carries_every_property_and_back() {
        let m = full_message();
        let p = v5_publish_from_message(&m, 7, false, TopicForm::Name, Some(60));
        assert_eq!((p.pkid, &p.topic[..]), (7, &b"a/b"[..]));
        let back = message_from_v5_publish(p);
        assert_eq!(back.topic_alias, None);
        assert_eq!(back.message, m);
    }

    #[test]
    fn expiry_sent_is_the_remaining_interval_not_the_original() {
        let m = full_message();
        let p = v5_publish_from_message(&m, 7, false, TopicForm::Name, Some(42));
        let props = p.properties.expect("properties");
        assert_eq!(props.message_expiry_interval, Some(42));
        let p = v5_publish_from_message(
            &Message::new("t", "", QoS::AtMostOnce, false),
            9,
            true,
            TopicForm::Name,
            None,
        );
        assert!(p.properties.is_none());
        assert_eq!((p.pkid, p.dup), (0, false));
    }

    #[test]
    fn topic_alias_forms() {
        let m = full_message();
        let p = v5_publish_from_message(&m, 1, false, TopicForm::AliasOnly(3), None);
        assert!(p.topic.is_empty());
        assert_eq!(p.properties.as_ref().and_then(|p| p.topic_alias), Some(3));
        let inbound = message_from_v5_publish(p);
        assert_eq!(
            (inbound.topic_alias, inbound.message.topic.is_empty()),
            (Some(3), true)
        );
        let p = v5_publish_from_message(&m, 1, false, TopicForm::NameAndAlias(4), None);
        assert_eq!(&p.topic[..], b"a/b");
        assert_eq!(p.properties.and_then(|p| p.topic_alias), Some(4));
    }

    /// The client's path (from its session's 3.1.1 packet) builds the same
    /// PUBLISH as the message's path, but for the subscription identifiers
    /// a client may not send [MQTT-3.3.4-6].
    #[test]
    fn a_clients_publish_is_the_messages_without_subscription_ids() {
        let forms = [
            TopicForm::Name,
            TopicForm::NameAndAlias(2),
            TopicForm::AliasOnly(2),
        ];
        for (qos, dup, retain, with_props, form, expiry) in [
            (QoS::AtLeastOnce, true, true, true, forms[0], Some(42)),
            (QoS::ExactlyOnce, false, false, true, forms[1], None),
            (QoS::AtMostOnce, true, false, false, forms[2], None),
            (QoS::AtLeastOnce, false, true, false, forms[0], Some(1)),
        ] {
            let mut m = full_message();
            (m.qos, m.retain) = (qos, retain);
            if !with_props {
                m.properties = None;
            }
            let p4 = publish_from_message(&m, 7, dup);
            let ours = v5_publish_from_v4(&p4, m.properties.as_ref(), form, expiry);
            if let Some(props) = m.properties.as_mut() {
                props.subscription_identifiers.clear();
            }
            let theirs = v5_publish_from_message(&m, 7, dup, form, expiry);
            assert_eq!(ours, theirs, "{qos:?} dup {dup} {form:?}");
        }
    }

    #[test]
    fn towards_3_1_1_properties_are_dropped_and_nothing_else() {
        let m = full_message();
        let p = publish_from_message(&m, 7, false);
        let back = message_from_publish(p);
        assert_eq!(back.properties, None);
        assert_eq!(
            (&*back.topic, &back.payload[..], back.qos, back.retain),
            (&*m.topic, &m.payload[..], m.qos, m.retain)
        );
    }

    #[test]
    fn payload_format_indicator_1_requires_utf8() {
        let mut m = full_message();
        assert!(payload_format_valid(&m));
        m.payload = Bytes::from_static(&[0xff, 0xfe]);
        assert!(!payload_format_valid(&m));
        if let Some(p) = &mut m.properties {
            p.payload_is_utf8 = Some(false);
        }
        assert!(payload_format_valid(&m));
        m.properties = None;
        assert!(payload_format_valid(&m));
    }

    /// Every code a packet may carry converts to that packet's rumqttc
    /// enum and back unchanged, and no other code converts.
    #[test]
    fn reason_enums_cover_exactly_each_packets_table() {
        fn check<T>(table: AckPacket)
        where
            T: TryFrom<ReasonCode, Error = ReasonCode>,
            ReasonCode: From<T>,
        {
            for code in ALL {
                match T::try_from(code) {
                    Ok(r) => {
                        assert_eq!(ReasonCode::from(r), code);
                        assert!(code.allowed_in(table), "{code:?} extra for {table:?}");
                    }
                    Err(back) => {
                        assert_eq!(back, code);
                        assert!(!code.allowed_in(table), "{code:?} missing for {table:?}");
                    }
                }
            }
        }
        check::<PubAckReason>(AckPacket::PubAck);
        check::<PubRecReason>(AckPacket::PubRec);
        check::<PubRelReason>(AckPacket::PubRel);
        check::<PubCompReason>(AckPacket::PubComp);
        check::<UnsubAckReason>(AckPacket::UnsubAck);
        check::<DisconnectReasonCode>(AckPacket::Disconnect);
        use rumqttc::v5::mqttbytes::QoS as W;
        assert_eq!(
            suback_reason(SubscribeReasonCode::Success(W::ExactlyOnce)),
            ReasonCode::GrantedQos2
        );
        assert!(suback_reason(SubscribeReasonCode::NotAuthorized).allowed_in(AckPacket::SubAck));
        // rumqttc's DISCONNECT enum carries the wire value.
        assert_eq!(
            ReasonCode::from(DisconnectReasonCode::UseAnotherServer).as_u8(),
            DisconnectReasonCode::UseAnotherServer as u8
        );
    }
}
