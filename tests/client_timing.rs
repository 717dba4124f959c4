//! Reconnect timing of the client task with paused tokio time: the backoff
//! schedule as the task really applies it (no sockets involved: the TLS
//! configuration is unusable, so every attempt fails before dialing).

use std::time::Duration;

use mqbridge::client::{self, ClientEvent, ClientOptions, Endpoint};
use mqbridge::link::LinkState;
use tokio::sync::broadcast;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::test(start_paused = true)]
async fn failing_attempts_follow_the_capped_backoff_schedule() {
    let mut opts = ClientOptions::new(
        "timing",
        vec![Endpoint::tls("127.0.0.1", 1)],
        "timing-client",
    );
    opts.tls.ca_file = Some("/nonexistent/ca.pem".into());
    opts.backoff.min = Duration::from_millis(100);
    opts.backoff.max = Duration::from_millis(1000);
    opts.backoff.jitter = true;
    let (tx, mut events) = broadcast::channel(64);
    opts.events = Some(tx);
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (link, _rx) = client::spawn(opts, shutdown.clone(), &tracker);

    let start = Instant::now();
    let mut attempts = Vec::new();
    let mut reason = String::new();
    while attempts.len() < 8 {
        match timeout(Duration::from_secs(60), events.recv()).await {
            Ok(Ok(ClientEvent::ConnectAttempt { .. })) => attempts.push(start.elapsed()),
            Ok(Ok(ClientEvent::Disconnected { reason: r, .. })) => reason = r,
            Ok(Ok(_)) => {}
            other => panic!("no attempt: {other:?}"),
        }
    }
    assert!(reason.contains("/nonexistent/ca.pem"), "{reason}");
    let gaps: Vec<_> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    // Exponential with jitter: each gap in [d, 2d] for d = 100, 200, 400, 800
    // ms, then capped at 1 s *including* jitter.
    let mut d = Duration::from_millis(100);
    for gap in &gaps {
        let hi = (d * 2).min(Duration::from_millis(1000));
        assert!(
            *gap >= d && *gap <= hi,
            "gap {gap:?} outside [{d:?}, {hi:?}]: {gaps:?}"
        );
        d = (d * 2).min(Duration::from_millis(1000));
    }
    assert!(matches!(
        *link.state().borrow(),
        LinkState::Connecting { .. } | LinkState::Disconnected { .. }
    ));
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    assert_eq!(*link.state().borrow(), LinkState::Closed);
}

/// A forced reconnect (the stall watchdog's hook, `ClientOptions::reconnect`)
/// cuts a backoff wait short: the next attempt comes at once, not after the
/// 30 s delay.
#[tokio::test(start_paused = true)]
async fn forced_reconnect_interrupts_the_backoff_wait() {
    let mut opts = ClientOptions::new(
        "forced",
        vec![Endpoint::tls("127.0.0.1", 1)],
        "forced-client",
    );
    opts.tls.ca_file = Some("/nonexistent/ca.pem".into());
    opts.backoff.min = Duration::from_secs(30);
    opts.backoff.max = Duration::from_secs(30);
    opts.backoff.jitter = false;
    let notify = std::sync::Arc::new(tokio::sync::Notify::new());
    opts.reconnect = Some(notify.clone());
    let (tx, mut events) = broadcast::channel(64);
    opts.events = Some(tx);
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (_link, _rx) = client::spawn(opts, shutdown.clone(), &tracker);

    // First attempt fails; the task then waits 30 s.
    loop {
        match timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(ClientEvent::Disconnected { .. })) => break,
            Ok(Ok(_)) => {}
            other => panic!("no failed attempt: {other:?}"),
        }
    }
    let failed_at = Instant::now();
    // `notify_waiters` reaches only a task already waiting: ask every 100 ms
    // (as the watchdog asks again) until the next attempt starts.
    let next = async {
        loop {
            tokio::select! {
                ev = events.recv() => if let Ok(ClientEvent::ConnectAttempt { .. }) = ev {
                    return;
                },
                () = tokio::time::sleep(Duration::from_millis(100)) => notify.notify_waiters(),
            }
        }
    };
    timeout(Duration::from_secs(2), next)
        .await
        .expect("a forced reconnect starts an attempt during the backoff wait");
    assert!(failed_at.elapsed() < Duration::from_secs(2));
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
}
