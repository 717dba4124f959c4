//! An MQTT connection (3.1, 3.1.1 or 5) over any byte stream: the one async
//! wrapper of the protocol module (the codec and session logic stay pure).
//! It speaks one [`ProtocolVersion`], fixed when it is made, and moves
//! version-tagged [`Packet`]s through [`version::decode`]/[`version::encode`];
//! on an MQTT 3.1 connection it writes the CONNECT as `MQIsdp` level 3
//! (rumqttc only writes 3.1.1's `MQTT` level 4; the rest of the wire format
//! is the same).
//!
//! The one connection engine of the client and the built-in broker: the
//! IO steps both drive ([`poll_read_some`], with a read buffer that takes
//! memory only once bytes come; [`poll_write_step`]; [`poll_io`], reading
//! and writing on one stream in one task, taking turns) and [`Framed`],
//! which owns a stream and both buffers and moves version-tagged packets
//! over those steps (the client's connection). The broker's connection
//! drives the same steps on buffers of its own, which it trims while a
//! client idles. Each side's event loop (its `select!` over the stream, its
//! session and its timers) stays its own.

#[cfg(test)]
mod tests;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::codec::{CodecError, put_vbi};
use super::v5::Sender;
use super::version::{self, AnyCodecError, Packet, ProtocolVersion};

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
    wire: Wire,
) -> Result<Packet, AnyCodecError> {
    loop {
        if let Some(packet) = wire.decode(buf)? {
            return Ok(packet);
        }
        fill(io, buf, READ_CHUNK).await?;
    }
}

/// Bytes an idle connection reads on the stack before it allocates its
/// read buffer (a PINGREQ, an ack or a small PUBLISH fit).
const FIRST_READ: usize = 64;

/// Reads into `buf`. When it holds no memory (an idle connection), reads
/// up to [`FIRST_READ`] bytes on the stack first and only then allocates
/// `chunk` for them. A poll, not a future: the stack bytes live only while
/// it runs, not in the waiting connection's state. No bytes are read
/// unless it returns `Ready`.
pub(crate) fn poll_read_some<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    rd: &mut R,
    buf: &mut BytesMut,
    chunk: usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() > buf.len() {
        return tokio_util::io::poll_read_buf(Pin::new(rd), cx, buf);
    }
    let mut first = [0u8; FIRST_READ];
    let mut read = ReadBuf::new(&mut first);
    ready!(Pin::new(rd).poll_read(cx, &mut read))?;
    let n = read.filled().len();
    buf.reserve(chunk.max(n));
    buf.extend_from_slice(read.filled());
    Poll::Ready(Ok(n))
}

/// What one [`write_step`] did.
pub(crate) enum Step {
    /// Wrote some of the buffer.
    Wrote,
    /// Flushed after the buffer was written.
    Flushed,
}

/// Writes some of `out`, or flushes once it is all written. Nothing is
/// written unless it returns `Ready`, and a flush may be polled again.
pub(crate) fn poll_write_step<W: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    wr: &mut W,
    out: &mut BytesMut,
) -> Poll<io::Result<Step>> {
    if out.is_empty() {
        ready!(Pin::new(wr).poll_flush(cx))?;
        return Poll::Ready(Ok(Step::Flushed));
    }
    if ready!(tokio_util::io::poll_write_buf(Pin::new(wr), cx, out))? == 0 {
        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
    }
    Poll::Ready(Ok(Step::Wrote))
}

/// What one [`poll_io`] did.
pub(crate) enum Io {
    /// A [`poll_write_step`].
    Wrote(io::Result<Step>),
    /// A [`poll_read_some`]: the bytes read (0: end of stream).
    Read(io::Result<usize>),
}

/// Writes a step of `out` (when `write`) or reads into `buf` (when `read`),
/// whichever the stream allows first; `read_first` says which is tried
/// first and flips after each, so neither starves the other. Nothing is
/// written or read unless it returns `Ready`.
pub(crate) fn poll_io<S: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    io: &mut S,
    (write, out): (bool, &mut BytesMut),
    (read, buf, chunk): (bool, &mut BytesMut, usize),
    read_first: &mut bool,
) -> Poll<Io> {
    for reading in [*read_first, !*read_first] {
        if reading {
            if read && let Poll::Ready(r) = poll_read_some(cx, io, buf, chunk) {
                *read_first = false;
                return Poll::Ready(Io::Read(r));
            }
        } else if write && let Poll::Ready(r) = poll_write_step(cx, io, out) {
            *read_first = true;
            return Poll::Ready(Io::Wrote(r));
        }
    }
    Poll::Pending
}

/// [`poll_write_step`] as a future.
pub(crate) async fn write_step<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
) -> io::Result<Step> {
    poll_fn(|cx| poll_write_step(cx, wr, out)).await
}

/// Reads more bytes into `buf`, making room for `chunk` when little is
/// left; EOF is [`CodecError::Closed`] (or [`CodecError::ClosedMidPacket`]
/// with bytes buffered).
pub(crate) async fn fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    chunk: usize,
) -> Result<(), CodecError> {
    if buf.capacity() - buf.len() < 64 {
        buf.reserve(chunk);
    }
    let n = poll_fn(|cx| poll_read_some(cx, io, buf, chunk)).await?;
    if n == 0 {
        return Err(if buf.is_empty() {
            CodecError::Closed
        } else {
            CodecError::ClosedMidPacket {
                buffered: buf.len(),
            }
        });
    }
    Ok(())
}

/// Writes out `buf` and flushes `io` (cancel safe, see [`Framed::flush`]).
async fn flush_to<W: AsyncWrite + Unpin>(
    io: &mut W,
    buf: &mut BytesMut,
) -> Result<(), AnyCodecError> {
    while let Step::Wrote = write_step(io, buf).await.map_err(CodecError::Io)? {}
    Ok(())
}

/// The version of a connection and our side of it: how to decode what the
/// peer sends and encode what we send.
#[derive(Debug, Clone, Copy)]
struct Wire {
    version: ProtocolVersion,
    /// Our role; the peer's is the other one.
    us: Sender,
    max_incoming: usize,
    max_outgoing: usize,
}

impl Wire {
    fn decode(&self, buf: &mut BytesMut) -> Result<Option<Packet>, AnyCodecError> {
        let peer = match self.us {
            Sender::Client => Sender::Server,
            Sender::Server => Sender::Client,
        };
        version::decode(buf, self.max_incoming, self.version, peer)
    }

    fn encode(&self, packet: &Packet, buf: &mut BytesMut) -> Result<(), AnyCodecError> {
        let start = buf.len();
        version::encode(packet, buf, self.max_outgoing, self.version, self.us)?;
        if self.version == ProtocolVersion::V3_1
            && let Packet::V3(super::v4::Packet::Connect(_)) = packet
        {
            let connect = buf.split_off(start);
            buf.unsplit(mqisdp_connect(&connect)?);
        }
        Ok(())
    }
}

/// Rewrites a 3.1.1 CONNECT (`MQTT` level 4) as an MQTT 3.1 one (`MQIsdp`
/// level 3): two more bytes of protocol name, the rest unchanged.
fn mqisdp_connect(connect: &[u8]) -> Result<BytesMut, AnyCodecError> {
    const V311: &[u8] = &[0, 4, b'M', b'Q', b'T', b'T', 4];
    const V31: &[u8] = &[0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3];
    let len_bytes = connect
        .iter()
        .skip(1)
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map(|p| p + 1)
        .ok_or(CodecError::Malformed(
            rumqttc::mqttbytes::Error::MalformedPacket,
        ))?;
    let rest = connect
        .get(1 + len_bytes..)
        .and_then(|r| r.strip_prefix(V311))
        .ok_or(CodecError::Malformed(
            rumqttc::mqttbytes::Error::MalformedPacket,
        ))?;
    let mut out = BytesMut::with_capacity(connect.len() + 2);
    out.put_u8(0x10);
    put_vbi(&mut out, V31.len() + rest.len());
    out.extend_from_slice(V31);
    out.extend_from_slice(rest);
    Ok(out)
}

/// A framed MQTT connection. Owns its read buffer (bounded by the incoming
/// maximum plus one read chunk) and a write buffer that [`Framed::queue`]
/// fills and [`Framed::flush`] drains.
#[derive(Debug)]
pub struct Framed<S> {
    io: S,
    read_buf: BytesMut,
    write_buf: BytesMut,
    wire: Wire,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    /// Wraps `io` for an MQTT 3.1.1 client. `max_incoming` is the largest
    /// packet we accept (total bytes), `max_outgoing` the largest the peer
    /// accepts.
    pub fn new(io: S, max_incoming: usize, max_outgoing: usize) -> Self {
        Self::with_version(
            io,
            max_incoming,
            max_outgoing,
            ProtocolVersion::V3_1_1,
            Sender::Client,
        )
    }

    /// Wraps `io` for a `version` connection on which we are `us`.
    pub fn with_version(
        io: S,
        max_incoming: usize,
        max_outgoing: usize,
        version: ProtocolVersion,
        us: Sender,
    ) -> Self {
        Framed {
            io,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(READ_CHUNK),
            wire: Wire {
                version,
                us,
                max_incoming,
                max_outgoing,
            },
        }
    }

    /// The protocol version this connection speaks.
    pub fn version(&self) -> ProtocolVersion {
        self.wire.version
    }

    /// Changes the peer's maximum packet size (e.g. once it is known).
    pub fn set_max_outgoing(&mut self, max: usize) {
        self.wire.max_outgoing = max;
    }

    /// Waits until at least `n` bytes are buffered and returns them all,
    /// consuming nothing (to look at a reply before choosing how to decode
    /// it, e.g. a 3.1.1 CONNACK answering an MQTT 5 CONNECT). Cancel safe.
    pub async fn peek(&mut self, n: usize) -> Result<&[u8], AnyCodecError> {
        while self.read_buf.len() < n {
            fill(&mut self.io, &mut self.read_buf, READ_CHUNK).await?;
        }
        Ok(&self.read_buf)
    }

    /// Reads the next packet.
    ///
    /// Cancel safe: bytes read so far stay in the owned read buffer, so
    /// dropping this future (e.g. in a `select!` branch that lost) loses no
    /// data, and the next call continues where this one stopped.
    /// A clean EOF between packets is [`CodecError::Closed`]; EOF inside a
    /// packet is [`CodecError::ClosedMidPacket`]. Any error means the
    /// connection must be closed.
    pub async fn read_packet(&mut self) -> Result<Packet, AnyCodecError> {
        read_packet_from(&mut self.io, &mut self.read_buf, self.wire).await
    }

    /// Decodes the next packet already in the read buffer without touching
    /// the stream: `Ok(None)` when no complete packet is buffered. One read
    /// often brings many packets; a connection task handles them all this
    /// way and then flushes its replies once. Errors as
    /// [`Framed::read_packet`].
    pub fn read_buffered(&mut self) -> Result<Option<Packet>, AnyCodecError> {
        self.wire.decode(&mut self.read_buf)
    }

    /// Encodes `packet` into the write buffer (nothing is sent until
    /// [`Framed::flush`]). On error nothing is queued and the connection
    /// may continue (the packet, not the stream, was bad).
    pub fn queue(&mut self, packet: &Packet) -> Result<(), AnyCodecError> {
        self.wire.encode(packet, &mut self.write_buf)
    }

    /// Encodes a 3.1.1 `packet` on a 3.1/3.1.1 connection without wrapping
    /// it (no copy on the hot path); as [`Framed::queue`] otherwise.
    pub fn queue_v3(&mut self, packet: &super::v4::Packet) -> Result<(), AnyCodecError> {
        match (self.wire.version, packet) {
            (ProtocolVersion::V5, _) => Err(AnyCodecError::VersionMismatch {
                connection: ProtocolVersion::V5,
                packet: ProtocolVersion::V3_1_1,
            }),
            (ProtocolVersion::V3_1, super::v4::Packet::Connect(_)) => {
                self.queue(&Packet::V3(packet.clone()))
            }
            _ => Ok(super::codec::encode(
                packet,
                &mut self.write_buf,
                self.wire.max_outgoing,
            )?),
        }
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
    pub async fn flush(&mut self) -> Result<(), AnyCodecError> {
        flush_to(&mut self.io, &mut self.write_buf).await
    }

    /// Queues `packet` and flushes.
    pub async fn write_packet(&mut self, packet: &Packet) -> Result<(), AnyCodecError> {
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
