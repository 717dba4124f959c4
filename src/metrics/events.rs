//! Telemetry as events: one small struct per occurrence that logs and counts.
//!
//! Lifecycle events log at info/warn; nothing here is per message.

use std::time::Duration;

use metrics::counter;
use tracing::{info, warn};

use super::names::{RELOAD_FAILURES, RELOADS};
use super::pipe::PipeMetrics;

/// A pipe entered a stall (logged once per episode, counted).
#[derive(Debug)]
pub struct PipeStalled<'a> {
    /// Pipe name.
    pub pipe: &'a str,
    /// Destination broker whose link will be reconnected.
    pub destination: &'a str,
    /// Messages queued plus inflight.
    pub pending: u64,
    /// Time since the last completed forward.
    pub idle_for: Duration,
}

impl PipeStalled<'_> {
    /// Logs at warn and counts `mqbridge_pipe_stalls_total`.
    pub fn emit(self, m: &PipeMetrics) {
        warn!(
            pipe = %self.pipe,
            broker = %self.destination,
            pending = self.pending,
            idle_secs = self.idle_for.as_secs(),
            "pipe stalled: no forward completed; reconnecting destination"
        );
        m.stall_started();
    }
}

/// A stalled pipe forwards again.
#[derive(Debug)]
pub struct PipeRecovered<'a> {
    /// Pipe name.
    pub pipe: &'a str,
    /// How long the stall lasted.
    pub stalled_for: Duration,
}

impl PipeRecovered<'_> {
    /// Logs at info and clears `mqbridge_pipe_stalled`.
    pub fn emit(self, m: &PipeMetrics) {
        info!(pipe = %self.pipe, stalled_secs = self.stalled_for.as_secs(), "pipe recovered from stall");
        m.stall_ended();
    }
}

/// A configuration reload was applied.
#[derive(Debug)]
pub struct ReloadApplied<'a> {
    /// What was applied live, one item per change (e.g. `pipe up restarted`).
    pub applied: &'a [String],
    /// Valid changes that only take effect after a restart (e.g. `broker edge changed (built-in broker settings need a restart)`).
    pub pending: &'a [String],
}

impl ReloadApplied<'_> {
    /// Logs at info (and the pending changes at warn) and counts `mqbridge_reloads_total`.
    pub fn emit(self) {
        info!(applied = %super::jsonlog::list(self.applied), "configuration reloaded");
        if !self.pending.is_empty() {
            warn!(
                pending = %super::jsonlog::list(self.pending),
                "configuration changes not applied while running; restart mqbridge to apply them"
            );
        }
        counter!(RELOADS).increment(1);
    }
}

/// A configuration reload was rejected; the old configuration keeps running.
#[derive(Debug)]
pub struct ReloadFailed<'a> {
    /// Every error, one per line as the config compiler reports them.
    pub errors: &'a [String],
}

impl ReloadFailed<'_> {
    /// Logs every error at warn and counts `mqbridge_reload_failures_total`.
    pub fn emit(self) {
        for e in self.errors {
            warn!(error = %e, "reload rejected: configuration error");
        }
        warn!(
            errors = self.errors.len(),
            "reload rejected; keeping the running configuration"
        );
        counter!(RELOAD_FAILURES).increment(1);
    }
}
