//! One network connection, one task: the handshake (CONNECT,
//! authentication, the router's answer) runs in the listener's task; once
//! accepted, the connection gets a task of its own that reads (ACL checks,
//! packets to the router; each read moves the keepalive deadline, 1.5 × the
//! client's value, which the router checks) and writes (the connection's
//! outlet, many packets per write) in one loop. Protocol state lives in the
//! router's session; a bad packet closes only this connection.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::BytesMut;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tracing::{debug, info};

use rumqttc::v5::mqttbytes::v5::{
    ConnAck as ConnAck5, ConnectReturnCode as Code5, Disconnect as Disconnect5,
    DisconnectProperties, DisconnectReasonCode, Packet as P5,
};

use super::acl::Op;
use super::handshake::{Budget, Handshake};
use super::outlet::{Halt, KeepaliveClock, Out, Outlet, OutletRx, Wake, outlet};
use super::router::{Ack, Event, MAX_PARKED, Reply, RouterHandle, SendNow};
use super::session::{ConnId, Origin, Subscription, V5Attached};
use super::stats::{Counters, DropReason, RefuseReason, SubRefuseReason};
use super::v5conn::{self, ConnectInfo, V5Conn};
use super::wire::{V5Out, connack_code};
use super::{Limits, Security};
use crate::protocol::framed::{Io, Step, fill, poll_io, write_step};
use crate::protocol::negotiate::ServerLimits;
use crate::protocol::reason::ReasonCode;
use crate::protocol::v4::{ConnAck, ConnectReturnCode, Packet};
use crate::protocol::v5::{Sender, V5Error};
use crate::protocol::version::{ProtocolVersion, VersionError, connect_version};
use crate::protocol::{
    CodecError, Keepalive, MQTT_MAX_PACKET_SIZE, Message, QoS, SubscribeOptions, decode, encode,
    packet_name, publish_from_message,
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
    /// What an MQTT 5 CONNECT is negotiated against (built from `limits`
    /// and the persistence options).
    pub server: Arc<ServerLimits>,
    /// The clock of the keepalive deadlines the router checks (shared
    /// with the router).
    pub keepalive_clock: KeepaliveClock,
}

/// Read buffer bounds: idle connections hold none between reads (10,000
/// idle clients must stay cheap) and take a small one when bytes come,
/// busy ones grow it for batching.
const READ_MIN: usize = 512;
const READ_MAX: usize = 64 * 1024;
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
    /// DISCONNECT received: no will, unless an MQTT 5 client asked for it
    /// (0x04); `session_expiry` is an MQTT 5 client's new interval.
    Graceful {
        will: bool,
        session_expiry: Option<u32>,
    },
    /// Broker shutdown: no will (the broker is going away, not the client).
    Shutdown,
    /// Socket closed, IO error, keepalive timeout, takeover, protocol
    /// violation: will. An MQTT 5 client is told `code` in a DISCONNECT.
    Abrupt(String, Option<ReasonCode>),
}
/// Serves one (for TLS, handshaken) connection: the CONNECT ([`accept`])
/// here, then, once accepted, the connection in a task of its own
/// ([`drive`]). Spawned rather than awaited: this future keeps its
/// arguments' places for as long as it runs, and an idle client may stay
/// for hours, so the long-lived task holds only what the connection needs.
pub(crate) async fn run<S>(
    stream: S,
    peer: SocketAddr,
    cert_cn: Option<String>,
    handshake: Handshake,
    ctx: Arc<Context>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Boxed: the CONNECT read, the credential check and the refusals are
    // large states that live only until the CONNECT is accepted.
    let Some(accepted) = Box::pin(accept(stream, peer, cert_cn, handshake, ctx)).await else {
        return;
    };
    // Its events name broker, peer and client themselves; a span kept for
    // hours per idle client (the registry's slot and formatted fields)
    // costs memory, so it exists only when debug logs are on.
    let tracker = accepted.reader.ctx.tracker.clone();
    tracker.spawn(drive(accepted).instrument(tracing::debug_span!("conn", %peer)));
}

/// The accepted connection until it ends: the read/write loop, then
/// ([`close`]) the MQTT 5 DISCONNECT that says why, the will and the
/// router told.
// Not an `async fn`: see the comment in the body (it is what saves the copy).
#[allow(clippy::manual_async_fn)]
fn drive<S>(mut c: Accepted<S>) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // An `async move` block that uses `c` in place: an `async fn` keeps
    // its argument's place for as long as it runs besides the local it
    // binds it to, which would hold the connection twice.
    async move {
        let end = c.reader.serve(&mut c.io, &mut c.buf, &mut c.writer).await;
        // Boxed: the end's states (its timed writes, the will, the last
        // event to the router) are needed once, not in the waiting
        // connection's.
        Box::pin(close(c, end)).await;
    }
}

/// The end of an accepted connection: an MQTT 5 client told why, the
/// stream shut down, then [`finish`].
async fn close<S>(c: Accepted<S>, end: End)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Accepted {
        reader:
            Reader {
                ctx,
                peer,
                conn,
                client,
            },
        mut io,
        buf,
        mut writer,
        permit,
        own,
    } = c;
    drop(buf);
    let told = match &end {
        End::Abrupt(_, Some(code)) => Some(*code),
        End::Shutdown => Some(ReasonCode::ServerShuttingDown),
        _ => None,
    };
    if let (Some(code), Some(own)) = (told, &own) {
        // MQTT 5: say why before closing [MQTT-4.13.1-1], after what is
        // already queued (within the grace time).
        own.send_v5(disconnect(code, client.v5.as_deref()));
        own.close();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, writer.drain(&mut io)).await;
    }
    drop(own);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, io.shutdown()).await;
    writer.rx.stop();
    drop(writer);
    finish(&ctx, peer, conn, client, end).await;
    drop(permit);
}

/// A server DISCONNECT with `code` (and, when the client allows problem
/// information, the code's name as reason string).
fn disconnect(code: ReasonCode, v5: Option<&V5Conn>) -> P5 {
    let reason_code =
        DisconnectReasonCode::try_from(code).unwrap_or(DisconnectReasonCode::UnspecifiedError);
    let properties =
        v5.filter(|v| v.negotiated.problem_information)
            .map(|_| DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some(super::problem::disconnect_reason(code)),
                user_properties: Vec::new(),
                server_reference: None,
            });
    P5::Disconnect(Disconnect5 {
        reason_code,
        properties,
    })
}

/// The end of a connection: the will (after an abrupt end or an MQTT 5
/// DISCONNECT 0x04, if allowed) and the router told.
async fn finish(ctx: &Context, peer: SocketAddr, conn: ConnId, mut client: Client, end: End) {
    let publish_will = match &end {
        End::Abrupt(..) => true,
        End::Graceful { will, .. } => *will,
        End::Shutdown => false,
    };
    let will = if publish_will {
        client
            .will
            .take()
            .filter(|w| will_allowed(ctx, &client, &w.message))
    } else {
        None
    };
    let session_expiry = match &end {
        End::Graceful { session_expiry, .. } => *session_expiry,
        _ => None,
    };
    match &end {
        End::Abrupt(reason, _) => {
            info!(broker = %ctx.broker, %peer, client_id = %client.client_id, reason = %reason, will = will.is_some(), "client disconnected")
        }
        _ => {
            info!(broker = %ctx.broker, %peer, client_id = %client.client_id, will = will.is_some(), "client disconnected")
        }
    }
    ctx.router
        .send(Event::Disconnected {
            conn,
            will: will.map(|w| {
                let v5conn::Will { message, delay } = *w;
                (message, delay)
            }),
            session_expiry,
        })
        .await;
}

/// A connection whose CONNECT was accepted and answered: what its task
/// holds while it runs.
struct Accepted<S> {
    /// The client, and what handles its packets.
    reader: Reader,
    /// The stream, read and written by the connection's one task (no
    /// `split`: its shared allocation and lock are not needed).
    io: S,
    /// The read buffer (bytes after the CONNECT may already be in it).
    buf: BytesMut,
    writer: Writer,
    /// The `max_connections` permit, held until the connection ends.
    permit: OwnedSemaphorePermit,
    /// An MQTT 5 connection's own way to its writer (its DISCONNECT).
    own: Option<Outlet>,
}

/// The handshake: reads and checks the CONNECT within what is left of
/// `handshake`, takes a `max_connections` permit, frees the socket's place
/// in the handshake budget and attaches the session.
/// `None` when the connection ends here (refused, cut short, shutdown).
async fn accept<S>(
    stream: S,
    peer: SocketAddr,
    cert_cn: Option<String>,
    handshake: Handshake,
    ctx: Arc<Context>,
) -> Option<Accepted<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut io = stream;
    let mut buf = BytesMut::with_capacity(READ_MIN);
    let max = ctx.limits.max_packet_size;
    let connect = match handshake.bound(read_connect(&mut io, &mut buf, max)).await {
        Err(cut) => {
            if let Some(reason) = cut.refuse_reason() {
                ctx.counters.refused(reason);
                debug!(broker = %ctx.broker, %peer, ?cut, "no CONNECT in time, closed");
            }
            return None;
        }
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            ctx.counters.refused(RefuseReason::Protocol);
            if let Some((version, code3, code5)) = e.answer() {
                refuse(&mut io, version, code3, code5).await;
            }
            crate::warn_limited!(format!("bad-connect:{}", ctx.broker), broker = %ctx.broker, %peer, error = %e, "bad CONNECT, closed");
            return None;
        }
    };
    let version = connect.version;
    let client = match handshake
        .bound(accept_connect(&mut io, connect, cert_cn, peer, &ctx))
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
        refuse(
            &mut io,
            version,
            ConnectReturnCode::ServiceUnavailable,
            Code5::QuotaExceeded,
        )
        .await;
        crate::warn_limited!(format!("max-connections:{}", ctx.broker), broker = %ctx.broker, %peer, client_id = %client.client_id, "max_connections reached, CONNECT refused (0x03, MQTT 5: 0x97)");
        return None;
    };
    drop(handshake);
    let conn = next_conn_id();
    let (out, out_rx) = outlet();
    let v5_out = client.v5.as_ref().map(|v| {
        Box::new(V5Out::new(
            v.negotiated.connack.clone(),
            v.negotiated.outgoing_alias_maximum,
            v.quota.clone(),
            v.negotiated.problem_information,
        ))
    });
    let wire = Wire {
        v5: v5_out,
        max_packet: client.v5.as_ref().map_or(MQTT_MAX_PACKET_SIZE, |v| {
            usize::try_from(v.negotiated.max_outgoing_packet).unwrap_or(usize::MAX)
        }),
        alias_max: client
            .v5
            .as_ref()
            .map_or(0, |v| v.negotiated.outgoing_alias_maximum),
        counters: ctx.counters.clone(),
    };
    let mut writer = Writer::new(out_rx, wire);
    let (reply, session_present) = oneshot::channel();
    let v5 = client.v5.as_ref().map(|v| V5Attached {
        session_expiry: v.negotiated.session_expiry,
        receive_maximum: v.negotiated.send_quota,
        max_packet: v.negotiated.max_outgoing_packet,
    });
    let own = client.v5.is_some().then(|| out.clone());
    ctx.router
        .send(Event::Connect {
            conn,
            client_id: client.client_id.clone(),
            clean: client.clean,
            outlet: out,
            origin: Origin::Network {
                username: client.username.clone(),
            },
            v5,
            reply,
        })
        .await;
    let session_present = match session_present.await {
        Ok(Ok(present)) => present,
        // The router queued CONNACK 0x02 and a close: write them.
        Ok(Err(_)) => {
            drop(own);
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, writer.drain(&mut io)).await;
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, io.shutdown()).await;
            ctx.counters.refused(RefuseReason::ClientId);
            crate::warn_limited!(format!("connect-link-id:{}", ctx.broker), broker = %ctx.broker, %peer, client_id = %client.client_id, user = ?client.username, "CONNECT with the client id of a bridge link refused (0x02)");
            return None;
        }
        // Dropped unanswered when the router is gone (shutdown).
        Err(_) => {
            writer.rx.stop();
            return None;
        }
    };
    info!(broker = %ctx.broker, %peer, client_id = %client.client_id, session_present, protocol = ?version, "client connected");
    Some(Accepted {
        reader: Reader {
            ctx,
            peer,
            conn,
            client,
        },
        io,
        buf,
        writer,
        permit,
        own,
    })
}

/// The accepted client.
struct Client {
    client_id: String,
    /// Clean session (3.x) / clean start (5).
    clean: bool,
    username: Option<String>,
    keep_alive: u16,
    /// Boxed: most clients have none, and the connection's task holds
    /// this for as long as it runs.
    will: Option<Box<v5conn::Will>>,
    /// The read side of an MQTT 5 connection; `None` for 3.1/3.1.1.
    v5: Option<Box<V5Conn>>,
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

/// Checks client id, MQTT 5 negotiation and credentials; answers
/// refusals itself (in the client's version).
async fn accept_connect<W: AsyncWrite + Unpin>(
    wr: &mut W,
    connect: ConnectInfo,
    cert_cn: Option<String>,
    peer: SocketAddr,
    ctx: &Context,
) -> Option<Client> {
    let version = connect.version;
    let v5 = match version {
        ProtocolVersion::V5 => {
            let request = crate::protocol::negotiate::ConnectRequest {
                client_id: &connect.client_id,
                keep_alive: connect.keep_alive,
                properties: connect.properties.as_ref(),
            };
            let assign = || format!("mqb-{:016x}", rand::random::<u64>());
            match crate::protocol::negotiate::negotiate(&ctx.server, request, assign) {
                Ok(n) => Some(Box::new(V5Conn::new(n, ctx.server.receive_maximum))),
                Err(code) => {
                    ctx.counters.refused(RefuseReason::Auth);
                    let code5 = code5_of(code);
                    refuse(wr, version, ConnectReturnCode::NotAuthorized, code5).await;
                    crate::warn_limited!(format!("connect-refused:{}", ctx.broker), broker = %ctx.broker, %peer, client_id = %connect.client_id, code = ?code, "CONNECT refused");
                    return None;
                }
            }
        }
        _ => None,
    };
    let client_id = match &v5 {
        Some(v) => v.negotiated.client_id.clone(),
        None if connect.client_id.is_empty() => {
            if !connect.clean_start {
                ctx.counters.refused(RefuseReason::Protocol);
                refuse(
                    wr,
                    version,
                    ConnectReturnCode::BadClientId,
                    Code5::ClientIdentifierNotValid,
                )
                .await;
                crate::warn_limited!(format!("empty-client-id:{}", ctx.broker), broker = %ctx.broker, %peer, "empty client id without clean session refused (0x02)");
                return None;
            }
            format!("mqb-{:016x}", rand::random::<u64>())
        }
        None => connect.client_id,
    };
    let sec = &ctx.security;
    let (username, code) = match (ctx.cert_cn_as_username, cert_cn, connect.login) {
        (true, Some(cn), _) => (Some(cn), ConnectReturnCode::Success),
        (_, _, Some((user, password))) => {
            let ok = match &sec.passwords {
                // PBKDF2 is deliberately slow: keep it off the async workers.
                Some(_) => {
                    let sec = sec.clone();
                    let name = user.clone();
                    tokio::task::spawn_blocking(move || {
                        sec.passwords
                            .as_ref()
                            .is_some_and(|p| p.verify(&name, password.as_bytes()))
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
            (Some(user), code)
        }
        (_, _, None) if sec.allow_anonymous => (None, ConnectReturnCode::Success),
        (_, _, None) => (None, ConnectReturnCode::NotAuthorized),
    };
    if code != ConnectReturnCode::Success {
        ctx.counters.refused(RefuseReason::Auth);
        refuse(wr, version, code, connack_code(code)).await;
        // Per connection attempt: rate-limited (one per broker per 10 s).
        crate::warn_limited!(format!("connect-refused:{}", ctx.broker), broker = %ctx.broker, %peer, client_id = %client_id, user = ?username, code = ?code, "CONNECT refused");
        return None;
    }
    Some(Client {
        client_id,
        clean: connect.clean_start,
        username,
        keep_alive: v5
            .as_ref()
            .map_or(connect.keep_alive, |v| v.negotiated.keep_alive),
        will: connect.will.map(Box::new),
        v5,
    })
}

/// The CONNACK code of a refusal by reason code (0x80 for one a CONNACK
/// cannot carry).
fn code5_of(code: ReasonCode) -> Code5 {
    match code {
        ReasonCode::BadAuthenticationMethod => Code5::BadAuthenticationMethod,
        ReasonCode::MalformedPacket => Code5::MalformedPacket,
        ReasonCode::ProtocolError => Code5::ProtocolError,
        ReasonCode::UnsupportedProtocolVersion => Code5::UnsupportedProtocolVersion,
        ReasonCode::PacketTooLarge => Code5::PacketTooLarge,
        ReasonCode::TopicNameInvalid => Code5::TopicNameInvalid,
        ReasonCode::PayloadFormatInvalid => Code5::PayloadFormatInvalid,
        ReasonCode::NotAuthorized => Code5::NotAuthorized,
        ReasonCode::QuotaExceeded => Code5::QuotaExceeded,
        _ => Code5::UnspecifiedError,
    }
}

/// Writes a refusing CONNACK in the client's version, best effort.
async fn refuse<W: AsyncWrite + Unpin>(
    wr: &mut W,
    version: ProtocolVersion,
    code3: ConnectReturnCode,
    code5: Code5,
) {
    let mut out = BytesMut::new();
    let encoded = match version {
        ProtocolVersion::V5 => {
            let ack = P5::ConnAck(ConnAck5 {
                session_present: false,
                code: code5,
                properties: None,
            });
            crate::protocol::v5::encode(&ack, &mut out, MQTT_MAX_PACKET_SIZE, Sender::Server)
                .is_ok()
        }
        _ => encode(
            &Packet::ConnAck(ConnAck::new(code3, false)),
            &mut out,
            MQTT_MAX_PACKET_SIZE,
        )
        .is_ok(),
    };
    if encoded {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            let _ = wr.write_all(&out).await;
            let _ = wr.flush().await;
            let _ = wr.shutdown().await;
        })
        .await;
    }
}

/// Why the first packet is not a CONNECT we take.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// Not a CONNECT, an unknown protocol name, a level we do not speak.
    #[error(transparent)]
    Version(#[from] VersionError),
    /// A bad 3.1/3.1.1 CONNECT.
    #[error(transparent)]
    V3(#[from] CodecError),
    /// A bad MQTT 5 CONNECT.
    #[error(transparent)]
    V5(#[from] V5Error),
}

impl ConnectError {
    /// The CONNACK to answer with before closing, if any: 0x01 to a 3.x
    /// client asking for a level we do not speak, 0x84 to level 5 and
    /// above [MQTT-3.1.2-2]; a malformed v5 CONNECT gets its reason code.
    fn answer(&self) -> Option<(ProtocolVersion, ConnectReturnCode, Code5)> {
        let v3 = ConnectReturnCode::RefusedProtocolVersion;
        match self {
            ConnectError::Version(VersionError::UnsupportedLevel(l)) if *l >= 5 => {
                Some((ProtocolVersion::V5, v3, Code5::UnsupportedProtocolVersion))
            }
            ConnectError::Version(VersionError::UnsupportedLevel(_)) => Some((
                ProtocolVersion::V3_1_1,
                v3,
                Code5::UnsupportedProtocolVersion,
            )),
            ConnectError::V3(e) if e.is_unsupported_protocol_version() => Some((
                ProtocolVersion::V3_1_1,
                v3,
                Code5::UnsupportedProtocolVersion,
            )),
            ConnectError::V5(e) => Some((ProtocolVersion::V5, v3, code5_of(e.reason_code()))),
            _ => None,
        }
    }
}

/// Reads the CONNECT: its version from the first bytes, then the packet
/// with that version's codec. `None` on a clean EOF before any byte.
async fn read_connect<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<ConnectInfo>, ConnectError> {
    loop {
        if let Some(version) = connect_version(buf)? {
            let decoded = match version {
                ProtocolVersion::V5 => {
                    match crate::protocol::v5::decode(buf, max, Sender::Client)? {
                        Some(P5::Connect(c, will, login)) => Some(ConnectInfo::v5(c, will, login)),
                        Some(_) => return Err(VersionError::NotConnect.into()),
                        None => None,
                    }
                }
                _ => match decode(buf, max)? {
                    Some(Packet::Connect(c)) => Some(ConnectInfo::v3(c, version)),
                    Some(_) => return Err(VersionError::NotConnect.into()),
                    None => None,
                },
            };
            if decoded.is_some() {
                return Ok(decoded);
            }
        }
        match fill(rd, buf, READ_MIN).await {
            Ok(()) => {}
            Err(CodecError::Closed) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

struct Reader {
    ctx: Arc<Context>,
    peer: SocketAddr,
    conn: ConnId,
    client: Client,
}

impl Reader {
    /// The connection's loop: decodes and handles what the client sent,
    /// reads more, and writes what the outlet holds, all in this task (a
    /// client that does not read does not stop us reading, and the other
    /// way round). Ends on the first reason to close.
    async fn serve<S>(&mut self, io: &mut S, buf: &mut BytesMut, writer: &mut Writer) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let max = self.ctx.limits.max_packet_size;
        // Keepalive enforced at 1.5 × the client's value (MQTT-3.1.2-24); 0 = off.
        let keepalive = Keepalive::from_secs(self.client.keep_alive);
        let keepalive = keepalive.is_enabled().then(|| keepalive.dead_after());
        // Reads move the deadline; the connection holds no timer (an idle
        // client waits for hours, and a timer is a large state): the
        // deadline is published in the outlet, where the router checks it
        // on its tick and stops the connection with `Halt::KeepaliveExpired`.
        let mut deadline = keepalive.map(|k| Instant::now() + k);
        let mut chunk = READ_MIN;
        // Which of reading and writing is polled first (they take turns,
        // so a socket that is always ready one way does not starve the
        // other).
        let mut read_first = true;
        loop {
            loop {
                let full = match self.dispatch(buf, max) {
                    Ok(Some(full)) => full,
                    Ok(None) => break,
                    Err(end) => return end,
                };
                // The router's inbox has room nearly always; waiting for
                // it (boxed: a rare, large state) writes nothing meanwhile,
                // which is fine: the router never waits for a connection.
                if !Box::pin(self.ctx.router.send(*full)).await {
                    return End::Shutdown;
                }
            }
            if buf.is_empty() && chunk == READ_MIN {
                // Nothing half-read and not busy: hold no buffer while
                // waiting (an idle client waits for hours); `poll_read_some`
                // allocates it when bytes come.
                *buf = BytesMut::new();
            } else {
                if buf.is_empty() && buf.capacity() > 2 * chunk {
                    *buf = BytesMut::with_capacity(chunk);
                }
                buf.reserve(chunk);
            }
            if writer.done() {
                // A close, a DISCONNECT or a takeover was written.
                return End::Abrupt("closed by broker (takeover or write failure)".into(), None);
            }
            // The client ignores its inflight window while a link session
            // pushes back: stop reading it (TCP backpressure) until the
            // router released some of its publishes; writing goes on.
            let blocked = writer.rx.parked() >= MAX_PARKED;
            // Not enforced while we do not read (blocked).
            let enforced = if blocked { None } else { deadline };
            writer
                .rx
                .set_keepalive_deadline(enforced, &self.ctx.keepalive_clock);
            let busy = writer.busy();
            let takes = writer.takes();
            let Writer { rx, batch, out, .. } = &mut *writer;
            // Each branch's future is held in this state while the
            // connection waits (an idle client waits for hours): the
            // outlet's reasons to wake (a stop for takeover, broker
            // shutdown or keepalive, items, unparked) are one poll with
            // one waker, and writes and reads are polls without state of
            // their own.
            tokio::select! {
                // Cancel safe: nothing is written or read unless it completes.
                r = poll_fn(|cx| poll_io(cx, io, (busy, out), (!blocked, buf, chunk), &mut read_first)), if busy || !blocked => match r {
                    Io::Wrote(Ok(step)) => writer.stepped(step),
                    Io::Wrote(Err(e)) => return End::Abrupt(format!("write error: {e}"), None),
                    Io::Read(Ok(0)) => return End::Abrupt("connection closed by peer".into(), None),
                    Io::Read(Ok(n)) => {
                        if n >= chunk {
                            chunk = (chunk * 2).min(READ_MAX);
                        } else if n < chunk / 4 {
                            chunk = (chunk / 2).max(READ_MIN);
                        }
                        deadline = keepalive.map(|k| Instant::now() + k);
                    }
                    Io::Read(Err(e)) => return End::Abrupt(format!("read error: {e}"), None),
                },
                // Cancel safe: nothing is taken unless it completes.
                wake = poll_fn(|cx| rx.poll_wake(cx, batch, WRITE_BATCH, takes, blocked.then_some(MAX_PARKED))) => match wake {
                    // The router aborted the connection: close with will.
                    Wake::Stopped(Halt::Aborted) => return End::Abrupt("closed by broker (takeover or write failure)".into(), None),
                    // Broker shutdown: close without will.
                    Wake::Stopped(Halt::ShutDown) => return End::Shutdown,
                    Wake::Stopped(Halt::KeepaliveExpired) => {
                        return End::Abrupt("keepalive timeout".into(), Some(ReasonCode::KeepAliveTimeout));
                    }
                    Wake::Items(n) => writer.encode(n),
                    // We did not read: the client's silence is ours.
                    Wake::Unparked => deadline = keepalive.map(|k| Instant::now() + k),
                },
            }
        }
    }

    /// Decodes and handles the packets in `buf`, each event handed to the
    /// router: `Ok(None)` once more bytes are needed, `Ok(Some(event))`
    /// when the router's inbox is full (the caller waits to send it),
    /// `Err` when the connection ends. Synchronous, so that the packets
    /// and events are not held in the waiting connection's state (only
    /// the box of the rare full inbox is).
    fn dispatch(&mut self, buf: &mut BytesMut, max: usize) -> Result<Option<Box<Event>>, End> {
        loop {
            let handled = if self.client.v5.is_some() {
                match crate::protocol::v5::decode_boxed(buf, max, Sender::Client) {
                    Ok(Some(packet)) => self.handle_v5(*packet),
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(self.violation(e.to_string(), Some(e.reason_code()))),
                }
            } else {
                match decode(buf, max) {
                    Ok(Some(packet)) => self.handle(packet),
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(self.violation(e.to_string(), None)),
                }
            };
            match self.ctx.router.send_now(handled?) {
                SendNow::Sent => {}
                SendNow::Full(event) => return Ok(Some(Box::new(event))),
                SendNow::Gone => return Err(End::Shutdown),
            }
        }
    }

    /// Closes for a protocol violation; an MQTT 5 client is told `code`
    /// (0x82 protocol error when none is more precise).
    fn violation(&self, reason: String, code: Option<ReasonCode>) -> End {
        self.ctx.counters.refused(RefuseReason::Protocol);
        crate::warn_limited!(format!("protocol-violation:{}", self.ctx.broker), broker = %self.ctx.broker, peer = %self.peer, client_id = %self.client.client_id, error = %reason, "protocol violation, connection closed");
        let code = self
            .client
            .v5
            .is_some()
            .then(|| code.unwrap_or(ReasonCode::ProtocolError));
        End::Abrupt(format!("protocol violation: {reason}"), code)
    }

    /// Handles one packet: the event to hand the router, or how the
    /// connection ends. Synchronous, so the read loop has one `send` await
    /// (a future holds every await point's state: one is smaller than nine).
    fn handle(&mut self, packet: Packet) -> Result<Event, End> {
        let conn = self.conn;
        match packet {
            Packet::Publish(publish) => {
                let refused = self.check_publish(&publish.topic)?;
                Ok(Event::Publish {
                    conn,
                    publish,
                    properties: None,
                    refused,
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
                        let options = SubscribeOptions::qos(QoS::from(f.qos));
                        let checked = self
                            .check_filter(i, &f.path)
                            .map(|()| Subscription { options, id: None });
                        (f.path, checked)
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
            Packet::Disconnect => Err(End::Graceful {
                will: false,
                session_expiry: None,
            }),
            Packet::Connect(_) => Err(self.violation("second CONNECT".into(), None)),
            other => Err(self.violation(
                format!("{} is not sent by clients", packet_name(&other)),
                None,
            )),
        }
    }

    /// Whether the `index`-th filter of a SUBSCRIBE may be subscribed:
    /// within the per-packet and level limits (counted when not; 0x97),
    /// valid (0x8F), allowed by the ACL (0x87). The per-client and trie
    /// limits are the router's: it holds the sessions and the trie.
    fn check_filter(&self, index: usize, filter: &str) -> Result<(), ReasonCode> {
        let limits = &self.ctx.limits;
        let refused = if index >= limits.max_filters_per_subscribe {
            Some(SubRefuseReason::FiltersPerSubscribe)
        } else if topic::level_count(filter) > limits.max_topic_levels {
            Some(SubRefuseReason::TopicLevels)
        } else {
            None
        };
        if let Some(reason) = refused {
            self.ctx.counters.sub_refused(reason);
            crate::warn_limited!(format!("subscription-limit:{}", self.ctx.broker), broker = %self.ctx.broker, peer = %self.peer, client_id = %self.client.client_id, ?reason, "subscription refused (0x80, MQTT 5: 0x97): limit");
            return Err(ReasonCode::QuotaExceeded);
        }
        if topic::validate_filter(filter).is_err() {
            return Err(ReasonCode::TopicFilterInvalid);
        }
        let allowed = self.ctx.security.acl.as_ref().is_none_or(|acl| {
            acl.check(
                self.client.username.as_deref(),
                &self.client.client_id,
                Op::Read,
                // A shared subscription reads its filter's topics.
                crate::protocol::shared::topic_filter(filter),
            )
        });
        if allowed {
            Ok(())
        } else {
            Err(ReasonCode::NotAuthorized)
        }
    }

    /// The checks of a published topic name: too many levels closes the
    /// connection (as Mosquitto: it cannot be routed); `$SYS` and ACL
    /// denials are acknowledged and dropped (counted), an MQTT 5 client
    /// is told 0x87 in its PUBACK/PUBREC.
    fn check_publish(&self, topic_name: &str) -> Result<Option<ReasonCode>, End> {
        let levels = topic::level_count(topic_name);
        if levels > self.ctx.limits.max_topic_levels {
            return Err(self.violation(
                format!(
                    "topic name has {levels} levels, more than max_topic_levels ({})",
                    self.ctx.limits.max_topic_levels
                ),
                Some(ReasonCode::TopicNameInvalid),
            ));
        }
        if is_sys(topic_name) {
            self.ctx.counters.dropped(DropReason::SysTopic, 1);
            return Ok(Some(ReasonCode::NotAuthorized));
        }
        if self.ctx.security.acl.as_ref().is_some_and(|acl| {
            !acl.check(
                self.client.username.as_deref(),
                &self.client.client_id,
                Op::Write,
                topic_name,
            )
        }) {
            self.ctx.counters.dropped(DropReason::Acl, 1);
            debug!(broker = %self.ctx.broker, client_id = %self.client.client_id, "publish denied by ACL");
            return Ok(Some(ReasonCode::NotAuthorized));
        }
        Ok(None)
    }

    /// Handles one MQTT 5 packet, as [`Reader::handle`].
    fn handle_v5(&mut self, packet: P5) -> Result<Event, End> {
        let conn = self.conn;
        match packet {
            P5::Publish(p) => self.publish_v5(p),
            P5::PubAck(a) => Ok(self.ack(Ack::PubAck, a.pkid)),
            // A failing PUBREC ends the QoS 2 flow there (spec 4.3.3).
            P5::PubRec(a) if ReasonCode::from(a.reason).is_error() => Ok(Event::PubRecFailed {
                conn,
                pkid: a.pkid,
                reason: a.reason.into(),
            }),
            P5::PubRec(a) => Ok(self.ack(Ack::PubRec, a.pkid)),
            P5::PubComp(a) => Ok(self.ack(Ack::PubComp, a.pkid)),
            P5::PubRel(r) => Ok(Event::PubRel { conn, pkid: r.pkid }),
            P5::Subscribe(s) => {
                let id = s
                    .properties
                    .as_ref()
                    .and_then(|p| p.id)
                    .and_then(|id| u32::try_from(id).ok());
                let filters = s
                    .filters
                    .into_iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let options = v5conn::options_of(&f);
                        let checked = self
                            .check_filter(i, &f.path)
                            .map(|()| Subscription { options, id });
                        (f.path, checked)
                    })
                    .collect();
                Ok(Event::Subscribe {
                    conn,
                    filters,
                    reply: Reply::Packet(s.pkid),
                })
            }
            P5::Unsubscribe(u) => Ok(Event::Unsubscribe {
                conn,
                filters: u.filters,
                reply: Reply::Packet(u.pkid),
            }),
            P5::PingReq(_) => Ok(Event::Ping { conn }),
            P5::Disconnect(d) => {
                let asked = d.properties.and_then(|p| p.session_expiry_interval);
                let max = self.ctx.server.max_session_expiry;
                let Some(v5) = self.client.v5.as_mut() else {
                    return Err(self.violation("DISCONNECT".into(), None));
                };
                match v5.session_expiry_on_disconnect(asked, max) {
                    Ok(expiry) => Err(End::Graceful {
                        will: d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage,
                        session_expiry: Some(expiry),
                    }),
                    Err(code) => Err(self.violation(
                        "DISCONNECT raises a session expiry interval of 0".into(),
                        Some(code),
                    )),
                }
            }
            // No authentication method is ever accepted, so there is no
            // exchange an AUTH could continue [MQTT-4.12.0-1].
            P5::Auth(_) => Err(self.violation(
                "AUTH without an authentication method".into(),
                Some(ReasonCode::ProtocolError),
            )),
            P5::Connect(..) => {
                Err(self.violation("second CONNECT".into(), Some(ReasonCode::ProtocolError)))
            }
            other => Err(self.violation(
                format!("{:?} is not sent by clients", v5conn::name(&other)),
                Some(ReasonCode::ProtocolError),
            )),
        }
    }

    /// An MQTT 5 PUBLISH: topic alias, receive maximum, payload format,
    /// then the same checks as 3.1.1.
    fn publish_v5(&mut self, p: rumqttc::v5::mqttbytes::v5::Publish) -> Result<Event, End> {
        let conn = self.conn;
        let pkid = p.pkid;
        let inbound = crate::protocol::convert::message_from_v5_publish(p);
        let mut message = inbound.message;
        let Some(v5) = self.client.v5.as_mut() else {
            return Err(self.violation("PUBLISH".into(), None));
        };
        let topic_name = match v5.aliases.resolve(&message.topic, inbound.topic_alias) {
            Ok(t) => t,
            Err(e) => {
                let code = e.reason_code();
                return Err(self.violation(e.to_string(), Some(code)));
            }
        };
        if message.qos != QoS::AtMostOnce && !v5.quota.received(pkid) {
            let max = self.ctx.server.receive_maximum;
            return Err(self.violation(
                format!("more than the receive maximum of {max} QoS 1/2 publishes in flight"),
                Some(ReasonCode::ReceiveMaximumExceeded),
            ));
        }
        message.topic = topic_name.into();
        let mut refused = self.check_publish(&message.topic)?;
        if !crate::protocol::convert::payload_format_valid(&message) {
            if message.qos == QoS::AtMostOnce {
                return Err(self.violation(
                    "payload format indicator 1 with a payload that is not UTF-8".into(),
                    Some(ReasonCode::PayloadFormatInvalid),
                ));
            }
            refused = Some(ReasonCode::PayloadFormatInvalid);
        }
        let properties = message.properties.take();
        let publish = publish_from_message(&message, pkid, message.dup);
        Ok(Event::Publish {
            conn,
            publish,
            properties,
            refused,
        })
    }

    fn ack(&self, kind: Ack, pkid: u16) -> Event {
        Event::Ack {
            conn: self.conn,
            kind,
            pkid,
        }
    }
}

/// How a connection's writer encodes: 3.1.1 packets as they are, or
/// through an MQTT 5 connection's [`V5Out`].
struct Wire {
    /// Boxed: 3.x connections (most idle clients) carry only the pointer.
    v5: Option<Box<V5Out>>,
    /// The client's Maximum Packet Size (MQTT 5): larger packets are not
    /// sent [MQTT-3.1.2-24].
    max_packet: usize,
    /// The client's Topic Alias Maximum.
    alias_max: u16,
    counters: Arc<Counters>,
}

impl Wire {
    /// Encodes `item` at the end of `out`; false when the connection
    /// closes after it (`Close`, `Replaced`, a DISCONNECT).
    fn encode(&mut self, item: Out, out: &mut BytesMut) -> bool {
        if matches!(item, Out::Close | Out::Replaced) {
            return false;
        }
        let Some(v5) = self.v5.as_mut() else {
            let packet = match item {
                Out::Packet(p) => *p,
                // Only in-process links are sent messages as such; encode
                // one all the same should a network session ever get it.
                Out::Publish(b) => {
                    let (message, pkid) = *b;
                    Packet::Publish(publish_from_message(&message, pkid, message.dup))
                }
                // Never sent to a 3.x connection.
                Out::V5(_) | Out::Close | Out::Replaced => return true,
            };
            if let Err(e) = encode(&packet, out, MQTT_MAX_PACKET_SIZE) {
                debug!(error = %e, "outgoing packet dropped");
            }
            return true;
        };
        let Some(mut packet) = v5.packet(item) else {
            return true;
        };
        // Nothing goes after a DISCONNECT [MQTT-3.14.4-1].
        let last = matches!(packet, P5::Disconnect(_));
        let mut encoded =
            crate::protocol::v5::encode(&packet, out, self.max_packet, Sender::Server);
        // An ack too large only for its reason string goes without it
        // [MQTT-3.4.2-2, MQTT-3.9.2-1].
        if matches!(encoded, Err(V5Error::OutgoingTooLarge { .. }))
            && super::problem::strip(&mut packet)
        {
            encoded = crate::protocol::v5::encode(&packet, out, self.max_packet, Sender::Server);
        }
        match encoded {
            Ok(()) => {}
            Err(V5Error::OutgoingTooLarge { size, max }) => {
                // Dropped for this client as if delivered [MQTT-3.1.2-25];
                // its alias (if it set one) never reached the client.
                if matches!(packet, P5::Publish(_)) {
                    self.counters.dropped(DropReason::TooLarge, 1);
                    v5.forget_aliases(self.alias_max);
                }
                debug!(
                    size,
                    max, "packet over the client's maximum packet size dropped"
                );
            }
            Err(e) => debug!(error = %e, "outgoing packet dropped"),
        }
        !last
    }
}

/// The write side of a connection: what the outlet holds, encoded into
/// one buffer and written as the socket takes it (many packets per write).
struct Writer {
    rx: OutletRx,
    wire: Wire,
    /// Items taken from the outlet, encoded at once (kept for its capacity).
    batch: Vec<Out>,
    /// Encoded, not yet written.
    out: BytesMut,
    /// Packets encoded into `out` and not yet all written.
    unwritten: usize,
    /// Bytes went out since the last flush (a WebSocket sends its message
    /// only on flush; for TCP and TLS it is free).
    unflushed: bool,
    /// A close, a takeover or a DISCONNECT was encoded: nothing more is taken.
    closing: bool,
    /// Every sender is gone.
    ended: bool,
    /// A CONNACK or a PINGRESP went alone (the client is, or may stay,
    /// idle): once it is written, the write buffer, the batch and the
    /// outlet's queue give their memory back (an idle client may stay for
    /// hours; a busy one keeps its buffers, as it seldom pings and never
    /// with nothing else to send).
    trim: bool,
}

impl Writer {
    fn new(rx: OutletRx, wire: Wire) -> Self {
        Writer {
            rx,
            wire,
            batch: Vec::new(),
            out: BytesMut::new(),
            unwritten: 0,
            unflushed: false,
            closing: false,
            ended: false,
            trim: false,
        }
    }

    /// Something to write or flush.
    fn busy(&self) -> bool {
        !self.out.is_empty() || self.unflushed
    }

    /// Takes more from the outlet (bounded: a client that does not read
    /// leaves the rest queued, where the router sees it).
    fn takes(&self) -> bool {
        !self.closing && !self.ended && self.out.len() < READ_MAX
    }

    /// The connection is over once this is written.
    fn done(&self) -> bool {
        (self.closing || self.ended) && !self.busy()
    }

    /// Encodes the `n` items `recv_many` took (0: every sender is gone).
    fn encode(&mut self, n: usize) {
        if n == 0 {
            self.ended = true;
            return;
        }
        self.trim |= n == 1
            && matches!(self.batch.first(), Some(Out::Packet(p)) if matches!(**p, Packet::PingResp | Packet::ConnAck(_)));
        for item in self.batch.drain(..) {
            if self.closing {
                // After a Close or a DISCONNECT: dropped unwritten.
                continue;
            }
            if self.wire.encode(item, &mut self.out) {
                self.unwritten += 1;
            } else {
                self.closing = true;
            }
        }
    }

    /// Books a [`write_step`].
    fn stepped(&mut self, step: Step) {
        match step {
            Step::Flushed => self.unflushed = false,
            Step::Wrote => {
                self.unflushed = true;
                if self.out.is_empty() {
                    self.rx.written(std::mem::take(&mut self.unwritten));
                    if std::mem::take(&mut self.trim) {
                        self.out = BytesMut::new();
                        self.batch = Vec::new();
                        self.rx.shrink();
                    } else if self.out.capacity() > READ_MAX {
                        self.out = BytesMut::new();
                    } else {
                        self.out.clear();
                    }
                }
            }
        }
    }

    /// Writes what is buffered and what the outlet holds until a close or
    /// the last sender (the caller bounds it in time).
    async fn drain<W: AsyncWrite + Unpin>(&mut self, wr: &mut W) -> io::Result<()> {
        loop {
            while self.busy() {
                let step = write_step(wr, &mut self.out).await?;
                self.stepped(step);
            }
            if self.closing || self.ended {
                return Ok(());
            }
            let n = self.rx.recv_many(&mut self.batch, WRITE_BATCH).await;
            self.encode(n);
        }
    }
}
