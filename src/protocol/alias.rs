//! MQTT 5 topic alias tables (spec 3.3.2.3.4), one pair per connection:
//! aliases never outlive the network connection [MQTT-3.3.2-7], so a
//! resend after a reconnect goes through the new connection's (empty)
//! table and carries the full topic again.

use std::collections::{BTreeMap, HashMap};

use super::convert::TopicForm;
use super::reason::ReasonCode;

/// Why an incoming alias cannot be resolved: the connection is closed
/// with [`AliasError::reason_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    /// Alias 0 or above the maximum we announced (spec 3.3.2.3.4; the
    /// sender broke [MQTT-3.3.2-8], [MQTT-3.3.2-9] or [MQTT-3.1.2-26]).
    #[error("topic alias {alias} outside 1..={max}")]
    OutOfRange {
        /// The alias received.
        alias: u16,
        /// The maximum we announced.
        max: u16,
    },
    /// An empty topic with an alias the peer never set.
    #[error("topic alias {0} was never set")]
    Unknown(u16),
}

impl AliasError {
    /// DISCONNECT reason: 0x94 topic alias invalid, 0x82 for an unknown alias.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            AliasError::OutOfRange { .. } => ReasonCode::TopicAliasInvalid,
            AliasError::Unknown(_) => ReasonCode::ProtocolError,
        }
    }
}

/// Aliases the peer sets on the PUBLISHes it sends us, up to the Topic
/// Alias Maximum we announced (0: the peer may not use any).
#[derive(Debug, Clone)]
pub struct Inbound {
    max: u16,
    topics: HashMap<u16, String>,
}

impl Inbound {
    /// A table for the maximum we announced in CONNECT/CONNACK.
    pub fn new(max: u16) -> Self {
        Inbound {
            max,
            topics: HashMap::new(),
        }
    }

    /// The topic of a PUBLISH with `topic` (empty when only the alias was
    /// sent) and `alias`: a non-empty topic with an alias (re)sets the
    /// mapping, an empty one looks it up.
    pub fn resolve(&mut self, topic: &str, alias: Option<u16>) -> Result<String, AliasError> {
        let Some(alias) = alias else {
            return Ok(topic.to_string());
        };
        if alias == 0 || alias > self.max {
            return Err(AliasError::OutOfRange {
                alias,
                max: self.max,
            });
        }
        if topic.is_empty() {
            return self
                .topics
                .get(&alias)
                .cloned()
                .ok_or(AliasError::Unknown(alias));
        }
        self.topics.insert(alias, topic.to_string());
        Ok(topic.to_string())
    }
}

/// Aliases we set on the PUBLISHes we send, up to the peer's Topic Alias
/// Maximum. Policy: a topic keeps its alias while it has one; a new topic
/// takes the lowest alias never used, and once all are used it takes the
/// least recently used one (LRU), so a steady set of hot topics stays
/// aliased and a one-off topic costs one reassignment.
#[derive(Debug, Clone)]
pub struct Outbound {
    max: u16,
    /// Topic → (alias, last use).
    by_topic: HashMap<String, (u16, u64)>,
    /// Last use → alias, oldest first; the same entries as `by_topic`.
    lru: BTreeMap<u64, u16>,
    /// Alias → topic, for eviction.
    by_alias: HashMap<u16, String>,
    /// Use counter (a logical clock: order is all LRU needs).
    tick: u64,
}

impl Outbound {
    /// A table for the peer's Topic Alias Maximum (0 or absent: no aliases
    /// may be sent; never one above it: [MQTT-3.3.2-9] towards a server,
    /// [MQTT-3.1.2-26] towards a client).
    pub fn new(peer_max: u16) -> Self {
        Outbound {
            max: peer_max,
            by_topic: HashMap::new(),
            lru: BTreeMap::new(),
            by_alias: HashMap::new(),
            tick: 0,
        }
    }

    /// How to write `topic` on the next PUBLISH.
    pub fn choose(&mut self, topic: &str) -> TopicForm {
        if self.max == 0 {
            return TopicForm::Name;
        }
        self.tick += 1;
        if let Some((alias, used)) = self.by_topic.get_mut(topic) {
            self.lru.remove(used);
            *used = self.tick;
            self.lru.insert(self.tick, *alias);
            return TopicForm::AliasOnly(*alias);
        }
        let alias = match u16::try_from(self.by_alias.len() + 1) {
            Ok(next) if next <= self.max => next,
            _ => self.evict_oldest(),
        };
        self.by_topic.insert(topic.to_string(), (alias, self.tick));
        self.by_alias.insert(alias, topic.to_string());
        self.lru.insert(self.tick, alias);
        TopicForm::NameAndAlias(alias)
    }

    /// Frees the least recently used alias and returns it.
    fn evict_oldest(&mut self) -> u16 {
        let Some((_, alias)) = self.lru.pop_first() else {
            // Unreachable with max > 0: the table is full, so not empty.
            return 1;
        };
        if let Some(old) = self.by_alias.remove(&alias) {
            self.by_topic.remove(&old);
        }
        alias
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn inbound_alias_outside_our_maximum_is_0x94() {
        let mut t = Inbound::new(2);
        assert_eq!(t.resolve("a", Some(1)), Ok("a".into()));
        assert_eq!(t.resolve("", Some(1)), Ok("a".into()));
        let err = t.resolve("b", Some(3)).unwrap_err();
        assert_eq!(err, AliasError::OutOfRange { alias: 3, max: 2 });
        assert_eq!(err.reason_code(), ReasonCode::TopicAliasInvalid);
        assert!(Inbound::new(0).resolve("a", Some(1)).is_err());
        assert!(t.resolve("a", Some(0)).is_err());
    }

    #[test]
    fn inbound_alias_is_reset_by_a_new_topic_and_unknown_alias_is_an_error() {
        let mut t = Inbound::new(5);
        assert_eq!(t.resolve("", Some(4)), Err(AliasError::Unknown(4)));
        assert_eq!(
            AliasError::Unknown(4).reason_code(),
            ReasonCode::ProtocolError
        );
        t.resolve("x", Some(4)).unwrap();
        t.resolve("y", Some(4)).unwrap();
        assert_eq!(t.resolve("", Some(4)), Ok("y".into()));
        assert_eq!(t.resolve("plain", None), Ok("plain".into()));
    }

    #[test]
    fn mqtt_3_1_2_26_no_aliases_when_the_peer_allows_none() {
        let mut t = Outbound::new(0);
        assert_eq!(t.choose("a"), TopicForm::Name);
        assert_eq!(t.choose("a"), TopicForm::Name);
    }

    #[test]
    fn outbound_assigns_then_reuses_then_evicts_least_recently_used() {
        let mut t = Outbound::new(2);
        assert_eq!(t.choose("a"), TopicForm::NameAndAlias(1));
        assert_eq!(t.choose("b"), TopicForm::NameAndAlias(2));
        assert_eq!(t.choose("a"), TopicForm::AliasOnly(1));
        // Full: "b" is the least recently used, so "c" takes alias 2.
        assert_eq!(t.choose("c"), TopicForm::NameAndAlias(2));
        assert_eq!(t.choose("a"), TopicForm::AliasOnly(1));
        assert_eq!(t.choose("b"), TopicForm::NameAndAlias(2));
        assert_eq!(t.choose("c"), TopicForm::NameAndAlias(1));
    }

    proptest! {
        /// Whatever the sequence, an inbound table fed what the outbound
        /// one writes resolves every PUBLISH to its original topic, and no
        /// alias exceeds the maximum.
        #[test]
        fn outbound_and_inbound_agree(
            max in 0u16..5,
            topics in proptest::collection::vec("[a-f]{1,2}", 1..200),
        ) {
            let mut out = Outbound::new(max);
            let mut inb = Inbound::new(max);
            for topic in &topics {
                let (name, alias) = match out.choose(topic) {
                    TopicForm::Name => (topic.as_str(), None),
                    TopicForm::NameAndAlias(a) => (topic.as_str(), Some(a)),
                    TopicForm::AliasOnly(a) => ("", Some(a)),
                };
                if let Some(a) = alias {
                    prop_assert!(a >= 1 && a <= max);
                }
                prop_assert_eq!(&inb.resolve(name, alias).unwrap(), topic);
            }
        }
    }
}
