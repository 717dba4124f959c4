//! The on-disk records of the built-in broker's persistent state (pure
//! encode/decode, no IO). Every value is `[version][crc32 of body][body]`:
//! a record damaged on disk (a flipped bit, a truncated value, a record of a
//! newer version) is reported as a [`RecordError`], never a panic.
//!
//! Keys are big-endian so a keyspace's order is the numeric order:
//! sessions by session id, messages by `(session id, sequence)`, QoS 2
//! states by `(session id, sequence)` or `(session id, packet id)`.

use crate::protocol::subscription::Subscription;
use crate::protocol::{Message, RetainHandling, SubscribeOptions};
pub(crate) use crate::store::record::RecordError;
use crate::store::record::{Reader, open, put_bytes, put_message, put_opt_bytes, seal};

/// A stored message (queued for a session, or retained) and `arrived`:
/// the unix milliseconds its Message Expiry Interval counts from, so the
/// interval keeps counting while the broker is down (`None`: it has none).
///
/// Message format 2 appends `format u8 | arrived opt u64` to the message;
/// a format 1 record ends after the message and still loads (no arrival:
/// its interval counts again from the load, as it did then).
pub(crate) fn encode_message(m: &Message, arrived: Option<u64>) -> Vec<u8> {
    let mut body = Vec::with_capacity(m.topic.len() + m.payload.len() + 26);
    put_message(&mut body, m);
    body.push(MESSAGE_FORMAT);
    match arrived {
        Some(t) => {
            body.push(1);
            body.extend_from_slice(&t.to_be_bytes());
        }
        None => body.push(0),
    }
    seal(&body)
}

/// Reads a record of [`encode_message`]: the message and its arrival.
pub(crate) fn decode_message(bytes: &[u8]) -> Result<(Message, Option<u64>), RecordError> {
    let mut r = Reader(open(bytes)?);
    let m = r.message()?;
    let mut arrived = None;
    if !r.0.is_empty() {
        if r.u8()? != MESSAGE_FORMAT {
            return Err(RecordError::Malformed("message format"));
        }
        arrived = r.opt(Reader::u64)?;
    }
    r.end()?;
    Ok((m, arrived))
}

/// The message record format written today (format 1 had no byte for it).
const MESSAGE_FORMAT: u8 = 2;

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
    /// Filter → subscription options and identifier.
    pub subscriptions: Vec<(String, Subscription)>,
    /// MQTT 5 Session Expiry Interval (`None`: a 3.x or link session).
    pub expiry: Option<u32>,
    /// Unix seconds of the disconnect; `None` while connected (a crash
    /// while connected restarts the expiry clock at the next start).
    pub disconnected_at: Option<u64>,
    /// An MQTT 5 will waiting for its Will Delay Interval.
    pub will: Option<StoredWill>,
}

/// A delayed will as stored with its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredWill {
    /// The will message.
    pub message: Message,
    /// Unix milliseconds when it is due.
    pub due: u64,
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
    for (filter, sub) in &s.subscriptions {
        put_bytes(&mut body, filter.as_bytes());
        body.push(sub.options.qos.as_u8());
    }
    // Session format 2: MQTT 5 subscription options and identifiers (in
    // the order of the filters) and the session expiry interval. A format
    // 1 record ends before this byte and still loads (3.1.1 options).
    body.push(SESSION_FORMAT);
    for (_, sub) in &s.subscriptions {
        body.push(options_byte(&sub.options));
        put_opt_u32(&mut body, sub.id);
    }
    put_opt_u32(&mut body, s.expiry);
    // Format 3: the delayed will. A format 2 record ends before it.
    match &s.will {
        Some(w) => {
            body.push(1);
            put_message(&mut body, &w.message);
            body.extend_from_slice(&w.due.to_be_bytes());
        }
        None => body.push(0),
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
        subscriptions.push((filter, Subscription::from(r.qos()?)));
    }
    let mut expiry = None;
    let mut will = None;
    if !r.0.is_empty() {
        let format = r.u8()?;
        if !(2..=SESSION_FORMAT).contains(&format) {
            return Err(RecordError::Malformed("session format"));
        }
        for (_, sub) in &mut subscriptions {
            let qos = sub.options.qos;
            sub.options = options_of_byte(r.u8()?, qos)?;
            sub.id = r.opt(Reader::u32)?;
        }
        expiry = r.opt(Reader::u32)?;
        if format >= 3 {
            will = r.opt(|r| {
                Ok(StoredWill {
                    message: r.message()?,
                    due: r.u64()?,
                })
            })?;
        }
    }
    r.end()?;
    Ok(StoredSession {
        kind,
        client_id,
        username,
        subscriptions,
        disconnected_at,
        expiry,
        will,
    })
}

/// The session record format written today (format 1 had no byte for it;
/// format 2 had no will).
const SESSION_FORMAT: u8 = 3;

fn put_opt_u32(out: &mut Vec<u8>, v: Option<u32>) {
    match v {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_be_bytes());
        }
        None => out.push(0),
    }
}

/// No local (bit 0), retain as published (bit 1), retain handling (bits 2-3).
fn options_byte(o: &SubscribeOptions) -> u8 {
    let rh = match o.retain_handling {
        RetainHandling::SendAtSubscribe => 0,
        RetainHandling::SendIfNew => 1,
        RetainHandling::DoNotSend => 2,
    };
    u8::from(o.no_local) | u8::from(o.retain_as_published) << 1 | rh << 2
}

fn options_of_byte(b: u8, qos: crate::protocol::QoS) -> Result<SubscribeOptions, RecordError> {
    let retain_handling = match (b >> 2) & 3 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(RecordError::Malformed("retain handling")),
    };
    if b >> 4 != 0 {
        return Err(RecordError::Malformed("subscription options"));
    }
    Ok(SubscribeOptions {
        qos,
        no_local: b & 1 != 0,
        retain_as_published: b & 2 != 0,
        retain_handling,
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
    use crate::protocol::QoS;
    use proptest::prelude::*;

    fn subscription() -> impl Strategy<Value = Subscription> {
        let rh = prop_oneof![
            Just(RetainHandling::SendAtSubscribe),
            Just(RetainHandling::SendIfNew),
            Just(RetainHandling::DoNotSend)
        ];
        (
            qos(),
            any::<bool>(),
            any::<bool>(),
            rh,
            proptest::option::of(1u32..268_435_455),
        )
            .prop_map(
                |(qos, no_local, retain_as_published, retain_handling, id)| Subscription {
                    options: SubscribeOptions {
                        qos,
                        no_local,
                        retain_as_published,
                        retain_handling,
                    },
                    id,
                },
            )
    }

    fn qos() -> impl Strategy<Value = QoS> {
        prop_oneof![
            Just(QoS::AtMostOnce),
            Just(QoS::AtLeastOnce),
            Just(QoS::ExactlyOnce)
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip(topic in "[a-z/]{1,20}", payload in proptest::collection::vec(any::<u8>(), 0..64), q in qos(), retain in any::<bool>(), arrived in proptest::option::of(any::<u64>())) {
            let m = Message::new(topic, payload, q, retain);
            let (back, when) = decode_message(&encode_message(&m, arrived)).expect("decode");
            prop_assert_eq!(when, arrived);
            prop_assert_eq!(back.topic, m.topic);
            prop_assert_eq!(back.payload, m.payload);
            prop_assert_eq!(back.qos, m.qos);
            prop_assert_eq!(back.retain, m.retain);
        }

        #[test]
        fn sessions_round_trip(id in "[a-z0-9]{0,12}", user in proptest::option::of("[a-z]{1,8}"), subs in proptest::collection::vec(("[a-z/#+]{1,10}", subscription()), 0..5), at in proptest::option::of(any::<u64>()), link in any::<bool>(), expiry in proptest::option::of(any::<u32>()), will in proptest::option::of(("[a-z/]{1,10}", any::<u64>()))) {
            let will = will.map(|(topic, due)| StoredWill { message: Message::new(topic, "gone", QoS::AtLeastOnce, true), due });
            let s = StoredSession { kind: if link { Kind::Link } else { Kind::Network }, client_id: id, username: user, subscriptions: subs, disconnected_at: at, expiry, will };
            prop_assert_eq!(decode_session(&encode_session(&s)).expect("decode"), s);
        }

        /// Any single flipped bit or truncation is detected, never a panic
        /// and never a different record.
        #[test]
        fn damage_is_detected(bit in 0usize..400, cut in 0usize..60) {
            let m = Message::new("a/b", "some payload", QoS::AtLeastOnce, false);
            let good = encode_message(&m, Some(1_700_000_000_000));
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

    /// A session record written before MQTT 5 (format 1: filters and QoS,
    /// nothing after) still loads, with 3.1.1 options.
    #[test]
    fn format_1_session_records_still_load() {
        let mut body = vec![0u8];
        put_bytes(&mut body, b"old-client");
        put_opt_bytes(&mut body, None);
        body.push(0);
        body.extend_from_slice(&1u32.to_be_bytes());
        put_bytes(&mut body, b"a/#");
        body.push(1);
        let s = decode_session(&seal(&body)).expect("format 1 loads");
        assert_eq!(s.client_id, "old-client");
        assert_eq!(
            s.subscriptions,
            [("a/#".to_string(), Subscription::from(QoS::AtLeastOnce))]
        );
        assert_eq!(s.expiry, None);
        // Unknown option bits are refused, not guessed.
        let mut bad = body.clone();
        bad.extend_from_slice(&[SESSION_FORMAT, 0x40, 0, 0]);
        assert!(decode_session(&seal(&bad)).is_err());
        // Format 2 (options, identifiers, expiry; no will) still loads.
        let mut v2 = body.clone();
        v2.extend_from_slice(&[2, 0b101, 0, 1, 0, 0, 0, 60]);
        let s = decode_session(&seal(&v2)).expect("format 2 loads");
        assert_eq!((s.expiry, s.will), (Some(60), None));
        assert!(s.subscriptions[0].1.options.no_local);
    }

    /// A message record written before message expiry was stored (format
    /// 1: the message, nothing after) still loads, with no arrival time.
    #[test]
    fn format_1_message_records_still_load() {
        let m = Message::new("a/b", "old", QoS::AtLeastOnce, true);
        let mut body = Vec::new();
        put_message(&mut body, &m);
        let (back, arrived) = decode_message(&seal(&body)).expect("format 1 loads");
        assert_eq!((back, arrived), (m, None));
        body.push(9);
        assert!(decode_message(&seal(&body)).is_err(), "unknown format");
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
