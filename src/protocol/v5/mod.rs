//! Thin adapter over `rumqttc::v5::mqttbytes::v5`, as [`super::codec`] is
//! over the v4 codec: we do not hand-write a codec, we add the MQTT 5.0
//! checks rumqttc 0.25 lacks, fix what it encodes wrongly, and name the
//! reason code to answer with ([`V5Error::reason_code`]).
//!
//! What rumqttc 0.25's v5 codec gets wrong or lets through, and what this
//! adapter does about it (the statement each check enforces is on its
//! [`Violation`]):
//! - **Accepted but forbidden, now refused on decode**: reserved
//!   fixed-header flags (it only checks them on DISCONNECT); DUP on QoS 0;
//!   non-shortest variable byte integers; a property that must appear once
//!   appearing twice (it keeps the last); U+0000 in any string; PUBLISH and
//!   will topics that are not UTF-8 (they are raw `Bytes` there) or contain
//!   wildcards; an empty topic without a topic alias; topic alias 0;
//!   subscription identifier 0; receive maximum 0; maximum packet size 0;
//!   flag properties (payload format indicator, request problem/response
//!   information, maximum QoS, the availability flags) other than 0/1;
//!   authentication data without a method; a response topic with
//!   wildcards; packet id 0 on acks, SUBSCRIBE and UNSUBSCRIBE; SUBSCRIBE
//!   option reserved bits; no local on a shared subscription; UNSUBSCRIBE
//!   without filters; SUBACK/UNSUBACK without codes; CONNECT reserved flag;
//!   CONNACK reserved flags and session present with a failure; trailing
//!   bytes after the last field; packets in the wrong direction
//!   ([`Sender`]): a subscription identifier on a client's PUBLISH, a
//!   server's DISCONNECT with a session expiry interval or reason 0x04,
//!   CONNECT/SUBSCRIBE from a server, CONNACK/SUBACK from a client.
//! - **Refused by rumqttc too, but untyped**: property ids a packet may not
//!   carry and reason codes a packet may not carry come back as
//!   `InvalidPropertyType`/`InvalidConnectReturnCode` whatever the packet;
//!   here they are [`Violation`]s with their reason code (0x81, 0x82).
//! - **Valid but refused by rumqttc, now decoded**: DISCONNECT and AUTH
//!   with remaining length 0 (it demands a body) or 1 (a reason code
//!   without properties: it demands the property length), and AUTH at all
//!   (its `Packet::read` stops at type 14; its AUTH property reader and
//!   size skip the string length prefixes, so AUTH properties are read
//!   and written here).
//! - **Decoded wrongly, now read right**: a PUBLISH's subscription
//!   identifiers (it counts each one byte longer than it is, so with two or
//!   more its property loop can stop early and read the properties after
//!   them as payload): the frame goes to rumqttc without them and they are
//!   put back (`parse_with_subscription_ids`).
//! - **Encoded wrongly, now refused or written here**: strings and binary
//!   fields over 65,535 bytes (it truncates the length prefix silently);
//!   a DISCONNECT with a reason but no properties (it writes a stray byte
//!   after the packet, corrupting the stream) or with empty properties (it
//!   drops the reason); CONNECT flags patched at an absolute buffer index
//!   (corrupt unless the buffer is empty); a CONNACK with one of the
//!   3.1.1-only codes its enum shares (0x01-0x03) reaches an
//!   `unreachable!()` in its writer. Every encoded packet is run
//!   through the decode checks, so we never send what we would refuse.
//! - **Left as is, documented**: the CONNECT password is binary data in
//!   MQTT 5 but rumqttc reads and writes it as a UTF-8 string, so a
//!   non-UTF-8 password is refused as malformed; rumqttc cannot tell an
//!   empty user name from an absent one.
//!
//! `PayloadTooLarge` is decided from the fixed header alone, before the
//! packet is buffered (answer DISCONNECT 0x95) [MQTT-3.2.2-15]; the
//! largest remaining length, 268,435,455, follows from the 4-byte limit.

mod auth;
mod error;
mod lengths;
mod raw;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::{
    self,
    v5::{ConnectReturnCode, DisconnectReasonCode, Packet},
};

pub use error::{V5Error, Violation};
pub use raw::Sender;

/// The rumqttc MQTT 5 packet types our adapter decodes into and encodes from.
pub use rumqttc::v5::mqttbytes::v5 as packets;

/// Most [`decode`] reserves at once for an incomplete frame.
const MAX_RESERVE: usize = 64 * 1024;

/// A parsed fixed header.
#[derive(Debug, Clone, Copy)]
struct Header {
    byte1: u8,
    header_len: usize,
    remaining_len: usize,
}

/// Reads the fixed header without consuming; `None` when incomplete.
fn peek_header(buf: &[u8]) -> Result<Option<Header>, V5Error> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let rest = buf.get(1..buf.len().min(5)).unwrap_or_default();
    // An incomplete length is "need more"; a complete one must be well-formed.
    if rest.len() < 4 && rest.iter().all(|b| b & 0x80 != 0) {
        return Ok(None);
    }
    let mut r = raw::Reader::new(rest);
    let remaining_len = r.vbi()? as usize;
    Ok(Some(Header {
        byte1,
        header_len: 1 + rest.len() - r.remaining(),
        remaining_len,
    }))
}

/// Decodes one MQTT 5 packet from the front of `buf`, sent by `sender`.
///
/// `Ok(None)` means "need more bytes" (`buf` untouched but for a bounded
/// reserve). A frame over `max_packet_size` (total size) fails from its
/// fixed header alone. On `Ok(Some)` and on a content error the frame is
/// consumed; after any error the connection is closed, after a DISCONNECT
/// with [`V5Error::reason_code`] (CONNACK with it on the CONNECT).
pub fn decode(
    buf: &mut BytesMut,
    max_packet_size: usize,
    sender: Sender,
) -> Result<Option<Packet>, V5Error> {
    Ok(decode_boxed(buf, max_packet_size, sender)?.map(|p| *p))
}

/// [`decode`], the packet boxed as it leaves rumqttc's reader: its packets
/// are several hundred bytes, and a hot path that keeps them boxed moves a
/// pointer through each layer instead of copying the packet.
pub fn decode_boxed(
    buf: &mut BytesMut,
    max_packet_size: usize,
    sender: Sender,
) -> Result<Option<Box<Packet>>, V5Error> {
    if let Some(&byte1) = buf.first() {
        raw::check_flags(byte1)?;
    }
    let Some(h) = peek_header(buf)? else {
        return Ok(None);
    };
    let frame_len = h.header_len + h.remaining_len;
    if frame_len > max_packet_size {
        return Err(V5Error::PacketTooLarge {
            size: frame_len,
            max: max_packet_size,
        });
    }
    if buf.len() < frame_len {
        buf.reserve((frame_len - buf.len()).min(MAX_RESERVE));
        return Ok(None);
    }
    let frame = buf.split_to(frame_len);
    let body = frame.get(h.header_len..).unwrap_or_default();
    let checked = raw::check_body(h.byte1, body, sender)?;
    parse(h, frame, checked).map(Some)
}

/// Hands a checked frame to rumqttc, around its gaps (see module docs).
fn parse(h: Header, mut frame: BytesMut, checked: raw::Checked) -> Result<Box<Packet>, V5Error> {
    if checked.subscription_ids {
        return parse_with_subscription_ids(h, &frame);
    }
    let packet_type = h.byte1 >> 4;
    if h.remaining_len < 2 && matches!(packet_type, 14 | 15) {
        // Reason code absent (0x00) or alone, properties absent: rumqttc
        // needs both, so hand it the equivalent long form.
        let code = frame.get(h.header_len).copied().unwrap_or(0);
        frame = BytesMut::from(&[h.byte1, 2, code, 0][..]);
    }
    if packet_type == 15 {
        let body = frame.get(h.header_len..).unwrap_or_default();
        return auth::read(body).map(|a| Box::new(Packet::Auth(a)));
    }
    read(&mut frame)
}

/// rumqttc's parse of a frame it can take.
fn read(frame: &mut BytesMut) -> Result<Box<Packet>, V5Error> {
    match Packet::read(frame, None) {
        Ok(p) => Ok(Box::new(p)),
        Err(mqttbytes::Error::InsufficientBytes(_)) => {
            Err(V5Error::Codec(mqttbytes::Error::MalformedPacket))
        }
        Err(e) => Err(V5Error::Codec(e)),
    }
}

/// A checked PUBLISH with subscription identifiers: rumqttc parses it
/// without them ([`raw::split_subscription_ids`]), and they are put back.
#[cold]
#[inline(never)]
fn parse_with_subscription_ids(h: Header, frame: &[u8]) -> Result<Box<Packet>, V5Error> {
    let body = frame.get(h.header_len..).unwrap_or_default();
    let (mut without, ids) = raw::split_subscription_ids(h.byte1, body)?;
    let mut packet = read(&mut without)?;
    if let Packet::Publish(p) = packet.as_mut() {
        p.properties
            .get_or_insert_default()
            .subscription_identifiers = ids;
    }
    Ok(packet)
}

/// Encodes `packet`, sent by `sender`, at the end of `buf`: refuses what
/// rumqttc would encode wrongly, what our own decoder would refuse, and
/// packets over `max_packet_size` (the peer's maximum total size: such a
/// packet must be dropped, not sent [MQTT-3.1.2-24]). On error `buf` is
/// unchanged.
pub fn encode(
    packet: &Packet,
    buf: &mut BytesMut,
    max_packet_size: usize,
    sender: Sender,
) -> Result<(), V5Error> {
    lengths::check(packet)?;
    if let Packet::ConnAck(ack) = packet
        && matches!(
            ack.code,
            ConnectReturnCode::RefusedProtocolVersion
                | ConnectReturnCode::BadClientId
                | ConnectReturnCode::ServiceUnavailable
        )
    {
        return Err(V5Error::Unencodable("CONNACK with a 3.1.1 return code"));
    }
    let start = buf.len();
    let written = write(packet, buf);
    let checked = written.and_then(|()| {
        let out = buf.get(start..).unwrap_or_default();
        if out.len() > max_packet_size {
            return Err(V5Error::OutgoingTooLarge {
                size: out.len(),
                max: max_packet_size,
            });
        }
        verify(out, sender)
    });
    if checked.is_err() {
        buf.truncate(start);
    }
    checked
}

/// rumqttc's writer, except where it is wrong (see the module docs).
fn write(packet: &Packet, buf: &mut BytesMut) -> Result<(), V5Error> {
    let map = |e: mqttbytes::Error| match e {
        mqttbytes::Error::PayloadTooLong => V5Error::RemainingLengthTooLarge(packet.size()),
        other => V5Error::Codec(other),
    };
    match packet {
        Packet::Disconnect(d) if d.properties.as_ref().is_none_or(no_disconnect_props) => {
            if d.reason_code == DisconnectReasonCode::NormalDisconnection {
                buf.extend_from_slice(&[0xe0, 0]);
            } else {
                buf.extend_from_slice(&[0xe0, 1, d.reason_code as u8]);
            }
            Ok(())
        }
        Packet::Auth(a) => auth::write(a, buf),
        Packet::Connect(..) => {
            let mut scratch = BytesMut::with_capacity(packet.size());
            packet.write(&mut scratch, None).map_err(map)?;
            buf.extend_from_slice(&scratch);
            Ok(())
        }
        _ => packet.write(buf, None).map(drop).map_err(map),
    }
}

fn no_disconnect_props(p: &packets::DisconnectProperties) -> bool {
    p.session_expiry_interval.is_none()
        && p.reason_string.is_none()
        && p.user_properties.is_empty()
        && p.server_reference.is_none()
}

/// Runs the decode checks on bytes we produced.
fn verify(out: &[u8], sender: Sender) -> Result<(), V5Error> {
    let Some(&byte1) = out.first() else {
        return Err(V5Error::Codec(mqttbytes::Error::MalformedPacket));
    };
    raw::check_flags(byte1)?;
    let h = peek_header(out)?.ok_or(V5Error::Codec(mqttbytes::Error::MalformedPacket))?;
    if h.header_len + h.remaining_len != out.len() {
        return Err(V5Error::Codec(mqttbytes::Error::MalformedPacket));
    }
    raw::check_body(byte1, out.get(h.header_len..).unwrap_or_default(), sender).map(|_| ())
}
