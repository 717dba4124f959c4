//! The read-only status page (`/`) and its data (`/status.json`).
//!
//! Every number comes from the same Prometheus text `/metrics` serves (parsed
//! by [`Scrape`]) plus the status board (connected, endpoint, pipe state), so
//! the page can never disagree with a scrape. Rates and the latency average
//! cover the last minute: [`Rates`] keeps per-pipe counter samples (taken on
//! every request and every exporter upkeep tick). Pure: time is an argument.
//!
//! The page is rendered on the server (readable with JavaScript off); a small
//! inline script polls `/status.json` and redraws the tables. No external assets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::health::{BrokerKind, PipeState, Readiness};
use super::names::*;

/// The span rates and the latency average are computed over.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Samples closer together than this replace each other, so the history
/// stays at most about 60 entries per pipe however often the page is polled.
const MIN_SAMPLE_GAP: Duration = Duration::from_secs(1);
/// How often the page's script polls `/status.json`.
pub const POLL_INTERVAL_MS: u64 = 2_000;

/// Samples of a Prometheus text exposition: `(name, sorted labels) → value`.
/// Reads only what our own exporter writes (no timestamps, `"`-quoted label
/// values with `\\`, `\"` and `\n` escapes); lines it cannot read are skipped.
#[derive(Debug, Default)]
pub struct Scrape {
    samples: HashMap<String, Vec<(Labels, f64)>>,
}

/// A series' labels, sorted by key.
type Labels = Vec<(String, String)>;

impl Scrape {
    /// Parses the exposition text.
    pub fn parse(text: &str) -> Scrape {
        let mut samples: HashMap<String, Vec<_>> = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some((name, labels, value)) = parse_line(line) {
                samples.entry(name).or_default().push((labels, value));
            }
        }
        Scrape { samples }
    }

    /// The value of the series `name` whose labels include all of `labels`
    /// (the first match), if any.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(name)?.iter().find_map(|(have, v)| {
            labels
                .iter()
                .all(|(k, val)| have.iter().any(|(hk, hv)| hk == k && hv == val))
                .then_some(*v)
        })
    }

    /// For every series `name` with label `with` = `value`: its `key` label
    /// and sample value.
    pub fn by_label(&self, name: &str, with: (&str, &str), key: &str) -> BTreeMap<String, f64> {
        let Some(series) = self.samples.get(name) else {
            return BTreeMap::new();
        };
        series
            .iter()
            .filter(|(labels, _)| labels.iter().any(|(k, v)| k == with.0 && v == with.1))
            .filter_map(|(labels, v)| {
                let k = labels.iter().find(|(k, _)| k == key)?;
                Some((k.1.clone(), *v))
            })
            .collect()
    }
}

/// `name{k="v",…} value` → (name, labels, value).
fn parse_line(line: &str) -> Option<(String, Labels, f64)> {
    let (series, value) = line.trim_end().rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series.to_string(), Vec::new(), value));
    };
    let mut labels = Vec::new();
    let mut chars = rest.chars();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        let key = key.trim_start_matches(',').to_string();
        if key == "}" || key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut val = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                c => val.push(c),
            }
        }
        labels.push((key, val));
        match chars.next()? {
            ',' => continue,
            '}' => break,
            _ => return None,
        }
    }
    labels.sort();
    Some((name.to_string(), labels, value))
}

/// One sample of a pipe's counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PipeCounters {
    /// `mqbridge_pipe_messages_received_total`.
    pub received: f64,
    /// `mqbridge_pipe_messages_forwarded_total`.
    pub forwarded: f64,
    /// Forward latency histogram `_sum` (seconds).
    pub latency_sum: f64,
    /// Forward latency histogram `_count`.
    pub latency_count: f64,
}

/// Rates of one pipe over (at most) the last [`RATE_WINDOW`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PipeRates {
    /// Messages received per second.
    pub in_per_second: f64,
    /// Messages forwarded per second.
    pub out_per_second: f64,
    /// Mean forward latency of the forwards in the window, in milliseconds
    /// (`None` when nothing was forwarded).
    pub latency_ms: Option<f64>,
    /// The span actually covered, in seconds (under 60 s just after start).
    pub window_seconds: f64,
}

/// Per-pipe counter history for last-minute rates.
#[derive(Debug, Default)]
pub struct Rates {
    history: HashMap<String, VecDeque<(Instant, PipeCounters)>>,
}

impl Rates {
    /// Records a sample; forgets samples no longer needed for the window
    /// (the newest one at or before `now - RATE_WINDOW` is kept as the base).
    pub fn record(&mut self, now: Instant, pipe: &str, c: PipeCounters) {
        let h = self.history.entry(pipe.to_string()).or_default();
        // A counter that went down was reset (the pipe was restarted by a reload).
        if h.back()
            .is_some_and(|(_, last)| c.received < last.received || c.forwarded < last.forwarded)
        {
            h.clear();
        }
        // Replace a too-recent newest sample (keeping the base sample).
        if h.len() > 1 && h.back().is_some_and(|(t, _)| *t + MIN_SAMPLE_GAP > now) {
            h.pop_back();
        }
        h.push_back((now, c));
        while h.len() > 2 && h[1].0 + RATE_WINDOW <= now {
            h.pop_front();
        }
    }

    /// Forgets pipes not in `keep` (removed by a reload).
    pub fn retain(&mut self, keep: &[&str]) {
        self.history.retain(|k, _| keep.contains(&k.as_str()));
    }

    /// Rates from the oldest kept sample to the newest; `None` until two
    /// samples at different times exist.
    pub fn rates(&self, pipe: &str) -> Option<PipeRates> {
        let h = self.history.get(pipe)?;
        let ((t0, a), (t1, b)) = (h.front()?, h.back()?);
        let dt = t1.checked_duration_since(*t0)?.as_secs_f64();
        if dt <= 0.0 {
            return None;
        }
        let count = b.latency_count - a.latency_count;
        Some(PipeRates {
            in_per_second: (b.received - a.received) / dt,
            out_per_second: (b.forwarded - a.forwarded) / dt,
            latency_ms: (count > 0.0).then(|| (b.latency_sum - a.latency_sum) / count * 1000.0),
            window_seconds: dt,
        })
    }
}

/// The counters of `pipe` in a scrape.
pub fn pipe_counters(s: &Scrape, pipe: &str) -> PipeCounters {
    let v = |name: &str| s.value(name, &[(LABEL_PIPE, pipe)]).unwrap_or(0.0);
    PipeCounters {
        received: v(PIPE_MESSAGES_RECEIVED),
        forwarded: v(PIPE_MESSAGES_FORWARDED),
        latency_sum: v(&format!("{PIPE_FORWARD_LATENCY_SECONDS}_sum")),
        latency_count: v(&format!("{PIPE_FORWARD_LATENCY_SECONDS}_count")),
    }
}

/// `/status.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Crate version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// The `/readyz` verdict.
    pub ready: bool,
    /// Why not ready.
    pub reasons: Vec<String>,
    /// Every broker.
    pub brokers: Vec<BrokerView>,
    /// Every pipe.
    pub pipes: Vec<PipeView>,
}

/// One broker on the page.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerView {
    /// Name.
    pub name: String,
    /// `remote` or `builtin`.
    pub kind: BrokerKind,
    /// Connected (remote) or listening (built-in).
    pub connected: bool,
    /// Endpoint in use (connected remote brokers).
    pub endpoint: Option<String>,
    /// `mqbridge_remote_failovers_total` (remote brokers).
    pub failovers: Option<u64>,
}

/// One pipe on the page.
#[derive(Debug, Clone, Serialize)]
pub struct PipeView {
    /// Name.
    pub name: String,
    /// Destination broker.
    pub destination: String,
    /// Watchdog state.
    pub state: PipeState,
    /// `mqbridge_pipe_messages_received_total`.
    pub received: u64,
    /// `mqbridge_pipe_messages_forwarded_total`.
    pub forwarded: u64,
    /// `mqbridge_pipe_queue_depth_messages`: the backlog.
    pub queued: u64,
    /// `mqbridge_pipe_inflight_messages`.
    pub inflight: u64,
    /// `mqbridge_pipe_messages_dropped_total` by reason (non-zero only).
    pub dropped: BTreeMap<String, u64>,
    /// Last-minute rates and latency (`None` right after start).
    pub rates: Option<PipeRates>,
}

/// Builds the status from the board's verdict, a scrape and the rate history.
pub fn status(readiness: Readiness, uptime: Duration, s: &Scrape, rates: &Rates) -> Status {
    let count = |v: Option<f64>| v.map(|v| v.max(0.0) as u64);
    let brokers = readiness
        .brokers
        .into_iter()
        .map(|b| BrokerView {
            failovers: match b.kind {
                BrokerKind::Remote => {
                    count(s.value(REMOTE_FAILOVERS, &[(LABEL_BROKER, &b.name)])).or(Some(0))
                }
                BrokerKind::Builtin => None,
            },
            name: b.name,
            kind: b.kind,
            connected: b.connected,
            endpoint: b.endpoint,
        })
        .collect();
    let pipes = readiness
        .pipes
        .into_iter()
        .map(|p| {
            let v = |name: &str| count(s.value(name, &[(LABEL_PIPE, &p.name)])).unwrap_or(0);
            let dropped = s
                .by_label(PIPE_MESSAGES_DROPPED, (LABEL_PIPE, &p.name), LABEL_REASON)
                .into_iter()
                .filter(|(_, n)| *n > 0.0)
                .map(|(r, n)| (r, n as u64))
                .collect();
            PipeView {
                received: v(PIPE_MESSAGES_RECEIVED),
                forwarded: v(PIPE_MESSAGES_FORWARDED),
                queued: v(PIPE_QUEUE_DEPTH_MESSAGES),
                inflight: v(PIPE_INFLIGHT_MESSAGES),
                dropped,
                rates: rates.rates(&p.name),
                state: p.state,
                destination: p.destination,
                name: p.name,
            }
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: uptime.as_secs(),
        ready: readiness.ready,
        reasons: readiness.reasons,
        brokers,
        pipes,
    }
}

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn rate(r: Option<&PipeRates>, f: impl Fn(&PipeRates) -> Option<f64>) -> String {
    r.and_then(f)
        .map_or_else(|| "–".to_string(), |v| format!("{v:.2}"))
}

fn drops(d: &BTreeMap<String, u64>) -> String {
    if d.is_empty() {
        return "0".into();
    }
    d.iter()
        .map(|(r, n)| format!("{r}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn state_name(s: PipeState) -> &'static str {
    match s {
        PipeState::Idle => "idle",
        PipeState::Flowing => "flowing",
        PipeState::Stalled => "stalled",
    }
}

/// The HTML page with `status` rendered in; the script keeps it current.
pub fn render_html(status: &Status) -> String {
    let mut brokers = String::new();
    for b in &status.brokers {
        let _ = write!(
            brokers,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
            esc(&b.name),
            match b.kind {
                BrokerKind::Remote => "remote",
                BrokerKind::Builtin => "built-in",
            },
            if b.connected { "ok" } else { "bad" },
            if b.connected {
                "connected"
            } else {
                "disconnected"
            },
            esc(b.endpoint.as_deref().unwrap_or("–")),
            b.failovers.map_or("–".to_string(), |n| n.to_string()),
        );
    }
    let mut pipes = String::new();
    for p in &status.pipes {
        let r = p.rates.as_ref();
        let _ = write!(
            pipes,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
            esc(&p.name),
            esc(&p.destination),
            if p.state == PipeState::Stalled {
                "bad"
            } else {
                "ok"
            },
            state_name(p.state),
            rate(r, |r| Some(r.in_per_second)),
            rate(r, |r| Some(r.out_per_second)),
            p.received,
            p.forwarded,
            p.queued,
            p.inflight,
            esc(&drops(&p.dropped)),
            rate(r, |r| r.latency_ms),
        );
    }
    let reasons = if status.ready {
        String::new()
    } else {
        format!(" ({})", esc(&status.reasons.join("; ")))
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>mqbridge status</title>
<style>
body{{font:14px system-ui,sans-serif;margin:1.5em;color:#222}}
table{{border-collapse:collapse;margin-bottom:1.5em}}
th,td{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}
th{{background:#f3f3f3}}td.n{{text-align:right;font-variant-numeric:tabular-nums}}
.ok{{color:#186a1e}}.bad{{color:#b00020;font-weight:bold}}small{{color:#666}}
</style></head><body>
<h1>mqbridge {version}</h1>
<p id="summary"><span class="{ready_class}">{ready_text}</span>{reasons} · up <span id="uptime">{uptime}</span> s · <small id="updated">rendered by the server; live updates need JavaScript</small></p>
<h2>Brokers</h2>
<table><thead><tr><th>broker</th><th>kind</th><th>state</th><th>endpoint</th><th>failovers</th></tr></thead><tbody id="brokers">{brokers}</tbody></table>
<h2>Pipes</h2>
<table><thead><tr><th>pipe</th><th>to</th><th>state</th><th>in/s</th><th>out/s</th><th>received</th><th>forwarded</th><th>backlog</th><th>inflight</th><th>dropped</th><th>latency ms</th></tr></thead><tbody id="pipes">{pipes}</tbody></table>
<p><small>Rates and latency: mean over the last minute. Data: <a href="status.json">status.json</a> · <a href="metrics">metrics</a> · <a href="readyz">readyz</a></small></p>
<script>
(function(){{
const td=(t,c)=>{{const e=document.createElement('td');e.textContent=t;if(c)e.className=c;return e;}};
const row=(cells)=>{{const r=document.createElement('tr');cells.forEach(c=>r.appendChild(c));return r;}};
const num=(v)=>v==null?'–':v.toFixed(2);
const fill=(id,rows)=>{{const b=document.getElementById(id);b.replaceChildren(...rows);}};
async function poll(){{
  try{{
    const s=await (await fetch('status.json',{{cache:'no-store'}})).json();
    document.getElementById('uptime').textContent=s.uptime_seconds;
    const sum=document.getElementById('summary').firstElementChild;
    sum.textContent=s.ready?'ready':'not ready ('+s.reasons.join('; ')+')';
    sum.className=s.ready?'ok':'bad';
    fill('brokers',s.brokers.map(b=>row([td(b.name),td(b.kind==='remote'?'remote':'built-in'),
      td(b.connected?'connected':'disconnected',b.connected?'ok':'bad'),td(b.endpoint||'–'),
      td(b.failovers==null?'–':String(b.failovers),'n')])));
    fill('pipes',s.pipes.map(p=>{{const r=p.rates;const d=Object.entries(p.dropped);
      return row([td(p.name),td(p.destination),td(p.state,p.state==='stalled'?'bad':'ok'),
      td(r?num(r.in_per_second):'–','n'),td(r?num(r.out_per_second):'–','n'),
      td(String(p.received),'n'),td(String(p.forwarded),'n'),td(String(p.queued),'n'),
      td(String(p.inflight),'n'),td(d.length?d.map(([k,v])=>k+': '+v).join(', '):'0'),
      td(r?num(r.latency_ms):'–','n')]);}}));
    document.getElementById('updated').textContent='live, updated '+new Date().toLocaleTimeString();
    window.dispatchEvent(new Event('status-updated'));
  }}catch(e){{document.getElementById('updated').textContent='update failed: '+e;}}
}}
poll();setInterval(poll,{poll});
}})();
</script>
</body></html>
"#,
        version = esc(status.version),
        ready_class = if status.ready { "ok" } else { "bad" },
        ready_text = if status.ready { "ready" } else { "not ready" },
        uptime = status.uptime_seconds,
        poll = POLL_INTERVAL_MS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE mqbridge_pipe_messages_forwarded_total counter\n\
        mqbridge_pipe_messages_forwarded_total{pipe=\"up\"} 42\n\
        mqbridge_pipe_messages_dropped_total{pipe=\"up\",reason=\"loop\"} 3\n\
        mqbridge_pipe_messages_dropped_total{pipe=\"up\",reason=\"excluded\"} 0\n\
        mqbridge_pipe_messages_dropped_total{pipe=\"down\",reason=\"loop\"} 9\n\
        mqbridge_remote_endpoint_active{broker=\"c\",endpoint=\"ws://h:1/a\\\"b\\\\c\"} 1\n\
        mqbridge_pipe_forward_latency_seconds_bucket{pipe=\"up\",le=\"+Inf\"} 42\n\
        mqbridge_build_info 1\n\
        garbage line\n";

    #[test]
    fn parses_our_exposition_text() {
        let s = Scrape::parse(TEXT);
        assert_eq!(
            s.value(PIPE_MESSAGES_FORWARDED, &[("pipe", "up")]),
            Some(42.0)
        );
        assert_eq!(s.value(PIPE_MESSAGES_FORWARDED, &[("pipe", "x")]), None);
        assert_eq!(s.value(BUILD_INFO, &[]), Some(1.0));
        let drops = s.by_label(PIPE_MESSAGES_DROPPED, ("pipe", "up"), "reason");
        assert_eq!(
            drops.into_iter().collect::<Vec<_>>(),
            vec![("excluded".to_string(), 0.0), ("loop".to_string(), 3.0)]
        );
        assert_eq!(
            s.value(REMOTE_ENDPOINT_ACTIVE, &[("endpoint", "ws://h:1/a\"b\\c")]),
            Some(1.0),
            "escapes in label values"
        );
        assert_eq!(
            s.value(
                &format!("{PIPE_FORWARD_LATENCY_SECONDS}_bucket"),
                &[("le", "+Inf")]
            ),
            Some(42.0)
        );
    }

    fn c(received: f64, forwarded: f64, sum: f64, count: f64) -> PipeCounters {
        PipeCounters {
            received,
            forwarded,
            latency_sum: sum,
            latency_count: count,
        }
    }

    #[test]
    fn rates_cover_the_last_minute() {
        let t0 = Instant::now();
        let mut r = Rates::default();
        r.record(t0, "p", c(0.0, 0.0, 0.0, 0.0));
        assert_eq!(r.rates("p"), None, "one sample is no rate");
        r.record(t0 + Duration::from_secs(10), "p", c(100.0, 50.0, 0.5, 50.0));
        let got = r.rates("p").expect("rates");
        assert_eq!((got.in_per_second, got.out_per_second), (10.0, 5.0));
        assert_eq!(got.latency_ms, Some(10.0));
        // Much later: the base moves up to the newest sample at least 60 s old.
        for s in 2..=20u64 {
            let n = s as f64 * 100.0;
            r.record(t0 + Duration::from_secs(s * 10), "p", c(n, n, 0.5, 50.0));
        }
        let got = r.rates("p").expect("rates");
        assert_eq!(got.window_seconds, 60.0);
        assert_eq!(got.in_per_second, 10.0);
        assert_eq!(
            got.latency_ms, None,
            "no forward latency recorded in the window"
        );
        // Polling storms do not grow the history.
        for ms in 0..1000u64 {
            let n = 2000.0 + ms as f64;
            r.record(
                t0 + Duration::from_millis(200_000 + ms),
                "p",
                c(n, n, 0.5, 50.0),
            );
        }
        assert!(r.history["p"].len() <= 8, "{}", r.history["p"].len());
        // A reset counter (pipe restarted) starts over.
        r.record(t0 + Duration::from_secs(210), "p", c(1.0, 1.0, 0.0, 0.0));
        assert_eq!(r.rates("p"), None);
        r.retain(&[]);
        assert!(r.history.is_empty());
    }

    #[test]
    fn html_escapes_and_shows_values() {
        let readiness = super::super::health::readiness(
            vec![super::super::health::BrokerStatus {
                name: "cloud".into(),
                kind: BrokerKind::Remote,
                required: true,
                connected: false,
                endpoint: Some("<x>".into()),
            }],
            vec![],
        );
        let s = status(
            readiness,
            Duration::from_secs(7),
            &Scrape::parse(TEXT),
            &Rates::default(),
        );
        let html = render_html(&s);
        assert!(html.contains("&lt;x&gt;"), "endpoint escaped");
        assert!(!html.contains("<x>"));
        assert!(html.contains("not ready"));
        assert!(
            html.contains("<td class=\"n\">0</td>"),
            "failovers default to 0"
        );
    }
}
