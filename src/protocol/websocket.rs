//! MQTT over WebSocket as a plain byte stream, so the one connection engine
//! ([`super::framed`]) runs unchanged over `ws://` and `wss://`.
//!
//! MQTT rides in binary messages (MQTT 3.1.1 §6); a message may hold part of
//! a packet or several packets, so the frames are just a byte transport.
//! [`BinaryFrames`] turns a [`WebSocketStream`] into a stream and sink of
//! [`Bytes`]; tokio-util's `StreamReader` and `SinkWriter` make that an
//! `AsyncRead + AsyncWrite` ([`byte_stream`]). Each flushed write becomes one
//! binary message. Pings are answered by tungstenite while reading.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};

/// The WebSocket subprotocol MQTT 3.1.1 registers (`Sec-WebSocket-Protocol: mqtt`).
pub const SUBPROTOCOL: &str = "mqtt";

/// A WebSocket connection carrying MQTT, as a byte stream.
pub type WsByteStream<S> = SinkWriter<StreamReader<CopyToBytes<BinaryFrames<S>>, Bytes>>;

/// Wraps an established WebSocket connection as an `AsyncRead + AsyncWrite`.
pub fn byte_stream<S>(ws: WebSocketStream<S>) -> WsByteStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    SinkWriter::new(StreamReader::new(CopyToBytes::new(BinaryFrames { ws })))
}

/// The binary payloads of a WebSocket connection: a stream of received
/// payloads (a close frame ends it; a text frame is an error, as MQTT allows
/// only binary ones) and a sink that sends each buffer as a binary message.
#[derive(Debug)]
pub struct BinaryFrames<S> {
    ws: WebSocketStream<S>,
}

/// tungstenite's error as an `io::Error`; a closed connection reads as EOF
/// upstream, so only real failures get here.
fn to_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, e)
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for BinaryFrames<S> {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let next = ready!(Pin::new(&mut self.ws).poll_next(cx));
            return Poll::Ready(match next {
                None | Some(Ok(Message::Close(_))) => None,
                Some(Ok(Message::Binary(b))) => Some(Ok(b)),
                // Control frames: tungstenite queues the pong itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Text(_))) => Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "WebSocket text frame (MQTT uses binary frames)",
                ))),
                Some(Err(e)) => Some(Err(to_io(e))),
            });
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Bytes> for BinaryFrames<S> {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_ready(cx).map_err(to_io)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> io::Result<()> {
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(item))
            .map_err(to_io)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(to_io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// A hang fails the test fast.
    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(5), f)
            .await
            .expect("timed out")
    }

    async fn pair() -> (
        WsByteStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        // A tiny duplex buffer forces partial reads and writes.
        let (a, b) = tokio::io::duplex(8);
        let client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let server = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        (byte_stream(client), server)
    }

    #[tokio::test]
    async fn bytes_cross_frame_boundaries_both_ways() {
        let (mut bytes, mut peer) = pair().await;
        let send = async {
            peer.send(Message::binary(b"he".to_vec())).await?;
            peer.send(Message::Ping(Bytes::from_static(b"p"))).await?;
            peer.send(Message::binary(b"llo".to_vec())).await?;
            peer.close(None).await
        };
        let recv = async {
            let mut got = Vec::new();
            bytes.read_to_end(&mut got).await.map(|_| got)
        };
        let (sent, got) = within(async { tokio::join!(send, recv) }).await;
        sent.expect("peer sends");
        assert_eq!(got.expect("read"), b"hello");
    }

    #[tokio::test]
    async fn writes_are_binary_messages() {
        let (mut bytes, mut peer) = pair().await;
        let write = async {
            bytes.write_all(b"\x10\x02ab").await?;
            bytes.flush().await
        };
        let (written, msg) =
            within(async { tokio::join!(write, futures_util::StreamExt::next(&mut peer)) }).await;
        written.expect("write");
        match msg {
            Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], b"\x10\x02ab"),
            other => panic!("expected a binary message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn text_frames_are_refused() {
        let (mut bytes, mut peer) = pair().await;
        let send = peer.send(Message::text("CONNECT"));
        let mut buf = [0u8; 16];
        let (sent, read) = within(async { tokio::join!(send, bytes.read(&mut buf)) }).await;
        sent.expect("peer sends");
        let err = read.expect_err("a text frame is an error");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
