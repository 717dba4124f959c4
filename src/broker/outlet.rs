//! The router's way out to one connection (or local link): an unbounded
//! channel of packets plus a shared count of packets not yet written. The
//! router never blocks on a slow consumer; it bounds what it hands over
//! instead: QoS 1/2 by the inflight window, QoS 0 by `pending()`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::protocol::Message;
use crate::protocol::v4::Packet;

/// What the router sends to a connection.
#[derive(Debug)]
pub(crate) enum Out {
    /// A packet to write (boxed: channel blocks and batches hold many slots,
    /// and 10,000 idle connections must stay small).
    Packet(Box<Packet>),
    /// A PUBLISH to an in-process link, as the message itself and its
    /// packet id (0 for QoS 0): nothing to encode and decode again.
    Publish(Box<(Message, u16)>),
    /// Write what is queued, then close (takeover of a network session,
    /// a link held down, broker shutdown). A local link closed this way
    /// re-attaches.
    Close,
    /// Another in-process link took this link's session over: close for
    /// good (re-attaching would take it back, and the two would alternate).
    Replaced,
}

/// Sending side, held by the router (and the connection's reader for its
/// own replies such as PINGRESP).
#[derive(Debug, Clone)]
pub(crate) struct Outlet {
    tx: mpsc::UnboundedSender<Out>,
    pending: Arc<AtomicUsize>,
    /// Stops the connection at once (reader and writer), queued data or not.
    stop: CancellationToken,
    /// The client's publishes parked unacknowledged by the router.
    parked: Gate,
}

/// Count of a connection's publishes the router holds unacknowledged
/// (parked behind a full local link session). The connection's reader stops
/// reading while it is at the bound, so a client that ignores its own
/// inflight window cannot make the broker buffer without bound.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gate {
    count: Arc<AtomicUsize>,
    changed: Arc<Notify>,
}

impl Gate {
    /// Publishes parked now.
    pub fn get(&self) -> usize {
        self.count.load(Relaxed)
    }

    /// One more publish parked.
    pub fn add(&self) {
        self.count.fetch_add(1, Relaxed);
    }

    /// `n` parked publishes released (or dropped); wakes the reader.
    pub fn sub(&self, n: usize) {
        self.count.fetch_sub(n, Relaxed);
        self.changed.notify_waiters();
    }

    /// Waits while `bound` or more publishes are parked.
    pub async fn below(&self, bound: usize) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a `sub` in between is not missed.
            changed.as_mut().enable();
            if self.get() < bound {
                return;
            }
            changed.await;
        }
    }
}

/// Receiving side, held by the connection's writer (or the local link task).
#[derive(Debug)]
pub(crate) struct OutletRx {
    rx: mpsc::UnboundedReceiver<Out>,
    pending: Arc<AtomicUsize>,
    stop: CancellationToken,
}

/// A new outlet pair.
pub(crate) fn outlet() -> (Outlet, OutletRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let pending = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    (
        Outlet {
            tx,
            pending: pending.clone(),
            stop: stop.clone(),
            parked: Gate::default(),
        },
        OutletRx { rx, pending, stop },
    )
}

impl Outlet {
    /// Hands `packet` to the connection; false if it is gone.
    pub fn send(&self, packet: Packet) -> bool {
        self.pending.fetch_add(1, Relaxed);
        if self.tx.send(Out::Packet(Box::new(packet))).is_err() {
            self.pending.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// Hands a PUBLISH to an in-process link as the message itself;
    /// false if the link is gone.
    pub fn send_publish(&self, message: Message, pkid: u16) -> bool {
        self.pending.fetch_add(1, Relaxed);
        if self
            .tx
            .send(Out::Publish(Box::new((message, pkid))))
            .is_err()
        {
            self.pending.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// Asks the connection to flush and close.
    pub fn close(&self) {
        let _ = self.tx.send(Out::Close);
    }

    /// Tells a local link that another link took its session over.
    pub fn replaced(&self) {
        let _ = self.tx.send(Out::Replaced);
    }

    /// Stops the connection now: a client that does not read its socket
    /// must not make the broker buffer without bound.
    pub fn abort(&self) {
        self.stop.cancel();
    }

    /// Packets handed over and not yet written.
    pub fn pending(&self) -> usize {
        self.pending.load(Relaxed)
    }

    /// The count of this connection's parked publishes.
    pub fn parked(&self) -> &Gate {
        &self.parked
    }
}

impl OutletRx {
    /// Receives up to `limit` items; 0 when every sender is gone.
    pub async fn recv_many(&mut self, buf: &mut Vec<Out>, limit: usize) -> usize {
        self.rx.recv_many(buf, limit).await
    }

    /// The connection's stop token (cancelled by [`Outlet::abort`]).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Marks `n` packets as written.
    pub fn written(&self, n: usize) {
        self.pending.fetch_sub(n, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn gate_blocks_at_the_bound_and_opens_on_release() {
        let gate = Gate::default();
        gate.add();
        gate.add();
        assert!(gate.below(3).now_or_never().is_some());
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.below(2).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        gate.sub(1);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("released")
            .expect("task");
        assert_eq!(gate.get(), 1);
    }
}
