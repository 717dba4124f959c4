//! `mqbridge run` as a user runs it: a bad config prints every error and
//! exits non-zero without opening any connection; SIGTERM drains, publishes
//! the `offline` status and exits 0.

mod common;

use std::io::ErrorKind;
use std::net::TcpListener;

#[test]
fn config_error_prints_every_error_and_opens_no_connection() {
    // A "broker" the test owns: if `run` dialed it, accept() would see it.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(
        &cfg,
        format!(
            "brokers:\n  a:\n    type: remote\n    endpoints: [mqtt://127.0.0.1:{port}]\n    client_id: cli-test\n  b:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\npipes:\n  p1:\n    from: a\n    to: nowhere\n    topics: [x/#]\n  p2:\n    from: a\n    to: b\n    topics: [\"bad/#/filter\"]\n"
        ),
    )
    .expect("write config");
    let out = common::process::mqbridge()
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .expect("run mqbridge");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "exit status must be non-zero: {stderr}"
    );
    assert!(
        stderr.contains("nowhere"),
        "names the unknown broker: {stderr}"
    );
    assert!(
        stderr.contains("bad/#/filter"),
        "names the bad filter too: {stderr}"
    );
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("mqbridge connected ({peer}) despite the config error"),
        Err(e) => panic!("accept: {e}"),
    }
}

/// A taken port (a broker listener or the metrics endpoint) stops the start
/// with one error that names the address and says the OS reason once.
#[test]
fn port_in_use_prints_the_os_error_once() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = dir.path().join("broker.yaml");
    std::fs::write(
        &broker,
        format!(
            "brokers:\n  a:\n    type: builtin\n    listen: [tcp://127.0.0.1:{port}]\nmetrics:\n  listen: 127.0.0.1:0\n"
        ),
    )
    .expect("write config");
    let metrics = dir.path().join("metrics.yaml");
    std::fs::write(
        &metrics,
        format!(
            "brokers:\n  a:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\nmetrics:\n  listen: 127.0.0.1:{port}\n"
        ),
    )
    .expect("write config");
    for cfg in [&broker, &metrics] {
        let out = common::process::mqbridge()
            .args(["--log-level", "off", "run", "--config"])
            .arg(cfg)
            .env_remove("RUST_LOG")
            .output()
            .expect("run mqbridge");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("127.0.0.1:{port}")),
            "names the address: {stderr}"
        );
        // std renders an OS error as "<description> (os error N)".
        assert_eq!(
            stderr.matches("(os error ").count(),
            1,
            "the OS error once: {stderr}"
        );
    }
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_with_offline_status() {
    use common::bridge::{Sub, WAIT, remote, unique};
    use common::mosquitto::Mosquitto;
    use common::process::BridgeProcess;

    let m = Mosquitto::start();
    let p = unique("term");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bridges.yaml");
    std::fs::write(
        &cfg,
        format!(
            "brokers:\n{}  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\npipes:\n  down:\n    from: m\n    to: edge\n    topics: [{p}/#]\nmetrics:\n  listen: 127.0.0.1:0\n",
            remote("m", m.port, &format!("{p}-m"))
        ),
    )
    .expect("write config");
    let status = format!("mqbridge/{p}-m/status");
    let mut watch = Sub::start(m.port, &unique("w"), &status, 1, false).await;
    let mut bridge = BridgeProcess::spawn(&cfg);
    let got = watch.next().await.expect("online status");
    assert_eq!(got.payload, "online");
    bridge.signal("-TERM");
    let exit = bridge.exited_within(WAIT).await;
    assert!(exit.success(), "exit status after SIGTERM: {exit:?}");
    let got = watch.next().await.expect("offline status");
    assert_eq!(got.payload, "offline");
}
