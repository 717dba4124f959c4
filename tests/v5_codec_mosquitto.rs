//! The MQTT 5 codec adapter (`protocol::v5`) against an independent peer:
//! a real Mosquitto 2 broker (our codec as the client) and the
//! `mosquitto_pub -V 5` client (our codec as the server). Every message
//! property must arrive as sent. Nothing here is wired into the broker or
//! the client core yet; this checks the wire format both ways.

mod common;

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use common::mosquitto::{Mosquitto, require_bin};
use common::wait::within;
use mqbridge::protocol::alias;
use mqbridge::protocol::convert::{TopicForm, message_from_v5_publish, v5_publish_from_message};
use mqbridge::protocol::v5::packets::{
    ConnAck, ConnAckProperties, Connect, ConnectProperties, ConnectReturnCode, Disconnect,
    DisconnectReasonCode, Filter, Packet, PubAck, PubAckReason, Subscribe, SubscribeProperties,
    SubscribeReasonCode,
};
use mqbridge::protocol::v5::{Sender, decode, encode};
use mqbridge::protocol::{Message, MessageProperties, PropertyFields, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX: usize = 1 << 20;

/// One TCP connection speaking MQTT 5 through our adapter.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// Who we are (the peer is the other side).
    us: Sender,
}

impl Conn {
    async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        encode(p, &mut out, MAX, self.us).expect("encodes");
        self.stream.write_all(&out).await.expect("write");
    }

    async fn next(&mut self) -> Packet {
        let peer = match self.us {
            Sender::Client => Sender::Server,
            Sender::Server => Sender::Client,
        };
        loop {
            if let Some(p) = decode(&mut self.buf, MAX, peer).expect("peer's packet decodes") {
                return p;
            }
            let n = within(self.stream.read_buf(&mut self.buf))
                .await
                .expect("read");
            assert!(n > 0, "peer closed the connection");
        }
    }

    async fn connect(addr: SocketAddr, id: &str, props: ConnectProperties) -> (Conn, ConnAck) {
        let stream = within(TcpStream::connect(addr)).await.expect("connect");
        let mut c = Conn {
            stream,
            buf: BytesMut::new(),
            us: Sender::Client,
        };
        let connect = Connect {
            keep_alive: 30,
            client_id: id.into(),
            clean_start: true,
            properties: Some(props),
        };
        c.send(&Packet::Connect(connect, None, None)).await;
        match c.next().await {
            Packet::ConnAck(ack) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
}

fn full_message(topic: &str) -> Message {
    let mut m = Message::new(topic, "{\"v\":1}", QoS::AtLeastOnce, false);
    m.properties = Some(MessageProperties::from(PropertyFields {
        payload_is_utf8: Some(true),
        message_expiry_interval: Some(60),
        content_type: Some("application/json".into()),
        response_topic: Some("v5c/reply".into()),
        correlation_data: Some(Bytes::from_static(b"\x00corr\xff")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        subscription_identifiers: vec![],
    }));
    m
}

#[tokio::test]
async fn every_property_survives_a_round_trip_through_mosquitto() {
    let broker = Mosquitto::start();
    let mut sub_props = ConnectProperties::new();
    sub_props.receive_maximum = Some(10);
    sub_props.topic_alias_max = Some(5);
    sub_props.user_properties = vec![("who".into(), "sub".into())];
    let (mut sub, ack) = Conn::connect(broker.addr(), "v5c-sub", sub_props).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let filter = Filter::new("v5c/#", QoS::AtLeastOnce.into());
    let subscribe = Subscribe {
        pkid: 1,
        filters: vec![filter],
        properties: Some(SubscribeProperties {
            id: Some(7),
            user_properties: vec![],
        }),
    };
    sub.send(&Packet::Subscribe(subscribe)).await;
    match sub.next().await {
        Packet::SubAck(s) => assert!(matches!(
            s.return_codes[..],
            [SubscribeReasonCode::Success(_)]
        )),
        other => panic!("expected SUBACK, got {other:?}"),
    }

    // The publisher uses a topic alias when the broker allows one.
    let (mut publ, ack) = Conn::connect(broker.addr(), "v5c-pub", ConnectProperties::new()).await;
    let server_alias_max = ack
        .properties
        .as_ref()
        .and_then(|p| p.topic_alias_max)
        .unwrap_or(0);
    let mut aliases = alias::Outbound::new(server_alias_max);
    let sent = full_message("v5c/a");
    for pkid in [1, 2] {
        let form = aliases.choose(&sent.topic);
        if server_alias_max > 0 {
            assert_ne!(form, TopicForm::Name);
        }
        let p = v5_publish_from_message(&sent, pkid, false, form, Some(60));
        publ.send(&Packet::Publish(p)).await;
        match publ.next().await {
            Packet::PubAck(a) => assert_eq!((a.pkid, a.reason), (pkid, PubAckReason::Success)),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    let mut inbound = alias::Inbound::new(5);
    for _ in 0..2 {
        let Packet::Publish(p) = sub.next().await else {
            panic!("expected PUBLISH")
        };
        let pkid = p.pkid;
        let got = message_from_v5_publish(p);
        let topic = inbound
            .resolve(&got.message.topic, got.topic_alias)
            .expect("alias resolves");
        assert_eq!(topic, "v5c/a");
        let props = got.message.properties.expect("properties arrive");
        let want = sent.properties.as_ref().expect("sent properties");
        assert_eq!(props.payload_is_utf8, want.payload_is_utf8);
        assert_eq!(props.content_type, want.content_type);
        assert_eq!(props.response_topic, want.response_topic);
        assert_eq!(props.correlation_data, want.correlation_data);
        assert_eq!(props.user_properties, want.user_properties, "order kept");
        assert_eq!(props.subscription_identifiers, [7]);
        let expiry = props.message_expiry_interval.expect("expiry kept");
        assert!((58..=60).contains(&expiry), "expiry {expiry}");
        assert_eq!(&got.message.payload[..], &sent.payload[..]);
        sub.send(&Packet::PubAck(PubAck::new(pkid, None))).await;
    }
    for c in [&mut sub, &mut publ] {
        let bye = Disconnect::new(DisconnectReasonCode::NormalDisconnection);
        c.send(&Packet::Disconnect(bye)).await;
    }
}

#[tokio::test]
async fn mosquitto_pub_v5_properties_decode_and_our_connack_is_accepted() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    let client = tokio::process::Command::new(require_bin("mosquitto_pub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "5",
            "-q",
            "1",
            "-i",
            "v5-cli",
        ])
        .args(["-t", "cli/t", "-m", "hello"])
        .args(["-D", "publish", "user-property", "k", "v1"])
        .args(["-D", "publish", "user-property", "k", "v2"])
        .args(["-D", "publish", "content-type", "text/plain"])
        .args(["-D", "publish", "correlation-data", "c0"])
        .args(["-D", "publish", "response-topic", "cli/reply"])
        .args(["-D", "publish", "message-expiry-interval", "30"])
        .args(["-D", "publish", "payload-format-indicator", "1"])
        .args(["-D", "connect", "receive-maximum", "4"])
        .kill_on_drop(true)
        .output();
    let server = async {
        let (stream, _) = within(listener.accept()).await.expect("accept");
        let mut c = Conn {
            stream,
            buf: BytesMut::new(),
            us: Sender::Server,
        };
        let Packet::Connect(connect, _, _) = c.next().await else {
            panic!("expected CONNECT")
        };
        assert_eq!(connect.client_id, "v5-cli");
        let receive_max = connect.properties.as_ref().and_then(|p| p.receive_maximum);
        assert_eq!(receive_max, Some(4));
        let props = ConnAckProperties {
            session_expiry_interval: None,
            receive_max: Some(5),
            max_qos: None,
            retain_available: None,
            max_packet_size: Some(4096),
            assigned_client_identifier: None,
            topic_alias_max: Some(0),
            reason_string: None,
            user_properties: vec![("from".into(), "test".into())],
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        };
        let ack = ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
            properties: Some(props),
        };
        c.send(&Packet::ConnAck(ack)).await;
        let Packet::Publish(p) = c.next().await else {
            panic!("expected PUBLISH")
        };
        let pkid = p.pkid;
        let got = message_from_v5_publish(p).message;
        c.send(&Packet::PubAck(PubAck::new(pkid, None))).await;
        assert!(matches!(c.next().await, Packet::Disconnect(_)));
        got
    };
    let (out, got) = tokio::join!(within(client), server);
    let out = out.expect("mosquitto_pub runs");
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!((&*got.topic, &got.payload[..]), ("cli/t", &b"hello"[..]));
    let props = got.properties.expect("properties");
    let users: Vec<_> = props
        .user_properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(users, [("k", "v1"), ("k", "v2")]);
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"c0"[..]));
    assert_eq!(props.response_topic.as_deref(), Some("cli/reply"));
    assert_eq!(props.message_expiry_interval, Some(30));
    assert_eq!(props.payload_is_utf8, Some(true));
}
