//! Mosquitto A → mqbridge (in-process `mqbridge::run`) → Mosquitto B: filters,
//! exclusions, remaps, retained messages and QoS behave as configured.

mod common;

use common::bridge::{Sub, plan, publish, remotes_ab, start_run, stop_run, unique};
use common::mosquitto::Mosquitto;
use common::wait::WAIT;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_to_b_filters_exclusions_remaps_and_qos() {
    let a = Mosquitto::start();
    let b = Mosquitto::start();
    let p = unique("fx");
    let yaml = format!(
        "{}pipes:\n  ab:\n    from: a\n    to: b\n    topics:\n      - filter: {p}/in/#\n        qos: 2\n    exclude: [{p}/in/secret/#]\n    remap:\n      - from: {p}/in/+/x/#\n        to: {p}/out/{{1}}/{{#}}\n  capped:\n    from: a\n    to: b\n    topics: [{p}/cap/#]\n    qos: {{ max: 0 }}\n  forced:\n    from: a\n    to: b\n    topics: [{p}/force/#]\n    qos: {{ force: 2 }}\n",
        remotes_ab(&p, a.port, b.port)
    );
    let (token, run) = start_run(&yaml).await;
    let mut sub = Sub::start(b.port, &unique("sub"), &format!("{p}/#"), 2, false).await;

    publish(a.port, &format!("{p}/in/secret/z"), "hidden", 1, false).await;
    publish(a.port, &format!("{p}/in/7/x/t/1"), "remapped", 1, false).await;
    let got = sub.next().await.expect("remapped message");
    assert_eq!(
        got.topic,
        format!("{p}/out/7/t/1"),
        "excluded message never arrives; remap applied"
    );
    assert_eq!((got.payload.as_str(), got.qos), ("remapped", 1));

    publish(a.port, &format!("{p}/in/plain"), "q2", 2, false).await;
    let got = sub.next().await.expect("qos 2 message");
    assert_eq!(
        (got.topic, got.qos),
        (format!("{p}/in/plain"), 2),
        "no rule applies: unchanged, QoS kept"
    );

    publish(a.port, &format!("{p}/cap/1"), "capped", 2, false).await;
    let got = sub.next().await.expect("capped");
    assert_eq!((got.payload.as_str(), got.qos), ("capped", 0));

    publish(a.port, &format!("{p}/force/1"), "forced", 0, false).await;
    let got = sub.next().await.expect("forced");
    assert_eq!((got.payload.as_str(), got.qos), ("forced", 2));

    let ab = run.pipe_stats("ab").expect("stats").snapshot();
    assert_eq!(ab.dropped(mqbridge::pipe::stats::DropReason::Excluded), 1);
    assert_eq!(ab.forwarded, 2);
    let report = stop_run(token, run).await;
    assert!(report.busy_pipes.is_empty());
}

#[tokio::test]
async fn retained_messages_keep_or_clear_their_flag() {
    let a = Mosquitto::start();
    let b = Mosquitto::start();
    let p = unique("ret");
    // Retained on A before the bridge subscribes: delivered to the bridge with
    // retain=1 (MQTT 3.1.1 clears the flag for live deliveries).
    publish(a.port, &format!("{p}/keep/state"), "on", 1, true).await;
    publish(a.port, &format!("{p}/clear/state"), "off", 1, true).await;
    let yaml = format!(
        "{}pipes:\n  keep:\n    from: a\n    to: b\n    topics: [{p}/keep/#]\n  clear:\n    from: a\n    to: b\n    topics: [{p}/clear/#]\n    retain: clear\n",
        remotes_ab(&p, a.port, b.port)
    );
    // A live subscriber on B sees both cross (with retain=0, as live deliveries do).
    let mut live = Sub::start(b.port, &unique("live"), &format!("{p}/#"), 1, false).await;
    let token = CancellationToken::new();
    let mut run = mqbridge::run(plan(&yaml), token.clone())
        .await
        .expect("run");
    timeout(WAIT, run.ready()).await.expect("bridge subscribed");
    let mut crossed = [
        live.next().await.expect("first"),
        live.next().await.expect("second"),
    ];
    crossed.sort_by(|x, y| x.topic.cmp(&y.topic));
    assert_eq!(crossed[0].topic, format!("{p}/clear/state"));
    assert_eq!(crossed[1].topic, format!("{p}/keep/state"));
    // A late subscriber on B gets the kept retained message only.
    let mut late = Sub::start(b.port, &unique("late"), &format!("{p}/#"), 1, false).await;
    let got = late.next().await.expect("retained copy on B");
    assert_eq!((got.topic, got.retain), (format!("{p}/keep/state"), true));
    assert_eq!(
        late.next_within(std::time::Duration::from_millis(500))
            .await,
        None,
        "cleared copy is not retained"
    );
    stop_run(token, run).await;
}
