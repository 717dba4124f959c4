//! The client core speaking MQTT 5: against real Mosquitto 2 (started by
//! the tests on free ports), `mosquitto_pub -V 5`/`mosquitto_sub -V 5` as
//! independent peers, and tiny fake servers for what Mosquitto cannot be
//! made to do (answer with a 3.1.1 CONNACK, send DISCONNECT 0x8B/0x9C).

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::bridge::unique;
use common::client::{CLIENT_WAIT as WAIT, TestClient};
use common::mosquitto::{MosqSub, Mosquitto, mosquitto_pub};
use mqbridge::client::{ClientEvent, ClientOptions, Endpoint, ErrorKind};
use mqbridge::link::LinkError;
use mqbridge::protocol::reason::ReasonCode;
use mqbridge::protocol::v5::{self, Sender, packets as p5};
use mqbridge::protocol::version::{ProtocolChoice, ProtocolVersion, connect_version};
use mqbridge::protocol::{
    Message, MessageProperties, PropertyFields, QoS, RetainHandling, SubscribeOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Test options: fast backoff, short timeouts, a clean session, MQTT 5 only
/// (so a silent fallback cannot make a test pass).
fn options(name: &str, endpoints: Vec<Endpoint>) -> ClientOptions {
    let mut o = ClientOptions::new(name, endpoints, unique(name));
    o.protocol = ProtocolChoice::Only(ProtocolVersion::V5);
    o.backoff.min = Duration::from_millis(50);
    o.backoff.max = Duration::from_millis(400);
    o.connect_timeout = Duration::from_secs(2);
    o.keepalive = Duration::from_secs(5);
    o.clean_session = true;
    o
}

fn tcp(port: u16) -> Endpoint {
    Endpoint::tcp("127.0.0.1", port)
}

/// A message with every MQTT 5 property (user properties deliberately not
/// in sorted order, one key repeated).
fn full_message(topic: &str) -> Message {
    let mut m = Message::new(topic, "{\"v\":1}", QoS::AtLeastOnce, false);
    m.properties = Some(MessageProperties::from(PropertyFields {
        payload_is_utf8: Some(true),
        message_expiry_interval: Some(3600),
        content_type: Some("application/json".into()),
        response_topic: Some(format!("{topic}/reply")),
        correlation_data: Some(Bytes::from_static(b"\x01corr")),
        user_properties: vec![
            ("zeta".into(), "1".into()),
            ("alpha".into(), "2".into()),
            ("zeta".into(), "3".into()),
        ],
        subscription_identifiers: Vec::new(),
    }));
    m
}

/// Publishes `m` through `c` and waits for the broker's answer.
async fn publish(c: &TestClient, m: Message) -> Result<(), LinkError> {
    let ack = c.link.publish(m).await.expect("publish request");
    timeout(WAIT, ack.wait())
        .await
        .expect("timed out waiting for the broker's ack")
}

async fn subscribe_with(c: &TestClient, filter: &str, o: SubscribeOptions) {
    timeout(WAIT, c.link.subscribe_with(vec![(filter.to_owned(), o)]))
        .await
        .expect("timed out waiting for the SUBACK")
        .expect("subscribe");
}

#[tokio::test]
async fn every_property_round_trips_through_mosquitto_both_ways() {
    let m = Mosquitto::start();
    let prefix = unique("props");
    let mut sub = TestClient::spawn(options("sub", vec![tcp(m.port)]));
    let publ = TestClient::spawn(options("pub", vec![tcp(m.port)]));
    sub.connected_to(m.port).await;
    publ.connected_to(m.port).await;
    sub.subscribe(&format!("{prefix}/#"), QoS::AtLeastOnce)
        .await;

    // Ours → Mosquitto → ours: every property, user properties in order.
    let sent = full_message(&format!("{prefix}/a"));
    publish(&publ, sent.clone()).await.expect("PUBACK");
    let d = sub.recv().await;
    let got = d.message.properties.clone().expect("properties arrive");
    let want = sent.properties.clone().expect("sent properties");
    assert_eq!(got.user_properties, want.user_properties, "order kept");
    assert_eq!(got.content_type, want.content_type);
    assert_eq!(got.response_topic, want.response_topic);
    assert_eq!(got.correlation_data, want.correlation_data);
    assert_eq!(got.payload_is_utf8, Some(true));
    let expiry = got.message_expiry_interval.expect("expiry arrives");
    assert!((3590..=3600).contains(&expiry), "expiry {expiry}");
    assert_eq!(&d.message.payload[..], &sent.payload[..]);
    d.ack.ack();

    // Ours → mosquitto_sub -V 5, an independent decoder.
    let mut cli = MosqSub::spawn(
        m.addr(),
        &[
            "-V",
            "5",
            "-t",
            &format!("{prefix}/cli"),
            "-q",
            "1",
            "-F",
            "%t|%C|%R|%P|%p",
        ],
        1,
    );
    // mosquitto_sub subscribes asynchronously: publish until it has one.
    let lines = timeout(WAIT, async {
        let lines = tokio::spawn(async move { cli.lines().await });
        while !lines.is_finished() {
            let _ = publish(&publ, full_message(&format!("{prefix}/cli"))).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        lines.await.expect("mosquitto_sub task")
    })
    .await
    .expect("mosquitto_sub got the message");
    assert_eq!(
        lines,
        vec![format!(
            "{prefix}/cli|application/json|{prefix}/cli/reply|zeta:1 alpha:2 zeta:3|{{\"v\":1}}"
        )]
    );

    // mosquitto_pub -V 5 → ours.
    mosquitto_pub(
        m.addr(),
        &[
            "-V",
            "5",
            "-q",
            "1",
            "-t",
            &format!("{prefix}/from-cli"),
            "-m",
            "hi",
            "-D",
            "publish",
            "user-property",
            "k2",
            "v2",
            "-D",
            "publish",
            "user-property",
            "k1",
            "v1",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "correlation-data",
            "c-7",
        ],
    )
    .await;
    let mut d = sub.recv().await;
    // Messages of the mosquitto_sub loop above may come first.
    while d.message.topic != format!("{prefix}/from-cli") {
        d.ack.ack();
        d = sub.recv().await;
    }
    let got = d.message.properties.clone().expect("properties arrive");
    assert_eq!(
        got.user_properties,
        vec![("k2".into(), "v2".into()), ("k1".into(), "v1".into())]
    );
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"c-7"[..]));
    d.ack.ack();
    sub.stop().await;
    publ.stop().await;
}

#[tokio::test]
async fn mosquitto_sends_a_v5_client_more_than_its_20_inflight_unacknowledged() {
    // Mosquitto's `max_inflight_messages` (20) binds 3.1.1 clients; for a
    // v5 client it follows the CONNECT's receive maximum (our inflight).
    const N: usize = 200;
    let m = Mosquitto::start();
    let prefix = unique("inflight");
    let mut o = options("sub", vec![tcp(m.port)]);
    o.inflight = 1000;
    o.delivery_capacity = 1024;
    let mut sub = TestClient::spawn(o);
    let publ = TestClient::spawn(options("pub", vec![tcp(m.port)]));
    sub.connected_to(m.port).await;
    sub.subscribe(&format!("{prefix}/#"), QoS::AtLeastOnce)
        .await;
    let mut acks = Vec::new();
    for i in 0..N {
        let m = Message::new(
            format!("{prefix}/m"),
            i.to_string(),
            QoS::AtLeastOnce,
            false,
        );
        acks.push(publ.link.publish(m).await.expect("publish request"));
    }
    for a in acks {
        timeout(WAIT, a.wait()).await.expect("PUBACK").expect("ok");
    }
    // None acknowledged by us: every one must still arrive.
    let mut held = Vec::new();
    for i in 0..N {
        let d = sub.recv().await;
        assert_eq!(&d.message.payload[..], i.to_string().as_bytes());
        assert!(d.ack.is_required());
        held.push(d);
    }
    assert_eq!(held.len(), N, "more than 20 unacknowledged QoS 1 messages");
    for d in held {
        d.ack.ack();
    }
    sub.stop().await;
    publ.stop().await;
}

#[tokio::test]
async fn the_3_1_1_control_gets_only_20_unacknowledged() {
    // The same setup speaking 3.1.1: Mosquitto stops at 20 unacknowledged,
    // the reason the v5 source matters for long links.
    let m = Mosquitto::start();
    let prefix = unique("inflight3");
    let mut o = options("sub", vec![tcp(m.port)]);
    o.protocol = ProtocolChoice::Only(ProtocolVersion::V3_1_1);
    let mut sub = TestClient::spawn(o);
    let publ = TestClient::spawn(options("pub", vec![tcp(m.port)]));
    sub.connected_to(m.port).await;
    sub.subscribe(&format!("{prefix}/#"), QoS::AtLeastOnce)
        .await;
    for i in 0..40 {
        let m = Message::new(
            format!("{prefix}/m"),
            i.to_string(),
            QoS::AtLeastOnce,
            false,
        );
        publish(&publ, m).await.expect("PUBACK");
    }
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(sub.recv().await);
    }
    // Every publish was acknowledged by Mosquitto before we read: the 21st
    // would be on the wire already if Mosquitto sent it.
    let more = timeout(Duration::from_millis(300), sub.rx.recv()).await;
    assert!(more.is_err(), "a 21st unacknowledged message arrived");
    // Acking one lets exactly the next through.
    held.remove(0).ack.ack();
    let d = sub.recv().await;
    assert_eq!(&d.message.payload[..], b"20");
    held.push(d);
    for d in held {
        d.ack.ack();
    }
    sub.stop().await;
    publ.stop().await;
}

#[tokio::test]
async fn subscribe_options_are_sent_no_local_drops_our_own_messages() {
    let m = Mosquitto::start();
    let prefix = unique("nolocal");
    let mut c = TestClient::spawn(options("c", vec![tcp(m.port)]));
    c.connected_to(m.port).await;
    let o = SubscribeOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::SendAtSubscribe,
    };
    subscribe_with(&c, &format!("{prefix}/#"), o).await;
    publish(
        &c,
        Message::new(format!("{prefix}/own"), "own", QoS::AtLeastOnce, false),
    )
    .await
    .expect("PUBACK");
    mosquitto_pub(
        m.addr(),
        &[
            "-V",
            "5",
            "-q",
            "1",
            "-t",
            &format!("{prefix}/other"),
            "-m",
            "other",
        ],
    )
    .await;
    // Our own message was published first; with no local only the other arrives.
    let d = c.recv().await;
    assert_eq!(d.message.topic, format!("{prefix}/other"));
    d.ack.ack();
    c.stop().await;
}

#[tokio::test]
async fn a_message_over_the_brokers_maximum_packet_size_is_rejected_not_retried() {
    let m = Mosquitto::start_with("max_packet_size 1000\n");
    let prefix = unique("big");
    let mut sub = TestClient::spawn(options("sub", vec![tcp(m.port)]));
    let publ = TestClient::spawn(options("pub", vec![tcp(m.port)]));
    sub.connected_to(m.port).await;
    publ.connected_to(m.port).await;
    sub.subscribe(&format!("{prefix}/#"), QoS::AtLeastOnce)
        .await;
    let big = Message::new(
        format!("{prefix}/big"),
        vec![b'x'; 2000],
        QoS::AtLeastOnce,
        false,
    );
    match publish(&publ, big).await {
        Err(LinkError::Rejected(reason)) => {
            assert!(reason.contains("1000"), "{reason}");
        }
        other => panic!("expected a rejected drop, got {other:?}"),
    }
    // The link is fine: the next message goes through.
    publish(
        &publ,
        Message::new(format!("{prefix}/small"), "s", QoS::AtLeastOnce, false),
    )
    .await
    .expect("PUBACK");
    let d = sub.recv().await;
    assert_eq!(d.message.topic, format!("{prefix}/small"));
    d.ack.ack();
    sub.stop().await;
    publ.stop().await;
}

#[tokio::test]
async fn puback_0x87_not_authorized_is_a_rejected_drop_and_the_link_carries_on() {
    let prefix = unique("acl");
    let acl = format!("topic readwrite {prefix}/ok/#\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let acl_path = dir.path().join("acl");
    std::fs::write(&acl_path, acl).expect("write acl");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    std::fs::set_permissions(
        &acl_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod acl");
    let m = Mosquitto::start_with(&format!("acl_file {}\n", acl_path.display()));
    let mut c = TestClient::spawn(options("c", vec![tcp(m.port)]));
    c.connected_to(m.port).await;
    c.subscribe(&format!("{prefix}/ok/#"), QoS::AtLeastOnce)
        .await;
    let denied = Message::new(format!("{prefix}/no"), "x", QoS::AtLeastOnce, false);
    match publish(&c, denied).await {
        Err(LinkError::Rejected(reason)) => assert!(reason.contains("0x87"), "{reason}"),
        other => panic!("expected a rejected drop, got {other:?}"),
    }
    let ok = Message::new(format!("{prefix}/ok/1"), "y", QoS::AtLeastOnce, false);
    publish(&c, ok).await.expect("PUBACK");
    let d = c.recv().await;
    assert_eq!(d.message.topic, format!("{prefix}/ok/1"));
    d.ack.ack();
    // No reconnect happened: a refusal is not a connection problem.
    assert!(
        std::iter::from_fn(|| c.events.try_recv().ok())
            .all(|e| !matches!(e, ClientEvent::Disconnected { .. }))
    );
    c.stop().await;
}

/// What a fake server saw: the protocol version of each CONNECT.
type Seen = mpsc::UnboundedSender<ProtocolVersion>;

/// Reads a CONNECT from `s` and returns its version.
async fn read_connect(s: &mut TcpStream) -> Option<ProtocolVersion> {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 512];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        match connect_version(&buf) {
            Ok(Some(v)) => return Some(v),
            Ok(None) => {}
            Err(_) => return None,
        }
    }
}

fn encode5(p: p5::Packet) -> BytesMut {
    let mut b = BytesMut::new();
    v5::encode(&p, &mut b, usize::MAX, Sender::Server).expect("encode");
    b
}

fn connack5() -> BytesMut {
    encode5(p5::Packet::ConnAck(p5::ConnAck {
        session_present: false,
        code: p5::ConnectReturnCode::Success,
        properties: None,
    }))
}

/// A 3.1.1-only server: a v5 CONNECT gets CONNACK 0x01 (3.1.1 format)
/// and is closed; a 3.1.1 CONNECT is accepted and held open.
async fn v311_only_server(seen: Seen) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(v) = read_connect(&mut s).await else {
                    return;
                };
                let _ = seen.send(v);
                if v == ProtocolVersion::V5 {
                    let _ = s.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
                    return;
                }
                let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
                // Hold the connection until the client goes.
                let mut sink = [0u8; 256];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    port
}

#[tokio::test]
async fn default_protocol_falls_back_to_3_1_1_once_and_remembers_the_endpoint() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let port = v311_only_server(tx).await;
    let mut o = options("fallback", vec![tcp(port)]);
    o.protocol = ProtocolChoice::Auto;
    let reconnect = std::sync::Arc::new(tokio::sync::Notify::new());
    o.reconnect = Some(reconnect.clone());
    let mut c = TestClient::spawn(o);
    c.connected_to(port).await;
    let first: Vec<_> = [seen.recv().await, seen.recv().await]
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(first, vec![ProtocolVersion::V5, ProtocolVersion::V3_1_1]);
    // One attempt, no failure reported: the fallback is part of it.
    assert!(
        std::iter::from_fn(|| c.events.try_recv().ok())
            .all(|e| !matches!(e, ClientEvent::Disconnected { .. })),
        "the fallback is not a failed attempt"
    );
    // Reconnect: the endpoint is known to refuse v5 now, 3.1.1 goes first.
    reconnect.notify_waiters();
    let next = timeout(WAIT, seen.recv()).await.expect("a new CONNECT");
    assert_eq!(next, Some(ProtocolVersion::V3_1_1));
    c.connected_to(port).await;
    c.stop().await;
}

/// A v5 server that accepts the CONNECT and at once sends `disconnect`.
async fn disconnecting_server(disconnect: p5::Disconnect) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let d = disconnect.clone();
            tokio::spawn(async move {
                if read_connect(&mut s).await != Some(ProtocolVersion::V5) {
                    return;
                }
                let mut out = connack5();
                out.extend_from_slice(&encode5(p5::Packet::Disconnect(d)));
                let _ = s.write_all(&out).await;
                let mut sink = [0u8; 256];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    port
}

#[tokio::test]
async fn disconnect_0x8b_server_shutting_down_fails_over_to_the_next_endpoint() {
    let fake = disconnecting_server(p5::Disconnect::new(
        p5::DisconnectReasonCode::ServerShuttingDown,
    ))
    .await;
    let m = Mosquitto::start();
    let mut o = options("fo", vec![tcp(fake), tcp(m.port)]);
    o.failback.enabled = false;
    let mut c = TestClient::spawn(o);
    let e = c
        .event("disconnected by 0x8B", |e| {
            matches!(e, ClientEvent::Disconnected { .. })
        })
        .await;
    assert!(
        matches!(
            e,
            ClientEvent::Disconnected {
                kind: ErrorKind::ServerDisconnect(ReasonCode::ServerShuttingDown),
                ..
            }
        ),
        "{e:?}"
    );
    c.event(
        "failover",
        |e| matches!(e, ClientEvent::Failover { to, .. } if *to == tcp(m.port).url()),
    )
    .await;
    c.connected_to(m.port).await;
    c.stop().await;
}

#[tokio::test]
async fn disconnect_0x9c_with_a_server_reference_moves_to_that_endpoint() {
    let m = Mosquitto::start();
    let mut d = p5::Disconnect::new(p5::DisconnectReasonCode::UseAnotherServer);
    d.properties = Some(p5::DisconnectProperties {
        session_expiry_interval: None,
        reason_string: Some("maintenance".into()),
        user_properties: Vec::new(),
        server_reference: Some(format!("127.0.0.1:{}", m.port)),
    });
    let fake = disconnecting_server(d).await;
    // The second endpoint answers nothing: going there would be wrong.
    let unused = common::mosquitto::free_port();
    let mut o = options("ref", vec![tcp(fake), tcp(unused), tcp(m.port)]);
    o.failback.enabled = false;
    let mut c = TestClient::spawn(o);
    c.event(
        "failover to the referenced server",
        |e| matches!(e, ClientEvent::Failover { to, .. } if *to == tcp(m.port).url()),
    )
    .await;
    c.connected_to(m.port).await;
    c.stop().await;
}

/// Stock Mosquitto (`max_inflight_messages 20`), logging connections.
const STOCK_LOGGED: &str = "log_type notice\n";

/// A client towards a Mosquitto destination with `protocol` unset.
fn destination(name: &str, m: &Mosquitto) -> ClientOptions {
    let mut o = options(name, vec![tcp(m.port)]);
    o.protocol = ProtocolChoice::Auto;
    o.publishes = true;
    o
}

#[tokio::test]
async fn auto_towards_a_destination_granting_20_speaks_3_1_1_after_the_first_connack() {
    let m = Mosquitto::start_with(STOCK_LOGGED);
    let mut o = destination("rm20", &m);
    let id = o.client_id.clone();
    let reconnect = std::sync::Arc::new(tokio::sync::Notify::new());
    o.reconnect = Some(reconnect.clone());
    let mut c = TestClient::spawn(o);
    c.connected_to(m.port).await;
    // The v5 connection (receive maximum 20 < inflight 100) is closed with
    // a DISCONNECT and the same attempt continues in 3.1.1.
    assert_eq!(m.protocols_after(&id, 2).await, ["p5", "p2"]);
    let log = std::fs::read_to_string(m.log_path()).unwrap_or_default();
    assert!(
        log.contains(&format!("Client {id} disconnected.")),
        "a clean DISCONNECT, not a dropped socket: {log}"
    );
    assert!(
        std::iter::from_fn(|| c.events.try_recv().ok())
            .all(|e| !matches!(e, ClientEvent::Disconnected { .. })),
        "the switch is not a failed attempt"
    );
    // The link works (the window is `inflight` now: QoS 1 has none on 3.1.1).
    publish(&c, Message::new("rm20/t", "x", QoS::AtLeastOnce, false))
        .await
        .expect("PUBACK");
    // Remembered for the endpoint: the next connection is 3.1.1 at once.
    reconnect.notify_waiters();
    assert_eq!(m.protocols_after(&id, 3).await, ["p5", "p2", "p2"]);
    c.connected_to(m.port).await;
    c.stop().await;
}

#[tokio::test]
async fn auto_towards_a_source_only_broker_granting_20_keeps_mqtt_5() {
    let m = Mosquitto::start_with(STOCK_LOGGED);
    let mut o = destination("src20", &m);
    o.publishes = false;
    let id = o.client_id.clone();
    let c = TestClient::spawn(o);
    c.connected_to(m.port).await;
    // A fallback would have been logged before the CONNACK we saw.
    assert_eq!(m.protocols_after(&id, 1).await, ["p5"]);
    assert_eq!(m.logged_protocols(&id), ["p5"]);
    c.stop().await;
}

#[tokio::test]
async fn explicit_protocol_5_towards_a_destination_granting_20_keeps_mqtt_5() {
    let m = Mosquitto::start_with(STOCK_LOGGED);
    let mut o = destination("v5rm20", &m);
    o.protocol = ProtocolChoice::Only(ProtocolVersion::V5);
    let id = o.client_id.clone();
    let c = TestClient::spawn(o);
    c.connected_to(m.port).await;
    assert_eq!(m.protocols_after(&id, 1).await, ["p5"]);
    // Properties still arrive: the window is the broker's 20.
    publish(&c, full_message("v5rm20/t")).await.expect("PUBACK");
    assert_eq!(m.logged_protocols(&id), ["p5"]);
    c.stop().await;
}

#[tokio::test]
async fn auto_towards_a_destination_granting_a_large_receive_maximum_keeps_mqtt_5() {
    let m = Mosquitto::start_with("log_type notice\nmax_inflight_messages 0\n");
    let o = destination("rmbig", &m);
    let id = o.client_id.clone();
    let c = TestClient::spawn(o);
    c.connected_to(m.port).await;
    assert_eq!(m.protocols_after(&id, 1).await, ["p5"]);
    publish(&c, full_message("rmbig/t")).await.expect("PUBACK");
    assert_eq!(m.logged_protocols(&id), ["p5"]);
    c.stop().await;
}

/// Reads the next MQTT 5 packet a client sends on `s` (`None`: closed).
async fn read_packet5(s: &mut TcpStream, buf: &mut BytesMut) -> Option<p5::Packet> {
    loop {
        if let Ok(Some(p)) = v5::decode(buf, usize::MAX, Sender::Client) {
            return Some(p);
        }
        let mut chunk = [0u8; 512];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What a scripted server saw on one connection: the packets the client
/// sent after its CONNECT, until it closed.
type Transcript = mpsc::UnboundedSender<Vec<p5::Packet>>;

/// A v5 server that answers every CONNECT with `script` (raw bytes), then
/// records what the client sends until it closes.
async fn scripted_server(script: BytesMut, seen: Transcript) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (script, seen) = (script.clone(), seen.clone());
            tokio::spawn(async move {
                if read_connect(&mut s).await != Some(ProtocolVersion::V5) {
                    return;
                }
                let _ = s.write_all(&script).await;
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                while let Some(p) = read_packet5(&mut s, &mut buf).await {
                    got.push(p);
                }
                let _ = seen.send(got);
            });
        }
    });
    port
}

/// AUTH 0x18 (continue authentication) with method `SCRAM-SHA-1`, as
/// bytes (rumqttc does not export what builds one).
fn auth5() -> BytesMut {
    let method = b"SCRAM-SHA-1";
    let props = 1 + 2 + method.len();
    let mut b = BytesMut::from(&[0xF0, (2 + props) as u8, 0x18, props as u8, 0x15, 0x00][..]);
    b.extend_from_slice(&[method.len() as u8]);
    b.extend_from_slice(method);
    b
}

/// An AUTH from a broker we sent no authentication method to
/// [MQTT-4.12.0-6]: DISCONNECT 0x82, a protocol error, a reconnect.
async fn auth_is_a_protocol_error(script: BytesMut) {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let port = scripted_server(script, tx).await;
    let mut c = TestClient::spawn(options("auth", vec![tcp(port)]));
    let e = c
        .event("the AUTH ends the connection", |e| {
            matches!(e, ClientEvent::Disconnected { .. })
        })
        .await;
    assert!(
        matches!(
            e,
            ClientEvent::Disconnected {
                kind: ErrorKind::Protocol,
                ..
            }
        ),
        "{e:?}"
    );
    let sent = timeout(WAIT, seen.recv())
        .await
        .expect("the client closed the connection")
        .expect("transcript");
    assert!(
        matches!(
            sent.last(),
            Some(p5::Packet::Disconnect(d))
                if d.reason_code == p5::DisconnectReasonCode::ProtocolError
        ),
        "DISCONNECT 0x82 last: {sent:?}"
    );
    assert!(
        !sent.iter().any(|p| matches!(p, p5::Packet::Auth(_))),
        "no AUTH answered [MQTT-4.12.0-7]: {sent:?}"
    );
    // And again after the backoff: the client carries on.
    c.event("a reconnect attempt", |e| {
        matches!(e, ClientEvent::ConnectAttempt { .. })
    })
    .await;
    timeout(WAIT, seen.recv())
        .await
        .expect("a second connection")
        .expect("transcript");
    c.stop().await;
}

#[tokio::test]
async fn an_auth_after_the_connack_is_a_protocol_error_disconnect_0x82() {
    let mut script = connack5();
    script.extend_from_slice(&auth5());
    auth_is_a_protocol_error(script).await;
}

#[tokio::test]
async fn an_auth_in_place_of_the_connack_is_a_protocol_error_disconnect_0x82() {
    auth_is_a_protocol_error(auth5()).await;
}

/// A CONNACK refusing us with `code` and a server reference.
fn connack_moved(code: p5::ConnectReturnCode, reference: &str) -> BytesMut {
    encode5(p5::Packet::ConnAck(p5::ConnAck {
        session_present: false,
        code,
        properties: Some(p5::ConnAckProperties {
            session_expiry_interval: None,
            receive_max: None,
            max_qos: None,
            retain_available: None,
            max_packet_size: None,
            assigned_client_identifier: None,
            topic_alias_max: None,
            reason_string: Some("maintenance".into()),
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: None,
            response_information: None,
            server_reference: Some(reference.into()),
            authentication_method: None,
            authentication_data: None,
        }),
    }))
}

/// The endpoints the client dialed, from the events seen so far.
fn dialed(c: &mut TestClient) -> Vec<String> {
    std::iter::from_fn(|| c.events.try_recv().ok())
        .filter_map(|e| match e {
            ClientEvent::ConnectAttempt { endpoint } => Some(endpoint),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_connack_0x9d_server_moved_to_a_configured_endpoint_is_dialed_next() {
    let m = Mosquitto::start();
    let (tx, _seen) = mpsc::unbounded_channel();
    // A list: the first entry is no endpoint of ours, the second is.
    let reference = format!("elsewhere.example:1883 localhost.:1 127.0.0.1:{}", m.port);
    let fake = scripted_server(
        connack_moved(p5::ConnectReturnCode::ServerMoved, &reference),
        tx,
    )
    .await;
    // The second endpoint answers nothing: going there would be wrong.
    let unused = common::mosquitto::free_port();
    let mut o = options("moved", vec![tcp(fake), tcp(unused), tcp(m.port)]);
    o.failback.enabled = false;
    let mut c = TestClient::spawn(o);
    let first = c
        .event("the first failover", |e| {
            matches!(e, ClientEvent::Failover { .. })
        })
        .await;
    assert_eq!(
        first,
        ClientEvent::Failover {
            from: tcp(fake).url(),
            to: tcp(m.port).url()
        },
        "straight to the referenced server, the endpoint in between skipped"
    );
    c.connected_to(m.port).await;
    assert!(!dialed(&mut c).contains(&tcp(unused).url()));
    c.stop().await;
}

#[tokio::test]
async fn a_connack_0x9c_naming_a_server_not_configured_is_not_dialed_failover_is_normal() {
    let m = Mosquitto::start();
    // Listening, so a connection attempt would be seen here.
    let elsewhere = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let reference = format!("127.0.0.1:{}", elsewhere.local_addr().expect("addr").port());
    let (tx, _seen) = mpsc::unbounded_channel();
    let fake = scripted_server(
        connack_moved(p5::ConnectReturnCode::UseAnotherServer, &reference),
        tx,
    )
    .await;
    let mut o = options("notours", vec![tcp(fake), tcp(m.port)]);
    o.failback.enabled = false;
    o.username = Some("user".into());
    o.password = Some("secret".into());
    let mut c = TestClient::spawn(o);
    let e = c
        .event("the refusal", |e| {
            matches!(e, ClientEvent::Disconnected { .. })
        })
        .await;
    assert!(
        matches!(
            e,
            ClientEvent::Disconnected {
                kind: ErrorKind::Refused,
                ..
            }
        ),
        "{e:?}"
    );
    // The normal order: the next configured endpoint.
    c.connected_to(m.port).await;
    assert_eq!(dialed(&mut c), vec![tcp(m.port).url()]);
    assert!(
        futures_util::FutureExt::now_or_never(elsewhere.accept()).is_none(),
        "nothing (and no credentials) went to a server the config does not name"
    );
    c.stop().await;
}

/// A successful CONNACK granting `receive_max` and `max_packet_size`.
fn connack_granting(
    session_present: bool,
    receive_max: u16,
    max_packet_size: Option<u32>,
) -> BytesMut {
    encode5(p5::Packet::ConnAck(p5::ConnAck {
        session_present,
        code: p5::ConnectReturnCode::Success,
        properties: Some(p5::ConnAckProperties {
            session_expiry_interval: None,
            receive_max: Some(receive_max),
            max_qos: None,
            retain_available: None,
            max_packet_size,
            assigned_client_identifier: None,
            topic_alias_max: None,
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        }),
    }))
}

/// The next PUBLISH the client sends: (topic, packet id, DUP).
async fn next_publish5(s: &mut TcpStream, buf: &mut BytesMut) -> (String, u16, bool) {
    match timeout(WAIT, read_packet5(s, buf)).await {
        Ok(Some(p5::Packet::Publish(p))) => (
            String::from_utf8_lossy(&p.topic).into_owned(),
            p.pkid,
            p.dup,
        ),
        other => panic!("expected a PUBLISH, got {other:?}"),
    }
}

#[tokio::test]
async fn a_broker_that_lowered_its_limits_gets_the_resends_within_them() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let mut o = options("lowered", vec![tcp(port)]);
    o.clean_session = false;
    let mut c = TestClient::spawn(o);

    // Connection 1: room for 10, no size limit; five QoS 1 messages go
    // out (the second one 300 bytes) and are never acknowledged.
    let (mut s, _) = timeout(WAIT, l.accept())
        .await
        .expect("dial")
        .expect("accept");
    assert_eq!(read_connect(&mut s).await, Some(ProtocolVersion::V5));
    s.write_all(&connack_granting(false, 10, None))
        .await
        .expect("CONNACK");
    let mut acks = Vec::new();
    for i in 0..5 {
        let payload = if i == 1 { "x".repeat(300) } else { "p".into() };
        let m = Message::new(format!("low/{i}"), payload, QoS::AtLeastOnce, false);
        acks.push(c.link.publish(m).await.expect("publish request"));
    }
    let mut buf = BytesMut::new();
    let mut first = Vec::new();
    for _ in 0..5 {
        first.push(next_publish5(&mut s, &mut buf).await);
    }
    drop(s);

    // Connection 2: the session is kept, but 2 at once and 200 bytes at
    // most. low/1 can never go again: a `rejected` drop, not a flow
    // stuck in the window; low/0 and low/2 are resent, nothing more.
    let (mut s, _) = timeout(WAIT, l.accept())
        .await
        .expect("redial")
        .expect("accept");
    assert_eq!(read_connect(&mut s).await, Some(ProtocolVersion::V5));
    s.write_all(&connack_granting(true, 2, Some(200)))
        .await
        .expect("CONNACK");
    let mut buf = BytesMut::new();
    let resent = [
        next_publish5(&mut s, &mut buf).await,
        next_publish5(&mut s, &mut buf).await,
    ];
    assert_eq!(
        resent,
        [
            ("low/0".into(), first[0].1, true),
            ("low/2".into(), first[2].1, true)
        ]
    );
    let big = timeout(WAIT, acks.remove(1).wait())
        .await
        .expect("low/1 completes");
    assert!(matches!(big, Err(LinkError::Rejected(_))), "{big:?}");
    // Nothing more before an ack: our QoS 1 probe's PUBACK comes next.
    let mut probe = p5::Publish::new("probe", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, "?", None);
    probe.pkid = 77;
    s.write_all(&encode5(p5::Packet::Publish(probe)))
        .await
        .expect("probe");
    c.recv().await.ack.ack();
    match timeout(WAIT, read_packet5(&mut s, &mut buf)).await {
        Ok(Some(p5::Packet::PubAck(a))) => assert_eq!(a.pkid, 77),
        other => panic!("only the probe's PUBACK, got {other:?}"),
    }
    // Each ack lets the next one go, in order.
    for (next, acked) in [(3, 0), (4, 2)] {
        s.write_all(&encode5(p5::Packet::PubAck(p5::PubAck::new(
            first[acked].1,
            None,
        ))))
        .await
        .expect("PUBACK");
        assert_eq!(
            next_publish5(&mut s, &mut buf).await,
            (format!("low/{next}"), first[next].1, true)
        );
    }
    for i in [3, 4] {
        s.write_all(&encode5(p5::Packet::PubAck(p5::PubAck::new(
            first[i].1, None,
        ))))
        .await
        .expect("PUBACK");
    }
    for ack in acks {
        timeout(WAIT, ack.wait())
            .await
            .expect("acknowledged")
            .expect("delivered");
    }
    c.stop().await;
}

#[tokio::test]
async fn after_the_switch_to_3_1_1_qos2_stays_within_what_the_broker_granted() {
    // A 3.1.1 Mosquitto silently discards QoS 2 PUBLISHes beyond its
    // `max_inflight_messages` (5 here, below the client's QoS 2 limit of
    // 20); the receive maximum it granted over MQTT 5 bounds QoS 2 after
    // the switch, so nothing is lost.
    const N: usize = 100;
    let m = Mosquitto::start_with("log_type notice\nmax_inflight_messages 5\n");
    let topic = unique("q2cap");
    let mut sub = TestClient::spawn(options("q2capsub", vec![tcp(m.port)]));
    sub.connected_to(m.port).await;
    sub.subscribe(&topic, QoS::ExactlyOnce).await;
    let o = destination("q2cap", &m);
    let id = o.client_id.clone();
    let c = TestClient::spawn(o);
    c.connected_to(m.port).await;
    assert_eq!(m.protocols_after(&id, 2).await, ["p5", "p2"]);
    let link = c.link.clone();
    let t = topic.clone();
    let producer = tokio::spawn(async move {
        let mut acks = Vec::new();
        for i in 0..N {
            let msg = Message::new(t.clone(), format!("{i}"), QoS::ExactlyOnce, false);
            acks.push(link.publish(msg).await.expect("publish request"));
        }
        for ack in acks {
            ack.wait().await.expect("delivered");
        }
    });
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < N {
        let d = timeout(WAIT, sub.rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("only {} of {N} arrived", seen.len()));
        seen.insert(String::from_utf8_lossy(&d.message.payload).into_owned());
        d.ack.ack();
    }
    timeout(WAIT, producer)
        .await
        .expect("every QoS 2 flow completed")
        .expect("producer");
    sub.stop().await;
    c.stop().await;
}
