//! MQTT 5 flow control (spec 4.9): a Receive Maximum caps the QoS 1 and
//! QoS 2 PUBLISHes in flight per direction. [`SendQuota`] is the peer's
//! cap on what we send; [`ReceiveQuota`] enforces the cap we announced on
//! what the peer sends. Both track packet ids, so a DUP resend of an id
//! already in flight is not counted twice and an ack for an unknown id
//! cannot underflow the count.

use std::collections::HashSet;

use super::reason::ReasonCode;

/// The default Receive Maximum when the property is absent.
pub const DEFAULT_RECEIVE_MAXIMUM: u16 = u16::MAX;

/// In-flight QoS>0 PUBLISHes we sent, against the peer's Receive Maximum
/// ([MQTT-3.3.4-7] for a client, [MQTT-3.3.4-9] for a server).
#[derive(Debug, Clone)]
pub struct SendQuota {
    max: u16,
    in_flight: HashSet<u16>,
}

impl SendQuota {
    /// The peer's Receive Maximum (`None`: absent, 65,535).
    pub fn new(receive_maximum: Option<u16>) -> Self {
        SendQuota {
            max: receive_maximum.unwrap_or(DEFAULT_RECEIVE_MAXIMUM),
            in_flight: HashSet::new(),
        }
    }

    /// Whether another QoS>0 PUBLISH may be sent now.
    pub fn available(&self) -> bool {
        self.in_flight.len() < usize::from(self.max)
    }

    /// Takes a slot for a QoS>0 PUBLISH with id `pkid`; false when the
    /// quota is used up (hold the message until an ack frees a slot).
    /// Resending an id already in flight takes nothing.
    pub fn try_send(&mut self, pkid: u16) -> bool {
        if self.in_flight.contains(&pkid) {
            return true;
        }
        if !self.available() {
            return false;
        }
        self.in_flight.insert(pkid)
    }

    /// Frees the slot of `pkid`: on PUBACK, on PUBCOMP, and on a PUBREC
    /// with a failure reason code (0x80 and above). A successful PUBREC
    /// keeps the slot until the PUBCOMP.
    pub fn acked(&mut self, pkid: u16) {
        self.in_flight.remove(&pkid);
    }

    /// QoS>0 PUBLISHes in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// The peer sent more QoS>0 PUBLISHes than the Receive Maximum we
/// announced (breaking [MQTT-3.3.4-7]/[MQTT-3.3.4-9]): DISCONNECT with
/// 0x93 (spec 3.3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("receive maximum of {0} exceeded")]
pub struct ReceiveMaximumExceeded(pub u16);

impl ReceiveMaximumExceeded {
    /// 0x93.
    pub fn reason_code(&self) -> ReasonCode {
        ReasonCode::ReceiveMaximumExceeded
    }
}

/// In-flight QoS>0 PUBLISHes the peer sent us, against our Receive Maximum.
#[derive(Debug, Clone)]
pub struct ReceiveQuota {
    max: u16,
    in_flight: HashSet<u16>,
}

impl ReceiveQuota {
    /// The Receive Maximum we announced (1..=65,535; 0 is not a valid value
    /// and is treated as 1).
    pub fn new(receive_maximum: u16) -> Self {
        ReceiveQuota {
            max: receive_maximum.max(1),
            in_flight: HashSet::new(),
        }
    }

    /// A QoS>0 PUBLISH with `pkid` arrived (a resend of an id in flight is
    /// the same message).
    pub fn received(&mut self, pkid: u16) -> Result<(), ReceiveMaximumExceeded> {
        if self.in_flight.contains(&pkid) {
            return Ok(());
        }
        if self.in_flight.len() >= usize::from(self.max) {
            return Err(ReceiveMaximumExceeded(self.max));
        }
        self.in_flight.insert(pkid);
        Ok(())
    }

    /// We sent the PUBACK (QoS 1), the PUBCOMP (QoS 2), or a PUBREC with a
    /// failure code for `pkid`.
    pub fn completed(&mut self, pkid: u16) {
        self.in_flight.remove(&pkid);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn mqtt_3_3_4_7_and_9_send_quota_stops_at_the_peers_receive_maximum() {
        let mut q = SendQuota::new(Some(2));
        assert!(q.try_send(1) && q.try_send(2));
        assert!(!q.try_send(3));
        assert!(q.try_send(2), "a resend of an id in flight is allowed");
        q.acked(1);
        assert!(q.try_send(3));
        q.acked(99);
        assert_eq!(q.in_flight(), 2);
        assert_eq!(SendQuota::new(None).max, 65_535);
    }

    #[test]
    fn receiving_over_our_receive_maximum_is_0x93() {
        let mut q = ReceiveQuota::new(1);
        q.received(5).unwrap();
        q.received(5).unwrap();
        let err = q.received(6).unwrap_err();
        assert_eq!(err.reason_code(), ReasonCode::ReceiveMaximumExceeded);
        q.completed(5);
        q.received(6).unwrap();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Send(u16),
        Ack(u16),
    }

    proptest! {
        /// Against a model: the quota never exceeds the maximum, and it
        /// refuses exactly when the model is full of other ids.
        #[test]
        fn send_quota_matches_a_model(
            max in 1u16..6,
            ops in proptest::collection::vec(
                prop_oneof![(0u16..10).prop_map(Op::Send), (0u16..10).prop_map(Op::Ack)],
                0..100,
            ),
        ) {
            let mut q = SendQuota::new(Some(max));
            let mut r = ReceiveQuota::new(max);
            let mut model: Vec<u16> = Vec::new();
            for op in ops {
                match op {
                    Op::Send(id) => {
                        let ok = model.contains(&id) || model.len() < usize::from(max);
                        prop_assert_eq!(q.try_send(id), ok);
                        prop_assert_eq!(r.received(id).is_ok(), ok);
                        if ok && !model.contains(&id) {
                            model.push(id);
                        }
                    }
                    Op::Ack(id) => {
                        q.acked(id);
                        r.completed(id);
                        model.retain(|&m| m != id);
                    }
                }
                prop_assert!(q.in_flight() <= usize::from(max));
                prop_assert_eq!(q.in_flight(), model.len());
            }
        }
    }
}
