//! Per-pipe message rules: exclusions, max payload, remap, QoS, retain and
//! the MQTT 5 properties ([`PropertyRules`]). Pure: a message in, the
//! forwarded copy or a drop reason out.

use std::borrow::Cow;

use crate::protocol::{Message, QoS, Topic};
use crate::topic::{FilterTrie, Remap, RemapError};

use super::properties::PropertyRules;
use super::stats::DropReason;

/// The QoS of forwarded copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosPolicy {
    /// min(incoming QoS, cap).
    Max(QoS),
    /// Always this QoS (a QoS 0 message forced to 1 waits for the destination
    /// ack, but has nothing to acknowledge upstream).
    Force(QoS),
}

/// Why a message was not forwarded by a pipe's rules.
#[derive(Debug)]
pub struct Dropped {
    /// The counted reason.
    pub reason: DropReason,
    /// The remap error, when the reason is [`DropReason::Remap`].
    pub error: Option<RemapError>,
}

impl Dropped {
    fn because(reason: DropReason) -> Self {
        Dropped {
            reason,
            error: None,
        }
    }
}

/// The compiled rules of one pipe.
#[derive(Debug)]
pub struct PipeRules {
    exclude: FilterTrie<()>,
    remap: Remap,
    qos: QosPolicy,
    clear_retain: bool,
    max_payload: Option<usize>,
    properties: PropertyRules,
}

impl PipeRules {
    /// Rules from their parts; `exclude` filters must be valid (the config
    /// checked them), an invalid one matches nothing useful but never panics.
    pub fn new(
        exclude: &[String],
        remap: Remap,
        qos: QosPolicy,
        clear_retain: bool,
        max_payload: Option<usize>,
    ) -> Self {
        let mut trie = FilterTrie::new();
        for f in exclude {
            trie.insert(f, ());
        }
        PipeRules {
            exclude: trie,
            remap,
            qos,
            clear_retain,
            max_payload,
            properties: PropertyRules::default(),
        }
    }

    /// The same rules with these property options (the default passes
    /// every property but the subscription identifiers unchanged).
    pub fn with_properties(mut self, properties: PropertyRules) -> Self {
        self.properties = properties;
        self
    }

    /// Rules that forward everything unchanged.
    pub fn pass_through() -> Self {
        PipeRules::new(
            &[],
            Remap::default(),
            QosPolicy::Max(QoS::ExactlyOnce),
            false,
            None,
        )
    }

    /// The forwarded copy of `msg`, or why it is dropped. `filter_qos` is the
    /// highest QoS among this pipe's filters that matched the topic: the
    /// pipe's subscription QoS, which caps the incoming QoS like a broker
    /// would (the shared source subscription is made at the maximum).
    pub fn apply(&self, msg: &Message, filter_qos: QoS) -> Result<Message, Dropped> {
        let mut excluded = false;
        self.exclude
            .for_each_match(&msg.topic, |_, _| excluded = true);
        if excluded {
            return Err(Dropped::because(DropReason::Excluded));
        }
        if self.max_payload.is_some_and(|max| msg.payload.len() > max) {
            return Err(Dropped::because(DropReason::Oversize));
        }
        let topic = match self.remap.apply(&msg.topic) {
            // No rule applied: the copy shares the original topic.
            Ok(Cow::Borrowed(_)) => msg.topic.clone(),
            Ok(Cow::Owned(rewritten)) => Topic::from(rewritten),
            Err(e) => {
                return Err(Dropped {
                    reason: DropReason::Remap,
                    error: Some(e),
                });
            }
        };
        let properties = self
            .properties
            .apply(msg.properties.as_ref(), &self.remap)
            .map_err(|_| Dropped::because(DropReason::Loop))?;
        let incoming = msg.qos.min(filter_qos);
        let qos = match self.qos {
            QosPolicy::Max(cap) => incoming.min(cap),
            QosPolicy::Force(q) => q,
        };
        Ok(Message {
            topic,
            payload: msg.payload.clone(),
            qos,
            retain: msg.retain && !self.clear_retain,
            dup: false,
            properties,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::RemapRule;

    fn msg(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Message {
        Message::new(topic, payload.to_vec(), qos, retain)
    }

    #[test]
    fn pass_through_keeps_everything_but_dup() {
        let r = PipeRules::pass_through();
        let mut m = msg("a/b", b"x", QoS::ExactlyOnce, true);
        m.dup = true;
        let out = r.apply(&m, QoS::ExactlyOnce).unwrap();
        assert_eq!(out.topic, "a/b");
        assert_eq!(out.qos, QoS::ExactlyOnce);
        assert!(out.retain);
        assert!(!out.dup);
    }

    #[test]
    fn a_copy_shares_the_topic_unless_remapped() {
        let m = msg("t/1", b"x", QoS::AtLeastOnce, false);
        let out = PipeRules::pass_through()
            .apply(&m, QoS::AtLeastOnce)
            .unwrap();
        assert!(out.topic.is_shared_with(&m.topic));
        let remapped = PipeRules::new(
            &[],
            Remap::new(vec![RemapRule::prefix(Some("t/"), Some("u/"))]),
            QosPolicy::Max(QoS::ExactlyOnce),
            false,
            None,
        )
        .apply(&m, QoS::AtLeastOnce)
        .unwrap();
        assert_eq!(remapped.topic, "u/1");
        assert!(!remapped.topic.is_shared_with(&m.topic));
    }

    #[test]
    fn properties_pass_without_the_subscription_ids_and_hop_limit_drops_as_loop() {
        use crate::protocol::{MessageProperties, PropertyFields};
        let mut m = msg("t", b"x", QoS::AtLeastOnce, false);
        let fields = PropertyFields {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into()), ("h".into(), "2".into())],
            subscription_identifiers: vec![7],
            ..Default::default()
        };
        m.properties = Some(MessageProperties::from(fields.clone()));
        let out = PipeRules::pass_through()
            .apply(&m, QoS::AtLeastOnce)
            .unwrap();
        let want = PropertyFields {
            subscription_identifiers: vec![],
            ..fields
        };
        assert_eq!(out.properties, Some(MessageProperties::from(want)));
        let limited = PipeRules::pass_through().with_properties(PropertyRules {
            hops: Some(super::super::properties::HopLimit {
                property: "h".into(),
                max_hops: 2,
            }),
            ..Default::default()
        });
        let e = limited.apply(&m, QoS::AtLeastOnce).unwrap_err();
        assert_eq!(e.reason, DropReason::Loop);
    }

    #[test]
    fn exclusions_drop() {
        let r = PipeRules::new(
            &["a/secret/#".into(), "+/private".into()],
            Remap::default(),
            QosPolicy::Max(QoS::ExactlyOnce),
            false,
            None,
        );
        for t in ["a/secret", "a/secret/x", "b/private"] {
            let e = r.apply(&msg(t, b"", QoS::AtMostOnce, false), QoS::AtMostOnce);
            assert_eq!(e.unwrap_err().reason, DropReason::Excluded, "{t}");
        }
        assert!(
            r.apply(
                &msg("a/public", b"", QoS::AtMostOnce, false),
                QoS::AtMostOnce
            )
            .is_ok()
        );
    }

    #[test]
    fn oversize_drops_at_the_limit_plus_one() {
        let r = PipeRules::new(
            &[],
            Remap::default(),
            QosPolicy::Max(QoS::AtLeastOnce),
            false,
            Some(3),
        );
        assert!(
            r.apply(&msg("t", b"abc", QoS::AtLeastOnce, false), QoS::AtLeastOnce)
                .is_ok()
        );
        let e = r.apply(
            &msg("t", b"abcd", QoS::AtLeastOnce, false),
            QoS::AtLeastOnce,
        );
        assert_eq!(e.unwrap_err().reason, DropReason::Oversize);
    }

    #[test]
    fn qos_cap_filter_qos_and_force() {
        let cap1 = PipeRules::new(
            &[],
            Remap::default(),
            QosPolicy::Max(QoS::AtLeastOnce),
            false,
            None,
        );
        let m2 = msg("t", b"", QoS::ExactlyOnce, false);
        assert_eq!(
            cap1.apply(&m2, QoS::ExactlyOnce).unwrap().qos,
            QoS::AtLeastOnce
        );
        assert_eq!(
            cap1.apply(&m2, QoS::AtMostOnce).unwrap().qos,
            QoS::AtMostOnce
        );
        let m0 = msg("t", b"", QoS::AtMostOnce, false);
        assert_eq!(
            cap1.apply(&m0, QoS::ExactlyOnce).unwrap().qos,
            QoS::AtMostOnce
        );
        let force1 = PipeRules::new(
            &[],
            Remap::default(),
            QosPolicy::Force(QoS::AtLeastOnce),
            false,
            None,
        );
        assert_eq!(
            force1.apply(&m0, QoS::AtMostOnce).unwrap().qos,
            QoS::AtLeastOnce
        );
        assert_eq!(
            force1.apply(&m2, QoS::ExactlyOnce).unwrap().qos,
            QoS::AtLeastOnce
        );
    }

    #[test]
    fn retain_clear() {
        let r = PipeRules::new(
            &[],
            Remap::default(),
            QosPolicy::Max(QoS::AtLeastOnce),
            true,
            None,
        );
        assert!(
            !r.apply(&msg("t", b"", QoS::AtMostOnce, true), QoS::AtMostOnce)
                .unwrap()
                .retain
        );
    }

    #[test]
    fn remap_rewrites_topic() {
        let remap = Remap::new(vec![
            RemapRule::template("site/+/sensor/#", "cloud/{1}/data/{#}").unwrap(),
        ]);
        let r = PipeRules::new(&[], remap, QosPolicy::Max(QoS::AtLeastOnce), false, None);
        let out = r.apply(
            &msg("site/7/sensor/t/1", b"", QoS::AtMostOnce, false),
            QoS::AtMostOnce,
        );
        assert_eq!(out.unwrap().topic, "cloud/7/data/t/1");
    }

    #[test]
    fn remap_to_an_invalid_topic_drops_with_the_error() {
        let remap = Remap::new(vec![RemapRule::prefix(Some("a/"), None)]);
        let r = PipeRules::new(&[], remap, QosPolicy::Max(QoS::AtLeastOnce), false, None);
        let e = r
            .apply(&msg("a/", b"", QoS::AtMostOnce, false), QoS::AtMostOnce)
            .unwrap_err();
        assert_eq!(e.reason, DropReason::Remap);
        assert!(e.error.is_some());
    }
}
