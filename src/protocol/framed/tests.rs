//! Tests of the framed connection over `tokio::io::duplex`.

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

#[tokio::test]
async fn split_halves_read_and_write_concurrently() {
    // Both ends queue more than the pipe holds, then read and flush at once:
    // with one combined await (flush, then read) both would block forever.
    let (a, b) = duplex(64);
    let big = publish(4000);
    let run = |io: tokio::io::DuplexStream, p: Packet| async move {
        let (mut r, mut w) = Framed::new(io, 1 << 20, 1 << 20).into_split();
        w.queue(&p).unwrap();
        let (read, flushed) = tokio::join!(r.read_packet(), w.flush());
        flushed.unwrap();
        read.unwrap()
    };
    let (got_a, got_b) = timeout(T, async {
        tokio::join!(run(a, big.clone()), run(b, big.clone()))
    })
    .await
    .unwrap();
    assert_eq!((got_a, got_b), (big.clone(), big));
}

#[tokio::test]
async fn split_keeps_buffered_bytes() {
    let (mut raw, io) = duplex(256);
    let mut framed = Framed::new(io, 1 << 20, 1 << 20);
    let mut wire = bytes_of(&Packet::PingReq);
    wire.extend_from_slice(&bytes_of(&Packet::PingResp));
    raw.write_all(&wire).await.unwrap();
    // The first read pulls both packets into the buffer...
    assert_eq!(
        timeout(T, framed.read_packet()).await.unwrap().unwrap(),
        Packet::PingReq
    );
    framed.queue(&Packet::Disconnect).unwrap();
    let (mut r, mut w) = framed.into_split();
    // ...and the second is still there after the split; the queued write too.
    assert_eq!(
        timeout(T, r.read_packet()).await.unwrap().unwrap(),
        Packet::PingResp
    );
    assert_eq!(w.pending_write(), 2);
    w.shutdown().await.unwrap();
    let mut back = [0u8; 2];
    tokio::io::AsyncReadExt::read_exact(&mut raw, &mut back)
        .await
        .unwrap();
    assert_eq!(back, [0xe0, 0]);
}

#[tokio::test]
async fn a_packet_of_exactly_the_maximum_passes_one_byte_more_fails() {
    let big = publish(1 << 20);
    let size = big.size();
    for (max, ok) in [(size, true), (size - 1, false)] {
        let (mut raw, io) = duplex(64 * 1024);
        let mut framed = Framed::new(io, max, usize::MAX);
        let wire = bytes_of(&big);
        let writer = tokio::spawn(async move {
            // The writer may stop early when the reader gives up.
            let _ = raw.write_all(&wire).await;
            raw
        });
        let got = timeout(T, framed.read_packet()).await.unwrap();
        if ok {
            assert_eq!(got.unwrap(), big);
        } else {
            assert!(
                matches!(got, Err(CodecError::PacketTooLarge { .. })),
                "{got:?}"
            );
        }
        drop(framed);
        drop(writer.await.unwrap());
    }
}

#[tokio::test]
async fn read_buffered_yields_the_rest_of_a_burst_without_reading() {
    let (mut raw, io) = duplex(1 << 16);
    let mut framed = Framed::new(io, 1 << 20, 1 << 20);
    let mut wire = BytesMut::new();
    for id in 1..=5 {
        wire.extend_from_slice(&bytes_of(&Packet::PubAck(PubAck::new(id))));
    }
    // Half of a sixth packet: buffered, not yet complete.
    let partial = bytes_of(&publish(10));
    wire.extend_from_slice(&partial[..4]);
    raw.write_all(&wire).await.unwrap();
    let first = timeout(T, framed.read_packet()).await.unwrap().unwrap();
    assert_eq!(first, Packet::PubAck(PubAck::new(1)));
    for id in 2..=5 {
        assert_eq!(
            framed.read_buffered().unwrap(),
            Some(Packet::PubAck(PubAck::new(id)))
        );
    }
    assert_eq!(framed.read_buffered().unwrap(), None);
    raw.write_all(&partial[4..]).await.unwrap();
    // Nothing was read from the stream by `read_buffered`: the rest arrives
    // through `read_packet`.
    assert_eq!(framed.read_buffered().unwrap(), None);
    let last = timeout(T, framed.read_packet()).await.unwrap().unwrap();
    assert_eq!(last, publish(10));

    // The reader half behaves the same.
    let (mut raw, io) = duplex(1 << 16);
    let (mut reader, _writer) = Framed::new(io, 1 << 20, 1 << 20).into_split();
    let mut wire = BytesMut::new();
    for id in 1..=3 {
        wire.extend_from_slice(&bytes_of(&Packet::PubAck(PubAck::new(id))));
    }
    raw.write_all(&wire).await.unwrap();
    timeout(T, reader.read_packet()).await.unwrap().unwrap();
    assert_eq!(
        reader.read_buffered().unwrap(),
        Some(Packet::PubAck(PubAck::new(2)))
    );
    assert_eq!(
        reader.read_buffered().unwrap(),
        Some(Packet::PubAck(PubAck::new(3)))
    );
    assert_eq!(reader.read_buffered().unwrap(), None);
}
