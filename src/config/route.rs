//! Following a topic through the pipe graph, hop by hop. One routing function
//! serves both `mqbridge route` and the static loop/duplication analysis.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::plan::{PipePlan, Plan};
use crate::protocol::shared::topic_filter;
use crate::topic::matches;

/// Longest path followed (a config with a longer chain of brokers is cut off
/// and marked truncated rather than recursing without bound).
pub const MAX_HOPS: usize = 64;

/// What one pipe does with a message at its source broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// None of the pipe's filters matches.
    NoMatch,
    /// A filter matches, but so does this exclusion.
    Excluded {
        /// The exclusion filter that matched.
        exclude: String,
    },
    /// The remap produced an invalid topic (the message would be dropped).
    RemapFailed {
        /// The filter that matched.
        filter: String,
        /// Why.
        error: String,
    },
    /// Forwarded to the pipe's destination as `topic`.
    Forwarded {
        /// The filter that matched (the first one in the pipe's list).
        filter: String,
        /// The topic at the destination.
        topic: String,
        /// The remap rule that rewrote it (`None` = unchanged).
        rule: Option<String>,
    },
}

/// What `pipe` does with `topic` (pure; the same logic the pipes run).
pub fn decide(pipe: &PipePlan, topic: &str) -> Decision {
    let Some((filter, _)) = pipe
        .filters
        .iter()
        .find(|(f, _)| matches(topic_filter(f), topic))
    else {
        return Decision::NoMatch;
    };
    if let Some(e) = pipe.exclude.iter().find(|e| matches(e, topic)) {
        return Decision::Excluded { exclude: e.clone() };
    }
    match pipe.remap.apply(topic) {
        Ok(out) => Decision::Forwarded {
            filter: filter.clone(),
            rule: pipe
                .remap
                .rule_for(topic)
                .and_then(|i| pipe.remap.rules.get(i))
                .map(|r| r.describe()),
            topic: out.into_owned(),
        },
        Err(e) => Decision::RemapFailed {
            filter: filter.clone(),
            error: e.to_string(),
        },
    }
}

/// A message present at a broker, and what the pipes from there do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// The broker.
    pub broker: String,
    /// The topic at that broker.
    pub topic: String,
    /// True when this broker was already passed on the way here: the steps
    /// are computed (to tell a loop from an echo) but not followed.
    pub revisit: bool,
    /// True when the walk ran out of its work budget here.
    pub truncated: bool,
    /// One step per pipe whose source is this broker, in pipe-name order.
    pub steps: Vec<Step>,
}

/// One pipe's handling of an [`Arrival`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The pipe.
    pub pipe: String,
    /// Its destination broker.
    pub to: String,
    /// What it does.
    pub decision: Decision,
    /// Where the message lands (followed unless this is a revisit).
    pub next: Option<Box<Arrival>>,
}

impl Arrival {
    /// Whether any pipe forwards the message from here.
    pub fn forwarded(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.decision, Decision::Forwarded { .. }))
    }
}

/// Follows `topic` published at `broker` through every pipe `include` accepts.
/// Stops at brokers already passed on the same path (marked `revisit`).
/// `budget` bounds the number of arrivals visited (shared across calls).
pub fn trace(
    plan: &Plan,
    broker: &str,
    topic: &str,
    include: &dyn Fn(&PipePlan) -> bool,
    budget: &mut usize,
) -> Arrival {
    Router::new(plan).trace(broker, topic, include, budget)
}

/// The pipes of a plan indexed by source broker, for repeated traces.
pub struct Router<'p> {
    by_source: HashMap<&'p str, Vec<&'p PipePlan>>,
}

impl<'p> Router<'p> {
    /// Indexes `plan`'s pipes by source broker (each list in pipe-name order).
    pub fn new(plan: &'p Plan) -> Self {
        let mut by_source: HashMap<&str, Vec<&PipePlan>> = HashMap::new();
        for p in plan.pipes.values() {
            by_source.entry(p.from.as_str()).or_default().push(p);
        }
        Router { by_source }
    }

    /// See [`trace`].
    pub fn trace(
        &self,
        broker: &str,
        topic: &str,
        include: &dyn Fn(&PipePlan) -> bool,
        budget: &mut usize,
    ) -> Arrival {
        let mut path = Vec::new();
        self.walk(broker, topic, include, budget, &mut path)
    }

    fn walk(
        &self,
        broker: &str,
        topic: &str,
        include: &dyn Fn(&PipePlan) -> bool,
        budget: &mut usize,
        path: &mut Vec<String>,
    ) -> Arrival {
        let revisit = path.iter().any(|b| b == broker);
        let mut arrival = Arrival {
            broker: broker.to_string(),
            topic: topic.to_string(),
            revisit,
            truncated: false,
            steps: Vec::new(),
        };
        if *budget == 0 || path.len() >= MAX_HOPS {
            arrival.truncated = true;
            return arrival;
        }
        *budget -= 1;
        path.push(broker.to_string());
        let pipes = self.by_source.get(broker).map(Vec::as_slice).unwrap_or(&[]);
        for pipe in pipes.iter().filter(|p| include(p)) {
            let decision = decide(pipe, topic);
            let next = match (&decision, revisit) {
                (Decision::Forwarded { topic, .. }, false) => {
                    Some(Box::new(self.walk(&pipe.to, topic, include, budget, path)))
                }
                _ => None,
            };
            arrival.steps.push(Step {
                pipe: pipe.name.clone(),
                to: pipe.to.clone(),
                decision,
                next,
            });
        }
        path.pop();
        arrival
    }
}

/// Renders a trace for `mqbridge route`, one line per hop, indented by depth.
pub fn format_trace(root: &Arrival) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: {}", root.broker, root.topic);
    render(root, 1, &mut out);
    out
}

fn render(a: &Arrival, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    if a.truncated {
        let _ = writeln!(out, "{pad}(stopped: trace too large)");
        return;
    }
    if a.steps.is_empty() {
        let _ = writeln!(out, "{pad}stops: no pipe starts at broker \"{}\"", a.broker);
        return;
    }
    if a.revisit {
        if a.forwarded() {
            let pipes: Vec<&str> = a
                .steps
                .iter()
                .filter(|s| matches!(s.decision, Decision::Forwarded { .. }))
                .map(|s| s.pipe.as_str())
                .collect();
            let _ = writeln!(
                out,
                "{pad}LOOP: broker \"{}\" was already passed, and pipe {} would forward it again",
                a.broker,
                pipes.join(", ")
            );
        } else {
            let _ = writeln!(
                out,
                "{pad}stops: back at broker \"{}\" (already passed), no pipe forwards it again",
                a.broker
            );
        }
        return;
    }
    for s in &a.steps {
        match &s.decision {
            Decision::NoMatch => {
                let _ = writeln!(
                    out,
                    "{pad}pipe {} → {}: stops: no filter matches",
                    s.pipe, s.to
                );
            }
            Decision::Excluded { exclude } => {
                let _ = writeln!(
                    out,
                    "{pad}pipe {} → {}: stops: excluded by `{exclude}`",
                    s.pipe, s.to
                );
            }
            Decision::RemapFailed { filter, error } => {
                let _ = writeln!(
                    out,
                    "{pad}pipe {} → {}: matches `{filter}`, stops: remap failed: {error}",
                    s.pipe, s.to
                );
            }
            Decision::Forwarded {
                filter,
                topic,
                rule,
            } => {
                let how = match rule {
                    Some(r) => format!(", remapped by {r}"),
                    None => String::new(),
                };
                let _ = writeln!(
                    out,
                    "{pad}pipe {} (matches `{filter}`{how}) → {}: {topic}",
                    s.pipe, s.to
                );
                if let Some(n) = &s.next {
                    render(n, depth + 1, out);
                }
            }
        }
    }
}
