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

use std::borrow::Cow;
use std::fmt;

use regex::Regex;
use thiserror::Error;

use super::filter::{TopicError, captures, matches, validate_filter, validate_topic_name};

/// Errors in building a remap rule, or a rule producing an invalid topic.
#[derive(Debug, Clone, Error)]
pub enum RemapError {
    /// A template rule's filter is not a valid topic filter.
    #[error("template filter {filter:?} {source}")]
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
        _ => format!("the invalid topic {:?}, which {reason}", shorten(topic)),
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
        Some("its literal text has a wildcard ('+' or '#'), which a topic name cannot hold")
    } else if lit.contains('\0') {
        Some("its literal text has a NUL character")
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
            RemapRule::Prefix { strip, add } => match (strip, add) {
                (Some(s), Some(a)) => write!(f, "prefix strip {s:?} add {a:?}"),
                (Some(s), None) => write!(f, "prefix strip {s:?}"),
                (None, Some(a)) => write!(f, "prefix add {a:?}"),
                (None, None) => write!(f, "prefix (no change)"),
            },
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
    /// unchanged: borrowed, so a topic no rule touches is never copied.
    /// Errors when that rule produced an invalid topic name.
    pub fn apply<'t>(&self, topic: &'t str) -> Result<Cow<'t, str>, RemapError> {
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
                Ok(()) => Ok(Cow::Owned(out)),
                Err(reason) => Err(RemapError::InvalidOutput {
                    index,
                    kind,
                    topic: out,
                    reason,
                }),
            };
        }
        Ok(Cow::Borrowed(topic))
    }

    /// Index of the rule that would rewrite `topic`, if any.
    pub fn rule_for(&self, topic: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.applies_to(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(rule: RemapRule) -> Remap {
        Remap::new(vec![rule])
    }

    #[test]
    fn prefix_strip_and_add() {
        let r = one(RemapRule::prefix(Some("local/"), Some("remote/")));
        assert_eq!(r.apply("local/a/b").unwrap(), "remote/a/b");
        assert_eq!(r.apply("other/a").unwrap(), "other/a");
        assert_eq!(r.apply("local").unwrap(), "local", "plain string prefix");

        let add_only = one(RemapRule::prefix(None, Some("edge/")));
        assert_eq!(add_only.apply("a").unwrap(), "edge/a");
        assert!(RemapRule::prefix(None, Some("x")).applies_to("anything"));

        let strip_only = one(RemapRule::prefix(Some("edge/"), None));
        assert_eq!(strip_only.apply("edge/a").unwrap(), "a");
        let e = strip_only.apply("edge/").unwrap_err();
        assert_eq!(e.to_string(), "rule 0 (prefix) produced an empty topic");
    }

    #[test]
    fn prefix_producing_wildcard_is_an_error() {
        let r = one(RemapRule::prefix(None, Some("a/#/")));
        let e = r.apply("x").unwrap_err();
        assert!(matches!(
            e,
            RemapError::InvalidOutput {
                index: 0,
                kind: "prefix",
                ..
            }
        ));
        assert!(e.to_string().contains("\"a/#/x\""), "{e}");
    }

    #[test]
    fn template_captures() {
        let r = one(RemapRule::template("site/+/sensor/#", "cloud/{1}/data/{#}").unwrap());
        assert_eq!(r.apply("site/7/sensor/t/1").unwrap(), "cloud/7/data/t/1");
        assert_eq!(r.apply("site/7/sensor").unwrap(), "cloud/7/data");
        assert_eq!(r.apply("site/7/sensor/").unwrap(), "cloud/7/data/");
        assert_eq!(r.apply("site/7/other").unwrap(), "site/7/other");

        let r = one(RemapRule::template("+/+/x", "{2}-{1}/y").unwrap());
        assert_eq!(r.apply("a/b/x").unwrap(), "b-a/y");
        assert_eq!(r.apply("/b/x").unwrap(), "b-/y", "empty + capture");
    }

    #[test]
    fn template_hash_slash_rule() {
        let r = one(RemapRule::template("a/#", "cloud/{#}/end").unwrap());
        assert_eq!(r.apply("a").unwrap(), "cloud/end");
        assert_eq!(r.apply("a/b/c").unwrap(), "cloud/b/c/end");
        let r = one(RemapRule::template("a/#", "x{#}").unwrap());
        assert_eq!(r.apply("a").unwrap(), "x", "no slash to drop");
        let r = one(RemapRule::template("#", "up/{#}").unwrap());
        assert_eq!(r.apply("/a").unwrap(), "up//a", "empty first level kept");
    }

    #[test]
    fn template_can_produce_empty_topic() {
        let r = Remap::new(vec![
            RemapRule::prefix(Some("zzz"), None),
            RemapRule::template("a/#", "{#}").unwrap(),
        ]);
        assert_eq!(r.apply("a/b").unwrap(), "b");
        let e = r.apply("a").unwrap_err();
        assert_eq!(e.to_string(), "rule 1 (template) produced an empty topic");
        let r = one(RemapRule::template("+/x", "{1}").unwrap());
        assert!(r.apply("/x").is_err());
    }

    #[test]
    fn template_build_errors() {
        let e = RemapRule::template("a/+", "b/{2}").unwrap_err().to_string();
        assert!(e.contains("{2}") && e.contains("only 1 '+'"), "{e}");
        let e = RemapRule::template("a/+", "b/{#}").unwrap_err().to_string();
        assert!(e.contains("does not end with '#'"), "{e}");
        let e = RemapRule::template("a/#/b", "x").unwrap_err().to_string();
        assert!(e.contains("last level"), "{e}");
        for bad in ["b/{0}", "b/{x}", "b/{1", "b/+", "b/#", "", "b/{}", "b/{+1}"] {
            assert!(
                matches!(
                    RemapRule::template("a/+/#", bad),
                    Err(RemapError::InvalidTemplate { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hand_built_broken_template_is_an_error_not_a_panic() {
        let r = one(RemapRule::Template {
            filter: "a/+".into(),
            template: "{3}/{#}".into(),
        });
        let e = r.apply("a/b").unwrap_err();
        assert!(matches!(
            e,
            RemapError::BrokenRule {
                index: 0,
                kind: "template",
                ..
            }
        ));
    }

    #[test]
    fn regex_rules() {
        let r = one(RemapRule::regex(r"site/(\w+)/(?<rest>.*)", "cloud/$1/${rest}").unwrap());
        assert_eq!(r.apply("site/abc/t/1").unwrap(), "cloud/abc/t/1");
        assert_eq!(r.apply("x/site/abc/t").unwrap(), "x/site/abc/t", "anchored");
        let r = one(RemapRule::regex("a|b", "c").unwrap());
        assert_eq!(r.apply("b").unwrap(), "c");
        assert_eq!(r.apply("ab").unwrap(), "ab", "anchoring wraps alternations");
        let r = one(RemapRule::regex("a/(.*)", "$$/${1}x").unwrap());
        assert_eq!(r.apply("a/q").unwrap(), "$/qx");
        let r = one(RemapRule::regex("a/(.*)", "$1").unwrap());
        let e = r.apply("a/").unwrap_err();
        assert_eq!(e.to_string(), "rule 0 (regex) produced an empty topic");
    }

    #[test]
    fn regex_build_errors() {
        assert!(matches!(
            RemapRule::regex("a(", "x"),
            Err(RemapError::InvalidRegex { .. })
        ));
        let e = RemapRule::regex("a/(.*)", "b/$2").unwrap_err().to_string();
        assert!(e.contains("\"2\""), "{e}");
        let e = RemapRule::regex("a/(.*)", "b/$1x").unwrap_err().to_string();
        assert!(e.contains("\"1x\""), "{e}");
        assert!(RemapRule::regex("a/(?<n>.*)", "b/$n").is_ok());
        assert!(RemapRule::regex("a/(?<n>.*)", "b/$m").is_err());
        assert!(RemapRule::regex("a/(.*)", "b/#").is_err());
    }

    #[test]
    fn first_applying_rule_wins() {
        let r = Remap::new(vec![
            RemapRule::prefix(Some("a/"), Some("first/")),
            RemapRule::template("a/+", "second/{1}").unwrap(),
        ]);
        assert_eq!(r.apply("a/b").unwrap(), "first/b");
        assert_eq!(r.rule_for("a/b"), Some(0));
        assert_eq!(r.rule_for("b"), None);
        assert_eq!(Remap::default().apply("x/y").unwrap(), "x/y");
    }

    #[test]
    fn a_remap_that_does_not_apply_borrows_the_topic() {
        let r = Remap::new(vec![
            RemapRule::prefix(Some("a/"), Some("b/")),
            RemapRule::template("x/+", "y/{1}").unwrap(),
            RemapRule::regex("r/(.*)", "s/$1").unwrap(),
        ]);
        for topic in ["other/1", "x/1/2", "q"] {
            assert!(
                matches!(r.apply(topic), Ok(Cow::Borrowed(t)) if t == topic),
                "{topic}"
            );
        }
        assert!(matches!(
            Remap::default().apply("t"),
            Ok(Cow::Borrowed("t"))
        ));
        assert!(matches!(r.apply("a/1"), Ok(Cow::Owned(t)) if t == "b/1"));
    }

    #[test]
    fn applies_to_matches_rewrite() {
        let t = RemapRule::template("a/+", "b/{1}").unwrap();
        assert!(t.applies_to("a/x") && !t.applies_to("a/x/y"));
        let re = RemapRule::regex("a/.*", "b").unwrap();
        assert!(re.applies_to("a/x") && !re.applies_to("xa/x"));
        let p = RemapRule::prefix(Some("a/"), None);
        assert!(p.applies_to("a/x") && !p.applies_to("b/a/x"));
    }

    #[test]
    fn error_messages_read_well() {
        let msg = |r: Result<RemapRule, RemapError>| r.unwrap_err().to_string();
        assert_eq!(
            msg(RemapRule::template("a/#/b", "x")),
            "template filter \"a/#/b\" has '#' in level 2 followed by more levels; \
             '#' must be the last level"
        );
        assert_eq!(
            msg(RemapRule::template("site/+/#", "cloud/{2}")),
            "template \"cloud/{2}\" is invalid: it uses {2} but filter \"site/+/#\" has only 1 '+' wildcard(s)"
        );
        assert_eq!(
            msg(RemapRule::template("a/+", "b/{x}")),
            "template \"b/{x}\" is invalid: unknown placeholder {x}; use {1}, {2}, … for '+' and {#} for '#'"
        );
        assert_eq!(
            msg(RemapRule::regex("a/(.*)", "b/$2")),
            "replacement \"b/$2\" is invalid: it refers to group \"2\", which the regex does not have \
             (write ${1}x rather than $1x)"
        );
        let e = Remap::new(vec![RemapRule::prefix(None, Some("a/+/"))])
            .apply("x")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "rule 0 (prefix) produced the invalid topic \"a/+/x\", which contains the wildcard '+' \
             in level 2 (\"+\"); topic names cannot contain wildcards"
        );
        let big = "x".repeat(65_535);
        let e = Remap::new(vec![RemapRule::prefix(None, Some("a/"))])
            .apply(&big)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "rule 0 (prefix) produced a topic of 65537 bytes; the maximum is 65535"
        );
    }

    #[test]
    fn describe_is_short_and_readable() {
        assert_eq!(
            RemapRule::prefix(Some("l/"), Some("r/")).describe(),
            "prefix strip \"l/\" add \"r/\""
        );
        assert_eq!(
            RemapRule::template("site/+/#", "cloud/{1}/{#}")
                .unwrap()
                .describe(),
            "template site/+/# -> cloud/{1}/{#}"
        );
        assert_eq!(
            RemapRule::regex("a/(.*)", "b/$1").unwrap().describe(),
            "regex a/(.*) -> b/$1"
        );
        assert_eq!(RemapRule::prefix(None, None).kind(), "prefix");
    }
}
