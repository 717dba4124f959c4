//! Bridge benchmark: publishes sequence-numbered messages into broker A,
//! subscribes on broker B, and reports delivered msg/s, lost, duplicates and
//! latency p50/p99. Something (mqbridge, Mosquitto's own bridge) must forward
//! `<topic>/#` from A to B.
//!
//! Uses `rumqttc`'s own client on both ends so the measurement does not
//! depend on mqbridge's client code.
//!
//! ```text
//! mqbridge-bench --pub-port 1883 --sub-port 1884 --count 100000 --qos 1
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(version, about = "Measure a bridge between two MQTT brokers")]
struct Args {
    /// Host of broker A (publish side).
    #[arg(long, env = "BENCH_PUB_HOST", default_value = "127.0.0.1")]
    pub_host: String,
    /// Port of broker A.
    #[arg(long, env = "BENCH_PUB_PORT")]
    pub_port: u16,
    /// Host of broker B (subscribe side).
    #[arg(long, env = "BENCH_SUB_HOST", default_value = "127.0.0.1")]
    sub_host: String,
    /// Port of broker B.
    #[arg(long, env = "BENCH_SUB_PORT")]
    sub_port: u16,
    /// Messages to publish.
    #[arg(long, env = "BENCH_COUNT", default_value_t = 100_000)]
    count: u64,
    /// QoS of publisher and subscriber (0, 1 or 2).
    #[arg(long, env = "BENCH_QOS", default_value_t = 1)]
    qos: u8,
    /// Payload size in bytes (at least 16: sequence number and send time).
    #[arg(long, env = "BENCH_SIZE", default_value_t = 100)]
    size: usize,
    /// Publish rate in messages per second; 0 = as fast as possible.
    #[arg(long, env = "BENCH_RATE", default_value_t = 0)]
    rate: u64,
    /// Topic prefix; messages go to `<prefix>/<n % 10>`.
    #[arg(long, env = "BENCH_TOPIC", default_value = "bench")]
    topic: String,
    /// Give up waiting for missing messages after this many idle seconds.
    #[arg(long, env = "BENCH_IDLE_SECS", default_value_t = 10)]
    idle_secs: u64,
    /// A label printed with the result (e.g. `mosquitto-bridge`).
    #[arg(long, env = "BENCH_LABEL", default_value = "bridge")]
    label: String,
}

fn qos(q: u8) -> anyhow::Result<QoS> {
    Ok(match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => bail!("qos must be 0, 1 or 2"),
    })
}

/// What the subscriber saw.
struct Received {
    /// How often each sequence number arrived.
    seen: Vec<u32>,
    /// Latencies of first arrivals.
    latencies: Vec<Duration>,
    /// Time of the last first arrival.
    last: Option<Instant>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let q = qos(args.qos)?;
    anyhow::ensure!(args.size >= 16, "--size must be at least 16");
    let count = usize::try_from(args.count).context("count")?;
    let base = Instant::now();
    let run_id = std::process::id();

    // Subscriber on B.
    let mut so = MqttOptions::new(format!("bench-sub-{run_id}"), &args.sub_host, args.sub_port);
    so.set_keep_alive(Duration::from_secs(30));
    so.set_max_packet_size(1 << 20, 1 << 20);
    let (sub, mut sub_loop) = AsyncClient::new(so, 1000);
    let filter = format!("{}/#", args.topic);
    sub.subscribe(&filter, q).await?;
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(1);
    let (stamp_tx, mut stamp_rx) = mpsc::unbounded_channel::<(u64, Instant, Duration)>();
    tokio::spawn(async move {
        loop {
            match sub_loop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.try_send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = Instant::now();
                    let (Some(seq), Some(sent)) = (
                        p.payload
                            .get(0..8)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_be_bytes),
                        p.payload
                            .get(8..16)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_be_bytes),
                    ) else {
                        continue;
                    };
                    let lat = now.saturating_duration_since(base + Duration::from_nanos(sent));
                    if stamp_tx.send((seq, now, lat)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("subscriber: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
        .await
        .context("no SUBACK from broker B within 10 s")?;

    // Publisher on A.
    let mut po = MqttOptions::new(format!("bench-pub-{run_id}"), &args.pub_host, args.pub_port);
    po.set_keep_alive(Duration::from_secs(30));
    po.set_inflight(100);
    let (publ, mut pub_loop) = AsyncClient::new(po, 1000);
    tokio::spawn(async move {
        loop {
            match pub_loop.poll().await {
                Ok(_) => {}
                Err(e) => {
                    eprintln!("publisher: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });

    let start = Instant::now();
    let mut payload = vec![0u8; args.size];
    for seq in 0..args.count {
        if args.rate > 0 {
            let due = start + Duration::from_secs_f64(seq as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        payload[0..8].copy_from_slice(&seq.to_be_bytes());
        let sent = u64::try_from(Instant::now().duration_since(base).as_nanos()).unwrap_or(0);
        payload[8..16].copy_from_slice(&sent.to_be_bytes());
        publ.publish(
            format!("{}/{}", args.topic, seq % 10),
            q,
            false,
            payload.clone(),
        )
        .await?;
    }
    let published = Instant::now();

    // Collect until everything arrived or the stream went idle.
    let mut rec = Received {
        seen: vec![0; count],
        latencies: Vec::with_capacity(count),
        last: None,
    };
    let mut unique = 0usize;
    let idle = Duration::from_secs(args.idle_secs);
    while unique < count {
        tokio::select! {
            m = stamp_rx.recv() => {
                let Some((seq, at, lat)) = m else { break };
                if let Some(n) = usize::try_from(seq).ok().and_then(|i| rec.seen.get_mut(i)) {
                    *n += 1;
                    if *n == 1 {
                        unique += 1;
                        rec.latencies.push(lat);
                        rec.last = Some(at);
                    }
                }
            }
            () = tokio::time::sleep(idle) => break,
        }
    }
    let dups: u64 = rec
        .seen
        .iter()
        .map(|&n| u64::from(n.saturating_sub(1)))
        .sum();
    let lost = count - unique;
    let end = rec.last.unwrap_or(published);
    let secs = end.duration_since(start).as_secs_f64().max(1e-9);
    rec.latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if rec.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((rec.latencies.len() as f64 - 1.0) * p).round() as usize;
        rec.latencies
            .get(i)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "label={} qos={} size={} rate={} sent={} delivered={} lost={} duplicates={} \
         msg_per_s={:.0} p50_ms={:.3} p99_ms={:.3} publish_s={:.3}",
        args.label,
        args.qos,
        args.size,
        if args.rate == 0 {
            "max".to_string()
        } else {
            args.rate.to_string()
        },
        args.count,
        unique,
        lost,
        dups,
        unique as f64 / secs,
        pct(0.50),
        pct(0.99),
        published.duration_since(start).as_secs_f64(),
    );
    let _ = sub.disconnect().await;
    let _ = publ.disconnect().await;
    Ok(())
}
