//! Conformance tests of the built-in broker with independent clients: raw
//! packets through our codec (exact flags and ids), `rumqttc::AsyncClient`,
//! the in-process link, and the Mosquitto CLI clients (`mosquitto_pub`,
//! `mosquitto_sub`, `mosquitto_passwd`; a missing binary fails the test).

mod broker_common;

use broker_common::*;
use mqbridge::broker::{Limits, OverflowPolicy};
use mqbridge::protocol::v4::{
    ConnectReturnCode, Packet, PubAck, PubComp, PubRec, PubRel, SubscribeReasonCode,
};
use mqbridge::protocol::{Message, QoS, WireQoS};

#[tokio::test]
async fn raw_qos0_1_2_delivery_and_acks() {
    let b = TestBroker::start().await;
    let mut sub = Raw::connect(b.addr, "rq-sub", true).await;
    assert_eq!(
        sub.subscribe(&[("rq/#", QoS::ExactlyOnce)]).await,
        vec![SubscribeReasonCode::Success(WireQoS::ExactlyOnce)]
    );
    let mut publ = Raw::connect(b.addr, "rq-pub", true).await;
    publ.publish("rq/0", "zero", QoS::AtMostOnce, false, 0)
        .await;
    publ.publish("rq/1", "one", QoS::AtLeastOnce, false, 7)
        .await;
    assert_eq!(publ.next().await, Packet::PubAck(PubAck::new(7)));
    publ.publish("rq/2", "two", QoS::ExactlyOnce, false, 8)
        .await;
    assert_eq!(publ.next().await, Packet::PubRec(PubRec::new(8)));
    publ.send(Packet::PubRel(PubRel::new(8))).await;
    assert_eq!(publ.next().await, Packet::PubComp(PubComp::new(8)));

    let p0 = sub.next_publish().await;
    assert_eq!((p0.topic.as_str(), p0.qos), ("rq/0", WireQoS::AtMostOnce));
    let p1 = sub.next_publish().await;
    assert_eq!((p1.topic.as_str(), p1.qos), ("rq/1", WireQoS::AtLeastOnce));
    sub.send(Packet::PubAck(PubAck::new(p1.pkid))).await;
    let p2 = sub.next_publish().await;
    assert_eq!((p2.topic.as_str(), p2.qos), ("rq/2", WireQoS::ExactlyOnce));
    sub.send(Packet::PubRec(PubRec::new(p2.pkid))).await;
    assert_eq!(sub.next().await, Packet::PubRel(PubRel::new(p2.pkid)));
    sub.send(Packet::PubComp(PubComp::new(p2.pkid))).await;
    sub.ping().await;
}

#[tokio::test]
async fn local_link_subscribe_publish_and_ack() {
    let b = TestBroker::start().await;
    let (link, mut deliveries) = b.broker.link("ll-pipe", false);
    let granted = within(link.subscribe(vec![("ll/#".into(), QoS::AtLeastOnce)]))
        .await
        .unwrap();
    assert_eq!(granted, vec![Some(QoS::AtLeastOnce)]);
    let ack = within(link.publish(Message::new("ll/a", "x", QoS::ExactlyOnce, false)))
        .await
        .unwrap();
    within(ack.wait()).await.unwrap();
    let d = within(deliveries.recv()).await.unwrap();
    assert_eq!(d.message.topic, "ll/a");
    assert_eq!(d.message.qos, QoS::AtLeastOnce);
    assert!(d.ack.is_required());
    d.ack.ack();
    // Invalid topic names are rejected, not routed.
    let r = within(link.publish(Message::new("ll/+", "x", QoS::AtMostOnce, false)))
        .await
        .unwrap()
        .wait()
        .await;
    assert!(r.is_err());
}

#[tokio::test]
async fn rumqttc_client_round_trip() {
    let b = TestBroker::start().await;
    let (client, mut events) = rumqttc_client(b.addr, "rc-1", true).await;
    client
        .subscribe("rc/t", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    wait_suback(&mut events).await;
    client
        .publish("rc/t", rumqttc::QoS::AtLeastOnce, false, "hello")
        .await
        .unwrap();
    let p = wait_publish(&mut events).await;
    assert_eq!(p.topic, "rc/t");
    assert_eq!(&p.payload[..], b"hello");
}

#[tokio::test]
async fn mosquitto_cli_pub_sub_qos2() {
    let b = TestBroker::start().await;
    let mut sub = MosqSub::spawn(b.addr, &["-t", "mc/#", "-q", "2", "-v", "-i", "mc-sub"], 1);
    sub.wait_subscribed(&b, 1).await;
    mosquitto_pub(b.addr, &["-t", "mc/x", "-m", "via-cli", "-q", "2"]).await;
    assert_eq!(sub.lines().await, vec!["mc/x via-cli".to_string()]);
}

#[tokio::test]
async fn connect_rules_client_id_protocol_and_second_connect() {
    let b = TestBroker::start().await;
    // Empty id + clean session: accepted, id assigned.
    let c = Raw::connect_code(b.addr, "", true, None).await;
    assert_eq!(c, ConnectReturnCode::Success);
    // Empty id + persistent session: 0x02.
    let c = Raw::connect_code(b.addr, "", false, None).await;
    assert_eq!(c, ConnectReturnCode::BadClientId);
    // MQTT 3.1 (`MQIsdp`, level 3): 0x01.
    assert_eq!(raw_mqisdp_connack(b.addr).await, Some(0x01));
    // A second CONNECT closes the connection.
    let mut r = Raw::connect(b.addr, "cr-2", true).await;
    r.send_connect("cr-2", true, None, None, 0).await;
    r.expect_closed().await;
}

#[tokio::test]
async fn persistent_session_queues_and_resumes_with_dup() {
    let b = TestBroker::start().await;
    let mut sub = Raw::connect(b.addr, "ps-sub", false).await;
    sub.subscribe(&[("ps/t", QoS::AtLeastOnce)]).await;
    let mut publ = Raw::connect(b.addr, "ps-pub", true).await;
    publ.publish("ps/t", "1", QoS::AtLeastOnce, false, 1).await;
    publ.next().await;
    let first = sub.next_publish().await;
    assert!(!first.dup);
    drop(sub); // gone without acking
    wait_until(|| b.broker.stats().clients_connected == 1).await;
    publ.publish("ps/t", "2", QoS::AtLeastOnce, false, 2).await;
    publ.next().await;
    publ.publish("ps/t", "q0", QoS::AtMostOnce, false, 0).await;
    wait_until(|| b.broker.stats().queued == 1).await;
    let (mut sub, present) = Raw::connect_present(b.addr, "ps-sub", false).await;
    assert!(present);
    let again = sub.next_publish().await;
    assert!(again.dup);
    assert_eq!(again.pkid, first.pkid);
    assert_eq!(&again.payload[..], b"1");
    let queued = sub.next_publish().await;
    assert_eq!(&queued.payload[..], b"2");
    sub.ping().await; // the QoS 0 message sent while away was not kept
    // A clean session discards it all.
    drop(sub);
    let (_sub, present) = Raw::connect_present(b.addr, "ps-sub", true).await;
    assert!(!present);
}

#[tokio::test]
async fn takeover_closes_old_connection_and_keeps_session() {
    let b = TestBroker::start().await;
    let mut old = Raw::connect(b.addr, "to-1", false).await;
    old.subscribe(&[("to/t", QoS::AtLeastOnce)]).await;
    let (mut new, present) = Raw::connect_present(b.addr, "to-1", false).await;
    assert!(present);
    old.expect_closed().await;
    let mut publ = Raw::connect(b.addr, "to-pub", true).await;
    publ.publish("to/t", "x", QoS::AtLeastOnce, false, 3).await;
    assert_eq!(&new.next_publish().await.payload[..], b"x");
}

#[tokio::test]
async fn retained_set_replace_delete_and_flags() {
    let b = TestBroker::start().await;
    mosquitto_pub(b.addr, &["-t", "rt/a", "-m", "v1", "-r", "-q", "1"]).await;
    mosquitto_pub(b.addr, &["-t", "rt/a", "-m", "v2", "-r", "-q", "1"]).await;
    mosquitto_pub(b.addr, &["-t", "rt/b", "-m", "gone", "-r"]).await;
    mosquitto_pub(b.addr, &["-t", "rt/b", "-n", "-r"]).await;
    let mut sub = Raw::connect(b.addr, "rt-sub", true).await;
    sub.subscribe(&[("rt/#", QoS::AtLeastOnce)]).await;
    let p = sub.next_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("rt/a", &b"v2"[..], true)
    );
    assert_eq!(p.qos, WireQoS::AtLeastOnce);
    sub.send(Packet::PubAck(PubAck::new(p.pkid))).await;
    sub.ping().await; // nothing retained on rt/b any more
    // An existing subscriber gets retain=0.
    mosquitto_pub(b.addr, &["-t", "rt/a", "-m", "v3", "-r"]).await;
    let p = sub.next_publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"v3"[..], false));
    // mosquitto_sub sees it with the retained flag.
    let mut cli = MosqSub::spawn(
        b.addr,
        &["-t", "rt/a", "-v", "-F", "%r %t %p", "-i", "rt-cli"],
        1,
    );
    assert_eq!(cli.lines().await, vec!["1 rt/a v3".to_string()]);
    assert_eq!(b.broker.stats().retained, 1);
}

#[tokio::test]
async fn overlapping_subscriptions_one_copy_at_max_qos() {
    let b = TestBroker::start().await;
    let mut sub = Raw::connect(b.addr, "ov-sub", true).await;
    sub.subscribe(&[
        ("ov/#", QoS::AtMostOnce),
        ("ov/+", QoS::ExactlyOnce),
        ("ov/x", QoS::AtLeastOnce),
    ])
    .await;
    let mut publ = Raw::connect(b.addr, "ov-pub", true).await;
    publ.publish("ov/x", "m", QoS::AtLeastOnce, false, 1).await;
    let p = sub.next_publish().await;
    // min(published 1, max granted 2) = 1, exactly one copy.
    assert_eq!(p.qos, WireQoS::AtLeastOnce);
    sub.send(Packet::PubAck(PubAck::new(p.pkid))).await;
    sub.ping().await;
}

#[tokio::test]
async fn qos2_duplicate_publish_delivered_once() {
    let b = TestBroker::start().await;
    let mut sub = Raw::connect(b.addr, "q2-sub", true).await;
    sub.subscribe(&[("q2/t", QoS::AtMostOnce)]).await;
    let mut publ = Raw::connect(b.addr, "q2-pub", true).await;
    publ.publish("q2/t", "once", QoS::ExactlyOnce, false, 42)
        .await;
    assert_eq!(publ.next().await, Packet::PubRec(PubRec::new(42)));
    publ.publish("q2/t", "once", QoS::ExactlyOnce, true, 42)
        .await;
    assert_eq!(publ.next().await, Packet::PubRec(PubRec::new(42)));
    publ.send(Packet::PubRel(PubRel::new(42))).await;
    assert_eq!(publ.next().await, Packet::PubComp(PubComp::new(42)));
    assert_eq!(&sub.next_publish().await.payload[..], b"once");
    sub.ping().await;
}

#[tokio::test]
async fn wills_on_abrupt_close_keepalive_and_violation_not_after_disconnect() {
    let b = TestBroker::start().await;
    let mut watcher = Raw::connect(b.addr, "wl-watch", true).await;
    watcher.subscribe(&[("wl/#", QoS::AtMostOnce)]).await;

    let will = |t: &str| Some((t.to_string(), "bye".to_string()));
    let c = Raw::connect_with(b.addr, "wl-1", true, None, will("wl/abrupt"), 0).await;
    drop(c);
    assert_eq!(watcher.next_publish().await.topic, "wl/abrupt");

    let mut c = Raw::connect_with(b.addr, "wl-2", true, None, will("wl/graceful"), 0).await;
    c.send(Packet::Disconnect).await;
    c.expect_closed().await;

    let _silent = Raw::connect_with(b.addr, "wl-3", true, None, will("wl/keepalive"), 1).await;
    assert_eq!(watcher.next_publish().await.topic, "wl/keepalive");

    let mut c = Raw::connect_with(b.addr, "wl-4", true, None, will("wl/violation"), 0).await;
    c.send_connect("wl-4", true, None, None, 0).await;
    assert_eq!(watcher.next_publish().await.topic, "wl/violation");
    watcher.ping().await; // no will from the graceful one
}

#[tokio::test]
async fn dollar_topics_and_sys_publish_refused() {
    let b = TestBroker::start().await;
    let mut wild = Raw::connect(b.addr, "dl-wild", true).await;
    wild.subscribe(&[("#", QoS::AtMostOnce), ("+/x", QoS::AtMostOnce)])
        .await;
    let mut dollar = Raw::connect(b.addr, "dl-dollar", true).await;
    dollar
        .subscribe(&[("$app/#", QoS::AtMostOnce), ("$SYS/#", QoS::AtMostOnce)])
        .await;
    let mut publ = Raw::connect(b.addr, "dl-pub", true).await;
    publ.publish("$app/x", "d", QoS::AtMostOnce, false, 0).await;
    publ.publish("$SYS/broker/fake", "no", QoS::AtLeastOnce, false, 5)
        .await;
    // Refused publish is still acknowledged.
    assert_eq!(publ.next().await, Packet::PubAck(PubAck::new(5)));
    publ.publish("dl/x", "plain", QoS::AtMostOnce, false, 0)
        .await;
    assert_eq!(dollar.next_publish().await.topic, "$app/x");
    let first = wild.next_publish().await;
    assert_eq!(first.topic, "dl/x");
    dollar.ping().await;
    assert_eq!(b.broker.stats().dropped_sys, 1);
}

#[tokio::test]
async fn invalid_filter_gets_0x80_and_unsubscribe_works() {
    let b = TestBroker::start().await;
    let mut c = Raw::connect(b.addr, "if-1", true).await;
    let codes = c
        .subscribe(&[("if/#/x", QoS::AtLeastOnce), ("if/ok", QoS::AtLeastOnce)])
        .await;
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(WireQoS::AtLeastOnce)
        ]
    );
    c.unsubscribe(&["if/ok"]).await;
    let mut publ = Raw::connect(b.addr, "if-pub", true).await;
    publ.publish("if/ok", "x", QoS::AtMostOnce, false, 0).await;
    c.ping().await;
    assert_eq!(b.broker.stats().subscriptions, 0);
}

#[tokio::test]
async fn slow_persistent_consumer_queue_bounded_and_counted() {
    let limits = Limits {
        max_inflight: 2,
        max_queued_messages: 5,
        overflow: OverflowPolicy::DropOldest,
        ..Limits::default()
    };
    let b = TestBroker::start_with(|o| o.limits = limits).await;
    let mut sub = Raw::connect(b.addr, "sq-sub", false).await;
    sub.subscribe(&[("sq/t", QoS::AtLeastOnce)]).await;
    sub.send(Packet::Disconnect).await;
    sub.expect_closed().await;
    let mut publ = Raw::connect(b.addr, "sq-pub", true).await;
    for i in 0..20u16 {
        publ.publish("sq/t", &i.to_string(), QoS::AtLeastOnce, false, i + 1)
            .await;
        publ.next().await;
    }
    let s = b.broker.stats();
    assert_eq!(s.queued, 5);
    assert_eq!(s.dropped_queue_full, 15);
    let (mut sub, present) = Raw::connect_present(b.addr, "sq-sub", false).await;
    assert!(present);
    let mut got = Vec::new();
    for _ in 0..5 {
        let p = sub.next_publish().await;
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
        sub.send(Packet::PubAck(PubAck::new(p.pkid))).await;
    }
    assert_eq!(got, ["15", "16", "17", "18", "19"]);
}

#[tokio::test]
async fn stats_count_clients_and_messages() {
    let b = TestBroker::start().await;
    let mut c = Raw::connect(b.addr, "st-1", true).await;
    c.subscribe(&[("st/t", QoS::AtMostOnce)]).await;
    c.publish("st/t", "abc", QoS::AtMostOnce, false, 0).await;
    c.next_publish().await;
    let s = b.broker.stats();
    assert_eq!(
        (s.clients_connected, s.sessions, s.subscriptions),
        (1, 1, 1)
    );
    assert_eq!(
        (s.msgs_in, s.msgs_out, s.bytes_in, s.bytes_out),
        (1, 1, 3, 3)
    );
}
