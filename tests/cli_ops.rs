//! `mqbridge health`, `status`, `completions` and `man` as a user runs them:
//! the binary against a live in-process bridge (ready, then not ready) and
//! against nothing.

mod common;

use std::process::Output;
use std::time::Duration;

use common::bridge::{Sub, publish, start_run, stop_run, unique};
use common::http::readyz_becomes;
use common::mosquitto::{Mosquitto, free_port};
use common::process::mqbridge;

/// Runs the binary with `args` without blocking the runtime (bounded).
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::from(mqbridge());
    cmd.args(args)
        .env_remove("MQBRIDGE_METRICS_LISTEN")
        .env_remove("MQBRIDGE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("mqbridge exits")
        .expect("run mqbridge")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_readyz_and_status_shows_brokers_and_pipes() {
    let mut cloud = Mosquitto::start();
    let p = unique("ops");
    let yaml = format!(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n  \
         cloud:\n    type: remote\n    endpoints: [mqtt://127.0.0.1:{port}]\n    client_id: {p}\n    \
         reconnect: {{ min: 50ms, max: 500ms }}\n\
         pipes:\n  up:\n    from: edge\n    to: cloud\n    topics: [{p}/#]\n    max_payload: 8\n",
        port = cloud.port
    );
    let (token, run_handle) = start_run(&yaml).await;
    let metrics = run_handle.metrics_addr().expect("metrics");
    let url = format!("http://{metrics}");
    readyz_becomes(metrics, 200).await;

    // Ready: exit 0, by --url and by MQBRIDGE_METRICS_LISTEN (0.0.0.0 → loopback).
    let out = run(&["health", "--url", &url], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{url}/readyz: ready\n"));
    let listen = format!("0.0.0.0:{}", metrics.port());
    let out = run(&["health"], &[("MQBRIDGE_METRICS_LISTEN", &listen)]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Traffic, one forwarded and one dropped as oversize, then the tables.
    let edge = run_handle.builtin_addrs("edge").expect("edge")[0].port();
    let mut sub = Sub::start(cloud.port, &unique("sub"), &format!("{p}/#"), 1, false).await;
    publish(edge, &format!("{p}/t"), "21.5", 1, false).await;
    publish(edge, &format!("{p}/big"), "far too large", 1, false).await;
    sub.next().await.expect("forwarded");
    common::http::metric_becomes(
        metrics,
        r#"mqbridge_pipe_messages_dropped_total{pipe="up",reason="oversize"}"#,
        1.0,
    )
    .await;
    let out = run(&["status", "--url", &url], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let row = |first: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(first))
            .unwrap_or_else(|| panic!("no {first} row in:\n{table}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(table.lines().next(), Some("status: ready"), "{table}");
    assert_eq!(
        row("cloud"),
        [
            "cloud",
            "remote",
            "yes",
            &format!("mqtt://127.0.0.1:{}", cloud.port),
            "0",
            "-"
        ]
    );
    assert_eq!(row("edge")[..3], ["edge", "builtin", "yes"]);
    let up = row("up");
    assert_eq!(
        up[..7],
        ["up", "cloud", "idle", "2", "1", "1", "(oversize=1)"],
        "{table}"
    );

    // The destination goes away: not ready, exit 1 with the reason.
    drop(sub);
    cloud.kill_on_drop(true);
    drop(cloud);
    readyz_becomes(metrics, 503).await;
    let out = run(&["health", "--url", &url], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("not ready (HTTP 503)") && err.contains("broker cloud is not connected"),
        "{err}"
    );
    let out = run(&["status", "--url", &url], &[]).await;
    assert!(out.status.success());
    let table = text(&out.stdout);
    assert!(
        table.starts_with("status: not_ready\n  - broker cloud is not connected\n"),
        "{table}"
    );

    stop_run(token, run_handle).await;
}

#[tokio::test]
async fn health_and_status_fail_when_nothing_answers() {
    let url = format!("http://127.0.0.1:{}", free_port());
    for cmd in ["health", "status"] {
        let out = run(&[cmd, "--url", &url], &[]).await;
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = text(&out.stderr);
        assert!(
            err.starts_with(&format!("error: GET {url}/readyz: ")),
            "{cmd}: {err}"
        );
    }
}

#[tokio::test]
async fn completions_for_each_shell_name_every_subcommand() {
    let subcommands = [
        "run",
        "validate",
        "route",
        "health",
        "status",
        "completions",
        "man",
    ];
    for (shell, marker) in [
        ("bash", "_mqbridge()"),
        ("zsh", "#compdef mqbridge"),
        ("fish", "complete -c mqbridge"),
    ] {
        let out = run(&["completions", shell], &[]).await;
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: no {marker}");
        for sub in subcommands {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
        assert!(script.contains("check-endpoints"), "{shell}: flags too");
    }
    let out = run(&["completions", "tcsh"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "unknown shell is a usage error");
}

#[tokio::test]
async fn man_page_is_generated_from_the_cli_definition() {
    let out = run(&["man"], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(page.contains(".TH mqbridge 1"), "{page}");
    assert!(page.contains(env!("CARGO_PKG_VERSION")));
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "no {section}");
    }
    for sub in ["validate", "route", "health", "status", "completions"] {
        assert!(
            page.contains(&format!("mqbridge\\-{sub}")),
            "no {sub} in:\n{page}"
        );
    }
    // The global flags with their help text.
    assert!(page.contains("\\-\\-log\\-level"), "{page}");
    assert!(page.contains("Log level or filter"), "{page}");
}
