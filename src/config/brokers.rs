//! Compiling `brokers:` entries into plans: dispatch on `type`. See
//! [`super::remote`] and [`super::builtin`]; the field checks both share are
//! in [`super::broker_fields`].

use super::builtin::compile_builtin;
use super::ctx::Ctx;
use super::error::Scope;
use super::plan::BrokerKind;
use super::raw::{RawBroker, Text};
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
