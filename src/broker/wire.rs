//! What an MQTT 5 connection writes: the router and the sessions speak in
//! 3.1.1 packets (plus [`Out::V5`] for what only v5 can say) and in
//! messages; [`V5Out`] turns each outlet item into the v5 packet for the
//! wire: the negotiated CONNACK properties on the CONNACK, success reason
//! codes on plain acks, the message's properties and an outbound topic
//! alias on a PUBLISH, the receive quota released as acks go out. Pure:
//! the connection's task does the IO.

use std::sync::{Arc, Mutex, PoisonError};

use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, ConnectReturnCode as Code5, Packet as P5, PingResp, PubAck,
    PubComp, PubRec, PubRel, Publish, SubAck, SubscribeReasonCode as Sub5,
};

use super::outlet::Out;
use crate::protocol::alias::Outbound;
use crate::protocol::convert::v5_publish_from_message;
use crate::protocol::quota::ReceiveQuota;
use crate::protocol::reason::ReasonCode;
use crate::protocol::v4::{ConnectReturnCode, Packet, SubscribeReasonCode};
use crate::protocol::{Message, codec::message_from_publish};

/// The inbound receive quota of one v5 connection: the reader takes a slot
/// per QoS>0 PUBLISH, the writer frees it when the PUBACK/PUBCOMP goes out.
/// A std mutex: both sections are a set insert or remove, never an await.
#[derive(Debug, Clone)]
pub(crate) struct SharedQuota(Arc<Mutex<ReceiveQuota>>);

impl SharedQuota {
    /// A quota of `receive_maximum` (the one we announced).
    pub fn new(receive_maximum: u16) -> Self {
        SharedQuota(Arc::new(Mutex::new(ReceiveQuota::new(receive_maximum))))
    }

    /// A QoS>0 PUBLISH `pkid` arrived; `false` when over the quota (0x93).
    pub fn received(&self, pkid: u16) -> bool {
        self.lock().received(pkid).is_ok()
    }

    /// The flow of `pkid` ended on our side.
    pub fn completed(&self, pkid: u16) {
        self.lock().completed(pkid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReceiveQuota> {
        // Each section leaves the set consistent: poison is ignored.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The write side of one v5 connection.
#[derive(Debug)]
pub(crate) struct V5Out {
    /// The CONNACK properties, until the CONNACK went out.
    connack: Option<ConnAckProperties>,
    /// Topic aliases up to the client's Topic Alias Maximum.
    aliases: Outbound,
    /// The inbound receive quota, freed as acks go out.
    quota: SharedQuota,
    /// Whether failure acks carry a reason string (the client's Request
    /// Problem Information) [MQTT-3.1.2-29].
    problem_information: bool,
}

impl V5Out {
    /// For a connection that negotiated `connack` (sent with a successful
    /// CONNACK), a client Topic Alias Maximum of `alias_max`, `quota`, and
    /// whether the client wants reason strings (`problem_information`).
    pub fn new(
        connack: Option<ConnAckProperties>,
        alias_max: u16,
        quota: SharedQuota,
        problem_information: bool,
    ) -> Self {
        V5Out {
            connack,
            aliases: Outbound::new(alias_max),
            quota,
            problem_information,
        }
    }

    /// The packet to write for `item`; `None` for `Close`/`Replaced` and
    /// for a 3.1.1 packet with no v5 meaning. A failure ack gets its
    /// reason string here, unless the client asked for none.
    pub fn packet(&mut self, item: Out) -> Option<P5> {
        let mut packet = self.untold(item)?;
        if self.problem_information {
            super::problem::explain(&mut packet);
        }
        Some(packet)
    }

    fn untold(&mut self, item: Out) -> Option<P5> {
        match item {
            Out::Packet(p) => self.translate(*p),
            Out::Publish(b) => {
                let (message, pkid) = *b;
                Some(P5::Publish(self.publish(&message, pkid)))
            }
            Out::V5(p) => {
                self.note_ack(&p);
                Some(*p)
            }
            Out::Close | Out::Replaced => None,
        }
    }

    /// The PUBLISH of `message` under `pkid` (DUP as the message says).
    pub fn publish(&mut self, message: &Message, pkid: u16) -> Publish {
        let form = self.aliases.choose(&message.topic);
        let expiry = message
            .properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval);
        v5_publish_from_message(message, pkid, message.dup, form, expiry)
    }

    /// A topic alias that was chosen for a PUBLISH that was then not sent
    /// (too large for the client) must not be assumed known: forget them
    /// all (the next PUBLISH of each topic carries its name again).
    pub fn forget_aliases(&mut self, alias_max: u16) {
        self.aliases = Outbound::new(alias_max);
    }

    fn note_ack(&self, p: &P5) {
        match p {
            P5::PubAck(a) => self.quota.completed(a.pkid),
            P5::PubComp(c) => self.quota.completed(c.pkid),
            P5::PubRec(r) if ReasonCode::from(r.reason).is_error() => self.quota.completed(r.pkid),
            _ => {}
        }
    }

    fn translate(&mut self, packet: Packet) -> Option<P5> {
        let p = match packet {
            Packet::ConnAck(a) => {
                let code = connack_code(a.code);
                let properties = if code == Code5::Success {
                    self.connack.take()
                } else {
                    None
                };
                P5::ConnAck(ConnAck {
                    session_present: a.session_present && code == Code5::Success,
                    code,
                    properties,
                })
            }
            Packet::PubAck(a) => P5::PubAck(PubAck::new(a.pkid, None)),
            Packet::PubRec(r) => P5::PubRec(PubRec::new(r.pkid, None)),
            Packet::PubRel(r) => P5::PubRel(PubRel::new(r.pkid, None)),
            Packet::PubComp(c) => P5::PubComp(PubComp::new(c.pkid, None)),
            Packet::SubAck(s) => P5::SubAck(SubAck {
                pkid: s.pkid,
                return_codes: s
                    .return_codes
                    .into_iter()
                    .map(|c| match c {
                        SubscribeReasonCode::Success(q) => Sub5::Success(v5_qos(q)),
                        SubscribeReasonCode::Failure => Sub5::Unspecified,
                    })
                    .collect(),
                properties: None,
            }),
            Packet::PingResp => P5::PingResp(PingResp),
            // Only a session resumed from a 3.1.1 connection could still
            // hold one; it goes out as the same message.
            Packet::Publish(p) => {
                let pkid = p.pkid;
                let message = message_from_publish(p);
                P5::Publish(self.publish(&message, pkid))
            }
            _ => return None,
        };
        self.note_ack(&p);
        Some(p)
    }
}

fn v5_qos(q: crate::protocol::WireQoS) -> rumqttc::v5::mqttbytes::QoS {
    crate::protocol::QoS::from(q).into()
}

/// The v5 CONNACK code of a 3.1.1 one the router or the refusals chose.
pub(crate) fn connack_code(code: ConnectReturnCode) -> Code5 {
    match code {
        ConnectReturnCode::Success => Code5::Success,
        ConnectReturnCode::RefusedProtocolVersion => Code5::UnsupportedProtocolVersion,
        ConnectReturnCode::BadClientId => Code5::ClientIdentifierNotValid,
        ConnectReturnCode::ServiceUnavailable => Code5::ServerUnavailable,
        ConnectReturnCode::BadUserNamePassword => Code5::BadUserNamePassword,
        ConnectReturnCode::NotAuthorized => Code5::NotAuthorized,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::v4::{ConnAck as ConnAck4, PubAck as PubAck4, SubAck as SubAck4};
    use crate::protocol::{MessageProperties, PropertyFields, QoS, WireQoS};

    fn out(alias_max: u16) -> (V5Out, SharedQuota) {
        use crate::protocol::negotiate::{ConnectRequest, ServerLimits, negotiate};
        let quota = SharedQuota::new(1);
        let limits = ServerLimits {
            topic_alias_maximum: 5,
            ..Default::default()
        };
        let request = ConnectRequest {
            client_id: "c",
            keep_alive: 10,
            properties: None,
        };
        let props = negotiate(&limits, request, String::new).unwrap().connack;
        (V5Out::new(props, alias_max, quota.clone(), true), quota)
    }

    #[test]
    fn connack_carries_the_negotiated_properties_once() {
        let (mut o, _) = out(0);
        let item = Out::Packet(Box::new(Packet::ConnAck(ConnAck4::new(
            ConnectReturnCode::Success,
            true,
        ))));
        let Some(P5::ConnAck(a)) = o.packet(item) else {
            panic!("not a CONNACK")
        };
        assert!(a.session_present);
        assert_eq!(a.properties.and_then(|p| p.topic_alias_max), Some(5));
        let refused = Out::Packet(Box::new(Packet::ConnAck(ConnAck4::new(
            ConnectReturnCode::BadClientId,
            true,
        ))));
        let Some(P5::ConnAck(a)) = o.packet(refused) else {
            panic!("not a CONNACK")
        };
        assert_eq!(a.code, Code5::ClientIdentifierNotValid);
        assert!(!a.session_present && a.properties.is_none());
    }

    #[test]
    fn acks_free_the_receive_quota_and_carry_success() {
        let (mut o, quota) = out(0);
        assert!(quota.received(7));
        assert!(!quota.received(8), "quota of 1");
        let Some(P5::PubAck(a)) = o.packet(Out::Packet(Box::new(Packet::PubAck(PubAck4::new(7)))))
        else {
            panic!("not a PUBACK")
        };
        assert_eq!(ReasonCode::from(a.reason), ReasonCode::Success);
        assert!(quota.received(8), "slot freed by the PUBACK");
    }

    #[test]
    fn suback_failure_is_unspecified_error() {
        let (mut o, _) = out(0);
        let suback = SubAck4::new(
            3,
            vec![
                SubscribeReasonCode::Success(WireQoS::AtLeastOnce),
                SubscribeReasonCode::Failure,
            ],
        );
        let Some(P5::SubAck(s)) = o.packet(Out::Packet(Box::new(Packet::SubAck(suback)))) else {
            panic!("not a SUBACK")
        };
        let codes: Vec<ReasonCode> = s
            .return_codes
            .into_iter()
            .map(crate::protocol::convert::suback_reason)
            .collect();
        assert_eq!(
            codes,
            [ReasonCode::GrantedQos1, ReasonCode::UnspecifiedError]
        );
    }

    #[test]
    fn publish_keeps_properties_and_uses_aliases() {
        let (mut o, _) = out(2);
        let mut m = Message::new("a/b", "x", QoS::AtLeastOnce, false);
        m.properties = Some(MessageProperties::from(PropertyFields {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "2".into()), ("k".into(), "1".into())],
            ..Default::default()
        }));
        let first = o.publish(&m, 1);
        let second = o.publish(&m, 2);
        let p1 = first.properties.expect("properties");
        assert_eq!(p1.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            p1.user_properties,
            m.properties.as_ref().unwrap().user_properties
        );
        assert_eq!((&first.topic[..], p1.topic_alias), (&b"a/b"[..], Some(1)));
        assert_eq!(
            (
                &second.topic[..],
                second.properties.and_then(|p| p.topic_alias)
            ),
            (&b""[..], Some(1))
        );
        o.forget_aliases(2);
        assert_eq!(&o.publish(&m, 3).topic[..], b"a/b");
    }
}
