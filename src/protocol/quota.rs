//! MQTT 5 flow control (spec 4.9): a Receive Maximum caps the QoS 1 and
//! QoS 2 PUBLISHes in flight per direction. [`ReceiveQuota`] enforces the
//! cap we announced on what the peer sends (the peer's cap on what we send
//! is the client's in-flight window, `client::session`, and the broker's
//! outgoing window). It tracks packet ids, so a DUP resend of an id
//! already in flight is not counted twice and an ack for an unknown id
//! cannot underflow the count.

use std::collections::HashSet;

/// The default Receive Maximum when the property is absent.
pub const DEFAULT_RECEIVE_MAXIMUM: u16 = u16::MAX;

/// The peer sent more QoS>0 PUBLISHes than the Receive Maximum we
/// announced (breaking [MQTT-3.3.4-7]/[MQTT-3.3.4-9]): DISCONNECT with
/// 0x93 (spec 3.3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("receive maximum of {0} exceeded")]
pub struct ReceiveMaximumExceeded(pub u16);

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
    fn receiving_over_our_receive_maximum_is_an_error() {
        let mut q = ReceiveQuota::new(1);
        q.received(5).unwrap();
        q.received(5).unwrap();
        let err = q.received(6).unwrap_err();
        assert_eq!(err, ReceiveMaximumExceeded(1));
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
        fn receive_quota_matches_a_model(
            max in 1u16..6,
            ops in proptest::collection::vec(
                prop_oneof![(0u16..10).prop_map(Op::Send), (0u16..10).prop_map(Op::Ack)],
                0..100,
            ),
        ) {
            let mut r = ReceiveQuota::new(max);
            let mut model: Vec<u16> = Vec::new();
            for op in ops {
                match op {
                    Op::Send(id) => {
                        let ok = model.contains(&id) || model.len() < usize::from(max);
                        prop_assert_eq!(r.received(id).is_ok(), ok);
                        if ok && !model.contains(&id) {
                            model.push(id);
                        }
                    }
                    Op::Ack(id) => {
                        r.completed(id);
                        model.retain(|&m| m != id);
                    }
                }
                prop_assert!(model.len() <= usize::from(max));
            }
        }
    }
}
