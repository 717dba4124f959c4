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
//!
//! The shared state also carries the connection's keepalive deadline and
//! why it was stopped: the router checks every connection's deadline on
//! its tick and tells it of a broker shutdown through it, so a waiting
//! connection holds no timer and no shutdown waiter of its own.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio::time::Instant;

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
#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// Packets handed over and not yet written.
    pending: AtomicUsize,
    /// The client's publishes parked unacknowledged by the router (a
    /// change wakes the receiver, see [`OutletRx::poll_wake`]).
    parked: AtomicUsize,
    /// Why the connection was stopped ([`Halt`] as `u8`, 0 while it
    /// runs; the first reason wins); `stopped` wakes whoever waits for it.
    stop: AtomicU8,
    stopped: Notify,
    /// The connection's keepalive deadline on its [`KeepaliveClock`]
    /// ([`NO_DEADLINE`]: none), moved by the connection as it reads and
    /// checked by the router ([`Outlet::expire_keepalive`]).
    deadline: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            queue: Mutex::default(),
            pending: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            stop: AtomicU8::new(0),
            stopped: Notify::new(),
            deadline: AtomicU64::new(NO_DEADLINE),
        }
    }
}

/// Why a connection was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Halt {
    /// [`Outlet::abort`] or [`OutletRx::stop`]: takeover, a client that
    /// does not read, the connection's own end.
    Aborted = 1,
    /// The broker shuts down ([`Outlet::shut_down`]): no will.
    ShutDown = 2,
    /// Nothing was read within the keepalive deadline
    /// ([`Outlet::expire_keepalive`]).
    KeepaliveExpired = 3,
}

impl Halt {
    fn of(v: u8) -> Option<Halt> {
        match v {
            1 => Some(Halt::Aborted),
            2 => Some(Halt::ShutDown),
            3 => Some(Halt::KeepaliveExpired),
            _ => None,
        }
    }
}

/// No keepalive deadline (keepalive off, or not enforced for now).
const NO_DEADLINE: u64 = u64::MAX;

/// Milliseconds since a broker's start, the clock keepalive deadlines are
/// kept in (one `u64` in the outlet instead of a timer per connection).
/// The broker's connections and its router share one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeepaliveClock {
    start: Instant,
}

impl KeepaliveClock {
    /// A clock starting now.
    pub fn new() -> Self {
        KeepaliveClock {
            start: Instant::now(),
        }
    }

    /// `at` on this clock, rounded up to the next millisecond (a deadline
    /// is never seen early).
    pub fn millis(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.start);
        let ms = since.as_millis() + u128::from(!since.subsec_nanos().is_multiple_of(1_000_000));
        u64::try_from(ms)
            .unwrap_or(NO_DEADLINE - 1)
            .min(NO_DEADLINE - 1)
    }
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Out>,
    /// The receiver's waker while it waits (for an item, or in
    /// [`OutletRx::poll_wake`] also for the stop or the parked count).
    waker: Option<Waker>,
    /// The receiver waits for items: a push wakes it (a connection whose
    /// write buffer is full waits only for the stop or the parked count).
    wants_items: bool,
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

    /// Wakes the receiver if it waits in [`OutletRx::poll_wake`] (the stop
    /// or the parked count changed). Taken under the queue's lock, where
    /// `poll_wake` checks both, so a change between its check and its
    /// waiting is not missed.
    fn wake_receiver(&self) {
        let waker = self.queue().waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Stops the connection for `why` (unless it was stopped already);
    /// wakes every [`Stop::cancelled`] and the receiver.
    fn halt(&self, why: Halt) {
        let _ = self.stop.compare_exchange(0, why as u8, SeqCst, SeqCst);
        self.stopped.notify_waiters();
        self.wake_receiver();
    }

    fn halted(&self) -> Option<Halt> {
        Halt::of(self.stop.load(SeqCst))
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
    #[cfg(test)]
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
        self.shared.wake_receiver();
    }
}

/// A view of a connection's stop, to wait for it (a local link's task):
/// the connection stops at once, queued data or not.
#[derive(Debug, Clone)]
pub(crate) struct Stop {
    shared: Arc<Shared>,
}

impl Stop {
    /// Whether the connection was stopped (for any [`Halt`]).
    pub fn is_cancelled(&self) -> bool {
        self.shared.halted().is_some()
    }

    /// Completes once the connection was stopped (at once if it was).
    pub async fn cancelled(&self) {
        loop {
            let stopped = self.shared.stopped.notified();
            tokio::pin!(stopped);
            // Registered before the check, so a stop in between is not missed.
            stopped.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            stopped.await;
        }
    }
}

/// What woke a connection's task in [`OutletRx::poll_wake`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The connection was stopped, and why.
    Stopped(Halt),
    /// The parked count fell below the bound.
    Unparked,
    /// `n` items were taken (0: every sender is gone).
    Items(usize),
}

/// Stores the waker of `cx` (reusing the stored one's place).
fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) => w.clone_from(cx.waker()),
        None => *slot = Some(cx.waker().clone()),
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
            if q.wants_items { q.waker.take() } else { None }
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Queues `item` counted as pending until written; false if the
    /// receiver is gone (and then not counted).
    fn push_counted(&self, item: Out) -> bool {
        self.shared().pending.fetch_add(1, Relaxed);
        if !self.push(item) {
            self.shared().pending.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// Hands `packet` to the connection; false if it is gone.
    pub fn send(&self, packet: Packet) -> bool {
        self.push_counted(Out::Packet(Box::new(packet)))
    }

    /// Hands a PUBLISH to an in-process link as the message itself;
    /// false if the link is gone.
    pub fn send_publish(&self, message: Message, pkid: u16) -> bool {
        self.push_counted(Out::Publish(Box::new((message, pkid))))
    }

    /// Hands an MQTT 5 packet to a v5 connection; false if it is gone.
    pub fn send_v5(&self, packet: V5Packet) -> bool {
        self.push_counted(Out::V5(Box::new(packet)))
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
        self.shared().halt(Halt::Aborted);
    }

    /// Stops the connection because the broker shuts down (it closes
    /// without its will).
    pub fn shut_down(&self) {
        self.shared().halt(Halt::ShutDown);
    }

    /// Stops the connection if its keepalive deadline is at or before
    /// `now` (on the broker's [`KeepaliveClock`]); whether it did.
    pub fn expire_keepalive(&self, now: u64) -> bool {
        let shared = self.shared();
        if shared.deadline.load(Relaxed) > now || shared.halted().is_some() {
            return false;
        }
        shared.halt(Halt::KeepaliveExpired);
        true
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
            q.wants_items = true;
            set_waker(&mut q.waker, cx);
            Poll::Pending
        })
        .await
    }

    /// What a network connection's task waits for from its outlet, in one
    /// poll (one waker, no waiting future of its own for each): the stop,
    /// the parked count falling below `unpark_below` (when given), and,
    /// when `take`, up to `limit` items into `buf` (as
    /// [`OutletRx::recv_many`]: `Items(0)` once every sender is gone).
    /// Nothing is taken unless it returns `Ready(Items(_))`.
    pub fn poll_wake(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<Out>,
        limit: usize,
        take: bool,
        unpark_below: Option<usize>,
    ) -> Poll<Wake> {
        let mut q = self.shared.queue();
        if let Some(why) = self.shared.halted() {
            return Poll::Ready(Wake::Stopped(why));
        }
        if unpark_below.is_some_and(|bound| self.shared.parked.load(Relaxed) < bound) {
            return Poll::Ready(Wake::Unparked);
        }
        if take && limit > 0 {
            if !q.items.is_empty() {
                let n = q.items.len().min(limit);
                buf.extend(q.items.drain(..n));
                return Poll::Ready(Wake::Items(n));
            }
            if q.senders == 0 {
                return Poll::Ready(Wake::Items(0));
            }
        }
        q.wants_items = take;
        set_waker(&mut q.waker, cx);
        Poll::Pending
    }

    /// Gives the queue's memory back if it is empty (an idle connection).
    pub fn shrink(&self) {
        let mut q = self.shared.queue();
        if q.items.is_empty() {
            q.items = VecDeque::new();
        }
    }

    /// The connection's stop (cancelled by [`Outlet::abort`]).
    pub fn stop_token(&self) -> Stop {
        Stop {
            shared: self.shared.clone(),
        }
    }

    /// Sets the keepalive deadline the router checks (`None`: none); on
    /// `clock`, rounded up to the millisecond.
    pub fn set_keepalive_deadline(&self, deadline: Option<Instant>, clock: &KeepaliveClock) {
        let ms = deadline.map_or(NO_DEADLINE, |d| clock.millis(d));
        self.shared.deadline.store(ms, Relaxed);
    }

    /// Stops the connection (its own end: whoever waits on its
    /// [`Stop`] sees it).
    pub fn stop(&self) {
        self.shared.halt(Halt::Aborted);
    }

    /// The count of the connection's parked publishes.
    pub fn parked(&self) -> usize {
        self.shared.parked.load(Relaxed)
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

    /// Waits in `poll_wake` in a task of its own; its answer.
    fn wake_task(
        mut rx: OutletRx,
        take: bool,
        unpark_below: Option<usize>,
    ) -> tokio::task::JoinHandle<(OutletRx, Wake, usize)> {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let wake =
                std::future::poll_fn(|cx| rx.poll_wake(cx, &mut buf, 8, take, unpark_below)).await;
            (rx, wake, buf.len())
        })
    }

    async fn woken(
        task: tokio::task::JoinHandle<(OutletRx, Wake, usize)>,
    ) -> (OutletRx, Wake, usize) {
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("woken")
            .expect("task")
    }

    #[tokio::test]
    async fn poll_wake_wakes_on_release_below_the_bound() {
        let (tx, rx) = outlet();
        let gate = tx.parked().clone();
        gate.add();
        gate.add();
        let waiting = wake_task(rx, false, Some(2));
        tokio::task::yield_now().await;
        // Not taking: a packet does not wake it.
        assert!(tx.send(Packet::PingResp));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        gate.sub(1);
        let (rx, wake, taken) = woken(waiting).await;
        assert_eq!((wake, taken), (Wake::Unparked, 0));
        assert_eq!(gate.get(), 1);
        // Taking: the queued packet comes at once.
        let (_rx, wake, taken) = woken(wake_task(rx, true, None)).await;
        assert_eq!((wake, taken), (Wake::Items(1), 1));
    }

    #[tokio::test]
    async fn poll_wake_wakes_on_items_and_on_stop() {
        let (tx, rx) = outlet();
        // Not blocked (0 parked, below the bound of 1): woken at once.
        let (rx, wake, _) = woken(wake_task(rx, true, Some(1))).await;
        assert_eq!(wake, Wake::Unparked);
        let waiting = wake_task(rx, true, None);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(tx.send(Packet::PingResp));
        let (rx, wake, taken) = woken(waiting).await;
        assert_eq!((wake, taken), (Wake::Items(1), 1));
        let waiting = wake_task(rx, true, None);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        tx.abort();
        let (rx, wake, taken) = woken(waiting).await;
        assert_eq!((wake, taken), (Wake::Stopped(Halt::Aborted), 0));
        // The stop wins over queued items.
        assert!(tx.send(Packet::PingResp));
        let (_rx, wake, _) = woken(wake_task(rx, true, None)).await;
        assert_eq!(wake, Wake::Stopped(Halt::Aborted));
    }

    #[tokio::test]
    async fn keepalive_deadline_stops_the_connection_once_passed() {
        let clock = KeepaliveClock::new();
        let (tx, rx) = outlet();
        // No deadline: never expires.
        assert!(!tx.expire_keepalive(NO_DEADLINE - 1));
        let at = Instant::now() + std::time::Duration::from_millis(1500);
        rx.set_keepalive_deadline(Some(at), &clock);
        let due = clock.millis(at);
        assert!(!tx.expire_keepalive(due - 1), "not before its deadline");
        // Blocked: not enforced.
        rx.set_keepalive_deadline(None, &clock);
        assert!(!tx.expire_keepalive(due));
        rx.set_keepalive_deadline(Some(at), &clock);
        assert!(tx.expire_keepalive(due));
        assert!(!tx.expire_keepalive(due + 1), "stopped once");
        let (_rx, wake, _) = woken(wake_task(rx, true, None)).await;
        assert_eq!(wake, Wake::Stopped(Halt::KeepaliveExpired));
    }

    #[tokio::test]
    async fn the_first_reason_to_stop_wins() {
        let (tx, rx) = outlet();
        let waiting = wake_task(rx, true, None);
        tokio::task::yield_now().await;
        tx.shut_down();
        tx.abort();
        assert!(!tx.expire_keepalive(NO_DEADLINE - 1));
        let (rx, wake, _) = woken(waiting).await;
        assert_eq!(wake, Wake::Stopped(Halt::ShutDown));
        assert!(rx.stop_token().is_cancelled());
    }

    #[test]
    fn keepalive_clock_rounds_up_to_the_millisecond() {
        let clock = KeepaliveClock::new();
        let ms = std::time::Duration::from_millis;
        assert_eq!(clock.millis(clock.start), 0);
        assert_eq!(
            clock.millis(clock.start + std::time::Duration::from_micros(1)),
            1
        );
        assert_eq!(clock.millis(clock.start + ms(1500)), 1500);
        assert_eq!(
            clock.millis(clock.start + ms(1500) + std::time::Duration::from_nanos(1)),
            1501
        );
    }

    #[test]
    fn shrink_gives_an_empty_queue_back() {
        use futures_util::FutureExt;
        let (tx, mut rx) = outlet();
        for _ in 0..20 {
            assert!(tx.send(Packet::PingResp));
        }
        rx.shrink();
        assert!(rx.shared.queue().items.capacity() >= 20, "not while full");
        let mut buf = Vec::new();
        assert_eq!(rx.recv_many(&mut buf, 100).now_or_never(), Some(20));
        rx.shrink();
        assert_eq!(rx.shared.queue().items.capacity(), 0);
    }
}
