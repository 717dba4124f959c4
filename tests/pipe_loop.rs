//! Run-time loop protection: with the static loop check turned off, two
//! Mosquittos bridged with `#` in both directions deliver each published
//! message exactly once to a subscriber on each side, and the bridge settles
//! (no storm). Over MQTT 3.1.1 the fingerprint guard stops the copies that
//! come back (the loop counters show it); over MQTT 5 (the default) the
//! pipes subscribe with *no local*, so the brokers never send the bridge's
//! own publishes back at all.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::bridge::{Sub, publish_many, remotes_ab, seq_msgs, start_run, stop_run, unique};
use common::mosquitto::Mosquitto;
use mqbridge::pipe::stats::DropReason;

const M: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_pipes_both_ways_deliver_once_per_side_and_settle() {
    both_ways("3.1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_pipes_both_ways_over_mqtt5_use_no_local_and_nothing_comes_back() {
    // Pinned: left out, a destination granting a receive maximum below
    // `inflight` (stock Mosquitto) is spoken to in 3.1.1.
    both_ways("5").await;
}

/// `protocol`: pinned on both remote brokers.
async fn both_ways(protocol: &str) {
    let a = Mosquitto::start();
    let b = Mosquitto::start();
    let p = unique("loop");
    let brokers = remotes_ab(&p, a.port, b.port).replace(
        "    keepalive: 5s\n",
        &format!("    keepalive: 5s\n    protocol: {protocol}\n"),
    );
    let yaml = format!(
        "{brokers}pipes:\n  ab:\n    from: a\n    to: b\n    topics: ['#']\n    loop_check: false\n  ba:\n    from: b\n    to: a\n    topics: ['#']\n    loop_check: false\n",
    );
    let (token, run) = start_run(&yaml).await;
    let mut on_a = Sub::start(a.port, &unique("sa"), &format!("{p}/#"), 1, false).await;
    let mut on_b = Sub::start(b.port, &unique("sb"), &format!("{p}/#"), 1, false).await;

    publish_many(a.port, &seq_msgs(&format!("{p}/from-a"), 0..M), 1, false).await;
    publish_many(b.port, &seq_msgs(&format!("{p}/from-b"), 0..M), 1, false).await;

    // Each side sees its own M and the other side's M: 2M, each exactly once.
    for (side, sub) in [("a", &mut on_a), ("b", &mut on_b)] {
        let mut seen: BTreeMap<(String, String), u32> = BTreeMap::new();
        for _ in 0..2 * M {
            let got = sub
                .next()
                .await
                .unwrap_or_else(|| panic!("side {side}: message missing"));
            *seen.entry((got.topic, got.payload)).or_default() += 1;
        }
        assert_eq!(seen.len() as u64, 2 * M, "side {side}: distinct messages");
        assert!(
            seen.values().all(|&n| n == 1),
            "side {side}: a message arrived twice"
        );
    }
    // Settled: nothing more arrives (a loop would keep messages circulating).
    assert_eq!(
        on_a.next_within(Duration::from_secs(1)).await,
        None,
        "storm on a"
    );
    assert_eq!(
        on_b.next_within(Duration::from_millis(200)).await,
        None,
        "storm on b"
    );

    let ab = run.pipe_stats("ab").expect("ab").snapshot();
    let ba = run.pipe_stats("ba").expect("ba").snapshot();
    println!("ab: {ab:?}\nba: {ba:?}");
    if protocol == "5" {
        assert_eq!(
            (ab.dropped(DropReason::Loop), ba.dropped(DropReason::Loop)),
            (0, 0),
            "no local: no copy of the bridge's own publishes came back"
        );
        stop_run(token, run).await;
        return;
    }
    assert!(
        ab.dropped(DropReason::Loop) >= M,
        "ab stopped the copies of b's messages coming back from a: {ab:?}"
    );
    assert!(
        ba.dropped(DropReason::Loop) >= M,
        "ba stopped the copies coming back: {ba:?}"
    );
    stop_run(token, run).await;
}
