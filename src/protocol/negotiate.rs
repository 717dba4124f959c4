//! MQTT 5 CONNECT negotiation (spec 3.1.2.11, 3.2.2.3) as a pure function:
//! given the broker's limits and a client's CONNECT, what the CONNACK
//! says and what the connection then enforces in each direction.

use rumqttc::v5::mqttbytes::v5::{ConnAckProperties, ConnectProperties};

use super::message::QoS;
use super::quota::DEFAULT_RECEIVE_MAXIMUM;
use super::reason::ReasonCode;

/// The largest packet MQTT can carry: a 4-byte remaining length of
/// 268,435,455 plus the 5-byte fixed header. The default when the client
/// sets no Maximum Packet Size.
pub const PROTOCOL_MAX_PACKET_SIZE: u32 = 268_435_460;

/// What the broker allows and supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Receive Maximum we announce: QoS>0 PUBLISHes a client may have in flight to us.
    pub receive_maximum: u16,
    /// Largest packet we accept (total size).
    pub maximum_packet_size: u32,
    /// Topic aliases a client may set on its PUBLISHes to us (0: none).
    pub topic_alias_maximum: u16,
    /// Longest keep alive we allow; a client asking for more (or for 0,
    /// "none") is told this one in Server Keep Alive. `None`: any.
    pub max_keep_alive: Option<u16>,
    /// Longest session expiry interval we keep a session for.
    pub max_session_expiry: u32,
    /// Highest QoS we support.
    pub maximum_qos: QoS,
    /// Retained messages supported.
    pub retain_available: bool,
    /// Wildcard subscriptions supported.
    pub wildcard_subscription_available: bool,
    /// Subscription identifiers supported.
    pub subscription_identifiers_available: bool,
    /// Shared subscriptions supported.
    pub shared_subscription_available: bool,
    /// Enhanced authentication methods we accept; a CONNECT naming another
    /// is refused with 0x8C.
    pub authentication_methods: Vec<String>,
}

impl Default for ServerLimits {
    /// Everything supported, nothing limited beyond the protocol.
    fn default() -> Self {
        ServerLimits {
            receive_maximum: DEFAULT_RECEIVE_MAXIMUM,
            maximum_packet_size: PROTOCOL_MAX_PACKET_SIZE,
            topic_alias_maximum: 0,
            max_keep_alive: None,
            max_session_expiry: u32::MAX,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            wildcard_subscription_available: true,
            subscription_identifiers_available: true,
            shared_subscription_available: true,
            authentication_methods: Vec::new(),
        }
    }
}

/// The outcome of an accepted CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The CONNACK properties to send (`None` when there is nothing to say).
    pub connack: Option<ConnAckProperties>,
    /// The client id of the session (assigned when the client sent none).
    pub client_id: String,
    /// Keep alive in force (seconds; 0: none).
    pub keep_alive: u16,
    /// Session expiry interval in force (seconds; 0: ends with the connection).
    pub session_expiry: u32,
    /// QoS>0 PUBLISHes we may have in flight to the client (its Receive Maximum).
    pub send_quota: u16,
    /// Largest packet we may send the client: larger ones are dropped for
    /// it [MQTT-3.1.2-24].
    pub max_outgoing_packet: u32,
    /// Topic aliases we may set towards the client (its Topic Alias Maximum).
    pub outgoing_alias_maximum: u16,
    /// Topic aliases the client may set towards us (ours).
    pub incoming_alias_maximum: u16,
    /// Whether reason strings and user properties may go on packets other
    /// than PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29].
    pub problem_information: bool,
}

/// The CONNECT fields negotiation reads.
#[derive(Debug, Clone, Copy)]
pub struct ConnectRequest<'a> {
    /// Client id as sent (may be empty).
    pub client_id: &'a str,
    /// Keep alive as sent.
    pub keep_alive: u16,
    /// The CONNECT properties.
    pub properties: Option<&'a ConnectProperties>,
}

/// Computes the CONNACK and the connection's limits, or the CONNACK reason
/// code refusing the CONNECT. `assign_id` makes a unique client id for a
/// client that sent an empty one [MQTT-3.1.3-6, MQTT-3.1.3-7].
pub fn negotiate(
    limits: &ServerLimits,
    connect: ConnectRequest<'_>,
    assign_id: impl FnOnce() -> String,
) -> Result<Negotiated, ReasonCode> {
    let p = connect.properties;
    if let Some(method) = p.and_then(|p| p.authentication_method.as_deref())
        && !limits.authentication_methods.iter().any(|m| m == method)
    {
        return Err(ReasonCode::BadAuthenticationMethod);
    }
    let mut ack = empty_connack();
    let client_id = if connect.client_id.is_empty() {
        let id = assign_id();
        ack.assigned_client_identifier = Some(id.clone());
        id
    } else {
        connect.client_id.to_string()
    };
    let keep_alive = match limits.max_keep_alive {
        Some(max) if connect.keep_alive == 0 || connect.keep_alive > max => {
            ack.server_keep_alive = Some(max);
            max
        }
        _ => connect.keep_alive,
    };
    let asked_expiry = p.and_then(|p| p.session_expiry_interval).unwrap_or(0);
    let session_expiry = asked_expiry.min(limits.max_session_expiry);
    if session_expiry != asked_expiry {
        ack.session_expiry_interval = Some(session_expiry);
    }
    if limits.receive_maximum != DEFAULT_RECEIVE_MAXIMUM {
        ack.receive_max = Some(limits.receive_maximum.max(1));
    }
    if limits.maximum_packet_size < PROTOCOL_MAX_PACKET_SIZE {
        ack.max_packet_size = Some(limits.maximum_packet_size.max(1));
    }
    if limits.topic_alias_maximum > 0 {
        ack.topic_alias_max = Some(limits.topic_alias_maximum);
    }
    if limits.maximum_qos != QoS::ExactlyOnce {
        ack.max_qos = Some(limits.maximum_qos.as_u8());
    }
    let off = |available: bool| (!available).then_some(0u8);
    ack.retain_available = off(limits.retain_available);
    ack.wildcard_subscription_available = off(limits.wildcard_subscription_available);
    ack.subscription_identifiers_available = off(limits.subscription_identifiers_available);
    ack.shared_subscription_available = off(limits.shared_subscription_available);
    Ok(Negotiated {
        connack: Some(ack).filter(|a| *a != empty_connack()),
        client_id,
        keep_alive,
        session_expiry,
        send_quota: p
            .and_then(|p| p.receive_maximum)
            .unwrap_or(DEFAULT_RECEIVE_MAXIMUM),
        max_outgoing_packet: p
            .and_then(|p| p.max_packet_size)
            .unwrap_or(PROTOCOL_MAX_PACKET_SIZE),
        outgoing_alias_maximum: p.and_then(|p| p.topic_alias_max).unwrap_or(0),
        incoming_alias_maximum: limits.topic_alias_maximum,
        problem_information: p.and_then(|p| p.request_problem_info) != Some(0),
    })
}

fn empty_connack() -> ConnAckProperties {
    ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn props() -> ConnectProperties {
        ConnectProperties::new()
    }

    fn req<'a>(id: &'a str, keep_alive: u16, p: &'a ConnectProperties) -> ConnectRequest<'a> {
        ConnectRequest {
            client_id: id,
            keep_alive,
            properties: Some(p),
        }
    }

    #[test]
    fn defaults_say_nothing_and_take_the_clients_values() {
        let p = props();
        let n = negotiate(
            &ServerLimits::default(),
            req("c", 30, &p),
            || unreachable!(),
        )
        .unwrap();
        assert_eq!(n.connack, None);
        assert_eq!(
            (n.client_id.as_str(), n.keep_alive, n.session_expiry),
            ("c", 30, 0)
        );
        assert_eq!(
            (n.send_quota, n.max_outgoing_packet),
            (65_535, PROTOCOL_MAX_PACKET_SIZE)
        );
        assert_eq!((n.outgoing_alias_maximum, n.incoming_alias_maximum), (0, 0));
        assert!(n.problem_information);
    }

    #[test]
    fn mqtt_3_1_3_7_empty_client_id_is_assigned_and_returned() {
        let p = props();
        let n = negotiate(&ServerLimits::default(), req("", 30, &p), || "gen-1".into()).unwrap();
        assert_eq!(n.client_id, "gen-1");
        assert_eq!(
            n.connack
                .and_then(|a| a.assigned_client_identifier)
                .as_deref(),
            Some("gen-1")
        );
    }

    #[test]
    fn mqtt_3_2_2_21_server_keep_alive_caps_the_clients() {
        let limits = ServerLimits {
            max_keep_alive: Some(60),
            ..Default::default()
        };
        let p = props();
        for (asked, used, told) in [(30, 30, None), (120, 60, Some(60)), (0, 60, Some(60))] {
            let n = negotiate(&limits, req("c", asked, &p), String::new).unwrap();
            assert_eq!(n.keep_alive, used);
            assert_eq!(n.connack.and_then(|a| a.server_keep_alive), told);
        }
    }

    #[test]
    fn clients_limits_bind_what_we_send() {
        let mut p = props();
        p.receive_maximum = Some(10);
        p.max_packet_size = Some(1024);
        p.topic_alias_max = Some(5);
        p.request_problem_info = Some(0);
        p.session_expiry_interval = Some(3600);
        let limits = ServerLimits {
            max_session_expiry: 600,
            ..Default::default()
        };
        let n = negotiate(&limits, req("c", 30, &p), String::new).unwrap();
        assert_eq!(
            (
                n.send_quota,
                n.max_outgoing_packet,
                n.outgoing_alias_maximum
            ),
            (10, 1024, 5)
        );
        assert!(!n.problem_information);
        assert_eq!(n.session_expiry, 600);
        assert_eq!(n.connack.and_then(|a| a.session_expiry_interval), Some(600));
    }

    #[test]
    fn our_limits_and_missing_features_are_announced() {
        let limits = ServerLimits {
            receive_maximum: 20,
            maximum_packet_size: 65_536,
            topic_alias_maximum: 8,
            maximum_qos: QoS::AtLeastOnce,
            retain_available: false,
            shared_subscription_available: false,
            ..Default::default()
        };
        let p = props();
        let n = negotiate(&limits, req("c", 30, &p), String::new).unwrap();
        assert_eq!(n.incoming_alias_maximum, 8);
        let a = n.connack.expect("properties");
        assert_eq!(
            (a.receive_max, a.max_packet_size, a.topic_alias_max),
            (Some(20), Some(65_536), Some(8))
        );
        assert_eq!(
            (
                a.max_qos,
                a.retain_available,
                a.shared_subscription_available
            ),
            (Some(1), Some(0), Some(0))
        );
        assert_eq!(
            (
                a.wildcard_subscription_available,
                a.subscription_identifiers_available
            ),
            (None, None)
        );
    }

    #[test]
    fn unknown_authentication_method_is_refused_with_0x8c() {
        let mut p = props();
        p.authentication_method = Some("SCRAM-SHA-1".into());
        let err = negotiate(&ServerLimits::default(), req("c", 30, &p), String::new).unwrap_err();
        assert_eq!(err, ReasonCode::BadAuthenticationMethod);
        let limits = ServerLimits {
            authentication_methods: vec!["SCRAM-SHA-1".into()],
            ..Default::default()
        };
        assert!(negotiate(&limits, req("c", 30, &p), String::new).is_ok());
    }

    proptest! {
        /// The CONNACK always encodes as a valid v5 packet, and what we
        /// enforce never exceeds what either side allowed.
        #[test]
        fn connack_is_valid_and_limits_hold(
            rm in proptest::option::of(1u16..), mps in proptest::option::of(1u32..),
            tam in proptest::option::of(any::<u16>()), sei in proptest::option::of(any::<u32>()),
            ka in any::<u16>(), our_rm in 1u16.., our_mps in 1u32.., our_ka in proptest::option::of(1u16..),
            our_sei in any::<u32>(), id in "[a-z]{0,4}",
        ) {
            let mut p = props();
            p.receive_maximum = rm;
            p.max_packet_size = mps;
            p.topic_alias_max = tam;
            p.session_expiry_interval = sei;
            let limits = ServerLimits {
                receive_maximum: our_rm,
                maximum_packet_size: our_mps,
                max_keep_alive: our_ka,
                max_session_expiry: our_sei,
                ..Default::default()
            };
            let n = negotiate(&limits, req(&id, ka, &p), || "assigned".into()).unwrap();
            prop_assert!(n.session_expiry <= our_sei);
            if let Some(max) = our_ka {
                prop_assert!(n.keep_alive <= max && n.keep_alive > 0);
            }
            prop_assert_eq!(n.send_quota, rm.unwrap_or(65_535));
            let ack = rumqttc::v5::mqttbytes::v5::ConnAck {
                session_present: false,
                code: rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success,
                properties: n.connack,
            };
            let mut buf = bytes::BytesMut::new();
            let packet = rumqttc::v5::mqttbytes::v5::Packet::ConnAck(ack);
            crate::protocol::v5::encode(&packet, &mut buf, usize::MAX, crate::protocol::v5::Sender::Server).unwrap();
        }
    }
}
