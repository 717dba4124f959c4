//! Spool state as plain data, for the metrics, `/readyz`, `/spool.json` and
//! `mqbridge spool`; and the gauges it feeds.

use std::sync::Arc;

use metrics::{counter, gauge};
use serde::{Deserialize, Serialize};

use super::names::*;

/// A spool at or above this fraction of its bound is reported by `/readyz`
/// (a warning; the bridge stays ready).
pub const SPOOL_WARN_FILL: f64 = 0.8;

/// One pipe's spool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpoolRow {
    /// The pipe.
    pub pipe: String,
    /// No running pipe uses it (kept until `mqbridge spool --drop`).
    pub orphaned: bool,
    /// Records written and not acknowledged by the destination.
    pub depth: u64,
    /// Their encoded bytes.
    pub bytes: u64,
    /// The pipe's bound (`spool.max_bytes`, else `storage.max_bytes`).
    pub max_bytes: u64,
    /// Age of the oldest record in seconds (0 when empty).
    pub oldest_age_seconds: f64,
    /// Bytes the spool's tables take on disk.
    pub disk_bytes: u64,
    /// Records found intact when the spool was opened.
    pub recovered: u64,
    /// Records found damaged (at open or on read) and skipped.
    pub damaged: u64,
}

impl SpoolRow {
    /// `bytes / max_bytes`.
    pub fn fill(&self) -> f64 {
        if self.max_bytes == 0 {
            0.0
        } else {
            self.bytes as f64 / self.max_bytes as f64
        }
    }
}

/// The store as a whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreRow {
    /// Bytes the store's files take (tables and journal).
    pub used_bytes: u64,
    /// Bytes free on the store's file system (for unprivileged users).
    pub free_bytes: u64,
}

/// Every spool and the store, read on demand.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpoolReport {
    /// The spools, by pipe name.
    pub spools: Vec<SpoolRow>,
    /// The store.
    pub store: StoreRow,
}

impl SpoolReport {
    /// One line per spool at or above [`SPOOL_WARN_FILL`] of its bound.
    pub fn warnings(&self) -> Vec<String> {
        self.spools
            .iter()
            .filter(|s| s.fill() >= SPOOL_WARN_FILL)
            .map(|s| {
                format!(
                    "spool of pipe {} is {:.0}% full ({} of {} bytes)",
                    s.pipe,
                    s.fill() * 100.0,
                    s.bytes,
                    s.max_bytes
                )
            })
            .collect()
    }

    /// Sets the spool and store gauges.
    pub fn observe(&self) {
        for s in &self.spools {
            let p = s.pipe.clone();
            gauge!(PIPE_SPOOL_MESSAGES, LABEL_PIPE => p.clone()).set(s.depth as f64);
            gauge!(PIPE_SPOOL_BYTES, LABEL_PIPE => p.clone()).set(s.bytes as f64);
            gauge!(PIPE_SPOOL_OLDEST_AGE_SECONDS, LABEL_PIPE => p.clone())
                .set(s.oldest_age_seconds);
            gauge!(PIPE_SPOOL_DISK_BYTES, LABEL_PIPE => p.clone()).set(s.disk_bytes as f64);
            gauge!(PIPE_SPOOL_RECOVERED_RECORDS, LABEL_PIPE => p.clone()).set(s.recovered as f64);
            counter!(PIPE_SPOOL_DAMAGED_RECORDS, LABEL_PIPE => p).absolute(s.damaged);
        }
        gauge!(STORE_DISK_USED_BYTES).set(self.store.used_bytes as f64);
        gauge!(STORE_DISK_FREE_BYTES).set(self.store.free_bytes as f64);
    }
}

/// Reads the current [`SpoolReport`].
#[derive(Clone)]
pub struct SpoolView(pub Arc<dyn Fn() -> SpoolReport + Send + Sync>);

impl std::fmt::Debug for SpoolView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpoolView")
    }
}
