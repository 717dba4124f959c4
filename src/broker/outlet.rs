//! The router's way out to one connection (or local link): an unbounded
//! channel of packets plus a shared count of packets not yet written. The
//! router never blocks on a slow consumer; it bounds what it hands over
//! instead: QoS 1/2 by the inflight window, QoS 0 by `pending()`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio::sync::mpsc;

use crate::protocol::v4::Packet;

/// What the router sends to a connection.
#[derive(Debug)]
pub(crate) enum Out {
    /// A packet to write.
    Packet(Packet),
    /// Write what is queued, then close (takeover, broker shutdown).
    Close,
}

/// Sending side, held by the router (and the connection's reader for its
/// own replies such as PINGRESP).
#[derive(Debug, Clone)]
pub(crate) struct Outlet {
    tx: mpsc::UnboundedSender<Out>,
    pending: Arc<AtomicUsize>,
}

/// Receiving side, held by the connection's writer (or the local link task).
#[derive(Debug)]
pub(crate) struct OutletRx {
    rx: mpsc::UnboundedReceiver<Out>,
    pending: Arc<AtomicUsize>,
}

/// A new outlet pair.
pub(crate) fn outlet() -> (Outlet, OutletRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let pending = Arc::new(AtomicUsize::new(0));
    (
        Outlet {
            tx,
            pending: pending.clone(),
        },
        OutletRx { rx, pending },
    )
}

impl Outlet {
    /// Hands `packet` to the connection; false if it is gone.
    pub fn send(&self, packet: Packet) -> bool {
        self.pending.fetch_add(1, Relaxed);
        if self.tx.send(Out::Packet(packet)).is_err() {
            self.pending.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// Asks the connection to flush and close.
    pub fn close(&self) {
        let _ = self.tx.send(Out::Close);
    }

    /// Packets handed over and not yet written.
    pub fn pending(&self) -> usize {
        self.pending.load(Relaxed)
    }
}

impl OutletRx {
    /// Receives up to `limit` items; 0 when every sender is gone.
    pub async fn recv_many(&mut self, buf: &mut Vec<Out>, limit: usize) -> usize {
        self.rx.recv_many(buf, limit).await
    }

    /// Marks `n` packets as written.
    pub fn written(&self, n: usize) {
        self.pending.fetch_sub(n, Relaxed);
    }
}
