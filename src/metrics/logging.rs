//! Logging setup: `tracing-subscriber` with text or JSON output and an
//! `EnvFilter` from `--log-level` or `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines with `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The level or `RUST_LOG` directive does not parse.
    #[error("invalid log filter {directive:?}: {message}")]
    Filter {
        /// The directive as given.
        directive: String,
        /// The parser's complaint.
        message: String,
    },
    /// A directive names a level that does not exist (`verbose`, `debg`): the
    /// filter parser would take it for a target name and log nothing.
    #[error(
        "invalid log filter {directive:?}: unknown level {level:?}; valid levels are \
         {VALID_LEVELS}; a filter is `level` or `target=level`, comma-separated \
         (e.g. `mqbridge=debug,info`)"
    )]
    UnknownLevel {
        /// The whole filter as given.
        directive: String,
        /// The part that is not a level.
        level: String,
    },
    /// A global subscriber is already installed.
    #[error("logging already initialised")]
    AlreadySet,
}

/// The filter directive to use: `RUST_LOG` when set and non-empty (it is the
/// finer tool), else `level` (e.g. `info` or `mqbridge=debug,info`).
pub fn filter_directive(level: &str, rust_log: Option<&str>) -> String {
    match rust_log.map(str::trim) {
        Some(env) if !env.is_empty() => env.to_owned(),
        _ => level.to_owned(),
    }
}

/// Libraries whose logs are noise at the levels we run at, with the level
/// they get unless the directive names them itself. rustls warns for every
/// client that connects by IP address ("Illegal SNI extension: ignoring IP
/// address presented as hostname"); its real failures reach us as errors
/// and are logged by the listener or the client. The store's engine (fjall,
/// lsm-tree) logs its routine work at info ("Recovering database at ...");
/// what matters of it (records recovered or dropped) we log ourselves.
pub const LIBRARY_DEFAULTS: &[(&str, &str)] =
    &[("rustls", "error"), ("fjall", "warn"), ("lsm_tree", "warn")];

/// `directive` plus [`LIBRARY_DEFAULTS`] for every library it does not name
/// (so `RUST_LOG=rustls=debug` still shows rustls' debug logs).
pub fn with_library_defaults(directive: &str) -> String {
    let named = |target: &str| {
        directive
            .split(',')
            .filter_map(|d| d.split('=').next())
            .any(|t| t.trim() == target || t.trim().starts_with(&format!("{target}::")))
    };
    let mut out = directive.to_owned();
    for (target, level) in LIBRARY_DEFAULTS {
        if !named(target) {
            if !out.trim().is_empty() {
                out.push(',');
            }
            out.push_str(&format!("{target}={level}"));
        }
    }
    out
}

/// The level names a directive may use (any case).
pub const VALID_LEVELS: &str = "trace, debug, info, warn, error, off";

/// Splits a filter into its comma-separated directives, ignoring commas
/// inside `[...]` span/field selectors.
fn directives(filter: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in filter.char_indices() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&filter[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&filter[start..]);
    out
}

/// The level part of one directive: after the last `=` outside `[...]`, or
/// the whole directive when it has none.
fn level_part(directive: &str) -> &str {
    let mut depth = 0usize;
    let mut eq = None;
    for (i, c) in directive.char_indices() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => depth = depth.saturating_sub(1),
            '=' if depth == 0 => eq = Some(i),
            _ => {}
        }
    }
    match eq {
        Some(i) => &directive[i + 1..],
        None => directive,
    }
}

/// Checks that every directive of `filter` carries a real level. `EnvFilter`
/// reads a bare word that is not a level as a target name enabled at every
/// level, so `verbose` or `debg` would silence everything else without error.
pub fn check_levels(filter: &str) -> Result<(), LoggingError> {
    for d in directives(filter).into_iter().map(str::trim) {
        if d.is_empty() {
            continue;
        }
        let level = level_part(d).trim();
        if level
            .parse::<tracing_subscriber::filter::LevelFilter>()
            .is_err()
        {
            return Err(LoggingError::UnknownLevel {
                directive: filter.to_owned(),
                level: level.to_owned(),
            });
        }
    }
    Ok(())
}

/// Builds the [`EnvFilter`] for `directive`, refusing unknown levels
/// ([`check_levels`]).
pub fn build_filter(directive: &str) -> Result<EnvFilter, LoggingError> {
    check_levels(directive)?;
    EnvFilter::builder()
        .parse(directive)
        .map_err(|e| LoggingError::Filter {
            directive: directive.to_owned(),
            message: e.to_string(),
        })
}

/// Installs the global subscriber: `format`, filtered by `RUST_LOG` if set,
/// else by `level`. Logs go to stderr.
pub fn init(format: LogFormat, level: &str) -> Result<(), LoggingError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let directive = filter_directive(level, rust_log.as_deref());
    // Checked as given (errors name what the user wrote), used with the defaults.
    build_filter(&directive)?;
    let filter = build_filter(&with_library_defaults(&directive))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: not into files, `docker logs` or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let res = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(super::jsonlog::JsonLines::new())
            .try_init(),
    };
    res.map_err(|_| LoggingError::AlreadySet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_wins_when_set() {
        assert_eq!(filter_directive("info", None), "info");
        assert_eq!(filter_directive("info", Some("  ")), "info");
        assert_eq!(
            filter_directive("info", Some("mqbridge=trace")),
            "mqbridge=trace"
        );
    }

    #[test]
    fn library_noise_is_filtered_unless_asked_for() {
        assert_eq!(
            with_library_defaults("info"),
            "info,rustls=error,fjall=warn,lsm_tree=warn"
        );
        assert_eq!(
            with_library_defaults("mqbridge=debug,warn"),
            "mqbridge=debug,warn,rustls=error,fjall=warn,lsm_tree=warn"
        );
        assert_eq!(
            with_library_defaults("rustls=debug,fjall=info,lsm_tree=debug"),
            "rustls=debug,fjall=info,lsm_tree=debug"
        );
        assert_eq!(
            with_library_defaults("info,rustls::server=trace"),
            "info,rustls::server=trace,fjall=warn,lsm_tree=warn"
        );
        assert!(build_filter(&with_library_defaults("debug")).is_ok());
    }

    #[test]
    fn bad_directive_is_an_error() {
        assert!(build_filter("mqbridge=debug,warn").is_ok());
        let err = build_filter("mqbridge=loud").unwrap_err();
        assert!(err.to_string().contains("mqbridge=loud"), "{err}");
    }

    #[test]
    fn unknown_bare_levels_are_refused_with_the_valid_list() {
        for bad in ["verbose", "debg", "info,verbose", "mqbridge=debug,debg"] {
            let err = build_filter(bad).unwrap_err();
            assert!(
                matches!(err, LoggingError::UnknownLevel { .. }),
                "{bad}: {err}"
            );
            let text = err.to_string();
            assert!(text.contains(VALID_LEVELS), "{text}");
        }
        let err = build_filter("info,verbose").unwrap_err();
        assert!(err.to_string().contains("\"verbose\""), "{err}");
    }

    #[test]
    fn levels_and_target_filters_are_accepted() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "mqbridge=debug,rustls=off",
            "mqbridge=debug,info",
            "mqbridge::client=trace, warn",
            "mqbridge[pipe{id=a}]=debug",
            "[pipe{id=a}]=trace,info",
            "",
        ] {
            assert!(build_filter(ok).is_ok(), "{ok}");
        }
    }
}
