//! The shipped `bridges.yaml` does what the README's one-screen tour shows:
//! edge → cloud with the `edge/` prefix and the debug exclusion, and cloud →
//! edge commands remapped by template. Its listeners are moved to port 0 so
//! the test never collides with anything on 1883/1884.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::bridge::{Sub, WAIT, publish, stop_run, unique};
use mqbridge::config::{self, BrokerKind};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn shipped_bridges_yaml_forwards_and_remaps_as_documented() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bridges.yaml");
    let (mut plan, _) = config::load(&path).unwrap_or_else(|e| panic!("bridges.yaml: {e}"));
    plan.storage.dir = common::data_dir();
    for b in plan.brokers.values_mut() {
        if let BrokerKind::BuiltIn(builtin) = &mut b.kind {
            for l in &mut builtin.listeners {
                l.addr = SocketAddr::from(([127, 0, 0, 1], 0));
            }
        }
    }
    // Its own metrics port too: 9464 may be taken (e.g. by a running bridge).
    plan.metrics.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let token = CancellationToken::new();
    let mut run = mqbridge::run(plan, token.clone()).await.expect("run");
    timeout(WAIT, run.ready()).await.expect("subscribed");
    let edge = run.builtin_addrs("edge").expect("edge")[0].port();
    let cloud = run.builtin_addrs("cloud").expect("cloud")[0].port();

    let mut on_cloud = Sub::start(cloud, &unique("c"), "edge/#", 1, false).await;
    publish(edge, "sensors/line1/debug/raw", "x", 1, false).await;
    publish(edge, "sensors/line1/temperature", "21.5", 1, false).await;
    let got = on_cloud.next().await.expect("reading crossed");
    assert_eq!(
        (got.topic.as_str(), got.payload.as_str()),
        ("edge/sensors/line1/temperature", "21.5")
    );

    let mut on_edge = Sub::start(edge, &unique("e"), "devices/#", 1, false).await;
    publish(cloud, "commands/edge/line1/reset", "now", 1, true).await;
    let got = on_edge.next().await.expect("command crossed");
    assert_eq!(
        (got.topic.as_str(), got.payload.as_str()),
        ("devices/line1/cmd/reset", "now")
    );
    assert_eq!(
        on_cloud.next_within(Duration::from_millis(300)).await,
        None,
        "debug stream excluded"
    );
    stop_run(token, run).await;
}
