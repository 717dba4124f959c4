//! Logging as a user sees it: `--log-format json` prints one JSON object per
//! line with key/value fields at the top level, and a bad `--log-level` is
//! refused with a clear message.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::process::{JsonLogRun, LOG_WAIT, config_file, mqbridge};

const CONFIG: &str = "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n  cloud:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\npipes:\n  up:\n    from: edge\n    to: cloud\n    topics: [a/#]\nmetrics:\n  listen: 127.0.0.1:0\n";

#[test]
fn bad_log_filter_is_refused() {
    let cfg = config_file(CONFIG);
    let out = mqbridge()
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
fn unknown_log_level_is_refused_with_the_valid_levels() {
    let cfg = config_file(CONFIG);
    for bad in ["verbose", "debg", "mqbridge=debug,verbose"] {
        let out = mqbridge()
            .args(["--log-level", bad, "validate", "--config"])
            .arg(cfg.path())
            .env_remove("RUST_LOG")
            .output()
            .expect("spawn mqbridge");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: accepted; stderr: {err}");
        assert!(err.contains("unknown level"), "{bad}: {err}");
        assert!(
            err.contains("trace, debug, info, warn, error, off"),
            "{bad}: {err}"
        );
    }
    // Targets with levels stay allowed.
    let out = mqbridge()
        .args([
            "--log-level",
            "mqbridge=debug,rustls=off",
            "validate",
            "--config",
        ])
        .arg(cfg.path())
        .env_remove("RUST_LOG")
        .output()
        .expect("spawn mqbridge");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Parses every stderr line as one JSON object (panics on any other line).
fn json_lines(stderr: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            _ => panic!("not a JSON object line: {l}"),
        })
        .collect()
}

#[test]
fn json_format_covers_command_line_errors() {
    for (args, env) in [
        (vec!["--log-format", "json", "run", "--no-such-flag"], None),
        (vec!["run", "--no-such-flag"], Some("json")),
        (vec!["--log-format=json", "no-such-command"], None),
    ] {
        let mut cmd = mqbridge();
        cmd.args(&args).env_remove("RUST_LOG");
        match env {
            Some(v) => cmd.env("MQBRIDGE_LOG_FORMAT", v),
            None => cmd.env_remove("MQBRIDGE_LOG_FORMAT"),
        };
        let out = cmd.output().expect("spawn mqbridge");
        assert_eq!(out.status.code(), Some(2), "{args:?}: usage errors exit 2");
        let lines = json_lines(&out.stderr);
        assert_eq!(lines.len(), 1, "{args:?}: one JSON object: {lines:#?}");
        assert_eq!(lines[0]["level"], "ERROR", "{}", lines[0]);
        assert_eq!(lines[0]["message"], "command line invalid", "{}", lines[0]);
        let error = lines[0]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("no-such"),
            "{args:?}: the error names what is wrong: {}",
            lines[0]
        );
    }
    // Text format (the default) keeps clap's own message and usage.
    let out = mqbridge()
        .args(["run", "--no-such-flag"])
        .env_remove("MQBRIDGE_LOG_FORMAT")
        .output()
        .expect("spawn mqbridge");
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("--no-such-flag") && text.contains("Usage:"),
        "{text}"
    );
}

#[test]
fn json_format_covers_config_errors_and_refused_levels() {
    let cfg = config_file(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\npipes:\n  up: {from: edge, to: nowhere, topics: [a/#]}\n  up2: {from: edge, to: edge, topics: ['bad/#/x']}\n",
    );
    let out = mqbridge()
        .args([
            "--log-format",
            "json",
            "--log-level",
            "off",
            "validate",
            "--config",
        ])
        .arg(cfg.path())
        .env_remove("RUST_LOG")
        .output()
        .expect("spawn mqbridge");
    assert!(!out.status.success());
    let lines = json_lines(&out.stderr);
    let errors: Vec<_> = lines
        .iter()
        .filter(|v| v["message"] == "configuration error")
        .collect();
    assert_eq!(errors.len(), 2, "{lines:#?}");
    assert_eq!(errors[0]["pipe"], "up", "{lines:#?}");
    assert_eq!(errors[0]["line"], 6, "{lines:#?}");
    assert!(errors[0]["column"].is_u64(), "{lines:#?}");
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("nowhere"),
        "{lines:#?}"
    );
    assert_eq!(errors[0]["level"], "ERROR");
    assert!(
        lines
            .iter()
            .any(|v| v["message"] == "configuration invalid" && v["errors"] == 2)
    );

    let out = mqbridge()
        .args([
            "--log-format",
            "json",
            "--log-level",
            "verbose",
            "validate",
            "--config",
        ])
        .arg(cfg.path())
        .env_remove("RUST_LOG")
        .output()
        .expect("spawn mqbridge");
    assert!(!out.status.success());
    let lines = json_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0]["error"].as_str().unwrap_or("").contains("verbose"));
}

#[test]
fn json_run_prints_warnings_as_json_and_lists_as_arrays() {
    // `allow_anonymous: false` without a password file is a start-up warning.
    let cfg = config_file(&CONFIG.replace(
        "  cloud:\n    type: builtin\n",
        "  cloud:\n    type: builtin\n    allow_anonymous: false\n",
    ));
    let bridge = JsonLogRun::spawn(&[], cfg.path());
    let warning = bridge.wait_message("configuration warning");
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["broker"], "cloud", "{warning}");
    assert!(warning["line"].is_u64(), "{warning}");
    let started = bridge.wait_message("broker started");
    let addrs = started["addrs"]
        .as_array()
        .unwrap_or_else(|| panic!("addrs is not an array: {started}"));
    assert_eq!(addrs.len(), 1, "{started}");
    assert!(
        addrs[0]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{started}"
    );
}

#[test]
fn json_logs_carry_fields_and_metrics_answer() {
    let cfg = config_file(CONFIG);
    let mut bridge = JsonLogRun::spawn(&[], cfg.path());
    // Read lines until the metrics endpoint announces its address.
    let mut addr = None;
    let mut seen = Vec::new();
    while addr.is_none() {
        let Ok(line) = bridge.lines.recv_timeout(LOG_WAIT) else {
            panic!("no metrics address logged; got:\n{}", seen.join("\n"));
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
    s.set_read_timeout(Some(LOG_WAIT)).expect("timeout");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#""status":"alive""#), "{resp}");

    bridge.wait_message("waiting for signals: SIGINT/SIGTERM stop, SIGHUP reloads");
    bridge.signal("-TERM");
    let status = bridge.child.wait().expect("wait");
    assert!(status.success(), "SIGTERM → graceful exit 0, got {status}");
    // The shutdown is logged as JSON too.
    // The reader thread ends at EOF (the process is gone), closing the channel.
    let mut rest = Vec::new();
    while let Ok(l) = bridge.lines.recv_timeout(LOG_WAIT) {
        rest.push(l);
    }
    assert!(
        rest.iter()
            .any(|l| l.contains(r#""message":"bridge stopped""#)),
        "{rest:?}"
    );
    // The store engine's routine info lines are filtered by default.
    let engine = seen
        .iter()
        .chain(&rest)
        .filter(|l| l.contains("Recovering database") || l.contains(r#""target":"fjall"#))
        .collect::<Vec<_>>();
    assert!(engine.is_empty(), "store engine noise: {engine:?}");
}

#[test]
fn sighup_reloads_and_an_invalid_file_keeps_the_running_config() {
    let cfg = config_file(CONFIG);
    let mut bridge = JsonLogRun::spawn(&[], cfg.path());
    bridge.wait_message("waiting for signals: SIGINT/SIGTERM stop, SIGHUP reloads");

    std::fs::write(cfg.path(), "brokers:\n  edge: {type: nonsense}\n").expect("write");
    bridge.signal("-HUP");
    let err = bridge.wait_message("reload rejected: configuration error");
    assert!(err.get("error").is_some(), "{err}");
    bridge.wait_message("reload rejected; keeping the running configuration");

    std::fs::write(
        cfg.path(),
        format!("{CONFIG}watchdog:\n  stall_after: 5s\n"),
    )
    .expect("write");
    bridge.signal("-HUP");
    let ok = bridge.wait_message("configuration reloaded");
    let applied = ok
        .get("applied")
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(applied.contains("watchdog.stall_after"), "{ok}");

    bridge.signal("-TERM");
    let status = bridge.child.wait().expect("wait");
    assert!(status.success(), "{status}");
}

#[test]
fn watch_reloads_when_the_file_changes() {
    let cfg = config_file(CONFIG);
    let mut bridge = JsonLogRun::spawn(&["--watch"], cfg.path());
    let ready = bridge.wait_message("waiting for signals: SIGINT/SIGTERM stop, SIGHUP reloads");
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
    bridge.wait_message("config file changed: reloading");
    let ok = bridge.wait_message("configuration reloaded");
    assert!(ok.to_string().contains("watchdog.stall_after"), "{ok}");
    bridge.signal("-TERM");
    assert!(bridge.child.wait().expect("wait").success());
}

/// The config of a pipe into `port` (stock Mosquitto) with `protocol_line`
/// on the destination.
fn into_mosquitto(port: u16, protocol_line: &str) -> String {
    format!(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n  cloud:\n    type: remote\n    endpoints: [mqtt://127.0.0.1:{port}]\n{protocol_line}pipes:\n  up:\n    from: edge\n    to: cloud\n    topics: [a/#]\nmetrics:\n  listen: 127.0.0.1:0\n"
    )
}

/// With `protocol` left out, a destination whose MQTT 5 receive maximum
/// is below `inflight` (stock Mosquitto grants v5 clients its
/// `max_inflight_messages`, 20) is spoken to in 3.1.1: the bridge says so
/// once, in the user's terms (properties not carried, why, how to keep them).
#[test]
fn a_destination_with_a_small_mqtt5_receive_maximum_gets_3_1_1_with_one_warning() {
    let mosquitto = common::mosquitto::Mosquitto::start();
    let cfg = config_file(&into_mosquitto(mosquitto.port, ""));
    let bridge = JsonLogRun::spawn(&[], cfg.path());
    let warning = bridge.wait_message("broker allows fewer QoS 1/2 messages in flight over MQTT 5 (receive maximum) than `inflight`, which would cap this destination at receive_maximum messages per round trip: speaking MQTT 3.1.1 to this endpoint from now on, so MQTT 5 properties (user properties, content type, correlation data, response topic, message expiry) are NOT carried towards this broker; set `protocol: 5` to keep them at that cap, or raise the broker's limit (Mosquitto: max_inflight_messages) so MQTT 5 is kept");
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["broker"], "cloud", "{warning}");
    assert_eq!(warning["receive_maximum"], 20, "{warning}");
    assert_eq!(warning["inflight"], 4000, "{warning}");
}

/// With `protocol: 5`, the broker's small window binds the client: it
/// says so once, with both numbers.
#[test]
fn a_small_mqtt5_receive_maximum_with_protocol_5_is_warned_once() {
    let mosquitto = common::mosquitto::Mosquitto::start();
    let cfg = config_file(&into_mosquitto(mosquitto.port, "    protocol: 5\n"));
    let bridge = JsonLogRun::spawn(&[], cfg.path());
    let warning = bridge.wait_message("broker allows fewer QoS 1/2 messages in flight than `inflight` (MQTT 5 receive maximum): at most receive_maximum per round trip towards it; raise its limit (Mosquitto: max_inflight_messages) or set `protocol: 3.1.1` for this broker where properties are not needed");
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["broker"], "cloud", "{warning}");
    assert_eq!(warning["receive_maximum"], 20, "{warning}");
    assert_eq!(warning["inflight"], 4000, "{warning}");
}
