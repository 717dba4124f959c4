//! What a pipe does with a message's MQTT 5 properties on the way through.
//! Pure: the copy's properties in, the properties to send (or a drop) out.
//!
//! By default everything passes unchanged (user properties in order,
//! content type, payload format indicator, correlation data, response
//! topic, message expiry) except the subscription identifiers, which belong
//! to the bridge's subscription at the source and never travel on. The
//! pipe's options can remap the response topic, remove and add user
//! properties, and count hops in a user property across chains of bridges.

use crate::protocol::{MessageProperties, PropertyFields};
use crate::topic::Remap;

/// `response_topic:` of a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseTopic {
    /// Forward the response topic as received (default).
    #[default]
    Keep,
    /// Rewrite it with the pipe's remap rules (a topic no rule applies to,
    /// or one a rule would make invalid, stays as it is).
    Remap,
}

/// The hop limit across chains of bridges: a user property counting how
/// many bridges forwarded the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopLimit {
    /// The user property's name.
    pub property: String,
    /// A message arriving with this many hops or more is dropped (`loop`).
    pub max_hops: u32,
}

/// A message arrived with `hops` hops, at or over the pipe's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("message has crossed {hops} bridges, at or over the limit")]
pub struct HopLimitReached {
    /// Hops counted on arrival.
    pub hops: u32,
}

/// A pipe's property options, compiled.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PropertyRules {
    /// What happens to the response topic.
    pub response_topic: ResponseTopic,
    /// User property names whose every pair is removed.
    pub remove: Vec<String>,
    /// User properties appended after the existing ones, in this order.
    pub add: Vec<(String, String)>,
    /// The hop counter, when the pipe keeps one.
    pub hops: Option<HopLimit>,
}

impl PropertyRules {
    /// The properties to forward for `props` (a received message's), with
    /// `remap` being the pipe's topic remap. `Err` when the hop limit is
    /// reached (the caller drops the message as a loop).
    pub fn apply(
        &self,
        props: Option<&MessageProperties>,
        remap: &Remap,
    ) -> Result<Option<MessageProperties>, HopLimitReached> {
        let hops = match &self.hops {
            Some(limit) => {
                let hops = props.map_or(0, |p| hop_count(&p.user_properties, &limit.property));
                if hops >= limit.max_hops {
                    return Err(HopLimitReached { hops });
                }
                Some((limit, hops))
            }
            None => None,
        };
        let changes_users = hops.is_some() || !self.add.is_empty() || !self.remove.is_empty();
        let Some(mut out) = props
            .cloned()
            .or_else(|| changes_users.then(|| MessageProperties::from(PropertyFields::default())))
        else {
            return Ok(None);
        };
        // They identify the bridge's own subscription at the source.
        out.subscription_identifiers.clear();
        if self.response_topic == ResponseTopic::Remap
            && let Some(topic) = out.response_topic.as_deref()
            && let Ok(std::borrow::Cow::Owned(remapped)) = remap.apply(topic)
        {
            out.response_topic = Some(remapped);
        }
        if changes_users {
            let users = &mut out.user_properties;
            users.retain(|(name, _)| !self.remove.contains(name));
            users.extend(self.add.iter().cloned());
            if let Some((limit, hops)) = hops {
                users.retain(|(name, _)| *name != limit.property);
                users.push((limit.property.clone(), hops.saturating_add(1).to_string()));
            }
        }
        Ok(Some(out))
    }
}

/// The hop count a message carries in the user property `name`: the
/// highest count among its pairs with that name (a value that is not a
/// count is ignored; none at all is 0).
pub fn hop_count(users: &[(String, String)], name: &str) -> u32 {
    users
        .iter()
        .filter(|(n, _)| n == name)
        .filter_map(|(_, v)| v.trim().parse::<u32>().ok())
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::topic::RemapRule;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn every_property() -> MessageProperties {
        MessageProperties::from(PropertyFields {
            payload_is_utf8: Some(true),
            message_expiry_interval: Some(60),
            content_type: Some("application/json".into()),
            response_topic: Some("site/7/reply/abc".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
            user_properties: pairs(&[("b", "2"), ("a", "1"), ("b", "3")]),
            subscription_identifiers: vec![4, 9],
        })
    }

    fn remap() -> Remap {
        Remap::new(vec![RemapRule::prefix(Some("site/"), Some("cloud/"))])
    }

    #[test]
    fn by_default_everything_but_subscription_ids_passes_unchanged() {
        let props = every_property();
        let out = PropertyRules::default()
            .apply(Some(&props), &remap())
            .expect("no limit")
            .expect("properties");
        let mut want = props.clone();
        want.subscription_identifiers.clear();
        assert_eq!(out, want);
        assert_eq!(
            PropertyRules::default().apply(None, &remap()),
            Ok(None),
            "a 3.1.1 message stays without properties"
        );
    }

    #[test]
    fn response_topic_remap_uses_the_pipe_rules_and_leaves_others() {
        let rules = PropertyRules {
            response_topic: ResponseTopic::Remap,
            ..Default::default()
        };
        let out = rules.apply(Some(&every_property()), &remap()).unwrap();
        assert_eq!(
            out.and_then(|p| p.response_topic.clone()).as_deref(),
            Some("cloud/7/reply/abc")
        );
        let mut other = every_property();
        other.response_topic = Some("elsewhere/reply".into());
        let out = rules.apply(Some(&other), &remap()).unwrap();
        assert_eq!(
            out.and_then(|p| p.response_topic.clone()).as_deref(),
            Some("elsewhere/reply"),
            "no rule applies: unchanged"
        );
        // A rule that would produce an invalid topic leaves it as it is.
        let strip = Remap::new(vec![RemapRule::prefix(Some("site/"), None)]);
        let mut edge = every_property();
        edge.response_topic = Some("site/".into());
        let out = rules.apply(Some(&edge), &strip).unwrap();
        assert_eq!(
            out.and_then(|p| p.response_topic.clone()).as_deref(),
            Some("site/")
        );
        let kept = PropertyRules::default()
            .apply(Some(&every_property()), &remap())
            .unwrap();
        assert_eq!(
            kept.and_then(|p| p.response_topic.clone()).as_deref(),
            Some("site/7/reply/abc"),
            "keep (default) forwards it as received"
        );
    }

    #[test]
    fn remove_deletes_every_pair_then_add_appends_in_order() {
        let rules = PropertyRules {
            remove: vec!["b".into()],
            add: pairs(&[("via", "edge-1"), ("b", "new")]),
            ..Default::default()
        };
        let out = rules.apply(Some(&every_property()), &remap()).unwrap();
        assert_eq!(
            out.map(|p| p.user_properties.clone()),
            Some(pairs(&[("a", "1"), ("via", "edge-1"), ("b", "new")]))
        );
        // A message without properties gets the added ones.
        let out = rules.apply(None, &remap()).unwrap();
        assert_eq!(
            out.map(|p| p.user_properties.clone()),
            Some(pairs(&[("via", "edge-1"), ("b", "new")]))
        );
    }

    #[test]
    fn hops_are_counted_and_the_limit_drops() {
        let rules = PropertyRules {
            hops: Some(HopLimit {
                property: "mqbridge-hops".into(),
                max_hops: 3,
            }),
            ..Default::default()
        };
        let out = rules.apply(None, &remap()).unwrap();
        assert_eq!(
            out.map(|p| p.user_properties.clone()),
            Some(pairs(&[("mqbridge-hops", "1")])),
            "first bridge"
        );
        let mut p = every_property();
        p.user_properties = pairs(&[
            ("mqbridge-hops", "2"),
            ("x", "y"),
            ("mqbridge-hops", "junk"),
        ]);
        let out = rules.apply(Some(&p), &remap()).unwrap();
        assert_eq!(
            out.map(|p| p.user_properties.clone()),
            Some(pairs(&[("x", "y"), ("mqbridge-hops", "3")])),
            "one pair, moved last, incremented"
        );
        p.user_properties = pairs(&[("mqbridge-hops", "3")]);
        assert_eq!(
            rules.apply(Some(&p), &remap()),
            Err(HopLimitReached { hops: 3 })
        );
        p.user_properties = pairs(&[("mqbridge-hops", "4294967295")]);
        assert_eq!(
            rules.apply(Some(&p), &remap()),
            Err(HopLimitReached { hops: u32::MAX })
        );
    }

    fn users() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec(("[a-d]", "[0-9]{0,2}"), 0..8)
    }

    proptest! {
        /// Remove/add: pairs not removed keep their relative order and come
        /// first; the added pairs follow in their order; no removed name
        /// survives unless added.
        #[test]
        fn user_property_edits_keep_order(
            existing in users(),
            remove in prop::collection::vec("[a-d]", 0..3),
            add in users(),
        ) {
            let rules = PropertyRules { remove: remove.clone(), add: add.clone(), ..Default::default() };
            let props = MessageProperties::from(PropertyFields { user_properties: existing.clone(), ..Default::default() });
            let out = rules.apply(Some(&props), &Remap::default()).unwrap().unwrap();
            let kept: Vec<_> = existing.into_iter().filter(|(n, _)| !remove.contains(n)).collect();
            let mut want = kept;
            want.extend(add);
            prop_assert_eq!(&out.user_properties, &want);
        }

        /// Along a chain of bridges with one limit, a message is forwarded
        /// exactly `max_hops` times, whatever count it started from below.
        #[test]
        fn a_chain_forwards_at_most_max_hops_times(max_hops in 1u32..20, start in 0u32..25) {
            let rules = PropertyRules {
                hops: Some(HopLimit { property: "h".into(), max_hops }),
                ..Default::default()
            };
            let mut props = Some(MessageProperties::from(PropertyFields {
                user_properties: vec![("h".into(), start.to_string())],
                ..Default::default()
            }));
            let mut forwards = 0u32;
            while let Ok(next) = rules.apply(props.as_ref(), &Remap::default()) {
                forwards += 1;
                prop_assert!(forwards <= max_hops);
                prop_assert_eq!(hop_count(&next.as_ref().unwrap().user_properties, "h"), start + forwards);
                props = next;
            }
            prop_assert_eq!(forwards, max_hops.saturating_sub(start));
        }
    }
}
