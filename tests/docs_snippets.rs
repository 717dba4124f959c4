//! Every ```yaml block in `README.md` and `docs/*.md` is checked; none escapes.
//!
//! The rule, by the HTML comment on the last non-blank line before the block:
//!
//! - no marker: the block is a whole `bridges.yaml` and must compile with the
//!   config loader (warnings allowed).
//! - `<!-- snippet: remote -->`: the fields of one `type: remote` broker; it is
//!   indented under `brokers: {cloud: {type: remote}}` (with
//!   `endpoints: [mqtts://broker.example.com:8883]` unless the block has its
//!   own) and must compile.
//! - `<!-- snippet: pipes -->`: a `pipes:` map; built-in brokers `edge` and
//!   `cloud` are added and it must compile.
//! - `<!-- snippet: invalid: TEXT -->`: must fail to compile with an error
//!   containing TEXT.
//! - `<!-- snippet: prometheus -->`: not ours: a Prometheus scrape config,
//!   which must parse and scrape mqbridge's default `metrics.listen`.
//!
//! Any other marker, and a ```yml block, fail the test. Files a block names
//! (`*_file: PATH`) are given real files under a temporary root (absolute
//! paths are moved under it): the example CA, client certificate and key
//! from `examples/certs/`, or a one-line text for password and ACL files.

mod common;

use std::path::Path;

use common::docs::{Block, code_blocks, doc_files, repo};
use mqbridge::config::{self, LoadOptions};

/// Variables the snippets use, with a value; everything else is unset.
fn vars(name: &str) -> Option<String> {
    match name {
        // configuration.md: the remote broker's password and the WebSocket API key.
        "CLOUD_PASSWORD" | "CLOUD_API_KEY" => Some("secret".into()),
        _ => None,
    }
}

/// How a block is checked.
#[derive(Debug, PartialEq)]
enum Kind {
    Whole,
    Remote,
    Pipes,
    Invalid(String),
    Prometheus,
}

fn kind(before: &str) -> Result<Kind, String> {
    let Some(marker) = before
        .trim()
        .strip_prefix("<!-- snippet:")
        .and_then(|m| m.strip_suffix("-->"))
        .map(str::trim)
    else {
        return Ok(Kind::Whole);
    };
    match marker {
        "remote" => Ok(Kind::Remote),
        "pipes" => Ok(Kind::Pipes),
        "prometheus" => Ok(Kind::Prometheus),
        m => match m.strip_prefix("invalid:") {
            Some(text) if !text.trim().is_empty() => Ok(Kind::Invalid(text.trim().to_owned())),
            _ => Err(format!("unknown snippet marker {before:?}")),
        },
    }
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

/// The block as a whole config, by its kind.
fn wrap(kind: &Kind, text: &str) -> String {
    match kind {
        Kind::Whole | Kind::Invalid(_) | Kind::Prometheus => text.to_owned(),
        Kind::Remote => {
            let endpoints = if text.lines().any(|l| l.starts_with("endpoints:")) {
                ""
            } else {
                "    endpoints: [mqtts://broker.example.com:8883]\n"
            };
            format!(
                "brokers:\n  cloud:\n    type: remote\n{endpoints}{}",
                indent(text, "    ")
            )
        }
        Kind::Pipes => format!(
            "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:1883]\n  \
             cloud:\n    type: builtin\n    listen: [tcp://127.0.0.1:1884]\n{text}"
        ),
    }
}

/// Gives every `*_file: PATH` of `text` a real file under `root`; returns the
/// text with absolute paths moved under `root`.
fn provide_files(text: &str, root: &Path) -> String {
    let re = regex::Regex::new(r"(?m)^[\s-]*(\w+_file):\s*([^\s#]+)").expect("regex");
    let certs = repo().join("examples/certs");
    let mut out = text.to_owned();
    for c in re.captures_iter(text) {
        let (key, path) = (&c[1], &c[2]);
        let source = match key {
            "ca_file" | "client_ca_file" => Some("ca.pem"),
            "cert_file" => Some("client.pem"),
            "key_file" => Some("client.key"),
            _ => None,
        };
        let dest = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        match source {
            Some(f) => std::fs::copy(certs.join(f), &dest).map(drop),
            None => std::fs::write(&dest, "# a file the snippet names\n"),
        }
        .expect("write snippet file");
        if path.starts_with('/') {
            out = out.replace(path, &dest.display().to_string());
        }
    }
    out
}

/// Checks one block; `Err` says what is wrong.
fn check(block: &Block) -> Result<(), String> {
    let kind = kind(&block.before)?;
    if kind == Kind::Prometheus {
        return check_prometheus(&block.text);
    }
    let root = tempfile::tempdir().expect("tempdir");
    let text = provide_files(&wrap(&kind, &block.text), root.path());
    let name = root.path().join("bridges.yaml").display().to_string();
    let result = config::load_str_with(&text, &name, &LoadOptions { vars: &vars });
    match (kind, result) {
        (Kind::Invalid(want), Err(e)) if e.to_string().contains(&want) => Ok(()),
        (Kind::Invalid(want), Err(e)) => Err(format!("fails, but not with {want:?}: {e}")),
        (Kind::Invalid(_), Ok(_)) => Err("marked invalid, but compiles".into()),
        (_, Ok(_)) => Ok(()),
        (_, Err(e)) => Err(format!("does not compile:\n{e}\n--- as compiled:\n{text}")),
    }
}

fn check_prometheus(text: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let targets: Vec<&str> = v["scrape_configs"]
        .as_array()
        .ok_or("no scrape_configs list")?
        .iter()
        .flat_map(|job| job["static_configs"].as_array().into_iter().flatten())
        .flat_map(|s| s["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t.as_str())
        .collect();
    let listen = mqbridge::config::raw::defaults::metrics_listen();
    targets
        .contains(&listen)
        .then_some(())
        .ok_or_else(|| format!("no target {listen} in {targets:?}"))
}

#[test]
fn markers_and_wrapping_follow_the_rule() {
    assert_eq!(kind("some prose"), Ok(Kind::Whole));
    assert_eq!(kind("<!-- snippet: remote -->"), Ok(Kind::Remote));
    assert_eq!(
        kind("<!-- snippet: invalid: unknown broker -->"),
        Ok(Kind::Invalid("unknown broker".into()))
    );
    assert!(kind("<!-- snippet: fragment -->").is_err());
    assert!(kind("<!-- snippet: invalid: -->").is_err());
    let block = |before: &str, text: &str| Block {
        lang: "yaml".into(),
        line: 1,
        text: text.into(),
        before: before.into(),
    };
    // A fragment compiles only through its rule, and a wrong one is caught.
    let tls = "tls:\n  ca_file: /etc/mqbridge/ca.pem\n";
    assert_eq!(check(&block("<!-- snippet: remote -->", tls)), Ok(()));
    assert!(check(&block("", tls)).is_err());
    let bad_pipe = "pipes:\n  p: {from: edge, to: clod, topics: [a/#]}\n";
    assert!(check(&block("<!-- snippet: pipes -->", bad_pipe)).is_err());
    let whole_bad = wrap(&Kind::Pipes, bad_pipe);
    assert_eq!(
        check(&block(
            "<!-- snippet: invalid: unknown broker \"clod\" -->",
            &whole_bad
        )),
        Ok(())
    );
    assert!(
        check(&block(
            "<!-- snippet: invalid: something else -->",
            &whole_bad
        ))
        .is_err()
    );
}

#[test]
fn every_yaml_block_in_the_docs_is_checked() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).expect("read doc");
        for block in code_blocks(&text) {
            let at = format!("{}:{}", file.display(), block.line);
            match block.lang.as_str() {
                "yaml" => {
                    checked += 1;
                    if let Err(e) = check(&block) {
                        failures.push(format!("{at}: {e}"));
                    }
                }
                "yml" => failures.push(format!("{at}: write ```yaml, not ```yml")),
                _ => {}
            }
        }
    }
    assert!(checked >= 9, "only {checked} yaml blocks found");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
