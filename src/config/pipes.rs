//! Compiling `pipes:` entries into plans.

use super::ctx::Ctx;
use super::error::Scope;
use super::graph::witnesses;
use super::plan::{
    DeliveryPlan, DropPolicy, HopPlan, PipePlan, PropertiesPlan, QosRule, QueuePlan, RateLimitPlan,
    RetainRule, SpoolFullPolicy, SpoolPlan,
};
use super::raw::{OrMap, RawConfig, RawPipe, RawRemapRule, Text, defaults};
use crate::protocol::QoS;
use crate::topic::{Remap, RemapRule, validate_filter};

/// Compiles one pipe. `None` when anything in it is wrong (errors recorded).
/// `brokers` are all declared broker names (valid or not).
pub(crate) fn compile_pipe(
    ctx: &mut Ctx,
    key: &Text,
    scope: &Scope,
    raw: &RawPipe,
    brokers: &[String],
) -> Option<PipePlan> {
    let errors_before = ctx.errors.len();
    let from = broker_ref(ctx, key, scope, &raw.from, "from", brokers);
    let to = broker_ref(ctx, key, scope, &raw.to, "to", brokers);
    let filters = topics(ctx, key, scope, raw);
    let exclude: Vec<String> = raw
        .exclude
        .iter()
        .flatten()
        .filter_map(|t| filter(ctx, t, scope, "exclude"))
        .collect();
    let remap = remap(ctx, key, scope, raw, &filters, &exclude);
    let qos = qos_rule(ctx, scope, raw);
    let retain = retain_rule(ctx, scope, raw);
    let properties = properties(ctx, scope, raw);
    let max_payload = max_payload(ctx, scope, raw);
    let rate_limit = rate_limit(ctx, scope, raw);
    let queue = queue(ctx, scope, raw);
    let loop_check = ctx.boolean(&raw.loop_check, scope, "loop_check", true);
    let delivery = delivery(ctx, scope, raw);
    if ctx.errors.len() != errors_before {
        return None;
    }
    Some(PipePlan {
        name: key.value.clone(),
        from: from?,
        to: to?,
        filters,
        exclude,
        remap,
        qos,
        retain,
        properties,
        max_payload,
        rate_limit,
        queue,
        loop_check,
        delivery,
    })
}

/// `topics:` → filters with their subscription QoS.
fn topics(ctx: &mut Ctx, key: &Text, scope: &Scope, raw: &RawPipe) -> Vec<(String, QoS)> {
    let mut filters: Vec<(String, QoS)> = Vec::new();
    let list = match &raw.topics {
        None => {
            ctx.err(
                &key.referenced,
                scope,
                "missing `topics:` (a list of filters such as `- sensors/#`)",
            );
            return filters;
        }
        Some(list) if list.value.is_empty() => {
            ctx.err(&list.referenced, scope, "topics: the list is empty");
            return filters;
        }
        Some(list) => list,
    };
    for item in &list.value {
        let (text, qos) = match &item.value {
            OrMap::Short(s) => (
                Some(Text {
                    value: s.clone(),
                    referenced: item.referenced,
                    defined: item.defined,
                }),
                None,
            ),
            OrMap::Full(t) => (t.filter.clone(), t.qos.clone()),
        };
        let Some(text) = text else {
            ctx.err(&item.referenced, scope, "topics: an entry needs `filter:`");
            continue;
        };
        let q = qos_value(ctx, &qos, scope, "topics.qos", QoS::ExactlyOnce);
        let plain = |ctx: &mut Ctx| filter(ctx, &text, scope, "topics");
        if let Some(f) = super::scaleout::topic_entry(ctx, &text, scope, plain) {
            if filters.iter().any(|(g, _)| *g == f) {
                ctx.warn(
                    &text.referenced,
                    scope,
                    format!("topics: `{f}` is listed twice"),
                );
            } else {
                filters.push((f, q));
            }
        }
    }
    filters
}

/// `remap:`, checked against a witness of every filter shape (including
/// `#` matching zero levels): no topic the pipe takes may become invalid.
fn remap(
    ctx: &mut Ctx,
    key: &Text,
    scope: &Scope,
    raw: &RawPipe,
    filters: &[(String, QoS)],
    exclude: &[String],
) -> Remap {
    let mut rules = Vec::new();
    let mut rule_locs = Vec::new();
    for r in raw.remap.iter().flatten() {
        if let Some(rule) = remap_rule(ctx, scope, &r.value, &r.referenced) {
            rules.push(rule);
            rule_locs.push(r.referenced);
        }
    }
    let remap = Remap::new(rules);
    for (f, _) in filters {
        for w in witnesses(super::scaleout::topic_filter(f)) {
            if exclude.iter().any(|e| crate::topic::matches(e, &w)) {
                continue;
            }
            if let Err(e) = remap.apply(&w) {
                let loc = remap
                    .rule_for(&w)
                    .and_then(|i| rule_locs.get(i))
                    .copied()
                    .unwrap_or(key.referenced);
                ctx.err(
                    &loc,
                    scope,
                    format!("remap: topic `{w}` (matched by `{f}`) cannot be remapped: {e}"),
                );
                break;
            }
        }
    }
    remap
}

/// `qos: {max: N}` or `{force: N}`.
fn qos_rule(ctx: &mut Ctx, scope: &Scope, raw: &RawPipe) -> QosRule {
    let Some(q) = &raw.qos else {
        return QosRule::Max(QoS::ExactlyOnce);
    };
    match (&q.value.max, &q.value.force) {
        (Some(m), None) => QosRule::Max(qos_value(
            ctx,
            &Some(m.clone()),
            scope,
            "qos.max",
            QoS::ExactlyOnce,
        )),
        (None, Some(f)) => QosRule::Force(qos_value(
            ctx,
            &Some(f.clone()),
            scope,
            "qos.force",
            QoS::ExactlyOnce,
        )),
        (Some(_), Some(f)) => {
            ctx.err(
                &f.referenced,
                scope,
                "qos: set either `max` or `force`, not both",
            );
            QosRule::Max(QoS::ExactlyOnce)
        }
        (None, None) => {
            ctx.err(
                &q.referenced,
                scope,
                "qos: needs `max: N` (cap) or `force: N` (always N)",
            );
            QosRule::Max(QoS::ExactlyOnce)
        }
    }
}

/// `retain: keep | clear | as_published`.
fn retain_rule(ctx: &mut Ctx, scope: &Scope, raw: &RawPipe) -> RetainRule {
    match choice(
        ctx,
        &raw.retain,
        scope,
        "retain",
        &["keep", "clear", "as_published"],
    ) {
        "clear" => RetainRule::Clear,
        "as_published" => RetainRule::AsPublished,
        _ => RetainRule::Keep,
    }
}

/// `response_topic:`, `user_properties:` and `loop_guard:` (MQTT 5 properties).
fn properties(ctx: &mut Ctx, scope: &Scope, raw: &RawPipe) -> PropertiesPlan {
    let remap_response_topic = choice(
        ctx,
        &raw.response_topic,
        scope,
        "response_topic",
        &["keep", "remap"],
    ) == "remap";
    let mut remove = Vec::new();
    let mut add = Vec::new();
    if let Some(u) = &raw.user_properties {
        for t in u.value.remove.iter().flatten() {
            if let Some(name) = property_text(ctx, t, scope, "user_properties.remove", true) {
                remove.push(name);
            }
        }
        for (k, v) in u.value.add.iter().flat_map(|a| &a.value.0) {
            let name = property_text(ctx, k, scope, "user_properties.add", true);
            let value = property_text(ctx, v, scope, "user_properties.add", false);
            if let (Some(name), Some(value)) = (name, value) {
                add.push((name, value));
            }
        }
    }
    let hops = raw
        .loop_guard
        .as_ref()
        .and_then(|g| loop_guard(ctx, scope, &g.value, &remove, &add));
    PropertiesPlan {
        remap_response_topic,
        remove,
        add,
        hops,
    }
}

/// `loop_guard: {hop_property, max_hops}`; `None` when a field is wrong
/// (errors recorded). The hop property must not be one `user_properties`
/// removes or adds.
fn loop_guard(
    ctx: &mut Ctx,
    scope: &Scope,
    g: &super::raw::RawLoopGuard,
    remove: &[String],
    add: &[(String, String)],
) -> Option<HopPlan> {
    let property = match &g.hop_property {
        None => Some(defaults::HOP_PROPERTY.to_owned()),
        Some(t) => property_text(ctx, t, scope, "loop_guard.hop_property", true).filter(|name| {
            let clash = remove.contains(name) || add.iter().any(|(n, _)| n == name);
            if clash {
                ctx.err(
                    &t.referenced,
                    scope,
                    format!("loop_guard.hop_property: `{name}` is also in `user_properties`; the hop count must be the bridge's alone"),
                );
            }
            !clash
        }),
    };
    let max_hops = ctx.int(
        &g.max_hops,
        scope,
        "loop_guard.max_hops",
        defaults::MAX_HOPS.into(),
        1,
        1000,
    ) as u32;
    Some(HopPlan {
        property: property?,
        max_hops,
    })
}

/// A user property name or value: an MQTT UTF-8 string (at most 65,535
/// bytes, no NUL); a name must not be empty.
fn property_text(
    ctx: &mut Ctx,
    t: &Text,
    scope: &Scope,
    field: &str,
    is_name: bool,
) -> Option<String> {
    let v = ctx.text(t, scope, field)?;
    let problem = if is_name && v.is_empty() {
        Some("a name must not be empty")
    } else if v.len() > 65_535 || v.contains('\0') {
        Some("must be at most 65,535 bytes without NUL")
    } else {
        None
    };
    match problem {
        Some(p) => {
            ctx.err(&t.referenced, scope, format!("{field}: `{v}`: {p}"));
            None
        }
        None => Some(v),
    }
}

/// Warns about every pipe with `retain: as_published` whose source is a
/// remote broker configured `protocol: 3.1.1` (or 3.1): a 3.1.1 broker
/// clears the retain flag on messages it forwards live, and has no option
/// to keep it.
pub(crate) fn warn_retain_as_published_on_3_1_1(ctx: &mut Ctx, raw: &RawConfig) {
    let (Some(pipes), Some(brokers)) = (&raw.pipes, &raw.brokers) else {
        return;
    };
    for (key, rp) in &pipes.value.0 {
        let (Some(retain), Some(from)) = (&rp.retain, &rp.from) else {
            continue;
        };
        if retain.value.trim() != "as_published" {
            continue;
        }
        let protocol = brokers
            .value
            .0
            .iter()
            .find(|(name, _)| name.value == from.value)
            .and_then(|(_, b)| b.protocol.as_ref())
            .map(|p| p.value.trim());
        if let Some(v @ ("3.1.1" | "3.1" | "4" | "3")) = protocol {
            ctx.warn(
                &retain.referenced,
                &Scope::Pipe(key.value.clone()),
                format!("retain: `as_published` needs an MQTT 5 source, but broker \"{}\" is `protocol: {v}`: it clears the retain flag of live messages, so only retained messages sent at subscribe arrive with it", from.value),
            );
        }
    }
}

/// `max_payload:`.
fn max_payload(ctx: &mut Ctx, scope: &Scope, raw: &RawPipe) -> Option<usize> {
    raw.max_payload.as_ref().map(|t| {
        let n = ctx.size(
            &Some(t.clone()),
            scope,
            "max_payload",
            defaults::max_packet_size(),
        );
        if n == 0 || n > defaults::max_packet_size() {
            ctx.err(
                &t.referenced,
                scope,
                "max_payload: must be between 1 byte and 268435455 bytes",
            );
        }
        usize::try_from(n).unwrap_or(usize::MAX)
    })
}

/// `rate_limit: {per_second, burst}`.
fn rate_limit(ctx: &mut Ctx, scope: &Scope, raw: &RawPipe) -> Option<RateLimitPlan> {
    let r = raw.rate_limit.as_ref()?;
    let Some(ps) = &r.value.per_second else {
        ctx.err(&r.referenced, scope, "rate_limit: needs `per_second: N`");
        return None;
    };
    let per_second = ctx.int(
        &Some(ps.clone()),
        scope,
        "rate_limit.per_second",
        1,
        1,
        u32::MAX.into(),
    ) as u32;
    let burst = ctx.int(
        &r.value.burst,
        scope,
        "rate_limit.burst",
        per_second.into(),
        1,
        u32::MAX.into(),
    ) as u32;
    Some(RateLimitPlan { per_second, burst })
}

/// `queue: {size, when_full}` (the QoS 0 buffer).
fn queue(ctx: &mut Ctx, scope: &Scope, raw: &RawPipe) -> QueuePlan {
    let q = raw.queue.as_ref().map(|q| &q.value);
    let size_text = q.and_then(|q| q.size.clone());
    let size = ctx.int(
        &size_text,
        scope,
        "queue.size",
        defaults::queue_size() as u64,
        0,
        100_000_000,
    ) as usize;
    if size == 0
        && let Some(t) = &size_text
    {
        ctx.err(&t.referenced, scope, "queue.size: must be at least 1");
    }
    let when_full = match q.and_then(|q| q.when_full.as_ref()) {
        None => DropPolicy::DropOldest,
        Some(t) => {
            match ctx.text(t, scope, "queue.when_full").as_deref() {
                Some("drop_oldest") | None => DropPolicy::DropOldest,
                Some("drop_newest") => DropPolicy::DropNewest,
                Some(other) => {
                    ctx.err(
                    &t.referenced,
                    scope,
                    format!("queue.when_full: expected `drop_oldest` or `drop_newest`, got `{other}`"),
                );
                    DropPolicy::DropOldest
                }
            }
        }
    };
    QueuePlan { size, when_full }
}

/// One of `choices` (the first is the default) for the text field `field`.
fn choice<'a>(
    ctx: &mut Ctx,
    t: &Option<Text>,
    scope: &Scope,
    field: &str,
    choices: &[&'a str],
) -> &'a str {
    let first = choices.first().copied().unwrap_or_default();
    let Some(t) = t else { return first };
    let Some(value) = ctx.text(t, scope, field) else {
        return first;
    };
    match choices.iter().find(|c| **c == value) {
        Some(c) => c,
        None => {
            let list: Vec<String> = choices.iter().map(|c| format!("`{c}`")).collect();
            ctx.err(
                &t.referenced,
                scope,
                format!("{field}: expected {}, got `{value}`", list.join(" or ")),
            );
            first
        }
    }
}

/// `delivery:`, `qos0:` and `spool: {max_bytes, when_full}`.
fn delivery(ctx: &mut Ctx, scope: &Scope, raw: &RawPipe) -> DeliveryPlan {
    let mode = choice(
        ctx,
        &raw.delivery,
        scope,
        "delivery",
        &["spool", "end_to_end"],
    );
    let qos0 = choice(ctx, &raw.qos0, scope, "qos0", &["memory", "spool"]);
    let spool = raw.spool.as_ref().map(|s| &s.value);
    let max_text = spool.and_then(|s| s.max_bytes.clone());
    let max_bytes = max_text.as_ref().map(|t| {
        let n = ctx.size(&Some(t.clone()), scope, "spool.max_bytes", 0);
        if n == 0 {
            ctx.err(&t.referenced, scope, "spool.max_bytes: must be above 0");
        }
        n
    });
    let when_full = choice(
        ctx,
        &spool.and_then(|s| s.when_full.clone()),
        scope,
        "spool.when_full",
        &["block", "drop_oldest"],
    );
    if mode == "end_to_end"
        && let Some(t) = raw.qos0.as_ref().filter(|_| qos0 == "spool")
    {
        ctx.err(
            &t.referenced,
            scope,
            "qos0: `spool` needs `delivery: spool`",
        );
    }
    match mode {
        "end_to_end" => DeliveryPlan::EndToEnd,
        _ => DeliveryPlan::Spool(SpoolPlan {
            qos0: qos0 == "spool",
            max_bytes,
            when_full: if when_full == "drop_oldest" {
                SpoolFullPolicy::DropOldest
            } else {
                SpoolFullPolicy::Block
            },
        }),
    }
}

fn broker_ref(
    ctx: &mut Ctx,
    key: &Text,
    scope: &Scope,
    t: &Option<Text>,
    field: &str,
    brokers: &[String],
) -> Option<String> {
    let Some(t) = t else {
        ctx.err(
            &key.referenced,
            scope,
            format!("missing `{field}:` (a broker name)"),
        );
        return None;
    };
    let name = ctx.text(t, scope, field)?;
    if brokers.contains(&name) {
        return Some(name);
    }
    let hint = brokers
        .iter()
        .filter(|b| edit_distance(b, &name) <= 2)
        .min_by_key(|b| edit_distance(b, &name))
        .map(|b| format!(" (did you mean \"{b}\"?)"))
        .unwrap_or_else(|| {
            if brokers.is_empty() {
                String::new()
            } else {
                format!(" (known: {})", brokers.join(", "))
            }
        });
    ctx.err(
        &t.referenced,
        scope,
        format!("unknown broker \"{name}\"{hint}"),
    );
    None
}

fn filter(ctx: &mut Ctx, t: &Text, scope: &Scope, field: &str) -> Option<String> {
    let f = ctx.text(t, scope, field)?;
    match validate_filter(&f) {
        Ok(()) => Some(f),
        Err(e) => {
            ctx.err(
                &t.referenced,
                scope,
                format!("{field}: invalid filter `{f}`: it {e}"),
            );
            None
        }
    }
}

fn qos_value(ctx: &mut Ctx, t: &Option<Text>, scope: &Scope, field: &str, default: QoS) -> QoS {
    let n = ctx.int(t, scope, field, default.as_u8().into(), 0, 2);
    QoS::from_u8(n as u8).unwrap_or(default)
}

fn remap_rule(
    ctx: &mut Ctx,
    scope: &Scope,
    r: &RawRemapRule,
    loc: &serde_saphyr::Location,
) -> Option<RemapRule> {
    let prefix = r.strip_prefix.is_some() || r.add_prefix.is_some();
    let template = r.from.is_some() || r.to.is_some();
    let regex = r.regex.is_some() || r.replace.is_some();
    match (prefix, template, regex) {
        (true, false, false) => {
            let strip = ctx.opt_text(&r.strip_prefix, scope, "remap.strip_prefix");
            let add = ctx.opt_text(&r.add_prefix, scope, "remap.add_prefix");
            if let (Some(a), Some(t)) = (&add, &r.add_prefix)
                && (a.contains(['+', '#', '\0']))
            {
                ctx.err(
                    &t.referenced,
                    scope,
                    format!("remap.add_prefix: `{a}` must not contain `+`, `#` or NUL"),
                );
                return None;
            }
            Some(RemapRule::prefix(
                strip.as_deref().filter(|s| !s.is_empty()),
                add.as_deref().filter(|s| !s.is_empty()),
            ))
        }
        (false, true, false) => {
            let (Some(f), Some(t)) = (&r.from, &r.to) else {
                ctx.err(
                    loc,
                    scope,
                    "remap: a template rule needs both `from:` (a filter) and `to:` (a template)",
                );
                return None;
            };
            let filter = ctx.text(f, scope, "remap.from")?;
            let template = ctx.text(t, scope, "remap.to")?;
            match RemapRule::template(&filter, &template) {
                Ok(rule) => Some(rule),
                Err(e) => {
                    ctx.err(&t.referenced, scope, format!("remap: {e}"));
                    None
                }
            }
        }
        (false, false, true) => {
            let (Some(p), Some(rep)) = (&r.regex, &r.replace) else {
                ctx.err(
                    loc,
                    scope,
                    "remap: a regex rule needs both `regex:` and `replace:`",
                );
                return None;
            };
            let pattern = ctx.text(p, scope, "remap.regex")?;
            let replace = ctx.text(rep, scope, "remap.replace")?;
            match RemapRule::regex(&pattern, &replace) {
                Ok(rule) => Some(rule),
                Err(e) => {
                    ctx.err(&p.referenced, scope, format!("remap: {e}"));
                    None
                }
            }
        }
        (false, false, false) => {
            ctx.err(loc, scope, "remap: empty rule; use `strip_prefix`/`add_prefix`, `from`/`to`, or `regex`/`replace`");
            None
        }
        _ => {
            ctx.err(loc, scope, "remap: one rule mixes kinds; use exactly one of `strip_prefix`/`add_prefix`, `from`/`to`, `regex`/`replace` per rule");
            None
        }
    }
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            cur.push(sub.min(del).min(ins));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod property_tests;
