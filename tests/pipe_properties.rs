//! MQTT 5 properties through pipes between two built-in brokers: a device
//! publishes through `Broker::link` on `edge` (no v5 network client yet),
//! an application receives through a link on `core`. Built-in brokers hand
//! the pipe the `Message` itself, so every property can be checked as it
//! arrives: end to end, through the spool, QoS 0 from memory, across a
//! restart from the spool; expiry reduced or dropped as `expired`; and the
//! pipe options (response topic remap, user properties, hop limit).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::bridge::{plan, start_run, stop_run, unique};
use common::wait::{wait_until, within};
use mqbridge::link::{Delivery, Link};
use mqbridge::pipe::stats::DropReason;
use mqbridge::protocol::{Message, MessageProperties, PropertyFields, QoS};
use mqbridge::{RunHandle, run};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const EXPIRY: u32 = 3600;

/// `edge` and `core` built-in brokers, pipe `p` from edge to core.
fn yaml(prefix: &str, pipe_extra: &str) -> String {
    format!(
        "brokers:\n  edge: {{type: builtin, listen: ['tcp://127.0.0.1:0']}}\n  core: {{type: builtin, listen: ['tcp://127.0.0.1:0']}}\npipes:\n  p:\n    from: edge\n    to: core\n    topics: [{prefix}/#]\n{pipe_extra}"
    )
}

/// A message with every property a publisher can set, plus subscription
/// identifiers as a server would have added them at the source.
fn with_every_property(topic: &str, qos: QoS, expiry: u32) -> Message {
    let mut m = Message::new(topic, "{\"t\":21}", qos, false);
    m.properties = Some(MessageProperties::from(PropertyFields {
        payload_is_utf8: Some(true),
        message_expiry_interval: Some(expiry),
        content_type: Some("application/json".into()),
        response_topic: Some(format!("{topic}/reply")),
        correlation_data: Some(Bytes::from_static(b"\x00\xffcorr")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        subscription_identifiers: vec![7, 11],
    }));
    m
}

fn fields(m: &Message) -> PropertyFields {
    m.properties
        .as_ref()
        .map(|p| (**p).clone())
        .unwrap_or_default()
}

/// What must arrive for `sent`: every property but the subscription
/// identifiers, with the expiry interval at most as sent and no more than
/// `held` (plus the rounding second) below it.
fn assert_arrived_as_sent(got: &Message, sent: &Message, held: Duration) {
    assert_eq!(
        (&got.topic, &got.payload, got.qos),
        (&sent.topic, &sent.payload, sent.qos)
    );
    let mut got_fields = fields(got);
    let mut want = fields(sent);
    want.subscription_identifiers.clear();
    let expiry = got_fields.message_expiry_interval.take().expect("expiry");
    let sent_expiry = want.message_expiry_interval.take().expect("expiry");
    assert_eq!(got_fields, want, "every other property as sent");
    let floor = u64::from(sent_expiry).saturating_sub(held.as_secs() + 1);
    assert!(
        expiry <= sent_expiry && u64::from(expiry) >= floor,
        "expiry {expiry} of {sent_expiry} after at most {held:?}"
    );
}

/// A link on `broker` subscribed to `filter` (QoS 2).
async fn subscriber(
    run: &RunHandle,
    broker: &str,
    filter: &str,
) -> (Link, mpsc::Receiver<Delivery>) {
    let b = run.builtin(broker).expect("built-in broker");
    let (link, rx) = b.link(&unique("app"), true);
    let granted = within(link.subscribe(vec![(filter.into(), QoS::ExactlyOnce)]))
        .await
        .expect("subscribed");
    assert_eq!(granted, vec![Some(QoS::ExactlyOnce)]);
    (link, rx)
}

fn device(run: &RunHandle) -> Link {
    run.builtin("edge")
        .expect("edge")
        .link(&unique("dev"), true)
        .0
}

async fn next(rx: &mut mpsc::Receiver<Delivery>) -> Message {
    let d = within(rx.recv()).await.expect("delivery");
    let m = d.message.clone();
    d.ack.ack();
    m
}

async fn every_property_crosses(delivery: &str) {
    let p = unique("props");
    let extra = format!("    delivery: {delivery}\n");
    let (token, run) = start_run(&yaml(&p, &extra)).await;
    let (_app, mut rx) = subscriber(&run, "core", &format!("{p}/#")).await;
    let dev = device(&run);
    let started = std::time::Instant::now();
    let q1 = with_every_property(&format!("{p}/q1"), QoS::AtLeastOnce, EXPIRY);
    let q0 = with_every_property(&format!("{p}/q0"), QoS::AtMostOnce, EXPIRY);
    within(dev.publish(q1.clone())).await.expect("published");
    within(dev.publish(q0.clone())).await.expect("published");
    let got = next(&mut rx).await;
    assert_arrived_as_sent(&got, &q1, started.elapsed());
    let got = next(&mut rx).await;
    assert_arrived_as_sent(&got, &q0, started.elapsed());
    let snap = run.pipe_stats("p").expect("p").snapshot();
    let dropped: u64 = snap.dropped.iter().map(|(_, n)| n).sum();
    assert_eq!((snap.forwarded, dropped), (2, 0));
    stop_run(token, run).await;
}

#[tokio::test]
async fn every_property_crosses_end_to_end_qos1_and_qos0() {
    every_property_crosses("end_to_end").await;
}

#[tokio::test]
async fn every_property_crosses_the_spool_qos1_and_qos0_from_memory() {
    every_property_crosses("spool").await;
}

#[tokio::test]
async fn a_message_already_expired_is_dropped_and_counted() {
    let p = unique("exp");
    let (token, run) = start_run(&yaml(&p, "    delivery: end_to_end\n")).await;
    let (_app, mut rx) = subscriber(&run, "core", &format!("{p}/#")).await;
    let dev = device(&run);
    // Interval 0: its lifetime is over as it arrives.
    let dead = with_every_property(&format!("{p}/dead"), QoS::AtLeastOnce, 0);
    let live = with_every_property(&format!("{p}/live"), QoS::AtLeastOnce, EXPIRY);
    within(dev.publish(dead)).await.expect("published");
    within(dev.publish(live.clone())).await.expect("published");
    // In order: once the live one is through, the dead one was handled.
    let got = next(&mut rx).await;
    assert_eq!(got.topic, live.topic, "the expired message never arrives");
    let snap = run.pipe_stats("p").expect("p").snapshot();
    assert_eq!(snap.dropped(DropReason::Expired), 1);
    assert_eq!(snap.forwarded, 1);
    stop_run(token, run).await;
}

#[tokio::test]
async fn a_restart_from_the_spool_keeps_every_property_and_ages_the_expiry() {
    let p = unique("restart");
    let storage = common::data_dir();
    let store = format!("storage:\n  dir: {}\n", storage.display());
    // Run 1: the destination is a remote nobody listens on, so what edge
    // takes stays in the pipe's spool (and the stop gives up on the
    // publishes in flight after 1 s).
    let dead = common::mosquitto::free_port();
    let first = format!(
        "shutdown_timeout: 1s\nbrokers:\n  edge: {{type: builtin, listen: ['tcp://127.0.0.1:0']}}\n  core:\n    type: remote\n    endpoints: [mqtt://127.0.0.1:{dead}]\n    client_id: {p}\n    reconnect: {{min: 50ms, max: 200ms}}\npipes:\n  p:\n    from: edge\n    to: core\n    topics: [{p}/#]\n{store}"
    );
    let (token, run1) = start_run(&first).await;
    let dev = device(&run1);
    let short = with_every_property(&format!("{p}/short"), QoS::AtLeastOnce, 1);
    let kept = with_every_property(&format!("{p}/kept"), QoS::AtLeastOnce, EXPIRY);
    within(dev.publish(short)).await.expect("published");
    within(dev.publish(kept.clone())).await.expect("published");
    let stats = run1.pipe_stats("p").expect("p");
    wait_until(|| stats.snapshot().spooled == 2).await;
    let spooled_at = std::time::Instant::now();
    stop_run(token, run1).await;
    // The interval is what is measured here: more than a second has to
    // pass in the bridge (this is not a wait for an event).
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Run 2: the destination is the built-in `core`. It starts without
    // the pipe, so the application is subscribed before the pipe sends
    // what its spool kept; a reload adds it.
    let brokers = "brokers:\n  edge: {type: builtin, listen: ['tcp://127.0.0.1:0']}\n  core: {type: builtin, listen: ['tcp://127.0.0.1:0']}\n";
    let token = CancellationToken::new();
    let mut run2 = run(plan(&format!("{brokers}{store}")), token.clone())
        .await
        .expect("run");
    within(run2.ready()).await;
    let (_app, mut rx) = subscriber(&run2, "core", &format!("{p}/#")).await;
    within(run2.reload(&plan(&format!("{}{store}", yaml(&p, "")))))
        .await
        .expect("pipe p added");
    let got = next(&mut rx).await;
    assert_arrived_as_sent(&got, &kept, spooled_at.elapsed() + Duration::from_secs(1));
    let expiry = fields(&got).message_expiry_interval.unwrap_or(EXPIRY);
    assert!(
        expiry < EXPIRY,
        "reduced by the time spent across the restart: {expiry}"
    );
    let snap = run2.pipe_stats("p").expect("p").snapshot();
    assert_eq!(
        snap.dropped(DropReason::Expired),
        1,
        "the 1 s message expired in the spool"
    );
    stop_run(token, run2).await;
}

#[tokio::test]
async fn response_topic_remap_and_user_property_edits() {
    let p = unique("opts");
    let extra = format!(
        "    remap:\n      - {{strip_prefix: {p}/, add_prefix: {p}-cloud/}}\n    response_topic: remap\n    user_properties:\n      remove: [b]\n      add: {{via: edge, b: new}}\n    delivery: end_to_end\n"
    );
    let (token, run) = start_run(&yaml(&p, &extra)).await;
    let (_app, mut rx) = subscriber(&run, "core", &format!("{p}-cloud/#")).await;
    let dev = device(&run);
    let mut sent = with_every_property(&format!("{p}/req"), QoS::AtLeastOnce, EXPIRY);
    within(dev.publish(sent.clone())).await.expect("published");
    let got = next(&mut rx).await;
    let f = fields(&got);
    assert_eq!(got.topic, format!("{p}-cloud/req"));
    assert_eq!(f.response_topic, Some(format!("{p}-cloud/req/reply")));
    let pairs = |l: &[(&str, &str)]| -> Vec<(String, String)> {
        l.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        f.user_properties,
        pairs(&[("a", "1"), ("via", "edge"), ("b", "new")])
    );
    // A response topic no rule applies to stays as it is.
    if let Some(props) = sent.properties.as_mut() {
        props.response_topic = Some("elsewhere/reply".into());
    }
    within(dev.publish(sent)).await.expect("published");
    let got = next(&mut rx).await;
    assert_eq!(
        fields(&got).response_topic.as_deref(),
        Some("elsewhere/reply")
    );
    stop_run(token, run).await;
}

#[tokio::test]
async fn the_hop_limit_drops_as_loop_and_counts_every_forward() {
    let p = unique("hops");
    let extra = "    loop_guard: {hop_property: hops, max_hops: 2}\n    delivery: end_to_end\n";
    let (token, run) = start_run(&yaml(&p, extra)).await;
    let (_app, mut rx) = subscriber(&run, "core", &format!("{p}/#")).await;
    let dev = device(&run);
    let with_hops = |topic: &str, hops: Option<&str>| {
        let mut m = Message::new(format!("{p}/{topic}"), "x", QoS::AtLeastOnce, false);
        if let Some(h) = hops {
            m.properties = Some(MessageProperties::from(PropertyFields {
                user_properties: vec![("hops".into(), h.into()), ("k".into(), "v".into())],
                ..Default::default()
            }));
        }
        m
    };
    within(dev.publish(with_hops("fresh", None)))
        .await
        .expect("published");
    within(dev.publish(with_hops("over", Some("2"))))
        .await
        .expect("published");
    within(dev.publish(with_hops("once", Some("1"))))
        .await
        .expect("published");
    let got = next(&mut rx).await;
    assert_eq!(got.topic, format!("{p}/fresh"));
    assert_eq!(
        fields(&got).user_properties,
        vec![("hops".to_string(), "1".to_string())]
    );
    let got = next(&mut rx).await;
    assert_eq!(
        got.topic,
        format!("{p}/once"),
        "hops 2 ≥ max_hops 2: dropped"
    );
    assert_eq!(
        fields(&got).user_properties,
        vec![
            ("k".to_string(), "v".to_string()),
            ("hops".to_string(), "2".to_string())
        ]
    );
    let snap = run.pipe_stats("p").expect("p").snapshot();
    assert_eq!((snap.dropped(DropReason::Loop), snap.forwarded), (1, 2));
    stop_run(token, run).await;
}
