//! Static analysis of the pipe graph: loops (errors) and duplicate deliveries
//! (warnings), found before anything starts.
//!
//! Method: for every filter of every pipe, build concrete *witness* topics —
//! the filter with `+` filled by a sample level and `#` by zero, one and two
//! levels — plus witnesses where the filter meets every other filter,
//! exclusion and remap pattern in the config (so that overlapping wildcards
//! and `$`-topics meet on a real topic). Each witness is then followed hop by
//! hop with [`super::route::trace`], the same routing `mqbridge route` shows. A path
//! that comes back to a broker it already passed, with a topic some pipe would
//! forward again, is a loop; one that comes back and stops is an echo (a
//! warning). Two paths landing on the same broker and topic are a duplicate.

use std::collections::{BTreeSet, HashSet};

use super::plan::{PipePlan, Plan};
use super::route::{Arrival, Decision, Router, decide};
use crate::protocol::shared::topic_filter;
use crate::topic::{RemapRule, validate_topic_name};

/// Sample text for a `+` level or a level under `#`.
const SAMPLE: &str = "x";
/// Upper bound on witnesses per filter.
const MAX_WITNESSES: usize = 256;
/// Upper bound on arrivals visited by the whole analysis.
const WORK_BUDGET: usize = 200_000;
/// Upper bound on the pattern pool.
const MAX_POOL: usize = 2_000;

/// One finding, attached to a pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The pipe the finding is reported on.
    pub pipe: String,
    /// Human message with a concrete example.
    pub message: String,
}

/// The result of [`analyze`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    /// Loops across pipes with `loop_check` on (errors).
    pub loops: Vec<Finding>,
    /// Pipes whose destination is their source and that take their own output (errors).
    pub self_loops: Vec<Finding>,
    /// Duplicates, echoes, and an incomplete analysis (warnings).
    pub warnings: Vec<Finding>,
}

/// Concrete topics matching `filter`: `+` → `x`, `#` → zero, one and two levels.
/// Invalid results (e.g. the empty topic for `#` with zero levels) are left out.
pub fn witnesses(filter: &str) -> Vec<String> {
    let levels: Vec<&str> = filter.split('/').collect();
    let mut base: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (i, level) in levels.iter().enumerate() {
        match *level {
            "+" => base.push(SAMPLE.to_string()),
            "#" if i + 1 == levels.len() => {
                let joined = base.join("/");
                if !base.is_empty() {
                    out.push(joined.clone());
                }
                for tail in [SAMPLE.to_string(), format!("{SAMPLE}/{SAMPLE}")] {
                    out.push(if base.is_empty() {
                        tail
                    } else {
                        format!("{joined}/{tail}")
                    });
                }
                return out
                    .into_iter()
                    .filter(|t| validate_topic_name(t).is_ok())
                    .collect();
            }
            other => base.push(other.to_string()),
        }
    }
    let t = base.join("/");
    if validate_topic_name(&t).is_ok() {
        out.push(t);
    }
    out
}

/// The most general filter matching exactly the topics both `a` and `b` match,
/// or `None` when no topic matches both (respecting that a leading wildcard
/// never matches a `$`-topic).
pub fn meet(a: &str, b: &str) -> Option<String> {
    let la: Vec<&str> = a.split('/').collect();
    let lb: Vec<&str> = b.split('/').collect();
    let mut out: Vec<&str> = Vec::new();
    let mut i = 0;
    loop {
        match (la.get(i), lb.get(i)) {
            (Some(&"#"), _) => {
                // With `b` exhausted, `#` matches zero levels: the meet is the parent.
                out.extend(lb.iter().skip(i));
                break;
            }
            (_, Some(&"#")) => {
                out.extend(la.iter().skip(i));
                break;
            }
            (None, None) => break,
            (Some(_), None) | (None, Some(_)) => return None,
            (Some(&"+"), Some(y)) => out.push(y),
            (Some(x), Some(&"+")) => out.push(x),
            (Some(x), Some(y)) if x == y => out.push(x),
            _ => return None,
        }
        i += 1;
    }
    let first = out.first().copied().unwrap_or("");
    let wild_start = |l: &[&str]| matches!(l.first(), Some(&"+") | Some(&"#"));
    if first.starts_with('$') && (wild_start(&la) || wild_start(&lb)) {
        return None;
    }
    Some(out.join("/"))
}

/// Patterns from the whole config that witnesses should meet: every filter,
/// exclusion and template filter; template outputs as filters; and filters
/// seen through a prefix rule backwards (what a pipe must take to produce them).
fn pattern_pool(plan: &Plan) -> Vec<String> {
    let mut pool: Vec<String> = Vec::new();
    for p in plan.pipes.values() {
        pool.extend(p.filters.iter().map(|(f, _)| topic_filter(f).to_owned()));
        pool.extend(p.exclude.iter().cloned());
        for r in &p.remap.rules {
            if let RemapRule::Template { filter, template } = r {
                pool.push(filter.clone());
                pool.push(template_pattern(template));
            }
        }
    }
    // Two rounds of "what would a pipe have to take to produce this?", so that
    // witnesses reach loops that only open up for some topics, over two remaps.
    for _ in 0..2 {
        let base = pool.clone();
        for p in plan.pipes.values() {
            for r in &p.remap.rules {
                for g in &base {
                    if pool.len() >= MAX_POOL {
                        break;
                    }
                    if let Some(pre) = preimage(r, g) {
                        pool.push(pre);
                    }
                }
            }
        }
        let mut seen = HashSet::new();
        pool.retain(|p| crate::topic::validate_filter(p).is_ok() && seen.insert(p.clone()));
    }
    let mut seen = HashSet::new();
    pool.retain(|p| crate::topic::validate_filter(p).is_ok() && seen.insert(p.clone()));
    pool
}

/// A filter for (some of) the topics that `rule` rewrites into topics matching `g`.
fn preimage(rule: &RemapRule, g: &str) -> Option<String> {
    match rule {
        RemapRule::Prefix { strip, add } => {
            let strip = strip.as_deref().unwrap_or("");
            let add = add.as_deref().unwrap_or("");
            match g.strip_prefix(add) {
                Some(rest) if !add.is_empty() => Some(format!("{strip}{rest}")),
                _ if g.starts_with('+') || g.starts_with('#') => Some(format!("{strip}{g}")),
                _ => None,
            }
        }
        RemapRule::Template { filter, template } => {
            let m = meet(&template_pattern(template), g)?;
            let t_levels: Vec<&str> = template.split('/').collect();
            let m_levels: Vec<&str> = m.split('/').collect();
            let mut plus: Vec<Option<String>> = Vec::new();
            let mut hash: Option<String> = None;
            for (i, t) in t_levels.iter().enumerate() {
                if *t == "{#}" {
                    hash = Some(m_levels.get(i..).unwrap_or(&[]).join("/"));
                } else if let Some(n) = t
                    .strip_prefix('{')
                    .and_then(|x| x.strip_suffix('}'))
                    .and_then(|x| x.parse::<usize>().ok())
                {
                    if plus.len() < n {
                        plus.resize(n, None);
                    }
                    if let (Some(slot), Some(v)) =
                        (plus.get_mut(n.wrapping_sub(1)), m_levels.get(i))
                    {
                        *slot = Some((*v).to_string());
                    }
                }
            }
            let mut k = 0;
            let out: Vec<String> = filter
                .split('/')
                .map(|l| match l {
                    "+" => {
                        k += 1;
                        plus.get(k - 1)
                            .cloned()
                            .flatten()
                            .unwrap_or_else(|| "+".into())
                    }
                    "#" => hash
                        .clone()
                        .filter(|h| !h.is_empty())
                        .unwrap_or_else(|| "#".into()),
                    other => other.to_string(),
                })
                .collect();
            Some(out.join("/"))
        }
        RemapRule::Regex { .. } => None,
    }
}

/// `cloud/{1}/data/{#}` → `cloud/+/data/#` (levels that are exactly a placeholder).
fn template_pattern(template: &str) -> String {
    template
        .split('/')
        .map(|l| {
            if l == "{#}" {
                "#"
            } else if l.starts_with('{') && l.ends_with('}') {
                "+"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Witness topics for one filter of a pipe: its own fill and its meets with the pool.
fn filter_witnesses(filter: &str, pool: &[String]) -> Vec<String> {
    let mut out = witnesses(filter);
    let mut seen: HashSet<String> = out.iter().cloned().collect();
    for g in pool {
        if out.len() >= MAX_WITNESSES {
            break;
        }
        if let Some(m) = meet(filter, g) {
            for w in witnesses(&m) {
                if seen.insert(w.clone()) {
                    out.push(w);
                }
            }
        }
    }
    out.truncate(MAX_WITNESSES);
    out
}

/// Runs the loop, self-loop and duplicate analysis over the whole plan.
pub fn analyze(plan: &Plan) -> Analysis {
    let pool = pattern_pool(plan);
    let router = Router::new(plan);
    let mut analysis = Analysis::default();
    let mut budget = WORK_BUDGET;
    let mut loop_keys: HashSet<BTreeSet<String>> = HashSet::new();
    let mut echo_keys: HashSet<BTreeSet<String>> = HashSet::new();
    let mut dup_keys: HashSet<(String, String, String)> = HashSet::new();
    let mut self_loop_done: HashSet<String> = HashSet::new();
    let checked = |p: &PipePlan| p.loop_check;
    let all = |_: &PipePlan| true;

    // Self-loops first, so that the loop pass does not report them again.
    for pipe in plan.pipes.values().filter(|p| p.from == p.to) {
        'filters: for (filter, _) in &pipe.filters {
            for w in filter_witnesses(topic_filter(filter), &pool) {
                if let Decision::Forwarded { topic, .. } = decide(pipe, &w)
                    && matches!(decide(pipe, &topic), Decision::Forwarded { .. })
                {
                    self_loop_done.insert(pipe.name.clone());
                    analysis.self_loops.push(Finding {
                        pipe: pipe.name.clone(),
                        message: format!(
                            "forwards into its own source broker \"{}\" and takes its own output again: {w} → {topic}",
                            pipe.from
                        ),
                    });
                    break 'filters;
                }
            }
        }
    }
    for pipe in plan.pipes.values() {
        for (filter, _) in &pipe.filters {
            for w in filter_witnesses(topic_filter(filter), &pool) {
                if pipe.loop_check {
                    let root = router.trace(&pipe.from, &w, &checked, &mut budget);
                    let mut path = Vec::new();
                    find_cycles(&root, &mut path, &mut |path, a| {
                        report_cycle(
                            path,
                            a,
                            &self_loop_done,
                            &mut loop_keys,
                            &mut echo_keys,
                            &mut analysis,
                        )
                    });
                }
                let root = router.trace(&pipe.from, &w, &all, &mut budget);
                find_duplicates(&root, &mut dup_keys, &mut analysis);
            }
        }
    }
    if budget == 0 {
        analysis.warnings.push(Finding {
            pipe: plan.pipes.keys().next().cloned().unwrap_or_default(),
            message: "the loop analysis hit its work limit and may be incomplete".into(),
        });
    }
    analysis
}

/// One hop of a path: (broker, topic, pipe that carried it there or `None` at the start).
type Hop = (String, String, Option<String>);

fn find_cycles(a: &Arrival, path: &mut Vec<Hop>, f: &mut dyn FnMut(&[Hop], &Arrival)) {
    if a.revisit {
        f(path, a);
        return;
    }
    for s in &a.steps {
        if let Some(n) = &s.next {
            if path.is_empty() {
                path.push((a.broker.clone(), a.topic.clone(), None));
            }
            path.push((n.broker.clone(), n.topic.clone(), Some(s.pipe.clone())));
            find_cycles(n, path, f);
            path.pop();
            if path.len() == 1 {
                path.pop();
            }
        }
    }
}

fn report_cycle(
    path: &[Hop],
    a: &Arrival,
    self_loops: &HashSet<String>,
    loop_keys: &mut HashSet<BTreeSet<String>>,
    echo_keys: &mut HashSet<BTreeSet<String>>,
    analysis: &mut Analysis,
) {
    // The cycle starts where this broker was first passed.
    let Some(start) = path.iter().position(|(b, _, _)| *b == a.broker) else {
        return;
    };
    let cycle = path.get(start..).unwrap_or(&[]);
    // The first hop's pipe brought the message *to* the cycle; it is not part of it.
    let pipes: BTreeSet<String> = cycle
        .iter()
        .skip(1)
        .filter_map(|(_, _, p)| p.clone())
        .collect();
    if pipes.len() == 1 && pipes.iter().all(|p| self_loops.contains(p)) {
        return;
    }
    let mut text = String::new();
    for (i, (broker, topic, via)) in cycle.iter().enumerate() {
        if i > 0
            && let Some(p) = via
        {
            text.push_str(&format!(" → (pipe {p}) "));
        }
        text.push_str(&format!("{broker}: {topic}"));
    }
    let first_pipe = cycle
        .get(1)
        .and_then(|(_, _, p)| p.clone())
        .unwrap_or_default();
    let again: Vec<&str> = a
        .steps
        .iter()
        .filter(|s| matches!(s.decision, Decision::Forwarded { .. }))
        .map(|s| s.pipe.as_str())
        .collect();
    // A pipe from a broker to itself republishes there by design: not an echo.
    let republish = cycle.len() == 2;
    if again.is_empty() {
        if !republish && echo_keys.insert(pipes) {
            analysis.warnings.push(Finding {
                pipe: first_pipe,
                message: format!(
                    "echo: a message comes back to the broker it came from (it stops there): {text}"
                ),
            });
        }
    } else if loop_keys.insert(pipes) {
        analysis.loops.push(Finding {
            pipe: first_pipe,
            message: format!(
                "loop: {text}, which pipe {} would forward again (exclude or remap the returning topics; `loop_check: false` only if you rely on runtime loop protection)",
                again.join(", ")
            ),
        });
    }
}

fn find_duplicates(
    root: &Arrival,
    keys: &mut HashSet<(String, String, String)>,
    analysis: &mut Analysis,
) {
    // (broker, topic) → last pipe of the first path that delivered it there.
    let mut seen: Vec<(String, String, String)> = Vec::new();
    let mut stack: Vec<&Arrival> = vec![root];
    while let Some(a) = stack.pop() {
        for s in &a.steps {
            let Some(n) = &s.next else {
                if let Decision::Forwarded { topic, .. } = &s.decision {
                    note_delivery(&mut seen, &s.to, topic, &s.pipe, root, keys, analysis);
                }
                continue;
            };
            note_delivery(
                &mut seen, &n.broker, &n.topic, &s.pipe, root, keys, analysis,
            );
            stack.push(n);
        }
    }
}

fn note_delivery(
    seen: &mut Vec<(String, String, String)>,
    broker: &str,
    topic: &str,
    pipe: &str,
    root: &Arrival,
    keys: &mut HashSet<(String, String, String)>,
    analysis: &mut Analysis,
) {
    if let Some((_, _, first)) = seen.iter().find(|(b, t, _)| b == broker && t == topic) {
        if first != pipe {
            let (a, b) = if first.as_str() < pipe {
                (first.clone(), pipe.to_string())
            } else {
                (pipe.to_string(), first.clone())
            };
            if keys.insert((a.clone(), b.clone(), broker.to_string())) {
                analysis.warnings.push(Finding {
                    pipe: a.clone(),
                    message: format!(
                        "duplicate: a message published on {}: {} reaches {broker}: {topic} twice, via pipe {a} and via pipe {b}",
                        root.broker, root.topic
                    ),
                });
            }
        }
    } else {
        seen.push((broker.to_string(), topic.to_string(), pipe.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn witness_shapes() {
        assert_eq!(witnesses("a/+/c"), vec!["a/x/c"]);
        assert_eq!(witnesses("a/#"), vec!["a", "a/x", "a/x/x"]);
        assert_eq!(witnesses("#"), vec!["x", "x/x"]);
        assert_eq!(witnesses("$SYS/#"), vec!["$SYS", "$SYS/x", "$SYS/x/x"]);
    }

    #[test]
    fn meets() {
        assert_eq!(meet("a/#", "+/b/c").as_deref(), Some("a/b/c"));
        assert_eq!(meet("#", "a/+").as_deref(), Some("a/+"));
        assert_eq!(meet("a/+", "a/b/#").as_deref(), Some("a/b"));
        assert_eq!(meet("a/b", "a/c"), None);
        assert_eq!(meet("a", "a/b"), None);
        assert_eq!(meet("#", "$SYS/#"), None);
        assert_eq!(meet("+/x", "$SYS/+"), None);
        assert_eq!(meet("$SYS/#", "$SYS/+").as_deref(), Some("$SYS/+"));
        assert_eq!(meet("a/#", "a").as_deref(), Some("a"));
    }

    #[test]
    fn template_patterns() {
        assert_eq!(template_pattern("cloud/{1}/data/{#}"), "cloud/+/data/#");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::topic::{matches, validate_filter};
    use proptest::prelude::*;

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("$SYS".to_string()),
            Just(String::new()),
            Just("+".to_string()),
        ]
    }

    fn filter() -> impl Strategy<Value = String> {
        (prop::collection::vec(level(), 1..4), any::<bool>()).prop_map(|(mut l, hash)| {
            if hash {
                l.push("#".into());
            }
            l.join("/")
        })
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just("a".to_string()),
                Just("b".to_string()),
                Just("$SYS".to_string()),
                Just(String::new()),
                Just("x".to_string())
            ],
            1..5,
        )
        .prop_map(|l| l.join("/"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// `meet(a, b)` matches exactly the topics both `a` and `b` match.
        #[test]
        fn meet_is_the_intersection(a in filter(), b in filter(), t in topic()) {
            prop_assume!(validate_filter(&a).is_ok() && validate_filter(&b).is_ok());
            let both = matches(&a, &t) && matches(&b, &t);
            let m = meet(&a, &b);
            prop_assert_eq!(both, m.as_deref().is_some_and(|m| matches(m, &t)), "a={} b={} t={} m={:?}", a, b, t, m);
        }

        /// Every witness of a filter is a valid topic the filter matches.
        #[test]
        fn witnesses_match_their_filter(f in filter()) {
            prop_assume!(validate_filter(&f).is_ok());
            for w in witnesses(&f) {
                prop_assert!(validate_topic_name(&w).is_ok());
                prop_assert!(matches(&f, &w), "{} does not match {}", f, w);
            }
        }
    }
}
