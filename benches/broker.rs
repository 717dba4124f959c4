//! Built-in broker vs Mosquitto, side by side in one run, with the same raw
//! MQTT client code (our codec over TCP) against both:
//!
//! - 1 publisher → 1 subscriber, QoS 0 and QoS 1, 100-byte payloads;
//! - 1 publisher → 50 subscribers (fan-out), QoS 0;
//! - resident memory of 10,000 idle connected clients.
//!
//! Each broker runs in its own process (ours: this binary re-executed with
//! `MQB_BENCH_ROLE=broker`), so memory is the broker's alone.
//!
//! ```sh
//! ulimit -n 20000; cargo bench --bench broker
//! MQB_BENCH_MSGS=100000 MQB_BENCH_IDLE=10000 cargo bench --bench broker
//! ```

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mqbridge::broker::{Broker, BrokerOptions, Limits, ListenerOptions};
use mqbridge::protocol::v4::{Connect, Packet, PubAck, Publish, Subscribe, SubscribeFilter};
use mqbridge::protocol::{MQTT_MAX_PACKET_SIZE, WireQoS, decode, encode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Semaphore;

/// Payload size of every benchmark message.
const PAYLOAD: usize = 100;
/// Publisher-side window of unacknowledged QoS 1 messages (both brokers
/// are configured with the same `max_inflight`).
const WINDOW: usize = 100;
/// A run ends early if no subscriber received anything for this long.
const IDLE: Duration = Duration::from_secs(5);
/// Fan-out width.
const FANOUT: usize = 50;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::var("MQB_BENCH_ROLE").as_deref() == Ok("broker") {
        serve_broker();
        return;
    }
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        // `cargo test --benches` probes: nothing to run.
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run_all());
}

/// Child role: our broker on 127.0.0.1:0; prints the port, runs until stdin closes.
fn serve_broker() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let token = tokio_util::sync::CancellationToken::new();
        let opts = BrokerOptions {
            name: "bench".into(),
            listeners: vec![ListenerOptions {
                addr: "127.0.0.1:0".parse().expect("addr"),
                tls: None,
                websocket: false,
            }],
            limits: Limits {
                max_connections: 20_000,
                // Every bench client comes from 127.0.0.1, up to 200 at a
                // time in their handshake: one source, not an attacker.
                max_pending_handshakes: 20_000,
                max_pending_per_ip: 20_000,
                max_queued_messages: 1_000_000,
                max_inflight: WINDOW as u16,
                ..Limits::default()
            },
            ..BrokerOptions::default()
        };
        let broker = Broker::start(opts, token.clone())
            .await
            .expect("broker starts");
        println!("PORT {}", broker.local_addrs()[0].port());
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 16];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        token.cancel();
    });
}

/// A broker process under test.
struct BrokerProc {
    name: &'static str,
    addr: SocketAddr,
    child: tokio::process::Child,
    _dir: Option<tempfile::TempDir>,
}

impl BrokerProc {
    async fn ours() -> BrokerProc {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = tokio::process::Command::new(exe)
            .env("MQB_BENCH_ROLE", "broker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn our broker");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = lines.next_line().await.expect("read").expect("port line");
        let port: u16 = line
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .expect("PORT <n>");
        BrokerProc {
            name: "mqbridge",
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            _dir: None,
        }
    }

    async fn mosquitto() -> BrokerProc {
        let bin = "/usr/sbin/mosquitto";
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} not found: install mosquitto to run this benchmark"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages {WINDOW}\nmax_connections -1\n"
            ),
        )
        .expect("write conf");
        let child = tokio::process::Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mosquitto");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Startup readiness: retry the first connection for up to 5 s.
        let start = Instant::now();
        while TcpStream::connect(addr).await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "mosquitto did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        BrokerProc {
            name: "mosquitto",
            addr,
            child,
            _dir: Some(dir),
        }
    }

    fn rss_kib(&self) -> u64 {
        let Some(pid) = self.child.id() else { return 0 };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A raw connection split into halves with its own buffers.
struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
}

impl Conn {
    async fn connect(addr: SocketAddr, id: &str) -> Conn {
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let (rd, wr) = s.into_split();
        let mut c = Conn {
            rd,
            wr,
            buf: BytesMut::with_capacity(64 * 1024),
        };
        let mut connect = Connect::new(id);
        connect.keep_alive = 600;
        c.write(&[Packet::Connect(connect)]).await;
        match c.read().await {
            Some(Packet::ConnAck(_)) => {}
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c
    }

    async fn write(&mut self, packets: &[Packet]) {
        let mut out = BytesMut::new();
        for p in packets {
            encode(p, &mut out, MQTT_MAX_PACKET_SIZE).expect("encode");
        }
        self.wr.write_all(&out).await.expect("write");
    }

    async fn read(&mut self) -> Option<Packet> {
        read_packet(&mut self.rd, &mut self.buf).await
    }
}

async fn read_packet(rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> Option<Packet> {
    loop {
        if let Some(p) = decode(buf, MQTT_MAX_PACKET_SIZE).expect("decode") {
            return Some(p);
        }
        buf.reserve(64 * 1024);
        if rd.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// Subscribes `n` clients to `topic` at `qos`; returns their connections.
async fn subscribers(
    addr: SocketAddr,
    tag: &str,
    n: usize,
    topic: &str,
    qos: WireQoS,
) -> Vec<Conn> {
    let mut subs = Vec::new();
    for i in 0..n {
        let mut c = Conn::connect(addr, &format!("{tag}-sub-{i}")).await;
        c.write(&[Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![SubscribeFilter::new(topic.into(), qos)],
        })])
        .await;
        match c.read().await {
            Some(Packet::SubAck(_)) => {}
            other => panic!("expected SUBACK, got {other:?}"),
        }
        subs.push(c);
    }
    subs
}

/// Counts deliveries (acking QoS 1) until `expected` arrived or the link is idle.
async fn consume(mut c: Conn, expected: u64, counter: Arc<AtomicU64>) -> (u64, Instant) {
    let mut got = 0u64;
    let mut last = Instant::now();
    let mut acks = BytesMut::new();
    while got < expected {
        let mut batch = 0;
        loop {
            match decode(&mut c.buf, MQTT_MAX_PACKET_SIZE).expect("decode") {
                Some(Packet::Publish(p)) => {
                    got += 1;
                    batch += 1;
                    if p.qos == WireQoS::AtLeastOnce {
                        encode(&Packet::PubAck(PubAck::new(p.pkid)), &mut acks, usize::MAX)
                            .expect("encode");
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        if batch > 0 {
            last = Instant::now();
            counter.fetch_add(batch, Ordering::Relaxed);
        }
        if !acks.is_empty() {
            c.wr.write_all(&acks).await.expect("ack");
            acks.clear();
        }
        if got >= expected {
            break;
        }
        c.buf.reserve(64 * 1024);
        match tokio::time::timeout(IDLE, c.rd.read_buf(&mut c.buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
    (got, last)
}

/// Publishes `n` messages; QoS 1 keeps at most [`WINDOW`] unacknowledged.
async fn publish(c: Conn, n: usize, topic: &str, qos: WireQoS) {
    let Conn {
        mut rd,
        mut wr,
        mut buf,
    } = c;
    let window = Arc::new(Semaphore::new(WINDOW));
    let acker = if qos == WireQoS::AtLeastOnce {
        let window = window.clone();
        Some(tokio::spawn(async move {
            let mut acked = 0;
            while acked < n {
                match read_packet(&mut rd, &mut buf).await {
                    Some(Packet::PubAck(_)) => {
                        acked += 1;
                        window.add_permits(1);
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        }))
    } else {
        None
    };
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut pkid: u16 = 0;
    let mut sent = 0;
    while sent < n {
        let chunk = if qos == WireQoS::AtLeastOnce {
            let want = (n - sent).min(WINDOW) as u32;
            let permit = window.acquire_many(1).await.expect("window");
            permit.forget();
            let extra = window.available_permits().min(want as usize - 1);
            if extra > 0 {
                window
                    .acquire_many(extra as u32)
                    .await
                    .expect("window")
                    .forget();
            }
            1 + extra
        } else {
            (n - sent).min(256)
        };
        for _ in 0..chunk {
            let mut p = Publish::from_bytes(topic, qos, payload.clone());
            if qos != WireQoS::AtMostOnce {
                pkid = pkid.wrapping_add(1).max(1);
                p.pkid = pkid;
            }
            encode(&Packet::Publish(p), &mut out, usize::MAX).expect("encode");
        }
        wr.write_all(&out).await.expect("publish");
        out.clear();
        sent += chunk;
    }
    if let Some(a) = acker {
        let _ = a.await;
    }
}

struct RunResult {
    /// Messages published per second (end to end: until the last delivery).
    msgs_per_s: f64,
    /// Deliveries per second over all subscribers.
    deliveries_per_s: f64,
    lost: u64,
}

async fn run_case(b: &BrokerProc, tag: &str, subs_n: usize, n: usize, qos: WireQoS) -> RunResult {
    let topic = format!("bench/{tag}");
    let subs = subscribers(b.addr, tag, subs_n, &topic, qos).await;
    let publ = Conn::connect(b.addr, &format!("{tag}-pub")).await;
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let consumers: Vec<_> = subs
        .into_iter()
        .map(|c| tokio::spawn(consume(c, n as u64, counter.clone())))
        .collect();
    publish(publ, n, &topic, qos).await;
    let mut total = 0;
    let mut last = start;
    for c in consumers {
        let (got, at) = c.await.expect("consumer");
        total += got;
        last = last.max(at);
    }
    let secs = last.duration_since(start).as_secs_f64().max(1e-9);
    let expected = (n * subs_n) as u64;
    RunResult {
        msgs_per_s: n as f64 / secs,
        deliveries_per_s: total as f64 / secs,
        lost: expected.saturating_sub(total),
    }
}

/// Opens `n` idle connected clients; returns them (kept open) and the broker RSS.
async fn idle_clients(b: &BrokerProc, n: usize) -> (Vec<Conn>, u64, u64) {
    let before = b.rss_kib();
    let gate = Arc::new(Semaphore::new(200));
    let mut tasks = Vec::new();
    for i in 0..n {
        let gate = gate.clone();
        let addr = b.addr;
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire().await.expect("gate");
            Conn::connect(addr, &format!("idle-{i}")).await
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        conns.push(t.await.expect("idle client"));
    }
    // Let the broker settle its allocations (not a synchronisation).
    tokio::time::sleep(Duration::from_millis(500)).await;
    (conns, before, b.rss_kib())
}

async fn run_all() {
    let n = env_usize("MQB_BENCH_MSGS", 100_000);
    let fan_n = env_usize("MQB_BENCH_FANOUT_MSGS", 20_000);
    let idle = env_usize("MQB_BENCH_IDLE", 10_000);
    println!(
        "mqbridge broker benchmark: {n} messages of {PAYLOAD} B (fan-out: {fan_n} × {FANOUT} subscribers), idle clients: {idle}"
    );
    let cases: [(&str, usize, usize, WireQoS); 3] = [
        ("1→1 QoS 0", 1, n, WireQoS::AtMostOnce),
        ("1→1 QoS 1", 1, n, WireQoS::AtLeastOnce),
        ("1→50 QoS 0", FANOUT, fan_n, WireQoS::AtMostOnce),
    ];
    println!();
    println!(
        "| case | mqbridge msg/s | mosquitto msg/s | ratio | mqbridge deliveries/s | mosquitto deliveries/s | lost (ours/mosq) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, (name, subs, count, qos)) in cases.into_iter().enumerate() {
        if count == 0 {
            continue;
        }
        let ours = BrokerProc::ours().await;
        let r1 = run_case(&ours, &format!("o{i}"), subs, count, qos).await;
        drop(ours);
        let mosq = BrokerProc::mosquitto().await;
        let r2 = run_case(&mosq, &format!("m{i}"), subs, count, qos).await;
        drop(mosq);
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {}/{} |",
            r1.msgs_per_s,
            r2.msgs_per_s,
            r1.msgs_per_s / r2.msgs_per_s,
            r1.deliveries_per_s,
            r2.deliveries_per_s,
            r1.lost,
            r2.lost
        );
    }
    if idle > 0 {
        println!();
        println!("| {idle} idle clients | RSS before | RSS with clients | per client |");
        println!("|---|---|---|---|");
        for b in [BrokerProc::ours().await, BrokerProc::mosquitto().await] {
            let (conns, before, after) = idle_clients(&b, idle).await;
            println!(
                "| {} | {:.1} MiB | {:.1} MiB | {:.1} KiB |",
                b.name,
                before as f64 / 1024.0,
                after as f64 / 1024.0,
                after.saturating_sub(before) as f64 / idle as f64
            );
            drop(conns);
        }
    }
}
