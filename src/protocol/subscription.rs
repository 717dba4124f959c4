//! What a subscriber asks for with each filter: the maximum QoS and, in
//! MQTT 5, the subscription options (no local, retain as published, retain
//! handling). One type for every side: pipes ask links for it, the client
//! core sends it in SUBSCRIBE, the built-in broker keeps it per filter (with
//! the MQTT 5 subscription identifier: [`Subscription`]).

use super::QoS;

/// When retained messages are sent for a new subscription (MQTT 5 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe (0; 3.1.1's only behaviour).
    #[default]
    SendAtSubscribe,
    /// Send them only if the subscription did not exist yet (1).
    SendIfNew,
    /// Never send retained messages for this subscription (2).
    DoNotSend,
}

/// A filter's requested QoS and MQTT 5 subscription options. The default is
/// what a 3.1.1 subscription means: QoS 0, messages published by this
/// session are delivered back to it, the retain flag is cleared on normal
/// delivery, retained messages are sent at subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscribeOptions {
    /// Maximum QoS granted for messages on this filter.
    pub qos: QoS,
    /// Do not deliver messages this session published itself (MQTT 5 only).
    pub no_local: bool,
    /// Keep the retain flag as published on normal delivery (MQTT 5 only).
    pub retain_as_published: bool,
    /// When retained messages are sent (MQTT 5 only; 3.1.1 always sends).
    pub retain_handling: RetainHandling,
}

impl SubscribeOptions {
    /// Options with `qos` and the 3.1.1 meaning for everything else.
    pub fn qos(qos: QoS) -> Self {
        Self {
            qos,
            ..Self::default()
        }
    }
}

impl From<QoS> for SubscribeOptions {
    fn from(qos: QoS) -> Self {
        Self::qos(qos)
    }
}

/// One subscription of a session: the options asked for (granted QoS
/// included) and its MQTT 5 subscription identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Subscription {
    /// Granted QoS, no local, retain as published, retain handling.
    pub options: SubscribeOptions,
    /// Subscription identifier, added to the messages it delivers.
    pub id: Option<u32>,
}

impl Subscription {
    /// A subscription with `options` and no identifier.
    pub fn from_options(options: SubscribeOptions) -> Self {
        Subscription { options, id: None }
    }
}

impl From<QoS> for Subscription {
    fn from(qos: QoS) -> Self {
        Subscription {
            options: SubscribeOptions::qos(qos),
            id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_mean_a_3_1_1_subscription() {
        let o = SubscribeOptions::qos(QoS::AtLeastOnce);
        assert_eq!(o.qos, QoS::AtLeastOnce);
        assert!(!o.no_local);
        assert!(!o.retain_as_published);
        assert_eq!(o.retain_handling, RetainHandling::SendAtSubscribe);
        assert_eq!(
            SubscribeOptions::from(QoS::ExactlyOnce).qos,
            QoS::ExactlyOnce
        );
    }
}
