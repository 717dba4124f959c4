//! Observability of a real in-process bridge (`mqbridge::run`): metrics move
//! with traffic and drops, `/readyz` follows a destination going away and
//! coming back, and a wedged destination triggers the stall watchdog, which
//! reconnects it until the pipe recovers.

mod common;

use std::sync::atomic::Ordering;

use common::bridge::{Sub, plan, publish, start_run, stop_run, unique};
use common::fake_broker::FakeBroker;
use common::http::{counter, get, metric_becomes, readyz_becomes, value};
use common::mosquitto::{Mosquitto, free_port, password_file};
use tokio_util::sync::CancellationToken;

const BUILTINS: &str = "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n  cloud:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_histogram_move_with_real_traffic() {
    let p = unique("mt");
    let yaml = format!(
        "{BUILTINS}pipes:\n  traffic_up:\n    from: edge\n    to: cloud\n    topics: [{p}/#]\n    exclude: [{p}/secret/#]\n    max_payload: 16\n"
    );
    let (token, run) = start_run(&yaml).await;
    let addr = run.metrics_addr().expect("metrics enabled by default");
    let edge = run.builtin_addrs("edge").expect("edge")[0].port();
    let cloud = run.builtin_addrs("cloud").expect("cloud")[0].port();
    let mut sub = Sub::start(cloud, &unique("sub"), &format!("{p}/#"), 1, false).await;

    for i in 0..5 {
        publish(edge, &format!("{p}/t/{i}"), "hello", 1, false).await;
    }
    publish(edge, &format!("{p}/secret/x"), "hidden", 1, false).await;
    publish(edge, &format!("{p}/t/big"), &"x".repeat(64), 1, false).await;
    for _ in 0..5 {
        sub.next().await.expect("forwarded message");
    }

    let pipe = r#"{pipe="traffic_up"}"#;
    let body = metric_becomes(
        addr,
        &format!("mqbridge_pipe_messages_forwarded_total{pipe}"),
        5.0,
    )
    .await;
    for (series, want) in [
        (format!("mqbridge_pipe_bytes_forwarded_total{pipe}"), 25.0),
        (
            r#"mqbridge_pipe_messages_dropped_total{pipe="traffic_up",reason="excluded"}"#.into(),
            1.0,
        ),
        (
            r#"mqbridge_pipe_messages_dropped_total{pipe="traffic_up",reason="oversize"}"#.into(),
            1.0,
        ),
        (
            r#"mqbridge_pipe_messages_dropped_total{pipe="traffic_up",reason="loop"}"#.into(),
            0.0,
        ),
        (
            format!("mqbridge_pipe_forward_latency_seconds_count{pipe}"),
            5.0,
        ),
        (
            r#"mqbridge_pipe_forward_latency_seconds_bucket{pipe="traffic_up",le="+Inf"}"#.into(),
            5.0,
        ),
        (format!("mqbridge_pipe_inflight_messages{pipe}"), 0.0),
    ] {
        // Drops and the histogram are recorded by other tasks than the one
        // counting forwards: wait for each series rather than racing them.
        if value(&body, &series) != Some(want) {
            metric_becomes(addr, &series, want).await;
        }
    }
    let body = metric_becomes(
        addr,
        &format!("mqbridge_pipe_messages_forwarded_total{pipe}"),
        5.0,
    )
    .await;
    let received = value(
        &body,
        &format!("mqbridge_pipe_messages_received_total{pipe}"),
    )
    .expect("received");
    assert!(received >= 5.0, "received {received}");
    let edge_in = value(&body, r#"mqbridge_broker_messages_in_total{broker="edge"}"#)
        .expect("edge messages in");
    assert!(edge_in >= 7.0, "edge received every publish: {edge_in}");
    let clients = value(
        &body,
        r#"mqbridge_broker_clients_connected{broker="cloud"}"#,
    )
    .expect("cloud clients");
    assert!(
        clients >= 1.0,
        "the subscriber (and the bridge link) are counted"
    );

    let (code, ready) = get(addr, "/readyz").await;
    assert_eq!(code, 200, "{ready}");
    assert!(ready.contains(r#""name":"traffic_up""#), "{ready}");
    let (code, health) = get(addr, "/healthz").await;
    assert_eq!(code, 200);
    assert!(health.contains(r#""status":"alive""#), "{health}");

    sub.stop().await;
    let metrics_socket = common::sockets::listening_inode(addr);
    let report = stop_run(token, run).await;
    assert!(report.busy_pipes.is_empty());
    // Asked of the kernel, not by connecting: the freed port may already be
    // another test's listener.
    assert!(
        !common::sockets::holds_socket(metrics_socket),
        "the metrics endpoint stops with the bridge"
    );
}

fn remote_yaml(name: &str, port: u16, id: &str) -> String {
    format!(
        "  {name}:\n    type: remote\n    endpoints: [mqtt://127.0.0.1:{port}]\n    client_id: {id}\n    reconnect: {{ min: 50ms, max: 200ms, jitter: false }}\n    keepalive: 5s\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedged_remote_destination_stalls_then_recovers() {
    let p = unique("st");
    let fake = FakeBroker::start(1).await; // first connection never acks
    let yaml = format!(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n{}pipes:\n  stall_up:\n    from: edge\n    to: wedge\n    topics: [{p}/#]\nwatchdog:\n  stall_after: 500ms\n",
        remote_yaml("wedge", fake.port, &p)
    );
    let (token, run) = start_run(&yaml).await;
    let addr = run.metrics_addr().expect("metrics");
    let edge = run.builtin_addrs("edge").expect("edge")[0].port();
    readyz_becomes(addr, 200).await;

    for i in 0..3 {
        publish(edge, &format!("{p}/m/{i}"), "payload", 1, false).await;
    }
    let body = readyz_becomes(addr, 503).await;
    assert!(body.contains("pipe stall_up is stalled"), "{body}");
    let body = readyz_becomes(addr, 200).await;
    assert!(!body.contains("stalled"), "{body}");

    let m = metric_becomes(
        addr,
        r#"mqbridge_pipe_messages_forwarded_total{pipe="stall_up"}"#,
        3.0,
    )
    .await;
    assert_eq!(
        value(&m, r#"mqbridge_pipe_stalls_total{pipe="stall_up"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        value(&m, r#"mqbridge_pipe_stalled{pipe="stall_up"}"#),
        Some(0.0)
    );
    assert_eq!(
        value(
            &m,
            r#"mqbridge_remote_disconnects_total{broker="wedge",reason="requested"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert!(fake.connections.load(Ordering::SeqCst) >= 2);
    assert!(fake.acked.load(Ordering::SeqCst) >= 3);
    // Sent once on the wedged connection and again after the reconnect.
    let out = value(&m, r#"mqbridge_remote_messages_out_total{broker="wedge"}"#).expect("out");
    assert!(out >= 6.0, "{m}");
    let bytes = value(&m, r#"mqbridge_remote_bytes_out_total{broker="wedge"}"#).expect("bytes");
    assert!(bytes >= 6.0 * 7.0, "{m}");
    metric_becomes(
        addr,
        r#"mqbridge_remote_inflight_messages{broker="wedge"}"#,
        0.0,
    )
    .await;

    stop_run(token, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_a_required_destination_going_away_and_back() {
    let p = unique("rd");
    let fake = FakeBroker::start(0).await;
    let port = fake.port;
    let yaml = format!(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n{}pipes:\n  ready_up:\n    from: edge\n    to: dest\n    topics: [{p}/#]\n",
        remote_yaml("dest", port, &p)
    );
    let (token, run) = start_run(&yaml).await;
    let addr = run.metrics_addr().expect("metrics");
    readyz_becomes(addr, 200).await;

    drop(fake);
    let body = readyz_becomes(addr, 503).await;
    assert!(body.contains("broker dest is not connected"), "{body}");
    let m = metric_becomes(addr, r#"mqbridge_remote_connected{broker="dest"}"#, 0.0).await;
    assert_eq!(
        value(
            &m,
            r#"mqbridge_remote_disconnects_total{broker="dest",reason="io"}"#
        ),
        Some(1.0),
        "{m}"
    );

    let back = FakeBroker::start_on(port, 0).await;
    readyz_becomes(addr, 200).await;
    let m = metric_becomes(addr, r#"mqbridge_remote_connected{broker="dest"}"#, 1.0).await;
    let attempts = value(
        &m,
        &format!(r#"mqbridge_remote_connection_attempts_total{{broker="dest",endpoint="mqtt://127.0.0.1:{port}"}}"#),
    )
    .expect("attempts");
    assert!(attempts >= 2.0, "{m}");
    assert!(back.connections.load(Ordering::SeqCst) >= 1);

    stop_run(token, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_readiness_rejects_invalid_and_leaves_pipes_alone() {
    let p = unique("rl");
    // A port with nothing listening: the remote broker stays down.
    let dead = free_port();
    let yaml = |required: bool, extra_pipe: bool| {
        let mut y = format!(
            "{BUILTINS}{}    required: {required}\npipes:\n  reload_up:\n    from: edge\n    to: cloud\n    topics: [{p}/#]\n",
            remote_yaml("down", dead, &p)
        );
        if extra_pipe {
            y.push_str(&format!(
                "  reload_new:\n    from: edge\n    to: down\n    topics: [{p}/new/#]\n"
            ));
        }
        y.push_str("metrics:\n  listen: 127.0.0.1:0\n");
        y
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bridges.yaml");
    std::fs::write(&file, yaml(true, false)).expect("write");
    let (token, mut run) = start_run(&yaml(true, false)).await;
    let addr = run.metrics_addr().expect("metrics");
    let edge = run.builtin_addrs("edge").expect("edge")[0].port();
    let cloud = run.builtin_addrs("cloud").expect("cloud")[0].port();
    let mut sub = Sub::start(cloud, &unique("sub"), &format!("{p}/#"), 1, false).await;
    let body = readyz_becomes(addr, 503).await;
    assert!(body.contains("broker down is not connected"), "{body}");
    let (_, m) = get(addr, "/metrics").await;
    let reloads = counter(&m, "mqbridge_reloads_total");
    let failures = counter(&m, "mqbridge_reload_failures_total");

    let mut sent = 0;
    let mut send = async |n: usize| {
        for _ in 0..n {
            publish(
                edge,
                &format!("{p}/seq/{sent}"),
                &sent.to_string(),
                1,
                false,
            )
            .await;
            sent += 1;
        }
    };
    send(5).await;

    // Valid: `required: false` is applied at once.
    std::fs::write(&file, yaml(false, false)).expect("write");
    let d = run.reload_file(&file).await.expect("valid config");
    assert_eq!(d.readiness_changed, vec!["down"]);
    readyz_becomes(addr, 200).await;
    send(5).await;

    // Invalid: rejected, counted, nothing changes.
    std::fs::write(&file, "brokers:\n  edge: {type: nonsense}\n").expect("write");
    assert!(run.reload_file(&file).await.is_err());
    let (code, _) = get(addr, "/readyz").await;
    assert_eq!(code, 200, "the running configuration stays");
    send(5).await;

    // A new pipe (to a broker that is down) starts; the running pipe is untouched.
    std::fs::write(&file, yaml(false, true)).expect("write");
    let d = run.reload_file(&file).await.expect("valid config");
    assert_eq!(d.pipes.added, vec!["reload_new"]);
    assert_eq!(d.pipes.unchanged, vec!["reload_up"]);
    send(5).await;

    // Every message on the unaffected pipe arrives exactly once.
    sub.exactly_once(20).await;
    // Process-wide counters (other tests in this binary reload too).
    let (_, m) = get(addr, "/metrics").await;
    let now = counter(&m, "mqbridge_reloads_total");
    assert!(now >= reloads + 2.0, "{now} after {reloads}");
    let now = counter(&m, "mqbridge_reload_failures_total");
    assert!(now >= failures + 1.0, "{now} after {failures}");
    assert_eq!(
        value(
            &m,
            r#"mqbridge_pipe_messages_forwarded_total{pipe="reload_up"}"#
        ),
        Some(20.0)
    );

    sub.stop().await;
    stop_run(token, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_source_counts_messages_in_and_connection_state() {
    let p = unique("in");
    let mosq = Mosquitto::start();
    let yaml = format!(
        "brokers:\n{}  sink:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\npipes:\n  in_down:\n    from: src\n    to: sink\n    topics: [{p}/#]\n",
        remote_yaml("src", mosq.port, &p)
    );
    let (token, run) = start_run(&yaml).await;
    let addr = run.metrics_addr().expect("metrics");
    let sink = run.builtin_addrs("sink").expect("sink")[0].port();
    let mut sub = Sub::start(sink, &unique("sub"), &format!("{p}/#"), 1, false).await;
    for i in 0..4 {
        publish(mosq.port, &format!("{p}/x/{i}"), "abcd", 1, false).await;
    }
    for _ in 0..4 {
        sub.next().await.expect("message");
    }
    let m = metric_becomes(
        addr,
        r#"mqbridge_remote_messages_in_total{broker="src"}"#,
        4.0,
    )
    .await;
    assert_eq!(
        value(&m, r#"mqbridge_remote_bytes_in_total{broker="src"}"#),
        Some(16.0),
        "{m}"
    );
    assert_eq!(
        value(&m, r#"mqbridge_remote_connected{broker="src"}"#),
        Some(1.0)
    );
    let ep = format!("mqtt://127.0.0.1:{}", mosq.port);
    assert_eq!(
        value(
            &m,
            &format!(r#"mqbridge_remote_endpoint_active{{broker="src",endpoint="{ep}"}}"#)
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            &format!(
                r#"mqbridge_remote_connection_attempts_total{{broker="src",endpoint="{ep}"}}"#
            )
        ),
        Some(1.0)
    );
    sub.stop().await;
    stop_run(token, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rotates_credentials_without_touching_pipes() {
    let p = unique("rot");
    // Mosquitto that only accepts bridge/new-secret.
    let secrets = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        secrets.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let passwd = password_file(secrets.path(), &[("bridge", "new-secret")]);
    let mosq = Mosquitto::start_with(&format!(
        "allow_anonymous false\npassword_file {}\n",
        passwd.display()
    ));
    let yaml = |password: &str| {
        format!(
            "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n  side:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n{}    username: bridge\n    password: {password}\npipes:\n  rot_up:\n    from: edge\n    to: cloud\n    topics: [{p}/up/#]\n  rot_side:\n    from: edge\n    to: side\n    topics: [{p}/side/#]\nmetrics:\n  listen: 127.0.0.1:0\n",
            remote_yaml("cloud", mosq.port, &p)
        )
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bridges.yaml");
    let token = CancellationToken::new();
    let mut run = mqbridge::run(plan(&yaml("old-secret")), token.clone())
        .await
        .expect("run");
    let addr = run.metrics_addr().expect("metrics");
    let edge = run.builtin_addrs("edge").expect("edge")[0].port();
    let side = run.builtin_addrs("side").expect("side")[0].port();
    let mut sub = Sub::start(side, &unique("sub"), &format!("{p}/side/#"), 1, false).await;
    let body = readyz_becomes(addr, 503).await;
    assert!(body.contains("broker cloud is not connected"), "{body}");
    metric_becomes(
        addr,
        r#"mqbridge_remote_connect_failures_total{broker="cloud",reason="refused"}"#,
        1.0,
    )
    .await;

    // Two messages wait for the cloud; the side pipe flows meanwhile.
    for i in 0..2 {
        publish(edge, &format!("{p}/up/{i}"), "u", 1, false).await;
    }
    for i in 0..5 {
        publish(edge, &format!("{p}/side/{i}"), &i.to_string(), 1, false).await;
    }

    std::fs::write(&file, yaml("new-secret")).expect("write");
    let d = run.reload_file(&file).await.expect("valid config");
    assert_eq!(d.brokers.changed, vec!["cloud"]);
    assert!(d.pipes.is_noop(), "{d:?}");
    readyz_becomes(addr, 200).await;
    for i in 2..4 {
        publish(edge, &format!("{p}/up/{i}"), "u", 1, false).await;
    }
    for i in 5..10 {
        publish(edge, &format!("{p}/side/{i}"), &i.to_string(), 1, false).await;
    }
    // Nothing queued for the cloud was lost across the rotation.
    metric_becomes(
        addr,
        r#"mqbridge_pipe_messages_forwarded_total{pipe="rot_up"}"#,
        4.0,
    )
    .await;
    // The unaffected pipe: every message exactly once.
    sub.exactly_once(10).await;

    sub.stop().await;
    stop_run(token, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_is_counted_and_shown() {
    let p = unique("fo");
    let dead = free_port();
    let fake = FakeBroker::start(0).await;
    let yaml = format!(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n  multi:\n    type: remote\n    endpoints: [mqtt://127.0.0.1:{dead}, mqtt://127.0.0.1:{}]\n    client_id: {p}\n    reconnect: {{ min: 20ms, max: 100ms, jitter: false }}\n    failback: {{ enabled: false }}\npipes:\n  fo_up:\n    from: edge\n    to: multi\n    topics: [{p}/#]\n",
        fake.port
    );
    let (token, run) = start_run(&yaml).await;
    let addr = run.metrics_addr().expect("metrics");
    let body = readyz_becomes(addr, 200).await;
    let second = format!("mqtt://127.0.0.1:{}", fake.port);
    assert!(body.contains(&second), "{body}");
    let m = metric_becomes(
        addr,
        &format!(r#"mqbridge_remote_endpoint_active{{broker="multi",endpoint="{second}"}}"#),
        1.0,
    )
    .await;
    let failovers =
        value(&m, r#"mqbridge_remote_failovers_total{broker="multi"}"#).expect("failovers");
    assert!(failovers >= 1.0, "{m}");
    let failed = value(
        &m,
        r#"mqbridge_remote_connect_failures_total{broker="multi",reason="io"}"#,
    )
    .expect("connect failures");
    assert!(failed >= 1.0, "the dead primary was tried: {m}");
    assert_eq!(
        value(
            &m,
            &format!(
                r#"mqbridge_remote_endpoint_active{{broker="multi",endpoint="mqtt://127.0.0.1:{dead}"}}"#
            )
        ),
        Some(0.0)
    );
    stop_run(token, run).await;
}
