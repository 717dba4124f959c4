//! One spooled message on disk, in the store's record codec
//! ([`crate::store::record`]: version, CRC-32 over the body, bounds-checked
//! reads), so a damaged record is recognised on read (and skipped, counted),
//! never trusted and never a panic.
//!
//! Body: `received_ms u64 | visited u64 | message` (the message with every
//! MQTT 5 property, as [`put_message`] writes it).
//!
//! A spool writes the records a dispatcher turn took for a pipe as one
//! *block*, one store entry keyed by its first sequence number:
//! `[BLOCK u8][count u32][len u32, record]*`, each record with its own
//! version and CRC, so damage costs only the records it touches (and, if
//! it hits a length, the rest of that block). A value that is a single
//! record (the format before blocks) reads as a block of one.

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

/// First byte of a block value (a single record starts with its version,
/// 1).
pub const BLOCK: u8 = 0xB1;
/// Bytes of a block's header: the marker and the count.
const BLOCK_HEADER: usize = 5;
/// The fewest bytes one record takes in a block (its length and the
/// record's own header): bounds the count a damaged header can claim.
const MIN_ENTRY: usize = 4 + 5;

/// Appends encoded records to a block value; [`Block::finish`] returns it.
#[derive(Debug)]
pub struct Block {
    out: Vec<u8>,
    count: u32,
}

impl Block {
    /// An empty block.
    pub fn new() -> Self {
        let mut out = Vec::with_capacity(512);
        out.push(BLOCK);
        out.extend_from_slice(&[0; BLOCK_HEADER - 1]);
        Block { out, count: 0 }
    }

    /// Adds one record (bytes from [`encode`]). Records longer than
    /// `u32::MAX` never reach a spool (MQTT packets are smaller).
    pub fn push(&mut self, record: &[u8]) {
        let len = u32::try_from(record.len()).unwrap_or(u32::MAX);
        self.out.extend_from_slice(&len.to_be_bytes());
        self.out.extend_from_slice(record);
        self.count += 1;
    }

    /// Records added so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// The value to store.
    pub fn finish(mut self) -> Vec<u8> {
        if let Some(field) = self.out.get_mut(1..BLOCK_HEADER) {
            field.copy_from_slice(&self.count.to_be_bytes());
        }
        self.out
    }
}

impl Default for Block {
    fn default() -> Self {
        Block::new()
    }
}

/// One entry of a stored value: the record's encoded length and the record
/// (or why it is damaged).
pub type Entry = (u64, Result<Record, RecordError>);

/// The records of a stored value, in sequence order: `count` of them (the
/// count the value claims), of which `entries` could be framed; entries
/// missing at the end (a damaged length) are damaged too. An error means
/// not even the count can be trusted.
pub fn decode_value(bytes: &[u8]) -> Result<(u64, Vec<Entry>), RecordError> {
    if bytes.first() != Some(&BLOCK) {
        return Ok((1, vec![(bytes.len() as u64, decode(bytes))]));
    }
    let count = bytes
        .get(1..BLOCK_HEADER)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(RecordError::Truncated)?;
    let mut rest = bytes.get(BLOCK_HEADER..).unwrap_or_default();
    if count == 0 || count as usize > rest.len() / MIN_ENTRY {
        return Err(RecordError::Malformed("block count"));
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let Some((len, tail)) = rest.split_at_checked(4) else {
            break;
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some((record, tail)) = tail.split_at_checked(len) else {
            break;
        };
        entries.push((len as u64, decode(record)));
        rest = tail;
    }
    Ok((u64::from(count), entries))
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

    #[test]
    fn a_block_holds_records_in_order_and_damage_stays_local() {
        let recs: Vec<Record> = (0..3u64)
            .map(|i| Record {
                received_ms: i,
                ..sample()
            })
            .collect();
        let encoded: Vec<Vec<u8>> = recs.iter().map(encode).collect();
        let mut block = Block::new();
        for e in &encoded {
            block.push(e);
        }
        assert_eq!(block.len(), 3);
        let bytes = block.finish();
        let (count, entries) = decode_value(&bytes).expect("block");
        assert_eq!(count, 3);
        let got: Vec<_> = entries.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(got, recs.iter().cloned().map(Ok).collect::<Vec<_>>());
        assert_eq!(entries[1].0, encoded[1].len() as u64);

        // A flipped bit inside the second record: only it is damaged.
        let mut flipped = bytes.clone();
        let at = BLOCK_HEADER + 4 + encoded[0].len() + 4 + 10;
        flipped[at] ^= 0x40;
        let (_, entries) = decode_value(&flipped).expect("block");
        assert!(entries[0].1.is_ok() && entries[1].1.is_err() && entries[2].1.is_ok());

        // Cut inside the last record: the first two survive; the count
        // stays, so the third is known to be missing.
        let (count, entries) = decode_value(&bytes[..bytes.len() - 3]).expect("block");
        assert_eq!((count, entries.len()), (3, 2));
        assert!(entries.iter().all(|(_, r)| r.is_ok()));

        // A single record (the format before blocks) reads as a block of one.
        let (count, entries) = decode_value(&encoded[0]).expect("single");
        assert_eq!((count, entries.len()), (1, 1));
        assert_eq!(entries[0].1, Ok(recs[0].clone()));

        // A count no value of this size can hold is refused, not trusted.
        let mut huge = bytes.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_value(&huge).is_err());
        assert!(decode_value(&[BLOCK, 0, 0]).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let mut block = vec![BLOCK];
            block.extend_from_slice(&bytes);
            if let Ok((count, entries)) = decode_value(&block) {
                prop_assert!(entries.len() as u64 <= count);
            }
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
