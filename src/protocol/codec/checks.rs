//! The checks rumqttc's v4 codec does not make: on the fixed header (before
//! the packet is buffered), on the raw frame (before rumqttc parses it) and
//! on the parsed packet; plus the outgoing checks.

use rumqttc::mqttbytes::{self, v4::Packet};

use super::CodecError;
use crate::topic;

/// Longest MQTT string or binary field: its length prefix is a `u16`.
pub const MAX_STRING_LEN: usize = u16::MAX as usize;

/// A parsed fixed header.
#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
    /// First byte: packet type and flags.
    pub byte1: u8,
    /// Length of the fixed header (2..=5).
    pub header_len: usize,
    /// Remaining length as announced.
    pub remaining_len: usize,
}

impl Header {
    /// Total frame length.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Reads the fixed header without consuming; `None` when incomplete.
pub(super) fn peek_fixed_header(buf: &[u8]) -> Result<Option<Header>, CodecError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let mut remaining_len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining_len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(Header {
                byte1,
                header_len: 2 + i,
                remaining_len,
            }));
        }
    }
    Err(CodecError::MalformedRemainingLength)
}

/// Packet type and reserved flag bits (MQTT 3.1.1 table 2.2).
pub(super) fn check_flags(byte1: u8) -> Result<(), CodecError> {
    let packet_type = byte1 >> 4;
    let flags = byte1 & 0x0f;
    let bad = || CodecError::InvalidFlags { packet_type, flags };
    match packet_type {
        0 | 15 => Err(CodecError::InvalidPacketType(packet_type)),
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                Err(CodecError::InvalidQoS(qos))
            } else if qos == 0 && flags & 0b1000 != 0 {
                Err(CodecError::DupOnQos0)
            } else {
                Ok(())
            }
        }
        6 | 8 | 10 if flags == 0b0010 => Ok(()),
        6 | 8 | 10 => Err(bad()),
        _ if flags == 0 => Ok(()),
        _ => Err(bad()),
    }
}

/// Takes a `u16` from the front of `r`.
fn take_u16(r: &mut &[u8]) -> Option<u16> {
    let (head, rest) = r.split_first_chunk::<2>()?;
    *r = rest;
    Some(u16::from_be_bytes(*head))
}

/// Takes `n` bytes from the front of `r`.
fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let head = r.get(..n)?;
    *r = r.get(n..)?;
    Some(head)
}

/// What [`check_raw`] found out about a frame that [`super::decode`] needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Raw {
    /// Hand the frame to rumqttc as it is.
    AsIs,
    /// An MQTT 3.1 CONNECT (`MQIsdp`, level 3): rumqttc only parses `MQTT`,
    /// so the frame is rewritten to the 3.1.1 header first (the rest of a
    /// 3.1 CONNECT has the 3.1.1 layout).
    Mqtt31Connect,
}

/// Checks on the raw variable header and payload (`body`) of a complete
/// frame, before rumqttc parses it. A structure too short to inspect is
/// left for rumqttc to report as malformed.
pub(super) fn check_raw(packet_type: u8, body: &[u8]) -> Result<Raw, CodecError> {
    if packet_type == 1 {
        return check_connect_header(body);
    }
    check_raw_other(packet_type, body).map(|()| Raw::AsIs)
}

/// [`check_raw`] for every packet type but CONNECT.
fn check_raw_other(packet_type: u8, body: &[u8]) -> Result<(), CodecError> {
    let exact = |packet: &'static str, want: usize| {
        if body.len() == want {
            Ok(())
        } else {
            Err(CodecError::InvalidRemainingLength {
                packet,
                len: body.len(),
            })
        }
    };
    match packet_type {
        2 => {
            exact("CONNACK", 2)?;
            match body.first() {
                Some(&f) if f & 0xfe != 0 => Err(CodecError::InvalidConnAckFlags(f)),
                _ => Ok(()),
            }
        }
        4 => exact("PUBACK", 2),
        5 => exact("PUBREC", 2),
        6 => exact("PUBREL", 2),
        7 => exact("PUBCOMP", 2),
        8 => check_subscribe_options(body),
        11 => exact("UNSUBACK", 2),
        12 => exact("PINGREQ", 0),
        13 => exact("PINGRESP", 0),
        14 => exact("DISCONNECT", 0),
        _ => Ok(()),
    }
}

/// Protocol name and level, reserved flag, password without user name.
/// MQTT 3.1 (`MQIsdp`, level 3) is accepted: its CONNECT differs from
/// 3.1.1 only in the name and level (3.1 also limits client ids to 23
/// characters, which brokers, Mosquitto included, do not enforce).
fn check_connect_header(body: &[u8]) -> Result<Raw, CodecError> {
    let mut r = body;
    let Some(name_len) = take_u16(&mut r) else {
        return Ok(Raw::AsIs);
    };
    let Some(name) = take(&mut r, usize::from(name_len)) else {
        return Ok(Raw::AsIs);
    };
    let Some(level) = take(&mut r, 1).and_then(|b| b.first().copied()) else {
        return Ok(Raw::AsIs);
    };
    let raw = match (name, level) {
        (b"MQTT", 4) => Raw::AsIs,
        (b"MQIsdp", 3) => Raw::Mqtt31Connect,
        (b"MQTT" | b"MQIsdp", level) => {
            return Err(CodecError::UnsupportedProtocolLevel(level));
        }
        _ => return Err(CodecError::InvalidProtocolName),
    };
    let Some(&flags) = r.first() else {
        return Ok(raw);
    };
    if flags & 0b1 != 0 {
        return Err(CodecError::InvalidConnectFlags("reserved bit set"));
    }
    if flags & 0x40 != 0 && flags & 0x80 == 0 {
        return Err(CodecError::InvalidConnectFlags(
            "password without user name",
        ));
    }
    check_connect_length(r.get(1..).unwrap_or_default(), flags).map(|()| raw)
}

/// The 3.1.1 variable-header start that replaces 3.1's `MQIsdp`, level 3.
const MQTT_311_NAME_LEVEL: &[u8] = b"\x00\x04MQTT\x04";
/// Length of 3.1's `\0\x06MQIsdp\x03`.
const MQISDP_NAME_LEVEL_LEN: usize = 9;

/// Rewrites a 3.1 CONNECT `body` (checked by [`check_connect_header`]) as
/// a complete 3.1.1 CONNECT frame.
pub(super) fn mqtt31_connect_as_311(body: &[u8]) -> Result<bytes::BytesMut, CodecError> {
    let rest = body
        .get(MQISDP_NAME_LEVEL_LEN..)
        .ok_or(CodecError::Malformed(mqttbytes::Error::MalformedPacket))?;
    let remaining = MQTT_311_NAME_LEVEL.len() + rest.len();
    let mut frame = bytes::BytesMut::with_capacity(5 + remaining);
    frame.extend_from_slice(&[0x10]);
    let mut x = remaining;
    loop {
        let byte = (x % 128) as u8;
        x /= 128;
        if x == 0 {
            frame.extend_from_slice(&[byte]);
            break;
        }
        frame.extend_from_slice(&[byte | 0x80]);
    }
    frame.extend_from_slice(MQTT_311_NAME_LEVEL);
    frame.extend_from_slice(rest);
    Ok(frame)
}

/// Walks the rest of a CONNECT (keepalive, client id, will, user name,
/// password) and refuses bytes after the last field, which rumqttc ignores.
/// A structure that ends early is left for rumqttc to report.
fn check_connect_length(mut r: &[u8], flags: u8) -> Result<(), CodecError> {
    if take_u16(&mut r).is_none() {
        return Ok(());
    }
    let fields = 1
        + 2 * usize::from(flags & 0x04 != 0)
        + usize::from(flags & 0x80 != 0)
        + usize::from(flags & 0x40 != 0);
    for _ in 0..fields {
        let Some(len) = take_u16(&mut r) else {
            return Ok(());
        };
        if take(&mut r, usize::from(len)).is_none() {
            return Ok(());
        }
    }
    if r.is_empty() {
        Ok(())
    } else {
        Err(CodecError::InvalidRemainingLength {
            packet: "CONNECT",
            len: r.len(),
        })
    }
}

/// Reserved bits of each requested-QoS byte (rumqttc masks them away).
fn check_subscribe_options(body: &[u8]) -> Result<(), CodecError> {
    let mut r = body;
    if take_u16(&mut r).is_none() {
        return Ok(());
    }
    while !r.is_empty() {
        let Some(len) = take_u16(&mut r) else {
            return Ok(());
        };
        if take(&mut r, usize::from(len)).is_none() {
            return Ok(());
        }
        let Some(&options) = r.first() else {
            return Ok(());
        };
        if options & 0xfc != 0 {
            return Err(CodecError::InvalidSubscribeOptions(options));
        }
        r = r.get(1..).unwrap_or_default();
    }
    Ok(())
}

/// Whether `topic` may be published to: non-empty, no `+`/`#`, no NUL, at
/// most 65,535 bytes (MQTT-3.3.2-2, MQTT-4.7.3-1, MQTT-1.5.3-2).
pub fn topic_name_is_valid(topic: &str) -> bool {
    topic::validate_topic_name(topic).is_ok()
}

/// Whether `filter` is a valid topic filter (wildcards as whole levels, `#`
/// last, non-empty, no NUL, at most 65,535 bytes). The decoder does not
/// reject SUBSCRIBE for invalid filters: the broker answers 0x80 for each
/// filter this returns false for.
pub fn filter_is_valid(filter: &str) -> bool {
    topic::validate_filter(filter).is_ok()
}

fn check_topic_name(topic: &str) -> Result<(), CodecError> {
    topic::validate_topic_name(topic).map_err(CodecError::InvalidTopicName)
}

fn no_nul(s: &str, what: &'static str) -> Result<(), CodecError> {
    if s.contains('\0') {
        Err(CodecError::NulInString(what))
    } else {
        Ok(())
    }
}

/// Checks on a packet rumqttc parsed.
pub(super) fn check_decoded(packet: &Packet) -> Result<(), CodecError> {
    match packet {
        Packet::Publish(p) => check_topic_name(&p.topic),
        Packet::Connect(c) => {
            no_nul(&c.client_id, "client id")?;
            if let Some(will) = &c.last_will {
                check_topic_name(&will.topic)?;
            }
            if let Some(login) = &c.login {
                no_nul(&login.username, "user name")?;
            }
            Ok(())
        }
        Packet::Subscribe(s) => {
            if s.pkid == 0 {
                return Err(CodecError::PacketIdZero("SUBSCRIBE"));
            }
            s.filters
                .iter()
                .try_for_each(|f| no_nul(&f.path, "topic filter"))
        }
        Packet::Unsubscribe(u) => {
            if u.pkid == 0 {
                return Err(CodecError::PacketIdZero("UNSUBSCRIBE"));
            }
            if u.topics.is_empty() {
                return Err(CodecError::NoFilters("UNSUBSCRIBE"));
            }
            u.topics.iter().try_for_each(|f| no_nul(f, "topic filter"))
        }
        _ => Ok(()),
    }
}

fn max_len(field: &'static str, len: usize) -> Result<(), CodecError> {
    if len > MAX_STRING_LEN {
        Err(CodecError::StringTooLong { field, len })
    } else {
        Ok(())
    }
}

/// Refuses what rumqttc would encode wrongly or what our own decoder (and
/// any conforming peer) would reject.
pub(super) fn check_outgoing(packet: &Packet) -> Result<(), CodecError> {
    match packet {
        Packet::Publish(p) => {
            max_len("topic", p.topic.len())?;
            check_topic_name(&p.topic)?;
            if p.qos == mqttbytes::QoS::AtMostOnce {
                if p.dup {
                    return Err(CodecError::DupOnQos0);
                }
            } else if p.pkid == 0 {
                return Err(CodecError::PacketIdZero("PUBLISH"));
            }
            Ok(())
        }
        Packet::Connect(c) => {
            if c.protocol != mqttbytes::Protocol::V4 {
                return Err(CodecError::Unencodable("CONNECT other than MQTT 3.1.1"));
            }
            max_len("client id", c.client_id.len())?;
            if let Some(will) = &c.last_will {
                max_len("will topic", will.topic.len())?;
                check_topic_name(&will.topic)?;
                max_len("will payload", will.message.len())?;
            }
            if let Some(login) = &c.login {
                max_len("user name", login.username.len())?;
                max_len("password", login.password.len())?;
                if login.username.is_empty() && !login.password.is_empty() {
                    return Err(CodecError::Unencodable("password without user name"));
                }
            }
            Ok(())
        }
        Packet::Subscribe(s) => {
            if s.pkid == 0 {
                return Err(CodecError::PacketIdZero("SUBSCRIBE"));
            }
            if s.filters.is_empty() {
                return Err(CodecError::NoFilters("SUBSCRIBE"));
            }
            s.filters
                .iter()
                .try_for_each(|f| max_len("topic filter", f.path.len()))
        }
        Packet::Unsubscribe(u) => {
            if u.pkid == 0 {
                return Err(CodecError::PacketIdZero("UNSUBSCRIBE"));
            }
            if u.topics.is_empty() {
                return Err(CodecError::NoFilters("UNSUBSCRIBE"));
            }
            u.topics
                .iter()
                .try_for_each(|f| max_len("topic filter", f.len()))
        }
        Packet::SubAck(s) if s.return_codes.is_empty() => {
            Err(CodecError::Unencodable("SUBACK without return codes"))
        }
        _ => Ok(()),
    }
}
