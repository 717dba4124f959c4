//! The session with its QoS 2 flows kept on disk: what is written, what
//! waits for the disk, and how a restart continues the flows.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use rumqttc::mqttbytes::v4::{Packet, PubComp, PubRec};

use super::durable::{Ledger, Restore, Write};
use super::session::{ClientSession, Output, SessionConfig};
use crate::link::{LinkError, Origin};
use crate::protocol::{Keepalive, Message, QoS};

/// What the session hands out, in one ordered log, with the stored
/// records applied to a map standing in for the keyspace.
#[derive(Default)]
struct Rec {
    log: Vec<Out>,
    disk: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Out {
    Sent(Packet),
    Gated(Packet),
    Persisted,
    Completed(u32, Result<(), LinkError>),
}

impl Output<u32> for Rec {
    fn send(&mut self, packet: &Packet) {
        self.log.push(Out::Sent(packet.clone()));
    }
    fn send_publish(&mut self, packet: &Packet, _: Option<&crate::protocol::MessageProperties>) {
        self.log.push(Out::Sent(packet.clone()));
    }
    fn send_subscribe(&mut self, packet: &Packet, _: &[crate::protocol::SubscribeOptions]) {
        self.log.push(Out::Sent(packet.clone()));
    }
    fn complete_after_flush(&mut self, done: u32) {
        self.log.push(Out::Completed(done, Ok(())));
    }
    fn complete(&mut self, done: u32, result: Result<(), LinkError>) {
        self.log.push(Out::Completed(done, result));
    }
    fn persist(&mut self, write: Write) {
        match write {
            Write::Put(k, v) => self.disk.insert(k.to_vec(), v),
            Write::Delete(k) => self.disk.remove(&k[..]),
        };
        self.log.push(Out::Persisted);
    }
    fn send_when_durable(
        &mut self,
        packet: &Packet,
        _: Option<&crate::protocol::MessageProperties>,
    ) {
        self.log.push(Out::Gated(packet.clone()));
    }
}

impl Rec {
    fn take(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.log)
    }
}

fn session(found: Restore) -> ClientSession<u32> {
    let mut s = ClientSession::new(
        SessionConfig {
            name: "b".into(),
            inflight: 10,
            inflight_qos2: 10,
            max_packet_size: 1024,
        },
        Keepalive::from_secs(0),
        Instant::now(),
    );
    // Restored flows complete to nobody (0) until a pipe asks again.
    s.restore_durable(found, || 0);
    s
}

fn restart(disk: &BTreeMap<Vec<u8>, Vec<u8>>) -> ClientSession<u32> {
    session(Ledger::restore(disk.clone()))
}

fn connect(s: &mut ClientSession<u32>, present: bool, out: &mut Rec) {
    s.connected(
        "mqtt://b:1883".into(),
        super::wire::Grant::v3(present),
        false,
        None,
        Instant::now(),
        out,
    );
}

fn origin(seq: u64, floor: u64) -> Origin {
    Origin {
        pipe: "p".into(),
        seq,
        floor,
    }
}

fn msg(topic: &str) -> Message {
    Message::new(topic, Bytes::from_static(b"x"), QoS::ExactlyOnce, false)
}

fn publish_of(o: &Out) -> Option<(String, u16, bool)> {
    match o {
        Out::Sent(Packet::Publish(p)) | Out::Gated(Packet::Publish(p)) => {
            Some((p.topic.clone(), p.pkid, p.dup))
        }
        _ => None,
    }
}

#[test]
fn the_packet_id_and_pubrec_are_on_disk_before_the_wire_sees_publish_and_pubrel() {
    let mut out = Rec::default();
    let mut s = session(Restore::default());
    connect(&mut s, false, &mut out);
    s.publish_request_from(msg("a"), Some(origin(0, 0)), 1, &mut out);
    let log = out.take();
    assert!(
        matches!(
            log.as_slice(),
            [Out::Persisted, Out::Gated(Packet::Publish(_))]
        ),
        "{log:?}"
    );
    let pkid = publish_of(&log[1]).map(|p| p.1).unwrap_or_default();

    s.on_packet(Packet::PubRec(PubRec::new(pkid)), Instant::now(), &mut out)
        .expect("pubrec");
    assert!(matches!(
        out.take().as_slice(),
        [Out::Persisted, Out::Gated(Packet::PubRel(_))]
    ));
    s.on_packet(
        Packet::PubComp(PubComp::new(pkid)),
        Instant::now(),
        &mut out,
    )
    .expect("pubcomp");
    // The completion mark is written before the pipe hears of the PUBCOMP.
    assert_eq!(out.take(), vec![Out::Persisted, Out::Completed(1, Ok(()))]);

    // QoS 1, and QoS 2 without an origin (end_to_end), stay as they were.
    let mut q1 = msg("b");
    q1.qos = QoS::AtLeastOnce;
    s.publish_request_from(q1, None, 2, &mut out);
    s.publish_request_from(msg("c"), None, 3, &mut out);
    assert!(out.take().iter().all(|o| matches!(o, Out::Sent(_))));
}

#[test]
fn a_restart_continues_each_flow_under_its_packet_id_and_the_replay_attaches() {
    let mut out = Rec::default();
    let mut s = session(Restore::default());
    connect(&mut s, true, &mut out);
    for (seq, topic) in [(5, "a"), (6, "b"), (7, "c")] {
        s.publish_request_from(msg(topic), Some(origin(seq, 5)), seq as u32, &mut out);
    }
    let ids: Vec<u16> = out
        .take()
        .iter()
        .filter_map(publish_of)
        .map(|p| p.1)
        .collect();
    // "b" got its PUBREC, "c" completed; then kill -9.
    s.on_packet(
        Packet::PubRec(PubRec::new(ids[1])),
        Instant::now(),
        &mut out,
    )
    .expect("pubrec");
    s.on_packet(
        Packet::PubRec(PubRec::new(ids[2])),
        Instant::now(),
        &mut out,
    )
    .expect("pubrec");
    s.on_packet(
        Packet::PubComp(PubComp::new(ids[2])),
        Instant::now(),
        &mut out,
    )
    .expect("pubcomp");
    let disk = out.disk.clone();

    let mut out = Rec {
        disk,
        ..Rec::default()
    };
    let mut s = restart(&out.disk);
    connect(&mut s, true, &mut out);
    let log = out.take();
    // Records written again first, then (after the disk) PUBLISH DUP for
    // "a" and PUBREL for "b", under their old ids, before anything else.
    let gated: Vec<&Packet> = log
        .iter()
        .filter_map(|o| match o {
            Out::Gated(p) => Some(p),
            _ => None,
        })
        .collect();
    assert!(log.iter().all(|o| !matches!(o, Out::Sent(_))), "{log:?}");
    assert!(matches!(gated[0], Packet::Publish(p) if p.pkid == ids[0] && p.dup && p.topic == "a"));
    assert!(matches!(gated[1], Packet::PubRel(r) if r.pkid == ids[1]));
    assert_eq!(gated.len(), 2);

    // The pipe sends its unacknowledged records again: nothing new goes out.
    for seq in [5, 6, 7] {
        s.publish_request_from(
            msg("again"),
            Some(origin(seq, 5)),
            100 + seq as u32,
            &mut out,
        );
    }
    assert_eq!(
        out.take(),
        vec![Out::Completed(107, Ok(()))],
        "only the completed one answers at once"
    );
    s.on_packet(
        Packet::PubRec(PubRec::new(ids[0])),
        Instant::now(),
        &mut out,
    )
    .expect("pubrec");
    s.on_packet(
        Packet::PubComp(PubComp::new(ids[0])),
        Instant::now(),
        &mut out,
    )
    .expect("pubcomp");
    s.on_packet(
        Packet::PubComp(PubComp::new(ids[1])),
        Instant::now(),
        &mut out,
    )
    .expect("pubcomp");
    let done: Vec<u32> = out
        .take()
        .into_iter()
        .filter_map(|o| match o {
            Out::Completed(d, Ok(())) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(
        done,
        [105, 106],
        "the replays' completions, not the restored ones"
    );

    // Once the pipe's cursor passed them, the completion marks go.
    s.publish_request_from(msg("d"), Some(origin(8, 8)), 8, &mut out);
    assert_eq!(Ledger::restore(out.disk.clone()).ledger.marks(), 0);
}

#[test]
fn a_lost_session_publishes_again_as_new() {
    let mut out = Rec::default();
    let mut s = session(Restore::default());
    connect(&mut s, true, &mut out);
    s.publish_request_from(msg("a"), Some(origin(0, 0)), 1, &mut out);
    let id = out
        .take()
        .iter()
        .find_map(publish_of)
        .map(|p| p.1)
        .unwrap_or_default();
    s.on_packet(Packet::PubRec(PubRec::new(id)), Instant::now(), &mut out)
        .expect("pubrec");
    let disk = out.disk.clone();

    let mut out = Rec {
        disk,
        ..Rec::default()
    };
    let mut s = restart(&out.disk);
    connect(&mut s, false, &mut out);
    let again: Vec<(String, u16, bool)> = out.take().iter().filter_map(publish_of).collect();
    assert_eq!(again, [("a".to_string(), id, false)]);
    // And the disk says so: a restart now would PUBLISH, not PUBREL.
    assert!(!Ledger::restore(out.disk.clone()).flows[0].released);
}
