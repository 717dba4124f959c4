//! One spooled message on disk: our own encoding with a CRC-32 over every
//! field, so a damaged record is recognised on read (and skipped, counted),
//! never trusted and never a panic.
//!
//! Layout (integers little-endian):
//! `crc32 u32 | version u8 | flags u8 | received_ms u64 | visited u64 |
//!  topic_len u32 | topic | payload_len u32 | payload | props_len u32 | props`
//! where `flags` = qos (bits 0–1) | retain (bit 2) | has properties (bit 3),
//! and `props` = `n u32` user properties as `(len u32, bytes)` pairs, the
//! content type, the payload format indicator (`u8`: 0 unset, 1 bytes,
//! 2 UTF-8), the message expiry interval, the response topic, the
//! correlation data (each optional field as `present u8 (len u32, bytes)?`),
//! then `n u32` subscription identifiers as `u32`s. The CRC covers
//! everything after itself.

use bytes::Bytes;

use crate::protocol::{Message, MessageProperties, PropertyFields, QoS};

const VERSION: u8 = 1;
const RETAIN: u8 = 1 << 2;
const HAS_PROPS: u8 = 1 << 3;

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

/// Why bytes read back are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than its own lengths say.
    #[error("record truncated")]
    Truncated,
    /// The checksum does not match the contents.
    #[error("record checksum mismatch")]
    Checksum,
    /// Written by an unknown version of the format.
    #[error("unknown record version {0}")]
    Version(u8),
    /// A field holds a value that cannot be (QoS 3, a topic not UTF-8).
    #[error("invalid record field: {0}")]
    Field(&'static str),
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(b);
}

/// Encodes `rec` (with its checksum).
pub fn encode(rec: &Record) -> Vec<u8> {
    let m = &rec.msg;
    let mut out = Vec::with_capacity(4 + 2 + 16 + 8 + m.topic.len() + m.payload.len() + 8);
    out.extend_from_slice(&[0; 4]);
    out.push(VERSION);
    let mut flags = m.qos.as_u8();
    if m.retain {
        flags |= RETAIN;
    }
    if m.properties.is_some() {
        flags |= HAS_PROPS;
    }
    out.push(flags);
    out.extend_from_slice(&rec.received_ms.to_le_bytes());
    out.extend_from_slice(&rec.visited.to_le_bytes());
    put_bytes(&mut out, m.topic.as_bytes());
    put_bytes(&mut out, &m.payload);
    let mut props = Vec::new();
    if let Some(p) = &m.properties {
        encode_properties(&mut props, p);
    }
    put_bytes(&mut out, &props);
    let crc = crc32fast::hash(out.get(4..).unwrap_or_default());
    if let Some(head) = out.get_mut(..4) {
        head.copy_from_slice(&crc.to_le_bytes());
    }
    out
}

fn put_opt_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
        None => out.push(0),
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

/// The MQTT 5 properties, every field in a fixed order (see the module doc).
fn encode_properties(out: &mut Vec<u8>, p: &MessageProperties) {
    put_len(out, p.user_properties.len());
    for (k, v) in &p.user_properties {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v.as_bytes());
    }
    put_opt_bytes(out, p.content_type.as_deref().map(str::as_bytes));
    out.push(match p.payload_is_utf8 {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    });
    put_opt_bytes(
        out,
        p.message_expiry_interval
            .map(u32::to_le_bytes)
            .as_ref()
            .map(|b| &b[..]),
    );
    put_opt_bytes(out, p.response_topic.as_deref().map(str::as_bytes));
    put_opt_bytes(out, p.correlation_data.as_deref());
    put_len(out, p.subscription_identifiers.len());
    for id in &p.subscription_identifiers {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

fn decode_properties(p: &mut Reader<'_>) -> Result<MessageProperties, RecordError> {
    let mut f = PropertyFields::default();
    for _ in 0..p.u32()? {
        f.user_properties
            .push((p.string("user property")?, p.string("user property")?));
    }
    f.content_type = p.opt(|p| p.string("content type"))?;
    f.payload_is_utf8 = match p.u8()? {
        0 => None,
        1 => Some(false),
        2 => Some(true),
        _ => return Err(RecordError::Field("payload format indicator")),
    };
    f.message_expiry_interval = p.opt(|p| {
        let b = p.bytes()?;
        Ok(u32::from_le_bytes(
            b.try_into()
                .map_err(|_| RecordError::Field("message expiry"))?,
        ))
    })?;
    f.response_topic = p.opt(|p| p.string("response topic"))?;
    f.correlation_data = p.opt(|p| Ok(Bytes::copy_from_slice(p.bytes()?)))?;
    for _ in 0..p.u32()? {
        f.subscription_identifiers.push(p.u32()?);
    }
    Ok(f.into())
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(
            b.try_into().map_err(|_| RecordError::Truncated)?,
        ))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| RecordError::Truncated)?,
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let n = usize::try_from(self.u32()?).map_err(|_| RecordError::Truncated)?;
        self.take(n)
    }
    /// A presence byte, then the value when present.
    fn opt<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, RecordError>,
    ) -> Result<Option<T>, RecordError> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(RecordError::Field("presence flag")),
        }
    }
    fn string(&mut self, field: &'static str) -> Result<String, RecordError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| RecordError::Field(field))
    }
}

/// Decodes bytes written by [`encode`]; anything else is an error.
pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
    let mut r = Reader(bytes);
    let crc = r.u32()?;
    if crc32fast::hash(r.0) != crc {
        return Err(RecordError::Checksum);
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(RecordError::Version(version));
    }
    let flags = r.u8()?;
    let qos = QoS::from_u8(flags & 0b11).ok_or(RecordError::Field("qos"))?;
    let received_ms = r.u64()?;
    let visited = r.u64()?;
    let topic = r.string("topic")?;
    let payload = Bytes::copy_from_slice(r.bytes()?);
    let mut p = Reader(r.bytes()?);
    let properties = if flags & HAS_PROPS != 0 {
        Some(decode_properties(&mut p)?)
    } else {
        None
    };
    let mut msg = Message::new(topic, payload, qos, flags & RETAIN != 0);
    msg.properties = properties;
    Ok(Record {
        msg,
        received_ms,
        visited,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
