//! The observability HTTP endpoint, end to end over TCP: metrics recorded
//! through the typed handles appear in `/metrics`, `/readyz` follows the
//! status board, and the server stops on its shutdown future.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::{get, value};
use common::wait::STEP;
use mqbridge::metrics::health::{BrokerKind, PipeProgress, Watchdog};
use mqbridge::metrics::status::StatusBoard;
use mqbridge::metrics::{
    BuiltinBrokerMetrics, DisconnectReason, DropReason, PipeMetrics, RemoteBrokerMetrics, builder,
    describe_all, server,
};
use mqbridge::run::watchdog::{WatchedPipe, check_pipes};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::timeout;

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(state: server::ServerState) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(listener, state, async move {
        let _ = rx.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        task,
    }
}

/// A server whose renders run `collect` first (no status, no spools).
async fn start_collecting(
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    collect: server::Collector,
) -> Server {
    start(server::ServerState {
        prometheus,
        board: Arc::new(StatusBoard::new()),
        collect: Some(collect),
        spools: None,
    })
    .await
}

impl Server {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        timeout(STEP, self.task)
            .await
            .expect("server did not stop")
            .expect("join")
            .expect("serve");
    }
}

#[tokio::test]
async fn metrics_endpoint_renders_typed_handles() {
    // A private recorder, so tests in this binary do not share state.
    let recorder = builder().expect("builder").build_recorder();
    let handle = recorder.handle();
    let (pipe, remote, local) = metrics::with_local_recorder(&recorder, || {
        describe_all();
        (
            PipeMetrics::new("edge_to_cloud"),
            RemoteBrokerMetrics::new(
                "cloud",
                &[
                    "mqtt://a:1883".to_string(),
                    "mqtt://u:secret@b:1883".to_string(),
                ],
            ),
            BuiltinBrokerMetrics::new("edge"),
        )
    });

    for _ in 0..3 {
        pipe.received();
    }
    pipe.forwarded(100, Duration::from_micros(50));
    pipe.forwarded(200, Duration::from_millis(3));
    pipe.dropped(DropReason::Oversize);
    pipe.set_inflight(1);
    pipe.set_queue_depth(4);
    remote.attempt("mqtt://a:1883");
    remote.connected("mqtt://a:1883");
    remote.disconnected(DisconnectReason::Io);
    remote.attempt("mqtt://u:secret@b:1883");
    remote.connected("mqtt://u:secret@b:1883");
    remote.failover();
    remote.message_out(10);
    local.observe(&mqbridge::broker::BrokerStats {
        clients_connected: 2,
        msgs_in: 9,
        refused_auth: 1,
        dropped_acl: 4,
        held_back: 2,
        held_back_total: 7,
        ..Default::default()
    });

    let board = Arc::new(StatusBoard::new());
    let srv = start(server::ServerState {
        prometheus: handle,
        board,
        collect: None,
        spools: None,
    })
    .await;
    let (code, body) = get(srv.addr, "/metrics").await;
    assert_eq!(code, 200);

    let p = r#"{pipe="edge_to_cloud"}"#;
    for (series, want) in [
        (format!("mqbridge_pipe_messages_received_total{p}"), 3.0),
        (format!("mqbridge_pipe_messages_forwarded_total{p}"), 2.0),
        (format!("mqbridge_pipe_bytes_forwarded_total{p}"), 300.0),
        (format!("mqbridge_pipe_inflight_messages{p}"), 1.0),
        (format!("mqbridge_pipe_queue_depth_messages{p}"), 4.0),
        (
            r#"mqbridge_pipe_messages_dropped_total{pipe="edge_to_cloud",reason="oversize"}"#
                .into(),
            1.0,
        ),
        // Every reason exists from the start, at zero.
        (
            r#"mqbridge_pipe_messages_dropped_total{pipe="edge_to_cloud",reason="rejected"}"#
                .into(),
            0.0,
        ),
        // Histogram: 50 µs falls in the first bucket, 3 ms in le=0.005.
        (
            r#"mqbridge_pipe_forward_latency_seconds_bucket{pipe="edge_to_cloud",le="0.0001"}"#
                .into(),
            1.0,
        ),
        (
            r#"mqbridge_pipe_forward_latency_seconds_bucket{pipe="edge_to_cloud",le="0.0025"}"#
                .into(),
            1.0,
        ),
        (
            r#"mqbridge_pipe_forward_latency_seconds_bucket{pipe="edge_to_cloud",le="0.005"}"#
                .into(),
            2.0,
        ),
        (
            r#"mqbridge_pipe_forward_latency_seconds_bucket{pipe="edge_to_cloud",le="10"}"#.into(),
            2.0,
        ),
        (
            r#"mqbridge_pipe_forward_latency_seconds_bucket{pipe="edge_to_cloud",le="+Inf"}"#
                .into(),
            2.0,
        ),
        (
            format!("mqbridge_pipe_forward_latency_seconds_count{p}"),
            2.0,
        ),
        (r#"mqbridge_remote_connected{broker="cloud"}"#.into(), 1.0),
        (
            r#"mqbridge_remote_endpoint_active{broker="cloud",endpoint="mqtt://a:1883"}"#.into(),
            0.0,
        ),
        (
            r#"mqbridge_remote_endpoint_active{broker="cloud",endpoint="mqtt://b:1883"}"#.into(),
            1.0,
        ),
        (
            r#"mqbridge_remote_connection_attempts_total{broker="cloud",endpoint="mqtt://a:1883"}"#
                .into(),
            1.0,
        ),
        (
            r#"mqbridge_remote_disconnects_total{broker="cloud",reason="io"}"#.into(),
            1.0,
        ),
        (
            r#"mqbridge_remote_failovers_total{broker="cloud"}"#.into(),
            1.0,
        ),
        (
            r#"mqbridge_remote_messages_out_total{broker="cloud"}"#.into(),
            1.0,
        ),
        (
            r#"mqbridge_remote_bytes_out_total{broker="cloud"}"#.into(),
            10.0,
        ),
        (
            r#"mqbridge_broker_clients_connected{broker="edge"}"#.into(),
            2.0,
        ),
        (
            r#"mqbridge_broker_messages_in_total{broker="edge"}"#.into(),
            9.0,
        ),
        (
            r#"mqbridge_broker_connections_refused_total{broker="edge",reason="auth"}"#.into(),
            1.0,
        ),
        (
            r#"mqbridge_broker_messages_dropped_total{broker="edge",reason="acl"}"#.into(),
            4.0,
        ),
        (
            r#"mqbridge_broker_publishes_held_back{broker="edge"}"#.into(),
            2.0,
        ),
        (
            r#"mqbridge_broker_publishes_held_back_total{broker="edge"}"#.into(),
            7.0,
        ),
    ] {
        assert_eq!(value(&body, &series), Some(want), "{series} in:\n{body}");
    }
    assert!(body.contains("# TYPE mqbridge_broker_publishes_held_back gauge"));
    assert!(body.contains("# TYPE mqbridge_broker_publishes_held_back_total counter"));
    assert!(
        body.contains("# TYPE mqbridge_pipe_forward_latency_seconds histogram"),
        "latency must be a real histogram:\n{body}"
    );
    assert!(!body.contains("secret"), "credentials leaked into a label");
    assert!(body.contains(r#"mqbridge_build_info{version=""#));
    srv.stop().await;
}

#[tokio::test]
async fn readyz_follows_brokers_and_stalls() {
    let recorder = builder().expect("builder").build_recorder();
    let handle = recorder.handle();
    let pipe = metrics::with_local_recorder(&recorder, || PipeMetrics::new("wedged"));

    let board = Arc::new(StatusBoard::new());
    board.add_broker("cloud", BrokerKind::Remote, true);
    board.add_broker("aux", BrokerKind::Remote, false);
    board.add_broker("edge", BrokerKind::Builtin, true);
    let srv = start(server::ServerState {
        prometheus: handle.clone(),
        board: board.clone(),
        collect: None,
        spools: None,
    })
    .await;

    let (code, body) = get(srv.addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("broker cloud is not connected"), "{body}");
    let (code, body) = get(srv.addr, "/healthz").await;
    assert_eq!(code, 200, "/healthz is about the process, not readiness");
    assert!(body.contains(r#""status":"alive""#), "{body}");

    board.set_connected("cloud", true, Some("mqtt://a:1883".into()));
    let (code, body) = get(srv.addr, "/readyz").await;
    assert_eq!(
        code, 200,
        "optional broker aux being down must not matter: {body}"
    );
    assert!(body.contains(r#""endpoint":"mqtt://a:1883""#), "{body}");

    // A pipe with pending work and no forward: stalled after stall_after.
    let stall_after = Duration::from_secs(30);
    let mut wd = Watchdog::new(stall_after);
    let progress = Arc::new(std::sync::Mutex::new(PipeProgress {
        forwarded: 0,
        pending: 3,
    }));
    let probe = {
        let progress = progress.clone();
        Arc::new(move || *progress.lock().expect("lock"))
    };
    let pipes = vec![WatchedPipe {
        name: "wedged".into(),
        destination: "cloud".into(),
        metrics: pipe,
        probe,
    }];
    let mut known = Default::default();
    let t0 = Instant::now();
    assert!(check_pipes(&mut wd, &pipes, &mut known, &board, t0).is_empty());
    let actions = check_pipes(&mut wd, &pipes, &mut known, &board, t0 + stall_after);
    assert_eq!(
        actions.len(),
        1,
        "the stall asks for a destination reconnect"
    );

    let (code, body) = get(srv.addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("pipe wedged is stalled"), "{body}");
    let (_, metrics) = get(srv.addr, "/metrics").await;
    assert_eq!(
        value(&metrics, r#"mqbridge_pipe_stalls_total{pipe="wedged"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&metrics, r#"mqbridge_pipe_stalled{pipe="wedged"}"#),
        Some(1.0)
    );

    // Forwards resume: ready again; the stall stays counted once.
    *progress.lock().expect("lock") = PipeProgress {
        forwarded: 3,
        pending: 0,
    };
    check_pipes(&mut wd, &pipes, &mut known, &board, t0 + stall_after * 2);
    let (code, body) = get(srv.addr, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""state":"idle""#), "{body}");
    let (_, metrics) = get(srv.addr, "/metrics").await;
    assert_eq!(
        value(&metrics, r#"mqbridge_pipe_stalls_total{pipe="wedged"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&metrics, r#"mqbridge_pipe_stalled{pipe="wedged"}"#),
        Some(0.0)
    );

    // A pipe removed by a reload disappears from /readyz.
    check_pipes(&mut wd, &[], &mut known, &board, t0 + stall_after * 3);
    let (_, body) = get(srv.addr, "/readyz").await;
    assert!(!body.contains("wedged"), "{body}");

    let (code, _) = get(srv.addr, "/nope").await;
    assert_eq!(code, 404);
    srv.stop().await;
}

#[tokio::test]
async fn collector_copies_sampled_counters_and_histogram_on_scrape() {
    use mqbridge::metrics::PipeSample;
    use mqbridge::metrics::pipe::LatencySample;
    use std::sync::atomic::{AtomicU64, Ordering};

    let recorder = builder().expect("builder").build_recorder();
    let handle = recorder.handle();
    let pipe = metrics::with_local_recorder(&recorder, || PipeMetrics::new("sampled"));
    // Stand-in for a pipe's own atomics.
    let forwarded = Arc::new(AtomicU64::new(0));
    let collect = {
        let forwarded = forwarded.clone();
        let pipe = pipe.clone();
        server::Collector(Arc::new(move || {
            let n = forwarded.load(Ordering::Relaxed);
            pipe.observe(&PipeSample {
                received: n + 1,
                forwarded: n,
                bytes_forwarded: n * 10,
                ..PipeSample::default()
            });
            let mut buckets = vec![0; 17];
            buckets[3] = n; // n observations of ~0.7 ms
            pipe.observe_latency(&LatencySample {
                buckets,
                sum: Duration::from_micros(700 * n),
            });
        }))
    };
    let srv = start_collecting(handle, collect).await;
    for n in [5u64, 12] {
        forwarded.store(n, Ordering::Relaxed);
        let (_, body) = get(srv.addr, "/metrics").await;
        let p = r#"{pipe="sampled"}"#;
        assert_eq!(
            value(&body, &format!("mqbridge_pipe_messages_forwarded_total{p}")),
            Some(n as f64),
            "{body}"
        );
        // Scraping twice never double counts: histogram totals follow the source.
        assert_eq!(
            value(
                &body,
                &format!("mqbridge_pipe_forward_latency_seconds_count{p}")
            ),
            Some(n as f64),
            "{body}"
        );
        assert_eq!(
            value(
                &body,
                r#"mqbridge_pipe_forward_latency_seconds_bucket{pipe="sampled",le="0.0005"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &body,
                r#"mqbridge_pipe_forward_latency_seconds_bucket{pipe="sampled",le="0.001"}"#
            ),
            Some(n as f64)
        );
        let sum = value(
            &body,
            &format!("mqbridge_pipe_forward_latency_seconds_sum{p}"),
        )
        .expect("sum");
        assert!((sum - 0.0007 * n as f64).abs() < 1e-6, "sum {sum}");
    }
    srv.stop().await;
}

/// Rendering and sampling run off the runtime's thread, so forwarding goes on
/// while a scrape renders: here (a current-thread runtime, as `mqbridge run`
/// uses) the collector blocks until a task on that runtime answers it. Were
/// it called on the runtime's thread, the answer could never come: the
/// collector gives up after `WAIT` and the test fails.
#[tokio::test]
async fn rendering_leaves_the_runtime_thread_free() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Mutex, mpsc};

    let recorder = builder().expect("builder").build_recorder();
    let handle = recorder.handle();
    let (asked_tx, mut asked_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (answer_tx, answer_rx) = mpsc::channel::<()>();
    let answer_rx = Mutex::new(answer_rx);
    let stuck = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let collect = {
        let (stuck, answered) = (stuck.clone(), answered.clone());
        server::Collector(Arc::new(move || {
            let _ = asked_tx.send(());
            let got = answer_rx
                .lock()
                .map(|rx| rx.recv_timeout(common::wait::WAIT).is_ok())
                .unwrap_or(false);
            if got {
                answered.fetch_add(1, Ordering::Relaxed);
            } else {
                stuck.store(true, Ordering::Relaxed);
            }
        }))
    };
    // The runtime's side: answers every collector call.
    let responder = tokio::spawn(async move {
        while asked_rx.recv().await.is_some() {
            let _ = answer_tx.send(());
        }
    });
    let srv = start_collecting(handle, collect).await;
    let (code, _) = get(srv.addr, "/metrics").await;
    assert_eq!(code, 200);
    let (code, _) = get(srv.addr, "/status.json").await;
    assert_eq!(code, 200);
    assert!(
        !stuck.load(Ordering::Relaxed),
        "a collector call waited for the runtime in vain: it ran on the runtime's thread"
    );
    // The scrape, the status and the upkeep's first sample.
    assert!(answered.load(Ordering::Relaxed) >= 2);
    srv.stop().await;
    responder.abort();
}

#[test]
fn client_events_drive_remote_metrics_and_readiness() {
    use mqbridge::client::{ClientEvent, ErrorKind, Stage};
    use mqbridge::run::client_events::ClientEventSink;

    let recorder = builder().expect("builder").build_recorder();
    let handle = recorder.handle();
    let (a, b) = ("mqtt://a.tls.example:1883", "mqtt://b:1883");
    let remote = metrics::with_local_recorder(&recorder, || {
        RemoteBrokerMetrics::new("cloud", &[a.to_string(), b.to_string()])
    });
    let board = Arc::new(StatusBoard::new());
    board.add_broker("cloud", BrokerKind::Remote, true);
    let mut sink = ClientEventSink::new(remote, board.clone());

    let attempt = |ep: &str| ClientEvent::ConnectAttempt {
        endpoint: ep.into(),
    };
    let connected = |ep: &str| ClientEvent::Connected {
        endpoint: ep.into(),
        session_present: false,
    };
    for ev in [
        attempt(a),
        // A failed attempt: the host name mentions "tls", the kind is IO.
        ClientEvent::Disconnected {
            endpoint: a.into(),
            kind: ErrorKind::Closed,
            reason: format!("{a}: connection closed by broker"),
        },
        attempt(a),
        // No CONNACK in time: nothing answered, so IO (as text it read as
        // `refused`, and a TCP/TLS connect timeout as `tls`).
        ClientEvent::Disconnected {
            endpoint: a.into(),
            kind: ErrorKind::Timeout(Stage::Connack),
            reason: format!("{a}: timed out waiting for CONNACK"),
        },
        attempt(a),
        connected(a),
    ] {
        sink.apply(&ev);
    }
    assert!(board.readiness().ready);
    for ev in [
        ClientEvent::Disconnected {
            endpoint: a.into(),
            kind: ErrorKind::KeepaliveTimeout,
            reason: format!("{a}: keepalive timeout, no answer from broker"),
        },
        ClientEvent::Failover {
            from: a.into(),
            to: b.into(),
        },
        attempt(b),
    ] {
        sink.apply(&ev);
    }
    assert!(!board.readiness().ready, "required broker down");
    sink.apply(&connected(b));
    assert!(board.readiness().ready);
    // Failback: the secondary is left on purpose, then the primary connects.
    sink.apply(&ClientEvent::Failback { to: a.into() });
    assert!(!board.readiness().ready);
    sink.apply(&attempt(a));
    sink.apply(&connected(a));
    assert!(board.readiness().ready);

    let body = handle.render();
    for (series, want) in [
        (
            r#"mqbridge_remote_connection_attempts_total{broker="cloud",endpoint="mqtt://a.tls.example:1883"}"#,
            4.0,
        ),
        (
            r#"mqbridge_remote_disconnects_total{broker="cloud",reason="requested"}"#,
            1.0,
        ),
        (
            r#"mqbridge_remote_connection_attempts_total{broker="cloud",endpoint="mqtt://b:1883"}"#,
            1.0,
        ),
        (
            r#"mqbridge_remote_connect_failures_total{broker="cloud",reason="io"}"#,
            2.0,
        ),
        (
            r#"mqbridge_remote_connect_failures_total{broker="cloud",reason="tls"}"#,
            0.0,
        ),
        (
            r#"mqbridge_remote_connect_failures_total{broker="cloud",reason="refused"}"#,
            0.0,
        ),
        (
            r#"mqbridge_remote_disconnects_total{broker="cloud",reason="keepalive_timeout"}"#,
            1.0,
        ),
        (r#"mqbridge_remote_failovers_total{broker="cloud"}"#, 1.0),
        (r#"mqbridge_remote_failbacks_total{broker="cloud"}"#, 1.0),
        (r#"mqbridge_remote_connected{broker="cloud"}"#, 1.0),
        (
            r#"mqbridge_remote_endpoint_active{broker="cloud",endpoint="mqtt://b:1883"}"#,
            0.0,
        ),
        (
            r#"mqbridge_remote_endpoint_active{broker="cloud",endpoint="mqtt://a.tls.example:1883"}"#,
            1.0,
        ),
    ] {
        assert_eq!(value(&body, series), Some(want), "{series} in:\n{body}");
    }
    sink.closed();
    assert!(!board.readiness().ready);
}
