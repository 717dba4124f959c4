//! Stage two: raw structs → [`Plan`], gathering every error.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_saphyr::Location;

use super::brokers::compile_broker;
use super::ctx::{Ctx, LoadOptions};
use super::error::{ConfigErrors, Diagnostic, Scope, Warning};
use super::graph;
use super::pipes::{compile_pipe, warn_retain_as_published_on_3_1_1};
use super::plan::{BrokerKind, BrokerPlan, MetricsPlan, Plan, WatchdogPlan};
use super::raw::{RawConfig, defaults};
use super::storage::compile_storage;
use super::urls::addrs_collide;

/// Parses and compiles `text` (named `file` in messages).
pub(crate) fn compile_str(
    text: &str,
    file: &str,
    opts: &LoadOptions<'_>,
) -> Result<(Plan, Vec<Warning>), ConfigErrors> {
    let c = compile_with_loops(text, file, opts)?;
    if c.loops.is_empty() {
        return Ok((c.plan, c.warnings));
    }
    let mut errors = c.loops;
    errors.sort_by_key(|d| (d.line, d.column));
    Err(ConfigErrors { errors })
}

/// A plan whose only errors are loops: fine to trace, never to run.
#[derive(Debug)]
pub struct LoopedPlan {
    /// The compiled plan.
    pub plan: Plan,
    /// Its warnings.
    pub warnings: Vec<Warning>,
    /// The loop and self-loop errors (empty for a valid config).
    pub loops: Vec<Diagnostic>,
}

/// Like [`compile_str`], but loop errors do not withhold the plan (for
/// `mqbridge route`, which is most wanted exactly when there is a loop).
/// Any other error still fails, with the loop errors included.
pub(crate) fn compile_with_loops(
    text: &str,
    file: &str,
    opts: &LoadOptions<'_>,
) -> Result<LoopedPlan, ConfigErrors> {
    let mut ctx = Ctx::new(file, opts);
    let top = Location::UNKNOWN;
    if text.trim().is_empty() {
        ctx.err(
            &top,
            &Scope::Top,
            "the file is empty (expected `brokers:` and `pipes:`)",
        );
        return Err(ConfigErrors { errors: ctx.errors });
    }
    let raw: RawConfig = match serde_saphyr::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            return Err(ConfigErrors {
                errors: vec![Diagnostic {
                    file: file.to_string(),
                    line,
                    column,
                    scope: scope_at(text, line),
                    message: match super::hints::flow_list_variable(text, line) {
                        Some(hint) => format!("{}: {hint}", parse_message(&e)),
                        None => parse_message(&e),
                    },
                }],
            });
        }
    };
    let (plan, loops) = compile(&mut ctx, &raw);
    if ctx.errors.is_empty() {
        Ok(LoopedPlan {
            plan,
            warnings: ctx.warnings,
            loops,
        })
    } else {
        ctx.errors.extend(loops);
        ctx.errors.sort_by_key(|d| (d.line, d.column));
        Err(ConfigErrors { errors: ctx.errors })
    }
}

/// The parser's message without its trailing " at line L, column C" (we print the location first).
fn parse_message(e: &serde_saphyr::Error) -> String {
    let msg = e.without_snippet().to_string();
    let msg = match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(", column ") => msg[..i].to_string(),
        _ => msg,
    };
    let msg = msg.replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    match msg.strip_prefix("duplicate mapping key: ") {
        Some(key) => format!("`{key}` is defined twice (keys and names must be unique)"),
        None => msg,
    }
}

/// The broker or pipe whose block holds `line`, judged from indentation (the
/// parser stops at its first error, before any structure is known). Block
/// style only; flow-style maps give [`Scope::Top`].
fn scope_at(text: &str, line: u64) -> Scope {
    let mut section = "";
    let mut child_indent: Option<usize> = None;
    let mut scope = Scope::Top;
    for l in text
        .lines()
        .take(usize::try_from(line).unwrap_or(usize::MAX))
    {
        let trimmed = l.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = l.len() - trimmed.len();
        let key = trimmed.split(':').next().unwrap_or("").trim();
        if indent == 0 {
            section = if key == "brokers" || key == "pipes" {
                key
            } else {
                ""
            };
            child_indent = None;
            scope = Scope::Top;
        } else if !section.is_empty() && child_indent.is_none_or(|c| c == indent) {
            child_indent = Some(indent);
            let name = key.trim_matches(|c| c == '"' || c == '\'');
            scope = if section == "brokers" {
                Scope::Broker(name.to_string())
            } else {
                Scope::Pipe(name.to_string())
            };
        }
    }
    scope
}

/// Whether `name` can be a metric label value and an id: `^[a-zA-Z][a-zA-Z0-9_-]{0,63}$`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Compiles `raw`, recording every error in `ctx` except the loop errors,
/// which are returned beside the plan.
fn compile(ctx: &mut Ctx, raw: &RawConfig) -> (Plan, Vec<Diagnostic>) {
    let top = Scope::Top;
    let start = Location::UNKNOWN;

    let mut brokers = BTreeMap::new();
    let mut declared = Vec::new();
    let mut listens: Vec<(SocketAddr, Location, String)> = Vec::new();
    match &raw.brokers {
        None => ctx.err(&start, &top, "no `brokers:` defined"),
        Some(b) if b.value.0.is_empty() => {
            ctx.err(&b.referenced, &top, "brokers: the map is empty")
        }
        Some(b) => {
            for (key, rb) in &b.value.0 {
                let name = key.value.clone();
                let scope = Scope::Broker(name.clone());
                declared.push(name.clone());
                if !valid_name(&name) {
                    ctx.err(&key.referenced, &scope, name_rule());
                }
                let Some(kind) = compile_broker(ctx, key, &scope, rb) else {
                    continue;
                };
                if let BrokerKind::BuiltIn(b) = &kind {
                    for l in &b.listeners {
                        let loc = rb
                            .listen
                            .as_ref()
                            .map(|l| l.referenced)
                            .unwrap_or(key.referenced);
                        if let Some((_, _, other)) =
                            listens.iter().find(|(a, _, _)| addrs_collide(a, &l.addr))
                        {
                            let msg = format!(
                                "listen: `{}` collides with a listener of broker \"{other}\"",
                                l.addr
                            );
                            ctx.err(&loc, &scope, msg);
                        }
                        listens.push((l.addr, loc, name.clone()));
                    }
                }
                brokers.insert(name.clone(), BrokerPlan { name, kind });
            }
        }
    }
    check_client_ids(ctx, raw, &brokers);

    let mut pipes = BTreeMap::new();
    let mut pipe_keys = BTreeMap::new();
    if let Some(p) = &raw.pipes {
        for (key, rp) in &p.value.0 {
            let scope = Scope::Pipe(key.value.clone());
            if !valid_name(&key.value) {
                ctx.err(&key.referenced, &scope, name_rule());
            }
            if let Some(plan) = compile_pipe(ctx, key, &scope, rp, &declared) {
                pipe_keys.insert(key.value.clone(), key.referenced);
                pipes.insert(key.value.clone(), plan);
            }
        }
    }

    warn_retain_as_published_on_3_1_1(ctx, raw);
    super::scaleout::check_client_ids(ctx, raw, &brokers, &pipes, &pipe_keys);

    let shutdown_timeout = ctx.duration(
        &raw.shutdown_timeout,
        &top,
        "shutdown_timeout",
        defaults::shutdown_timeout(),
    );
    let m = raw.metrics.as_ref().map(|m| &m.value);
    let enabled = ctx.boolean(
        &m.and_then(|m| m.enabled.clone()),
        &top,
        "metrics.enabled",
        true,
    );
    let fallback: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9464));
    let listen = match m.and_then(|m| m.listen.as_ref()) {
        None => defaults::metrics_listen().parse().unwrap_or(fallback),
        Some(t) => match ctx.text(t, &top, "metrics.listen") {
            None => fallback,
            Some(s) => match s.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    ctx.err(&t.referenced, &top, format!("metrics.listen: `{s}` is not an `ip:port` address (e.g. 127.0.0.1:9464)"));
                    fallback
                }
            },
        },
    };
    if enabled
        && let Some((_, loc, other)) = listens.iter().find(|(a, _, _)| addrs_collide(a, &listen))
    {
        ctx.err(
            loc,
            &Scope::Broker(other.clone()),
            format!("listen: `{listen}` collides with `metrics.listen`"),
        );
    }
    let w = raw.watchdog.as_ref().map(|w| &w.value);
    let stall_text = w.and_then(|w| w.stall_after.clone());
    let stall_after = ctx.duration(
        &stall_text,
        &top,
        "watchdog.stall_after",
        defaults::stall_after(),
    );
    if stall_after.is_zero()
        && let Some(t) = &stall_text
    {
        ctx.err(&t.referenced, &top, "watchdog.stall_after: must be above 0");
    }

    let plan = Plan {
        source_file: ctx.file.clone().into(),
        brokers,
        pipes,
        shutdown_timeout,
        metrics: MetricsPlan { enabled, listen },
        watchdog: WatchdogPlan { stall_after },
        storage: compile_storage(ctx, raw),
    };
    let analysis = graph::analyze(&plan);
    let loops = analysis
        .loops
        .into_iter()
        .chain(analysis.self_loops)
        .map(|d| {
            let loc = pipe_keys.get(&d.pipe).copied().unwrap_or(start);
            ctx.diagnostic(&loc, &Scope::Pipe(d.pipe.clone()), d.message)
        })
        .collect();
    for d in analysis.warnings {
        let loc = pipe_keys.get(&d.pipe).copied().unwrap_or(start);
        ctx.warn(&loc, &Scope::Pipe(d.pipe.clone()), d.message);
    }
    (plan, loops)
}

fn name_rule() -> &'static str {
    "invalid name: names become metric labels, so they must start with a letter and hold only letters, digits, `_` and `-` (at most 64)"
}

/// Two remote brokers with the same client id on the same endpoint would kick
/// each other off forever.
fn check_client_ids(ctx: &mut Ctx, raw: &RawConfig, brokers: &BTreeMap<String, BrokerPlan>) {
    let remotes: Vec<_> = brokers
        .values()
        .filter_map(|b| match &b.kind {
            BrokerKind::Remote(r) => Some((b.name.as_str(), r)),
            BrokerKind::BuiltIn(_) => None,
        })
        .collect();
    for (i, (a, ra)) in remotes.iter().enumerate() {
        for (b, rb) in remotes.iter().skip(i + 1) {
            let shared = ra.endpoints.iter().any(|x| {
                rb.endpoints
                    .iter()
                    .any(|y| x.host == y.host && x.port == y.port)
            });
            if shared && ra.client_id == rb.client_id {
                let loc = raw
                    .brokers
                    .as_ref()
                    .and_then(|m| m.value.0.iter().find(|(k, _)| k.value == *b))
                    .map(|(k, _)| k.referenced)
                    .unwrap_or(Location::UNKNOWN);
                ctx.err(&loc, &Scope::Broker((*b).to_string()), format!(
                    "client_id `{}` is also used by broker \"{a}\" on the same endpoint; the two connections would keep kicking each other off (set a distinct `client_id`)",
                    ra.client_id
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn names() {
        assert!(valid_name("edge-to-cloud_2"));
        assert!(!valid_name("2edge"));
        assert!(!valid_name("edge cloud"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(valid_name(&"a".repeat(64)));
    }
}
