//! Encode-side tests of the codec adapter: round trips, refusals,
//! message conversions.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    Connect, LastWill, Login, Packet, PubAck, PubComp, PubRec, PubRel, Publish, SubAck, Subscribe,
    SubscribeFilter, SubscribeReasonCode, Unsubscribe,
};
use rumqttc::mqttbytes::{Protocol, QoS as WQ};

use super::*;

const MAX: usize = 1 << 20;

fn enc(p: &Packet) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(p, &mut buf, MAX).expect("encodes");
    buf
}

fn sample_packets() -> Vec<Packet> {
    let mut connect = Connect::new("cid");
    connect.keep_alive = 60;
    connect.clean_session = false;
    connect.last_will = Some(LastWill::new("w/t", "gone", WQ::ExactlyOnce, true));
    connect.login = Some(Login::new("u", "p"));
    let mut publish = Publish::new("a/b", WQ::ExactlyOnce, vec![9; 300]);
    publish.pkid = 65535;
    publish.dup = true;
    publish.retain = true;
    vec![
        Packet::Connect(connect),
        Packet::ConnAck(rumqttc::mqttbytes::v4::ConnAck::new(
            rumqttc::mqttbytes::v4::ConnectReturnCode::Success,
            true,
        )),
        Packet::Publish(publish),
        Packet::Publish(Publish::new("q0", WQ::AtMostOnce, Vec::new())),
        Packet::PubAck(PubAck::new(1)),
        Packet::PubRec(PubRec::new(2)),
        Packet::PubRel(PubRel::new(3)),
        Packet::PubComp(PubComp::new(4)),
        Packet::Subscribe(Subscribe {
            pkid: 5,
            filters: vec![
                SubscribeFilter::new("a/#".into(), WQ::AtLeastOnce),
                SubscribeFilter::new("+/b".into(), WQ::ExactlyOnce),
            ],
        }),
        Packet::SubAck(SubAck::new(
            5,
            vec![
                SubscribeReasonCode::Success(WQ::AtLeastOnce),
                SubscribeReasonCode::Failure,
            ],
        )),
        Packet::Unsubscribe(Unsubscribe {
            pkid: 6,
            topics: vec!["a/#".into()],
        }),
        Packet::UnsubAck(rumqttc::mqttbytes::v4::UnsubAck::new(6)),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect,
    ]
}

#[test]
fn every_packet_type_round_trips() {
    for p in sample_packets() {
        let mut buf = enc(&p);
        assert_eq!(decode(&mut buf, MAX).unwrap().as_ref(), Some(&p));
        assert!(buf.is_empty());
    }
}

#[test]
fn encode_refuses_long_strings_without_touching_the_buffer() {
    let mut buf = BytesMut::from(&b"keep"[..]);
    let long = "x".repeat(MAX_STRING_LEN + 1);
    let p = Packet::Publish(Publish::new(long.clone(), WQ::AtMostOnce, vec![]));
    assert!(matches!(
        encode(&p, &mut buf, usize::MAX),
        Err(CodecError::StringTooLong { field: "topic", .. })
    ));
    let c = Packet::Connect(Connect::new(long.clone()));
    assert!(matches!(
        encode(&c, &mut buf, usize::MAX),
        Err(CodecError::StringTooLong {
            field: "client id",
            ..
        })
    ));
    let mut c = Connect::new("id");
    c.last_will = Some(LastWill::new(
        "w",
        vec![0; MAX_STRING_LEN + 1],
        WQ::AtMostOnce,
        false,
    ));
    assert!(matches!(
        encode(&Packet::Connect(c), &mut buf, usize::MAX),
        Err(CodecError::StringTooLong { .. })
    ));
    let sub = Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![SubscribeFilter::new(long, WQ::AtMostOnce)],
    });
    assert!(matches!(
        encode(&sub, &mut buf, usize::MAX),
        Err(CodecError::StringTooLong { .. })
    ));
    assert_eq!(&buf[..], b"keep");
    // Exactly 65,535 is fine.
    let ok = Packet::Publish(Publish::new(
        "y".repeat(MAX_STRING_LEN),
        WQ::AtMostOnce,
        vec![],
    ));
    encode(&ok, &mut buf, usize::MAX).unwrap();
    assert_eq!(decode(&mut buf.split_off(4), usize::MAX).unwrap(), Some(ok));
}

#[test]
fn encode_refuses_packets_over_the_peer_maximum() {
    let p = Packet::Publish(Publish::new("t", WQ::AtMostOnce, vec![0; 100]));
    let size = p.size();
    let mut buf = BytesMut::new();
    assert!(matches!(
        encode(&p, &mut buf, size - 1),
        Err(CodecError::OutgoingTooLarge { .. })
    ));
    assert!(buf.is_empty());
    encode(&p, &mut buf, size).unwrap();
    assert_eq!(buf.len(), size);
}

#[test]
fn encode_refuses_what_peers_would_reject() {
    let mut buf = BytesMut::new();
    let q1 = Packet::Publish(Publish::new("t", WQ::AtLeastOnce, vec![1]));
    assert!(matches!(
        encode(&q1, &mut buf, MAX),
        Err(CodecError::PacketIdZero("PUBLISH"))
    ));
    let wild = Packet::Publish(Publish::new("t/+", WQ::AtMostOnce, vec![1]));
    assert!(matches!(
        encode(&wild, &mut buf, MAX),
        Err(CodecError::InvalidTopicName(_))
    ));
    let mut dup0 = Publish::new("t", WQ::AtMostOnce, vec![1]);
    dup0.dup = true;
    assert!(matches!(
        encode(&Packet::Publish(dup0), &mut buf, MAX),
        Err(CodecError::DupOnQos0)
    ));
    let mut v5 = Connect::new("id");
    v5.protocol = Protocol::V5;
    assert!(matches!(
        encode(&Packet::Connect(v5), &mut buf, MAX),
        Err(CodecError::Unencodable(_))
    ));
    let mut pw = Connect::new("id");
    pw.login = Some(Login::new("", "secret"));
    assert!(matches!(
        encode(&Packet::Connect(pw), &mut buf, MAX),
        Err(CodecError::Unencodable(_))
    ));
    let empty = Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![],
    });
    assert!(matches!(
        encode(&empty, &mut buf, MAX),
        Err(CodecError::NoFilters(_))
    ));
    let unsub0 = Packet::Unsubscribe(Unsubscribe {
        pkid: 0,
        topics: vec!["a".into()],
    });
    assert!(matches!(
        encode(&unsub0, &mut buf, MAX),
        Err(CodecError::PacketIdZero(_))
    ));
    assert!(buf.is_empty());
}

#[test]
fn message_conversions() {
    let mut m = Message::new("a/b", Bytes::from_static(b"pl"), QoS::ExactlyOnce, true);
    m.properties = Some(Default::default());
    let p = publish_from_message(&m, 42, true);
    assert_eq!(
        (p.pkid, p.dup, p.retain, p.qos),
        (42, true, true, WQ::ExactlyOnce)
    );
    let back = message_from_publish(p);
    assert_eq!(back.topic, "a/b");
    assert_eq!(back.payload, m.payload);
    assert!(back.dup && back.retain && back.properties.is_none());
    assert_eq!(back.qos, QoS::ExactlyOnce);
    // QoS 0: no packet id, never DUP.
    let q0 = publish_from_message(
        &Message::new("x", Bytes::new(), QoS::AtMostOnce, false),
        7,
        true,
    );
    assert_eq!((q0.pkid, q0.dup), (0, false));
    for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        assert_eq!(QoS::from(WQ::from(q)), q);
    }
}

#[test]
fn topic_and_filter_validity_helpers() {
    assert!(
        topic_name_is_valid("a/b") && topic_name_is_valid("/") && topic_name_is_valid("$SYS/x")
    );
    assert!(!topic_name_is_valid("") && !topic_name_is_valid("a+") && !topic_name_is_valid("\0"));
    assert!(filter_is_valid("#") && filter_is_valid("a/+/b") && filter_is_valid("+"));
    assert!(!filter_is_valid("") && !filter_is_valid("a#") && !filter_is_valid("a/+b"));
    assert!(!filter_is_valid("#/a") && !filter_is_valid("a/\0"));
}

#[test]
fn connect_encodes_correctly_after_other_bytes() {
    // rumqttc alone would patch the CONNECT flags at index 9 of the buffer.
    let mut buf = BytesMut::from(&[0xc0, 0][..]);
    let mut c = Connect::new("x");
    c.login = Some(Login::new("u", "p"));
    let c = Packet::Connect(c);
    encode(&c, &mut buf, MAX).unwrap();
    assert_eq!(decode(&mut buf, MAX).unwrap(), Some(Packet::PingReq));
    assert_eq!(decode(&mut buf, MAX).unwrap(), Some(c));
}
