//! Hostile clients against the built-in broker's limits: thousands of
//! sockets that never send CONNECT must not keep a device out (issue 9 item
//! 2), and subscriptions cannot grow the broker's memory without bound
//! (item 3): limits answer SUBACK 0x80 per refused filter, and the trie gives
//! its nodes back when subscriptions go.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::broker::{Raw, TestBroker, rumqttc_client};
use common::wait::{wait_until, within};
use mqbridge::protocol::QoS;
use mqbridge::protocol::v4::SubscribeReasonCode;
use tokio::net::{TcpSocket, TcpStream};

/// Idle sockets the attacker holds: more than `max_connections` and more
/// than `max_pending_handshakes` below.
const ATTACK_SOURCES: u8 = 40;
const ATTACK_PER_SOURCE: usize = 60;
/// Descriptors the test needs: both ends of every socket, and slack.
const FDS_NEEDED: u64 = 2 * (ATTACK_SOURCES as u64 * ATTACK_PER_SOURCE as u64 + 200) + 256;

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits`.
fn open_files_soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// A socket from source address `source` to `addr`, connected (the broker
/// accepts it) but silent.
async fn open_from(source: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    within(socket.connect(addr))
        .await
        .unwrap_or_else(|e| panic!("connect from {source}: {e}"))
}

/// A device connecting from 127.0.0.1 and getting CONNACK 0 each time.
async fn canary(addr: SocketAddr, round: usize) {
    let mut c = Raw::connect(addr, &format!("canary-{round}"), true).await;
    c.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_never_lock_out_a_device_that_connects() {
    let have = open_files_soft_limit().expect("read the open-files limit from /proc/self/limits");
    assert!(
        have >= FDS_NEEDED,
        "this test needs {FDS_NEEDED} open files, the soft limit is {have}: raise it (ulimit -n {FDS_NEEDED})"
    );
    let b = TestBroker::start_with(|o| {
        // Fewer connection slots than idle sockets: before the handshake
        // budget existed, these sockets took every slot.
        o.limits.max_connections = 1000;
        o.limits.max_pending_handshakes = 500;
        o.limits.max_pending_per_ip = 64;
        o.limits.handshake_timeout = Duration::from_secs(30);
    })
    .await;
    let mut held = Vec::new();
    let mut round = 0;
    for source in 0..ATTACK_SOURCES {
        let ip = Ipv4Addr::new(127, 0, 1, source + 1);
        for _ in 0..ATTACK_PER_SOURCE {
            held.push(open_from(ip, b.addr).await);
        }
        // While the flood goes on, the device keeps getting in.
        canary(b.addr, round).await;
        round += 1;
    }
    // One source opening more than its share: the surplus is closed at once.
    for _ in 0..100 {
        held.push(open_from(Ipv4Addr::new(127, 0, 2, 1), b.addr).await);
    }
    for _ in 0..10 {
        canary(b.addr, round).await;
        round += 1;
    }
    let s = b.broker.stats();
    assert_eq!(held.len(), 2500);
    assert!(
        s.handshakes_pending <= 500,
        "pending handshakes {} over the budget",
        s.handshakes_pending
    );
    assert_eq!(s.refused_handshake_per_ip, 36, "{s:?}");
    // 2,464 admitted idle sockets and 50 canaries through a budget of 500:
    // the evicted ones count themselves as their tasks wake.
    wait_until(|| b.broker.stats().refused_handshake_limit >= 1900).await;
    let s = b.broker.stats();
    assert_eq!(s.refused_limit, 0, "{s:?}");
    assert_eq!(s.refused_timeout, 0, "{s:?}");
    drop(held);
    wait_until(|| b.broker.stats().handshakes_pending == 0).await;
}

#[tokio::test]
async fn a_valid_connect_past_max_connections_gets_0x03_not_a_silent_close() {
    let b = TestBroker::start_with(|o| o.limits.max_connections = 1).await;
    let _first = Raw::connect(b.addr, "mc-1", true).await;
    // Idle sockets do not count: only CONNECTed clients take a slot.
    let _idle: Vec<Raw> = futures_idle(b.addr, 5).await;
    let code = Raw::connect_code(b.addr, "mc-2", true, None).await;
    assert_eq!(
        code,
        mqbridge::protocol::v4::ConnectReturnCode::ServiceUnavailable
    );
    assert_eq!(b.broker.stats().refused_limit, 1);
}

async fn futures_idle(addr: SocketAddr, n: usize) -> Vec<Raw> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(Raw::open(addr).await);
    }
    v
}

#[tokio::test]
async fn silent_socket_is_closed_after_handshake_timeout_and_counted() {
    let b =
        TestBroker::start_with(|o| o.limits.handshake_timeout = Duration::from_millis(200)).await;
    let mut silent = Raw::open(b.addr).await;
    silent.expect_closed().await;
    assert_eq!(b.broker.stats().refused_timeout, 1);
    wait_until(|| b.broker.stats().handshakes_pending == 0).await;
}

fn deep(levels: usize, tag: &str) -> String {
    let mut v = vec!["d"; levels];
    v[0] = tag;
    v.join("/")
}

fn sub_codes(rx_packet: rumqttc::Packet) -> Option<Vec<rumqttc::SubscribeReasonCode>> {
    match rx_packet {
        rumqttc::Packet::SubAck(ack) => Some(ack.return_codes),
        _ => None,
    }
}

async fn suback(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<rumqttc::Packet>,
) -> Vec<rumqttc::SubscribeReasonCode> {
    loop {
        if let Some(codes) = sub_codes(within(rx.recv()).await.expect("event loop alive")) {
            return codes;
        }
    }
}

fn granted(codes: &[rumqttc::SubscribeReasonCode]) -> Vec<bool> {
    codes
        .iter()
        .map(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)))
        .collect()
}

#[tokio::test]
async fn subscription_limits_refuse_with_0x80_per_filter() {
    let b = TestBroker::start_with(|o| {
        o.limits.max_filters_per_subscribe = 4;
        o.limits.max_subscriptions_per_client = 5;
    })
    .await;
    let (client, mut rx) = rumqttc_client(b.addr, "sl-1", true).await;
    let q = rumqttc::QoS::AtLeastOnce;
    // 200 levels (Mosquitto's limit) pass, 201 do not; the fifth filter of
    // the packet is beyond max_filters_per_subscribe.
    let filters = [
        deep(200, "ok200"),
        deep(201, "no201"),
        "a/+".to_string(),
        deep(1000, "huge"),
        "b/#".to_string(),
    ];
    client
        .subscribe_many(
            filters
                .iter()
                .map(|f| rumqttc::SubscribeFilter::new(f.clone(), q)),
        )
        .await
        .unwrap();
    assert_eq!(
        granted(&suback(&mut rx).await),
        vec![true, false, true, false, false]
    );
    // Two subscriptions held; three more fit under max_subscriptions_per_client.
    let more = ["c/1", "c/2", "c/3", "c/4"];
    client
        .subscribe_many(
            more.iter()
                .map(|f| rumqttc::SubscribeFilter::new(f.to_string(), q)),
        )
        .await
        .unwrap();
    assert_eq!(
        granted(&suback(&mut rx).await),
        vec![true, true, true, false]
    );
    // Subscribing again to a held filter is not a new subscription.
    client.subscribe("a/+", q).await.unwrap();
    assert_eq!(granted(&suback(&mut rx).await), vec![true]);
    let s = b.broker.stats();
    assert_eq!(s.subscriptions, 5);
    assert_eq!(
        (
            s.sub_refused_topic_levels,
            s.sub_refused_per_subscribe,
            s.sub_refused_per_client,
            s.sub_refused_trie_nodes
        ),
        (2, 1, 1, 0)
    );
}

#[tokio::test]
async fn trie_nodes_are_bounded_and_given_back_on_unsubscribe_and_disconnect() {
    let b = TestBroker::start_with(|o| o.limits.max_trie_nodes = 999).await;
    let mut c = Raw::connect(b.addr, "tn-1", true).await;
    // Four distinct 200-level filters: 800 nodes; a fifth would reach 1000.
    let filters: Vec<String> = (0..5).map(|i| deep(200, &format!("t{i}"))).collect();
    let refs: Vec<(&str, QoS)> = filters
        .iter()
        .map(|f| (f.as_str(), QoS::AtMostOnce))
        .collect();
    let codes = c.subscribe(&refs).await;
    let ok: Vec<bool> = codes
        .iter()
        .map(|c| matches!(c, SubscribeReasonCode::Success(_)))
        .collect();
    assert_eq!(ok, vec![true, true, true, true, false]);
    assert_eq!(b.broker.stats().trie_nodes, 800);
    assert_eq!(b.broker.stats().sub_refused_trie_nodes, 1);
    // A filter sharing a held path adds only what is new.
    assert!(matches!(
        c.subscribe(&[(&deep(150, "t0"), QoS::AtMostOnce)]).await[..],
        [SubscribeReasonCode::Success(_)]
    ));
    assert_eq!(b.broker.stats().trie_nodes, 800);
    c.unsubscribe(&[filters[0].as_str()]).await;
    assert_eq!(b.broker.stats().trie_nodes, 750);
    let mut other = Raw::connect(b.addr, "tn-2", true).await;
    other.subscribe(&[("x/y", QoS::AtMostOnce)]).await;
    drop(c);
    wait_until(|| b.broker.stats().trie_nodes == 2).await;
    other.unsubscribe(&["x/y"]).await;
    assert_eq!(b.broker.stats().trie_nodes, 0);
    assert_eq!(b.broker.stats().subscriptions, 0);
}

#[tokio::test]
async fn publish_to_a_topic_over_max_topic_levels_closes_the_connection() {
    let b = TestBroker::start().await;
    let mut sub = Raw::connect(b.addr, "pl-sub", true).await;
    sub.subscribe(&[("#", QoS::AtMostOnce)]).await;
    let mut c = Raw::connect(b.addr, "pl-1", true).await;
    c.publish(&deep(200, "pl"), "ok", QoS::AtMostOnce, false, 0)
        .await;
    assert_eq!(&sub.next_publish().await.payload[..], b"ok");
    c.publish(&deep(201, "pl"), "no", QoS::AtMostOnce, false, 0)
        .await;
    c.expect_closed().await;
    assert_eq!(b.broker.stats().refused_protocol, 1);
}
