//! In-process links: a pipe attaches to the broker as a session like any
//! other (same router, same `Outgoing` flows, same queue bounds), without TCP.
//! A QoS 1/2 delivery stays in the session's inflight window until the pipe
//! acks it; a publish resolves once the router has routed the message.

use std::collections::VecDeque;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::connection::next_conn_id;
use super::outlet::{Out, outlet};
use super::router::{Ack, Event, Reply, RouterHandle};
use super::session::Origin;
use crate::link::{AckHandle, AckToken, Delivery, Link, LinkError, LinkRequest, LinkState};
use crate::protocol::v4::Packet;
use crate::protocol::{QoS, message_from_publish};
use crate::topic;

/// Pending pipe requests per link (backpressure on `Link::publish`).
const REQUESTS: usize = 64;
/// Deliveries buffered towards the pipe.
const DELIVERIES: usize = 64;
/// The endpoint name local links report in their state.
const ENDPOINT: &str = "local";

/// Opens a link; see [`super::Broker::link`].
pub(crate) fn open(
    name: &str,
    router: &RouterHandle,
    tracker: &TaskTracker,
    client_id: &str,
    clean: bool,
) -> (Link, mpsc::Receiver<Delivery>) {
    let (req_tx, req_rx) = mpsc::channel(REQUESTS);
    let (state_tx, state_rx) = watch::channel(LinkState::Connecting {
        endpoint: ENDPOINT.into(),
        attempt: 1,
    });
    let (del_tx, del_rx) = mpsc::channel(DELIVERIES);
    let task = LocalLink {
        router: router.clone(),
        client_id: client_id.to_string(),
        state: state_tx,
        deliveries: del_tx,
    };
    tracker.spawn(task.run(req_rx, clean));
    (Link::new(name, req_tx, state_rx), del_rx)
}

struct LocalLink {
    router: RouterHandle,
    client_id: String,
    state: watch::Sender<LinkState>,
    deliveries: mpsc::Sender<Delivery>,
}

/// Packs (QoS, packet id) into an ack token id.
fn token_id(qos: QoS, pkid: u16) -> u64 {
    (u64::from(qos.as_u8()) << 16) | u64::from(pkid)
}

impl LocalLink {
    async fn run(self, mut requests: mpsc::Receiver<LinkRequest>, clean: bool) {
        let conn = next_conn_id();
        let (out, mut out_rx) = outlet();
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<AckToken>();
        let (reply, rx) = oneshot::channel();
        let connect = Event::Connect {
            conn,
            client_id: self.client_id.clone(),
            clean,
            outlet: out,
            origin: Origin::Local,
            reply,
        };
        if !self.router.send(connect).await {
            self.state.send_replace(LinkState::Closed);
            return;
        }
        let Ok(session_present) = rx.await else {
            self.state.send_replace(LinkState::Closed);
            return;
        };
        self.state.send_replace(LinkState::Connected {
            endpoint: ENDPOINT.into(),
            session_present,
        });
        let mut ready: VecDeque<Out> = VecDeque::new();
        let mut batch = Vec::new();
        let graceful = loop {
            tokio::select! {
                // Always drain the outlet (its size is bounded by the router's
                // window and QoS 0 budget), so a takeover's Close is seen even
                // while the pipe is not taking deliveries.
                n = out_rx.recv_many(&mut batch, 64) => {
                    if n == 0 || batch.iter().any(|o| matches!(o, Out::Close)) {
                        break false;
                    }
                    ready.extend(batch.drain(..));
                }
                // Hand deliveries to the pipe as it makes room, without blocking
                // the other branches (the pipe may be waiting on a publish).
                permit = self.deliveries.reserve(), if !ready.is_empty() => {
                    let Ok(permit) = permit else { break true };
                    let mut closed = false;
                    while let Some(item) = ready.pop_front() {
                        match item {
                            Out::Close => { closed = true; break; }
                            Out::Packet(packet) => {
                                out_rx.written(1);
                                // PUBREL of a QoS 2 flow: nothing to hand to the pipe.
                                let Packet::Publish(p) = *packet else { continue };
                                let pkid = p.pkid;
                                let message = message_from_publish(p);
                                let ack = if message.qos == QoS::AtMostOnce {
                                    AckHandle::none()
                                } else {
                                    let id = token_id(message.qos, pkid);
                                    AckHandle::new(AckToken { generation: conn, id }, ack_tx.clone())
                                };
                                permit.send(Delivery { message, ack });
                                break;
                            }
                        }
                    }
                    if closed {
                        break false;
                    }
                }
                Some(token) = ack_rx.recv() => {
                    if token.generation == conn && !self.ack(conn, token).await {
                        break false;
                    }
                }
                req = requests.recv() => {
                    match req {
                        None | Some(LinkRequest::Shutdown) => break true,
                        Some(req) => if !self.request(conn, req).await { break false },
                    }
                }
            }
        };
        if graceful {
            self.router
                .send(Event::Disconnected { conn, will: None })
                .await;
        }
        debug!(client_id = %self.client_id, "local link closed");
        self.state.send_replace(LinkState::Closed);
    }

    /// Completes a delivery in the session: PUBACK, or PUBREC then PUBCOMP.
    async fn ack(&self, conn: u64, token: AckToken) -> bool {
        let pkid = (token.id & 0xffff) as u16;
        let kinds: &[Ack] = if token.id >> 16 == u64::from(QoS::ExactlyOnce.as_u8()) {
            &[Ack::PubRec, Ack::PubComp]
        } else {
            &[Ack::PubAck]
        };
        for &kind in kinds {
            if !self.router.send(Event::Ack { conn, kind, pkid }).await {
                return false;
            }
        }
        true
    }

    async fn request(&self, conn: u64, req: LinkRequest) -> bool {
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
            LinkRequest::Subscribe { filters, done } => Event::Subscribe {
                conn,
                filters: filters
                    .into_iter()
                    .map(|(f, q)| {
                        let ok = topic::validate_filter(&f).is_ok();
                        (f, ok.then_some(q))
                    })
                    .collect(),
                reply: Reply::Local(done),
            },
            LinkRequest::Unsubscribe { filters, done } => Event::Unsubscribe {
                conn,
                filters,
                reply: Reply::Local(done),
            },
            LinkRequest::Shutdown => return false,
        };
        self.router.send(event).await
    }
}
