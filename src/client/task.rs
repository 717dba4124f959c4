//! The connection task of one remote broker: dial → CONNECT → serve the link
//! until the connection ends → backoff / failover / failback → again, until
//! shutdown. The protocol state (outgoing and incoming QoS flows,
//! subscriptions, QoS 0 backlog, keepalive) is the pure
//! [`super::session::ClientSession`], kept here across connections; this task
//! and the per-connection IO loop in [`super::connection`] (over the live
//! [`super::conn::Conn`]) only move frames and channel messages to and from it.

use std::time::Duration;

use std::collections::HashMap;

use rumqttc::mqttbytes::v4::{ConnectReturnCode, LastWill, Login, Packet};
use rumqttc::v5::mqttbytes::v5 as p5;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::conn::{Done, codec_error, now_std};
use super::durable::{self, Ledger, Write};
use super::failover::Failover;
use super::failover::referenced_endpoint;
use super::recovery::{RecoveryWait, Step};
use super::session::{ClientSession, Output, SessionConfig};
use super::transport::{BoxStream, Dialer, tcp_answers, tcp_connect};
use super::wire::{ConnectSpec, Grant, Wire, grant_from_connack, v5_connect};
use super::{ClientError, ClientEvent, ClientOptions, Endpoint, Stage};
use crate::link::{AckToken, Delivery, LinkError, LinkRequest, LinkState};
use crate::protocol::quickack::{AckHint, QuickAck};
use crate::protocol::reason::ReasonCode;
use crate::protocol::v5::Sender;
use crate::protocol::version::{self, ProtocolChoice, ProtocolVersion};
use crate::protocol::{Framed, Keepalive, MessageProperties, SubscribeOptions, packet_name};
use crate::store::{Keyspace, Store, StoreError};

/// Why the serve loop of one connection ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Shutdown requested (cancel, `Shutdown`, or every `Link` dropped).
    Shutdown,
    /// The connection failed or was lost.
    Lost(ClientError),
    /// Enough good probes of the primary: leave this secondary.
    FailBack,
}

/// An accepted connection: the stream, how the session's packets go out on
/// it, and what the broker granted.
pub(crate) struct Connected {
    pub(crate) framed: Framed<BoxStream>,
    pub(crate) wire: Wire,
    pub(crate) grant: Grant,
    /// Tells the stream a message we owe an acknowledgement for came in.
    pub(crate) owed: AckHint,
}

/// A connect attempt that failed, or an MQTT 5 connection that calls for
/// 3.1.1 instead.
enum Failed {
    /// The attempt failed.
    Error(ClientError),
    /// The broker refused the MQTT 5 CONNECT in a way that asks for 3.1.1
    /// (CONNACK 0x01 in the 3.1.1 format, v5 reason 0x84, or the connection
    /// closed right after the CONNECT).
    RefusedV5(ClientError),
    /// The broker accepted MQTT 5 but grants a receive maximum below our
    /// `inflight`, we publish to it and `protocol` is left to default: the
    /// connection was closed cleanly (DISCONNECT 0x00) to speak 3.1.1
    /// instead (see [`Grant::window_calls_for_3_1_1`]).
    SmallWindow {
        /// The receive maximum it granted.
        receive_maximum: u16,
    },
}

impl From<ClientError> for Failed {
    fn from(error: ClientError) -> Self {
        Failed::Error(error)
    }
}

/// Everything one broker connection keeps across reconnects.
pub(crate) struct Task {
    pub(crate) opts: ClientOptions,
    pub(crate) shutdown: CancellationToken,
    pub(crate) requests: mpsc::Receiver<LinkRequest>,
    pub(crate) deliveries: mpsc::Sender<Delivery>,
    pub(crate) acks_tx: mpsc::UnboundedSender<AckToken>,
    pub(crate) acks_rx: mpsc::UnboundedReceiver<AckToken>,
    pub(crate) state: watch::Sender<LinkState>,
    /// The protocol state (flows, subscriptions, QoS 0 backlog, keepalive).
    pub(crate) session: ClientSession<Done>,
    /// Every `Link` was dropped: finish what is in flight, then close.
    pub(crate) requests_closed: bool,
    /// An incoming message the delivery channel had no room for yet.
    pub(crate) pending_delivery: Option<Delivery>,
    pub(crate) failover: Failover,
    dialer: Option<Dialer>,
    /// The store and keyspace of this broker's stored QoS 2 flows
    /// (`None`: not kept; see [`super::durable`]).
    pub(crate) durable: Option<(Store, Keyspace)>,
    /// Endpoints (URLs) spoken to in 3.1.1 from then on, for the life of
    /// the process (with `protocol` left to default): they refused MQTT 5,
    /// or granted a receive maximum (kept here) below `inflight`.
    v3_only: HashMap<String, Option<u16>>,
    /// The client identifier the broker assigned (we sent an empty one),
    /// kept for the life of the session.
    assigned_client_id: Option<String>,
}

impl Task {
    pub(crate) fn new(
        opts: ClientOptions,
        shutdown: CancellationToken,
        requests: mpsc::Receiver<LinkRequest>,
        deliveries: mpsc::Sender<Delivery>,
        state: watch::Sender<LinkState>,
    ) -> Self {
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        let failover = Failover::new(
            opts.endpoints.len(),
            Backoff::new(&opts.backoff),
            opts.failback.clone(),
        );
        let mut session = ClientSession::new(
            session_config(&opts),
            Keepalive::new(opts.keepalive),
            now_std(),
        );
        let durable = restore_durable(&opts, &mut session);
        Task {
            durable,
            session,
            opts,
            shutdown,
            requests,
            deliveries,
            acks_tx,
            acks_rx,
            state,
            requests_closed: false,
            pending_delivery: None,
            failover,
            dialer: None,
            v3_only: HashMap::new(),
            assigned_client_id: None,
        }
    }

    pub(crate) fn emit(&self, event: ClientEvent) {
        if let Some(tx) = &self.opts.events {
            // No receiver is fine: events are for whoever listens.
            let _ = tx.send(event);
        }
    }

    /// The dialer, once built (by the first connect attempt).
    pub(crate) fn dialer(&self) -> Option<Dialer> {
        self.dialer.clone()
    }

    fn endpoint(&self, index: usize) -> Option<Endpoint> {
        self.opts.endpoints.get(index).cloned()
    }

    /// The task body: runs until shutdown, then fails what is left.
    pub(crate) async fn run(mut self) {
        let broker = self.opts.name.clone();
        if self.opts.endpoints.is_empty() {
            warn!(broker = %broker, "no endpoints configured; link closed");
            self.close();
            return;
        }
        if self.opts.tls.insecure && self.opts.endpoints.iter().any(|e| e.tls) {
            warn!(broker = %broker, "TLS certificate verification is DISABLED (insecure: true)");
        }
        let mut delay = Duration::ZERO;
        // Whether the last failure was "nothing answered": only then do TCP
        // probes during the wait tell us something new.
        let mut probe_while_waiting = false;
        let mut attempt: u32 = 0;
        loop {
            if !delay.is_zero() && !self.wait_offline(delay, probe_while_waiting).await {
                break;
            }
            self.take_settings();
            let index = self.failover.current();
            let Some(ep) = self.endpoint(index) else {
                break;
            };
            let url = ep.url();
            attempt = attempt.saturating_add(1);
            info!(broker = %broker, endpoint = %url, attempt, "connecting");
            self.state.send_replace(LinkState::Connecting {
                endpoint: url.clone(),
                attempt,
            });
            self.emit(ClientEvent::ConnectAttempt {
                endpoint: url.clone(),
            });
            // Cancel safety: dropping `connect` drops a half-open socket; no
            // session state is touched before it returns.
            let shutdown = self.shutdown.clone();
            let connected = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.connect(&ep) => r,
            };
            let mut was_up = false;
            let end = match connected {
                Ok(Connected {
                    framed,
                    wire,
                    grant,
                    owed,
                }) => {
                    let session_present = grant.session_present;
                    was_up = true;
                    attempt = 0;
                    self.failover.connected(now_std());
                    info!(broker = %broker, endpoint = %url, session_present, "connected");
                    self.state.send_replace(LinkState::Connected {
                        endpoint: url.clone(),
                        session_present,
                    });
                    self.emit(ClientEvent::Connected {
                        endpoint: url.clone(),
                        session_present,
                    });
                    let end = self.serve(framed, wire, grant, owed, &ep).await;
                    self.session.disconnected();
                    end
                }
                Err(e) => End::Lost(e),
            };
            match end {
                End::Shutdown => break,
                End::Lost(err) => {
                    let reason = err.to_string();
                    let kind = err.kind();
                    probe_while_waiting = err.is_unreachable();
                    log_lost(&broker, &url, &reason, was_up, attempt);
                    self.state.send_replace(LinkState::Disconnected {
                        reason: reason.clone(),
                    });
                    self.emit(ClientEvent::Disconnected {
                        endpoint: url.clone(),
                        kind,
                        reason,
                    });
                    let mut retry = self.failover.failed(now_std());
                    if let Some(reference) = err.server_reference() {
                        // Followed only to an endpoint of the config: the
                        // CONNECT carries our credentials.
                        match referenced_endpoint(reference, &self.opts.endpoints) {
                            Some(index) => {
                                info!(broker = %broker, endpoint = %url, server_reference = %reference, "broker names another of our endpoints");
                                retry.endpoint = self.failover.answered(index);
                            }
                            None => {
                                crate::warn_limited!(format!("server-reference:{broker}"), broker = %broker, endpoint = %url, server_reference = %reference, "broker names a server that is not one of this broker's configured endpoints: not followed (credentials go only to configured endpoints); failing over as usual");
                            }
                        }
                    }
                    delay = retry.delay;
                    if retry.is_failover()
                        && let Some(to) = self.endpoint(retry.endpoint)
                    {
                        let to = to.url();
                        info!(broker = %broker, endpoint = %url, to = %to, delay_ms = delay.as_millis() as u64, "failing over");
                        self.emit(ClientEvent::Failover {
                            from: url.clone(),
                            to,
                        });
                    } else {
                        info!(broker = %broker, endpoint = %url, delay_ms = delay.as_millis() as u64, "reconnecting after backoff");
                    }
                }
                End::FailBack => {
                    let to = self.endpoint(0).map(|e| e.url()).unwrap_or_default();
                    info!(broker = %broker, endpoint = %url, to = %to, "failing back to primary");
                    self.state.send_replace(LinkState::Disconnected {
                        reason: format!("failing back to {to}"),
                    });
                    self.emit(ClientEvent::Failback { to });
                    self.failover.fail_back(now_std());
                    delay = Duration::ZERO;
                }
            }
        }
        info!(broker = %broker, "link closed");
        self.close();
    }

    /// Applies replacement connection settings from a reload, if any: they
    /// hold from this dial on; the session state is kept.
    fn take_settings(&mut self) {
        let Some(slot) = &self.opts.settings else {
            return;
        };
        // Short section, no `.await`; a poisoned slot still holds plain data.
        let Some(new) = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return;
        };
        if new.endpoints.is_empty() {
            warn!(broker = %self.opts.name, "new connection settings have no endpoint; ignored");
            return;
        }
        let o = &mut self.opts;
        o.endpoints = new.endpoints;
        o.protocol = new.protocol;
        o.publishes = new.publishes;
        o.client_id = new.client_id;
        o.username = new.username;
        o.password = new.password;
        o.keepalive = new.keepalive;
        o.clean_session = new.clean_session;
        o.tls = new.tls;
        o.backoff = new.backoff;
        o.failback = new.failback;
        o.connect_timeout = new.connect_timeout;
        o.max_packet_size = new.max_packet_size;
        o.will = new.will;
        o.birth = new.birth;
        self.session
            .set_limits(Keepalive::new(o.keepalive), o.max_packet_size);
        self.failover = Failover::new(
            o.endpoints.len(),
            Backoff::new(&o.backoff),
            o.failback.clone(),
        );
        self.dialer = None;
        // A reconnect trigger stored for these settings is used up now.
        if let Some(n) = &o.reconnect {
            let _ = futures_util::FutureExt::now_or_never(n.notified());
        }
        info!(broker = %o.name, endpoints = %o.display_url(), "connection settings replaced");
    }

    /// Waits out a backoff delay while still taking requests (publishes are
    /// kept for the next connection). With `probe` set, the endpoints are
    /// TCP-probed every `reconnect.probe_interval` and the wait ends as soon
    /// as one answers; a forced reconnect (the stall watchdog) ends it too.
    /// False when shutdown was requested.
    async fn wait_offline(&mut self, delay: Duration, probe: bool) -> bool {
        let interval = probe.then_some(self.opts.backoff.probe_interval);
        let mut wait = RecoveryWait::new(now_std(), delay, interval);
        let mut running: Option<EndpointProbe> = None;
        let shutdown = self.shutdown.clone();
        let reconnect = self.opts.reconnect.clone();
        loop {
            if self.requests_closed && self.is_idle() {
                return false;
            }
            let until = match wait.step(now_std()) {
                Step::Connect => return true,
                Step::Probe => {
                    running = Some(self.probe_endpoints());
                    continue;
                }
                Step::Wait { until } => Instant::from_std(until),
            };
            let room = self.can_take() && self.session.backlog_has_room();
            tokio::select! {
                // Cancel safety: every branch is cancel safe (`cancelled`,
                // a fresh `sleep_until` each turn, `notified` (a missed
                // notification is a missed reconnect; the watchdog asks
                // again), the probe kept in `running` and polled by
                // reference, `recv` on mpsc).
                _ = shutdown.cancelled() => return false,
                _ = sleep_until(until) => {}
                () = async {
                    match &reconnect {
                        Some(n) => n.notified().await,
                        None => std::future::pending().await,
                    }
                } => {
                    info!(broker = %self.opts.name, "reconnect requested: backoff wait cut short");
                    wait.force();
                }
                answered = endpoint_probe_done(&mut running) => {
                    running = None;
                    if let Some(index) = answered {
                        let index = self.failover.answered(index);
                        let url = self.endpoint(index).map(|e| e.url()).unwrap_or_default();
                        info!(broker = %self.opts.name, endpoint = %url, "endpoint answers again; connecting now");
                    }
                    wait.probed(now_std(), answered.is_some());
                }
                req = self.requests.recv(), if room => match req {
                    Some(req) => {
                        if !self.take_request(req, &mut Offline) {
                            return false;
                        }
                    }
                    None => self.requests_closed = true,
                },
                // Tokens of a previous connection: the session ignores them.
                Some(token) = self.acks_rx.recv() => {
                    self.session.on_ack(token, &mut Offline);
                }
            }
        }
    }

    /// Starts one TCP probe of every endpoint (no TLS, no CONNECT); resolves
    /// to the highest-priority endpoint that answered, if any. Each probe is
    /// bounded by the probe interval and the connect timeout.
    fn probe_endpoints(&self) -> EndpointProbe {
        let limit = self
            .opts
            .backoff
            .probe_interval
            .min(self.opts.connect_timeout)
            .max(PROBE_TIMEOUT_FLOOR);
        let endpoints = self.opts.endpoints.clone();
        tracing::debug!(broker = %self.opts.name, "probing endpoints (TCP)");
        Box::pin(async move {
            let answers =
                futures_util::future::join_all(endpoints.iter().map(|ep| tcp_answers(ep, limit)))
                    .await;
            answers.iter().position(|ok| *ok)
        })
    }

    /// Connects to `ep` in the version `protocol` asks for: MQTT 5 by
    /// default, falling back to 3.1.1 (at once, in the same attempt) when
    /// the endpoint refuses it; the endpoint is then remembered as 3.1.1-only.
    async fn connect(&mut self, ep: &Endpoint) -> Result<Connected, ClientError> {
        let url = ep.url();
        let version = match self.opts.protocol {
            ProtocolChoice::Only(v) => v,
            ProtocolChoice::Auto if self.v3_only.contains_key(&url) => ProtocolVersion::V3_1_1,
            ProtocolChoice::Auto => ProtocolVersion::V5,
        };
        match self.connect_as(ep, version).await {
            Ok(c) => return Ok(c),
            Err(Failed::RefusedV5(error)) if self.opts.protocol == ProtocolChoice::Auto => {
                let first = self.v3_only.is_empty();
                self.v3_only.insert(url.clone(), None);
                if first {
                    warn!(broker = %self.opts.name, endpoint = %url, error = %error, "broker refuses MQTT 5; speaking MQTT 3.1.1 to this endpoint from now on");
                } else {
                    info!(broker = %self.opts.name, endpoint = %url, error = %error, "broker refuses MQTT 5; falling back to 3.1.1");
                }
            }
            Err(Failed::SmallWindow { receive_maximum }) => {
                self.v3_only.insert(url.clone(), Some(receive_maximum));
                // Once per endpoint: it is remembered now.
                warn!(
                    broker = %self.opts.name,
                    endpoint = %url,
                    receive_maximum,
                    inflight = self.opts.inflight,
                    "broker allows fewer QoS 1/2 messages in flight over MQTT 5 (receive maximum) than `inflight`, \
                     which would cap this destination at receive_maximum messages per round trip: speaking MQTT 3.1.1 \
                     to this endpoint from now on, so MQTT 5 properties (user properties, content type, correlation \
                     data, response topic, message expiry) are NOT carried towards this broker; set `protocol: 5` \
                     to keep them at that cap, or raise the broker's limit (Mosquitto: max_inflight_messages) so \
                     MQTT 5 is kept"
                );
            }
            Err(Failed::Error(e) | Failed::RefusedV5(e)) => return Err(e),
        }
        self.connect_as(ep, ProtocolVersion::V3_1_1)
            .await
            .map_err(|f| match f {
                Failed::Error(e) | Failed::RefusedV5(e) => e,
                // Not asked of a 3.1.1 connection (no receive maximum).
                Failed::SmallWindow { .. } => ClientError::Protocol {
                    endpoint: ep.url(),
                    reason: "receive maximum on a 3.1.1 connection".into(),
                },
            })
    }

    /// Dials, sends CONNECT in `version`, waits for CONNACK, all within the
    /// connect timeout.
    async fn connect_as(
        &mut self,
        ep: &Endpoint,
        version: ProtocolVersion,
    ) -> Result<Connected, Failed> {
        let dialer = match &self.dialer {
            Some(d) => d.clone(),
            None => {
                let d = Dialer::new(&self.opts.endpoints, &self.opts.tls, &self.opts.ws_headers)?;
                self.dialer = Some(d.clone());
                d
            }
        };
        let deadline = Instant::now() + self.opts.connect_timeout;
        let timeout = |stage| ClientError::Timeout {
            endpoint: ep.url(),
            stage,
        };
        let tcp = timeout_at(deadline, tcp_connect(ep)).await.map_err(|_| {
            ClientError::Unreachable {
                endpoint: ep.url(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "timed out connecting (TCP)",
                ),
            }
        })??;
        let tcp = QuickAck::new(tcp);
        let owed = tcp.hint();
        let stream = timeout_at(deadline, dialer.wrap(ep, tcp))
            .await
            .map_err(|_| {
                timeout(if ep.tls {
                    Stage::TlsHandshake
                } else {
                    Stage::WebSocketHandshake
                })
            })??;
        let max = self.opts.max_packet_size;
        let mut framed = Framed::with_version(stream, max, max, version, Sender::Client);
        let v5 = version == ProtocolVersion::V5;
        // A v5 CONNECT the peer does not understand often just closes the
        // connection: that asks for the fallback too.
        let protocol = |e: version::AnyCodecError| {
            let error = codec_error(ep, e);
            if v5 && matches!(error, ClientError::Closed { .. } | ClientError::Io { .. }) {
                Failed::RefusedV5(error)
            } else {
                Failed::Error(error)
            }
        };
        timeout_at(deadline, framed.write_packet(&self.connect_packet(version)))
            .await
            .map_err(|_| timeout(Stage::SendConnect))?
            .map_err(protocol)?;
        if v5 {
            // A 3.1.1 server answers in the 3.1.1 CONNACK format (two bytes
            // of body: a v5 CONNACK has at least three): 0x01, or, from a
            // lenient one that ignored the level, anything else. Either way
            // it speaks 3.1.1: fall back.
            let head = timeout_at(deadline, framed.peek(4))
                .await
                .map_err(|_| timeout(Stage::Connack))?
                .map_err(protocol)?;
            if let [0x20, 0x02, _, code, ..] = *head {
                let reason = match code {
                    1 => "unacceptable protocol version (0x01, MQTT 3.1.1 CONNACK)".to_owned(),
                    other => format!("3.1.1 CONNACK {other:#04x} to an MQTT 5 CONNECT"),
                };
                return Err(Failed::RefusedV5(ClientError::Refused {
                    endpoint: ep.url(),
                    reason,
                    server_reference: None,
                }));
            }
        }
        let packet = timeout_at(deadline, framed.read_packet())
            .await
            .map_err(|_| timeout(Stage::Connack))?
            .map_err(protocol)?;
        let grant = match self.accept_connack(ep, packet) {
            Ok(grant) => grant,
            // An AUTH (we sent no authentication method [MQTT-4.12.0-6])
            // or any other packet in place of the CONNACK.
            Err(Failed::Error(e @ ClientError::Protocol { .. })) if v5 => {
                say_goodbye(&mut framed, ReasonCode::ProtocolError, deadline).await;
                return Err(Failed::Error(e));
            }
            Err(f) => return Err(f),
        };
        let window = self.opts.inflight;
        if v5 && grant.window_calls_for_3_1_1(self.opts.protocol, self.opts.publishes, window) {
            // Nothing of the session was sent yet: a clean close (0x00).
            say_goodbye(&mut framed, ReasonCode::Success, deadline).await;
            return Err(Failed::SmallWindow {
                receive_maximum: grant.receive_maximum,
            });
        }
        if usize::from(grant.receive_maximum) < window {
            // The spec binds us to the broker's window: say so once, since
            // on a long link it caps throughput at one round trip per window.
            crate::warn_limited!(format!("small-receive-maximum:{}", self.opts.name), broker = %self.opts.name, endpoint = %ep.url(), receive_maximum = grant.receive_maximum, inflight = window, "broker allows fewer QoS 1/2 messages in flight than `inflight` (MQTT 5 receive maximum): at most receive_maximum per round trip towards it; raise its limit (Mosquitto: max_inflight_messages) or set `protocol: 3.1.1` for this broker where properties are not needed");
        }
        let wire = Wire::new(version, grant.topic_alias_maximum);
        if let Some(m) = grant.max_packet_size {
            framed.set_max_outgoing(max.min(usize::try_from(m).unwrap_or(usize::MAX)));
        }
        Ok(Connected {
            framed,
            wire,
            grant,
            owed,
        })
    }

    /// What the broker's CONNACK granted, or why it refused us.
    fn accept_connack(&mut self, ep: &Endpoint, packet: version::Packet) -> Result<Grant, Failed> {
        let refused = |reason: String, fallback: bool, server_reference: Option<String>| {
            let error = ClientError::Refused {
                endpoint: ep.url(),
                reason,
                server_reference,
            };
            if fallback {
                Failed::RefusedV5(error)
            } else {
                Failed::Error(error)
            }
        };
        match packet {
            version::Packet::V3(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                // A receive maximum this endpoint granted over MQTT 5 bounds QoS 2.
                Ok(Grant {
                    exactly_once_limit: self.v3_only.get(&ep.url()).copied().flatten(),
                    ..Grant::v3(ack.session_present)
                })
            }
            version::Packet::V3(Packet::ConnAck(ack)) => {
                Err(refused(connack_reason(ack.code).into(), false, None))
            }
            version::Packet::V5(p) => match *p {
                p5::Packet::ConnAck(ack) => match grant_from_connack(ack) {
                    Ok(grant) => {
                        if let Some(id) = &grant.assigned_client_id {
                            info!(broker = %self.opts.name, client_id = %id, "broker assigned our client id");
                            self.assigned_client_id = Some(id.clone());
                        }
                        if let Some(expiry) = grant.session_expiry {
                            tracing::debug!(broker = %self.opts.name, session_expiry_s = expiry, "broker set the session expiry");
                        }
                        Ok(grant)
                    }
                    Err(r) => {
                        let fallback = r.code == ReasonCode::UnsupportedProtocolVersion;
                        let mut reason = r.code.to_string();
                        if let Some(s) = r.reason_string {
                            reason = format!("{reason}: {s}");
                        }
                        if let Some(s) = &r.server_reference {
                            reason = format!("{reason}, server reference {s}");
                        }
                        // Only "use another server" and "server moved"
                        // name one (MQTT 5 §3.2.2.3.16, §4.11).
                        let moved = matches!(
                            r.code,
                            ReasonCode::UseAnotherServer | ReasonCode::ServerMoved
                        );
                        Err(refused(
                            reason,
                            fallback,
                            r.server_reference.filter(|_| moved),
                        ))
                    }
                },
                p5::Packet::Auth(_) => Err(ClientError::Protocol {
                    endpoint: ep.url(),
                    reason: super::wire::WireError::Auth.to_string(),
                }
                .into()),
                other => Err(ClientError::Protocol {
                    endpoint: ep.url(),
                    reason: format!("expected CONNACK, got {other:?}"),
                }
                .into()),
            },
            version::Packet::V3(other) => Err(ClientError::Protocol {
                endpoint: ep.url(),
                reason: format!("expected CONNACK, got {}", packet_name(&other)),
            }
            .into()),
        }
    }

    fn connect_packet(&self, version: ProtocolVersion) -> version::Packet {
        let o = &self.opts;
        let secs = o.keepalive.as_secs() + u64::from(o.keepalive.subsec_nanos() > 0);
        let keep_alive = u16::try_from(secs).unwrap_or(u16::MAX);
        // An empty configured id asks the broker for one; once it assigned
        // one, we keep using it (our session lives under it).
        let client_id = match (&self.assigned_client_id, o.client_id.is_empty()) {
            (Some(id), true) => id.as_str(),
            _ => o.client_id.as_str(),
        };
        if version == ProtocolVersion::V5 {
            return v5_connect(&ConnectSpec {
                client_id,
                keepalive_secs: keep_alive,
                clean_session: o.clean_session,
                receive_maximum: u16::try_from(o.inflight).unwrap_or(u16::MAX),
                max_packet_size: o.max_packet_size,
                username: o.username.as_deref(),
                password: o.password.as_deref(),
                will: o.will.as_ref(),
            });
        }
        let mut connect = rumqttc::mqttbytes::v4::Connect::new(client_id);
        connect.keep_alive = keep_alive;
        connect.clean_session = o.clean_session;
        connect.last_will = o.will.as_ref().map(|w| LastWill {
            topic: w.topic.as_str().to_owned(),
            message: w.payload.clone(),
            qos: w.qos.into(),
            retain: w.retain,
        });
        connect.login = o.username.as_ref().map(|u| Login {
            username: u.clone(),
            password: o.password.clone().unwrap_or_default(),
        });
        version::Packet::V3(Packet::Connect(connect))
    }

    /// Hands one request to the session; what it sends goes to `out` (the
    /// live connection, or [`Offline`]). Returns false on `Shutdown`.
    pub(crate) fn take_request(&mut self, req: LinkRequest, out: &mut impl Output<Done>) -> bool {
        match req {
            LinkRequest::Publish { message, done } => {
                let origin = done.origin().cloned();
                self.session
                    .publish_request_from(message, origin, Done::Caller(done), out);
            }
            LinkRequest::Subscribe { filters, done } => self.session.subscribe(filters, done, out),
            LinkRequest::Unsubscribe { filters, done } => {
                self.session.unsubscribe(filters, done, out);
            }
            LinkRequest::Shutdown => return false,
        }
        true
    }

    /// Whether a new request may be taken: room in the inflight window, no
    /// QoS 2 publish waiting for its limit, and somebody left to send one.
    pub(crate) fn can_take(&self) -> bool {
        self.session.can_take() && !self.requests_closed
    }

    /// Nothing left to deliver to the broker.
    pub(crate) fn is_idle(&self) -> bool {
        self.session.is_idle()
    }

    /// Fails everything still pending and marks the link closed.
    fn close(&mut self) {
        self.requests.close();
        while let Ok(req) = self.requests.try_recv() {
            match req {
                LinkRequest::Publish { done, .. } => {
                    let _ = done.send(Err(LinkError::Closed));
                }
                LinkRequest::Subscribe { done, .. } => {
                    let _ = done.send(Err(LinkError::Closed));
                }
                LinkRequest::Unsubscribe { done, .. } => {
                    let _ = done.send(Err(LinkError::Closed));
                }
                LinkRequest::Shutdown => {}
            }
        }
        self.session.close(&mut Offline);
        self.state.send_replace(LinkState::Closed);
    }
}

/// The session's outputs while no connection is up: nothing can be sent
/// (the session queues instead), completions resolve at once.
pub(crate) struct Offline;

impl Output<Done> for Offline {
    fn send(&mut self, _packet: &Packet) {}

    fn send_publish(&mut self, _packet: &Packet, _properties: Option<&MessageProperties>) {}

    fn send_subscribe(&mut self, _packet: &Packet, _options: &[SubscribeOptions]) {}

    fn complete_after_flush(&mut self, done: Done) {
        done.complete(Err(LinkError::Closed));
    }

    fn complete(&mut self, done: Done, result: Result<(), LinkError>) {
        done.complete(result);
    }

    // The session persists only while connected: a flow started offline
    // is written by `ClientSession::connected` before it is sent.
    fn persist(&mut self, _write: Write) {}

    fn send_when_durable(
        &mut self,
        _packet: &Packet,
        _: Option<&crate::protocol::MessageProperties>,
    ) {
    }
}

/// Ends an MQTT 5 connection that never carried the session (right after
/// CONNACK): DISCONNECT with `code`, then close, by `deadline`. Errors are
/// moot: the connection is being dropped either way.
async fn say_goodbye(framed: &mut Framed<BoxStream>, code: ReasonCode, deadline: Instant) {
    let bye = Wire::new(ProtocolVersion::V5, 0).disconnect(code);
    let _ = timeout_at(deadline, async {
        let _ = framed.write_packet(&bye).await;
        let _ = framed.get_mut().shutdown().await;
    })
    .await;
}

/// Stored `(key, value)` pairs.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// With a store and a persistent session, opens the broker's keyspace of
/// stored QoS 2 flows and puts what it holds back into `session` (before
/// anything is sent). Damaged records are skipped, counted in the log and
/// deleted. Without (or when the keyspace cannot be read), the flows are
/// kept in memory only: QoS 2 is then at least once across a restart.
fn restore_durable(
    opts: &ClientOptions,
    session: &mut ClientSession<Done>,
) -> Option<(Store, Keyspace)> {
    let store = opts.store.as_ref().filter(|_| !opts.clean_session)?;
    let broker = &opts.name;
    let read = || -> Result<(Keyspace, Entries), StoreError> {
        let ks = store.keyspace(&durable::keyspace_name(broker))?;
        let entries = ks
            .iter()
            .map(|guard| {
                let (k, v) = guard.into_inner()?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect::<Result<Entries, StoreError>>()?;
        Ok((ks, entries))
    };
    let (ks, entries) = match read() {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(broker = %broker, error = %e, "cannot read the stored QoS 2 flows; QoS 2 is at least once across a restart");
            return None;
        }
    };
    let found = Ledger::restore(entries);
    let damaged = found.damaged.len();
    for k in &found.damaged {
        if let Err(e) = ks.remove(k.as_slice()) {
            tracing::warn!(broker = %broker, error = %e, "cannot delete a damaged QoS 2 flow record");
        }
    }
    if damaged > 0 {
        warn!(broker = %broker, damaged, "damaged QoS 2 flow records skipped");
    }
    let (flows, marks) = (found.flows.len(), found.ledger.marks());
    if flows > 0 || marks > 0 {
        info!(broker = %broker, flows, completed = marks, "QoS 2 flows restored");
    }
    session.restore_durable(found, || Done::Internal);
    Some((store.clone(), ks))
}

/// The session's limits from the client options.
fn session_config(o: &ClientOptions) -> SessionConfig {
    SessionConfig {
        name: o.name.clone(),
        inflight: o.inflight,
        inflight_qos2: o.inflight_qos2,
        max_packet_size: o.max_packet_size,
    }
}

/// A running TCP probe of the endpoints: the index of the first that answered.
type EndpointProbe = std::pin::Pin<Box<dyn std::future::Future<Output = Option<usize>> + Send>>;

/// A probe is given at least this long, however short the probe interval.
const PROBE_TIMEOUT_FLOOR: Duration = Duration::from_millis(100);

/// Awaits the probe if one runs; pending forever otherwise.
async fn endpoint_probe_done(probe: &mut Option<EndpointProbe>) -> Option<usize> {
    match probe {
        Some(p) => p.await,
        None => std::future::pending().await,
    }
}

/// Logs the end of an attempt: "disconnected" only for a link that was up
/// (CONNACK accepted), "connect failed" for an attempt that never got there.
/// Both go through the warning limiter, one key per broker and kind.
fn log_lost(broker: &str, url: &str, reason: &str, was_up: bool, attempt: u32) {
    let kind = if was_up {
        "disconnected"
    } else {
        "connect-failed"
    };
    let Some(suppressed) = crate::metrics::ratelimit::allow(&format!("{kind}:{broker}")) else {
        return;
    };
    if was_up {
        warn!(broker = %broker, endpoint = %url, error = %reason, suppressed, "disconnected");
    } else {
        warn!(broker = %broker, endpoint = %url, error = %reason, attempt, suppressed, "connect failed");
    }
}

fn connack_reason(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Success => "accepted",
        ConnectReturnCode::RefusedProtocolVersion => "unacceptable protocol version (0x01)",
        ConnectReturnCode::BadClientId => "identifier rejected (0x02)",
        ConnectReturnCode::ServiceUnavailable => "server unavailable (0x03)",
        ConnectReturnCode::BadUserNamePassword => "bad user name or password (0x04)",
        ConnectReturnCode::NotAuthorized => "not authorized (0x05)",
    }
}
