//! `bridges.yaml` → checked [`Plan`].
//!
//! Two stages, as in vector: [`raw`] serde structs (unknown fields refused,
//! every scalar kept with its line and column), then `compile`, which
//! substitutes `${VAR}`, parses units, reads secret files, validates names,
//! filters and remaps, and runs the static loop/duplication analysis
//! ([`graph`]) — gathering every error, each with file, line, column and the
//! broker or pipe it belongs to. No IO beyond reading the config and the files
//! it names; no tasks.

mod broker_fields;
mod brokers;
mod builtin;
pub mod certs;
pub(crate) mod client_id;
mod compile;
mod ctx;
pub(crate) mod diff;
pub mod env;
mod error;
pub(crate) mod graph;
mod hints;
mod pipes;
pub(crate) mod plan;
pub mod raw;
mod remote;
pub mod route;
mod scaleout;
mod storage;
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
    let opts = LoadOptions { vars: &vars };
    compile::compile_with_loops(&text, &name, &opts)
}

/// Compiles config text as if read from `file_name` (used in messages, for the
/// default client id, and as the base of relative paths), with the process
/// environment.
pub fn load_str(text: &str, file_name: &str) -> Result<(Plan, Vec<Warning>), ConfigErrors> {
    let vars = |name: &str| std::env::var(name).ok();
    let opts = LoadOptions { vars: &vars };
    load_str_with(text, file_name, &opts)
}

/// Compiles config text with explicit variables (for tests).
pub fn load_str_with(
    text: &str,
    file_name: &str,
    opts: &LoadOptions<'_>,
) -> Result<(Plan, Vec<Warning>), ConfigErrors> {
    compile::compile_str(text, file_name, opts)
}

#[cfg(test)]
mod tests;
