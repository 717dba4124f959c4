//! Unit tests of the outgoing and incoming flows.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::mqttbytes::QoS as WQ;
use rumqttc::mqttbytes::v4::{Packet, PubAck, PubComp, PubRec, PubRel, Publish};

use super::*;
use crate::protocol::AckToken;
use crate::protocol::message::{Message, QoS};

fn msg(topic: &str, qos: QoS) -> Message {
    Message::new(topic, Bytes::from_static(b"p"), qos, false)
}

fn pkid_of(p: &Packet) -> u16 {
    match p {
        Packet::Publish(p) => p.pkid,
        Packet::PubRel(p) => p.pkid,
        other => panic!("unexpected {other:?}"),
    }
}

fn incoming_publish(topic: &str, qos: WQ, pkid: u16, dup: bool) -> Publish {
    let mut p = Publish::new(topic, qos, b"x".to_vec());
    p.pkid = pkid;
    p.dup = dup;
    p
}

fn token(action: IncomingAction) -> AckToken {
    match action {
        IncomingAction::Deliver { token: Some(t), .. } => t,
        other => panic!("expected a delivery with token, got {other:?}"),
    }
}

#[test]
fn qos0_publish_keeps_no_state_and_returns_the_token() {
    let mut out = Outgoing::new(1);
    let (p1, done) = out.publish(msg("a", QoS::AtLeastOnce), 1).unwrap();
    assert_eq!(done, None);
    assert!(!out.has_room());
    // QoS 0 ignores the full window.
    let (p0, done) = out.publish(msg("b", QoS::AtMostOnce), 2).unwrap();
    assert_eq!(done, Some(2));
    assert_eq!(pkid_of(&p0), 0);
    assert_eq!(pkid_of(&p1), 1);
    assert_eq!(out.len(), 1);
}

#[test]
fn qos1_flow_completes_on_puback() {
    let mut out = Outgoing::new(10);
    let (p, _) = out.publish(msg("a", QoS::AtLeastOnce), "tok").unwrap();
    let Packet::Publish(publish) = &p else {
        panic!()
    };
    assert_eq!(
        (publish.qos, publish.dup, publish.topic.as_str()),
        (WQ::AtLeastOnce, false, "a")
    );
    // A PUBCOMP or PUBREC for a QoS 1 flow is a violation that changes nothing.
    assert!(matches!(
        out.on_pubrec(publish.pkid),
        Err(ProtocolViolation::UnexpectedAck { .. })
    ));
    assert!(matches!(
        out.on_pubcomp(publish.pkid),
        Err(ProtocolViolation::UnexpectedAck { .. })
    ));
    assert_eq!(out.on_puback(publish.pkid), Ok("tok"));
    assert!(out.is_empty());
    assert_eq!(
        out.on_puback(publish.pkid),
        Err(ProtocolViolation::UnknownPacketId {
            kind: AckKind::PubAck,
            pkid: publish.pkid
        })
    );
}

#[test]
fn qos2_flow_publish_pubrec_pubrel_pubcomp() {
    let mut out = Outgoing::new(10);
    let (p, _) = out.publish(msg("a", QoS::ExactlyOnce), 7u32).unwrap();
    let id = pkid_of(&p);
    assert!(matches!(
        out.on_puback(id),
        Err(ProtocolViolation::UnexpectedAck { .. })
    ));
    // PUBCOMP before PUBREC: violation, flow unchanged.
    assert!(matches!(
        out.on_pubcomp(id),
        Err(ProtocolViolation::UnexpectedAck { .. })
    ));
    assert_eq!(out.on_pubrec(id), Ok(Packet::PubRel(PubRel::new(id))));
    // A repeated PUBREC gets the PUBREL again.
    assert_eq!(out.on_pubrec(id), Ok(Packet::PubRel(PubRel::new(id))));
    assert_eq!(out.on_pubcomp(id), Ok(7));
    assert!(out.is_empty());
    assert!(matches!(
        out.on_pubcomp(id),
        Err(ProtocolViolation::UnknownPacketId { .. })
    ));
}

#[test]
fn full_window_gives_message_and_token_back() {
    let mut out = Outgoing::new(2);
    out.publish(msg("a", QoS::AtLeastOnce), 1).unwrap();
    out.publish(msg("b", QoS::ExactlyOnce), 2).unwrap();
    let full = out.publish(msg("c", QoS::AtLeastOnce), 3).unwrap_err();
    assert_eq!((full.message.topic.as_str(), full.token), ("c", 3));
    assert_eq!(out.len(), 2);
    assert_eq!(out.window(), 2);
}

#[test]
fn resume_with_session_resends_dup_publish_and_pubrel_in_order() {
    let mut out = Outgoing::new(10);
    let ids: Vec<u16> = ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let qos = if i % 2 == 0 {
                QoS::ExactlyOnce
            } else {
                QoS::AtLeastOnce
            };
            pkid_of(&out.publish(msg(t, qos), i).unwrap().0)
        })
        .collect();
    out.on_pubrec(ids[0]).unwrap(); // "a" past PUBREC
    out.on_puback(ids[1]).unwrap(); // "b" done
    let resent = out.resume(true);
    assert_eq!(resent.len(), 3);
    assert_eq!(resent[0], Packet::PubRel(PubRel::new(ids[0])));
    for (p, (id, topic)) in resent[1..].iter().zip([(ids[2], "c"), (ids[3], "d")]) {
        let Packet::Publish(p) = p else {
            panic!("{p:?}")
        };
        assert!(p.dup, "resend must set DUP");
        assert_eq!((p.pkid, p.topic.as_str()), (id, topic));
    }
}

#[test]
fn resume_without_session_republishes_everything_as_new() {
    let mut out = Outgoing::new(10);
    let a = pkid_of(&out.publish(msg("a", QoS::ExactlyOnce), 'a').unwrap().0);
    let b = pkid_of(&out.publish(msg("b", QoS::AtLeastOnce), 'b').unwrap().0);
    out.on_pubrec(a).unwrap();
    let again = out.resume(false);
    let topics: Vec<(&str, bool, u16)> = again
        .iter()
        .map(|p| match p {
            Packet::Publish(p) => (p.topic.as_str(), p.dup, p.pkid),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(topics, [("a", false, a), ("b", false, b)]);
    // The QoS 2 flow restarted: it now needs a PUBREC again.
    assert!(matches!(
        out.on_pubcomp(a),
        Err(ProtocolViolation::UnexpectedAck { .. })
    ));
    assert!(out.on_pubrec(a).is_ok());
    assert_eq!(out.on_pubcomp(a), Ok('a'));
    assert_eq!(out.on_puback(b), Ok('b'));
}

#[test]
fn drain_returns_everything_in_order_and_frees_ids() {
    let mut out = Outgoing::new(3);
    out.publish(msg("a", QoS::AtLeastOnce), 1).unwrap();
    out.publish(msg("b", QoS::ExactlyOnce), 2).unwrap();
    out.resume(true); // sets DUP on the stored copies
    let drained = out.drain();
    let got: Vec<(&str, bool, i32)> = drained
        .iter()
        .map(|(m, t)| (m.topic.as_str(), m.dup, *t))
        .collect();
    assert_eq!(got, [("a", false, 1), ("b", false, 2)]);
    assert!(out.is_empty() && out.has_room());
}

#[test]
fn drain_unreceived_keeps_only_flows_the_peer_has_not_acknowledged() {
    let mut out = Outgoing::new(4);
    let (p1, _) = out.publish(msg("q1", QoS::AtLeastOnce), 1).unwrap();
    out.publish(msg("q2-sent", QoS::ExactlyOnce), 2).unwrap();
    let (p3, _) = out
        .publish(msg("q2-received", QoS::ExactlyOnce), 3)
        .unwrap();
    out.publish(msg("q1-pending", QoS::AtLeastOnce), 4).unwrap();
    assert_eq!(out.on_puback(pkid_of(&p1)).unwrap(), 1);
    out.on_pubrec(pkid_of(&p3)).unwrap();
    let got: Vec<(String, i32)> = out
        .drain_unreceived()
        .into_iter()
        .map(|(m, t)| (m.topic.as_str().to_owned(), t))
        .collect();
    assert_eq!(
        got,
        [("q2-sent".to_owned(), 2), ("q1-pending".to_owned(), 4)]
    );
    assert!(out.is_empty() && out.has_room());
    // Every packet id is free again, the dropped flow's (past PUBREC) too:
    // each can be claimed by a restored flow.
    for pkid in [pkid_of(&p1), pkid_of(&p3)] {
        assert!(
            out.restore(msg("again", QoS::ExactlyOnce), pkid, false, 5)
                .is_ok()
        );
    }
}

#[test]
fn reserved_ids_never_collide_with_publishes() {
    let mut out: Outgoing<()> = Outgoing::new(10);
    let sub = out.reserve_id().unwrap();
    let (p, _) = out.publish(msg("a", QoS::AtLeastOnce), ()).unwrap();
    assert_ne!(pkid_of(&p), sub);
    // A PUBACK for the reserved id is not a publish completion...
    assert!(out.on_puback(sub).is_err());
    // ...and release_id only frees reserved ids.
    assert!(!out.release_id(pkid_of(&p)));
    assert!(out.release_id(sub));
    assert!(!out.release_id(sub));
    assert_eq!(out.on_puback(pkid_of(&p)), Ok(()));
}

#[test]
fn incoming_qos0_is_delivered_without_token() {
    let mut inc = Incoming::new();
    let action = inc.on_publish(
        incoming_publish("t", WQ::AtMostOnce, 0, false),
        Instant::now(),
    );
    let IncomingAction::Deliver { message, token } = action else {
        panic!()
    };
    assert_eq!(
        (message.topic.as_str(), message.qos, token),
        ("t", QoS::AtMostOnce, None)
    );
    assert_eq!(inc.pending_len(), 0);
}

#[test]
fn incoming_acks_go_out_in_arrival_order() {
    let mut inc = Incoming::new();
    let now = Instant::now();
    let t1 = token(inc.on_publish(incoming_publish("a", WQ::AtLeastOnce, 10, false), now));
    let t2 = token(inc.on_publish(
        incoming_publish("b", WQ::ExactlyOnce, 11, false),
        now + Duration::from_secs(1),
    ));
    let t3 = token(inc.on_publish(incoming_publish("c", WQ::AtLeastOnce, 12, false), now));
    assert_eq!(inc.oldest_pending_since(), Some(now));
    assert!(inc.ack(t3).is_empty(), "held behind earlier messages");
    assert!(inc.ack(t3).is_empty(), "repeated ack is ignored");
    assert_eq!(inc.ack(t1), vec![Packet::PubAck(PubAck::new(10))]);
    assert_eq!(
        inc.oldest_pending_since(),
        Some(now + Duration::from_secs(1))
    );
    assert_eq!(
        inc.ack(t2),
        vec![
            Packet::PubRec(PubRec::new(11)),
            Packet::PubAck(PubAck::new(12))
        ]
    );
    assert_eq!(inc.pending_len(), 0);
    assert_eq!(inc.oldest_pending_since(), None);
}

#[test]
fn incoming_qos2_duplicates_are_suppressed() {
    let mut inc = Incoming::new();
    let now = Instant::now();
    let t = token(inc.on_publish(incoming_publish("a", WQ::ExactlyOnce, 5, false), now));
    // Redelivered while the app still holds it: no second delivery, no PUBREC yet.
    assert_eq!(
        inc.on_publish(incoming_publish("a", WQ::ExactlyOnce, 5, true), now),
        IncomingAction::Duplicate { resend: None }
    );
    assert_eq!(inc.ack(t), vec![Packet::PubRec(PubRec::new(5))]);
    // Redelivered after the PUBREC went out: PUBREC again, still no delivery.
    assert_eq!(
        inc.on_publish(incoming_publish("a", WQ::ExactlyOnce, 5, true), now),
        IncomingAction::Duplicate {
            resend: Some(Packet::PubRec(PubRec::new(5)))
        }
    );
    assert_eq!(inc.on_pubrel(5), Packet::PubComp(PubComp::new(5)));
    assert_eq!(inc.qos2_len(), 0);
    // Released: the id may now carry a new message.
    assert!(matches!(
        inc.on_publish(incoming_publish("b", WQ::ExactlyOnce, 5, false), now),
        IncomingAction::Deliver { .. }
    ));
    // PUBREL for an unknown id still gets a PUBCOMP.
    assert_eq!(inc.on_pubrel(999), Packet::PubComp(PubComp::new(999)));
}

#[test]
fn reset_connection_ignores_stale_tokens_and_keeps_pubrecd_ids() {
    let mut inc = Incoming::new();
    let now = Instant::now();
    let done = token(inc.on_publish(incoming_publish("a", WQ::ExactlyOnce, 1, false), now));
    assert_eq!(inc.ack(done), vec![Packet::PubRec(PubRec::new(1))]);
    let held = token(inc.on_publish(incoming_publish("b", WQ::ExactlyOnce, 2, false), now));
    let q1 = token(inc.on_publish(incoming_publish("c", WQ::AtLeastOnce, 3, false), now));
    inc.reset_connection();
    assert_eq!(inc.generation(), 1);
    assert_eq!(inc.pending_len(), 0);
    // Acks from the old connection are ignored.
    assert!(inc.ack(held).is_empty());
    assert!(inc.ack(q1).is_empty());
    // The PUBREC'd id is remembered: a redelivery is a duplicate.
    assert_eq!(
        inc.on_publish(incoming_publish("a", WQ::ExactlyOnce, 1, true), now),
        IncomingAction::Duplicate {
            resend: Some(Packet::PubRec(PubRec::new(1)))
        }
    );
    // The one never PUBREC'd is delivered again, with a new-generation token.
    let again = token(inc.on_publish(incoming_publish("b", WQ::ExactlyOnce, 2, true), now));
    assert_eq!(again.generation, 1);
    assert_eq!(inc.ack(again), vec![Packet::PubRec(PubRec::new(2))]);
    // A fresh session forgets everything.
    inc.clear_session();
    assert_eq!(inc.qos2_len(), 0);
    assert!(matches!(
        inc.on_publish(incoming_publish("a", WQ::ExactlyOnce, 1, false), now),
        IncomingAction::Deliver { .. }
    ));
}

#[test]
fn pubrel_for_a_held_message_forgets_the_id_but_keeps_order() {
    let mut inc = Incoming::new();
    let now = Instant::now();
    let t = token(inc.on_publish(incoming_publish("a", WQ::ExactlyOnce, 8, false), now));
    assert_eq!(inc.on_pubrel(8), Packet::PubComp(PubComp::new(8)));
    // A reused id is a new message, not a duplicate.
    let t2 = token(inc.on_publish(incoming_publish("b", WQ::ExactlyOnce, 8, false), now));
    assert_eq!(inc.ack(t2), vec![]);
    assert_eq!(
        inc.ack(t),
        vec![
            Packet::PubRec(PubRec::new(8)),
            Packet::PubRec(PubRec::new(8))
        ]
    );
}

#[test]
fn incoming_message_fields_are_kept() {
    let mut inc = Incoming::new();
    let mut p = incoming_publish("x/y", WQ::AtLeastOnce, 3, true);
    p.retain = true;
    let IncomingAction::Deliver {
        message,
        token: Some(t),
    } = inc.on_publish(p, Instant::now())
    else {
        panic!()
    };
    assert_eq!(message.topic, "x/y");
    assert!(message.dup && message.retain);
    assert_eq!(
        t,
        AckToken {
            generation: 0,
            id: 0,
            pkid: 3,
            qos: QoS::AtLeastOnce,
        }
    );
}
