//! `storage:` → [`StoragePlan`].

use super::ctx::Ctx;
use super::error::Scope;
use super::plan::{FsyncPolicy, StoragePlan};
use super::raw::{RawConfig, defaults};
use super::units::parse_duration;

/// The environment variable that gives the data directory when the file
/// does not.
pub const DATA_DIR_VAR: &str = "MQBRIDGE_DATA_DIR";

/// Compiles `storage:`; every field has a default, so the section is optional.
pub(super) fn compile_storage(ctx: &mut Ctx, raw: &RawConfig) -> StoragePlan {
    let top = Scope::Top;
    let s = raw.storage.as_ref().map(|s| &s.value);
    // Without `storage.dir`: `MQBRIDGE_DATA_DIR` (the Docker image sets
    // `/data`), else a folder next to the config file.
    let default_dir = (ctx.opts.vars)(DATA_DIR_VAR)
        .filter(|d| !d.trim().is_empty())
        .unwrap_or_else(|| defaults::STORAGE_DIR.to_string());
    let dir = match s.and_then(|s| s.dir.as_ref()) {
        None => ctx.resolve(&default_dir),
        Some(t) => match ctx.text(t, &top, "storage.dir") {
            Some(d) if d.trim().is_empty() => {
                ctx.err(&t.referenced, &top, "storage.dir: must not be empty");
                ctx.resolve(&default_dir)
            }
            Some(d) => ctx.resolve(&d),
            None => ctx.resolve(&default_dir),
        },
    };
    let fsync = match s.and_then(|s| s.fsync.as_ref()) {
        None => FsyncPolicy::Batch,
        Some(t) => match ctx.text(t, &top, "storage.fsync") {
            None => FsyncPolicy::Batch,
            Some(text) => match fsync_policy(&text) {
                Ok(p) => p,
                Err(message) => {
                    ctx.err(&t.referenced, &top, message);
                    FsyncPolicy::Batch
                }
            },
        },
    };
    let max_text = s.and_then(|s| s.max_bytes.clone());
    let max_bytes = ctx.size(
        &max_text,
        &top,
        "storage.max_bytes",
        defaults::STORAGE_MAX_BYTES,
    );
    if max_bytes == 0
        && let Some(t) = &max_text
    {
        ctx.err(&t.referenced, &top, "storage.max_bytes: must be above 0");
    }
    StoragePlan {
        dir,
        fsync,
        max_bytes,
    }
}

/// `batch`, `never`, or a flush interval such as `10ms`.
fn fsync_policy(text: &str) -> Result<FsyncPolicy, String> {
    match text.trim() {
        "batch" => Ok(FsyncPolicy::Batch),
        "never" => Ok(FsyncPolicy::Never),
        other => match parse_duration(other) {
            Ok(d) if d.is_zero() => Err(
                "storage.fsync: an interval must be above 0 (use `batch` to sync every write)"
                    .to_string(),
            ),
            Ok(d) => Ok(FsyncPolicy::Interval(d)),
            Err(_) => Err(format!(
                "storage.fsync: `{other}` is not `batch`, `never` or an interval such as `10ms`"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const BASE: &str = "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n";

    fn load(text: &str, vars: &[(&str, &str)]) -> Result<StoragePlan, String> {
        let lookup = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        let opts = crate::config::LoadOptions { vars: &lookup };
        crate::config::load_str_with(text, "/etc/mqbridge/bridges.yaml", &opts)
            .map(|(plan, _)| plan.storage)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_next_to_the_config_or_from_the_environment() {
        let plan = load(BASE, &[]).expect("valid");
        assert_eq!(
            plan.dir,
            std::path::Path::new("/etc/mqbridge/mqbridge-data")
        );
        assert_eq!(plan.fsync, FsyncPolicy::Batch);
        assert_eq!(plan.max_bytes, 1 << 30);
        let plan = load(BASE, &[(DATA_DIR_VAR, "/data/store")]).expect("valid");
        assert_eq!(plan.dir, std::path::Path::new("/data/store"));
        let text = format!("{BASE}storage:\n  dir: spool\n  fsync: 10ms\n  max_bytes: 64MiB\n");
        let plan = load(&text, &[(DATA_DIR_VAR, "/data/store")]).expect("valid");
        assert_eq!(plan.dir, std::path::Path::new("/etc/mqbridge/spool"));
        assert_eq!(plan.fsync, FsyncPolicy::Interval(Duration::from_millis(10)));
        assert_eq!(plan.max_bytes, 64 << 20);
    }

    #[test]
    fn bad_values_are_reported_with_their_place() {
        let text = format!("{BASE}storage:\n  fsync: sometimes\n  max_bytes: 0\n  dir: ''\n");
        let err = load(&text, &[]).expect_err("invalid");
        assert!(err.contains("bridges.yaml:6:10") && err.contains("storage.fsync: `sometimes` is not `batch`, `never` or an interval such as `10ms`"), "{err}");
        assert!(err.contains("storage.max_bytes: must be above 0"), "{err}");
        assert!(err.contains("storage.dir: must not be empty"), "{err}");
    }

    #[test]
    fn fsync_policies() {
        assert_eq!(fsync_policy("batch"), Ok(FsyncPolicy::Batch));
        assert_eq!(fsync_policy("never"), Ok(FsyncPolicy::Never));
        assert_eq!(
            fsync_policy("10ms"),
            Ok(FsyncPolicy::Interval(Duration::from_millis(10)))
        );
        assert!(fsync_policy("0s").is_err());
        assert!(fsync_policy("sometimes").is_err());
    }
}
