//! Retained messages: one per topic; an empty payload deletes. A retained
//! message with an MQTT 5 Message Expiry Interval stops being retained once
//! the interval has passed, and a new subscriber gets it with the interval
//! it has left [MQTT-3.3.2-5, MQTT-3.3.2-6]. Time is passed in (`now`).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::protocol::Message;
use crate::protocol::expiry::{Expiry, Remaining};
use crate::topic;

/// One retained message and when it stops being retained.
#[derive(Debug)]
struct Kept {
    message: Message,
    /// `None`: it never expires.
    expiry: Option<Expiry>,
}

/// The retained store, owned by the router.
#[derive(Debug, Default)]
pub(crate) struct Retained {
    by_topic: HashMap<String, Kept>,
    /// Topics whose message has an expiry: what [`Retained::expire`] looks
    /// at (not every retained message).
    expiring: HashSet<String>,
    /// How many of them are `$` topics (`$SYS`: not stored on disk).
    dollar: usize,
}

impl Retained {
    /// Sets, replaces or (empty payload) deletes the retained message of
    /// `msg.topic`, which arrived at `now` (its expiry interval counts from
    /// then). The stored copy keeps retain=1 and DUP off.
    pub fn store(&mut self, msg: &Message, now: Instant) {
        self.store_until(msg.clone(), Expiry::of(msg, now));
    }

    /// As [`Retained::store`], with its expiry already known (a message
    /// restored from the store).
    pub fn store_until(&mut self, msg: Message, expiry: Option<Expiry>) {
        let dollar = msg.topic.starts_with('$');
        let has = !msg.payload.is_empty();
        let topic = msg.topic.as_str().to_owned();
        let had = if has {
            let mut m = msg;
            m.retain = true;
            m.dup = false;
            if expiry.is_some() {
                self.expiring.insert(topic.clone());
            } else {
                self.expiring.remove(&topic);
            }
            self.by_topic
                .insert(topic, Kept { message: m, expiry })
                .is_some()
        } else {
            self.expiring.remove(&topic);
            self.by_topic.remove(&topic).is_some()
        };
        if dollar && had != has {
            if has {
                self.dollar += 1;
            } else {
                self.dollar -= 1;
            }
        }
    }

    /// Retained messages matching `filter` at `now` (`$` topics only for
    /// filters that name them), in topic order so deliveries are
    /// deterministic; each with the expiry interval it has left, none
    /// whose interval has passed.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Message> {
        let mut v: Vec<Message> = self
            .by_topic
            .values()
            .filter(|k| topic::matches(filter, &k.message.topic))
            .filter_map(|k| {
                let mut m = k.message.clone();
                match k.expiry.map(|e| e.remaining(now)) {
                    Some(Remaining::Expired) => return None,
                    Some(Remaining::Seconds(left)) => {
                        if let Some(p) = m.properties.as_mut() {
                            p.message_expiry_interval = Some(left);
                        }
                    }
                    None => {}
                }
                Some(m)
            })
            .collect();
        v.sort_by(|a, b| a.topic.cmp(&b.topic));
        v
    }

    /// Removes the retained messages whose expiry interval has passed at
    /// `now`; their topics (to delete them from the store too).
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let gone: Vec<String> = self
            .expiring
            .iter()
            .filter(|t| {
                self.by_topic
                    .get(t.as_str())
                    .and_then(|k| k.expiry)
                    .is_some_and(|e| e.remaining(now) == Remaining::Expired)
            })
            .cloned()
            .collect();
        for t in &gone {
            self.expiring.remove(t);
            if self.by_topic.remove(t).is_some() && t.starts_with('$') {
                self.dollar -= 1;
            }
        }
        gone
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    /// Number of retained messages kept on disk (all but `$` topics).
    pub fn stored_len(&self) -> usize {
        self.by_topic.len() - self.dollar
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MessageProperties, PropertyFields, QoS};
    use std::time::Duration;

    #[test]
    fn set_replace_delete() {
        let now = Instant::now();
        let mut r = Retained::default();
        r.store(&Message::new("a/b", "1", QoS::AtLeastOnce, true), now);
        r.store(&Message::new("a/c", "2", QoS::AtMostOnce, true), now);
        r.store(&Message::new("$SYS/x", "3", QoS::AtMostOnce, true), now);
        assert_eq!(r.len(), 3);
        assert_eq!(r.stored_len(), 2);
        r.store(&Message::new("a/b", "9", QoS::AtMostOnce, true), now);
        let m = r.matching("a/+", now);
        assert_eq!(m.len(), 2);
        assert_eq!(&m[0].payload[..], b"9");
        assert!(m[0].retain);
        assert_eq!(r.matching("#", now).len(), 2);
        assert_eq!(r.matching("$SYS/#", now).len(), 1);
        r.store(&Message::new("a/b", "", QoS::AtMostOnce, true), now);
        assert_eq!(r.matching("a/#", now).len(), 1);
    }

    fn expiring(topic: &str, secs: u32) -> Message {
        let mut m = Message::new(topic, "x", QoS::AtLeastOnce, true);
        m.properties = Some(MessageProperties::from(PropertyFields {
            message_expiry_interval: Some(secs),
            content_type: Some("text/plain".into()),
            ..Default::default()
        }));
        m
    }

    fn interval(m: &Message) -> Option<u32> {
        m.properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
    }

    /// [MQTT-3.3.2-5, MQTT-3.3.2-6]: a retained message goes to a new
    /// subscriber with the interval it has left, and is gone (not
    /// delivered, then removed) once it has none.
    #[test]
    fn mqtt_3_3_2_6_retained_messages_expire() {
        let t0 = Instant::now();
        let mut r = Retained::default();
        r.store(&expiring("e/short", 10), t0);
        r.store(&expiring("e/long", 100), t0);
        r.store(&expiring("$e/x", 10), t0);
        r.store(&Message::new("e/never", "y", QoS::AtMostOnce, true), t0);
        let later = t0 + Duration::from_millis(4_500);
        let got: Vec<(String, Option<u32>)> = r
            .matching("e/#", later)
            .iter()
            .map(|m| (m.topic.to_string(), interval(m)))
            .collect();
        assert_eq!(
            got,
            [
                ("e/long".to_string(), Some(96)),
                ("e/never".to_string(), None),
                ("e/short".to_string(), Some(6)),
            ]
        );
        assert!(r.expire(later).is_empty());
        let past = t0 + Duration::from_secs(10);
        // Not delivered once expired, even before `expire` ran.
        assert_eq!(r.matching("e/short", past).len(), 0);
        let mut gone = r.expire(past);
        gone.sort();
        assert_eq!(gone, ["$e/x", "e/short"]);
        assert_eq!((r.len(), r.stored_len()), (2, 2));
        // Replaced by a message without expiry: never expires.
        r.store(&Message::new("e/long", "z", QoS::AtMostOnce, true), past);
        assert!(r.expire(t0 + Duration::from_secs(1000)).is_empty());
        assert_eq!(r.len(), 2);
    }
}
