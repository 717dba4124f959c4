//! Proof that nothing is lost: thousands of sequence-numbered QoS 1 messages
//! go Mosquitto A → mqbridge → Mosquitto B while something fails mid-stream;
//! the final (persistent) subscriber on B must see every sequence number.
//! Duplicates are allowed, counted and bounded by the inflight windows.
//!
//! Both Mosquittos run with persistence and `max_queued_messages 0`: the
//! source broker must be able to hold the backlog the bridge does not take.

mod common;

use std::time::Duration;

use common::bridge::{
    SeqCount, Sub, link_goes_down, publish, publish_many, remote, seq_msgs, start_run, stop_run,
    unique,
};
use common::mosquitto::Mosquitto;
use common::process::BridgeProcess;
use tokio::time::timeout;

/// Messages per test.
const N: u64 = 3000;
/// Upper bound on duplicates: the bridge's window towards B (`inflight`,
/// 4000 by default, so all `N` may be in flight: resent from the spool
/// after a kill -9) plus what it took from A and had not yet acknowledged
/// (A's window of 20, and up to A's `inflight` pending in the bridge, which
/// A redelivers and the spool takes again). With `N` = 3000 that is at
/// most every message twice more.
const MAX_DUPS: u64 = 2 * N;
/// Whole-test bound for collecting every message.
const COLLECT: Duration = Duration::from_secs(90);

const BROKER_CONF: &str =
    "persistence true\npersistence_location {dir}/\nautosave_interval 1\nmax_queued_messages 0\n";

fn yaml(p: &str, a: u16, b: u16, rate: Option<u32>) -> String {
    let rate = rate
        .map(|r| format!("    rate_limit: {{ per_second: {r} }}\n"))
        .unwrap_or_default();
    format!(
        "shutdown_timeout: 2s\nbrokers:\n{}{}pipes:\n  ab:\n    from: a\n    to: b\n    topics:\n      - filter: {p}/#\n        qos: 1\n{rate}",
        remote("a", a, &format!("{p}-bridge-a")),
        remote("b", b, &format!("{p}-bridge-b")),
    )
}

fn check(seen: &SeqCount, what: &str) {
    check_within(seen, what, MAX_DUPS);
}

fn check_within(seen: &SeqCount, what: &str, max_dups: u64) {
    let missing = seen.missing(N);
    println!(
        "{what}: delivered {} of {N}, duplicates {}",
        seen.unique(),
        seen.duplicates()
    );
    assert!(
        missing.is_empty(),
        "{what}: lost {} messages",
        missing.len()
    );
    assert!(
        seen.duplicates() <= max_dups,
        "{what}: {} duplicates exceed the bound {max_dups}",
        seen.duplicates()
    );
}

/// Streams `N` messages A → B (rate limited, so most of it is still A's
/// backlog for the bridge), restarts A or B gracefully once a third arrived,
/// and hands what B's persistent subscriber saw to `check`.
async fn restart_mid_stream(tag: &str, restart_a: bool, check: impl FnOnce(&SeqCount)) {
    let mut a = Mosquitto::start_with(BROKER_CONF);
    let mut b = Mosquitto::start_with(BROKER_CONF);
    let p = unique(tag);
    let mut sub = Sub::start(b.port, &format!("{p}-sub"), &format!("{p}/#"), 1, true).await;
    let (token, run) = start_run(&yaml(&p, a.port, b.port, Some(1000))).await;
    // Everything is in A (acknowledged by A) before the restart.
    publish_many(a.port, &seq_msgs(&format!("{p}/s"), 0..N), 1, false).await;
    let mut seen = SeqCount::default();
    sub.collect_seq(&mut seen, (N / 3) as usize, N, COLLECT)
        .await;
    let restarted = if restart_a { &mut a } else { &mut b };
    tokio::task::block_in_place(|| {
        restarted.stop();
        restarted.start_again();
    });
    sub.collect_seq(&mut seen, N as usize, N, COLLECT).await;
    check(&seen);
    stop_run(token, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_b_mid_stream_loses_nothing() {
    restart_mid_stream("rb", false, |seen| check(seen, "restart B")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_a_mid_stream_loses_nothing() {
    // A restarted Mosquitto also redelivers what it had not yet saved as
    // acknowledged: up to `autosave_interval` (1 s) of traffic at the pipe's
    // 1,000 msg/s rate, on top of the bridge's own windows.
    restart_mid_stream("ra", true, |seen| {
        check_within(seen, "restart A", MAX_DUPS + 1000)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_unreachable_for_a_while_then_back_loses_nothing() {
    let a = Mosquitto::start_with(BROKER_CONF);
    let mut b = Mosquitto::start_with(BROKER_CONF);
    let p = unique("bu");
    let mut sub = Sub::start(b.port, &format!("{p}-sub"), &format!("{p}/#"), 1, true).await;
    let (token, run) = start_run(&yaml(&p, a.port, b.port, None)).await;
    link_goes_down(&run, "b", || b.stop()).await;
    // The whole stream is published while B is down: A holds the backlog.
    publish_many(a.port, &seq_msgs(&format!("{p}/s"), 0..N), 1, false).await;
    let stats = run.pipe_stats("ab").expect("stats");
    assert_eq!(
        stats.snapshot().forwarded,
        0,
        "nothing can be forwarded while B is down"
    );
    tokio::task::block_in_place(|| b.start_again());
    let mut seen = SeqCount::default();
    sub.collect_seq(&mut seen, N as usize, N, COLLECT).await;
    check(&seen, "B unreachable");
    stop_run(token, run).await;
}

/// Publishes probes on A until one crosses to `sub`: the bridge process is up and subscribed.
async fn wait_crossing(a_port: u16, topic: &str, sub: &mut Sub) {
    timeout(Duration::from_secs(30), async {
        loop {
            publish(a_port, topic, "probe", 1, false).await;
            if let Some(got) = sub.next_within(Duration::from_millis(500)).await
                && got.payload == "probe"
            {
                return;
            }
        }
    })
    .await
    .expect("bridge process forwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_bridge_mid_stream_and_restart_loses_nothing() {
    let a = Mosquitto::start_with(BROKER_CONF);
    let b = Mosquitto::start_with(BROKER_CONF);
    let p = unique("k9");
    let mut sub = Sub::start(b.port, &format!("{p}-sub"), &format!("{p}/#"), 1, true).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bridges.yaml");
    // Its own metrics port: the default 127.0.0.1:9464 may be taken. One
    // data dir across the kill and the restart: the spool is what the
    // bridge acknowledged to A.
    let text = format!(
        "{}metrics:\n  listen: 127.0.0.1:0\nstorage:\n  dir: {}\n",
        yaml(&p, a.port, b.port, Some(1000)),
        dir.path().join("data").display()
    );
    std::fs::write(&cfg, text).expect("write config");
    let mut bridge = BridgeProcess::spawn(&cfg);
    wait_crossing(a.port, &format!("{p}/probe"), &mut sub).await;
    publish_many(a.port, &seq_msgs(&format!("{p}/s"), 0..N), 1, false).await;
    let mut seen = SeqCount::default();
    sub.collect_seq(&mut seen, (N / 3) as usize, N, COLLECT)
        .await;
    bridge.kill9();
    let _bridge = BridgeProcess::spawn(&cfg);
    sub.collect_seq(&mut seen, N as usize, N, COLLECT).await;
    check(&seen, "kill -9 bridge");
}
