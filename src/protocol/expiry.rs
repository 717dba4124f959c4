//! MQTT 5 message expiry (spec 3.3.2.3.3): a message with a Message Expiry
//! Interval is dropped once the interval has passed, and is forwarded with
//! the interval reduced by the time it waited [MQTT-3.3.2-5, MQTT-3.3.2-6].
//! The clock starts when the message arrived; callers pass `now`.

use std::time::{Duration, Instant};

use super::message::Message;

/// When a message stops being deliverable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    deadline: Instant,
}

/// A message's lifetime at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remaining {
    /// Still deliverable: send this Message Expiry Interval (whole
    /// seconds, rounded up so a live message never goes out as 0).
    Seconds(u32),
    /// Past its lifetime: drop it (counted as expired), never deliver.
    Expired,
}

impl Expiry {
    /// The expiry of `message`, which arrived at `received`; `None` when it
    /// has no Message Expiry Interval (it never expires).
    pub fn of(message: &Message, received: Instant) -> Option<Expiry> {
        let secs = message.properties.as_ref()?.message_expiry_interval?;
        Some(Expiry {
            deadline: received + Duration::from_secs(u64::from(secs)),
        })
    }

    /// The lifetime left at `now`.
    pub fn remaining(&self, now: Instant) -> Remaining {
        let left = self.deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Remaining::Expired;
        }
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        Remaining::Seconds(u32::try_from(secs).unwrap_or(u32::MAX))
    }
}

/// A message whose Message Expiry Interval passed before it could be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("message expired before it was sent")]
pub struct Expired;

/// Ages `message`, which arrived at `received`, to `now`: its Message Expiry
/// Interval becomes what is left of it (rounded up to a whole second), or
/// [`Expired`] when nothing is left (the caller drops it). A message without
/// an interval is left as it is.
pub fn age(message: &mut Message, received: Instant, now: Instant) -> Result<(), Expired> {
    let Some(expiry) = Expiry::of(message, received) else {
        return Ok(());
    };
    match expiry.remaining(now) {
        Remaining::Expired => Err(Expired),
        Remaining::Seconds(left) => {
            if let Some(p) = message.properties.as_mut() {
                p.message_expiry_interval = Some(left);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::message::{MessageProperties, PropertyFields, QoS};

    fn with_expiry(secs: Option<u32>) -> Message {
        let mut m = Message::new("t", "p", QoS::AtLeastOnce, false);
        m.properties = Some(MessageProperties::from(PropertyFields {
            message_expiry_interval: secs,
            ..Default::default()
        }));
        m
    }

    #[test]
    fn mqtt_3_3_2_6_interval_is_reduced_by_the_time_queued() {
        let t0 = Instant::now();
        let e = Expiry::of(&with_expiry(Some(60)), t0).expect("expiry");
        assert_eq!(e.remaining(t0), Remaining::Seconds(60));
        assert_eq!(
            e.remaining(t0 + Duration::from_secs(15)),
            Remaining::Seconds(45)
        );
        // 0.5 s left still goes out as 1 s, not as 0.
        assert_eq!(
            e.remaining(t0 + Duration::from_millis(59_500)),
            Remaining::Seconds(1)
        );
    }

    #[test]
    fn mqtt_3_3_2_5_expired_messages_are_dropped() {
        let t0 = Instant::now();
        let e = Expiry::of(&with_expiry(Some(10)), t0).expect("expiry");
        assert_eq!(
            e.remaining(t0 + Duration::from_secs(10)),
            Remaining::Expired
        );
        assert_eq!(
            e.remaining(t0 + Duration::from_secs(3600)),
            Remaining::Expired
        );
        // Expiry 0: expired on arrival.
        let zero = Expiry::of(&with_expiry(Some(0)), t0).expect("expiry");
        assert_eq!(zero.remaining(t0), Remaining::Expired);
    }

    #[test]
    fn no_interval_never_expires() {
        let t0 = Instant::now();
        assert_eq!(Expiry::of(&with_expiry(None), t0), None);
        assert_eq!(
            Expiry::of(&Message::new("t", "", QoS::AtMostOnce, false), t0),
            None
        );
    }

    #[test]
    fn age_rewrites_the_interval_and_touches_nothing_else() {
        let t0 = Instant::now();
        let mut m = with_expiry(Some(60));
        if let Some(p) = m.properties.as_mut() {
            p.content_type = Some("text/plain".into());
            p.user_properties = vec![("a".into(), "1".into())];
        }
        let mut want = m.clone();
        age(&mut m, t0, t0 + Duration::from_millis(20_500)).expect("alive");
        if let Some(p) = want.properties.as_mut() {
            p.message_expiry_interval = Some(40);
        }
        assert_eq!(m, want);
        assert_eq!(
            age(&mut m, t0, t0 + Duration::from_secs(60)),
            Err(Expired),
            "nothing left"
        );
        let mut plain = Message::new("t", "p", QoS::AtMostOnce, false);
        age(&mut plain, t0, t0 + Duration::from_secs(1 << 20)).expect("no interval: never");
        assert_eq!(plain.properties, None);
    }

    proptest! {
        /// What is left is the lifetime minus the time held, rounded up to
        /// a whole second; at or past the lifetime the message is expired.
        #[test]
        fn age_reduces_by_the_time_held(secs in 1u32..100_000, held_ms in 0u64..200_000_000) {
            let t0 = Instant::now();
            let mut m = with_expiry(Some(secs));
            let now = t0 + Duration::from_millis(held_ms);
            let out = age(&mut m, t0, now);
            let lifetime_ms = u64::from(secs) * 1000;
            if held_ms >= lifetime_ms {
                prop_assert_eq!(out, Err(Expired));
            } else {
                prop_assert_eq!(out, Ok(()));
                let left = m.properties.as_ref().and_then(|p| p.message_expiry_interval).unwrap_or(0);
                prop_assert_eq!(u64::from(left), (lifetime_ms - held_ms).div_ceil(1000));
            }
        }

        /// The remaining interval never grows, never exceeds the original,
        /// and reaches Expired exactly at the deadline.
        #[test]
        fn remaining_is_monotonic(secs in 0u32..100_000, waits in proptest::collection::vec(0u64..50_000, 1..20)) {
            let t0 = Instant::now();
            let e = Expiry::of(&with_expiry(Some(secs)), t0).expect("expiry");
            let mut elapsed = Duration::ZERO;
            let mut last = u32::MAX;
            for ms in waits {
                elapsed += Duration::from_millis(ms);
                match e.remaining(t0 + elapsed) {
                    Remaining::Seconds(s) => {
                        prop_assert!(s <= last && s <= secs && s > 0);
                        prop_assert!(elapsed < Duration::from_secs(u64::from(secs)));
                        last = s;
                    }
                    Remaining::Expired => {
                        prop_assert!(elapsed >= Duration::from_secs(u64::from(secs)));
                        last = 0;
                    }
                }
            }
        }
    }
}
