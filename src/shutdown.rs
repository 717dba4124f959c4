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

/// SIGINT (Ctrl-C) and SIGTERM listeners, registered when created: create
/// it before starting anything, so an early signal is not lost to the
/// default action (which would kill the process without a drain).
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Registers the handlers (inside a tokio runtime).
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(err) => {
                    tracing::warn!(signal = name, error = %err, "cannot listen for signal");
                    None
                }
            };
            Signals {
                int: listen(SignalKind::interrupt(), "SIGINT"),
                term: listen(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    /// Resolves on the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = next(&mut self.int) => {}
                () = next(&mut self.term) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

impl Default for Signals {
    fn default() -> Self {
        Self::new()
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
