//! Compiling `brokers:` entries into plans: dispatch on `type`, and what
//! remote and built-in brokers share. See [`super::remote`] and [`super::builtin`].

use serde_saphyr::Location;

use super::builtin::compile_builtin;
use super::ctx::Ctx;
use super::error::Scope;
use super::plan::BrokerKind;
use super::raw::{RawBroker, Text, defaults};
use super::remote::compile_remote;

/// Compiles one broker; `None` when its `type` is missing or unknown.
pub(crate) fn compile_broker(
    ctx: &mut Ctx,
    key: &Text,
    scope: &Scope,
    raw: &RawBroker,
) -> Option<BrokerKind> {
    let Some(kind) = &raw.kind else {
        ctx.err(
            &key.referenced,
            scope,
            "missing `type:` (`remote` to connect to a broker, `builtin` to run our own)",
        );
        return None;
    };
    match ctx.text(kind, scope, "type")?.as_str() {
        "remote" => Some(BrokerKind::Remote(compile_remote(ctx, key, scope, raw))),
        "builtin" => Some(BrokerKind::BuiltIn(compile_builtin(ctx, key, scope, raw))),
        other => {
            ctx.err(
                &kind.referenced,
                scope,
                format!("type: unknown broker type `{other}` (use `remote` or `builtin`)"),
            );
            None
        }
    }
}

/// Reports each present field from `fields` as belonging to the other kind.
pub(crate) fn reject_fields(
    ctx: &mut Ctx,
    scope: &Scope,
    fields: &[(&str, Option<&Location>)],
    kind: &str,
) {
    for (name, loc) in fields {
        if let Some(loc) = loc {
            ctx.err(
                loc,
                scope,
                format!("`{name}` is only for `type: {kind}` brokers"),
            );
        }
    }
}

pub(crate) fn positive_duration(
    ctx: &mut Ctx,
    t: &Option<Text>,
    scope: &Scope,
    field: &str,
    default: std::time::Duration,
) -> std::time::Duration {
    let d = ctx.duration(t, scope, field, default);
    if d.is_zero()
        && let Some(t) = t
    {
        ctx.err(&t.referenced, scope, format!("{field}: must be above 0"));
        return default;
    }
    d
}

pub(crate) fn packet_size(
    ctx: &mut Ctx,
    t: &Option<Text>,
    scope: &Scope,
    field: &str,
    default: u64,
) -> usize {
    let n = ctx.size(t, scope, field, default);
    if let Some(t) = t
        && (n < 16 || n > defaults::max_packet_size())
    {
        ctx.err(&t.referenced, scope, format!("{field}: must be between 16 bytes and 268435455 bytes (256MiB - 1, the MQTT maximum)"));
        return default as usize;
    }
    usize::try_from(n).unwrap_or(usize::MAX)
}
