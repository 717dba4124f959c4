//! The stall path end to end, through the real client: a destination that
//! accepts PUBLISH and never acknowledges wedges the inflight window; the
//! watchdog notices, `/readyz` turns 503 naming the pipe, the stall is
//! counted once, the destination link is forced to reconnect, the messages
//! are resent and acknowledged on the new connection, and `/readyz` is 200 again.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::fake_broker::FakeBroker;
use common::http::{get, readyz_becomes_within, value};
use mqbridge::client::{self, ClientOptions, Endpoint};
use mqbridge::metrics::health::{Action, BrokerKind, PipeProgress};
use mqbridge::metrics::status::StatusBoard;
use mqbridge::metrics::{PipeMetrics, RemoteBrokerMetrics, builder, server};
use mqbridge::protocol::{Message, QoS};
use mqbridge::run::client_events::{ClientEventSink, watch_client};
use mqbridge::run::watchdog::{WatchedPipe, run_watchdog};
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const DEADLINE: Duration = Duration::from_secs(15);
const STALL_AFTER: Duration = Duration::from_millis(400);
const MESSAGES: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedged_destination_stalls_reconnects_and_recovers() {
    let fake = FakeBroker::start(1).await; // the first connection never acks
    let recorder = builder().expect("builder").build_recorder();
    let prometheus = recorder.handle();
    let (pipe_metrics, remote_metrics) = metrics::with_local_recorder(&recorder, || {
        (
            PipeMetrics::new("stall_pipe"),
            RemoteBrokerMetrics::new("wedge", &[format!("mqtt://127.0.0.1:{}", fake.port)]),
        )
    });
    let board = Arc::new(StatusBoard::new());
    board.add_broker("wedge", BrokerKind::Remote, true);
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();

    // The destination link, with the watchdog's reconnect hook.
    let reconnect = Arc::new(Notify::new());
    let (events_tx, events_rx) = broadcast::channel(64);
    let mut opts = ClientOptions::new(
        "wedge",
        vec![Endpoint::tcp("127.0.0.1", fake.port)],
        "mqbridge-stall-test",
    );
    opts.events = Some(events_tx);
    opts.reconnect = Some(reconnect.clone());
    opts.backoff.min = Duration::from_millis(50);
    opts.backoff.jitter = false;
    let (link, _deliveries) = client::spawn(opts, shutdown.clone(), &tracker);
    tracker.spawn(watch_client(
        events_rx,
        ClientEventSink::new(remote_metrics, board.clone()),
        shutdown.clone(),
    ));

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = shutdown.clone();
    tracker.spawn(server::serve(
        listener,
        server::ServerState {
            prometheus: prometheus.clone(),
            board: board.clone(),
            collect: None,
            spools: None,
        },
        async move { stop.cancelled().await },
    ));
    readyz_becomes_within(addr, 200, DEADLINE).await;

    // A stand-in for the pipe: publish QoS 1, count acks as forwards.
    let forwarded = Arc::new(AtomicU64::new(0));
    for i in 0..MESSAGES {
        let ack = link
            .publish(Message::new(
                format!("stall/{i}"),
                "x",
                QoS::AtLeastOnce,
                false,
            ))
            .await
            .expect("publish");
        let forwarded = forwarded.clone();
        tracker.spawn(async move {
            if ack.wait().await.is_ok() {
                forwarded.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let probe = {
        let forwarded = forwarded.clone();
        Arc::new(move || {
            let f = forwarded.load(Ordering::SeqCst);
            PipeProgress {
                forwarded: f,
                pending: MESSAGES - f,
            }
        })
    };
    let watched = WatchedPipe {
        name: "stall_pipe".into(),
        destination: "wedge".into(),
        metrics: pipe_metrics,
        probe,
    };
    let actions = Arc::new(AtomicU64::new(0));
    let on_action = {
        let actions = actions.clone();
        move |a: Action| {
            let Action::ReconnectDestination { destination, .. } = a;
            assert_eq!(destination, "wedge");
            actions.fetch_add(1, Ordering::SeqCst);
            reconnect.notify_waiters();
        }
    };
    let (_stall_tx, stall_rx) = tokio::sync::watch::channel(STALL_AFTER);
    tracker.spawn(run_watchdog(
        stall_rx,
        move || vec![watched.clone()],
        board.clone(),
        on_action,
        shutdown.clone(),
    ));

    // Stall detected and shown.
    let body = readyz_becomes_within(addr, 503, DEADLINE).await;
    assert!(body.contains("pipe stall_pipe is stalled"), "{body}");
    assert!(body.contains(r#""state":"stalled""#), "{body}");
    // Reconnect → resend → acked → recovered.
    let body = readyz_becomes_within(addr, 200, DEADLINE).await;
    assert!(!body.contains("stalled"), "{body}");
    // Recovery shows at the first ack after the reconnect; the others
    // follow (their acks race the watchdog's round, so wait for them).
    common::wait::wait_until(|| forwarded.load(Ordering::SeqCst) == MESSAGES).await;
    assert!(actions.load(Ordering::SeqCst) >= 1);
    assert!(
        fake.connections.load(Ordering::SeqCst) >= 2,
        "the link reconnected"
    );

    let (_, m) = get(addr, "/metrics").await;
    assert_eq!(
        value(&m, r#"mqbridge_pipe_stalls_total{pipe="stall_pipe"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        value(&m, r#"mqbridge_pipe_stalled{pipe="stall_pipe"}"#),
        Some(0.0)
    );
    assert_eq!(
        value(
            &m,
            r#"mqbridge_remote_disconnects_total{broker="wedge",reason="requested"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        value(&m, r#"mqbridge_remote_connected{broker="wedge"}"#),
        Some(1.0)
    );

    shutdown.cancel();
    tracker.close();
    timeout(DEADLINE, tracker.wait())
        .await
        .expect("tasks stop on shutdown");
}
