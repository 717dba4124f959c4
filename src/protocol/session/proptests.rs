//! Property tests of the session state machines against simple models.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use rumqttc::mqttbytes::QoS as WQ;
use rumqttc::mqttbytes::v4::{Packet, PubRel, Publish};

use super::*;
use crate::protocol::AckToken;
use crate::protocol::message::{Message, QoS};

#[derive(Debug, Clone)]
enum OutOp {
    Publish(u8),
    PubAck(prop::sample::Index),
    PubRec(prop::sample::Index),
    PubComp(prop::sample::Index),
    StrayAck(u8, u16),
    Resume(bool),
    Reserve,
    Release(prop::sample::Index),
    Drain,
}

fn out_op() -> impl Strategy<Value = OutOp> {
    prop_oneof![
        4 => (0u8..3).prop_map(OutOp::Publish),
        2 => any::<prop::sample::Index>().prop_map(OutOp::PubAck),
        2 => any::<prop::sample::Index>().prop_map(OutOp::PubRec),
        2 => any::<prop::sample::Index>().prop_map(OutOp::PubComp),
        1 => (0u8..3, any::<u16>()).prop_map(|(k, id)| OutOp::StrayAck(k, id)),
        1 => any::<bool>().prop_map(OutOp::Resume),
        1 => Just(OutOp::Reserve),
        1 => any::<prop::sample::Index>().prop_map(OutOp::Release),
        1 => Just(OutOp::Drain),
    ]
}

/// Model flow: (pkid, qos 1 or 2, released (past PUBREC), token).
type Flow = (u16, u8, bool, u64);

fn qos(q: u8) -> QoS {
    QoS::from_u8(q).unwrap_or(QoS::AtMostOnce)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random operations against a model: ids are never reused while in
    /// flight (flows or reserved), acks complete exactly the right flow,
    /// resume resends in order with DUP (or re-publishes as new).
    #[test]
    fn outgoing_matches_model(window in 1usize..8, ops in proptest::collection::vec(out_op(), 1..200)) {
        let mut out: Outgoing<u64> = Outgoing::new(window);
        let mut model: Vec<Flow> = Vec::new();
        let mut reserved: Vec<u16> = Vec::new();
        let mut next_token = 0u64;
        for op in ops {
            match op {
                OutOp::Publish(q) => {
                    next_token += 1;
                    let m = Message::new("t", Bytes::new(), qos(q), false);
                    match out.publish(m, next_token) {
                        Ok((Packet::Publish(p), done)) => {
                            if q == 0 {
                                prop_assert_eq!(done, Some(next_token));
                                prop_assert_eq!(p.pkid, 0);
                            } else {
                                prop_assert_eq!(done, None);
                                prop_assert!(model.len() < window);
                                prop_assert!(p.pkid != 0 && !p.dup);
                                let in_use = model.iter().any(|f| f.0 == p.pkid) || reserved.contains(&p.pkid);
                                prop_assert!(!in_use, "packet id {} reused while in flight", p.pkid);
                                model.push((p.pkid, q, false, next_token));
                            }
                        }
                        Ok((other, _)) => prop_assert!(false, "publish returned {:?}", other),
                        Err(full) => {
                            prop_assert!(q != 0 && model.len() >= window);
                            prop_assert_eq!(full.token, next_token);
                        }
                    }
                }
                OutOp::PubAck(i) | OutOp::PubRec(i) | OutOp::PubComp(i) if model.is_empty() => { let _ = i; }
                OutOp::PubAck(i) => {
                    let at = i.index(model.len());
                    let (pkid, q, _, tok) = model[at];
                    let got = out.on_puback(pkid);
                    if q == 1 {
                        prop_assert_eq!(got, Ok(tok));
                        model.remove(at);
                    } else {
                        prop_assert!(got.is_err());
                    }
                }
                OutOp::PubRec(i) => {
                    let at = i.index(model.len());
                    let (pkid, q, _, _) = model[at];
                    let got = out.on_pubrec(pkid);
                    if q == 2 {
                        prop_assert_eq!(got, Ok(Packet::PubRel(PubRel::new(pkid))));
                        model[at].2 = true;
                    } else {
                        prop_assert!(got.is_err());
                    }
                }
                OutOp::PubComp(i) => {
                    let at = i.index(model.len());
                    let (pkid, _, released, tok) = model[at];
                    let got = out.on_pubcomp(pkid);
                    if released {
                        prop_assert_eq!(got, Ok(tok));
                        model.remove(at);
                    } else {
                        prop_assert!(got.is_err());
                    }
                }
                OutOp::StrayAck(kind, pkid) => {
                    if !model.iter().any(|f| f.0 == pkid) {
                        let got = match kind {
                            0 => out.on_puback(pkid).map(drop),
                            1 => out.on_pubrec(pkid).map(drop),
                            _ => out.on_pubcomp(pkid).map(drop),
                        };
                        let is_unknown = matches!(got, Err(ProtocolViolation::UnknownPacketId { .. }));
                        prop_assert!(is_unknown);
                    }
                }
                OutOp::Resume(session_present) => {
                    let packets = out.resume(session_present);
                    prop_assert_eq!(packets.len(), model.len());
                    for (p, flow) in packets.iter().zip(model.iter_mut()) {
                        match p {
                            Packet::Publish(p) => {
                                prop_assert_eq!(p.pkid, flow.0);
                                prop_assert!(!flow.2 || !session_present);
                                prop_assert_eq!(p.dup, session_present, "DUP on resend iff session resumed");
                            }
                            Packet::PubRel(r) => {
                                prop_assert!(session_present && flow.2);
                                prop_assert_eq!(r.pkid, flow.0);
                            }
                            other => prop_assert!(false, "resume sent {:?}", other),
                        }
                        if !session_present {
                            flow.2 = false;
                        }
                    }
                }
                OutOp::Drain => {
                    let drained: Vec<(bool, u64)> = out.drain().into_iter().map(|(m, t)| (m.dup, t)).collect();
                    let want: Vec<(bool, u64)> = model.drain(..).map(|f| (false, f.3)).collect();
                    prop_assert_eq!(drained, want, "drain returns every token in publish order");
                }
                OutOp::Reserve => {
                    if let Some(id) = out.reserve_id() {
                        prop_assert!(!model.iter().any(|f| f.0 == id) && !reserved.contains(&id));
                        reserved.push(id);
                    }
                }
                OutOp::Release(i) => {
                    if !reserved.is_empty() {
                        let id = reserved.remove(i.index(reserved.len()));
                        prop_assert!(out.release_id(id));
                    }
                }
            }
            prop_assert_eq!(out.len(), model.len());
            prop_assert_eq!(out.has_room(), model.len() < window);
        }
    }

    /// Whatever order the application acks in, PUBACK/PUBREC come out in
    /// arrival order, each exactly once.
    #[test]
    fn incoming_acks_follow_arrival_order(
        qos2 in proptest::collection::vec(any::<bool>(), 1..60),
        order in any::<u64>(),
    ) {
        let mut inc = Incoming::new();
        let now = Instant::now();
        let mut tokens = Vec::new();
        for (i, q2) in qos2.iter().enumerate() {
            let pkid = u16::try_from(i + 1).unwrap_or(1);
            let mut p = Publish::new("t", if *q2 { WQ::ExactlyOnce } else { WQ::AtLeastOnce }, vec![]);
            p.pkid = pkid;
            match inc.on_publish(p, now + Duration::from_millis(i as u64)) {
                IncomingAction::Deliver { token: Some(t), .. } => tokens.push(t),
                other => prop_assert!(false, "{:?}", other),
            }
        }
        // A permutation from the seed (Fisher-Yates with a simple LCG).
        let mut perm: Vec<usize> = (0..tokens.len()).collect();
        let mut s = order | 1;
        for i in (1..perm.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            perm.swap(i, (s >> 33) as usize % (i + 1));
        }
        let mut emitted = Vec::new();
        for &i in &perm {
            let before = emitted.len();
            emitted.extend(inc.ack(tokens[i]));
            // Everything emitted so far is a prefix of arrival order.
            prop_assert!(emitted.len() >= before);
        }
        let want: Vec<(bool, u16)> = qos2.iter().enumerate().map(|(i, q)| (*q, (i + 1) as u16)).collect();
        let got: Vec<(bool, u16)> = emitted.iter().map(|p| match p {
            Packet::PubAck(a) => (false, a.pkid),
            Packet::PubRec(r) => (true, r.pkid),
            _ => (false, 0),
        }).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(inc.pending_len(), 0);
    }

    /// Random peer packet sequences on the receiving side: never a panic,
    /// never two deliveries of one QoS 2 packet id before its PUBREL, a
    /// PUBREC resent exactly for ids already PUBREC'd, and only those ids
    /// survive a reconnect.
    #[test]
    fn incoming_random_peer_sequences(ops in proptest::collection::vec((0u8..6, 0u16..6, 0u8..3, any::<prop::sample::Index>()), 1..200)) {
        let mut inc = Incoming::new();
        let now = Instant::now();
        // QoS 2 ids the receiver remembers -> whether their PUBREC went out.
        let mut live_q2: HashMap<u16, bool> = HashMap::new();
        let mut tokens: Vec<AckToken> = Vec::new();
        for (op, pkid, q, pick) in ops {
            match op {
                0..=2 => {
                    let wq = match q { 0 => WQ::AtMostOnce, 1 => WQ::AtLeastOnce, _ => WQ::ExactlyOnce };
                    let mut p = Publish::new("t", wq, vec![]);
                    p.pkid = pkid;
                    match inc.on_publish(p, now) {
                        IncomingAction::Deliver { token, .. } => {
                            if q == 2 {
                                prop_assert!(live_q2.insert(pkid, false).is_none(), "QoS 2 id {} delivered twice", pkid);
                            }
                            prop_assert_eq!(token.is_some(), q != 0);
                            tokens.extend(token);
                        }
                        IncomingAction::Duplicate { resend } => {
                            prop_assert_eq!(q, 2);
                            let recd = live_q2.get(&pkid).copied();
                            prop_assert!(recd.is_some());
                            prop_assert_eq!(resend.is_some(), recd == Some(true));
                        }
                    }
                }
                3 => {
                    prop_assert!(matches!(inc.on_pubrel(pkid), Packet::PubComp(c) if c.pkid == pkid));
                    live_q2.remove(&pkid);
                }
                4 if !tokens.is_empty() => {
                    let t = tokens.swap_remove(pick.index(tokens.len()));
                    for p in inc.ack(t) {
                        if let Packet::PubRec(r) = p {
                            live_q2.insert(r.pkid, true);
                        }
                    }
                }
                4 => {}
                _ => {
                    inc.reset_connection();
                    // Stale tokens are ignored from now on.
                    for t in tokens.drain(..) {
                        prop_assert!(inc.ack(t).is_empty());
                    }
                    live_q2.retain(|_, recd| *recd);
                }
            }
            prop_assert_eq!(inc.qos2_len(), live_q2.len());
        }
    }
}
