//! Memory a client's subscriptions took comes back to the OS when they go
//! (issue: one SUBSCRIBE burst of 100 MB stayed resident after the clients
//! left). Runs the real binary, so the allocator under test is the shipped one.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::process::JsonLogRun;

const CLIENTS: usize = 4;
const SUBSCRIBES: usize = 10;
const FILTERS: usize = 100;
const LEVELS: usize = 199;

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut d = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            d |= 0x80;
        }
        out.push(d);
        if n == 0 {
            return;
        }
    }
}

fn string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Connects as `id` and subscribes `SUBSCRIBES × FILTERS` deep filters,
/// reading every SUBACK.
fn subscribe_deep(port: u16, id: usize) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut body = Vec::new();
    string("MQTT", &mut body);
    body.extend_from_slice(&[4, 2, 0, 60]);
    string(&format!("mem-{id}"), &mut body);
    s.write_all(&packet(0x10, &body)).unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK");
    for p in 0..SUBSCRIBES {
        let mut body = ((p + 1) as u16).to_be_bytes().to_vec();
        for f in 0..FILTERS {
            let filter: Vec<String> = (0..LEVELS).map(|l| format!("c{id}p{p}f{f}l{l}")).collect();
            string(&filter.join("/"), &mut body);
            body.push(0);
        }
        s.write_all(&packet(0x82, &body)).unwrap();
        // SUBACK: 0x90, remaining length 102 (one byte), packet id, 100 codes.
        let mut suback = vec![0u8; 2 + 2 + FILTERS];
        s.read_exact(&mut suback).unwrap();
        assert_eq!(suback[0], 0x90);
        assert!(suback[4..].iter().all(|&c| c == 0), "every filter granted");
    }
    s
}

#[test]
fn subscription_memory_returns_to_the_os_after_the_clients_leave() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("b.yaml");
    std::fs::write(
        &config,
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n    sys_interval: 0\n    limits: { max_trie_nodes: 2000000 }\npipes: {}\n",
    )
    .unwrap();
    let bridge = JsonLogRun::spawn(&["--log-level", "info"], &config);
    let started = bridge.wait_message("broker started");
    let port: u16 = started["addrs"][0]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {started}"));
    let pid = bridge.child.id();
    let before = rss_kib(pid);

    let clients: Vec<TcpStream> = (0..CLIENTS).map(|c| subscribe_deep(port, c)).collect();
    let peak = rss_kib(pid);
    assert!(
        peak > before + 40 * 1024,
        "the subscriptions should take tens of MB: {before} → {peak} KiB"
    );
    drop(clients);

    // jemalloc's background thread purges after its 10 s decay time.
    let target = before + (peak - before) / 4;
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut now_rss = rss_kib(pid);
    while now_rss > target && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        now_rss = rss_kib(pid);
    }
    assert!(
        now_rss <= target,
        "RSS {before} KiB at start, {peak} KiB with the subscriptions, still {now_rss} KiB 40 s after the clients left"
    );
}
