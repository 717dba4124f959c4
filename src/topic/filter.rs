//! Topic-name and filter validation (MQTT 3.1.1 and 5.0, §4.7), plus the
//! reference matcher [`matches()`] and [`captures`].
//!
//! Rules implemented here:
//! - a level is the text between `/` separators; empty levels are levels
//!   (`a//b` has three levels, `/a` and `a/` have two);
//! - `+` matches exactly one level (which may be empty);
//! - `#` matches the remaining levels *including the parent level*, so `a/#`
//!   matches `a`, `a/`, `a/b` and `a/b/c`;
//! - a filter whose first character is `+` or `#` does not match a topic that
//!   starts with `$` (`$SYS/...`); a filter starting with a literal `$` level does.

use thiserror::Error;

/// Maximum length of a topic name or filter in bytes (UTF-8), per the spec.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Level text kept in an error message is cut to this many characters.
const MAX_LEVEL_TEXT: usize = 40;

/// Why a topic name or topic filter is invalid. Level numbers are 1-based.
///
/// Messages are verb phrases whose subject is the topic or filter, so they
/// read well after it: ``format!("filter `{f}` {e}")`` gives
/// "filter `a/#/b` has '#' in level 2 followed by more levels; …".
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    /// Zero-length topic name or filter.
    #[error("is empty")]
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("is {len} bytes long; the maximum is 65535 bytes")]
    TooLong {
        /// Actual length in bytes.
        len: usize,
    },
    /// Contains U+0000.
    #[error("contains a NUL character (U+0000) in level {level}")]
    Nul {
        /// Level holding the NUL.
        level: usize,
    },
    /// A topic name (not a filter) contains `+` or `#`.
    #[error(
        "contains the wildcard '{wildcard}' in level {level} ({text:?}); topic names cannot contain wildcards"
    )]
    WildcardInTopicName {
        /// Level holding the wildcard.
        level: usize,
        /// The wildcard character.
        wildcard: char,
        /// The level's text (shortened).
        text: String,
    },
    /// `#` is a whole level but more levels follow it.
    #[error("has '#' in level {level} followed by more levels; '#' must be the last level")]
    HashNotLast {
        /// Level holding the `#`.
        level: usize,
    },
    /// A wildcard shares its level with other characters (`a#`, `+b`).
    #[error(
        "mixes '{wildcard}' with other characters in level {level} ({text:?}); a wildcard must be a whole level"
    )]
    WildcardNotWholeLevel {
        /// Level holding the wildcard.
        level: usize,
        /// The wildcard character.
        wildcard: char,
        /// The level's text (shortened).
        text: String,
    },
}

fn short(text: &str) -> String {
    match text.char_indices().nth(MAX_LEVEL_TEXT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { len: s.len() });
    }
    Ok(())
}

/// Number of levels of a topic name or filter (`a/b` has 2, `/` has 2, `a` has 1).
pub fn level_count(topic: &str) -> usize {
    topic.bytes().filter(|&b| b == b'/').count() + 1
}

/// Checks a topic name (what a PUBLISH carries): non-empty, at most 65,535
/// bytes, no `+`, `#` or NUL.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    // Runs on every PUBLISH in and out: one pass over the bytes (the three
    // ASCII bytes never occur inside a multi-byte UTF-8 character); the
    // levels are walked only to describe a problem.
    if !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && !topic.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
    {
        return Ok(());
    }
    check_common(topic)?;
    for (i, level) in topic.split('/').enumerate() {
        let level_no = i + 1;
        if level.contains('\0') {
            return Err(TopicError::Nul { level: level_no });
        }
        if let Some(wildcard) = level.chars().find(|c| *c == '+' || *c == '#') {
            return Err(TopicError::WildcardInTopicName {
                level: level_no,
                wildcard,
                text: short(level),
            });
        }
    }
    Ok(())
}

/// Checks a topic filter (what a SUBSCRIBE carries): non-empty, at most
/// 65,535 bytes, no NUL, `+` only as a whole level, `#` only as the whole last
/// level.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let mut levels = filter.split('/').enumerate().peekable();
    while let Some((i, level)) = levels.next() {
        let level_no = i + 1;
        if level.contains('\0') {
            return Err(TopicError::Nul { level: level_no });
        }
        match level {
            "+" => {}
            "#" if levels.peek().is_some() => {
                return Err(TopicError::HashNotLast { level: level_no });
            }
            "#" => {}
            _ => {
                if let Some(wildcard) = level.chars().find(|c| *c == '+' || *c == '#') {
                    return Err(TopicError::WildcardNotWholeLevel {
                        level: level_no,
                        wildcard,
                        text: short(level),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Outcome of walking a filter against a topic.
enum Walk<'t> {
    /// The filter does not match.
    NoMatch,
    /// Matched without `#`.
    Exact,
    /// Matched through a trailing `#`; `rest` is the topic text after the
    /// levels before `#` (`None`: the topic ended there, the parent-level case).
    Hash { rest: Option<&'t str> },
}

/// Splits the first level off `rest`: `(level, remainder)`; remainder `None`
/// when this was the last level.
pub(crate) fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, next)) => (level, Some(next)),
        None => (rest, None),
    }
}

/// True when the `$` rule forbids `filter` from matching `topic`.
pub(crate) fn dollar_excluded(filter: &str, topic: &str) -> bool {
    topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#'))
}

fn walk<'t>(filter: &str, topic: &'t str, mut on_plus: impl FnMut(&'t str)) -> Walk<'t> {
    if dollar_excluded(filter, topic) {
        return Walk::NoMatch;
    }
    let mut rest = Some(topic);
    for f in filter.split('/') {
        if f == "#" {
            return Walk::Hash { rest };
        }
        let Some(r) = rest else {
            return Walk::NoMatch;
        };
        let (level, next) = split_level(r);
        if f == "+" {
            on_plus(level);
        } else if f != level {
            return Walk::NoMatch;
        }
        rest = next;
    }
    if rest.is_none() {
        Walk::Exact
    } else {
        Walk::NoMatch
    }
}

/// True when `topic` matches `filter`. Both should be valid (see
/// [`validate_filter`], [`validate_topic_name`]); for invalid input the result
/// is unspecified but this never panics.
pub fn matches(filter: &str, topic: &str) -> bool {
    !matches!(walk(filter, topic, |_| {}), Walk::NoMatch)
}

/// The text a filter's wildcards matched in a topic (see [`captures`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captures<'t> {
    plus: Vec<&'t str>,
    hash: Option<&'t str>,
    hash_parent: bool,
}

impl<'t> Captures<'t> {
    /// The level matched by the `n`-th `+` of the filter, 1-based (`{1}`).
    pub fn plus(&self, n: usize) -> Option<&'t str> {
        n.checked_sub(1).and_then(|i| self.plus.get(i).copied())
    }

    /// All `+` captures in filter order.
    pub fn plus_all(&self) -> &[&'t str] {
        &self.plus
    }

    /// The text matched by a trailing `#` (`{#}`): the remaining levels joined
    /// by `/`, *without* the slash that separates them from the levels before
    /// `#`. `None` if the filter has no `#`; `Some("")` when `#` matched the
    /// parent level (`a/#` on `a`) or a single empty level (`a/#` on `a/`).
    pub fn hash(&self) -> Option<&'t str> {
        self.hash
    }

    /// True when `#` matched zero levels, i.e. the parent level (`a/#` on `a`).
    /// Tells `a` (true) from `a/` (false), whose `{#}` are both empty.
    pub fn hash_matched_parent(&self) -> bool {
        self.hash_parent
    }
}

/// Like [`matches()`], but returns what each wildcard matched.
///
/// `captures("site/+/sensor/#", "site/7/sensor/a/b")` gives `{1} = "7"` and
/// `{#} = "a/b"`; `captures("a/#", "a")` gives `{#} = ""` with
/// [`Captures::hash_matched_parent`] true.
pub fn captures<'t>(filter: &str, topic: &'t str) -> Option<Captures<'t>> {
    let mut plus = Vec::new();
    match walk(filter, topic, |level| plus.push(level)) {
        Walk::NoMatch => None,
        Walk::Exact => Some(Captures {
            plus,
            hash: None,
            hash_parent: false,
        }),
        Walk::Hash { rest } => Some(Captures {
            plus,
            hash: Some(rest.unwrap_or("")),
            hash_parent: rest.is_none(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_valid() {
        for t in [
            "a", "a/b", "/", "//", "a//b", "/a", "a/", "$SYS/x", "é/ü", " ",
        ] {
            assert_eq!(validate_topic_name(t), Ok(()), "{t:?}");
        }
    }

    #[test]
    fn topic_names_invalid() {
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert!(matches!(
            validate_topic_name("a/+/b"),
            Err(TopicError::WildcardInTopicName {
                level: 2,
                wildcard: '+',
                ..
            })
        ));
        assert!(matches!(
            validate_topic_name("a/b#"),
            Err(TopicError::WildcardInTopicName {
                level: 2,
                wildcard: '#',
                ..
            })
        ));
        assert_eq!(
            validate_topic_name("a\0"),
            Err(TopicError::Nul { level: 1 })
        );
        assert_eq!(
            validate_topic_name("a/b/\0"),
            Err(TopicError::Nul { level: 3 })
        );
    }

    #[test]
    fn length_limit_is_in_bytes() {
        let max = "a".repeat(MAX_TOPIC_LEN);
        assert_eq!(validate_topic_name(&max), Ok(()));
        assert_eq!(validate_filter(&max), Ok(()));
        let over = "a".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(
            validate_topic_name(&over),
            Err(TopicError::TooLong { len: 65_536 })
        );
        assert_eq!(
            validate_filter(&over),
            Err(TopicError::TooLong { len: 65_536 })
        );
        // 'é' is 2 bytes: 32,768 of them are 65,536 bytes.
        let multibyte = "é".repeat(32_768);
        assert_eq!(
            validate_topic_name(&multibyte),
            Err(TopicError::TooLong { len: 65_536 })
        );
    }

    #[test]
    fn filters_valid() {
        for f in [
            "#", "+", "+/+", "a/#", "a/+/b", "/#", "+/#", "/", "a//b", "$SYS/#", "a/", "//#",
        ] {
            assert_eq!(validate_filter(f), Ok(()), "{f:?}");
        }
    }

    #[test]
    fn filters_invalid() {
        assert_eq!(validate_filter(""), Err(TopicError::Empty));
        assert_eq!(
            validate_filter("a/#/b"),
            Err(TopicError::HashNotLast { level: 2 })
        );
        assert_eq!(
            validate_filter("#/"),
            Err(TopicError::HashNotLast { level: 1 })
        );
        assert!(matches!(
            validate_filter("a/b#"),
            Err(TopicError::WildcardNotWholeLevel {
                level: 2,
                wildcard: '#',
                ..
            })
        ));
        assert!(matches!(
            validate_filter("a+/b"),
            Err(TopicError::WildcardNotWholeLevel {
                level: 1,
                wildcard: '+',
                ..
            })
        ));
        assert!(matches!(
            validate_filter("a/++"),
            Err(TopicError::WildcardNotWholeLevel {
                level: 2,
                wildcard: '+',
                ..
            })
        ));
        assert_eq!(validate_filter("a/\0/#"), Err(TopicError::Nul { level: 2 }));
    }

    #[test]
    fn error_messages_name_level_and_rule() {
        let e = validate_filter("a/b/#/c").unwrap_err().to_string();
        assert!(e.contains("level 3") && e.contains("last level"), "{e}");
        let e = validate_filter("x/sen+sor").unwrap_err().to_string();
        assert!(e.contains("level 2") && e.contains("\"sen+sor\""), "{e}");
        let e = validate_topic_name("a/#").unwrap_err().to_string();
        assert!(e.starts_with("contains the wildcard '#' in level 2"), "{e}");
        let long = format!("{}+", "x".repeat(500));
        let e = validate_filter(&long).unwrap_err().to_string();
        assert!(e.len() < 200, "level text is shortened: {e}");
    }

    #[test]
    fn exact_and_plus() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/c"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/+", "a/"));
        assert!(!matches("a/+", "a"));
        assert!(!matches("+", "a/b"));
        assert!(matches("+/+", "/a"));
        assert!(!matches("+", "/a"));
        assert!(matches("/+", "/a"));
    }

    #[test]
    fn hash_matches_parent_and_children() {
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/"));
        assert!(matches("a/#", "a/b/c"));
        assert!(!matches("a/#", "ab"));
        assert!(!matches("a/#", "b/a"));
        assert!(matches("#", "a/b"));
        assert!(matches("#", "/"));
        assert!(matches("+/#", "a"));
        assert!(matches("a/+/#", "a/b"));
        assert!(!matches("a/+/#", "a"));
    }

    #[test]
    fn empty_levels_are_levels() {
        assert!(matches("a//b", "a//b"));
        assert!(!matches("a/b", "a//b"));
        assert!(matches("a/+/b", "a//b"));
        assert!(matches("/a", "/a"));
        assert!(!matches("a", "/a"));
        assert!(matches("a/", "a/"));
        assert!(!matches("a", "a/"));
        assert!(matches("/", "/"));
        assert!(matches("+/+", "/"));
    }

    #[test]
    fn dollar_topics() {
        assert!(!matches("#", "$SYS/broker"));
        assert!(!matches("+/broker", "$SYS/broker"));
        assert!(!matches("+", "$"));
        assert!(matches("$SYS/#", "$SYS/broker"));
        assert!(matches("$SYS/+", "$SYS/broker"));
        assert!(matches("$SYS/broker", "$SYS/broker"));
        // Only the first character of the topic counts.
        assert!(matches("#", "a/$SYS"));
        assert!(matches("a/+", "a/$x"));
    }

    #[test]
    fn captures_plus_and_hash() {
        let c = captures("site/+/sensor/#", "site/7/sensor/a/b").unwrap();
        assert_eq!(c.plus(1), Some("7"));
        assert_eq!(c.plus(0), None);
        assert_eq!(c.plus(2), None);
        assert_eq!(c.hash(), Some("a/b"));
        assert!(!c.hash_matched_parent());

        let c = captures("+/+/x", "a//x").unwrap();
        assert_eq!(c.plus_all(), &["a", ""]);
        assert_eq!(c.hash(), None);

        let c = captures("a/#", "a").unwrap();
        assert_eq!(c.hash(), Some(""));
        assert!(c.hash_matched_parent());

        let c = captures("a/#", "a/").unwrap();
        assert_eq!(c.hash(), Some(""));
        assert!(!c.hash_matched_parent());

        let c = captures("#", "/x/").unwrap();
        assert_eq!(c.hash(), Some("/x/"));

        assert_eq!(captures("a/+", "b/c"), None);
        assert_eq!(captures("#", "$SYS/x"), None);
    }

    #[test]
    fn invalid_input_does_not_panic() {
        for (f, t) in [("", ""), ("#/a", "x"), ("a/#/b", "a"), ("", "a"), ("a", "")] {
            let _ = matches(f, t);
            let _ = captures(f, t);
        }
    }
}
