//! An MQTT 3.1.1 connection over any byte stream: the one async wrapper of
//! the protocol module (the codec and session logic stay pure).

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{self, CodecError};

/// Bytes asked of the socket per read when no larger frame is pending.
const READ_CHUNK: usize = 8 * 1024;

/// Default maximum packet size in both directions (MQTT's own limit:
/// 268,435,455 bytes of remaining length plus a 5-byte fixed header).
pub const MQTT_MAX_PACKET_SIZE: usize = 268_435_460;

/// A framed MQTT connection. Owns its read buffer (bounded by the incoming
/// maximum plus one read chunk) and a write buffer that [`Framed::queue`]
/// fills and [`Framed::flush`] drains.
#[derive(Debug)]
pub struct Framed<S> {
    io: S,
    read_buf: BytesMut,
    write_buf: BytesMut,
    max_incoming: usize,
    max_outgoing: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    /// Wraps `io`. `max_incoming` is the largest packet we accept (total
    /// bytes), `max_outgoing` the largest the peer accepts.
    pub fn new(io: S, max_incoming: usize, max_outgoing: usize) -> Self {
        Framed {
            io,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(READ_CHUNK),
            max_incoming,
            max_outgoing,
        }
    }

    /// Changes the peer's maximum packet size (e.g. once it is known).
    pub fn set_max_outgoing(&mut self, max: usize) {
        self.max_outgoing = max;
    }

    /// Reads the next packet.
    ///
    /// Cancel safe: bytes read so far stay in the owned read buffer, so
    /// dropping this future (e.g. in a `select!` branch that lost) loses no
    /// data, and the next call continues where this one stopped.
    /// A clean EOF between packets is [`CodecError::Closed`]; EOF inside a
    /// packet is [`CodecError::ClosedMidPacket`]. Any error means the
    /// connection must be closed.
    pub async fn read_packet(&mut self) -> Result<Packet, CodecError> {
        loop {
            if let Some(packet) = codec::decode(&mut self.read_buf, self.max_incoming)? {
                return Ok(packet);
            }
            if self.read_buf.capacity() - self.read_buf.len() < 64 {
                self.read_buf.reserve(READ_CHUNK);
            }
            let n = self.io.read_buf(&mut self.read_buf).await?;
            if n == 0 {
                return Err(if self.read_buf.is_empty() {
                    CodecError::Closed
                } else {
                    CodecError::ClosedMidPacket {
                        buffered: self.read_buf.len(),
                    }
                });
            }
        }
    }

    /// Encodes `packet` into the write buffer (nothing is sent until
    /// [`Framed::flush`]). On error nothing is queued and the connection
    /// may continue (the packet, not the stream, was bad).
    pub fn queue(&mut self, packet: &Packet) -> Result<(), CodecError> {
        codec::encode(packet, &mut self.write_buf, self.max_outgoing)
    }

    /// Bytes queued and not yet written (for backpressure decisions).
    pub fn pending_write(&self) -> usize {
        self.write_buf.len()
    }

    /// Writes out everything queued and flushes the stream.
    ///
    /// Cancel safe in the sense that matters: written bytes are removed
    /// from the buffer as they go, so after a cancelled flush the rest is
    /// still queued and the next flush continues without duplicating or
    /// losing bytes.
    pub async fn flush(&mut self) -> Result<(), CodecError> {
        self.io.write_all_buf(&mut self.write_buf).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Queues `packet` and flushes.
    pub async fn write_packet(&mut self, packet: &Packet) -> Result<(), CodecError> {
        self.queue(packet)?;
        self.flush().await
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The underlying stream, mutably (writing to it directly would
    /// interleave with queued bytes).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Gives back the stream; buffered unread and unwritten bytes are lost.
    pub fn into_inner(self) -> S {
        self.io
    }
}
