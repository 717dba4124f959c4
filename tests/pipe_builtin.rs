//! The built-in broker as source and as destination of pipes, against a real
//! Mosquitto: built-in → Mosquitto and Mosquitto → built-in.

mod common;

use common::bridge::{Sub, WAIT, publish, remote, start_run, stop_run, unique};
use common::mosquitto::Mosquitto;
use tokio::time::timeout;

fn yaml(p: &str, m_port: u16) -> String {
    format!(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n{}pipes:\n  up:\n    from: edge\n    to: m\n    topics: [{p}/up/#]\n    remap:\n      - strip_prefix: {p}/up/\n        add_prefix: {p}/cloud/\n  down:\n    from: m\n    to: edge\n    topics: [{p}/down/#]\n",
        remote("m", m_port, &format!("{p}-m")),
    )
}

#[tokio::test]
async fn builtin_to_mosquitto_and_mosquitto_to_builtin() {
    let m = Mosquitto::start();
    let p = unique("bi");
    let (token, mut run) = start_run(&yaml(&p, m.port)).await;
    timeout(WAIT, run.ready())
        .await
        .expect("ready again is immediate");
    let edge_port = run.builtin_addrs("edge").expect("edge addrs")[0].port();

    // Up: a device publishes QoS 1 to the built-in broker; a Mosquitto subscriber gets it remapped.
    let mut on_m = Sub::start(m.port, &unique("m-sub"), &format!("{p}/cloud/#"), 1, false).await;
    publish(edge_port, &format!("{p}/up/dev1/temp"), "21", 1, false).await;
    let got = on_m.next().await.expect("crossed up");
    assert_eq!(
        (got.topic, got.payload, got.qos),
        (format!("{p}/cloud/dev1/temp"), "21".into(), 1)
    );

    // Down: published on Mosquitto, received by a client of the built-in broker.
    let mut on_edge = Sub::start(
        edge_port,
        &unique("e-sub"),
        &format!("{p}/down/#"),
        2,
        false,
    )
    .await;
    publish(m.port, &format!("{p}/down/cmd"), "reset", 2, false).await;
    let got = on_edge.next().await.expect("crossed down");
    assert_eq!(
        (got.topic, got.payload, got.qos),
        (format!("{p}/down/cmd"), "reset".into(), 2)
    );

    assert_eq!(run.pipe_stats("up").expect("up").snapshot().forwarded, 1);
    assert_eq!(
        run.pipe_stats("down").expect("down").snapshot().forwarded,
        1
    );
    let report = stop_run(token, run).await;
    assert!(report.busy_pipes.is_empty());
}

#[tokio::test]
async fn status_topic_is_online_while_running_and_offline_after_shutdown() {
    let m = Mosquitto::start();
    let p = unique("st");
    let (token, run) = start_run(&yaml(&p, m.port)).await;
    let topic = format!("mqbridge/{p}-m/status");
    let mut s = Sub::start(m.port, &unique("st-sub"), &topic, 1, false).await;
    let got = s.next().await.expect("retained status");
    assert_eq!((got.payload.as_str(), got.retain), ("online", true));
    stop_run(token, run).await;
    let got = s.next().await.expect("offline on shutdown");
    assert_eq!(got.payload, "offline");
    // Retained: a new subscriber sees `offline`.
    let mut late = Sub::start(m.port, &unique("st-late"), &topic, 1, false).await;
    let got = late.next().await.expect("retained offline");
    assert_eq!((got.payload.as_str(), got.retain), ("offline", true));
}
