//! A fake MQTT 3.1.1 server for fault tests: accepts CONNECT, SUBSCRIBE and
//! PUBLISH, answers PINGREQ, and for its first `wedged` connections never
//! acknowledges a PUBLISH (a wedged inflight window). Later connections ack
//! normally (PUBACK; PUBREC/PUBCOMP for QoS 2). Like any 3.1.1-only broker
//! it answers an MQTT 5 CONNECT with CONNACK 0x01 and closes; such an
//! attempt is not counted as a connection (the client falls back at once).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running fake broker; stops when dropped.
pub struct FakeBroker {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// 3.1.1 connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// PUBLISH packets received so far (all connections).
    pub publishes: Arc<AtomicUsize>,
    /// PUBLISH packets acknowledged so far.
    pub acked: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeBroker {
    /// Starts on a free port; the first `wedged` connections never ack.
    pub async fn start(wedged: usize) -> FakeBroker {
        Self::start_on(0, wedged).await
    }

    /// Starts on `port` (0 = free port), e.g. to come back where a stopped one was.
    pub async fn start_on(port: u16, wedged: usize) -> FakeBroker {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind fake broker");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let publishes = Arc::new(AtomicUsize::new(0));
        let acked = Arc::new(AtomicUsize::new(0));
        let (c, p, a) = (connections.clone(), publishes.clone(), acked.clone());
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) closes every connection.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut sock, _)) = listener.accept().await {
                let (c, p, a) = (c.clone(), p.clone(), a.clone());
                conns.spawn(async move {
                    // CONNECT: protocol name `MQTT` (6 bytes), then the level.
                    let Ok((0x10, body)) = read_packet(&mut sock).await else {
                        return;
                    };
                    if body.get(6) == Some(&5) {
                        let _ = sock.write_all(&[0x20, 2, 0, 1]).await;
                        return;
                    }
                    let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                    if sock.write_all(&[0x20, 2, 0, 0]).await.is_err() {
                        return;
                    }
                    let _ = serve(sock, n > wedged, p, a).await;
                });
            }
        });
        FakeBroker {
            port,
            connections,
            publishes,
            acked,
            task,
        }
    }
}

async fn read_packet(sock: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let header = sock.read_u8().await?;
    let mut len: usize = 0;
    let mut shift = 0;
    loop {
        let b = sock.read_u8().await?;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(std::io::Error::other("bad remaining length"));
        }
    }
    let mut body = vec![0; len];
    sock.read_exact(&mut body).await?;
    Ok((header, body))
}

async fn serve(
    mut sock: TcpStream,
    ack: bool,
    publishes: Arc<AtomicUsize>,
    acked: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    loop {
        let (header, body) = read_packet(&mut sock).await?;
        match header >> 4 {
            3 => {
                publishes.fetch_add(1, Ordering::SeqCst);
                let qos = (header >> 1) & 3;
                let topic_len = usize::from(body[0]) << 8 | usize::from(body[1]);
                if qos > 0 && ack {
                    let id = [body[2 + topic_len], body[3 + topic_len]];
                    let kind = if qos == 1 { 0x40 } else { 0x50 }; // PUBACK / PUBREC
                    sock.write_all(&[kind, 2, id[0], id[1]]).await?;
                    if qos == 1 {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            6 => {
                // PUBREL → PUBCOMP
                sock.write_all(&[0x70, 2, body[0], body[1]]).await?;
                acked.fetch_add(1, Ordering::SeqCst);
            }
            8 => {
                // SUBSCRIBE → SUBACK granting each requested QoS.
                let mut granted = Vec::new();
                let mut i = 2;
                while i + 2 <= body.len() {
                    let l = usize::from(body[i]) << 8 | usize::from(body[i + 1]);
                    i += 2 + l;
                    granted.push(body.get(i).copied().unwrap_or(0) & 3);
                    i += 1;
                }
                let mut out = vec![0x90, (2 + granted.len()) as u8, body[0], body[1]];
                out.extend(granted);
                sock.write_all(&out).await?;
            }
            12 => sock.write_all(&[0xd0, 0]).await?, // PINGREQ → PINGRESP
            14 => return Ok(()),                     // DISCONNECT
            _ => {}
        }
    }
}
