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

/// The MQTT 5 publish properties a bridge forwards. Empty for now; reserved so
/// adding v5 does not change every signature.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageProperties {
    /// User properties (key, value) in order.
    pub user_properties: Vec<(String, String)>,
    /// Content type, if any.
    pub content_type: Option<String>,
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
