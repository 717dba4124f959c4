//! Config fixtures: every `tests/config/invalid/*.yaml` must fail with exactly
//! the text in its `*.err` twin; every `tests/config/valid/*.yaml`, the shipped
//! `bridges.yaml` and every `examples/*.yaml` must compile.
//!
//! Set `MQBRIDGE_BLESS=1` to (re)write the `.err` files from the current output
//! (then review the diff).

use std::path::{Path, PathBuf};

use mqbridge::config::{self, LoadOptions};

/// Variables the fixtures may use; everything else is unset, whatever the
/// environment of the test process holds.
fn vars(name: &str) -> Option<String> {
    match name {
        "MQBRIDGE_TEST_SET" => Some("set".into()),
        _ => None,
    }
}

fn load(path: &Path) -> Result<(config::Plan, Vec<config::Warning>), config::ConfigErrors> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let opts = LoadOptions { vars: &vars };
    config::load_str_with(&text, &path.display().to_string(), &opts)
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn invalid_fixtures_fail_with_their_expected_errors() {
    let bless = std::env::var_os("MQBRIDGE_BLESS").is_some();
    let files = yaml_files("tests/config/invalid");
    assert!(files.len() >= 30, "only {} invalid fixtures", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let got = match load(path) {
            Ok(_) => "(no error: the config was accepted)".to_string(),
            Err(e) => format!("{e}\n"),
        };
        let err_path = path.with_extension("err");
        if bless {
            std::fs::write(&err_path, &got).unwrap_or_else(|e| panic!("{e}"));
            continue;
        }
        let want = std::fs::read_to_string(&err_path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with MQBRIDGE_BLESS=1)", err_path.display()));
        if got != want {
            failures.push(format!("{}:\n  want: {want}  got:  {got}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn valid_fixtures_compile() {
    let files = yaml_files("tests/config/valid");
    assert!(files.len() >= 4);
    for path in files {
        if let Err(e) = load(&path) {
            panic!("{} should be valid:\n{e}", path.display());
        }
    }
}

#[test]
fn shipped_bridges_yaml_and_examples_validate() {
    let mut files = yaml_files("examples");
    files.push(PathBuf::from("bridges.yaml"));
    assert!(files.len() >= 4);
    for path in files {
        match load(&path) {
            Ok((plan, warnings)) => {
                assert!(warnings.is_empty(), "{}: {warnings:?}", path.display());
                assert!(!plan.pipes.is_empty(), "{}: no pipes", path.display());
            }
            Err(e) => panic!("{} should be valid:\n{e}", path.display()),
        }
    }
}

#[test]
fn every_field_fixture_resolves_as_written() {
    use config::{BrokerKind, DropPolicy, QosRule, RetainRule};
    use mqbridge::protocol::QoS;
    use std::time::Duration;
    let (plan, _) =
        load(Path::new("tests/config/valid/every-field.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(plan.watchdog.stall_after, Duration::from_secs(120));
    let Some(BrokerKind::Remote(r)) = plan.brokers.get("cloud").map(|b| &b.kind) else {
        panic!("cloud is not remote");
    };
    assert_eq!(r.endpoints[1].host, "2001:db8::1");
    assert_eq!(r.password.as_deref(), Some("cloud-password-example"));
    assert_eq!(r.keepalive, Duration::from_secs(65_535));
    assert!(r.clean_session);
    assert_eq!(r.reconnect.min, Duration::from_millis(250));
    assert!(!r.reconnect.jitter);
    assert_eq!(r.inflight, 65_535);
    assert_eq!(r.max_packet_size, 1 << 20);
    let tls = r.tls.as_ref().unwrap_or_else(|| panic!("no tls"));
    assert_eq!(tls.alpn, vec!["x-amzn-mqtt-ca".to_string()]);
    assert!(
        tls.cert_file
            .as_ref()
            .is_some_and(|p| p.ends_with("examples/certs/client.pem"))
    );
    assert_eq!(
        r.status
            .as_ref()
            .map(|s| (s.online.as_str(), s.offline.as_str())),
        Some(("1", "0"))
    );
    let Some(BrokerKind::BuiltIn(b)) = plan.brokers.get("edge").map(|b| &b.kind) else {
        panic!("edge is not built-in");
    };
    assert!(!b.allow_anonymous);
    assert_eq!(b.listeners.len(), 2);
    assert!(
        b.listeners[1]
            .tls
            .as_ref()
            .is_some_and(|t| t.cert_cn_as_username)
    );
    assert_eq!(b.limits.max_packet_size, 64 * 1024);
    assert_eq!(b.limits.handshake_timeout, Duration::from_secs(4));
    assert_eq!(
        (
            b.limits.max_pending_handshakes,
            b.limits.max_pending_per_ip,
            b.limits.max_topic_levels,
            b.limits.max_filters_per_subscribe,
            b.limits.max_subscriptions_per_client,
            b.limits.max_trie_nodes,
            b.limits.topic_alias_maximum
        ),
        (300, 8, 50, 20, 40, 5000, 0)
    );
    let p = plan.pipes.get("up").unwrap_or_else(|| panic!("no pipe"));
    assert_eq!(p.filters[1], ("alarms/+".to_string(), QoS::AtLeastOnce));
    assert_eq!(p.qos, QosRule::Force(QoS::AtLeastOnce));
    assert_eq!(p.retain, RetainRule::Clear);
    assert_eq!(
        p.properties,
        config::PropertiesPlan {
            remap_response_topic: true,
            remove: vec!["debug".into()],
            add: vec![("site".into(), "1".into())],
            hops: Some(config::HopPlan {
                property: "hops".into(),
                max_hops: 4
            }),
        }
    );
    assert_eq!(p.max_payload, Some(256 * 1024));
    assert_eq!(p.queue.when_full, DropPolicy::DropNewest);
    assert_eq!(
        p.remap.apply("sensors/a/t").ok().as_deref(),
        Some("site/1/a/t")
    );
    assert_eq!(
        p.remap.apply("alarms/fire").ok().as_deref(),
        Some("site/1/alarm/fire")
    );
    assert_eq!(
        p.remap.apply("$SYS/broker/uptime").ok().as_deref(),
        Some("site/1/sys/uptime")
    );
}
