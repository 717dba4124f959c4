//! The on-disk records of the built-in broker's persistent state (pure
//! encode/decode, no IO). Every value is `[version][crc32 of body][body]`:
//! a record damaged on disk (a flipped bit, a truncated value, a record of a
//! newer version) is reported as a [`RecordError`], never a panic.
//!
//! Keys are big-endian so a keyspace's order is the numeric order:
//! sessions by session id, messages by `(session id, sequence)`, QoS 2
//! states by `(session id, sequence)` or `(session id, packet id)`.

use bytes::Bytes;

use crate::protocol::{Message, QoS};

/// The record format written today.
pub(crate) const VERSION: u8 = 1;

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    /// Shorter than its header or than a length it announces.
    #[error("record truncated")]
    Truncated,
    /// Written by a format this build does not know.
    #[error("unknown record version {0}")]
    Version(u8),
    /// The checksum does not match the body.
    #[error("record checksum mismatch")]
    Checksum,
    /// A field holds a value no writer produces (bad QoS, bad UTF-8, bad kind).
    #[error("malformed record")]
    Malformed,
}

/// Wraps `body` with the version byte and its CRC.
fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(VERSION);
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Checks version and CRC; returns the body.
fn open(bytes: &[u8]) -> Result<&[u8], RecordError> {
    let (&version, rest) = bytes.split_first().ok_or(RecordError::Truncated)?;
    if version != VERSION {
        return Err(RecordError::Version(version));
    }
    let (crc, body) = rest.split_at_checked(4).ok_or(RecordError::Truncated)?;
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| RecordError::Truncated)?);
    if crc32fast::hash(body) != crc {
        return Err(RecordError::Checksum);
    }
    Ok(body)
}

/// A cursor over a record body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(RecordError::Truncated)?;
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let b = self.take(4)?;
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        self.take(len)
    }
    fn string(&mut self) -> Result<String, RecordError> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| RecordError::Malformed)
    }
    fn qos(&mut self) -> Result<QoS, RecordError> {
        QoS::from_u8(self.u8()?).ok_or(RecordError::Malformed)
    }
    fn end(&self) -> Result<(), RecordError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(RecordError::Malformed)
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Lengths come from MQTT packets (bounded by max_packet_size, far below 4 GiB).
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

/// A stored message (queued for a session, or retained).
pub(crate) fn encode_message(m: &Message) -> Vec<u8> {
    let mut body = Vec::with_capacity(m.topic.len() + m.payload.len() + 10);
    body.push(m.qos.as_u8());
    body.push(u8::from(m.retain));
    put_bytes(&mut body, m.topic.as_bytes());
    put_bytes(&mut body, &m.payload);
    seal(&body)
}

/// Reads a record of [`encode_message`].
pub(crate) fn decode_message(bytes: &[u8]) -> Result<Message, RecordError> {
    let mut r = Reader(open(bytes)?);
    let qos = r.qos()?;
    let retain = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(RecordError::Malformed),
    };
    let topic = r.string()?;
    let payload = Bytes::copy_from_slice(r.bytes()?);
    r.end()?;
    Ok(Message::new(topic, payload, qos, retain))
}

/// Which namespace a stored session belongs to (see `SessionKey`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A network client.
    Network,
    /// An in-process link (the bridge's own).
    Link,
}

/// A persistent session's own record (its messages are records of their own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredSession {
    /// Link or network client.
    pub kind: Kind,
    /// Client (or link) id.
    pub client_id: String,
    /// Username of the last connection (the read ACL's subject).
    pub username: Option<String>,
    /// Filter → granted QoS.
    pub subscriptions: Vec<(String, QoS)>,
    /// Unix seconds of the disconnect; `None` while connected (a crash
    /// while connected restarts the expiry clock at the next start).
    pub disconnected_at: Option<u64>,
}

/// Encodes a session record.
pub(crate) fn encode_session(s: &StoredSession) -> Vec<u8> {
    let mut body = Vec::new();
    body.push(match s.kind {
        Kind::Network => 0,
        Kind::Link => 1,
    });
    put_bytes(&mut body, s.client_id.as_bytes());
    match &s.username {
        Some(u) => {
            body.push(1);
            put_bytes(&mut body, u.as_bytes());
        }
        None => body.push(0),
    }
    match s.disconnected_at {
        Some(t) => {
            body.push(1);
            body.extend_from_slice(&t.to_be_bytes());
        }
        None => body.push(0),
    }
    body.extend_from_slice(
        &u32::try_from(s.subscriptions.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for (filter, qos) in &s.subscriptions {
        put_bytes(&mut body, filter.as_bytes());
        body.push(qos.as_u8());
    }
    seal(&body)
}

/// Reads a record of [`encode_session`].
pub(crate) fn decode_session(bytes: &[u8]) -> Result<StoredSession, RecordError> {
    let mut r = Reader(open(bytes)?);
    let kind = match r.u8()? {
        0 => Kind::Network,
        1 => Kind::Link,
        _ => return Err(RecordError::Malformed),
    };
    let client_id = r.string()?;
    let username = match r.u8()? {
        0 => None,
        1 => Some(r.string()?),
        _ => return Err(RecordError::Malformed),
    };
    let disconnected_at = match r.u8()? {
        0 => None,
        1 => Some(r.u64()?),
        _ => return Err(RecordError::Malformed),
    };
    let n = r.take(4)?;
    let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]);
    let mut subscriptions = Vec::new();
    for _ in 0..n {
        let filter = r.string()?;
        subscriptions.push((filter, r.qos()?));
    }
    r.end()?;
    Ok(StoredSession {
        kind,
        client_id,
        username,
        subscriptions,
        disconnected_at,
    })
}

/// Where an outgoing QoS 2 flow stands (QoS 1 flows keep no record: they
/// are resent under a fresh packet id after a restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flow {
    /// The packet id the PUBLISH went out with.
    pub pkid: u16,
    /// PUBREC received, PUBREL sent.
    pub released: bool,
}

/// Encodes an outgoing QoS 2 flow.
pub(crate) fn encode_flow(f: Flow) -> Vec<u8> {
    let mut body = f.pkid.to_be_bytes().to_vec();
    body.push(u8::from(f.released));
    seal(&body)
}

/// Reads a record of [`encode_flow`].
pub(crate) fn decode_flow(bytes: &[u8]) -> Result<Flow, RecordError> {
    let mut r = Reader(open(bytes)?);
    let pkid = r.u16()?;
    let released = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(RecordError::Malformed),
    };
    r.end()?;
    if pkid == 0 {
        return Err(RecordError::Malformed);
    }
    Ok(Flow { pkid, released })
}

/// An empty marker record (a received QoS 2 packet id: the key says which).
pub(crate) fn encode_marker() -> Vec<u8> {
    seal(&[])
}

/// Checks a record of [`encode_marker`].
pub(crate) fn decode_marker(bytes: &[u8]) -> Result<(), RecordError> {
    Reader(open(bytes)?).end()
}

/// Key of a session: its id.
pub(crate) fn session_key(sid: u64) -> [u8; 8] {
    sid.to_be_bytes()
}

/// Key of a session's message or flow: `(session id, sequence)`.
pub(crate) fn seq_key(sid: u64, seq: u64) -> [u8; 16] {
    let mut k = [0; 16];
    k[..8].copy_from_slice(&sid.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Key of a received QoS 2 packet id: `(session id, packet id)`.
pub(crate) fn pkid_key(sid: u64, pkid: u16) -> [u8; 10] {
    let mut k = [0; 10];
    k[..8].copy_from_slice(&sid.to_be_bytes());
    k[8..].copy_from_slice(&pkid.to_be_bytes());
    k
}

/// Splits a 16-byte `(session, sequence)` key or a 10-byte `(session,
/// packet id)` key into its session id and the rest.
pub(crate) fn split_key(key: &[u8]) -> Result<(u64, u64), RecordError> {
    let mut r = Reader(key);
    let sid = r.u64()?;
    let rest = match key.len() {
        16 => r.u64()?,
        10 => u64::from(r.u16()?),
        _ => return Err(RecordError::Malformed),
    };
    Ok((sid, rest))
}

/// Key of a session id alone.
pub(crate) fn parse_session_key(key: &[u8]) -> Result<u64, RecordError> {
    let mut r = Reader(key);
    let sid = r.u64()?;
    r.end()?;
    Ok(sid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn qos() -> impl Strategy<Value = QoS> {
        prop_oneof![
            Just(QoS::AtMostOnce),
            Just(QoS::AtLeastOnce),
            Just(QoS::ExactlyOnce)
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip(topic in "[a-z/]{1,20}", payload in proptest::collection::vec(any::<u8>(), 0..64), q in qos(), retain in any::<bool>()) {
            let m = Message::new(topic, payload, q, retain);
            let back = decode_message(&encode_message(&m)).expect("decode");
            prop_assert_eq!(back.topic, m.topic);
            prop_assert_eq!(back.payload, m.payload);
            prop_assert_eq!(back.qos, m.qos);
            prop_assert_eq!(back.retain, m.retain);
        }

        #[test]
        fn sessions_round_trip(id in "[a-z0-9]{0,12}", user in proptest::option::of("[a-z]{1,8}"), subs in proptest::collection::vec(("[a-z/#+]{1,10}", qos()), 0..5), at in proptest::option::of(any::<u64>()), link in any::<bool>()) {
            let s = StoredSession { kind: if link { Kind::Link } else { Kind::Network }, client_id: id, username: user, subscriptions: subs, disconnected_at: at };
            prop_assert_eq!(decode_session(&encode_session(&s)).expect("decode"), s);
        }

        /// Any single flipped bit or truncation is detected, never a panic
        /// and never a different record.
        #[test]
        fn damage_is_detected(bit in 0usize..400, cut in 0usize..60) {
            let m = Message::new("a/b", "some payload", QoS::AtLeastOnce, false);
            let good = encode_message(&m);
            let mut flipped = good.clone();
            let i = bit % (flipped.len() * 8);
            flipped[i / 8] ^= 1 << (i % 8);
            prop_assert!(decode_message(&flipped).is_err());
            let cut = cut % good.len();
            prop_assert!(decode_message(&good[..cut]).is_err());
            // Garbage of any kind decodes as an error too.
            let _ = decode_session(&flipped);
            let _ = decode_flow(&flipped[..cut]);
        }
    }

    #[test]
    fn flows_markers_and_keys() {
        let f = Flow {
            pkid: 7,
            released: true,
        };
        assert_eq!(decode_flow(&encode_flow(f)), Ok(f));
        assert_eq!(decode_marker(&encode_marker()), Ok(()));
        assert_eq!(split_key(&seq_key(3, 9)), Ok((3, 9)));
        assert_eq!(split_key(&pkid_key(3, 9)), Ok((3, 9)));
        assert_eq!(parse_session_key(&session_key(5)), Ok(5));
        assert!(seq_key(1, u64::MAX) < seq_key(2, 0));
        let mut v = encode_flow(f);
        v[0] = 9;
        assert_eq!(decode_flow(&v), Err(RecordError::Version(9)));
    }
}
