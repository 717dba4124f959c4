//! Located config errors and warnings: `bridges.yaml:12:7: pipe "up": unknown broker "clod"`.

use std::fmt;

/// What part of the config a diagnostic belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Top level (`metrics`, `watchdog`, the file itself).
    Top,
    /// A broker, by name.
    Broker(String),
    /// A pipe, by name.
    Pipe(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Top => Ok(()),
            Scope::Broker(n) => write!(f, "broker \"{n}\": "),
            Scope::Pipe(n) => write!(f, "pipe \"{n}\": "),
        }
    }
}

/// One located diagnostic (an error, or a [`Warning`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The config file name as the user gave it.
    pub file: String,
    /// 1-based line; 0 when unknown (e.g. the file could not be read).
    pub line: u64,
    /// 1-based column; 0 when unknown.
    pub column: u64,
    /// The broker or pipe it belongs to.
    pub scope: Scope,
    /// The message, without location or scope.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}{}", self.file, self.scope, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}{}",
                self.file, self.line, self.column, self.scope, self.message
            )
        }
    }
}

/// One config error.
pub type ConfigError = Diagnostic;

/// A warning: the config is valid, but something looks unintended (e.g. duplicate delivery).
pub type Warning = Diagnostic;

/// Every error found in a config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The errors (never empty when returned by `load`).
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
