//! The documented defaults tables agree with the code's defaults: the config
//! reference in `docs/configuration.md` (top level, `type: remote`,
//! `type: builtin`, pipes) against `config::raw::defaults`, and the library
//! options table in `docs/development.md` against the broker's `DEFAULT_*`
//! constants.

use std::collections::HashMap;
use std::time::Duration;

use mqbridge::broker;
use mqbridge::config::raw::defaults;
use mqbridge::config::units::{parse_duration, parse_size};

const CONFIGURATION: &str = include_str!("../docs/configuration.md");
const DEVELOPMENT: &str = include_str!("../docs/development.md");
const OPERATING: &str = include_str!("../docs/operating.md");

/// Field → default cell of the first table after the line of `doc` starting
/// with `heading` (up to the next heading).
fn table(doc: &str, heading: &str) -> HashMap<String, String> {
    let mut lines = doc.lines().skip_while(|l| !l.starts_with(heading));
    assert!(lines.next().is_some(), "no section {heading:?}");
    let mut rows = HashMap::new();
    for line in lines.take_while(|l| !l.starts_with('#')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| `field` | default | meaning |" → ["", "`field`", "default", "meaning", ""]
        if cells.len() >= 4
            && let Some(field) = cells[1].strip_prefix('`').and_then(|f| f.strip_suffix('`'))
        {
            rows.insert(field.to_owned(), cells[2].to_owned());
        }
    }
    assert!(!rows.is_empty(), "no table rows under {heading:?}");
    rows
}

/// The default cell's value: its first `code` span, or its leading text up
/// to a parenthesis.
fn value(rows: &HashMap<String, String>, field: &str) -> String {
    let cell = rows
        .get(field)
        .unwrap_or_else(|| panic!("the table has no row for `{field}`"));
    match cell.split('`').nth(1) {
        Some(code) if cell.starts_with('`') => code.to_owned(),
        _ => cell.split('(').next().unwrap_or("").trim().to_owned(),
    }
}

fn duration(rows: &HashMap<String, String>, field: &str) -> Duration {
    let v = value(rows, field).replace(' ', "");
    parse_duration(&v).unwrap_or_else(|e| panic!("`{field}` default {v:?}: {e}"))
}

fn size(rows: &HashMap<String, String>, field: &str) -> u64 {
    let v = value(rows, field).replace(' ', "");
    parse_size(&v).unwrap_or_else(|e| panic!("`{field}` default {v:?}: {e}"))
}

fn number(rows: &HashMap<String, String>, field: &str) -> u64 {
    let v = value(rows, field).replace(',', "");
    v.parse()
        .unwrap_or_else(|e| panic!("`{field}` default {v:?}: {e}"))
}

#[test]
fn top_level_defaults_match_the_code() {
    let t = table(CONFIGURATION, "## Top level");
    assert_eq!(
        duration(&t, "shutdown_timeout"),
        defaults::shutdown_timeout()
    );
    assert_eq!(value(&t, "metrics.listen"), defaults::metrics_listen());
    assert_eq!(
        duration(&t, "watchdog.stall_after"),
        defaults::stall_after()
    );
    assert_eq!(value(&t, "storage.dir"), defaults::STORAGE_DIR);
    assert_eq!(value(&t, "storage.fsync"), "batch");
    assert_eq!(size(&t, "storage.max_bytes"), defaults::STORAGE_MAX_BYTES);
}

#[test]
fn remote_defaults_match_the_code() {
    let t = table(CONFIGURATION, "### `type: remote`");
    assert_eq!(duration(&t, "keepalive"), defaults::keepalive());
    assert_eq!(duration(&t, "reconnect.min"), defaults::reconnect_min());
    assert_eq!(duration(&t, "reconnect.max"), defaults::reconnect_max());
    assert_eq!(
        duration(&t, "reconnect.stable_after"),
        defaults::stable_after()
    );
    assert_eq!(
        duration(&t, "failback.probe_interval"),
        defaults::probe_interval()
    );
    assert_eq!(
        number(&t, "failback.probes_required"),
        u64::from(defaults::probes_required())
    );
    assert_eq!(duration(&t, "connect_timeout"), defaults::connect_timeout());
    assert_eq!(number(&t, "max_packet_size"), defaults::max_packet_size());
    assert_eq!(number(&t, "inflight"), u64::from(defaults::inflight()));

    // The connection-settings table under "Remote brokers" repeats some.
    let c = table(CONFIGURATION, "### Connection settings");
    assert_eq!(duration(&c, "keepalive"), defaults::keepalive());
    assert_eq!(duration(&c, "connect_timeout"), defaults::connect_timeout());
    assert_eq!(number(&c, "inflight"), u64::from(defaults::inflight()));
}

#[test]
fn builtin_config_defaults_match_the_code() {
    let t = table(CONFIGURATION, "### `type: builtin`");
    assert_eq!(
        number(&t, "limits.max_connections"),
        defaults::max_connections() as u64
    );
    assert_eq!(
        size(&t, "limits.max_packet_size"),
        defaults::builtin_max_packet_size()
    );
    assert_eq!(
        number(&t, "limits.max_queued_messages"),
        defaults::max_queued_messages() as u64
    );
    assert_eq!(
        number(&t, "limits.max_inflight"),
        u64::from(defaults::max_inflight())
    );
    assert_eq!(
        duration(&t, "limits.handshake_timeout"),
        defaults::handshake_timeout()
    );
    assert_eq!(
        number(&t, "limits.topic_alias_maximum"),
        u64::from(defaults::topic_alias_maximum())
    );
}

#[test]
fn library_defaults_match_the_code() {
    let t = table(DEVELOPMENT, "**Library options**");
    assert_eq!(
        number(&t, "limits.max_connections"),
        broker::DEFAULT_MAX_CONNECTIONS as u64
    );
    assert_eq!(
        number(&t, "limits.topic_alias_maximum"),
        u64::from(broker::DEFAULT_TOPIC_ALIAS_MAXIMUM)
    );
    assert_eq!(
        size(&t, "limits.max_packet_size"),
        broker::DEFAULT_MAX_PACKET_SIZE as u64
    );
    assert_eq!(
        number(&t, "limits.max_inflight"),
        u64::from(broker::DEFAULT_MAX_INFLIGHT)
    );
    assert_eq!(
        number(&t, "limits.max_queued_messages"),
        broker::DEFAULT_MAX_QUEUED as u64
    );
    assert_eq!(
        duration(&t, "limits.handshake_timeout"),
        broker::DEFAULT_HANDSHAKE_TIMEOUT
    );
    // Where the library differs from a config file, the row says both.
    for (field, config_default) in [
        (
            "limits.max_connections",
            defaults::max_connections().to_string(),
        ),
        ("limits.max_inflight", defaults::max_inflight().to_string()),
    ] {
        let cell = &t[field];
        assert!(
            cell.contains(&format!("config file: {config_default}")),
            "`{field}`: {cell:?} should name the config file's default {config_default}"
        );
    }
}

#[test]
fn pipe_defaults_match_the_code() {
    let t = table(CONFIGURATION, "## Pipes");
    assert_eq!(number(&t, "queue.size"), defaults::queue_size() as u64);
}

/// The operating examples (`/readyz` bodies, `jq` filters) name pipes and
/// brokers of the shipped `bridges.yaml`, spelt as it spells them.
#[test]
fn operating_examples_use_the_shipped_names() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bridges.yaml");
    let (plan, _) = mqbridge::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let known = |n: &str| plan.pipes.contains_key(n) || plan.brokers.contains_key(n);
    let re = regex::Regex::new(
        r#""name":"([^"]+)"|\.pipe=="([^"]+)"|"destination":"([^"]+)"|pipe ([A-Za-z0-9_-]+) is stalled"#,
    )
    .expect("regex");
    let section = OPERATING;
    let mut seen = 0;
    for c in re.captures_iter(section) {
        let name = (1..=4)
            .find_map(|i| c.get(i))
            .map(|m| m.as_str())
            .unwrap_or_default();
        assert!(
            known(name),
            "docs/operating.md names `{name}`, which bridges.yaml does not define"
        );
        seen += 1;
    }
    assert!(seen >= 4, "only {seen} names found");
}
