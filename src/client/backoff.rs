//! Reconnect backoff: exponential with jitter (on `backon`'s
//! `ExponentialBuilder`), capped at the maximum *including* jitter, and reset
//! only after a link stayed up for `stable_after`. Pure: time comes in as `now`.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};

use super::options::BackoffOptions;

/// No delay is ever shorter than this, even with `min: 0`: a broker that
/// accepts TCP and refuses CONNECT must not cause a tight reconnect loop.
pub const MIN_DELAY_FLOOR: Duration = Duration::from_millis(10);

/// Growth factor between two consecutive delays.
const FACTOR: f32 = 2.0;

/// The reconnect delay schedule of one broker connection.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    iter: <ExponentialBuilder as BackoffBuilder>::Backoff,
    min: Duration,
    max: Duration,
    stable_after: Duration,
    /// When the current link came up (CONNACK accepted); `None` while down.
    up_since: Option<Instant>,
}

impl Backoff {
    /// A schedule with a random jitter seed.
    pub fn new(opts: &BackoffOptions) -> Self {
        Self::build(opts, None)
    }

    /// A schedule with a fixed jitter seed (deterministic; for tests).
    #[cfg(test)]
    pub fn with_seed(opts: &BackoffOptions, seed: u64) -> Self {
        Self::build(opts, Some(seed))
    }

    fn build(opts: &BackoffOptions, seed: Option<u64>) -> Self {
        let min = opts.min.max(MIN_DELAY_FLOOR);
        let max = opts.max.max(min);
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(FACTOR)
            .without_max_times();
        if opts.jitter {
            builder = builder.with_jitter();
        }
        if let Some(seed) = seed {
            builder = builder.with_jitter_seed(seed);
        }
        Backoff {
            builder,
            iter: builder.build(),
            min,
            max,
            stable_after: opts.stable_after,
            up_since: None,
        }
    }

    /// The delay before the next connection attempt; advances the schedule.
    /// Always within `[min, max]` (backon adds jitter after its own cap, so it
    /// is clamped here). Rounded down to whole milliseconds.
    pub fn next_delay(&mut self) -> Duration {
        let raw = self.iter.next().unwrap_or(self.max);
        // backon multiplies by an f32 factor; whole milliseconds are enough
        // and keep the schedule exact (200 ms, not 200.000003 ms).
        let whole_ms = Duration::from_millis(u64::try_from(raw.as_millis()).unwrap_or(u64::MAX));
        whole_ms.clamp(self.min, self.max)
    }

    /// Starts the schedule over at `min`.
    pub fn reset(&mut self) {
        self.iter = self.builder.build();
    }

    /// The link came up (CONNACK accepted) at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The link went down at `now`. Resets the schedule if it had been up for
    /// at least `stable_after`; returns whether it did.
    pub fn disconnected(&mut self, now: Instant) -> bool {
        let stable = self
            .up_since
            .take()
            .is_some_and(|since| now.saturating_duration_since(since) >= self.stable_after);
        if stable {
            self.reset();
        }
        stable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(min_ms: u64, max_ms: u64, jitter: bool) -> BackoffOptions {
        BackoffOptions {
            min: Duration::from_millis(min_ms),
            max: Duration::from_millis(max_ms),
            jitter,
            stable_after: Duration::from_secs(10),
            probe_interval: Duration::ZERO,
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn doubles_up_to_max_without_jitter() {
        let mut b = Backoff::new(&opts(100, 1000, false));
        let got: Vec<_> = (0..7).map(|_| b.next_delay()).collect();
        assert_eq!(
            got,
            vec![
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000),
                ms(1000)
            ]
        );
    }

    #[test]
    fn jitter_is_capped_at_max_including_jitter() {
        let mut b = Backoff::with_seed(&opts(100, 1000, true), 42);
        let got: Vec<_> = (0..50).map(|_| b.next_delay()).collect();
        assert!(
            got.iter().all(|d| *d >= ms(100) && *d <= ms(1000)),
            "{got:?}"
        );
        // Late delays sit at the cap: backon would have produced up to 2 × max.
        assert!(got[10..].iter().all(|d| *d == ms(1000)), "{got:?}");
    }

    #[test]
    fn seeded_jitter_is_deterministic() {
        let a: Vec<_> = {
            let mut b = Backoff::with_seed(&opts(100, 10_000, true), 7);
            (0..8).map(|_| b.next_delay()).collect()
        };
        let b: Vec<_> = {
            let mut b = Backoff::with_seed(&opts(100, 10_000, true), 7);
            (0..8).map(|_| b.next_delay()).collect()
        };
        assert_eq!(a, b);
        // Jitter stays within (current, 2 × current).
        assert!(a[0] >= ms(100) && a[0] <= ms(200), "{a:?}");
    }

    #[test]
    fn zero_min_never_gives_a_tight_loop() {
        let mut b = Backoff::new(&opts(0, 0, false));
        for _ in 0..5 {
            assert!(b.next_delay() >= MIN_DELAY_FLOOR);
        }
    }

    #[test]
    fn resets_only_after_stable_link() {
        let t0 = Instant::now();
        let mut b = Backoff::new(&opts(100, 10_000, false));
        assert_eq!(b.next_delay(), ms(100));
        assert_eq!(b.next_delay(), ms(200));
        // Up for 1 s only: a flapping link keeps growing the delay.
        b.connected(t0);
        assert!(!b.disconnected(t0 + Duration::from_secs(1)));
        assert_eq!(b.next_delay(), ms(400));
        // Up for the stable time: back to min.
        b.connected(t0 + Duration::from_secs(2));
        assert!(b.disconnected(t0 + Duration::from_secs(12)));
        assert_eq!(b.next_delay(), ms(100));
        // A disconnect without a connect does not reset.
        assert!(!b.disconnected(t0 + Duration::from_secs(100)));
        assert_eq!(b.next_delay(), ms(200));
    }

    proptest::proptest! {
        #[test]
        fn always_within_bounds(min in 0u64..5_000, max in 0u64..60_000, seed: u64, n in 1usize..40) {
            let mut b = Backoff::with_seed(&opts(min, max, true), seed);
            let lo = ms(min).max(MIN_DELAY_FLOOR);
            let hi = ms(max).max(lo);
            for _ in 0..n {
                let d = b.next_delay();
                proptest::prop_assert!(d >= lo && d <= hi);
            }
        }
    }
}
