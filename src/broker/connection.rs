//! One network connection: a reader (this task: CONNECT, authentication,
//! keepalive at 1.5 × the client's value, ACL checks, packets to the router)
//! and a writer task (drains the connection's outlet). Protocol state lives
//! in the router's session; a bad packet closes only this connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::acl::Op;
use super::handshake::{Budget, Handshake};
use super::outlet::{Gate, Out, OutletRx, Stop, outlet};
use super::router::{Ack, Event, MAX_PARKED, Reply, RouterHandle};
use super::session::{ConnId, Origin};
use super::stats::{Counters, DropReason, RefuseReason, SubRefuseReason};
use super::{Limits, Security};
use crate::protocol::v4::{ConnAck, Connect, ConnectReturnCode, Packet};
use crate::protocol::{
    CodecError, Keepalive, MQTT_MAX_PACKET_SIZE, Message, QoS, decode, encode, packet_name,
    publish_from_message,
};
use crate::topic;

/// What every connection of a broker shares.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub broker: String,
    pub router: RouterHandle,
    pub security: Arc<Security>,
    pub limits: Arc<Limits>,
    pub counters: Arc<Counters>,
    /// Connected network clients (`max_connections`): a permit is taken
    /// once a CONNECT is accepted.
    pub semaphore: Arc<Semaphore>,
    /// Sockets not yet past their CONNECT.
    pub handshakes: Arc<Budget>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// TLS listener: the client certificate CN is the username.
    pub cert_cn_as_username: bool,
}

/// Read buffer bounds: idle connections hold none between reads (10,000
/// idle clients must stay cheap) and take a small one when bytes come,
/// busy ones grow it for batching.
const READ_MIN: usize = 512;
const READ_MAX: usize = 64 * 1024;
/// Bytes an idle connection reads on the stack before it allocates its
/// read buffer (a PINGREQ, an ack or a small PUBLISH fit).
const FIRST_READ: usize = 64;
/// Packets the writer takes per wake-up (one `write` for all of them).
const WRITE_BATCH: usize = 256;
/// Time allowed for a TLS close_notify / FIN at the end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// A fresh connection id (network connections and local links).
pub(crate) fn next_conn_id() -> ConnId {
    NEXT_CONN.fetch_add(1, Relaxed)
}

/// Why the reader stopped.
#[derive(Debug)]
enum End {
    /// DISCONNECT received: no will.
    Graceful,
    /// Broker shutdown: no will (the broker is going away, not the client).
    Shutdown,
    /// Socket closed, IO error, keepalive timeout, takeover, protocol violation: will.
    Abrupt(String),
}

/// Serves one accepted (and, for TLS, handshaken) connection: the CONNECT
/// ([`accept`]), then the read loop until the connection ends.
pub(crate) async fn run<S>(
    stream: S,
    peer: SocketAddr,
    cert_cn: Option<String>,
    handshake: Handshake,
    ctx: Context,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Boxed: the CONNECT read, the credential check and the refusals are
    // large states that live only until the CONNECT is accepted, and a
    // future is as large as its largest state. The future an idle client
    // keeps for hours holds only the read loop.
    // In a block: a local moved out of still holds its place in the future
    // until its scope ends.
    let (mut rd, mut buf, stop, _permit, mut reader) = {
        let Some(accepted) = Box::pin(accept(stream, peer, cert_cn, handshake, &ctx)).await else {
            return;
        };
        let Accepted {
            rd,
            buf,
            client,
            conn,
            parked,
            stop,
            permit,
        } = accepted;
        let reader = Reader {
            ctx: &ctx,
            peer,
            conn,
            client,
            parked,
        };
        (rd, buf, stop, permit, reader)
    };
    let end = reader.read_loop(&mut rd, &mut buf, &stop).await;
    stop.cancel();
    let Reader { client, conn, .. } = reader;
    // Boxed, as the handshake: the will and the last event to the router
    // are needed once, at the end.
    Box::pin(finish(&ctx, peer, conn, client, end)).await;
}

/// The end of a connection: the will (after an abrupt end, if allowed) and
/// the router told.
async fn finish(ctx: &Context, peer: SocketAddr, conn: ConnId, mut client: Client, end: End) {
    let will = match &end {
        End::Abrupt(_) => client.will.take().filter(|w| will_allowed(ctx, &client, w)),
        End::Graceful | End::Shutdown => None,
    };
    match &end {
        End::Abrupt(reason) => {
            info!(broker = %ctx.broker, %peer, client_id = %client.client_id, reason = %reason, will = will.is_some(), "client disconnected")
        }
        _ => {
            info!(broker = %ctx.broker, %peer, client_id = %client.client_id, "client disconnected")
        }
    }
    ctx.router.send(Event::Disconnected { conn, will }).await;
}

/// A connection whose CONNECT was accepted and answered.
struct Accepted<S> {
    rd: ReadHalf<S>,
    /// The read buffer (bytes after the CONNECT may already be in it).
    buf: BytesMut,
    client: Client,
    conn: ConnId,
    parked: Gate,
    /// Cancelled when the writer stops (or the router aborts the connection).
    stop: Stop,
    /// The `max_connections` permit, held until the connection ends.
    permit: OwnedSemaphorePermit,
}

/// The handshake: reads and checks the CONNECT within what is left of
/// `handshake`, takes a `max_connections` permit, frees the socket's place
/// in the handshake budget, starts the writer and attaches the session.
/// `None` when the connection ends here (refused, cut short, shutdown).
async fn accept<S>(
    stream: S,
    peer: SocketAddr,
    cert_cn: Option<String>,
    handshake: Handshake,
    ctx: &Context,
) -> Option<Accepted<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = BytesMut::with_capacity(READ_MIN);
    let max = ctx.limits.max_packet_size;
    let connect = match handshake.bound(read_one(&mut rd, &mut buf, max)).await {
        Err(cut) => {
            if let Some(reason) = cut.refuse_reason() {
                ctx.counters.refused(reason);
                debug!(broker = %ctx.broker, %peer, ?cut, "no CONNECT in time, closed");
            }
            return None;
        }
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Ok(None)) => return None,
        Ok(Ok(Some(other))) => {
            ctx.counters.refused(RefuseReason::Protocol);
            crate::warn_limited!(format!("first-not-connect:{}", ctx.broker), broker = %ctx.broker, %peer, packet = ?packet_name(&other), "first packet is not CONNECT, closed");
            return None;
        }
        Ok(Err(e)) => {
            ctx.counters.refused(RefuseReason::Protocol);
            if e.is_unsupported_protocol_version() {
                refuse(&mut wr, ConnectReturnCode::RefusedProtocolVersion).await;
            }
            crate::warn_limited!(format!("bad-connect:{}", ctx.broker), broker = %ctx.broker, %peer, error = %e, "bad CONNECT, closed");
            return None;
        }
    };
    let client = match handshake
        .bound(accept_connect(&mut wr, connect, cert_cn, peer, ctx))
        .await
    {
        Ok(Some(client)) => client,
        Ok(None) => return None,
        Err(cut) => {
            if let Some(reason) = cut.refuse_reason() {
                ctx.counters.refused(reason);
            }
            return None;
        }
    };
    let Ok(permit) = ctx.semaphore.clone().try_acquire_owned() else {
        ctx.counters.refused(RefuseReason::Limit);
        refuse(&mut wr, ConnectReturnCode::ServiceUnavailable).await;
        crate::warn_limited!(format!("max-connections:{}", ctx.broker), broker = %ctx.broker, %peer, client_id = %client.client_id, "max_connections reached, CONNECT refused (0x03)");
        return None;
    };
    drop(handshake);
    let conn = next_conn_id();
    let (out, out_rx) = outlet();
    let parked = out.parked().clone();
    let stop = out_rx.stop_token();
    ctx.tracker.spawn(write_loop(wr, out_rx, stop.clone()));
    let (reply, session_present) = oneshot::channel();
    ctx.router
        .send(Event::Connect {
            conn,
            client_id: client.client_id.clone(),
            clean: client.clean,
            outlet: out,
            origin: Origin::Network {
                username: client.username.clone(),
            },
            reply,
        })
        .await;
    let session_present = match session_present.await {
        Ok(Ok(present)) => present,
        // CONNACK 0x02 is on its way: the writer flushes it, then closes.
        Ok(Err(_)) => {
            ctx.counters.refused(RefuseReason::ClientId);
            crate::warn_limited!(format!("connect-link-id:{}", ctx.broker), broker = %ctx.broker, %peer, client_id = %client.client_id, user = ?client.username, "CONNECT with the client id of a bridge link refused (0x02)");
            return None;
        }
        // Dropped unanswered when the router is gone (shutdown).
        Err(_) => {
            stop.cancel();
            return None;
        }
    };
    info!(broker = %ctx.broker, %peer, client_id = %client.client_id, session_present, "client connected");
    Some(Accepted {
        rd,
        buf,
        client,
        conn,
        parked,
        stop,
        permit,
    })
}

/// The accepted client.
struct Client {
    client_id: String,
    clean: bool,
    username: Option<String>,
    keep_alive: u16,
    will: Option<Message>,
}

fn will_allowed(ctx: &Context, client: &Client, will: &Message) -> bool {
    if is_sys(&will.topic) {
        ctx.counters.dropped(DropReason::SysTopic, 1);
        return false;
    }
    let allowed = ctx.security.acl.as_ref().is_none_or(|acl| {
        acl.check(
            client.username.as_deref(),
            &client.client_id,
            Op::Write,
            &will.topic,
        )
    });
    if !allowed {
        ctx.counters.dropped(DropReason::Acl, 1);
    }
    allowed
}

fn is_sys(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// Checks client id and credentials; answers refusals itself.
async fn accept_connect<W: AsyncWrite + Unpin>(
    wr: &mut W,
    connect: Connect,
    cert_cn: Option<String>,
    peer: SocketAddr,
    ctx: &Context,
) -> Option<Client> {
    let client_id = if connect.client_id.is_empty() {
        if !connect.clean_session {
            ctx.counters.refused(RefuseReason::Protocol);
            refuse(wr, ConnectReturnCode::BadClientId).await;
            crate::warn_limited!(format!("empty-client-id:{}", ctx.broker), broker = %ctx.broker, %peer, "empty client id without clean session refused (0x02)");
            return None;
        }
        format!("mqb-{:016x}", rand::random::<u64>())
    } else {
        connect.client_id
    };
    let sec = &ctx.security;
    let (username, code) = match (ctx.cert_cn_as_username, cert_cn, connect.login) {
        (true, Some(cn), _) => (Some(cn), ConnectReturnCode::Success),
        (_, _, Some(login)) => {
            let ok = match &sec.passwords {
                // PBKDF2 is deliberately slow: keep it off the async workers.
                Some(_) => {
                    let sec = sec.clone();
                    let user = login.username.clone();
                    let password = login.password;
                    tokio::task::spawn_blocking(move || {
                        sec.passwords
                            .as_ref()
                            .is_some_and(|p| p.verify(&user, password.as_bytes()))
                    })
                    .await
                    .unwrap_or(false)
                }
                None => sec.allow_anonymous,
            };
            let code = match (ok, sec.passwords.is_some()) {
                (true, _) => ConnectReturnCode::Success,
                (false, true) => ConnectReturnCode::BadUserNamePassword,
                (false, false) => ConnectReturnCode::NotAuthorized,
            };
            (Some(login.username), code)
        }
        (_, _, None) if sec.allow_anonymous => (None, ConnectReturnCode::Success),
        (_, _, None) => (None, ConnectReturnCode::NotAuthorized),
    };
    if code != ConnectReturnCode::Success {
        ctx.counters.refused(RefuseReason::Auth);
        refuse(wr, code).await;
        // Per connection attempt: rate-limited (one per broker per 10 s).
        crate::warn_limited!(format!("connect-refused:{}", ctx.broker), broker = %ctx.broker, %peer, client_id = %client_id, user = ?username, code = ?code, "CONNECT refused");
        return None;
    }
    let will = connect
        .last_will
        .map(|w| Message::new(w.topic, w.message, QoS::from(w.qos), w.retain));
    Some(Client {
        client_id,
        clean: connect.clean_session,
        username,
        keep_alive: connect.keep_alive,
        will,
    })
}

/// Writes a refusing CONNACK, best effort.
async fn refuse<W: AsyncWrite + Unpin>(wr: &mut W, code: ConnectReturnCode) {
    let mut out = BytesMut::new();
    if encode(
        &Packet::ConnAck(ConnAck::new(code, false)),
        &mut out,
        MQTT_MAX_PACKET_SIZE,
    )
    .is_ok()
    {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            let _ = wr.write_all(&out).await;
            let _ = wr.flush().await;
            let _ = wr.shutdown().await;
        })
        .await;
    }
}

/// Reads until one packet is decoded; `None` on a clean EOF before any byte.
async fn read_one<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Packet>, CodecError> {
    loop {
        if let Some(p) = decode(buf, max)? {
            return Ok(Some(p));
        }
        buf.reserve(READ_MIN);
        if rd.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(CodecError::ClosedMidPacket {
                    buffered: buf.len(),
                })
            };
        }
    }
}

/// Reads into `buf`. When it holds no memory (an idle connection), reads
/// up to [`FIRST_READ`] bytes on the stack first and only then allocates
/// `chunk` for them. Cancel safe: no bytes are read unless it completes.
async fn read_some<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    chunk: usize,
) -> std::io::Result<usize> {
    if buf.capacity() > buf.len() {
        return rd.read_buf(buf).await;
    }
    let mut first = [0u8; FIRST_READ];
    let n = rd.read(&mut first).await?;
    buf.reserve(chunk.max(n));
    buf.extend_from_slice(&first[..n]);
    Ok(n)
}

struct Reader<'a> {
    ctx: &'a Context,
    peer: SocketAddr,
    conn: ConnId,
    client: Client,
    /// Our publishes the router holds unacknowledged (see [`MAX_PARKED`]).
    parked: Gate,
}

impl Reader<'_> {
    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        buf: &mut BytesMut,
        stop: &Stop,
    ) -> End {
        let max = self.ctx.limits.max_packet_size;
        // Keepalive enforced at 1.5 × the client's value (MQTT-3.1.2-24); 0 = off.
        let keepalive = Keepalive::from_secs(self.client.keep_alive);
        let keepalive = keepalive.is_enabled().then(|| keepalive.dead_after());
        let far = Duration::from_secs(86_400 * 365);
        let mut deadline = Instant::now() + keepalive.unwrap_or(far);
        let mut chunk = READ_MIN;
        loop {
            loop {
                match decode(buf, max) {
                    Ok(Some(packet)) => match self.handle(packet) {
                        Ok(event) => {
                            if !self.ctx.router.send(event).await {
                                return End::Shutdown;
                            }
                        }
                        Err(end) => return end,
                    },
                    Ok(None) => break,
                    Err(e) => return self.violation(e.to_string()),
                }
            }
            if buf.is_empty() && chunk == READ_MIN {
                // Nothing half-read and not busy: hold no buffer while
                // waiting (an idle client waits for hours); `read_some`
                // allocates it when bytes come.
                *buf = BytesMut::new();
            } else {
                if buf.is_empty() && buf.capacity() > 2 * chunk {
                    *buf = BytesMut::with_capacity(chunk);
                }
                buf.reserve(chunk);
            }
            if self.parked.get() >= MAX_PARKED {
                // The client ignores its inflight window while a link session
                // pushes back: stop reading it (TCP backpressure) until the
                // router released some of its publishes.
                tokio::select! {
                    _ = self.ctx.shutdown.cancelled() => return End::Shutdown,
                    _ = stop.cancelled() => return End::Abrupt("closed by broker (takeover or write failure)".into()),
                    _ = self.parked.below(MAX_PARKED) => {}
                }
                // We did not read: the client's silence is ours.
                if let Some(k) = keepalive {
                    deadline = Instant::now() + k;
                }
            }
            let read = tokio::select! {
                // Broker shutdown: close without will.
                _ = self.ctx.shutdown.cancelled() => return End::Shutdown,
                // The writer stopped (takeover, write error): close with will.
                _ = stop.cancelled() => return End::Abrupt("closed by broker (takeover or write failure)".into()),
                _ = tokio::time::sleep_until(deadline) => return End::Abrupt("keepalive timeout".into()),
                // Cancel safe: if another branch wins, no bytes were read.
                r = read_some(rd, buf, chunk) => r,
            };
            match read {
                Ok(0) => return End::Abrupt("connection closed by peer".into()),
                Ok(n) => {
                    if n >= chunk {
                        chunk = (chunk * 2).min(READ_MAX);
                    } else if n < chunk / 4 {
                        chunk = (chunk / 2).max(READ_MIN);
                    }
                    if let Some(k) = keepalive {
                        deadline = Instant::now() + k;
                    }
                }
                Err(e) => return End::Abrupt(format!("read error: {e}")),
            }
        }
    }

    fn violation(&self, reason: String) -> End {
        self.ctx.counters.refused(RefuseReason::Protocol);
        crate::warn_limited!(format!("protocol-violation:{}", self.ctx.broker), broker = %self.ctx.broker, peer = %self.peer, client_id = %self.client.client_id, error = %reason, "protocol violation, connection closed");
        End::Abrupt(format!("protocol violation: {reason}"))
    }

    /// Handles one packet: the event to hand the router, or how the
    /// connection ends. Synchronous, so the read loop has one `send` await
    /// (a future holds every await point's state: one is smaller than nine).
    fn handle(&mut self, packet: Packet) -> Result<Event, End> {
        let conn = self.conn;
        match packet {
            Packet::Publish(publish) => {
                let levels = topic::level_count(&publish.topic);
                if levels > self.ctx.limits.max_topic_levels {
                    // As Mosquitto: such a topic cannot be routed; close.
                    return Err(self.violation(format!(
                        "topic name has {levels} levels, more than max_topic_levels ({})",
                        self.ctx.limits.max_topic_levels
                    )));
                }
                let mut route = true;
                if is_sys(&publish.topic) {
                    self.ctx.counters.dropped(DropReason::SysTopic, 1);
                    route = false;
                } else if self.ctx.security.acl.as_ref().is_some_and(|acl| {
                    !acl.check(
                        self.client.username.as_deref(),
                        &self.client.client_id,
                        Op::Write,
                        &publish.topic,
                    )
                }) {
                    self.ctx.counters.dropped(DropReason::Acl, 1);
                    debug!(broker = %self.ctx.broker, client_id = %self.client.client_id, "publish denied by ACL");
                    route = false;
                }
                Ok(Event::Publish {
                    conn,
                    publish,
                    route,
                })
            }
            Packet::PubAck(a) => Ok(self.ack(Ack::PubAck, a.pkid)),
            Packet::PubRec(a) => Ok(self.ack(Ack::PubRec, a.pkid)),
            Packet::PubComp(a) => Ok(self.ack(Ack::PubComp, a.pkid)),
            Packet::PubRel(r) => Ok(Event::PubRel { conn, pkid: r.pkid }),
            Packet::Subscribe(s) => {
                let filters = s
                    .filters
                    .into_iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let ok = self.within_limits(i, &f.path)
                            && topic::validate_filter(&f.path).is_ok()
                            && self.ctx.security.acl.as_ref().is_none_or(|acl| {
                                acl.check(
                                    self.client.username.as_deref(),
                                    &self.client.client_id,
                                    Op::Read,
                                    // A shared subscription reads its filter's topics.
                                    crate::protocol::shared::topic_filter(&f.path),
                                )
                            });
                        let qos = ok.then(|| QoS::from(f.qos));
                        (f.path, qos)
                    })
                    .collect();
                Ok(Event::Subscribe {
                    conn,
                    filters,
                    reply: Reply::Packet(s.pkid),
                })
            }
            Packet::Unsubscribe(u) => Ok(Event::Unsubscribe {
                conn,
                filters: u.topics,
                reply: Reply::Packet(u.pkid),
            }),
            Packet::PingReq => Ok(Event::Ping { conn }),
            Packet::Disconnect => Err(End::Graceful),
            Packet::Connect(_) => Err(self.violation("second CONNECT".into())),
            other => Err(self.violation(format!("{} is not sent by clients", packet_name(&other)))),
        }
    }

    /// Whether the `index`-th filter of a SUBSCRIBE is within the per-packet
    /// and level limits (counted when not). The per-client and trie limits
    /// are the router's: it holds the sessions and the trie.
    fn within_limits(&self, index: usize, filter: &str) -> bool {
        let limits = &self.ctx.limits;
        let refused = if index >= limits.max_filters_per_subscribe {
            Some(SubRefuseReason::FiltersPerSubscribe)
        } else if topic::level_count(filter) > limits.max_topic_levels {
            Some(SubRefuseReason::TopicLevels)
        } else {
            None
        };
        match refused {
            Some(reason) => {
                self.ctx.counters.sub_refused(reason);
                crate::warn_limited!(format!("subscription-limit:{}", self.ctx.broker), broker = %self.ctx.broker, peer = %self.peer, client_id = %self.client.client_id, ?reason, "subscription refused (0x80): limit");
                false
            }
            None => true,
        }
    }

    fn ack(&self, kind: Ack, pkid: u16) -> Event {
        Event::Ack {
            conn: self.conn,
            kind,
            pkid,
        }
    }
}

/// Drains the outlet into the socket, many packets per write. Stops on
/// `Out::Close`, a write error or `stop`, and then cancels `stop` so the
/// reader ends too.
async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: OutletRx, stop: Stop) {
    let mut batch = Vec::new();
    let mut out = BytesMut::new();
    let mut close = false;
    while !close {
        let n = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            n = rx.recv_many(&mut batch, WRITE_BATCH) => n,
        };
        if n == 0 {
            break;
        }
        let mut written = 0;
        for item in batch.drain(..) {
            match item {
                Out::Packet(p) => {
                    written += 1;
                    if let Err(e) = encode(&p, &mut out, MQTT_MAX_PACKET_SIZE) {
                        debug!(error = %e, "outgoing packet dropped");
                    }
                }
                // Only in-process links are sent messages as such; encode
                // one all the same should a network session ever get it.
                Out::Publish(b) => {
                    written += 1;
                    let (message, pkid) = *b;
                    let packet = Packet::Publish(publish_from_message(&message, pkid, false));
                    if let Err(e) = encode(&packet, &mut out, MQTT_MAX_PACKET_SIZE) {
                        debug!(error = %e, "outgoing packet dropped");
                    }
                }
                Out::Close | Out::Replaced => close = true,
            }
        }
        let result = tokio::select! {
            // Not cancel safe, and need not be: a cancelled write ends the connection.
            // The flush matters for buffering streams: a WebSocket sends its
            // message only then (for TCP and TLS it is free).
            r = async {
                wr.write_all(&out).await?;
                wr.flush().await
            } => r,
            _ = stop.cancelled() => break,
        };
        rx.written(written);
        if result.is_err() {
            break;
        }
        if out.capacity() > READ_MAX {
            out = BytesMut::new();
        } else {
            out.clear();
        }
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, wr.shutdown()).await;
    stop.cancel();
}
