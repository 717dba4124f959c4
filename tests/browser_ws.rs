//! A real browser on the built-in `ws://` listener: headless Chromium loads a
//! page served on 127.0.0.1 that uses the npm `mqtt` package's browser bundle
//! (vendored in tests/browser/) to connect to two built-in brokers over
//! WebSocket: it subscribes on one and publishes on the other, a pipe carries
//! the message across, remapped, and the test reads what the page received
//! from its DOM.

mod common;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use common::bridge::{start_run, stop_run, unique};
use common::chromium::Page;

const PAGE: &str = include_str!("browser/bridge.html");
const MQTT_JS: &str = include_str!("browser/mqtt.min.js");

/// Serves the test page and the MQTT.js bundle on 127.0.0.1:0; returns the base URL.
async fn serve_page() -> String {
    let app = Router::new()
        .route(
            "/bridge.html",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) }),
        )
        .route(
            "/mqtt.min.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], MQTT_JS) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind page server");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_publishes_and_receives_through_a_pipe_over_ws() {
    let p = unique("browser");
    // web (ws) → app (tcp + ws), remapped from in/ to app/.
    let yaml = format!(
        "brokers:\n  web:\n    type: builtin\n    listen: [ws://127.0.0.1:0]\n  app:\n    type: builtin\n    listen: [tcp://127.0.0.1:0, ws://127.0.0.1:0]\npipes:\n  up:\n    from: web\n    to: app\n    topics: [{p}/in/#]\n    remap:\n      - strip_prefix: {p}/in/\n        add_prefix: {p}/app/\n"
    );
    let (token, run) = start_run(&yaml).await;
    let web = run.builtin_addrs("web").expect("web addrs")[0].port();
    let app = run.builtin_addrs("app").expect("app addrs")[1].port();
    let base = serve_page().await;
    let url = format!(
        "{base}/bridge.html?sub_url=ws://127.0.0.1:{app}/mqtt&sub={p}/app/%23&pub_url=ws://127.0.0.1:{web}/&pub={p}/in/dev1&payload=hello-from-browser"
    );

    let mut page = Page::open(&url).await;
    let result = page
        .eval(
            "new Promise(r => {\
               const status = () => 'no message; page status: ' + document.getElementById('status').textContent;\
               setTimeout(() => r(status()), 15000);\
               if (window.mqttResult !== undefined) r(window.mqttResult);\
               window.addEventListener('mqtt-result', () => r(window.mqttResult));\
             })",
        )
        .await;
    assert_eq!(
        result.as_str(),
        Some(format!("{p}/app/dev1 hello-from-browser").as_str()),
        "the page got the message across the pipe, remapped"
    );
    let dom = page
        .eval("document.getElementById('result').textContent")
        .await;
    assert_eq!(dom, result, "and wrote it into its DOM");
    drop(page);

    let report = stop_run(token, run).await;
    assert!(report.busy_pipes.is_empty());
}
