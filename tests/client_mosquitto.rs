//! The client core against real Mosquitto processes (started by the tests on
//! free ports) and tiny fake servers: QoS flows, sessions, TLS, faults,
//! failover and failback.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::certs;
use common::mosquitto::Mosquitto;
use mqbridge::client::{self, ClientEvent, ClientOptions, Endpoint};
use mqbridge::link::{Delivery, Link, LinkState};
use mqbridge::protocol::{Message, QoS};
use tokio::sync::{broadcast, mpsc};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Upper bound for any single wait in these tests.
const WAIT: Duration = Duration::from_secs(5);

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A unique id/prefix per test (tests run in parallel).
fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// Test options: fast backoff and probes, short timeouts.
fn options(name: &str, endpoints: Vec<Endpoint>) -> ClientOptions {
    let mut o = ClientOptions::new(name, endpoints, unique(name));
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

/// A running client and what the test needs to drive and stop it.
struct Client {
    link: Link,
    rx: mpsc::Receiver<Delivery>,
    events: broadcast::Receiver<ClientEvent>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Client {
    fn spawn(mut opts: ClientOptions) -> Client {
        let (tx, events) = broadcast::channel(1024);
        opts.events = Some(tx);
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (link, rx) = client::spawn(opts, shutdown.clone(), &tracker);
        Client {
            link,
            rx,
            events,
            shutdown,
            tracker,
        }
    }

    /// Waits until the link state satisfies `pred`; returns that state.
    async fn state(&self, what: &str, pred: impl Fn(&LinkState) -> bool) -> LinkState {
        let mut w = self.link.state();
        let r = timeout(WAIT, async {
            w.wait_for(|s| pred(s)).await.map(|s| s.clone())
        })
        .await;
        match r {
            Ok(Ok(s)) => s,
            _ => panic!(
                "timed out waiting for {what}; state is {:?}",
                *self.link.state().borrow()
            ),
        }
    }

    async fn connected_to(&self, port: u16) -> bool {
        let want = format!("mqtt://127.0.0.1:{port}");
        match self
            .state(
                &format!("connected to {want}"),
                |s| matches!(s, LinkState::Connected { endpoint, .. } if *endpoint == want),
            )
            .await
        {
            LinkState::Connected {
                session_present, ..
            } => session_present,
            _ => unreachable!(),
        }
    }

    /// Waits for the next event matching `pred`.
    async fn event(&mut self, what: &str, pred: impl Fn(&ClientEvent) -> bool) -> ClientEvent {
        let r = timeout(WAIT, async {
            loop {
                match self.events.recv().await {
                    Ok(e) if pred(&e) => return Some(e),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return None,
                }
            }
        })
        .await;
        match r {
            Ok(Some(e)) => e,
            _ => panic!("timed out waiting for event {what}"),
        }
    }

    async fn recv(&mut self) -> Delivery {
        timeout(WAIT, self.rx.recv())
            .await
            .expect("timed out waiting for a message")
            .expect("delivery channel closed")
    }

    async fn publish(&self, topic: &str, payload: &str, qos: QoS) {
        let ack = self
            .link
            .publish(Message::new(topic, payload.to_owned(), qos, false))
            .await
            .expect("publish request");
        timeout(WAIT, ack.wait())
            .await
            .expect("timed out waiting for the broker's ack")
            .expect("publish failed");
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        timeout(WAIT, self.tracker.wait())
            .await
            .expect("client task did not stop");
        assert_eq!(*self.link.state().borrow(), LinkState::Closed);
    }
}

#[tokio::test]
async fn qos_0_1_2_publish_and_subscribe() {
    let m = Mosquitto::start();
    let prefix = unique("qos");
    let mut sub = Client::spawn(options("sub", vec![tcp(m.port)]));
    let publ = Client::spawn(options("pub", vec![tcp(m.port)]));
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
    let c = Client::spawn(opts.clone());
    assert!(!c.connected_to(m.port).await, "fresh session expected");
    c.link
        .subscribe(vec![(topic.clone(), QoS::AtLeastOnce)])
        .await
        .expect("subscribe");
    c.stop().await;

    // While we are away, the broker queues for our session.
    for i in 0..3 {
        m.publish(&topic, &format!("m{i}"), 1, &[]);
    }

    let mut c = Client::spawn(opts);
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
    let mut c = Client::spawn(opts);
    let want = format!("mqtts://127.0.0.1:{}", m.port);
    c.state(
        "TLS connected",
        |s| matches!(s, LinkState::Connected { endpoint, .. } if *endpoint == want),
    )
    .await;
    let topic = unique("tls");
    c.link
        .subscribe(vec![(topic.clone(), QoS::AtLeastOnce)])
        .await
        .expect("subscribe");
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
    let c = Client::spawn(opts);
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
    let mut c = Client::spawn(opts);
    let e = c
        .event("a failed attempt", |e| {
            matches!(e, ClientEvent::Disconnected { .. })
        })
        .await;
    let ClientEvent::Disconnected { endpoint, reason } = e else {
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
    let mut opts = options("wrongca", vec![Endpoint::tls("127.0.0.1", m.port)]);
    opts.tls.ca_file = Some(other_pki.ca.clone());
    let c = Client::spawn(opts);
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
            && reason.contains("UnknownIssuer"),
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
    let mut sub = Client::spawn(sub_opts);
    sub.connected_to(m.port).await;
    sub.link
        .subscribe(vec![(topic.clone(), QoS::AtLeastOnce)])
        .await
        .expect("subscribe");

    let mut opts = options("restart-pub", vec![tcp(m.port)]);
    opts.clean_session = false;
    opts.inflight = 20;
    let mut publ = Client::spawn(opts);
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
