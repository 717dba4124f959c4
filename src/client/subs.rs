//! Subscription bookkeeping of one client session (pure): the filters we
//! want, SUBSCRIBE/UNSUBSCRIBE requests not yet sent or not yet acknowledged,
//! and restoring every subscription when the broker has no session for us.

use std::collections::{BTreeMap, VecDeque};

use rumqttc::mqttbytes::v4::{
    Packet, SubAck, Subscribe, SubscribeFilter, SubscribeReasonCode, Unsubscribe,
};
use tokio::sync::oneshot;

use crate::link::LinkError;
use crate::protocol::{Outgoing, QoS, SubscribeOptions};

/// Filters per SUBSCRIBE when restoring a session (keeps packets small).
const RESTORE_CHUNK: usize = 50;

/// Completion of a SUBSCRIBE request.
pub type SubDone = oneshot::Sender<Result<Vec<Option<QoS>>, LinkError>>;
/// Completion of an UNSUBSCRIBE request.
pub type UnsubDone = oneshot::Sender<Result<(), LinkError>>;

/// One SUBSCRIBE or UNSUBSCRIBE to send.
#[derive(Debug)]
pub enum SubOp {
    /// SUBSCRIBE; `done` is `None` for an internal restore.
    Subscribe {
        /// Filters with their requested QoS and options.
        filters: Vec<(String, SubscribeOptions)>,
        /// The caller's completion.
        done: Option<SubDone>,
    },
    /// UNSUBSCRIBE.
    Unsubscribe {
        /// Filters to remove.
        filters: Vec<String>,
        /// The caller's completion.
        done: UnsubDone,
    },
}

impl SubOp {
    fn packet(&self, pkid: u16) -> Packet {
        match self {
            SubOp::Subscribe { filters, .. } => Packet::Subscribe(Subscribe {
                pkid,
                filters: filters
                    .iter()
                    .map(|(f, o)| SubscribeFilter::new(f.clone(), o.qos.into()))
                    .collect(),
            }),
            SubOp::Unsubscribe { filters, .. } => Packet::Unsubscribe(Unsubscribe {
                pkid,
                topics: filters.clone(),
            }),
        }
    }

    fn is_restore(&self) -> bool {
        matches!(self, SubOp::Subscribe { done: None, .. })
    }

    fn fail(self, err: LinkError) {
        match self {
            SubOp::Subscribe { done: Some(d), .. } => {
                let _ = d.send(Err(err));
            }
            SubOp::Subscribe { done: None, .. } => {}
            SubOp::Unsubscribe { done, .. } => {
                let _ = done.send(Err(err));
            }
        }
    }
}

/// Subscription state that survives reconnects.
#[derive(Debug, Default)]
pub struct Subs {
    /// Filters the broker granted (restored whenever it has no session).
    active: Vec<(String, SubscribeOptions)>,
    /// Requests not sent on the current connection yet, in order.
    queued: VecDeque<SubOp>,
    /// Requests sent and waiting for SUBACK/UNSUBACK, by packet id.
    inflight: BTreeMap<u16, (u64, SubOp)>,
    /// Order of sending, so requests go back to the queue in order.
    seq: u64,
}

impl Subs {
    /// Filters currently subscribed (as granted).
    #[cfg(test)]
    pub fn active(&self) -> &[(String, SubscribeOptions)] {
        &self.active
    }

    /// Queues a request; it is sent by [`Subs::take_packets`] when connected.
    pub fn push(&mut self, op: SubOp) {
        if let SubOp::Unsubscribe { filters, .. } = &op {
            // Forget at once, so a session restore does not bring them back.
            self.active.retain(|(f, _)| !filters.contains(f));
        }
        self.queued.push_back(op);
    }

    /// A connection came up. With no session on the broker, every active
    /// subscription is re-sent first. Returns the packets to send.
    pub fn connected<T>(&mut self, session_present: bool, ids: &mut Outgoing<T>) -> Vec<Packet> {
        if !session_present && !self.active.is_empty() {
            let restore: Vec<_> = self
                .active
                .chunks(RESTORE_CHUNK)
                .map(|c| SubOp::Subscribe {
                    filters: c.to_vec(),
                    done: None,
                })
                .collect();
            for op in restore.into_iter().rev() {
                self.queued.push_front(op);
            }
        }
        self.take_packets(ids)
    }

    /// Packets for the queued requests (while packet ids are available).
    pub fn take_packets<T>(&mut self, ids: &mut Outgoing<T>) -> Vec<Packet> {
        let mut out = Vec::new();
        while !self.queued.is_empty() {
            let Some(pkid) = ids.reserve_id() else { break };
            let Some(op) = self.queued.pop_front() else {
                break;
            };
            out.push(op.packet(pkid));
            self.seq += 1;
            self.inflight.insert(pkid, (self.seq, op));
        }
        out
    }

    /// The options of each filter of the SUBSCRIBE in flight as `pkid`
    /// (empty for an UNSUBSCRIBE or an unknown id), for an MQTT 5 SUBSCRIBE.
    pub fn options(&self, pkid: u16) -> Vec<SubscribeOptions> {
        match self.inflight.get(&pkid) {
            Some((_, SubOp::Subscribe { filters, .. })) => {
                filters.iter().map(|(_, o)| *o).collect()
            }
            _ => Vec::new(),
        }
    }

    /// SUBACK received. Unknown ids are logged by the caller (returns false).
    pub fn on_suback<T>(&mut self, ack: SubAck, ids: &mut Outgoing<T>) -> bool {
        let Some((_, op)) = self.inflight.remove(&ack.pkid) else {
            return false;
        };
        ids.release_id(ack.pkid);
        let SubOp::Subscribe { filters, done } = op else {
            // A SUBACK for an UNSUBSCRIBE id: complete it anyway.
            op.fail(LinkError::Refused("SUBACK for an UNSUBSCRIBE".into()));
            return true;
        };
        let mut granted = Vec::with_capacity(filters.len());
        for (i, (filter, qos)) in filters.into_iter().enumerate() {
            match ack.return_codes.get(i) {
                Some(SubscribeReasonCode::Success(q)) => {
                    granted.push(Some(QoS::from(*q)));
                    self.active.retain(|(f, _)| *f != filter);
                    self.active.push((filter, qos));
                }
                _ => {
                    if done.is_none() {
                        crate::warn_limited!("restored-subscription-refused", filter = %filter, "broker refused a restored subscription");
                        self.active.retain(|(f, _)| *f != filter);
                    }
                    granted.push(None);
                }
            }
        }
        if let Some(done) = done {
            let _ = done.send(Ok(granted));
        }
        true
    }

    /// UNSUBACK received; false for an unknown id.
    pub fn on_unsuback<T>(&mut self, pkid: u16, ids: &mut Outgoing<T>) -> bool {
        let Some((_, op)) = self.inflight.remove(&pkid) else {
            return false;
        };
        ids.release_id(pkid);
        match op {
            SubOp::Unsubscribe { done, .. } => {
                let _ = done.send(Ok(()));
            }
            other => other.fail(LinkError::Refused("UNSUBACK for a SUBSCRIBE".into())),
        }
        true
    }

    /// The connection was lost: unacknowledged requests go back to the front
    /// of the queue, in their original order (restores are dropped; they are
    /// rebuilt if the next connection has no session).
    pub fn disconnected<T>(&mut self, ids: &mut Outgoing<T>) {
        let mut back: Vec<_> = std::mem::take(&mut self.inflight).into_iter().collect();
        back.sort_by_key(|(_, (seq, _))| *seq);
        for (pkid, (_, op)) in back.into_iter().rev() {
            ids.release_id(pkid);
            if !op.is_restore() {
                self.queued.push_front(op);
            }
        }
    }

    /// The link is closing: every pending request fails with `Closed`.
    pub fn close(&mut self) {
        for (_, (_, op)) in std::mem::take(&mut self.inflight) {
            op.fail(LinkError::Closed);
        }
        for op in self.queued.drain(..) {
            op.fail(LinkError::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::QoS as W;

    type SubRx = oneshot::Receiver<Result<Vec<Option<QoS>>, LinkError>>;

    fn sub(filters: &[(&str, QoS)]) -> (SubOp, SubRx) {
        let (tx, rx) = oneshot::channel();
        (
            SubOp::Subscribe {
                filters: filters
                    .iter()
                    .map(|(f, q)| (f.to_string(), SubscribeOptions::qos(*q)))
                    .collect(),
                done: Some(tx),
            },
            rx,
        )
    }

    fn pkid(p: &Packet) -> u16 {
        match p {
            Packet::Subscribe(s) => s.pkid,
            Packet::Unsubscribe(u) => u.pkid,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn subscribe_then_restore_on_lost_session() {
        let mut ids: Outgoing<()> = Outgoing::new(10);
        let mut s = Subs::default();
        let (op, mut rx) = sub(&[("a/#", QoS::AtLeastOnce), ("b", QoS::ExactlyOnce)]);
        s.push(op);
        let p = s.connected(true, &mut ids);
        assert_eq!(p.len(), 1);
        let id = pkid(&p[0]);
        let ack = SubAck::new(
            id,
            vec![
                SubscribeReasonCode::Success(W::AtLeastOnce),
                SubscribeReasonCode::Failure,
            ],
        );
        assert!(s.on_suback(ack, &mut ids));
        assert_eq!(
            rx.try_recv().ok(),
            Some(Ok(vec![Some(QoS::AtLeastOnce), None]))
        );
        assert_eq!(
            s.active(),
            &[("a/#".to_string(), SubscribeOptions::qos(QoS::AtLeastOnce))]
        );
        // Resumed session: nothing to resend.
        s.disconnected(&mut ids);
        assert!(s.connected(true, &mut ids).is_empty());
        // Lost session: the active filter is restored.
        s.disconnected(&mut ids);
        let p = s.connected(false, &mut ids);
        match p.as_slice() {
            [Packet::Subscribe(sp)] => {
                assert_eq!(
                    sp.filters,
                    vec![SubscribeFilter::new("a/#".into(), W::AtLeastOnce)]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unacked_requests_are_resent_in_order_after_reconnect() {
        let mut ids: Outgoing<()> = Outgoing::new(10);
        let mut s = Subs::default();
        let (a, _ra) = sub(&[("a", QoS::AtMostOnce)]);
        let (b, _rb) = sub(&[("b", QoS::AtMostOnce)]);
        s.push(a);
        s.push(b);
        assert_eq!(s.connected(true, &mut ids).len(), 2);
        s.disconnected(&mut ids);
        let p = s.connected(true, &mut ids);
        let topics: Vec<_> = p
            .iter()
            .map(|p| match p {
                Packet::Subscribe(s) => s.filters[0].path.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(topics, vec!["a", "b"]);
    }

    #[test]
    fn unsubscribe_forgets_filter_and_close_fails_pending() {
        let mut ids: Outgoing<()> = Outgoing::new(10);
        let mut s = Subs::default();
        let (a, _ra) = sub(&[("a", QoS::AtMostOnce)]);
        s.push(a);
        let p = s.connected(true, &mut ids);
        s.on_suback(
            SubAck::new(
                pkid(&p[0]),
                vec![SubscribeReasonCode::Success(W::AtMostOnce)],
            ),
            &mut ids,
        );
        let (tx, mut rx) = oneshot::channel();
        s.push(SubOp::Unsubscribe {
            filters: vec!["a".into()],
            done: tx,
        });
        assert!(s.active().is_empty());
        let (b, mut rb) = sub(&[("b", QoS::AtMostOnce)]);
        s.push(b);
        let p = s.take_packets(&mut ids);
        assert!(s.on_unsuback(pkid(&p[0]), &mut ids));
        assert_eq!(rx.try_recv().ok(), Some(Ok(())));
        s.close();
        assert_eq!(rb.try_recv().ok(), Some(Err(LinkError::Closed)));
        // Unknown ids are reported, not panicked on.
        assert!(!s.on_unsuback(999, &mut ids));
    }
}
