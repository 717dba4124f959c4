//! Hot reload with live reconciliation, on a real in-process bridge between
//! built-in brokers: pipes are added, removed and changed (and brokers
//! started and stopped) while sequence-numbered QoS 1 traffic flows on an
//! unaffected pipe, which must lose and duplicate nothing.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::bridge::{
    SeqCount, Sub, WAIT, publish, publish_many, seq_msgs, start_run, stop_run, unique,
};
use common::http::{counter, scrape};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout;

/// Sequence-numbered messages on the unaffected pipe.
const STEADY: u64 = 600;
/// Published in chunks, so reloads happen between and during them.
const CHUNK: u64 = 50;

/// Two built-in brokers and the pipes given (YAML lines under `pipes:`).
fn yaml(extra_brokers: &str, pipes: &str) -> String {
    format!(
        "brokers:\n  edge:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n  cloud:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n{extra_brokers}pipes:\n{pipes}metrics:\n  listen: 127.0.0.1:0\n"
    )
}

fn pipe(name: &str, to: &str, filter: &str, extra: &str) -> String {
    format!("  {name}:\n    from: edge\n    to: {to}\n    topics: [\"{filter}\"]\n{extra}")
}

fn remap(from: &str, to: &str) -> String {
    format!("    remap:\n      - strip_prefix: \"{from}\"\n        add_prefix: \"{to}\"\n")
}

/// Publishes the steady sequence in chunks from a task; the watch counts
/// the messages acknowledged by the broker so far.
fn steady_traffic(port: u16, topic: String) -> (tokio::task::JoinHandle<()>, watch::Receiver<u64>) {
    let (tx, rx) = watch::channel(0);
    let task = tokio::spawn(async move {
        let mut i = 0;
        while i < STEADY {
            publish_many(port, &seq_msgs(&topic, i..i + CHUNK), 1, false).await;
            i += CHUNK;
            tx.send_replace(i);
        }
    });
    (task, rx)
}

/// Waits until the steady traffic has reached `n` messages, so each reload
/// falls in the middle of the stream.
async fn traffic_at(progress: &mut watch::Receiver<u64>, n: u64) {
    timeout(Duration::from_secs(60), progress.wait_for(|p| *p >= n))
        .await
        .expect("traffic progresses")
        .expect("publisher alive");
}

/// Reads from `sub` until every steady sequence number arrived (and a
/// little longer for stragglers); returns every message by topic.
async fn collect(sub: &mut Sub, steady_topic: &str) -> (SeqCount, BTreeMap<String, Vec<String>>) {
    let mut seq = SeqCount::default();
    let mut other: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let wait = if seq.unique() as u64 >= STEADY {
            Duration::from_millis(300)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        let Some(got) = sub.next_within(wait).await else {
            break;
        };
        if got.topic == steady_topic {
            seq.add(&got.payload);
        } else {
            other.entry(got.topic).or_default().push(got.payload);
        }
    }
    (seq, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_removes_and_changes_pipes_while_traffic_flows() {
    let p = unique("rlp");
    let steady = pipe("steady", "cloud", &format!("{p}/steady/#"), "");
    let gone = pipe("gone", "cloud", &format!("{p}/gone/#"), "");
    let remapped = |to: &str| {
        pipe(
            "remapped",
            "cloud",
            &format!("{p}/r/#"),
            &remap(&format!("{p}/r/"), &format!("{p}/{to}/")),
        )
    };
    let added = pipe("added", "cloud", &format!("{p}/added/#"), "");
    let v0 = yaml("", &format!("{steady}{gone}{}", remapped("v1")));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bridges.yaml");
    let (token, mut run) = start_run(&v0).await;
    let metrics = run.metrics_addr().expect("metrics");
    let edge = run.builtin_addrs("edge").expect("edge")[0].port();
    let cloud = run.builtin_addrs("cloud").expect("cloud")[0].port();
    let mut sub = Sub::start(cloud, &unique("sub"), &format!("{p}/#"), 1, false).await;
    let steady_stats = run.pipe_stats("steady").expect("steady");
    let before = scrape(metrics).await;

    // A retained message on the unaffected pipe: a re-subscription of its
    // filter would make the edge broker send it again.
    publish(edge, &format!("{p}/steady/retained"), "kept", 1, true).await;
    publish(edge, &format!("{p}/gone/before"), "g", 1, false).await;
    publish(edge, &format!("{p}/r/a"), "old", 1, false).await;
    let steady_topic = format!("{p}/steady/seq");
    let (traffic, mut progress) = steady_traffic(edge, steady_topic.clone());

    // Add a pipe.
    traffic_at(&mut progress, 100).await;
    std::fs::write(
        &file,
        yaml("", &format!("{steady}{gone}{}{added}", remapped("v1"))),
    )
    .expect("write");
    let d = run.reload_file(&file).await.expect("valid config");
    assert_eq!(d.pipes.added, vec!["added"]);
    timeout(WAIT, run.ready())
        .await
        .expect("new filter subscribed");
    publish(edge, &format!("{p}/added/x"), "new pipe", 1, false).await;

    // Remove a pipe.
    traffic_at(&mut progress, 200).await;
    std::fs::write(
        &file,
        yaml("", &format!("{steady}{}{added}", remapped("v1"))),
    )
    .expect("write");
    let d = run.reload_file(&file).await.expect("valid config");
    assert_eq!(d.pipes.removed, vec!["gone"]);
    timeout(WAIT, run.ready()).await.expect("unsubscribed");
    publish(edge, &format!("{p}/gone/after"), "g", 1, false).await;

    // Change a remap: new messages use the new topic.
    traffic_at(&mut progress, 300).await;
    std::fs::write(
        &file,
        yaml("", &format!("{steady}{}{added}", remapped("v2"))),
    )
    .expect("write");
    let d = run.reload_file(&file).await.expect("valid config");
    assert_eq!(d.pipes.changed, vec!["remapped"]);
    assert_eq!(d.pipes.unchanged, vec!["added", "steady"]);
    publish(edge, &format!("{p}/r/b"), "new", 1, false).await;

    // An invalid file: rejected, everything keeps running.
    traffic_at(&mut progress, 400).await;
    std::fs::write(&file, "brokers:\n  edge: {type: nonsense}\n").expect("write");
    assert!(run.reload_file(&file).await.is_err());
    publish(edge, &format!("{p}/added/y"), "still", 1, false).await;

    timeout(Duration::from_secs(60), traffic)
        .await
        .expect("traffic in time")
        .expect("publisher");
    let (seq, other) = collect(&mut sub, &steady_topic).await;
    assert_eq!(
        seq.missing(STEADY),
        Vec::<u64>::new(),
        "lost on the unaffected pipe"
    );
    assert_eq!(seq.duplicates(), 0, "duplicated on the unaffected pipe");
    let topics = |t: &str| other.get(&format!("{p}/{t}")).cloned().unwrap_or_default();
    assert_eq!(
        topics("steady/retained"),
        vec!["kept"],
        "no re-subscription of unchanged filters"
    );
    assert_eq!(topics("added/x"), vec!["new pipe"]);
    assert_eq!(topics("added/y"), vec!["still"]);
    assert_eq!(topics("gone/before"), vec!["g"]);
    assert!(
        topics("gone/after").is_empty(),
        "a removed pipe forwards nothing"
    );
    assert_eq!(topics("v1/a"), vec!["old"]);
    assert_eq!(topics("v2/b"), vec!["new"], "the changed remap applies");
    assert!(topics("v1/b").is_empty() && topics("v2/a").is_empty());

    // The unaffected pipe is the same instance, and forwarded each message once.
    let now = run.pipe_stats("steady").expect("steady");
    assert!(
        Arc::ptr_eq(&steady_stats, &now),
        "steady pipe was restarted"
    );
    assert_eq!(now.snapshot().forwarded, STEADY + 1);
    assert!(run.pipe_stats("gone").is_none());
    let after = scrape(metrics).await;
    // Process-wide counters (other tests in this binary reload too).
    assert!(
        counter(&after, "mqbridge_reloads_total")
            >= counter(&before, "mqbridge_reloads_total") + 3.0
    );
    assert!(
        counter(&after, "mqbridge_reload_failures_total")
            >= counter(&before, "mqbridge_reload_failures_total") + 1.0
    );
    assert_eq!(
        counter(
            &after,
            r#"mqbridge_pipe_messages_forwarded_total{pipe="steady"}"#
        ),
        (STEADY + 1) as f64
    );

    sub.stop().await;
    let report = stop_run(token, run).await;
    assert!(report.busy_pipes.is_empty(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_starts_and_stops_a_broker_while_traffic_flows() {
    let p = unique("rlb");
    let steady = pipe("steady", "cloud", &format!("{p}/steady/#"), "");
    let extra = "  extra:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n";
    let to_extra = pipe("to_extra", "extra", &format!("{p}/x/#"), "");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bridges.yaml");
    let (token, mut run) = start_run(&yaml("", &steady)).await;
    let metrics = run.metrics_addr().expect("metrics");
    let edge = run.builtin_addrs("edge").expect("edge")[0].port();
    let cloud = run.builtin_addrs("cloud").expect("cloud")[0].port();
    let mut sub = Sub::start(cloud, &unique("sub"), &format!("{p}/#"), 1, false).await;
    let steady_topic = format!("{p}/steady/seq");
    let (traffic, mut progress) = steady_traffic(edge, steady_topic.clone());

    // A new broker that cannot start (its port is taken by `edge`): the
    // reload is rejected as a whole and counted; nothing changes.
    traffic_at(&mut progress, 50).await;
    let before = scrape(metrics).await;
    let taken = format!("  extra:\n    type: builtin\n    listen: [tcp://127.0.0.1:{edge}]\n");
    std::fs::write(&file, yaml(&taken, &format!("{steady}{to_extra}"))).expect("write");
    assert!(run.reload_file(&file).await.is_err());
    assert!(run.builtin_addrs("extra").is_none());
    assert!(run.pipe_stats("to_extra").is_none());
    let after = scrape(metrics).await;
    assert!(
        counter(&after, "mqbridge_reload_failures_total")
            >= counter(&before, "mqbridge_reload_failures_total") + 1.0
    );

    // A new broker and a pipe to it.
    traffic_at(&mut progress, 100).await;
    std::fs::write(&file, yaml(extra, &format!("{steady}{to_extra}"))).expect("write");
    let d = run.reload_file(&file).await.expect("valid config");
    assert_eq!(d.brokers.added, vec!["extra"]);
    assert_eq!(d.pipes.added, vec!["to_extra"]);
    timeout(WAIT, run.ready()).await.expect("subscribed");
    let extra_port = run.builtin_addrs("extra").expect("extra started")[0].port();
    let mut sub_x = Sub::start(extra_port, &unique("subx"), &format!("{p}/#"), 1, false).await;
    publish(edge, &format!("{p}/x/1"), "to extra", 1, false).await;
    let got = sub_x.next().await.expect("forwarded to the new broker");
    assert_eq!(
        (got.topic.as_str(), got.payload.as_str()),
        (format!("{p}/x/1").as_str(), "to extra")
    );

    // Both removed again: the broker closes once its pipe has drained.
    traffic_at(&mut progress, 300).await;
    std::fs::write(&file, yaml("", &steady)).expect("write");
    let d = run.reload_file(&file).await.expect("valid config");
    assert_eq!(d.brokers.removed, vec!["extra"]);
    assert_eq!(d.pipes.removed, vec!["to_extra"]);
    assert!(run.builtin_addrs("extra").is_none());
    timeout(WAIT, async {
        while TcpStream::connect(("127.0.0.1", extra_port)).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
    .expect("the removed broker stops listening");

    timeout(Duration::from_secs(60), traffic)
        .await
        .expect("traffic in time")
        .expect("publisher");
    let (seq, _) = collect(&mut sub, &steady_topic).await;
    assert_eq!(
        seq.missing(STEADY),
        Vec::<u64>::new(),
        "lost on the unaffected pipe"
    );
    assert_eq!(seq.duplicates(), 0, "duplicated on the unaffected pipe");

    sub.stop().await;
    stop_run(token, run).await;
}

/// A remote source (real Mosquitto): adding and removing a pipe on the same
/// source connection neither reconnects it nor re-subscribes the unchanged
/// pipe's filter (Mosquitto would resend the retained message), and the
/// unchanged pipe loses and duplicates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_source_keeps_its_connection_and_subscriptions_across_reloads() {
    let p = unique("rlm");
    let mosq = common::mosquitto::Mosquitto::start();
    // Retained before the bridge starts: delivered once at the first SUBSCRIBE.
    publish(mosq.port, &format!("{p}/steady/retained"), "kept", 1, true).await;
    let brokers = format!(
        "brokers:\n{}  sink:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n",
        common::bridge::remote("src", mosq.port, &unique("bridge"))
    );
    let steady =
        format!("  steady:\n    from: src\n    to: sink\n    topics: [\"{p}/steady/#\"]\n");
    let more = format!("  more:\n    from: src\n    to: sink\n    topics: [\"{p}/more/#\"]\n");
    let config = |pipes: &str| format!("{brokers}pipes:\n{pipes}metrics:\n  listen: 127.0.0.1:0\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bridges.yaml");
    let (token, mut run) = start_run(&config(&steady)).await;
    let metrics = run.metrics_addr().expect("metrics");
    let sink = run.builtin_addrs("sink").expect("sink")[0].port();
    let mut sub = Sub::start(sink, &unique("sub"), &format!("{p}/#"), 1, false).await;
    let steady_topic = format!("{p}/steady/seq");
    let (traffic, mut progress) = steady_traffic(mosq.port, steady_topic.clone());

    traffic_at(&mut progress, 100).await;
    std::fs::write(&file, config(&format!("{steady}{more}"))).expect("write");
    let d = run.reload_file(&file).await.expect("valid config");
    assert_eq!(d.pipes.added, vec!["more"]);
    timeout(WAIT, run.ready())
        .await
        .expect("new filter subscribed");
    publish(mosq.port, &format!("{p}/more/1"), "m", 1, false).await;

    traffic_at(&mut progress, 300).await;
    std::fs::write(&file, config(&steady)).expect("write");
    let d = run.reload_file(&file).await.expect("valid config");
    assert_eq!(d.pipes.removed, vec!["more"]);
    timeout(WAIT, run.ready()).await.expect("unsubscribed");
    publish(mosq.port, &format!("{p}/more/2"), "m", 1, false).await;

    timeout(Duration::from_secs(60), traffic)
        .await
        .expect("traffic in time")
        .expect("publisher");
    let (seq, other) = collect(&mut sub, &steady_topic).await;
    assert_eq!(
        seq.missing(STEADY),
        Vec::<u64>::new(),
        "lost on the unaffected pipe"
    );
    assert_eq!(seq.duplicates(), 0, "duplicated on the unaffected pipe");
    let topics = |t: &str| other.get(&format!("{p}/{t}")).cloned().unwrap_or_default();
    assert_eq!(
        topics("steady/retained"),
        vec!["kept"],
        "no re-subscription of the unchanged filter"
    );
    assert_eq!(topics("more/1"), vec!["m"]);
    assert!(
        topics("more/2").is_empty(),
        "a removed pipe forwards nothing"
    );
    let body = scrape(metrics).await;
    // The retained message, the steady sequence and more/1: more/2 never
    // reached the bridge, since the removed pipe's filter was unsubscribed.
    assert_eq!(
        counter(&body, r#"mqbridge_remote_messages_in_total{broker="src"}"#),
        (STEADY + 2) as f64,
        "{body}"
    );
    let ep = format!("mqtt://127.0.0.1:{}", mosq.port);
    assert_eq!(
        counter(
            &body,
            &format!(
                r#"mqbridge_remote_connection_attempts_total{{broker="src",endpoint="{ep}"}}"#
            )
        ),
        1.0,
        "the source connection was never reopened"
    );

    sub.stop().await;
    stop_run(token, run).await;
}

/// A remote broker that was only a source until a reload adds a pipe into
/// it: from its next connection it is treated as a destination, so the
/// default protocol's choice for a small receive maximum applies (stock
/// Mosquitto grants MQTT 5 clients 20, below `inflight`: 3.1.1 from then
/// on, where a QoS 1 window is not capped at 20 per round trip). Before,
/// only a restart of mqbridge made the client know it now publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_a_reload_makes_a_destination_gets_the_destination_protocol_choice() {
    let p = unique("rld");
    let mut mosq = common::mosquitto::Mosquitto::start_with("log_type notice\n");
    let id = unique("bridge");
    let brokers = format!(
        "brokers:\n{}  sink:\n    type: builtin\n    listen: [tcp://127.0.0.1:0]\n",
        common::bridge::remote("m", mosq.port, &id)
    );
    let inbound = format!("  inbound:\n    from: m\n    to: sink\n    topics: [\"{p}/in/#\"]\n");
    let outbound = format!("  outbound:\n    from: sink\n    to: m\n    topics: [\"{p}/out/#\"]\n");
    let config = |pipes: &str| format!("{brokers}pipes:\n{pipes}metrics:\n  listen: 127.0.0.1:0\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bridges.yaml");
    let (token, mut run) = start_run(&config(&inbound)).await;
    timeout(WAIT, run.ready()).await.expect("ready");
    assert_eq!(
        mosq.protocols_after(&id, 1).await,
        ["p5"],
        "a source keeps MQTT 5"
    );

    std::fs::write(&file, config(&format!("{inbound}{outbound}"))).expect("write");
    let d = run.reload_file(&file).await.expect("valid config");
    assert_eq!(d.pipes.added, vec!["outbound"]);
    // The live connection is left as it is; the next one decides.
    assert_eq!(mosq.logged_protocols(&id), ["p5"], "no reconnect on reload");
    mosq.restart();
    assert_eq!(
        mosq.protocols_after(&id, 3).await,
        ["p5", "p5", "p2"],
        "a destination granting 20 is spoken to in 3.1.1"
    );
    // And the new pipe forwards over it.
    let cli = unique("cli");
    mosq.prepare_subscriber(&cli, &format!("{p}/out/#"), 1);
    timeout(WAIT, run.ready()).await.expect("ready again");
    let sink = run.builtin_addrs("sink").expect("sink")[0].port();
    publish(sink, &format!("{p}/out/1"), "x", 1, false).await;
    assert_eq!(
        mosq.collect(&cli, &format!("{p}/out/#"), 1, 1, 10),
        vec![format!("{p}/out/1 x")]
    );
    stop_run(token, run).await;
}
