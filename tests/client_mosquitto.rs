//! The client core against real Mosquitto processes (started by the tests on
//! free ports) and tiny fake servers: QoS flows, sessions, TLS, faults,
//! failover and failback.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::bridge::unique;
use common::certs;
use common::client::{CLIENT_WAIT as WAIT, TestClient};
use common::mosquitto::{Mosquitto, password_file};
use mqbridge::client::{self, ClientEvent, ClientOptions, Endpoint, ErrorKind, Stage};
use mqbridge::link::LinkState;
use mqbridge::protocol::version::{ProtocolChoice, ProtocolVersion};
use mqbridge::protocol::{Message, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Test options: fast backoff and probes, short timeouts. These tests pin
/// MQTT 3.1.1 (their fake servers speak it and their byte fixtures are
/// 3.1.1 packets); `client_v5.rs` covers the MQTT 5 client.
fn options(name: &str, endpoints: Vec<Endpoint>) -> ClientOptions {
    let mut o = ClientOptions::new(name, endpoints, unique(name));
    o.protocol = ProtocolChoice::Only(ProtocolVersion::V3_1_1);
    o.backoff.min = Duration::from_millis(50);
    o.backoff.max = Duration::from_millis(400);
    o.backoff.stable_after = Duration::from_secs(2);
    o.connect_timeout = Duration::from_secs(2);
    o.keepalive = Duration::from_secs(5);
    o.failback.probe_interval = Duration::from_millis(150);
    o.failback.probes_required = 3;
    o.clean_session = true;
    o
}

fn tcp(port: u16) -> Endpoint {
    Endpoint::tcp("127.0.0.1", port)
}

#[tokio::test]
async fn qos_0_1_2_publish_and_subscribe() {
    let m = Mosquitto::start();
    let prefix = unique("qos");
    let mut sub = TestClient::spawn(options("sub", vec![tcp(m.port)]));
    let publ = TestClient::spawn(options("pub", vec![tcp(m.port)]));
    sub.connected_to(m.port).await;
    let granted = timeout(
        WAIT,
        sub.link
            .subscribe(vec![(format!("{prefix}/#"), QoS::ExactlyOnce)]),
    )
    .await
    .expect("suback")
    .expect("subscribe");
    assert_eq!(granted, vec![Some(QoS::ExactlyOnce)]);

    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let topic = format!("{prefix}/q{}", qos.as_u8());
        publ.publish(&topic, "hello", qos).await;
        let d = sub.recv().await;
        assert_eq!(d.message.topic, topic);
        assert_eq!(d.message.qos, qos);
        assert_eq!(&d.message.payload[..], b"hello");
        assert_eq!(d.ack.is_required(), qos != QoS::AtMostOnce);
        d.ack.ack();
    }

    // A message from an independent client (mosquitto_pub) reaches us too.
    m.publish(&format!("{prefix}/ext"), "from-cli", 1, &[]);
    let d = sub.recv().await;
    assert_eq!(&d.message.payload[..], b"from-cli");
    d.ack.ack();

    // And ours reach mosquitto_sub (persistent session prepared first).
    let cli = unique("cli");
    m.prepare_subscriber(&cli, &format!("{prefix}/to-cli"), 2);
    publ.publish(&format!("{prefix}/to-cli"), "x2", QoS::ExactlyOnce)
        .await;
    let got = m.collect(&cli, &format!("{prefix}/to-cli"), 2, 1, 5);
    assert_eq!(got, vec![format!("{prefix}/to-cli x2")]);

    sub.stop().await;
    publ.stop().await;
}

#[tokio::test]
async fn persistent_session_resumes_and_receives_queued_messages() {
    let m = Mosquitto::start();
    let topic = unique("persist");
    let mut opts = options("persist", vec![tcp(m.port)]);
    opts.clean_session = false;
    let c = TestClient::spawn(opts.clone());
    assert!(!c.connected_to(m.port).await, "fresh session expected");
    c.subscribe(&topic, QoS::AtLeastOnce).await;
    // Graceful shutdown through the link: DISCONNECT, then Closed.
    c.link.shutdown().await;
    c.state("closed", |s| *s == LinkState::Closed).await;
    c.stop().await;

    // While we are away, the broker queues for our session.
    for i in 0..3 {
        m.publish(&topic, &format!("m{i}"), 1, &[]);
    }

    let mut c = TestClient::spawn(opts);
    assert!(c.connected_to(m.port).await, "session must be resumed");
    for i in 0..3 {
        let d = c.recv().await;
        assert_eq!(d.message.payload, format!("m{i}").into_bytes());
        d.ack.ack();
    }
    c.stop().await;
}

#[tokio::test]
async fn tls_with_generated_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = certs::generate(dir.path(), "tls");
    let m = Mosquitto::start_with(&pki.mosquitto_conf(false));
    let mut opts = options("tls", vec![Endpoint::tls("127.0.0.1", m.port)]);
    opts.tls.ca_file = Some(pki.ca.clone());
    let mut c = TestClient::spawn(opts);
    let want = format!("mqtts://127.0.0.1:{}", m.port);
    c.state(
        "TLS connected",
        |s| matches!(s, LinkState::Connected { endpoint, .. } if *endpoint == want),
    )
    .await;
    let topic = unique("tls");
    c.subscribe(&topic, QoS::AtLeastOnce).await;
    c.publish(&topic, "secure", QoS::AtLeastOnce).await;
    assert_eq!(&c.recv().await.message.payload[..], b"secure");
    c.stop().await;
}

#[tokio::test]
async fn mutual_tls_with_client_certificate_and_sni_override() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = certs::generate(dir.path(), "mtls");
    let m = Mosquitto::start_with(&pki.mosquitto_conf(true));

    // With the client certificate, and verifying the name "localhost".
    let mut opts = options("mtls", vec![Endpoint::tls("127.0.0.1", m.port)]);
    opts.tls.ca_file = Some(pki.ca.clone());
    opts.tls.cert_file = Some(pki.client_cert.clone());
    opts.tls.key_file = Some(pki.client_key.clone());
    opts.tls.server_name = Some("localhost".into());
    let c = TestClient::spawn(opts);
    c.state("mTLS connected", |s| {
        matches!(s, LinkState::Connected { .. })
    })
    .await;
    let topic = unique("mtls");
    c.publish(&topic, "mutual", QoS::AtLeastOnce).await;
    c.stop().await;

    // Without one, the broker refuses the handshake.
    let mut opts = options("mtls-nocert", vec![Endpoint::tls("127.0.0.1", m.port)]);
    opts.tls.ca_file = Some(pki.ca.clone());
    let mut c = TestClient::spawn(opts);
    let e = c
        .event("a failed attempt", |e| {
            matches!(e, ClientEvent::Disconnected { .. })
        })
        .await;
    let ClientEvent::Disconnected {
        endpoint, reason, ..
    } = e
    else {
        unreachable!()
    };
    assert_eq!(endpoint, format!("mqtts://127.0.0.1:{}", m.port));
    assert!(
        reason.contains(&endpoint),
        "reason should name the endpoint: {reason}"
    );
    c.stop().await;
}

#[tokio::test]
async fn wrong_ca_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server_pki = certs::generate(dir.path(), "server");
    let other_pki = certs::generate(dir.path(), "other");
    let m = Mosquitto::start_with(&server_pki.mosquitto_conf(false));
    // The endpoint check (no MQTT) tells the same story up front.
    let ep = Endpoint::tls("127.0.0.1", m.port);
    let good = mqbridge::client::TlsOptions {
        ca_file: Some(server_pki.ca.clone()),
        ..Default::default()
    };
    client::check_endpoint(&ep, &good, &[], WAIT)
        .await
        .expect("right CA passes");
    let mut bad = good.clone();
    bad.ca_file = Some(other_pki.ca.clone());
    let e = client::check_endpoint(&ep, &bad, &[], WAIT)
        .await
        .expect_err("wrong CA fails");
    assert!(e.to_string().contains("not signed by a CA we trust"), "{e}");
    assert!(
        !e.to_string().contains("UnknownIssuer"),
        "no rustls Debug text: {e}"
    );

    let mut opts = options("wrongca", vec![Endpoint::tls("127.0.0.1", m.port)]);
    opts.tls.ca_file = Some(other_pki.ca.clone());
    let c = TestClient::spawn(opts);
    let state = c
        .state("disconnected", |s| {
            matches!(s, LinkState::Disconnected { .. })
        })
        .await;
    let LinkState::Disconnected { reason } = state else {
        unreachable!()
    };
    assert!(
        reason.contains(&format!("mqtts://127.0.0.1:{}", m.port))
            && reason.contains("TLS handshake failed")
            && reason.contains("not signed by a CA we trust"),
        "unclear error: {reason}"
    );
    c.stop().await;
}

/// Kill the broker mid-stream (graceful stop, so its persistence is saved)
/// and restart it: both clients reconnect with backoff, the publisher resends,
/// and every message acknowledged to the caller reaches the persistent
/// subscriber (duplicates allowed, losses not).
#[tokio::test]
async fn broker_restart_mid_stream_loses_no_acked_message() {
    const N: usize = 300;
    let mut m = Mosquitto::start_persistent();
    let topic = unique("restart");

    let mut sub_opts = options("restart-sub", vec![tcp(m.port)]);
    sub_opts.clean_session = false;
    let mut sub = TestClient::spawn(sub_opts);
    sub.connected_to(m.port).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;

    let mut opts = options("restart-pub", vec![tcp(m.port)]);
    opts.clean_session = false;
    opts.inflight = 20;
    let mut publ = TestClient::spawn(opts);
    publ.connected_to(m.port).await;

    // Publish in the background; each ack is counted as it arrives.
    let (count_tx, mut count_rx) = tokio::sync::watch::channel(0usize);
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let link = publ.link.clone();
    let (t, acked2) = (topic.clone(), acked.clone());
    let publisher = tokio::spawn(async move {
        let mut waiters = Vec::with_capacity(N);
        for i in 0..N {
            let msg = Message::new(t.clone(), format!("{i}"), QoS::AtLeastOnce, false);
            let ack = link.publish(msg).await.expect("publish request");
            let (count_tx, acked) = (count_tx.clone(), acked2.clone());
            waiters.push(tokio::spawn(async move {
                if ack.wait().await.is_ok() {
                    // std Mutex: short section, no await inside.
                    if let Ok(mut v) = acked.lock() {
                        v.push(i);
                    }
                    count_tx.send_modify(|c| *c += 1);
                }
            }));
        }
        for w in waiters {
            let _ = w.await;
        }
    });

    // Mid-stream: some acks are in, then the broker goes away and comes back.
    timeout(WAIT, count_rx.wait_for(|c| *c >= 50))
        .await
        .expect("first acks")
        .expect("count");
    m.stop();
    publ.event("disconnect", |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    })
    .await;
    m.start_again();
    assert!(
        publ.connected_to(m.port).await,
        "persistence resumes our session"
    );
    timeout(Duration::from_secs(8), publisher)
        .await
        .expect("publisher timed out")
        .expect("publisher task");
    let acked: Vec<usize> = acked.lock().map(|v| v.clone()).unwrap_or_default();
    assert_eq!(acked.len(), N, "every publish is acked after the restart");

    let mut seen = std::collections::BTreeSet::new();
    let mut deliveries = 0usize;
    timeout(Duration::from_secs(8), async {
        while seen.len() < N {
            let d = sub.recv().await;
            deliveries += 1;
            if let Ok(i) = std::str::from_utf8(&d.message.payload)
                .unwrap_or("")
                .parse::<usize>()
            {
                seen.insert(i);
            }
            d.ack.ack();
        }
    })
    .await
    .unwrap_or_else(|_| {
        let missing: Vec<_> = acked.iter().filter(|i| !seen.contains(i)).collect();
        panic!("acked but lost: {missing:?}")
    });
    eprintln!(
        "restart test: {N} acked, {deliveries} deliveries ({} duplicates)",
        deliveries - N
    );
    sub.stop().await;
    publ.stop().await;
}

/// Two brokers as two endpoints: kill the first → traffic moves to the
/// second; bring the first back → failback only after the probes pass.
#[tokio::test]
async fn failover_to_secondary_and_failback_after_probes() {
    let mut a = Mosquitto::start();
    let b = Mosquitto::start();
    let topic = unique("failover");
    let mut c = TestClient::spawn(options("failover", vec![tcp(a.port), tcp(b.port)]));
    c.connected_to(a.port).await;
    c.subscribe(&topic, QoS::AtLeastOnce).await;

    a.kill();
    let e = c
        .event("failover", |e| matches!(e, ClientEvent::Failover { .. }))
        .await;
    assert_eq!(
        e,
        ClientEvent::Failover {
            from: format!("mqtt://127.0.0.1:{}", a.port),
            to: format!("mqtt://127.0.0.1:{}", b.port),
        }
    );
    assert!(!c.connected_to(b.port).await);
    // The subscription was restored on B and traffic flows there.
    c.publish(&topic, "on-b", QoS::AtLeastOnce).await;
    let d = c.recv().await;
    assert_eq!(&d.message.payload[..], b"on-b");
    d.ack.ack();

    // While A is down, probes fail and we stay on B.
    let e = c
        .event("failed probe", |e| matches!(e, ClientEvent::Probe { .. }))
        .await;
    assert!(matches!(e, ClientEvent::Probe { ok: false, .. }), "{e:?}");

    a.start_again();
    let mut good = 0;
    loop {
        match c
            .event("probe or failback", |e| {
                matches!(e, ClientEvent::Probe { .. } | ClientEvent::Failback { .. })
            })
            .await
        {
            ClientEvent::Probe { ok: true, .. } => good += 1,
            ClientEvent::Probe { ok: false, .. } => good = 0,
            ClientEvent::Failback { to } => {
                assert_eq!(to, format!("mqtt://127.0.0.1:{}", a.port));
                break;
            }
            _ => {}
        }
    }
    assert!(good >= 3, "failback after {good} good probes, 3 required");
    c.connected_to(a.port).await;
    // Subscription restored on A too.
    a.publish(&topic, "back-on-a", 1, &[]);
    let d = c.recv().await;
    assert_eq!(&d.message.payload[..], b"back-on-a");
    d.ack.ack();
    c.stop().await;
}

/// Unacknowledged publishes carry over a failover and are resent on the
/// next endpoint.
#[tokio::test]
async fn unacked_publishes_carry_over_to_the_next_endpoint() {
    // A fake "primary" that accepts CONNECT and never acknowledges PUBLISH.
    let primary = FakeServer::start(|mut s| async move {
        let _ = read_some(&mut s).await; // CONNECT
        let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]).await; // CONNACK accepted
        // Swallow everything, ack nothing, close after the first PUBLISH.
        let _ = read_some(&mut s).await;
    })
    .await;
    let b = Mosquitto::start();
    let topic = unique("carry");
    let cli = unique("carry-cli");
    b.prepare_subscriber(&cli, &topic, 1);
    let mut opts = options("carry", vec![tcp(primary.port), tcp(b.port)]);
    opts.failback.enabled = false;
    let c = TestClient::spawn(opts);
    c.connected_to(primary.port).await;
    let ack = c
        .link
        .publish(Message::new(
            topic.clone(),
            "carried",
            QoS::AtLeastOnce,
            false,
        ))
        .await
        .expect("publish");
    // The primary drops us without a PUBACK; the message is resent on B.
    c.connected_to(b.port).await;
    timeout(WAIT, ack.wait())
        .await
        .expect("ack after failover")
        .expect("publish ok");
    assert_eq!(
        b.collect(&cli, &topic, 1, 1, 5),
        vec![format!("{topic} carried")]
    );
    c.stop().await;
}

/// A server that accepts TCP and never answers CONNECT: the connect timeout
/// fires, attempts are spaced by the backoff, nothing hangs.
#[tokio::test]
async fn silent_server_times_out_with_backoff() {
    let accepts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let acc = accepts.clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = FakeServer::start(move |mut s| {
        if let Ok(mut v) = acc.lock() {
            v.push(tokio::time::Instant::now());
        }
        let _ = tx.send(());
        async move {
            // Read and ignore; never answer.
            let mut buf = [0u8; 256];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
        }
    })
    .await;
    let mut opts = options("silent", vec![tcp(server.port)]);
    opts.connect_timeout = Duration::from_millis(300);
    opts.backoff.min = Duration::from_millis(200);
    opts.backoff.max = Duration::from_millis(400);
    opts.backoff.jitter = false;
    let mut c = TestClient::spawn(opts);
    let state = c
        .state("disconnected", |s| {
            matches!(s, LinkState::Disconnected { .. })
        })
        .await;
    // The kind says what timed out; nobody reads it from the text.
    let e = c
        .event("a failed attempt", |e| {
            matches!(e, ClientEvent::Disconnected { .. })
        })
        .await;
    assert!(
        matches!(
            e,
            ClientEvent::Disconnected {
                kind: ErrorKind::Timeout(Stage::Connack),
                ..
            }
        ),
        "{e:?}"
    );
    let LinkState::Disconnected { reason } = state else {
        unreachable!()
    };
    assert!(
        reason.contains("timed out waiting for CONNACK")
            && reason.contains(&format!("mqtt://127.0.0.1:{}", server.port)),
        "{reason}"
    );
    for _ in 0..3 {
        timeout(WAIT, rx.recv()).await.expect("another attempt");
    }
    let times = accepts.lock().map(|v| v.clone()).unwrap_or_default();
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        // connect timeout (300 ms) + backoff (≥ 200 ms): never a tight loop.
        assert!(gap >= Duration::from_millis(450), "attempts {gap:?} apart");
    }
    c.stop().await;
}

/// A broker that accepts TCP and refuses CONNECT: backoff between attempts.
#[tokio::test]
async fn refused_connect_backs_off() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = FakeServer::start(move |mut s| {
        let _ = tx.send(tokio::time::Instant::now());
        async move {
            let _ = read_some(&mut s).await;
            let _ = s.write_all(&[0x20, 0x02, 0x00, 0x05]).await; // not authorized
            let _ = read_some(&mut s).await;
        }
    })
    .await;
    let mut opts = options("refused", vec![tcp(server.port)]);
    opts.backoff.min = Duration::from_millis(100);
    opts.backoff.max = Duration::from_millis(800);
    opts.backoff.jitter = false;
    let c = TestClient::spawn(opts);
    let mut times = Vec::new();
    for _ in 0..4 {
        times.push(
            timeout(WAIT, rx.recv())
                .await
                .expect("attempt")
                .expect("chan"),
        );
    }
    let gaps: Vec<_> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // 100, 200, 400 ms: growing, never tight.
    assert!(gaps[0] >= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_millis(400), "{gaps:?}");
    let state = c.link.state().borrow().clone();
    if let LinkState::Disconnected { reason } = state {
        assert!(reason.contains("not authorized"), "{reason}");
    }
    c.stop().await;
}

/// Malformed bytes from the broker side: the connection is dropped and
/// re-established, the error names the endpoint.
#[tokio::test]
async fn malformed_bytes_drop_the_connection_and_reconnect() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = FakeServer::start(move |mut s| {
        let _ = tx.send(());
        async move {
            let _ = read_some(&mut s).await;
            let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
            // Packet type 0 is reserved: garbage.
            let _ = s.write_all(&[0x00, 0x03, 0xde, 0xad, 0xbe]).await;
            let _ = read_some(&mut s).await;
        }
    })
    .await;
    let mut c = TestClient::spawn(options("malformed", vec![tcp(server.port)]));
    let e = c
        .event("disconnect", |e| {
            matches!(e, ClientEvent::Disconnected { .. })
        })
        .await;
    let ClientEvent::Disconnected {
        endpoint,
        kind,
        reason,
    } = e
    else {
        unreachable!()
    };
    assert_eq!(endpoint, format!("mqtt://127.0.0.1:{}", server.port));
    assert_eq!(kind, ErrorKind::Protocol);
    assert!(
        reason.contains(&endpoint) && reason.contains("protocol error"),
        "{reason}"
    );
    // Re-established: a second (and third) connection arrives.
    for _ in 0..3 {
        timeout(WAIT, rx.recv()).await.expect("reconnect");
    }
    c.event("connected again", |e| {
        matches!(e, ClientEvent::Connected { .. })
    })
    .await;
    c.stop().await;
}

/// A half-open link (CONNACK, then silence: no PINGRESP) is noticed within
/// 1.5 × keepalive.
#[tokio::test]
async fn half_open_link_detected_by_keepalive() {
    let server = FakeServer::start(|mut s| async move {
        let _ = read_some(&mut s).await;
        let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
        // Swallow PINGREQs, never answer.
        let mut buf = [0u8; 64];
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    let mut opts = options("halfopen", vec![tcp(server.port)]);
    opts.keepalive = Duration::from_secs(1);
    let mut c = TestClient::spawn(opts);
    c.event("connected", |e| matches!(e, ClientEvent::Connected { .. }))
        .await;
    let up = tokio::time::Instant::now();
    let e = c
        .event("keepalive timeout", |e| {
            matches!(e, ClientEvent::Disconnected { .. })
        })
        .await;
    let took = up.elapsed();
    let ClientEvent::Disconnected { reason, .. } = e else {
        unreachable!()
    };
    assert!(reason.contains("keepalive timeout"), "{reason}");
    assert!(
        took >= Duration::from_millis(1400) && took <= Duration::from_millis(2200),
        "noticed after {took:?}, expected 1.5 s"
    );
    c.stop().await;
}

/// With the inflight window full (a broker that never acks), further
/// publishes wait in the bounded request queue: backpressure, not memory.
#[tokio::test]
async fn full_inflight_window_applies_backpressure() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = FakeServer::start(move |mut s| {
        let tx = tx.clone();
        async move {
            let _ = read_some(&mut s).await;
            let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
            let mut buf = vec![0u8; 4096];
            let mut total = 0;
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                // Count PUBLISH QoS 1 packets (first byte 0x32); small ones fit one read each.
                total += buf[..n].iter().filter(|b| **b == 0x32).count();
                let _ = tx.send(total);
            }
        }
    })
    .await;
    let mut opts = options("window", vec![tcp(server.port)]);
    opts.inflight = 2;
    opts.request_capacity = 1;
    let c = TestClient::spawn(opts);
    c.connected_to(server.port).await;
    let mut acks = Vec::new();
    for p in ["a", "b", "c"] {
        let msg = Message::new("w/t", p, QoS::AtLeastOnce, false);
        acks.push(c.link.publish(msg).await.expect("queued"));
    }
    // Two PUBLISHes reach the wire; the third waits in the request queue,
    // and the queue (capacity 1) is full, so a fourth publish blocks.
    let mut seen = 0;
    while seen < 2 {
        seen = timeout(WAIT, rx.recv())
            .await
            .expect("publish")
            .expect("chan");
    }
    let fourth = c
        .link
        .publish(Message::new("w/t", "d", QoS::AtLeastOnce, false));
    assert!(
        timeout(Duration::from_millis(300), fourth).await.is_err(),
        "the fourth publish must wait"
    );
    while let Ok(total) = rx.try_recv() {
        seen = total;
    }
    assert_eq!(seen, 2, "only the inflight window reaches the wire");
    c.stop().await;
    for a in acks {
        assert!(a.wait().await.is_err(), "unacked publishes fail on close");
    }
}

/// A tiny TCP server for fault tests: runs `handler` for every connection.
struct FakeServer {
    port: u16,
    _stop: tokio_util::sync::DropGuard,
}

impl FakeServer {
    async fn start<F, Fut>(handler: F) -> FakeServer
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok((s, _)) => {
                            let conn = handler(s);
                            let token = token.clone();
                            tokio::spawn(async move {
                                tokio::select! {
                                    _ = token.cancelled() => {}
                                    _ = conn => {}
                                }
                            });
                        }
                        Err(_) => break,
                    },
                }
            }
        });
        FakeServer {
            port,
            _stop: stop.drop_guard(),
        }
    }
}

/// Reads whatever arrives next (at least one byte, or EOF).
async fn read_some(s: &mut tokio::net::TcpStream) -> std::io::Result<usize> {
    let mut buf = [0u8; 1024];
    s.read(&mut buf).await
}

/// `insecure: true` connects without any CA (and only warns).
#[tokio::test]
async fn insecure_tls_skips_verification() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = certs::generate(dir.path(), "insecure");
    let m = Mosquitto::start_with(&pki.mosquitto_conf(false));
    let mut opts = options("insecure", vec![Endpoint::tls("127.0.0.1", m.port)]);
    opts.tls.insecure = true;
    let c = TestClient::spawn(opts);
    c.state("connected", |s| matches!(s, LinkState::Connected { .. }))
        .await;
    c.stop().await;
}

/// Birth on every connect (retained `online`), will on an ungraceful loss
/// (retained `offline`), and `offline` published by the client itself on a
/// graceful shutdown.
#[tokio::test]
async fn birth_and_will_status_messages() {
    let m = Mosquitto::start();
    let status = format!("{}/status", unique("status"));
    let mut opts = options("status", vec![tcp(m.port)]);
    opts.birth = Some(Message::new(
        status.clone(),
        "online",
        QoS::AtLeastOnce,
        true,
    ));
    opts.will = Some(Message::new(
        status.clone(),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));

    // Run the client on its own runtime, then drop that runtime: the socket
    // closes without DISCONNECT, as if the process died.
    let port = m.port;
    let o = opts.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async move {
            let c = TestClient::spawn(o);
            c.connected_to(port).await;
            // Keep the link alive (dropping it would shut down gracefully);
            // the runtime drop below kills the task mid-connection.
            std::mem::forget(c);
        });
        drop(rt);
    })
    .join()
    .expect("client thread");
    let retained = |m: &Mosquitto| {
        let out = std::process::Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &m.port.to_string(),
                "-t",
                &status,
                "-C",
                "1",
                "-W",
                "3",
            ])
            .output()
            .expect("mosquitto_sub");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(retained(&m), "offline", "will after an ungraceful loss");

    // Reconnect: the birth replaces it; a graceful stop leaves it.
    let c = TestClient::spawn(opts);
    c.connected_to(m.port).await;
    let t0 = tokio::time::Instant::now();
    let mut last = String::new();
    while t0.elapsed() < WAIT {
        last = retained(&m);
        if last == "online" {
            break;
        }
    }
    assert_eq!(last, "online", "birth after connect");
    // A graceful close sends DISCONNECT (the broker drops the will) but
    // publishes the `offline` status itself first.
    c.stop().await;
    assert_eq!(retained(&m), "offline", "offline after a graceful close");
}

/// A slow consumer: the delivery channel is full, so the client stops
/// reading the socket; it keeps pinging so neither side drops the link, and
/// nothing is lost when the consumer catches up.
#[tokio::test]
async fn slow_consumer_backpressure_keeps_the_link_up() {
    let m = Mosquitto::start();
    let topic = unique("slow");
    let mut opts = options("slow", vec![tcp(m.port)]);
    opts.keepalive = Duration::from_secs(1);
    opts.delivery_capacity = 1;
    let mut c = TestClient::spawn(opts);
    c.connected_to(m.port).await;
    c.subscribe(&topic, QoS::AtLeastOnce).await;
    for i in 0..5 {
        m.publish(&topic, &format!("{i}"), 1, &[]);
    }
    // The consumer is busy for longer than 1.5 × keepalive (the scenario,
    // not a synchronisation).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for i in 0..5 {
        let d = c.recv().await;
        assert_eq!(d.message.payload, format!("{i}").into_bytes());
        d.ack.ack();
    }
    while let Ok(e) = c.events.try_recv() {
        assert!(
            !matches!(e, ClientEvent::Disconnected { .. }),
            "link dropped while paused: {e:?}"
        );
    }
    c.stop().await;
}

/// A burst of QoS 2 publishes: Mosquitto silently discards QoS 2 PUBLISHes
/// beyond its `max_inflight_messages` (20), so the client keeps QoS 2 flows
/// within `inflight_qos2` and nothing is lost.
#[tokio::test]
async fn qos2_burst_stays_within_the_broker_quota() {
    const N: usize = 300;
    let m = Mosquitto::start();
    let topic = unique("qos2burst");
    let mut sub = TestClient::spawn(options("q2sub", vec![tcp(m.port)]));
    sub.connected_to(m.port).await;
    sub.subscribe(&topic, QoS::ExactlyOnce).await;
    let mut opts = options("q2pub", vec![tcp(m.port)]);
    opts.inflight = 100;
    let publ = TestClient::spawn(opts);
    publ.connected_to(m.port).await;
    let link = publ.link.clone();
    let t = topic.clone();
    let producer = tokio::spawn(async move {
        let mut acks = Vec::new();
        for i in 0..N {
            let m = Message::new(t.clone(), format!("{i}"), QoS::ExactlyOnce, false);
            acks.push(link.publish(m).await.expect("publish"));
        }
        for a in acks {
            a.wait().await.expect("acked");
        }
    });
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < N {
        let d = sub.recv().await;
        seen.insert(String::from_utf8_lossy(&d.message.payload).into_owned());
        d.ack.ack();
    }
    timeout(WAIT, producer)
        .await
        .expect("producer")
        .expect("task");
    sub.stop().await;
    publ.stop().await;
}

/// Dropping every `Link` finishes the publishes in flight, then closes.
#[tokio::test]
async fn dropping_the_link_finishes_inflight_publishes_then_closes() {
    let m = Mosquitto::start();
    let topic = unique("droplink");
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (link, _rx) = client::spawn(
        options("droplink", vec![tcp(m.port)]),
        shutdown.clone(),
        &tracker,
    );
    let state = link.state();
    let mut acks = Vec::new();
    for i in 0..50 {
        let msg = Message::new(topic.clone(), format!("{i}"), QoS::AtLeastOnce, false);
        acks.push(link.publish(msg).await.expect("publish"));
    }
    drop(link);
    for a in acks {
        timeout(WAIT, a.wait())
            .await
            .expect("ack in time")
            .expect("acked, not failed");
    }
    tracker.close();
    timeout(WAIT, tracker.wait()).await.expect("task ends");
    assert_eq!(*state.borrow(), LinkState::Closed);
}

/// Incoming acks go out in arrival order even when the application acks out
/// of order; a repeated QoS 2 PUBLISH (DUP) is delivered only once.
#[tokio::test]
async fn incoming_acks_in_arrival_order_and_qos2_dedup() {
    let (wire_tx, mut wire) = mpsc::unbounded_channel::<Vec<u8>>();
    let server = FakeServer::start(move |mut s| {
        let wire_tx = wire_tx.clone();
        async move {
            let _ = read_some(&mut s).await;
            let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
            // QoS 1 PUBLISH ids 1, 2, 3 on topic "t", payload "x".
            for id in 1..=3u8 {
                let _ = s
                    .write_all(&[0x32, 0x06, 0x00, 0x01, b't', 0x00, id, b'x'])
                    .await;
            }
            // QoS 2 PUBLISH id 9, then the same again with DUP.
            let _ = s
                .write_all(&[0x34, 0x06, 0x00, 0x01, b't', 0x00, 9, b'y'])
                .await;
            let _ = s
                .write_all(&[0x3c, 0x06, 0x00, 0x01, b't', 0x00, 9, b'y'])
                .await;
            let mut buf = [0u8; 256];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let _ = wire_tx.send(buf[..n].to_vec());
            }
        }
    })
    .await;
    let mut c = TestClient::spawn(options("inorder", vec![tcp(server.port)]));
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(c.recv().await);
    }
    let payloads: Vec<_> = got.iter().map(|d| d.message.payload.to_vec()).collect();
    assert_eq!(
        payloads,
        vec![b"x".to_vec(), b"x".to_vec(), b"x".to_vec(), b"y".to_vec()]
    );
    // Ack the last three first: nothing may go out before the first is acked.
    let first = got.remove(0);
    for d in got.drain(..).rev() {
        d.ack.ack();
    }
    assert!(
        timeout(Duration::from_millis(200), wire.recv())
            .await
            .is_err(),
        "an ack overtook the unacked first message"
    );
    first.ack.ack();
    let mut bytes = Vec::new();
    // PUBACK 1, 2, 3 then PUBREC 9 (4 bytes each).
    while bytes.len() < 16 {
        let chunk = timeout(WAIT, wire.recv())
            .await
            .expect("acks")
            .expect("open");
        bytes.extend(chunk);
    }
    assert_eq!(
        bytes,
        vec![
            0x40, 0x02, 0x00, 1, 0x40, 0x02, 0x00, 2, 0x40, 0x02, 0x00, 3, 0x50, 0x02, 0x00, 9
        ]
    );
    // The DUP copy of the QoS 2 message was not delivered again.
    assert!(c.rx.try_recv().is_err());
    c.stop().await;
}

/// A broker that accepts CONNECT and drops the link at once: the delay keeps
/// growing (no tight loop); once a link stayed up for `stable_after`, the
/// next delay is back at `min`.
#[tokio::test]
async fn backoff_resets_only_after_a_stable_link() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let count = Arc::new(AtomicUsize::new(0));
    let server = FakeServer::start(move |mut s| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        let _ = tx.send(tokio::time::Instant::now());
        async move {
            let _ = read_some(&mut s).await;
            let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
            if n == 3 {
                // The fourth link stays up past `stable_after`.
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
            // Dropping the socket closes the link.
        }
    })
    .await;
    let mut opts = options("stable", vec![tcp(server.port)]);
    opts.backoff.min = Duration::from_millis(200);
    opts.backoff.max = Duration::from_secs(4);
    opts.backoff.jitter = false;
    opts.backoff.stable_after = Duration::from_millis(400);
    let c = TestClient::spawn(opts);
    let mut t = Vec::new();
    for _ in 0..6 {
        t.push(
            timeout(WAIT, rx.recv())
                .await
                .expect("attempt")
                .expect("chan"),
        );
    }
    let gap = |i: usize| t[i + 1] - t[i];
    let ms = Duration::from_millis;
    // Flapping links: at least 200, 400, 800 ms apart (growing, never tight).
    assert!(gap(0) >= ms(200), "{:?}", gap(0));
    assert!(gap(1) >= ms(400), "{:?}", gap(1));
    assert!(gap(2) >= ms(800), "{:?}", gap(2));
    // The 4th link was up 600 ms ≥ stable_after: the delay after it is back
    // at 200 ms (600 + 200), then grows again (400 ms). Without the reset
    // these would be ≥ 2.2 s and ≥ 3.2 s; the upper bounds leave about a
    // second of room for a loaded machine.
    assert!(gap(3) >= ms(800) && gap(3) < ms(1800), "{:?}", gap(3));
    assert!(gap(4) >= ms(400) && gap(4) < ms(2000), "{:?}", gap(4));
    c.stop().await;
}

/// UNSUBSCRIBE stops delivery, and the filter is not restored later.
#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let m = Mosquitto::start();
    let p = unique("unsub");
    let (a, b) = (format!("{p}/a"), format!("{p}/b"));
    let mut c = TestClient::spawn(options("unsub", vec![tcp(m.port)]));
    c.connected_to(m.port).await;
    c.subscribe(&a, QoS::AtLeastOnce).await;
    c.link
        .unsubscribe(vec![a.clone()])
        .await
        .expect("unsubscribe");
    c.subscribe(&b, QoS::AtLeastOnce).await;
    // Published in this order: if `a` were still subscribed it would come first.
    m.publish(&a, "on-a", 1, &[]);
    m.publish(&b, "on-b", 1, &[]);
    let d = c.recv().await;
    assert_eq!(d.message.topic, b);
    d.ack.ack();
    c.stop().await;
}

/// Credentials in CONNECT: accepted with the right password, refused (and
/// retried with backoff) with a wrong one, the reason naming the endpoint.
#[tokio::test]
async fn credentials_accepted_and_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = password_file(dir.path(), &[("bridge", "s3cret")]);
    let m = Mosquitto::start_with(&format!(
        "allow_anonymous false\npassword_file {}\n",
        pw.display()
    ));
    let mut opts = options("creds", vec![tcp(m.port)]);
    opts.username = Some("bridge".into());
    opts.password = Some("s3cret".into());
    let c = TestClient::spawn(opts.clone());
    c.connected_to(m.port).await;
    c.stop().await;

    opts.password = Some("wrong".into());
    let c = TestClient::spawn(opts);
    let s = c
        .state("refused", |s| matches!(s, LinkState::Disconnected { .. }))
        .await;
    let LinkState::Disconnected { reason } = s else {
        unreachable!()
    };
    assert!(
        reason.contains("connection refused by broker")
            && reason.contains(&format!("mqtt://127.0.0.1:{}", m.port)),
        "{reason}"
    );
    c.stop().await;
}

/// On the wire: an unacknowledged PUBLISH is resent with DUP=1 when the
/// broker resumed our session, and re-published as new (DUP=0) when it did
/// not; the caller's ack resolves only on the final PUBACK.
#[tokio::test]
async fn resend_sets_dup_only_on_a_resumed_session() {
    let (tx, mut first_bytes) = mpsc::unbounded_channel::<(usize, u8)>();
    let conns = Arc::new(AtomicUsize::new(0));
    let server = FakeServer::start(move |mut s| {
        let n = conns.fetch_add(1, Ordering::SeqCst);
        let tx = tx.clone();
        async move {
            let _ = read_some(&mut s).await; // CONNECT
            // Connection 0: fresh session; 1: session resumed; 2: session lost.
            let sp = u8::from(n == 1);
            let _ = s.write_all(&[0x20, 0x02, sp, 0x00]).await;
            let mut buf = [0u8; 256];
            let Ok(k) = s.read(&mut buf).await else {
                return;
            };
            if k == 0 {
                return;
            }
            let _ = tx.send((n, buf[0]));
            if n == 2 {
                // Ack it this time: PUBACK for its packet id
                // (bytes: 0x32 len 0x00 0x01 'd' id_hi id_lo 'x').
                let (hi, lo) = (buf[5], buf[6]);
                let _ = s.write_all(&[0x40, 0x02, hi, lo]).await;
                let _ = read_some(&mut s).await;
            }
            // Connections 0 and 1 drop without a PUBACK.
        }
    })
    .await;
    let mut opts = options("dup", vec![tcp(server.port)]);
    opts.clean_session = false;
    let c = TestClient::spawn(opts);
    c.connected_to(server.port).await;
    let ack = c
        .link
        .publish(Message::new("d", "x", QoS::AtLeastOnce, false))
        .await
        .expect("publish");
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            timeout(WAIT, first_bytes.recv())
                .await
                .expect("publish")
                .expect("chan"),
        );
    }
    // QoS 1 PUBLISH is 0x32; with DUP 0x3a.
    assert_eq!(seen, vec![(0, 0x32), (1, 0x3a), (2, 0x32)]);
    timeout(WAIT, ack.wait())
        .await
        .expect("acked in time")
        .expect("acked");
    c.stop().await;
}
