//! Shared subscriptions (spec 4.8.2): parsing `$share/{group}/{filter}`
//! and the distribution policy of one group, as a pure data structure.
//!
//! Distribution policy (the router applies it, see `docs/protocol.md`):
//! each message goes to one member, round robin; the router says at each
//! pick which members may take it (connected with room first, then any
//! connected, then a persistent member that is away). Works for 3.1.1
//! clients too, as in Mosquitto.

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

/// Whether `filter` is a shared subscription (valid or not).
pub fn is_shared(filter: &str) -> bool {
    filter.starts_with(PREFIX)
}

/// The filter to match topics and check permissions with: the filter after
/// the share name for a valid `$share/{group}/{filter}`, else `filter` itself.
pub fn topic_filter(filter: &str) -> &str {
    match parse(filter) {
        Ok(Some(shared)) => shared.filter,
        _ => filter,
    }
}

/// The members of one share group and whose turn is next. `M` names a
/// member (a session); whether a member can take a message now (connected,
/// room in its queue, allowed to read) is the caller's to say at each pick.
#[derive(Debug, Clone)]
pub struct Group<M> {
    /// Members in join order.
    members: Vec<M>,
    /// Index in `members` to try first next time.
    next: usize,
}

impl<M> Default for Group<M> {
    fn default() -> Self {
        Group {
            members: Vec::new(),
            next: 0,
        }
    }
}

impl<M: Clone + Eq> Group<M> {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    /// `member` subscribed (again: no change).
    pub fn join(&mut self, member: M) {
        if !self.members.contains(&member) {
            self.members.push(member);
        }
    }

    /// `member` unsubscribed, or its session ended.
    pub fn leave(&mut self, member: &M) {
        if let Some(i) = self.members.iter().position(|m| m == member) {
            self.members.remove(i);
            if i < self.next {
                self.next -= 1;
            }
            if self.next >= self.members.len() {
                self.next = 0;
            }
        }
    }

    /// The members in join order.
    pub fn members(&self) -> &[M] {
        &self.members
    }

    /// Members.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True without members: the group can be removed.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The member to send the next message to: the next member, round
    /// robin, for which `eligible` is true; `None` when there is none (the
    /// turn does not move).
    pub fn pick(&mut self, eligible: impl Fn(&M) -> bool) -> Option<M> {
        let n = self.members.len();
        (0..n)
            .map(|i| (self.next + i) % n)
            .find(|&i| eligible(&self.members[i]))
            .map(|i| {
                self.next = (i + 1) % n;
                self.members[i].clone()
            })
    }
}

#[cfg(test)]
mod tests {
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
    fn topic_filter_strips_a_valid_share_prefix_only() {
        assert_eq!(topic_filter("$share/g/a/#"), "a/#");
        assert_eq!(topic_filter("a/#"), "a/#");
        assert_eq!(topic_filter("$share/g"), "$share/g");
    }

    #[test]
    fn round_robin_skips_ineligible_members() {
        let mut g: Group<&str> = Group::new();
        g.join("a");
        g.join("b");
        g.join("c");
        g.join("b");
        assert_eq!(g.len(), 3);
        let all = |_: &&str| true;
        assert_eq!(
            [g.pick(all), g.pick(all), g.pick(all), g.pick(all)],
            [Some("a"), Some("b"), Some("c"), Some("a")]
        );
        assert_eq!([g.pick(|m| *m != "b"), g.pick(all)], [Some("c"), Some("a")]);
        assert_eq!(g.pick(|_| false), None);
        assert_eq!(g.pick(all), Some("b"));
    }

    #[test]
    fn leaving_keeps_the_turn_order() {
        let mut g: Group<u8> = Group::new();
        for m in 0..4 {
            g.join(m);
        }
        assert_eq!(g.pick(|_| true), Some(0));
        assert_eq!(g.pick(|_| true), Some(1));
        // Next is 2; 0 (before it) leaves: 2 is still next.
        g.leave(&0);
        assert_eq!(g.pick(|_| true), Some(2));
        // Next is 3, the last; it leaves: the turn wraps to 1.
        g.leave(&3);
        assert_eq!(g.pick(|_| true), Some(1));
        g.leave(&1);
        g.leave(&2);
        assert!(g.is_empty() && g.pick(|_| true).is_none());
    }

    proptest! {
        /// With every member eligible, n picks visit every member once per
        /// round; after one leaves, it is never picked again.
        #[test]
        fn fair_and_forgets_a_leaver(members in 1usize..6, msgs in 1u32..60, leaver in 0usize..6) {
            let mut g: Group<usize> = Group::new();
            for m in 0..members {
                g.join(m);
            }
            let mut counts = vec![0u32; members];
            for _ in 0..msgs {
                let m = g.pick(|_| true).expect("member");
                counts[m] += 1;
            }
            let (lo, hi) = (counts.iter().min().copied(), counts.iter().max().copied());
            prop_assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1));
            let leaver = leaver % members;
            g.leave(&leaver);
            prop_assert_eq!(g.len(), members - 1);
            for _ in 0..members * 2 {
                prop_assert!(g.pick(|_| true) != Some(leaver));
            }
        }
    }
}
