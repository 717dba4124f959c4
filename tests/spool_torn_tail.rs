//! A torn journal tail, as a power cut or kill -9 mid-write leaves it: after
//! a kill -9 of a bridge holding a backlog in its spool, the store's newest
//! journal file is truncated mid-record, or has garbage appended. On
//! restart the spool keeps every whole record and loses only the torn one
//! (fjall's journal recovery drops a batch whose checksum or length does
//! not hold; our own CRC guards each record's value too). The unit a tear
//! can cost is one store write: a block, the messages one dispatcher turn
//! took for the pipe (here the last message alone).

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::bridge::{publish, publish_many, remote, seq_msgs, unique};
use common::mosquitto::{Mosquitto, free_port};
use common::process::BridgeProcess;
use tokio::time::timeout;

const N: u64 = 50;
const WAIT: Duration = Duration::from_secs(60);

/// `mqbridge spool --json`: (depth, damaged) of pipe `ab`, or `None`.
fn spool(cfg: &Path) -> Option<(u64, u64)> {
    let out = common::process::mqbridge()
        .args(["spool", "--json", "--config"])
        .arg(cfg)
        .output()
        .ok()?;
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let row = rows.as_array()?.iter().find(|r| r["pipe"] == "ab")?;
    Some((row["depth"].as_u64()?, row["damaged"].as_u64()?))
}

/// Runs a bridge whose destination never answers, spools `N` messages
/// (plus the probes it took to see it subscribed), kills it with -9.
/// The last message is published alone once the others are spooled, so
/// the store's last write (a spool writes the messages of one dispatcher
/// turn as one block) holds it alone.
/// Returns the config, the data dir and the spool depth at the kill.
async fn crash_with_a_spool(dir: &Path, a: &Mosquitto) -> (PathBuf, PathBuf, u64) {
    let p = unique("torn");
    let data = dir.join("data");
    let cfg = dir.join("bridges.yaml");
    let text = format!(
        "brokers:\n{}{}pipes:\n  ab:\n    from: a\n    to: b\n    topics:\n      - filter: {p}/#\n        qos: 1\nmetrics:\n  listen: 127.0.0.1:{}\nstorage:\n  dir: {}\n",
        remote("a", a.port, &format!("{p}-a")),
        remote("b", free_port(), &format!("{p}-b")),
        free_port(),
        data.display()
    );
    std::fs::write(&cfg, text).expect("write config");
    let mut bridge = BridgeProcess::spawn(&cfg);
    let depth = timeout(WAIT, async {
        let mut probes = 0;
        let mut last_sent = false;
        loop {
            if probes == 0 {
                publish(a.port, &format!("{p}/probe"), "probe", 1, false).await;
                if let Some((d, _)) = spool(&cfg).filter(|(d, _)| *d > 0) {
                    probes = d;
                    publish_many(a.port, &seq_msgs(&format!("{p}/s"), 0..N - 1), 1, false).await;
                }
            } else if !last_sent {
                if spool(&cfg).is_some_and(|(d, _)| d >= probes + N - 1) {
                    publish_many(a.port, &seq_msgs(&format!("{p}/s"), N - 1..N), 1, false).await;
                    last_sent = true;
                }
            } else if let Some((d, _)) = spool(&cfg).filter(|(d, _)| *d >= probes + N) {
                // A late probe may have arrived too.
                return d;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the bridge spools everything");
    bridge.kill9();
    (cfg, data, depth)
}

fn newest_journal(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .max_by_key(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .expect("a journal file")
}

/// Where the journal's data ends: fjall preallocates the file with zeros,
/// so after its last non-zero byte.
fn data_end(journal: &Path) -> u64 {
    let bytes = std::fs::read(journal).expect("read journal");
    bytes.iter().rposition(|b| *b != 0).expect("journal data") as u64 + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_last_record_loses_nothing() {
    let a = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, data, depth) = crash_with_a_spool(dir.path(), &a).await;
    // Right after the data (fjall preallocates the rest with zeros).
    let journal = newest_journal(&data);
    let end = data_end(&journal);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .expect("open journal");
    f.seek(SeekFrom::Start(end)).expect("seek");
    f.write_all(&[0xA5; 37]).expect("write garbage");
    drop(f);
    assert_eq!(spool(&cfg), Some((depth, 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_torn_in_half_is_the_only_one_lost() {
    let a = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, data, depth) = crash_with_a_spool(dir.path(), &a).await;
    let journal = newest_journal(&data);
    // Cut into the last record (its value alone is about 60 bytes).
    let len = data_end(&journal);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .expect("open journal");
    f.set_len(len - 20).expect("truncate");
    drop(f);
    let got = spool(&cfg);
    println!("torn tail: {got:?} of {depth} records survive");
    assert_eq!(
        got,
        Some((depth - 1, 0)),
        "every whole record survives, the torn one is dropped"
    );
}
