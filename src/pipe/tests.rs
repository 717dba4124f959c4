//! Runtime tests of dispatchers and workers against fake link owners: small
//! in-test stand-ins that hand out deliveries with ack handles and let the
//! test decide when a destination acknowledges a publish.
//!
//! Time is paused: a `timeout` that elapses means every task went idle
//! without the awaited event, a deterministic "nothing happens" check.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

use super::*;
use crate::link::{AckHandle, AckToken, LinkError, LinkRequest, LinkState};
use crate::protocol::Message;
use crate::topic::{Remap, RemapRule};
use rules::QosPolicy;
use stats::DropReason;

const WAIT: Duration = Duration::from_secs(5);

struct Fake {
    req: mpsc::Receiver<LinkRequest>,
    del: mpsc::Sender<Delivery>,
    acks: mpsc::UnboundedReceiver<AckToken>,
    ack_tx: mpsc::UnboundedSender<AckToken>,
    next_id: u64,
    _state: watch::Sender<LinkState>,
}

fn fake(name: &str) -> (BrokerLink, Fake) {
    let (req_tx, req) = mpsc::channel(16);
    let (del, deliveries) = mpsc::channel(16);
    let (ack_tx, acks) = mpsc::unbounded_channel();
    let (state_tx, state_rx) = watch::channel(LinkState::Connected {
        endpoint: "fake".into(),
        session_present: false,
    });
    (
        BrokerLink {
            name: name.into(),
            link: Link::new(name, req_tx, state_rx),
            deliveries,
            max_pending: DEFAULT_MAX_PENDING,
        },
        Fake {
            req,
            del,
            acks,
            ack_tx,
            next_id: 0,
            _state: state_tx,
        },
    )
}

type Done = crate::link::PublishDone;

impl Fake {
    async fn deliver(&mut self, topic: &str, payload: &str, qos: QoS) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let ack = if qos == QoS::AtMostOnce {
            AckHandle::none()
        } else {
            AckHandle::new(
                AckToken {
                    generation: 1,
                    id,
                    pkid: 1,
                    qos,
                },
                self.ack_tx.clone(),
            )
        };
        let message = Message::new(topic, payload.as_bytes().to_vec(), qos, false);
        self.del
            .send(Delivery { message, ack })
            .await
            .expect("dispatcher alive");
        id
    }

    /// The next publish request (subscribe requests are granted on the way).
    async fn next_publish(&mut self) -> Option<(Message, Done)> {
        loop {
            match timeout(WAIT, self.req.recv()).await.ok()?? {
                LinkRequest::Publish { message, done } => return Some((message, done)),
                LinkRequest::Subscribe { filters, done } => {
                    let _ = done.send(Ok(filters.iter().map(|(_, o)| Some(o.qos)).collect()));
                }
                LinkRequest::Unsubscribe { done, .. } => {
                    let _ = done.send(Ok(()));
                }
                LinkRequest::Shutdown => return None,
            }
        }
    }

    /// The next subscribe request's filters and options (granted).
    async fn next_subscribe(&mut self) -> Option<Vec<(String, crate::protocol::SubscribeOptions)>> {
        loop {
            match timeout(WAIT, self.req.recv()).await.ok()?? {
                LinkRequest::Subscribe { filters, done } => {
                    let _ = done.send(Ok(filters.iter().map(|(_, o)| Some(o.qos)).collect()));
                    return Some(filters);
                }
                LinkRequest::Unsubscribe { done, .. } => {
                    let _ = done.send(Ok(()));
                }
                LinkRequest::Publish { .. } | LinkRequest::Shutdown => return None,
            }
        }
    }

    async fn next_ack(&mut self) -> Option<u64> {
        timeout(WAIT, self.acks.recv()).await.ok()?.map(|t| t.id)
    }
}

fn spec(name: &str, source: usize, dest: usize, filter: &str) -> PipeSpec {
    PipeSpec {
        name: name.into(),
        source,
        dest,
        filters: vec![(filter.into(), QoS::ExactlyOnce)],
        rules: PipeRules::pass_through(),
        retain_as_published: false,
        queue_size: 100,
        when_full: WhenFull::DropOldest,
        rate_limit: None,
        inflight: 10,
        delivery: super::DeliveryMode::EndToEnd,
    }
}

#[tokio::test(start_paused = true)]
async fn qos1_is_acked_only_after_the_destination_acked() {
    let (a, mut fa) = fake("a");
    let (b, mut fb) = fake("b");
    let pipes = start(vec![a, b], vec![spec("ab", 0, 1, "t/#")]).unwrap();
    let id = fa.deliver("t/1", "x", QoS::AtLeastOnce).await;
    let (msg, done) = fb.next_publish().await.expect("forwarded");
    assert_eq!((msg.topic.as_str(), msg.qos), ("t/1", QoS::AtLeastOnce));
    assert_eq!(
        fa.next_ack().await,
        None,
        "not acked before the destination acked"
    );
    done.send(Ok(())).unwrap();
    assert_eq!(fa.next_ack().await, Some(id));
    let s = pipes.pipe_stats("ab").unwrap().snapshot();
    assert_eq!((s.received, s.forwarded, s.inflight), (1, 1, 0));
    assert_eq!(s.latency_count, 1);
}

#[tokio::test(start_paused = true)]
async fn two_pipes_join_and_acks_keep_arrival_order() {
    let (a, mut fa) = fake("a");
    let (b, mut fb) = fake("b");
    let (c, mut fc) = fake("c");
    let _pipes = start(
        vec![a, b, c],
        vec![spec("ab", 0, 1, "t/#"), spec("ac", 0, 2, "t/1")],
    )
    .unwrap();
    let m1 = fa.deliver("t/1", "one", QoS::AtLeastOnce).await;
    let m2 = fa.deliver("t/2", "two", QoS::AtLeastOnce).await;
    let (p1b, d1b) = fb.next_publish().await.unwrap();
    let (p2b, d2b) = fb.next_publish().await.unwrap();
    let (p1c, d1c) = fc.next_publish().await.unwrap();
    assert_eq!(
        (p1b.topic.as_str(), p2b.topic.as_str(), p1c.topic.as_str()),
        ("t/1", "t/2", "t/1")
    );
    // m2 done everywhere, m1 done on b only: nothing may be acked yet.
    d2b.send(Ok(())).unwrap();
    d1b.send(Ok(())).unwrap();
    assert_eq!(fa.next_ack().await, None);
    d1c.send(Ok(())).unwrap();
    assert_eq!(fa.next_ack().await, Some(m1));
    assert_eq!(fa.next_ack().await, Some(m2));
}

#[tokio::test(start_paused = true)]
async fn deliberate_drops_are_acked_and_counted() {
    let (a, mut fa) = fake("a");
    let (b, mut fb) = fake("b");
    let mut s = spec("ab", 0, 1, "#");
    s.rules = PipeRules::new(
        &["secret/#".into()],
        Remap::default(),
        QosPolicy::Max(QoS::ExactlyOnce),
        false,
        Some(4),
    );
    let pipes = start(vec![a, b], vec![s]).unwrap();
    let excluded = fa.deliver("secret/x", "x", QoS::AtLeastOnce).await;
    assert_eq!(fa.next_ack().await, Some(excluded));
    let oversize = fa.deliver("big", "12345", QoS::ExactlyOnce).await;
    assert_eq!(fa.next_ack().await, Some(oversize));
    fa.deliver("ok", "1234", QoS::AtLeastOnce).await;
    let (m, _done) = fb.next_publish().await.unwrap();
    assert_eq!(
        m.topic, "ok",
        "only the allowed message reaches the destination"
    );
    let st = pipes.pipe_stats("ab").unwrap().snapshot();
    assert_eq!(st.dropped(DropReason::Excluded), 1);
    assert_eq!(st.dropped(DropReason::Oversize), 1);
    assert_eq!(st.received, 3);
}

#[tokio::test(start_paused = true)]
async fn remap_qos_cap_and_retain_clear_shape_the_copy() {
    let (a, fa) = fake("a");
    let (b, mut fb) = fake("b");
    let mut s = spec("ab", 0, 1, "site/+/sensor/#");
    s.rules = PipeRules::new(
        &[],
        Remap::new(vec![
            RemapRule::template("site/+/sensor/#", "cloud/{1}/{#}").unwrap(),
        ]),
        QosPolicy::Max(QoS::AtLeastOnce),
        true,
        None,
    );
    let _pipes = start(vec![a, b], vec![s]).unwrap();
    fa.del
        .send(Delivery {
            message: Message::new("site/9/sensor/temp", b"21".to_vec(), QoS::ExactlyOnce, true),
            ack: AckHandle::none(),
        })
        .await
        .unwrap();
    let (m, _) = fb.next_publish().await.unwrap();
    assert_eq!(m.topic, "cloud/9/temp");
    assert_eq!(m.qos, QoS::AtLeastOnce);
    assert!(!m.retain);
}

#[tokio::test(start_paused = true)]
async fn forced_qos1_waits_for_the_destination_but_acks_nothing_upstream() {
    let (a, mut fa) = fake("a");
    let (b, mut fb) = fake("b");
    let mut s = spec("ab", 0, 1, "#");
    s.rules = PipeRules::new(
        &[],
        Remap::default(),
        QosPolicy::Force(QoS::AtLeastOnce),
        false,
        None,
    );
    s.inflight = 1;
    let pipes = start(vec![a, b], vec![s]).unwrap();
    fa.deliver("t", "0", QoS::AtMostOnce).await;
    fa.deliver("t", "1", QoS::AtMostOnce).await;
    let (m, done) = fb.next_publish().await.unwrap();
    assert_eq!(m.qos, QoS::AtLeastOnce);
    // Window of 1: the second waits for the first's ack.
    assert!(fb.next_publish().await.is_none());
    done.send(Ok(())).unwrap();
    let (m2, _) = fb.next_publish().await.unwrap();
    assert_eq!(&m2.payload[..], b"1");
    assert_eq!(fa.next_ack().await, None, "QoS 0 has nothing to ack");
    assert_eq!(pipes.pipe_stats("ab").unwrap().snapshot().forwarded, 1);
}

#[tokio::test(start_paused = true)]
async fn qos0_flood_into_a_stuck_destination_stays_bounded_and_counts_drops() {
    let (a, mut fa) = fake("a");
    let (b, mut fb) = fake("b");
    let mut s = spec("ab", 0, 1, "#");
    s.queue_size = 10;
    s.inflight = 2;
    s.rules = PipeRules::new(
        &[],
        Remap::default(),
        QosPolicy::Force(QoS::AtLeastOnce),
        false,
        None,
    );
    let pipes = start(vec![a, b], vec![s]).unwrap();
    for i in 0..500 {
        fa.deliver("t", &i.to_string(), QoS::AtMostOnce).await;
    }
    // Two in flight (never acked), ten queued, the rest dropped (oldest first).
    let (_m1, _d1) = fb.next_publish().await.unwrap();
    let (_m2, _d2) = fb.next_publish().await.unwrap();
    assert!(fb.next_publish().await.is_none());
    let st = pipes.pipe_stats("ab").unwrap().snapshot();
    assert_eq!(st.inflight, 2);
    assert_eq!(st.queue_depth, 10);
    assert_eq!(st.dropped(DropReason::QueueFull), 488);
}

#[tokio::test(start_paused = true)]
async fn own_copy_coming_back_is_dropped_as_a_loop() {
    let (a, mut fa) = fake("a");
    let (b, mut fb) = fake("b");
    let pipes = start(
        vec![a, b],
        vec![spec("ab", 0, 1, "#"), spec("ba", 1, 0, "#")],
    )
    .unwrap();
    let id = fa.deliver("t/x", "hello", QoS::AtLeastOnce).await;
    let (m, done) = fb.next_publish().await.unwrap();
    done.send(Ok(())).unwrap();
    assert_eq!(fa.next_ack().await, Some(id));
    // b delivers our own copy back to the bridge: dropped, acked, not forwarded.
    let back = fb.deliver(&m.topic, "hello", QoS::AtLeastOnce).await;
    assert_eq!(fb.next_ack().await, Some(back));
    // A genuine message from b still crosses to a (and is the first publish on a).
    fb.deliver("t/x", "from-b", QoS::AtMostOnce).await;
    let (m2, _) = fa.next_publish().await.unwrap();
    assert_eq!(&m2.payload[..], b"from-b");
    assert_eq!(
        pipes
            .pipe_stats("ba")
            .unwrap()
            .snapshot()
            .dropped(DropReason::Loop),
        1
    );
    // The same content arriving again from b is not ours any more: it crosses.
    fb.deliver("t/x", "hello", QoS::AtMostOnce).await;
    let (m3, _) = fa.next_publish().await.unwrap();
    assert_eq!(&m3.payload[..], b"hello");
}

#[tokio::test(start_paused = true)]
async fn chains_through_a_third_broker_are_not_loops() {
    let (a, mut fa) = fake("a");
    let (b, mut fb) = fake("b");
    let (c, mut fc) = fake("c");
    let _pipes = start(
        vec![a, b, c],
        vec![
            spec("ab", 0, 1, "#"),
            spec("bc", 1, 2, "#"),
            spec("ba", 1, 0, "#"),
        ],
    )
    .unwrap();
    fa.deliver("t", "m", QoS::AtMostOnce).await;
    let (m, _) = fb.next_publish().await.unwrap();
    fb.deliver(&m.topic, "m", QoS::AtMostOnce).await;
    let (m2, _) = fc.next_publish().await.unwrap();
    assert_eq!(&m2.payload[..], b"m", "b → c forwards a's message");
    // And b → a did not: the next publish on a is a fresh one.
    fb.deliver("fresh", "f", QoS::AtMostOnce).await;
    let (m3, _) = fa.next_publish().await.unwrap();
    assert_eq!(m3.topic, "fresh");
}

#[tokio::test(start_paused = true)]
async fn rejected_by_destination_is_a_counted_drop_and_acked() {
    let (a, mut fa) = fake("a");
    let (b, mut fb) = fake("b");
    let pipes = start(vec![a, b], vec![spec("ab", 0, 1, "#")]).unwrap();
    let id = fa.deliver("t", "x", QoS::AtLeastOnce).await;
    let (_, done) = fb.next_publish().await.unwrap();
    done.send(Err(LinkError::Rejected("too large".into())))
        .unwrap();
    assert_eq!(fa.next_ack().await, Some(id));
    assert_eq!(
        pipes
            .pipe_stats("ab")
            .unwrap()
            .snapshot()
            .dropped(DropReason::Rejected),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn drain_finishes_inflight_then_reports_stuck_pipes() {
    let (a, mut fa) = fake("a");
    let (b, mut fb) = fake("b");
    let (c, mut fc) = fake("c");
    let pipes = start(
        vec![a, b, c],
        vec![spec("ab", 0, 1, "b/#"), spec("ac", 0, 2, "c/#")],
    )
    .unwrap();
    let mb = fa.deliver("b/1", "x", QoS::AtLeastOnce).await;
    fa.deliver("c/1", "y", QoS::AtLeastOnce).await;
    let (_, db) = fb.next_publish().await.unwrap();
    let (_, _dc) = fc.next_publish().await.unwrap();
    let drain = tokio::spawn(pipes.drain(Duration::from_secs(3)));
    // b acks during the drain: its message is acked upstream; c never does.
    db.send(Ok(())).unwrap();
    assert_eq!(fa.next_ack().await, Some(mb));
    let busy = timeout(WAIT, drain).await.unwrap().unwrap();
    assert_eq!(busy, vec!["ac".to_string()]);
    assert_eq!(
        fa.next_ack().await,
        None,
        "the stuck message was never acked"
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limit_spaces_publishes() {
    let (a, mut fa) = fake("a");
    let (b, mut fb) = fake("b");
    let mut s = spec("ab", 0, 1, "#");
    s.rate_limit = Some((10, 1));
    let _pipes = start(vec![a, b], vec![s]).unwrap();
    for i in 0..3 {
        fa.deliver("t", &i.to_string(), QoS::AtMostOnce).await;
    }
    let t0 = tokio::time::Instant::now();
    for _ in 0..3 {
        fb.next_publish().await.unwrap();
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(190),
        "3 messages at 10/s with burst 1 took {took:?}"
    );
}

/// The routes of source `a` are swapped while a message matched by the old
/// set is still in flight on the removed pipe: it is acked upstream exactly
/// once, after the removed pipe finished it, and later messages no longer
/// reach that pipe.
#[tokio::test(start_paused = true)]
async fn a_removed_pipe_drains_and_the_join_acks_each_message_once() {
    let (a, mut fa) = fake("a");
    let (b, mut fb) = fake("b");
    let (c, mut fc) = fake("c");
    let mut pipes = start(
        vec![a, b, c],
        vec![spec("ab", 0, 1, "t/#"), spec("ac", 0, 2, "t/#")],
    )
    .unwrap();
    let m1 = fa.deliver("t/1", "one", QoS::AtLeastOnce).await;
    let (_, d1b) = fb.next_publish().await.unwrap();
    let (_, d1c) = fc.next_publish().await.unwrap();
    let routed = pipes
        .update(&["ac".into()], vec![], Duration::from_secs(600))
        .unwrap();
    timeout(WAIT, routed).await.expect("routes swapped");
    assert!(pipes.pipe_stats("ac").is_none());
    let m2 = fa.deliver("t/2", "two", QoS::AtLeastOnce).await;
    let (p2b, d2b) = fb.next_publish().await.unwrap();
    assert_eq!(p2b.topic, "t/2");
    d1b.send(Ok(())).unwrap();
    d2b.send(Ok(())).unwrap();
    assert_eq!(
        fa.next_ack().await,
        None,
        "m1 still waits for the removed pipe"
    );
    d1c.send(Ok(())).unwrap();
    assert_eq!(fa.next_ack().await, Some(m1));
    assert_eq!(fa.next_ack().await, Some(m2));
    assert_eq!(fa.next_ack().await, None, "each message acked once");
    assert!(
        fc.next_publish().await.is_none(),
        "m2 never reached the removed pipe"
    );
}

/// A removed pipe whose destination never acks is released at its drain
/// deadline: the source is acked (the drop is counted), and the other pipe
/// of the same source keeps flowing.
#[tokio::test(start_paused = true)]
async fn a_removed_pipe_that_cannot_drain_is_released_at_its_deadline() {
    let (a, mut fa) = fake("a");
    let (b, mut fb) = fake("b");
    let (c, mut fc) = fake("c");
    let mut pipes = start(
        vec![a, b, c],
        vec![spec("ab", 0, 1, "t/#"), spec("ac", 0, 2, "t/#")],
    )
    .unwrap();
    let ac = pipes.pipe_stats("ac").unwrap();
    let m1 = fa.deliver("t/1", "one", QoS::AtLeastOnce).await;
    let (_, d1b) = fb.next_publish().await.unwrap();
    let (_, _d1c_never) = fc.next_publish().await.unwrap();
    d1b.send(Ok(())).unwrap();
    drop(
        pipes
            .update(&["ac".into()], vec![], Duration::from_secs(1))
            .unwrap(),
    );
    assert_eq!(fa.next_ack().await, Some(m1), "released at the deadline");
    assert_eq!(ac.dropped(DropReason::Reload), 1);
    assert_eq!(ac.snapshot().inflight, 0);
    let m2 = fa.deliver("t/2", "two", QoS::AtLeastOnce).await;
    let (_, d2b) = fb.next_publish().await.unwrap();
    d2b.send(Ok(())).unwrap();
    assert_eq!(fa.next_ack().await, Some(m2));
}

/// A changed pipe: new messages take the new settings, but only once the
/// old instance has delivered what it held (order kept, counters carry on).
#[tokio::test(start_paused = true)]
async fn a_changed_pipe_restarts_after_the_old_instance_drained() {
    let (a, mut fa) = fake("a");
    let (b, mut fb) = fake("b");
    let mut pipes = start(vec![a, b], vec![spec("ab", 0, 1, "t/#")]).unwrap();
    let m1 = fa.deliver("t/1", "one", QoS::AtLeastOnce).await;
    let (p1, d1) = fb.next_publish().await.unwrap();
    assert_eq!(p1.topic, "t/1");
    let mut changed = spec("ab", 0, 1, "t/#");
    changed.rules = PipeRules::new(
        &[],
        Remap::new(vec![RemapRule::prefix(Some("t/"), Some("u/"))]),
        QosPolicy::Max(QoS::ExactlyOnce),
        false,
        None,
    );
    let routed = pipes
        .update(&["ab".into()], vec![changed], Duration::from_secs(600))
        .unwrap();
    timeout(WAIT, routed).await.expect("routes swapped");
    let m2 = fa.deliver("t/2", "two", QoS::AtLeastOnce).await;
    assert!(
        fb.next_publish().await.is_none(),
        "the new instance waits for the old one"
    );
    d1.send(Ok(())).unwrap();
    assert_eq!(fa.next_ack().await, Some(m1));
    let (p2, d2) = fb.next_publish().await.unwrap();
    assert_eq!(p2.topic, "u/2", "the new remap applies");
    d2.send(Ok(())).unwrap();
    assert_eq!(fa.next_ack().await, Some(m2));
    assert_eq!(pipes.pipe_stats("ab").unwrap().snapshot().forwarded, 2);
}

#[tokio::test(start_paused = true)]
async fn a_mirror_subscribes_with_no_local_and_retain_as_published() {
    let (a, mut fa) = fake("a");
    let (b, mut fb) = fake("b");
    let mut ab = spec("ab", 0, 1, "up/#");
    ab.retain_as_published = true;
    // Only a → b at first: a is no destination, nothing to guard.
    let mut pipes = start(vec![a, b], vec![ab]).unwrap();
    let subs = fa.next_subscribe().await.expect("subscribed");
    assert_eq!(subs.len(), 1);
    assert!(!subs[0].1.no_local);
    assert!(subs[0].1.retain_as_published, "retain: as_published");
    // b → a makes the two a mirror: both sides subscribe with no local,
    // a's filter again although no pipe from a changed.
    let change = pipes
        .update(
            &[],
            vec![spec("ba", 1, 0, "down/#")],
            Duration::from_secs(1),
        )
        .unwrap();
    change.await;
    let subs = fb.next_subscribe().await.expect("b subscribed");
    assert_eq!(subs[0].0, "down/#");
    assert!(subs[0].1.no_local);
    assert!(!subs[0].1.retain_as_published);
    let subs = fa.next_subscribe().await.expect("a subscribed again");
    assert_eq!(subs[0].0, "up/#");
    assert!(subs[0].1.no_local && subs[0].1.retain_as_published);
}

#[tokio::test(start_paused = true)]
async fn a_chain_through_a_broker_keeps_its_own_publishes_coming_back() {
    let (a, _fa) = fake("a");
    let (b, mut fb) = fake("b");
    let (c, _fc) = fake("c");
    let _pipes = start(
        vec![a, b, c],
        vec![
            spec("ab", 0, 1, "t/#"),
            spec("ba", 1, 0, "u/#"),
            spec("bc", 1, 2, "t/#"),
        ],
    )
    .unwrap();
    let subs = fb.next_subscribe().await.expect("subscribed");
    assert!(
        subs.iter().all(|(_, o)| !o.no_local),
        "a → b → c needs our publishes at b: {subs:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_message_is_acked_upstream_counted_and_not_sent() {
    use crate::protocol::{MessageProperties, PropertyFields};
    let (a, fa) = fake("a");
    let (b, mut fb) = fake("b");
    let pipes = start(vec![a, b], vec![spec("ab", 0, 1, "#")]).unwrap();
    let with_expiry = |topic: &str, secs: u32| {
        let mut m = Message::new(topic, b"x".to_vec(), QoS::AtLeastOnce, false);
        m.properties = Some(MessageProperties::from(PropertyFields {
            message_expiry_interval: Some(secs),
            ..Default::default()
        }));
        m
    };
    let (ack_tx, mut acks) = mpsc::unbounded_channel();
    for (id, m) in [(1, with_expiry("dead", 0)), (2, with_expiry("live", 60))] {
        let token = AckToken {
            generation: 1,
            id,
            pkid: 1,
            qos: QoS::AtLeastOnce,
        };
        fa.del
            .send(Delivery {
                message: m,
                ack: AckHandle::new(token, ack_tx.clone()),
            })
            .await
            .unwrap();
    }
    assert_eq!(
        timeout(WAIT, acks.recv())
            .await
            .ok()
            .flatten()
            .map(|t| t.id),
        Some(1),
        "the expired message is done with: acked, not redelivered"
    );
    let (m, done) = fb.next_publish().await.expect("the live one");
    assert_eq!(m.topic, "live");
    let left = m
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval);
    assert!(left.is_some_and(|s| (59..=60).contains(&s)), "{left:?}");
    done.send(Ok(())).unwrap();
    assert_eq!(
        timeout(WAIT, acks.recv())
            .await
            .ok()
            .flatten()
            .map(|t| t.id),
        Some(2)
    );
    let s = pipes.pipe_stats("ab").unwrap().snapshot();
    assert_eq!((s.dropped(DropReason::Expired), s.forwarded), (1, 1));
}

/// Lets the other tasks run until `done` holds (time does not move: a busy
/// loop keeps the paused clock where it is); false if it never does.
async fn settle(done: impl Fn() -> bool) -> bool {
    for _ in 0..10_000 {
        if done() {
            return true;
        }
        tokio::task::yield_now().await;
    }
    done()
}

/// A store (`fsync: never`) in `dir` and pipe `p`'s spool in it.
fn spool_in(dir: &std::path::Path) -> (Store, Arc<Spool>) {
    use crate::config::{FsyncPolicy, StoragePlan};
    let store = Store::open(&StoragePlan {
        dir: dir.to_path_buf(),
        fsync: FsyncPolicy::Never,
        max_bytes: 1 << 30,
    })
    .expect("store");
    let spool = Spool::open(
        &store,
        "p",
        None,
        SpoolWhenFull::Block,
        Arc::new(AtomicU64::new(0)),
    )
    .expect("spool");
    (store, Arc::new(spool))
}

/// A spool stage for `spool`, with the receivers of its committer and
/// dispatcher channels (keep them alive).
fn stage_for(
    spool: &Arc<Spool>,
    qos0: bool,
) -> (
    SpoolStage,
    mpsc::UnboundedReceiver<handoff::Seq>,
    mpsc::UnboundedReceiver<handoff::Seq>,
) {
    let (commit, commits) = mpsc::unbounded_channel();
    let (done, dones) = mpsc::unbounded_channel();
    let stage = SpoolStage {
        spool: spool.clone(),
        qos0,
        commit,
        done,
    };
    (stage, commits, dones)
}

/// The acker applies the worker's completions to the spool in memory and
/// saves the cursor (deleting the acknowledged records in one batch) once
/// `SAVE_EVERY` are acknowledged, else `SAVE_AFTER` after an
/// acknowledgement left it unsaved, and once more when it ends.
#[tokio::test(start_paused = true)]
async fn the_acker_saves_the_spool_cursor_by_count_by_time_and_at_the_end() {
    use crate::spool::{Record, SAVE_EVERY, keyspace_name};

    let dir = tempfile::tempdir().expect("tempdir");
    let (store, spool) = spool_in(dir.path());
    let n = SAVE_EVERY + 44;
    for i in 0..n {
        let msg = Message::new(format!("t/{i}"), &b"x"[..], QoS::AtLeastOnce, false);
        spool
            .append(&Record {
                msg,
                received_ms: 0,
                visited: 0,
            })
            .expect("append");
    }
    while spool.next().expect("next").is_some() {}
    let on_disk = || {
        store
            .keyspace(&keyspace_name("p"))
            .expect("keyspace")
            .iter()
            .count() as u64
    };
    let (stage, _commits, _dones) = stage_for(&spool, false);
    let stats = Arc::new(PipeStats::default());
    let inbox = Arc::new(Inbox::spooled(
        10,
        WhenFull::DropOldest,
        stats.clone(),
        stage,
    ));
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(acker(inbox, rx, CancellationToken::new()));

    // A few: applied at once, saved only after SAVE_AFTER.
    for seq in 0..3 {
        tx.send(seq).expect("send");
    }
    assert!(settle(|| spool.depth() == n - 3).await);
    assert_eq!(stats.spooled.load(Ordering::Relaxed), n - 3);
    assert_eq!((spool.cursor(), on_disk()), (0, n), "not saved yet");
    tokio::time::sleep(SAVE_AFTER - Duration::from_millis(1)).await;
    assert_eq!(spool.cursor(), 0, "still within SAVE_AFTER");
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert!(
        settle(|| spool.cursor() == 3).await,
        "saved after SAVE_AFTER"
    );
    assert_eq!(on_disk(), n - 3);

    // SAVE_EVERY more: saved at once, with no time passing.
    for seq in 3..3 + SAVE_EVERY {
        tx.send(seq).expect("send");
    }
    assert!(settle(|| spool.cursor() == 3 + SAVE_EVERY).await);
    assert_eq!(on_disk(), n - 3 - SAVE_EVERY);

    // The rest, then the end: saved when the acker stops.
    for seq in 3 + SAVE_EVERY..n {
        tx.send(seq).expect("send");
    }
    drop(tx);
    timeout(WAIT, task)
        .await
        .expect("acker ends")
        .expect("join");
    assert_eq!((spool.cursor(), spool.depth(), on_disk()), (n, 0, 0));
}

/// With `qos0: spool` a QoS 0 message goes through the spool without a
/// hand-off part; the flush that writes it still wakes the worker.
#[tokio::test]
async fn a_spooled_qos0_message_wakes_the_worker() {
    use super::inbox::Item;
    use super::loopguard::BrokerSet;
    use futures_util::FutureExt;
    use std::time::Instant;

    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, spool) = spool_in(dir.path());
    let (stage, _commits, _dones) = stage_for(&spool, true);
    let inbox = Inbox::spooled(
        10,
        WhenFull::DropOldest,
        Arc::new(PipeStats::default()),
        stage,
    );
    let msg = Message::new("t/q0", &b"x"[..], QoS::AtMostOnce, false);
    inbox.push(Item::new(msg, None, BrokerSet::EMPTY, Instant::now()));
    assert_eq!(spool.depth(), 0, "written at the flush, not at the push");
    inbox.flush();
    assert_eq!(spool.depth(), 1, "spooled");
    assert!(
        inbox.changed().now_or_never().is_some(),
        "the flush woke the worker"
    );
    let item = inbox.pop().expect("the worker takes it");
    assert_eq!(item.msg.topic.as_ref(), "t/q0");
}
