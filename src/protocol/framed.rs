//! An MQTT 3.1.1 connection over any byte stream: the one async wrapper of
//! the protocol module (the codec and session logic stay pure).
//!
//! [`Framed`] owns the stream and both buffers. A connection task that must
//! read while a large write is pending (so two peers with full socket
//! buffers cannot block each other) splits it with [`Framed::into_split`]
//! and drives [`PacketReader::read_packet`] and [`PacketWriter::flush`] in
//! separate `select!` branches.

#[cfg(test)]
mod tests;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use super::codec::{self, CodecError};

/// Bytes asked of the socket per read when no larger frame is pending.
const READ_CHUNK: usize = 8 * 1024;

/// MQTT's own packet size limit (268,435,455 bytes of remaining length plus
/// a 5-byte fixed header); the default when nothing smaller is configured.
pub const MQTT_MAX_PACKET_SIZE: usize = 268_435_460;

/// Reads the next packet from `io` through `buf` (cancel safe, see
/// [`Framed::read_packet`]).
async fn read_packet_from<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Packet, CodecError> {
    loop {
        if let Some(packet) = codec::decode(buf, max)? {
            return Ok(packet);
        }
        if buf.capacity() - buf.len() < 64 {
            buf.reserve(READ_CHUNK);
        }
        let n = io.read_buf(buf).await?;
        if n == 0 {
            return Err(if buf.is_empty() {
                CodecError::Closed
            } else {
                CodecError::ClosedMidPacket {
                    buffered: buf.len(),
                }
            });
        }
    }
}

/// Writes out `buf` and flushes `io` (cancel safe, see [`Framed::flush`]).
async fn flush_to<W: AsyncWrite + Unpin>(io: &mut W, buf: &mut BytesMut) -> Result<(), CodecError> {
    io.write_all_buf(buf).await?;
    io.flush().await?;
    Ok(())
}

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
        read_packet_from(&mut self.io, &mut self.read_buf, self.max_incoming).await
    }

    /// Decodes the next packet already in the read buffer without touching
    /// the stream: `Ok(None)` when no complete packet is buffered. One read
    /// often brings many packets; a connection task handles them all this
    /// way and then flushes its replies once. Errors as
    /// [`Framed::read_packet`].
    pub fn read_buffered(&mut self) -> Result<Option<Packet>, CodecError> {
        codec::decode(&mut self.read_buf, self.max_incoming)
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
        flush_to(&mut self.io, &mut self.write_buf).await
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

    /// Splits into a reader and a writer (buffers and limits carried over,
    /// nothing lost), to read and write concurrently.
    pub fn into_split(self) -> (PacketReader<ReadHalf<S>>, PacketWriter<WriteHalf<S>>) {
        let (r, w) = tokio::io::split(self.io);
        (
            PacketReader {
                io: r,
                buf: self.read_buf,
                max: self.max_incoming,
            },
            PacketWriter {
                io: w,
                buf: self.write_buf,
                max: self.max_outgoing,
            },
        )
    }
}

/// The reading half of a [`Framed`] connection.
#[derive(Debug)]
pub struct PacketReader<R> {
    io: R,
    buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    /// A reader over `io` accepting packets of at most `max_incoming` bytes.
    pub fn new(io: R, max_incoming: usize) -> Self {
        PacketReader {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            max: max_incoming,
        }
    }

    /// Reads the next packet; cancel safe, as [`Framed::read_packet`].
    pub async fn read_packet(&mut self) -> Result<Packet, CodecError> {
        read_packet_from(&mut self.io, &mut self.buf, self.max).await
    }

    /// The next packet already buffered, without reading; as
    /// [`Framed::read_buffered`].
    pub fn read_buffered(&mut self) -> Result<Option<Packet>, CodecError> {
        codec::decode(&mut self.buf, self.max)
    }
}

/// The writing half of a [`Framed`] connection.
#[derive(Debug)]
pub struct PacketWriter<W> {
    io: W,
    buf: BytesMut,
    max: usize,
}

impl<W: AsyncWrite + Unpin> PacketWriter<W> {
    /// A writer over `io` refusing packets over `max_outgoing` bytes.
    pub fn new(io: W, max_outgoing: usize) -> Self {
        PacketWriter {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            max: max_outgoing,
        }
    }

    /// Changes the peer's maximum packet size.
    pub fn set_max_outgoing(&mut self, max: usize) {
        self.max = max;
    }

    /// Encodes `packet` into the write buffer, as [`Framed::queue`].
    pub fn queue(&mut self, packet: &Packet) -> Result<(), CodecError> {
        codec::encode(packet, &mut self.buf, self.max)
    }

    /// Bytes queued and not yet written.
    pub fn pending_write(&self) -> usize {
        self.buf.len()
    }

    /// Writes out everything queued; cancel safe, as [`Framed::flush`].
    pub async fn flush(&mut self) -> Result<(), CodecError> {
        flush_to(&mut self.io, &mut self.buf).await
    }

    /// Queues `packet` and flushes.
    pub async fn write_packet(&mut self, packet: &Packet) -> Result<(), CodecError> {
        self.queue(packet)?;
        self.flush().await
    }

    /// Shuts the write side down (after flushing what is queued).
    pub async fn shutdown(&mut self) -> Result<(), CodecError> {
        self.flush().await?;
        self.io.shutdown().await?;
        Ok(())
    }
}
