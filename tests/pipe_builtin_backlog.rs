//! A built-in source whose pipe's destination is down: the bridge's link
//! session fills to `max_queued_messages`, then the broker withholds the
//! devices' PUBACKs (end-to-end backpressure) instead of dropping messages it
//! already acknowledged. Nothing is lost when the destination comes back.

mod common;

use std::time::Duration;

use common::bridge::{
    SeqCount, Sub, link_goes_down, publish_many, remote, seq_msgs, start_run, stop_run, unique,
};
use common::http::{counter, metric_becomes, scrape};
use common::mosquitto::Mosquitto;
use tokio::time::timeout;

const MSGS: u64 = 2000;
const QUEUE: u64 = 50;
const HELD: &str = r#"mqbridge_broker_publishes_held_back{broker="edge"}"#;
const HELD_TOTAL: &str = r#"mqbridge_broker_publishes_held_back_total{broker="edge"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_link_session_pushes_back_on_the_device_and_loses_nothing() {
    // Persistent destination: its subscriber session survives the outage,
    // and it queues without limit for that subscriber.
    let mut m = Mosquitto::start_with(
        "persistence true\npersistence_location {dir}/\nmax_queued_messages 0\n",
    );
    let p = unique("bl");
    let yaml = format!(
        "shutdown_timeout: 1s\nbrokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n    limits:\n      max_queued_messages: {QUEUE}\n{}pipes:\n  up:\n    from: edge\n    to: m\n    topics: [{p}/up/#]\nmetrics:\n  listen: 127.0.0.1:0\n",
        remote("m", m.port, &format!("{p}-m")),
    );
    let (token, run) = start_run(&yaml).await;
    let metrics = run.metrics_addr().expect("metrics on");
    let edge_port = run.builtin_addrs("edge").expect("edge addrs")[0].port();
    let mut on_m = Sub::start(m.port, &unique("m-sub"), &format!("{p}/up/#"), 1, true).await;

    link_goes_down(&run, "m", || m.stop()).await;
    // The device keeps publishing QoS 1 with its own inflight window (100);
    // its publishes block once the broker stops acknowledging.
    let device = tokio::spawn(async move {
        publish_many(
            edge_port,
            &seq_msgs(&format!("{p}/up/seq"), 0..MSGS),
            1,
            false,
        )
        .await;
    });
    // The link session's queue is full: backpressure from here on.
    metric_becomes(
        metrics,
        r#"mqbridge_broker_queued_messages{broker="edge"}"#,
        QUEUE as f64,
    )
    .await;
    assert!(
        !device.is_finished(),
        "the device is held back, not acknowledged"
    );
    // The broker reports the publishes it holds back.
    let held = timeout(Duration::from_secs(10), async {
        loop {
            let v = counter(&scrape(metrics).await, HELD);
            if v > 0.0 {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
    .expect("publishes_held_back gauge never went above 0");
    println!("{held} publishes held back while the destination is down");

    m.start_again();
    let mut seen = SeqCount::default();
    on_m.collect_seq(&mut seen, MSGS as usize, MSGS, Duration::from_secs(60))
        .await;
    timeout(Duration::from_secs(60), device)
        .await
        .expect("every publish acknowledged once the destination is back")
        .expect("device task");
    assert!(seen.missing(MSGS).is_empty());
    println!(
        "{} distinct of {MSGS}, {} duplicates",
        seen.unique(),
        seen.duplicates()
    );
    // Redelivery after the outage: at most the pipe's and the link's windows.
    assert!(
        seen.duplicates() <= 400,
        "duplicates bounded: {}",
        seen.duplicates()
    );
    // Drained: nothing held back any more, and the total remembers it.
    let body = metric_becomes(metrics, HELD, 0.0).await;
    assert!(
        counter(&body, HELD_TOTAL) >= held,
        "held-back counter counts every held publish: {}",
        counter(&body, HELD_TOTAL)
    );
    assert_eq!(
        counter(
            &body,
            r#"mqbridge_broker_messages_dropped_total{broker="edge",reason="queue_full"}"#
        ),
        0.0,
        "the link session dropped nothing"
    );
    let report = stop_run(token, run).await;
    assert!(report.busy_pipes.is_empty(), "{:?}", report.busy_pipes);
}
