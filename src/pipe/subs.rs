//! Subscriptions of one source link: which filters are subscribed, which
//! pipes use each, and the task that sends SUBSCRIBE/UNSUBSCRIBE in order.
//!
//! A reload subscribes only filters that are new (or whose QoS went up) and
//! unsubscribes only filters no remaining pipe uses: a full re-subscribe
//! would make the broker resend its retained messages to every pipe.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::link::Link;
use crate::protocol::QoS;

/// What a change of the pipe set asks of the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SubChange {
    /// Filters to (re)subscribe, with the QoS to ask for.
    pub subscribe: Vec<(String, QoS)>,
    /// Filters no pipe uses any more.
    pub unsubscribe: Vec<String>,
}

/// filter → (pipe → QoS that pipe asks for). Pure.
#[derive(Debug, Default)]
pub(crate) struct SubTable {
    users: BTreeMap<String, BTreeMap<String, QoS>>,
}

impl SubTable {
    /// The subscription each filter needs: the highest QoS any pipe asks for.
    fn union(&self) -> BTreeMap<String, QoS> {
        self.users
            .iter()
            .filter_map(|(f, pipes)| Some((f.clone(), *pipes.values().max()?)))
            .collect()
    }

    /// Applies one reload step at once — pipes `remove` go, pipes `add`
    /// (name, filters) come; a changed pipe is in both — and returns the
    /// difference between the subscriptions before and after.
    pub(crate) fn change(
        &mut self,
        remove: &[String],
        add: &[(String, Vec<(String, QoS)>)],
    ) -> SubChange {
        let before = self.union();
        for pipes in self.users.values_mut() {
            for name in remove {
                pipes.remove(name);
            }
        }
        self.users.retain(|_, pipes| !pipes.is_empty());
        for (name, filters) in add {
            for (filter, qos) in filters {
                let q = self
                    .users
                    .entry(filter.clone())
                    .or_default()
                    .entry(name.clone())
                    .or_insert(*qos);
                *q = (*q).max(*qos);
            }
        }
        let after = self.union();
        SubChange {
            subscribe: after
                .iter()
                .filter(|(f, q)| before.get(*f).is_none_or(|old| *q > old))
                .map(|(f, q)| (f.clone(), *q))
                .collect(),
            unsubscribe: before
                .keys()
                .filter(|f| !after.contains_key(*f))
                .cloned()
                .collect(),
        }
    }
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
    match link.subscribe(subscribe.clone()).await {
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

    fn f(list: &[(&str, u8)]) -> Vec<(String, QoS)> {
        list.iter()
            .map(|(f, q)| {
                let q = match q {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => QoS::ExactlyOnce,
                };
                (f.to_string(), q)
            })
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
        );
        assert_eq!(c.subscribe, f(&[("shared/#", 1), ("x/#", 1)]));
        assert!(c.unsubscribe.is_empty());
        // A new pipe on a filter already subscribed at that QoS: nothing to send.
        let c = t.change(&[], &[("c".into(), f(&[("shared/#", 0), ("y/#", 0)]))]);
        assert_eq!(c.subscribe, f(&[("y/#", 0)]));
        // Removing `a`: `shared/#` is still used by b and c.
        let c = t.change(&["a".into()], &[]);
        assert!(c.subscribe.is_empty());
        assert_eq!(c.unsubscribe, vec!["x/#".to_string()]);
    }

    #[test]
    fn a_changed_pipe_with_the_same_filters_sends_nothing() {
        let mut t = SubTable::default();
        t.change(&[], &[("a".into(), f(&[("x/#", 1)]))]);
        let c = t.change(&["a".into()], &[("a".into(), f(&[("x/#", 1)]))]);
        assert_eq!(c, SubChange::default());
        // A raised QoS re-subscribes that filter only.
        let c = t.change(&["a".into()], &[("a".into(), f(&[("x/#", 2)]))]);
        assert_eq!(c.subscribe, f(&[("x/#", 2)]));
    }

    proptest! {
        /// Replaying the changes on a set of subscriptions always gives
        /// exactly the union the current pipes need.
        #[test]
        fn changes_track_the_union(steps in prop::collection::vec(
            (prop::collection::vec(0usize..4, 0..3), prop::collection::vec((0usize..4, 0usize..4, 0u8..3), 0..4)),
            1..20,
        )) {
            let filters = ["a/#", "b/+", "c", "#"];
            let mut t = SubTable::default();
            let mut subscribed: BTreeMap<String, QoS> = BTreeMap::new();
            let mut pipes: BTreeMap<String, Vec<(String, QoS)>> = BTreeMap::new();
            for (remove, add) in steps {
                let mut remove: Vec<String> = remove.iter().map(|p| format!("p{p}")).collect();
                let mut adds: BTreeMap<String, Vec<(String, QoS)>> = BTreeMap::new();
                for (p, fi, q) in add {
                    adds.entry(format!("p{p}")).or_default().extend(f(&[(filters[fi], q)]));
                }
                let adds: Vec<_> = adds.into_iter().collect();
                // As in a reload: a pipe that is added again was changed.
                for (n, _) in &adds {
                    if !remove.contains(n) { remove.push(n.clone()); }
                }
                let c = t.change(&remove, &adds);
                for r in &remove { pipes.remove(r); }
                for (n, fs) in &adds { pipes.insert(n.clone(), fs.clone()); }
                for u in &c.unsubscribe { prop_assert!(subscribed.remove(u).is_some()); }
                for (s, q) in &c.subscribe { subscribed.insert(s.clone(), *q); }
                let mut want: BTreeMap<String, QoS> = BTreeMap::new();
                for fs in pipes.values() {
                    for (fl, q) in fs {
                        let e = want.entry(fl.clone()).or_insert(*q);
                        *e = (*e).max(*q);
                    }
                }
                // Subscribed QoS never below what is needed; filters match exactly.
                prop_assert_eq!(subscribed.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
                for (fl, q) in &want { prop_assert!(subscribed[fl] >= *q); }
            }
        }
    }
}
