//! The protocol versions we speak and one entry point over both codec
//! adapters: a connection learns its version from the CONNECT
//! ([`connect_version`]) and then decodes and encodes through
//! [`decode`]/[`encode`] with a version-tagged [`Packet`]; the message
//! itself is the version-free [`crate::protocol::Message`] (see
//! `protocol::convert` for the PUBLISH mapping and what each version drops).

use bytes::BytesMut;

use super::codec::{self, CodecError};
use super::reason::ReasonCode;
use super::v5::{self, Sender, V5Error};

/// An MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0: `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The version a CONNECT's protocol name and level name, if we speak it.
    pub fn from_name_level(name: &[u8], level: u8) -> Option<ProtocolVersion> {
        match (name, level) {
            (b"MQIsdp", 3) => Some(ProtocolVersion::V3_1),
            (b"MQTT", 4) => Some(ProtocolVersion::V3_1_1),
            (b"MQTT", 5) => Some(ProtocolVersion::V5),
            _ => None,
        }
    }

    /// The protocol level byte.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// Whether packets carry properties and reason codes (MQTT 5 only);
    /// towards older versions message properties are dropped.
    pub fn has_properties(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// Which version a client offers a remote broker (its `protocol:` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProtocolChoice {
    /// MQTT 5, falling back to 3.1.1 when the broker refuses it, or when a
    /// broker we publish to grants a receive maximum below our window (the default).
    #[default]
    Auto,
    /// Exactly this version, no fallback.
    Only(ProtocolVersion),
}

/// Why [`connect_version`] cannot pick a codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The first packet is not a CONNECT: close without answering.
    #[error("first packet is not CONNECT")]
    NotConnect,
    /// A remaining length longer than 4 bytes: close without answering.
    #[error("malformed remaining length")]
    MalformedLength,
    /// Neither `MQTT` nor `MQIsdp`: close without answering [MQTT-3.1.2-1].
    #[error("unknown protocol name")]
    UnknownProtocolName,
    /// A known name with a level we do not speak: answer CONNACK 0x01
    /// (3.x client) or 0x84 (level 5 and above) and close [MQTT-3.1.2-2].
    #[error("unsupported protocol level {0}")]
    UnsupportedLevel(u8),
}

/// The version of the CONNECT at the front of `buf`, read from its first
/// bytes; `Ok(None)` until the protocol level has arrived.
pub fn connect_version(buf: &[u8]) -> Result<Option<ProtocolVersion>, VersionError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    if byte1 != 0x10 {
        return Err(VersionError::NotConnect);
    }
    let Some(len_bytes) = buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0) else {
        return if buf.len() >= 5 {
            Err(VersionError::MalformedLength)
        } else {
            Ok(None)
        };
    };
    let rest = buf.get(2 + len_bytes..).unwrap_or_default();
    let Some(name_len) = rest
        .get(..2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return Ok(None);
    };
    let (Some(name), Some(&level)) = (rest.get(2..2 + name_len), rest.get(2 + name_len)) else {
        return Ok(None);
    };
    match ProtocolVersion::from_name_level(name, level) {
        Some(v) => Ok(Some(v)),
        None if name == b"MQTT" || name == b"MQIsdp" => Err(VersionError::UnsupportedLevel(level)),
        None => Err(VersionError::UnknownProtocolName),
    }
}

/// A packet of either codec, tagged by version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// MQTT 3.1 and 3.1.1 (one wire format after the CONNECT).
    V3(super::v4::Packet),
    /// MQTT 5 (boxed: its packets are several times larger).
    V5(Box<v5::packets::Packet>),
}

/// A decode or encode error of either codec.
#[derive(Debug, thiserror::Error)]
pub enum AnyCodecError {
    /// From the 3.1/3.1.1 adapter.
    #[error(transparent)]
    V3(#[from] CodecError),
    /// From the v5 adapter.
    #[error(transparent)]
    V5(#[from] V5Error),
    /// A packet of the other version handed to [`encode`].
    #[error("a {packet:?} packet on a {connection:?} connection")]
    VersionMismatch {
        /// The connection's version.
        connection: ProtocolVersion,
        /// The packet's codec.
        packet: ProtocolVersion,
    },
}

impl AnyCodecError {
    /// The MQTT 5 reason code to send before closing; `None` on a 3.x
    /// connection, which just closes.
    pub fn reason_code(&self) -> Option<ReasonCode> {
        match self {
            AnyCodecError::V5(e) => Some(e.reason_code()),
            _ => None,
        }
    }
}

/// Decodes one packet of `version` from the front of `buf` (see
/// [`codec::decode`] and [`v5::decode`]).
pub fn decode(
    buf: &mut BytesMut,
    max_packet_size: usize,
    version: ProtocolVersion,
    sender: Sender,
) -> Result<Option<Packet>, AnyCodecError> {
    Ok(match version {
        ProtocolVersion::V5 => v5::decode_boxed(buf, max_packet_size, sender)?.map(Packet::V5),
        _ => codec::decode(buf, max_packet_size)?.map(Packet::V3),
    })
}

/// Encodes `packet` on a `version` connection (see [`codec::encode`] and
/// [`v5::encode`]).
pub fn encode(
    packet: &Packet,
    buf: &mut BytesMut,
    max_packet_size: usize,
    version: ProtocolVersion,
    sender: Sender,
) -> Result<(), AnyCodecError> {
    match (packet, version) {
        (Packet::V5(p), ProtocolVersion::V5) => Ok(v5::encode(p, buf, max_packet_size, sender)?),
        (Packet::V3(p), ProtocolVersion::V3_1 | ProtocolVersion::V3_1_1) => {
            Ok(codec::encode(p, buf, max_packet_size)?)
        }
        (Packet::V5(_), connection) => Err(AnyCodecError::VersionMismatch {
            connection,
            packet: ProtocolVersion::V5,
        }),
        (Packet::V3(_), connection) => Err(AnyCodecError::VersionMismatch {
            connection,
            packet: ProtocolVersion::V3_1_1,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_head(name: &[u8], level: u8) -> Vec<u8> {
        let mut v = vec![0x10, 0x80, 0x01, 0, name.len() as u8];
        v.extend_from_slice(name);
        v.push(level);
        v
    }

    #[test]
    fn connect_version_reads_name_and_level_as_bytes_arrive() {
        let full = connect_head(b"MQIsdp", 3);
        for n in 0..full.len() {
            assert_eq!(connect_version(&full[..n]), Ok(None), "{n} bytes");
        }
        assert_eq!(connect_version(&full), Ok(Some(ProtocolVersion::V3_1)));
        assert_eq!(
            connect_version(&connect_head(b"MQTT", 4)),
            Ok(Some(ProtocolVersion::V3_1_1))
        );
        assert_eq!(
            connect_version(&connect_head(b"MQTT", 5)),
            Ok(Some(ProtocolVersion::V5))
        );
        assert_eq!(
            connect_version(&connect_head(b"MQTT", 6)),
            Err(VersionError::UnsupportedLevel(6))
        );
        assert_eq!(
            connect_version(&connect_head(b"MQIsdp", 4)),
            Err(VersionError::UnsupportedLevel(4))
        );
        assert_eq!(
            connect_version(&connect_head(b"HTTP", 4)),
            Err(VersionError::UnknownProtocolName)
        );
        assert_eq!(connect_version(&[0x30, 0]), Err(VersionError::NotConnect));
        assert_eq!(connect_version(&[0x10, 0xff, 0xff, 0xff]), Ok(None));
        assert_eq!(
            connect_version(&[0x10, 0xff, 0xff, 0xff, 0xff]),
            Err(VersionError::MalformedLength)
        );
    }

    #[test]
    fn decode_and_encode_dispatch_by_version() {
        use crate::protocol::v4::{Packet as P4, PubAck};
        use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAck as PubAck5};
        let mut buf = BytesMut::new();
        let v3 = Packet::V3(P4::PubAck(PubAck::new(3)));
        encode(&v3, &mut buf, 64, ProtocolVersion::V3_1_1, Sender::Server).unwrap();
        assert_eq!(&buf[..], &[0x40, 2, 0, 3]);
        let back = decode(&mut buf, 64, ProtocolVersion::V3_1, Sender::Server).unwrap();
        assert_eq!(back, Some(v3.clone()));
        let v5p = Packet::V5(Box::new(P5::PubAck(PubAck5::new(4, None))));
        assert!(matches!(
            encode(&v5p, &mut buf, 64, ProtocolVersion::V3_1_1, Sender::Server),
            Err(AnyCodecError::VersionMismatch { .. })
        ));
        encode(&v5p, &mut buf, 64, ProtocolVersion::V5, Sender::Server).unwrap();
        let back = decode(&mut buf, 64, ProtocolVersion::V5, Sender::Server).unwrap();
        assert_eq!(back, Some(v5p));
        // A v5 error names its reason code; a v3 one has none.
        buf.extend_from_slice(&[0x41, 2, 0, 1]);
        let err = decode(&mut buf, 64, ProtocolVersion::V5, Sender::Server).unwrap_err();
        assert_eq!(err.reason_code(), Some(ReasonCode::MalformedPacket));
        let mut buf = BytesMut::from(&[0x41, 2, 0, 1][..]);
        let err = decode(&mut buf, 64, ProtocolVersion::V3_1_1, Sender::Server).unwrap_err();
        assert_eq!(err.reason_code(), None);
    }
}
