//! The compile context: collects diagnostics and turns located raw text into
//! typed values (env substitution, units, files), reporting every failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::Location;

use super::certs::{CertUse, check_file};
use super::env::substitute;
use super::error::{Diagnostic, Scope};
use super::raw::Text;
use super::units::{parse_duration, parse_size};

/// Where variables come from (the process, or a test's fakes).
pub struct LoadOptions<'a> {
    /// Looks up `${VAR}`.
    pub vars: &'a dyn Fn(&str) -> Option<String>,
}

/// Diagnostics collector plus the inputs every conversion needs.
pub(crate) struct Ctx<'a> {
    pub file: String,
    pub base_dir: PathBuf,
    pub stem: String,
    pub opts: &'a LoadOptions<'a>,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl<'a> Ctx<'a> {
    pub fn new(file: &str, opts: &'a LoadOptions<'a>) -> Self {
        let path = Path::new(file);
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config".to_string());
        Ctx {
            file: file.to_string(),
            base_dir,
            stem,
            opts,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn diag(&self, loc: &Location, scope: &Scope, message: String) -> Diagnostic {
        // Keep one diagnostic on one line (the regex crate's errors draw a caret diagram).
        let message = if message.contains('\n') {
            let mut lines = message.lines().map(str::trim).filter(|l| !l.is_empty());
            let first = lines.next().unwrap_or_default().to_string();
            match lines.next_back() {
                Some(last) => format!("{first} {last}"),
                None => first,
            }
        } else {
            message
        };
        Diagnostic {
            file: self.file.clone(),
            line: loc.line(),
            column: loc.column(),
            scope: scope.clone(),
            message,
        }
    }

    /// A diagnostic at `loc`, not recorded (the caller keeps it apart).
    pub fn diagnostic(&self, loc: &Location, scope: &Scope, message: String) -> Diagnostic {
        self.diag(loc, scope, message)
    }

    /// Records an error at `loc`.
    pub fn err(&mut self, loc: &Location, scope: &Scope, message: impl Into<String>) {
        let d = self.diag(loc, scope, message.into());
        self.errors.push(d);
    }

    /// Records a warning at `loc`.
    pub fn warn(&mut self, loc: &Location, scope: &Scope, message: impl Into<String>) {
        let d = self.diag(loc, scope, message.into());
        self.warnings.push(d);
    }

    /// The value with `${VAR}` substituted; `None` (error recorded) on failure.
    pub fn text(&mut self, t: &Text, scope: &Scope, field: &str) -> Option<String> {
        match substitute(&t.value, self.opts.vars) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(&t.referenced, scope, format!("{field}: {e}"));
                None
            }
        }
    }

    /// Like [`Ctx::text`] for an optional field.
    pub fn opt_text(&mut self, t: &Option<Text>, scope: &Scope, field: &str) -> Option<String> {
        t.as_ref().and_then(|t| self.text(t, scope, field))
    }

    /// A duration field, `default` when absent (or invalid, with the error recorded).
    pub fn duration(
        &mut self,
        t: &Option<Text>,
        scope: &Scope,
        field: &str,
        default: Duration,
    ) -> Duration {
        let Some(t) = t else { return default };
        let Some(s) = self.text(t, scope, field) else {
            return default;
        };
        match parse_duration(&s) {
            Ok(d) => d,
            Err(e) => {
                self.err(&t.referenced, scope, format!("{field}: {e}"));
                default
            }
        }
    }

    /// A size field in bytes, `default` when absent or invalid.
    pub fn size(&mut self, t: &Option<Text>, scope: &Scope, field: &str, default: u64) -> u64 {
        let Some(t) = t else { return default };
        let Some(s) = self.text(t, scope, field) else {
            return default;
        };
        match parse_size(&s) {
            Ok(d) => d,
            Err(e) => {
                self.err(&t.referenced, scope, format!("{field}: {e}"));
                default
            }
        }
    }

    /// A `true`/`false` field.
    pub fn boolean(&mut self, t: &Option<Text>, scope: &Scope, field: &str, default: bool) -> bool {
        let Some(t) = t else { return default };
        let Some(s) = self.text(t, scope, field) else {
            return default;
        };
        match s.trim() {
            "true" => true,
            "false" => false,
            other => {
                self.err(
                    &t.referenced,
                    scope,
                    format!("{field}: expected `true` or `false`, got `{other}`"),
                );
                default
            }
        }
    }

    /// A whole number in `min..=max`, `default` when absent or invalid.
    pub fn int(
        &mut self,
        t: &Option<Text>,
        scope: &Scope,
        field: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let Some(t) = t else { return default };
        let Some(s) = self.text(t, scope, field) else {
            return default;
        };
        match s.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => n,
            Ok(n) => {
                self.err(
                    &t.referenced,
                    scope,
                    format!("{field}: {n} is out of range (allowed {min}..={max})"),
                );
                default
            }
            Err(_) => {
                self.err(
                    &t.referenced,
                    scope,
                    format!("{field}: expected a whole number, got `{s}`"),
                );
                default
            }
        }
    }

    /// A file path, resolved against the config file's directory and checked
    /// readable. `None` when absent or unreadable (error recorded).
    pub fn file(&mut self, t: &Option<Text>, scope: &Scope, field: &str) -> Option<PathBuf> {
        let t = t.as_ref()?;
        let s = self.text(t, scope, field)?;
        if s.is_empty() {
            self.err(&t.referenced, scope, format!("{field}: empty path"));
            return None;
        }
        let path = self.resolve(&s);
        match std::fs::File::open(&path) {
            Ok(f) if f.metadata().map(|m| m.is_file()).unwrap_or(false) => Some(path),
            Ok(_) => {
                self.err(
                    &t.referenced,
                    scope,
                    format!("{field}: `{}` is not a regular file", path.display()),
                );
                None
            }
            Err(e) => {
                self.err(
                    &t.referenced,
                    scope,
                    format!("{field}: cannot read `{}`: {e}", path.display()),
                );
                None
            }
        }
    }

    /// A certificate file: [`Ctx::file`], then checked for `usage` (e.g. an
    /// X.509 v1 certificate rustls would refuse at the first handshake).
    pub fn cert_file(
        &mut self,
        t: &Option<Text>,
        scope: &Scope,
        field: &str,
        usage: CertUse,
    ) -> Option<PathBuf> {
        let path = self.file(t, scope, field)?;
        if let Err(e) = check_file(&path, usage) {
            let loc = t
                .as_ref()
                .map(|t| t.referenced)
                .unwrap_or(Location::UNKNOWN);
            self.err(&loc, scope, format!("{field}: {}: {e}", path.display()));
            return None;
        }
        Some(path)
    }

    /// Reads a secret file (trailing newline trimmed).
    pub fn secret_file(&mut self, t: &Option<Text>, scope: &Scope, field: &str) -> Option<String> {
        let path = self.file(t, scope, field)?;
        let loc = t
            .as_ref()
            .map(|t| t.referenced)
            .unwrap_or(Location::UNKNOWN);
        match std::fs::read_to_string(&path) {
            Ok(s) => Some(s.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) => {
                self.err(
                    &loc,
                    scope,
                    format!("{field}: cannot read `{}`: {e}", path.display()),
                );
                None
            }
        }
    }

    /// A path relative to the config file's directory (absolute paths unchanged).
    pub fn resolve(&self, s: &str) -> PathBuf {
        let p = Path::new(s);
        if p.is_absolute() || self.base_dir == Path::new(".") {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}
