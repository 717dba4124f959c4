//! Reason strings on the failure acks an MQTT 5 client gets (PUBACK and
//! PUBREC ≥ 0x80, SUBACK and UNSUBACK with a failing filter): a short
//! sentence in the client's terms next to the code. Only sent when the
//! client did not set Request Problem Information to 0 [MQTT-3.1.2-29],
//! and taken off again when it would make the packet larger than the
//! client's Maximum Packet Size [MQTT-3.4.2-2, MQTT-3.9.2-1]. Pure: the
//! connection's writer calls it on each packet.

use rumqttc::v5::mqttbytes::v5::{
    Packet as P5, PubAckProperties, PubRecProperties, SubAckProperties, UnsubAckProperties,
};

use crate::protocol::convert::suback_reason;
use crate::protocol::reason::ReasonCode;

/// Why the broker closes a connection (the reason string of its
/// DISCONNECT), in the client's terms.
pub(crate) fn disconnect_reason(code: ReasonCode) -> String {
    let text = match code {
        ReasonCode::KeepAliveTimeout => "nothing received within 1.5 times the keep alive",
        ReasonCode::ServerShuttingDown => "the broker is shutting down",
        ReasonCode::SessionTakenOver => "another connection took this session over",
        ReasonCode::ProtocolError => "protocol error",
        ReasonCode::MalformedPacket => "malformed packet",
        ReasonCode::PacketTooLarge => "packet larger than the broker's maximum packet size",
        ReasonCode::ReceiveMaximumExceeded => {
            "more QoS 1/2 messages in flight than the broker's receive maximum"
        }
        ReasonCode::TopicAliasInvalid => "topic alias out of range or unknown",
        ReasonCode::PayloadFormatInvalid => {
            "payload is not valid UTF-8 although its payload format indicator says it is"
        }
        ReasonCode::NotAuthorized => "not authorized",
        ReasonCode::QuotaExceeded => "quota exceeded",
        ReasonCode::AdministrativeAction => "closed by the broker's administrator",
        ReasonCode::MessageRateTooHigh => "message rate too high",
        // Any other: its name in words.
        other => return other.to_string(),
    };
    text.to_owned()
}

/// Why a PUBLISH was refused, in the publisher's terms.
fn publish_refusal(code: ReasonCode) -> &'static str {
    match code {
        ReasonCode::NotAuthorized => "not authorized to publish to this topic",
        ReasonCode::PayloadFormatInvalid => {
            "payload is not valid UTF-8 although its payload format indicator says it is"
        }
        ReasonCode::TopicNameInvalid => "topic name not accepted",
        ReasonCode::QuotaExceeded => "quota exceeded",
        ReasonCode::PacketIdentifierInUse => "packet identifier in use",
        _ => "message not accepted",
    }
}

/// Why a SUBSCRIBE filter was refused.
fn subscribe_refusal(code: ReasonCode) -> &'static str {
    match code {
        ReasonCode::NotAuthorized => "not authorized to subscribe to this filter",
        ReasonCode::TopicFilterInvalid => "invalid topic filter",
        ReasonCode::QuotaExceeded => "subscription limit of the broker reached",
        ReasonCode::SharedSubscriptionsNotSupported => "shared subscription not supported here",
        ReasonCode::PacketIdentifierInUse => "packet identifier in use",
        _ => "subscription refused",
    }
}

/// Why an UNSUBSCRIBE filter was refused.
fn unsubscribe_refusal(code: ReasonCode) -> &'static str {
    match code {
        ReasonCode::NotAuthorized => "not authorized to unsubscribe from this filter",
        ReasonCode::TopicFilterInvalid => "invalid topic filter",
        ReasonCode::PacketIdentifierInUse => "packet identifier in use",
        _ => "unsubscribe refused",
    }
}

/// The reason string of an ack with one code per filter: the refusal of
/// each failing filter, numbered from 1 when the packet had several.
fn per_filter(codes: &[ReasonCode], refusal: fn(ReasonCode) -> &'static str) -> Option<String> {
    let failed: Vec<String> = codes
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_error())
        .map(|(i, &c)| {
            if codes.len() == 1 {
                refusal(c).to_owned()
            } else {
                format!("filter {}: {}", i + 1, refusal(c))
            }
        })
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

/// Puts a reason string on `packet` when it is a failure ack that has
/// none (anything else is left as it is).
pub(crate) fn explain(packet: &mut P5) {
    match packet {
        P5::PubAck(a) if ReasonCode::from(a.reason).is_error() && a.properties.is_none() => {
            a.properties = Some(PubAckProperties {
                reason_string: Some(publish_refusal(a.reason.into()).to_owned()),
                user_properties: Vec::new(),
            });
        }
        P5::PubRec(r) if ReasonCode::from(r.reason).is_error() && r.properties.is_none() => {
            r.properties = Some(PubRecProperties {
                reason_string: Some(publish_refusal(r.reason.into()).to_owned()),
                user_properties: Vec::new(),
            });
        }
        P5::SubAck(s) if s.properties.is_none() => {
            let codes: Vec<ReasonCode> = s.return_codes.iter().map(|c| suback_reason(*c)).collect();
            s.properties = per_filter(&codes, subscribe_refusal).map(|text| SubAckProperties {
                reason_string: Some(text),
                user_properties: Vec::new(),
            });
        }
        P5::UnsubAck(u) if u.properties.is_none() => {
            let codes: Vec<ReasonCode> = u.reasons.iter().map(|&r| r.into()).collect();
            u.properties = per_filter(&codes, unsubscribe_refusal).map(|text| UnsubAckProperties {
                reason_string: Some(text),
                user_properties: Vec::new(),
            });
        }
        _ => {}
    }
}

/// Takes the reason string off an ack (for a client whose Maximum Packet
/// Size it would pass); false when there was none to take.
pub(crate) fn strip(packet: &mut P5) -> bool {
    let reason_string = match packet {
        P5::PubAck(a) => a.properties.as_mut().map(|p| &mut p.reason_string),
        P5::PubRec(r) => r.properties.as_mut().map(|p| &mut p.reason_string),
        P5::SubAck(s) => s.properties.as_mut().map(|p| &mut p.reason_string),
        P5::UnsubAck(u) => u.properties.as_mut().map(|p| &mut p.reason_string),
        _ => None,
    };
    reason_string.and_then(Option::take).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{
        PubAck, PubAckReason, PubRec, PubRecReason, SubAck, SubscribeReasonCode as S, UnsubAck,
        UnsubAckReason,
    };

    fn reason_of(p: &P5) -> Option<String> {
        match p {
            P5::PubAck(a) => a.properties.as_ref()?.reason_string.clone(),
            P5::PubRec(r) => r.properties.as_ref()?.reason_string.clone(),
            P5::SubAck(s) => s.properties.as_ref()?.reason_string.clone(),
            P5::UnsubAck(u) => u.properties.as_ref()?.reason_string.clone(),
            _ => None,
        }
    }

    #[test]
    fn failing_publish_acks_say_why_successful_ones_stay_bare() {
        let mut denied = PubAck::new(1, None);
        denied.reason = PubAckReason::NotAuthorized;
        let mut p = P5::PubAck(denied);
        explain(&mut p);
        assert_eq!(
            reason_of(&p).as_deref(),
            Some("not authorized to publish to this topic")
        );
        let mut rec = PubRec::new(2, None);
        rec.reason = PubRecReason::PayloadFormatInvalid;
        let mut p = P5::PubRec(rec);
        explain(&mut p);
        assert!(reason_of(&p).is_some_and(|s| s.contains("UTF-8")));
        for mut ok in [
            P5::PubAck(PubAck::new(3, None)),
            P5::PubRec(PubRec::new(3, None)),
        ] {
            explain(&mut ok);
            assert_eq!(reason_of(&ok), None);
        }
    }

    #[test]
    fn subacks_and_unsubacks_name_the_failing_filters() {
        let mut p = P5::SubAck(SubAck {
            pkid: 1,
            return_codes: vec![
                S::Success(QoS::AtLeastOnce),
                S::NotAuthorized,
                S::QuotaExceeded,
            ],
            properties: None,
        });
        explain(&mut p);
        assert_eq!(
            reason_of(&p).as_deref(),
            Some(
                "filter 2: not authorized to subscribe to this filter; filter 3: subscription limit of the broker reached"
            )
        );
        let mut one = P5::SubAck(SubAck {
            pkid: 1,
            return_codes: vec![S::TopicFilterInvalid],
            properties: None,
        });
        explain(&mut one);
        assert_eq!(reason_of(&one).as_deref(), Some("invalid topic filter"));
        let mut granted = P5::SubAck(SubAck {
            pkid: 1,
            return_codes: vec![S::Success(QoS::AtMostOnce)],
            properties: None,
        });
        explain(&mut granted);
        assert_eq!(reason_of(&granted), None);
        let mut u = P5::UnsubAck(UnsubAck {
            pkid: 1,
            reasons: vec![
                UnsubAckReason::NoSubscriptionExisted,
                UnsubAckReason::TopicFilterInvalid,
            ],
            properties: None,
        });
        explain(&mut u);
        assert_eq!(
            reason_of(&u).as_deref(),
            Some("filter 2: invalid topic filter")
        );
        assert!(strip(&mut u));
        assert_eq!(reason_of(&u), None);
        assert!(!strip(&mut u), "nothing left to strip");
    }
}

#[cfg(test)]
mod disconnect_tests {
    use super::*;

    #[test]
    fn disconnect_reasons_are_words_not_variant_names() {
        assert_eq!(
            disconnect_reason(ReasonCode::TopicAliasInvalid),
            "topic alias out of range or unknown"
        );
        assert_eq!(
            disconnect_reason(ReasonCode::KeepAliveTimeout),
            "nothing received within 1.5 times the keep alive"
        );
        // A code without its own sentence: its name in words.
        assert_eq!(
            disconnect_reason(ReasonCode::UseAnotherServer),
            "use another server (0x9c)"
        );
    }
}
