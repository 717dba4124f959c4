//! Unit tests of the wire translation and the MQTT 5 CONNECT/CONNACK.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5 as p5;

use super::*;
use crate::protocol::PropertyFields;

fn v5(p: p5::Packet) -> Packet {
    Packet::V5(Box::new(p))
}

fn props() -> MessageProperties {
    MessageProperties::from(PropertyFields {
        payload_is_utf8: Some(true),
        message_expiry_interval: Some(60),
        content_type: Some("text/plain".into()),
        response_topic: Some("r/t".into()),
        correlation_data: Some(Bytes::from_static(b"c")),
        user_properties: vec![("b".into(), "1".into()), ("a".into(), "2".into())],
        subscription_identifiers: vec![7],
    })
}

#[test]
fn on_3_1_1_packets_pass_through() {
    let mut w = Wire::new(ProtocolVersion::V3_1_1, 10);
    let ack = v4::Packet::PubAck(v4::PubAck::new(3));
    assert_eq!(w.packet(&ack), Packet::V3(ack.clone()));
    assert_eq!(
        w.incoming(Packet::V3(ack.clone())),
        Ok(FromBroker::Packet(ack))
    );
    assert_eq!(
        w.disconnect(ReasonCode::DisconnectWithWill),
        Packet::V3(v4::Packet::Disconnect)
    );
}

#[test]
fn an_outgoing_publish_carries_every_property_but_subscription_ids_and_uses_aliases() {
    let mut w = Wire::new(ProtocolVersion::V5, 2);
    let mut p = v4::Publish::new("a/b", rumqttc::mqttbytes::QoS::AtLeastOnce, "x");
    p.pkid = 5;
    let Packet::V5(first) = w.publish(&p, Some(&props())) else {
        panic!("v5 packet expected");
    };
    let p5::Packet::Publish(first) = *first else {
        panic!("PUBLISH expected");
    };
    assert_eq!(&first.topic[..], b"a/b");
    assert_eq!(first.pkid, 5);
    let fp = first.properties.expect("properties");
    assert_eq!(fp.topic_alias, Some(1), "a new alias with the name");
    assert_eq!(
        fp.user_properties,
        vec![("b".into(), "1".into()), ("a".into(), "2".into())]
    );
    assert_eq!(fp.content_type.as_deref(), Some("text/plain"));
    assert_eq!(fp.response_topic.as_deref(), Some("r/t"));
    assert_eq!(fp.correlation_data.as_deref(), Some(&b"c"[..]));
    assert_eq!(fp.payload_format_indicator, Some(1));
    assert_eq!(fp.message_expiry_interval, Some(60));
    assert!(
        fp.subscription_identifiers.is_empty(),
        "a client never sends them"
    );
    // The same topic again: the alias alone.
    let Packet::V5(second) = w.publish(&p, None) else {
        panic!("v5 packet expected");
    };
    let p5::Packet::Publish(second) = *second else {
        panic!("PUBLISH expected");
    };
    assert!(second.topic.is_empty());
    assert_eq!(second.properties.and_then(|p| p.topic_alias), Some(1));
    // Whatever the wire made encodes (the adapter's checks pass).
    let mut buf = bytes::BytesMut::new();
    crate::protocol::v5::encode(
        &p5::Packet::Publish(first_again(&mut Wire::new(ProtocolVersion::V5, 0), &p)),
        &mut buf,
        usize::MAX,
        crate::protocol::v5::Sender::Client,
    )
    .expect("encodes");
}

fn first_again(w: &mut Wire, p: &v4::Publish) -> p5::Publish {
    match w.publish(p, Some(&props())) {
        Packet::V5(b) => match *b {
            p5::Packet::Publish(p) => p,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn subscribe_carries_the_options() {
    let w = Wire::new(ProtocolVersion::V5, 0);
    let s = v4::Subscribe::new_many([
        v4::SubscribeFilter::new("a/#".into(), rumqttc::mqttbytes::QoS::AtLeastOnce),
        v4::SubscribeFilter::new("b".into(), rumqttc::mqttbytes::QoS::AtMostOnce),
    ]);
    let opts = [SubscribeOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
    }];
    let Packet::V5(p) = w.subscribe(&s, &opts) else {
        panic!("v5 packet expected");
    };
    let p5::Packet::Subscribe(p) = *p else {
        panic!("SUBSCRIBE expected");
    };
    let f = &p.filters[0];
    assert!(f.nolocal && f.preserve_retain);
    assert_eq!(f.retain_forward_rule, p5::RetainForwardRule::Never);
    // A filter without options keeps the 3.1.1 meaning.
    let f = &p.filters[1];
    assert!(!f.nolocal && !f.preserve_retain);
    assert_eq!(f.qos, rumqttc::v5::mqttbytes::QoS::AtMostOnce);
    assert_eq!(
        f.retain_forward_rule,
        p5::RetainForwardRule::OnEverySubscribe
    );
}

#[test]
fn incoming_publish_keeps_properties_and_resolves_aliases() {
    let mut w = Wire::new(ProtocolVersion::V5, 0);
    let mut pp = p5::PublishProperties {
        topic_alias: Some(3),
        user_properties: vec![("k".into(), "v".into())],
        subscription_identifiers: vec![9],
        ..Default::default()
    };
    let mut p = p5::Publish::new(
        "s/t",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        "1",
        Some(pp.clone()),
    );
    p.pkid = 4;
    let Ok(FromBroker::Publish(got, Some(props))) = w.incoming(v5(p5::Packet::Publish(p))) else {
        panic!("a publish with properties");
    };
    assert_eq!((got.topic.as_str(), got.pkid), ("s/t", 4));
    assert_eq!(props.user_properties, vec![("k".into(), "v".into())]);
    assert_eq!(props.subscription_identifiers, vec![9]);
    // Alias only: the topic comes from the table.
    pp.user_properties.clear();
    let p = p5::Publish::new("", rumqttc::v5::mqttbytes::QoS::AtMostOnce, "2", Some(pp));
    let Ok(FromBroker::Publish(got, _)) = w.incoming(v5(p5::Packet::Publish(p))) else {
        panic!("a publish");
    };
    assert_eq!(got.topic, "s/t");
    // An alias we never saw: the connection ends.
    let unknown = p5::PublishProperties {
        topic_alias: Some(5),
        ..Default::default()
    };
    let p = p5::Publish::new(
        "",
        rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        "3",
        Some(unknown),
    );
    assert!(matches!(
        w.incoming(v5(p5::Packet::Publish(p))),
        Err(WireError::Alias(_))
    ));
}

#[test]
fn failure_reason_codes_and_disconnects_are_typed() {
    let mut w = Wire::new(ProtocolVersion::V5, 0);
    let mut ack = p5::PubAck::new(7, None);
    ack.reason = p5::PubAckReason::NotAuthorized;
    assert_eq!(
        w.incoming(v5(p5::Packet::PubAck(ack))),
        Ok(FromBroker::Refused {
            kind: AckKind::PubAck,
            pkid: 7,
            code: ReasonCode::NotAuthorized
        })
    );
    let mut rec = p5::PubRec::new(8, None);
    rec.reason = p5::PubRecReason::QuotaExceeded;
    assert_eq!(
        w.incoming(v5(p5::Packet::PubRec(rec))),
        Ok(FromBroker::Refused {
            kind: AckKind::PubRec,
            pkid: 8,
            code: ReasonCode::QuotaExceeded
        })
    );
    // 0x10 (no matching subscribers) is a success.
    let mut ack = p5::PubAck::new(9, None);
    ack.reason = p5::PubAckReason::NoMatchingSubscribers;
    assert_eq!(
        w.incoming(v5(p5::Packet::PubAck(ack))),
        Ok(FromBroker::Packet(v4::Packet::PubAck(v4::PubAck::new(9))))
    );
    let mut d = p5::Disconnect::new(p5::DisconnectReasonCode::UseAnotherServer);
    d.properties = Some(p5::DisconnectProperties {
        session_expiry_interval: None,
        reason_string: Some("move".into()),
        user_properties: Vec::new(),
        server_reference: Some("other:1883".into()),
    });
    assert_eq!(
        w.incoming(v5(p5::Packet::Disconnect(d))),
        Ok(FromBroker::Disconnect {
            code: ReasonCode::UseAnotherServer,
            server_reference: Some("other:1883".into()),
            reason_string: Some("move".into()),
        })
    );
    assert_eq!(
        w.disconnect(ReasonCode::DisconnectWithWill),
        v5(p5::Packet::Disconnect(p5::Disconnect::new(
            p5::DisconnectReasonCode::DisconnectWithWillMessage
        )))
    );
}

fn connack(code: p5::ConnectReturnCode, props: Option<p5::ConnAckProperties>) -> p5::ConnAck {
    p5::ConnAck {
        session_present: true,
        code,
        properties: props,
    }
}

fn connack_props() -> p5::ConnAckProperties {
    p5::ConnAckProperties {
        session_expiry_interval: Some(300),
        receive_max: Some(20),
        max_qos: Some(1),
        retain_available: Some(0),
        max_packet_size: Some(1000),
        assigned_client_identifier: Some("auto-1".into()),
        topic_alias_max: Some(10),
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: Some(15),
        response_information: None,
        server_reference: Some("b:1883".into()),
        authentication_method: None,
        authentication_data: None,
    }
}

#[test]
fn connack_grants_are_read() {
    let g = grant_from_connack(connack(
        p5::ConnectReturnCode::Success,
        Some(connack_props()),
    ))
    .expect("accepted");
    assert_eq!(
        g,
        Grant {
            session_present: true,
            receive_maximum: 20,
            max_packet_size: Some(1000),
            keepalive: Some(Duration::from_secs(15)),
            max_qos: QoS::AtLeastOnce,
            retain_available: false,
            topic_alias_maximum: 10,
            assigned_client_id: Some("auto-1".into()),
            session_expiry: Some(300),
            exactly_once_limit: None,
        }
    );
    // Without properties: the protocol's defaults.
    let g = grant_from_connack(connack(p5::ConnectReturnCode::Success, None)).expect("accepted");
    assert_eq!(g, Grant::v3(true));
}

#[test]
fn connack_refusals_are_typed_with_the_server_reference() {
    let r = grant_from_connack(connack(
        p5::ConnectReturnCode::UseAnotherServer,
        Some(connack_props()),
    ))
    .expect_err("refused");
    assert_eq!(r.code, ReasonCode::UseAnotherServer);
    assert_eq!(r.server_reference.as_deref(), Some("b:1883"));
    let r = grant_from_connack(connack(
        p5::ConnectReturnCode::UnsupportedProtocolVersion,
        None,
    ))
    .expect_err("refused");
    assert_eq!(r.code, ReasonCode::UnsupportedProtocolVersion);
}

#[test]
fn connect_asks_for_our_window_and_a_session_expiry_by_clean_session() {
    let will = Message::new("st", "offline", QoS::AtLeastOnce, true);
    let spec = ConnectSpec {
        client_id: "c",
        keepalive_secs: 30,
        clean_session: false,
        receive_maximum: 1000,
        max_packet_size: 4096,
        username: Some("u"),
        password: Some("p"),
        will: Some(&will),
    };
    let Packet::V5(p) = v5_connect(&spec) else {
        panic!("v5 CONNECT");
    };
    let p5::Packet::Connect(c, w, login) = *p else {
        panic!("CONNECT");
    };
    let props = c.properties.expect("properties");
    assert_eq!(props.session_expiry_interval, Some(SESSION_NEVER_EXPIRES));
    assert_eq!(props.receive_maximum, Some(1000));
    assert_eq!(props.max_packet_size, Some(4096));
    assert_eq!(props.topic_alias_max, Some(INBOUND_TOPIC_ALIASES));
    assert_eq!(props.request_problem_info, Some(1));
    assert!(!c.clean_start);
    assert_eq!(c.keep_alive, 30);
    assert!(w.is_some_and(|w| w.retain && &w.message[..] == b"offline"));
    assert!(login.is_some_and(|l| l.username == "u" && l.password == "p"));
    let clean = v5_connect(&ConnectSpec {
        clean_session: true,
        ..spec
    });
    let Packet::V5(p) = clean else { panic!() };
    let p5::Packet::Connect(c, ..) = *p else {
        panic!()
    };
    assert_eq!(
        c.properties.and_then(|p| p.session_expiry_interval),
        Some(0)
    );
    assert!(c.clean_start);
}

#[test]
fn a_small_receive_maximum_calls_for_3_1_1_only_towards_a_destination_with_protocol_unset() {
    let granted = |receive_maximum| Grant {
        receive_maximum,
        ..Grant::v3(false)
    };
    let v5_only = ProtocolChoice::Only(ProtocolVersion::V5);
    // Stock Mosquitto (20) against the default inflight (100).
    assert!(granted(20).window_calls_for_3_1_1(ProtocolChoice::Auto, true, 100));
    // A source only: our own receive maximum governs what it sends.
    assert!(!granted(20).window_calls_for_3_1_1(ProtocolChoice::Auto, false, 100));
    // `protocol: 5` said so: properties over throughput.
    assert!(!granted(20).window_calls_for_3_1_1(v5_only, true, 100));
    // A window as large as ours binds nothing.
    assert!(!granted(100).window_calls_for_3_1_1(ProtocolChoice::Auto, true, 100));
    assert!(!granted(u16::MAX).window_calls_for_3_1_1(ProtocolChoice::Auto, true, 100));
    assert!(granted(99).window_calls_for_3_1_1(ProtocolChoice::Auto, true, 100));
}

#[test]
fn packets_a_client_never_receives_are_violations_with_their_disconnect_reason() {
    let mut w = Wire::new(ProtocolVersion::V5, 0);
    let mut auth_bytes = bytes::BytesMut::from(&[0xF0, 0x00][..]);
    let auth = crate::protocol::v5::decode(
        &mut auth_bytes,
        usize::MAX,
        crate::protocol::v5::Sender::Server,
    );
    let Ok(Some(auth)) = auth else {
        panic!("an empty AUTH decodes: {auth:?}");
    };
    let err = w.incoming(v5(auth));
    assert_eq!(err, Err(WireError::Auth));
    assert_eq!(WireError::Auth.reason_code(), ReasonCode::ProtocolError);
    assert_eq!(
        w.incoming(v5(p5::Packet::PingReq(p5::PingReq))),
        Err(WireError::Unexpected("PINGREQ"))
    );
    assert_eq!(
        WireError::Unexpected("PINGREQ").reason_code(),
        ReasonCode::ProtocolError
    );
}
