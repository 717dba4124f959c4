//! A running `mqbridge::client` link with what a test needs to drive and
//! stop it: deliveries, the event stream and bounded waits on its state.

use std::time::Duration;

use mqbridge::client::{self, ClientEvent, ClientOptions};
use mqbridge::link::{Delivery, Link, LinkState};
use mqbridge::protocol::{Message, QoS};
use tokio::sync::{broadcast, mpsc};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Upper bound for one wait on a client (the client tests use short timeouts).
pub const CLIENT_WAIT: Duration = Duration::from_secs(5);

/// A spawned client task and its handles.
pub struct TestClient {
    /// The link to publish and subscribe through.
    pub link: Link,
    /// Incoming deliveries.
    pub rx: mpsc::Receiver<Delivery>,
    /// The client's events.
    pub events: broadcast::Receiver<ClientEvent>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl TestClient {
    /// Spawns the client with an event channel.
    pub fn spawn(mut opts: ClientOptions) -> TestClient {
        let (tx, events) = broadcast::channel(1024);
        opts.events = Some(tx);
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (link, rx) = client::spawn(opts, shutdown.clone(), &tracker);
        TestClient {
            link,
            rx,
            events,
            shutdown,
            tracker,
        }
    }

    /// Waits until the link state satisfies `pred`; returns that state.
    pub async fn state(&self, what: &str, pred: impl Fn(&LinkState) -> bool) -> LinkState {
        let mut w = self.link.state();
        let r = timeout(CLIENT_WAIT, async {
            w.wait_for(|s| pred(s)).await.map(|s| s.clone())
        })
        .await;
        match r {
            Ok(Ok(s)) => s,
            _ => panic!(
                "timed out waiting for {what}; state is {:?}",
                *self.link.state().borrow()
            ),
        }
    }

    /// Waits until connected to `mqtt://127.0.0.1:<port>`; returns `session_present`.
    pub async fn connected_to(&self, port: u16) -> bool {
        let want = format!("mqtt://127.0.0.1:{port}");
        match self
            .state(
                &format!("connected to {want}"),
                |s| matches!(s, LinkState::Connected { endpoint, .. } if *endpoint == want),
            )
            .await
        {
            LinkState::Connected {
                session_present, ..
            } => session_present,
            _ => unreachable!(),
        }
    }

    /// Waits for the next event matching `pred`.
    pub async fn event(&mut self, what: &str, pred: impl Fn(&ClientEvent) -> bool) -> ClientEvent {
        let r = timeout(CLIENT_WAIT, async {
            loop {
                match self.events.recv().await {
                    Ok(e) if pred(&e) => return Some(e),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return None,
                }
            }
        })
        .await;
        match r {
            Ok(Some(e)) => e,
            _ => panic!("timed out waiting for event {what}"),
        }
    }

    /// The next delivery.
    pub async fn recv(&mut self) -> Delivery {
        timeout(CLIENT_WAIT, self.rx.recv())
            .await
            .expect("timed out waiting for a message")
            .expect("delivery channel closed")
    }

    /// Subscribes to one filter (bounded wait); returns the granted QoS.
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Vec<Option<QoS>> {
        timeout(
            CLIENT_WAIT,
            self.link.subscribe(vec![(filter.to_owned(), qos)]),
        )
        .await
        .expect("timed out waiting for the SUBACK")
        .expect("subscribe")
    }

    /// Publishes through this client's link and waits for the broker's ack.
    pub async fn publish(&self, topic: &str, payload: &str, qos: QoS) {
        publish_acked(&self.link, topic, payload, qos).await;
    }

    /// Cancels the client and waits for its task to end.
    pub async fn shutdown(self) -> Link {
        self.shutdown.cancel();
        self.tracker.close();
        timeout(CLIENT_WAIT, self.tracker.wait())
            .await
            .expect("client task did not stop");
        self.link
    }

    /// [`TestClient::shutdown`], then asserts the link reports `Closed`.
    pub async fn stop(self) {
        let link = self.shutdown().await;
        assert_eq!(*link.state().borrow(), LinkState::Closed);
    }
}

/// Publishes through `link` and waits (bounded) for the ack (PUBACK/PUBCOMP).
pub async fn publish_acked(link: &Link, topic: &str, payload: &str, qos: QoS) {
    let ack = link
        .publish(Message::new(topic, payload.to_owned(), qos, false))
        .await
        .expect("publish request");
    timeout(CLIENT_WAIT, ack.wait())
        .await
        .expect("timed out waiting for the broker's ack")
        .expect("publish failed");
}
