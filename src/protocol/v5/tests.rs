//! Byte fixtures, one per normative statement (or spec rule) the adapter
//! enforces; named after the statement where the spec numbers it.

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectReturnCode, Disconnect, DisconnectProperties, DisconnectReasonCode, Packet,
    PubAck, Publish, PublishProperties,
};

use super::*;
use crate::protocol::reason::ReasonCode;

const MAX: usize = 1 << 20;

fn dec_as(bytes: &[u8], sender: Sender) -> Result<Option<Packet>, V5Error> {
    decode(&mut BytesMut::from(bytes), MAX, sender)
}

/// Decodes as the broker does (the client sent it).
fn dec(bytes: &[u8]) -> Result<Option<Packet>, V5Error> {
    dec_as(bytes, Sender::Client)
}

/// Decodes as the client does (the server sent it).
fn dec_srv(bytes: &[u8]) -> Result<Option<Packet>, V5Error> {
    dec_as(bytes, Sender::Server)
}

fn code(r: Result<Option<Packet>, V5Error>) -> ReasonCode {
    r.expect_err("must be refused").reason_code()
}

fn vbi(mut x: usize) -> Vec<u8> {
    let mut v = Vec::new();
    loop {
        let b = (x % 128) as u8;
        x /= 128;
        if x == 0 {
            v.push(b);
            return v;
        }
        v.push(b | 0x80);
    }
}

fn s(x: &[u8]) -> Vec<u8> {
    let mut v = (x.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(x);
    v
}

fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![byte1];
    v.extend(vbi(body.len()));
    v.extend_from_slice(body);
    v
}

/// A property section: length prefix + the raw properties.
fn props(p: &[u8]) -> Vec<u8> {
    let mut v = vbi(p.len());
    v.extend_from_slice(p);
    v
}

fn publish(byte1: u8, topic: &[u8], pkid: Option<u16>, p: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = s(topic);
    if let Some(id) = pkid {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.extend(props(p));
    body.extend_from_slice(payload);
    frame(byte1, &body)
}

fn connect(flags: u8, p: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = s(b"MQTT");
    body.extend_from_slice(&[5, flags, 0, 30]);
    body.extend(props(p));
    body.extend_from_slice(payload);
    frame(0x10, &body)
}

fn subscribe(pkid: u16, p: &[u8], filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    body.extend(props(p));
    for (f, o) in filters {
        body.extend(s(f));
        body.push(*o);
    }
    frame(0x82, &body)
}

fn user_prop(k: &[u8], v: &[u8]) -> Vec<u8> {
    let mut p = vec![0x26];
    p.extend(s(k));
    p.extend(s(v));
    p
}

#[test]
fn decodes_publish_with_every_message_property_in_order() {
    let mut p = vec![0x01, 1, 0x02, 0, 0, 0, 60];
    p.push(0x03);
    p.extend(s(b"text/plain"));
    p.push(0x08);
    p.extend(s(b"re/1"));
    p.push(0x09);
    p.extend(s(&[0, 1, 2]));
    p.extend(user_prop(b"b", b"2"));
    p.extend(user_prop(b"a", b"1"));
    p.extend(user_prop(b"b", b"3"));
    p.extend_from_slice(&[0x0B, 0x81, 0x01, 0x0B, 7]); // sub ids 129, 7
    let bytes = publish(0x33, b"a/b", Some(9), &p, b"hi");
    let Some(Packet::Publish(got)) = dec_srv(&bytes).unwrap() else {
        panic!("not a PUBLISH")
    };
    assert_eq!(
        (&got.topic[..], got.pkid, got.qos),
        (&b"a/b"[..], 9, QoS::AtLeastOnce)
    );
    assert!(got.retain);
    let props = got.properties.expect("properties");
    assert_eq!(props.payload_format_indicator, Some(1));
    assert_eq!(props.message_expiry_interval, Some(60));
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(props.response_topic.as_deref(), Some("re/1"));
    assert_eq!(props.correlation_data.as_deref(), Some(&[0u8, 1, 2][..]));
    let users: Vec<_> = props
        .user_properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(users, [("b", "2"), ("a", "1"), ("b", "3")]);
    assert_eq!(props.subscription_identifiers, [129, 7]);
}

#[test]
fn subscription_ids_before_other_properties_leave_them_and_the_payload_whole() {
    // rumqttc alone counts each identifier one byte long, stops its property
    // loop early and reads what follows as payload (found by fuzzing).
    let mut p = vec![0x0B, 5, 0x0B, 0x81, 0x01, 0x0B, 7, 0x01, 1];
    p.extend(user_prop(b"k", b"v"));
    p.push(0x03);
    p.extend(s(b""));
    let bytes = publish(0x32, b"a/b", Some(3), &p, b"hi");
    let Some(Packet::Publish(got)) = dec_srv(&bytes).unwrap() else {
        panic!("not a PUBLISH")
    };
    assert_eq!(&got.payload[..], b"hi");
    let props = got.properties.expect("properties");
    assert_eq!(props.subscription_identifiers, [5, 129, 7]);
    assert_eq!(props.payload_format_indicator, Some(1));
    assert_eq!(props.content_type.as_deref(), Some(""));
    assert_eq!(props.user_properties, [("k".to_string(), "v".to_string())]);
    // Identifiers alone; and the same message encoded by us decodes back.
    let alone = publish(0x30, b"t", None, &[0x0B, 1, 0x0B, 2, 0x0B, 3], b"x");
    let Some(Packet::Publish(only)) = dec_srv(&alone).unwrap() else {
        panic!("not a PUBLISH")
    };
    assert_eq!(&only.payload[..], b"x");
    assert_eq!(
        only.properties
            .expect("properties")
            .subscription_identifiers,
        [1, 2, 3]
    );
    let packet = Packet::Publish(Publish {
        properties: Some(props),
        ..got
    });
    let mut out = BytesMut::new();
    encode(&packet, &mut out, MAX, Sender::Server).unwrap();
    assert_eq!(dec_srv(&out).unwrap(), Some(packet));
}

#[test]
fn partial_input_needs_more_and_consumes_nothing() {
    let bytes = publish(0x30, b"t", None, &user_prop(b"k", b"v"), b"payload");
    let mut buf = BytesMut::new();
    for (i, b) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let got = decode(&mut buf, MAX, Sender::Client).unwrap();
        assert_eq!(got.is_some(), i + 1 == bytes.len(), "at byte {i}");
    }
    assert!(buf.is_empty());
}

#[test]
fn mqtt_1_5_4_1_strings_must_be_valid_utf8() {
    let bad = publish(0x30, &[b'a', 0xff], None, &[], b"");
    assert!(matches!(
        dec(&bad),
        Err(V5Error::Malformed(Violation::InvalidUtf8(_)))
    ));
    // A UTF-16 surrogate encoded in UTF-8 (U+D800) is not a valid character.
    let surrogate = publish(0x30, b"t", None, &user_prop(&[0xed, 0xa0, 0x80], b"v"), b"");
    assert_eq!(code(dec(&surrogate)), ReasonCode::MalformedPacket);
    let client_id = connect(0x02, &[], &s(&[0xc3]));
    assert_eq!(code(dec(&client_id)), ReasonCode::MalformedPacket);
}

#[test]
fn mqtt_1_5_4_2_strings_must_not_contain_nul() {
    let topic = publish(0x30, b"a\0b", None, &[], b"");
    assert!(matches!(
        dec(&topic),
        Err(V5Error::Malformed(Violation::NulInString(_)))
    ));
    let user = publish(0x30, b"t", None, &user_prop(b"k", b"v\0"), b"");
    assert_eq!(code(dec(&user)), ReasonCode::MalformedPacket);
    let filter = subscribe(1, &[], &[(b"a/\0", 0)]);
    assert_eq!(code(dec(&filter)), ReasonCode::MalformedPacket);
}

#[test]
fn mqtt_1_5_5_1_variable_byte_integers_use_the_fewest_bytes() {
    // PINGREQ with remaining length 0 written in two bytes.
    let err = dec(&[0xc0, 0x80, 0x00]).unwrap_err();
    assert!(matches!(
        err,
        V5Error::Malformed(Violation::VariableByteInteger)
    ));
    // Five length bytes.
    assert_eq!(
        code(dec(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01])),
        ReasonCode::MalformedPacket
    );
    // A property length in two bytes.
    let mut body = s(b"t");
    body.extend_from_slice(&[0x80, 0x00]);
    assert_eq!(code(dec(&frame(0x30, &body))), ReasonCode::MalformedPacket);
}

#[test]
fn mqtt_2_1_3_1_reserved_flags_are_malformed() {
    for byte1 in [0x00, 0x11, 0x41, 0x52, 0x60, 0x80, 0xa0, 0xc1, 0xe8, 0xf1] {
        let err = dec(&[byte1, 0]).unwrap_err();
        assert_eq!(
            err.reason_code(),
            ReasonCode::MalformedPacket,
            "{byte1:#04x}"
        );
    }
}

#[test]
fn mqtt_3_3_1_4_publish_qos3_and_mqtt_3_3_1_2_dup_on_qos0() {
    assert!(matches!(
        dec(&[0x36, 0]),
        Err(V5Error::Malformed(Violation::PublishQos3))
    ));
    assert!(matches!(
        dec(&[0x38, 0]),
        Err(V5Error::Malformed(Violation::DupOnQos0))
    ));
}

#[test]
fn mqtt_2_2_1_3_packet_id_zero_is_refused() {
    assert_eq!(
        code(dec(&publish(0x32, b"t", Some(0), &[], b""))),
        ReasonCode::ProtocolError
    );
    assert_eq!(code(dec(&frame(0x40, &[0, 0]))), ReasonCode::ProtocolError);
    assert_eq!(code(dec(&frame(0x62, &[0, 0]))), ReasonCode::ProtocolError);
    assert_eq!(
        code(dec(&subscribe(0, &[], &[(b"a", 0)]))),
        ReasonCode::ProtocolError
    );
    let mut unsub = vec![0, 0, 0];
    unsub.extend(s(b"a"));
    assert_eq!(code(dec(&frame(0xa2, &unsub))), ReasonCode::ProtocolError);
}

#[test]
fn property_not_valid_for_the_packet_is_malformed() {
    // Topic alias (0x23) in a PUBACK; session expiry (0x11) in a PUBLISH;
    // will delay (0x18) in CONNECT properties; an unknown id 0x05.
    let mut puback = vec![0, 1, 0x00];
    puback.extend(props(&[0x23, 0, 1]));
    let err = dec(&frame(0x40, &puback)).unwrap_err();
    assert!(matches!(
        err,
        V5Error::Malformed(Violation::PropertyNotAllowed { id: 0x23, .. })
    ));
    let p = publish(0x30, b"t", None, &[0x11, 0, 0, 0, 1], b"");
    assert_eq!(code(dec(&p)), ReasonCode::MalformedPacket);
    let c = connect(0x02, &[0x18, 0, 0, 0, 1], &s(b"id"));
    assert_eq!(code(dec(&c)), ReasonCode::MalformedPacket);
    let p = publish(0x30, b"t", None, &[0x05, 0], b"");
    assert_eq!(code(dec(&p)), ReasonCode::MalformedPacket);
}

#[test]
fn property_that_must_appear_once_twice_is_a_protocol_error() {
    // Message expiry twice: rumqttc would keep the second.
    let p = publish(0x30, b"t", None, &[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2], b"");
    assert!(matches!(
        dec(&p),
        Err(V5Error::Protocol(Violation::DuplicateProperty(0x02)))
    ));
    // Receive maximum twice in CONNECT.
    let c = connect(0x02, &[0x21, 0, 5, 0x21, 0, 6], &s(b"id"));
    assert_eq!(code(dec(&c)), ReasonCode::ProtocolError);
    // Subscription identifier twice in SUBSCRIBE (only PUBLISH may repeat it).
    let sub = subscribe(1, &[0x0B, 1, 0x0B, 2], &[(b"a", 0)]);
    assert_eq!(code(dec(&sub)), ReasonCode::ProtocolError);
    // User properties and PUBLISH subscription identifiers may repeat.
    let mut ok = user_prop(b"k", b"1");
    ok.extend(user_prop(b"k", b"2"));
    ok.extend_from_slice(&[0x0B, 1, 0x0B, 2]);
    assert!(
        dec_srv(&publish(0x30, b"t", None, &ok, b""))
            .unwrap()
            .is_some()
    );
}

#[test]
fn mqtt_3_3_2_8_topic_alias_zero_is_topic_alias_invalid() {
    let p = publish(0x30, b"t", None, &[0x23, 0, 0], b"");
    assert_eq!(code(dec(&p)), ReasonCode::TopicAliasInvalid);
    // Alias 1 with an empty topic is the short form of an aliased PUBLISH.
    assert!(
        dec(&publish(0x30, b"", None, &[0x23, 0, 1], b""))
            .unwrap()
            .is_some()
    );
}

#[test]
fn empty_topic_without_topic_alias_is_a_protocol_error() {
    let err = dec(&publish(0x30, b"", None, &[], b"x")).unwrap_err();
    assert!(matches!(
        err,
        V5Error::Protocol(Violation::EmptyTopicWithoutAlias)
    ));
}

#[test]
fn mqtt_3_3_2_2_publish_topic_with_wildcards_is_topic_name_invalid() {
    assert_eq!(
        code(dec(&publish(0x30, b"a/+", None, &[], b""))),
        ReasonCode::TopicNameInvalid
    );
    assert_eq!(
        code(dec(&publish(0x30, b"a/#", None, &[], b""))),
        ReasonCode::TopicNameInvalid
    );
}

#[test]
fn mqtt_3_3_2_14_response_topic_with_wildcards_is_refused() {
    let mut p = vec![0x08];
    p.extend(s(b"re/+"));
    let err = dec(&publish(0x30, b"t", None, &p, b"")).unwrap_err();
    assert!(matches!(
        err,
        V5Error::Protocol(Violation::ResponseTopicWildcard)
    ));
}

#[test]
fn subscription_identifier_zero_is_a_protocol_error() {
    let sub = subscribe(1, &[0x0B, 0], &[(b"a", 0)]);
    assert!(matches!(
        dec(&sub),
        Err(V5Error::Protocol(Violation::PropertyValue {
            id: 0x0B,
            value: 0
        }))
    ));
    let p = publish(0x30, b"t", None, &[0x0B, 0], b"");
    assert_eq!(code(dec_srv(&p)), ReasonCode::ProtocolError);
}

#[test]
fn mqtt_3_3_4_6_client_publish_with_subscription_identifier_is_refused() {
    let p = publish(0x30, b"t", None, &[0x0B, 3], b"");
    let err = dec(&p).unwrap_err();
    assert!(matches!(
        err,
        V5Error::Protocol(Violation::SubscriptionIdFromClient)
    ));
    assert!(dec_srv(&p).unwrap().is_some());
}

#[test]
fn receive_maximum_zero_and_maximum_packet_size_zero_are_protocol_errors() {
    let c = connect(0x02, &[0x21, 0, 0], &s(b"id"));
    assert_eq!(code(dec(&c)), ReasonCode::ProtocolError);
    let c = connect(0x02, &[0x27, 0, 0, 0, 0], &s(b"id"));
    assert_eq!(code(dec(&c)), ReasonCode::ProtocolError);
    let mut ack = vec![0, 0];
    ack.extend(props(&[0x21, 0, 0]));
    assert_eq!(code(dec_srv(&frame(0x20, &ack))), ReasonCode::ProtocolError);
}

#[test]
fn flag_properties_must_be_0_or_1() {
    // Payload format indicator 2 on PUBLISH; request problem information 2
    // on CONNECT; maximum QoS 2 and retain available 2 on CONNACK.
    let p = publish(0x30, b"t", None, &[0x01, 2], b"");
    assert!(matches!(
        dec(&p),
        Err(V5Error::Protocol(Violation::PropertyValue {
            id: 0x01,
            value: 2
        }))
    ));
    assert_eq!(
        code(dec(&connect(0x02, &[0x17, 2], &s(b"id")))),
        ReasonCode::ProtocolError
    );
    for prop in [[0x24, 2], [0x25, 2], [0x28, 2], [0x29, 2], [0x2A, 2]] {
        let mut ack = vec![0, 0];
        ack.extend(props(&prop));
        assert_eq!(code(dec_srv(&frame(0x20, &ack))), ReasonCode::ProtocolError);
    }
}

#[test]
fn authentication_data_without_method_is_a_protocol_error() {
    let c = connect(0x02, &[0x16, 0, 1, 9], &s(b"id"));
    assert!(matches!(
        dec(&c),
        Err(V5Error::Protocol(Violation::AuthDataWithoutMethod))
    ));
}

#[test]
fn mqtt_3_1_2_2_connect_other_than_level_5_is_unsupported_protocol_version() {
    let mut body = s(b"MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 30]);
    body.extend(s(b"id"));
    let err = dec(&frame(0x10, &body)).unwrap_err();
    assert!(matches!(err, V5Error::UnsupportedProtocolVersion(4)));
    assert_eq!(err.reason_code(), ReasonCode::UnsupportedProtocolVersion);
}

#[test]
fn mqtt_3_1_2_1_unknown_protocol_name_is_refused() {
    let mut body = s(b"MQTX");
    body.extend_from_slice(&[5, 0x02, 0, 30, 0]);
    body.extend(s(b"id"));
    assert!(matches!(
        dec(&frame(0x10, &body)),
        Err(V5Error::Protocol(Violation::ProtocolName))
    ));
}

#[test]
fn mqtt_3_1_2_3_connect_reserved_flag_is_malformed() {
    let err = dec(&connect(0x03, &[], &s(b"id"))).unwrap_err();
    assert!(matches!(
        err,
        V5Error::Malformed(Violation::ConnectReservedFlag)
    ));
}

#[test]
fn mqtt_3_1_2_11_and_13_will_qos_or_retain_without_will_flag() {
    assert!(matches!(
        dec(&connect(0x0a, &[], &s(b"id"))),
        Err(V5Error::Malformed(Violation::WillFlags))
    ));
    assert!(matches!(
        dec(&connect(0x22, &[], &s(b"id"))),
        Err(V5Error::Malformed(Violation::WillFlags))
    ));
}

#[test]
fn mqtt_3_1_2_12_will_qos_3_is_malformed() {
    let mut payload = s(b"id");
    payload.extend(props(&[]));
    payload.extend(s(b"w"));
    payload.extend(s(b"x"));
    assert!(matches!(
        dec(&connect(0x1e, &[], &payload)),
        Err(V5Error::Malformed(Violation::WillQos3))
    ));
}

#[test]
fn connect_with_will_properties_and_binary_password_layout() {
    let mut payload = s(b"id");
    payload.extend(props(&[0x18, 0, 0, 0, 10, 0x01, 1]));
    payload.extend(s(b"will/t"));
    payload.extend(s(b"bye"));
    payload.extend(s(b"user"));
    payload.extend(s(b"pw"));
    let bytes = connect(0xce, &[0x11, 0, 0, 0, 30, 0x21, 0, 10], &payload);
    let Some(Packet::Connect(c, will, login)) = dec(&bytes).unwrap() else {
        panic!("not a CONNECT")
    };
    let p = c.properties.expect("properties");
    assert_eq!(
        (p.session_expiry_interval, p.receive_maximum),
        (Some(30), Some(10))
    );
    let will = will.expect("will");
    assert_eq!(&will.topic[..], b"will/t");
    let wp = will.properties.expect("will properties");
    assert_eq!(
        (wp.delay_interval, wp.payload_format_indicator),
        (Some(10), Some(1))
    );
    assert_eq!(login.map(|l| l.username), Some("user".to_string()));
    // The will topic is checked like a PUBLISH topic.
    let mut payload = s(b"id");
    payload.extend(props(&[]));
    payload.extend(s(b"will/#"));
    payload.extend(s(b"x"));
    assert_eq!(
        code(dec(&connect(0x06, &[], &payload))),
        ReasonCode::TopicNameInvalid
    );
}

#[test]
fn mqtt_3_2_2_1_connack_reserved_flags_and_3_2_2_6_session_present_on_failure() {
    let mut ack = vec![0x02, 0];
    ack.extend(props(&[]));
    assert_eq!(
        code(dec_srv(&frame(0x20, &ack))),
        ReasonCode::MalformedPacket
    );
    let mut ack = vec![0x01, 0x87];
    ack.extend(props(&[]));
    let err = dec_srv(&frame(0x20, &ack)).unwrap_err();
    assert!(matches!(
        err,
        V5Error::Protocol(Violation::SessionPresentOnFailure)
    ));
}

#[test]
fn reason_codes_a_packet_may_not_carry_are_refused() {
    // PUBREL with 0x87 (only 0x00/0x92); PUBACK with 0x04; SUBACK with 0x03;
    // CONNACK with 0x00 allowed, 0x04 refused; DISCONNECT with 0x84.
    assert_eq!(
        code(dec(&frame(0x62, &[0, 1, 0x87]))),
        ReasonCode::ProtocolError
    );
    assert_eq!(
        code(dec(&frame(0x40, &[0, 1, 0x04]))),
        ReasonCode::ProtocolError
    );
    let mut suback = vec![0, 1];
    suback.extend(props(&[]));
    suback.push(0x03);
    assert!(matches!(
        dec_srv(&frame(0x90, &suback)),
        Err(V5Error::Protocol(Violation::ReasonCode { code: 0x03, .. }))
    ));
    let mut ack = vec![0, 0x04];
    ack.extend(props(&[]));
    assert_eq!(code(dec_srv(&frame(0x20, &ack))), ReasonCode::ProtocolError);
    assert_eq!(code(dec(&frame(0xe0, &[0x84]))), ReasonCode::ProtocolError);
    // Valid ones pass: PUBACK 0x10 (no matching subscribers), PUBREC 0x97.
    assert!(dec(&frame(0x40, &[0, 1, 0x10])).unwrap().is_some());
    assert!(dec(&frame(0x50, &[0, 1, 0x97])).unwrap().is_some());
}

#[test]
fn mqtt_3_8_3_5_subscribe_reserved_option_bits_are_malformed() {
    let err = dec(&subscribe(1, &[], &[(b"a", 0x40)])).unwrap_err();
    assert!(matches!(
        err,
        V5Error::Malformed(Violation::SubscriptionOptionsReserved(0x40))
    ));
    assert!(matches!(
        dec(&subscribe(1, &[], &[(b"a", 0x03)])),
        Err(V5Error::Malformed(Violation::SubscriptionQos3))
    ));
    assert!(matches!(
        dec(&subscribe(1, &[], &[(b"a", 0x30)])),
        Err(V5Error::Protocol(Violation::RetainHandling3))
    ));
    // No local, retain as published, retain handling 2, QoS 2: all valid.
    let Some(Packet::Subscribe(s)) = dec(&subscribe(1, &[], &[(b"a", 0x2e)])).unwrap() else {
        panic!("not a SUBSCRIBE")
    };
    assert!(s.filters[0].nolocal && s.filters[0].preserve_retain);
}

#[test]
fn mqtt_3_8_3_4_no_local_on_a_shared_subscription_is_a_protocol_error() {
    let err = dec(&subscribe(1, &[], &[(b"$share/g/a", 0x04)])).unwrap_err();
    assert!(matches!(err, V5Error::Protocol(Violation::NoLocalOnShared)));
    assert!(
        dec(&subscribe(1, &[], &[(b"$share/g/a", 0x01)]))
            .unwrap()
            .is_some()
    );
}

#[test]
fn mqtt_3_8_3_2_and_3_10_3_2_subscribe_and_unsubscribe_need_a_filter() {
    assert!(matches!(
        dec(&subscribe(1, &[], &[])),
        Err(V5Error::Protocol(Violation::NoFilters("SUBSCRIBE")))
    ));
    assert!(matches!(
        dec(&frame(0xa2, &[0, 1, 0])),
        Err(V5Error::Protocol(Violation::NoFilters("UNSUBSCRIBE")))
    ));
}

#[test]
fn mqtt_3_14_2_2_server_disconnect_with_session_expiry_is_refused() {
    let mut body = vec![0x8b];
    body.extend(props(&[0x11, 0, 0, 0, 1]));
    let err = dec_srv(&frame(0xe0, &body)).unwrap_err();
    assert!(matches!(
        err,
        V5Error::Protocol(Violation::SessionExpiryFromServer)
    ));
    // From a client it sets the session expiry on disconnect.
    let mut body = vec![0x00];
    body.extend(props(&[0x11, 0, 0, 0, 1]));
    assert!(dec(&frame(0xe0, &body)).unwrap().is_some());
}

#[test]
fn disconnect_and_auth_without_body_mean_success() {
    let Some(Packet::Disconnect(d)) = dec(&[0xe0, 0]).unwrap() else {
        panic!("not a DISCONNECT")
    };
    assert_eq!(d.reason_code, DisconnectReasonCode::NormalDisconnection);
    assert!(matches!(dec(&[0xf0, 0]).unwrap(), Some(Packet::Auth(_))));
    // DISCONNECT with a reason code only (remaining length 1).
    let Some(Packet::Disconnect(d)) = dec_srv(&[0xe0, 1, 0x8b]).unwrap() else {
        panic!("not a DISCONNECT")
    };
    assert_eq!(d.reason_code, DisconnectReasonCode::ServerShuttingDown);
    // AUTH with continue and a method.
    let mut body = vec![0x18];
    let mut p = vec![0x15];
    p.extend(s(b"SCRAM"));
    p.extend(user_prop(b"k", b"v"));
    body.extend(props(&p));
    let Some(Packet::Auth(a)) = dec(&frame(0xf0, &body)).unwrap() else {
        panic!("not an AUTH")
    };
    let ap = a.properties.clone().expect("properties");
    assert_eq!(ap.method.as_deref(), Some("SCRAM"));
    assert_eq!(ap.user_properties, [("k".to_string(), "v".to_string())]);
    // And back: rumqttc's own AUTH writer gets the remaining length wrong.
    let mut out = BytesMut::new();
    encode(&Packet::Auth(a), &mut out, MAX, Sender::Server).unwrap();
    assert_eq!(&out[..], &frame(0xf0, &body)[..]);
}

#[test]
fn packets_sent_in_the_wrong_direction_are_refused() {
    // A client sending CONNACK or SUBACK; a server sending SUBSCRIBE.
    let mut ack = vec![0, 0];
    ack.extend(props(&[]));
    assert!(matches!(
        dec(&frame(0x20, &ack)),
        Err(V5Error::Protocol(Violation::WrongDirection("CONNACK")))
    ));
    assert_eq!(
        code(dec_srv(&subscribe(1, &[], &[(b"a", 0)]))),
        ReasonCode::ProtocolError
    );
    assert_eq!(code(dec_srv(&[0xc0, 0])), ReasonCode::ProtocolError);
}

#[test]
fn bytes_after_the_last_field_are_malformed() {
    let mut body = vec![0, 1, 0x00];
    body.extend(props(&[]));
    body.push(0xaa);
    assert!(matches!(
        dec(&frame(0x40, &body)),
        Err(V5Error::Malformed(Violation::TrailingBytes(1)))
    ));
    assert_eq!(code(dec(&[0xc0, 1, 0])), ReasonCode::MalformedPacket);
    let mut payload = s(b"id");
    payload.push(0);
    assert_eq!(
        code(dec(&connect(0x02, &[], &payload))),
        ReasonCode::MalformedPacket
    );
}

#[test]
fn packet_over_our_maximum_is_refused_from_the_fixed_header() {
    // Only the fixed header has arrived: 2 MiB announced, 1 KiB allowed.
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x80, 0x01][..]);
    let err = decode(&mut buf, 1024, Sender::Client).unwrap_err();
    assert!(matches!(err, V5Error::PacketTooLarge { size, max: 1024 } if size > 2_000_000));
    assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
    // The largest remaining length, 268,435,455, is four 7-bit groups.
    let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0x7f][..]);
    assert!(matches!(
        decode(&mut buf, usize::MAX, Sender::Client),
        Ok(None)
    ));
}

fn enc(p: &Packet, sender: Sender) -> Result<BytesMut, V5Error> {
    let mut buf = BytesMut::from(&b"prefix"[..]);
    let r = encode(p, &mut buf, MAX, sender);
    match r {
        Ok(()) => Ok(buf.split_off(6)),
        Err(e) => {
            assert_eq!(
                &buf[..],
                b"prefix",
                "a failed encode leaves the buffer as it was"
            );
            Err(e)
        }
    }
}

#[test]
fn encode_refuses_strings_over_65535_bytes() {
    let long = "x".repeat(70_000);
    let mut props = PublishProperties::default();
    props.user_properties.push(("k".into(), long.clone()));
    let p = Packet::Publish(Publish::new("t", QoS::AtMostOnce, "", Some(props)));
    assert!(matches!(
        enc(&p, Sender::Server),
        Err(V5Error::StringTooLong {
            field: "user property value",
            len: 70_000
        })
    ));
    let p = Packet::Publish(Publish::new(long, QoS::AtMostOnce, "", None));
    assert!(matches!(
        enc(&p, Sender::Server),
        Err(V5Error::StringTooLong { field: "topic", .. })
    ));
}

#[test]
fn encode_refuses_what_the_decoder_refuses() {
    let alias0 = PublishProperties {
        topic_alias: Some(0),
        ..Default::default()
    };
    let p = Packet::Publish(Publish::new("t", QoS::AtMostOnce, "", Some(alias0)));
    assert!(matches!(
        enc(&p, Sender::Client),
        Err(V5Error::TopicAliasZero)
    ));
    let sub_id = PublishProperties {
        subscription_identifiers: vec![4],
        ..Default::default()
    };
    let p = Packet::Publish(Publish::new("t", QoS::AtMostOnce, "", Some(sub_id)));
    assert!(enc(&p, Sender::Client).is_err());
    assert!(enc(&p, Sender::Server).is_ok());
    let mut q1 = Publish::new("t", QoS::AtLeastOnce, "", None);
    q1.pkid = 0;
    assert!(enc(&Packet::Publish(q1), Sender::Client).is_err());
    let wild = Packet::Publish(Publish::new("a/+", QoS::AtMostOnce, "", None));
    assert!(matches!(
        enc(&wild, Sender::Client),
        Err(V5Error::TopicNameInvalid)
    ));
}

#[test]
fn mqtt_3_1_2_24_encode_refuses_packets_over_the_peers_maximum() {
    let p = Packet::Publish(Publish::new("t", QoS::AtMostOnce, vec![0u8; 100], None));
    let mut buf = BytesMut::new();
    let err = encode(&p, &mut buf, 50, Sender::Server).unwrap_err();
    assert!(matches!(err, V5Error::OutgoingTooLarge { max: 50, .. }));
    assert!(buf.is_empty());
}

#[test]
fn encode_disconnect_with_a_reason_and_no_properties_keeps_the_reason() {
    // rumqttc writes E0 01 8B 00 (a stray byte) for no properties, and
    // E0 00 (reason lost) for empty ones.
    let d = Packet::Disconnect(Disconnect::new(DisconnectReasonCode::ServerShuttingDown));
    assert_eq!(&enc(&d, Sender::Server).unwrap()[..], &[0xe0, 1, 0x8b]);
    let empty = DisconnectProperties {
        session_expiry_interval: None,
        reason_string: None,
        user_properties: vec![],
        server_reference: None,
    };
    let d = Packet::Disconnect(Disconnect {
        reason_code: DisconnectReasonCode::UseAnotherServer,
        properties: Some(empty),
    });
    assert_eq!(&enc(&d, Sender::Server).unwrap()[..], &[0xe0, 1, 0x9c]);
    let d = Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection));
    assert_eq!(&enc(&d, Sender::Client).unwrap()[..], &[0xe0, 0]);
}

#[test]
fn encode_refuses_a_connack_with_a_3_1_1_code_instead_of_panicking() {
    for code in [
        ConnectReturnCode::RefusedProtocolVersion,
        ConnectReturnCode::BadClientId,
        ConnectReturnCode::ServiceUnavailable,
    ] {
        let c = Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties: None,
        });
        assert!(matches!(
            enc(&c, Sender::Server),
            Err(V5Error::Unencodable(_))
        ));
    }
}

#[test]
fn encode_connect_into_a_non_empty_buffer_keeps_its_flags() {
    let mut c = rumqttc::v5::mqttbytes::v5::Connect {
        keep_alive: 30,
        client_id: "id".into(),
        clean_start: true,
        properties: None,
    };
    c.keep_alive = 10;
    let login = rumqttc::v5::mqttbytes::v5::Login::new("u", "p");
    let p = Packet::Connect(c, None, Some(login));
    let out = enc(&p, Sender::Client).unwrap();
    let back = dec(&out).unwrap().expect("a packet");
    assert_eq!(back, p);
}

#[test]
fn encode_then_decode_an_ack_with_reason_and_properties() {
    let mut ack = PubAck::new(7, None);
    ack.reason = rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized;
    let p = Packet::PubAck(ack);
    let out = enc(&p, Sender::Server).unwrap();
    assert_eq!(dec_srv(&out).unwrap(), Some(p));
    let c = Packet::ConnAck(ConnAck {
        session_present: false,
        code: ConnectReturnCode::Success,
        properties: None,
    });
    let out = enc(&c, Sender::Server).unwrap();
    assert_eq!(dec_srv(&out).unwrap(), Some(c));
}
