//! Helpers for the broker tests: an in-process broker on port 0, a raw
//! packet client over our codec and a `rumqttc` client that forwards every
//! incoming packet.

use std::net::SocketAddr;
use std::time::Duration;

use mqbridge::broker::{Broker, BrokerOptions, ListenerOptions};
use mqbridge::protocol::v4::{
    Connect, ConnectReturnCode, LastWill, Login, Packet, PubAck, Publish, Subscribe,
    SubscribeFilter, SubscribeReasonCode, Unsubscribe,
};
use mqbridge::protocol::version::Packet as AnyPacket;
use mqbridge::protocol::{Framed, MQTT_MAX_PACKET_SIZE, QoS, WireQoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::wait::{wait_until, within};

/// A broker on 127.0.0.1:0, cancelled on drop.
pub struct TestBroker {
    pub broker: Broker,
    pub addr: SocketAddr,
    pub token: CancellationToken,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut BrokerOptions)) -> TestBroker {
        let mut opts = BrokerOptions {
            name: "test".into(),
            listeners: vec![ListenerOptions {
                addr: "127.0.0.1:0".parse().unwrap(),
                tls: None,
                websocket: false,
            }],
            ..BrokerOptions::default()
        };
        f(&mut opts);
        let token = CancellationToken::new();
        let broker = Broker::start(opts, token.clone())
            .await
            .expect("broker starts");
        let addr = broker.local_addrs()[0];
        TestBroker {
            broker,
            addr,
            token,
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A client speaking raw packets through our codec.
pub struct Raw {
    pub framed: Framed<TcpStream>,
    next_pkid: u16,
}

pub fn connect_packet(
    id: &str,
    clean: bool,
    login: Option<(&str, &str)>,
    will: Option<(String, String)>,
    keep_alive: u16,
) -> Packet {
    let mut c = Connect::new(id);
    c.clean_session = clean;
    c.keep_alive = keep_alive;
    c.login = login.map(|(u, p)| Login {
        username: u.into(),
        password: p.into(),
    });
    c.last_will = will.map(|(t, m)| LastWill::new(t, m, WireQoS::AtMostOnce, false));
    Packet::Connect(c)
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        let s = within(TcpStream::connect(addr)).await.expect("tcp connect");
        Raw {
            framed: Framed::new(s, MQTT_MAX_PACKET_SIZE, MQTT_MAX_PACKET_SIZE),
            next_pkid: 1,
        }
    }

    pub fn from_stream(s: TcpStream) -> Raw {
        Raw {
            framed: Framed::new(s, MQTT_MAX_PACKET_SIZE, MQTT_MAX_PACKET_SIZE),
            next_pkid: 1,
        }
    }

    pub async fn connect_full(
        addr: SocketAddr,
        id: &str,
        clean: bool,
        login: Option<(&str, &str)>,
        will: Option<(String, String)>,
        keep_alive: u16,
    ) -> (Raw, ConnectReturnCode, bool) {
        let mut r = Raw::open(addr).await;
        r.send(connect_packet(id, clean, login, will, keep_alive))
            .await;
        match r.next().await {
            Packet::ConnAck(a) => (r, a.code, a.session_present),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn connect(addr: SocketAddr, id: &str, clean: bool) -> Raw {
        Self::connect_with(addr, id, clean, None, None, 0).await
    }

    pub async fn connect_with(
        addr: SocketAddr,
        id: &str,
        clean: bool,
        login: Option<(&str, &str)>,
        will: Option<(String, String)>,
        keep_alive: u16,
    ) -> Raw {
        let (r, code, _) = Self::connect_full(addr, id, clean, login, will, keep_alive).await;
        assert_eq!(code, ConnectReturnCode::Success, "CONNECT of {id} refused");
        r
    }

    pub async fn connect_present(addr: SocketAddr, id: &str, clean: bool) -> (Raw, bool) {
        let (r, code, present) = Self::connect_full(addr, id, clean, None, None, 0).await;
        assert_eq!(code, ConnectReturnCode::Success);
        (r, present)
    }

    pub async fn connect_code(
        addr: SocketAddr,
        id: &str,
        clean: bool,
        login: Option<(&str, &str)>,
    ) -> ConnectReturnCode {
        Self::connect_full(addr, id, clean, login, None, 0).await.1
    }

    pub async fn send_connect(
        &mut self,
        id: &str,
        clean: bool,
        login: Option<(&str, &str)>,
        will: Option<(String, String)>,
        keep_alive: u16,
    ) {
        self.send(connect_packet(id, clean, login, will, keep_alive))
            .await;
    }

    pub async fn send(&mut self, p: Packet) {
        within(self.framed.write_packet(&AnyPacket::V3(p)))
            .await
            .expect("write packet");
    }

    pub async fn next(&mut self) -> Packet {
        match within(self.framed.read_packet())
            .await
            .expect("read packet")
        {
            AnyPacket::V3(p) => p,
            AnyPacket::V5(p) => panic!("a v5 packet on a 3.1.1 connection: {p:?}"),
        }
    }

    pub async fn next_publish(&mut self) -> Publish {
        match self.next().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Publishes and, for QoS 1 received by the caller, leaves the ack to it.
    pub async fn publish(&mut self, topic: &str, payload: &str, qos: QoS, dup: bool, pkid: u16) {
        let mut p = Publish::new(topic, WireQoS::from(qos), payload.as_bytes().to_vec());
        p.pkid = pkid;
        p.dup = dup;
        self.send(Packet::Publish(p)).await;
    }

    pub async fn subscribe(&mut self, filters: &[(&str, QoS)]) -> Vec<SubscribeReasonCode> {
        let pkid = self.pkid();
        let s = Subscribe {
            pkid,
            filters: filters
                .iter()
                .map(|(f, q)| SubscribeFilter::new(f.to_string(), WireQoS::from(*q)))
                .collect(),
        };
        self.send(Packet::Subscribe(s)).await;
        match self.next().await {
            Packet::SubAck(a) => {
                assert_eq!(a.pkid, pkid);
                a.return_codes
            }
            other => panic!("expected SUBACK first, got {other:?}"),
        }
    }

    pub async fn unsubscribe(&mut self, filters: &[&str]) {
        let pkid = self.pkid();
        let u = Unsubscribe {
            pkid,
            topics: filters.iter().map(|f| f.to_string()).collect(),
        };
        self.send(Packet::Unsubscribe(u)).await;
        match self.next().await {
            Packet::UnsubAck(a) => assert_eq!(a.pkid, pkid),
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }

    /// PINGREQ → PINGRESP, asserting nothing else arrived in between (so
    /// everything the broker had to send before is known to be absent).
    pub async fn ping(&mut self) {
        self.send(Packet::PingReq).await;
        match self.next().await {
            Packet::PingResp => {}
            other => panic!("expected PINGRESP (nothing else pending), got {other:?}"),
        }
    }

    pub async fn puback(&mut self, pkid: u16) {
        self.send(Packet::PubAck(PubAck::new(pkid))).await;
    }

    /// Asserts the broker closes the connection.
    pub async fn expect_closed(&mut self) {
        loop {
            match within(self.framed.read_packet()).await {
                Err(_) => return,
                Ok(AnyPacket::V3(Packet::PingResp)) => {}
                Ok(other) => panic!("expected the connection to close, got {other:?}"),
            }
        }
    }

    fn pkid(&mut self) -> u16 {
        let p = self.next_pkid;
        self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
        p
    }
}

/// Sends an MQTT 3.1 CONNECT (`MQIsdp`, level 3); returns the CONNACK code.
pub async fn raw_mqisdp_connack(addr: SocketAddr, level: u8) -> Option<u8> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let mut body = vec![0, 6];
    body.extend_from_slice(b"MQIsdp");
    body.extend_from_slice(&[level, 0x02, 0, 60, 0, 1, b'a']);
    let mut pkt = vec![0x10, body.len() as u8];
    pkt.extend_from_slice(&body);
    s.write_all(&pkt).await.ok()?;
    let mut buf = [0u8; 4];
    within(s.read_exact(&mut buf)).await.ok()?;
    assert_eq!(&buf[..2], &[0x20, 0x02]);
    Some(buf[3])
}

/// A `rumqttc` client with its event loop driven in a task; incoming packets
/// are forwarded. Returns after the CONNACK.
pub async fn rumqttc_client(
    addr: SocketAddr,
    id: &str,
    clean: bool,
) -> (
    rumqttc::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<rumqttc::Packet>,
) {
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_clean_session(clean);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 100);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(p)) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    loop {
        match within(rx.recv()).await.expect("rumqttc connects") {
            rumqttc::Packet::ConnAck(_) => break,
            _ => continue,
        }
    }
    (client, rx)
}

pub async fn wait_suback(rx: &mut tokio::sync::mpsc::UnboundedReceiver<rumqttc::Packet>) {
    loop {
        if let rumqttc::Packet::SubAck(_) = within(rx.recv()).await.expect("event loop alive") {
            return;
        }
    }
}

pub async fn wait_publish(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<rumqttc::Packet>,
) -> rumqttc::Publish {
    loop {
        if let rumqttc::Packet::Publish(p) = within(rx.recv()).await.expect("event loop alive") {
            return p;
        }
    }
}

impl TestBroker {
    /// Waits until the broker holds at least `n` subscriptions.
    pub async fn wait_subscriptions(&self, n: u64) {
        wait_until(|| self.broker.stats().subscriptions >= n).await;
    }
}

/// A client speaking raw MQTT 5 packets through our v5 codec adapter
/// (for what the CLI tools cannot express: exact properties, acks held
/// back, hostile packets).
pub struct Raw5 {
    stream: TcpStream,
    buf: bytes::BytesMut,
    next_pkid: u16,
}

pub use mqbridge::protocol::v5::packets as v5p;

impl Raw5 {
    pub async fn open(addr: SocketAddr) -> Raw5 {
        let stream = within(TcpStream::connect(addr)).await.expect("connect");
        Raw5 {
            stream,
            buf: bytes::BytesMut::new(),
            next_pkid: 1,
        }
    }

    /// Connects with `properties` (clean start); the CONNACK.
    pub async fn connect_with(
        addr: SocketAddr,
        id: &str,
        clean_start: bool,
        properties: Option<v5p::ConnectProperties>,
        will: Option<v5p::LastWill>,
    ) -> (Raw5, v5p::ConnAck) {
        let mut c = Raw5::open(addr).await;
        let connect = v5p::Connect {
            keep_alive: 30,
            client_id: id.into(),
            clean_start,
            properties,
        };
        c.send(v5p::Packet::Connect(connect, will, None)).await;
        match c.next().await {
            v5p::Packet::ConnAck(a) => (c, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects (clean start, no properties) and asserts success.
    pub async fn connect(addr: SocketAddr, id: &str) -> Raw5 {
        let (c, ack) = Raw5::connect_with(addr, id, true, None, None).await;
        assert_eq!(ack.code, v5p::ConnectReturnCode::Success, "{ack:?}");
        c
    }

    pub async fn send(&mut self, p: v5p::Packet) {
        let mut out = bytes::BytesMut::new();
        mqbridge::protocol::v5::encode(
            &p,
            &mut out,
            usize::MAX,
            mqbridge::protocol::v5::Sender::Client,
        )
        .expect("encodes");
        self.send_bytes(&out).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        within(self.stream.write_all(bytes)).await.expect("write");
    }

    /// The next packet; panics on a close or a timeout.
    pub async fn next(&mut self) -> v5p::Packet {
        self.try_next().await.expect("connection closed")
    }

    /// The next packet, `None` when the broker closed the connection.
    pub async fn try_next(&mut self) -> Option<v5p::Packet> {
        loop {
            if let Some(p) = mqbridge::protocol::v5::decode(
                &mut self.buf,
                usize::MAX,
                mqbridge::protocol::v5::Sender::Server,
            )
            .expect("valid packet from the broker")
            {
                return Some(p);
            }
            let n = within(self.stream.read_buf(&mut self.buf))
                .await
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// The next PUBLISH, skipping PINGRESPs.
    pub async fn next_publish(&mut self) -> v5p::Publish {
        loop {
            match self.next().await {
                v5p::Packet::Publish(p) => return p,
                v5p::Packet::PingResp(_) => {}
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }

    /// PINGREQ → PINGRESP: everything sent before has been routed; any
    /// PUBLISH arriving first is returned (a flow-control test's proof),
    /// PUBACK/PUBCOMP of this client's own publishes skipped.
    pub async fn ping_collect(&mut self) -> Vec<v5p::Publish> {
        self.send(v5p::Packet::PingReq(v5p::PingReq)).await;
        let mut got = Vec::new();
        loop {
            match self.next().await {
                v5p::Packet::PingResp(_) => return got,
                v5p::Packet::Publish(p) => got.push(p),
                // Acks of what this client published.
                v5p::Packet::PubAck(_) | v5p::Packet::PubComp(_) => {}
                other => panic!("expected PINGRESP, got {other:?}"),
            }
        }
    }

    /// SUBSCRIBE with `filters` and an optional subscription identifier;
    /// the SUBACK.
    pub async fn subscribe(&mut self, filters: Vec<v5p::Filter>, id: Option<usize>) -> v5p::SubAck {
        let pkid = self.pkid();
        let properties = id.map(|id| v5p::SubscribeProperties {
            id: Some(id),
            user_properties: Vec::new(),
        });
        self.send(v5p::Packet::Subscribe(v5p::Subscribe {
            pkid,
            filters,
            properties,
        }))
        .await;
        match self.next().await {
            v5p::Packet::SubAck(a) => {
                assert_eq!(a.pkid, pkid);
                a
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// A PUBLISH of `topic` at `qos` with `properties` (packet id chosen).
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        properties: Option<v5p::PublishProperties>,
    ) -> u16 {
        let mut p = v5p::Publish::new(topic, qos, payload.to_vec(), properties);
        p.retain = retain;
        let pkid = if qos == rumqttc::v5::mqttbytes::QoS::AtMostOnce {
            0
        } else {
            self.pkid()
        };
        p.pkid = pkid;
        self.send(v5p::Packet::Publish(p)).await;
        pkid
    }

    /// Asserts the broker sends DISCONNECT with `code` and closes.
    pub async fn expect_disconnect(&mut self, code: v5p::DisconnectReasonCode) {
        loop {
            match self.try_next().await {
                Some(v5p::Packet::Disconnect(d)) => {
                    assert_eq!(d.reason_code, code, "{d:?}");
                    assert!(self.try_next().await.is_none(), "closed after DISCONNECT");
                    return;
                }
                Some(
                    v5p::Packet::PingResp(_) | v5p::Packet::PubAck(_) | v5p::Packet::PubRec(_),
                ) => {}
                Some(other) => panic!("expected DISCONNECT {code:?}, got {other:?}"),
                None => panic!("closed without DISCONNECT {code:?}"),
            }
        }
    }

    fn pkid(&mut self) -> u16 {
        let p = self.next_pkid;
        self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
        p
    }
}
