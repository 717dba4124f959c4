//! The one API a pipe sees for a broker, local or remote.
//!
//! Both the client core (`client`) and the built-in broker (`broker`) hand out
//! a [`Link`] plus a stream of [`Delivery`]s. A pipe cannot tell a local broker
//! from a remote one. The owner of a link (the client connection task, or the
//! broker's local session) consumes [`LinkRequest`]s and produces deliveries.

use std::fmt;

use tokio::sync::{mpsc, oneshot, watch};

pub use crate::protocol::AckToken;
use crate::protocol::{Message, QoS};

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
        /// Completion; dropped receiver means the caller no longer cares.
        done: oneshot::Sender<Result<(), LinkError>>,
    },
    /// Subscribe to filters; kept and restored whenever the broker has no session.
    Subscribe {
        /// (filter, maximum QoS) pairs.
        filters: Vec<(String, QoS)>,
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
            .send(LinkRequest::Publish { message, done })
            .await
            .map_err(|_| LinkError::Closed)?;
        Ok(PublishAck { rx })
    }

    /// Subscribes and waits for the SUBACK; returns the granted QoS per filter.
    pub async fn subscribe(
        &self,
        filters: Vec<(String, QoS)>,
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
