//! Decode-side byte-fixture tests of the codec adapter.

use bytes::BytesMut;
use rumqttc::mqttbytes::QoS as WQ;
use rumqttc::mqttbytes::v4::{Login, Packet, PubAck, PubRel, Unsubscribe};

use super::*;

const MAX: usize = 1 << 20;

fn dec(bytes: &[u8]) -> Result<Option<Packet>, CodecError> {
    decode(&mut BytesMut::from(bytes), MAX)
}

/// An MQTT string: u16 length prefix + bytes.
fn s(x: &[u8]) -> Vec<u8> {
    let mut v = (x.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(x);
    v
}

/// A frame with a one-byte remaining length.
fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut v = vec![byte1, body.len() as u8];
    v.extend_from_slice(body);
    v
}

fn connect_frame(name: &[u8], level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = s(name);
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&[0, 30]); // keepalive
    body.extend_from_slice(payload);
    frame(0x10, &body)
}

fn publish_frame(byte1: u8, topic: &[u8], pkid: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut body = s(topic);
    if let Some(id) = pkid {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    frame(byte1, &body)
}

fn subscribe_frame(byte1: u8, pkid: u16, filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for (f, o) in filters {
        body.extend_from_slice(&s(f));
        body.push(*o);
    }
    frame(byte1, &body)
}

#[test]
fn decodes_qos1_publish_fixture() {
    let bytes = publish_frame(0x32, b"a/b", Some(10), &[1, 2, 3]);
    let Some(Packet::Publish(p)) = dec(&bytes).unwrap() else {
        panic!("not a publish")
    };
    assert_eq!(
        (p.topic.as_str(), p.pkid, p.qos),
        ("a/b", 10, WQ::AtLeastOnce)
    );
    assert_eq!(&p.payload[..], &[1, 2, 3]);
    assert!(!p.dup && !p.retain);
}

#[test]
fn partial_input_needs_more_and_consumes_nothing() {
    let bytes = publish_frame(0x3b, b"t", Some(7), b"hello"); // DUP, QoS1, retain
    let mut buf = BytesMut::new();
    for (i, b) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let got = decode(&mut buf, MAX).unwrap();
        if i + 1 < bytes.len() {
            assert!(got.is_none(), "complete too early at {i}");
            assert_eq!(buf.len(), i + 1);
        } else {
            let Some(Packet::Publish(p)) = got else {
                panic!("no publish")
            };
            assert!(p.dup && p.retain);
            assert!(buf.is_empty());
        }
    }
}

#[test]
fn decodes_back_to_back_packets() {
    let mut bytes = frame(0x40, &[0, 1]);
    bytes.extend(frame(0x62, &[0, 2]));
    bytes.extend([0xc0, 0]);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode(&mut buf, MAX).unwrap(),
        Some(Packet::PubAck(PubAck::new(1)))
    );
    assert_eq!(
        decode(&mut buf, MAX).unwrap(),
        Some(Packet::PubRel(PubRel::new(2)))
    );
    assert_eq!(decode(&mut buf, MAX).unwrap(), Some(Packet::PingReq));
    assert_eq!(decode(&mut buf, MAX).unwrap(), None);
}

#[test]
fn reserved_flag_bits_are_checked() {
    let bad = |bytes: Vec<u8>| matches!(dec(&bytes), Err(CodecError::InvalidFlags { .. }));
    assert!(bad(frame(0x60, &[0, 1]))); // PUBREL must be 0b0010
    assert!(bad(subscribe_frame(0x80, 1, &[(b"a", 0)])));
    assert!(bad(frame(0xa0, &[0, 1, 0, 1, b'a'])));
    assert!(bad(frame(0x41, &[0, 1]))); // PUBACK must be 0
    assert!(bad(frame(0x52, &[0, 1]))); // PUBREC must be 0
    assert!(bad(vec![0xc1, 0])); // PINGREQ
    assert!(bad(vec![0xe8, 0])); // DISCONNECT
    assert!(bad(connect_frame(b"MQTT", 4, 2, &s(b"id"))
        .into_iter()
        .enumerate()
        .map(|(i, b)| if i == 0 { 0x12 } else { b })
        .collect()));
    assert!(matches!(
        dec(&[0x00, 0]),
        Err(CodecError::InvalidPacketType(0))
    ));
    assert!(matches!(
        dec(&[0xf0, 0]),
        Err(CodecError::InvalidPacketType(15))
    ));
}

#[test]
fn flags_are_checked_before_the_body_arrives() {
    // Header only: a bad PUBREL is refused without waiting for its body.
    assert!(matches!(
        dec(&[0x60, 2]),
        Err(CodecError::InvalidFlags { .. })
    ));
    assert!(matches!(dec(&[0x36, 10]), Err(CodecError::InvalidQoS(3))));
}

#[test]
fn publish_qos3_and_dup_on_qos0_are_refused() {
    let q3 = publish_frame(0x36, b"a", Some(1), b"");
    assert!(matches!(dec(&q3), Err(CodecError::InvalidQoS(3))));
    let dup0 = publish_frame(0x38, b"a", None, b"");
    assert!(matches!(dec(&dup0), Err(CodecError::DupOnQos0)));
}

#[test]
fn publish_topic_names_are_checked() {
    for topic in [&b"a/+"[..], b"a/#", b"#", b"", b"a\0b"] {
        let bytes = publish_frame(0x30, topic, None, b"x");
        assert!(
            matches!(dec(&bytes), Err(CodecError::InvalidTopicName(_))),
            "{topic:?}"
        );
    }
    // Not UTF-8: rumqttc refuses it.
    let bytes = publish_frame(0x30, &[0xff, 0xfe], None, b"x");
    assert!(matches!(dec(&bytes), Err(CodecError::Malformed(_))));
    // `$SYS` topics and empty levels are valid topic names.
    assert!(
        dec(&publish_frame(0x30, b"$SYS/x//y", None, b""))
            .unwrap()
            .is_some()
    );
}

#[test]
fn publish_qos_above_zero_needs_a_packet_id() {
    let bytes = publish_frame(0x32, b"a", Some(0), b"x");
    assert!(matches!(
        dec(&bytes),
        Err(CodecError::PacketIdZero("PUBLISH"))
    ));
    // QoS 1 with no room for a packet id at all.
    assert!(matches!(
        dec(&frame(0x32, &s(b"a"))),
        Err(CodecError::Malformed(_))
    ));
}

#[test]
fn connect_fixture_decodes() {
    let mut payload = s(b"client-1");
    payload.extend(s(b"will/t"));
    payload.extend(s(b"bye"));
    payload.extend(s(b"user"));
    payload.extend(s(b"pw"));
    // user, password, will retain, will QoS 1, will, clean session
    let bytes = connect_frame(b"MQTT", 4, 0b1110_1110, &payload);
    let Some(Packet::Connect(c)) = dec(&bytes).unwrap() else {
        panic!("no connect")
    };
    assert_eq!(c.client_id, "client-1");
    assert!(c.clean_session);
    assert_eq!(c.keep_alive, 30);
    let will = c.last_will.expect("will");
    assert_eq!(
        (will.topic.as_str(), will.qos, will.retain),
        ("will/t", WQ::AtLeastOnce, true)
    );
    assert_eq!(c.login, Some(Login::new("user", "pw")));
}

#[test]
fn mqtt31_mqisdp_connect_decodes_like_311() {
    // Will, user name and password: every optional field of the layout.
    let mut payload = s(b"c31");
    payload.extend(s(b"will/t"));
    payload.extend(s(b"bye"));
    payload.extend(s(b"user"));
    payload.extend(s(b"pw"));
    let flags = 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02;
    let Some(Packet::Connect(c)) = dec(&connect_frame(b"MQIsdp", 3, flags, &payload)).unwrap()
    else {
        panic!("not a CONNECT")
    };
    assert_eq!((c.client_id.as_str(), c.keep_alive), ("c31", 30));
    assert!(c.clean_session);
    let will = c.last_will.expect("will");
    assert_eq!(
        (
            will.topic.as_str(),
            &will.message[..],
            will.qos,
            will.retain
        ),
        ("will/t", &b"bye"[..], WQ::AtLeastOnce, true)
    );
    assert_eq!(c.login, Some(Login::new("user", "pw")));
}

#[test]
fn mqtt31_connect_with_long_remaining_length_and_following_bytes() {
    // A 3.1 frame whose remaining length needs two bytes, followed by a
    // PINGREQ in the same buffer: the rewrite must not eat into it.
    let id = vec![b'x'; 200];
    let mut body = s(b"MQIsdp");
    body.extend_from_slice(&[3, 0x02, 0, 30]);
    body.extend(s(&id));
    let mut bytes = vec![
        0x10,
        (body.len() % 128) as u8 | 0x80,
        (body.len() / 128) as u8,
    ];
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(&[0xc0, 0]);
    let mut buf = BytesMut::from(&bytes[..]);
    let Some(Packet::Connect(c)) = decode(&mut buf, MAX).unwrap() else {
        panic!("not a CONNECT")
    };
    assert_eq!(c.client_id.as_bytes(), &id[..]);
    assert_eq!(decode(&mut buf, MAX).unwrap(), Some(Packet::PingReq));
    // Trailing bytes after the last field are refused as for 3.1.1.
    let mut payload = s(b"c");
    payload.push(0);
    assert!(matches!(
        dec(&connect_frame(b"MQIsdp", 3, 2, &payload)),
        Err(CodecError::InvalidRemainingLength { .. })
    ));
}

#[test]
fn connect_protocol_name_and_level() {
    let id = s(b"c");
    let mqisdp = dec(&connect_frame(b"MQIsdp", 4, 2, &id)).unwrap_err();
    assert!(matches!(mqisdp, CodecError::UnsupportedProtocolLevel(4)));
    assert!(mqisdp.is_unsupported_protocol_version());
    let v5 = dec(&connect_frame(b"MQTT", 5, 2, &id)).unwrap_err();
    assert!(matches!(v5, CodecError::UnsupportedProtocolLevel(5)));
    assert!(v5.is_unsupported_protocol_version());
    let v3 = dec(&connect_frame(b"MQTT", 3, 2, &id)).unwrap_err();
    assert!(matches!(v3, CodecError::UnsupportedProtocolLevel(3)));
    let name = dec(&connect_frame(b"MQTX", 4, 2, &id)).unwrap_err();
    assert!(matches!(name, CodecError::InvalidProtocolName));
    assert!(!name.is_unsupported_protocol_version());
}

#[test]
fn connect_flags_are_checked() {
    let id = s(b"c");
    let reserved = dec(&connect_frame(b"MQTT", 4, 0b11, &id));
    assert!(matches!(reserved, Err(CodecError::InvalidConnectFlags(_))));
    let mut payload = id.clone();
    payload.extend(s(b"pw"));
    let pw_only = dec(&connect_frame(b"MQTT", 4, 0b0100_0010, &payload));
    assert!(matches!(pw_only, Err(CodecError::InvalidConnectFlags(_))));
    // Will QoS without the will flag: rumqttc's own check.
    let will_qos = dec(&connect_frame(b"MQTT", 4, 0b0000_1010, &id));
    assert!(matches!(will_qos, Err(CodecError::Malformed(_))));
    // A will topic with a wildcard.
    let mut payload = id.clone();
    payload.extend(s(b"w/#"));
    payload.extend(s(b"x"));
    let will = dec(&connect_frame(b"MQTT", 4, 0b0000_0110, &payload));
    assert!(matches!(will, Err(CodecError::InvalidTopicName(_))));
    // NUL in the client id.
    let nul = dec(&connect_frame(b"MQTT", 4, 2, &s(b"a\0")));
    assert!(matches!(nul, Err(CodecError::NulInString(_))));
}

#[test]
fn subscribe_checks() {
    let none = dec(&subscribe_frame(0x82, 1, &[]));
    assert!(matches!(none, Err(CodecError::NoFilters("SUBSCRIBE"))));
    let opts = dec(&subscribe_frame(0x82, 1, &[(b"a", 0), (b"b", 0x05)]));
    assert!(matches!(opts, Err(CodecError::InvalidSubscribeOptions(5))));
    let qos3 = dec(&subscribe_frame(0x82, 1, &[(b"a", 3)]));
    assert!(matches!(qos3, Err(CodecError::InvalidQoS(3))));
    let pkid0 = dec(&subscribe_frame(0x82, 0, &[(b"a", 1)]));
    assert!(matches!(pkid0, Err(CodecError::PacketIdZero("SUBSCRIBE"))));
    // Invalid filters are left to the broker (SUBACK 0x80), not refused here.
    let Some(Packet::Subscribe(sub)) =
        dec(&subscribe_frame(0x82, 9, &[(b"a/#/b", 1), (b"x/+", 2)])).unwrap()
    else {
        panic!("no subscribe")
    };
    let valid: Vec<bool> = sub
        .filters
        .iter()
        .map(|f| filter_is_valid(&f.path))
        .collect();
    assert_eq!(valid, [false, true]);
}

#[test]
fn unsubscribe_checks() {
    let none = dec(&frame(0xa2, &[0, 1]));
    assert!(matches!(none, Err(CodecError::NoFilters("UNSUBSCRIBE"))));
    let mut body = vec![0, 0];
    body.extend(s(b"a"));
    assert!(matches!(
        dec(&frame(0xa2, &body)),
        Err(CodecError::PacketIdZero("UNSUBSCRIBE"))
    ));
    let mut body = vec![0, 4];
    body.extend(s(b"a/+"));
    assert_eq!(
        dec(&frame(0xa2, &body)).unwrap(),
        Some(Packet::Unsubscribe(Unsubscribe {
            pkid: 4,
            topics: vec!["a/+".into()]
        }))
    );
}

#[test]
fn fixed_size_packets_have_exact_lengths() {
    let bad = |b: Vec<u8>| matches!(dec(&b), Err(CodecError::InvalidRemainingLength { .. }));
    assert!(bad(frame(0x40, &[0, 1, 0])));
    assert!(bad(frame(0x50, &[0, 1, 0, 0])));
    assert!(bad(frame(0x70, &[0, 1, 9])));
    assert!(bad(frame(0xb0, &[0, 1, 0])));
    assert!(bad(frame(0xc0, &[0])));
    assert!(bad(frame(0xd0, &[0])));
    assert!(bad(frame(0xe0, &[0])));
    assert!(bad(frame(0x20, &[0])));
    assert!(matches!(
        dec(&frame(0x20, &[2, 0])),
        Err(CodecError::InvalidConnAckFlags(2))
    ));
}

#[test]
fn huge_remaining_length_is_refused_from_the_header() {
    // 268,435,455 announced; only the 5 header bytes arrive.
    let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0x7f][..]);
    let err = decode(&mut buf, 1024).unwrap_err();
    assert!(matches!(
        err,
        CodecError::PacketTooLarge {
            size: 268_435_460,
            max: 1024
        }
    ));
    assert!(
        buf.capacity() < 4096,
        "must not allocate for the announced size"
    );
    // The maximum counts the whole packet: 1 + 1 + 10 = 12 bytes.
    let bytes = publish_frame(0x30, b"ab", None, b"123456");
    assert!(matches!(
        decode(&mut BytesMut::from(&bytes[..]), 11),
        Err(CodecError::PacketTooLarge { size: 12, .. })
    ));
    assert!(
        decode(&mut BytesMut::from(&bytes[..]), 12)
            .unwrap()
            .is_some()
    );
}

#[test]
fn five_byte_remaining_length_is_malformed() {
    assert!(matches!(
        dec(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01]),
        Err(CodecError::MalformedRemainingLength)
    ));
    // Four continuation bytes with the fifth not yet here is already an error.
    assert!(matches!(
        dec(&[0x30, 0x80, 0x80, 0x80, 0x80]),
        Err(CodecError::MalformedRemainingLength)
    ));
    assert!(dec(&[0x30, 0x80, 0x80, 0x80]).unwrap().is_none());
}

#[test]
fn payload_required_and_truncated_bodies_are_malformed() {
    assert!(matches!(
        dec(&[0x40, 0]),
        Err(CodecError::InvalidRemainingLength { .. })
    ));
    assert!(matches!(dec(&[0x30, 0]), Err(CodecError::Malformed(_))));
    assert!(matches!(
        dec(&frame(0x30, &[0, 5, b'a'])),
        Err(CodecError::Malformed(_))
    ));
}

#[test]
fn a_large_allowed_frame_is_not_preallocated() {
    // 200 MB announced and allowed: we wait for bytes without reserving them.
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x80, 0x60][..]);
    assert!(
        decode(&mut buf, crate::protocol::MQTT_MAX_PACKET_SIZE)
            .unwrap()
            .is_none()
    );
    assert!(buf.capacity() <= 128 * 1024, "reserved {}", buf.capacity());
    assert_eq!(buf.len(), 5);
}

#[test]
fn connect_with_trailing_bytes_is_refused() {
    let mut payload = s(b"cid");
    payload.extend(s(b"user"));
    let ok = connect_frame(b"MQTT", 4, 0b1000_0010, &payload);
    assert!(dec(&ok).unwrap().is_some());
    payload.push(0);
    let trailing = dec(&connect_frame(b"MQTT", 4, 0b1000_0010, &payload));
    assert!(
        matches!(
            trailing,
            Err(CodecError::InvalidRemainingLength {
                packet: "CONNECT",
                len: 1
            })
        ),
        "{trailing:?}"
    );
}
