//! Bounded waits: every awaited event in a test has a deadline, so a hang
//! fails fast instead of stalling the suite.

use std::future::Future;
use std::time::Duration;

/// Upper bound for one awaited event.
pub const WAIT: Duration = Duration::from_secs(10);

/// The same bound under the name the broker tests use.
pub const STEP: Duration = WAIT;

/// Awaits `f` or fails the test after [`STEP`].
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .expect("timed out waiting for an event")
}

/// Waits until `cond` holds (state with no event of its own, e.g. a gauge),
/// checking every few milliseconds, failing after [`STEP`].
pub async fn wait_until(mut cond: impl FnMut() -> bool) {
    within(async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}
