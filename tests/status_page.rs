//! The status page (`/`) and its data (`/status.json`) on a live bridge:
//! every value matches `/metrics`; headless Chromium renders the page
//! (screenshot), shows the server-rendered values with JavaScript off, and the
//! live values after its script polled.

mod common;

use std::net::SocketAddr;

use common::bridge::{publish, start_run, stop_run, unique};
use common::chromium::{self, Page};
use common::http::{counter, get, metric_becomes, value};
use common::mosquitto::Mosquitto;
use mqbridge::RunHandle;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A bridge edge (built-in) → m (Mosquitto) with pipe `up`, which excludes
/// `<p>/up/secret/#`. Returns the run, its metrics address and the edge port.
async fn bridge(m: &Mosquitto, p: &str) -> (CancellationToken, RunHandle, SocketAddr, u16) {
    let yaml = format!(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n  m:\n    type: remote\n    endpoints: [mqtt://127.0.0.1:{}]\n    client_id: {p}-m\n    reconnect: {{ min: 50ms, max: 500ms }}\npipes:\n  up:\n    from: edge\n    to: m\n    topics: [{p}/up/#]\n    exclude: [{p}/up/secret/#]\n",
        m.port
    );
    let (token, run) = start_run(&yaml).await;
    let addr = run.metrics_addr().expect("metrics");
    let edge = run.builtin_addrs("edge").expect("edge")[0].port();
    (token, run, addr, edge)
}

/// Publishes `n` forwarded messages and one excluded one; waits for /metrics to show them.
async fn traffic(addr: SocketAddr, edge: u16, p: &str, forwarded_before: u64, n: u64) -> String {
    for i in 0..n {
        publish(edge, &format!("{p}/up/t{i}"), "v", 1, false).await;
    }
    publish(edge, &format!("{p}/up/secret/x"), "hidden", 1, false).await;
    metric_becomes(
        addr,
        "mqbridge_pipe_messages_forwarded_total{pipe=\"up\"}",
        (forwarded_before + n) as f64,
    )
    .await
}

/// Polls `/status.json` until `pred` holds (bounded); returns that status.
async fn status_until(addr: SocketAddr, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = tokio::time::timeout(common::wait::WAIT, async {
        loop {
            let (_, body) = get(addr, "/status.json").await;
            last = serde_json::from_str(&body).expect("status.json is JSON");
            if pred(&last) {
                return last.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("status never got there; last: {last}"))
}

fn pipe_listed(status: &Value, name: &str) -> bool {
    status["pipes"]
        .as_array()
        .is_some_and(|l| l.iter().any(|p| p["name"] == name))
}

fn pipe<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["pipes"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("pipe {name} in {status}"))
}

fn broker<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["brokers"]
        .as_array()
        .and_then(|l| l.iter().find(|b| b["name"] == name))
        .unwrap_or_else(|| panic!("broker {name} in {status}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn status_json_and_html_match_metrics() {
    let m = Mosquitto::start();
    let p = unique("status");
    let (token, run, addr, edge) = bridge(&m, &p).await;
    // A first look (once the watchdog has put the pipe on the board): a rate
    // sample taken before the traffic.
    let before = status_until(addr, |s| {
        pipe_listed(s, "up") && broker(s, "m")["connected"] == true
    })
    .await;
    assert_eq!(pipe(&before, "up")["forwarded"], 0);
    traffic(addr, edge, &p, 0, 5).await;
    let metrics = metric_becomes(
        addr,
        "mqbridge_pipe_messages_dropped_total{pipe=\"up\",reason=\"excluded\"}",
        1.0,
    )
    .await;

    let (code, body) = get(addr, "/status.json").await;
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).expect("status.json is JSON");
    let up = pipe(&status, "up");
    let series = |name: &str| counter(&metrics, &format!("{name}{{pipe=\"up\"}}"));
    assert_eq!(
        up["received"],
        series("mqbridge_pipe_messages_received_total") as u64
    );
    assert_eq!(
        up["forwarded"],
        series("mqbridge_pipe_messages_forwarded_total") as u64
    );
    assert_eq!(up["forwarded"], 5);
    assert_eq!(
        up["queued"],
        series("mqbridge_pipe_queue_depth_messages") as u64
    );
    assert_eq!(
        up["inflight"],
        series("mqbridge_pipe_inflight_messages") as u64
    );
    assert_eq!(up["dropped"]["excluded"], 1);
    assert_eq!(up["destination"], "m");
    let rates = &up["rates"];
    let (rate_in, rate_out) = (
        rates["in_per_second"].as_f64().unwrap_or(0.0),
        rates["out_per_second"].as_f64().unwrap_or(0.0),
    );
    assert!(
        rate_out > 0.0 && rate_in >= rate_out,
        "the traffic since the first look shows as a rate: {up}"
    );
    assert!(
        rates["window_seconds"]
            .as_f64()
            .is_some_and(|w| w > 0.0 && w <= 60.0)
    );

    let cloud = broker(&status, "m");
    assert_eq!(cloud["connected"], true);
    assert_eq!(
        value(&metrics, "mqbridge_remote_connected{broker=\"m\"}"),
        Some(1.0)
    );
    assert_eq!(cloud["endpoint"], format!("mqtt://127.0.0.1:{}", m.port));
    assert_eq!(
        cloud["failovers"],
        counter(&metrics, "mqbridge_remote_failovers_total{broker=\"m\"}") as u64
    );
    assert_eq!(broker(&status, "edge")["kind"], "builtin");

    let (code, html) = get(addr, "/").await;
    assert_eq!(code, 200);
    let row = html
        .lines()
        .find(|l| l.contains("<tbody id=\"pipes\">"))
        .expect("pipes table");
    assert!(row.contains("<td>up</td><td>m</td>"), "{row}");
    assert!(
        row.contains("<td class=\"n\">6</td><td class=\"n\">5</td>"),
        "received 6, forwarded 5: {row}"
    );
    assert!(row.contains("excluded: 1"), "{row}");
    assert!(html.contains(&format!("mqtt://127.0.0.1:{}", m.port)));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );

    let report = stop_run(token, run).await;
    assert!(report.busy_pipes.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_renders_the_page_and_its_live_values() {
    let m = Mosquitto::start();
    let p = unique("page");
    let (token, run, addr, edge) = bridge(&m, &p).await;
    traffic(addr, edge, &p, 0, 3).await;
    status_until(addr, |s| pipe_listed(s, "up")).await;
    let url = format!("http://{addr}/");

    let dir = tempfile::tempdir().expect("tempdir");
    let png = dir.path().join("status.png");
    chromium::screenshot(&url, &png).await;
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(
        bytes.len() > 1000,
        "screenshot has content ({} bytes)",
        bytes.len()
    );
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");

    // The DOM after load has the tables.
    let dom = chromium::dump_dom(&url).await;
    assert!(dom.contains("<td>up</td><td>m</td>"), "{dom}");

    // JavaScript off: the server-rendered basics are there.
    let mut page = Page::open_without_javascript(&url).await;
    let dom = page.outer_html().await;
    assert!(dom.contains("<td>up</td><td>m</td>"), "{dom}");
    assert!(dom.contains("live updates need JavaScript"), "{dom}");
    assert!(dom.contains("excluded: 1"), "{dom}");
    drop(page);

    // JavaScript on: the script polls and redraws; new traffic shows up.
    let mut page = Page::open(&url).await;
    let wait_update = "new Promise(r => window.addEventListener('status-updated', \
                       () => r(document.documentElement.outerHTML), {once: true}))";
    page.eval(wait_update).await;
    traffic(addr, edge, &p, 3, 4).await;
    let dom = page.eval(wait_update).await;
    let dom = dom.as_str().expect("DOM text");
    assert!(dom.contains("live, updated"), "{dom}");
    let cells = page
        .eval("[...document.querySelectorAll('#pipes tr')].map(r => [...r.cells].map(c => c.textContent))")
        .await;
    let row = cells
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r[0] == "up"))
        .unwrap_or_else(|| panic!("pipe row in {cells}"));
    let metrics = get(addr, "/metrics").await.1;
    let forwarded = counter(
        &metrics,
        "mqbridge_pipe_messages_forwarded_total{pipe=\"up\"}",
    );
    assert_eq!(forwarded, 7.0);
    assert_eq!(row[6], "7", "forwarded column matches /metrics: {row}");
    assert_eq!(row[9], "excluded: 2", "{row}");
    drop(page);

    stop_run(token, run).await;
}

/// A pipe is on `/readyz` and `/status.json` as soon as `run` has started
/// it, not only after the watchdog's first round.
#[tokio::test]
async fn pipes_are_listed_from_the_start() {
    let m = Mosquitto::start();
    let p = unique("sp-start");
    let (token, run, addr, _) = bridge(&m, &p).await;
    let (_, ready) = get(addr, "/readyz").await;
    let ready: Value = serde_json::from_str(&ready).expect("readyz is JSON");
    let pipes = ready["pipes"].as_array().expect("pipes");
    assert!(
        pipes
            .iter()
            .any(|x| x["name"] == "up" && x["destination"] == "m"),
        "{ready}"
    );
    let (_, status) = get(addr, "/status.json").await;
    assert!(status.contains("\"up\""), "{status}");
    stop_run(token, run).await;
}
