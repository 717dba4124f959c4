//! The version-free view of a CONNECT ([`ConnectInfo`]) and the read-side
//! state of an MQTT 5 connection ([`V5Conn`]): inbound topic aliases, the
//! receive quota we announced, the negotiated limits, the session expiry
//! interval a DISCONNECT may change. Pure: the connection task does the IO.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{
    Connect as Connect5, Filter, LastWill as Will5, Login as Login5, Packet as P5,
    RetainForwardRule,
};

use super::wire::SharedQuota;
use crate::protocol::alias::Inbound;
use crate::protocol::negotiate::Negotiated;
use crate::protocol::reason::ReasonCode;
use crate::protocol::v4::Connect;
use crate::protocol::version::ProtocolVersion;
use crate::protocol::{
    Message, MessageProperties, PropertyFields, QoS, RetainHandling, SubscribeOptions,
};

/// A will and when it is published.
#[derive(Debug, Clone)]
pub(crate) struct Will {
    /// The will message (MQTT 5 will properties included).
    pub message: Message,
    /// Will Delay Interval (MQTT 5; 0 for 3.x): published this long after
    /// the connection ended, unless the session resumes or ends first.
    pub delay: Duration,
}

/// A CONNECT of any version, as the handshake checks it.
#[derive(Debug)]
pub(crate) struct ConnectInfo {
    /// The version the client speaks.
    pub version: ProtocolVersion,
    /// Client id as sent (may be empty).
    pub client_id: String,
    /// Clean session (3.x) / clean start (5).
    pub clean_start: bool,
    /// Keep alive as sent.
    pub keep_alive: u16,
    /// User name and password, if sent.
    pub login: Option<(String, String)>,
    /// The will, if any.
    pub will: Option<Will>,
    /// The MQTT 5 CONNECT properties (`None` for 3.x, or none sent).
    pub properties: Option<rumqttc::v5::mqttbytes::v5::ConnectProperties>,
}

impl ConnectInfo {
    /// A 3.1/3.1.1 CONNECT.
    pub fn v3(c: Connect, version: ProtocolVersion) -> Self {
        ConnectInfo {
            version,
            client_id: c.client_id,
            clean_start: c.clean_session,
            keep_alive: c.keep_alive,
            login: c.login.map(|l| (l.username, l.password)),
            will: c.last_will.map(|w| Will {
                message: Message::new(w.topic, w.message, QoS::from(w.qos), w.retain),
                delay: Duration::ZERO,
            }),
            properties: None,
        }
    }

    /// An MQTT 5 CONNECT (the adapter checked the will topic is UTF-8
    /// without wildcards; other bytes would become U+FFFD, never a panic).
    pub fn v5(c: Connect5, will: Option<Will5>, login: Option<Login5>) -> Self {
        ConnectInfo {
            version: ProtocolVersion::V5,
            client_id: c.client_id,
            clean_start: c.clean_start,
            keep_alive: c.keep_alive,
            login: login.map(|l| (l.username, l.password)),
            will: will.map(will_of_v5),
            properties: c.properties,
        }
    }
}

/// The message and delay of an MQTT 5 will (spec 3.1.3.2).
fn will_of_v5(w: Will5) -> Will {
    let topic = String::from_utf8_lossy(&w.topic).into_owned();
    let mut message = Message::new(topic, w.message, QoS::from(w.qos), w.retain);
    let mut delay = Duration::ZERO;
    if let Some(p) = w.properties {
        delay = Duration::from_secs(u64::from(p.delay_interval.unwrap_or(0)));
        let props = MessageProperties::from(PropertyFields {
            payload_is_utf8: p.payload_format_indicator.map(|v| v == 1),
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            subscription_identifiers: Vec::new(),
        });
        message.properties = Some(props).filter(|p| !p.is_empty());
    }
    Will { message, delay }
}

/// The read side of an MQTT 5 connection.
#[derive(Debug)]
pub(crate) struct V5Conn {
    /// What the CONNECT negotiated.
    pub negotiated: Negotiated,
    /// Topic aliases the client sets, up to the maximum we announced.
    pub aliases: Inbound,
    /// QoS>0 PUBLISHes of the client in flight, up to our Receive Maximum.
    pub quota: SharedQuota,
}

impl V5Conn {
    /// The state of a connection that negotiated `negotiated` and announced
    /// `receive_maximum`.
    pub fn new(negotiated: Negotiated, receive_maximum: u16) -> Self {
        V5Conn {
            aliases: Inbound::new(negotiated.incoming_alias_maximum),
            quota: SharedQuota::new(receive_maximum),
            negotiated,
        }
    }

    /// A DISCONNECT's Session Expiry Interval: the new interval in force,
    /// or 0x82 when the CONNECT set 0 and the DISCONNECT sets another
    /// [MQTT-3.14.2-2]. The server maximum still caps it.
    pub fn session_expiry_on_disconnect(
        &mut self,
        asked: Option<u32>,
        max: u32,
    ) -> Result<u32, ReasonCode> {
        let current = self.negotiated.session_expiry;
        match asked {
            None => Ok(current),
            Some(new) if current == 0 && new != 0 => Err(ReasonCode::ProtocolError),
            Some(new) => {
                self.negotiated.session_expiry = new.min(max);
                Ok(self.negotiated.session_expiry)
            }
        }
    }
}

/// The subscription options of an MQTT 5 SUBSCRIBE filter.
pub(crate) fn options_of(f: &Filter) -> SubscribeOptions {
    SubscribeOptions {
        qos: QoS::from(f.qos),
        no_local: f.nolocal,
        retain_as_published: f.preserve_retain,
        retain_handling: match f.retain_forward_rule {
            RetainForwardRule::OnEverySubscribe => RetainHandling::SendAtSubscribe,
            RetainForwardRule::OnNewSubscribe => RetainHandling::SendIfNew,
            RetainForwardRule::Never => RetainHandling::DoNotSend,
        },
    }
}

/// The name of an MQTT 5 packet type, for logs.
pub(crate) fn name(p: &P5) -> &'static str {
    match p {
        P5::Auth(_) => "AUTH",
        P5::Connect(..) => "CONNECT",
        P5::ConnAck(_) => "CONNACK",
        P5::Publish(_) => "PUBLISH",
        P5::PubAck(_) => "PUBACK",
        P5::PingReq(_) => "PINGREQ",
        P5::PingResp(_) => "PINGRESP",
        P5::Subscribe(_) => "SUBSCRIBE",
        P5::SubAck(_) => "SUBACK",
        P5::PubRec(_) => "PUBREC",
        P5::PubRel(_) => "PUBREL",
        P5::PubComp(_) => "PUBCOMP",
        P5::Unsubscribe(_) => "UNSUBSCRIBE",
        P5::UnsubAck(_) => "UNSUBACK",
        P5::Disconnect(_) => "DISCONNECT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::negotiate::{ConnectRequest, ServerLimits, negotiate};
    use rumqttc::v5::mqttbytes::v5::{ConnectProperties, LastWillProperties};

    fn conn(expiry: u32) -> V5Conn {
        let mut p = ConnectProperties::new();
        p.session_expiry_interval = Some(expiry);
        let n = negotiate(
            &ServerLimits::default(),
            ConnectRequest {
                client_id: "c",
                keep_alive: 10,
                properties: Some(&p),
            },
            String::new,
        )
        .unwrap();
        V5Conn::new(n, 10)
    }

    #[test]
    fn mqtt_3_14_2_2_session_expiry_cannot_be_raised_from_zero() {
        assert_eq!(
            conn(0).session_expiry_on_disconnect(Some(60), u32::MAX),
            Err(ReasonCode::ProtocolError)
        );
        assert_eq!(
            conn(0).session_expiry_on_disconnect(Some(0), u32::MAX),
            Ok(0)
        );
        assert_eq!(conn(0).session_expiry_on_disconnect(None, u32::MAX), Ok(0));
        let mut c = conn(30);
        assert_eq!(c.session_expiry_on_disconnect(Some(0), u32::MAX), Ok(0));
        assert_eq!(
            conn(30).session_expiry_on_disconnect(Some(900), 600),
            Ok(600)
        );
    }

    #[test]
    fn will_properties_and_delay_are_kept() {
        let mut props = LastWillProperties {
            delay_interval: Some(5),
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".into()),
            response_topic: Some("r".into()),
            correlation_data: Some("cd".into()),
            user_properties: vec![("b".into(), "2".into()), ("a".into(), "1".into())],
        };
        let will = Will5::new(
            "w/t",
            "gone",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            true,
            Some(props.clone()),
        );
        let w = will_of_v5(will);
        assert_eq!(w.delay, Duration::from_secs(5));
        assert_eq!(
            (&*w.message.topic, w.message.qos, w.message.retain),
            ("w/t", QoS::AtLeastOnce, true)
        );
        let p = w.message.properties.expect("properties");
        assert_eq!(
            p.user_properties,
            std::mem::take(&mut props.user_properties)
        );
        assert_eq!(
            (
                p.payload_is_utf8,
                p.message_expiry_interval,
                p.content_type.as_deref()
            ),
            (Some(true), Some(60), Some("text/plain"))
        );
    }
}
