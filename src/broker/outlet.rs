//! The router's way out to one connection (or local link): a queue of
//! packets plus a shared count of packets not yet written. The router never
//! blocks on a slow consumer; it bounds what it hands over instead: QoS 1/2
//! by the inflight window, QoS 0 by `pending()`.
//!
//! Everything a connection's two sides share lives in one allocation (issue
//! 10: 10,000 idle clients must stay cheap): the queue is a `VecDeque`
//! behind a mutex that allocates nothing until the first packet (a tokio
//! mpsc allocates a block of slots up front), the receiver's waker is
//! stored only while it waits, and the stop flag and the parked count sit
//! next to it instead of in allocations of their own. One lock per packet,
//! as the mpsc's one atomic push per packet; no allocation per packet
//! beyond the box each `Out` already carries (the queue keeps its capacity).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use tokio::sync::Notify;

use crate::protocol::Message;
use crate::protocol::v4::Packet;
use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;

/// What the router sends to a connection.
#[derive(Debug)]
pub(crate) enum Out {
    /// A packet to write (boxed: queues and batches hold many slots,
    /// and 10,000 idle connections must stay small).
    Packet(Box<Packet>),
    /// A PUBLISH to an in-process link, as the message itself and its
    /// packet id (0 for QoS 0): nothing to encode and decode again.
    Publish(Box<(Message, u16)>),
    /// An MQTT 5 packet with what only v5 can say (a reason code, an
    /// UNSUBACK's per-filter codes, a DISCONNECT); only ever sent to a v5
    /// connection.
    V5(Box<V5Packet>),
    /// Write what is queued, then close (takeover of a network session,
    /// a link held down, broker shutdown). A local link closed this way
    /// re-attaches.
    Close,
    /// Another in-process link took this link's session over: close for
    /// good (re-attaching would take it back, and the two would alternate).
    Replaced,
}

/// What both sides of an outlet share (one allocation per connection).
#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Packets handed over and not yet written.
    pending: AtomicUsize,
    /// The client's publishes parked unacknowledged by the router.
    parked: AtomicUsize,
    parked_changed: Notify,
    /// Set by [`Stop::cancel`]; `stopped` wakes whoever waits for it.
    stop: AtomicBool,
    stopped: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Out>,
    /// The receiver's waker while it waits for an item.
    waker: Option<Waker>,
    /// Live [`Outlet`]s: the receiver sees the end once none is left.
    senders: usize,
    /// The [`OutletRx`] was dropped: sends fail.
    closed: bool,
}

impl Shared {
    /// The queue; a panic while it was held leaves it consistent (every
    /// critical section is a push, a drain or a flag), so poison is ignored.
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sending side, held by the router (and the connection's reader for its
/// own replies such as PINGRESP).
#[derive(Debug)]
pub(crate) struct Outlet {
    /// Holds the shared state (a `Gate` is a view of it).
    parked: Gate,
}

/// Count of a connection's publishes the router holds unacknowledged
/// (parked behind a full local link session). The connection's reader stops
/// reading while it is at the bound, so a client that ignores its own
/// inflight window cannot make the broker buffer without bound.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gate {
    shared: Arc<Shared>,
}

impl Gate {
    /// Publishes parked now.
    pub fn get(&self) -> usize {
        self.shared.parked.load(Relaxed)
    }

    /// One more publish parked.
    pub fn add(&self) {
        self.shared.parked.fetch_add(1, Relaxed);
    }

    /// `n` parked publishes released (or dropped); wakes the reader.
    pub fn sub(&self, n: usize) {
        self.shared.parked.fetch_sub(n, Relaxed);
        self.shared.parked_changed.notify_waiters();
    }

    /// Waits while `bound` or more publishes are parked.
    pub async fn below(&self, bound: usize) {
        loop {
            let changed = self.shared.parked_changed.notified();
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

/// Stops a connection at once (reader and writer), queued data or not.
#[derive(Debug, Clone)]
pub(crate) struct Stop {
    shared: Arc<Shared>,
}

impl Stop {
    /// Stops; wakes every [`Stop::cancelled`].
    pub fn cancel(&self) {
        self.shared.stop.store(true, SeqCst);
        self.shared.stopped.notify_waiters();
    }

    /// Whether [`Stop::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.shared.stop.load(SeqCst)
    }

    /// Completes once [`Stop::cancel`] was called (at once if it was).
    pub async fn cancelled(&self) {
        loop {
            let stopped = self.shared.stopped.notified();
            tokio::pin!(stopped);
            // Registered before the check, so a `cancel` in between is not missed.
            stopped.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            stopped.await;
        }
    }
}

/// Receiving side, held by the connection's task (or the local link task).
#[derive(Debug)]
pub(crate) struct OutletRx {
    shared: Arc<Shared>,
}

/// A new outlet pair.
pub(crate) fn outlet() -> (Outlet, OutletRx) {
    let shared = Arc::new(Shared::default());
    shared.queue().senders = 1;
    (
        Outlet {
            parked: Gate {
                shared: shared.clone(),
            },
        },
        OutletRx { shared },
    )
}

impl Clone for Outlet {
    fn clone(&self) -> Self {
        self.shared().queue().senders += 1;
        Outlet {
            parked: self.parked.clone(),
        }
    }
}

impl Drop for Outlet {
    fn drop(&mut self) {
        let waker = {
            let mut q = self.shared().queue();
            q.senders -= 1;
            if q.senders == 0 { q.waker.take() } else { None }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for OutletRx {
    fn drop(&mut self) {
        // Queued items go now, as an mpsc receiver's do.
        let items = {
            let mut q = self.shared.queue();
            q.closed = true;
            q.waker = None;
            std::mem::take(&mut q.items)
        };
        drop(items);
    }
}

impl Outlet {
    fn shared(&self) -> &Arc<Shared> {
        &self.parked.shared
    }

    /// Queues `item`; false if the receiver is gone.
    fn push(&self, item: Out) -> bool {
        let waker = {
            let mut q = self.shared().queue();
            if q.closed {
                return false;
            }
            q.items.push_back(item);
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Hands `packet` to the connection; false if it is gone.
    pub fn send(&self, packet: Packet) -> bool {
        self.shared().pending.fetch_add(1, Relaxed);
        if !self.push(Out::Packet(Box::new(packet))) {
            self.shared().pending.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// Hands a PUBLISH to an in-process link as the message itself;
    /// false if the link is gone.
    pub fn send_publish(&self, message: Message, pkid: u16) -> bool {
        self.shared().pending.fetch_add(1, Relaxed);
        if !self.push(Out::Publish(Box::new((message, pkid)))) {
            self.shared().pending.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// Hands an MQTT 5 packet to a v5 connection; false if it is gone.
    pub fn send_v5(&self, packet: V5Packet) -> bool {
        self.shared().pending.fetch_add(1, Relaxed);
        if !self.push(Out::V5(Box::new(packet))) {
            self.shared().pending.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// Asks the connection to flush and close.
    pub fn close(&self) {
        self.push(Out::Close);
    }

    /// Tells a local link that another link took its session over.
    pub fn replaced(&self) {
        self.push(Out::Replaced);
    }

    /// Stops the connection now: a client that does not read its socket
    /// must not make the broker buffer without bound.
    pub fn abort(&self) {
        let shared = self.shared();
        shared.stop.store(true, SeqCst);
        shared.stopped.notify_waiters();
    }

    /// Packets handed over and not yet written.
    pub fn pending(&self) -> usize {
        self.shared().pending.load(Relaxed)
    }

    /// The count of this connection's parked publishes.
    pub fn parked(&self) -> &Gate {
        &self.parked
    }
}

impl OutletRx {
    /// Receives up to `limit` items into `buf`; 0 when every sender is gone
    /// and nothing is left (or `limit` is 0). Cancel safe: items are taken
    /// only when the call completes.
    pub async fn recv_many(&mut self, buf: &mut Vec<Out>, limit: usize) -> usize {
        if limit == 0 {
            return 0;
        }
        poll_fn(|cx| {
            let mut q = self.shared.queue();
            if !q.items.is_empty() {
                let n = q.items.len().min(limit);
                buf.extend(q.items.drain(..n));
                return Poll::Ready(n);
            }
            if q.senders == 0 {
                return Poll::Ready(0);
            }
            match &mut q.waker {
                Some(w) => w.clone_from(cx.waker()),
                None => q.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// The connection's stop (cancelled by [`Outlet::abort`]).
    pub fn stop_token(&self) -> Stop {
        Stop {
            shared: self.shared.clone(),
        }
    }

    /// Marks `n` packets as written.
    pub fn written(&self, n: usize) {
        self.shared.pending.fetch_sub(n, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn queue_wakes_the_receiver_ends_with_the_last_sender_and_fails_without_receiver() {
        let (tx, mut rx) = outlet();
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move {
            let mut buf = Vec::new();
            let n = rx.recv_many(&mut buf, 8).await;
            (rx, buf, n)
        });
        tokio::task::yield_now().await;
        assert!(tx2.send(Packet::PingResp));
        let (mut rx, buf, n) = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!((n, buf.len()), (1, 1));
        assert_eq!(tx.pending(), 1);
        rx.written(1);
        assert_eq!(tx.pending(), 0);
        // Items queued before the senders went are still received, then 0.
        tx.close();
        drop(tx);
        let mut buf = Vec::new();
        assert_eq!(rx.recv_many(&mut buf, 8).now_or_never(), Some(1));
        assert!(matches!(buf[0], Out::Close));
        assert_eq!(rx.recv_many(&mut buf, 8).now_or_never(), None, "tx2 alive");
        drop(tx2);
        assert_eq!(rx.recv_many(&mut buf, 8).now_or_never(), Some(0));
        let (tx, rx) = outlet();
        drop(rx);
        assert!(!tx.send(Packet::PingResp));
        assert_eq!(tx.pending(), 0);
    }

    #[tokio::test]
    async fn abort_wakes_the_stop() {
        let (tx, rx) = outlet();
        let stop = rx.stop_token();
        assert!(stop.cancelled().now_or_never().is_none());
        let waiting = tokio::spawn({
            let stop = stop.clone();
            async move { stop.cancelled().await }
        });
        tokio::task::yield_now().await;
        tx.abort();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert!(stop.is_cancelled());
    }

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
