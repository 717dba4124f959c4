//! `retain: as_published`, `response_topic`, `user_properties` and
//! `loop_guard`: what they compile to, and every error with its location.

use crate::config::plan::{HopPlan, PropertiesPlan, RetainRule};
use crate::config::{LoadOptions, load_str_with};

const HEAD: &str = "brokers:\n  edge: {type: builtin, listen: ['tcp://127.0.0.1:0']}\n  cloud:\n    type: remote\n    endpoints: [mqtt://127.0.0.1:1883]\n    protocol: 3.1.1\n  other: {type: remote, endpoints: [mqtt://127.0.0.1:1884]}\npipes:\n";

fn load(body: &str) -> Result<(crate::config::Plan, Vec<String>), Vec<String>> {
    let opts = LoadOptions { vars: &|_| None };
    match load_str_with(&format!("{HEAD}{body}"), "t.yaml", &opts) {
        Ok((plan, w)) => Ok((plan, w.iter().map(|d| d.to_string()).collect())),
        Err(e) => Err(e.errors.iter().map(|d| d.to_string()).collect()),
    }
}

#[test]
fn options_compile_in_file_order() {
    let (plan, warnings) = load(
        "  up:\n    from: edge\n    to: other\n    topics: [a/#]\n    response_topic: remap\n    retain: as_published\n    user_properties:\n      remove: [debug, trace]\n      add: {z: '1', a: '2', m: ''}\n    loop_guard: {}\n",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    let up = &plan.pipes["up"];
    assert_eq!(up.retain, RetainRule::AsPublished);
    assert_eq!(
        up.properties,
        PropertiesPlan {
            remap_response_topic: true,
            remove: vec!["debug".into(), "trace".into()],
            add: vec![
                ("z".into(), "1".into()),
                ("a".into(), "2".into()),
                ("m".into(), String::new())
            ],
            hops: Some(HopPlan {
                property: "mqbridge-hops".into(),
                max_hops: 8
            }),
        }
    );
}

#[test]
fn defaults_change_nothing() {
    let (plan, _) =
        load("  up: {from: edge, to: other, topics: [a/#]}\n").unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(plan.pipes["up"].properties, PropertiesPlan::default());
    assert_eq!(plan.pipes["up"].retain, RetainRule::Keep);
}

#[test]
fn every_bad_option_is_reported_with_its_location() {
    let errors = load(
        "  up:\n    from: edge\n    to: other\n    topics: [a/#]\n    response_topic: rewrite\n    retain: faithful\n    user_properties:\n      remove: ['']\n      add: {x: \"a\\0b\"}\n    loop_guard: {hop_property: '', max_hops: 0}\n",
    )
    .expect_err("invalid");
    let want = [
        "t.yaml:14:13: pipe \"up\": retain: expected `keep` or `clear` or `as_published`, got `faithful`",
        "t.yaml:13:21: pipe \"up\": response_topic: expected `keep` or `remap`, got `rewrite`",
        "t.yaml:16:16: pipe \"up\": user_properties.remove: ``: a name must not be empty",
        "t.yaml:17:16: pipe \"up\": user_properties.add: `a\0b`: must be at most 65,535 bytes without NUL",
        "t.yaml:18:32: pipe \"up\": loop_guard.hop_property: ``: a name must not be empty",
        "t.yaml:18:46: pipe \"up\": loop_guard.max_hops: 0 is out of range (allowed 1..=1000)",
    ];
    for w in want {
        assert!(
            errors.iter().any(|e| e == w),
            "missing {w:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), want.len(), "{errors:#?}");
}

#[test]
fn retain_as_published_from_a_3_1_1_source_warns_at_the_retain_line() {
    let (_, warnings) = load(
        "  down:\n    from: cloud\n    to: edge\n    topics: [a/#]\n    retain: as_published\n  up:\n    from: other\n    to: edge\n    topics: [b/#]\n    retain: as_published\n",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        warnings,
        vec![
            "t.yaml:13:13: pipe \"down\": retain: `as_published` needs an MQTT 5 source, but broker \"cloud\" is `protocol: 3.1.1`: it clears the retain flag of live messages, so only retained messages sent at subscribe arrive with it"
        ],
        "only the pipe from the 3.1.1 broker"
    );
}
