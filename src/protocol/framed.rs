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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rumqttc::mqttbytes::QoS as WQ;
    use rumqttc::mqttbytes::v4::{PubAck, Publish};
    use tokio::io::{AsyncWriteExt, duplex};
    use tokio::time::timeout;

    use super::*;

    const T: Duration = Duration::from_secs(5);

    fn publish(n: usize) -> Packet {
        let mut p = Publish::new("t/x", WQ::AtLeastOnce, vec![7u8; n]);
        p.pkid = 1;
        Packet::Publish(p)
    }

    fn bytes_of(p: &Packet) -> BytesMut {
        let mut b = BytesMut::new();
        codec::encode(p, &mut b, usize::MAX).unwrap();
        b
    }

    #[tokio::test]
    async fn reads_packets_through_an_eight_byte_pipe() {
        let (mut raw, io) = duplex(8);
        let mut framed = Framed::new(io, 1 << 20, 1 << 20);
        let packets = vec![
            publish(1000),
            Packet::PingReq,
            Packet::PubAck(PubAck::new(9)),
        ];
        let mut wire = BytesMut::new();
        for p in &packets {
            wire.extend_from_slice(&bytes_of(p));
        }
        let writer = tokio::spawn(async move {
            raw.write_all(&wire).await.unwrap();
            raw // keep the stream open until read
        });
        for want in &packets {
            let got = timeout(T, framed.read_packet()).await.unwrap().unwrap();
            assert_eq!(&got, want);
        }
        let raw = writer.await.unwrap();
        drop(raw);
        let end = timeout(T, framed.read_packet()).await.unwrap();
        assert!(matches!(end, Err(CodecError::Closed)), "{end:?}");
    }

    #[tokio::test]
    async fn two_framed_ends_exchange_packets() {
        let (a, b) = duplex(8);
        let mut a = Framed::new(a, 1 << 20, 1 << 20);
        let mut b = Framed::new(b, 1 << 20, 1 << 20);
        let p = publish(300);
        let sent = p.clone();
        let writer = tokio::spawn(async move {
            a.queue(&sent).unwrap();
            a.queue(&Packet::PingResp).unwrap();
            assert!(a.pending_write() > 300);
            a.flush().await.unwrap();
            assert_eq!(a.pending_write(), 0);
            a.write_packet(&Packet::Disconnect).await.unwrap();
            a
        });
        assert_eq!(timeout(T, b.read_packet()).await.unwrap().unwrap(), p);
        assert_eq!(
            timeout(T, b.read_packet()).await.unwrap().unwrap(),
            Packet::PingResp
        );
        assert_eq!(
            timeout(T, b.read_packet()).await.unwrap().unwrap(),
            Packet::Disconnect
        );
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn eof_mid_packet_is_reported() {
        let (mut raw, io) = duplex(8);
        let mut framed = Framed::new(io, 1 << 20, 1 << 20);
        let wire = bytes_of(&publish(20));
        let writer = tokio::spawn(async move {
            raw.write_all(&wire[..10]).await.unwrap();
            // dropping `raw` closes the stream mid-packet
        });
        let got = timeout(T, framed.read_packet()).await.unwrap();
        assert!(
            matches!(got, Err(CodecError::ClosedMidPacket { buffered: 10 })),
            "{got:?}"
        );
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn read_packet_is_cancel_safe() {
        let (mut raw, io) = duplex(8);
        let mut framed = Framed::new(io, 1 << 20, 1 << 20);
        let wire = bytes_of(&publish(50));
        let (go_on, wait) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn(async move {
            raw.write_all(&wire[..30]).await.unwrap();
            wait.await.unwrap();
            raw.write_all(&wire[30..]).await.unwrap();
            raw
        });
        // The read is cancelled (timeout) while part of a packet is buffered...
        let first = timeout(Duration::from_millis(100), framed.read_packet()).await;
        assert!(first.is_err(), "must still be waiting for the rest");
        // ...and the next call completes it without losing those bytes.
        go_on.send(()).unwrap();
        let got = timeout(T, framed.read_packet()).await.unwrap().unwrap();
        assert_eq!(got, publish(50));
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn oversized_and_garbage_input_fail_the_read() {
        let (mut raw, io) = duplex(64);
        let mut framed = Framed::new(io, 100, 100);
        raw.write_all(&[0x30, 0xff, 0xff, 0xff, 0x7f])
            .await
            .unwrap();
        let got = timeout(T, framed.read_packet()).await.unwrap();
        assert!(
            matches!(got, Err(CodecError::PacketTooLarge { .. })),
            "{got:?}"
        );

        let (mut raw, io) = duplex(64);
        let mut framed = Framed::new(io, 100, 100);
        raw.write_all(&[0x62, 0x02, 0, 1, 0xff, 0xff])
            .await
            .unwrap(); // PUBREL, then junk
        assert!(timeout(T, framed.read_packet()).await.unwrap().is_ok());
        let got = timeout(T, framed.read_packet()).await.unwrap();
        assert!(
            matches!(got, Err(CodecError::InvalidPacketType(15))),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn queue_refuses_oversize_and_queues_nothing() {
        let (_raw, io) = duplex(8);
        let mut framed = Framed::new(io, 100, 100);
        let got = framed.queue(&publish(200));
        assert!(matches!(got, Err(CodecError::OutgoingTooLarge { .. })));
        assert_eq!(framed.pending_write(), 0);
        framed.set_max_outgoing(1000);
        framed.queue(&publish(200)).unwrap();
        assert!(framed.pending_write() > 200);
    }
}
