//! `bridges.yaml` → checked [`Plan`].
//!
//! Two stages, as in vector: [`raw`] serde structs (unknown fields refused,
//! every scalar kept with its line and column), then `compile`, which
//! substitutes `${VAR}`, parses units, reads secret files, validates names,
//! filters and remaps, and runs the static loop/duplication analysis
//! ([`graph`]) — gathering every error, each with file, line, column and the
//! broker or pipe it belongs to. No IO beyond reading the config and the files
//! it names; no tasks.

mod brokers;
mod builtin;
mod compile;
mod ctx;
pub mod env;
mod error;
pub mod graph;
mod hints;
mod pipes;
pub mod plan;
pub mod raw;
mod remote;
pub mod route;
pub mod summary;
pub mod units;
mod urls;

use std::path::Path;

pub use compile::LoopedPlan;
pub use ctx::LoadOptions;
pub use error::{ConfigError, ConfigErrors, Diagnostic, Scope, Warning};
pub use plan::*;
pub use urls::{addrs_collide, parse_endpoint, parse_listen_url};

/// Loads and compiles a config file, reading `${VAR}` from the process
/// environment. Returns the plan and its warnings, or every error.
pub fn load(path: &Path) -> Result<(Plan, Vec<Warning>), ConfigErrors> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(&text, &name),
        Err(e) => Err(ConfigErrors {
            errors: vec![Diagnostic {
                file: name,
                line: 0,
                column: 0,
                scope: Scope::Top,
                message: format!("cannot read the config file: {e}"),
            }],
        }),
    }
}

/// Like [`load`], but a config whose only errors are loops still yields its
/// plan (with the loop errors beside it), so `mqbridge route` can show the loop.
pub fn load_with_loops(path: &Path) -> Result<LoopedPlan, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        errors: vec![Diagnostic {
            file: name.clone(),
            line: 0,
            column: 0,
            scope: Scope::Top,
            message: format!("cannot read the config file: {e}"),
        }],
    })?;
    let vars = |name: &str| std::env::var(name).ok();
    let opts = LoadOptions {
        vars: &vars,
        hostname: local_hostname(),
    };
    compile::compile_with_loops(&text, &name, &opts)
}

/// Compiles config text as if read from `file_name` (used in messages, for the
/// default client id, and as the base of relative paths), with the process
/// environment and host name.
pub fn load_str(text: &str, file_name: &str) -> Result<(Plan, Vec<Warning>), ConfigErrors> {
    let vars = |name: &str| std::env::var(name).ok();
    let opts = LoadOptions {
        vars: &vars,
        hostname: local_hostname(),
    };
    load_str_with(text, file_name, &opts)
}

/// Compiles config text with explicit variables and host name (for tests).
pub fn load_str_with(
    text: &str,
    file_name: &str,
    opts: &LoadOptions<'_>,
) -> Result<(Plan, Vec<Warning>), ConfigErrors> {
    compile::compile_str(text, file_name, opts)
}

/// This machine's host name, reduced to characters safe in a client id and a
/// topic level (`[A-Za-z0-9._-]`); `localhost` when unknown.
pub fn local_hostname() -> String {
    let raw = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.is_empty() {
        "localhost".to_string()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests;
