//! Client core throughput against a real Mosquitto started on a free port:
//! one publisher link → Mosquitto → one subscriber link, 100-byte payloads.
//! Prints messages per second end to end (publish request → delivery).
//!
//! Run: `cargo bench --bench client` (optionally `-- 200000` for the count).

#[path = "../tests/common/mosquitto.rs"]
mod mosquitto;

use std::time::{Duration, Instant};

use mqbridge::client::{self, ClientOptions, Endpoint};
use mqbridge::link::LinkState;
use mqbridge::protocol::{Message, QoS};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let broker = mosquitto::Mosquitto::start_with("max_queued_messages 1000000\n");
    println!("client core → mosquitto → client core, {count} messages of 100 bytes");
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let (rate, received) = rt.block_on(run(broker.port, qos, count));
        println!(
            "QoS {}: {rate:>9.0} msg/s end to end ({received}/{count} received)",
            qos.as_u8()
        );
    }
}

async fn run(port: u16, qos: QoS, count: usize) -> (f64, usize) {
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let topic = format!("bench/{}/{}", std::process::id(), qos.as_u8());
    let opts = |name: &str| {
        let mut o = ClientOptions::new(name, vec![Endpoint::tcp("127.0.0.1", port)], name);
        o.clean_session = true;
        o.inflight = 100;
        o.delivery_capacity = 1024;
        o.request_capacity = 1024;
        o
    };
    let (sub, mut rx) = client::spawn(opts("bench-sub"), shutdown.clone(), &tracker);
    let (publ, _prx) = client::spawn(opts("bench-pub"), shutdown.clone(), &tracker);
    for l in [&sub, &publ] {
        let mut w = l.state();
        let _ = w
            .wait_for(|s| matches!(s, LinkState::Connected { .. }))
            .await;
    }
    let _ = sub.subscribe(vec![(topic.clone(), qos)]).await;

    let payload = bytes::Bytes::from(vec![b'x'; 100]);
    let start = Instant::now();
    let producer = tokio::spawn({
        let topic = topic.clone();
        async move {
            let mut last = None;
            for _ in 0..count {
                let m = Message::new(topic.clone(), payload.clone(), qos, false);
                match publ.publish(m).await {
                    Ok(ack) => last = Some(ack),
                    Err(_) => break,
                }
            }
            if let Some(ack) = last {
                let _ = ack.wait().await;
            }
        }
    });
    let mut received = 0;
    while received < count {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(d)) => {
                d.ack.ack();
                received += 1;
            }
            _ => break,
        }
    }
    let elapsed = start.elapsed();
    let _ = producer.await;
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    (received as f64 / elapsed.as_secs_f64(), received)
}
