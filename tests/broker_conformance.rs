//! Conformance tests of the built-in broker with independent clients: raw
//! packets through our codec (exact flags and ids), `rumqttc::AsyncClient`,
//! the in-process link, and the Mosquitto CLI clients (`mosquitto_pub`,
//! `mosquitto_sub`, `mosquitto_passwd`; a missing binary fails the test).

mod common;

use common::broker::*;
use common::mosquitto::{MosqSub, mosquitto_pub, mosquitto_pub_output, password_file, require_bin};
use common::wait::{wait_until, within};
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

/// A message from one in-process link reaches another as it is: the topic
/// the subscriber gets is the publisher's (one shared allocation), not a
/// copy decoded from a PUBLISH the broker encoded for it.
#[tokio::test]
async fn local_link_hands_the_message_itself_to_a_local_subscriber() {
    let b = TestBroker::start().await;
    let (sub, mut deliveries) = b.broker.link("lm-sub", false);
    within(sub.subscribe(vec![("lm/#".into(), QoS::AtLeastOnce)]))
        .await
        .unwrap();
    let (publ, _rx) = b.broker.link("lm-pub", false);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let sent = Message::new("lm/a", "x", qos, false);
        let topic = sent.topic.clone();
        within(within(publ.publish(sent)).await.unwrap().wait())
            .await
            .unwrap();
        let d = within(deliveries.recv()).await.unwrap();
        assert_eq!((d.message.topic.as_str(), d.message.qos), ("lm/a", qos));
        assert!(!d.message.dup);
        assert!(
            d.message.topic.is_shared_with(&topic),
            "QoS {qos:?}: the subscriber got a copy of the topic"
        );
        assert_eq!(d.ack.is_required(), qos != QoS::AtMostOnce);
        d.ack.ack();
    }
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
    b.wait_subscriptions(1).await;
    mosquitto_pub(b.addr, &["-t", "mc/x", "-m", "via-cli", "-q", "2"]).await;
    assert_eq!(sub.lines().await, vec!["mc/x via-cli".to_string()]);
}

/// MQTT 3.1 (`MQIsdp`, level 3) and 3.1.1 clients on one listener, mixed:
/// each receives what the other publishes, at the QoS it asked for.
#[tokio::test]
async fn mqtt31_and_311_cli_clients_mixed() {
    let b = TestBroker::start().await;
    let mut sub31 = MosqSub::spawn(
        b.addr,
        &[
            "-V", "mqttv31", "-t", "m31/#", "-q", "2", "-v", "-i", "m31-sub",
        ],
        2,
    );
    let mut sub311 = MosqSub::spawn(
        b.addr,
        &[
            "-V", "mqttv311", "-t", "m31/#", "-q", "1", "-v", "-i", "m311-sub",
        ],
        2,
    );
    b.wait_subscriptions(2).await;
    mosquitto_pub(
        b.addr,
        &[
            "-V", "mqttv31", "-t", "m31/a", "-m", "from-31", "-q", "2", "-i", "m31-pub",
        ],
    )
    .await;
    mosquitto_pub(
        b.addr,
        &["-V", "mqttv311", "-t", "m31/b", "-m", "from-311", "-q", "1"],
    )
    .await;
    let want = vec!["m31/a from-31".to_string(), "m31/b from-311".to_string()];
    assert_eq!(sub31.lines().await, want);
    assert_eq!(sub311.lines().await, want);
    // A persistent 3.1 session: subscribe and leave (-E), a message is
    // queued while away, and the resumed session delivers it.
    let persistent = [
        "-V", "mqttv31", "-c", "-i", "m31-p", "-q", "1", "-t", "m31p/t",
    ];
    let mut first = MosqSub::spawn(b.addr, &[&persistent[..], &["-E"]].concat(), 1);
    assert!(first.lines().await.is_empty());
    mosquitto_pub(
        b.addr,
        &["-V", "mqttv31", "-t", "m31p/t", "-m", "queued", "-q", "1"],
    )
    .await;
    let mut resumed = MosqSub::spawn(b.addr, &[&persistent[..], &["-v"]].concat(), 1);
    assert_eq!(resumed.lines().await, vec!["m31p/t queued".to_string()]);
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
    // MQTT 3.1 (`MQIsdp`, level 3): accepted; `MQIsdp` with another level: 0x01.
    assert_eq!(raw_mqisdp_connack(b.addr, 3).await, Some(0x00));
    assert_eq!(raw_mqisdp_connack(b.addr, 4).await, Some(0x01));
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

#[tokio::test]
async fn local_link_unacked_message_redelivered_on_relink() {
    let b = TestBroker::start().await;
    let (link, mut rx) = b.broker.link("lr-pipe", false);
    within(link.subscribe(vec![("lr/#".into(), QoS::ExactlyOnce)]))
        .await
        .unwrap();
    let mut publ = Raw::connect(b.addr, "lr-pub", true).await;
    publ.publish("lr/a", "m1", QoS::ExactlyOnce, false, 1).await;
    publ.next().await;
    let d = within(rx.recv()).await.unwrap();
    assert_eq!(d.message.qos, QoS::ExactlyOnce);
    drop(d); // not acked
    within(link.shutdown()).await;
    drop((link, rx));
    wait_until(|| b.broker.stats().clients_connected == 1).await;
    let (link, mut rx) = b.broker.link("lr-pipe", false);
    let d = within(rx.recv()).await.unwrap();
    assert_eq!(&d.message.payload[..], b"m1");
    assert!(d.message.dup);
    d.ack.ack();
    // After the ack the session holds nothing: a new message comes next.
    publ.publish("lr/a", "m2", QoS::AtLeastOnce, false, 2).await;
    publ.next().await;
    let d = within(rx.recv()).await.unwrap();
    assert_eq!(&d.message.payload[..], b"m2");
    assert!(!d.message.dup);
    drop(link);
}

#[tokio::test]
async fn max_inflight_window_holds_messages_until_acked() {
    let b = TestBroker::start_with(|o| o.limits.max_inflight = 2).await;
    let mut sub = Raw::connect(b.addr, "mi-sub", true).await;
    sub.subscribe(&[("mi/t", QoS::AtLeastOnce)]).await;
    let mut publ = Raw::connect(b.addr, "mi-pub", true).await;
    for i in 1..=4u16 {
        publ.publish("mi/t", &i.to_string(), QoS::AtLeastOnce, false, i)
            .await;
        publ.next().await;
    }
    let a = sub.next_publish().await;
    let b2 = sub.next_publish().await;
    assert_eq!((&a.payload[..], &b2.payload[..]), (&b"1"[..], &b"2"[..]));
    sub.ping().await; // window full: nothing more
    sub.puback(a.pkid).await;
    assert_eq!(&sub.next_publish().await.payload[..], b"3");
}

#[tokio::test]
async fn acl_file_denies_subscribe_and_drops_publish_with_ack() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "topic read acl/public/#\nuser alice\ntopic readwrite acl/alice/#\ntopic read acl/shared/#\ntopic deny acl/shared/secret\nuser bob\ntopic write acl/shared/#\npattern write acl/dev/%c/#\n",
    )
    .unwrap();
    let b = TestBroker::start_with(|o| o.acl_file = Some(acl.clone())).await;
    let mut anon = Raw::connect(b.addr, "acl-anon", true).await;
    let codes = anon
        .subscribe(&[
            ("acl/public/#", QoS::AtLeastOnce),
            ("acl/alice/#", QoS::AtLeastOnce),
        ])
        .await;
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::Success(WireQoS::AtLeastOnce),
            SubscribeReasonCode::Failure
        ]
    );
    let mut alice = Raw::connect_with(b.addr, "acl-al", true, Some(("alice", "x")), None, 0).await;
    alice.subscribe(&[("acl/alice/#", QoS::AtLeastOnce)]).await;
    // Denied publish: acked, dropped, counted.
    anon.publish("acl/alice/x", "nope", QoS::AtLeastOnce, false, 9)
        .await;
    assert_eq!(anon.next().await, Packet::PubAck(PubAck::new(9)));
    // Pattern with %c grants this client id only.
    let mut dev = Raw::connect(b.addr, "d1", true).await;
    dev.publish("acl/dev/d1/x", "ok", QoS::AtLeastOnce, false, 1)
        .await;
    dev.publish("acl/dev/d2/x", "no", QoS::AtLeastOnce, false, 2)
        .await;
    assert_eq!(dev.next().await, Packet::PubAck(PubAck::new(1)));
    assert_eq!(dev.next().await, Packet::PubAck(PubAck::new(2)));
    alice
        .publish("acl/alice/y", "mine", QoS::AtMostOnce, false, 0)
        .await;
    assert_eq!(&alice.next_publish().await.payload[..], b"mine");
    alice.ping().await;
    assert_eq!(b.broker.stats().dropped_acl, 2);
    // Read is checked per delivery: a deny narrower than the subscription holds.
    alice.subscribe(&[("acl/shared/#", QoS::AtMostOnce)]).await;
    let mut bob = Raw::connect_with(b.addr, "acl-bob", true, Some(("bob", "x")), None, 0).await;
    bob.publish("acl/shared/secret", "hidden", QoS::AtLeastOnce, false, 1)
        .await;
    bob.publish("acl/shared/open", "seen", QoS::AtLeastOnce, false, 2)
        .await;
    bob.next().await;
    bob.next().await;
    assert_eq!(alice.next_publish().await.topic, "acl/shared/open");
    alice.ping().await;
    // mosquitto_sub (debug output) sees SUBACK 0x80 for the denied filter.
    let out = within(
        tokio::process::Command::new(require_bin("mosquitto_sub"))
            .args(["-h", "127.0.0.1", "-p", &b.addr.port().to_string()])
            .args(["-t", "acl/alice/#", "-i", "acl-cli", "-d", "-W", "1"])
            .output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Subscribed (mid: 1): 128"), "{stdout}");
}

#[tokio::test]
async fn password_file_written_by_mosquitto_passwd() {
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), &[("carol", "s3cret")]);
    let b = TestBroker::start_with(|o| {
        o.password_file = Some(pw.clone());
        o.allow_anonymous = false;
    })
    .await;
    assert_eq!(
        Raw::connect_code(b.addr, "pw-1", true, Some(("carol", "s3cret"))).await,
        ConnectReturnCode::Success
    );
    assert_eq!(
        Raw::connect_code(b.addr, "pw-2", true, Some(("carol", "wrong"))).await,
        ConnectReturnCode::BadUserNamePassword
    );
    assert_eq!(
        Raw::connect_code(b.addr, "pw-3", true, Some(("nobody", "s3cret"))).await,
        ConnectReturnCode::BadUserNamePassword
    );
    assert_eq!(
        Raw::connect_code(b.addr, "pw-4", true, None).await,
        ConnectReturnCode::NotAuthorized
    );
    // The Mosquitto CLI with the same credentials.
    let mut sub = MosqSub::spawn(
        b.addr,
        &["-t", "pw/t", "-u", "carol", "-P", "s3cret", "-i", "pw-cli"],
        1,
    );
    b.wait_subscriptions(1).await;
    mosquitto_pub(
        b.addr,
        &["-t", "pw/t", "-m", "auth-ok", "-u", "carol", "-P", "s3cret"],
    )
    .await;
    assert_eq!(sub.lines().await, vec!["auth-ok".to_string()]);
    let out = mosquitto_pub_output(
        b.addr,
        &["-t", "pw/t", "-m", "x", "-u", "carol", "-P", "bad"],
    )
    .await;
    assert!(!out.status.success());
    assert!(b.broker.stats().refused_auth >= 4);
}

#[tokio::test]
async fn tls_listener_client_cert_cn_as_username() {
    use mqbridge::broker::{ListenerOptions, ServerTls};
    let dir = tempfile::tempdir().unwrap();
    let pki = common::certs::generate_for(dir.path(), "sensor-7", "sensor-7");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "user sensor-7\ntopic readwrite tls/#\n").unwrap();
    let tls = ServerTls {
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key.clone(),
        client_ca_file: Some(pki.ca.clone()),
        require_client_cert: true,
        cert_cn_as_username: true,
    };
    let b = TestBroker::start_with(|o| {
        o.listeners = vec![ListenerOptions {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls: Some(tls),
            websocket: false,
        }];
        o.allow_anonymous = false;
        o.acl_file = Some(acl);
    })
    .await;
    let tls_args = |with_cert: bool| {
        let mut v = vec![
            "-h".to_string(),
            "localhost".into(),
            "-p".into(),
            b.addr.port().to_string(),
            "--cafile".into(),
            pki.ca.display().to_string(),
        ];
        if with_cert {
            v.extend([
                "--cert".into(),
                pki.client_cert.display().to_string(),
                "--key".into(),
                pki.client_key.display().to_string(),
            ]);
        }
        v
    };
    let mut sub = MosqSub::spawn_raw(tls_args(true), &["-t", "tls/#", "-v", "-i", "tls-sub"], 1);
    b.wait_subscriptions(1).await;
    let out = within(
        tokio::process::Command::new(require_bin("mosquitto_pub"))
            .args(tls_args(true))
            .args(["-t", "tls/x", "-m", "secure", "-q", "1"])
            .output(),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sub.lines().await, vec!["tls/x secure".to_string()]);
    // Without a client certificate the handshake is refused.
    let out = within(
        tokio::process::Command::new(require_bin("mosquitto_pub"))
            .args(tls_args(false))
            .args(["-t", "tls/x", "-m", "x"])
            .output(),
    )
    .await
    .unwrap();
    assert!(!out.status.success());
}

#[tokio::test]
async fn bind_failure_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let opts = mqbridge::broker::BrokerOptions {
        name: "bf".into(),
        listeners: vec![mqbridge::broker::ListenerOptions {
            addr,
            tls: None,
            websocket: false,
        }],
        ..Default::default()
    };
    let err = mqbridge::broker::Broker::start(opts, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn limits_close_only_the_offending_connection() {
    let b = TestBroker::start_with(|o| {
        o.limits.max_connections = 3;
        o.limits.max_packet_size = 1024;
        o.limits.handshake_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let mut normal = Raw::connect(b.addr, "lm-normal", true).await;
    normal.subscribe(&[("lm/#", QoS::AtMostOnce)]).await;
    // Oversized packet: that connection is closed.
    let mut big = Raw::connect(b.addr, "lm-big", true).await;
    big.publish("lm/big", &"x".repeat(2000), QoS::AtMostOnce, false, 0)
        .await;
    big.expect_closed().await;
    // Silent socket: closed after handshake_timeout.
    let mut silent = Raw::open(b.addr).await;
    silent.expect_closed().await;
    assert_eq!(b.broker.stats().refused_timeout, 1);
    // Connection limit: the fourth client's CONNECT is refused with 0x03
    // (server unavailable) and its connection closed.
    wait_until(|| b.broker.stats().clients_connected == 1).await;
    let _c2 = Raw::connect(b.addr, "lm-2", true).await;
    let _c3 = Raw::connect(b.addr, "lm-3", true).await;
    let mut fourth = Raw::open(b.addr).await;
    fourth.send_connect("lm-4", true, None, None, 0).await;
    match fourth.next().await {
        Packet::ConnAck(ack) => assert_eq!(ack.code, ConnectReturnCode::ServiceUnavailable),
        other => panic!("expected CONNACK 0x03, got {other:?}"),
    }
    fourth.expect_closed().await;
    assert_eq!(b.broker.stats().refused_limit, 1);
    // The normal client never noticed.
    normal
        .publish("lm/ok", "fine", QoS::AtMostOnce, false, 0)
        .await;
    assert_eq!(&normal.next_publish().await.payload[..], b"fine");
}

#[tokio::test]
async fn sys_tree_is_published() {
    let b = TestBroker::start_with(|o| o.sys_interval = Some(std::time::Duration::from_millis(50)))
        .await;
    let mut c = Raw::connect(b.addr, "sys-1", true).await;
    c.subscribe(&[("$SYS/broker/clients/connected", QoS::AtMostOnce)])
        .await;
    let p = c.next_publish().await;
    assert_eq!(p.topic, "$SYS/broker/clients/connected");
    assert_eq!(&p.payload[..], b"1");
}

/// Broken packets, each on its own connection, thrown at a running broker
/// while a normal client keeps publishing and receiving.
#[tokio::test]
async fn hostile_input_closes_only_that_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = TestBroker::start().await;
    let mut normal = Raw::connect(b.addr, "hi-normal", true).await;
    normal.subscribe(&[("hi/#", QoS::AtLeastOnce)]).await;

    // A valid CONNECT to prefix cases that need a session first.
    let connect: &[u8] = &[
        0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 1, b'h',
    ];
    let corpus: Vec<(&str, bool, Vec<u8>)> = vec![
        (
            "garbage",
            false,
            b"\xde\xad\xbe\xef garbage \xff\xff".to_vec(),
        ),
        ("packet type 0", false, vec![0x00, 0x00]),
        ("packet type 15", true, vec![0xf0, 0x00]),
        ("first packet not CONNECT", false, vec![0xc0, 0x00]),
        ("truncated CONNECT", false, connect[..7].to_vec()),
        ("bad protocol name", false, {
            let mut v = connect.to_vec();
            v[4..8].copy_from_slice(b"MQTX");
            v
        }),
        ("CONNECT reserved flag", false, {
            let mut v = connect.to_vec();
            v[9] = 0x03;
            v
        }),
        (
            "huge remaining length",
            true,
            vec![0x30, 0xff, 0xff, 0xff, 0x7f],
        ),
        (
            "5-byte remaining length",
            true,
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
        ),
        (
            "wildcard PUBLISH topic",
            true,
            vec![0x30, 0x05, 0, 3, b'a', b'/', b'+'],
        ),
        ("PUBLISH QoS 3", true, vec![0x36, 0x05, 0, 1, b'a', 0, 1]),
        ("DUP on QoS 0", true, vec![0x38, 0x04, 0, 1, b'a', b'x']),
        (
            "invalid UTF-8 topic",
            true,
            vec![0x30, 0x04, 0, 2, 0xc3, 0x28],
        ),
        (
            "SUBSCRIBE bad reserved flags",
            true,
            vec![0x80, 0x06, 0, 1, 0, 1, b'a', 0],
        ),
        (
            "SUBSCRIBE options reserved bits",
            true,
            vec![0x82, 0x06, 0, 1, 0, 1, b'a', 0x04],
        ),
        ("PUBREL bad flags", true, vec![0x60, 0x02, 0, 1]),
        (
            "PUBLISH length past end",
            true,
            vec![0x30, 0x03, 0, 9, b'a'],
        ),
        ("second CONNECT", true, connect.to_vec()),
        ("CONNACK from client", true, vec![0x20, 0x02, 0, 0]),
    ];
    let total = corpus.len() as u64;
    for (i, (name, after_connect, bytes)) in corpus.into_iter().enumerate() {
        let mut s = within(tokio::net::TcpStream::connect(b.addr))
            .await
            .unwrap();
        if after_connect {
            s.write_all(connect).await.unwrap();
            let mut connack = [0u8; 4];
            within(s.read_exact(&mut connack)).await.unwrap();
            assert_eq!(connack, [0x20, 0x02, 0, 0], "{name}");
        }
        s.write_all(&bytes).await.unwrap();
        if name == "truncated CONNECT" {
            s.shutdown().await.unwrap();
        }
        // The broker closes the connection (EOF or reset), whatever it sends first.
        let mut sink = Vec::new();
        let _ = within(s.read_to_end(&mut sink)).await;
        // The normal client is unaffected.
        let payload = format!("still-{i}");
        normal
            .publish("hi/t", &payload, QoS::AtLeastOnce, false, i as u16 + 1)
            .await;
        assert_eq!(
            normal.next().await,
            Packet::PubAck(PubAck::new(i as u16 + 1)),
            "{name}"
        );
        let p = normal.next_publish().await;
        assert_eq!(p.payload, payload.as_bytes(), "after {name}");
        normal.puback(p.pkid).await;
    }
    let s = b.broker.stats();
    assert!(s.refused_protocol >= total - 1, "{s:?}");
}

/// A subscriber that never reads: QoS 0 beyond `max_queued_messages`
/// unwritten packets is dropped and counted; the publisher is unaffected.
#[tokio::test]
async fn non_reading_qos0_subscriber_is_bounded() {
    let b = TestBroker::start_with(|o| o.limits.max_queued_messages = 50).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = within(socket.connect(b.addr)).await.unwrap();
    let mut stuck = Raw::from_stream(stream);
    stuck.send_connect("nr-stuck", true, None, None, 0).await;
    assert!(matches!(stuck.next().await, Packet::ConnAck(_)));
    stuck.subscribe(&[("nr/#", QoS::AtMostOnce)]).await;
    let mut publ = Raw::connect(b.addr, "nr-pub", true).await;
    let payload = "x".repeat(10_000);
    for _ in 0..3000 {
        publ.publish("nr/t", &payload, QoS::AtMostOnce, false, 0)
            .await;
    }
    publ.ping().await;
    let s = b.broker.stats();
    assert!(s.dropped_queue_full > 0, "{s:?}");
    assert_eq!(s.msgs_in, 3000);
    drop(stuck);
}

/// Persistent session with the Mosquitto CLI: `mosquitto_sub -c` leaves,
/// QoS 1 messages published meanwhile are delivered when it comes back.
#[tokio::test]
async fn mosquitto_cli_persistent_session_gets_queued_messages() {
    let b = TestBroker::start().await;
    let args = ["-c", "-i", "cs-sub", "-q", "1", "-t", "cs/t", "-v"];
    let mut first = MosqSub::spawn(b.addr, &args, 1);
    b.wait_subscriptions(1).await;
    mosquitto_pub(b.addr, &["-t", "cs/t", "-m", "m0", "-q", "1"]).await;
    assert_eq!(first.lines().await, vec!["cs/t m0".to_string()]);
    wait_until(|| b.broker.stats().clients_connected == 0).await;
    mosquitto_pub(b.addr, &["-t", "cs/t", "-m", "m1", "-q", "1"]).await;
    mosquitto_pub(b.addr, &["-t", "cs/t", "-m", "m2", "-q", "2"]).await;
    assert_eq!(b.broker.stats().queued, 2);
    let mut again = MosqSub::spawn(b.addr, &args, 2);
    assert_eq!(
        again.lines().await,
        vec!["cs/t m1".to_string(), "cs/t m2".to_string()]
    );
}

/// A `mosquitto_sub` killed with SIGKILL: its will is published; a takeover
/// of a connected client publishes the old connection's will too.
#[tokio::test]
async fn will_of_killed_mosquitto_client_and_of_taken_over_connection() {
    let b = TestBroker::start().await;
    let mut watcher = Raw::connect(b.addr, "wk-watch", true).await;
    watcher.subscribe(&[("wk/#", QoS::AtMostOnce)]).await;
    let mut victim = MosqSub::spawn(
        b.addr,
        &[
            "-t",
            "wk/none",
            "-i",
            "wk-cli",
            "--will-topic",
            "wk/cli",
            "--will-payload",
            "gone",
        ],
        1,
    );
    b.wait_subscriptions(2).await;
    victim.kill().await;
    let p = watcher.next_publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("wk/cli", &b"gone"[..]));

    let will = Some(("wk/takeover".to_string(), "old".to_string()));
    let mut old = Raw::connect_with(b.addr, "wk-dev", true, None, will, 0).await;
    let _new = Raw::connect(b.addr, "wk-dev", true).await;
    old.expect_closed().await;
    assert_eq!(watcher.next_publish().await.topic, "wk/takeover");
}

/// A QoS 2 flow interrupted after PUBREC is completed with a resent PUBREL
/// when the persistent session resumes.
#[tokio::test]
async fn qos2_pubrel_resent_on_resume() {
    let b = TestBroker::start().await;
    let mut sub = Raw::connect(b.addr, "pr-sub", false).await;
    sub.subscribe(&[("pr/t", QoS::ExactlyOnce)]).await;
    let mut publ = Raw::connect(b.addr, "pr-pub", true).await;
    publ.publish("pr/t", "x", QoS::ExactlyOnce, false, 1).await;
    publ.next().await;
    let p = sub.next_publish().await;
    sub.send(Packet::PubRec(PubRec::new(p.pkid))).await;
    assert_eq!(sub.next().await, Packet::PubRel(PubRel::new(p.pkid)));
    drop(sub);
    wait_until(|| b.broker.stats().clients_connected == 1).await;
    let (mut sub, present) = Raw::connect_present(b.addr, "pr-sub", false).await;
    assert!(present);
    assert_eq!(sub.next().await, Packet::PubRel(PubRel::new(p.pkid)));
    sub.send(Packet::PubComp(PubComp::new(p.pkid))).await;
    sub.ping().await;
}

/// Order per topic survives the inflight window and the session queue.
#[tokio::test]
async fn order_per_topic_through_window_and_queue() {
    let b = TestBroker::start_with(|o| o.limits.max_inflight = 3).await;
    let mut sub = Raw::connect(b.addr, "or-sub", true).await;
    sub.subscribe(&[("or/t", QoS::AtLeastOnce)]).await;
    let mut publ = Raw::connect(b.addr, "or-pub", true).await;
    let n = 300u16;
    for i in 1..=n {
        publ.publish("or/t", &i.to_string(), QoS::AtLeastOnce, false, i)
            .await;
    }
    for i in 1..=n {
        assert_eq!(publ.next().await, Packet::PubAck(PubAck::new(i)));
    }
    for i in 1..=n {
        let p = sub.next_publish().await;
        assert_eq!(p.payload, i.to_string().as_bytes());
        sub.puback(p.pkid).await;
    }
    sub.ping().await;
}

/// Cancelling the token stops listeners, connections, links and the router.
#[tokio::test]
async fn shutdown_stops_every_task() {
    let b = TestBroker::start().await;
    let mut c = Raw::connect(b.addr, "sd-1", false).await;
    let (link, _rx) = b.broker.link("sd-link", false);
    let mut state = link.state();
    within(state.wait_for(|s| matches!(s, mqbridge::link::LinkState::Connected { .. })))
        .await
        .unwrap();
    let listener = common::sockets::listening_inode(b.addr);
    b.token.cancel();
    within(b.broker.closed()).await;
    c.expect_closed().await;
    assert_eq!(*link.state().borrow(), mqbridge::link::LinkState::Closed);
    // The broker's own listening socket is closed. (Connecting to `b.addr`
    // proves nothing: with tests in parallel the freed port may already be
    // another test's listener.)
    assert!(
        !common::sockets::holds_socket(listener),
        "the listener socket is still open"
    );
}

/// A second link with the same client id takes the session over, even while
/// the first link's pipe is not taking deliveries.
#[tokio::test]
async fn local_link_takeover_while_pipe_is_stalled() {
    use mqbridge::link::LinkState;
    let b = TestBroker::start().await;
    let (old, _old_rx) = b.broker.link("lt-pipe", false);
    within(old.subscribe(vec![("lt/#".into(), QoS::AtMostOnce)]))
        .await
        .unwrap();
    let mut publ = Raw::connect(b.addr, "lt-pub", true).await;
    for _ in 0..200 {
        publ.publish("lt/t", "x", QoS::AtMostOnce, false, 0).await;
    }
    publ.ping().await;
    let (new, _new_rx) = b.broker.link("lt-pipe", false);
    let mut st = new.state();
    let s = within(st.wait_for(|s| matches!(s, LinkState::Connected { .. })))
        .await
        .unwrap()
        .clone();
    assert_eq!(
        s,
        LinkState::Connected {
            endpoint: "local".into(),
            session_present: true
        }
    );
    let mut st = old.state();
    within(st.wait_for(|s| *s == LinkState::Closed))
        .await
        .unwrap();
}
