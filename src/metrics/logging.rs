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
/// and are logged by the listener or the client.
pub const LIBRARY_DEFAULTS: &[(&str, &str)] = &[("rustls", "error")];

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

/// Builds the [`EnvFilter`] for `directive`.
pub fn build_filter(directive: &str) -> Result<EnvFilter, LoggingError> {
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
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
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
        assert_eq!(with_library_defaults("info"), "info,rustls=error");
        assert_eq!(
            with_library_defaults("mqbridge=debug,warn"),
            "mqbridge=debug,warn,rustls=error"
        );
        assert_eq!(with_library_defaults("rustls=debug"), "rustls=debug");
        assert_eq!(
            with_library_defaults("info,rustls::server=trace"),
            "info,rustls::server=trace"
        );
        assert!(build_filter(&with_library_defaults("debug")).is_ok());
    }

    #[test]
    fn bad_directive_is_an_error() {
        assert!(build_filter("mqbridge=debug,warn").is_ok());
        let err = build_filter("mqbridge=loud").unwrap_err();
        assert!(err.to_string().contains("mqbridge=loud"), "{err}");
    }
}
