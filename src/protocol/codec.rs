//! Thin adapter over `rumqttc::mqttbytes::v4`: we do not hand-write a codec,
//! we add the MQTT 3.1.1 checks rumqttc 0.25 lacks and map to [`Message`].
//!
//! What rumqttc already rejects (and we only wrap): remaining length over the
//! limit (checked from the fixed header, before the packet is buffered), a
//! malformed remaining length, unknown packet types, PUBLISH QoS 3, PUBLISH
//! QoS>0 with packet id 0, non UTF-8 strings, SUBSCRIBE without filters,
//! will QoS/retain without the will flag, bad SUBACK/CONNACK codes.
//!
//! What we add on decode: reserved fixed-header flag bits per packet type,
//! DUP on a QoS 0 PUBLISH, PUBLISH topic names with wildcards, NUL or empty,
//! NUL in any string, CONNECT protocol name/level (MQTT 3.1, `MQIsdp`
//! level 3, is accepted: rumqttc refuses the name, so its frame is
//! rewritten to the identical 3.1.1 layout and decodes as level 4), CONNECT
//! reserved flag and password-without-username,
//! SUBSCRIBE option reserved bits, SUBSCRIBE/UNSUBSCRIBE packet id 0,
//! UNSUBSCRIBE without filters, exact remaining length of fixed-size packets,
//! CONNACK reserved flags, and a maximum on the *whole* packet size.
//! Per-filter validity of SUBSCRIBE is left to the broker (it answers 0x80):
//! see [`filter_is_valid`].
//!
//! What we add on encode: strings over 65,535 bytes (rumqttc truncates the
//! length prefix silently), packets over the peer's maximum, packet id 0,
//! invalid PUBLISH topics, empty SUBSCRIBE/UNSUBSCRIBE, a CONNECT that is not
//! level 4, a password without a user name. A failed encode leaves the buffer
//! as it was. Works around rumqttc writing CONNECT flags at an absolute
//! buffer index (corrupt output when the buffer is not empty).

mod checks;
#[cfg(test)]
mod encode_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use bytes::{BufMut, BytesMut};
use rumqttc::mqttbytes::{self, v4::Packet, v4::Publish};

use super::message::{Message, QoS};

pub use checks::{MAX_STRING_LEN, filter_is_valid, topic_name_is_valid};

/// Writes an MQTT variable byte integer (remaining length, property
/// lengths; shortest form) at the end of `out`.
pub(crate) fn put_vbi(out: &mut BytesMut, mut x: usize) {
    loop {
        let b = (x % 128) as u8;
        x /= 128;
        if x == 0 {
            out.put_u8(b);
            return;
        }
        out.put_u8(b | 0x80);
    }
}

/// Why a packet could not be decoded, encoded, read or written. Every
/// variant closes the connection it happened on (and only that one).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer closed the connection cleanly between packets.
    #[error("connection closed by peer")]
    Closed,
    /// The peer closed the connection in the middle of a packet.
    #[error("connection closed mid-packet ({buffered} bytes buffered)")]
    ClosedMidPacket {
        /// Bytes of the incomplete packet that had arrived.
        buffered: usize,
    },
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// An incoming packet announced a size over our maximum (nothing was buffered).
    #[error("incoming packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Total announced packet size (fixed header included).
        size: usize,
        /// Our maximum.
        max: usize,
    },
    /// An outgoing packet is larger than the peer accepts.
    #[error("outgoing packet of {size} bytes exceeds the peer's maximum of {max}")]
    OutgoingTooLarge {
        /// Encoded size.
        size: usize,
        /// The peer's maximum.
        max: usize,
    },
    /// The remaining length uses more than 4 bytes.
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    /// Packet type 0 or 15.
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// Reserved fixed-header flag bits are not what the spec requires.
    #[error("invalid fixed header flags {flags:#06b} for packet type {packet_type}")]
    InvalidFlags {
        /// Packet type (upper nibble).
        packet_type: u8,
        /// The flag nibble as received.
        flags: u8,
    },
    /// PUBLISH with QoS bits 0b11.
    #[error("invalid QoS {0}")]
    InvalidQoS(u8),
    /// PUBLISH QoS 0 with DUP set (MQTT-3.3.1-2).
    #[error("DUP set on a QoS 0 PUBLISH")]
    DupOnQos0,
    /// A PUBLISH (or will) topic name that is empty, has wildcards or NUL.
    #[error("invalid topic name: {0}")]
    InvalidTopicName(crate::topic::TopicError),
    /// A string with U+0000 (MQTT-1.5.3-2).
    #[error("NUL character in {0}")]
    NulInString(&'static str),
    /// A packet id of 0 where a non-zero id is required (MQTT-2.3.1-1).
    #[error("packet id 0 in {0}")]
    PacketIdZero(&'static str),
    /// CONNECT `MQTT` with a level other than 4, or `MQIsdp` with a level
    /// other than 3; a broker answers CONNACK 0x01.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    /// CONNECT with an unknown protocol name; close without CONNACK (MQTT-3.1.2-1).
    #[error("invalid protocol name")]
    InvalidProtocolName,
    /// CONNECT flags: reserved bit set, or password without user name.
    #[error("invalid CONNECT flags: {0}")]
    InvalidConnectFlags(&'static str),
    /// CONNACK with reserved acknowledge flags set.
    #[error("invalid CONNACK flags {0:#04x}")]
    InvalidConnAckFlags(u8),
    /// SUBSCRIBE requested-QoS byte with reserved bits (MQTT-3.8.3-4).
    #[error("invalid SUBSCRIBE options byte {0:#04x}")]
    InvalidSubscribeOptions(u8),
    /// SUBSCRIBE or UNSUBSCRIBE without any filter (MQTT-3.8.3-3, 3.10.3-2).
    #[error("{0} without filters")]
    NoFilters(&'static str),
    /// A fixed-size packet with the wrong remaining length.
    #[error("{packet} with remaining length {len}")]
    InvalidRemainingLength {
        /// Packet name.
        packet: &'static str,
        /// Remaining length received.
        len: usize,
    },
    /// Outgoing string or binary field over 65,535 bytes.
    #[error("{field} is {len} bytes, over the 65,535 byte limit")]
    StringTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// An outgoing packet we refuse to produce (caller bug or bad input).
    #[error("cannot encode: {0}")]
    Unencodable(&'static str),
    /// rumqttc rejected the bytes.
    #[error("malformed packet: {0}")]
    Malformed(#[source] mqttbytes::Error),
}

impl CodecError {
    /// True when a broker should answer CONNACK 0x01 (unacceptable protocol
    /// version) before closing: a protocol level we do not speak.
    pub fn is_unsupported_protocol_version(&self) -> bool {
        matches!(self, CodecError::UnsupportedProtocolLevel(_))
    }
}

impl From<mqttbytes::Error> for CodecError {
    fn from(e: mqttbytes::Error) -> Self {
        match e {
            mqttbytes::Error::InvalidQoS(q) => CodecError::InvalidQoS(q),
            mqttbytes::Error::PacketIdZero => CodecError::PacketIdZero("PUBLISH"),
            mqttbytes::Error::EmptySubscription => CodecError::NoFilters("SUBSCRIBE"),
            mqttbytes::Error::MalformedRemainingLength => CodecError::MalformedRemainingLength,
            mqttbytes::Error::InvalidPacketType(t) => CodecError::InvalidPacketType(t),
            other => CodecError::Malformed(other),
        }
    }
}

/// Most [`decode`] reserves at once for an incomplete frame; the rest grows
/// as bytes actually arrive.
const MAX_RESERVE: usize = 64 * 1024;

/// Decodes one packet from the front of `buf`.
///
/// `Ok(None)` means "need more bytes": `buf` is left untouched, except that
/// up to 64 KiB of capacity towards the announced frame is reserved.
/// `max_packet_size` is the largest *total* packet size we accept; a packet
/// announcing more than that fails from its fixed header alone, before
/// anything is buffered. On `Ok(Some)` and on a content error the frame is
/// consumed; after any error the connection must be closed.
pub fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Packet>, CodecError> {
    // Type and flags are known from the first byte: fail before waiting for more.
    if let Some(&byte1) = buf.first() {
        checks::check_flags(byte1)?;
    }
    let Some(header) = checks::peek_fixed_header(buf)? else {
        return Ok(None);
    };
    let frame_len = header.frame_len();
    if frame_len > max_packet_size {
        return Err(CodecError::PacketTooLarge {
            size: frame_len,
            max: max_packet_size,
        });
    }
    if buf.len() < frame_len {
        // Reserve towards the frame, but never more than a chunk at a time:
        // a header alone must not make us allocate a large maximum.
        buf.reserve((frame_len - buf.len()).min(MAX_RESERVE));
        return Ok(None);
    }
    let mut frame = buf.split_to(frame_len);
    let body = frame.get(header.header_len..).unwrap_or_default();
    if checks::check_raw(header.byte1 >> 4, body)? == checks::Raw::Mqtt31Connect {
        frame = checks::mqtt31_connect_as_311(body)?;
    }
    let frame_len = frame.len();
    // `frame` holds exactly one packet, so rumqttc cannot ask for more bytes.
    let packet = match Packet::read(&mut frame, frame_len) {
        Ok(p) => p,
        Err(mqttbytes::Error::InsufficientBytes(_)) => {
            return Err(CodecError::Malformed(mqttbytes::Error::MalformedPacket));
        }
        Err(e) => return Err(e.into()),
    };
    checks::check_decoded(&packet)?;
    Ok(Some(packet))
}

/// Encodes `packet` at the end of `buf`, refusing what rumqttc would encode
/// wrongly (see the module docs) and packets over `max_packet_size` bytes
/// (the peer's maximum total packet size). On error `buf` is unchanged.
pub fn encode(
    packet: &Packet,
    buf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<(), CodecError> {
    checks::check_outgoing(packet)?;
    let size = packet.size();
    if size > max_packet_size {
        return Err(CodecError::OutgoingTooLarge {
            size,
            max: max_packet_size,
        });
    }
    let start = buf.len();
    let written = if matches!(packet, Packet::Connect(_)) {
        // rumqttc's `Connect::write` patches its flags byte at an absolute
        // index, corrupting the output unless the buffer starts empty.
        let mut scratch = BytesMut::with_capacity(size);
        packet
            .write(&mut scratch, usize::MAX)
            .map(|_| buf.extend_from_slice(&scratch))
    } else {
        packet.write(buf, usize::MAX).map(drop)
    };
    if let Err(e) = written {
        buf.truncate(start);
        return Err(e.into());
    }
    let written = buf.len() - start;
    if written > max_packet_size {
        buf.truncate(start);
        return Err(CodecError::OutgoingTooLarge {
            size: written,
            max: max_packet_size,
        });
    }
    Ok(())
}

impl From<QoS> for mqttbytes::QoS {
    fn from(q: QoS) -> Self {
        match q {
            QoS::AtMostOnce => mqttbytes::QoS::AtMostOnce,
            QoS::AtLeastOnce => mqttbytes::QoS::AtLeastOnce,
            QoS::ExactlyOnce => mqttbytes::QoS::ExactlyOnce,
        }
    }
}

impl From<mqttbytes::QoS> for QoS {
    fn from(q: mqttbytes::QoS) -> Self {
        match q {
            mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
            mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
            mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
        }
    }
}

/// Builds the v4 PUBLISH for `message` with packet id `pkid` (ignored and
/// set to 0 for QoS 0) and the given DUP flag (forced off for QoS 0).
/// MQTT 5 properties are dropped: 3.1.1 has nowhere to put them.
pub fn publish_from_message(message: &Message, pkid: u16, dup: bool) -> Publish {
    let qos0 = message.qos == QoS::AtMostOnce;
    Publish {
        dup: dup && !qos0,
        qos: message.qos.into(),
        retain: message.retain,
        topic: message.topic.as_str().to_owned(),
        pkid: if qos0 { 0 } else { pkid },
        payload: message.payload.clone(),
    }
}

/// Maps a decoded PUBLISH to a [`Message`] (QoS, retain and DUP as received).
/// rumqttc 0.25's `Publish::topic` is a `String`, already checked as UTF-8
/// by its decoder; [`decode`] additionally refused wildcards, NUL and empty
/// topics.
pub fn message_from_publish(publish: Publish) -> Message {
    Message {
        topic: publish.topic.into(),
        payload: publish.payload,
        qos: publish.qos.into(),
        retain: publish.retain,
        dup: publish.dup,
        properties: None,
    }
}
