//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5 4.8.2, offered
//! to 3.1.1 clients as Mosquitto does) in the built-in broker, with
//! `mosquitto_sub`/`mosquitto_pub` (3.1.1), rumqttc and raw-packet clients:
//! each message goes to exactly one member of a group (round robin), a
//! plain subscriber of the same filter still gets every message, a member
//! that goes away hands its unacknowledged messages to another member, a
//! persistent member keeps them, groups survive a restart, retained
//! messages are not sent on a shared subscribe, malformed share names and
//! subscriptions past the limits are refused.

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use common::bridge::{SeqCount, Sub, publish_many, seq_msgs, unique};
use common::broker::{Raw, TestBroker};
use common::mosquitto::{MosqSub, mosquitto_pub, require_bin};
use common::wait::{wait_until, within};
use mqbridge::config::{FsyncPolicy, StoragePlan};
use mqbridge::protocol::QoS;
use mqbridge::protocol::v4::{Packet, SubscribeReasonCode};
use mqbridge::store::Store;
use tokio::io::AsyncWriteExt;

/// Publishes payloads `0..n` on `topic` at QoS 1 with one `mosquitto_pub -l`
/// (one message per stdin line), and waits for it to finish.
async fn mosquitto_pub_lines(port: u16, topic: &str, n: u64) {
    let mut child = tokio::process::Command::new(require_bin("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-V", "mqttv311", "-q", "1", "-t", topic, "-l"])
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mosquitto_pub");
    let mut stdin = child.stdin.take().expect("stdin piped");
    let lines: String = (0..n).map(|i| format!("{i}\n")).collect();
    within(stdin.write_all(lines.as_bytes()))
        .await
        .expect("write lines");
    drop(stdin);
    let status = within(child.wait()).await.expect("mosquitto_pub exits");
    assert!(status.success(), "mosquitto_pub -l failed: {status}");
}

/// Receives payloads until `n` arrived.
async fn take(sub: &mut Sub, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let got = sub.next().await.expect("a message in time");
        out.push(got.payload);
    }
    out
}

fn success(codes: &[SubscribeReasonCode]) -> Vec<bool> {
    codes
        .iter()
        .map(|c| matches!(c, SubscribeReasonCode::Success(_)))
        .collect()
}

/// [MQTT-4.8.2-3]-style distribution for 3.1.1 clients: three members of
/// one group (two rumqttc clients and a `mosquitto_sub`) split N messages
/// round robin, each exactly N/3, no message twice and none lost; a plain
/// subscriber of the same filter gets all N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_split_messages_round_robin_and_a_plain_subscriber_gets_all() {
    const N: u64 = 300;
    let b = TestBroker::start().await;
    let port = b.addr.port();
    let mut m1 = Sub::start(port, &unique("m1"), "$share/g/rr/#", 1, false).await;
    let mut m2 = Sub::start(port, &unique("m2"), "$share/g/rr/#", 1, false).await;
    let mut plain = Sub::start(port, &unique("plain"), "rr/#", 1, false).await;
    let mut m3 = MosqSub::spawn(
        b.addr,
        &["-V", "mqttv311", "-q", "1", "-t", "$share/g/rr/#"],
        (N / 3) as usize,
    );
    b.wait_subscriptions(4).await;

    mosquitto_pub_lines(port, "rr/t", N).await;

    let got1 = take(&mut m1, (N / 3) as usize).await;
    let got2 = take(&mut m2, (N / 3) as usize).await;
    let got3 = m3.lines().await;
    assert_eq!(got3.len() as u64, N / 3);
    let mut all = SeqCount::default();
    for p in got1.iter().chain(&got2).chain(&got3) {
        all.add(p);
    }
    assert_eq!(all.duplicates(), 0, "a message went to two members");
    assert!(all.missing(N).is_empty(), "lost: {:?}", all.missing(N));
    // Nothing beyond N/3 each: a fourth copy would show here.
    for m in [&mut m1, &mut m2] {
        assert!(m.next_within(Duration::from_millis(200)).await.is_none());
    }
    let mut every = SeqCount::default();
    for p in take(&mut plain, N as usize).await {
        every.add(&p);
    }
    assert!(every.missing(N).is_empty() && every.duplicates() == 0);
}

/// A clean-session member killed with QoS 1 messages unacknowledged: they
/// reach the other member (none lost), and the redelivery is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_members_unacknowledged_messages_reach_another_member() {
    let b = TestBroker::start().await;
    // `lazy` takes its messages and never acknowledges them.
    let mut lazy = Raw::connect(b.addr, "lazy", true).await;
    lazy.subscribe(&[("$share/g/k/#", QoS::AtLeastOnce)]).await;
    let mut good = Sub::start(b.addr.port(), "good", "$share/g/k/#", 1, false).await;
    b.wait_subscriptions(2).await;
    publish_many(b.addr.port(), &seq_msgs("k/t", 0..10), 1, false).await;
    let mut held = BTreeSet::new();
    for _ in 0..5 {
        let p = lazy.next_publish().await;
        held.insert(String::from_utf8_lossy(&p.payload).into_owned());
    }
    let mut seen = SeqCount::default();
    for p in take(&mut good, 5).await {
        seen.add(&p);
    }
    assert_eq!(b.broker.stats().shared_redelivered, 0);

    // No DISCONNECT: the socket just goes.
    drop(lazy);
    let redelivered = take(&mut good, 5).await;
    assert_eq!(
        redelivered.iter().cloned().collect::<BTreeSet<_>>(),
        held,
        "the other member gets exactly what the gone one held"
    );
    for p in &redelivered {
        seen.add(p);
    }
    assert!(seen.missing(10).is_empty() && seen.duplicates() == 0);
    assert_eq!(b.broker.stats().shared_redelivered, 5);
}

/// A persistent member that disconnects keeps its unacknowledged messages
/// (as Mosquitto does): the others do not get them, it gets them again
/// (DUP) when it comes back; new messages go to the connected member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_member_keeps_its_unacknowledged_messages() {
    let b = TestBroker::start().await;
    let mut p = Raw::connect(b.addr, "keeper", false).await;
    p.subscribe(&[("$share/g/p/#", QoS::AtLeastOnce)]).await;
    let mut other = Sub::start(b.addr.port(), "other", "$share/g/p/#", 1, false).await;
    b.wait_subscriptions(2).await;
    publish_many(b.addr.port(), &seq_msgs("p/t", 0..4), 1, false).await;
    let mut held = BTreeSet::new();
    for _ in 0..2 {
        held.insert(String::from_utf8_lossy(&p.next_publish().await.payload).into_owned());
    }
    let mut seen = SeqCount::default();
    for x in take(&mut other, 2).await {
        seen.add(&x);
    }
    drop(p);
    wait_until(|| b.broker.stats().clients_connected == 1).await;
    // While it is away, new messages go to the connected member only.
    publish_many(b.addr.port(), &seq_msgs("p/t", 4..8), 1, false).await;
    for x in take(&mut other, 4).await {
        seen.add(&x);
    }
    assert!(
        other
            .next_within(Duration::from_millis(200))
            .await
            .is_none()
    );
    assert_eq!(b.broker.stats().shared_redelivered, 0);

    let (mut back, present) = Raw::connect_present(b.addr, "keeper", false).await;
    assert!(present);
    let mut again = BTreeSet::new();
    for _ in 0..2 {
        let x = back.next_publish().await;
        assert!(x.dup, "a resend after reconnect carries DUP");
        back.puback(x.pkid).await;
        again.insert(String::from_utf8_lossy(&x.payload).into_owned());
    }
    assert_eq!(again, held);
    for x in &again {
        seen.add(x);
    }
    assert!(seen.missing(8).is_empty() && seen.duplicates() == 0);
}

/// A retained message is not sent on a shared subscribe (MQTT 5 3.8.4,
/// as Mosquitto does for 3.1.1), but is on a plain one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_not_sent_on_a_shared_subscribe() {
    let b = TestBroker::start().await;
    mosquitto_pub(
        b.addr,
        &[
            "-V", "mqttv311", "-t", "ret/t", "-m", "kept", "-r", "-q", "1",
        ],
    )
    .await;
    let mut shared = Raw::connect(b.addr, "ret-shared", true).await;
    shared
        .subscribe(&[("$share/g/ret/#", QoS::AtLeastOnce)])
        .await;
    // PINGRESP comes after anything the SUBSCRIBE caused: no retained message.
    shared.ping().await;
    let mut plain = Raw::connect(b.addr, "ret-plain", true).await;
    plain.subscribe(&[("ret/#", QoS::AtLeastOnce)]).await;
    let p = plain.next_publish().await;
    assert!(p.retain && &p.payload[..] == b"kept");
}

/// [MQTT-4.8.2-1] the share name is non-empty without `/`, `+`, `#`;
/// [MQTT-4.8.2-2] a topic filter follows it: otherwise SUBACK 0x80 for that
/// filter (3.1.1), the rest of the packet granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_8_2_1_and_2_malformed_share_names_are_refused() {
    let b = TestBroker::start().await;
    let mut c = Raw::connect(b.addr, "bad-share", true).await;
    let filters = [
        "$share/",
        "$share/a",
        "$share//x",
        "$share/g+/x",
        "$share/#/x",
        "$share/g/",
        "$share/g/a#",
        "$share/g/x/#",
        "$sharealike/x",
    ];
    let subs: Vec<(&str, QoS)> = filters.iter().map(|f| (*f, QoS::AtLeastOnce)).collect();
    let codes = c.subscribe(&subs).await;
    assert!(
        codes[..7]
            .iter()
            .all(|c| *c == SubscribeReasonCode::Failure),
        "{codes:?}"
    );
    assert_eq!(success(&codes[7..]), [true, true]);
    assert_eq!(b.broker.stats().subscriptions, 2);
}

/// `$share` filters count against `max_subscriptions_per_client` and the
/// trie-node limit, like any other filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_filters_count_against_the_subscription_limits() {
    let b = TestBroker::start_with(|o| o.limits.max_subscriptions_per_client = 2).await;
    let mut c = Raw::connect(b.addr, "limited", true).await;
    let codes = c
        .subscribe(&[
            ("$share/g/a", QoS::AtLeastOnce),
            ("plain/a", QoS::AtLeastOnce),
            ("$share/g/b", QoS::AtLeastOnce),
            ("$share/g/a", QoS::AtMostOnce),
        ])
        .await;
    // The re-subscription replaces the first one: no new slot needed.
    assert_eq!(success(&codes), [true, true, false, true]);

    let b = TestBroker::start_with(|o| o.limits.max_trie_nodes = 4).await;
    let mut c = Raw::connect(b.addr, "nodes", true).await;
    let codes = c
        .subscribe(&[
            ("$share/g/a/b", QoS::AtLeastOnce),
            ("$share/h/c/d/e", QoS::AtLeastOnce),
            ("x/y/z", QoS::AtLeastOnce),
            ("x/y", QoS::AtLeastOnce),
        ])
        .await;
    // One node index over both kinds: the shared filter's 2 nodes leave
    // room for 2 more, shared or plain.
    assert_eq!(success(&codes), [true, false, false, true]);
    assert_eq!(b.broker.stats().trie_nodes, 4);
}

/// A group of persistent members survives a restart of the broker on its
/// store: both come back as members and split new messages again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_persistent_sessions_survives_a_restart() {
    let dir = common::data_dir();
    let open = || {
        Store::open(&StoragePlan {
            dir: dir.clone(),
            fsync: FsyncPolicy::Batch,
            max_bytes: 1 << 30,
        })
        .expect("open store")
    };
    {
        let b = TestBroker::start_with(|o| o.store = Some(open())).await;
        for id in ["r1", "r2"] {
            let mut c = Raw::connect(b.addr, id, false).await;
            c.subscribe(&[("$share/g/re/#", QoS::AtLeastOnce)]).await;
        }
        b.token.cancel();
        within(b.broker.closed()).await;
    }
    let b = TestBroker::start_with(|o| o.store = Some(open())).await;
    assert_eq!(b.broker.stats().subscriptions, 2);
    let (mut r1, p1) = Raw::connect_present(b.addr, "r1", false).await;
    let (mut r2, p2) = Raw::connect_present(b.addr, "r2", false).await;
    assert!(p1 && p2, "both sessions restored");
    publish_many(b.addr.port(), &seq_msgs("re/t", 0..4), 1, false).await;
    let mut seen = SeqCount::default();
    for r in [&mut r1, &mut r2] {
        for _ in 0..2 {
            let p = r.next_publish().await;
            r.puback(p.pkid).await;
            seen.add(&String::from_utf8_lossy(&p.payload));
        }
        r.ping().await;
    }
    assert!(seen.missing(4).is_empty() && seen.duplicates() == 0);
}

/// In-process links (pipes on the built-in broker) join share groups like
/// network clients: two links and a 3.1.1 client split the messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_and_network_clients_share_one_group() {
    let b = TestBroker::start().await;
    let mut links = Vec::new();
    for id in ["share-link-1", "share-link-2"] {
        let (link, rx) = b.broker.link(id, true);
        let granted = within(link.subscribe(vec![("$share/g/l/#".into(), QoS::AtLeastOnce)]))
            .await
            .expect("subscribed");
        assert_eq!(granted, [Some(QoS::AtLeastOnce)]);
        links.push((link, rx));
    }
    let mut net = Sub::start(b.addr.port(), "share-net", "$share/g/l/#", 1, false).await;
    b.wait_subscriptions(3).await;
    publish_many(b.addr.port(), &seq_msgs("l/t", 0..30), 1, false).await;
    let mut seen = SeqCount::default();
    for (_, rx) in &mut links {
        for _ in 0..10 {
            let d = within(rx.recv()).await.expect("a delivery");
            seen.add(&String::from_utf8_lossy(&d.message.payload));
            d.ack.ack();
        }
    }
    for p in take(&mut net, 10).await {
        seen.add(&p);
    }
    assert!(seen.missing(30).is_empty() && seen.duplicates() == 0);
}

/// A share group whose only member is a full in-process link pushes back
/// like a plain link subscription: the publisher's PUBACK is withheld until
/// the link has room, nothing is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_link_member_holds_the_publisher_back_instead_of_dropping() {
    let b = TestBroker::start_with(|o| {
        o.limits.max_inflight = 2;
        o.limits.max_queued_messages = 3;
    })
    .await;
    let (link, mut rx) = b.broker.link("share-bp", false);
    within(link.subscribe(vec![("$share/g/bp/#".into(), QoS::AtLeastOnce)]))
        .await
        .expect("subscribed");
    let mut publ = Raw::connect(b.addr, "share-bp-pub", true).await;
    for i in 1..=10u16 {
        publ.publish("bp/t", &i.to_string(), QoS::AtLeastOnce, false, i)
            .await;
    }
    // Window (2) + queue (3): five acknowledged, the rest held back.
    for _ in 0..5 {
        assert!(matches!(
            publ.next().await,
            mqbridge::protocol::v4::Packet::PubAck(_)
        ));
    }
    publ.ping().await;
    assert_eq!(b.broker.stats().held_back, 5);
    let mut got = Vec::new();
    for _ in 0..10 {
        let d = within(rx.recv()).await.expect("delivery");
        got.push(String::from_utf8_lossy(&d.message.payload).into_owned());
        d.ack.ack();
    }
    let want: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "every message, in order");
    assert_eq!(b.broker.stats().dropped_queue_full, 0);
}

/// `storage.max_bytes` holds for a share group's persistent member as for
/// a plain persistent subscriber: once its stored queue fills the store, a
/// QoS 1 publish for the group is refused (not acknowledged, connection
/// closed, counted), and every acknowledged one is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_publishes_for_a_stored_member() {
    let store = Store::open(&StoragePlan {
        dir: common::data_dir(),
        fsync: FsyncPolicy::Batch,
        max_bytes: 16 * 1024,
    })
    .expect("open store");
    let b = TestBroker::start_with(|o| o.store = Some(store)).await;
    let mut member = Raw::connect(b.addr, "full-member", false).await;
    member
        .subscribe(&[("$share/g/full/t", QoS::AtLeastOnce)])
        .await;
    drop(member);
    wait_until(|| b.broker.stats().clients_connected == 0).await;
    let payload = "x".repeat(1024);
    let mut publ = Raw::connect(b.addr, "full-pub", true).await;
    let mut acked = 0u16;
    loop {
        assert!(acked < 64, "the store never filled up");
        let pkid = acked + 1;
        publ.publish("full/t", &payload, QoS::AtLeastOnce, false, pkid)
            .await;
        match within(publ.framed.read_packet()).await {
            Ok(mqbridge::protocol::version::Packet::V3(Packet::PubAck(a))) => {
                assert_eq!(a.pkid, pkid);
                acked += 1;
            }
            Ok(other) => panic!("expected PUBACK or a close, got {other:?}"),
            Err(_) => break,
        }
    }
    assert!(
        acked >= 8,
        "room for about 16 KiB of messages, took {acked}"
    );
    assert_eq!(b.broker.stats().store_full, 1);
    let (mut member, present) = Raw::connect_present(b.addr, "full-member", false).await;
    assert!(present);
    for _ in 0..acked {
        let m = member.next_publish().await;
        member.puback(m.pkid).await;
    }
    member.ping().await;
}
