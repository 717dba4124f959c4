//! JSON log lines whose list fields are JSON arrays, and the unfiltered JSON
//! output the command line uses for its own messages (config errors and
//! warnings), so that with `--log-format json` every stderr line is one JSON
//! object.
//!
//! `tracing` records a field as a string, a number or a bool; it has no list
//! value (short of the unstable `valuable` feature). A list is therefore
//! logged with [`list`], whose `Display` is a JSON array, under one of the
//! [`LIST_FIELDS`] names; [`JsonLines`] turns exactly those fields back into
//! arrays. In text logs the field shows as `addrs=["127.0.0.1:1883"]`.

use std::fmt;

use serde_json::Value;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The field names that carry a [`list`]: always JSON arrays in JSON logs.
pub const LIST_FIELDS: &[&str] = &["addrs", "applied", "pending", "pipes"];

/// A list field value: `Display` writes a JSON array of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List(Vec<String>);

/// A list field: `info!(addrs = %list(&addrs), "...")` (the name must be in
/// [`LIST_FIELDS`]).
pub fn list<I, T>(items: I) -> List
where
    I: IntoIterator<Item = T>,
    T: fmt::Display,
{
    List(items.into_iter().map(|i| i.to_string()).collect())
}

impl fmt::Display for List {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let json = serde_json::to_string(&self.0).map_err(|_| fmt::Error)?;
        f.write_str(&json)
    }
}

/// `tracing-subscriber`'s flattened JSON format, with the [`LIST_FIELDS`]
/// written as arrays.
pub struct JsonLines(Format<Json>);

impl JsonLines {
    /// One object per line: timestamp, level, message, the event's fields at
    /// the top level, target, and the current span.
    pub fn new() -> Self {
        JsonLines(
            tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false),
        )
    }
}

impl Default for JsonLines {
    fn default() -> Self {
        Self::new()
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&lists_as_arrays(&line))
    }
}

/// Rewrites the [`LIST_FIELDS`] of one JSON line from strings holding a JSON
/// array to arrays; any other line is returned unchanged.
fn lists_as_arrays(line: &str) -> String {
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(line) else {
        return line.to_owned();
    };
    let mut changed = false;
    for name in LIST_FIELDS {
        if let Some(Value::String(s)) = obj.get(*name)
            && let Ok(array @ Value::Array(_)) = serde_json::from_str::<Value>(s)
        {
            obj.insert((*name).to_owned(), array);
            changed = true;
        }
    }
    if !changed {
        return line.to_owned();
    }
    match serde_json::to_string(&Value::Object(obj)) {
        Ok(mut s) => {
            s.push('\n');
            s
        }
        Err(_) => line.to_owned(),
    }
}

/// A JSON subscriber with no level filter, writing to stderr: the command
/// line's own messages (config errors, warnings, a failed start) are output,
/// not diagnostics, so `--log-level` does not hide them.
pub fn unfiltered() -> tracing::Dispatch {
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .fmt_fields(JsonFields::new())
        .event_format(JsonLines::new())
        .finish();
    tracing::Dispatch::new(subscriber)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_displays_as_a_json_array() {
        assert_eq!(
            list(["127.0.0.1:1883", "a\"b"]).to_string(),
            r#"["127.0.0.1:1883","a\"b"]"#
        );
        assert_eq!(list(Vec::<String>::new()).to_string(), "[]");
    }

    #[test]
    fn list_fields_become_arrays_and_others_stay() {
        let line =
            r#"{"message":"broker started","addrs":"[\"127.0.0.1:1\"]","client_id":"[\"x\"]"}"#;
        let v: Value = serde_json::from_str(&lists_as_arrays(line)).expect("json");
        assert_eq!(v["addrs"], serde_json::json!(["127.0.0.1:1"]));
        assert_eq!(v["client_id"], serde_json::json!("[\"x\"]"));
        assert_eq!(lists_as_arrays("not json\n"), "not json\n");
    }
}
