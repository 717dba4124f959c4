//! Rate limiting of repeated warnings. The core is pure (takes `now`).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use metrics::counter;

use super::names::LOG_WARNINGS_SUPPRESSED;

/// Default window: at most one identical warning per key per 10 s.
pub const WARN_WINDOW: Duration = Duration::from_secs(10);
/// Keys remembered at most; beyond this, expired keys are evicted and, if
/// none expired, the warning is let through untracked (never unbounded memory).
pub const MAX_KEYS: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Entry {
    last_emit: Instant,
    suppressed: u64,
}

/// Decides whether a repeated warning may be logged.
#[derive(Debug)]
pub struct WarnLimiter<K> {
    window: Duration,
    entries: HashMap<K, Entry>,
}

/// The limiter's verdict for one occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` identical warnings were swallowed since the last one logged.
    Emit {
        /// Occurrences swallowed since the previous emit.
        suppressed: u64,
    },
    /// Swallow it (counted, reported with the next emit).
    Suppress,
}

impl<K: Hash + Eq + Clone> WarnLimiter<K> {
    /// A limiter letting one warning per key through per `window`.
    pub fn new(window: Duration) -> Self {
        WarnLimiter {
            window,
            entries: HashMap::new(),
        }
    }

    /// Judges one occurrence of warning `key` at `now`.
    pub fn check(&mut self, key: &K, now: Instant) -> Verdict {
        if let Some(e) = self.entries.get_mut(key) {
            if now.saturating_duration_since(e.last_emit) < self.window {
                e.suppressed += 1;
                return Verdict::Suppress;
            }
            let suppressed = std::mem::take(&mut e.suppressed);
            e.last_emit = now;
            return Verdict::Emit { suppressed };
        }
        if self.entries.len() >= MAX_KEYS {
            let window = self.window;
            self.entries
                .retain(|_, e| now.saturating_duration_since(e.last_emit) < window);
        }
        if self.entries.len() < MAX_KEYS {
            self.entries.insert(
                key.clone(),
                Entry {
                    last_emit: now,
                    suppressed: 0,
                },
            );
        }
        Verdict::Emit { suppressed: 0 }
    }

    /// Number of keys remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// A thread-safe [`WarnLimiter`] on the wall clock, for use from tasks:
///
/// ```
/// # use mqbridge::metrics::ratelimit::RateLimitedWarn;
/// let limiter = RateLimitedWarn::default();
/// if let Some(suppressed) = limiter.allow("publish-failed:cloud") {
///     tracing::warn!(broker = "cloud", suppressed, "publish failed");
/// }
/// ```
#[derive(Debug)]
pub struct RateLimitedWarn {
    inner: Mutex<WarnLimiter<String>>,
}

impl Default for RateLimitedWarn {
    fn default() -> Self {
        Self::new(WARN_WINDOW)
    }
}

impl RateLimitedWarn {
    /// A limiter with the given window.
    pub fn new(window: Duration) -> Self {
        RateLimitedWarn {
            inner: Mutex::new(WarnLimiter::new(window)),
        }
    }

    /// `Some(suppressed)` when a warning with `key` may be logged now,
    /// `None` when it must be swallowed (and counted in
    /// `mqbridge_log_warnings_suppressed_total`).
    pub fn allow(&self, key: &str) -> Option<u64> {
        // Short section, no `.await`: a std Mutex is fine. A poisoned lock
        // only means a panic elsewhere; the map is still consistent.
        let verdict = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(&key.to_owned(), Instant::now());
        match verdict {
            Verdict::Emit { suppressed } => Some(suppressed),
            Verdict::Suppress => {
                counter!(LOG_WARNINGS_SUPPRESSED).increment(1);
                None
            }
        }
    }
}

static GLOBAL: LazyLock<RateLimitedWarn> = LazyLock::new(RateLimitedWarn::default);

/// The process-wide limiter ([`WARN_WINDOW`]): `Some(suppressed)` when a
/// warning with `key` (e.g. `"remap-failed:<pipe>"`) may be logged now.
///
/// ```
/// # let pipe = "up";
/// if let Some(suppressed) = mqbridge::metrics::ratelimit::allow(&format!("remap-failed:{pipe}")) {
///     tracing::warn!(pipe, suppressed, "remap failed; message dropped");
/// }
/// ```
pub fn allow(key: &str) -> Option<u64> {
    GLOBAL.allow(key)
}

/// Logs a warning through the process-wide limiter: at most one line per
/// key per [`WARN_WINDOW`], carrying a `suppressed` field with the number
/// swallowed since the previous one. The key names the *kind* of warning and
/// a low-cardinality scope (a broker or pipe name), never a peer address:
///
/// ```
/// # let broker = "edge";
/// mqbridge::warn_limited!(format!("bad-connect:{broker}"), broker, "bad CONNECT, closed");
/// ```
#[macro_export]
macro_rules! warn_limited {
    ($key:expr, $($rest:tt)+) => {
        if let Some(suppressed) = $crate::metrics::ratelimit::allow(&$key) {
            ::tracing::warn!(suppressed, $($rest)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_window_with_suppressed_count() {
        let mut l = WarnLimiter::new(WARN_WINDOW);
        let t0 = Instant::now();
        assert_eq!(l.check(&"k", t0), Verdict::Emit { suppressed: 0 });
        for i in 1..=5u64 {
            assert_eq!(
                l.check(&"k", t0 + Duration::from_secs(i)),
                Verdict::Suppress
            );
        }
        assert_eq!(
            l.check(&"k", t0 + WARN_WINDOW),
            Verdict::Emit { suppressed: 5 }
        );
        assert_eq!(
            l.check(&"k", t0 + WARN_WINDOW * 2),
            Verdict::Emit { suppressed: 0 }
        );
    }

    #[test]
    fn keys_are_independent() {
        let mut l = WarnLimiter::new(WARN_WINDOW);
        let t0 = Instant::now();
        assert_eq!(l.check(&"a", t0), Verdict::Emit { suppressed: 0 });
        assert_eq!(l.check(&"b", t0), Verdict::Emit { suppressed: 0 });
        assert_eq!(l.check(&"a", t0), Verdict::Suppress);
    }

    #[test]
    fn memory_is_bounded() {
        let mut l = WarnLimiter::new(WARN_WINDOW);
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS as u64 * 3) {
            // Fresh keys always pass.
            assert_eq!(l.check(&i, t0), Verdict::Emit { suppressed: 0 });
        }
        assert_eq!(l.len(), MAX_KEYS);
        // Once the window passed, old keys are evicted to make room.
        l.check(&u64::MAX, t0 + WARN_WINDOW);
        assert_eq!(l.len(), 1);
    }
}
