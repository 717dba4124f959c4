//! Token bucket for a pipe's optional rate limit. Pure: takes `now`.
//!
//! The pipe does not drop over-rate messages: it waits until the bucket has a
//! token, so QoS 1/2 traffic is held at the source (backpressure) and QoS 0
//! traffic piles up in the bounded queue, whose policy then drops and counts.
//!
//! Hand-written on purpose (weighed against `governor`): this bucket takes
//! `now` as an argument, so the pipe's time is tokio's (paused and advanced in
//! tests) and the unit tests below need no clock; `governor` reads its own
//! clock, and a custom one fed from tokio would be more code than this bucket.

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, up to `burst` stored.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `per_second` (must be > 0) with room for
    /// `burst` tokens (at least 1).
    pub fn new(per_second: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: if per_second.is_finite() && per_second > 0.0 {
                per_second
            } else {
                f64::MIN_POSITIVE
            },
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = self.last.max(now);
    }

    /// Takes one token if available; otherwise returns how long to wait
    /// before one will be.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let secs = (1.0 - self.tokens) / self.rate;
            Err(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 2, t0);
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0).is_ok());
        let wait = b.try_take(t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        assert!(b.try_take(t0 + Duration::from_millis(100)).is_ok());
        assert!(b.try_take(t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn long_idle_refills_only_to_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000.0, 3, t0);
        for _ in 0..3 {
            b.try_take(t0).unwrap();
        }
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.try_take(later).is_ok());
        }
        assert!(b.try_take(later).is_err());
    }

    #[test]
    fn over_a_second_admits_about_rate_plus_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 5, t0);
        let mut ok = 0;
        for ms in 0..1000u64 {
            let now = t0 + Duration::from_millis(ms);
            while b.try_take(now).is_ok() {
                ok += 1;
            }
        }
        assert!((100..=106).contains(&ok), "admitted {ok}");
    }
}
