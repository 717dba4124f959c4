//! The reload diff: which pipes and brokers a new configuration adds,
//! removes, changes or leaves alone. Pure; compared by `PartialEq`.

use std::collections::BTreeMap;

use super::{BrokerKind, BrokerPlan, Plan};

/// The keys of a map sorted into four buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes<K> {
    /// Present in both, equal: keep running untouched.
    pub unchanged: Vec<K>,
    /// Present in both, different: drain and restart (or reconnect).
    pub changed: Vec<K>,
    /// Only in the old map: drain and stop.
    pub removed: Vec<K>,
    /// Only in the new map: start.
    pub added: Vec<K>,
}

impl<K> Default for Changes<K> {
    fn default() -> Self {
        Changes {
            unchanged: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
            added: Vec::new(),
        }
    }
}

impl<K> Changes<K> {
    /// True when nothing is added, changed or removed.
    pub fn is_noop(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty() && self.added.is_empty()
    }
}

/// Compares two maps by key, then by value equality.
pub fn diff_maps<K: Ord + Clone, V: PartialEq>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> Changes<K> {
    let mut out = Changes::default();
    for (k, v) in old {
        match new.get(k) {
            Some(nv) if nv == v => out.unchanged.push(k.clone()),
            Some(_) => out.changed.push(k.clone()),
            None => out.removed.push(k.clone()),
        }
    }
    out.added = new
        .keys()
        .filter(|k| !old.contains_key(*k))
        .cloned()
        .collect();
    out
}

/// What a reload must do, computed from the running and the new plan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadPlan {
    /// Brokers by name. `changed`: connection or listener settings differ —
    /// a remote broker reconnects; a built-in broker's change waits for a restart.
    /// A change of `required` alone is not a change (see `readiness_changed`).
    pub brokers: Changes<String>,
    /// Pipes by name, by their own settings only: a pipe on a changed
    /// broker keeps its link (the link reconnects underneath).
    pub pipes: Changes<String>,
    /// Brokers whose `required` flag changed (readiness only, no reconnect).
    pub readiness_changed: Vec<String>,
    /// The metrics listener settings changed (the HTTP server must rebind).
    pub metrics_changed: bool,
    /// The watchdog settings changed.
    pub watchdog_changed: bool,
    /// The `storage:` settings changed; they take effect at the next restart.
    pub storage_changed: bool,
}

impl ReloadPlan {
    /// True when applying the plan would change nothing.
    pub fn is_noop(&self) -> bool {
        self.brokers.is_noop()
            && self.pipes.is_noop()
            && self.readiness_changed.is_empty()
            && !self.metrics_changed
            && !self.watchdog_changed
            && !self.storage_changed
    }
}

/// A broker's plan with `required` normalised, so a readiness-only edit does
/// not count as a connection change.
fn connection_settings(b: &BrokerPlan) -> BrokerPlan {
    let mut b = b.clone();
    if let BrokerKind::Remote(r) = &mut b.kind {
        r.required = false;
    }
    b
}

fn required(b: &BrokerPlan) -> bool {
    match &b.kind {
        BrokerKind::Remote(r) => r.required,
        BrokerKind::BuiltIn(_) => false,
    }
}

/// Compares the running plan with a new, valid one.
pub fn diff(old: &Plan, new: &Plan) -> ReloadPlan {
    let conn = |p: &Plan| -> BTreeMap<String, BrokerPlan> {
        p.brokers
            .iter()
            .map(|(k, b)| (k.clone(), connection_settings(b)))
            .collect()
    };
    let brokers = diff_maps(&conn(old), &conn(new));
    let readiness_changed = old
        .brokers
        .iter()
        .filter_map(|(k, b)| {
            let nb = new.brokers.get(k)?;
            (required(b) != required(nb)).then(|| k.clone())
        })
        .collect();
    let pipes = diff_maps(&old.pipes, &new.pipes);
    ReloadPlan {
        brokers,
        pipes,
        readiness_changed,
        metrics_changed: old.metrics != new.metrics,
        watchdog_changed: old.watchdog != new.watchdog,
        storage_changed: old.storage != new.storage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    const BASE: &str = r#"
brokers:
  edge:
    type: builtin
    listen: ["tcp://127.0.0.1:0"]
  cloud:
    type: remote
    endpoints: ["mqtt://127.0.0.1:1884"]
    username: bridge
    password: old-secret
  other:
    type: remote
    endpoints: ["mqtt://127.0.0.1:1885"]
pipes:
  up:
    from: edge
    to: cloud
    topics: ["up/#"]
  telemetry:
    from: edge
    to: other
    topics: ["telemetry/#"]
    remap:
      - strip_prefix: "telemetry/"
        add_prefix: "t/"
"#;

    fn plan(yaml: &str) -> Plan {
        match load_str(yaml, "bridges.yaml") {
            Ok((p, _)) => p,
            Err(e) => panic!("test config does not compile: {e:?}"),
        }
    }

    #[test]
    fn identical_plans_change_nothing() {
        let d = diff(&plan(BASE), &plan(BASE));
        assert!(d.is_noop(), "{d:?}");
        assert_eq!(d.pipes.unchanged, vec!["telemetry", "up"]);
    }

    #[test]
    fn add_and_remove_pipes() {
        let new = BASE.replace(
            "  telemetry:\n    from: edge\n    to: other\n    topics: [\"telemetry/#\"]",
            "  logs:\n    from: edge\n    to: other\n    topics: [\"logs/#\"]",
        );
        let new = new.replace(
            "    remap:\n      - strip_prefix: \"telemetry/\"\n        add_prefix: \"t/\"\n",
            "",
        );
        let d = diff(&plan(BASE), &plan(&new));
        assert_eq!(d.pipes.added, vec!["logs"]);
        assert_eq!(d.pipes.removed, vec!["telemetry"]);
        assert_eq!(d.pipes.unchanged, vec!["up"]);
        assert!(d.brokers.is_noop());
    }

    #[test]
    fn changed_remap_restarts_only_that_pipe() {
        let new = BASE.replace("add_prefix: \"t/\"", "add_prefix: \"tele/\"");
        let d = diff(&plan(BASE), &plan(&new));
        assert_eq!(d.pipes.changed, vec!["telemetry"]);
        assert_eq!(d.pipes.unchanged, vec!["up"]);
        assert!(d.brokers.is_noop());
    }

    #[test]
    fn rotated_password_changes_the_broker_not_its_pipes() {
        let new = BASE.replace("old-secret", "new-secret");
        let d = diff(&plan(BASE), &plan(&new));
        assert_eq!(d.brokers.changed, vec!["cloud"]);
        assert_eq!(d.brokers.unchanged, vec!["edge", "other"]);
        assert!(d.pipes.is_noop(), "{d:?}");
    }

    #[test]
    fn required_flag_is_readiness_only() {
        // `required` defaults to true; turning it off is no connection change.
        let new = BASE.replace(
            "    endpoints: [\"mqtt://127.0.0.1:1885\"]",
            "    endpoints: [\"mqtt://127.0.0.1:1885\"]\n    required: false",
        );
        let d = diff(&plan(BASE), &plan(&new));
        assert_eq!(d.readiness_changed, vec!["other"]);
        assert!(d.brokers.is_noop() && d.pipes.is_noop(), "{d:?}");
        assert!(!d.is_noop());
    }

    #[test]
    fn watchdog_and_metrics_settings() {
        let new = format!("{BASE}watchdog:\n  stall_after: 7s\nmetrics:\n  listen: 127.0.0.1:0\n");
        let d = diff(&plan(BASE), &plan(&new));
        assert!(d.watchdog_changed && d.metrics_changed);
        assert!(d.brokers.is_noop() && d.pipes.is_noop());
    }

    #[test]
    fn sorts_keys_into_buckets() {
        let old = BTreeMap::from([("a", 1), ("b", 2), ("c", 3)]);
        let new = BTreeMap::from([("a", 1), ("b", 20), ("d", 4)]);
        let c = diff_maps(&old, &new);
        assert_eq!(c.unchanged, vec!["a"]);
        assert_eq!(c.changed, vec!["b"]);
        assert_eq!(c.removed, vec!["c"]);
        assert_eq!(c.added, vec!["d"]);
        assert!(!c.is_noop());
        assert!(diff_maps(&old, &old).is_noop());
    }
}
