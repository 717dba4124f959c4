//! QoS 2 exactly once towards the destination across `kill -9` of the
//! bridge (issue 11): Mosquitto A → mqbridge (`delivery: spool`, a
//! persistent session on B) → Mosquitto B → a persistent QoS 2 subscriber.
//!
//! The messages are spooled first (B down, then a graceful stop), so the
//! source side is quiet and every copy the subscriber sees twice can only
//! come from the destination side. Then the bridge forwards them from its
//! spool and is killed with `-9` several times while QoS 2 flows are
//! between PUBLISH and PUBCOMP (about 20 in flight at any moment), restarted
//! on the same data directory each time. Every message must arrive exactly
//! once: no loss, no duplicate.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::bridge::{SeqCount, Sub, publish_many, remote, seq_msgs, unique};
use common::mosquitto::{Mosquitto, free_port};
use common::process::BridgeProcess;
use tokio::time::timeout;

/// Messages per test (bounded: the whole run takes seconds).
const N: u64 = 1000;
/// `kill -9`s while the spool drains into B.
const KILLS: u64 = 6;
/// Bound on every wait.
const WAIT: Duration = Duration::from_secs(90);
/// Quiet time after the last expected message in which no copy may arrive.
const QUIET: Duration = Duration::from_secs(1);

const BROKER_CONF: &str =
    "persistence true\npersistence_location {dir}/\nautosave_interval 1\nmax_queued_messages 0\n";

fn yaml(p: &str, a: u16, b: u16, metrics: u16, data: &Path) -> String {
    format!(
        "shutdown_timeout: 2s\nbrokers:\n{}{}pipes:\n  ab:\n    from: a\n    to: b\n    topics:\n      - filter: {p}/#\n        qos: 2\nmetrics:\n  listen: 127.0.0.1:{metrics}\nstorage:\n  dir: {}\n",
        remote("a", a, &format!("{p}-bridge-a")),
        remote("b", b, &format!("{p}-bridge-b")),
        data.display(),
    )
}

/// The pipe's spool depth from `/metrics`; `None` while nothing answers.
async fn spool_depth(addr: SocketAddr) -> Option<f64> {
    let s = tokio::net::TcpStream::connect(addr).await.ok()?;
    drop(s);
    let body = common::http::scrape(addr).await;
    common::http::value(&body, r#"mqbridge_pipe_spool_messages{pipe="ab"}"#)
}

/// Waits until the spool holds `n` messages.
async fn spool_becomes(addr: SocketAddr, n: u64) {
    let mut last = None;
    let reached = timeout(WAIT, async {
        loop {
            last = spool_depth(addr).await;
            if last == Some(n as f64) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "the spool never held {n}; last {last:?}");
}

/// Starts the bridge with its info log appended to `log` (to see what each
/// start restored).
fn spawn_logging(cfg: &Path, log: &Path) -> BridgeProcess {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let child = common::process::mqbridge()
        .args(["run", "--log-level", "info", "--config"])
        .arg(cfg)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn mqbridge");
    BridgeProcess(child)
}

/// The `flows=` count of every "QoS 2 flows restored" line in `log`.
fn restored_flows(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .expect("read log")
        .lines()
        .filter(|l| l.contains("QoS 2 flows restored"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("flows="))
                .and_then(|n| n.parse().ok())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_reaches_the_destination_exactly_once_across_kill_9() {
    let a = Mosquitto::start_with(BROKER_CONF);
    let mut b = Mosquitto::start_with(BROKER_CONF);
    let p = unique("q2k9");
    let mut sub = Sub::start(b.port, &format!("{p}-sub"), &format!("{p}/#"), 2, true).await;
    // The bridge's session on A exists before it first connects, so A
    // queues every message for it.
    a.prepare_subscriber(&format!("{p}-bridge-a"), &format!("{p}/#"), 2);
    // In chunks of A's `max_inflight_messages` (20): Mosquitto drops a
    // 3.1.1 publisher that has more QoS 2 publishes in flight.
    for chunk in seq_msgs(&format!("{p}/s"), 0..N).chunks(20) {
        publish_many(a.port, chunk, 2, false).await;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bridges.yaml");
    let metrics = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], metrics));
    std::fs::write(
        &cfg,
        yaml(&p, a.port, b.port, metrics, &dir.path().join("data")),
    )
    .expect("write config");

    // Spool everything with B down; a graceful stop sends A its last
    // acknowledgements, so A redelivers nothing later.
    tokio::task::block_in_place(|| b.stop());
    let mut bridge = BridgeProcess::spawn(&cfg);
    spool_becomes(addr, N).await;
    bridge.signal("-TERM");
    assert!(bridge.exited_within(WAIT).await.success());
    drop(bridge);

    tokio::task::block_in_place(|| b.start_again());
    let mut seen = SeqCount::default();
    let log = dir.path().join("bridge.log");
    for k in 1..=KILLS {
        let mut bridge = spawn_logging(&cfg, &log);
        let want = (N * k / (KILLS + 1)) as usize;
        sub.collect_seq(&mut seen, want, N, WAIT).await;
        bridge.kill9();
        println!(
            "kill -9 #{k} at {} delivered ({} duplicates so far)",
            seen.unique(),
            seen.duplicates()
        );
        assert_eq!(seen.duplicates(), 0, "duplicates before kill -9 #{k}");
    }
    let mut bridge = spawn_logging(&cfg, &log);
    sub.collect_seq(&mut seen, N as usize, N, WAIT).await;
    // Everything acknowledged by B: nothing is left to send again.
    spool_becomes(addr, 0).await;
    bridge.signal("-TERM");
    assert!(bridge.exited_within(WAIT).await.success());
    while let Some(got) = sub.next_within(QUIET).await {
        seen.add(&got.payload);
    }
    let twice: Vec<(u64, u32)> = seen
        .seen
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(s, c)| (*s, *c))
        .collect();
    println!(
        "delivered {} of {N}, duplicates {}",
        seen.unique(),
        seen.duplicates()
    );
    assert!(seen.missing(N).is_empty(), "lost {:?}", seen.missing(N));
    // The kills did hit QoS 2 flows in progress: restarts found them.
    let restored = restored_flows(&log);
    println!("flows restored at each start: {restored:?}");
    assert!(
        restored.iter().any(|n| *n > 0),
        "no start found a QoS 2 flow in progress: {restored:?}"
    );
    assert!(
        twice.is_empty(),
        "{} duplicates (sequence, copies): {:?}",
        seen.duplicates(),
        twice.iter().take(20).collect::<Vec<_>>()
    );
}
