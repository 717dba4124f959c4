//! MQTT 5 across the whole bridge, with independent peers at both ends:
//! a v5 device (`mosquitto_pub -V 5`) publishes into the built-in broker,
//! a pipe speaking v5 forwards to a real Mosquitto 2, and a v5 subscriber
//! there (`mosquitto_sub -V 5`) must see every property as it was sent
//! (user properties in order), the response topic remapped by the pipe's
//! rules, and the message expiry reduced, never raised. A 3.1.1 subscriber
//! on the same destination receives the same message without properties.

mod common;

use common::bridge::{WAIT, remote, start_run, stop_run, unique};
use common::mosquitto::{MosqSub, Mosquitto, mosquitto_pub};
use tokio::time::timeout;

fn yaml(p: &str, cloud_port: u16) -> String {
    format!(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n{}pipes:\n  up:\n    from: edge\n    to: cloud\n    topics: [{p}/dev/#]\n    response_topic: remap\n    remap:\n      - strip_prefix: {p}/dev/\n        add_prefix: {p}/cloud/\n",
        // Properties towards a stock Mosquitto (receive maximum 20) need
        // `protocol: 5`: left out, such a destination is spoken to in 3.1.1.
        remote("cloud", cloud_port, &format!("{p}-cloud")) + "    protocol: 5\n",
    )
}

/// `mosquitto_sub` output format: topic, payload, then each v5 property.
const FORMAT: &str = "%t|%p|C=%C|D=%D|E=%E|F=%F|R=%R|P=%P";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_device_to_builtin_to_v5_pipe_to_mosquitto_keeps_every_property() {
    let cloud = Mosquitto::start();
    let p = unique("v5e2e");
    let sub_v5 = format!("{p}-sub5");
    let sub_v3 = format!("{p}-sub3");
    let filter = format!("{p}/cloud/#");

    // Persistent subscriptions made before the bridge starts, so nothing
    // races the subscribe (each CLI run subscribes and exits at once).
    for (id, version) in [(&sub_v5, "5"), (&sub_v3, "mqttv311")] {
        let mut args = vec![
            "-V", version, "-c", "-i", id, "-q", "1", "-t", &filter, "-E",
        ];
        if version == "5" {
            args.extend(["-x", "600"]);
        }
        let mut prepare = MosqSub::spawn(cloud.addr(), &args, 1);
        assert!(prepare.lines().await.is_empty());
    }

    let (token, run) = start_run(&yaml(&p, cloud.port)).await;
    let edge = run.builtin_addrs("edge").expect("edge addrs")[0];

    let topic = format!("{p}/dev/line1/temp");
    let reply = format!("{p}/dev/line1/reply");
    mosquitto_pub(
        edge,
        &[
            "-V",
            "5",
            "-q",
            "1",
            "-t",
            &topic,
            "-m",
            "21.5",
            "-D",
            "publish",
            "user-property",
            "site",
            "north",
            "-D",
            "publish",
            "user-property",
            "unit",
            "celsius",
            "-D",
            "publish",
            "user-property",
            "site",
            "again",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "correlation-data",
            "req-42",
            "-D",
            "publish",
            "response-topic",
            &reply,
            "-D",
            "publish",
            "message-expiry-interval",
            "120",
            "-D",
            "publish",
            "payload-format-indicator",
            "1",
        ],
    )
    .await;

    let mut got_v5 = MosqSub::spawn(
        cloud.addr(),
        &[
            "-V", "5", "-c", "-x", "600", "-i", &sub_v5, "-q", "1", "-t", &filter, "-F", FORMAT,
        ],
        1,
    );
    let lines = timeout(WAIT, got_v5.lines()).await.expect("v5 subscriber");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let fields: Vec<&str> = lines[0].split('|').collect();
    assert_eq!(fields[0], format!("{p}/cloud/line1/temp"), "topic remapped");
    assert_eq!(fields[1], "21.5");
    assert_eq!(fields[2], "C=text/plain");
    assert_eq!(fields[3], "D=req-42");
    let expiry: u32 = fields[4]
        .strip_prefix("E=")
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("message expiry present: {lines:?}"));
    assert!(
        (100..=120).contains(&expiry),
        "expiry reduced by the time in the bridge, never raised: {expiry}"
    );
    assert_eq!(fields[5], "F=1");
    assert_eq!(
        fields[6],
        format!("R={p}/cloud/line1/reply"),
        "response topic remapped by the pipe's rules"
    );
    assert_eq!(
        fields[7], "P=site:north unit:celsius site:again",
        "user properties in order, duplicates kept"
    );

    let mut got_v3 = MosqSub::spawn(
        cloud.addr(),
        &[
            "-V", "mqttv311", "-c", "-i", &sub_v3, "-q", "1", "-t", &filter, "-v",
        ],
        1,
    );
    let lines = timeout(WAIT, got_v3.lines())
        .await
        .expect("3.1.1 subscriber");
    assert_eq!(lines, vec![format!("{p}/cloud/line1/temp 21.5")]);

    stop_run(token, run).await;
}
