//! Checks on the raw bytes of a complete v5 frame, before rumqttc parses
//! it. rumqttc keeps the last value of a repeated property, takes property
//! ids per packet only loosely, never checks strings for U+0000 and takes
//! PUBLISH/will topics as raw bytes, so the whole structure is walked here
//! once; what passes is well-formed, and rumqttc only builds the structs.

use bytes::{BufMut, BytesMut};

use crate::protocol::codec::put_vbi;
use crate::protocol::reason::{AckPacket, ReasonCode};

use super::error::{V5Error, Violation};

/// Who sent the packet being checked: some rules depend on the direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A client sent it (the broker decodes; the client core encodes).
    Client,
    /// A server sent it (the client core decodes; the broker encodes).
    Server,
}

fn malformed(v: Violation) -> V5Error {
    V5Error::Malformed(v)
}

fn protocol(v: Violation) -> V5Error {
    V5Error::Protocol(v)
}

/// A cursor over a byte slice; every read fails as malformed past the end.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes not read yet.
    pub(super) fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], V5Error> {
        if self.buf.len() < n {
            return Err(malformed(Violation::Truncated));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, V5Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, V5Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, V5Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A variable byte integer: at most 4 bytes, shortest form [MQTT-1.5.5-1].
    pub(super) fn vbi(&mut self) -> Result<u32, V5Error> {
        let mut value = 0u32;
        for i in 0..4 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(malformed(Violation::VariableByteInteger));
                }
                return Ok(value);
            }
        }
        Err(malformed(Violation::VariableByteInteger))
    }

    fn binary(&mut self) -> Result<&'a [u8], V5Error> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 encoded string [MQTT-1.5.4-1] without U+0000 [MQTT-1.5.4-2].
    /// Rust's UTF-8 check also refuses the surrogates U+D800..U+DFFF.
    fn string(&mut self, what: &'static str) -> Result<&'a str, V5Error> {
        let s = std::str::from_utf8(self.binary()?)
            .map_err(|_| malformed(Violation::InvalidUtf8(what)))?;
        if s.contains('\0') {
            return Err(malformed(Violation::NulInString(what)));
        }
        Ok(s)
    }

    /// The bytes not read yet, consuming the reader.
    fn rest(self) -> &'a [u8] {
        self.buf
    }

    fn end(&self) -> Result<(), V5Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(malformed(Violation::TrailingBytes(self.buf.len())))
        }
    }
}

/// Which property set is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Props {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK: reason string and
    /// user properties only.
    Ack(&'static str),
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

impl Props {
    fn name(self) -> &'static str {
        match self {
            Props::Connect => "CONNECT",
            Props::Will => "will properties",
            Props::ConnAck => "CONNACK",
            Props::Publish => "PUBLISH",
            Props::Ack(name) => name,
            Props::Subscribe => "SUBSCRIBE",
            Props::Unsubscribe => "UNSUBSCRIBE",
            Props::Disconnect => "DISCONNECT",
            Props::Auth => "AUTH",
        }
    }

    /// The property table of section 2.2.2.2.
    fn allows(self, id: u8) -> bool {
        use Props::*;
        match id {
            0x01..=0x03 | 0x08 | 0x09 => matches!(self, Publish | Will),
            0x0B => matches!(self, Publish | Subscribe),
            0x11 => matches!(self, Connect | ConnAck | Disconnect),
            0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28..=0x2A => self == ConnAck,
            0x15 | 0x16 => matches!(self, Connect | ConnAck | Auth),
            0x17 | 0x19 => self == Connect,
            0x18 => self == Will,
            0x1C => matches!(self, ConnAck | Disconnect),
            0x1F => matches!(self, ConnAck | Ack(_) | Disconnect | Auth),
            0x21 | 0x22 | 0x27 => matches!(self, Connect | ConnAck),
            0x23 => self == Publish,
            0x26 => true,
            _ => false,
        }
    }
}

/// What the rest of a packet's checks need from its properties.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    topic_alias: bool,
    subscription_id: bool,
    session_expiry: bool,
}

/// Walks one property section: ids allowed here, no duplicates of a
/// single-valued property, values in range, strings well-formed.
fn properties(r: &mut Reader<'_>, set: Props) -> Result<Seen, V5Error> {
    let len = r.vbi()?;
    let mut p = Reader::new(r.take(len as usize)?);
    let mut once = 0u64;
    let mut seen = Seen::default();
    while !p.is_empty() {
        property(&mut p, set, &mut once, &mut seen)?;
    }
    if once & (1 << 0x16) != 0 && once & (1 << 0x15) == 0 {
        return Err(protocol(Violation::AuthDataWithoutMethod));
    }
    Ok(seen)
}

/// Reads and checks one property of `set` (`once`: the single-valued ids
/// seen so far in this section); returns its id.
#[inline(always)]
fn property(
    p: &mut Reader<'_>,
    set: Props,
    once: &mut u64,
    seen: &mut Seen,
) -> Result<u8, V5Error> {
    let id = p.vbi()?;
    let id8 = u8::try_from(id)
        .ok()
        .filter(|&i| set.allows(i))
        .ok_or(malformed(Violation::PropertyNotAllowed {
            id,
            packet: set.name(),
        }))?;
    let repeatable = id8 == 0x26 || (id8 == 0x0B && set == Props::Publish);
    if !repeatable {
        let bit = 1u64 << id8;
        if *once & bit != 0 {
            return Err(protocol(Violation::DuplicateProperty(id8)));
        }
        *once |= bit;
    }
    let bad = |value: u32| protocol(Violation::PropertyValue { id: id8, value });
    match id8 {
        // Byte flags that must be 0 or 1.
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
            let v = p.u8()?;
            if v > 1 {
                return Err(bad(v.into()));
            }
        }
        0x02 | 0x18 => {
            p.u32()?;
        }
        0x11 => {
            p.u32()?;
            seen.session_expiry = true;
        }
        0x27 => {
            let v = p.u32()?;
            if v == 0 {
                return Err(bad(0));
            }
        }
        0x13 | 0x22 => {
            p.u16()?;
        }
        0x21 => {
            if p.u16()? == 0 {
                return Err(bad(0));
            }
        }
        0x23 => {
            if p.u16()? == 0 {
                return Err(V5Error::TopicAliasZero);
            }
            seen.topic_alias = true;
        }
        0x0B => {
            if p.vbi()? == 0 {
                return Err(bad(0));
            }
            seen.subscription_id = true;
        }
        0x08 => {
            if p.string("response topic")?.contains(['+', '#']) {
                return Err(protocol(Violation::ResponseTopicWildcard));
            }
        }
        0x03 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => {
            p.string("property string")?;
        }
        0x26 => {
            p.string("user property name")?;
            p.string("user property value")?;
        }
        // 0x09 correlation data, 0x16 authentication data.
        _ => {
            p.binary()?;
        }
    }
    Ok(id8)
}

/// Reserved flag bits of the fixed header (table 2-2) [MQTT-2.1.3-1]:
/// checked on the first byte alone, before waiting for the rest.
pub(super) fn check_flags(byte1: u8) -> Result<(), V5Error> {
    let packet_type = byte1 >> 4;
    let flags = byte1 & 0x0f;
    let reserved = || malformed(Violation::ReservedFlags { packet_type, flags });
    match packet_type {
        0 => Err(reserved()),
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                Err(malformed(Violation::PublishQos3))
            } else if qos == 0 && flags & 0b1000 != 0 {
                Err(malformed(Violation::DupOnQos0))
            } else {
                Ok(())
            }
        }
        6 | 8 | 10 if flags == 0b0010 => Ok(()),
        6 | 8 | 10 => Err(reserved()),
        _ if flags == 0 => Ok(()),
        _ => Err(reserved()),
    }
}

/// The packet's name for errors, by type nibble.
fn name(packet_type: u8) -> &'static str {
    [
        "RESERVED",
        "CONNECT",
        "CONNACK",
        "PUBLISH",
        "PUBACK",
        "PUBREC",
        "PUBREL",
        "PUBCOMP",
        "SUBSCRIBE",
        "SUBACK",
        "UNSUBSCRIBE",
        "UNSUBACK",
        "PINGREQ",
        "PINGRESP",
        "DISCONNECT",
        "AUTH",
    ][usize::from(packet_type & 0x0f)]
}

/// Which side may send each packet type.
fn sent_by(packet_type: u8) -> Option<Sender> {
    match packet_type {
        1 | 8 | 10 | 12 => Some(Sender::Client),
        2 | 9 | 11 | 13 => Some(Sender::Server),
        _ => None,
    }
}

/// What [`check_body`] found that parsing the frame needs to know.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Checked {
    /// A PUBLISH with subscription identifiers: see
    /// [`split_subscription_ids`].
    pub subscription_ids: bool,
}

/// Checks a complete frame's body (after the fixed header).
pub(super) fn check_body(byte1: u8, body: &[u8], sender: Sender) -> Result<Checked, V5Error> {
    let packet_type = byte1 >> 4;
    if sent_by(packet_type).is_some_and(|s| s != sender) {
        return Err(protocol(Violation::WrongDirection(name(packet_type))));
    }
    let mut r = Reader::new(body);
    if packet_type == 3 {
        return publish(byte1, &mut r, sender).map(|seen| Checked {
            subscription_ids: seen.subscription_id,
        });
    }
    match packet_type {
        1 => connect(&mut r),
        2 => connack(&mut r),
        4 => ack(&mut r, "PUBACK", AckPacket::PubAck),
        5 => ack(&mut r, "PUBREC", AckPacket::PubRec),
        6 => ack(&mut r, "PUBREL", AckPacket::PubRel),
        7 => ack(&mut r, "PUBCOMP", AckPacket::PubComp),
        8 => subscribe(&mut r),
        9 => sub_unsub_ack(&mut r, "SUBACK", AckPacket::SubAck),
        10 => unsubscribe(&mut r),
        11 => sub_unsub_ack(&mut r, "UNSUBACK", AckPacket::UnsubAck),
        12 | 13 => r.end(),
        14 => disconnect(&mut r, sender),
        _ => auth(&mut r),
    }
    .map(|()| Checked::default())
}

/// rumqttc 0.25 counts a PUBLISH's subscription identifier property one
/// byte longer than it is (`cursor += 1 + id_len` after the id byte was
/// counted), so with two or more of them its property loop can stop early
/// and hand the properties that follow to the payload. Returns a checked
/// PUBLISH frame (fixed header `byte1`, `body` after it) rebuilt without
/// its subscription identifiers, for rumqttc to parse, and their values in
/// order, to put back into what it parsed.
pub(super) fn split_subscription_ids(
    byte1: u8,
    body: &[u8],
) -> Result<(BytesMut, Vec<usize>), V5Error> {
    let mut r = Reader::new(body);
    r.binary()?;
    if (byte1 >> 1) & 0b11 != 0 {
        r.u16()?;
    }
    let head = body.get(..body.len() - r.remaining()).unwrap_or_default();
    let len = r.vbi()?;
    let props = r.take(len as usize)?;
    let payload = r.rest();
    let mut p = Reader::new(props);
    let (mut once, mut seen) = (0u64, Seen::default());
    let mut kept = Vec::with_capacity(props.len());
    let mut ids = Vec::new();
    while !p.is_empty() {
        let start = props.len() - p.remaining();
        let id = property(&mut p, Props::Publish, &mut once, &mut seen)?;
        let one = props
            .get(start..props.len() - p.remaining())
            .unwrap_or_default();
        if id == 0x0B {
            // The id is one byte (shortest form), the value a variable byte integer.
            ids.push(Reader::new(one.get(1..).unwrap_or_default()).vbi()? as usize);
        } else {
            kept.extend_from_slice(one);
        }
    }
    let mut props_len = BytesMut::new();
    put_vbi(&mut props_len, kept.len());
    let remaining = head.len() + props_len.len() + kept.len() + payload.len();
    let mut frame = BytesMut::with_capacity(remaining + 5);
    frame.put_u8(byte1);
    put_vbi(&mut frame, remaining);
    for part in [head, &props_len, &kept, payload] {
        frame.extend_from_slice(part);
    }
    Ok((frame, ids))
}

fn reason(r: &mut Reader<'_>, packet: &'static str, table: AckPacket) -> Result<u8, V5Error> {
    let code = r.u8()?;
    match ReasonCode::from_u8(code) {
        Some(c) if c.allowed_in(table) => Ok(code),
        _ => Err(protocol(Violation::ReasonCode { code, packet })),
    }
}

fn packet_id(r: &mut Reader<'_>, packet: &'static str) -> Result<(), V5Error> {
    if r.u16()? == 0 {
        return Err(protocol(Violation::PacketIdZero(packet)));
    }
    Ok(())
}

/// Protocol name and level: `Ok(5)` for an MQTT 5 CONNECT.
pub(super) fn connect_level(body: &[u8]) -> Result<u8, V5Error> {
    let mut r = Reader::new(body);
    let name = r.binary()?;
    let level = r.u8()?;
    match (name, level) {
        (b"MQTT", 5) => Ok(5),
        (b"MQTT", l) | (b"MQIsdp", l) => Err(V5Error::UnsupportedProtocolVersion(l)),
        _ => Err(protocol(Violation::ProtocolName)),
    }
}

fn connect(r: &mut Reader<'_>) -> Result<(), V5Error> {
    connect_level(r.buf)?;
    r.binary()?;
    r.u8()?;
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(malformed(Violation::ConnectReservedFlag));
    }
    let will = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    if !will && flags & 0x38 != 0 {
        return Err(malformed(Violation::WillFlags));
    }
    if will_qos == 3 {
        return Err(malformed(Violation::WillQos3));
    }
    r.u16()?;
    properties(r, Props::Connect)?;
    r.string("client id")?;
    if will {
        properties(r, Props::Will)?;
        topic_name(r.string("will topic")?)?;
        r.binary()?;
    }
    if flags & 0x80 != 0 {
        r.string("user name")?;
    }
    if flags & 0x40 != 0 {
        r.binary()?;
    }
    r.end()
}

/// A topic name in a PUBLISH or will: no wildcards [MQTT-3.3.2-2].
fn topic_name(topic: &str) -> Result<(), V5Error> {
    if topic.contains(['+', '#']) {
        Err(V5Error::TopicNameInvalid)
    } else {
        Ok(())
    }
}

fn connack(r: &mut Reader<'_>) -> Result<(), V5Error> {
    let flags = r.u8()?;
    if flags & 0xfe != 0 {
        return Err(malformed(Violation::ConnAckReservedFlags));
    }
    let code = reason(r, "CONNACK", AckPacket::ConnAck)?;
    if flags & 1 != 0 && code != 0 {
        return Err(protocol(Violation::SessionPresentOnFailure));
    }
    properties(r, Props::ConnAck)?;
    r.end()
}

fn publish(byte1: u8, r: &mut Reader<'_>, sender: Sender) -> Result<Seen, V5Error> {
    let topic = r.string("topic name")?;
    topic_name(topic)?;
    if (byte1 >> 1) & 0b11 != 0 {
        packet_id(r, "PUBLISH")?;
    }
    let seen = properties(r, Props::Publish)?;
    if topic.is_empty() && !seen.topic_alias {
        return Err(protocol(Violation::EmptyTopicWithoutAlias));
    }
    if seen.subscription_id && sender == Sender::Client {
        return Err(protocol(Violation::SubscriptionIdFromClient));
    }
    Ok(seen)
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP: reason code and properties may be
/// left out (remaining length 2, or 3 without properties).
fn ack(r: &mut Reader<'_>, packet: &'static str, table: AckPacket) -> Result<(), V5Error> {
    packet_id(r, packet)?;
    if r.is_empty() {
        return Ok(());
    }
    reason(r, packet, table)?;
    if r.is_empty() {
        return Ok(());
    }
    properties(r, Props::Ack(packet))?;
    r.end()
}

fn subscribe(r: &mut Reader<'_>) -> Result<(), V5Error> {
    packet_id(r, "SUBSCRIBE")?;
    properties(r, Props::Subscribe)?;
    if r.is_empty() {
        return Err(protocol(Violation::NoFilters("SUBSCRIBE")));
    }
    while !r.is_empty() {
        let filter = r.string("topic filter")?;
        let options = r.u8()?;
        if options & 0xc0 != 0 {
            return Err(malformed(Violation::SubscriptionOptionsReserved(options)));
        }
        if options & 0b11 == 3 {
            return Err(malformed(Violation::SubscriptionQos3));
        }
        if (options >> 4) & 0b11 == 3 {
            return Err(protocol(Violation::RetainHandling3));
        }
        if options & 0x04 != 0 && filter.starts_with("$share/") {
            return Err(protocol(Violation::NoLocalOnShared));
        }
    }
    Ok(())
}

fn sub_unsub_ack(
    r: &mut Reader<'_>,
    packet: &'static str,
    table: AckPacket,
) -> Result<(), V5Error> {
    packet_id(r, packet)?;
    properties(r, Props::Ack(packet))?;
    if r.is_empty() {
        return Err(protocol(Violation::NoReasonCodes(packet)));
    }
    while !r.is_empty() {
        reason(r, packet, table)?;
    }
    Ok(())
}

fn unsubscribe(r: &mut Reader<'_>) -> Result<(), V5Error> {
    packet_id(r, "UNSUBSCRIBE")?;
    properties(r, Props::Unsubscribe)?;
    if r.is_empty() {
        return Err(protocol(Violation::NoFilters("UNSUBSCRIBE")));
    }
    while !r.is_empty() {
        r.string("topic filter")?;
    }
    Ok(())
}

fn disconnect(r: &mut Reader<'_>, sender: Sender) -> Result<(), V5Error> {
    if r.is_empty() {
        return Ok(());
    }
    let code = reason(r, "DISCONNECT", AckPacket::Disconnect)?;
    if code == ReasonCode::DisconnectWithWill.as_u8() && sender == Sender::Server {
        return Err(protocol(Violation::ReasonCode {
            code,
            packet: "DISCONNECT from the server",
        }));
    }
    if r.is_empty() {
        return Ok(());
    }
    let seen = properties(r, Props::Disconnect)?;
    if seen.session_expiry && sender == Sender::Server {
        return Err(protocol(Violation::SessionExpiryFromServer));
    }
    r.end()
}

fn auth(r: &mut Reader<'_>) -> Result<(), V5Error> {
    if r.is_empty() {
        return Ok(());
    }
    reason(r, "AUTH", AckPacket::Auth)?;
    if r.is_empty() {
        return Ok(());
    }
    properties(r, Props::Auth)?;
    r.end()
}
