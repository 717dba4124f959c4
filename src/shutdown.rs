//! Process-wide shutdown: a [`CancellationToken`] that every task watches and a
//! [`TaskTracker`] that every spawned task is registered with, so the caller
//! can wait for all of them to finish.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The shutdown token plus the tracker of every task started under it.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh, not yet cancelled shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps an existing token (e.g. one a test holds).
    pub fn from_token(token: CancellationToken) -> Self {
        Shutdown {
            token,
            tracker: TaskTracker::new(),
        }
    }

    /// The token; cancelled when shutdown starts.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The tracker every task should be spawned on.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Starts shutdown.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Waits until every tracked task has ended (closes the tracker first).
    pub async fn wait_tasks(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops the bridge");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_tasks_returns_after_tracked_tasks_end() {
        let sd = Shutdown::new();
        let token = sd.token().clone();
        sd.tracker().spawn(async move { token.cancelled().await });
        sd.trigger();
        tokio::time::timeout(std::time::Duration::from_secs(5), sd.wait_tasks())
            .await
            .expect("tracked task ends after cancel");
    }
}
