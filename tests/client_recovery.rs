//! Recovery after a destination returns: while the bridge backs off, it
//! TCP-probes the endpoints (`reconnect.probe_interval`, default 1 s) and
//! dials as soon as one answers, so a destination that was down long enough
//! for the backoff to grow far beyond 2 s is reconnected within about a
//! second of its return. A real Mosquitto destination is stopped and started
//! again on the same port; the bridge runs in-process. And a broker that
//! answers TCP but refuses the CONNECT is not probed into a tight loop.

mod common;

use std::time::{Duration, Instant};

use common::bridge::{Sub, link_goes_down, publish, start_run, stop_run, unique};
use common::broker::TestBroker;
use common::mosquitto::Mosquitto;
use mqbridge::client::{self, ClientEvent, ClientOptions, Endpoint};
use mqbridge::link::LinkState;
use tokio::sync::broadcast;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How soon after the restart the link must be up again.
const RECONNECT_WITHIN: Duration = Duration::from_secs(3);

fn yaml(p: &str, port: u16, reconnect: &str) -> String {
    format!(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n  cloud:\n    type: remote\n    endpoints: [mqtt://127.0.0.1:{port}]\n    client_id: {p}-bridge\n{reconnect}pipes:\n  up:\n    from: edge\n    to: cloud\n    topics: ['{p}/#']\n"
    )
}

/// Stops `dest` for `down`, starts it again on the same port, and returns how
/// long the bridge took to be connected again; then checks a message flows.
async fn down_then_back(tag: &str, reconnect: &str, down: Duration) -> Duration {
    let mut dest = Mosquitto::start();
    let p = unique(tag);
    let (token, run) = start_run(&yaml(&p, dest.port, reconnect)).await;
    let edge = run.builtin_addrs("edge").expect("edge addrs")[0].port();
    let mut state = run.link("cloud").expect("cloud link").state();
    timeout(
        common::bridge::WAIT,
        state.wait_for(|s| matches!(s, LinkState::Connected { .. })),
    )
    .await
    .expect("connected at start")
    .expect("state watch");

    link_goes_down(&run, "cloud", || dest.stop()).await;
    // The outage itself: the scenario under test, not a wait for an event.
    tokio::time::sleep(down).await;
    // Measured from the restart command: Mosquitto's own start-up counts.
    let back = Instant::now();
    tokio::task::block_in_place(|| dest.start_again());
    eprintln!(
        "{tag}: Mosquitto accepts TCP {:?} after the restart",
        back.elapsed()
    );
    timeout(
        RECONNECT_WITHIN * 10,
        state.wait_for(|s| matches!(s, LinkState::Connected { .. })),
    )
    .await
    .expect("the bridge reconnects at all")
    .expect("state watch");
    let took = back.elapsed();
    eprintln!("{tag}: reconnected {took:?} after the destination returned");

    let mut sub = Sub::start(dest.port, &format!("{p}-sub"), &format!("{p}/#"), 1, false).await;
    publish(edge, &format!("{p}/after"), "back", 1, false).await;
    let got = sub.next().await.expect("a message flows after the return");
    assert_eq!(got.payload, "back");
    sub.stop().await;
    stop_run(token, run).await;
    took
}

/// The reported case: default `reconnect` settings (max 60 s), destination
/// down for 60 s. Before the probes the bridge came back 20–60 s late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_settings_reconnect_within_seconds_after_a_60s_outage() {
    let took = down_then_back("rec60", "", Duration::from_secs(60)).await;
    assert!(
        took <= RECONNECT_WITHIN,
        "reconnected {took:?} after the destination returned"
    );
}

/// Deterministic variant (no jitter): delays 1, 2, 4, 8, 16 s put the
/// attempts at about 1, 3, 7, 15 and 31 s after the loss, so a destination
/// back after 20 s would wait about 11 s for the next attempt without probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grown_backoff_does_not_delay_the_reconnect() {
    let took = down_then_back(
        "rec20",
        "    reconnect: { min: 1s, max: 30s, jitter: false }\n",
        Duration::from_secs(20),
    )
    .await;
    assert!(
        took <= RECONNECT_WITHIN,
        "reconnected {took:?} after the destination returned"
    );
}

/// Probes only follow a failure where nothing answered: a broker that accepts
/// TCP and refuses every CONNECT keeps the plain backoff (attempts about 0,
/// 0.2, 0.6, 1.4 s into a 2 s window), instead of being dialed at every
/// 50 ms probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_broker_is_not_probed_into_a_tight_loop() {
    let refusing = TestBroker::start_with(|o| o.allow_anonymous = false).await;
    let mut opts = ClientOptions::new(
        "refusing",
        vec![Endpoint::tcp("127.0.0.1", refusing.addr.port())],
        "refused-client",
    );
    opts.backoff.min = Duration::from_millis(200);
    opts.backoff.max = Duration::from_secs(60);
    opts.backoff.jitter = false;
    opts.backoff.probe_interval = Duration::from_millis(50);
    let (tx, mut events) = broadcast::channel(256);
    opts.events = Some(tx);
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (_link, _rx) = client::spawn(opts, shutdown.clone(), &tracker);

    // The window observed is the property under test.
    let window = Duration::from_secs(2);
    let end = tokio::time::Instant::now() + window;
    let mut attempts = 0;
    let mut refused = 0;
    while let Ok(ev) = tokio::time::timeout_at(end, events.recv()).await {
        match ev.expect("events") {
            ClientEvent::ConnectAttempt { .. } => attempts += 1,
            ClientEvent::Disconnected { reason, .. } => {
                assert!(reason.contains("not authorized"), "{reason}");
                refused += 1;
            }
            _ => {}
        }
    }
    assert!(refused >= 1, "the broker refused at least once");
    assert!(
        (3..=5).contains(&attempts),
        "{attempts} attempts in {window:?}: backoff 200 ms doubling expects 4"
    );
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
}
