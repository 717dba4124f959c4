//! The shared status board that `/readyz` and `/healthz` read.
//!
//! Writers: the link watchers (broker connected state) and the watchdog task
//! (pipe states). A std `Mutex` is enough: every section is a few map
//! operations with no `.await` inside.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::health::{BrokerKind, BrokerStatus, PipeStatus, Readiness, readiness};

#[derive(Debug, Default)]
struct Inner {
    brokers: BTreeMap<String, BrokerStatus>,
    pipes: BTreeMap<String, PipeStatus>,
}

/// Shared, cheap-to-update health state. Wrap it in an `Arc`.
#[derive(Debug)]
pub struct StatusBoard {
    started: Instant,
    inner: Mutex<Inner>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusBoard {
    /// An empty board (ready: nothing is required yet).
    pub fn new() -> Self {
        StatusBoard {
            started: Instant::now(),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps inconsistent
        // (single inserts/removes), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the board (the process) started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Declares a broker (initially not connected, unless built-in).
    pub fn add_broker(&self, name: &str, kind: BrokerKind, required: bool) {
        self.lock().brokers.insert(
            name.to_owned(),
            BrokerStatus {
                name: name.to_owned(),
                kind,
                required,
                connected: kind == BrokerKind::Builtin,
                endpoint: None,
            },
        );
    }

    /// Forgets a broker (removed by a reload).
    pub fn remove_broker(&self, name: &str) {
        self.lock().brokers.remove(name);
    }

    /// Changes whether readiness requires a broker (a reload).
    pub fn set_required(&self, name: &str, required: bool) {
        if let Some(b) = self.lock().brokers.get_mut(name) {
            b.required = required;
        }
    }

    /// Records the connection state of a broker (`endpoint` when connected).
    pub fn set_connected(&self, name: &str, connected: bool, endpoint: Option<String>) {
        if let Some(b) = self.lock().brokers.get_mut(name) {
            b.connected = connected;
            b.endpoint = endpoint;
        }
    }

    /// Stores the latest watchdog status of a pipe.
    pub fn set_pipe(&self, status: PipeStatus) {
        self.lock().pipes.insert(status.name.clone(), status);
    }

    /// Forgets a pipe (removed by a reload).
    pub fn remove_pipe(&self, name: &str) {
        self.lock().pipes.remove(name);
    }

    /// The current readiness verdict.
    pub fn readiness(&self) -> Readiness {
        let inner = self.lock();
        let brokers = inner.brokers.values().cloned().collect();
        let pipes = inner.pipes.values().cloned().collect();
        drop(inner);
        readiness(brokers, pipes)
    }
}
