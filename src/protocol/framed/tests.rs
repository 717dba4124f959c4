//! Tests of the framed connection over `tokio::io::duplex`.

use std::time::Duration;

use rumqttc::mqttbytes::QoS as WQ;
use rumqttc::mqttbytes::v4::{PubAck, Publish};
use tokio::io::{AsyncWriteExt, duplex};
use tokio::time::timeout;

use super::*;
use crate::protocol::codec;
use crate::protocol::v4::Packet as P4;

/// A 3.1.1 packet as the framed connection takes it.
fn v3(p: &P4) -> Packet {
    Packet::V3(p.clone())
}

/// The 3.1.1 packet a framed 3.1.1 connection read.
fn un3(p: Packet) -> P4 {
    match p {
        Packet::V3(p) => p,
        Packet::V5(p) => panic!("a v5 packet on a 3.1.1 connection: {p:?}"),
    }
}

const T: Duration = Duration::from_secs(5);

fn publish(n: usize) -> P4 {
    let mut p = Publish::new("t/x", WQ::AtLeastOnce, vec![7u8; n]);
    p.pkid = 1;
    P4::Publish(p)
}

fn bytes_of(p: &P4) -> BytesMut {
    let mut b = BytesMut::new();
    codec::encode(p, &mut b, usize::MAX).unwrap();
    b
}

#[tokio::test]
async fn reads_packets_through_an_eight_byte_pipe() {
    let (mut raw, io) = duplex(8);
    let mut framed = Framed::new(io, 1 << 20, 1 << 20);
    let packets = vec![publish(1000), P4::PingReq, P4::PubAck(PubAck::new(9))];
    let mut wire = BytesMut::new();
    for p in &packets {
        wire.extend_from_slice(&bytes_of(p));
    }
    let writer = tokio::spawn(async move {
        raw.write_all(&wire).await.unwrap();
        raw // keep the stream open until read
    });
    for want in &packets {
        let got = un3(timeout(T, framed.read_packet()).await.unwrap().unwrap());
        assert_eq!(&got, want);
    }
    let raw = writer.await.unwrap();
    drop(raw);
    let end = timeout(T, framed.read_packet()).await.unwrap();
    assert!(
        matches!(end, Err(AnyCodecError::V3(CodecError::Closed))),
        "{end:?}"
    );
}

#[tokio::test]
async fn two_framed_ends_exchange_packets() {
    let (a, b) = duplex(8);
    let mut a = Framed::new(a, 1 << 20, 1 << 20);
    let mut b = Framed::new(b, 1 << 20, 1 << 20);
    let p = publish(300);
    let sent = p.clone();
    let writer = tokio::spawn(async move {
        a.queue(&v3(&sent)).unwrap();
        a.queue(&v3(&P4::PingResp)).unwrap();
        assert!(a.pending_write() > 300);
        a.flush().await.unwrap();
        assert_eq!(a.pending_write(), 0);
        a.write_packet(&v3(&P4::Disconnect)).await.unwrap();
        a
    });
    assert_eq!(un3(timeout(T, b.read_packet()).await.unwrap().unwrap()), p);
    assert_eq!(
        un3(timeout(T, b.read_packet()).await.unwrap().unwrap()),
        P4::PingResp
    );
    assert_eq!(
        un3(timeout(T, b.read_packet()).await.unwrap().unwrap()),
        P4::Disconnect
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
        matches!(
            got,
            Err(AnyCodecError::V3(CodecError::ClosedMidPacket {
                buffered: 10
            }))
        ),
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
    let got = un3(timeout(T, framed.read_packet()).await.unwrap().unwrap());
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
        matches!(
            got,
            Err(AnyCodecError::V3(CodecError::PacketTooLarge { .. }))
        ),
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
        matches!(
            got,
            Err(AnyCodecError::V3(CodecError::InvalidPacketType(15)))
        ),
        "{got:?}"
    );
}

#[tokio::test]
async fn queue_refuses_oversize_and_queues_nothing() {
    let (_raw, io) = duplex(8);
    let mut framed = Framed::new(io, 100, 100);
    let got = framed.queue(&v3(&publish(200)));
    assert!(matches!(
        got,
        Err(AnyCodecError::V3(CodecError::OutgoingTooLarge { .. }))
    ));
    assert_eq!(framed.pending_write(), 0);
    framed.set_max_outgoing(1000);
    framed.queue(&v3(&publish(200))).unwrap();
    assert!(framed.pending_write() > 200);
}

#[tokio::test]
async fn poll_io_reads_while_a_write_waits() {
    // Both ends queue more than the pipe holds, then drive reads and writes
    // in one task each: with a flush awaited before the read, both would
    // block forever.
    let (a, b) = duplex(64);
    let big = publish(4000);
    let run = |mut io: tokio::io::DuplexStream, p: P4| async move {
        let wire = Wire {
            version: ProtocolVersion::V3_1_1,
            us: Sender::Client,
            max_incoming: 1 << 20,
            max_outgoing: 1 << 20,
        };
        let mut out = BytesMut::new();
        wire.encode(&v3(&p), &mut out).unwrap();
        let mut buf = BytesMut::new();
        let mut read_first = true;
        let mut got = None;
        let mut flushed = false;
        while got.is_none() || !flushed {
            let write = !flushed;
            let read = got.is_none();
            let step = poll_fn(|cx| {
                poll_io(
                    cx,
                    &mut io,
                    (write, &mut out),
                    (read, &mut buf, 512),
                    &mut read_first,
                )
            })
            .await;
            match step {
                Io::Wrote(r) => flushed = matches!(r.unwrap(), Step::Flushed),
                Io::Read(r) => {
                    assert!(r.unwrap() > 0, "the peer closed");
                    got = wire.decode(&mut buf).unwrap();
                }
            }
        }
        got.map(un3)
    };
    let (got_a, got_b) = timeout(T, async {
        tokio::join!(run(a, big.clone()), run(b, big.clone()))
    })
    .await
    .unwrap();
    assert_eq!((got_a, got_b), (Some(big.clone()), Some(big)));
}

#[tokio::test]
async fn an_idle_read_holds_no_buffer_until_bytes_come() {
    let (mut raw, mut io) = duplex(256);
    let mut buf = BytesMut::new();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(poll_read_some(&mut cx, &mut io, &mut buf, 512).is_pending());
    assert_eq!(buf.capacity(), 0, "nothing taken while waiting");
    raw.write_all(&bytes_of(&P4::PingReq)).await.unwrap();
    let n = poll_fn(|cx| poll_read_some(cx, &mut io, &mut buf, 512))
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(&buf[..], &[0xc0, 0]);
    assert!(buf.capacity() >= 512, "the chunk is taken once bytes came");
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
            assert_eq!(un3(got.unwrap()), big);
        } else {
            assert!(
                matches!(
                    got,
                    Err(AnyCodecError::V3(CodecError::PacketTooLarge { .. }))
                ),
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
        wire.extend_from_slice(&bytes_of(&P4::PubAck(PubAck::new(id))));
    }
    // Half of a sixth packet: buffered, not yet complete.
    let partial = bytes_of(&publish(10));
    wire.extend_from_slice(&partial[..4]);
    raw.write_all(&wire).await.unwrap();
    let first = un3(timeout(T, framed.read_packet()).await.unwrap().unwrap());
    assert_eq!(first, P4::PubAck(PubAck::new(1)));
    for id in 2..=5 {
        assert_eq!(
            framed.read_buffered().unwrap(),
            Some(v3(&P4::PubAck(PubAck::new(id))))
        );
    }
    assert_eq!(framed.read_buffered().unwrap(), None);
    raw.write_all(&partial[4..]).await.unwrap();
    // Nothing was read from the stream by `read_buffered`: the rest arrives
    // through `read_packet`.
    assert_eq!(framed.read_buffered().unwrap(), None);
    let last = un3(timeout(T, framed.read_packet()).await.unwrap().unwrap());
    assert_eq!(last, publish(10));
}

#[tokio::test]
async fn a_v5_client_and_server_exchange_packets_with_properties() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::mqttbytes::v5::{
        Packet as P5, PubAck as PubAck5, Publish as Publish5, PublishProperties,
    };
    let (a, b) = duplex(8);
    let mut client = Framed::with_version(a, 1 << 20, 1 << 20, ProtocolVersion::V5, Sender::Client);
    let mut server = Framed::with_version(b, 1 << 20, 1 << 20, ProtocolVersion::V5, Sender::Server);
    assert_eq!(client.version(), ProtocolVersion::V5);
    let props = PublishProperties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("b".into(), "1".into()), ("a".into(), "2".into())],
        ..Default::default()
    };
    let mut p = Publish5::new("t/v5", Q5::AtLeastOnce, vec![1u8, 2, 3], Some(props));
    p.pkid = 7;
    let publish = Packet::V5(Box::new(P5::Publish(p)));
    let sent = publish.clone();
    let writer = tokio::spawn(async move {
        client.write_packet(&sent).await.unwrap();
        client
    });
    let got = timeout(T, server.read_packet()).await.unwrap().unwrap();
    assert_eq!(got, publish);
    let mut client = writer.await.unwrap();
    let ack = Packet::V5(Box::new(P5::PubAck(PubAck5::new(7, None))));
    server.write_packet(&ack).await.unwrap();
    assert_eq!(
        timeout(T, client.read_packet()).await.unwrap().unwrap(),
        ack
    );
    // A 3.1.1 packet cannot go out on a v5 connection.
    assert!(matches!(
        client.queue(&v3(&P4::PingReq)),
        Err(AnyCodecError::VersionMismatch { .. })
    ));
}

#[tokio::test]
async fn an_mqtt_3_1_connect_is_written_as_mqisdp_level_3() {
    use crate::protocol::v4::Connect;
    let (mut raw, io) = duplex(256);
    let mut framed =
        Framed::with_version(io, 1 << 20, 1 << 20, ProtocolVersion::V3_1, Sender::Client);
    let mut connect = Connect::new("c31");
    connect.keep_alive = 30;
    framed
        .write_packet(&v3(&P4::Connect(connect.clone())))
        .await
        .unwrap();
    let mut got = vec![0u8; 64];
    let n = timeout(T, tokio::io::AsyncReadExt::read(&mut raw, &mut got))
        .await
        .unwrap()
        .unwrap();
    let v311 = bytes_of(&P4::Connect(connect));
    assert_eq!(n, v311.len() + 2);
    assert_eq!(got[1] as usize, n - 2, "remaining length grows by two");
    assert_eq!(&got[2..11], b"\x00\x06MQIsdp\x03");
    assert_eq!(
        crate::protocol::version::connect_version(&got[..n]),
        Ok(Some(ProtocolVersion::V3_1))
    );
    // Everything after the protocol level is the 3.1.1 CONNECT's.
    assert_eq!(&got[11..n], &v311[9..]);
}

#[tokio::test]
async fn peek_waits_for_bytes_and_consumes_nothing() {
    let (mut raw, io) = duplex(8);
    let mut framed = Framed::new(io, 1 << 20, 1 << 20);
    raw.write_all(&[0x20, 0x02]).await.unwrap();
    let writer = tokio::spawn(async move {
        raw.write_all(&[0x00, 0x01]).await.unwrap();
        raw
    });
    let head = timeout(T, framed.peek(4)).await.unwrap().unwrap().to_vec();
    assert_eq!(head, [0x20, 0x02, 0x00, 0x01]);
    let _raw = writer.await.unwrap();
    let got = un3(timeout(T, framed.read_packet()).await.unwrap().unwrap());
    assert!(
        matches!(got, P4::ConnAck(a) if a.code == crate::protocol::v4::ConnectReturnCode::RefusedProtocolVersion)
    );
}
