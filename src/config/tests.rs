//! Compile and graph tests on whole configs (fixtures under `tests/config/`
//! cover one error each; these cover the analysis and combinations).

use super::*;

const HEAD: &str = "brokers:\n  edge: {type: builtin, listen: ['tcp://127.0.0.1:0']}\n  cloud: {type: builtin, listen: ['tcp://127.0.0.1:0']}\n  third: {type: builtin, listen: ['tcp://127.0.0.1:0']}\npipes:\n";

fn vars(name: &str) -> Option<String> {
    match name {
        "CLOUD_HOST" => Some("cloud.example.com".into()),
        "SECRET" => Some("s3cret".into()),
        _ => None,
    }
}

fn load(yaml: &str) -> Result<(Plan, Vec<Warning>), ConfigErrors> {
    let opts = LoadOptions { vars: &vars };
    load_str_with(yaml, "t.yaml", &opts)
}

fn pipes(body: &str) -> String {
    format!("{HEAD}{body}")
}

fn errors(yaml: &str) -> Vec<String> {
    match load(yaml) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.iter().map(|d| d.to_string()).collect(),
    }
}

fn warnings(yaml: &str) -> Vec<String> {
    match load(yaml) {
        Ok((_, w)) => w.iter().map(|d| d.to_string()).collect(),
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn loops(yaml: &str) -> Vec<String> {
    errors(yaml)
        .into_iter()
        .filter(|e| e.contains("loop: ") || e.contains("own output"))
        .collect()
}

#[test]
fn hash_both_ways_is_one_loop_with_a_path() {
    let e = loops(&pipes(
        "  up: {from: edge, to: cloud, topics: ['#']}\n  down: {from: cloud, to: edge, topics: ['#']}\n",
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with(
            "t.yaml:7:3: pipe \"down\": loop: cloud: x → (pipe down) edge: x → (pipe up) cloud: x"
        ),
        "{}",
        e[0]
    );
}

#[test]
fn remaps_that_map_back_are_a_loop() {
    let e = loops(&pipes(
        "  up: {from: edge, to: cloud, topics: [a/#], remap: [{strip_prefix: a/, add_prefix: b/}]}\n  down: {from: cloud, to: edge, topics: [b/#], remap: [{strip_prefix: b/, add_prefix: a/}]}\n",
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].contains("cloud: b/x → (pipe down) edge: a/x → (pipe up) cloud: b/x"),
        "{}",
        e[0]
    );
}

#[test]
fn prefixes_both_ways_without_a_loop_are_valid() {
    let w = warnings(&pipes(
        "  up: {from: edge, to: cloud, topics: ['sensors/#'], remap: [{add_prefix: edge/}]}\n  down: {from: cloud, to: edge, topics: ['cmd/edge/#'], remap: [{strip_prefix: cmd/edge/, add_prefix: cmd/}]}\n",
    ));
    assert!(w.is_empty(), "{w:#?}");
}

#[test]
fn dollar_topics_do_not_meet_leading_wildcards() {
    // `#` never matches `$SYS/...`, so `$SYS` going up does not come back.
    let ok = pipes(
        "  up: {from: edge, to: cloud, topics: ['$SYS/#']}\n  down: {from: cloud, to: edge, topics: ['#', '+/x']}\n",
    );
    assert!(loops(&ok).is_empty(), "{:#?}", loops(&ok));
    let bad = pipes(
        "  up: {from: edge, to: cloud, topics: ['$SYS/#']}\n  down: {from: cloud, to: edge, topics: ['$SYS/+/x']}\n",
    );
    let e = loops(&bad);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].contains("$SYS/x/x"), "{}", e[0]);
}

#[test]
fn overlapping_wildcards_meet() {
    // Neither `+/b/#` nor `a/+/c` alone says `a/b/c`, but both match it.
    let e = loops(&pipes(
        "  up: {from: edge, to: cloud, topics: ['+/b/#']}\n  down: {from: cloud, to: edge, topics: ['a/+/c']}\n",
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].contains("a/b/c"), "{}", e[0]);
}

#[test]
fn remap_that_loops_only_for_some_topics() {
    // Only `b/special/...` comes back down, as `a/...`, which goes up again.
    let cfg = pipes(
        "  up: {from: edge, to: cloud, topics: [a/#], remap: [{from: a/#, to: 'b/{#}'}]}\n  down: {from: cloud, to: edge, topics: ['c/#', 'b/special/#'], remap: [{from: b/special/#, to: 'a/{#}'}]}\n",
    );
    let e = loops(&cfg);
    assert_eq!(e.len(), 1, "{e:#?}");
    // The example is concrete: a `special` topic crosses both pipes and is taken again.
    assert!(
        e[0].contains("(pipe up) cloud: b/special") && e[0].contains("(pipe down) edge: a"),
        "{}",
        e[0]
    );
    // Excluding the returning topics on the way up breaks the loop.
    let fixed = cfg.replace("topics: [a/#]", "topics: [a/#], exclude: [a/special/#]");
    assert!(loops(&fixed).is_empty(), "{:#?}", loops(&fixed));
}

#[test]
fn three_hop_loop() {
    let e = loops(&pipes(
        "  ab: {from: edge, to: cloud, topics: ['t/#']}\n  bc: {from: cloud, to: third, topics: ['t/#']}\n  ca: {from: third, to: edge, topics: ['t/+/x']}\n",
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].contains("(pipe ab) cloud: t/x/x → (pipe bc) third: t/x/x → (pipe ca) edge: t/x/x"),
        "{}",
        e[0]
    );
}

#[test]
fn loop_check_false_opts_out() {
    let w = warnings(&pipes(
        "  up: {from: edge, to: cloud, topics: ['#'], loop_check: false}\n  down: {from: cloud, to: edge, topics: ['#']}\n",
    ));
    assert!(w.iter().all(|w| !w.contains("loop")), "{w:#?}");
}

#[test]
fn echo_is_a_warning_not_an_error() {
    let w = warnings(&pipes(
        "  up: {from: edge, to: cloud, topics: [a/#]}\n  down: {from: cloud, to: edge, topics: [a/#], remap: [{from: a/#, to: 'back/{#}'}]}\n",
    ));
    assert!(
        w.iter()
            .any(|w| w.contains("echo: ") && w.contains("(pipe down) edge: back")),
        "{w:#?}"
    );
}

#[test]
fn duplicate_delivery_is_a_warning_with_an_example() {
    let w = warnings(&pipes(
        "  all: {from: edge, to: cloud, topics: ['#']}\n  some: {from: edge, to: cloud, topics: ['a/+']}\n",
    ));
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].contains("duplicate: a message published on edge: a/x reaches cloud: a/x twice, via pipe all and via pipe some"), "{}", w[0]);
    // Different destination topics are not duplicates.
    let w = warnings(&pipes(
        "  all: {from: edge, to: cloud, topics: ['#']}\n  some: {from: edge, to: cloud, topics: ['a/+'], remap: [{add_prefix: copy/}]}\n",
    ));
    assert!(w.is_empty(), "{w:#?}");
}

#[test]
fn duplicate_over_two_paths() {
    let w = warnings(&pipes(
        "  direct: {from: edge, to: cloud, topics: ['a/#']}\n  hop1: {from: edge, to: third, topics: ['a/#']}\n  hop2: {from: third, to: cloud, topics: ['a/#']}\n",
    ));
    assert!(
        w.iter()
            .any(|w| w.contains("via pipe direct and via pipe hop2")),
        "{w:#?}"
    );
}

#[test]
fn same_broker_pipe_that_takes_its_own_output() {
    let e = loops(&pipes("  self: {from: edge, to: edge, topics: ['a/#']}\n"));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].contains("takes its own output again: a → a"),
        "{}",
        e[0]
    );
    // Republishing under another, non-overlapping prefix on the same broker is fine.
    let w = warnings(&pipes(
        "  self: {from: edge, to: edge, topics: ['a/#'], remap: [{from: a/#, to: 'b/{#}'}]}\n",
    ));
    assert!(w.is_empty(), "{w:#?}");
}

#[test]
fn remote_defaults_are_resolved() {
    let (plan, w) = load(
        "brokers:\n  cloud:\n    type: remote\n    endpoints: ['mqtts://${CLOUD_HOST}', 'mqtt://backup:1884']\n    username: u\n    password: ${SECRET}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(w.is_empty());
    let Some(BrokerKind::Remote(r)) = plan.brokers.get("cloud").map(|b| &b.kind) else {
        panic!("not remote");
    };
    assert_eq!(r.endpoints[0].host, "cloud.example.com");
    assert_eq!(r.endpoints[0].port, 8883);
    assert_eq!(r.client_id, "mqbridge-t-cloud");
    assert_eq!(r.password.as_deref(), Some("s3cret"));
    assert_eq!(r.keepalive, std::time::Duration::from_secs(60));
    assert!(!r.clean_session);
    assert_eq!(
        r.tls,
        Some(TlsPlan {
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
            alpn: vec![],
            insecure: false
        })
    );
    assert_eq!(r.reconnect.max, std::time::Duration::from_secs(60));
    assert_eq!(
        r.reconnect.probe_interval,
        std::time::Duration::from_secs(1)
    );
    assert_eq!(r.failback.probes_required, 3);
    assert_eq!(r.max_packet_size, 268_435_455);
    assert_eq!(r.inflight, 4000);
    assert_eq!(r.protocol, crate::protocol::version::ProtocolChoice::Auto);
    assert_eq!(
        r.status.as_ref().map(|s| s.topic.as_str()),
        Some("mqbridge/mqbridge-t-cloud/status")
    );
    assert!(r.required);
    assert_eq!(plan.metrics.listen.to_string(), "127.0.0.1:9464");
    assert_eq!(plan.shutdown_timeout, std::time::Duration::from_secs(10));
}

#[test]
fn remote_protocol_versions() {
    use crate::protocol::version::{ProtocolChoice, ProtocolVersion};
    for (text, want) in [
        ("'5'", ProtocolVersion::V5),
        ("'3.1.1'", ProtocolVersion::V3_1_1),
        ("'3.1'", ProtocolVersion::V3_1),
    ] {
        let (plan, _) = load(&format!(
            "brokers:\n  r:\n    type: remote\n    endpoints: [mqtt://h:1883]\n    protocol: {text}\n"
        ))
        .unwrap_or_else(|e| panic!("{text}: {e}"));
        let Some(BrokerKind::Remote(r)) = plan.brokers.get("r").map(|b| &b.kind) else {
            panic!("not remote");
        };
        assert_eq!(r.protocol, ProtocolChoice::Only(want), "{text}");
    }
}

#[test]
fn every_error_is_gathered() {
    let e = errors(
        "brokers:\n  cloud:\n    type: remote\n    endpoints: ['ws://x:0']\n    keepalive: 19h\n    inflight: 0\n    reconnect: {min: 2m, max: 1m}\npipes:\n  p: {from: clod, to: cloud, topics: ['a/#/b'], queue: {size: 0}}\n",
    );
    let expected = [
        "t.yaml:4:17: broker \"cloud\": endpoints: `ws://x:0`: port 0 is not a valid destination",
        "t.yaml:5:16: broker \"cloud\": keepalive: at most 18h12m15s (65,535 s, the MQTT maximum); 0 disables it",
        "t.yaml:6:15: broker \"cloud\": inflight: 0 is out of range (allowed 1..=65535)",
        "t.yaml:7:16: broker \"cloud\": reconnect: min (2m) is larger than max (1m)",
        "t.yaml:9:13: pipe \"p\": unknown broker \"clod\" (did you mean \"cloud\"?)",
        "t.yaml:9:39: pipe \"p\": topics: invalid filter `a/#/b`: it has '#' in level 2 followed by more levels; '#' must be the last level",
        "t.yaml:9:63: pipe \"p\": queue.size: must be at least 1",
    ];
    assert_eq!(e, expected);
}

#[test]
fn pipe_plan_equality_compares_remaps() {
    let a = load(&pipes(
        "  p: {from: edge, to: cloud, topics: [a/#], remap: [{regex: 'a/(.*)', replace: 'b/$1'}]}\n",
    ));
    let b = load(&pipes(
        "  p: {from: edge, to: cloud, topics: [a/#], remap: [{regex: 'a/(.*)', replace: 'b/$1'}]}\n",
    ));
    let c = load(&pipes(
        "  p: {from: edge, to: cloud, topics: [a/#], remap: [{regex: 'a/(.*)', replace: 'c/$1'}]}\n",
    ));
    let plan = |r: Result<(Plan, Vec<Warning>), ConfigErrors>| {
        r.map(|(p, _)| p).unwrap_or_else(|e| panic!("{e}"))
    };
    let (a, b, c) = (plan(a), plan(b), plan(c));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn builtin_connect_timeout_is_the_old_name_of_handshake_timeout() {
    let yaml = "brokers:\n  edge: {type: builtin, listen: ['tcp://127.0.0.1:0'], limits: {connect_timeout: 3s}}\n";
    let w = warnings(yaml);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].contains("limits.connect_timeout is now `limits.handshake_timeout`"),
        "{}",
        w[0]
    );
    let Ok((plan, _)) = load(yaml) else {
        panic!("valid");
    };
    let Some(super::BrokerKind::BuiltIn(b)) = plan.brokers.get("edge").map(|b| &b.kind) else {
        panic!("edge is not built-in");
    };
    assert_eq!(
        b.limits.handshake_timeout,
        std::time::Duration::from_secs(3)
    );
}

#[test]
fn builtin_without_any_login_warns() {
    let w = warnings(
        "brokers:\n  edge: {type: builtin, listen: ['tcp://127.0.0.1:0'], allow_anonymous: false}\n",
    );
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].starts_with("t.yaml:2:73: broker \"edge\": allow_anonymous: false"),
        "{}",
        w[0]
    );
}

#[test]
fn tls_listener_and_remote_tls_files_are_checked() {
    let e = errors(
        "brokers:\n  edge:\n    type: builtin\n    listen:\n      - url: tls://127.0.0.1:0\n        cert_file: missing.pem\n        key_file: missing.key\n        cert_cn_as_username: true\n",
    );
    assert_eq!(
        e,
        [
            "t.yaml:6:20: broker \"edge\": listen.cert_file: cannot read `missing.pem`: No such file or directory (os error 2)",
            "t.yaml:7:19: broker \"edge\": listen.key_file: cannot read `missing.key`: No such file or directory (os error 2)",
            "t.yaml:8:30: broker \"edge\": listen.cert_cn_as_username: needs `require_client_cert: true`",
        ]
    );
}

#[test]
fn regex_remaps_that_map_back_are_a_loop() {
    let e = loops(&pipes(
        "  up: {from: edge, to: cloud, topics: ['dev/+/#'], remap: [{regex: 'dev/([^/]+)/(.*)', replace: 'devices/$1/$2'}]}\n  down: {from: cloud, to: edge, topics: ['devices/#'], remap: [{regex: 'devices/([^/]+)/(.*)', replace: 'dev/$1/$2'}]}\n",
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].contains(
            "cloud: devices/x/x → (pipe down) edge: dev/x/x → (pipe up) cloud: devices/x/x"
        ),
        "{}",
        e[0]
    );
}

#[test]
fn builtin_session_expiry_defaults_to_never_with_a_warning_on_the_network() {
    let expiry = |listen: &str,
                  field: &str|
     -> Result<(Option<std::time::Duration>, Vec<String>), Vec<String>> {
        let yaml = format!("brokers:\n  edge: {{type: builtin, listen: ['{listen}']{field}}}\n");
        match load(&yaml) {
            Ok((plan, warnings)) => match &plan.brokers["edge"].kind {
                BrokerKind::BuiltIn(b) => Ok((
                    b.session_expiry,
                    warnings.iter().map(|w| w.to_string()).collect(),
                )),
                BrokerKind::Remote(_) => panic!("edge is built-in"),
            },
            Err(e) => Err(e.errors.iter().map(|d| d.to_string()).collect()),
        }
    };
    let local = "tcp://127.0.0.1:0";
    let (d, w) = expiry(local, "").expect("valid");
    assert_eq!(d, None);
    assert!(!w.iter().any(|w| w.contains("session_expiry")), "{w:?}");
    let (d, w) = expiry("tcp://0.0.0.0:1883", "").expect("valid");
    assert_eq!(d, None);
    assert!(
        w.iter().any(|w| w.contains("session_expiry is not set")),
        "{w:?}"
    );
    let (d, w) = expiry("tcp://0.0.0.0:1883", ", session_expiry: 168h").expect("valid");
    assert_eq!(d, Some(std::time::Duration::from_secs(7 * 86_400)));
    assert!(!w.iter().any(|w| w.contains("session_expiry")), "{w:?}");
    let (d, w) = expiry("tcp://0.0.0.0:1883", ", session_expiry: never").expect("valid");
    assert_eq!(d, None);
    assert!(!w.iter().any(|w| w.contains("session_expiry")), "{w:?}");
    let e = expiry(local, ", session_expiry: 10ms").unwrap_err();
    assert!(
        e[0].contains("session_expiry: must be at least 1s"),
        "{e:?}"
    );
    let remote = "brokers:\n  cloud: {type: remote, endpoints: ['mqtt://127.0.0.1:1883'], session_expiry: 1h}\n";
    let e = errors(remote);
    assert!(e.iter().any(|m| m.contains("session_expiry")), "{e:?}");
}

#[test]
fn builtin_sys_interval_defaults_to_10s_and_can_be_turned_off() {
    let interval = |field: &str| -> Result<Option<std::time::Duration>, Vec<String>> {
        let yaml =
            format!("brokers:\n  edge: {{type: builtin, listen: ['tcp://127.0.0.1:0']{field}}}\n");
        match load(&yaml) {
            Ok((plan, _)) => match &plan.brokers["edge"].kind {
                BrokerKind::BuiltIn(b) => Ok(b.sys_interval),
                BrokerKind::Remote(_) => panic!("edge is built-in"),
            },
            Err(e) => Err(e.errors.iter().map(|d| d.to_string()).collect()),
        }
    };
    let secs = |n| Ok(Some(std::time::Duration::from_secs(n)));
    assert_eq!(interval(""), secs(10));
    assert_eq!(interval(", sys_interval: 30s"), secs(30));
    assert_eq!(interval(", sys_interval: 1m"), secs(60));
    assert_eq!(interval(", sys_interval: 0"), Ok(None));
    assert_eq!(interval(", sys_interval: off"), Ok(None));
    let e = interval(", sys_interval: 500ms").unwrap_err();
    assert!(e[0].contains("sys_interval: must be at least 1s"), "{e:?}");
    let e = interval(", sys_interval: often").unwrap_err();
    assert!(
        e[0].contains("sys_interval: ") && e[0].contains("`off`"),
        "{e:?}"
    );
    let remote = "brokers:\n  cloud: {type: remote, endpoints: ['mqtt://127.0.0.1:1883'], sys_interval: 10s}\n";
    let e = errors(remote);
    assert!(e.iter().any(|m| m.contains("sys_interval")), "{e:?}");
}

#[test]
fn a_single_endpoint_string_is_a_one_element_list() {
    let (plan, _) = load(
        "brokers:\n  cloud:\n    type: remote\n    endpoints: mqtt://${CLOUD_HOST}:1884\n  edge: {type: builtin, listen: ['tcp://127.0.0.1:0']}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let Some(BrokerPlan {
        kind: BrokerKind::Remote(r),
        ..
    }) = plan.brokers.get("cloud")
    else {
        panic!("cloud is not a remote broker");
    };
    assert_eq!(r.endpoints.len(), 1);
    assert_eq!(r.endpoints[0].host, "cloud.example.com");
    assert_eq!(r.endpoints[0].port, 1884);
    // A missing variable in the single string is located at the string.
    let e = errors(
        "brokers:\n  cloud:\n    type: remote\n    endpoints: mqtt://${NOPE}\n  edge: {type: builtin, listen: ['tcp://127.0.0.1:0']}\n",
    );
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with("t.yaml:4:16: broker \"cloud\": endpoints:"),
        "{}",
        e[0]
    );
}

#[test]
fn unstable_client_ids_of_persistent_sessions_warn() {
    let remote = |extra: &str| {
        format!(
            "brokers:\n  cloud:\n    type: remote\n    endpoints: [mqtt://cloud:1883]\n{extra}  edge: {{type: builtin, listen: ['tcp://127.0.0.1:0']}}\n"
        )
    };
    let w = warnings(&remote("    client_id: bridge-${HOSTNAME:-x}\n"));
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].starts_with("t.yaml:5:16: broker \"cloud\": client_id: uses `${HOSTNAME}`"),
        "{}",
        w[0]
    );
    assert!(w[0].contains("strands the messages queued"), "{}", w[0]);
    let w = warnings(&remote("    client_id: mqbridge-7d9f8b6c5-x2k4q\n"));
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].contains("looks unstable"), "{}", w[0]);
    // A clean session strands nothing; a fixed name and the default are fine.
    assert!(
        warnings(&remote(
            "    client_id: b-${HOSTNAME:-x}\n    clean_session: true\n"
        ))
        .is_empty()
    );
    assert!(warnings(&remote("    client_id: plant-7-bridge\n")).is_empty());
    assert!(warnings(&remote("")).is_empty());
}

#[test]
fn websocket_endpoints_and_listeners_compile() {
    let (plan, _) = load(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0, ws://127.0.0.1:0]\n  cloud:\n    type: remote\n    endpoints: [wss://cloud.example.com/mqtt, ws://backup:8080]\n    ws_headers: {X-Api-Key: k}\npipes:\n  up: {from: edge, to: cloud, topics: ['a/#']}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let Some(BrokerKind::Remote(r)) = plan.brokers.get("cloud").map(|b| &b.kind) else {
        panic!("remote");
    };
    let eps: Vec<_> = r
        .endpoints
        .iter()
        .map(|e| (e.scheme, e.port, e.path.as_deref()))
        .collect();
    assert_eq!(
        eps,
        [
            (plan::Scheme::Wss, 443, Some("/mqtt")),
            (plan::Scheme::Ws, 8080, Some("/")),
        ]
    );
    assert!(r.tls.is_some(), "wss:// gets the TLS settings");
    assert_eq!(r.ws_headers, [("X-Api-Key".to_string(), "k".to_string())]);
    let summary = summary::describe(&plan);
    assert!(
        summary.contains("listen: tcp://127.0.0.1:0, ws://127.0.0.1:0"),
        "{summary}"
    );
}
