//! Logging as a user sees it: `--log-format json` prints one JSON object per
//! line with key/value fields at the top level, and a bad `--log-level` is
//! refused with a clear message.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn config_file(yaml: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    f.write_all(yaml.as_bytes()).expect("write config");
    f
}

const CONFIG: &str = "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n  cloud:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\npipes:\n  up:\n    from: edge\n    to: cloud\n    topics: [a/#]\nmetrics:\n  listen: 127.0.0.1:0\n";

#[test]
fn bad_log_filter_is_refused() {
    let cfg = config_file(CONFIG);
    let out = Command::new(env!("CARGO_BIN_EXE_mqbridge"))
        .args(["--log-level", "mqbridge=loud", "validate", "--config"])
        .arg(cfg.path())
        .env_remove("RUST_LOG")
        .output()
        .expect("spawn mqbridge");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid log filter"), "{err}");
}

#[test]
fn json_logs_carry_fields_and_metrics_answer() {
    let cfg = config_file(CONFIG);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqbridge"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(cfg.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mqbridge");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Read lines until the metrics endpoint announces its address.
    let mut addr = None;
    let mut seen = Vec::new();
    while addr.is_none() {
        let line = match rx.recv_timeout(WAIT) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("no metrics address logged; got:\n{}", seen.join("\n"));
            }
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{line}"
        );
        if v.get("message").and_then(|m| m.as_str()) == Some("serving /metrics, /healthz, /readyz")
        {
            addr = v.get("addr").and_then(|a| a.as_str()).map(str::to_owned);
        }
        seen.push(line);
    }
    let addr = addr.expect("addr field");

    let mut s = TcpStream::connect(&addr).expect("connect metrics");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#""status":"alive""#), "{resp}");

    wait_message(
        &rx,
        "waiting for signals: SIGINT/SIGTERM stop, SIGHUP reloads",
    );
    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "SIGTERM → graceful exit 0, got {status}");
    // The shutdown is logged as JSON too.
    // The reader thread ends at EOF (the process is gone), closing the channel.
    let mut rest = Vec::new();
    while let Ok(l) = rx.recv_timeout(WAIT) {
        rest.push(l);
    }
    assert!(
        rest.iter()
            .any(|l| l.contains(r#""message":"bridge stopped""#)),
        "{rest:?}"
    );
}

/// Waits for a JSON log line whose `message` is `msg`; returns it.
fn wait_message(rx: &mpsc::Receiver<String>, msg: &str) -> serde_json::Value {
    let mut seen = Vec::new();
    loop {
        let Ok(line) = rx.recv_timeout(WAIT) else {
            panic!("no log line {msg:?}; got:\n{}", seen.join("\n"));
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        if v.get("message").and_then(|m| m.as_str()) == Some(msg) {
            return v;
        }
        seen.push(line);
    }
}

#[test]
fn sighup_reloads_and_an_invalid_file_keeps_the_running_config() {
    let cfg = config_file(CONFIG);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqbridge"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(cfg.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mqbridge");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    wait_message(
        &rx,
        "waiting for signals: SIGINT/SIGTERM stop, SIGHUP reloads",
    );
    let pid = child.id().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
    };

    std::fs::write(cfg.path(), "brokers:\n  edge: {type: nonsense}\n").expect("write");
    signal("-HUP");
    let err = wait_message(&rx, "reload rejected: configuration error");
    assert!(err.get("error").is_some(), "{err}");
    wait_message(&rx, "reload rejected; keeping the running configuration");

    std::fs::write(
        cfg.path(),
        format!("{CONFIG}watchdog:\n  stall_after: 5s\n"),
    )
    .expect("write");
    signal("-HUP");
    let ok = wait_message(&rx, "configuration reloaded");
    let applied = ok
        .get("applied")
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(applied.contains("watchdog.stall_after"), "{ok}");

    signal("-TERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
}

#[test]
fn watch_reloads_when_the_file_changes() {
    let cfg = config_file(CONFIG);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqbridge"))
        .args(["--log-format", "json", "run", "--watch", "--config"])
        .arg(cfg.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mqbridge");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = wait_message(
        &rx,
        "waiting for signals: SIGINT/SIGTERM stop, SIGHUP reloads",
    );
    assert_eq!(
        ready.get("watch"),
        Some(&serde_json::Value::Bool(true)),
        "{ready}"
    );
    std::fs::write(
        cfg.path(),
        format!("{CONFIG}watchdog:\n  stall_after: 9s\n"),
    )
    .expect("write");
    wait_message(&rx, "config file changed: reloading");
    let ok = wait_message(&rx, "configuration reloaded");
    assert!(ok.to_string().contains("watchdog.stall_after"), "{ok}");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    assert!(child.wait().expect("wait").success());
}
