//! Acknowledgements held back until the store has the message on disk.
//!
//! A QoS 1/2 publish that a persistent session stored is acknowledged
//! (PUBACK/PUBREC, or a link's `done`) only once durable; so is a stored
//! session's SUBACK/UNSUBACK (its subscriptions changed). The router never
//! waits: the writes of one wake-up form an *epoch*, committed as one batch
//! at its end; the committer task waits for the store's group commit of
//! every epoch it was told about (many epochs per sync while one is under
//! way) and reports back with [`Event::Durable`]. Acknowledgements leave in
//! order: [`Incoming::ack`](crate::protocol::Incoming::ack) holds a later
//! one until every earlier one of the same client went out.

use tracing::error;

use super::*;
use crate::store::{Store, StoreError};

/// Who waits for an epoch to be durable.
#[derive(Debug)]
pub(crate) enum Waiter {
    /// A network client's publish: its PUBACK/PUBREC.
    Publisher(ConnId, AckToken),
    /// A local link's publish.
    Local(PublishDone),
    /// A network client's SUBACK/UNSUBACK (its stored session's record
    /// changed), then the retained messages of the new subscriptions.
    Control {
        conn: ConnId,
        packet: Control,
        retained: Vec<(String, Subscription)>,
    },
}

/// A SUBACK/UNSUBACK in the version of the client's connection.
#[derive(Debug)]
pub(crate) enum Control {
    /// To a 3.1/3.1.1 client.
    V3(Packet),
    /// To an MQTT 5 client (reason codes per filter).
    V5(Box<rumqttc::v5::mqttbytes::v5::Packet>),
}

/// Starts the committer: for every batch of epochs received, one
/// `durable()` and one [`Event::Durable`] back to the router.
pub(super) fn spawn_committer(
    tracker: &TaskTracker,
    store: Store,
    router: mpsc::Sender<Event>,
) -> mpsc::UnboundedSender<u64> {
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    tracker.spawn(async move {
        let mut epochs = Vec::new();
        // Ends when the router drops its sender (router stopped).
        while rx.recv_many(&mut epochs, 1024).await > 0 {
            let through = epochs.iter().copied().max().unwrap_or(0);
            epochs.clear();
            let result = store.durable().await;
            if router
                .send(Event::Durable { through, result })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    tx
}

impl Router {
    /// Acknowledges `waiter` now, or (its message was stored) once the
    /// current epoch is durable.
    pub(super) fn release(&mut self, waiter: Waiter, stored: bool) {
        if stored && self.commit.is_some() {
            self.waiting.push_back((self.epoch, waiter));
        } else {
            self.acknowledge(waiter);
        }
    }

    fn acknowledge(&mut self, waiter: Waiter) {
        match waiter {
            Waiter::Publisher(conn, token) => self.ack_publisher(conn, token),
            Waiter::Local(done) => {
                let _ = done.send(Ok(()));
            }
            Waiter::Control {
                conn,
                packet,
                retained,
            } => {
                let cap = self.hard_cap;
                if let Some(session) = self.session_of(conn) {
                    match packet {
                        Control::V3(p) => session.send_control(p, cap),
                        Control::V5(p) => session.send_control_v5(*p, cap),
                    }
                    self.send_retained(conn, retained);
                }
            }
        }
    }

    /// Ends a wake-up: commits its writes and, if acknowledgements wait on
    /// them, asks the committer for durability of this epoch.
    pub(super) fn flush(&mut self) {
        if let Err(e) = self.journal.commit() {
            error!(broker = %self.name, error = %e, "store write failed: publishes of this batch are not acknowledged");
            self.fail_through(self.epoch, &e);
        }
        if self.waiting.back().is_some_and(|(e, _)| *e == self.epoch) {
            if let Some(commit) = &self.commit {
                let _ = commit.send(self.epoch);
            }
            self.epoch += 1;
        }
    }

    /// See [`Event::Durable`].
    pub(super) fn durable(&mut self, through: u64, result: Result<(), StoreError>) {
        match result {
            Ok(()) => {
                while self.waiting.front().is_some_and(|(e, _)| *e <= through) {
                    if let Some((_, waiter)) = self.waiting.pop_front() {
                        self.acknowledge(waiter);
                    }
                }
            }
            Err(e) => {
                error!(broker = %self.name, error = %e, "store sync failed: publishes not acknowledged");
                self.fail_through(through, &e);
            }
        }
    }

    /// The writes up to `through` may not be on disk: never acknowledge
    /// them. A network publisher's connection is closed (it sends them
    /// again when it reconnects); a link's publish fails as `Closed`, so the
    /// pipe neither counts it forwarded nor acknowledges its source: it stays
    /// with the source (or in the pipe's spool) and is sent again after a
    /// restart. (`Rejected` would have been a counted drop: a loss.)
    fn fail_through(&mut self, through: u64, e: &StoreError) {
        while self.waiting.front().is_some_and(|(ep, _)| *ep <= through) {
            let Some((_, waiter)) = self.waiting.pop_front() else {
                break;
            };
            match waiter {
                Waiter::Publisher(conn, _) | Waiter::Control { conn, .. } => {
                    if let Some(att) = self.session_of(conn).and_then(|s| s.conn.as_ref()) {
                        att.outlet.abort();
                    }
                }
                Waiter::Local(done) => {
                    tracing::debug!(error = %e, "a pipe's publish was not stored");
                    let _ = done.send(Err(LinkError::Closed));
                }
            }
        }
    }
}
