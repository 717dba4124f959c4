//! A failed TLS handshake on a built-in listener (issue 9 item 6): a client
//! presenting a certificate the listener does not trust is logged at WARN
//! and counted as `refused{reason="tls"}`, not as `protocol`.

mod common;

use common::certs;
use common::http::{metric_becomes, scrape, value};
use common::mosquitto::{free_port, mosquitto_pub_output};
use common::process::{JsonLogRun, LOG_WAIT, config_file};

/// Reads log lines until the metrics server announces its address.
fn metrics_addr(bridge: &JsonLogRun) -> std::net::SocketAddr {
    let mut seen = Vec::new();
    loop {
        let Ok(line) = bridge.lines.recv_timeout(LOG_WAIT) else {
            panic!("no metrics address logged; got:\n{}", seen.join("\n"));
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        if v["message"] == "serving /metrics, /healthz, /readyz"
            && let Some(addr) = v["addr"].as_str()
        {
            return addr.parse().expect("metrics addr");
        }
        seen.push(line);
    }
}

#[tokio::test]
async fn untrusted_client_certificate_is_warned_and_counted_as_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::generate(dir.path(), "trusted");
    let rogue = certs::generate(dir.path(), "rogue");
    let port = free_port();
    let cfg = config_file(&format!(
        "brokers:\n  edge:\n    type: builtin\n    listen:\n      - url: tls://127.0.0.1:{port}\n        cert_file: {}\n        key_file: {}\n        client_ca_file: {}\n        require_client_cert: true\n  cloud:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\npipes:\n  up:\n    from: edge\n    to: cloud\n    topics: [tlsf/#]\nmetrics:\n  listen: 127.0.0.1:0\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display(),
    ));
    let bridge = JsonLogRun::spawn(&[], cfg.path());
    let metrics = metrics_addr(&bridge);
    let edge: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = |p: &certs::Pki| {
        vec![
            "--cafile".to_string(),
            pki.ca.display().to_string(),
            "--cert".into(),
            p.client_cert.display().to_string(),
            "--key".into(),
            p.client_key.display().to_string(),
            "-t".into(),
            "tlsf/x".into(),
            "-m".into(),
            "x".into(),
        ]
    };
    let args = client(&pki);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = mosquitto_pub_output(edge, &args).await;
    assert!(
        out.status.success(),
        "the trusted client gets in: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let args = client(&rogue);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = mosquitto_pub_output(edge, &args).await;
    assert!(
        !out.status.success(),
        "a certificate from another CA is refused"
    );

    let line = bridge.wait_message("TLS handshake failed, connection closed");
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["broker"], "edge", "{line}");
    assert!(
        line["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{line}"
    );
    metric_becomes(
        metrics,
        r#"mqbridge_broker_connections_refused_total{broker="edge",reason="tls"}"#,
        1.0,
    )
    .await;
    let body = scrape(metrics).await;
    assert_eq!(
        value(
            &body,
            r#"mqbridge_broker_connections_refused_total{broker="edge",reason="protocol"}"#
        ),
        Some(0.0),
        "a TLS failure is not a protocol refusal"
    );
}
