//! MQTT over WebSocket: the client core against Mosquitto's `protocol
//! websockets` listener (publish/subscribe, and a pipe whose destination is a
//! `ws://` endpoint), and `wss://` against our own built-in listener.

mod common;

use std::time::Duration;

use common::bridge::{Sub, publish, start_run, stop_run, unique};
use common::broker::TestBroker;
use common::certs;
use common::client::TestClient;
use common::mosquitto::{Mosquitto, free_port};
use mqbridge::broker::{ListenerOptions, ServerTls};
use mqbridge::client::{ClientOptions, Endpoint};
use mqbridge::link::LinkState;
use mqbridge::protocol::QoS;

/// Mosquitto with its TCP listener and a WebSocket listener on another free
/// port; returns once that one accepts connections too (the harness waits
/// only for the first listener).
fn mosquitto_with_ws() -> (Mosquitto, u16) {
    let ws_port = free_port();
    let m = Mosquitto::start_with(&format!(
        "listener {ws_port} 127.0.0.1\nprotocol websockets\n"
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", ws_port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto's websockets listener on {ws_port} never came up (is mosquitto built with websockets?)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (m, ws_port)
}

fn options(name: &str, ep: Endpoint) -> ClientOptions {
    let mut o = ClientOptions::new(name, vec![ep], unique(name));
    o.backoff.min = Duration::from_millis(50);
    o.backoff.max = Duration::from_millis(400);
    o.connect_timeout = Duration::from_secs(3);
    o.clean_session = true;
    o
}

async fn connected(c: &TestClient, url: &str) {
    let state = c
        .state("connected", |s| matches!(s, LinkState::Connected { .. }))
        .await;
    assert!(
        matches!(&state, LinkState::Connected { endpoint, .. } if endpoint == url),
        "{state:?}"
    );
}

#[tokio::test]
async fn client_publishes_and_subscribes_over_ws_to_mosquitto() {
    let (m, ws_port) = mosquitto_with_ws();
    let p = unique("ws");
    let ep = Endpoint::ws("127.0.0.1", ws_port, "/mqtt");
    let url = format!("ws://127.0.0.1:{ws_port}/mqtt");
    assert_eq!(ep.url(), url);
    let mut c = TestClient::spawn(options("ws", ep));
    connected(&c, &url).await;
    let granted = c.subscribe(&format!("{p}/#"), QoS::ExactlyOnce).await;
    assert_eq!(granted, vec![Some(QoS::ExactlyOnce)]);

    // Our own publishes come back through Mosquitto, at every QoS.
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let topic = format!("{p}/q{}", qos.as_u8());
        c.publish(&topic, "over-ws", qos).await;
        let d = c.recv().await;
        assert_eq!(
            (d.message.topic.as_str(), d.message.qos),
            (topic.as_str(), qos)
        );
        assert_eq!(&d.message.payload[..], b"over-ws");
        d.ack.ack();
    }

    // A plain-TCP publisher on the same Mosquitto reaches the WebSocket subscriber.
    publish(m.port, &format!("{p}/from-tcp"), "tcp", 1, false).await;
    let d = c.recv().await;
    assert_eq!(
        (d.message.topic.as_str(), &d.message.payload[..]),
        (format!("{p}/from-tcp").as_str(), &b"tcp"[..])
    );
    d.ack.ack();
    c.stop().await;
}

#[tokio::test]
async fn pipe_forwards_to_a_ws_destination() {
    let (m, ws_port) = mosquitto_with_ws();
    let p = unique("wspipe");
    let yaml = format!(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n  cloud:\n    type: remote\n    endpoints: [ws://127.0.0.1:{ws_port}/mqtt]\n    client_id: {p}-cloud\n    ws_headers:\n      X-Test: mqbridge\n    reconnect: {{ min: 50ms, max: 500ms }}\npipes:\n  up:\n    from: edge\n    to: cloud\n    topics: [{p}/dev/#]\n    remap:\n      - strip_prefix: {p}/dev/\n        add_prefix: {p}/cloud/\n"
    );
    let (token, run) = start_run(&yaml).await;
    let edge = run.builtin_addrs("edge").expect("edge addrs")[0].port();
    let mut on_m = Sub::start(m.port, &unique("sub"), &format!("{p}/cloud/#"), 1, false).await;
    publish(edge, &format!("{p}/dev/t1"), "21.5", 1, false).await;
    let got = on_m.next().await.expect("forwarded over ws");
    assert_eq!(
        (got.topic, got.payload, got.qos),
        (format!("{p}/cloud/t1"), "21.5".to_string(), 1)
    );
    let report = stop_run(token, run).await;
    assert!(report.busy_pipes.is_empty());
}

#[tokio::test]
async fn wss_client_to_builtin_wss_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = certs::generate(dir.path(), "wss");
    let b = TestBroker::start_with(|o| {
        o.listeners = vec![ListenerOptions {
            addr: "127.0.0.1:0".parse().expect("addr"),
            tls: Some(ServerTls {
                cert_file: pki.server_cert.clone(),
                key_file: pki.server_key.clone(),
                client_ca_file: None,
                require_client_cert: false,
                cert_cn_as_username: false,
            }),
            websocket: true,
        }];
    })
    .await;
    let port = b.addr.port();
    let mut o = options("wss", Endpoint::ws("localhost", port, "/mqtt").with_tls());
    o.tls.ca_file = Some(pki.ca.clone());
    let p = unique("wss");
    let mut c = TestClient::spawn(o);
    connected(&c, &format!("wss://localhost:{port}/mqtt")).await;
    c.subscribe(&format!("{p}/#"), QoS::AtLeastOnce).await;
    c.publish(&format!("{p}/x"), "secure", QoS::AtLeastOnce)
        .await;
    let d = c.recv().await;
    assert_eq!(&d.message.payload[..], b"secure");
    d.ack.ack();

    // The same listener refuses plain MQTT over TLS without the upgrade:
    // a `mqtts://` client never gets a CONNACK.
    let mut o = options("mqtts", Endpoint::tls("localhost", port));
    o.tls.ca_file = Some(pki.ca.clone());
    o.connect_timeout = Duration::from_millis(500);
    let mut plain = TestClient::spawn(o);
    plain
        .event("a failed attempt", |e| {
            matches!(e, mqbridge::client::ClientEvent::Disconnected { .. })
        })
        .await;
    assert!(!matches!(
        *plain.link.state().borrow(),
        LinkState::Connected { .. }
    ));
    plain.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn endpoint_check_does_the_websocket_upgrade() {
    let (m, ws_port) = mosquitto_with_ws();
    let limit = Duration::from_secs(5);
    let tls = mqbridge::client::TlsOptions::default();
    mqbridge::client::check_endpoint(
        &Endpoint::ws("127.0.0.1", ws_port, "/mqtt"),
        &tls,
        &[],
        limit,
    )
    .await
    .expect("the websockets listener upgrades");
    // Mosquitto's plain MQTT port accepts TCP but answers no HTTP upgrade.
    let err = mqbridge::client::check_endpoint(
        &Endpoint::ws("127.0.0.1", m.port, "/mqtt"),
        &tls,
        &[],
        limit,
    )
    .await
    .expect_err("no upgrade on an MQTT port");
    assert!(
        matches!(
            err,
            mqbridge::client::ClientError::WebSocket { .. }
                | mqbridge::client::ClientError::Io { .. }
        ),
        "{err}"
    );
}
