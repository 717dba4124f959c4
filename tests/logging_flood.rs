//! Log flooding, as a user of the real binary sees it: repeated warnings go
//! through one limiter keyed by the kind of warning (not by the peer), and
//! report how many were swallowed when they log again; a remote broker that
//! is down gives rate-limited "connect failed" lines, never "disconnected";
//! rustls' per-client "Illegal SNI" chatter is filtered out by default.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::certs;
use common::mosquitto::{free_port, require_bin};
use common::process::{JsonLogRun, LOG_WAIT, config_file};

/// Hostile connections sent in the flood test.
const FLOOD: usize = 2_000;
/// WARN lines allowed for the whole flood: one per kind of warning and a
/// margin; before the limiter covered them the flood gave one per connection.
const FLOOD_WARN_MAX: usize = 10;

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
}

fn message(v: &serde_json::Value) -> &str {
    v.get("message").and_then(|m| m.as_str()).unwrap_or("")
}

fn is_warn(v: &serde_json::Value) -> bool {
    v.get("level").and_then(|l| l.as_str()) == Some("WARN")
}

/// Reads log lines until one with `message` `msg`; returns the lines before it.
fn lines_until(bridge: &JsonLogRun, msg: &str) -> Vec<serde_json::Value> {
    let mut seen = Vec::new();
    loop {
        let Ok(line) = bridge.lines.recv_timeout(LOG_WAIT) else {
            panic!("no log line {msg:?}; got {} lines", seen.len());
        };
        let v = json(&line);
        if message(&v) == msg {
            return seen;
        }
        seen.push(v);
    }
}

/// The port of built-in broker `name`, from its "broker started" line
/// (`addrs` as a string or a list: the first `127.0.0.1:<port>` in it).
fn broker_port(bridge: &JsonLogRun, name: &str) -> u16 {
    loop {
        let Ok(line) = bridge.lines.recv_timeout(LOG_WAIT) else {
            panic!("no \"broker started\" line for {name}");
        };
        let v = json(&line);
        if message(&v) != "broker started" || v.get("broker").and_then(|b| b.as_str()) != Some(name)
        {
            continue;
        }
        let addrs = v.get("addrs").map(ToString::to_string).unwrap_or_default();
        let port = addrs
            .split("127.0.0.1:")
            .nth(1)
            .map(|rest| {
                rest.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .and_then(|p| p.parse().ok());
        return port.unwrap_or_else(|| panic!("no port in {v}"));
    }
}

/// A CONNECT of protocol level 6, which the broker refuses (CONNACK 0x84).
const CONNECT_V6: &[u8] = &[
    0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 60, 0, 0, 1, b'a',
];
/// A PINGREQ as the first packet.
const PINGREQ_FIRST: &[u8] = &[0xC0, 0x00];
/// Packet type 0 (reserved): malformed.
const RESERVED_TYPE: &[u8] = &[0x00, 0x00];

/// One hostile connection: send `bytes`, read until the broker closes.
fn hostile(port: u16, bytes: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // The broker may close before reading everything: errors are fine.
    let _ = s.write_all(bytes);
    let mut sink = [0u8; 64];
    loop {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

const BUILTIN: &str = "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n  cloud:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\npipes:\n  up:\n    from: edge\n    to: cloud\n    topics: [a/#]\nmetrics:\n  listen: 127.0.0.1:0\n";

#[test]
fn malformed_packets_and_bad_connects_do_not_flood_the_log() {
    let cfg = config_file(BUILTIN);
    let bridge = JsonLogRun::spawn(&[], cfg.path());
    let port = broker_port(&bridge, "edge");
    lines_until(
        &bridge,
        "waiting for signals: SIGINT/SIGTERM stop, SIGHUP reloads",
    );

    let start = Instant::now();
    for i in 0..FLOOD {
        let bytes = match i % 3 {
            0 => CONNECT_V6,
            1 => PINGREQ_FIRST,
            _ => RESERVED_TYPE,
        };
        hostile(port, bytes);
    }
    let flood_took = start.elapsed();
    // Every connection was closed by the broker, so its warning (if any) is
    // written; a reload with the same file is the barrier after them.
    bridge.signal("-HUP");
    let during = lines_until(&bridge, "configuration reloaded");
    let warns: Vec<_> = during.iter().filter(|v| is_warn(v)).collect();
    assert!(
        warns.len() <= FLOOD_WARN_MAX,
        "{} WARN lines for {FLOOD} hostile connections in {flood_took:?}: {warns:#?}",
        warns.len()
    );
    assert!(
        warns
            .iter()
            .all(|v| v.get("suppressed").is_some_and(|s| s.is_u64())),
        "every limited warning carries `suppressed`: {warns:#?}"
    );
    assert!(
        warns.iter().any(|v| message(v) == "bad CONNECT, closed"),
        "{warns:#?}"
    );

    // Once the window passed, the next one logs with the suppressed count.
    let deadline = Instant::now() + Duration::from_secs(25);
    let suppressed = loop {
        assert!(
            Instant::now() < deadline,
            "no \"bad CONNECT\" line with a suppressed count"
        );
        hostile(port, CONNECT_V6);
        let got = loop {
            match bridge.lines.recv_timeout(Duration::from_millis(500)) {
                Ok(line) => {
                    let v = json(&line);
                    if message(&v) == "bad CONNECT, closed" {
                        break v.get("suppressed").and_then(serde_json::Value::as_u64);
                    }
                }
                Err(_) => break None,
            }
        };
        if let Some(n) = got.filter(|n| *n > 0) {
            break n;
        }
    };
    // Two of three flood connections were bad CONNECTs (v5, reserved type).
    assert!(
        suppressed as usize >= FLOOD / 2,
        "suppressed {suppressed} of {FLOOD} bad CONNECTs"
    );
}

#[test]
fn a_down_remote_broker_gives_rate_limited_connect_failed_never_disconnected() {
    let port = free_port(); // nothing listens there
    let yaml = format!(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n  cloud:\n    type: remote\n    endpoints: [mqtt://127.0.0.1:{port}]\n    client_id: flood-down\n    reconnect: {{ min: 10ms, max: 50ms, probe_interval: 0s }}\npipes:\n  up:\n    from: edge\n    to: cloud\n    topics: [a/#]\nmetrics:\n  listen: 127.0.0.1:0\n"
    );
    let cfg = config_file(&yaml);
    let bridge = JsonLogRun::spawn(&[], cfg.path());
    // Thirty attempts (about 1.5 s at 50 ms), well inside one limiter window.
    let mut attempts = 0;
    let mut failed = Vec::new();
    let mut disconnected = Vec::new();
    while attempts < 30 {
        let Ok(line) = bridge.lines.recv_timeout(LOG_WAIT) else {
            panic!("only {attempts} connect attempts logged");
        };
        let v = json(&line);
        match message(&v) {
            "connecting" => attempts += 1,
            "connect failed" => failed.push(v),
            "disconnected" => disconnected.push(v),
            _ => {}
        }
    }
    assert!(
        disconnected.is_empty(),
        "attempts that never connected are not disconnects: {disconnected:#?}"
    );
    assert_eq!(failed.len(), 1, "one line per window: {failed:#?}");
    let f = &failed[0];
    assert!(is_warn(f), "{f}");
    assert_eq!(
        f.get("broker").and_then(|b| b.as_str()),
        Some("cloud"),
        "{f}"
    );
    assert_eq!(f.get("suppressed").and_then(|s| s.as_u64()), Some(0), "{f}");
}

#[test]
fn a_tls_client_connecting_by_ip_logs_no_illegal_sni() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = certs::generate(dir.path(), "sni");
    let yaml = format!(
        "brokers:\n  edge:\n    type: builtin\n    listen:\n      - url: tls://127.0.0.1:0\n        cert_file: {}\n        key_file: {}\n  cloud:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\npipes:\n  up:\n    from: edge\n    to: cloud\n    topics: [a/#]\nmetrics:\n  listen: 127.0.0.1:0\n",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let cfg = config_file(&yaml);
    let bridge = JsonLogRun::spawn(&[], cfg.path());
    let port = broker_port(&bridge, "edge");
    lines_until(
        &bridge,
        "waiting for signals: SIGINT/SIGTERM stop, SIGHUP reloads",
    );

    // mosquitto_pub (OpenSSL) sends the host it was given as SNI, here an IP.
    let out = Command::new(require_bin("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--cafile"])
        .arg(&pki.ca)
        .args(["-t", "a/sni", "-m", "x", "-q", "1", "-i", "sni-client"])
        .stdin(Stdio::null())
        .output()
        .expect("run mosquitto_pub");
    assert!(
        out.status.success(),
        "mosquitto_pub over TLS by IP failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    bridge.signal("-HUP");
    let lines = lines_until(&bridge, "configuration reloaded");
    let sni: Vec<_> = lines
        .iter()
        .filter(|v| v.to_string().contains("SNI"))
        .collect();
    assert!(sni.is_empty(), "{sni:#?}");
}
