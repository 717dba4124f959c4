//! Hot-reload planning: which pipes and brokers a new configuration adds,
//! removes, changes or leaves alone. Pure.

use std::collections::BTreeMap;

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

#[cfg(test)]
mod tests {
    use super::*;

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
