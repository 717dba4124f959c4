//! A QoS 0 flood into a dead destination: the bridge's memory stays bounded
//! (the per-pipe queue drops, oldest first, and counts every drop).
//!
//! Alone in its own test binary so the process RSS it measures is the
//! bridge's (plus this test's publisher), not other tests'.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::bridge::{link_goes_down, remotes_ab, start_run, unique};
use common::mosquitto::Mosquitto;
use mqbridge::pipe::stats::DropReason;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::time::timeout;

/// Messages in the flood, and their size: 100 MiB in total.
const FLOOD: usize = 100_000;
const SIZE: usize = 1024;
/// Allowed RSS growth of this process during the flood.
const MAX_GROWTH_KIB: u64 = 64 * 1024;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_flood_into_a_dead_destination_stays_bounded() {
    let a = Mosquitto::start_with("max_queued_messages 0\n");
    let mut b = Mosquitto::start();
    let p = unique("flood");
    let yaml = format!(
        "{}pipes:\n  ab:\n    from: a\n    to: b\n    topics: [{p}/#]\n    queue: {{ size: 1000, when_full: drop_oldest }}\n",
        remotes_ab(&p, a.port, b.port)
    );
    let (token, run) = start_run(&yaml).await;
    link_goes_down(&run, "b", || b.kill()).await;

    let before = rss_kib();
    let mut o = MqttOptions::new(unique("flooder"), "127.0.0.1", a.port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(o, 1000);
    let driver = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    let payload = vec![b'x'; SIZE];
    let mut peak = before;
    for i in 0..FLOOD {
        client
            .publish(format!("{p}/t"), QoS::AtMostOnce, false, payload.clone())
            .await
            .expect("queue publish");
        if i % 10_000 == 0 {
            peak = peak.max(rss_kib());
        }
    }
    let stats = run.pipe_stats("ab").expect("stats");
    // Wait until the bridge has taken most of the flood off A (drops are counted).
    timeout(Duration::from_secs(60), async {
        while stats.received.load(Ordering::Relaxed) < (FLOOD as u64) / 2 {
            peak = peak.max(rss_kib());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("bridge consumed the flood");
    // Let it go quiet so the counters are read at rest.
    timeout(Duration::from_secs(30), async {
        let mut last = u64::MAX;
        loop {
            let now = stats.received.load(Ordering::Relaxed);
            if now == last {
                return;
            }
            last = now;
            peak = peak.max(rss_kib());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await
    .expect("flood consumed");
    peak = peak.max(rss_kib());
    let snap = stats.snapshot();
    println!(
        "flood: rss before {before} KiB, peak {peak} KiB; received {}, dropped(queue_full) {}, queued {}, inflight {}",
        snap.received,
        snap.dropped(DropReason::QueueFull),
        snap.queue_depth,
        snap.inflight
    );
    assert_eq!(snap.forwarded, 0);
    assert!(snap.queue_depth <= 1000);
    assert!(snap.dropped(DropReason::QueueFull) > 0, "drops are counted");
    assert_eq!(
        snap.received,
        snap.dropped(DropReason::QueueFull) + snap.queue_depth + snap.inflight,
        "every received message is queued, in flight or counted as dropped"
    );
    assert!(
        peak.saturating_sub(before) < MAX_GROWTH_KIB,
        "RSS grew from {before} KiB to {peak} KiB"
    );
    driver.abort();
    token.cancel();
    timeout(Duration::from_secs(15), run.finished())
        .await
        .expect("stopped");
}
