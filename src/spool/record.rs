//! One spooled message on disk, in the store's record codec
//! ([`crate::store::record`]: version, CRC-32 over the body, bounds-checked
//! reads), so a damaged record is recognised on read (and skipped, counted),
//! never trusted and never a panic.
//!
//! Body: `received_ms u64 | visited u64 | message` (the message with every
//! MQTT 5 property, as [`put_message`] writes it).

use crate::protocol::Message;
pub use crate::store::record::RecordError;
use crate::store::record::{Reader, begin, finish, open, put_message};

/// A message as spooled, with what the pipe needs to forward it later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The copy to publish (rules already applied).
    pub msg: Message,
    /// When the source delivered it, in milliseconds since the Unix epoch
    /// (wall clock: it must mean something after a restart).
    pub received_ms: u64,
    /// The loop guard's visited-broker bits.
    pub visited: u64,
}

/// Encodes `rec` (with its checksum).
pub fn encode(rec: &Record) -> Vec<u8> {
    let m = &rec.msg;
    let mut out = begin(16 + m.topic.len() + m.payload.len() + 16);
    out.extend_from_slice(&rec.received_ms.to_be_bytes());
    out.extend_from_slice(&rec.visited.to_be_bytes());
    put_message(&mut out, m);
    finish(out)
}

/// Decodes bytes written by [`encode`]; anything else is an error.
pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
    let mut r = Reader(open(bytes)?);
    let received_ms = r.u64()?;
    let visited = r.u64()?;
    let msg = r.message()?;
    r.end()?;
    Ok(Record {
        msg,
        received_ms,
        visited,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PropertyFields, QoS};
    use bytes::Bytes;
    use proptest::prelude::*;

    fn sample() -> Record {
        let mut msg = Message::new("a/b", &b"hello"[..], QoS::AtLeastOnce, true);
        msg.properties = Some(
            PropertyFields {
                payload_is_utf8: Some(true),
                message_expiry_interval: Some(60),
                content_type: Some("text/plain".into()),
                response_topic: Some("reply/here".into()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
                subscription_identifiers: vec![7, 9],
            }
            .into(),
        );
        Record {
            msg,
            received_ms: 1_700_000_000_000,
            visited: 0b101,
        }
    }

    #[test]
    fn round_trip() {
        let rec = sample();
        assert_eq!(decode(&encode(&rec)), Ok(rec));
        let plain = Record {
            msg: Message::new("t", Bytes::new(), QoS::ExactlyOnce, false),
            received_ms: 0,
            visited: 0,
        };
        assert_eq!(decode(&encode(&plain)), Ok(plain));
    }

    #[test]
    fn damage_is_detected() {
        let bytes = encode(&sample());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b).is_err(), "flip at {i}");
        }
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn any_record_round_trips(
            topic in "[a-z/]{1,20}",
            payload in prop::collection::vec(any::<u8>(), 0..300),
            qos in 0u8..3,
            retain in any::<bool>(),
            at in any::<u64>(),
        ) {
            let rec = Record {
                msg: Message::new(topic, payload, QoS::from_u8(qos).unwrap_or(QoS::AtMostOnce), retain),
                received_ms: at,
                visited: at.rotate_left(7),
            };
            prop_assert_eq!(decode(&encode(&rec)), Ok(rec));
        }
    }
}
