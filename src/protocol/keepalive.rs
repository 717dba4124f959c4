//! Keepalive timing (pure): when a client owes a PINGREQ, and when either
//! side may declare the link dead (1.5 × keepalive without any packet,
//! MQTT-3.1.2-24).

use std::time::{Duration, Instant};

/// Keepalive timing for one connection. An interval of zero disables it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// The keepalive interval (the CONNECT value).
    pub interval: Duration,
}

impl Keepalive {
    /// Keepalive of `interval`.
    pub fn new(interval: Duration) -> Self {
        Keepalive { interval }
    }

    /// Keepalive from the CONNECT field, in seconds.
    pub fn from_secs(secs: u16) -> Self {
        Keepalive::new(Duration::from_secs(u64::from(secs)))
    }

    /// False when the interval is zero (keepalive off: no pings, never dead).
    pub fn is_enabled(&self) -> bool {
        !self.interval.is_zero()
    }

    /// How long a link may stay silent before it counts as dead: 1.5 × interval.
    pub fn dead_after(&self) -> Duration {
        self.interval.saturating_add(self.interval / 2)
    }

    /// Time left until a PINGREQ is due: `None` when keepalive is off,
    /// `Some(ZERO)` when due now. `last_sent` is when we last sent a packet;
    /// a client that wants to probe the link even while it only sends
    /// (QoS 0 streams) passes the earlier of last sent and last received.
    pub fn next_ping_due(&self, last_sent: Instant, now: Instant) -> Option<Duration> {
        if !self.is_enabled() {
            return None;
        }
        let due = last_sent.checked_add(self.interval)?;
        Some(due.saturating_duration_since(now))
    }

    /// The instant the link becomes dead if nothing arrives; `None` when off.
    pub fn dead_deadline(&self, last_received: Instant) -> Option<Instant> {
        if !self.is_enabled() {
            return None;
        }
        last_received.checked_add(self.dead_after())
    }

    /// Whether nothing was received for 1.5 × interval (strictly more than).
    pub fn is_dead(&self, last_received: Instant, now: Instant) -> bool {
        self.is_enabled() && now.saturating_duration_since(last_received) > self.dead_after()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_never_pings_or_dies() {
        let k = Keepalive::from_secs(0);
        let t = Instant::now();
        assert!(!k.is_enabled());
        assert_eq!(k.next_ping_due(t, t + Duration::from_secs(1000)), None);
        assert_eq!(k.dead_deadline(t), None);
        assert!(!k.is_dead(t, t + Duration::from_secs(1000)));
    }

    #[test]
    fn ping_due_after_interval() {
        let k = Keepalive::from_secs(10);
        let t = Instant::now();
        assert_eq!(k.next_ping_due(t, t), Some(Duration::from_secs(10)));
        assert_eq!(
            k.next_ping_due(t, t + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(
            k.next_ping_due(t, t + Duration::from_secs(10)),
            Some(Duration::ZERO)
        );
        assert_eq!(
            k.next_ping_due(t, t + Duration::from_secs(30)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn dead_after_one_and_a_half_intervals() {
        let k = Keepalive::from_secs(10);
        let t = Instant::now();
        assert_eq!(k.dead_after(), Duration::from_secs(15));
        assert_eq!(k.dead_deadline(t), Some(t + Duration::from_secs(15)));
        assert!(!k.is_dead(t, t + Duration::from_secs(15)));
        assert!(k.is_dead(t, t + Duration::from_millis(15_001)));
        // A clock that went "backwards" relative to last_received is not death.
        assert!(!k.is_dead(t + Duration::from_secs(5), t));
    }

    #[test]
    fn odd_seconds_round_down_to_millis() {
        let k = Keepalive::from_secs(5);
        assert_eq!(k.dead_after(), Duration::from_millis(7_500));
    }
}
