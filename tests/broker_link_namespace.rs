//! The bridge's in-process links on a built-in broker cannot be hijacked: a
//! network client sending a link's client id is refused with CONNACK 0x02
//! (anonymous or authenticated with ACL rights), counted, and the pipe keeps
//! forwarding. A link closed by force re-attaches by itself, and `/readyz`
//! reports the broker not ready while it is down.

mod common;

use common::bridge::{Sub, WAIT, publish, start_run, stop_run, unique};
use common::broker::Raw;
use common::http::{counter, metric_becomes, readyz_becomes, scrape};
use common::mosquitto::password_file;
use mqbridge::broker::bridge_link_id;
use mqbridge::link::LinkState;
use mqbridge::protocol::v4::ConnectReturnCode;
use tokio::time::timeout;

/// Two built-in brokers, `edge` → `core`, one pipe for `<p>/#`; `edge_extra`
/// is added to edge's settings (credentials, ACL).
fn yaml(p: &str, edge_extra: &str) -> String {
    yaml_named("edge", p, edge_extra)
}

/// As [`yaml`], with the source broker named `edge`. Tests that count
/// refusals use a name of their own: under `cargo test` the tests of this
/// file share one process, hence one metrics recorder, and series with the
/// same labels would add up.
fn yaml_named(edge: &str, p: &str, edge_extra: &str) -> String {
    format!(
        "brokers:\n  {edge}:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n{edge_extra}  core:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\npipes:\n  up:\n    from: {edge}\n    to: core\n    topics: [{p}/#]\n"
    )
}

fn port(run: &mqbridge::RunHandle, broker: &str) -> u16 {
    run.builtin_addrs(broker).expect("built-in addrs")[0].port()
}

/// A QoS 1 message published on edge arrives on core.
async fn forwards(run: &mqbridge::RunHandle, p: &str, payload: &str) {
    let mut on_core = Sub::start(
        port(run, "core"),
        &unique("core-sub"),
        &format!("{p}/#"),
        1,
        false,
    )
    .await;
    publish(port(run, "edge"), &format!("{p}/t"), payload, 1, false).await;
    let got = on_core.next().await.expect("forwarded to core");
    assert_eq!(got.payload, payload);
    on_core.stop().await;
}

const REFUSED_CLIENT_ID: &str =
    "mqbridge_broker_connections_refused_total{broker=\"edge\",reason=\"client_id\"}";

#[tokio::test]
async fn anonymous_client_with_the_link_id_is_refused_and_the_pipe_keeps_forwarding() {
    let p = unique("hj");
    let (token, run) = start_run(&yaml(&p, "")).await;
    let edge = run.builtin_addrs("edge").expect("edge")[0];
    let id = bridge_link_id("edge");
    // Clean and persistent sessions alike: neither may take the link's session.
    for clean in [true, false] {
        let code = Raw::connect_code(edge, &id, clean, None).await;
        assert_eq!(code, ConnectReturnCode::BadClientId, "clean={clean}");
    }
    assert_eq!(
        *run.link("edge").expect("link").state().borrow(),
        LinkState::Connected {
            endpoint: "local".into(),
            session_present: false
        },
        "the link was never touched"
    );
    forwards(&run, &p, "after-hijack-attempt").await;
    let metrics = run.metrics_addr().expect("metrics");
    metric_becomes(metrics, REFUSED_CLIENT_ID, 2.0).await;
    readyz_becomes(metrics, 200).await;
    // A network client of another id that only looks like a link's is fine.
    let _other = Raw::connect(edge, &bridge_link_id("elsewhere"), true).await;
    stop_run(token, run).await;
}

#[tokio::test]
async fn authenticated_acl_user_with_the_link_id_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = password_file(dir.path(), &[("mallory", "s3cret")]);
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "user mallory\ntopic readwrite #\n").expect("acl");
    let extra = format!(
        "    password_file: {}\n    acl_file: {}\n",
        pw.display(),
        acl.display()
    );
    let p = unique("hja");
    let (token, run) = start_run(&yaml_named("gate", &p, &extra)).await;
    let edge = run.builtin_addrs("gate").expect("gate")[0];
    let login = Some(("mallory", "s3cret"));
    let code = Raw::connect_code(edge, &bridge_link_id("gate"), false, login).await;
    assert_eq!(code, ConnectReturnCode::BadClientId);
    // The same user with its own id is accepted and its publish crosses.
    let mut dev = Raw::connect_with(edge, &unique("dev"), true, login, None, 0).await;
    let mut on_core = Sub::start(
        port(&run, "core"),
        &unique("core-sub"),
        &format!("{p}/#"),
        1,
        false,
    )
    .await;
    dev.publish(
        &format!("{p}/t"),
        "authed",
        mqbridge::protocol::QoS::AtLeastOnce,
        false,
        1,
    )
    .await;
    assert!(matches!(
        dev.next().await,
        mqbridge::protocol::v4::Packet::PubAck(_)
    ));
    assert_eq!(on_core.next().await.expect("forwarded").payload, "authed");
    let metrics = run.metrics_addr().expect("metrics");
    let body = scrape(metrics).await;
    assert_eq!(
        counter(&body, &REFUSED_CLIENT_ID.replace("\"edge\"", "\"gate\"")),
        1.0,
        "{body}"
    );
    stop_run(token, run).await;
}

#[tokio::test]
async fn a_link_closed_by_force_re_attaches_and_readyz_shows_it_down() {
    let p = unique("hjf");
    let (token, run) = start_run(&yaml(&p, "")).await;
    let metrics = run.metrics_addr().expect("metrics");
    readyz_becomes(metrics, 200).await;
    let mut state = run.link("edge").expect("link").state();
    let hold = run
        .builtin("edge")
        .expect("edge broker")
        .hold_link_down(&bridge_link_id("edge"))
        .await
        .expect("the link session exists");
    timeout(
        WAIT,
        state.wait_for(|s| matches!(s, LinkState::Disconnected { .. })),
    )
    .await
    .expect("link seen down")
    .expect("state watch");
    let body = readyz_becomes(metrics, 503).await;
    assert!(body.contains("broker edge is not connected"), "{body}");
    // A device publishing meanwhile: the persistent link session queues it.
    let mut on_core = Sub::start(
        port(&run, "core"),
        &unique("core-sub"),
        &format!("{p}/#"),
        1,
        false,
    )
    .await;
    publish(
        port(&run, "edge"),
        &format!("{p}/t"),
        "while-down",
        1,
        false,
    )
    .await;
    drop(hold);
    timeout(
        WAIT,
        state.wait_for(|s| {
            *s == LinkState::Connected {
                endpoint: "local".into(),
                session_present: true,
            }
        }),
    )
    .await
    .expect("link re-attached to its session")
    .expect("state watch");
    readyz_becomes(metrics, 200).await;
    assert_eq!(
        on_core
            .next()
            .await
            .expect("queued message forwarded")
            .payload,
        "while-down"
    );
    // The subscriptions are still in place for new traffic.
    forwards(&run, &p, "after-reattach").await;
    stop_run(token, run).await;
}

/// Even a network session that got the id first (before the link existed)
/// shares nothing with the link: the link attaches to a session of its own,
/// the network client is not taken over and sees none of the link's
/// traffic, and from then on the id is refused to the network.
#[tokio::test]
async fn link_and_network_sessions_with_one_id_never_meet() {
    use common::broker::TestBroker;
    use common::wait::within;
    use mqbridge::protocol::v4::Packet;
    use mqbridge::protocol::{Message, QoS};
    let b = TestBroker::start().await;
    let id = bridge_link_id("ns");
    let mut early = Raw::connect(b.addr, &id, false).await;
    early.subscribe(&[("ns/#", QoS::AtLeastOnce)]).await;
    let (link, mut deliveries) = b.broker.link(&id, false);
    let mut state = link.state();
    let s = within(state.wait_for(|s| matches!(s, LinkState::Connected { .. })))
        .await
        .expect("state watch")
        .clone();
    assert_eq!(
        s,
        LinkState::Connected {
            endpoint: "local".into(),
            session_present: false
        },
        "the link did not resume the network session"
    );
    within(link.subscribe(vec![("link/#".into(), QoS::AtLeastOnce)]))
        .await
        .expect("subscribed");
    // Each gets only what its own session subscribed to.
    let mut dev = Raw::connect(b.addr, &unique("dev"), true).await;
    dev.publish("link/a", "for-link", QoS::AtMostOnce, false, 0)
        .await;
    dev.publish("ns/a", "for-early", QoS::AtMostOnce, false, 0)
        .await;
    dev.ping().await;
    let d = within(deliveries.recv()).await.expect("delivery");
    assert_eq!(d.message.topic, "link/a");
    let p = early.next_publish().await;
    assert_eq!(p.topic, "ns/a");
    // The early client is still connected (not taken over) ...
    early.send(Packet::PingReq).await;
    assert_eq!(early.next().await, Packet::PingResp);
    // ... but a new CONNECT with the id is refused now that the link exists.
    assert_eq!(
        Raw::connect_code(b.addr, &id, true, None).await,
        ConnectReturnCode::BadClientId
    );
    assert_eq!(b.broker.stats().refused_client_id, 1);
    let published = within(link.publish(Message::new("x/y", "z", QoS::AtMostOnce, false)))
        .await
        .expect("link still works");
    within(published.wait()).await.expect("routed");
}

/// A clean link session is gone once its link is closed; the link comes back
/// with its subscriptions restored, and deliveries flow on the same stream.
#[tokio::test]
async fn a_clean_link_re_attaches_with_its_subscriptions_restored() {
    use common::broker::TestBroker;
    use common::wait::within;
    use mqbridge::protocol::QoS;
    let b = TestBroker::start().await;
    let (link, mut deliveries) = b.broker.link("clean-link", true);
    within(link.subscribe(vec![("r/#".into(), QoS::AtLeastOnce)]))
        .await
        .expect("subscribed");
    let mut state = link.state();
    let hold = b
        .broker
        .hold_link_down("clean-link")
        .await
        .expect("link exists");
    within(state.wait_for(|s| matches!(s, LinkState::Disconnected { .. })))
        .await
        .expect("state watch");
    assert_eq!(b.broker.stats().links_connected, 0);
    assert_eq!(b.broker.stats().subscriptions, 0, "the clean session went");
    drop(hold);
    within(state.wait_for(|s| matches!(s, LinkState::Connected { .. })))
        .await
        .expect("state watch");
    assert_eq!(b.broker.stats().links_connected, 1);
    let mut dev = Raw::connect(b.addr, &unique("dev"), true).await;
    dev.publish("r/a", "again", QoS::AtLeastOnce, false, 1)
        .await;
    dev.next().await;
    let d = within(deliveries.recv()).await.expect("delivery");
    assert_eq!(
        (d.message.topic.as_str(), d.message.qos),
        ("r/a", QoS::AtLeastOnce)
    );
    d.ack.ack();
}
