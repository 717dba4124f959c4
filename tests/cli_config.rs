//! `mqbridge validate` and `mqbridge route`, run as a user runs them.

use std::path::Path;
use std::process::{Command, Output};

fn mqbridge(args: &[&str], dir: &Path, envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mqbridge"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("MQBRIDGE_CONFIG")
        .env_remove("MQBRIDGE_DATA_DIR");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run mqbridge: {e}"))
}

/// `mqbridge route -c <file> --from <from> <topic>` in `dir`.
fn route(dir: &Path, file: &str, from: &str, topic: &str) -> Output {
    mqbridge(&["route", "-c", file, "--from", from, topic], dir, &[])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Writes `yaml` as `name` into a fresh temp dir and returns the dir.
fn config(name: &str, yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join(name), yaml).unwrap_or_else(|e| panic!("{e}"));
    dir
}

const CHAIN: &str = "\
brokers:
  edge: {type: builtin, listen: ['tcp://127.0.0.1:0']}
  cloud: {type: builtin, listen: ['tcp://127.0.0.1:0']}
  archive: {type: builtin, listen: ['tcp://127.0.0.1:0']}
pipes:
  up:
    from: edge
    to: cloud
    topics: ['sensors/#']
    exclude: ['sensors/+/debug/#']
    remap: [{add_prefix: site1/}]
  keep:
    from: cloud
    to: archive
    topics: ['site1/#']
    remap: [{from: 'site1/sensors/+/#', to: 'archive/{1}/{#}'}]
";

#[test]
fn validate_default_config_prints_the_plan() {
    let out = mqbridge(&["validate"], manifest_dir(), &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("edge (built-in)"), "{stdout}");
    assert!(stdout.contains("listen: tcp://127.0.0.1:1883"), "{stdout}");
    assert!(stdout.contains("edge-to-cloud: edge → cloud"), "{stdout}");
    assert!(stdout.contains("exclude: sensors/+/debug/#"), "{stdout}");
    assert!(stdout.contains("devices/{1}/cmd/{#}"), "{stdout}");
    assert!(stdout.ends_with("bridges.yaml: ok\n"), "{stdout}");
}

#[test]
fn validate_reports_every_error_with_location_and_exit_1() {
    let dir = config(
        "bad.yaml",
        "brokers:\n  edge: {type: builtin, listen: ['tcp://127.0.0.1:0']}\npipes:\n  up:\n    from: edge\n    to: clod\n    topics: ['a/#/b']\n",
    );
    let out = mqbridge(&["validate", "--config", "bad.yaml"], dir.path(), &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr,
        "bad.yaml:6:9: pipe \"up\": unknown broker \"clod\" (known: edge)\n\
         bad.yaml:7:14: pipe \"up\": topics: invalid filter `a/#/b`: it has '#' in level 2 followed by more levels; '#' must be the last level\n\
         2 errors in bad.yaml\n"
    );
}

#[test]
fn validate_takes_the_config_from_the_environment_and_substitutes_variables() {
    let dir = config(
        "env.yaml",
        "brokers:\n  cloud:\n    type: remote\n    endpoints: ['mqtt://${CLOUD_HOST}:1883']\n",
    );
    let ok = mqbridge(
        &["validate"],
        dir.path(),
        &[
            ("MQBRIDGE_CONFIG", "env.yaml"),
            ("CLOUD_HOST", "broker.example"),
        ],
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("endpoints: mqtt://broker.example:1883"));
    let missing = mqbridge(
        &["validate"],
        dir.path(),
        &[("MQBRIDGE_CONFIG", "env.yaml")],
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).starts_with("env.yaml:4:17: broker \"cloud\": endpoints: environment variable `CLOUD_HOST` is not set"),
        "{}",
        text(&missing.stderr)
    );
}

#[test]
fn validate_missing_file_fails_clearly() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = mqbridge(&["validate", "-c", "nope.yaml"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("nope.yaml: cannot read the config file:"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn validate_prints_warnings_and_still_succeeds() {
    let dir = config(
        "dup.yaml",
        "brokers:\n  a: {type: builtin, listen: ['tcp://127.0.0.1:0']}\n  b: {type: builtin, listen: ['tcp://127.0.0.1:0']}\npipes:\n  all: {from: a, to: b, topics: ['#']}\n  some: {from: a, to: b, topics: ['x/+']}\n",
    );
    let out = mqbridge(&["validate", "-c", "dup.yaml"], dir.path(), &[]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("warning: dup.yaml:5:3: pipe \"all\": duplicate: a message published on a: x/x reaches b: x/x twice"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn route_follows_multiple_hops() {
    let dir = config("chain.yaml", CHAIN);
    let out = route(dir.path(), "chain.yaml", "edge", "sensors/pump1/pressure");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The rule descriptions come from the topic module; check the hops and topics exactly.
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0], "edge: sensors/pump1/pressure");
    assert!(
        lines[1].starts_with("  pipe up (matches `sensors/#`, remapped by prefix"),
        "{stdout}"
    );
    assert!(
        lines[1].ends_with(") → cloud: site1/sensors/pump1/pressure"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("    pipe keep (matches `site1/#`, remapped by template"),
        "{stdout}"
    );
    assert!(
        lines[2].ends_with(") → archive: archive/pump1/pressure"),
        "{stdout}"
    );
    assert_eq!(
        lines[3],
        "      stops: no pipe starts at broker \"archive\""
    );
}

#[test]
fn route_shows_exclusions_and_non_matches() {
    let dir = config("chain.yaml", CHAIN);
    let out = route(dir.path(), "chain.yaml", "edge", "sensors/pump1/debug/raw");
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout),
        "edge: sensors/pump1/debug/raw\n  pipe up → cloud: stops: excluded by `sensors/+/debug/#`\n"
    );
    let out = route(dir.path(), "chain.yaml", "edge", "other/topic");
    assert_eq!(
        text(&out.stdout),
        "edge: other/topic\n  pipe up → cloud: stops: no filter matches\n"
    );
}

#[test]
fn route_shows_a_loop() {
    let dir = config(
        "loop.yaml",
        "brokers:\n  a: {type: builtin, listen: ['tcp://127.0.0.1:0']}\n  b: {type: builtin, listen: ['tcp://127.0.0.1:0']}\npipes:\n  ab: {from: a, to: b, topics: ['#'], loop_check: false}\n  ba: {from: b, to: a, topics: ['#'], loop_check: false}\n",
    );
    let out = route(dir.path(), "loop.yaml", "a", "t/1");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "a: t/1\n\
         \x20 pipe ab (matches `#`) → b: t/1\n\
         \x20   pipe ba (matches `#`) → a: t/1\n\
         \x20     LOOP: broker \"a\" was already passed, and pipe ab would forward it again\n"
    );
}

#[test]
fn route_rejects_unknown_brokers_and_wildcard_topics() {
    let dir = config("chain.yaml", CHAIN);
    let out = route(dir.path(), "chain.yaml", "nowhere", "a");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown broker \"nowhere\" (known: archive, cloud, edge)"));
    let out = route(dir.path(), "chain.yaml", "edge", "a/#");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("`a/#` is not a valid topic name"));
}

#[test]
fn route_traces_a_config_refused_for_its_loop() {
    // Without `loop_check: false`: `validate` refuses this file, and that is
    // exactly when the trace is wanted.
    let dir = config(
        "loop.yaml",
        "brokers:\n  a: {type: builtin, listen: ['tcp://127.0.0.1:0']}\n  b: {type: builtin, listen: ['tcp://127.0.0.1:0']}\npipes:\n  ab: {from: a, to: b, topics: ['#']}\n  ba: {from: b, to: a, topics: ['#']}\n",
    );
    let out = mqbridge(&["validate", "-c", "loop.yaml"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let out = route(dir.path(), "loop.yaml", "a", "t/1");
    assert_eq!(out.status.code(), Some(1), "a loop still exits 1");
    assert_eq!(
        text(&out.stdout),
        "a: t/1\n\
         \x20 pipe ab (matches `#`) → b: t/1\n\
         \x20   pipe ba (matches `#`) → a: t/1\n\
         \x20     LOOP: broker \"a\" was already passed, and pipe ab would forward it again\n"
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("loop.yaml:"), "{stderr}");
    assert!(stderr.contains(": loop: "), "{stderr}");
    assert!(stderr.contains("traced anyway"), "{stderr}");
}

#[test]
fn route_still_refuses_a_config_with_other_errors() {
    let dir = config(
        "bad.yaml",
        "brokers:\n  a: {type: builtin, listen: ['tcp://127.0.0.1:0']}\npipes:\n  ab: {from: a, to: nowhere, topics: ['#']}\n",
    );
    let out = route(dir.path(), "bad.yaml", "a", "t/1");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("unknown broker"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn default_client_id_is_stable_and_host_derived_ids_warn() {
    let yaml = "brokers:\n  cloud:\n    type: remote\n    endpoints: [mqtt://a:1883]\n  c2:\n    type: remote\n    endpoints: [mqtt://b:1883]\n    client_id: gw-${HOSTNAME}\n  edge: {type: builtin, listen: ['tcp://127.0.0.1:0']}\npipes:\n  up: {from: edge, to: cloud, topics: [a/#]}\n  up2: {from: edge, to: c2, topics: [b/#]}\n";
    let dir = config("site.yaml", yaml);
    // Two "containers" with different host names: the default id is the same.
    let mut defaults = Vec::new();
    for host in ["3f2a9c1b7d4e", "mqbridge-7d9f8b6c5-x2k4q"] {
        let out = mqbridge(
            &["validate", "-c", "site.yaml"],
            dir.path(),
            &[("HOSTNAME", host)],
        );
        let stdout = text(&out.stdout);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stdout.contains("cloud (remote, client id mqbridge-site-cloud)"),
            "{stdout}"
        );
        defaults.push(
            stdout
                .lines()
                .find(|l| l.contains("cloud (remote"))
                .map(str::to_owned),
        );
        assert!(
            stderr.contains("site.yaml:8:16: broker \"c2\": client_id: uses `${HOSTNAME}`"),
            "{stderr}"
        );
    }
    assert_eq!(defaults[0], defaults[1]);
}
