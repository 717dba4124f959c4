//! Retained messages: one per topic; an empty payload deletes.

use std::collections::HashMap;

use crate::protocol::Message;
use crate::topic;

/// The retained store, owned by the router.
#[derive(Debug, Default)]
pub(crate) struct Retained {
    by_topic: HashMap<String, Message>,
    /// How many of them are `$` topics (`$SYS`: not stored on disk).
    dollar: usize,
}

impl Retained {
    /// Sets, replaces or (empty payload) deletes the retained message of
    /// `msg.topic`. The stored copy keeps retain=1 and DUP off.
    pub fn store(&mut self, msg: &Message) {
        let dollar = msg.topic.starts_with('$');
        let had = if msg.payload.is_empty() {
            self.by_topic.remove(msg.topic.as_str()).is_some()
        } else {
            let mut m = msg.clone();
            m.retain = true;
            m.dup = false;
            self.by_topic
                .insert(m.topic.as_str().to_owned(), m)
                .is_some()
        };
        let has = !msg.payload.is_empty();
        if dollar && had != has {
            if has {
                self.dollar += 1;
            } else {
                self.dollar -= 1;
            }
        }
    }

    /// Retained messages matching `filter` (`$` topics only for filters that
    /// name them), in topic order so deliveries are deterministic.
    pub fn matching(&self, filter: &str) -> Vec<&Message> {
        let mut v: Vec<&Message> = self
            .by_topic
            .values()
            .filter(|m| topic::matches(filter, &m.topic))
            .collect();
        v.sort_by(|a, b| a.topic.cmp(&b.topic));
        v
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
    use crate::protocol::QoS;

    #[test]
    fn set_replace_delete() {
        let mut r = Retained::default();
        r.store(&Message::new("a/b", "1", QoS::AtLeastOnce, true));
        r.store(&Message::new("a/c", "2", QoS::AtMostOnce, true));
        r.store(&Message::new("$SYS/x", "3", QoS::AtMostOnce, true));
        assert_eq!(r.len(), 3);
        assert_eq!(r.stored_len(), 2);
        r.store(&Message::new("a/b", "9", QoS::AtMostOnce, true));
        let m = r.matching("a/+");
        assert_eq!(m.len(), 2);
        assert_eq!(&m[0].payload[..], b"9");
        assert!(m[0].retain);
        assert_eq!(r.matching("#").len(), 2);
        assert_eq!(r.matching("$SYS/#").len(), 1);
        r.store(&Message::new("a/b", "", QoS::AtMostOnce, true));
        assert_eq!(r.matching("a/#").len(), 1);
    }
}
