//! The built-in broker's persistent state survives kill -9 of the real
//! `mqbridge` process: every QoS 1 publish a device got a PUBACK for reaches
//! the destination (a real Mosquitto, through a pipe) over 20 kill/restart
//! cycles; persistent sessions, retained messages and QoS 2 in-flight state
//! come back; a damaged record is skipped and counted; abandoned sessions
//! expire.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::bridge::{SeqCount, Sub, unique};
use common::broker::Raw;
use common::http::{metric_becomes, scrape, value};
use common::mosquitto::{Mosquitto, free_port};
use common::process::BridgeProcess;
use common::wait::within;
use mqbridge::protocol::QoS;
use mqbridge::protocol::v4::{Packet, PubAck, PubComp, PubRec, PubRel, Publish};
use rumqttc::{AsyncClient, Event, MqttOptions};
use tokio::time::timeout;

/// A bridge process on one config and one data directory, restarted at will.
struct Bridge {
    config: PathBuf,
    data: PathBuf,
    edge: SocketAddr,
    metrics: SocketAddr,
    process: Option<BridgeProcess>,
    _dir: tempfile::TempDir,
}

impl Bridge {
    /// A built-in broker `edge` (fixed free ports, so a restart keeps them),
    /// `extra` appended to its settings, then `rest` (brokers and pipes).
    fn new(edge_extra: &str, rest: &str) -> Bridge {
        let dir = tempfile::tempdir().expect("tempdir");
        let edge: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let yaml = format!(
            "shutdown_timeout: 2s\nmetrics:\n  listen: {metrics}\nbrokers:\n  edge:\n    type: builtin\n    listen: [tcp://{edge}]\n{edge_extra}{rest}"
        );
        let config = dir.path().join("bridges.yaml");
        std::fs::write(&config, yaml).expect("write config");
        Bridge {
            config,
            data: common::data_dir(),
            edge,
            metrics,
            process: None,
            _dir: dir,
        }
    }

    /// Starts the process on the same data directory and waits until the
    /// built-in broker accepts connections.
    async fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_mqbridge"))
            .env("MQBRIDGE_DATA_DIR", &self.data)
            .args(["run", "--log-level", "warn", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mqbridge");
        self.process = Some(BridgeProcess(child));
        let edge = self.edge;
        timeout(Duration::from_secs(30), async move {
            // No event to await from another process: poll its port.
            while tokio::net::TcpStream::connect(edge).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("built-in broker listening");
    }

    fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
    }
}

/// Publishes a retained QoS 1 message and waits for its PUBACK (which
/// comes once it is on disk).
async fn publish_retained(raw: &mut Raw, topic: &str, payload: &str, pkid: u16) {
    let mut p = Publish::new(
        topic,
        mqbridge::protocol::WireQoS::AtLeastOnce,
        payload.as_bytes().to_vec(),
    );
    p.retain = true;
    p.pkid = pkid;
    raw.send(Packet::Publish(p)).await;
    assert_eq!(raw.next().await, Packet::PubAck(PubAck::new(pkid)));
}

/// A pipe from the built-in broker to Mosquitto `port` for `p/#` at QoS 1.
fn pipe_to(p: &str, port: u16) -> String {
    format!(
        "  m:\n    type: remote\n    endpoints: [mqtt://127.0.0.1:{port}]\n    client_id: {p}-bridge\npipes:\n  up:\n    from: edge\n    to: m\n    topics:\n      - filter: {p}/#\n        qos: 1\n"
    )
}

/// Publishes QoS 1 `"<seq>"` payloads from `next` at about `rate` msg/s
/// until the connection fails (the bridge is killed) or `limit` passes;
/// every sequence number that got its PUBACK goes into `acked`.
async fn devices_publish(
    addr: SocketAddr,
    topic: String,
    next: u64,
    rate: u64,
    limit: Duration,
    acked: Arc<Mutex<BTreeSet<u64>>>,
) -> u64 {
    let mut o = MqttOptions::new(unique("dev"), addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(5));
    o.set_inflight(100);
    let (client, mut ev) = AsyncClient::new(o, 1000);
    // Packet id → sequence number, in the order the PUBLISHes go out.
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let driver = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut inflight = std::collections::HashMap::new();
            loop {
                match ev.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                        if let Ok(seq) = sent_rx.try_recv() {
                            inflight.insert(pkid, seq);
                        }
                    }
                    Ok(Event::Incoming(rumqttc::Packet::PubAck(a))) => {
                        if let Some(seq) = inflight.remove(&a.pkid) {
                            acked.lock().expect("lock").insert(seq);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        })
    };
    let mut seq = next;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (rate / 100).max(1);
    let end = tokio::time::Instant::now() + limit;
    'publishing: while tokio::time::Instant::now() < end && !driver.is_finished() {
        tick.tick().await;
        for _ in 0..per_tick {
            // The driver reads these in PUBLISH order; after a refused
            // publish nothing more is published (the order would slip).
            let _ = sent_tx.send(seq);
            if client
                .try_publish(
                    topic.clone(),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    seq.to_string(),
                )
                .is_err()
            {
                break 'publishing;
            }
            seq += 1;
        }
    }
    driver.abort();
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_devices_publish_loses_no_acknowledged_message_over_20_cycles() {
    const CYCLES: usize = 20;
    let m = Mosquitto::start_with("max_queued_messages 0\n");
    let p = unique("k9");
    let mut sub = Sub::start(m.port, &format!("{p}-sub"), &format!("{p}/#"), 1, true).await;
    let mut bridge = Bridge::new("", &pipe_to(&p, m.port));
    let topic = format!("{p}/s");
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    bridge.start().await;
    // The pipe's subscription exists (in the stored link session from now on).
    timeout(Duration::from_secs(30), async {
        loop {
            common::bridge::publish(bridge.edge.port(), &format!("{p}/probe"), "probe", 1, false)
                .await;
            if sub.next_within(Duration::from_millis(500)).await.is_some() {
                return;
            }
        }
    })
    .await
    .expect("the pipe forwards");
    let mut next = 0;
    for cycle in 0..CYCLES {
        if cycle > 0 {
            bridge.start().await;
        }
        // Publish for a while, then kill -9 while the devices still publish.
        let publisher = tokio::spawn(devices_publish(
            bridge.edge,
            topic.clone(),
            next,
            2000,
            Duration::from_secs(10),
            acked.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(600)).await;
        bridge.kill9();
        next = within(publisher).await.expect("publisher");
        eprintln!(
            "cycle {cycle}: published up to {next}, {} acknowledged",
            acked.lock().expect("lock").len()
        );
    }
    bridge.start().await;
    let acked: Vec<u64> = acked.lock().expect("lock").iter().copied().collect();
    assert!(
        acked.len() > CYCLES * 100,
        "devices got only {} PUBACKs",
        acked.len()
    );
    let mut seen = SeqCount::default();
    let mut missing: BTreeSet<u64> = acked.iter().copied().collect();
    let all = timeout(Duration::from_secs(90), async {
        while !missing.is_empty() {
            match timeout(Duration::from_secs(5), sub.rx.recv()).await {
                Ok(Some(got)) => {
                    seen.add(&got.payload);
                    if let Ok(n) = got.payload.parse::<u64>() {
                        missing.remove(&n);
                    }
                }
                Ok(None) => panic!("subscriber ended"),
                Err(_) => {
                    let body = scrape(bridge.metrics).await;
                    eprintln!(
                        "draining: {} distinct; stored {:?}",
                        seen.unique(),
                        value(&body, "mqbridge_broker_stored_messages{broker=\"edge\"}"),
                    );
                }
            }
        }
    })
    .await;
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|s| !seen.seen.contains_key(s))
        .collect();
    println!(
        "{CYCLES} kill -9 cycles: {} acknowledged, {} published, {} distinct delivered, {} duplicates, {} lost",
        acked.len(),
        next,
        seen.unique(),
        seen.duplicates(),
        lost.len()
    );
    assert!(
        all.is_ok() && lost.is_empty(),
        "lost {} acknowledged messages, first {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    // Nothing stays stored once delivered.
    metric_becomes(
        bridge.metrics,
        "mqbridge_broker_stored_messages{broker=\"edge\"}",
        0.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_retained_and_qos2_state_survive_kill_9() {
    let mut bridge = Bridge::new("", "pipes: {}\n");
    bridge.start().await;
    let addr = bridge.edge;
    // A persistent QoS 1 subscriber that goes away, and a QoS 2 one that
    // leaves one flow unacknowledged and one past PUBREC.
    let mut s1 = Raw::connect(addr, "ps-q1", false).await;
    s1.subscribe(&[("ps/q1", QoS::AtLeastOnce)]).await;
    drop(s1);
    let mut s2 = Raw::connect(addr, "ps-q2", false).await;
    s2.subscribe(&[("ps/q2", QoS::ExactlyOnce)]).await;
    let mut publ = Raw::connect(addr, "ps-pub", false).await;
    publ.publish("ps/q2", "a", QoS::ExactlyOnce, false, 1).await;
    assert!(matches!(publ.next().await, Packet::PubRec(_)));
    publ.publish("ps/q2", "b", QoS::ExactlyOnce, false, 2).await;
    assert!(matches!(publ.next().await, Packet::PubRec(_)));
    let a = s2.next_publish().await;
    let b = s2.next_publish().await;
    assert_eq!((&a.payload[..], &b.payload[..]), (&b"a"[..], &b"b"[..]));
    s2.send(Packet::PubRec(PubRec::new(b.pkid))).await;
    assert_eq!(s2.next().await, Packet::PubRel(PubRel::new(b.pkid)));
    for i in 0..50u16 {
        publ.publish("ps/q1", &i.to_string(), QoS::AtLeastOnce, false, 10 + i)
            .await;
        assert!(matches!(publ.next().await, Packet::PubAck(_)));
    }
    publish_retained(&mut publ, "ps/retained", "kept", 100).await;
    // A QoS 2 publish acknowledged with PUBREC, not yet released.
    publ.publish("ps/c", "c", QoS::ExactlyOnce, false, 200)
        .await;
    assert_eq!(publ.next().await, Packet::PubRec(PubRec::new(200)));
    // Every PUBACK/PUBREC above came after the store's sync: kill -9 now.
    bridge.kill9();
    drop((s2, publ));
    bridge.start().await;

    let (mut s1, present) = Raw::connect_present(addr, "ps-q1", false).await;
    assert!(present, "the stored session is present");
    for i in 0..50u16 {
        let m = s1.next_publish().await;
        assert_eq!(&m.payload[..], i.to_string().as_bytes(), "queued in order");
        s1.puback(m.pkid).await;
    }
    // The QoS 2 flows resume where they were: "a" again under its packet
    // id with DUP, "b" only as its PUBREL (not delivered twice).
    let (mut s2, present) = Raw::connect_present(addr, "ps-q2", false).await;
    assert!(present);
    let again = s2.next_publish().await;
    assert_eq!(
        (&again.payload[..], again.pkid, again.dup),
        (&b"a"[..], a.pkid, true)
    );
    assert_eq!(s2.next().await, Packet::PubRel(PubRel::new(b.pkid)));
    s2.send(Packet::PubComp(PubComp::new(b.pkid))).await;
    s2.send(Packet::PubRec(PubRec::new(a.pkid))).await;
    assert_eq!(s2.next().await, Packet::PubRel(PubRel::new(a.pkid)));
    s2.send(Packet::PubComp(PubComp::new(a.pkid))).await;
    s2.ping().await;
    // The retained message is served to a new subscriber.
    let mut r = Raw::connect(addr, "ps-r", true).await;
    r.subscribe(&[("ps/retained", QoS::AtLeastOnce)]).await;
    let kept = r.next_publish().await;
    assert!(kept.retain);
    assert_eq!(&kept.payload[..], b"kept");
    // The publisher's QoS 2 ids were remembered: its redelivered PUBLISH
    // (as if it never saw the PUBREC) is a duplicate, not routed again.
    let mut c = Raw::connect(addr, "ps-c", true).await;
    c.subscribe(&[("ps/c", QoS::ExactlyOnce)]).await;
    let (mut publ, present) = Raw::connect_present(addr, "ps-pub", false).await;
    assert!(present);
    publ.publish("ps/c", "c", QoS::ExactlyOnce, true, 200).await;
    assert_eq!(publ.next().await, Packet::PubRec(PubRec::new(200)));
    publ.send(Packet::PubRel(PubRel::new(200))).await;
    assert_eq!(publ.next().await, Packet::PubComp(PubComp::new(200)));
    c.ping().await;
    let body = scrape(bridge.metrics).await;
    assert_eq!(
        value(&body, "mqbridge_broker_persisted_sessions{broker=\"edge\"}"),
        Some(4.0),
        "three clients and the bridge's own link session:\n{body}"
    );
    assert_eq!(
        value(&body, "mqbridge_broker_retained_stored{broker=\"edge\"}"),
        Some(1.0)
    );
}

/// Writes a garbage value under a stored message's key while the bridge is down.
fn damage_one_message(data: &Path) -> usize {
    let plan = mqbridge::config::StoragePlan {
        dir: data.to_path_buf(),
        fsync: mqbridge::config::FsyncPolicy::Batch,
        max_bytes: 1 << 30,
    };
    let store = mqbridge::store::Store::open(&plan).expect("open the stopped bridge's store");
    let ks = store.keyspace("broker.edge.messages").expect("keyspace");
    let keys: Vec<Vec<u8>> = ks.iter().map(|g| g.key().expect("key").to_vec()).collect();
    let victim = keys.first().expect("a stored message").clone();
    let mut value = ks.get(&victim).expect("get").expect("value").to_vec();
    let last = value.len() - 1;
    value[last] ^= 0xff;
    ks.insert(victim, value).expect("insert");
    store.sync_now().expect("sync");
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_is_skipped_and_counted() {
    let mut bridge = Bridge::new("", "pipes: {}\n");
    bridge.start().await;
    let addr = bridge.edge;
    let mut s = Raw::connect(addr, "dm-sub", false).await;
    s.subscribe(&[("dm/t", QoS::AtLeastOnce)]).await;
    drop(s);
    let mut publ = Raw::connect(addr, "dm-pub", true).await;
    for i in 0..5u16 {
        publ.publish("dm/t", &i.to_string(), QoS::AtLeastOnce, false, 1 + i)
            .await;
        assert!(matches!(publ.next().await, Packet::PubAck(_)));
    }
    bridge.kill9();
    assert_eq!(damage_one_message(&bridge.data), 5);
    bridge.start().await;
    metric_becomes(
        bridge.metrics,
        "mqbridge_broker_records_damaged_total{broker=\"edge\"}",
        1.0,
    )
    .await;
    let (mut s, present) = Raw::connect_present(addr, "dm-sub", false).await;
    assert!(present);
    // The first message's record was damaged: the other four arrive.
    for i in 1..5u16 {
        let m = s.next_publish().await;
        assert_eq!(&m.payload[..], i.to_string().as_bytes());
        s.puback(m.pkid).await;
    }
    s.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_removes_abandoned_sessions_and_their_messages() {
    let mut bridge = Bridge::new("    session_expiry: 2s\n", "pipes: {}\n");
    bridge.start().await;
    let addr = bridge.edge;
    let mut s = Raw::connect(addr, "ex-sub", false).await;
    s.subscribe(&[("ex/t", QoS::AtLeastOnce)]).await;
    drop(s);
    let mut publ = Raw::connect(addr, "ex-pub", true).await;
    for i in 0..3u16 {
        publ.publish("ex/t", &i.to_string(), QoS::AtLeastOnce, false, 1 + i)
            .await;
        assert!(matches!(publ.next().await, Packet::PubAck(_)));
    }
    metric_becomes(
        bridge.metrics,
        "mqbridge_broker_sessions_expired_total{broker=\"edge\"}",
        1.0,
    )
    .await;
    let body = scrape(bridge.metrics).await;
    assert_eq!(
        value(&body, "mqbridge_broker_stored_messages{broker=\"edge\"}"),
        Some(0.0),
        "its messages went with it"
    );
    // Gone from disk too (an acknowledged publish syncs what came before):
    // a restart finds only the link session.
    publish_retained(&mut publ, "ex/flush", "x", 9).await;
    bridge.kill9();
    bridge.start().await;
    let (mut s, present) = Raw::connect_present(addr, "ex-sub", false).await;
    assert!(!present, "the expired session is not restored");
    s.ping().await;
}

/// A stored session's SUBACK/UNSUBACK comes only once the change is on
/// disk: a kill -9 right after it (no acknowledged publish in between to
/// sync it) keeps the new subscription and the removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_change_survives_kill_9_right_after_its_ack() {
    let mut bridge = Bridge::new("", "pipes: {}\n");
    bridge.start().await;
    let addr = bridge.edge;
    let mut u = Raw::connect(addr, "k9-unsub", false).await;
    u.subscribe(&[("k9/off", QoS::AtLeastOnce)]).await;
    // Everything so far on disk (an acknowledged publish syncs it).
    let mut publ = Raw::connect(addr, "k9-pub", true).await;
    publish_retained(&mut publ, "k9/sync", "x", 1).await;
    u.unsubscribe(&["k9/off"]).await;
    let mut s = Raw::connect(addr, "k9-sub", false).await;
    s.subscribe(&[("k9/on", QoS::AtLeastOnce)]).await;
    bridge.kill9();
    drop((u, s, publ));
    bridge.start().await;

    let (mut s, present) = Raw::connect_present(addr, "k9-sub", false).await;
    assert!(present, "the subscriber's session is stored");
    let (mut u, present) = Raw::connect_present(addr, "k9-unsub", false).await;
    assert!(present);
    let mut publ = Raw::connect(addr, "k9-pub", true).await;
    publ.publish("k9/off", "off", QoS::AtLeastOnce, false, 2)
        .await;
    assert_eq!(publ.next().await, Packet::PubAck(PubAck::new(2)));
    publ.publish("k9/on", "on", QoS::AtLeastOnce, false, 3)
        .await;
    assert_eq!(publ.next().await, Packet::PubAck(PubAck::new(3)));
    let m = s.next_publish().await;
    assert_eq!(
        &m.payload[..],
        b"on",
        "the subscription made before the kill holds"
    );
    // Nothing on the removed subscription: the next packet is the PINGRESP.
    u.ping().await;
}

/// `storage.max_bytes` bounds the broker's stored messages too: once a
/// persistent session's queue fills the store, a QoS 1 publish for it is
/// not acknowledged and the connection is closed (counted); every publish
/// that was acknowledged is delivered, and once the subscriber drains its
/// queue publishes are taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_publishes_for_stored_sessions_and_loses_nothing() {
    let mut bridge = Bridge::new("", "pipes: {}\nstorage:\n  max_bytes: 16KiB\n");
    bridge.start().await;
    let addr = bridge.edge;
    let mut sub = Raw::connect(addr, "full-sub", false).await;
    sub.subscribe(&[("full/t", QoS::AtLeastOnce)]).await;
    drop(sub);
    let payload = "x".repeat(1024);
    let mut publ = Raw::connect(addr, "full-pub", true).await;
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
            // Refused: no PUBACK, the connection is closed.
            Err(_) => break,
        }
    }
    assert!(
        acked >= 8,
        "room for about 16 KiB of messages, took {acked}"
    );
    metric_becomes(
        bridge.metrics,
        "mqbridge_broker_publishes_refused_store_full_total{broker=\"edge\"}",
        1.0,
    )
    .await;
    // Every acknowledged message is delivered; acking them frees the store.
    let (mut sub, present) = Raw::connect_present(addr, "full-sub", false).await;
    assert!(present);
    for _ in 0..acked {
        let m = sub.next_publish().await;
        assert_eq!(m.payload.len(), 1024);
        sub.puback(m.pkid).await;
    }
    sub.ping().await;
    let mut publ = Raw::connect(addr, "full-pub", true).await;
    publ.publish("full/t", "again", QoS::AtLeastOnce, false, 1)
        .await;
    assert_eq!(publ.next().await, Packet::PubAck(PubAck::new(1)));
    let m = sub.next_publish().await;
    assert_eq!(&m.payload[..], b"again");
}
