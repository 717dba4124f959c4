//! ACL file in Mosquitto's format.
//!
//! ```text
//! # lines before any `user` line apply to anonymous clients
//! topic read public/#
//! user alice
//! topic readwrite alice/#
//! topic deny alice/secret
//! pattern readwrite devices/%c/#      # every client, %u = username, %c = client id
//! ```
//!
//! Access is `read`, `write`, `readwrite` (the default when omitted) or `deny`.
//! With an ACL file loaded, anything not granted is denied; a matching `deny`
//! wins over grants. A subscription is allowed when a `read` rule's filter
//! covers the whole subscription filter (as Mosquitto 2.0 checks it), and
//! the router checks read access again per delivered topic; a publish is
//! allowed when a `write` rule's filter matches the topic. Patterns are not
//! applied for a client whose username (`%u`) or client id (`%c`) contains
//! `+`, `#` or `/`, so nobody can widen a pattern by choosing their id.

use std::collections::HashMap;
use std::path::Path;

/// Errors reading an ACL file.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The file could not be read.
    #[error("cannot read ACL file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// A line could not be parsed.
    #[error("ACL file {path}, line {line}: {reason}")]
    Format {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn allows(self, op: Op) -> bool {
        matches!(
            (self, op),
            (Access::Read, Op::Read)
                | (Access::Write, Op::Write)
                | (Access::ReadWrite, Op::Read | Op::Write)
        )
    }
}

/// The operation being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Subscribe (the argument is a filter).
    Read,
    /// Publish (the argument is a topic name).
    Write,
}

#[derive(Debug, Clone)]
struct Rule {
    access: Access,
    filter: String,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl Acl {
    /// Reads and parses an ACL file.
    pub fn load(path: &Path) -> Result<Self, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, reason)| AclError::Format {
            path: path.display().to_string(),
            line,
            reason,
        })
    }

    /// Parses the file's text; on error returns (line number, reason).
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut acl = Acl::default();
        let mut current_user: Option<String> = None;
        for (idx, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err((idx + 1, "`user` needs a name".into()));
                    }
                    current_user = Some(rest.to_string());
                    acl.users.entry(rest.to_string()).or_default();
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(|r| (idx + 1, r))?;
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else if let Some(user) = &current_user {
                        acl.users.entry(user.clone()).or_default().push(rule);
                    } else {
                        acl.anonymous.push(rule);
                    }
                }
                other => return Err((idx + 1, format!("unknown keyword `{other}`"))),
            }
        }
        Ok(acl)
    }

    /// Whether `username`/`client_id` may do `op` on `topic_or_filter`.
    pub fn check(&self, username: Option<&str>, client_id: &str, op: Op, target: &str) -> bool {
        let own: &[Rule] = match username {
            None => &self.anonymous,
            Some(u) => self.users.get(u).map(Vec::as_slice).unwrap_or(&[]),
        };
        let mut granted = false;
        for rule in own {
            if covers(&rule.filter, target) {
                if rule.access == Access::Deny {
                    return false;
                }
                granted |= rule.access.allows(op);
            }
        }
        let safe = |s: &str| !s.contains(['+', '#', '/']);
        for rule in &self.patterns {
            if rule.filter.contains("%u") && !username.is_some_and(safe) {
                continue;
            }
            if rule.filter.contains("%c") && !safe(client_id) {
                continue;
            }
            let filter = rule
                .filter
                .replace("%u", username.unwrap_or(""))
                .replace("%c", client_id);
            if covers(&filter, target) {
                if rule.access == Access::Deny {
                    return false;
                }
                granted |= rule.access.allows(op);
            }
        }
        granted
    }
}

fn parse_rule(rest: &str) -> Result<Rule, String> {
    let (first, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (access, filter) = match first {
        "read" => (Access::Read, tail.trim()),
        "write" => (Access::Write, tail.trim()),
        "readwrite" => (Access::ReadWrite, tail.trim()),
        "deny" => (Access::Deny, tail.trim()),
        _ => (Access::ReadWrite, rest),
    };
    if filter.is_empty() {
        return Err("missing topic filter".into());
    }
    Ok(Rule {
        access,
        filter: filter.to_string(),
    })
}

/// Whether ACL filter `acl` covers everything `target` can match. `target` is a
/// topic name (publish) or a subscription filter (subscribe). As in topic
/// matching, a leading wildcard in `acl` does not cover a `$` target.
pub fn covers(acl: &str, target: &str) -> bool {
    if target.starts_with('$') && (acl.starts_with('+') || acl.starts_with('#')) {
        return false;
    }
    let mut a = acl.split('/');
    let mut t = target.split('/');
    loop {
        match (a.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(x), Some(y)) if x == y && y != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# anonymous
topic read public/#
user alice
topic alice/#
topic deny alice/secret
topic write sensors/+/temp
user bob
pattern read devices/%c/#
pattern write users/%u/out
";

    #[test]
    fn users_anonymous_and_patterns() {
        let acl = Acl::parse(FILE).unwrap();
        assert!(acl.check(None, "c", Op::Read, "public/x"));
        assert!(!acl.check(None, "c", Op::Write, "public/x"));
        assert!(!acl.check(None, "c", Op::Read, "alice/x"));
        assert!(acl.check(Some("alice"), "c", Op::Write, "alice/x"));
        assert!(acl.check(Some("alice"), "c", Op::Read, "alice/+/y"));
        assert!(!acl.check(Some("alice"), "c", Op::Read, "alice/secret"));
        assert!(acl.check(Some("alice"), "c", Op::Write, "sensors/a/temp"));
        assert!(!acl.check(Some("alice"), "c", Op::Read, "sensors/a/temp"));
        assert!(!acl.check(Some("alice"), "c", Op::Read, "public/x"));
        assert!(acl.check(Some("bob"), "dev1", Op::Read, "devices/dev1/state"));
        assert!(!acl.check(Some("bob"), "dev1", Op::Read, "devices/dev2/state"));
        assert!(acl.check(Some("bob"), "dev1", Op::Write, "users/bob/out"));
        assert!(!acl.check(None, "dev1", Op::Write, "users//out"));
        assert!(!acl.check(Some("bob"), "+", Op::Read, "devices/x/state"));
        assert!(!acl.check(Some("mallory"), "c", Op::Read, "public/x"));
    }

    #[test]
    fn coverage_of_filters() {
        assert!(covers("a/#", "a/b/c"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/+/c", "a/+/c"));
        assert!(!covers("a/b/c", "a/+/c"));
        assert!(!covers("a/+", "a/#"));
        assert!(covers("#", "x/#"));
        assert!(!covers("#", "$SYS/x"));
        assert!(!covers("+/x", "$SYS/x"));
        assert!(covers("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn bad_lines() {
        assert_eq!(Acl::parse("user\n").unwrap_err().0, 1);
        assert_eq!(Acl::parse("\nfoo bar\n").unwrap_err().0, 2);
        assert!(Acl::parse("topic read\n").is_err());
    }
}
