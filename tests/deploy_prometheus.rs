//! The shipped Prometheus setup, run for real: `promtool` checks and unit-tests
//! deploy/prometheus/, Debian's `prometheus` scrapes a live bridge and loads
//! the alert rules, and every metric the dashboard and the alerts use exists
//! in a real `/metrics` scrape.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::bridge::{Sub, publish, start_run, stop_run, unique};
use common::http::scrape;
use common::mosquitto::Mosquitto;
use common::prometheus::{Prometheus, promtool, repo};
use mqbridge::RunHandle;
use tokio_util::sync::CancellationToken;

/// The queue size the live bridge's pipe is configured with.
const QUEUE_SIZE: usize = 777;

/// A bridge with every kind of series the dashboard shows: a built-in `edge`,
/// a remote `cloud` (real Mosquitto), and a pipe that has forwarded a message
/// (so the latency histogram has samples).
async fn live_bridge(cloud: &Mosquitto) -> (CancellationToken, RunHandle, SocketAddr) {
    let p = unique("deploy");
    let yaml = format!(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n  \
         cloud:\n    type: remote\n    endpoints: [mqtt://127.0.0.1:{port}]\n    client_id: {p}\n\
         pipes:\n  up:\n    from: edge\n    to: cloud\n    topics: [{p}/#]\n    \
         queue:\n      size: {QUEUE_SIZE}\n",
        port = cloud.port
    );
    let (token, run) = start_run(&yaml).await;
    let metrics = run.metrics_addr().expect("metrics listener");
    let edge = run.builtin_addrs("edge").expect("edge")[0].port();
    let mut sub = Sub::start(cloud.port, &unique("sub"), &format!("{p}/#"), 1, false).await;
    publish(edge, &format!("{p}/t"), "21.5", 1, false).await;
    sub.next().await.expect("the message crosses the bridge");
    (token, run, metrics)
}

/// Every `mqbridge_*` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"mqbridge_[a-z0-9_]*[a-z0-9]").expect("regex");
    re.find_iter(text).map(|m| m.as_str().to_owned()).collect()
}

#[test]
fn promtool_checks_the_rules_and_the_config() {
    let dir = repo().join("deploy/prometheus");
    let (ok, out) = promtool(&dir, &["check", "rules", "alerts.yaml"]);
    assert!(ok, "promtool check rules failed:\n{out}");
    assert!(out.contains("SUCCESS: 5 rules found"), "{out}");
    let (ok, out) = promtool(&dir, &["check", "config", "prometheus.yml"]);
    assert!(ok, "promtool check config failed:\n{out}");
}

#[test]
fn promtool_unit_tests_fire_every_alert() {
    let dir = repo().join("deploy/prometheus");
    let (ok, out) = promtool(&dir, &["test", "rules", "alerts_test.yaml"]);
    assert!(ok, "promtool test rules failed:\n{out}");

    // Every alert in alerts.yaml has a test case where it fires.
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("read");
    let rules: serde_json::Value = serde_saphyr::from_str(&read("alerts.yaml")).expect("yaml");
    let tests: serde_json::Value = serde_saphyr::from_str(&read("alerts_test.yaml")).expect("yaml");
    let alerts: BTreeSet<&str> = rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert_eq!(alerts.len(), 5, "{alerts:?}");
    let fired: BTreeSet<&str> = tests["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().expect("alert_rule_test"))
        .filter(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .filter_map(|c| c["alertname"].as_str())
        .collect();
    assert_eq!(fired, alerts, "alerts without a firing test case");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_live_bridge_and_loads_the_alerts() {
    let cloud = Mosquitto::start();
    let (token, run, metrics) = live_bridge(&cloud).await;
    let alerts = repo().join("deploy/prometheus/alerts.yaml");
    let prom = Prometheus::start(metrics, &[&alerts]);

    let targets = prom
        .api_until("/api/v1/targets", |v| {
            v["data"]["activeTargets"][0]["health"].as_str() == Some("up")
        })
        .await;
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(target["scrapeUrl"], format!("http://{metrics}/metrics"));
    assert_eq!(target["lastError"], "");

    // The alert rules load and evaluate against the real series.
    let rules = prom
        .api_until("/api/v1/rules", |v| {
            v["data"]["groups"][0]["rules"]
                .as_array()
                .is_some_and(|r| r.len() == 5 && r.iter().all(|r| r["health"] == "ok"))
        })
        .await;
    assert_eq!(rules["data"]["groups"][0]["name"], "mqbridge");

    // A series read back through PromQL: the backlog alert's denominator.
    let q = prom
        .api_until(
            "/api/v1/query?query=mqbridge_pipe_queue_capacity_messages",
            |v| {
                v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
            },
        )
        .await;
    let sample = &q["data"]["result"][0];
    assert_eq!(sample["metric"]["pipe"], "up");
    assert_eq!(sample["value"][1], QUEUE_SIZE.to_string());
    // No alert fires on a healthy bridge.
    let firing = prom.api("/api/v1/alerts").await.expect("alerts api");
    assert_eq!(firing["data"]["alerts"], serde_json::json!([]), "{firing}");

    stop_run(token, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_dashboard_and_alerts_exists_in_a_real_scrape() {
    let cloud = Mosquitto::start();
    let (token, run, metrics) = live_bridge(&cloud).await;
    let body = scrape(metrics).await;
    let scraped: BTreeSet<String> = mqbridge::metrics::inspect::parse_exposition(&body)
        .into_iter()
        .map(|s| s.name)
        .collect();
    // Counters every alert's `increase()` needs from the start, at 0.
    assert!(
        body.contains("\nmqbridge_reload_failures_total 0\n"),
        "{body}"
    );
    assert!(body.contains("\nmqbridge_reloads_total 0\n"), "{body}");

    for file in [
        "deploy/grafana/mqbridge.json",
        "deploy/prometheus/alerts.yaml",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).expect("read");
        let used = metric_names(&text);
        assert!(used.len() >= 5, "{file} uses too few metrics: {used:?}");
        let missing: Vec<&String> = used.iter().filter(|m| !scraped.contains(*m)).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics a real scrape does not have: {missing:?}\nscrape:\n{body}"
        );
    }
    stop_run(token, run).await;
}
