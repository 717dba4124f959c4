//! A full local link session (the bridge's own, in-process) pushes back on
//! network publishers instead of dropping: their PUBACK is withheld until
//! the link session has room, then released in arrival order.

mod common;

use common::broker::*;
use common::wait::{wait_until, within};
use mqbridge::broker::{Limits, OverflowPolicy};
use mqbridge::protocol::v4::{Packet, PubAck};
use mqbridge::protocol::{QoS, WireQoS};

fn small() -> Limits {
    Limits {
        max_inflight: 2,
        max_queued_messages: 3,
        overflow: OverflowPolicy::DropOldest,
        ..Limits::default()
    }
}

#[tokio::test]
async fn puback_withheld_while_link_session_full_and_released_on_drain() {
    let b = TestBroker::start_with(|o| o.limits = small()).await;
    let (link, mut deliveries) = b.broker.link("bp-pipe", false);
    let granted = within(link.subscribe(vec![("bp/#".into(), QoS::AtLeastOnce)]))
        .await
        .unwrap();
    assert_eq!(granted, vec![Some(QoS::AtLeastOnce)]);

    let mut publ = Raw::connect(b.addr, "bp-pub", true).await;
    for i in 1..=10u16 {
        publ.publish("bp/t", &i.to_string(), QoS::AtLeastOnce, false, i)
            .await;
    }
    // Inflight window (2) + queue (3) take 5: exactly those are acked.
    for i in 1..=5u16 {
        assert_eq!(publ.next().await, Packet::PubAck(PubAck::new(i)));
    }
    // The router answers PINGREQ after everything sent before it: no PUBACK
    // for 6..10 came first.
    publ.send(Packet::PingReq).await;
    assert_eq!(publ.next().await, Packet::PingResp);
    let s = b.broker.stats();
    assert_eq!(s.queued, 3);
    assert_eq!(s.held_back, 5, "6..10 held back now: {s:?}");
    assert_eq!(s.held_back_total, 5, "{s:?}");

    // The pipe acks: each freed slot releases one parked publish, and its PUBACK.
    let mut got = Vec::new();
    for _ in 0..10 {
        let d = within(deliveries.recv()).await.expect("delivery");
        got.push(String::from_utf8_lossy(&d.message.payload).into_owned());
        d.ack.ack();
    }
    let want: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "every message, in order");
    for i in 6..=10u16 {
        assert_eq!(publ.next().await, Packet::PubAck(PubAck::new(i)));
    }
    let s = b.broker.stats();
    assert_eq!(s.dropped_queue_full, 0, "{s:?}");
    assert_eq!(s.msgs_in, 10);
    wait_until(|| b.broker.stats().queued == 0).await;
    let s = b.broker.stats();
    assert_eq!(s.held_back, 0, "all released: {s:?}");
    assert_eq!(s.held_back_total, 5, "each counted once: {s:?}");
}

#[tokio::test]
async fn held_back_gauge_returns_to_zero_when_the_publisher_leaves() {
    let b = TestBroker::start_with(|o| o.limits = small()).await;
    let (link, _deliveries) = b.broker.link("bh-pipe", false);
    within(link.subscribe(vec![("bh/#".into(), QoS::AtLeastOnce)]))
        .await
        .unwrap();
    let mut publ = Raw::connect(b.addr, "bh-pub", false).await;
    for i in 1..=8u16 {
        publ.publish("bh/t", "x", QoS::AtLeastOnce, false, i).await;
    }
    for i in 1..=5u16 {
        assert_eq!(publ.next().await, Packet::PubAck(PubAck::new(i)));
    }
    publ.send(Packet::PingReq).await;
    assert_eq!(publ.next().await, Packet::PingResp);
    let s = b.broker.stats();
    assert_eq!((s.held_back, s.held_back_total), (3, 3), "{s:?}");

    // Never acknowledged, so forgotten with the connection (the persistent
    // client sends them again); the counter keeps its total.
    drop(publ);
    wait_until(|| b.broker.stats().held_back == 0).await;
    assert_eq!(b.broker.stats().held_back_total, 3);
}

#[tokio::test]
async fn network_subscribers_still_drop_and_qos0_is_never_parked() {
    let b = TestBroker::start_with(|o| o.limits = small()).await;
    let (link, _deliveries) = b.broker.link("bq-pipe", false);
    within(link.subscribe(vec![("bq/link".into(), QoS::AtLeastOnce)]))
        .await
        .unwrap();
    // A persistent network subscriber that went away: Mosquitto-like drop.
    let mut sub = Raw::connect(b.addr, "bq-sub", false).await;
    assert_eq!(
        sub.subscribe(&[("bq/net", QoS::AtLeastOnce)]).await,
        vec![mqbridge::protocol::v4::SubscribeReasonCode::Success(
            WireQoS::AtLeastOnce
        )]
    );
    sub.send(Packet::Disconnect).await;
    sub.expect_closed().await;

    let mut publ = Raw::connect(b.addr, "bq-pub", true).await;
    for i in 1..=8u16 {
        publ.publish("bq/net", &i.to_string(), QoS::AtLeastOnce, false, i)
            .await;
        assert_eq!(publ.next().await, Packet::PubAck(PubAck::new(i)));
    }
    assert_eq!(b.broker.stats().dropped_queue_full, 5);

    // Fill the link session (2 inflight + 3 queued), then QoS 0 is dropped
    // and counted, never parked.
    for i in 20..25u16 {
        publ.publish("bq/link", "x", QoS::AtLeastOnce, false, i)
            .await;
        assert_eq!(publ.next().await, Packet::PubAck(PubAck::new(i)));
    }
    for _ in 0..4 {
        publ.publish("bq/link", "zero", QoS::AtMostOnce, false, 0)
            .await;
    }
    publ.send(Packet::PingReq).await;
    assert_eq!(publ.next().await, Packet::PingResp);
    let s = b.broker.stats();
    assert_eq!(s.msgs_in, 8 + 5 + 4);
    assert_eq!(s.dropped_queue_full, 5, "the link session dropped nothing");
}
