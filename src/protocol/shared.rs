//! Shared subscriptions (spec 4.8.2): parsing `$share/{group}/{filter}`
//! and the distribution policy of one group, as a pure data structure.
//!
//! Distribution policy: each message goes to one member, chosen round
//! robin among the members that are connected and have send quota left
//! (a member whose Receive Maximum is used up is skipped, not waited for).
//! The group remembers which member holds each unacknowledged message;
//! when a member leaves (disconnects or unsubscribes) its unacknowledged
//! messages are handed back for redelivery to the other members, so a
//! crashed consumer loses nothing. With no eligible member a message waits
//! (the caller queues it). Works for 3.1.1 clients too, as in Mosquitto.

use std::collections::HashMap;
use std::hash::Hash;

use super::codec::filter_is_valid;

/// The `$share/` prefix.
const PREFIX: &str = "$share/";

/// A parsed shared subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The share name.
    pub group: &'a str,
    /// The topic filter after the share name.
    pub filter: &'a str,
}

/// Why a `$share/...` filter is invalid: SUBACK 0x8F (topic filter invalid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SharedFilterError {
    /// Empty share name, or one with `/`, `+` or `#` [MQTT-4.8.2-1].
    #[error("invalid share name (MQTT-4.8.2-1)")]
    ShareName,
    /// No filter after the share name, or an invalid one [MQTT-4.8.2-2].
    #[error("invalid filter after the share name (MQTT-4.8.2-2)")]
    Filter,
}

/// Parses `filter`: `Ok(None)` when it is not a shared subscription,
/// `Ok(Some)` with the group and the filter, `Err` when it starts with
/// `$share/` but is malformed.
pub fn parse(filter: &str) -> Result<Option<SharedFilter<'_>>, SharedFilterError> {
    let Some(rest) = filter.strip_prefix(PREFIX) else {
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(if rest.is_empty() || rest.contains(['+', '#']) {
            SharedFilterError::ShareName
        } else {
            SharedFilterError::Filter
        });
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(SharedFilterError::ShareName);
    }
    if !filter_is_valid(inner) {
        return Err(SharedFilterError::Filter);
    }
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

/// One share group's members and who holds which unacknowledged message.
/// `M` names a member (a session), `K` a message (whatever the caller
/// uses to find it again).
#[derive(Debug, Clone)]
pub struct Group<M, K> {
    /// Members in join order; `true` when connected.
    members: Vec<(M, bool)>,
    /// Index in `members` to try first next time.
    next: usize,
    /// Unacknowledged message → the member it was sent to.
    holder: HashMap<K, M>,
}

impl<M: Clone + Eq + Hash, K: Clone + Eq + Hash> Default for Group<M, K> {
    fn default() -> Self {
        Group {
            members: Vec::new(),
            next: 0,
            holder: HashMap::new(),
        }
    }
}

impl<M: Clone + Eq + Hash, K: Clone + Eq + Hash> Group<M, K> {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    /// `member` subscribed, or reconnected.
    pub fn join(&mut self, member: M) {
        match self.members.iter_mut().find(|(m, _)| *m == member) {
            Some((_, connected)) => *connected = true,
            None => self.members.push((member, true)),
        }
    }

    /// Members (connected or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True without members: the group can be removed.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The member to send the next message to: the next connected member,
    /// round robin, for which `has_quota` is true; `None` when there is none
    /// (queue the message and try again when a member acks or joins).
    pub fn pick(&mut self, has_quota: impl Fn(&M) -> bool) -> Option<M> {
        let n = self.members.len();
        (0..n)
            .map(|i| (self.next + i) % n)
            .find(|&i| self.members[i].1 && has_quota(&self.members[i].0))
            .map(|i| {
                self.next = (i + 1) % n;
                self.members[i].0.clone()
            })
    }

    /// `message` was sent to `member` at QoS>0 and awaits its ack.
    pub fn sent(&mut self, message: K, member: M) {
        self.holder.insert(message, member);
    }

    /// `message` was acknowledged (or expired): nothing to redeliver.
    pub fn acked(&mut self, message: &K) {
        self.holder.remove(message);
    }

    /// `member` disconnected (`stays: true`, it keeps its place for when it
    /// reconnects) or unsubscribed (`stays: false`). Returns the messages
    /// it had not acknowledged, to redeliver through [`Group::pick`].
    pub fn leave(&mut self, member: &M, stays: bool) -> Vec<K> {
        if stays {
            if let Some((_, connected)) = self.members.iter_mut().find(|(m, _)| m == member) {
                *connected = false;
            }
        } else if let Some(i) = self.members.iter().position(|(m, _)| m == member) {
            self.members.remove(i);
            if i < self.next {
                self.next -= 1;
            }
            if self.next >= self.members.len() {
                self.next = 0;
            }
        }
        let orphans: Vec<K> = self
            .holder
            .iter()
            .filter(|(_, m)| *m == member)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &orphans {
            self.holder.remove(k);
        }
        orphans
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn mqtt_4_8_2_1_share_name_must_be_non_empty_without_wildcards_or_slash() {
        assert_eq!(
            parse("$share/g/a/+"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "a/+"
            }))
        );
        assert_eq!(parse("$share//a"), Err(SharedFilterError::ShareName));
        assert_eq!(parse("$share/g+/a"), Err(SharedFilterError::ShareName));
        assert_eq!(parse("$share/#"), Err(SharedFilterError::ShareName));
        assert_eq!(parse("$share/"), Err(SharedFilterError::ShareName));
        assert_eq!(parse("a/b"), Ok(None));
        assert_eq!(parse("$sharex/g/a"), Ok(None));
    }

    #[test]
    fn mqtt_4_8_2_2_a_filter_must_follow_the_share_name() {
        assert_eq!(parse("$share/g"), Err(SharedFilterError::Filter));
        assert_eq!(parse("$share/g/"), Err(SharedFilterError::Filter));
        assert_eq!(parse("$share/g/a#"), Err(SharedFilterError::Filter));
        assert_eq!(
            parse("$share/g/#").map(|s| s.map(|s| s.filter)),
            Ok(Some("#"))
        );
    }

    #[test]
    fn round_robin_skips_disconnected_and_full_members() {
        let mut g: Group<&str, u32> = Group::new();
        g.join("a");
        g.join("b");
        g.join("c");
        let all = |_: &&str| true;
        assert_eq!(
            [g.pick(all), g.pick(all), g.pick(all), g.pick(all)],
            [Some("a"), Some("b"), Some("c"), Some("a")]
        );
        assert!(g.leave(&"b", true).is_empty());
        assert_eq!([g.pick(all), g.pick(all)], [Some("c"), Some("a")]);
        assert_eq!(g.pick(|m| *m != "c" && *m != "a"), None);
        g.join("b");
        assert_eq!(g.pick(|m| *m != "c"), Some("b"));
    }

    #[test]
    fn unacked_messages_of_a_leaving_member_go_to_another() {
        let mut g: Group<&str, u32> = Group::new();
        g.join("a");
        g.join("b");
        for msg in 1..=4 {
            let m = g.pick(|_| true).expect("member");
            g.sent(msg, m);
        }
        g.acked(&1); // a had 1 and 3; b had 2 and 4.
        let mut orphans = g.leave(&"a", false);
        orphans.sort();
        assert_eq!(orphans, [3]);
        assert_eq!(g.len(), 1);
        for msg in orphans {
            let m = g.pick(|_| true).expect("member");
            assert_eq!(m, "b");
            g.sent(msg, m);
        }
        let mut left = g.leave(&"b", false);
        left.sort();
        assert_eq!(left, [2, 3, 4]);
        assert!(g.is_empty() && g.pick(|_| true).is_none());
    }

    proptest! {
        /// With all members connected and unlimited quota, n picks visit
        /// every member once per round; and every message sent is either
        /// acked or handed back exactly once when its member leaves.
        #[test]
        fn fair_and_loses_nothing(members in 1usize..6, msgs in 1u32..60, leaver in 0usize..6) {
            let mut g: Group<usize, u32> = Group::new();
            for m in 0..members {
                g.join(m);
            }
            let mut counts = vec![0u32; members];
            let mut held: HashMap<u32, usize> = HashMap::new();
            for msg in 0..msgs {
                let m = g.pick(|_| true).expect("member");
                counts[m] += 1;
                g.sent(msg, m);
                held.insert(msg, m);
            }
            let (lo, hi) = (counts.iter().min().copied(), counts.iter().max().copied());
            prop_assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1));
            let leaver = leaver % members;
            let back: HashSet<u32> = g.leave(&leaver, false).into_iter().collect();
            let want: HashSet<u32> = held.iter().filter(|(_, m)| **m == leaver).map(|(k, _)| *k).collect();
            prop_assert_eq!(back, want);
            prop_assert!(g.leave(&leaver, false).is_empty());
            if members > 1 {
                prop_assert!(g.pick(|_| true).is_some_and(|m| m != leaver));
            }
        }
    }
}
