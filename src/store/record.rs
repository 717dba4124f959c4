//! The one record codec of the store (pure, no IO): every value a spool or a
//! built-in broker writes is `[version u8][crc32 of body u32][body]`, and
//! the body is read through a bounds-checked [`Reader`]. A damaged value (a
//! flipped bit, a cut, a newer format) is a [`RecordError`], never a panic.
//!
//! Integers are big-endian; a length-prefixed field is `len u32` + bytes; an
//! optional field is `present u8` (0 or 1) then the field. A [`Message`] is
//! written by [`put_message`]: `qos u8 | retain u8 | topic | payload |
//! has_properties u8 | properties?`, the MQTT 5 properties in a fixed order
//! (user properties, content type, payload format indicator — 0 unset,
//! 1 bytes, 2 UTF-8 — message expiry, response topic, correlation data,
//! subscription identifiers).

use bytes::Bytes;

use crate::protocol::{Message, MessageProperties, PropertyFields, QoS};

/// The record format written today.
pub const VERSION: u8 = 1;

/// Why stored bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than its header or than a length it announces.
    #[error("record truncated")]
    Truncated,
    /// Written by a format this build does not know.
    #[error("unknown record version {0}")]
    Version(u8),
    /// The checksum does not match the body.
    #[error("record checksum mismatch")]
    Checksum,
    /// A field holds a value no writer produces (QoS 3, a topic not UTF-8,
    /// bytes after the last field).
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// Bytes before the body: the version and the CRC.
const HEADER: usize = 5;

/// Wraps `body` with the version byte and its CRC.
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = begin(body.len());
    out.extend_from_slice(body);
    finish(out)
}

/// Starts a record with room for a body of `capacity` bytes: write the body
/// after what this returns, then [`finish`] it (one buffer, no copy of the
/// body as [`seal`] makes).
pub fn begin(capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + capacity);
    out.push(VERSION);
    out.extend_from_slice(&[0; HEADER - 1]);
    out
}

/// Fills in the CRC of a record started by [`begin`].
pub fn finish(mut out: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(out.get(HEADER..).unwrap_or_default());
    if let Some(field) = out.get_mut(1..HEADER) {
        field.copy_from_slice(&crc.to_be_bytes());
    }
    out
}

/// Checks version and CRC; returns the body.
pub fn open(bytes: &[u8]) -> Result<&[u8], RecordError> {
    let (&version, rest) = bytes.split_first().ok_or(RecordError::Truncated)?;
    if version != VERSION {
        return Err(RecordError::Version(version));
    }
    let (crc, body) = rest.split_at_checked(4).ok_or(RecordError::Truncated)?;
    let crc = u32::from_be_bytes(crc.try_into().map_err(|_| RecordError::Truncated)?);
    if crc32fast::hash(body) != crc {
        return Err(RecordError::Checksum);
    }
    Ok(body)
}

/// Appends a length-prefixed field. Lengths come from MQTT packets (bounded
/// by the maximum packet size, far below 4 GiB).
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

/// Appends an optional length-prefixed field.
pub fn put_opt_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
        None => out.push(0),
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

/// Appends `m` (see the module doc; DUP is not stored).
pub fn put_message(out: &mut Vec<u8>, m: &Message) {
    out.push(m.qos.as_u8());
    out.push(u8::from(m.retain));
    put_bytes(out, m.topic.as_bytes());
    put_bytes(out, &m.payload);
    match &m.properties {
        Some(p) => {
            out.push(1);
            put_properties(out, p);
        }
        None => out.push(0),
    }
}

fn put_properties(out: &mut Vec<u8>, p: &MessageProperties) {
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
            .map(u32::to_be_bytes)
            .as_ref()
            .map(|b| &b[..]),
    );
    put_opt_bytes(out, p.response_topic.as_deref().map(str::as_bytes));
    put_opt_bytes(out, p.correlation_data.as_deref());
    put_len(out, p.subscription_identifiers.len());
    for id in &p.subscription_identifiers {
        out.extend_from_slice(&id.to_be_bytes());
    }
}

/// A bounds-checked cursor over a record body (or a key).
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(RecordError::Truncated)?;
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        self.take(N)?.try_into().map_err(|_| RecordError::Truncated)
    }
    /// One byte.
    pub fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(u8::from_be_bytes(self.array()?))
    }
    /// A big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    /// A big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    /// A length-prefixed field.
    pub fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let len = usize::try_from(self.u32()?).map_err(|_| RecordError::Truncated)?;
        self.take(len)
    }
    /// A length-prefixed UTF-8 field.
    pub fn string(&mut self, field: &'static str) -> Result<String, RecordError> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_owned)
            .map_err(|_| RecordError::Malformed(field))
    }
    /// A QoS byte.
    pub fn qos(&mut self) -> Result<QoS, RecordError> {
        QoS::from_u8(self.u8()?).ok_or(RecordError::Malformed("qos"))
    }
    /// A 0/1 byte.
    pub fn flag(&mut self, field: &'static str) -> Result<bool, RecordError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(RecordError::Malformed(field)),
        }
    }
    /// An optional field: a presence byte, then `read` when present.
    pub fn opt<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, RecordError>,
    ) -> Result<Option<T>, RecordError> {
        if self.flag("presence flag")? {
            read(self).map(Some)
        } else {
            Ok(None)
        }
    }
    /// Nothing may follow the last field.
    pub fn end(&self) -> Result<(), RecordError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(RecordError::Malformed("trailing bytes"))
        }
    }
    /// A message written by [`put_message`].
    pub fn message(&mut self) -> Result<Message, RecordError> {
        let qos = self.qos()?;
        let retain = self.flag("retain")?;
        let topic = self.string("topic")?;
        let payload = Bytes::copy_from_slice(self.bytes()?);
        let mut msg = Message::new(topic, payload, qos, retain);
        if self.flag("has properties")? {
            msg.properties = Some(self.properties()?);
        }
        Ok(msg)
    }
    fn properties(&mut self) -> Result<MessageProperties, RecordError> {
        let mut f = PropertyFields::default();
        for _ in 0..self.u32()? {
            f.user_properties
                .push((self.string("user property")?, self.string("user property")?));
        }
        f.content_type = self.opt(|r| r.string("content type"))?;
        f.payload_is_utf8 = match self.u8()? {
            0 => None,
            1 => Some(false),
            2 => Some(true),
            _ => return Err(RecordError::Malformed("payload format indicator")),
        };
        f.message_expiry_interval = self.opt(|r| {
            let b = r.bytes()?;
            Ok(u32::from_be_bytes(
                b.try_into()
                    .map_err(|_| RecordError::Malformed("message expiry"))?,
            ))
        })?;
        f.response_topic = self.opt(|r| r.string("response topic"))?;
        f.correlation_data = self.opt(|r| Ok(Bytes::copy_from_slice(r.bytes()?)))?;
        for _ in 0..self.u32()? {
            f.subscription_identifiers.push(self.u32()?);
        }
        Ok(f.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_with_every_property_round_trips_and_damage_is_caught() {
        let mut m = Message::new("a/b", &b"hello"[..], QoS::ExactlyOnce, true);
        m.properties = Some(
            PropertyFields {
                payload_is_utf8: Some(false),
                message_expiry_interval: Some(60),
                content_type: Some("text/plain".into()),
                response_topic: Some("reply".into()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
                subscription_identifiers: vec![7, 9],
            }
            .into(),
        );
        let mut body = Vec::new();
        put_message(&mut body, &m);
        let sealed = seal(&body);
        let mut r = Reader(open(&sealed).expect("open"));
        assert_eq!(r.message(), Ok(m));
        assert_eq!(r.end(), Ok(()));
        for cut in 0..sealed.len() {
            assert!(open(&sealed[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = sealed.clone();
        if let Some(b) = flipped.last_mut() {
            *b ^= 1;
        }
        assert_eq!(open(&flipped), Err(RecordError::Checksum));
    }
}
