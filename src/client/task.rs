//! The connection task of one remote broker: dial → CONNECT → serve the link
//! until the connection ends → backoff / failover / failback → again, until
//! shutdown. Protocol state (outgoing and incoming QoS flows, subscriptions)
//! lives here across connections; the per-connection loop is in
//! [`super::connection`], over the live [`super::conn::Conn`].

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::mqttbytes::v4::{ConnectReturnCode, LastWill, Login, Packet};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::conn::{Conn, Done, codec_error, now_std};
use super::failover::Failover;
use super::recovery::{RecoveryWait, Step};
use super::subs::{SubOp, Subs};
use super::transport::{BoxStream, Dialer, tcp_answers, tcp_connect};
use super::{ClientError, ClientEvent, ClientOptions, Endpoint, Stage};
use crate::link::{AckToken, Delivery, LinkError, LinkRequest, LinkState};
use crate::protocol::{
    Framed, Incoming, Message, Outgoing, QoS, filter_is_valid, packet_name, topic_name_is_valid,
};

/// What `Outgoing` keeps per QoS 1/2 flow: the completion, and whether the
/// flow counts against the QoS 2 limit.
#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) done: Done,
    pub(crate) exactly_once: bool,
}

/// Bytes of fixed header, topic length and packet id around a PUBLISH payload.
const PUBLISH_OVERHEAD: usize = 5 + 2 + 2;

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

/// Everything one broker connection keeps across reconnects.
pub(crate) struct Task {
    pub(crate) opts: ClientOptions,
    pub(crate) shutdown: CancellationToken,
    pub(crate) requests: mpsc::Receiver<LinkRequest>,
    pub(crate) deliveries: mpsc::Sender<Delivery>,
    pub(crate) acks_tx: mpsc::UnboundedSender<AckToken>,
    pub(crate) acks_rx: mpsc::UnboundedReceiver<AckToken>,
    pub(crate) state: watch::Sender<LinkState>,
    pub(crate) outgoing: Outgoing<Flow>,
    /// QoS 2 flows in `outgoing` (limited by `ClientOptions::inflight_qos2`).
    pub(crate) qos2_inflight: usize,
    /// A QoS 2 publish waiting for the QoS 2 limit; while it waits no other
    /// request is taken (order is kept).
    pub(crate) stashed: Option<(Message, Done)>,
    /// Every `Link` was dropped: finish what is in flight, then close.
    pub(crate) requests_closed: bool,
    /// QoS 0 publishes accepted while disconnected (bounded by the window).
    pub(crate) qos0_backlog: VecDeque<(Message, Done)>,
    pub(crate) incoming: Incoming,
    /// An incoming message the delivery channel had no room for yet.
    pub(crate) pending_delivery: Option<Delivery>,
    pub(crate) subs: Subs,
    pub(crate) failover: Failover,
    dialer: Option<Dialer>,
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
        Task {
            outgoing: Outgoing::new(opts.inflight.max(1)),
            opts,
            shutdown,
            requests,
            deliveries,
            acks_tx,
            acks_rx,
            state,
            qos0_backlog: VecDeque::new(),
            qos2_inflight: 0,
            stashed: None,
            requests_closed: false,
            incoming: Incoming::new(),
            pending_delivery: None,
            subs: Subs::default(),
            failover,
            dialer: None,
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
                Ok((framed, session_present)) => {
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
                    let end = self.serve(framed, &ep, session_present).await;
                    self.incoming.reset_connection();
                    self.subs.disconnected(&mut self.outgoing);
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
                    let retry = self.failover.failed(now_std());
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
            let room = self.can_take() && self.qos0_backlog.len() < self.outgoing.window();
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
                        if !self.take_request(req, None) {
                            return false;
                        }
                    }
                    None => self.requests_closed = true,
                },
                // Tokens of a previous connection: `Incoming` ignores them.
                Some(token) = self.acks_rx.recv() => {
                    let _ = self.incoming.ack(token);
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

    /// Dials, sends CONNECT, waits for CONNACK, all within the connect timeout.
    async fn connect(&mut self, ep: &Endpoint) -> Result<(Framed<BoxStream>, bool), ClientError> {
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
        let mut framed = Framed::new(stream, max, max);
        let protocol = |e: crate::protocol::CodecError| codec_error(ep, e);
        timeout_at(deadline, framed.write_packet(&self.connect_packet()))
            .await
            .map_err(|_| timeout(Stage::SendConnect))?
            .map_err(protocol)?;
        let packet = timeout_at(deadline, framed.read_packet())
            .await
            .map_err(|_| timeout(Stage::Connack))?
            .map_err(protocol)?;
        match packet {
            Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => {
                Ok((framed, ack.session_present))
            }
            Packet::ConnAck(ack) => Err(ClientError::Refused {
                endpoint: ep.url(),
                reason: connack_reason(ack.code).into(),
            }),
            other => Err(ClientError::Protocol {
                endpoint: ep.url(),
                reason: format!("expected CONNACK, got {}", packet_name(&other)),
            }),
        }
    }

    fn connect_packet(&self) -> Packet {
        let o = &self.opts;
        let secs = o.keepalive.as_secs() + u64::from(o.keepalive.subsec_nanos() > 0);
        let mut connect = rumqttc::mqttbytes::v4::Connect::new(o.client_id.clone());
        connect.keep_alive = u16::try_from(secs).unwrap_or(u16::MAX);
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
        Packet::Connect(connect)
    }

    /// Handles one request. `conn` is the live connection, if any (packets
    /// are queued there; the serve loop flushes). Returns false on `Shutdown`.
    pub(crate) fn take_request(&mut self, req: LinkRequest, conn: Option<&mut Conn>) -> bool {
        match req {
            LinkRequest::Publish { message, done } => {
                if let Err(e) = self.check_publish(&message) {
                    let _ = done.send(Err(e));
                    return true;
                }
                let done = Done::Caller(done);
                match conn {
                    Some(conn) => self.publish(message, done, Some(conn)),
                    None if message.qos == QoS::AtMostOnce => {
                        self.qos0_backlog.push_back((message, done));
                    }
                    // Kept in `Outgoing`; `resume` sends it on the next connection.
                    None => self.publish(message, done, None),
                }
            }
            LinkRequest::Subscribe { filters, done } => {
                if let Some((f, _)) = filters.iter().find(|(f, _)| !filter_is_valid(f)) {
                    let _ = done.send(Err(LinkError::Rejected(format!("invalid filter {f:?}"))));
                } else if filters.is_empty() {
                    let _ = done.send(Ok(Vec::new()));
                } else {
                    self.subs.push(SubOp::Subscribe {
                        filters,
                        done: Some(done),
                    });
                    if let Some(conn) = conn {
                        for p in self.subs.take_packets(&mut self.outgoing) {
                            conn.queue(&p);
                        }
                    }
                }
            }
            LinkRequest::Unsubscribe { filters, done } => {
                if filters.is_empty() {
                    let _ = done.send(Ok(()));
                } else {
                    self.subs.push(SubOp::Unsubscribe { filters, done });
                    if let Some(conn) = conn {
                        for p in self.subs.take_packets(&mut self.outgoing) {
                            conn.queue(&p);
                        }
                    }
                }
            }
            LinkRequest::Shutdown => return false,
        }
        true
    }

    /// Rejects what can never be sent: an invalid topic, or a packet over the
    /// maximum size (it would otherwise be retried forever).
    fn check_publish(&self, m: &Message) -> Result<(), LinkError> {
        if !topic_name_is_valid(&m.topic) {
            return Err(LinkError::Rejected(format!(
                "invalid topic name {:?}",
                m.topic
            )));
        }
        let size = PUBLISH_OVERHEAD + m.topic.len() + m.payload.len();
        if size > self.opts.max_packet_size {
            return Err(LinkError::Rejected(format!(
                "PUBLISH of {size} bytes exceeds max_packet_size {}",
                self.opts.max_packet_size
            )));
        }
        Ok(())
    }

    /// Whether a new request may be taken: room in the inflight window, no
    /// QoS 2 publish waiting for its limit, and somebody left to send one.
    pub(crate) fn can_take(&self) -> bool {
        self.outgoing.has_room() && self.stashed.is_none() && !self.requests_closed
    }

    /// Nothing left to deliver to the broker.
    pub(crate) fn is_idle(&self) -> bool {
        self.outgoing.is_empty() && self.stashed.is_none() && self.qos0_backlog.is_empty()
    }

    /// Starts a publish; with a connection the PUBLISH is queued on it, without
    /// one a QoS 1/2 flow waits in `Outgoing` for `resume`. A QoS 2 publish
    /// over the QoS 2 limit is stashed until a QoS 2 flow completes.
    pub(crate) fn publish(&mut self, message: Message, done: Done, conn: Option<&mut Conn>) {
        let exactly_once = message.qos == QoS::ExactlyOnce;
        if exactly_once && self.qos2_inflight >= self.opts.inflight_qos2.max(1) {
            self.stashed = Some((message, done));
            return;
        }
        match self.outgoing.publish(message, Flow { done, exactly_once }) {
            Ok((packet, qos0)) => {
                if exactly_once {
                    self.qos2_inflight += 1;
                }
                if let Some(conn) = conn {
                    conn.queue(&packet);
                    if let Some(flow) = qos0 {
                        conn.written.push(flow.done);
                    }
                } else if let Some(flow) = qos0 {
                    // Only reached for QoS 0 without a connection (not routed
                    // here by `take_request`): nothing was sent.
                    flow.done.complete(Err(LinkError::Closed));
                }
            }
            Err(full) => {
                // The `select!` guard keeps this from happening for callers;
                // an internal publish (birth) may hit it.
                crate::warn_limited!(format!("inflight-full:{}", self.opts.name), broker = %self.opts.name, topic = %full.message.topic, "inflight window full, publish refused");
                full.token
                    .done
                    .complete(Err(LinkError::Rejected("inflight window full".into())));
            }
        }
    }

    /// A QoS 1/2 flow completed (PUBACK/PUBCOMP): resolve it, and release a
    /// stashed QoS 2 publish if the limit allows now.
    pub(crate) fn flow_done(&mut self, flow: Flow, conn: &mut Conn) {
        if flow.exactly_once {
            self.qos2_inflight = self.qos2_inflight.saturating_sub(1);
        }
        flow.done.complete(Ok(()));
        if self.qos2_inflight < self.opts.inflight_qos2.max(1)
            && let Some((message, done)) = self.stashed.take()
        {
            self.publish(message, done, Some(conn));
        }
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
        for (_, flow) in self.outgoing.drain() {
            flow.done.complete(Err(LinkError::Closed));
        }
        self.qos2_inflight = 0;
        if let Some((_, done)) = self.stashed.take() {
            done.complete(Err(LinkError::Closed));
        }
        for (_, done) in self.qos0_backlog.drain(..) {
            done.complete(Err(LinkError::Closed));
        }
        self.subs.close();
        self.state.send_replace(LinkState::Closed);
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
