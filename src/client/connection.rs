//! The IO driver of one established connection: reads frames and feeds them
//! to the [`ClientSession`](super::session::ClientSession), takes link
//! requests (while the inflight window has room) and application acks into
//! it, writes what it queues, forwards its deliveries to the channel, runs
//! its keepalive timer, and probes the primary while on a secondary endpoint.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::Ordering;

use tokio::sync::mpsc::error::TrySendError;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, info};

use super::conn::{Conn, Done, Sync, codec_error, now_std, sync_done};
use super::failover::ProbeVerdict;
use super::session::QuotaExceeded;
use super::task::{End, Task};
use super::transport::BoxStream;
use super::wire::{FromBroker, Grant, Wire};
use super::{ClientError, ClientEvent, Endpoint};
use crate::link::{AckHandle, AckToken, Delivery};
use crate::protocol::quickack::AckHint;
use crate::protocol::reason::ReasonCode;
use crate::protocol::version::{Packet, ProtocolVersion};
use crate::protocol::{Framed, Keepalive, Message, WireQoS};

/// Most packets, acks and requests handled after one wake-up before the
/// flush (see [`Task::drain_ready`]); bounds the time between flushes and
/// between looks at the timers and shutdown.
const DRAIN_BUDGET: usize = 512;
/// Link requests are taken by [`Task::drain_ready`] only while fewer bytes
/// than this wait to be written, so large payloads are not all copied into
/// the write buffer at once.
const DRAIN_MAX_PENDING_BYTES: usize = 256 * 1024;

/// Under a flood, shutdown and the keepalive timer are checked directly
/// every this many turns of the serve loop (see its `select!`).
const CHECK_EVERY: u32 = 32;

type Probe = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Awaits the probe if one runs; pending forever otherwise.
async fn probe_done(probe: &mut Option<Probe>) -> bool {
    match probe {
        Some(p) => p.await,
        None => std::future::pending().await,
    }
}

impl Task {
    /// Serves one established connection until it ends.
    pub(crate) async fn serve(
        &mut self,
        framed: Framed<BoxStream>,
        wire: Wire,
        grant: Grant,
        owed: AckHint,
        ep: &Endpoint,
    ) -> End {
        // The broker's server keep alive replaces ours [MQTT-3.2.2-21].
        let keepalive = Keepalive::new(grant.keepalive.unwrap_or(self.opts.keepalive));
        let v5 = wire.version() == ProtocolVersion::V5;
        let mut conn = Conn::new(
            framed,
            wire,
            ep.clone(),
            keepalive,
            self.opts.metrics.clone(),
            owed,
        );
        conn.gate.keyspace = self.durable.clone();
        let birth = self.opts.birth.clone().map(|m| (m, Done::Internal));
        self.session
            .connected(ep.url(), grant, v5, birth, now_std(), &mut conn);
        match conn.flush().await {
            Ok(true) => self.session.sent(now_std()),
            Ok(false) => {}
            Err(e) => return End::Lost(e),
        }

        // `self.pending_delivery`: a delivery the bounded channel had no room
        // for (kept across reconnects); while it waits, we stop reading the
        // socket (backpressure to the broker).
        let mut probe: Option<Probe> = None;
        // Local handles, so the futures below borrow them and not `self`.
        let deliveries = self.deliveries.clone();
        // These three live across turns and are polled by reference: a
        // cancellation token or a `Notify` registers its waiter once, and
        // the keepalive timer is re-armed only when it must fire earlier
        // (firing early is harmless: `on_timer` looks at the clock).
        let mut shutdown = pin!(self.shutdown.clone().cancelled_owned());
        let reconnect = self.opts.reconnect.clone();
        let mut reconnect = pin!(async move {
            match &reconnect {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        });
        let mut timer = pin!(sleep_until(Instant::now()));
        let mut armed: Option<Instant> = None;
        // Whether reading was paused when the timer was armed.
        let mut armed_paused = false;
        let mut turn: u32 = 0;
        // The store sync the gated packets wait for (one at a time).
        let mut sync: Option<Sync> = None;
        loop {
            if let Some(e) = conn.gate.failed.take() {
                return End::Lost(store_failed(ep, e));
            }
            if sync.is_none() {
                sync = conn.gate.start_sync();
            }
            if self.requests_closed && self.is_idle() {
                conn.disconnect(self.opts.will.as_ref()).await;
                return End::Shutdown;
            }
            let probe_at = match (&probe, self.failover.probe_due()) {
                (None, Some(at)) => Some(Instant::from_std(at)),
                _ => None,
            };
            let paused = self.pending_delivery.is_some();
            // While the timer is armed, the keepalive deadlines only move
            // later (every packet sent or received pushes them out), so they
            // are recomputed once it fired, when reading pauses or resumes,
            // or when a probe of the primary is due.
            if armed.is_none() || paused != armed_paused || probe_at.is_some() {
                let wake = match (
                    self.session.next_keepalive(paused).map(Instant::from_std),
                    probe_at,
                ) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if let Some(at) = wake
                    && armed.is_none_or(|armed| at < armed)
                {
                    timer.as_mut().reset(at);
                    armed = Some(at);
                }
                armed_paused = paused;
            }
            // Biased, hot branches first: a wake-up for a packet, an ack or
            // a request does not poll the rarely ready ones. Under a flood
            // (a hot branch always ready) they cannot starve: every
            // `CHECK_EVERY` turns shutdown and a due timer are checked
            // directly, and a flood is handled in bounded turns.
            turn = turn.wrapping_add(1);
            let check = turn.is_multiple_of(CHECK_EVERY);
            if check && self.shutdown.is_cancelled() {
                return self.end_with(End::Shutdown, &mut conn).await;
            }
            let step: Option<End> = tokio::select! {
                biased;
                // Cancel safety of each branch: the store sync is polled by
                // reference and lives across turns; `mpsc::recv` is cancel safe;
                // `read_packet` keeps partial input in its own buffer;
                // `reserve` loses only its queue position; the timer, the
                // probe, `shutdown` and `reconnect` live across turns and are
                // polled by reference (no notification is missed between two
                // turns).
                // Stored QoS 2 flows are durable: their packets go out.
                r = sync_done(&mut sync), if sync.is_some() => {
                    sync = None;
                    match r {
                        Ok(()) => {
                            conn.release_gate();
                            None
                        }
                        Err(e) => Some(End::Lost(store_failed(ep, e))),
                    }
                }
                r = conn.framed.read_packet(), if !paused => match r {
                    Ok(packet) => {
                        let now = now_std();
                        self.session.received(now);
                        self.on_packet(packet, now, &mut conn)
                    }
                    Err(e) => Some(End::Lost(codec_error(ep, e))),
                },
                Some(token) = self.acks_rx.recv() => {
                    self.on_ack(token, &mut conn);
                    None
                }
                // Guard: no new publishes while the inflight window is full;
                // requests then wait in the bounded channel (backpressure).
                req = self.requests.recv(), if self.can_take() => match req {
                    Some(req) => (!self.take_request(req, &mut conn)).then_some(End::Shutdown),
                    // Every `Link` was dropped: finish what is in flight, then close.
                    None => {
                        self.requests_closed = true;
                        None
                    }
                },
                permit = deliveries.reserve(), if paused => {
                    // Reading resumes: silence while paused was ours, not the broker's.
                    self.session.received(now_std());
                    match (permit, self.pending_delivery.take()) {
                        (Ok(permit), Some(d)) => permit.send(d),
                        // The receiver is gone: nobody will handle it; ack so
                        // the session does not wedge.
                        (Err(_), Some(d)) => d.ack.ack(),
                        (_, None) => {}
                    }
                    None
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    self.on_timer(&mut conn, &mut probe, paused)
                }
                ok = probe_done(&mut probe) => {
                    probe = None;
                    self.on_probe(ok)
                }
                () = &mut shutdown => Some(End::Shutdown),
                () = &mut reconnect => Some(End::Lost(ClientError::ReconnectRequested { endpoint: ep.url() })),
            };
            // A flood keeps the branches above ready: run a due timer anyway.
            let step = match step {
                None if check && armed.is_some_and(|at| at <= Instant::now()) => {
                    armed = None;
                    self.on_timer(&mut conn, &mut probe, paused)
                }
                step => step,
            };
            // Take everything else that is ready, so one flush (one system
            // call) carries the replies to a whole burst.
            let step = match step {
                None => self.drain_ready(&mut conn),
                end => end,
            };
            match step {
                None => {}
                Some(End::Lost(e)) => {
                    conn.close_after_violation().await;
                    return End::Lost(e);
                }
                Some(end) => return self.end_with(end, &mut conn).await,
            }
            if let Some(m) = &self.opts.metrics {
                m.set_inflight(self.session.inflight() as u64);
            }
            match conn.flush().await {
                Ok(true) => self.session.sent(now_std()),
                Ok(false) => {}
                Err(e) => return End::Lost(e),
            }
        }
    }

    /// Ends the connection on purpose (shutdown, fail-back): the acks the
    /// pipes sent just before go out first, so the broker does not
    /// redeliver what was handled; then DISCONNECT.
    async fn end_with(&mut self, end: End, conn: &mut Conn) -> End {
        while let Ok(token) = self.acks_rx.try_recv() {
            self.on_ack(token, conn);
        }
        conn.settle_gate().await;
        conn.disconnect(self.opts.will.as_ref()).await;
        end
    }

    /// After one `select!` event, handles what is already waiting without
    /// awaiting: packets complete in the read buffer (not while deliveries
    /// are paused), application acks, and link requests while the inflight
    /// window has room — the same handling, guards and order rules as the
    /// `select!` branches, so no guarantee changes; only the packets they
    /// queue now share one flush. Bounded by [`DRAIN_BUDGET`] (and requests
    /// by [`DRAIN_MAX_PENDING_BYTES`]).
    fn drain_ready(&mut self, conn: &mut Conn) -> Option<End> {
        let mut budget = DRAIN_BUDGET;
        // One clock read per drain: it is bounded by the budget, and what
        // takes `now` (arrival times, liveness) needs no finer resolution.
        let now = now_std();
        loop {
            let before = budget;
            let mut read_any = false;
            while budget > 0 && self.pending_delivery.is_none() {
                match conn.framed.read_buffered() {
                    Ok(Some(packet)) => {
                        budget -= 1;
                        read_any = true;
                        if let Some(end) = self.on_packet(packet, now, conn) {
                            return Some(end);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Some(End::Lost(codec_error(&conn.endpoint, e))),
                }
            }
            if read_any {
                self.session.received(now);
            }
            while budget > 0 {
                let Ok(token) = self.acks_rx.try_recv() else {
                    break;
                };
                budget -= 1;
                self.on_ack(token, conn);
            }
            while budget > 0
                && self.can_take()
                && conn.framed.pending_write() < DRAIN_MAX_PENDING_BYTES
            {
                match self.requests.try_recv() {
                    Ok(req) => {
                        budget -= 1;
                        if !self.take_request(req, conn) {
                            return Some(End::Shutdown);
                        }
                    }
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                        self.requests_closed = true;
                        break;
                    }
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                }
            }
            // Handling one kind can make another ready (a PUBACK frees a
            // window slot for a waiting request): go round while progressing.
            if budget == 0 || budget == before {
                return None;
            }
        }
    }

    /// A pipe is done with an incoming message: queue the PUBACK/PUBREC
    /// that may go out now (in arrival order).
    fn on_ack(&mut self, token: AckToken, conn: &mut Conn) {
        self.session.on_ack(token, conn);
    }

    /// Hands one packet from the broker to the session. A packet that
    /// breaks the protocol (an AUTH, a packet only a server receives, an
    /// unknown topic alias) ends the connection with a DISCONNECT naming
    /// the violation (MQTT 5) and a reconnect after the backoff.
    fn on_packet(
        &mut self,
        packet: Packet,
        now: std::time::Instant,
        conn: &mut Conn,
    ) -> Option<End> {
        let lost = |conn: &mut Conn, code: ReasonCode, reason: String| {
            conn.violation = Some(code);
            Some(End::Lost(ClientError::Protocol {
                endpoint: conn.endpoint.url(),
                reason,
            }))
        };
        let from = match conn.wire.incoming(packet) {
            Ok(from) => from,
            Err(e) => return lost(conn, e.reason_code(), e.to_string()),
        };
        match from {
            FromBroker::Publish(p, props) => {
                if let Some(m) = &self.opts.metrics {
                    m.message_in(p.payload.len());
                }
                if p.qos != WireQoS::AtMostOnce {
                    conn.owed.store(true, Ordering::Relaxed);
                }
                let delivery = self.session.on_publish(p, props, now, conn);
                self.deliver(delivery);
            }
            FromBroker::Packet(p) => match self.session.on_packet(p, now, conn) {
                Ok(delivery) => self.deliver(delivery),
                Err(unexpected) => {
                    return lost(conn, ReasonCode::ProtocolError, unexpected.to_string());
                }
            },
            FromBroker::Refused { kind, pkid, code } => {
                if let Err(QuotaExceeded) = self.session.on_refused(kind, pkid, code, conn) {
                    return Some(End::Lost(ClientError::QuotaExceeded {
                        endpoint: conn.endpoint.url(),
                    }));
                }
            }
            FromBroker::Disconnect {
                code,
                server_reference,
                reason_string,
            } => {
                return Some(End::Lost(ClientError::ServerDisconnect {
                    endpoint: conn.endpoint.url(),
                    code,
                    server_reference,
                    reason: reason_string,
                }));
            }
        }
        None
    }

    /// Hands an incoming message to the pipes (or keeps it while the
    /// channel is full: reading pauses).
    fn deliver(&mut self, delivery: Option<(Message, Option<AckToken>)>) {
        let Some((message, token)) = delivery else {
            return;
        };
        let ack = token.map_or_else(AckHandle::none, |t| AckHandle::new(t, self.acks_tx.clone()));
        match self.deliveries.try_send(Delivery { message, ack }) {
            Ok(()) => {}
            Err(TrySendError::Full(d)) => self.pending_delivery = Some(d),
            Err(TrySendError::Closed(d)) => d.ack.ack(),
        }
    }

    fn on_timer(
        &mut self,
        conn: &mut Conn,
        probe: &mut Option<Probe>,
        paused: bool,
    ) -> Option<End> {
        let now = Instant::now();
        if self.session.on_timer(now.into_std(), paused, conn).is_err() {
            return Some(End::Lost(ClientError::KeepaliveTimeout {
                endpoint: conn.endpoint.url(),
            }));
        }
        if probe.is_none()
            && let Some(due) = self.failover.probe_due()
            && now >= Instant::from_std(due)
            && let (Some(dialer), Some(primary)) =
                (self.dialer(), self.opts.endpoints.first().cloned())
        {
            let limit = self.opts.connect_timeout;
            debug!(broker = %self.opts.name, endpoint = %primary, "probing primary");
            *probe = Some(Box::pin(async move {
                // TCP + TLS handshake only: a CONNECT with our client id
                // would take our session away from the secondary.
                matches!(timeout(limit, dialer.dial(&primary)).await, Ok(Ok(_)))
            }));
        }
        None
    }

    fn on_probe(&mut self, ok: bool) -> Option<End> {
        let primary = self
            .opts
            .endpoints
            .first()
            .map(|e| e.url())
            .unwrap_or_default();
        self.emit(ClientEvent::Probe {
            endpoint: primary.clone(),
            ok,
        });
        match self.failover.probe_result(now_std(), ok) {
            ProbeVerdict::FailBack => Some(End::FailBack),
            ProbeVerdict::Stay { good } => {
                info!(broker = %self.opts.name, endpoint = %primary, ok, good, "probe of primary");
                None
            }
        }
    }
}

/// A store write or sync for the stored QoS 2 flows failed: the connection
/// ends, so nothing whose record is not on disk reaches the wire; the next
/// connection writes every flow again before resending.
fn store_failed(ep: &Endpoint, e: crate::store::StoreError) -> ClientError {
    ClientError::Io {
        endpoint: ep.url(),
        source: std::io::Error::other(e),
    }
}
