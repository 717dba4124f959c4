//! Property tests: decode never panics; valid packets round-trip, also when
//! the bytes arrive in arbitrary chunks.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use rumqttc::mqttbytes::QoS as WQ;
use rumqttc::mqttbytes::v4::{
    Connect, LastWill, Login, Packet, PubAck, PubComp, PubRec, PubRel, Publish, Subscribe,
    SubscribeFilter, Unsubscribe,
};

use super::*;

fn wire_qos() -> impl Strategy<Value = WQ> {
    prop_oneof![
        Just(WQ::AtMostOnce),
        Just(WQ::AtLeastOnce),
        Just(WQ::ExactlyOnce)
    ]
}

fn topic() -> impl Strategy<Value = String> {
    "[a-z0-9$ é/]{1,24}"
}

fn filter() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z/+#]{1,12}", topic()]
}

fn publish() -> impl Strategy<Value = Publish> {
    (
        topic(),
        wire_qos(),
        1..=u16::MAX,
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(topic, qos, pkid, dup, retain, payload)| {
            let q0 = qos == WQ::AtMostOnce;
            Publish {
                dup: dup && !q0,
                qos,
                retain,
                topic,
                pkid: if q0 { 0 } else { pkid },
                payload: Bytes::from(payload),
            }
        })
}

fn connect() -> impl Strategy<Value = Connect> {
    (
        "[a-zA-Z0-9-]{0,23}",
        any::<u16>(),
        any::<bool>(),
        proptest::option::of((
            topic(),
            proptest::collection::vec(any::<u8>(), 0..20),
            wire_qos(),
            any::<bool>(),
        )),
        proptest::option::of(("[a-z]{1,8}", "[a-z]{0,8}")),
    )
        .prop_map(|(id, keep_alive, clean_session, will, login)| {
            let mut c = Connect::new(id);
            c.keep_alive = keep_alive;
            c.clean_session = clean_session;
            c.last_will = will.map(|(t, m, q, r)| LastWill::new(t, m, q, r));
            c.login = login.map(|(u, p)| Login::new(u, p));
            c
        })
}

fn packet() -> impl Strategy<Value = Packet> {
    let id = 1..=u16::MAX;
    prop_oneof![
        publish().prop_map(Packet::Publish),
        connect().prop_map(Packet::Connect),
        id.clone().prop_map(|i| Packet::PubAck(PubAck::new(i))),
        id.clone().prop_map(|i| Packet::PubRec(PubRec::new(i))),
        id.clone().prop_map(|i| Packet::PubRel(PubRel::new(i))),
        id.clone().prop_map(|i| Packet::PubComp(PubComp::new(i))),
        (
            id.clone(),
            proptest::collection::vec((filter(), wire_qos()), 1..4)
        )
            .prop_map(|(pkid, fs)| Packet::Subscribe(Subscribe {
                pkid,
                filters: fs
                    .into_iter()
                    .map(|(f, q)| SubscribeFilter::new(f, q))
                    .collect(),
            })),
        (id, proptest::collection::vec(filter(), 1..4))
            .prop_map(|(pkid, topics)| Packet::Unsubscribe(Unsubscribe { pkid, topics })),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        Just(Packet::Disconnect),
    ]
}

/// Decodes until "need more" or an error; must never panic.
fn drain(buf: &mut BytesMut, max: usize) -> Vec<Packet> {
    let mut out = Vec::new();
    while let Ok(Some(p)) = decode(buf, max) {
        out.push(p);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..1024) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = drain(&mut buf, max);
    }

    #[test]
    fn decode_never_panics_on_mutated_valid_packets(
        p in packet(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut buf = BytesMut::new();
        encode(&p, &mut buf, usize::MAX).unwrap();
        for (at, byte) in flips {
            let i = at.index(buf.len());
            buf[i] = byte;
        }
        // Whatever survives the mutation and is accepted must re-encode to
        // bytes that decode to the same packet (what the fuzz target checks).
        for accepted in drain(&mut buf, 1 << 16) {
            let mut again = BytesMut::new();
            if encode(&accepted, &mut again, usize::MAX).is_ok() {
                prop_assert_eq!(decode(&mut again, usize::MAX).unwrap(), Some(accepted));
            }
        }
    }

    #[test]
    fn valid_packets_round_trip(p in packet()) {
        let mut buf = BytesMut::new();
        encode(&p, &mut buf, usize::MAX).unwrap();
        let got = decode(&mut buf, usize::MAX).unwrap();
        prop_assert_eq!(got, Some(p));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn chunked_stream_decodes_the_same(
        packets in proptest::collection::vec(packet(), 1..8),
        chunk in 1usize..40,
    ) {
        let mut wire = BytesMut::new();
        for p in &packets {
            encode(p, &mut wire, usize::MAX).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            got.extend(drain(&mut buf, usize::MAX));
        }
        prop_assert_eq!(got, packets);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn message_round_trips_through_publish(p in publish()) {
        let m = message_from_publish(p.clone());
        prop_assert_eq!(publish_from_message(&m, p.pkid, p.dup), p);
    }
}
