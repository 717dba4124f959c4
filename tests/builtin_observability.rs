//! What a built-in broker shows of itself in a real `mqbridge::run`: the
//! `/metrics` families (each with HELP and TYPE; network clients counted
//! apart from the bridge's own links; process counters present from the
//! start) and the `$SYS/broker/...` tree (`sys_interval`, on by default).
//!
//! No test in this binary reloads: `mqbridge_reloads_total` is process-wide.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::bridge::{Sub, WAIT, start_run, stop_run, unique};
use common::broker::Raw;
use common::http::{metric_becomes, scrape, value};
use common::mosquitto::free_port;
use tokio::time::timeout;

/// The metric names after `# <kind> ` lines.
fn families(body: &str, kind: &str) -> BTreeSet<String> {
    let prefix = format!("# {kind} ");
    body.lines()
        .filter_map(|l| l.strip_prefix(&prefix)?.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_family_has_help_and_type_and_links_are_not_clients() {
    let p = unique("obs");
    // A remote broker nobody listens on (not required): its series exist too.
    let yaml = format!(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n  core:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n  gone:\n    type: remote\n    endpoints: [mqtt://127.0.0.1:{}]\n    client_id: {p}-gone\n    required: false\n    reconnect: {{ min: 50ms, max: 200ms }}\npipes:\n  up:\n    from: edge\n    to: core\n    topics: [{p}/#]\n  out:\n    from: edge\n    to: gone\n    topics: [{p}/out/#]\n",
        free_port()
    );
    let (token, run) = start_run(&yaml).await;
    let metrics = run.metrics_addr().expect("metrics");
    let clients = "mqbridge_broker_clients_connected{broker=\"edge\"}";
    let links = "mqbridge_broker_links_connected{broker=\"edge\"}";
    let body = scrape(metrics).await;
    let types = families(&body, "TYPE");
    let helps = families(&body, "HELP");
    for must in [
        "mqbridge_broker_messages_dropped_total",
        "mqbridge_broker_publishes_held_back",
        "mqbridge_broker_publishes_held_back_total",
        "mqbridge_broker_links_connected",
        "mqbridge_remote_connect_failures_total",
        "mqbridge_reloads_total",
    ] {
        assert!(types.contains(must), "{must} missing:\n{body}");
    }
    let no_help: Vec<_> = types.difference(&helps).collect();
    assert!(no_help.is_empty(), "families without # HELP: {no_help:?}");
    let no_type: Vec<_> = helps.difference(&types).collect();
    assert!(no_type.is_empty(), "families without # TYPE: {no_type:?}");
    // Present at 0 before any reload or suppressed warning.
    assert_eq!(value(&body, "mqbridge_reloads_total"), Some(0.0), "{body}");
    assert_eq!(value(&body, "mqbridge_reload_failures_total"), Some(0.0));
    // The pipe's in-process link is not a client.
    assert_eq!(value(&body, clients), Some(0.0), "{body}");
    assert_eq!(value(&body, links), Some(1.0), "{body}");
    let edge = run.builtin_addrs("edge").expect("edge")[0];
    let c = Raw::connect(edge, &unique("dev"), true).await;
    metric_becomes(metrics, clients, 1.0).await;
    drop(c);
    metric_becomes(metrics, clients, 0.0).await;
    assert_eq!(value(&scrape(metrics).await, links), Some(1.0));
    stop_run(token, run).await;
}

/// The `$SYS/broker/...` messages a subscriber of `$SYS/broker/#` on `port`
/// gets until `done` says enough (bounded by `WAIT`).
async fn sys_until(sub: &mut Sub, mut done: impl FnMut(&str, &str) -> bool) -> BTreeSet<String> {
    let mut topics = BTreeSet::new();
    timeout(WAIT, async {
        loop {
            let got = sub.rx.recv().await.expect("subscriber alive");
            assert!(got.topic.starts_with("$SYS/broker/"), "{got:?}");
            topics.insert(got.topic.clone());
            if done(&got.topic, &got.payload) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("$SYS never satisfied the test; got {topics:?}"));
    topics
}

#[tokio::test]
async fn sys_tree_is_published_by_default_and_counts_network_clients_only() {
    let p = unique("sys");
    let yaml = format!(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n    sys_interval: 1s\n  core:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\npipes:\n  up:\n    from: edge\n    to: core\n    topics: [{p}/#]\n"
    );
    let (token, run) = start_run(&yaml).await;
    let edge = run.builtin_addrs("edge").expect("edge")[0].port();
    let core = run.builtin_addrs("core").expect("core")[0].port();
    // Edge: every second; this subscriber is its only network client (the
    // pipe's link is not one), so `clients/connected` comes to read 1.
    let mut sub = Sub::start(edge, &unique("sys-sub"), "$SYS/broker/#", 0, false).await;
    let topics = sys_until(&mut sub, |t, v| {
        assert!(
            !(t == "$SYS/broker/clients/connected" && v == "2"),
            "the link was counted as a client"
        );
        t == "$SYS/broker/clients/connected" && v == "1"
    })
    .await;
    for t in [
        "version",
        "uptime",
        "messages/received",
        "subscriptions/count",
    ] {
        let topic = format!("$SYS/broker/{t}");
        let mut seen = topics.clone();
        if !seen.contains(&topic) {
            seen = sys_until(&mut sub, |got, _| got == topic).await;
        }
        assert!(seen.contains(&topic), "{topic} in {seen:?}");
    }
    // Core: no `sys_interval` in the file, so the default (10 s) applies;
    // the first round goes out at start and is retained.
    let mut sub = Sub::start(core, &unique("sys-core"), "$SYS/broker/#", 0, false).await;
    sys_until(&mut sub, |t, _| t == "$SYS/broker/version").await;
    stop_run(token, run).await;
}

#[tokio::test]
async fn sys_interval_off_publishes_nothing() {
    let p = unique("sysoff");
    let yaml = format!(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n    sys_interval: off\n  core:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\npipes:\n  up:\n    from: edge\n    to: core\n    topics: [{p}/#]\n"
    );
    let (token, run) = start_run(&yaml).await;
    let edge = run.builtin_addrs("edge").expect("edge")[0].port();
    let mut sub = Sub::start(edge, &unique("sys-off"), "$SYS/broker/#", 0, false).await;
    // Retained `$SYS` would arrive right after the SUBACK.
    assert_eq!(sub.next_within(Duration::from_millis(300)).await, None);
    stop_run(token, run).await;
}
