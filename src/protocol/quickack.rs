//! A TCP stream that asks the kernel for quick acknowledgements
//! (`TCP_QUICKACK`) while the peer sends sparsely and we answer it.
//!
//! Most brokers leave Nagle's algorithm on (Mosquitto's `set_tcp_nodelay`
//! is off by default): a broker holds a small packet back while an earlier
//! one is not yet acknowledged by TCP. A connection on which we also write
//! (our PUBACKs to a source) makes Linux delay its TCP acknowledgements,
//! expecting to carry them on our next packet; but a bridge sends its
//! PUBACK only once the message is safe (spooled and synced, or at its
//! destination), so the source's next message waited for that (measured
//! through the bridge, QoS 1 at 5,000 msg/s: p50 0.84 → 0.60 ms).
//!
//! When to ask is [`AckPacer`] (pure): after a *sparse* read (small, and
//! not right after the previous one) when the read before brought a QoS 1/2
//! PUBLISH we owe an acknowledgement for (the session says so through the
//! stream's [`AckHint`]); and back to delayed acknowledgements at the first
//! busy read after that, where they let the source gather its writes into
//! fewer segments. Left alone, quick mode sticks on a connection we stop
//! writing to, and a busy QoS 0 source then sends a segment per message
//! (measured on a QoS 0 flood after one QoS 1 message: 17 times the reads,
//! −20 % throughput); a connection that only ever brings QoS 0 keeps the
//! kernel's own choice.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Reads at least this large are busy (many messages at once).
pub(crate) const BUSY_READ: usize = 1024;

/// Reads closer together than this are busy.
pub(crate) const BUSY_GAP: Duration = Duration::from_micros(100);

/// Decides, read by read, whether the kernel should acknowledge at once.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AckPacer {
    /// When the last read returned data.
    last: Option<Instant>,
    /// We asked for quick acks and not for delayed ones since.
    quick: bool,
}

impl AckPacer {
    /// A read returned `read` (> 0) bytes at `now`; `owed`: the read before
    /// brought a message we acknowledge. The setting to apply, if any
    /// (`Some(true)`: quick acks, `Some(false)`: delayed). Quick acks are
    /// asked for again after every such sparse read, as the kernel leaves
    /// quick mode on its own whenever we write; delayed ones once, at the
    /// first busy read after.
    pub(crate) fn after_read(&mut self, read: usize, owed: bool, now: Instant) -> Option<bool> {
        let sparse = read < BUSY_READ && self.last.is_none_or(|t| now - t >= BUSY_GAP);
        self.last = Some(now);
        if sparse && owed {
            self.quick = true;
            Some(true)
        } else if !sparse && self.quick {
            self.quick = false;
            Some(false)
        } else {
            None
        }
    }
}

/// Set by the session when it received a message it owes an
/// acknowledgement for; taken by the next read.
pub(crate) type AckHint = Arc<AtomicBool>;

/// A `TcpStream` whose acknowledgements follow an [`AckPacer`].
#[derive(Debug)]
pub(crate) struct QuickAck {
    pub tcp: TcpStream,
    pacer: AckPacer,
    owed: AckHint,
}

impl QuickAck {
    pub(crate) fn new(tcp: TcpStream) -> Self {
        QuickAck {
            tcp,
            pacer: AckPacer::default(),
            owed: AckHint::default(),
        }
    }

    /// The hint the session sets (see [`AckHint`]).
    pub(crate) fn hint(&self) -> AckHint {
        self.owed.clone()
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.tcp).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if matches!(r, Poll::Ready(Ok(())))
            && read > 0
            && let Some(quick) = {
                let owed = self.owed.swap(false, Ordering::Relaxed);
                self.pacer.after_read(read, owed, Instant::now())
            }
        {
            // Best effort: only the timing of TCP acknowledgements changes.
            let _ = socket2::SockRef::from(&self.tcp).set_tcp_quickack(quick);
        }
        r
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const SMALL: usize = 120;

    #[test]
    fn sparse_reads_we_owe_acks_for_ask_for_quick_acks_each_time() {
        let t0 = Instant::now();
        let mut p = AckPacer::default();
        assert_eq!(p.after_read(SMALL, true, t0), Some(true));
        for i in 1..4 {
            let now = t0 + Duration::from_micros(200 * i);
            assert_eq!(p.after_read(SMALL, true, now), Some(true), "asked again");
        }
    }

    #[test]
    fn reads_that_owe_nothing_keep_the_kernels_choice() {
        let t0 = Instant::now();
        let mut p = AckPacer::default();
        for i in 0..10 {
            let now = t0 + Duration::from_millis(i);
            assert_eq!(p.after_read(SMALL, false, now), None);
            assert_eq!(p.after_read(64 * 1024, false, now), None);
        }
    }

    #[test]
    fn a_qos0_flood_after_a_qos1_message_gets_delayed_acks_back() {
        let t0 = Instant::now();
        let mut p = AckPacer::default();
        assert_eq!(p.after_read(SMALL, true, t0), Some(true));
        // Nothing owed any more, sparse: quick acks stay.
        let later = t0 + Duration::from_millis(1);
        assert_eq!(p.after_read(SMALL, false, later), None);
        // The flood's first busy read turns them off, once.
        let busy = later + Duration::from_micros(10);
        assert_eq!(p.after_read(SMALL, false, busy), Some(false));
        assert_eq!(p.after_read(8 * 1024, false, busy), None);
    }

    #[test]
    fn busy_reads_turn_quick_acks_off_once() {
        let t0 = Instant::now();
        let mut p = AckPacer::default();
        assert_eq!(p.after_read(SMALL, true, t0), Some(true));
        // Close behind the last one: busy.
        let soon = t0 + Duration::from_micros(20);
        assert_eq!(p.after_read(SMALL, true, soon), Some(false));
        let soon = soon + Duration::from_micros(20);
        assert_eq!(p.after_read(SMALL, true, soon), None, "once");
        // Large, however late: busy.
        let late = soon + Duration::from_millis(5);
        assert_eq!(p.after_read(BUSY_READ, true, late), None);
        assert_eq!(
            p.after_read(SMALL, true, late + Duration::from_millis(5)),
            Some(true)
        );
    }

    proptest! {
        /// Over any reads: quick acks are asked for only after a read that
        /// owed an ack; delayed ones only when quick ones were the last
        /// asked for.
        #[test]
        fn settings_follow_owed_acks_and_alternate(
            steps in proptest::collection::vec((any::<bool>(), 1usize..4096, 0u64..400), 1..200),
        ) {
            let mut p = AckPacer::default();
            let mut now = Instant::now();
            let mut last_set: Option<bool> = None;
            for (owed, read, gap) in steps {
                now += Duration::from_micros(gap);
                let set = p.after_read(read, owed, now);
                match set {
                    Some(true) => prop_assert!(owed),
                    Some(false) => prop_assert_eq!(last_set, Some(true)),
                    None => {}
                }
                last_set = set.or(last_set);
            }
        }
    }

    fn quickack(s: &TcpStream) -> bool {
        socket2::SockRef::from(s).tcp_quickack().unwrap_or(false)
    }

    #[tokio::test]
    async fn a_sparse_read_after_an_owed_ack_asks_for_quick_acks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        // Delayed acks, as the kernel chooses once we answer what we read.
        socket2::SockRef::from(&client)
            .set_tcp_quickack(false)
            .unwrap();
        assert!(!quickack(&client));

        let mut stream = QuickAck::new(client);
        let hint = stream.hint();
        stream.write_all(b"\x40\x02\x00\x01").await.unwrap();
        stream.flush().await.unwrap();
        let mut puback = [0u8; 4];
        server.read_exact(&mut puback).await.unwrap();
        assert_eq!(&puback, b"\x40\x02\x00\x01", "writes pass through");

        // The session owes an acknowledgement; the next read (the first:
        // sparse) turns quick acks on.
        hint.store(true, Ordering::Relaxed);
        let publish = b"\x32\x05\x00\x01t\x00\x01";
        server.write_all(publish).await.unwrap();
        let mut got = [0u8; 7];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, publish);
        assert!(
            quickack(&stream.tcp),
            "quick acks are on after the next read"
        );
    }
}
