//! Protocol pieces shared by the client core and the built-in broker:
//! the internal message type, the codec adapter over `rumqttc::mqttbytes`
//! and the sans-IO session state machines. No sockets, no tokio here.

pub mod message;

pub use message::{Message, MessageProperties, QoS};
