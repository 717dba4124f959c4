//! Unit tests of the session on MQTT 5 connections: what the CONNACK
//! granted, properties and options handed out, reason codes acted on.

use std::time::{Duration, Instant};

use rumqttc::mqttbytes::v4::{PubAck, PubComp, PubRec, Publish};
use tokio::sync::oneshot;

use super::tests::{Rec, connect, msg, session};
use super::*;
use crate::protocol::PropertyFields;

fn grant() -> Grant {
    Grant {
        session_present: false,
        receive_maximum: 3,
        max_packet_size: Some(200),
        keepalive: Some(Duration::from_secs(4)),
        max_qos: QoS::AtLeastOnce,
        retain_available: false,
        topic_alias_maximum: 0,
        assigned_client_id: None,
        session_expiry: None,
        exactly_once_limit: None,
    }
}

fn connect5(s: &mut ClientSession<u32>, g: Grant, now: Instant, out: &mut Rec) {
    s.connected("mqtt://b:1883".into(), g, true, None, now, out);
}

fn pkids(packets: &[Packet]) -> Vec<u16> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.pkid),
            _ => None,
        })
        .collect()
}

#[test]
fn the_brokers_receive_maximum_bounds_the_window() {
    let t0 = Instant::now();
    let mut s = session(0, t0);
    let mut out = Rec::default();
    connect5(&mut s, grant(), t0, &mut out);
    for i in 0..3 {
        assert!(s.can_take());
        s.publish_request(msg("t", QoS::AtLeastOnce), i, &mut out);
    }
    assert!(!s.can_take(), "receive maximum 3 < inflight 10");
    let sent = pkids(&out.take());
    s.on_packet(Packet::PubAck(PubAck::new(sent[0])), t0, &mut out)
        .unwrap();
    assert!(s.can_take());
    // A 3.1.1 connection has no receive maximum: the configured window again.
    s.disconnected();
    connect(&mut s, false, t0, &mut out);
    for i in 3..10 {
        assert!(s.can_take(), "{i}");
        s.publish_request(msg("t", QoS::AtLeastOnce), i, &mut out);
    }
}

#[test]
fn qos_and_retain_are_fitted_to_the_grant() {
    let t0 = Instant::now();
    let mut s = session(0, t0);
    let mut out = Rec::default();
    connect5(&mut s, grant(), t0, &mut out);
    let mut m = msg("t", QoS::ExactlyOnce);
    m.retain = true;
    s.publish_request(m, 1, &mut out);
    match out.take().as_slice() {
        [Packet::Publish(p)] => {
            assert_eq!(p.qos, rumqttc::mqttbytes::QoS::AtLeastOnce);
            assert!(!p.retain);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_message_over_the_brokers_maximum_packet_size_is_rejected_properties_counted() {
    let t0 = Instant::now();
    let mut s = session(0, t0);
    let mut out = Rec::default();
    connect5(&mut s, grant(), t0, &mut out);
    let mut m = msg("t", QoS::AtLeastOnce);
    m.payload = vec![0u8; 150].into();
    s.publish_request(m.clone(), 1, &mut out);
    assert!(out.completed.is_empty(), "150 bytes fit in 200");
    m.properties = Some(MessageProperties::from(PropertyFields {
        user_properties: vec![("k".into(), "v".repeat(60))],
        ..PropertyFields::default()
    }));
    s.publish_request(m, 2, &mut out);
    assert!(
        matches!(out.completed.as_slice(), [(2, Err(LinkError::Rejected(r)))] if r.contains("200")),
        "{:?}",
        out.completed
    );
}

#[test]
fn publishes_and_subscribes_go_out_with_properties_and_options() {
    let t0 = Instant::now();
    let mut s = session(0, t0);
    let mut out = Rec::default();
    connect5(&mut s, grant(), t0, &mut out);
    let props = MessageProperties::from(PropertyFields {
        content_type: Some("a/b".into()),
        ..PropertyFields::default()
    });
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let mut m = msg("t", qos);
        m.properties = Some(props.clone());
        s.publish_request(m, 1, &mut out);
    }
    assert_eq!(
        out.properties,
        vec![Some(props.clone()), Some(props.clone())]
    );
    // A resend after a reconnect keeps them.
    s.disconnected();
    out.take();
    out.properties.clear();
    connect5(
        &mut s,
        Grant {
            session_present: true,
            ..grant()
        },
        t0,
        &mut out,
    );
    assert_eq!(out.properties, vec![Some(props)]);
    let o = SubscribeOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: false,
        retain_handling: crate::protocol::RetainHandling::SendIfNew,
    };
    let (tx, _rx) = oneshot::channel();
    s.subscribe(vec![("f/#".into(), o)], tx, &mut out);
    assert_eq!(out.options, vec![vec![o]]);
}

#[test]
fn a_refused_puback_is_a_rejected_drop_and_quota_exceeded_keeps_the_message() {
    let t0 = Instant::now();
    let mut s = session(0, t0);
    let mut out = Rec::default();
    connect5(&mut s, grant(), t0, &mut out);
    s.publish_request(msg("a", QoS::AtLeastOnce), 1, &mut out);
    s.publish_request(msg("b", QoS::AtLeastOnce), 2, &mut out);
    let sent = pkids(&out.take());
    assert_eq!(
        s.on_refused(
            AckKind::PubAck,
            sent[0],
            ReasonCode::NotAuthorized,
            &mut out
        ),
        Ok(())
    );
    assert!(
        matches!(out.completed.as_slice(), [(1, Err(LinkError::Rejected(r)))] if r.contains("0x87")),
        "{:?}",
        out.completed
    );
    assert_eq!(s.inflight(), 1);
    // 0x97: nothing completes; the message waits for the next connection.
    assert_eq!(
        s.on_refused(
            AckKind::PubAck,
            sent[1],
            ReasonCode::QuotaExceeded,
            &mut out
        ),
        Err(QuotaExceeded)
    );
    assert_eq!(out.completed.len(), 1);
    s.disconnected();
    connect5(&mut s, grant(), t0, &mut out);
    let resent = out.take();
    assert!(
        matches!(resent.as_slice(), [Packet::Publish(p)] if p.topic == "b"),
        "{resent:?}"
    );
}

#[test]
fn a_refused_pubrec_ends_the_qos2_flow_without_pubrel() {
    let t0 = Instant::now();
    let mut s = session(0, t0);
    let mut out = Rec::default();
    connect5(
        &mut s,
        Grant {
            max_qos: QoS::ExactlyOnce,
            ..grant()
        },
        t0,
        &mut out,
    );
    s.publish_request(msg("q2", QoS::ExactlyOnce), 1, &mut out);
    let sent = pkids(&out.take());
    s.on_refused(
        AckKind::PubRec,
        sent[0],
        ReasonCode::TopicNameInvalid,
        &mut out,
    )
    .unwrap();
    assert!(out.take().is_empty(), "no PUBREL after a refused PUBREC");
    assert!(matches!(
        out.completed.as_slice(),
        [(1, Err(LinkError::Rejected(_)))]
    ));
    assert!(s.is_idle());
    // The QoS 2 limit (1) was released: the next QoS 2 goes out at once.
    s.publish_request(msg("q2b", QoS::ExactlyOnce), 2, &mut out);
    assert_eq!(pkids(&out.take()).len(), 1);
}

#[test]
fn the_servers_keep_alive_replaces_ours_for_the_connection() {
    let t0 = Instant::now();
    let mut s = session(60, t0);
    let mut out = Rec::default();
    connect5(&mut s, grant(), t0, &mut out);
    assert_eq!(s.next_keepalive(false), Some(t0 + Duration::from_secs(4)));
    s.disconnected();
    connect(&mut s, false, t0, &mut out);
    assert_eq!(s.next_keepalive(false), Some(t0 + Duration::from_secs(60)));
}

#[test]
fn incoming_properties_reach_the_application() {
    let t0 = Instant::now();
    let mut s = session(0, t0);
    let mut out = Rec::default();
    connect5(&mut s, grant(), t0, &mut out);
    let props = MessageProperties::from(PropertyFields {
        correlation_data: Some(bytes::Bytes::from_static(b"id")),
        ..PropertyFields::default()
    });
    let mut p = Publish::new("in", rumqttc::mqttbytes::QoS::AtLeastOnce, "x");
    p.pkid = 1;
    let (m, token) = s
        .on_publish(p, Some(props.clone()), t0, &mut out)
        .expect("delivered");
    assert_eq!(m.properties, Some(props));
    assert!(token.is_some());
}

/// (topic, pkid, dup) of each PUBLISH in `packets`.
fn sent_publishes(packets: &[Packet]) -> Vec<(String, u16, bool)> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((p.topic.clone(), p.pkid, p.dup)),
            _ => None,
        })
        .collect()
}

/// A broker that kept our session and now grants `receive_maximum`.
fn resumed(receive_maximum: u16, max_packet_size: Option<u32>) -> Grant {
    Grant {
        session_present: true,
        receive_maximum,
        max_packet_size,
        max_qos: QoS::ExactlyOnce,
        retain_available: true,
        ..grant()
    }
}

#[test]
fn a_resumed_session_resends_no_more_than_the_new_receive_maximum_at_once() {
    let t0 = Instant::now();
    let mut s = session(0, t0);
    let mut out = Rec::default();
    connect5(&mut s, resumed(10, None), t0, &mut out);
    for (i, t) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        s.publish_request(msg(t, QoS::AtLeastOnce), i as u32, &mut out);
    }
    let ids = pkids(&out.take());
    assert_eq!(ids.len(), 5);
    s.disconnected();

    // The broker now takes 2 at once: a and b go, the rest wait in order.
    connect5(&mut s, resumed(2, None), t0, &mut out);
    let first = sent_publishes(&out.take());
    assert_eq!(
        first,
        [("a".into(), ids[0], true), ("b".into(), ids[1], true)]
    );
    assert!(!s.can_take(), "nothing new before the resends");
    s.on_packet(Packet::PubAck(PubAck::new(ids[0])), t0, &mut out)
        .unwrap();
    assert_eq!(sent_publishes(&out.take()), [("c".into(), ids[2], true)]);
    // The broker acknowledges e before we resent it (it had it): e is not
    // sent again and d goes out when a slot frees.
    s.on_packet(Packet::PubAck(PubAck::new(ids[4])), t0, &mut out)
        .unwrap();
    assert!(sent_publishes(&out.take()).is_empty(), "b and c in flight");
    s.on_packet(Packet::PubAck(PubAck::new(ids[1])), t0, &mut out)
        .unwrap();
    assert_eq!(sent_publishes(&out.take()), [("d".into(), ids[3], true)]);
    for id in [ids[2], ids[3]] {
        s.on_packet(Packet::PubAck(PubAck::new(id)), t0, &mut out)
            .unwrap();
    }
    assert!(sent_publishes(&out.take()).is_empty());
    let mut done: Vec<u32> = out.completed.iter().map(|(i, _)| *i).collect();
    done.sort_unstable();
    assert_eq!(done, [0, 1, 2, 3, 4]);
    assert!(out.completed.iter().all(|(_, r)| r.is_ok()));
    assert!(s.can_take() && s.is_idle());
}

#[test]
fn a_stashed_qos2_publish_waits_behind_the_resends() {
    let t0 = Instant::now();
    let mut s = session(0, t0);
    let mut out = Rec::default();
    connect5(&mut s, resumed(10, None), t0, &mut out);
    s.publish_request(msg("q2", QoS::ExactlyOnce), 1, &mut out);
    s.publish_request(msg("q1", QoS::AtLeastOnce), 2, &mut out);
    let ids = pkids(&out.take());
    // The QoS 2 limit (1) is taken: the next QoS 2 publish is stashed.
    s.publish_request(msg("later", QoS::ExactlyOnce), 3, &mut out);
    assert!(out.take().is_empty());
    s.disconnected();
    connect5(&mut s, resumed(1, None), t0, &mut out);
    assert_eq!(sent_publishes(&out.take()), [("q2".into(), ids[0], true)]);
    s.on_packet(Packet::PubRec(PubRec::new(ids[0])), t0, &mut out)
        .unwrap();
    out.take();
    s.on_packet(Packet::PubComp(PubComp::new(ids[0])), t0, &mut out)
        .unwrap();
    // q1 (resent) first; "later" only once the window has room again.
    assert_eq!(sent_publishes(&out.take()), [("q1".into(), ids[1], true)]);
    s.on_packet(Packet::PubAck(PubAck::new(ids[1])), t0, &mut out)
        .unwrap();
    let last = sent_publishes(&out.take());
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].0, "later");
}

#[test]
fn a_resumed_publish_over_the_new_maximum_packet_size_is_dropped_as_rejected() {
    let t0 = Instant::now();
    let mut s = session(0, t0);
    let mut out = Rec::default();
    connect5(&mut s, resumed(10, Some(1000)), t0, &mut out);
    let mut big = msg("big", QoS::AtLeastOnce);
    big.payload = vec![0u8; 150].into();
    let mut big2 = msg("big2", QoS::ExactlyOnce);
    big2.payload = vec![0u8; 150].into();
    s.publish_request(msg("small", QoS::AtLeastOnce), 1, &mut out);
    s.publish_request(big, 2, &mut out);
    s.publish_request(big2, 3, &mut out);
    let ids = pkids(&out.take());
    assert_eq!(ids.len(), 3);
    s.disconnected();

    // Now 100 bytes at most: the large ones can never go; they end as
    // `rejected` (a counted drop) instead of staying in flight.
    connect5(&mut s, resumed(10, Some(100)), t0, &mut out);
    assert_eq!(
        sent_publishes(&out.take()),
        [("small".into(), ids[0], true)]
    );
    assert!(
        matches!(
            out.completed.as_slice(),
            [(2, Err(LinkError::Rejected(a))), (3, Err(LinkError::Rejected(b)))]
                if a.contains("100") && b.contains("100")
        ),
        "{:?}",
        out.completed
    );
    assert_eq!(s.inflight(), 1);
    s.on_packet(Packet::PubAck(PubAck::new(ids[0])), t0, &mut out)
        .unwrap();
    assert!(s.is_idle());
}

#[test]
fn a_qos2_limit_learned_from_the_endpoint_bounds_qos2_on_3_1_1() {
    let t0 = Instant::now();
    let mut s = ClientSession::new(
        SessionConfig {
            name: "b".into(),
            inflight: 100,
            inflight_qos2: 20,
            max_packet_size: 1024,
        },
        Keepalive::from_secs(0),
        t0,
    );
    let mut out = Rec::default();
    let learned = Grant {
        exactly_once_limit: Some(2),
        ..Grant::v3(false)
    };
    s.connected("mqtt://b:1883".into(), learned, false, None, t0, &mut out);
    for i in 0..3 {
        s.publish_request(msg("t", QoS::ExactlyOnce), i, &mut out);
    }
    let sent = pkids(&out.take());
    assert_eq!(sent.len(), 2, "2 QoS 2 flows at once, not 20");
    assert!(!s.can_take(), "the third waits");
    // QoS 1 is not bound by it: the whole window is there once it goes.
    s.on_packet(Packet::PubRec(PubRec::new(sent[0])), t0, &mut out)
        .unwrap();
    s.on_packet(Packet::PubComp(PubComp::new(sent[0])), t0, &mut out)
        .unwrap();
    assert_eq!(pkids(&out.take()).len(), 1, "the third goes");
    for i in 3..50 {
        s.publish_request(msg("t", QoS::AtLeastOnce), i, &mut out);
    }
    assert_eq!(pkids(&out.take()).len(), 47);
}

proptest::proptest! {
    /// Whatever the broker acknowledges, in whatever order (messages it got
    /// on the earlier connection included), a resumed session never has
    /// more PUBLISHes out on the new connection than its receive maximum,
    /// never sends one twice or after its ack, and completes each once.
    #[test]
    fn resends_stay_within_the_new_receive_maximum(
        n in 1usize..10,
        window in 1u16..5,
        picks in proptest::collection::vec(0usize..10, 0..20),
    ) {
        let t0 = Instant::now();
        let mut s = session(0, t0);
        let mut out = Rec::default();
        connect5(&mut s, resumed(10, None), t0, &mut out);
        for i in 0..n {
            s.publish_request(msg("t", QoS::AtLeastOnce), i as u32, &mut out);
        }
        let mut open: Vec<u16> = pkids(&out.take());
        s.disconnected();
        connect5(&mut s, resumed(window, None), t0, &mut out);
        let mut out_now: Vec<u16> = Vec::new();
        let mut acked: Vec<u16> = Vec::new();
        let step = |out: &mut Rec, out_now: &mut Vec<u16>, acked: &[u16]| {
            for id in pkids(&out.take()) {
                proptest::prop_assert!(!out_now.contains(&id), "sent twice: {}", id);
                proptest::prop_assert!(!acked.contains(&id), "sent after its ack: {}", id);
                out_now.push(id);
            }
            proptest::prop_assert!(out_now.len() <= usize::from(window));
            Ok(())
        };
        step(&mut out, &mut out_now, &acked)?;
        for pick in picks.into_iter().chain(std::iter::repeat_n(0, n)) {
            if open.is_empty() {
                break;
            }
            let id = open.remove(pick % open.len());
            s.on_packet(Packet::PubAck(PubAck::new(id)), t0, &mut out).unwrap();
            out_now.retain(|&o| o != id);
            acked.push(id);
            step(&mut out, &mut out_now, &acked)?;
        }
        let mut done: Vec<u32> = out.completed.iter().map(|(i, _)| *i).collect();
        done.sort_unstable();
        proptest::prop_assert_eq!(done, (0..n as u32).collect::<Vec<_>>());
        proptest::prop_assert!(s.is_idle());
    }
}
