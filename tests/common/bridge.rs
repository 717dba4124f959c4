//! Helpers for pipe tests: load a plan from YAML text, and rumqttc-based
//! test clients (a subscriber that streams what it receives, a publisher of
//! sequence-numbered messages that waits for every acknowledgement).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mqbridge::config::{self, Plan};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Upper bound for one awaited event.
pub const WAIT: Duration = Duration::from_secs(10);

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
        Ok((plan, _warnings)) => plan,
        Err(e) => panic!("test config invalid:\n{e}\n---\n{yaml}"),
    }
}

/// YAML for a remote broker on 127.0.0.1:`port` with a fixed client id.
pub fn remote(name: &str, port: u16, client_id: &str) -> String {
    format!(
        "  {name}:\n    type: remote\n    endpoints: [mqtt://127.0.0.1:{port}]\n    client_id: {client_id}\n    reconnect: {{ min: 50ms, max: 500ms }}\n    keepalive: 5s\n"
    )
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
