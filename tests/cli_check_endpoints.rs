//! `mqbridge validate --check-endpoints`, run as a user runs it, against a
//! real Mosquitto (plain and TLS), dead ports and a taken listen port.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Output;

use common::certs;
use common::mosquitto::{Mosquitto, free_port};
use common::process::mqbridge;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes `yaml` into a fresh temp dir and runs
/// `mqbridge validate -c bridges.yaml` there with `args` and `envs`.
fn validate(yaml: &str, args: &[&str], envs: &[(&str, &str)]) -> (Output, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bridges.yaml"), yaml).expect("write config");
    run_in(dir.path(), args, envs)
}

fn run_in(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> (Output, String, String) {
    let mut cmd = mqbridge();
    cmd.args(["validate", "-c", "bridges.yaml"])
        .args(args)
        .current_dir(dir)
        .env_remove("MQBRIDGE_CONFIG")
        .env_remove("MQBRIDGE_CHECK_ENDPOINTS");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run mqbridge");
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    (out, stdout, stderr)
}

/// A remote broker `cloud` with `endpoints` (YAML list items), fed by a
/// built-in `edge` on a free port.
fn remote_config(endpoints: &str, extra: &str) -> String {
    format!(
        "brokers:\n  edge: {{type: builtin, listen: ['tcp://127.0.0.1:0']}}\n  cloud:\n    type: remote\n    connect_timeout: 3s\n    endpoints: [{endpoints}]\n{extra}pipes:\n  up: {{from: edge, to: cloud, topics: ['ckep/#']}}\n"
    )
}

#[test]
fn live_mosquitto_endpoint_is_ok_and_exits_0() {
    let m = Mosquitto::start();
    let ep = format!("mqtt://127.0.0.1:{}", m.port);
    // The flag through its environment variable.
    let (out, stdout, stderr) = validate(
        &remote_config(&format!("'{ep}'"), ""),
        &[],
        &[("MQBRIDGE_CHECK_ENDPOINTS", "true")],
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("cloud: endpoint {ep}: ok\n")),
        "{stdout}"
    );
    assert!(
        stdout.contains("edge: listener tcp://127.0.0.1:0: ok (bound 127.0.0.1:"),
        "{stdout}"
    );
    assert!(stdout.ends_with("endpoints: ok\n"), "{stdout}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn dead_endpoint_of_required_broker_exits_1_naming_it() {
    let dead = format!("mqtt://127.0.0.1:{}", free_port());
    let yaml = remote_config(&format!("'{dead}'"), "");
    let (out, stdout, stderr) = validate(&yaml, &["--check-endpoints"], &[]);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("error: cloud: endpoint {dead}: unreachable (")),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: required broker `cloud` has no reachable endpoint"),
        "{stderr}"
    );
    assert!(!stdout.contains("endpoints: ok"), "{stdout}");

    // Without the flag, validate only compiles: nothing is dialed.
    let (out, stdout, stderr) = validate(&yaml, &[], &[]);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stdout.contains("endpoint mqtt"), "{stdout}");
}

#[test]
fn dead_endpoint_of_optional_broker_only_warns() {
    let dead = format!("mqtt://127.0.0.1:{}", free_port());
    let yaml = remote_config(&format!("'{dead}'"), "    required: false\n");
    let (out, stdout, stderr) = validate(&yaml, &["--check-endpoints"], &[]);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: cloud: endpoint {dead}: unreachable (Connection refused"
        )) && stderr.contains("broker not required"),
        "{stderr}"
    );
}

#[test]
fn one_dead_one_live_endpoint_warns_and_exits_0() {
    let m = Mosquitto::start();
    let dead = format!("mqtt://127.0.0.1:{}", free_port());
    let live = format!("mqtt://127.0.0.1:{}", m.port);
    let (out, stdout, stderr) = validate(
        &remote_config(&format!("'{dead}', '{live}'"), ""),
        &["--check-endpoints"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("warning: cloud: endpoint {dead}: unreachable (")),
        "{stderr}"
    );
    assert!(stderr.contains("failover covers it"), "{stderr}");
    assert!(!stderr.lines().any(|l| l.starts_with("error")), "{stderr}");
    assert!(
        stdout.contains(&format!("cloud: endpoint {live}: ok\n")),
        "{stdout}"
    );
    assert!(stdout.ends_with("endpoints: ok\n"), "{stdout}");
}

#[test]
fn tls_endpoint_with_generated_ca_is_ok_and_a_wrong_ca_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = certs::generate(dir.path(), "ckep");
    let other = certs::generate(dir.path(), "other");
    let m = Mosquitto::start_with(&pki.mosquitto_conf(false));
    let ep = format!("mqtts://127.0.0.1:{}", m.port);
    let tls = |ca: &Path| format!("    tls: {{ca_file: '{}'}}\n", ca.display());

    let (out, stdout, stderr) = validate(
        &remote_config(&format!("'{ep}'"), &tls(&pki.ca)),
        &["--check-endpoints"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("cloud: endpoint {ep}: ok\n")),
        "{stdout}"
    );

    // TCP alone would pass; the handshake is what fails with the wrong CA.
    let (out, stdout, stderr) = validate(
        &remote_config(&format!("'{ep}'"), &tls(&other.ca)),
        &["--check-endpoints"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: cloud: endpoint {ep}: unreachable (TLS handshake failed:"
        )) && stderr.contains("not signed by a CA we trust (`tls.ca_file`"),
        "{stderr}"
    );
}

#[test]
fn taken_builtin_listen_port_is_reported_and_exits_1() {
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let free = free_port();
    let yaml = format!(
        "brokers:\n  edge: {{type: builtin, listen: ['tcp://127.0.0.1:{port}', 'tcp://127.0.0.1:{free}']}}\n  cloud: {{type: builtin, listen: ['tcp://127.0.0.1:0']}}\npipes:\n  up: {{from: edge, to: cloud, topics: ['ckep/#']}}\n"
    );
    let (out, stdout, stderr) = validate(&yaml, &["--check-endpoints"], &[]);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: edge: listener tcp://127.0.0.1:{port}: cannot bind 127.0.0.1:{port}:"
        )),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!("edge: listener tcp://127.0.0.1:{free}: ok\n")),
        "{stdout}"
    );
    drop(taken);
}
