//! Scale-out: a pipe's `topics:` entry may be a shared subscription
//! (`$share/<group>/<filter>`), so N mqbridge replicas running the same pipe
//! split one source's traffic. The share name is checked here; the loop
//! analysis, `route` and remap witnesses work on the filter after it (a
//! shared filter matches the topics its filter matches), and the
//! subscription goes out as written.

use std::collections::BTreeMap;

use serde_saphyr::Location;

use super::ctx::Ctx;
use super::error::Scope;
use super::plan::{BrokerKind, BrokerPlan, PipePlan};
use super::raw::{RawConfig, Text};
use crate::protocol::shared::{self, SharedFilterError};

pub use crate::protocol::shared::topic_filter;

/// A `topics:` entry: a plain filter (checked by `plain`), or a shared
/// subscription whose share name and filter are both valid.
pub(super) fn topic_entry(
    ctx: &mut Ctx,
    t: &Text,
    scope: &Scope,
    plain: impl FnOnce(&mut Ctx) -> Option<String>,
) -> Option<String> {
    if !shared::is_shared(&t.value) {
        return plain(ctx);
    }
    let f = ctx.text(t, scope, "topics")?;
    match shared::parse(&f) {
        Ok(_) => Some(f),
        Err(e) => {
            let why = match e {
                SharedFilterError::ShareName => {
                    "the share name after `$share/` must be non-empty, without `/`, `+` or `#`"
                }
                SharedFilterError::Filter => {
                    "a valid topic filter must follow the share name (`$share/<group>/<filter>`)"
                }
            };
            ctx.err(
                &t.referenced,
                scope,
                format!("topics: invalid shared subscription `{f}`: {why}"),
            );
            None
        }
    }
}

/// Warns about a pipe with a shared filter on a remote broker whose client
/// id is the same for every replica running this file: replicas with one id
/// take the session from each other instead of sharing the load.
pub(super) fn check_client_ids(
    ctx: &mut Ctx,
    raw: &RawConfig,
    brokers: &BTreeMap<String, BrokerPlan>,
    pipes: &BTreeMap<String, PipePlan>,
    pipe_keys: &BTreeMap<String, Location>,
) {
    for pipe in pipes.values() {
        let Some((f, _)) = pipe.filters.iter().find(|(f, _)| shared::is_shared(f)) else {
            continue;
        };
        let Some(BrokerKind::Remote(remote)) = brokers.get(&pipe.from).map(|b| &b.kind) else {
            continue;
        };
        let written = raw
            .brokers
            .as_ref()
            .and_then(|m| m.value.0.iter().find(|(k, _)| k.value == pipe.from))
            .and_then(|(_, b)| b.client_id.as_ref());
        if written.is_some_and(|t| t.value.contains("${")) {
            continue;
        }
        let session = if remote.clean_session {
            "they take the connection from each other"
        } else {
            "they take the persistent session from each other, and its messages with it"
        };
        let loc = pipe_keys
            .get(&pipe.name)
            .copied()
            .unwrap_or(Location::UNKNOWN);
        ctx.warn(
            &loc,
            &Scope::Pipe(pipe.name.clone()),
            format!(
                "topics: `{f}` splits \"{}\"'s traffic between replicas, but every replica running this file connects as client id `{}`: {session}; give each replica its own id, stable across its restarts (e.g. `client_id: mqbridge-${{REPLICA}}` with a StatefulSet ordinal)",
                pipe.from, remote.client_id
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::route::{Decision, decide};
    use super::super::{LoadOptions, Plan, Warning, load_str_with};

    fn vars(name: &str) -> Option<String> {
        (name == "REPLICA").then(|| "0".into())
    }

    fn load(yaml: &str) -> Result<(Plan, Vec<String>), Vec<String>> {
        let opts = LoadOptions { vars: &vars };
        load_str_with(yaml, "t.yaml", &opts)
            .map(|(p, w)| (p, w.iter().map(Warning::to_string).collect()))
            .map_err(|e| e.errors.iter().map(|d| d.to_string()).collect())
    }

    fn builtin(pipes: &str) -> String {
        format!(
            "brokers:\n  edge: {{type: builtin, listen: ['tcp://127.0.0.1:0']}}\n  cloud: {{type: builtin, listen: ['tcp://127.0.0.1:0']}}\npipes:\n{pipes}"
        )
    }

    #[test]
    fn a_shared_filter_is_subscribed_as_written_and_routes_like_its_filter() {
        let (plan, warnings) = load(&builtin(
            "  up: {from: edge, to: cloud, topics: ['$share/bridges/load/#'], exclude: [load/skip], remap: [{strip_prefix: load/, add_prefix: cloud/}]}\n",
        ))
        .unwrap_or_else(|e| panic!("{e:#?}"));
        assert!(warnings.is_empty(), "{warnings:#?}");
        let pipe = &plan.pipes["up"];
        assert_eq!(pipe.filters[0].0, "$share/bridges/load/#");
        // The remap applies to the published topic, never to the prefix.
        match decide(pipe, "load/a/b") {
            Decision::Forwarded { topic, filter, .. } => {
                assert_eq!(topic, "cloud/a/b");
                assert_eq!(filter, "$share/bridges/load/#");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(pipe, "load/skip"),
            Decision::Excluded { .. }
        ));
        assert!(matches!(decide(pipe, "other/x"), Decision::NoMatch));
        assert!(matches!(
            decide(pipe, "$share/bridges/load/x"),
            Decision::NoMatch
        ));
    }

    #[test]
    fn mqtt_4_8_2_1_and_2_malformed_shared_filters_are_errors() {
        for (filter, why) in [
            ("$share/", "share name"),
            ("$share//x", "share name"),
            ("$share/g+/x", "share name"),
            ("$share/g", "a valid topic filter must follow"),
            ("$share/g/a#", "a valid topic filter must follow"),
        ] {
            let e = load(&builtin(&format!(
                "  up: {{from: edge, to: cloud, topics: ['{filter}']}}\n"
            )))
            .err()
            .unwrap_or_default();
            assert_eq!(e.len(), 1, "{filter}: {e:#?}");
            assert!(
                e[0].contains(&format!("topics: invalid shared subscription `{filter}`"))
                    && e[0].contains(why),
                "{}",
                e[0]
            );
        }
    }

    #[test]
    fn the_loop_analysis_sees_through_the_share_prefix() {
        let e = load(&builtin(
            "  up: {from: edge, to: cloud, topics: ['$share/g/#']}\n  down: {from: cloud, to: edge, topics: ['#']}\n",
        ))
        .err()
        .unwrap_or_default();
        assert!(
            e.iter().any(|e| e.contains("loop: ")),
            "a shared filter loops like its filter: {e:#?}"
        );
    }

    #[test]
    fn a_client_id_shared_by_every_replica_warns() {
        let yaml = |client_id: &str, clean: bool| {
            format!(
                "brokers:\n  src:\n    type: remote\n    endpoints: [mqtt://src:1883]\n{client_id}    clean_session: {clean}\n  edge: {{type: builtin, listen: ['tcp://127.0.0.1:0']}}\npipes:\n  in: {{from: src, to: edge, topics: ['$share/bridges/load/#']}}\n"
            )
        };
        let warnings = |y: String| load(&y).unwrap_or_else(|e| panic!("{e:#?}")).1;
        let w = warnings(yaml("", false));
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(
            w[0].starts_with("t.yaml:8:3: pipe \"in\": topics: `$share/bridges/load/#` splits \"src\"'s traffic between replicas, but every replica running this file connects as client id `mqbridge-t-src`: they take the persistent session"),
            "{}",
            w[0]
        );
        let w = warnings(yaml("    client_id: fixed\n", true));
        assert!(
            w.len() == 1 && w[0].contains("`fixed`: they take the connection"),
            "{w:#?}"
        );
        // One id per replica, stable: no warning.
        assert!(warnings(yaml("    client_id: bridge-${REPLICA}\n", false)).is_empty());
    }
}
