//! Cached metric handles of one pipe.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use super::names::*;
use super::reasons::DropReason;

/// Cumulative totals of a pipe, e.g. read from the pipe's own atomics;
/// see [`PipeMetrics::observe`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipeSample {
    /// Messages received so far.
    pub received: u64,
    /// Messages forwarded so far.
    pub forwarded: u64,
    /// Payload bytes forwarded so far.
    pub bytes_forwarded: u64,
    /// Messages dropped so far, indexed like [`DropReason::ALL`].
    pub dropped: [u64; DropReason::ALL.len()],
    /// Messages currently inflight at the destination.
    pub inflight: u64,
    /// Messages currently queued.
    pub queue_depth: u64,
}

/// Metric handles of one pipe, created once (label lookup happens here, not
/// per message). Cheap to clone; all clones update the same series.
#[derive(Debug, Clone)]
pub struct PipeMetrics {
    received: Counter,
    forwarded: Counter,
    bytes_forwarded: Counter,
    dropped: [Counter; DropReason::ALL.len()],
    inflight: Gauge,
    queue_depth: Gauge,
    latency: Histogram,
    stalls: Counter,
    stalled: Gauge,
}

impl PipeMetrics {
    /// Registers (or looks up) every series of pipe `pipe` in the current recorder.
    pub fn new(pipe: &str) -> Self {
        let p = pipe.to_owned();
        let dropped = DropReason::ALL.map(|r| {
            counter!(PIPE_MESSAGES_DROPPED, LABEL_PIPE => p.clone(), LABEL_REASON => r.as_label())
        });
        PipeMetrics {
            received: counter!(PIPE_MESSAGES_RECEIVED, LABEL_PIPE => p.clone()),
            forwarded: counter!(PIPE_MESSAGES_FORWARDED, LABEL_PIPE => p.clone()),
            bytes_forwarded: counter!(PIPE_BYTES_FORWARDED, LABEL_PIPE => p.clone()),
            dropped,
            inflight: gauge!(PIPE_INFLIGHT_MESSAGES, LABEL_PIPE => p.clone()),
            queue_depth: gauge!(PIPE_QUEUE_DEPTH_MESSAGES, LABEL_PIPE => p.clone()),
            latency: histogram!(PIPE_FORWARD_LATENCY_SECONDS, LABEL_PIPE => p.clone()),
            stalls: counter!(PIPE_STALLS, LABEL_PIPE => p.clone()),
            stalled: gauge!(PIPE_STALLED, LABEL_PIPE => p),
        }
    }

    /// One message taken from the source.
    pub fn received(&self) {
        self.received.increment(1);
    }

    /// One message acknowledged by the destination, `bytes` of payload,
    /// `latency` from source receive to destination ack.
    pub fn forwarded(&self, bytes: usize, latency: Duration) {
        self.forwarded.increment(1);
        self.bytes_forwarded.increment(bytes as u64);
        self.latency.record(latency.as_secs_f64());
    }

    /// One message dropped on purpose.
    pub fn dropped(&self, reason: DropReason) {
        self.dropped_n(reason, 1);
    }

    /// `n` messages dropped for the same reason.
    pub fn dropped_n(&self, reason: DropReason, n: u64) {
        if let Some(c) = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.dropped.get(i))
        {
            c.increment(n);
        }
    }

    /// Current number of inflight messages.
    pub fn set_inflight(&self, n: u64) {
        self.inflight.set(n as f64);
    }

    /// Current queue depth.
    pub fn set_queue_depth(&self, n: u64) {
        self.queue_depth.set(n as f64);
    }

    /// Records a forward latency without counting a message (e.g. when the
    /// counters come from [`PipeMetrics::observe`]).
    pub fn record_latency(&self, latency: Duration) {
        self.latency.record(latency.as_secs_f64());
    }

    /// Copies cumulative totals and current levels from a sample (counters
    /// are set to the absolute values, so sampling twice counts nothing twice).
    pub fn observe(&self, s: &PipeSample) {
        self.received.absolute(s.received);
        self.forwarded.absolute(s.forwarded);
        self.bytes_forwarded.absolute(s.bytes_forwarded);
        for (c, v) in self.dropped.iter().zip(s.dropped.iter()) {
            c.absolute(*v);
        }
        self.set_inflight(s.inflight);
        self.set_queue_depth(s.queue_depth);
    }

    /// A stall episode started (counted once per episode).
    pub fn stall_started(&self) {
        self.stalls.increment(1);
        self.stalled.set(1.0);
    }

    /// The stall episode ended.
    pub fn stall_ended(&self) {
        self.stalled.set(0.0);
    }
}
