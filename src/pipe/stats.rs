//! Per-pipe counters as plain atomics. The observability layer reads them
//! (e.g. on each Prometheus scrape) without touching the hot path: every field
//! maps to one metric, named in its doc line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use crate::metrics::DropReason;

/// Upper bounds of the forward-latency histogram buckets (source receive →
/// destination ack); an implicit `+Inf` bucket follows.
pub const LATENCY_BUCKETS: [Duration; 16] = [
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_micros(2_500_000),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

/// A fixed-bucket latency histogram (non-cumulative counts per bucket).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Count per bucket of [`LATENCY_BUCKETS`]; the last slot is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of all observations in microseconds.
    sum_micros: AtomicU64,
    /// Number of observations.
    count: AtomicU64,
}

impl LatencyHistogram {
    /// Adds one observation.
    pub fn observe(&self, d: Duration) {
        let idx = LATENCY_BUCKETS
            .iter()
            .position(|b| d <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        if let Some(b) = self.buckets.get(idx) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts per bucket (non-cumulative; last is `+Inf`).
    pub fn buckets(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Sum of observations.
    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_micros.load(Ordering::Relaxed))
    }
}

/// Counters and gauges of one pipe.
#[derive(Debug, Default)]
pub struct PipeStats {
    /// `mqbridge_pipe_messages_received_total`: messages routed to this pipe.
    pub received: AtomicU64,
    /// `mqbridge_pipe_messages_forwarded_total`: copies the destination accepted.
    pub forwarded: AtomicU64,
    /// `mqbridge_pipe_bytes_forwarded_total`: payload bytes of forwarded copies.
    pub bytes_forwarded: AtomicU64,
    /// `mqbridge_pipe_messages_dropped_total{reason}`, indexed by [`DropReason`].
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// `mqbridge_pipe_inflight`: publishes sent and not yet acknowledged.
    pub inflight: AtomicU64,
    /// `mqbridge_pipe_queue_depth`: messages waiting in the pipe (both queues).
    pub queue_depth: AtomicU64,
    /// `mqbridge_pipe_forward_latency_seconds`: source receive → destination ack.
    pub latency: LatencyHistogram,
    /// Spool mode: records in the pipe's spool not yet acknowledged by the
    /// destination (`mqbridge_pipe_spool_messages` reads the spool itself;
    /// this copy lets the watchdog and the status board count the backlog
    /// as pending work).
    pub spooled: AtomicU64,
    /// `mqbridge_pipe_spool_fsync_seconds`: spool mode, write → durable
    /// (one observation per group commit the pipe waited for).
    pub fsync: LatencyHistogram,
}

impl PipeStats {
    /// Counts one drop.
    pub fn drop_one(&self, reason: DropReason) {
        if let Some(c) = self.dropped.get(reason as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops so far for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped
            .get(reason as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Drops so far for every reason.
    pub fn dropped_total(&self) -> u64 {
        DropReason::ALL.iter().map(|r| self.dropped(*r)).sum()
    }

    /// Whether the pipe still holds work (queued or in flight).
    pub fn busy(&self) -> bool {
        self.inflight.load(Ordering::Relaxed) > 0 || self.queue_depth.load(Ordering::Relaxed) > 0
    }

    /// A plain copy of the counters, for logs and tests.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            received: self.received.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            bytes_forwarded: self.bytes_forwarded.load(Ordering::Relaxed),
            dropped: DropReason::ALL.map(|r| (r, self.dropped(r))).to_vec(),
            inflight: self.inflight.load(Ordering::Relaxed),
            queue_depth: self.queue_depth.load(Ordering::Relaxed),
            spooled: self.spooled.load(Ordering::Relaxed),
            latency_count: self.latency.count(),
        }
    }
}

/// A point-in-time copy of [`PipeStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Messages routed to the pipe.
    pub received: u64,
    /// Copies the destination accepted.
    pub forwarded: u64,
    /// Payload bytes forwarded.
    pub bytes_forwarded: u64,
    /// Drops per reason.
    pub dropped: Vec<(DropReason, u64)>,
    /// Publishes in flight.
    pub inflight: u64,
    /// Messages queued.
    pub queue_depth: u64,
    /// Messages in the spool, not yet acknowledged by the destination.
    pub spooled: u64,
    /// Latency observations.
    pub latency_count: u64,
}

impl StatsSnapshot {
    /// Drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::names::LATENCY_BUCKETS_SECONDS;

    #[test]
    fn histogram_buckets() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_secs(60));
        let b = h.buckets();
        assert_eq!(b[0], 1);
        assert_eq!(b[3], 1);
        assert_eq!(b[LATENCY_BUCKETS.len()], 1);
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn drops_by_reason() {
        let s = PipeStats::default();
        s.drop_one(DropReason::Loop);
        s.drop_one(DropReason::Loop);
        s.drop_one(DropReason::Oversize);
        let snap = s.snapshot();
        assert_eq!(snap.dropped(DropReason::Loop), 2);
        assert_eq!(snap.dropped(DropReason::Oversize), 1);
        assert_eq!(s.dropped_total(), 3);
    }

    #[test]
    fn buckets_match_the_pipe_histogram() {
        let pipe: Vec<f64> = LATENCY_BUCKETS.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(pipe, LATENCY_BUCKETS_SECONDS);
    }
}
