//! Store-and-forward (`delivery: spool`, the default) between real
//! Mosquittos: the bridge takes responsibility for a QoS 1 message once it
//! is durable in the pipe's spool, acknowledges the source then, and
//! forwards from disk. Sequence-numbered payloads prove nothing is lost.
//!
//! The issue's long outage (B down 3 minutes while A takes 2k msg/s) is
//! scaled to what a suite runs in seconds: B down while A takes 3,000 QoS 1
//! messages at full speed, three times A's stock `max_queued_messages` 1000.

mod common;

use std::time::Duration;

use common::bridge::{
    SeqCount, Sub, link_goes_down, publish_many, remote, seq_msgs, start_run, stop_run, unique,
};
use common::mosquitto::Mosquitto;
use common::process::BridgeProcess;
use common::wait::wait_until;
use mqbridge::run::RunHandle;
use mqbridge::spool::SpoolRow;
use tokio::time::timeout;

const N: u64 = 3000;
const COLLECT: Duration = Duration::from_secs(90);
/// B keeps what it acknowledged for its persistent subscriber; its own
/// queue is unbounded so only the bridge can lose anything.
const B_CONF: &str =
    "persistence true\npersistence_location {dir}/\nautosave_interval 1\nmax_queued_messages 0\n";
/// A as shipped: `max_queued_messages` 1000 (the default).
const A_STOCK: &str = "";

fn pipe_yaml(name: &str, to: &str, p: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    from: a\n    to: {to}\n    topics:\n      - filter: {p}/#\n        qos: 1\n{extra}"
    )
}

fn yaml(p: &str, a: u16, b: u16, pipe_extra: &str) -> String {
    yaml_window(p, a, b, pipe_extra, 1000)
}

/// With B's `inflight` (the pipe's window) set to `window`.
fn yaml_window(p: &str, a: u16, b: u16, pipe_extra: &str, window: u16) -> String {
    format!(
        "shutdown_timeout: 2s\nbrokers:\n{}{}    inflight: {window}\npipes:\n{}",
        remote("a", a, &format!("{p}-bridge-a")),
        remote("b", b, &format!("{p}-bridge-b")),
        pipe_yaml("ab", "b", p, pipe_extra),
    )
}

fn spool(run: &RunHandle, pipe: &str) -> SpoolRow {
    run.spools()
        .into_iter()
        .find(|r| r.pipe == pipe)
        .unwrap_or_default()
}

/// Publishes `n` QoS 1 messages on A at the issue's 2,000 msg/s (chunks of
/// 100 every 50 ms): A's stock queue (1000) only has to absorb the bridge's
/// lag, as in the field, not a burst faster than any consumer.
async fn publish_paced(port: u16, topic: &str, n: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let msgs = seq_msgs(topic, 0..n);
    for chunk in msgs.chunks(100) {
        tick.tick().await;
        publish_many(port, chunk, 1, false).await;
    }
}

/// Waits until pipe's spool holds `n` messages.
async fn spooled(run: &RunHandle, pipe: &str, n: u64) {
    let stats = run.pipe_stats(pipe).expect("stats");
    timeout(COLLECT, async {
        while spool(run, pipe).depth != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "spool of {pipe} holds {:?}; pipe {:?}",
            spool(run, pipe),
            stats.snapshot()
        )
    });
}

/// Collects until every sequence number of `0..n` arrived; asserts the
/// first arrivals came in order (a duplicate may repeat an earlier one).
async fn collect_in_order(sub: &mut Sub, n: u64) -> SeqCount {
    let mut seen = SeqCount::default();
    let mut last_new: Option<u64> = None;
    timeout(COLLECT, async {
        while (seen.unique() as u64) < n {
            let got = sub.next().await.expect("subscriber ended");
            let Ok(seq) = got.payload.parse::<u64>() else {
                continue;
            };
            if !seen.seen.contains_key(&seq) {
                assert!(
                    last_new.is_none_or(|l| seq > l),
                    "out of order: {seq} after {last_new:?}"
                );
                last_new = Some(seq);
            }
            seen.add(&got.payload);
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "only {} of {n} arrived; first missing {:?}",
            seen.unique(),
            seen.missing(n).iter().take(10).collect::<Vec<_>>()
        )
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_beyond_the_source_queue_loses_nothing() {
    let a = Mosquitto::start_with(A_STOCK);
    let mut b = Mosquitto::start_with(B_CONF);
    let p = unique("outage");
    let mut sub = Sub::start(b.port, &format!("{p}-sub"), &format!("{p}/#"), 1, true).await;
    let (token, run) = start_run(&yaml(&p, a.port, b.port, "")).await;
    link_goes_down(&run, "b", || b.stop()).await;
    publish_paced(a.port, &format!("{p}/s"), N).await;
    // Everything A took is in the spool (A keeps at most 1000 itself).
    let stats = run.pipe_stats("ab").expect("stats");
    spooled(&run, "ab", N).await;
    assert_eq!(stats.snapshot().forwarded, 0);
    tokio::task::block_in_place(|| b.start_again());
    let seen = collect_in_order(&mut sub, N).await;
    println!("outage: duplicates {}", seen.duplicates());
    timeout(COLLECT, wait_until(|| spool(&run, "ab").depth == 0))
        .await
        .expect("the spool drains to empty");
    stop_run(token, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_the_backlog_in_the_spool_loses_nothing() {
    let a = Mosquitto::start_with(A_STOCK);
    let mut b = Mosquitto::start_with(B_CONF);
    let p = unique("k9spool");
    let mut sub = Sub::start(b.port, &format!("{p}-sub"), &format!("{p}/#"), 1, true).await;
    tokio::task::block_in_place(|| b.stop());
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bridges.yaml");
    // One data dir across the kill and the restart.
    let text = format!(
        "{}metrics:\n  listen: 127.0.0.1:{}\nstorage:\n  dir: {}\n",
        yaml(&p, a.port, b.port, ""),
        common::mosquitto::free_port(),
        dir.path().join("data").display()
    );
    std::fs::write(&cfg, text).expect("write config");
    let mut bridge = BridgeProcess::spawn(&cfg);
    let store = dir.path().join("data");
    // Subscribed once a probe reaches the spool.
    let probes = timeout(COLLECT, async {
        loop {
            common::bridge::publish(a.port, &format!("{p}/probe"), "probe", 1, false).await;
            if let Some(d) = spool_depth_via_cli(&cfg, &store).filter(|d| *d > 0) {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the bridge subscribes to A");
    publish_paced(a.port, &format!("{p}/s"), N).await;
    // A's stock queue holds 1000: the rest is only safe because the bridge
    // took it. Wait (through `mqbridge spool`, read from the running
    // bridge) until the spool holds everything, then kill -9.
    let mut last = None;
    let spooled = timeout(COLLECT, async {
        loop {
            last = spool_depth_via_cli(&cfg, &store);
            if last == Some(N + probes) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        spooled.is_ok(),
        "the bridge spooled {last:?} of {N} + {probes} probes"
    );
    bridge.kill9();
    tokio::task::block_in_place(|| b.start_again());
    let _bridge = BridgeProcess::spawn(&cfg);
    let seen = collect_in_order(&mut sub, N).await;
    println!("kill -9 with a spool: duplicates {}", seen.duplicates());
}

/// `mqbridge spool --config <cfg>`'s depth of pipe `ab` (read from the
/// running bridge), or `None` while it does not answer yet.
fn spool_depth_via_cli(cfg: &std::path::Path, store: &std::path::Path) -> Option<u64> {
    let out = common::process::mqbridge()
        .env("MQBRIDGE_DATA_DIR", store)
        .args(["spool", "--json", "--config"])
        .arg(cfg)
        .output()
        .ok()?;
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    rows.as_array()?
        .iter()
        .find(|r| r["pipe"] == "ab")?
        .get("depth")?
        .as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_that_blocks_withholds_acks_and_loses_nothing() {
    // A with an unbounded queue: it keeps what the blocked bridge does not take.
    let a = Mosquitto::start_with(B_CONF);
    let mut b = Mosquitto::start_with(B_CONF);
    let p = unique("block");
    let mut sub = Sub::start(b.port, &format!("{p}-sub"), &format!("{p}/#"), 1, true).await;
    let max = 8192u64;
    let (token, run) = start_run(&yaml(
        &p,
        a.port,
        b.port,
        &format!("    spool:\n      max_bytes: {max}\n"),
    ))
    .await;
    link_goes_down(&run, "b", || b.stop()).await;
    let n = 1000;
    publish_many(a.port, &seq_msgs(&format!("{p}/s"), 0..n), 1, false).await;
    // Full: a message waits in memory because its record did not fit; from
    // then on the spool takes nothing until an acknowledgement makes room,
    // so its depth holds still for the comparisons below (waiting only for
    // "nearly full" raced a last record that still fitted).
    let stats = run.pipe_stats("ab").expect("stats");
    timeout(COLLECT, wait_until(|| stats.snapshot().queue_depth > 0))
        .await
        .expect("the spool fills and blocks");
    let snap = spool(&run, "ab");
    assert!(snap.bytes <= max && snap.bytes + 100 > max, "{snap:?}");
    assert!(snap.depth < n, "blocked before taking everything: {snap:?}");
    assert_eq!(stats.dropped_total(), 0);
    // Visible: /readyz warns (over 80 % full), /spool.json and the gauges.
    let addr = run.metrics_addr().expect("metrics");
    let (_, ready) = common::http::get(addr, "/readyz").await;
    assert!(
        ready.contains("spool of pipe ab is ") && ready.contains("% full"),
        "{ready}"
    );
    let (code, json) = common::http::get(addr, "/spool.json").await;
    let report: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(code, 200);
    assert_eq!(
        report["spools"][0]["depth"].as_u64(),
        Some(snap.depth),
        "{json}"
    );
    let scrape = common::http::scrape(addr).await;
    assert_eq!(
        common::http::value(&scrape, r#"mqbridge_pipe_spool_messages{pipe="ab"}"#),
        Some(snap.depth as f64)
    );
    tokio::task::block_in_place(|| b.start_again());
    collect_in_order(&mut sub, n).await;
    assert_eq!(stats.dropped_total(), 0);
    stop_run(token, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_that_drops_the_oldest_counts_what_it_dropped() {
    let a = Mosquitto::start_with(B_CONF);
    let mut b = Mosquitto::start_with(B_CONF);
    let p = unique("dropold");
    let mut sub = Sub::start(b.port, &format!("{p}-sub"), &format!("{p}/#"), 1, true).await;
    // A window of 10: what the worker handed to B's link before B went
    // away is delivered even if the spool drops it meanwhile.
    let window = 10u64;
    let (token, run) = start_run(&yaml_window(
        &p,
        a.port,
        b.port,
        "    spool:\n      max_bytes: 8KiB\n      when_full: drop_oldest\n",
        window as u16,
    ))
    .await;
    link_goes_down(&run, "b", || b.stop()).await;
    let n = 1000u64;
    publish_many(a.port, &seq_msgs(&format!("{p}/s"), 0..n), 1, false).await;
    let stats = run.pipe_stats("ab").expect("stats");
    timeout(
        COLLECT,
        wait_until(|| {
            let s = stats.snapshot();
            s.received == n && stats.dropped_total() + spool(&run, "ab").depth == n
        }),
    )
    .await
    .expect("every message is spooled or counted as dropped");
    let kept = spool(&run, "ab").depth;
    let dropped = stats.dropped(mqbridge::pipe::stats::DropReason::SpoolFull);
    assert!(dropped > 0 && kept > 0, "kept {kept}, dropped {dropped}");
    assert_eq!(kept + dropped, n);
    tokio::task::block_in_place(|| b.start_again());
    // The newest `kept` arrive; of the dropped oldest, only what was
    // already in flight to B's link (the window) does.
    let mut seen = SeqCount::default();
    timeout(COLLECT, async {
        while (n - kept..n).any(|s| !seen.seen.contains_key(&s)) {
            let got = sub.next().await.expect("the kept messages arrive");
            seen.add(&got.payload);
        }
    })
    .await
    .expect("the kept messages arrive");
    let old = seen.seen.keys().filter(|s| **s < n - kept).count() as u64;
    assert!(old <= window, "{old} dropped messages arrived");
    stop_run(token, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_destination_does_not_stall_a_sibling_pipe() {
    let a = Mosquitto::start_with(A_STOCK);
    let mut b = Mosquitto::start_with(B_CONF);
    let c = Mosquitto::start_with(B_CONF);
    let p = unique("sibling");
    let mut sub = Sub::start(c.port, &format!("{p}-sub"), &format!("{p}/#"), 1, true).await;
    let text = format!(
        "shutdown_timeout: 2s\nbrokers:\n{}{}{}pipes:\n{}{}",
        remote("a", a.port, &format!("{p}-bridge-a")),
        remote("b", b.port, &format!("{p}-bridge-b")),
        remote("c", c.port, &format!("{p}-bridge-c")),
        pipe_yaml("ab", "b", &p, ""),
        pipe_yaml("ac", "c", &p, ""),
    );
    let (token, run) = start_run(&text).await;
    link_goes_down(&run, "b", || b.stop()).await;
    publish_paced(a.port, &format!("{p}/s"), N).await;
    // The healthy sibling gets everything while B is down.
    collect_in_order(&mut sub, N).await;
    spooled(&run, "ab", N).await;
    stop_run(token, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_pipe_leaves_an_orphaned_spool_until_dropped() {
    let a = Mosquitto::start_with(B_CONF);
    let b = Mosquitto::start_with(B_CONF);
    let p = unique("orphan");
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = format!("storage:\n  dir: {}\n", dir.path().join("data").display());
    // B's port is dead for this pipe: what A gets stays in the spool.
    let dead = common::mosquitto::free_port();
    let with_pipe = format!("{}{storage}", yaml(&p, a.port, dead, ""));
    let (token, run) = start_run(&with_pipe).await;
    publish_many(a.port, &seq_msgs(&format!("{p}/s"), 0..10), 1, false).await;
    spooled(&run, "ab", 10).await;
    stop_run(token, run).await;
    // The pipe is gone from the config: its spool is kept and reported.
    let without = format!(
        "shutdown_timeout: 2s\nbrokers:\n{}{}{storage}",
        remote("a", a.port, &format!("{p}-bridge-a")),
        remote("b", b.port, &format!("{p}-bridge-b")),
    );
    let (token, run) = start_run(&without).await;
    let rows = run.spools();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].orphaned && rows[0].depth == 10, "{rows:?}");
    stop_run(token, run).await;
    // `mqbridge spool --drop ab` (bridge stopped) deletes it.
    let cfg = dir.path().join("bridges.yaml");
    std::fs::write(&cfg, &without).expect("write config");
    let out = common::process::mqbridge()
        .args(["spool", "--drop", "ab", "--config"])
        .arg(&cfg)
        .output()
        .expect("run mqbridge spool --drop");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (token, run) = start_run(&without).await;
    assert!(run.spools().is_empty());
    stop_run(token, run).await;
}
