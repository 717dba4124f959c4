//! Subscriptions of one source link: which filters are subscribed, which
//! pipes use each, and the task that sends SUBSCRIBE/UNSUBSCRIBE in order.
//!
//! A reload subscribes only filters that are new (or whose QoS went up, or
//! whose MQTT 5 options changed) and unsubscribes only filters no remaining
//! pipe uses: a full re-subscribe would make the broker resend its retained
//! messages to every pipe.
//!
//! Options per filter: the highest QoS any pipe asks for; retain as
//! published when any pipe on the filter asks for it (`retain:
//! as_published`); no local for every filter of a source while the pipe set
//! makes it safe ([`no_local_is_safe`]), except `$share/` filters (where it
//! is a protocol error). A 3.1.1 peer ignores the options.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::link::Link;
use crate::protocol::{QoS, SubscribeOptions, shared};

use super::loopguard::BrokerIx;

/// What a change of the pipe set asks of the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SubChange {
    /// Filters to (re)subscribe, with the QoS and options to ask for.
    pub subscribe: Vec<(String, SubscribeOptions)>,
    /// Filters no pipe uses any more.
    pub unsubscribe: Vec<String>,
}

/// What one pipe asks of one filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PipeSub {
    /// The filter's QoS in the pipe.
    pub qos: QoS,
    /// `retain: as_published`.
    pub retain_as_published: bool,
}

/// One pipe's filters as the subscription table sees them.
pub(crate) type PipeFilters = (String, Vec<(String, PipeSub)>);

/// filter → (pipe → what that pipe asks for), and whether the source's
/// subscriptions carry no local. Pure.
#[derive(Debug, Default)]
pub(crate) struct SubTable {
    users: BTreeMap<String, BTreeMap<String, PipeSub>>,
    no_local: bool,
}

impl SubTable {
    /// The subscription each filter needs: the highest QoS any pipe asks
    /// for, retain as published if any pipe asks for it, and the source's
    /// no local.
    fn union(&self) -> BTreeMap<String, SubscribeOptions> {
        self.users
            .iter()
            .filter_map(|(f, pipes)| {
                let qos = pipes.values().map(|p| p.qos).max()?;
                let options = SubscribeOptions {
                    // No local on a shared subscription is a protocol
                    // error [MQTT-3.8.3-4].
                    no_local: self.no_local && matches!(shared::parse(f), Ok(None)),
                    retain_as_published: pipes.values().any(|p| p.retain_as_published),
                    ..SubscribeOptions::qos(qos)
                };
                Some((f.clone(), options))
            })
            .collect()
    }

    /// Whether the subscriptions carry no local now.
    pub(crate) fn no_local(&self) -> bool {
        self.no_local
    }

    /// Applies one reload step at once — pipes `remove` go, pipes `add`
    /// (name, filters) come; a changed pipe is in both — with the source's
    /// no local now `no_local`, and returns the difference between the
    /// subscriptions before and after.
    pub(crate) fn change(
        &mut self,
        remove: &[String],
        add: &[PipeFilters],
        no_local: bool,
    ) -> SubChange {
        let before = self.union();
        for pipes in self.users.values_mut() {
            for name in remove {
                pipes.remove(name);
            }
        }
        self.users.retain(|_, pipes| !pipes.is_empty());
        for (name, filters) in add {
            for (filter, sub) in filters {
                let q = self
                    .users
                    .entry(filter.clone())
                    .or_default()
                    .entry(name.clone())
                    .or_insert(*sub);
                q.qos = q.qos.max(sub.qos);
                q.retain_as_published |= sub.retain_as_published;
            }
        }
        self.no_local = no_local;
        let after = self.union();
        SubChange {
            subscribe: after
                .iter()
                .filter(|(f, o)| {
                    before.get(*f).is_none_or(|old| {
                        o.qos > old.qos
                            || o.no_local != old.no_local
                            || o.retain_as_published != old.retain_as_published
                    })
                })
                .map(|(f, o)| (f.clone(), *o))
                .collect(),
            unsubscribe: before
                .keys()
                .filter(|f| !after.contains_key(*f))
                .cloned()
                .collect(),
        }
    }
}

/// Whether the subscriptions at `source` may carry no local, given every
/// pipe as (source, destination): only when all pipes into `source` come
/// from one broker and all pipes out of it go back to that broker. Then
/// whatever the bridge publishes into `source` came from the one broker
/// every pipe there would send it back to, so the fingerprint guard would
/// drop it as a loop anyway: no local only spares the round trip. With a
/// chain (A → S → C) or a fan-in (A → S, B → S, S → A, S → B) our own
/// publishes at S must come back to be forwarded on, and no local would
/// lose them; the fingerprint guard keeps covering those.
pub(crate) fn no_local_is_safe(source: BrokerIx, pipes: &[(BrokerIx, BrokerIx)]) -> bool {
    let into = pipes
        .iter()
        .filter(|(_, to)| *to == source)
        .map(|(from, _)| *from);
    let out = pipes
        .iter()
        .filter(|(from, _)| *from == source)
        .map(|(_, to)| *to);
    let Some(peer) = into.clone().next() else {
        return false;
    };
    out.clone().next().is_some() && into.chain(out).all(|b| b == peer)
}

/// One queued subscription change.
#[derive(Debug)]
pub(crate) struct SubOp {
    /// Cancelled once the dispatcher routes by the new table (so a message
    /// on a new filter always finds its pipe).
    pub routed: CancellationToken,
    /// What to send.
    pub change: SubChange,
}

/// Sends the queued changes to the broker one after the other (each waits
/// for its SUBACK/UNSUBACK, which may only come after a reconnect; the
/// dispatcher keeps taking deliveries meanwhile). `pending` counts queued
/// and running operations.
pub(crate) async fn run_subscriber(
    name: String,
    link: Link,
    mut ops: mpsc::UnboundedReceiver<SubOp>,
    intake: CancellationToken,
    pending: Arc<watch::Sender<usize>>,
) {
    loop {
        // Cancel safety: `recv` loses nothing when the intake branch wins.
        let op = tokio::select! {
            op = ops.recv() => op,
            () = intake.cancelled() => return,
        };
        let Some(op) = op else { return };
        tokio::select! {
            () = apply(&name, &link, op) => {}
            () = intake.cancelled() => return,
        }
        pending.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn apply(name: &str, link: &Link, op: SubOp) {
    op.routed.cancelled().await;
    let SubChange {
        subscribe,
        unsubscribe,
    } = op.change;
    if !unsubscribe.is_empty() {
        match link.unsubscribe(unsubscribe.clone()).await {
            Ok(()) => {
                for filter in &unsubscribe {
                    tracing::info!(broker = %name, filter = %filter, "unsubscribed");
                }
            }
            Err(err) => tracing::error!(broker = %name, error = %err, "unsubscribe failed"),
        }
    }
    if subscribe.is_empty() {
        return;
    }
    match link.subscribe_with(subscribe.clone()).await {
        Ok(granted) => {
            for ((filter, _), g) in subscribe.iter().zip(granted.iter()) {
                match g {
                    Some(q) => {
                        tracing::info!(broker = %name, filter = %filter, qos = q.as_u8(), "subscribed")
                    }
                    None => {
                        tracing::error!(broker = %name, filter = %filter, "subscription refused by the broker")
                    }
                }
            }
        }
        Err(err) => tracing::error!(broker = %name, error = %err, "subscribe failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn qos(q: u8) -> QoS {
        QoS::from_u8(q).unwrap_or(QoS::ExactlyOnce)
    }

    /// Filters of one pipe (plain QoS, no options).
    fn f(list: &[(&str, u8)]) -> Vec<(String, PipeSub)> {
        list.iter()
            .map(|(f, q)| {
                let sub = PipeSub {
                    qos: qos(*q),
                    retain_as_published: false,
                };
                (f.to_string(), sub)
            })
            .collect()
    }

    /// Subscriptions to send (plain QoS, no options).
    fn s(list: &[(&str, u8)]) -> Vec<(String, SubscribeOptions)> {
        list.iter()
            .map(|(f, q)| (f.to_string(), SubscribeOptions::qos(qos(*q))))
            .collect()
    }

    #[test]
    fn only_new_filters_are_subscribed_and_only_unused_ones_dropped() {
        let mut t = SubTable::default();
        let c = t.change(
            &[],
            &[
                ("a".into(), f(&[("x/#", 1), ("shared/#", 1)])),
                ("b".into(), f(&[("shared/#", 1)])),
            ],
            false,
        );
        assert_eq!(c.subscribe, s(&[("shared/#", 1), ("x/#", 1)]));
        assert!(c.unsubscribe.is_empty());
        // A new pipe on a filter already subscribed at that QoS: nothing to send.
        let c = t.change(
            &[],
            &[("c".into(), f(&[("shared/#", 0), ("y/#", 0)]))],
            false,
        );
        assert_eq!(c.subscribe, s(&[("y/#", 0)]));
        // Removing `a`: `shared/#` is still used by b and c.
        let c = t.change(&["a".into()], &[], false);
        assert!(c.subscribe.is_empty());
        assert_eq!(c.unsubscribe, vec!["x/#".to_string()]);
    }

    #[test]
    fn a_changed_pipe_with_the_same_filters_sends_nothing() {
        let mut t = SubTable::default();
        t.change(&[], &[("a".into(), f(&[("x/#", 1)]))], false);
        let c = t.change(&["a".into()], &[("a".into(), f(&[("x/#", 1)]))], false);
        assert_eq!(c, SubChange::default());
        // A raised QoS re-subscribes that filter only.
        let c = t.change(&["a".into()], &[("a".into(), f(&[("x/#", 2)]))], false);
        assert_eq!(c.subscribe, s(&[("x/#", 2)]));
    }

    #[test]
    fn options_change_resubscribes_with_retain_as_published_and_no_local() {
        let mut t = SubTable::default();
        t.change(&[], &[("a".into(), f(&[("x/#", 1)]))], false);
        let rap = PipeSub {
            qos: QoS::AtMostOnce,
            retain_as_published: true,
        };
        // Another pipe on the filter wants the retain flag as published.
        let c = t.change(&[], &[("b".into(), vec![("x/#".into(), rap)])], false);
        let want = SubscribeOptions {
            retain_as_published: true,
            ..SubscribeOptions::qos(QoS::AtLeastOnce)
        };
        assert_eq!(c.subscribe, vec![("x/#".to_string(), want)]);
        // The source becomes safe for no local: every filter again.
        let c = t.change(&[], &[], true);
        let want = SubscribeOptions {
            no_local: true,
            ..want
        };
        assert_eq!(c.subscribe, vec![("x/#".to_string(), want)]);
        assert_eq!(t.change(&[], &[], true), SubChange::default());
        // Never on a shared subscription (a protocol error there).
        let c = t.change(&[], &[("c".into(), f(&[("$share/g/y/#", 1)]))], true);
        assert_eq!(c.subscribe, s(&[("$share/g/y/#", 1)]));
    }

    #[test]
    fn no_local_only_where_every_copy_back_would_be_a_loop() {
        // a ⇄ s: a mirror.
        assert!(no_local_is_safe(1, &[(0, 1), (1, 0)]));
        // s is only a source, or only a destination: nothing to guard.
        assert!(!no_local_is_safe(1, &[(1, 0)]));
        assert!(!no_local_is_safe(1, &[(0, 1)]));
        // A chain through s (a → s → c): our publish at s must come back.
        assert!(!no_local_is_safe(1, &[(0, 1), (1, 0), (1, 2)]));
        // A fan-in (a → s, b → s, s → a, s → b): a's message goes on to b.
        assert!(!no_local_is_safe(1, &[(0, 1), (2, 1), (1, 0), (1, 2)]));
        // A pipe from s into s (a rewrite): its copy would be a loop.
        assert!(no_local_is_safe(1, &[(1, 1)]));
        // Pipes elsewhere do not matter.
        assert!(no_local_is_safe(1, &[(0, 1), (1, 0), (2, 3)]));
    }

    proptest! {
        /// Replaying the changes on a set of subscriptions always gives
        /// exactly the union the current pipes need, options included.
        #[test]
        fn changes_track_the_union(steps in prop::collection::vec(
            (
                prop::collection::vec(0usize..4, 0..3),
                prop::collection::vec((0usize..4, 0usize..4, 0u8..3, any::<bool>()), 0..4),
                any::<bool>(),
            ),
            1..20,
        )) {
            let filters = ["a/#", "b/+", "c", "#"];
            let mut t = SubTable::default();
            let mut subscribed: BTreeMap<String, SubscribeOptions> = BTreeMap::new();
            let mut pipes: BTreeMap<String, Vec<(String, PipeSub)>> = BTreeMap::new();
            for (remove, add, no_local) in steps {
                let mut remove: Vec<String> = remove.iter().map(|p| format!("p{p}")).collect();
                let mut adds: BTreeMap<String, Vec<(String, PipeSub)>> = BTreeMap::new();
                for (p, fi, q, rap) in add {
                    let sub = PipeSub { qos: qos(q), retain_as_published: rap };
                    adds.entry(format!("p{p}")).or_default().push((filters[fi].to_string(), sub));
                }
                let adds: Vec<_> = adds.into_iter().collect();
                // As in a reload: a pipe that is added again was changed.
                for (n, _) in &adds {
                    if !remove.contains(n) { remove.push(n.clone()); }
                }
                let c = t.change(&remove, &adds, no_local);
                for r in &remove { pipes.remove(r); }
                for (n, fs) in &adds { pipes.insert(n.clone(), fs.clone()); }
                for u in &c.unsubscribe { prop_assert!(subscribed.remove(u).is_some()); }
                for (s, o) in &c.subscribe { subscribed.insert(s.clone(), *o); }
                let mut want: BTreeMap<String, PipeSub> = BTreeMap::new();
                for fs in pipes.values() {
                    for (fl, sub) in fs {
                        let e = want.entry(fl.clone()).or_insert(*sub);
                        e.qos = e.qos.max(sub.qos);
                        e.retain_as_published |= sub.retain_as_published;
                    }
                }
                // Subscribed QoS never below what is needed; options exact;
                // filters match exactly.
                prop_assert_eq!(subscribed.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
                for (fl, sub) in &want {
                    let got = subscribed[fl];
                    prop_assert!(got.qos >= sub.qos);
                    prop_assert_eq!(got.retain_as_published, sub.retain_as_published);
                    prop_assert_eq!(got.no_local, no_local);
                }
            }
        }
    }
}
