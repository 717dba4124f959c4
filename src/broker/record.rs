//! The on-disk records of the built-in broker's persistent state (pure
//! encode/decode, no IO). Every value is `[version][crc32 of body][body]`:
//! a record damaged on disk (a flipped bit, a truncated value, a record of a
//! newer version) is reported as a [`RecordError`], never a panic.
//!
//! Keys are big-endian so a keyspace's order is the numeric order:
//! sessions by session id, messages by `(session id, sequence)`, QoS 2
//! states by `(session id, sequence)` or `(session id, packet id)`.

use crate::protocol::{Message, QoS};
pub(crate) use crate::store::record::RecordError;
use crate::store::record::{Reader, open, put_bytes, put_message, put_opt_bytes, seal};

/// A stored message (queued for a session, or retained).
pub(crate) fn encode_message(m: &Message) -> Vec<u8> {
    let mut body = Vec::with_capacity(m.topic.len() + m.payload.len() + 16);
    put_message(&mut body, m);
    seal(&body)
}

/// Reads a record of [`encode_message`].
pub(crate) fn decode_message(bytes: &[u8]) -> Result<Message, RecordError> {
    let mut r = Reader(open(bytes)?);
    let m = r.message()?;
    r.end()?;
    Ok(m)
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
    put_opt_bytes(&mut body, s.username.as_deref().map(str::as_bytes));
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
        _ => return Err(RecordError::Malformed("session kind")),
    };
    let client_id = r.string("client id")?;
    let username = r.opt(|r| r.string("username"))?;
    let disconnected_at = r.opt(Reader::u64)?;
    let mut subscriptions = Vec::new();
    for _ in 0..r.u32()? {
        let filter = r.string("filter")?;
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
    let released = r.flag("released")?;
    r.end()?;
    if pkid == 0 {
        return Err(RecordError::Malformed("packet id 0"));
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
        _ => return Err(RecordError::Malformed("key length")),
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
