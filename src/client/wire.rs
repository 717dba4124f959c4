//! The protocol version of one live connection, seen from the client
//! session (pure). The session speaks in 3.1.1-shaped packets (its flows
//! are the same in every version); on an MQTT 5 connection [`Wire`] turns
//! what it sends into v5 packets (message properties, subscription options,
//! outgoing topic aliases, reason codes) and what the broker sends into
//! [`FromBroker`] (properties kept, inbound topic aliases resolved, failure
//! reason codes and DISCONNECTs typed). On 3.1/3.1.1 it passes packets
//! through.
//!
//! The CONNECT and CONNACK of MQTT 5 are here too: [`v5_connect`] and
//! [`grant_from_connack`], which reads what the server granted.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5 as p5;

use crate::protocol::alias::{self, AliasError};
use crate::protocol::convert::{split_v5_properties, v5_publish_from_v4};
use crate::protocol::reason::ReasonCode;
use crate::protocol::version::{Packet, ProtocolChoice, ProtocolVersion};
use crate::protocol::{AckKind, Message, MessageProperties, QoS, RetainHandling, SubscribeOptions};

/// Topic aliases we let the broker use towards us (MQTT 5 CONNECT topic
/// alias maximum): enough for the topics of a busy pipe, a bounded table.
pub(crate) const INBOUND_TOPIC_ALIASES: u16 = 64;

/// Session expiry interval we ask for with a persistent session: "never
/// expires" (0xFFFFFFFF), which is what 3.1.1's `clean_session: false`
/// means. A bridge exists to lose nothing while it is away; how long a
/// broker really keeps the session is its own limit (Mosquitto's
/// `persistent_client_expiration`, a cloud broker's quota), which it may
/// lower in the CONNACK.
pub(crate) const SESSION_NEVER_EXPIRES: u32 = u32::MAX;

/// What a packet from the broker means to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FromBroker {
    /// A packet the session takes as 3.1.1 shapes it (acks with a success
    /// reason code, SUBACK, PINGRESP...).
    Packet(v4::Packet),
    /// A PUBLISH with its MQTT 5 properties (`None` on 3.1.1).
    Publish(v4::Publish, Option<MessageProperties>),
    /// A PUBACK or PUBREC refusing the message (reason code ≥ 0x80).
    Refused {
        /// PUBACK or PUBREC.
        kind: AckKind,
        /// The message's packet id.
        pkid: u16,
        /// The broker's reason.
        code: ReasonCode,
    },
    /// The broker ends the connection (MQTT 5 DISCONNECT).
    Disconnect {
        /// Its reason code.
        code: ReasonCode,
        /// Server reference (another server to use), if any.
        server_reference: Option<String>,
        /// Human-readable reason, if any (logs only).
        reason_string: Option<String>,
    },
}

/// A packet from the broker the client cannot take: the connection ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    /// A topic alias we never allowed or that names no topic yet.
    #[error("topic alias: {0}")]
    Alias(#[from] AliasError),
    /// A packet a client never receives (CONNECT, SUBSCRIBE, PINGREQ...).
    #[error("unexpected {0} from broker")]
    Unexpected(&'static str),
    /// An AUTH packet: we never send an Authentication Method, so the
    /// broker must not send AUTH [MQTT-4.12.0-6].
    #[error("AUTH from broker, but no authentication method was sent [MQTT-4.12.0-6]")]
    Auth,
}

impl WireError {
    /// The reason code of the DISCONNECT that ends the connection.
    pub(crate) fn reason_code(&self) -> ReasonCode {
        match self {
            WireError::Alias(_) => ReasonCode::TopicAliasInvalid,
            WireError::Unexpected(_) | WireError::Auth => ReasonCode::ProtocolError,
        }
    }
}

/// The per-connection translation state.
#[derive(Debug)]
pub(crate) struct Wire {
    version: ProtocolVersion,
    /// Aliases we assign to the broker (its topic alias maximum).
    aliases_out: alias::Outbound,
    /// Aliases the broker assigns to us (our topic alias maximum).
    aliases_in: alias::Inbound,
}

impl Wire {
    /// A connection speaking `version`; `peer_alias_max` is the broker's
    /// topic alias maximum (0 on 3.1.1: no aliases).
    pub(crate) fn new(version: ProtocolVersion, peer_alias_max: u16) -> Self {
        Wire {
            version,
            aliases_out: alias::Outbound::new(peer_alias_max),
            aliases_in: alias::Inbound::new(INBOUND_TOPIC_ALIASES),
        }
    }

    pub(crate) fn version(&self) -> ProtocolVersion {
        self.version
    }

    fn v5(&self) -> bool {
        self.version == ProtocolVersion::V5
    }

    /// A packet of the session other than PUBLISH and SUBSCRIBE (acks carry
    /// reason code 0x00 on v5).
    pub(crate) fn packet(&mut self, p: &v4::Packet) -> Packet {
        if !self.v5() {
            return Packet::V3(p.clone());
        }
        let p5 = match p {
            v4::Packet::PubAck(a) => p5::Packet::PubAck(p5::PubAck::new(a.pkid, None)),
            v4::Packet::PubRec(a) => p5::Packet::PubRec(p5::PubRec::new(a.pkid, None)),
            v4::Packet::PubRel(a) => p5::Packet::PubRel(p5::PubRel::new(a.pkid, None)),
            v4::Packet::PubComp(a) => p5::Packet::PubComp(p5::PubComp::new(a.pkid, None)),
            v4::Packet::PingReq => p5::Packet::PingReq(p5::PingReq),
            v4::Packet::Unsubscribe(u) => p5::Packet::Unsubscribe(p5::Unsubscribe {
                pkid: u.pkid,
                filters: u.topics.clone(),
                properties: None,
            }),
            v4::Packet::Disconnect => return self.disconnect(ReasonCode::Success),
            v4::Packet::Subscribe(s) => return self.subscribe(s, &[]),
            v4::Packet::Publish(p) => return self.publish(p, None),
            // Never sent by the session: keep the 3.1.1 packet, which the
            // framed connection refuses as a version mismatch.
            other => return Packet::V3(other.clone()),
        };
        Packet::V5(Box::new(p5))
    }

    /// Our DISCONNECT: the reason code on v5 (0x00 normal, 0x04 to have the
    /// broker publish our will); 3.1.1 has none.
    pub(crate) fn disconnect(&self, code: ReasonCode) -> Packet {
        if !self.v5() {
            return Packet::V3(v4::Packet::Disconnect);
        }
        let reason = p5::DisconnectReasonCode::try_from(code)
            .unwrap_or(p5::DisconnectReasonCode::NormalDisconnection);
        Packet::V5(Box::new(p5::Packet::Disconnect(p5::Disconnect::new(
            reason,
        ))))
    }

    /// A PUBLISH with the message's properties (v5), its topic written as
    /// the outbound alias table decides. Subscription identifiers are
    /// dropped: a client may not send them [MQTT-3.3.4-6].
    pub(crate) fn publish(&mut self, p: &v4::Publish, props: Option<&MessageProperties>) -> Packet {
        if !self.v5() {
            return Packet::V3(v4::Packet::Publish(p.clone()));
        }
        let form = self.aliases_out.choose(&p.topic);
        // Message expiry as carried: the pipe owns the reduction by the
        // time spent in the bridge.
        let expiry = props.and_then(|p| p.message_expiry_interval);
        Packet::V5(Box::new(p5::Packet::Publish(v5_publish_from_v4(
            p, props, form, expiry,
        ))))
    }

    /// A SUBSCRIBE with each filter's options (v5; 3.1.1 sends the QoS only).
    pub(crate) fn subscribe(&self, s: &v4::Subscribe, options: &[SubscribeOptions]) -> Packet {
        if !self.v5() {
            return Packet::V3(v4::Packet::Subscribe(s.clone()));
        }
        let filters = s
            .filters
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let o = options
                    .get(i)
                    .copied()
                    .unwrap_or_else(|| SubscribeOptions::qos(QoS::from(f.qos)));
                p5::Filter {
                    path: f.path.clone(),
                    qos: o.qos.into(),
                    nolocal: o.no_local,
                    preserve_retain: o.retain_as_published,
                    retain_forward_rule: match o.retain_handling {
                        RetainHandling::SendAtSubscribe => p5::RetainForwardRule::OnEverySubscribe,
                        RetainHandling::SendIfNew => p5::RetainForwardRule::OnNewSubscribe,
                        RetainHandling::DoNotSend => p5::RetainForwardRule::Never,
                    },
                }
            })
            .collect();
        Packet::V5(Box::new(p5::Packet::Subscribe(p5::Subscribe {
            pkid: s.pkid,
            filters,
            properties: None,
        })))
    }

    /// What a packet from the broker means to the session.
    pub(crate) fn incoming(&mut self, p: Packet) -> Result<FromBroker, WireError> {
        let p = match p {
            Packet::V3(v4::Packet::Publish(p)) => return Ok(FromBroker::Publish(p, None)),
            Packet::V3(p) => return Ok(FromBroker::Packet(p)),
            Packet::V5(p) => *p,
        };
        let packet = match p {
            p5::Packet::Publish(p) => return self.publish_in(p),
            p5::Packet::PubAck(a) => match ReasonCode::from(a.reason) {
                code if code.is_error() => {
                    return Ok(FromBroker::Refused {
                        kind: AckKind::PubAck,
                        pkid: a.pkid,
                        code,
                    });
                }
                _ => v4::Packet::PubAck(v4::PubAck::new(a.pkid)),
            },
            p5::Packet::PubRec(a) => match ReasonCode::from(a.reason) {
                code if code.is_error() => {
                    return Ok(FromBroker::Refused {
                        kind: AckKind::PubRec,
                        pkid: a.pkid,
                        code,
                    });
                }
                _ => v4::Packet::PubRec(v4::PubRec::new(a.pkid)),
            },
            // PUBREL/PUBCOMP 0x92 (packet id not found) still ends the flow.
            p5::Packet::PubRel(a) => v4::Packet::PubRel(v4::PubRel::new(a.pkid)),
            p5::Packet::PubComp(a) => v4::Packet::PubComp(v4::PubComp::new(a.pkid)),
            p5::Packet::SubAck(a) => v4::Packet::SubAck(v4::SubAck::new(
                a.pkid,
                a.return_codes.into_iter().map(suback_code).collect(),
            )),
            p5::Packet::UnsubAck(a) => v4::Packet::UnsubAck(v4::UnsubAck::new(a.pkid)),
            p5::Packet::PingResp(_) => v4::Packet::PingResp,
            p5::Packet::Disconnect(d) => {
                let (server_reference, reason_string) = d
                    .properties
                    .map(|p| (p.server_reference, p.reason_string))
                    .unwrap_or_default();
                return Ok(FromBroker::Disconnect {
                    code: ReasonCode::from(d.reason_code),
                    server_reference,
                    reason_string,
                });
            }
            p5::Packet::Auth(_) => return Err(WireError::Auth),
            p5::Packet::ConnAck(_) => return Err(WireError::Unexpected("CONNACK")),
            p5::Packet::Connect(..) => return Err(WireError::Unexpected("CONNECT")),
            p5::Packet::Subscribe(_) => return Err(WireError::Unexpected("SUBSCRIBE")),
            p5::Packet::Unsubscribe(_) => return Err(WireError::Unexpected("UNSUBSCRIBE")),
            p5::Packet::PingReq(_) => return Err(WireError::Unexpected("PINGREQ")),
        };
        Ok(FromBroker::Packet(packet))
    }

    /// An incoming v5 PUBLISH: the topic resolved through the inbound alias
    /// table, the properties kept (subscription identifiers too: the
    /// message model carries them, a later v5 hop to a client drops them).
    fn publish_in(&mut self, p: p5::Publish) -> Result<FromBroker, WireError> {
        let (props, alias) = split_v5_properties(p.properties);
        // The codec checked the topic is UTF-8 (anything else would become
        // U+FFFD here rather than panic).
        let topic = self
            .aliases_in
            .resolve(&String::from_utf8_lossy(&p.topic), alias)?;
        let mut publish = v4::Publish::from_bytes(topic, QoS::from(p.qos).into(), p.payload);
        publish.pkid = p.pkid;
        publish.dup = p.dup;
        publish.retain = p.retain;
        Ok(FromBroker::Publish(publish, props))
    }
}

/// A SUBACK entry as the session reads it (granted QoS, or refused).
fn suback_code(code: p5::SubscribeReasonCode) -> v4::SubscribeReasonCode {
    match code {
        p5::SubscribeReasonCode::Success(q) => {
            v4::SubscribeReasonCode::Success(QoS::from(q).into())
        }
        _ => v4::SubscribeReasonCode::Failure,
    }
}

/// What the broker granted in its CONNACK. On 3.1.1 the defaults
/// ([`Grant::v3`]) hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The broker resumed our session.
    pub(crate) session_present: bool,
    /// Receive maximum: QoS 1/2 publishes it takes unacknowledged at once.
    pub(crate) receive_maximum: u16,
    /// Largest packet it takes (`None`: no limit but MQTT's own).
    pub(crate) max_packet_size: Option<u32>,
    /// Keep alive the broker imposes (server keep alive), if any.
    pub(crate) keepalive: Option<Duration>,
    /// Highest QoS it takes from us.
    pub(crate) max_qos: QoS,
    /// Whether it takes retained messages.
    pub(crate) retain_available: bool,
    /// Topic aliases we may assign.
    pub(crate) topic_alias_maximum: u16,
    /// The client identifier it assigned (we sent an empty one).
    pub(crate) assigned_client_id: Option<String>,
    /// Session expiry interval it imposes, if it lowered ours.
    pub(crate) session_expiry: Option<u32>,
    /// QoS 2 flows it takes at once on a 3.1.1 connection, learned from the
    /// receive maximum of an earlier MQTT 5 CONNACK of the same endpoint
    /// (a 3.1.1 Mosquitto silently discards QoS 2 PUBLISHes beyond its
    /// `max_inflight_messages`, which is what it grants as receive maximum).
    pub(crate) exactly_once_limit: Option<u16>,
}

impl Grant {
    /// A 3.1.1 CONNACK: no limits beyond the protocol's.
    pub(crate) fn v3(session_present: bool) -> Self {
        Grant {
            session_present,
            receive_maximum: u16::MAX,
            max_packet_size: None,
            keepalive: None,
            max_qos: QoS::ExactlyOnce,
            retain_available: true,
            topic_alias_maximum: 0,
            assigned_client_id: None,
            session_expiry: None,
            exactly_once_limit: None,
        }
    }
}

impl Grant {
    /// Whether a client with `protocol` left to default ([`ProtocolChoice::Auto`])
    /// should leave this MQTT 5 connection for 3.1.1: the broker grants a
    /// receive maximum below our `inflight` window and we publish to it (it
    /// is a pipe's destination). The spec binds us to that window for QoS 1
    /// as well as QoS 2, so a long link would move one window per round
    /// trip (stock Mosquitto: 20); on 3.1.1 no window applies to QoS 1.
    /// A source-only broker keeps MQTT 5 (our own receive maximum governs
    /// what it sends us), and so does an explicit `protocol: 5`.
    pub(crate) fn window_calls_for_3_1_1(
        &self,
        choice: ProtocolChoice,
        publishes: bool,
        inflight: usize,
    ) -> bool {
        choice == ProtocolChoice::Auto && publishes && usize::from(self.receive_maximum) < inflight
    }
}

/// A CONNACK that refused us: its reason, and where to go instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The reason code (0x84 unsupported protocol version: fall back).
    pub(crate) code: ReasonCode,
    /// Server reference of a 0x9C/0x9D refusal, if any.
    pub(crate) server_reference: Option<String>,
    /// Human-readable reason, if any.
    pub(crate) reason_string: Option<String>,
}

/// Reads an MQTT 5 CONNACK: what was granted, or why we were refused.
pub(crate) fn grant_from_connack(ack: p5::ConnAck) -> Result<Grant, Refusal> {
    let code = connack_code(ack.code);
    let Some(props) = ack.properties else {
        return match code {
            ReasonCode::Success => Ok(Grant {
                session_present: ack.session_present,
                topic_alias_maximum: 0,
                ..Grant::v3(ack.session_present)
            }),
            code => Err(Refusal {
                code,
                server_reference: None,
                reason_string: None,
            }),
        };
    };
    if code != ReasonCode::Success {
        return Err(Refusal {
            code,
            server_reference: props.server_reference,
            reason_string: props.reason_string,
        });
    }
    Ok(Grant {
        session_present: ack.session_present,
        receive_maximum: props.receive_max.unwrap_or(u16::MAX),
        max_packet_size: props.max_packet_size,
        keepalive: props
            .server_keep_alive
            .map(|s| Duration::from_secs(s.into())),
        max_qos: match props.max_qos {
            Some(0) => QoS::AtMostOnce,
            Some(1) => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        },
        retain_available: props.retain_available != Some(0),
        topic_alias_maximum: props.topic_alias_max.unwrap_or(0),
        assigned_client_id: props.assigned_client_identifier,
        session_expiry: props.session_expiry_interval,
        exactly_once_limit: None,
    })
}

/// rumqttc's CONNACK code as our typed reason code (its three 3.1.1-only
/// codes never decode on a v5 connection; they map to "unspecified").
fn connack_code(code: p5::ConnectReturnCode) -> ReasonCode {
    use p5::ConnectReturnCode as C;
    match code {
        C::Success => ReasonCode::Success,
        C::RefusedProtocolVersion | C::BadClientId | C::ServiceUnavailable => {
            ReasonCode::UnspecifiedError
        }
        C::UnspecifiedError => ReasonCode::UnspecifiedError,
        C::MalformedPacket => ReasonCode::MalformedPacket,
        C::ProtocolError => ReasonCode::ProtocolError,
        C::ImplementationSpecificError => ReasonCode::ImplementationSpecificError,
        C::UnsupportedProtocolVersion => ReasonCode::UnsupportedProtocolVersion,
        C::ClientIdentifierNotValid => ReasonCode::ClientIdentifierNotValid,
        C::BadUserNamePassword => ReasonCode::BadUserNameOrPassword,
        C::NotAuthorized => ReasonCode::NotAuthorized,
        C::ServerUnavailable => ReasonCode::ServerUnavailable,
        C::ServerBusy => ReasonCode::ServerBusy,
        C::Banned => ReasonCode::Banned,
        C::BadAuthenticationMethod => ReasonCode::BadAuthenticationMethod,
        C::TopicNameInvalid => ReasonCode::TopicNameInvalid,
        C::PacketTooLarge => ReasonCode::PacketTooLarge,
        C::QuotaExceeded => ReasonCode::QuotaExceeded,
        C::PayloadFormatInvalid => ReasonCode::PayloadFormatInvalid,
        C::RetainNotSupported => ReasonCode::RetainNotSupported,
        C::QoSNotSupported => ReasonCode::QosNotSupported,
        C::UseAnotherServer => ReasonCode::UseAnotherServer,
        C::ServerMoved => ReasonCode::ServerMoved,
        C::ConnectionRateExceeded => ReasonCode::ConnectionRateExceeded,
    }
}

/// What an MQTT 5 CONNECT asks for, from the client options.
#[derive(Debug, Clone)]
pub(crate) struct ConnectSpec<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) keepalive_secs: u16,
    pub(crate) clean_session: bool,
    /// Our inflight window: the receive maximum we announce, so the broker
    /// may send us that many QoS 1/2 messages unacknowledged.
    pub(crate) receive_maximum: u16,
    pub(crate) max_packet_size: usize,
    pub(crate) username: Option<&'a str>,
    pub(crate) password: Option<&'a str>,
    pub(crate) will: Option<&'a Message>,
}

/// The MQTT 5 CONNECT of `spec`: session expiry 0 with a clean session,
/// [`SESSION_NEVER_EXPIRES`] otherwise; receive maximum; maximum packet
/// size; topic alias maximum [`INBOUND_TOPIC_ALIASES`]; problem
/// information requested (reason strings help the logs); the will with its
/// message properties.
pub(crate) fn v5_connect(spec: &ConnectSpec<'_>) -> Packet {
    let properties = p5::ConnectProperties {
        session_expiry_interval: Some(if spec.clean_session {
            0
        } else {
            SESSION_NEVER_EXPIRES
        }),
        receive_maximum: Some(spec.receive_maximum.max(1)),
        max_packet_size: u32::try_from(spec.max_packet_size).ok().filter(|&m| m > 0),
        topic_alias_max: Some(INBOUND_TOPIC_ALIASES),
        request_response_info: None,
        request_problem_info: Some(1),
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
    };
    let connect = p5::Connect {
        keep_alive: spec.keepalive_secs,
        client_id: spec.client_id.to_owned(),
        clean_start: spec.clean_session,
        properties: Some(properties),
    };
    let will = spec.will.map(|w| {
        let props = w.properties.as_ref().map(|p| p5::LastWillProperties {
            delay_interval: None,
            payload_format_indicator: p.payload_is_utf8.map(u8::from),
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
        });
        p5::LastWill {
            topic: Bytes::copy_from_slice(w.topic.as_bytes()),
            message: w.payload.clone(),
            qos: w.qos.into(),
            retain: w.retain,
            properties: props,
        }
    });
    let login = spec.username.map(|u| p5::Login {
        username: u.to_owned(),
        password: spec.password.unwrap_or_default().to_owned(),
    });
    Packet::V5(Box::new(p5::Packet::Connect(connect, will, login)))
}

#[cfg(test)]
mod tests;
