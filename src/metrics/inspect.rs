//! `mqbridge health` and `mqbridge status`: read a running instance's
//! `/readyz` and `/metrics` over HTTP and judge or tabulate them.
//!
//! The parsing and the table are pure (unit-tested here); [`fetch`] is the
//! only IO, a blocking GET (the CLI has no runtime for these commands).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use super::health::{BrokerKind, BrokerStatus, PipeState, PipeStatus};
use super::names;

/// The metrics listen address when neither `--url` nor
/// `MQBRIDGE_METRICS_LISTEN` says otherwise (the config's default).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// How long one HTTP request to the instance may take in total.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the instance could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Connecting, sending or reading failed (refused, timed out, …).
    #[error("GET {url}: {source}")]
    Http {
        /// The URL requested.
        url: String,
        /// What failed.
        #[source]
        source: Box<ureq::Error>,
    },
    /// `/readyz` answered something that is not its JSON body.
    #[error("GET {url}: unexpected body: {source}")]
    Body {
        /// The URL requested.
        url: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// `/metrics` answered with an error status.
    #[error("GET {url}: HTTP status {code}")]
    Status {
        /// The URL requested.
        url: String,
        /// The status code.
        code: u16,
    },
}

/// The base URL (`http://host:port`, no trailing slash) of an instance whose
/// metrics listener is `listen`: a listen address (`0.0.0.0:9464` is reached
/// on loopback) or already a URL.
pub fn base_url(listen: &str) -> String {
    let listen = listen.trim();
    if listen.starts_with("http://") || listen.starts_with("https://") {
        return listen.trim_end_matches('/').to_owned();
    }
    match listen.parse::<SocketAddr>() {
        Ok(mut addr) => {
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                });
            }
            format!("http://{addr}")
        }
        // `host:port` with a name: use it as it is.
        Err(_) => format!("http://{listen}"),
    }
}

/// A blocking GET of `base` + `path`: (status code, body). Any status is
/// returned as is; only transport failures are errors.
pub fn fetch(base: &str, path: &str) -> Result<(u16, String), InspectError> {
    let url = format!("{base}{path}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into();
    let http = |source| InspectError::Http {
        url: url.clone(),
        source: Box::new(source),
    };
    let mut resp = agent.get(&url).call().map_err(http)?;
    let code = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().map_err(http)?;
    Ok((code, body))
}

/// The body of `/readyz`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReadyReport {
    /// `ready` or `not_ready`.
    pub status: String,
    /// Why not ready (empty when ready).
    #[serde(default)]
    pub reasons: Vec<String>,
    /// Every broker.
    #[serde(default)]
    pub brokers: Vec<BrokerStatus>,
    /// Every pipe.
    #[serde(default)]
    pub pipes: Vec<PipeStatus>,
}

/// Parses a `/readyz` body.
pub fn parse_ready(url: &str, body: &str) -> Result<ReadyReport, InspectError> {
    serde_json::from_str(body).map_err(|source| InspectError::Body {
        url: url.to_owned(),
        source,
    })
}

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`/`_sum`/`_count` for histogram parts).
    pub name: String,
    /// Label pairs in the order written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the Prometheus text exposition format (what `/metrics` serves):
/// comments and lines that do not parse are skipped.
///
/// Hand-written: the crates for this (`prometheus-parse`) pull in a date
/// library and more for ~40 lines that only need to read our own exporter.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, rest) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, rest)
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, Vec::new(), rest)
        }
    };
    // The value, then an optional timestamp.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` (after the `{`); returns the pairs and the rest.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_owned(), value));
        s = &rest[end + 1..];
    }
}

/// Sum of the samples named `name` whose label `key` is `value`.
fn sum(samples: &[Sample], name: &str, key: &str, value: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && s.label(key) == Some(value))
        .map(|s| s.value)
        .sum()
}

/// `{reason: count}` of the non-zero samples named `name` for `pipe`.
fn by_reason(samples: &[Sample], name: &str, key: &str, value: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.name == name && s.label(key) == Some(value) && s.value > 0.0)
    {
        let reason = s.label(names::LABEL_REASON).unwrap_or("?").to_owned();
        *out.entry(reason).or_insert(0.0) += s.value;
    }
    out
}

/// A count as an integer when it is one.
fn count(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// The brokers and pipes of a running instance as terminal tables.
pub fn render_status(ready: &ReadyReport, samples: &[Sample]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "status: {}", ready.status);
    for reason in &ready.reasons {
        let _ = writeln!(out, "  - {reason}");
    }

    let mut brokers = vec![row([
        "BROKER",
        "KIND",
        "CONNECTED",
        "ENDPOINT",
        "FAILOVERS",
        "CLIENTS",
    ])];
    for b in &ready.brokers {
        let (kind, failovers, clients) = match b.kind {
            BrokerKind::Remote => (
                "remote",
                count(sum(
                    samples,
                    names::REMOTE_FAILOVERS,
                    names::LABEL_BROKER,
                    &b.name,
                )),
                "-".to_owned(),
            ),
            BrokerKind::Builtin => (
                "builtin",
                "-".to_owned(),
                count(sum(
                    samples,
                    names::BROKER_CLIENTS_CONNECTED,
                    names::LABEL_BROKER,
                    &b.name,
                )),
            ),
        };
        brokers.push(vec![
            b.name.clone(),
            kind.to_owned(),
            if b.connected { "yes" } else { "no" }.to_owned(),
            b.endpoint.clone().unwrap_or_else(|| "-".to_owned()),
            failovers,
            clients,
        ]);
    }
    out.push('\n');
    out.push_str(&table(&brokers));

    let mut pipes = vec![row([
        "PIPE",
        "TO",
        "STATE",
        "RECEIVED",
        "FORWARDED",
        "DROPPED",
        "QUEUED",
        "INFLIGHT",
        "MEAN LATENCY",
    ])];
    for p in &ready.pipes {
        let metric = |name: &str| sum(samples, name, names::LABEL_PIPE, &p.name);
        let drops = by_reason(
            samples,
            names::PIPE_MESSAGES_DROPPED,
            names::LABEL_PIPE,
            &p.name,
        );
        let dropped_total: f64 = drops.values().sum();
        let dropped = if drops.is_empty() {
            "0".to_owned()
        } else {
            let detail: Vec<String> = drops
                .iter()
                .map(|(r, n)| format!("{r}={}", count(*n)))
                .collect();
            format!("{} ({})", count(dropped_total), detail.join(","))
        };
        let latency_count = metric(&format!("{}_count", names::PIPE_FORWARD_LATENCY_SECONDS));
        let latency_sum = metric(&format!("{}_sum", names::PIPE_FORWARD_LATENCY_SECONDS));
        let latency = if latency_count > 0.0 {
            format!("{:.1} ms", latency_sum / latency_count * 1000.0)
        } else {
            "-".to_owned()
        };
        pipes.push(vec![
            p.name.clone(),
            p.destination.clone(),
            match p.state {
                PipeState::Idle => "idle",
                PipeState::Flowing => "flowing",
                PipeState::Stalled => "STALLED",
            }
            .to_owned(),
            count(metric(names::PIPE_MESSAGES_RECEIVED)),
            count(metric(names::PIPE_MESSAGES_FORWARDED)),
            dropped,
            count(metric(names::PIPE_QUEUE_DEPTH_MESSAGES)),
            count(metric(names::PIPE_INFLIGHT_MESSAGES)),
            latency,
        ]);
    }
    out.push('\n');
    out.push_str(&table(&pipes));
    out
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// Left-aligned columns separated by two spaces; no trailing spaces.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_maps_unspecified_to_loopback_and_keeps_urls() {
        assert_eq!(base_url("0.0.0.0:9464"), "http://127.0.0.1:9464");
        assert_eq!(base_url("[::]:9464"), "http://[::1]:9464");
        assert_eq!(base_url("127.0.0.1:1234"), "http://127.0.0.1:1234");
        assert_eq!(base_url("mqbridge:9464"), "http://mqbridge:9464");
        assert_eq!(base_url("http://h:1/"), "http://h:1");
    }

    #[test]
    fn parses_samples_with_labels_escapes_and_timestamps() {
        let text = "# HELP x y\n# TYPE x counter\n\
            mqbridge_pipe_messages_dropped_total{pipe=\"a\",reason=\"max_payload\"} 3\n\
            mqbridge_build_info{version=\"0.1.0\"} 1 1700000000000\n\
            plain 2.5\n\
            odd{l=\"q\\\"uote,}\"} 4\n\
            garbage line\n";
        let s = parse_exposition(text);
        assert_eq!(s.len(), 4, "{s:?}");
        assert_eq!(s[0].name, "mqbridge_pipe_messages_dropped_total");
        assert_eq!(s[0].label("pipe"), Some("a"));
        assert_eq!(s[0].label("reason"), Some("max_payload"));
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].value, 1.0);
        assert_eq!(s[2].name, "plain");
        assert!(s[2].labels.is_empty());
        assert_eq!(s[3].label("l"), Some("q\"uote,}"));
        assert_eq!(s[3].value, 4.0);
    }

    #[test]
    fn status_table_joins_readyz_and_metrics() {
        let ready: ReadyReport = serde_json::from_str(
            r#"{"status":"not_ready","reasons":["broker cloud is not connected"],
                "brokers":[{"name":"cloud","kind":"remote","required":true,"connected":false},
                           {"name":"edge","kind":"builtin","required":false,"connected":true}],
                "pipes":[{"name":"up","destination":"cloud","state":"stalled","pending":4,
                          "forwarded":10,"idle_seconds":31}]}"#,
        )
        .expect("readyz body");
        let samples = parse_exposition(
            "mqbridge_remote_failovers_total{broker=\"cloud\"} 2\n\
             mqbridge_broker_clients_connected{broker=\"edge\"} 5\n\
             mqbridge_pipe_messages_received_total{pipe=\"up\"} 17\n\
             mqbridge_pipe_messages_forwarded_total{pipe=\"up\"} 10\n\
             mqbridge_pipe_messages_dropped_total{pipe=\"up\",reason=\"max_payload\"} 3\n\
             mqbridge_pipe_messages_dropped_total{pipe=\"up\",reason=\"rate_limited\"} 0\n\
             mqbridge_pipe_queue_depth_messages{pipe=\"up\"} 3\n\
             mqbridge_pipe_inflight_messages{pipe=\"up\"} 1\n\
             mqbridge_pipe_forward_latency_seconds_sum{pipe=\"up\"} 0.05\n\
             mqbridge_pipe_forward_latency_seconds_count{pipe=\"up\"} 10\n",
        );
        let out = render_status(&ready, &samples);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "status: not_ready");
        assert_eq!(lines[1], "  - broker cloud is not connected");
        let cloud = lines
            .iter()
            .find(|l| l.starts_with("cloud"))
            .expect("cloud row");
        let cells: Vec<&str> = cloud.split_whitespace().collect();
        assert_eq!(cells, ["cloud", "remote", "no", "-", "2", "-"]);
        let edge = lines
            .iter()
            .find(|l| l.starts_with("edge"))
            .expect("edge row");
        let cells: Vec<&str> = edge.split_whitespace().collect();
        assert_eq!(cells, ["edge", "builtin", "yes", "-", "-", "5"]);
        let up = lines
            .iter()
            .find(|l| l.starts_with("up "))
            .expect("pipe row");
        let cells: Vec<&str> = up.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "up",
                "cloud",
                "STALLED",
                "17",
                "10",
                "3",
                "(max_payload=3)",
                "3",
                "1",
                "5.0",
                "ms"
            ]
        );
        assert!(lines.iter().all(|l| l.len() == l.trim_end().len()));
    }
}
