//! Field checks that remote and built-in brokers share.

use serde_saphyr::Location;

use super::ctx::Ctx;
use super::error::Scope;
use super::raw::{Text, defaults};

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

/// A duration field that must be above 0 (`default` when absent or invalid).
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

/// A packet size field within MQTT's bounds (`default` when absent or invalid).
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
