//! Topic remapping rules, as pure functions.
//!
//! A [`Remap`] is an ordered list of [`RemapRule`]s: the first rule that
//! applies to a topic rewrites it; when none applies the topic is unchanged.
//! A rewritten topic must be a valid topic name, otherwise [`Remap::apply`]
//! returns a [`RemapError`] naming the rule (0-based index and kind) and why.
//!
//! Templates (`filter: site/+/sensor/#`, `template: cloud/{1}/data/{#}`):
//! `{n}` is the level matched by the n-th `+` (1-based), `{#}` the text matched
//! by the trailing `#` (see [`super::Captures::hash`]: the remaining levels,
//! without the separating slash). When `#` matched zero levels (`a/#` on
//! topic `a`), `{#}` is empty and a `/` directly before `{#}` in the template
//! is dropped, so `cloud/{#}` gives `cloud`, not `cloud/`. When `#` matched one
//! empty level (topic `a/`), the slash is kept (`cloud/`): the empty level
//! was in the source topic, so it is kept in the result.

use std::fmt;

use regex::Regex;
use thiserror::Error;

use super::filter::{TopicError, captures, matches, validate_filter, validate_topic_name};

/// Errors in building a remap rule, or a rule producing an invalid topic.
#[derive(Debug, Clone, Error)]
pub enum RemapError {
    /// A template rule's filter is not a valid topic filter.
    #[error("template filter {filter:?} is invalid: it {source}")]
    InvalidFilter {
        /// The filter text.
        filter: String,
        /// Which rule it breaks.
        source: TopicError,
    },
    /// A template that cannot be used with its filter.
    #[error("template {template:?} is invalid: {reason}")]
    InvalidTemplate {
        /// The template text.
        template: String,
        /// What is wrong.
        reason: String,
    },
    /// A regex that does not compile.
    #[error("regex {pattern:?} does not compile: {source}")]
    InvalidRegex {
        /// The pattern as given.
        pattern: String,
        /// The regex crate's error.
        source: regex::Error,
    },
    /// A regex replacement that refers to a missing group or holds wildcards.
    #[error("replacement {replace:?} is invalid: {reason}")]
    InvalidReplacement {
        /// The replacement text.
        replace: String,
        /// What is wrong.
        reason: String,
    },
    /// A rule rewrote a topic into something that is not a valid topic name.
    #[error("rule {index} ({kind}) produced {}", produced(topic, reason))]
    InvalidOutput {
        /// 0-based index of the rule in [`Remap::rules`].
        index: usize,
        /// `prefix`, `template` or `regex`.
        kind: &'static str,
        /// The produced topic.
        topic: String,
        /// Why it is not a valid topic name.
        reason: TopicError,
    },
    /// A rule built without its constructor is broken (e.g. a template using
    /// a capture its filter lacks).
    #[error("rule {index} ({kind}) is broken: {reason}")]
    BrokenRule {
        /// 0-based index of the rule in [`Remap::rules`].
        index: usize,
        /// `prefix`, `template` or `regex`.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn produced(topic: &str, reason: &TopicError) -> String {
    match reason {
        TopicError::Empty => "an empty topic".to_owned(),
        TopicError::TooLong { len } => format!("a topic of {len} bytes; the maximum is 65535"),
        _ => format!("the invalid topic {:?}: it {reason}", shorten(topic)),
    }
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// One remapping rule. Build with [`RemapRule::prefix`],
/// [`RemapRule::template`] or [`RemapRule::regex`], which check what can be
/// checked up front.
#[derive(Debug, Clone)]
pub enum RemapRule {
    /// Mosquitto's local/remote prefix: applies only if the topic starts with
    /// `strip` (always, if `None`); removes `strip` and prepends `add`. Plain
    /// string prefixes, not level-aware: `strip: "a/"` does not apply to `a`.
    Prefix {
        /// Prefix the topic must start with; removed.
        strip: Option<String>,
        /// Prefix put in front of the rest.
        add: Option<String>,
    },
    /// Applies when the topic matches `filter`; the result is `template`
    /// with `{1}`..`{n}` and `{#}` replaced by the wildcard captures.
    Template {
        /// A valid topic filter.
        filter: String,
        /// Output with placeholders.
        template: String,
    },
    /// Applies when `regex` matches the whole topic; the result is `replace`
    /// with `$1`, `${1}`, `$name`, `${name}` expanded (`$$` is a `$`).
    Regex {
        /// The regex; [`RemapRule::regex`] anchors it as `^(?:pattern)$`.
        regex: Regex,
        /// Replacement with group references.
        replace: String,
    },
}

/// A piece of a parsed template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    Lit(&'a str),
    Plus(usize),
    Hash,
}

fn parse_template(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Lit(&rest[..open]));
        }
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err("'{' without a closing '}'".to_owned());
        };
        let name = &after[..close];
        let piece = if name == "#" {
            Piece::Hash
        } else {
            match name.parse::<usize>() {
                Ok(n) if n >= 1 && name.bytes().all(|b| b.is_ascii_digit()) => Piece::Plus(n),
                _ => {
                    return Err(format!(
                        "unknown placeholder {{{name}}}; use {{1}}, {{2}}, … for '+' and {{#}} for '#'"
                    ));
                }
            }
        };
        pieces.push(piece);
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Lit(rest));
    }
    Ok(pieces)
}

/// Reason a literal part of a template or replacement can never be in a topic.
fn literal_problem(lit: &str) -> Option<&'static str> {
    if lit.contains('+') || lit.contains('#') {
        Some("its literal text contains a wildcard ('+' or '#'), which a topic name cannot hold")
    } else if lit.contains('\0') {
        Some("its literal text contains a NUL character")
    } else {
        None
    }
}

/// Checks a template against its filter's wildcards.
fn check_template(filter: &str, template: &str) -> Result<(), String> {
    let pieces = parse_template(template)?;
    if pieces.is_empty() {
        return Err("it is empty".to_owned());
    }
    let plus_count = filter.split('/').filter(|l| *l == "+").count();
    let has_hash = filter == "#" || filter.ends_with("/#");
    for piece in pieces {
        match piece {
            Piece::Lit(lit) => {
                if let Some(problem) = literal_problem(lit) {
                    return Err(problem.to_owned());
                }
            }
            Piece::Plus(n) if n > plus_count => {
                return Err(format!(
                    "it uses {{{n}}} but filter {filter:?} has only {plus_count} '+' wildcard(s)"
                ));
            }
            Piece::Hash if !has_hash => {
                return Err(format!(
                    "it uses {{#}} but filter {filter:?} does not end with '#'"
                ));
            }
            Piece::Plus(_) | Piece::Hash => {}
        }
    }
    Ok(())
}

/// A piece of a parsed regex replacement.
enum RepPiece<'a> {
    Lit(&'a str),
    Group(&'a str),
}

/// Parses a replacement with the `regex` crate's syntax: `$$`, `${name}`,
/// `$name` (longest run of `[_0-9A-Za-z]`); a lone `$` is literal.
fn parse_replacement(replace: &str) -> Vec<RepPiece<'_>> {
    let mut pieces = Vec::new();
    let mut rest = replace;
    while let Some(dollar) = rest.find('$') {
        if dollar > 0 {
            pieces.push(RepPiece::Lit(&rest[..dollar]));
        }
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            pieces.push(RepPiece::Lit("$"));
            rest = tail;
        } else if let Some(close) = after.strip_prefix('{').and_then(|b| b.find('}')) {
            pieces.push(RepPiece::Group(&after[1..1 + close]));
            rest = &after[close + 2..];
        } else {
            let len = after
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            if len == 0 {
                pieces.push(RepPiece::Lit("$"));
            } else {
                pieces.push(RepPiece::Group(&after[..len]));
            }
            rest = &after[len..];
        }
    }
    if !rest.is_empty() {
        pieces.push(RepPiece::Lit(rest));
    }
    pieces
}

fn check_replacement(regex: &Regex, replace: &str) -> Result<(), String> {
    for piece in parse_replacement(replace) {
        match piece {
            RepPiece::Lit(lit) => {
                if let Some(problem) = literal_problem(lit) {
                    return Err(problem.to_owned());
                }
            }
            RepPiece::Group(name) => {
                let known = match name.parse::<usize>() {
                    Ok(i) => i < regex.captures_len(),
                    Err(_) => regex.capture_names().flatten().any(|n| n == name),
                };
                if !known {
                    return Err(format!(
                        "it refers to group {name:?}, which the regex does not have \
                         (write ${{1}}x rather than $1x)"
                    ));
                }
            }
        }
    }
    Ok(())
}

impl RemapRule {
    /// A prefix rule (Mosquitto's local/remote prefix); `None` means no prefix.
    pub fn prefix(strip: Option<&str>, add: Option<&str>) -> RemapRule {
        RemapRule::Prefix {
            strip: strip.map(str::to_owned),
            add: add.map(str::to_owned),
        }
    }

    /// A template rule. Errors when the filter is invalid, the template is
    /// malformed, uses a capture the filter lacks, or holds a wildcard or NUL.
    pub fn template(filter: &str, template: &str) -> Result<RemapRule, RemapError> {
        validate_filter(filter).map_err(|source| RemapError::InvalidFilter {
            filter: filter.to_owned(),
            source,
        })?;
        check_template(filter, template).map_err(|reason| RemapError::InvalidTemplate {
            template: template.to_owned(),
            reason,
        })?;
        Ok(RemapRule::Template {
            filter: filter.to_owned(),
            template: template.to_owned(),
        })
    }

    /// A regex rule: `pattern` must match the whole topic (it is anchored as
    /// `^(?:pattern)$`). Errors when the regex does not compile or `replace`
    /// refers to a group the regex lacks or holds a wildcard or NUL.
    pub fn regex(pattern: &str, replace: &str) -> Result<RemapRule, RemapError> {
        let regex =
            Regex::new(&format!("^(?:{pattern})$")).map_err(|source| RemapError::InvalidRegex {
                pattern: pattern.to_owned(),
                source,
            })?;
        check_replacement(&regex, replace).map_err(|reason| RemapError::InvalidReplacement {
            replace: replace.to_owned(),
            reason,
        })?;
        Ok(RemapRule::Regex {
            regex,
            replace: replace.to_owned(),
        })
    }

    /// `"prefix"`, `"template"` or `"regex"`.
    pub fn kind(&self) -> &'static str {
        match self {
            RemapRule::Prefix { .. } => "prefix",
            RemapRule::Template { .. } => "template",
            RemapRule::Regex { .. } => "regex",
        }
    }

    /// Short human form, e.g. `template site/+/# -> cloud/{1}/{#}`.
    pub fn describe(&self) -> String {
        self.to_string()
    }

    /// True when this rule would rewrite `topic`.
    pub fn applies_to(&self, topic: &str) -> bool {
        match self {
            RemapRule::Prefix { strip, .. } => {
                strip.as_deref().is_none_or(|s| topic.starts_with(s))
            }
            RemapRule::Template { filter, .. } => matches(filter, topic),
            RemapRule::Regex { regex, .. } => whole_match(regex, topic).is_some(),
        }
    }

    /// Rewrites `topic` if the rule applies (`Ok(None)` if not), without
    /// checking the output. `Err(reason)` only for a broken rule.
    fn rewrite(&self, topic: &str) -> Result<Option<String>, String> {
        match self {
            RemapRule::Prefix { strip, add } => {
                let rest = match strip {
                    Some(s) => match topic.strip_prefix(s.as_str()) {
                        Some(rest) => rest,
                        None => return Ok(None),
                    },
                    None => topic,
                };
                Ok(Some(format!("{}{rest}", add.as_deref().unwrap_or(""))))
            }
            RemapRule::Template { filter, template } => {
                let Some(caps) = captures(filter, topic) else {
                    return Ok(None);
                };
                render_template(template, &caps).map(Some)
            }
            RemapRule::Regex { regex, replace } => {
                let Some(caps) = whole_match(regex, topic) else {
                    return Ok(None);
                };
                let mut out = String::new();
                caps.expand(replace, &mut out);
                Ok(Some(out))
            }
        }
    }
}

/// Captures of `regex` when its match spans the whole topic.
fn whole_match<'t>(regex: &Regex, topic: &'t str) -> Option<regex::Captures<'t>> {
    regex.captures(topic).filter(|c| {
        c.get(0)
            .is_some_and(|m| m.start() == 0 && m.end() == topic.len())
    })
}

fn render_template(template: &str, caps: &super::Captures<'_>) -> Result<String, String> {
    let pieces = parse_template(template)?;
    let mut out = String::with_capacity(template.len() + 32);
    let mut prev_lit_slash = false;
    for piece in pieces {
        match piece {
            Piece::Lit(lit) => {
                out.push_str(lit);
                prev_lit_slash = lit.ends_with('/');
                continue;
            }
            Piece::Plus(n) => match caps.plus(n) {
                Some(level) => out.push_str(level),
                None => {
                    return Err(format!(
                        "template {template:?} uses {{{n}}}, which the filter lacks"
                    ));
                }
            },
            Piece::Hash => match caps.hash() {
                Some(_) if caps.hash_matched_parent() => {
                    if prev_lit_slash {
                        out.pop();
                    }
                }
                Some(text) => out.push_str(text),
                None => {
                    return Err(format!(
                        "template {template:?} uses {{#}}, which the filter lacks"
                    ));
                }
            },
        }
        prev_lit_slash = false;
    }
    Ok(out)
}

impl fmt::Display for RemapRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemapRule::Prefix { strip, add } => write!(
                f,
                "prefix strip {:?} add {:?}",
                strip.as_deref().unwrap_or(""),
                add.as_deref().unwrap_or("")
            ),
            RemapRule::Template { filter, template } => {
                write!(f, "template {filter} -> {template}")
            }
            RemapRule::Regex { regex, replace } => {
                let pattern = regex.as_str();
                let pattern = pattern
                    .strip_prefix("^(?:")
                    .and_then(|p| p.strip_suffix(")$"))
                    .unwrap_or(pattern);
                write!(f, "regex {pattern} -> {replace}")
            }
        }
    }
}

/// An ordered list of rules; the first rule that applies wins.
#[derive(Debug, Clone, Default)]
pub struct Remap {
    /// The rules, in order.
    pub rules: Vec<RemapRule>,
}

impl Remap {
    /// A remap from rules.
    pub fn new(rules: Vec<RemapRule>) -> Remap {
        Remap { rules }
    }

    /// Rewrites `topic` with the first rule that applies, or returns it
    /// unchanged. Errors when that rule produced an invalid topic name.
    pub fn apply(&self, topic: &str) -> Result<String, RemapError> {
        for (index, rule) in self.rules.iter().enumerate() {
            let kind = rule.kind();
            let out = match rule.rewrite(topic) {
                Ok(Some(out)) => out,
                Ok(None) => continue,
                Err(reason) => {
                    return Err(RemapError::BrokenRule {
                        index,
                        kind,
                        reason,
                    });
                }
            };
            return match validate_topic_name(&out) {
                Ok(()) => Ok(out),
                Err(reason) => Err(RemapError::InvalidOutput {
                    index,
                    kind,
                    topic: out,
                    reason,
                }),
            };
        }
        Ok(topic.to_owned())
    }

    /// Index of the rule that would rewrite `topic`, if any.
    pub fn rule_for(&self, topic: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.applies_to(topic))
    }
}
