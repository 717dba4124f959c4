//! The sibling-stall trade-off, measured: pipes sharing one source session
//! share its pending window, so a dead destination on one pipe stalls its
//! siblings once that window is full. Splitting the pipes over two source
//! connections (two broker entries, same endpoint, different client ids)
//! keeps the healthy pipe flowing. This is `delivery: end_to_end`; spooled
//! pipes (the default) do not share the stall (`tests/pipe_spool.rs`).

mod common;

use std::time::Duration;

use common::bridge::{
    Sub, WAIT, link_goes_down, publish_many, remote, remotes_ab, seq_msgs, start_run, stop_run,
    unique,
};
use common::mosquitto::Mosquitto;
use tokio::time::timeout;

const MSGS: u64 = 500;
/// The remote source's `inflight`, which is also its pending window.
const WINDOW: u64 = 20;

/// Runs the scenario; returns how many messages reached C while B was dead.
async fn reached_c_while_b_dead(split: bool) -> u64 {
    let a = Mosquitto::start_with("max_queued_messages 0\n");
    let mut b = Mosquitto::start();
    let c = Mosquitto::start();
    let p = unique(if split { "split" } else { "shared" });
    let mut brokers = remote("a", a.port, &format!("{p}-a"));
    brokers.push_str(&format!("    inflight: {WINDOW}\n"));
    let c_source = if split {
        brokers.push_str(&remote("a2", a.port, &format!("{p}-a2")));
        brokers.push_str(&format!("    inflight: {WINDOW}\n"));
        "a2"
    } else {
        "a"
    };
    brokers.push_str(&remote("b", b.port, &format!("{p}-b")));
    brokers.push_str(&remote("c", c.port, &format!("{p}-c")));
    let yaml = format!(
        "shutdown_timeout: 1s\nbrokers:\n{brokers}pipes:\n  to-b:\n    from: a\n    to: b\n    topics: [{p}/#]\n    delivery: end_to_end\n  to-c:\n    from: {c_source}\n    to: c\n    topics: [{p}/#]\n    delivery: end_to_end\n"
    );
    let (token, run) = start_run(&yaml).await;
    let mut on_c = Sub::start(c.port, &unique("sc"), &format!("{p}/#"), 1, false).await;
    link_goes_down(&run, "b", || b.kill()).await;
    publish_many(a.port, &seq_msgs(&format!("{p}/m"), 0..MSGS), 1, false).await;
    let mut got = 0;
    while got < MSGS {
        // Quiet for three seconds = the healthy pipe is as far as it gets
        // (long enough that a loaded CI machine does not end the split case early).
        match on_c.next_within(Duration::from_secs(3)).await {
            Some(_) => got += 1,
            None => break,
        }
    }
    let report = stop_run(token, run).await;
    assert_eq!(
        report.busy_pipes,
        vec!["to-b".to_string()],
        "the drain names the stuck pipe"
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_destination_stalls_siblings_on_a_shared_source_only() {
    let shared = reached_c_while_b_dead(false).await;
    let split = reached_c_while_b_dead(true).await;
    println!(
        "reached C while B was dead: shared source {shared}/{MSGS}, split sources {split}/{MSGS}"
    );
    assert!(
        shared < MSGS,
        "with a shared source session the healthy pipe stalls once the window is full"
    );
    assert!(
        shared >= WINDOW,
        "the healthy pipe gets at least the pending window through"
    );
    assert_eq!(
        split, MSGS,
        "split over two source sessions, the healthy pipe is not stalled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_with_a_dead_destination_and_full_queues() {
    let a = Mosquitto::start_with("max_queued_messages 0\n");
    let mut b = Mosquitto::start();
    let p = unique("full");
    let mut yaml = format!(
        "shutdown_timeout: 1s\n{}pipes:\n",
        remotes_ab(&p, a.port, b.port)
    );
    for i in 0..5 {
        yaml.push_str(&format!(
            "  p{i}:\n    from: a\n    to: b\n    topics: [{p}/{i}/#]\n    qos: {{ force: 1 }}\n"
        ));
    }
    let (token, run) = start_run(&yaml).await;
    link_goes_down(&run, "b", || b.kill()).await;
    // QoS 0 at the source (not held back by the source window), forced to
    // QoS 1: every pipe fills its window of publishes towards the dead B.
    let mut msgs = Vec::new();
    for i in 0..5 {
        msgs.extend(seq_msgs(&format!("{p}/{i}/m"), 0..300));
    }
    publish_many(a.port, &msgs, 0, false).await;
    let all: Vec<_> = (0..5)
        .map(|i| run.pipe_stats(&format!("p{i}")).expect("pipe"))
        .collect();
    timeout(WAIT, async {
        while all
            .iter()
            .any(|s| s.received.load(std::sync::atomic::Ordering::Relaxed) < 300)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every message reached its pipe");
    let held: u64 = all
        .iter()
        .map(|s| s.snapshot().inflight + s.snapshot().queue_depth)
        .sum();
    assert!(
        held > 356,
        "more is held than the link's window and request queue take: {held}"
    );
    token.cancel();
    let report = timeout(WAIT, run.finished())
        .await
        .expect("shutdown finishes despite full queues towards a dead broker");
    assert_eq!(
        report.busy_pipes.len(),
        5,
        "every pipe was still busy: {report:?}"
    );
}
