//! The internal message type: what pipes, the client core and the broker
//! pass around. Codec types from `rumqttc` never leave `protocol::codec`.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;

/// MQTT quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    /// QoS 0: fire and forget.
    #[default]
    AtMostOnce = 0,
    /// QoS 1: PUBLISH → PUBACK.
    AtLeastOnce = 1,
    /// QoS 2: PUBLISH → PUBREC → PUBREL → PUBCOMP.
    ExactlyOnce = 2,
}

impl QoS {
    /// Converts a wire value; `None` for 3 and above.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// An application message, independent of protocol version and codec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name (never contains wildcards once accepted from the wire);
    /// shared, so a copy of the message for another pipe or a resend does
    /// not copy the topic.
    pub topic: Topic,
    /// Payload bytes; cheap to clone.
    pub payload: Bytes,
    /// Quality of service of this delivery.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// DUP flag as received (informational; senders set it themselves on resend).
    pub dup: bool,
    /// MQTT 5 properties, carried opaquely; `None` on 3.1.1 links.
    pub properties: Option<MessageProperties>,
}

/// A topic name, shared: cloning it is a reference count, not a copy. Reads
/// as a `&str` (`Deref`), compares with `str` and `String`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Topic(Arc<str>);

impl Topic {
    /// The topic as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `self` and `other` are clones of one shared topic (one
    /// allocation), not merely equal.
    pub fn is_shared_with(&self, other: &Topic) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Deref for Topic {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Topic {
    fn from(s: &str) -> Self {
        Topic(Arc::from(s))
    }
}

impl From<String> for Topic {
    fn from(s: String) -> Self {
        Topic(Arc::from(s))
    }
}

impl From<&String> for Topic {
    fn from(s: &String) -> Self {
        Topic(Arc::from(s.as_str()))
    }
}

impl From<Topic> for String {
    fn from(t: Topic) -> Self {
        t.0.as_ref().to_owned()
    }
}

impl PartialEq<str> for Topic {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Topic {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Topic {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The MQTT 5 properties of an application message (spec 3.3.2.3), as a
/// bridge forwards them. The topic alias is not here: it belongs to one
/// connection (see `protocol::alias`), never to the message.
///
/// Conversion rules between versions (`protocol::convert`):
/// - towards MQTT 5 every field is written as held, except
///   `message_expiry_interval`, which the sender first reduces by the time
///   the message spent queued (`protocol::expiry`), and
///   `subscription_identifiers`, which the broker replaces with the
///   receiving subscription's identifiers (a client never sends them);
/// - towards 3.1.1 and 3.1 all of it is dropped (the PUBLISH has nowhere
///   to put it); topic, payload, QoS and retain are all a 3.x peer gets;
///   an expired message is still dropped, not delivered;
/// - from 3.1.1 and 3.1 a message has no properties (`None`).
///
/// The fields live behind one box ([`PropertyFields`], reached through
/// `Deref`), so a [`Message`] stays small on the 3.1.1 hot path, where it
/// carries `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageProperties(Box<PropertyFields>);

/// The fields of [`MessageProperties`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PropertyFields {
    /// Payload format indicator: `Some(true)` declares the payload UTF-8
    /// (a receiver may check it: invalid → 0x99), `Some(false)` declares
    /// unspecified bytes, `None` when the sender did not say.
    pub payload_is_utf8: Option<bool>,
    /// Message expiry interval in seconds, as the sender set it (the
    /// remaining lifetime is computed from when it arrived).
    pub message_expiry_interval: Option<u32>,
    /// Content type (a MIME type by convention).
    pub content_type: Option<String>,
    /// Response topic of a request (a topic name, no wildcards).
    pub response_topic: Option<String>,
    /// Correlation data of a request/response exchange.
    pub correlation_data: Option<Bytes>,
    /// User properties (name, value) in the order received; names may repeat.
    pub user_properties: Vec<(String, String)>,
    /// Subscription identifiers of the subscriptions that matched, on a
    /// message delivered by a server; empty otherwise.
    pub subscription_identifiers: Vec<u32>,
}

impl MessageProperties {
    /// True when there is nothing to send (a v5 PUBLISH then carries an
    /// empty property section).
    pub fn is_empty(&self) -> bool {
        *self.0 == PropertyFields::default()
    }
}

impl From<PropertyFields> for MessageProperties {
    fn from(fields: PropertyFields) -> Self {
        MessageProperties(Box::new(fields))
    }
}

impl std::ops::Deref for MessageProperties {
    type Target = PropertyFields;
    fn deref(&self) -> &PropertyFields {
        &self.0
    }
}

impl std::ops::DerefMut for MessageProperties {
    fn deref_mut(&mut self) -> &mut PropertyFields {
        &mut self.0
    }
}

impl Message {
    /// A message with DUP off and no properties.
    pub fn new(topic: impl Into<Topic>, payload: impl Into<Bytes>, qos: QoS, retain: bool) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
            dup: false,
            properties: None,
        }
    }
}

/// Acknowledgement token of an incoming message, sent back to the link owner
/// when a pipe has finished with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckToken {
    /// Connection generation the message arrived on; acks from an older
    /// generation are ignored (the broker redelivers on the new connection).
    pub generation: u64,
    /// Arrival sequence number of the delivery within its generation
    /// (increasing from 0), for every owner.
    pub id: u64,
    /// The packet id the owner acknowledges (PUBACK/PUBREC) for it.
    pub pkid: u16,
    /// The QoS it was delivered at (1 or 2): which acknowledgement is due.
    pub qos: QoS,
}
