//! In-process links: a pipe attaches to the broker as a session like any
//! other (same router, same `Outgoing` flows, same queue bounds), without TCP.
//! A QoS 1/2 delivery stays in the session's inflight window until the pipe
//! acks it; a publish resolves once the router has routed the message.
//!
//! Link sessions live in their own namespace in the router (no network
//! client can reach them). A link whose attachment is closed for any reason
//! but the end of the broker, its pipe, or a takeover by another link
//! re-attaches by itself, like a client reconnects: same [`Link`], same
//! delivery stream, its subscriptions restored when the session was lost.
//! Its state shows `Disconnected` meanwhile.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::connection::next_conn_id;
use super::outlet::{Out, OutletRx, outlet};
use super::router::{Ack, ConnectRefused, Event, Reply, RouterHandle};
use super::session::{ConnId, Origin, Subscription};
use crate::link::{AckHandle, AckToken, Delivery, Link, LinkError, LinkRequest, LinkState};
use crate::protocol::reason::ReasonCode;
use crate::protocol::v4::Packet;
use crate::protocol::{QoS, SubscribeOptions, message_from_publish};
use crate::topic;

/// Pending pipe requests per link (backpressure on `Link::publish`).
const REQUESTS: usize = 64;
/// Deliveries buffered towards the pipe.
const DELIVERIES: usize = 64;
/// The endpoint name local links report in their state.
const ENDPOINT: &str = "local";
/// First wait before retrying a refused re-attach (the first re-attach
/// after a close is immediate); doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest wait between re-attach attempts.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// An attachment that lasted this long resets the retry wait: the next
/// close re-attaches at once. A shorter one waits first, so a link that is
/// closed again and again does not spin.
const STABLE_AFTER: Duration = Duration::from_secs(1);

/// Opens a link; see [`super::Broker::link`].
pub(crate) fn open(
    name: &str,
    router: &RouterHandle,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    client_id: &str,
    clean: bool,
) -> (Link, mpsc::Receiver<Delivery>) {
    let (req_tx, req_rx) = mpsc::channel(REQUESTS);
    let (state_tx, state_rx) = watch::channel(LinkState::Connecting {
        endpoint: ENDPOINT.into(),
        attempt: 1,
    });
    let (del_tx, del_rx) = mpsc::channel(DELIVERIES);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let task = LocalLink {
        broker: name.to_owned(),
        router: router.clone(),
        client_id: client_id.to_string(),
        clean,
        state: state_tx,
        deliveries: del_tx,
        requests: req_rx,
        ack_tx,
        ack_rx,
        subscriptions: BTreeMap::new(),
        shutdown: shutdown.clone(),
    };
    tracker.spawn(task.run());
    (Link::new(name, req_tx, state_rx), del_rx)
}

struct LocalLink {
    broker: String,
    router: RouterHandle,
    client_id: String,
    clean: bool,
    state: watch::Sender<LinkState>,
    deliveries: mpsc::Sender<Delivery>,
    requests: mpsc::Receiver<LinkRequest>,
    ack_tx: mpsc::UnboundedSender<AckToken>,
    ack_rx: mpsc::UnboundedReceiver<AckToken>,
    /// The link's subscriptions (valid filters) with their options,
    /// restored on a re-attach that finds no session.
    subscriptions: BTreeMap<String, SubscribeOptions>,
    /// The broker's shutdown: no more re-attaching.
    shutdown: CancellationToken,
}

/// Result of one attach.
enum Attach {
    /// Attached as connection `conn`.
    Up {
        conn: ConnId,
        out_rx: OutletRx,
        session_present: bool,
    },
    /// Refused for now (held down); retry later.
    Refused,
    /// The router is gone.
    Gone,
}

/// How one attachment ended.
enum End {
    /// For good: shutdown request, pipe gone, router gone, or another link
    /// took the session over.
    Final,
    /// Closed by the router for another reason: re-attach.
    Lost,
}

/// Whether a batch from the outlet ends the attachment, and how.
fn closing(batch: &[Out]) -> Option<End> {
    batch.iter().find_map(|o| match o {
        Out::Close => Some(End::Lost),
        Out::Replaced => Some(End::Final),
        Out::Packet(_) | Out::Publish(_) | Out::V5(_) => None,
    })
}

impl LocalLink {
    async fn run(mut self) {
        let mut retry = RETRY_MIN;
        let mut reattach = false;
        loop {
            let wait = match self.attach().await {
                Attach::Up {
                    conn,
                    out_rx,
                    session_present,
                } => {
                    if reattach {
                        info!(broker = %self.broker, client_id = %self.client_id, session_present, "link re-attached");
                    }
                    self.state.send_replace(LinkState::Connected {
                        endpoint: ENDPOINT.into(),
                        session_present,
                    });
                    let since = tokio::time::Instant::now();
                    match self.serve(conn, out_rx).await {
                        End::Final => break,
                        End::Lost => {
                            if let Some(suppressed) = crate::metrics::ratelimit::allow(&format!(
                                "link-closed:{}:{}",
                                self.broker, self.client_id
                            )) {
                                warn!(broker = %self.broker, client_id = %self.client_id, suppressed, "link closed by the broker; re-attaching");
                            }
                            self.state.send_replace(LinkState::Disconnected {
                                reason: "closed by the broker".into(),
                            });
                            reattach = true;
                            if since.elapsed() >= STABLE_AFTER {
                                retry = RETRY_MIN;
                                false
                            } else {
                                true
                            }
                        }
                    }
                }
                Attach::Refused => {
                    debug!(broker = %self.broker, client_id = %self.client_id, ?retry, "link re-attach refused; retrying");
                    self.state.send_replace(LinkState::Disconnected {
                        reason: "re-attach refused".into(),
                    });
                    reattach = true;
                    true
                }
                Attach::Gone => break,
            };
            if wait {
                tokio::select! {
                    _ = self.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
        debug!(client_id = %self.client_id, "local link closed");
        self.state.send_replace(LinkState::Closed);
    }

    /// Attaches to the link's session; restores the subscriptions when the
    /// router had no session any more.
    async fn attach(&mut self) -> Attach {
        if self.shutdown.is_cancelled() {
            return Attach::Gone;
        }
        let conn = next_conn_id();
        let (out, out_rx) = outlet();
        let (reply, rx) = oneshot::channel();
        let connect = Event::Connect {
            conn,
            client_id: self.client_id.clone(),
            clean: self.clean,
            outlet: out,
            origin: Origin::Local,
            v5: None,
            reply,
        };
        if !self.router.send(connect).await {
            return Attach::Gone;
        }
        let session_present = match rx.await {
            Ok(Ok(present)) => present,
            Ok(Err(ConnectRefused::LinkHeld | ConnectRefused::LinkClientId)) => {
                return Attach::Refused;
            }
            Err(_) => return Attach::Gone,
        };
        if !session_present && !self.subscriptions.is_empty() {
            let (done, granted) = oneshot::channel();
            let filters = self
                .subscriptions
                .iter()
                .map(|(f, o)| (f.clone(), Ok(Subscription::from_options(*o))))
                .collect();
            let restore = Event::Subscribe {
                conn,
                filters,
                reply: Reply::Local(done),
            };
            if !self.router.send(restore).await || granted.await.is_err() {
                return Attach::Gone;
            }
            debug!(broker = %self.broker, client_id = %self.client_id, filters = self.subscriptions.len(), "link subscriptions restored");
        }
        Attach::Up {
            conn,
            out_rx,
            session_present,
        }
    }

    /// Serves one attachment until it ends.
    async fn serve(&mut self, conn: ConnId, mut out_rx: OutletRx) -> End {
        let stop = out_rx.stop_token();
        let mut ready: VecDeque<Out> = VecDeque::new();
        let mut batch = Vec::new();
        // Arrival sequence of this attachment's deliveries (`AckToken::id`).
        let mut next_id: u64 = 0;
        let end = loop {
            tokio::select! {
                // Always drain the outlet (its size is bounded by the router's
                // window and QoS 0 budget), so a takeover's Close is seen even
                // while the pipe is not taking deliveries.
                n = out_rx.recv_many(&mut batch, 64) => {
                    if n == 0 {
                        break End::Final;
                    }
                    if let Some(end) = closing(&batch) {
                        break end;
                    }
                    ready.extend(batch.drain(..));
                }
                // An abort (never expected for a link, which always drains
                // its outlet) ends the attachment like a Close.
                _ = stop.cancelled() => break End::Lost,
                // Hand deliveries to the pipe as it makes room, without blocking
                // the other branches (the pipe may be waiting on a publish).
                permit = self.deliveries.reserve(), if !ready.is_empty() => {
                    let Ok(permit) = permit else {
                        disconnect(&self.router, conn).await;
                        break End::Final;
                    };
                    let mut closed = None;
                    while let Some(item) = ready.pop_front() {
                        match item {
                            Out::Close => { closed = Some(End::Lost); break; }
                            Out::Replaced => { closed = Some(End::Final); break; }
                            // Never sent to a link.
                            Out::V5(_) => out_rx.written(1),
                            item @ (Out::Packet(_) | Out::Publish(_)) => {
                                out_rx.written(1);
                                let (message, pkid) = match item {
                                    // As the router's session handed it over
                                    // (resends after a re-attach too, with DUP).
                                    Out::Publish(b) => *b,
                                    // Never built for a link (it would lose the
                                    // MQTT 5 properties); handled all the same.
                                    Out::Packet(packet) => match *packet {
                                        Packet::Publish(p) => {
                                            let pkid = p.pkid;
                                            (message_from_publish(p), pkid)
                                        }
                                        // PUBREL of a QoS 2 flow: nothing to hand to the pipe.
                                        _ => continue,
                                    },
                                    Out::Close | Out::Replaced | Out::V5(_) => continue,
                                };
                                let ack = if message.qos == QoS::AtMostOnce {
                                    AckHandle::none()
                                } else {
                                    let token = AckToken { generation: conn, id: next_id, pkid, qos: message.qos };
                                    next_id += 1;
                                    AckHandle::new(token, self.ack_tx.clone())
                                };
                                permit.send(Delivery { message, ack });
                                break;
                            }
                        }
                    }
                    if let Some(end) = closed {
                        break end;
                    }
                }
                // Cancel safe: `recv` loses nothing when another branch wins.
                Some(token) = self.ack_rx.recv() => {
                    // Acks of an earlier attachment are stale: the session
                    // redelivers those messages on this one.
                    if token.generation == conn && !ack(&self.router, conn, token).await {
                        break End::Final;
                    }
                }
                req = self.requests.recv() => {
                    match req {
                        None | Some(LinkRequest::Shutdown) => {
                            disconnect(&self.router, conn).await;
                            break End::Final;
                        }
                        Some(req) => if !request(&self.router, &mut self.subscriptions, conn, req).await { break End::Final },
                    }
                }
            }
        };
        if matches!(end, End::Lost) && self.shutdown.is_cancelled() {
            return End::Final;
        }
        end
    }
}

/// Ends an attachment gracefully (no will, session kept if persistent).
async fn disconnect(router: &RouterHandle, conn: ConnId) {
    router
        .send(Event::Disconnected {
            conn,
            will: None,
            session_expiry: None,
        })
        .await;
}

/// Completes a delivery in the session: PUBACK, or PUBREC then PUBCOMP.
async fn ack(router: &RouterHandle, conn: u64, token: AckToken) -> bool {
    let pkid = token.pkid;
    let kinds: &[Ack] = if token.qos == QoS::ExactlyOnce {
        &[Ack::PubRec, Ack::PubComp]
    } else {
        &[Ack::PubAck]
    };
    for &kind in kinds {
        if !router.send(Event::Ack { conn, kind, pkid }).await {
            return false;
        }
    }
    true
}

/// Hands one pipe request to the router; records (un)subscriptions.
async fn request(
    router: &RouterHandle,
    subscriptions: &mut BTreeMap<String, SubscribeOptions>,
    conn: u64,
    req: LinkRequest,
) -> bool {
    let event = match req {
        LinkRequest::Publish { message, done } => {
            if let Err(e) = topic::validate_topic_name(&message.topic) {
                let _ = done.send(Err(LinkError::Rejected(e.to_string())));
                return true;
            }
            Event::LocalPublish {
                conn,
                message,
                done,
            }
        }
        LinkRequest::Subscribe { filters, done } => {
            // The options go with the filter (no local, retain as
            // published, retain handling), as a v5 client's would.
            let filters: Vec<(String, Result<Subscription, ReasonCode>)> = filters
                .into_iter()
                .map(|(f, o)| {
                    let checked = match topic::validate_filter(&f) {
                        Ok(_) => Ok(Subscription::from_options(o)),
                        Err(_) => Err(ReasonCode::TopicFilterInvalid),
                    };
                    (f, checked)
                })
                .collect();
            // The router grants every valid filter to a link.
            for (f, sub) in &filters {
                if let Ok(sub) = sub {
                    subscriptions.insert(f.clone(), sub.options);
                }
            }
            Event::Subscribe {
                conn,
                filters,
                reply: Reply::Local(done),
            }
        }
        LinkRequest::Unsubscribe { filters, done } => {
            for f in &filters {
                subscriptions.remove(f);
            }
            Event::Unsubscribe {
                conn,
                filters,
                reply: Reply::Local(done),
            }
        }
        LinkRequest::Shutdown => return false,
    };
    router.send(event).await
}
