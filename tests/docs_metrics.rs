//! The metrics reference (`docs/metrics.md`) and a real scrape agree: every
//! metric the reference lists is a family of `/metrics`, with the type the
//! reference gives, and every family of `/metrics` is in the reference.
//!
//! The scrape comes from `mqbridge::run` with a built-in broker, a remote
//! broker that is a real Mosquitto, a pipe that forwarded and dropped
//! messages, a client of the built-in broker, and a reload behind it.

mod common;

use std::collections::BTreeMap;

use common::bridge::{Sub, plan, publish, start_run, stop_run, unique};
use common::docs::{doc, prose_lines};
use common::http::metric_becomes;
use common::mosquitto::Mosquitto;
use tokio::time::timeout;

use common::wait::WAIT;

/// Families the reference lists that this test cannot make appear, with the
/// reason. (Empty: every family is registered at start.)
const NOT_SCRAPED: &[(&str, &str)] = &[];

/// Metric name → type (`counter`, `gauge`, `histogram`) from the reference's
/// tables: rows `| `name` | type | labels | meaning |`.
fn reference(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (n, line) in prose_lines(text) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(name) = cells
            .get(1)
            .and_then(|c| c.strip_prefix("`mqbridge_"))
            .and_then(|c| c.strip_suffix('`'))
        else {
            continue;
        };
        let kind = cells.get(2).copied().unwrap_or_default().to_owned();
        let old = out.insert(format!("mqbridge_{name}"), kind);
        assert!(
            old.is_none(),
            "docs/metrics.md:{n}: mqbridge_{name} listed twice"
        );
    }
    out
}

/// Family name → type from the `# TYPE` lines of a Prometheus text scrape.
fn families(scrape: &str) -> BTreeMap<String, String> {
    scrape
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect()
}

#[test]
fn the_parsers_read_tables_and_type_lines() {
    let r = reference(
        "| Metric | Type |\n|---|---|\n| `mqbridge_a_total` | counter | `pipe` | x |\n\
         ```\n| `mqbridge_in_code` | gauge |\n```\n| `other` | gauge |\n",
    );
    assert_eq!(
        r,
        BTreeMap::from([("mqbridge_a_total".into(), "counter".into())])
    );
    let f = families("# HELP x y\n# TYPE mqbridge_b histogram\nmqbridge_b_bucket{le=\"1\"} 0\n");
    assert_eq!(
        f,
        BTreeMap::from([("mqbridge_b".into(), "histogram".into())])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_reference_is_in_a_real_scrape_and_back() {
    let cloud = Mosquitto::start();
    let p = unique("docs");
    let yaml = |exclude: &str| {
        format!(
            "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n  \
             cloud:\n    type: remote\n    endpoints: [mqtt://127.0.0.1:{port}]\n    client_id: {p}\n\
             pipes:\n  up:\n    from: edge\n    to: cloud\n    topics: [{p}/#]\n    \
             exclude: [{exclude}]\nmetrics:\n  listen: 127.0.0.1:0\n",
            port = cloud.port
        )
    };
    let (token, mut run) = start_run(&yaml(&format!("{p}/debug/#"))).await;
    let metrics = run.metrics_addr().expect("metrics listener");
    let edge = run.builtin_addrs("edge").expect("edge")[0].port();

    // Traffic: one message forwarded (latency samples), one dropped by rule.
    let mut sub = Sub::start(cloud.port, &unique("sub"), &format!("{p}/#"), 1, false).await;
    publish(edge, &format!("{p}/debug/x"), "dropped", 1, false).await;
    publish(edge, &format!("{p}/t"), "21.5", 1, false).await;
    let got = timeout(WAIT, sub.next()).await.expect("in time");
    assert_eq!(got.expect("forwarded").payload, "21.5");
    metric_becomes(
        metrics,
        "mqbridge_pipe_messages_dropped_total{pipe=\"up\",reason=\"excluded\"}",
        1.0,
    )
    .await;

    // A reload that changes the pipe.
    let changed = plan(&yaml(&format!("{p}/trace/#")));
    timeout(WAIT, run.reload(&changed))
        .await
        .expect("reload in time")
        .expect("reload applied");
    let body = metric_becomes(metrics, "mqbridge_reloads_total", 1.0).await;

    let documented = reference(&doc("metrics.md"));
    assert!(documented.len() >= 30, "only {} metrics", documented.len());
    let scraped = families(&body);
    let mut problems = Vec::new();
    for (name, kind) in &documented {
        if NOT_SCRAPED.iter().any(|(n, _)| n == name) {
            continue;
        }
        match scraped.get(name) {
            None => problems.push(format!("{name}: documented, not in the scrape")),
            Some(k) if k != kind => {
                problems.push(format!("{name}: documented as {kind}, scraped as {k}"))
            }
            Some(_) => {}
        }
    }
    for name in scraped.keys() {
        if !documented.contains_key(name) {
            problems.push(format!("{name}: in the scrape, not in docs/metrics.md"));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n--- scrape:\n{body}",
        problems.join("\n")
    );
    sub.stop().await;
    stop_run(token, run).await;
}
