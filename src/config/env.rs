//! `${VAR}` / `${VAR:-default}` substitution in config strings; `$$` is a literal `$`.
//!
//! A `$` that does not start `${` or `$$` stays as it is, so `$SYS/#` needs no escaping.
//!
//! Hand-written on purpose: shell-style expansion crates (`shellexpand`,
//! `envsubst`) also expand a bare `$NAME`, which would turn the MQTT topic
//! `$SYS/#` into a variable lookup, and their errors do not say how to give a
//! default, which [`EnvError::Missing`] does.

/// Why a substitution failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// `${VAR}` where VAR is not set (and no default was given).
    #[error("environment variable `{0}` is not set (use `${{{0}:-default}}` for a default)")]
    Missing(String),
    /// `${` without a closing `}`.
    #[error("unterminated `${{` (write `$$` for a literal `$`)")]
    Unterminated,
    /// A variable name that is empty or has characters other than A-Z, a-z, 0-9, `_`.
    #[error("invalid variable name `{0}` in `${{...}}`")]
    BadName(String),
}

/// Substitutes every `${VAR}` and `${VAR:-default}` in `text` using `lookup`;
/// `$$` becomes `$`. The default itself is taken literally (no nesting).
/// An empty variable counts as set for `${VAR}` and as unset for `${VAR:-default}`
/// (shell semantics of `:-`).
pub fn substitute(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    if !text.contains('$') {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or(EnvError::Unterminated)?;
            let inner = &body[..end];
            let (name, default) = match inner.find(":-") {
                Some(i) => (&inner[..i], Some(&inner[i + 2..])),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(EnvError::BadName(name.to_string()));
            }
            let value = match (lookup(name), default) {
                (Some(v), Some(d)) if v.is_empty() => d.to_string(),
                (Some(v), _) => v,
                (None, Some(d)) => d.to_string(),
                (None, None) => return Err(EnvError::Missing(name.to_string())),
            };
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("broker.example".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes() {
        assert_eq!(
            substitute("mqtt://${HOST}:1883", &vars),
            Ok("mqtt://broker.example:1883".into())
        );
        assert_eq!(substitute("${NOPE:-x/y}", &vars), Ok("x/y".into()));
        assert_eq!(substitute("${EMPTY:-d}", &vars), Ok("d".into()));
        assert_eq!(substitute("${EMPTY}", &vars), Ok(String::new()));
        assert_eq!(substitute("$$HOME", &vars), Ok("$HOME".into()));
        assert_eq!(substitute("$SYS/#", &vars), Ok("$SYS/#".into()));
        assert_eq!(substitute("a$", &vars), Ok("a$".into()));
        assert_eq!(
            substitute("${HOST}${HOST}", &vars),
            Ok("broker.examplebroker.example".into())
        );
    }

    #[test]
    fn errors_name_the_variable() {
        assert_eq!(
            substitute("x${NOPE}", &vars),
            Err(EnvError::Missing("NOPE".into()))
        );
        assert_eq!(substitute("${HOST", &vars), Err(EnvError::Unterminated));
        assert_eq!(
            substitute("${}", &vars),
            Err(EnvError::BadName(String::new()))
        );
        assert_eq!(
            substitute("${A B}", &vars),
            Err(EnvError::BadName("A B".into()))
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1000, ..Default::default() })]

        /// Never panics; text with every `$` doubled comes back unchanged.
        #[test]
        fn escaped_text_round_trips(s in "[a-z${}:\\-/#+]{0,24}") {
            let _ = substitute(&s, &vars);
            let escaped = s.replace('$', "$$");
            proptest::prop_assert_eq!(substitute(&escaped, &vars), Ok(s));
        }
    }
}
