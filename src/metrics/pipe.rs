//! Cached metric handles of one pipe.

use std::sync::{Arc, Mutex, PoisonError};
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

/// A cumulative latency histogram kept elsewhere (e.g. the pipe's own
/// atomics) with the bucket bounds of [`LATENCY_BUCKETS_SECONDS`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencySample {
    /// Non-cumulative count per bucket of [`LATENCY_BUCKETS_SECONDS`], then `+Inf`.
    pub buckets: Vec<u64>,
    /// Sum of all observations.
    pub sum: Duration,
}

/// Turns per-bucket count deltas and their total (seconds) into
/// `(value, count)` observations that land in exactly those buckets and add
/// up to `sum` (as far as the bucket ranges allow). Pure.
///
/// Each bucket gets one representative value inside its range `(lo, hi]`,
/// all at the same relative position, chosen so the total matches; excess
/// beyond the last finite bound goes to the `+Inf` bucket.
pub fn synthesize(deltas: &[u64], sum: f64) -> Vec<(f64, u64)> {
    let n = LATENCY_BUCKETS_SECONDS.len();
    let range = |i: usize| {
        let lo = if i == 0 {
            0.0
        } else {
            LATENCY_BUCKETS_SECONDS.get(i - 1).copied().unwrap_or(0.0)
        };
        (lo, LATENCY_BUCKETS_SECONDS.get(i).copied())
    };
    let mut floor = 0.0;
    let mut capacity = 0.0;
    for (i, &d) in deltas.iter().enumerate().take(n + 1) {
        let (lo, hi) = range(i);
        floor += d as f64 * lo;
        if let Some(hi) = hi {
            capacity += d as f64 * (hi - lo);
        }
    }
    let excess = (sum - floor).max(0.0);
    let fill = if capacity > 0.0 {
        (excess / capacity).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let overflow = (excess - fill * capacity).max(0.0);
    let mut out = Vec::new();
    for (i, &d) in deltas.iter().enumerate().take(n + 1) {
        if d == 0 {
            continue;
        }
        let (lo, hi) = range(i);
        let v = match hi {
            Some(hi) => {
                let width = hi - lo;
                (lo + fill * width).clamp(lo + width * 1e-6, hi)
            }
            None => lo + (overflow / d as f64).max(lo * 1e-6),
        };
        out.push((v, d));
    }
    out
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
    queue_capacity: Gauge,
    latency: Histogram,
    fsync: Histogram,
    last_fsync: Arc<Mutex<LatencySample>>,
    stalls: Counter,
    stalled: Gauge,
    /// Last latency totals seen by [`PipeMetrics::observe_latency`]. A std
    /// Mutex: short section, no `.await`, only the sampler takes it.
    last_latency: Arc<Mutex<LatencySample>>,
}

impl PipeMetrics {
    /// Registers (or looks up) every series of pipe `pipe` in the current recorder.
    pub fn new(pipe: &str) -> Self {
        let p = pipe.to_owned();
        let dropped = DropReason::ALL.map(|r| {
            counter!(PIPE_MESSAGES_DROPPED, LABEL_PIPE => p.clone(), LABEL_REASON => r.as_str())
        });
        PipeMetrics {
            received: counter!(PIPE_MESSAGES_RECEIVED, LABEL_PIPE => p.clone()),
            forwarded: counter!(PIPE_MESSAGES_FORWARDED, LABEL_PIPE => p.clone()),
            bytes_forwarded: counter!(PIPE_BYTES_FORWARDED, LABEL_PIPE => p.clone()),
            dropped,
            inflight: gauge!(PIPE_INFLIGHT_MESSAGES, LABEL_PIPE => p.clone()),
            queue_depth: gauge!(PIPE_QUEUE_DEPTH_MESSAGES, LABEL_PIPE => p.clone()),
            queue_capacity: gauge!(PIPE_QUEUE_CAPACITY_MESSAGES, LABEL_PIPE => p.clone()),
            latency: histogram!(PIPE_FORWARD_LATENCY_SECONDS, LABEL_PIPE => p.clone()),
            fsync: histogram!(PIPE_SPOOL_FSYNC_SECONDS, LABEL_PIPE => p.clone()),
            last_fsync: Arc::default(),
            stalls: counter!(PIPE_STALLS, LABEL_PIPE => p.clone()),
            stalled: gauge!(PIPE_STALLED, LABEL_PIPE => p),
            last_latency: Arc::default(),
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

    /// The queue's size (`queue.size`), set at start and on each reload.
    pub fn set_queue_capacity(&self, n: usize) {
        self.queue_capacity.set(n as f64);
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

    /// Copies a cumulative latency histogram kept elsewhere: the growth since
    /// the previous call is recorded, bucket for bucket, with the exact count
    /// and (within the bucket ranges) the exact sum. See [`synthesize`].
    pub fn observe_latency(&self, total: &LatencySample) {
        record_delta(&self.latency, &self.last_latency, total);
    }

    /// Like [`PipeMetrics::observe_latency`], for the spool's write → durable
    /// times (`mqbridge_pipe_spool_fsync_seconds`).
    pub fn observe_fsync(&self, total: &LatencySample) {
        record_delta(&self.fsync, &self.last_fsync, total);
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

/// Records into `histogram` what `total` gained since `last` (then `last = total`).
fn record_delta(histogram: &Histogram, last: &Mutex<LatencySample>, total: &LatencySample) {
    let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
    let deltas: Vec<u64> = total
        .buckets
        .iter()
        .enumerate()
        .map(|(i, &v)| v.saturating_sub(last.buckets.get(i).copied().unwrap_or(0)))
        .collect();
    let sum = total.sum.saturating_sub(last.sum).as_secs_f64();
    for (value, count) in synthesize(&deltas, sum) {
        histogram.record_many(value, usize::try_from(count).unwrap_or(usize::MAX));
    }
    *last = total.clone();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket_of(v: f64) -> usize {
        LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len())
    }

    fn check(deltas: &[u64], sum: f64) -> f64 {
        let obs = synthesize(deltas, sum);
        let mut got = vec![0u64; deltas.len()];
        let mut total = 0.0;
        for (v, c) in obs {
            got[bucket_of(v)] += c;
            total += v * c as f64;
        }
        assert_eq!(got, deltas, "every observation lands in its bucket");
        total
    }

    #[test]
    fn synthesized_observations_keep_buckets_and_sum() {
        let n = LATENCY_BUCKETS_SECONDS.len() + 1;
        let mut d = vec![0u64; n];
        // 10 × ~0.7 ms (bucket le=0.001) and 2 × ~3 ms (le=0.005).
        d[3] = 10;
        d[5] = 2;
        let sum = 10.0 * 0.0007 + 2.0 * 0.003;
        let total = check(&d, sum);
        assert!((total - sum).abs() < 1e-9, "{total} vs {sum}");
        // Overflow beyond 10 s goes to +Inf with the excess.
        let mut d = vec![0u64; n];
        d[n - 1] = 2;
        let total = check(&d, 50.0);
        assert!((total - 50.0).abs() < 1e-9, "{total}");
        // Inconsistent input (sum below the floor) still lands in the right buckets.
        let mut d = vec![0u64; n];
        d[10] = 3;
        check(&d, 0.0);
        assert!(synthesize(&vec![0; n], 0.0).is_empty());
    }
}
