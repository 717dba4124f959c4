//! The client core against our own built-in broker, in process on port 0:
//! QoS flows both ways (TCP client ↔ in-process link), persistent sessions,
//! and failover/failback between two brokers by cancelling the first.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::client::{CLIENT_WAIT as WAIT, TestClient, publish_acked};
use mqbridge::broker::{Broker, BrokerOptions, ListenerOptions};
use mqbridge::client::{ClientEvent, ClientOptions, Endpoint};
use mqbridge::protocol::QoS;
use tokio::sync::broadcast;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

async fn start_broker(name: &str, addr: SocketAddr) -> (Broker, CancellationToken) {
    let token = CancellationToken::new();
    let opts = BrokerOptions {
        name: name.into(),
        listeners: vec![ListenerOptions {
            addr,
            tls: None,
            websocket: false,
        }],
        ..BrokerOptions::default()
    };
    let broker = Broker::start(opts, token.clone())
        .await
        .expect("broker starts");
    (broker, token)
}

fn port(b: &Broker) -> u16 {
    b.local_addrs().first().map(|a| a.port()).expect("listener")
}

fn spawn(ports: &[u16], id: &str, clean: bool) -> TestClient {
    let eps = ports
        .iter()
        .map(|p| Endpoint::tcp("127.0.0.1", *p))
        .collect();
    let mut o = ClientOptions::new(id, eps, id);
    o.clean_session = clean;
    o.backoff.min = Duration::from_millis(50);
    o.backoff.max = Duration::from_millis(300);
    o.connect_timeout = Duration::from_secs(2);
    o.failback.probe_interval = Duration::from_millis(100);
    o.failback.probes_required = 2;
    TestClient::spawn(o)
}

#[tokio::test]
async fn qos_flows_between_client_and_builtin_broker() {
    let (broker, token) = start_broker("edge", "127.0.0.1:0".parse().expect("addr")).await;
    let mut c = spawn(&[port(&broker)], "builtin-qos", true);
    c.connected_to(port(&broker)).await;
    let granted = c
        .link
        .subscribe(vec![("in/#".into(), QoS::ExactlyOnce)])
        .await
        .expect("subscribe");
    assert_eq!(granted, vec![Some(QoS::ExactlyOnce)]);

    // In-process link → broker → our TCP client.
    let (local, mut local_rx) = broker.link("local-pipe", true);
    local
        .subscribe(vec![("out/#".into(), QoS::ExactlyOnce)])
        .await
        .expect("local subscribe");
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let t = format!("in/{}", qos.as_u8());
        publish_acked(&local, &t, "to-client", qos).await;
        let d = c.recv().await;
        assert_eq!((d.message.topic.as_str(), d.message.qos), (t.as_str(), qos));
        d.ack.ack();

        // Our TCP client → broker → in-process link.
        let t = format!("out/{}", qos.as_u8());
        publish_acked(&c.link, &t, "from-client", qos).await;
        let d = timeout(WAIT, local_rx.recv())
            .await
            .expect("local delivery")
            .expect("open");
        assert_eq!((d.message.topic.as_str(), d.message.qos), (t.as_str(), qos));
        d.ack.ack();
    }
    c.shutdown().await;
    token.cancel();
    broker.closed().await;
}

#[tokio::test]
async fn persistent_session_on_builtin_broker() {
    let (broker, token) = start_broker("edge", "127.0.0.1:0".parse().expect("addr")).await;
    let p = port(&broker);
    let c = spawn(&[p], "builtin-persist", false);
    assert!(!c.connected_to(p).await);
    c.subscribe("q/#", QoS::AtLeastOnce).await;
    c.shutdown().await;

    let (local, _rx) = broker.link("publisher", true);
    for i in 0..3 {
        publish_acked(&local, "q/x", &format!("{i}"), QoS::AtLeastOnce).await;
    }
    let mut c = spawn(&[p], "builtin-persist", false);
    assert!(c.connected_to(p).await, "session resumed");
    for i in 0..3 {
        let d = c.recv().await;
        assert_eq!(d.message.payload, format!("{i}").into_bytes());
        d.ack.ack();
    }
    c.shutdown().await;
    token.cancel();
    broker.closed().await;
}

/// Two in-process brokers; cancel the first → the client moves to the second
/// and messages flow there; start the first again on its port → failback
/// after the probes pass.
#[tokio::test]
async fn failover_and_failback_between_builtin_brokers() {
    let (a, a_token) = start_broker("a", "127.0.0.1:0".parse().expect("addr")).await;
    let (b, b_token) = start_broker("b", "127.0.0.1:0".parse().expect("addr")).await;
    let (pa, pb) = (port(&a), port(&b));
    let mut c = spawn(&[pa, pb], "builtin-failover", true);
    c.connected_to(pa).await;
    c.subscribe("f/#", QoS::AtLeastOnce).await;

    a_token.cancel();
    a.closed().await;
    c.connected_to(pb).await;
    let (local_b, _rx) = b.link("pub-b", true);
    publish_acked(&local_b, "f/1", "via-b", QoS::AtLeastOnce).await;
    let d = c.recv().await;
    assert_eq!(&d.message.payload[..], b"via-b");
    d.ack.ack();

    let (a2, a2_token) = start_broker("a", SocketAddr::from(([127, 0, 0, 1], pa))).await;
    let ev = timeout(WAIT, async {
        loop {
            match c.events.recv().await {
                Ok(ClientEvent::Failback { to }) => return to,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("failback");
    assert_eq!(ev, format!("mqtt://127.0.0.1:{pa}"));
    c.connected_to(pa).await;
    let (local_a, _rx) = a2.link("pub-a", true);
    publish_acked(&local_a, "f/2", "back-on-a", QoS::AtLeastOnce).await;
    let d = c.recv().await;
    assert_eq!(&d.message.payload[..], b"back-on-a");
    d.ack.ack();

    c.shutdown().await;
    for t in [a2_token, b_token] {
        t.cancel();
    }
    a2.closed().await;
    b.closed().await;
}

/// Our own X.509 v1 certificate (rustls refuses it) is reported naming the
/// file and the reason in plain words — not rustls' `invalid peer
/// certificate: Other(OtherError(UnsupportedCertVersion))` — both as a
/// client certificate (the bridge's link) and as a listener's certificate.
#[tokio::test]
async fn own_v1_certificates_are_reported_in_plain_words() {
    let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/certs");
    let plain = |text: &str| {
        assert!(text.contains("x509-v1.pem"), "names the file: {text}");
        assert!(text.contains("X.509 v1; rustls needs v3"), "{text}");
        assert!(
            !text.contains("OtherError") && !text.contains("peer"),
            "{text}"
        );
    };

    let mut opts = BrokerOptions {
        name: "v1".into(),
        listeners: vec![ListenerOptions {
            addr: "127.0.0.1:0".parse().expect("addr"),
            tls: Some(mqbridge::broker::ServerTls {
                cert_file: certs.join("x509-v1.pem"),
                key_file: certs.join("x509-v1.key"),
                client_ca_file: None,
                require_client_cert: false,
                cert_cn_as_username: false,
            }),
            websocket: false,
        }],
        ..BrokerOptions::default()
    };
    let token = CancellationToken::new();
    let err = Broker::start(opts.clone(), token.clone())
        .await
        .expect_err("a v1 server certificate is refused");
    plain(&err.to_string());

    // A plain listener to dial: the client refuses its own v1 certificate
    // before any handshake.
    opts.listeners[0].tls = None;
    let b = Broker::start(opts, token.clone()).await.expect("broker");
    let ep = Endpoint::tls("127.0.0.1", b.local_addrs()[0].port());
    let tls = mqbridge::client::TlsOptions {
        ca_file: Some(certs.join("x509-v1-ca.pem")),
        cert_file: Some(certs.join("x509-v1.pem")),
        key_file: Some(certs.join("x509-v1.key")),
        ..Default::default()
    };
    let err = mqbridge::client::check_endpoint(&ep, &tls, &[], WAIT)
        .await
        .expect_err("a v1 client certificate is refused");
    plain(&err.to_string());
    token.cancel();
}
