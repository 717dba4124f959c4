//! The sibling-stall trade-off, measured: pipes sharing one source session
//! share its pending window, so a dead destination on one pipe stalls its
//! siblings once that window is full. Splitting the pipes over two source
//! connections (two broker entries, same endpoint, different client ids)
//! keeps the healthy pipe flowing.

mod common;

use std::time::Duration;

use common::bridge::{Sub, WAIT, plan, publish_many, remote, seq_msgs, unique};
use common::mosquitto::Mosquitto;
use mqbridge::link::LinkState;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

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
        "shutdown_timeout: 1s\nbrokers:\n{brokers}pipes:\n  to-b:\n    from: a\n    to: b\n    topics: [{p}/#]\n  to-c:\n    from: {c_source}\n    to: c\n    topics: [{p}/#]\n"
    );
    let token = CancellationToken::new();
    let mut run = mqbridge::run(plan(&yaml), token.clone())
        .await
        .expect("run");
    timeout(WAIT, run.ready()).await.expect("subscribed");
    let mut on_c = Sub::start(c.port, &unique("sc"), &format!("{p}/#"), 1, false).await;
    let mut b_state = run.link("b").expect("b").state();
    tokio::task::block_in_place(|| b.kill());
    timeout(
        WAIT,
        b_state.wait_for(|s| !matches!(s, LinkState::Connected { .. })),
    )
    .await
    .expect("B seen down")
    .expect("watch");
    publish_many(a.port, &seq_msgs(&format!("{p}/m"), 0..MSGS), 1, false).await;
    let mut got = 0;
    while got < MSGS {
        // Quiet for a second = the healthy pipe is as far as it gets.
        match on_c.next_within(Duration::from_secs(1)).await {
            Some(_) => got += 1,
            None => break,
        }
    }
    token.cancel();
    let report = timeout(WAIT, run.finished()).await.expect("stopped");
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
