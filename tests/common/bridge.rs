//! Helpers for pipe tests: load a plan from YAML text, run it in-process,
//! and rumqttc-based test clients (a subscriber that streams what it
//! receives, a publisher of sequence-numbered messages that waits for every
//! acknowledgement).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mqbridge::config::{self, Plan};
use mqbridge::link::LinkState;
use mqbridge::{RunHandle, RunReport};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

pub use super::wait::WAIT;

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A unique id/prefix per test (tests run in parallel).
pub fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// Compiles YAML into a plan; panics with every error.
pub fn plan(yaml: &str) -> Plan {
    // The metrics endpoint is on by default at 127.0.0.1:9464; parallel
    // in-process runs need their own port.
    let yaml = if yaml.contains("\nmetrics:") {
        yaml.to_owned()
    } else {
        format!("{yaml}metrics:\n  listen: 127.0.0.1:0\n")
    };
    let yaml = yaml.as_str();
    match config::load_str(yaml, "test.yaml") {
        Ok((mut plan, _warnings)) => {
            if !yaml.contains("\nstorage:") {
                plan.storage.dir = super::data_dir();
            }
            plan
        }
        Err(e) => panic!("test config invalid:\n{e}\n---\n{yaml}"),
    }
}

/// YAML for a remote broker on 127.0.0.1:`port` with a fixed client id.
pub fn remote(name: &str, port: u16, client_id: &str) -> String {
    format!(
        "  {name}:\n    type: remote\n    endpoints: [mqtt://127.0.0.1:{port}]\n    client_id: {client_id}\n    reconnect: {{ min: 50ms, max: 500ms }}\n    keepalive: 5s\n"
    )
}

/// `brokers:` with two remote brokers `a` and `b` (client ids `<p>-a`, `<p>-b`).
pub fn remotes_ab(p: &str, a: u16, b: u16) -> String {
    format!(
        "brokers:\n{}{}",
        remote("a", a, &format!("{p}-a")),
        remote("b", b, &format!("{p}-b")),
    )
}

/// Starts `mqbridge::run` on the plan from `yaml`; returns its shutdown token
/// and handle once every source is subscribed.
pub async fn start_run(yaml: &str) -> (CancellationToken, RunHandle) {
    let token = CancellationToken::new();
    let mut run = mqbridge::run(plan(yaml), token.clone()).await.expect("run");
    timeout(WAIT, run.ready()).await.expect("subscribed");
    (token, run)
}

/// Cancels a run and waits (bounded by `WAIT`) for its graceful stop.
pub async fn stop_run(token: CancellationToken, run: RunHandle) -> RunReport {
    token.cancel();
    timeout(WAIT, run.finished()).await.expect("stopped")
}

/// Takes broker `link` of `run` away with `take_down` (a kill or stop) and
/// waits until the bridge sees it disconnected.
pub async fn link_goes_down(run: &RunHandle, link: &str, take_down: impl FnOnce()) {
    let mut state = run.link(link).expect("link").state();
    tokio::task::block_in_place(take_down);
    timeout(
        WAIT,
        state.wait_for(|s| !matches!(s, LinkState::Connected { .. })),
    )
    .await
    .unwrap_or_else(|_| panic!("bridge notices {link} is down"))
    .expect("state watch");
}

/// Maps a QoS number to rumqttc's.
pub fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    /// Topic.
    pub topic: String,
    /// Payload as text.
    pub payload: String,
    /// Delivered QoS (0..=2).
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
}

/// A subscriber that streams received messages; reconnects on its own.
pub struct Sub {
    /// Received messages.
    pub rx: mpsc::UnboundedReceiver<Got>,
    client: AsyncClient,
}

impl Sub {
    /// Connects to 127.0.0.1:`port` and subscribes; returns after the SUBACK.
    /// `persistent` = clean session off (the broker queues while we are away).
    pub async fn start(port: u16, id: &str, filter: &str, q: u8, persistent: bool) -> Sub {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_clean_session(!persistent);
        Sub::start_with(o, filter, q).await
    }

    /// Like [`Sub::start`], with the caller's connection options (credentials, ids).
    pub async fn start_with(o: MqttOptions, filter: &str, q: u8) -> Sub {
        let (client, mut ev) = AsyncClient::new(o, 100);
        client
            .subscribe(filter, qos(q))
            .await
            .expect("queue SUBSCRIBE");
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let got = Got {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            qos: p.qos as u8,
                            retain: p.retain,
                        };
                        if tx.send(got).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        if tx.is_closed() {
                            return;
                        }
                        // Broker down (a fault test): retry the connection.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        timeout(WAIT, ready_rx.recv())
            .await
            .expect("SUBACK in time")
            .expect("subscriber task alive");
        Sub { rx, client }
    }

    /// The next message, or `None` after `WAIT`.
    pub async fn next(&mut self) -> Option<Got> {
        timeout(WAIT, self.rx.recv()).await.ok().flatten()
    }

    /// The next message within `d`, or `None`.
    pub async fn next_within(&mut self, d: Duration) -> Option<Got> {
        timeout(d, self.rx.recv()).await.ok().flatten()
    }

    /// Receives until `n` distinct payloads arrived, failing on a duplicate,
    /// then asserts nothing more arrives within 200 ms.
    pub async fn exactly_once(&mut self, n: usize) {
        let mut seen = BTreeSet::new();
        while seen.len() < n {
            let got = self.next().await.expect("message");
            assert!(
                seen.insert(got.payload.clone()),
                "duplicate {}",
                got.payload
            );
        }
        assert!(
            self.next_within(Duration::from_millis(200)).await.is_none(),
            "no extra copies"
        );
    }

    /// Receives until `seen` holds `want` distinct sequence numbers of `0..n`,
    /// failing after `limit` with the first missing ones.
    pub async fn collect_seq(&mut self, seen: &mut SeqCount, want: usize, n: u64, limit: Duration) {
        timeout(limit, async {
            while seen.unique() < want {
                match self.rx.recv().await {
                    Some(got) => seen.add(&got.payload),
                    None => panic!("subscriber ended"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "only {} of {want} distinct messages arrived; first missing: {:?}",
                seen.unique(),
                seen.missing(n).iter().take(10).collect::<Vec<_>>()
            )
        });
    }

    /// Disconnects.
    pub async fn stop(self) {
        let _ = self.client.disconnect().await;
    }
}

/// Publishes one message and waits for its acknowledgement (QoS > 0).
pub async fn publish(port: u16, topic: &str, payload: &str, q: u8, retain: bool) {
    publish_many(port, &[(topic.to_string(), payload.to_string())], q, retain).await;
}

/// Publishes messages in order and waits until the broker acknowledged them all.
pub async fn publish_many(port: u16, msgs: &[(String, String)], q: u8, retain: bool) {
    let mut o = MqttOptions::new(unique("pub"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_inflight(100);
    let (client, mut ev) = AsyncClient::new(o, 100);
    let expected = if q == 0 { 0 } else { msgs.len() };
    let (acked_tx, mut acked_rx) = tokio::sync::watch::channel(0usize);
    let (sent_tx, mut sent_rx) = tokio::sync::watch::channel(0usize);
    let driver = tokio::spawn(async move {
        let mut acked = 0;
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                    acked += 1;
                    let _ = acked_tx.send(acked);
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) => {
                    sent_tx.send_modify(|n| *n += 1);
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => panic!("publisher connection failed: {e}"),
            }
        }
    });
    for (t, p) in msgs {
        client
            .publish(t.clone(), qos(q), retain, p.clone().into_bytes())
            .await
            .expect("queue PUBLISH");
    }
    let all = msgs.len();
    let wait = async {
        if q == 0 {
            let _ = sent_rx.wait_for(|n| *n >= all).await;
        } else {
            let _ = acked_rx.wait_for(|n| *n >= expected).await;
        }
    };
    timeout(Duration::from_secs(60), wait)
        .await
        .expect("broker acknowledged every publish in time");
    client.disconnect().await.expect("queue DISCONNECT");
    let _ = timeout(WAIT, driver).await;
}

/// Counts sequence numbers `0..n` arriving as payloads `"<seq>"`.
#[derive(Debug, Default)]
pub struct SeqCount {
    /// Times each sequence number arrived.
    pub seen: BTreeMap<u64, u32>,
}

impl SeqCount {
    /// Records one payload; ignores non-numeric ones.
    pub fn add(&mut self, payload: &str) {
        if let Ok(n) = payload.parse::<u64>() {
            *self.seen.entry(n).or_default() += 1;
        }
    }

    /// Distinct sequence numbers seen.
    pub fn unique(&self) -> usize {
        self.seen.len()
    }

    /// Extra copies beyond the first.
    pub fn duplicates(&self) -> u64 {
        self.seen
            .values()
            .map(|&c| u64::from(c.saturating_sub(1)))
            .sum()
    }

    /// Sequence numbers in `0..n` never seen.
    pub fn missing(&self, n: u64) -> Vec<u64> {
        (0..n).filter(|i| !self.seen.contains_key(i)).collect()
    }
}

/// The messages `"<seq>"` for `range` on `topic`.
pub fn seq_msgs(topic: &str, range: std::ops::Range<u64>) -> Vec<(String, String)> {
    range.map(|i| (topic.to_string(), i.to_string())).collect()
}
