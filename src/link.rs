//! The one API a pipe sees for a broker, local or remote.
//!
//! Both the client core (`client`) and the built-in broker (`broker`) hand out
//! a [`Link`] plus a stream of [`Delivery`]s. A pipe cannot tell a local broker
//! from a remote one. The owner of a link (the client connection task, or the
//! broker's local session) consumes [`LinkRequest`]s and produces deliveries.

use std::fmt;

use tokio::sync::{mpsc, oneshot, watch};

pub use crate::protocol::AckToken;
use crate::protocol::{Message, QoS, SubscribeOptions};

/// Why a link operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The link was shut down (the owner task ended); nothing more will be accepted.
    #[error("link closed")]
    Closed,
    /// The peer refused the operation (e.g. SUBACK 0x80, ACL), with a reason.
    #[error("refused: {0}")]
    Refused(String),
    /// The message can never be sent on this link (e.g. larger than the peer's maximum packet size).
    #[error("rejected: {0}")]
    Rejected(String),
}

/// Connection state of a link, as published on its watch channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Dialing or handshaking `endpoint` (attempt number since the last success).
    Connecting {
        /// The endpoint being tried, e.g. `mqtt://host:1883`.
        endpoint: String,
        /// Attempts since the last successful connection, starting at 1.
        attempt: u32,
    },
    /// CONNACK accepted.
    Connected {
        /// The endpoint in use.
        endpoint: String,
        /// Whether the broker resumed an existing session.
        session_present: bool,
    },
    /// Not connected; a reconnect may follow after backoff.
    Disconnected {
        /// Short, human reason (never used as a metric label).
        reason: String,
    },
    /// The link was shut down for good.
    Closed,
}

/// A request from a pipe to the task that owns the link.
#[derive(Debug)]
pub enum LinkRequest {
    /// Publish `message`; `done` resolves when the broker has acknowledged it
    /// (at once for QoS 0 once written/handed over, PUBACK for QoS 1, PUBCOMP for QoS 2).
    /// Survives reconnects and failovers: the owner resends until acknowledged.
    Publish {
        /// The message to send.
        message: Message,
        /// Completion; a receiver that is gone means the caller no longer cares.
        done: PublishDone,
    },
    /// Subscribe to filters; kept and restored whenever the broker has no session.
    Subscribe {
        /// Filters with their maximum QoS and MQTT 5 subscription options.
        filters: Vec<(String, SubscribeOptions)>,
        /// Completion with the granted QoS per filter (`None` = refused, 0x80).
        done: oneshot::Sender<Result<Vec<Option<QoS>>, LinkError>>,
    },
    /// Unsubscribe from filters and forget them.
    Unsubscribe {
        /// Filters as they were subscribed.
        filters: Vec<String>,
        /// Completion.
        done: oneshot::Sender<Result<(), LinkError>>,
    },
    /// Disconnect gracefully (DISCONNECT, so no will), then close.
    Shutdown,
}

/// A finished publish as a pipe's worker receives it: the tag it gave
/// [`Link::publish_tagged`] and the outcome.
pub type Completion = (u64, Result<(), LinkError>);

/// How the owner of a link reports that a publish is finished: to the one
/// waiter of [`Link::publish`], or as a tagged [`Completion`] on a channel
/// that all of a caller's publishes share ([`Link::publish_tagged`]: no
/// channel or future per message, and the caller takes completions in
/// batches). Dropped without a result, it reports [`LinkError::Closed`].
#[derive(Debug)]
pub struct PublishDone(Option<DoneTo>);

#[derive(Debug)]
enum DoneTo {
    Oneshot(oneshot::Sender<Result<(), LinkError>>),
    Tagged {
        tag: u64,
        to: mpsc::UnboundedSender<Completion>,
        origin: Option<Origin>,
    },
}

/// Where a publish comes from, for a destination client that keeps its
/// QoS 2 flows on disk: the spooled pipe and the spool record's sequence
/// number. After a restart the pipe sends its unacknowledged records again
/// with the same origin, and the client continues the flow it already holds
/// for it (same packet id) instead of publishing the message a second time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The pipe's name.
    pub pipe: std::sync::Arc<str>,
    /// The spool record's sequence number.
    pub seq: u64,
    /// The pipe's acknowledged spool cursor as written to the store when
    /// the publish was made: records below it are never sent again, so the
    /// client may forget what it kept for them.
    pub floor: u64,
}

impl PublishDone {
    /// Completion to one waiter.
    pub fn oneshot(tx: oneshot::Sender<Result<(), LinkError>>) -> Self {
        PublishDone(Some(DoneTo::Oneshot(tx)))
    }

    /// Completion as `(tag, result)` on a shared channel.
    pub fn tagged(tag: u64, to: mpsc::UnboundedSender<Completion>) -> Self {
        PublishDone(Some(DoneTo::Tagged {
            tag,
            to,
            origin: None,
        }))
    }

    /// Completion as `(tag, result)` on a shared channel, for a publish
    /// from `origin` (see [`Origin`]).
    pub fn tagged_from(tag: u64, to: mpsc::UnboundedSender<Completion>, origin: Origin) -> Self {
        PublishDone(Some(DoneTo::Tagged {
            tag,
            to,
            origin: Some(origin),
        }))
    }

    /// Where the publish comes from, if its caller said.
    pub fn origin(&self) -> Option<&Origin> {
        match &self.0 {
            Some(DoneTo::Tagged { origin, .. }) => origin.as_ref(),
            _ => None,
        }
    }

    /// Reports the outcome. `Err` gives it back when nobody listens any more
    /// (like `oneshot::Sender::send`); callers may ignore that.
    pub fn send(mut self, result: Result<(), LinkError>) -> Result<(), Result<(), LinkError>> {
        match self.0.take() {
            Some(DoneTo::Oneshot(tx)) => tx.send(result),
            Some(DoneTo::Tagged { tag, to, .. }) => to.send((tag, result)).map_err(|e| e.0.1),
            None => Err(result),
        }
    }
}

impl PublishDone {
    /// Drops without reporting anything.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for PublishDone {
    fn drop(&mut self) {
        // A oneshot receiver sees the drop itself; a tagged caller counts
        // its publishes, so it must hear of every one.
        if let Some(DoneTo::Tagged { tag, to, .. }) = self.0.take() {
            let _ = to.send((tag, Err(LinkError::Closed)));
        }
    }
}

/// Handle to acknowledge one incoming QoS 1/2 message. The owner sends the
/// PUBACK/PUBREC (or releases the message from a local session) only when
/// [`AckHandle::ack`] is called, and in arrival order. Dropping it without
/// acking leaves the message unacknowledged: it is redelivered after a reconnect.
pub struct AckHandle {
    inner: Option<(AckToken, mpsc::UnboundedSender<AckToken>)>,
}

impl AckHandle {
    /// A handle for a message that needs no acknowledgement (QoS 0).
    pub fn none() -> Self {
        AckHandle { inner: None }
    }

    /// A handle that sends `token` on `tx` when acked.
    pub fn new(token: AckToken, tx: mpsc::UnboundedSender<AckToken>) -> Self {
        AckHandle {
            inner: Some((token, tx)),
        }
    }

    /// Whether acking this handle does anything (false for QoS 0).
    pub fn is_required(&self) -> bool {
        self.inner.is_some()
    }

    /// Acknowledge the message to its source.
    pub fn ack(mut self) {
        if let Some((token, tx)) = self.inner.take() {
            // The owner may be gone (link closed); then the broker redelivers.
            let _ = tx.send(token);
        }
    }
}

impl fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Some((token, _)) => write!(f, "AckHandle({token:?})"),
            None => write!(f, "AckHandle(none)"),
        }
    }
}

/// One incoming message with its acknowledgement handle.
#[derive(Debug)]
pub struct Delivery {
    /// The message as received (QoS is the delivered QoS).
    pub message: Message,
    /// Call `ack()` once the message is handled.
    pub ack: AckHandle,
}

/// A pipe's handle to one broker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Link {
    name: String,
    requests: mpsc::Sender<LinkRequest>,
    state: watch::Receiver<LinkState>,
}

impl Link {
    /// Builds a link from its parts; used by the client core and the broker.
    pub fn new(
        name: impl Into<String>,
        requests: mpsc::Sender<LinkRequest>,
        state: watch::Receiver<LinkState>,
    ) -> Self {
        Link {
            name: name.into(),
            requests,
            state,
        }
    }

    /// The broker name this link belongs to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues `message` for publishing. Waits while the request queue is full
    /// (backpressure); the returned receiver resolves once the broker acknowledged.
    pub async fn publish(&self, message: Message) -> Result<PublishAck, LinkError> {
        let (done, rx) = oneshot::channel();
        self.requests
            .send(LinkRequest::Publish {
                message,
                done: PublishDone::oneshot(done),
            })
            .await
            .map_err(|_| LinkError::Closed)?;
        Ok(PublishAck { rx })
    }

    /// Queues `message` for publishing like [`Link::publish`], but reports
    /// the acknowledgement as `(tag, result)` on `to` (the channel all of the
    /// caller's publishes share). Exactly one completion arrives per queued
    /// publish, `Err(Closed)` included. `Err` here: the link is closed and
    /// nothing was queued (no completion follows).
    pub async fn publish_tagged(
        &self,
        message: Message,
        tag: u64,
        to: &mpsc::UnboundedSender<Completion>,
    ) -> Result<(), LinkError> {
        self.publish_tagged_from(message, tag, None, to).await
    }

    /// As [`Link::publish_tagged`], naming where the message comes from
    /// (a spooled pipe's record), so a client that keeps its QoS 2 flows on
    /// disk continues the flow it holds for it after a restart.
    pub async fn publish_tagged_from(
        &self,
        message: Message,
        tag: u64,
        origin: Option<Origin>,
        to: &mpsc::UnboundedSender<Completion>,
    ) -> Result<(), LinkError> {
        let done = match origin {
            Some(origin) => PublishDone::tagged_from(tag, to.clone(), origin),
            None => PublishDone::tagged(tag, to.clone()),
        };
        let request = LinkRequest::Publish { message, done };
        match self.requests.send(request).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(request)) => {
                if let LinkRequest::Publish { done, .. } = request {
                    // Not queued: the caller learns it from this `Err`.
                    done.disarm();
                }
                Err(LinkError::Closed)
            }
        }
    }

    /// Subscribes and waits for the SUBACK; returns the granted QoS per filter.
    pub async fn subscribe(
        &self,
        filters: Vec<(String, QoS)>,
    ) -> Result<Vec<Option<QoS>>, LinkError> {
        let filters = filters
            .into_iter()
            .map(|(f, q)| (f, SubscribeOptions::qos(q)))
            .collect();
        self.subscribe_with(filters).await
    }

    /// Subscribes with MQTT 5 subscription options per filter (a 3.1.1 peer
    /// gets only the QoS) and waits for the SUBACK; returns the granted QoS
    /// per filter.
    pub async fn subscribe_with(
        &self,
        filters: Vec<(String, SubscribeOptions)>,
    ) -> Result<Vec<Option<QoS>>, LinkError> {
        let (done, rx) = oneshot::channel();
        self.requests
            .send(LinkRequest::Subscribe { filters, done })
            .await
            .map_err(|_| LinkError::Closed)?;
        rx.await.map_err(|_| LinkError::Closed)?
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub async fn unsubscribe(&self, filters: Vec<String>) -> Result<(), LinkError> {
        let (done, rx) = oneshot::channel();
        self.requests
            .send(LinkRequest::Unsubscribe { filters, done })
            .await
            .map_err(|_| LinkError::Closed)?;
        rx.await.map_err(|_| LinkError::Closed)?
    }

    /// Asks the owner to disconnect gracefully and close the link.
    pub async fn shutdown(&self) {
        let _ = self.requests.send(LinkRequest::Shutdown).await;
    }

    /// A watch of the connection state.
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }
}

/// Resolves when the broker acknowledged a publish.
#[derive(Debug)]
pub struct PublishAck {
    rx: oneshot::Receiver<Result<(), LinkError>>,
}

impl PublishAck {
    /// Waits for the acknowledgement.
    pub async fn wait(self) -> Result<(), LinkError> {
        self.rx.await.map_err(|_| LinkError::Closed)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> (Link, mpsc::Receiver<LinkRequest>) {
        let (tx, rx) = mpsc::channel(4);
        let (_state_tx, state_rx) = watch::channel(LinkState::Closed);
        (Link::new("t", tx, state_rx), rx)
    }

    fn done_of(req: Option<LinkRequest>) -> PublishDone {
        match req {
            Some(LinkRequest::Publish { done, .. }) => done,
            other => panic!("expected a publish, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn tagged_publishes_complete_on_one_channel_and_a_dropped_one_reports_closed() {
        let (link, mut owner) = link();
        let (to, mut completions) = mpsc::unbounded_channel();
        let m = Message::new("t", b"x".to_vec(), QoS::AtLeastOnce, false);
        link.publish_tagged(m.clone(), 7, &to).await.unwrap();
        link.publish_tagged(m.clone(), 8, &to).await.unwrap();
        let first = done_of(owner.recv().await);
        let second = done_of(owner.recv().await);
        // Out of order, as acks can be.
        second.send(Ok(())).unwrap();
        drop(first);
        assert_eq!(completions.recv().await, Some((8, Ok(()))));
        assert_eq!(completions.recv().await, Some((7, Err(LinkError::Closed))));
        assert!(
            completions.try_recv().is_err(),
            "exactly one completion each"
        );
    }

    #[tokio::test]
    async fn a_closed_link_refuses_a_tagged_publish_without_a_completion() {
        let (link, owner) = link();
        drop(owner);
        let (to, mut completions) = mpsc::unbounded_channel();
        let m = Message::new("t", b"x".to_vec(), QoS::AtMostOnce, false);
        assert_eq!(link.publish_tagged(m, 1, &to).await, Err(LinkError::Closed));
        drop(to);
        assert_eq!(completions.recv().await, None, "no completion follows");
    }

    #[tokio::test]
    async fn a_oneshot_publish_still_resolves() {
        let (link, mut owner) = link();
        let m = Message::new("t", b"x".to_vec(), QoS::AtMostOnce, false);
        let ack = link.publish(m).await.unwrap();
        done_of(owner.recv().await)
            .send(Err(LinkError::Rejected("no".into())))
            .unwrap();
        assert_eq!(ack.wait().await, Err(LinkError::Rejected("no".into())));
    }
}
