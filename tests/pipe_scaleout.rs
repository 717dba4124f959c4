//! Scale-out: two real mqbridge processes run the same pipe with a shared
//! subscription (`$share/bridges/<prefix>/#`) on one real Mosquitto source,
//! each with its own client id (from `${REPLICA}`, as the documented
//! recipe) and its own data directory. The source's traffic is split
//! between them; every message reaches the destination exactly once while
//! both run, and at least once (nothing lost) across a kill -9 and restart
//! of one of them: what it had spooled it forwards after the restart, and
//! what the source had not had acknowledged it sends again.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::bridge::{SeqCount, Sub, publish, publish_many, remote, seq_msgs, unique};
use common::http::{counter, scrape};
use common::mosquitto::{Mosquitto, free_port};
use common::process::{BridgeProcess, mqbridge};
use tokio::time::timeout;

/// Messages per phase.
const N: u64 = 2000;
const COLLECT: Duration = Duration::from_secs(90);
/// Unbounded queues on both Mosquittos: only the bridges could lose anything.
const CONF: &str = "max_queued_messages 0\n";

/// One replica: its config (shared text, own `REPLICA`), data directory and
/// metrics address.
struct Replica {
    id: &'static str,
    config: PathBuf,
    data: PathBuf,
    metrics: SocketAddr,
    process: Option<BridgeProcess>,
}

impl Replica {
    fn new(dir: &Path, id: &'static str, p: &str, a: u16, b: u16) -> Replica {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let data = common::data_dir();
        // The same pipe in every replica; the client ids differ only by
        // `${REPLICA}` and the data directory is the replica's own.
        let yaml = format!(
            "shutdown_timeout: 2s\nmetrics:\n  listen: {metrics}\nstorage:\n  dir: {}\nbrokers:\n{}{}pipes:\n  scale:\n    from: a\n    to: b\n    topics:\n      - filter: $share/bridges/{p}/#\n        qos: 1\n",
            data.display(),
            remote("a", a, &format!("{p}-a-${{REPLICA}}")),
            remote("b", b, &format!("{p}-b-${{REPLICA}}")),
        );
        let config = dir.join(format!("bridges-{id}.yaml"));
        std::fs::write(&config, yaml).expect("write config");
        Replica {
            id,
            config,
            data,
            metrics,
            process: None,
        }
    }

    fn start(&mut self) {
        let child = mqbridge()
            .env("REPLICA", self.id)
            .env("MQBRIDGE_DATA_DIR", &self.data)
            .args(["run", "--log-level", "warn", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mqbridge");
        self.process = Some(BridgeProcess(child));
    }

    fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
    }

    /// Messages this run of the replica forwarded (0 while its metrics
    /// endpoint is not up yet).
    async fn forwarded(&self) -> f64 {
        if tokio::net::TcpStream::connect(self.metrics).await.is_err() {
            return 0.0;
        }
        counter(
            &scrape(self.metrics).await,
            "mqbridge_pipe_messages_forwarded_total{pipe=\"scale\"}",
        )
    }
}

/// Probes the source until every replica forwarded at least `floor + 1`
/// messages: all are subscribed (round robin reaches each).
async fn all_subscribed(a: u16, p: &str, replicas: &[&Replica], floor: f64) {
    timeout(COLLECT, async {
        loop {
            publish(a, &format!("{p}/probe"), "probe", 1, false).await;
            let mut all = true;
            for r in replicas {
                all &= r.forwarded().await > floor;
            }
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("every replica subscribes to the source");
}

/// Receives until `0..n` all arrived (probes, non-numeric, are ignored).
async fn collect(sub: &mut Sub, seen: &mut SeqCount, n: u64) {
    sub.collect_seq(seen, n as usize, n, COLLECT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_a_shared_source_and_a_kill_9_loses_nothing() {
    let p = unique("scale");
    let a = Mosquitto::start_with(CONF);
    let b = Mosquitto::start_with(CONF);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut r0 = Replica::new(dir.path(), "r0", &p, a.port, b.port);
    let mut r1 = Replica::new(dir.path(), "r1", &p, a.port, b.port);
    let mut sub = Sub::start(b.port, &unique("scale-sub"), &format!("{p}/#"), 1, true).await;
    r0.start();
    r1.start();
    all_subscribed(a.port, &p, &[&r0, &r1], 0.0).await;

    // Phase 1, both running: every message exactly once, the load split.
    let (before0, before1) = (r0.forwarded().await, r1.forwarded().await);
    publish_many(a.port, &seq_msgs(&format!("{p}/s"), 0..N), 1, false).await;
    let mut seen = SeqCount::default();
    collect(&mut sub, &mut seen, N).await;
    assert_eq!(seen.duplicates(), 0, "a message went through both replicas");
    assert!(
        sub.next_within(Duration::from_millis(300))
            .await
            .is_none_or(|g| g.payload == "probe"),
        "no extra copies"
    );
    let share0 = r0.forwarded().await - before0;
    let share1 = r1.forwarded().await - before1;
    eprintln!("phase 1: r0 forwarded {share0}, r1 forwarded {share1} of {N}");
    // Probes still in flight may add one or two.
    assert!(share0 + share1 >= N as f64);
    for share in [share0, share1] {
        assert!(
            share >= N as f64 * 0.3,
            "each replica takes a substantial share: {share0} / {share1}"
        );
    }

    // Phase 2: kill -9 one replica while the source takes N more, restart
    // it (same client id, same data directory): nothing lost.
    let topic = format!("{p}/s");
    let publisher = tokio::spawn(async move {
        for chunk in seq_msgs(&topic, N..2 * N).chunks(100) {
            publish_many(a.port, chunk, 1, false).await;
        }
        a
    });
    let phase2 = |seen: &SeqCount| seen.seen.range(N..).count() as u64;
    timeout(COLLECT, async {
        while phase2(&seen) < N / 4 {
            let got = sub.next().await.expect("messages flow");
            seen.add(&got.payload);
        }
    })
    .await
    .expect("phase 2 flows");
    r0.kill9();
    let a = timeout(COLLECT, publisher)
        .await
        .expect("publisher in time")
        .expect("publisher task");
    r0.start();
    collect(&mut sub, &mut seen, 2 * N).await;
    assert!(seen.missing(2 * N).is_empty());
    eprintln!(
        "phase 2: 0 lost, {} duplicates across the kill -9",
        seen.duplicates()
    );
    // The restarted replica is back in the group: it takes new messages.
    let backlog = r0.forwarded().await;
    timeout(COLLECT, async {
        while r0.forwarded().await <= backlog {
            publish(a.port, &format!("{p}/probe"), "probe", 1, false).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the restarted replica takes messages again");
    r1.kill9();
    r0.kill9();
    drop(b);
}
