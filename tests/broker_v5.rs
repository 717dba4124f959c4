//! MQTT 5 in the built-in broker, one test per normative statement or
//! feature (named after the statement where there is one): the Mosquitto
//! CLI clients (`mosquitto_pub -V 5`, `mosquitto_sub -V 5`, mixed with
//! `-V 311` peers; a missing binary fails the test) as independent
//! clients, and raw MQTT 5 packets through our codec adapter where the
//! CLI cannot express the case.

mod common;

use common::broker::{Raw, Raw5, TestBroker, v5p};
use common::mosquitto::{MosqSub, mosquitto_pub, password_file};
use common::wait::{wait_until, within};
use mqbridge::broker::{BrokerOptions, Limits};
use mqbridge::protocol::QoS;
use mqbridge::protocol::reason::ReasonCode;
use rumqttc::v5::mqttbytes::QoS as Q5;
use v5p::{
    ConnectProperties, ConnectReturnCode as Code5, DisconnectReasonCode, Filter, Packet as P5,
    PublishProperties, RetainForwardRule,
};

fn props() -> ConnectProperties {
    ConnectProperties::new()
}

fn filter(path: &str, qos: Q5) -> Filter {
    Filter::new(path, qos)
}

fn suback_codes(a: &v5p::SubAck) -> Vec<ReasonCode> {
    a.return_codes
        .iter()
        .map(|c| mqbridge::protocol::convert::suback_reason(*c))
        .collect()
}

/// Every message property a publisher can set.
fn full_properties() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        topic_alias: None,
        response_topic: Some("reply/here".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00corr\xff")),
        user_properties: vec![
            ("z".into(), "1".into()),
            ("a".into(), "2".into()),
            ("z".into(), "3".into()),
        ],
        subscription_identifiers: Vec::new(),
        content_type: Some("application/json".into()),
    }
}

/// [MQTT-3.1.2-2] and issue 12: 3.1.1 and 5.0 CLI clients on one
/// listener; a v5 subscriber gets a v3 publisher's message and a v3
/// subscriber a v5 publisher's (its properties dropped, nothing else).
#[tokio::test]
async fn v5_and_v311_cli_clients_mixed_on_one_listener() {
    let b = TestBroker::start().await;
    let mut sub5 = MosqSub::spawn(
        b.addr,
        &["-V", "5", "-t", "mix/#", "-q", "1", "-v", "-i", "mix-sub5"],
        2,
    );
    let mut sub311 = MosqSub::spawn(
        b.addr,
        &[
            "-V",
            "311",
            "-t",
            "mix/#",
            "-q",
            "1",
            "-v",
            "-i",
            "mix-sub311",
        ],
        2,
    );
    b.wait_subscriptions(2).await;
    mosquitto_pub(
        b.addr,
        &["-V", "311", "-t", "mix/a", "-m", "from311", "-q", "1"],
    )
    .await;
    mosquitto_pub(
        b.addr,
        &[
            "-V",
            "5",
            "-t",
            "mix/b",
            "-m",
            "from5",
            "-q",
            "1",
            "-D",
            "publish",
            "user-property",
            "k",
            "v",
        ],
    )
    .await;
    let want = vec!["mix/a from311".to_string(), "mix/b from5".to_string()];
    assert_eq!(sub5.lines().await, want);
    assert_eq!(sub311.lines().await, want);
}

/// Properties flow from a v5 publisher to a v5 subscriber unchanged:
/// user properties in order (repeats kept), content type, payload format
/// indicator, correlation data, response topic, message expiry.
#[tokio::test]
async fn mqtt_3_3_2_17_properties_are_forwarded_unchanged() {
    let b = TestBroker::start().await;
    let mut sub = Raw5::connect(b.addr, "pf-sub").await;
    sub.subscribe(vec![filter("pf/#", Q5::AtLeastOnce)], None)
        .await;
    let mut publ = Raw5::connect(b.addr, "pf-pub").await;
    publ.publish(
        "pf/x",
        b"{}",
        Q5::AtLeastOnce,
        false,
        Some(full_properties()),
    )
    .await;
    let p = sub.next_publish().await;
    let got = p.properties.expect("properties arrive");
    let sent = full_properties();
    assert_eq!(got.user_properties, sent.user_properties);
    assert_eq!(got.content_type, sent.content_type);
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.correlation_data, sent.correlation_data);
    assert_eq!(got.response_topic, sent.response_topic);
    let expiry = got.message_expiry_interval.expect("expiry kept");
    assert!((3598..=3600).contains(&expiry), "{expiry}");
    assert_eq!(&p.topic[..], b"pf/x");
}

/// The same through the CLI: `mosquitto_sub -V 5 -F` prints the user
/// property and content type a `mosquitto_pub -V 5 -D` set.
#[tokio::test]
async fn cli_v5_properties_end_to_end() {
    let b = TestBroker::start().await;
    let mut sub = MosqSub::spawn(
        b.addr,
        &[
            "-V",
            "5",
            "-t",
            "cp/#",
            "-q",
            "1",
            "-F",
            "%t|%C|%P|%p",
            "-i",
            "cp-sub",
        ],
        1,
    );
    b.wait_subscriptions(1).await;
    mosquitto_pub(
        b.addr,
        &[
            "-V",
            "5",
            "-t",
            "cp/x",
            "-m",
            "hello",
            "-q",
            "1",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "user-property",
            "who",
            "me",
        ],
    )
    .await;
    assert_eq!(
        sub.lines().await,
        vec!["cp/x|text/plain|who:me|hello".to_string()]
    );
}

/// [MQTT-3.2.2-16] an empty client id is assigned and returned; the CONNACK
/// says our Receive Maximum, Maximum Packet Size and Topic Alias Maximum.
#[tokio::test]
async fn mqtt_3_2_2_16_connack_properties_and_assigned_client_id() {
    let b = TestBroker::start_with(|o| {
        o.limits = Limits {
            max_inflight: 7,
            max_packet_size: 4096,
            ..Limits::default()
        }
    })
    .await;
    let (_c, ack) = Raw5::connect_with(b.addr, "", true, Some(props()), None).await;
    assert_eq!(ack.code, Code5::Success);
    let p = ack.properties.expect("CONNACK properties");
    assert!(
        p.assigned_client_identifier
            .is_some_and(|id| !id.is_empty())
    );
    assert_eq!(p.receive_max, Some(7));
    assert_eq!(p.max_packet_size, Some(4096));
    assert_eq!(
        p.topic_alias_max,
        Some(mqbridge::broker::DEFAULT_TOPIC_ALIAS_MAXIMUM)
    );
    // Shared subscriptions, wildcards, identifiers, retain: available
    // (absent means available).
    assert_eq!(p.shared_subscription_available, None);
    assert_eq!(p.retain_available, None);
}

/// [MQTT-3.1.2-2] a protocol level we do not speak: MQTT 5 gets 0x84.
#[tokio::test]
async fn mqtt_3_1_2_2_unsupported_level_answered_0x84() {
    let b = TestBroker::start().await;
    let mut c = Raw5::open(b.addr).await;
    // CONNECT, protocol name MQTT, level 6.
    c.send_bytes(
        &[
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 30, 0, 0, 1, b'x',
        ][..15],
    )
    .await;
    match c.try_next().await {
        Some(P5::ConnAck(a)) => assert_eq!(a.code, Code5::UnsupportedProtocolVersion),
        other => panic!("expected CONNACK 0x84, got {other:?}"),
    }
}

/// Reason codes on every ack: PUBACK, PUBREC/PUBREL/PUBCOMP, SUBACK per
/// filter (granted QoS, 0x8F for an invalid filter), UNSUBACK per filter
/// (0x00, 0x11 no subscription existed).
#[tokio::test]
async fn mqtt_3_11_3_unsuback_and_acks_carry_reason_codes() {
    let b = TestBroker::start().await;
    let mut c = Raw5::connect(b.addr, "rc").await;
    let ack = c
        .subscribe(
            vec![
                filter("rc/a", Q5::ExactlyOnce),
                filter("rc/#/bad", Q5::AtLeastOnce),
            ],
            None,
        )
        .await;
    assert_eq!(
        suback_codes(&ack),
        [ReasonCode::GrantedQos2, ReasonCode::TopicFilterInvalid]
    );
    let pkid = c.publish("rc/b", b"1", Q5::AtLeastOnce, false, None).await;
    match c.next().await {
        P5::PubAck(a) => assert_eq!(
            (a.pkid, ReasonCode::from(a.reason)),
            (pkid, ReasonCode::Success)
        ),
        other => panic!("{other:?}"),
    }
    let pkid = c.publish("rc/b", b"2", Q5::ExactlyOnce, false, None).await;
    match c.next().await {
        P5::PubRec(r) => assert_eq!(
            (r.pkid, ReasonCode::from(r.reason)),
            (pkid, ReasonCode::Success)
        ),
        other => panic!("{other:?}"),
    }
    c.send(P5::PubRel(v5p::PubRel::new(pkid, None))).await;
    match c.next().await {
        P5::PubComp(r) => assert_eq!(
            (r.pkid, ReasonCode::from(r.reason)),
            (pkid, ReasonCode::Success)
        ),
        other => panic!("{other:?}"),
    }
    c.send(P5::Unsubscribe(v5p::Unsubscribe {
        pkid: 40,
        filters: vec!["rc/a".into(), "rc/never".into()],
        properties: None,
    }))
    .await;
    match c.next().await {
        P5::UnsubAck(u) => {
            let codes: Vec<ReasonCode> = u.reasons.into_iter().map(ReasonCode::from).collect();
            assert_eq!(
                codes,
                [ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
            );
        }
        other => panic!("{other:?}"),
    }
}

/// [MQTT-4.13.1-1] a malformed packet: DISCONNECT 0x81 (or the adapter's
/// more precise code) and the connection closed; here a QoS 0 PUBLISH
/// with DUP set (malformed in MQTT 5).
#[tokio::test]
async fn mqtt_4_13_1_1_malformed_packet_disconnects_with_reason() {
    let b = TestBroker::start().await;
    let mut c = Raw5::connect(b.addr, "mal").await;
    // PUBLISH, DUP=1, QoS 0, topic "a", no properties, payload "x".
    c.send_bytes(&[0x38, 5, 0, 1, b'a', 0, b'x']).await;
    c.expect_disconnect(DisconnectReasonCode::MalformedPacket)
        .await;
}

/// A client's DISCONNECT with 0x04 publishes its will; a normal one does not.
#[tokio::test]
async fn mqtt_3_14_4_3_disconnect_with_will_message() {
    let b = TestBroker::start().await;
    let mut watcher = Raw5::connect(b.addr, "dw-watch").await;
    watcher
        .subscribe(vec![filter("dw/#", Q5::AtLeastOnce)], None)
        .await;
    for (id, code) in [
        ("dw-normal", DisconnectReasonCode::NormalDisconnection),
        ("dw-will", DisconnectReasonCode::DisconnectWithWillMessage),
    ] {
        let will = v5p::LastWill::new(format!("dw/{id}"), "gone", Q5::AtLeastOnce, false, None);
        let (mut c, _) = Raw5::connect_with(b.addr, id, true, None, Some(will)).await;
        c.send(P5::Disconnect(v5p::Disconnect::new(code))).await;
        assert!(c.try_next().await.is_none());
    }
    let p = watcher.next_publish().await;
    assert_eq!(&p.topic[..], b"dw/dw-will");
    assert!(watcher.ping_collect().await.is_empty());
}

/// A v5 publish to a 3.1.1 subscriber loses its properties and nothing
/// else (topic, payload, QoS).
#[tokio::test]
async fn v5_publisher_to_v311_subscriber_drops_only_properties() {
    let b = TestBroker::start().await;
    let mut sub = Raw::connect(b.addr, "x-sub311", true).await;
    sub.subscribe(&[("x/#", QoS::AtLeastOnce)]).await;
    let mut publ = Raw5::connect(b.addr, "x-pub5").await;
    publ.publish(
        "x/y",
        b"payload",
        Q5::AtLeastOnce,
        false,
        Some(full_properties()),
    )
    .await;
    let p = sub.next_publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("x/y", &b"payload"[..]));
    assert_eq!(p.qos, mqbridge::protocol::WireQoS::AtLeastOnce);
}

/// Bad credentials: CONNACK 0x86 to an MQTT 5 client.
#[tokio::test]
async fn mqtt_3_2_2_bad_credentials_0x86() {
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), &[("carol", "s3cret")]);
    let b = TestBroker::start_with(|o: &mut BrokerOptions| {
        o.password_file = Some(pw.clone());
        o.allow_anonymous = false;
    })
    .await;
    let out = common::mosquitto::mosquitto_pub_output(
        b.addr,
        &[
            "-V", "5", "-t", "t", "-m", "x", "-u", "carol", "-P", "wrong",
        ],
    )
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.to_lowercase().contains("bad user name or password"),
        "{err}"
    );
    mosquitto_pub(
        b.addr,
        &[
            "-V", "5", "-t", "t", "-m", "x", "-u", "carol", "-P", "s3cret",
        ],
    )
    .await;
}

/// Enhanced authentication is refused cleanly: CONNACK 0x8C.
#[tokio::test]
async fn mqtt_4_12_0_1_unknown_authentication_method_0x8c() {
    let b = TestBroker::start().await;
    let mut p = props();
    p.authentication_method = Some("SCRAM-SHA-1".into());
    let (mut c, ack) = Raw5::connect_with(b.addr, "auth", true, Some(p), None).await;
    assert_eq!(ack.code, Code5::BadAuthenticationMethod);
    assert!(c.try_next().await.is_none());
}

/// The reason string of a PUBACK, PUBREC, SUBACK or UNSUBACK (`None` when
/// it has none).
fn reason_string(p: &P5) -> Option<String> {
    match p {
        P5::PubAck(a) => a.properties.as_ref()?.reason_string.clone(),
        P5::PubRec(r) => r.properties.as_ref()?.reason_string.clone(),
        P5::SubAck(s) => s.properties.as_ref()?.reason_string.clone(),
        P5::UnsubAck(u) => u.properties.as_ref()?.reason_string.clone(),
        other => panic!("not an ack: {other:?}"),
    }
}

/// The failure acks of one client: PUBACK and PUBREC 0x87, SUBACK 0x87
/// and UNSUBACK 0x8F, each with its code and (unless `quiet`) its reason
/// string, in that order.
async fn failure_acks(
    addr: std::net::SocketAddr,
    id: &str,
    quiet: bool,
) -> Vec<(ReasonCode, Option<String>)> {
    let mut p = props();
    if quiet {
        p.request_problem_info = Some(0);
    }
    let (mut c, ack) = Raw5::connect_with(addr, id, true, Some(p), None).await;
    assert_eq!(ack.code, Code5::Success);
    let mut got = Vec::new();
    for qos in [Q5::AtLeastOnce, Q5::ExactlyOnce] {
        c.publish("closed/x", b"no", qos, false, None).await;
        let ack = c.next().await;
        let code = match &ack {
            P5::PubAck(a) => ReasonCode::from(a.reason),
            P5::PubRec(r) => ReasonCode::from(r.reason),
            other => panic!("{other:?}"),
        };
        got.push((code, reason_string(&ack)));
    }
    let suback = c
        .subscribe(
            vec![
                filter("open/#", Q5::AtLeastOnce),
                filter("closed/#", Q5::AtLeastOnce),
            ],
            None,
        )
        .await;
    got.push((suback_codes(&suback)[1], reason_string(&P5::SubAck(suback))));
    c.send(P5::Unsubscribe(v5p::Unsubscribe {
        pkid: 77,
        filters: vec!["bad/#/x".into()],
        properties: None,
    }))
    .await;
    match c.next().await {
        P5::UnsubAck(u) => {
            let code = ReasonCode::from(u.reasons[0]);
            got.push((code, reason_string(&P5::UnsubAck(u))));
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    got
}

/// Failure acks carry a reason string in the client's terms, and none
/// when the client set Request Problem Information to 0 [MQTT-3.1.2-29].
#[tokio::test]
async fn mqtt_3_1_2_29_reason_strings_on_failure_acks_unless_refused() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic read open/#\n").unwrap();
    let b = TestBroker::start_with(|o| o.acl_file = Some(acl.clone())).await;
    let told = failure_acks(b.addr, "rs-told", false).await;
    let text = |s: &str| Some(s.to_string());
    assert_eq!(
        told,
        [
            (
                ReasonCode::NotAuthorized,
                text("not authorized to publish to this topic")
            ),
            (
                ReasonCode::NotAuthorized,
                text("not authorized to publish to this topic")
            ),
            (
                ReasonCode::NotAuthorized,
                text("filter 2: not authorized to subscribe to this filter")
            ),
            (ReasonCode::TopicFilterInvalid, text("invalid topic filter")),
        ]
    );
    let quiet = failure_acks(b.addr, "rs-quiet", true).await;
    let codes: Vec<ReasonCode> = told.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        quiet,
        codes.into_iter().map(|c| (c, None)).collect::<Vec<_>>()
    );
}

/// ACL denial: PUBACK 0x87 for a publish, SUBACK 0x87 for a filter.
#[tokio::test]
async fn acl_denial_is_0x87_on_puback_and_suback() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic read open/#\ntopic readwrite free/#\n").unwrap();
    let b = TestBroker::start_with(|o| o.acl_file = Some(acl.clone())).await;
    let mut c = Raw5::connect(b.addr, "acl5").await;
    let ack = c
        .subscribe(
            vec![
                filter("open/#", Q5::AtLeastOnce),
                filter("closed/#", Q5::AtLeastOnce),
            ],
            None,
        )
        .await;
    assert_eq!(
        suback_codes(&ack),
        [ReasonCode::GrantedQos1, ReasonCode::NotAuthorized]
    );
    let pkid = c
        .publish("open/x", b"nope", Q5::AtLeastOnce, false, None)
        .await;
    match c.next().await {
        P5::PubAck(a) => assert_eq!(
            (a.pkid, ReasonCode::from(a.reason)),
            (pkid, ReasonCode::NotAuthorized)
        ),
        other => panic!("{other:?}"),
    }
    let pkid = c
        .publish("open/x", b"nope", Q5::ExactlyOnce, false, None)
        .await;
    match c.next().await {
        P5::PubRec(a) => assert_eq!(
            (a.pkid, ReasonCode::from(a.reason)),
            (pkid, ReasonCode::NotAuthorized)
        ),
        other => panic!("{other:?}"),
    }
    wait_until(|| b.broker.stats().dropped_acl == 2).await;
    // The failing PUBREC ended that QoS 2 flow: its packet id is free for a
    // new message, which is not taken for a duplicate.
    c.subscribe(vec![filter("free/#", Q5::AtMostOnce)], None)
        .await;
    let mut again = v5p::Publish::new("free/x", Q5::ExactlyOnce, b"yes".to_vec(), None);
    again.pkid = pkid;
    c.send(P5::Publish(again)).await;
    match c.next().await {
        P5::PubRec(a) => assert_eq!(ReasonCode::from(a.reason), ReasonCode::Success),
        other => panic!("{other:?}"),
    }
    c.send(P5::PubRel(v5p::PubRel::new(pkid, None))).await;
    // The delivery and the PUBCOMP, in either order.
    let (mut delivered, mut completed) = (None, false);
    while delivered.is_none() || !completed {
        match c.next().await {
            P5::PubComp(_) => completed = true,
            P5::Publish(p) => delivered = Some(p.payload),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(delivered.as_deref(), Some(&b"yes"[..]));
}

/// max_connections refuses an MQTT 5 client with 0x97 (quota exceeded).
#[tokio::test]
async fn max_connections_refuses_v5_with_quota_exceeded() {
    let b = TestBroker::start_with(|o| o.limits.max_connections = 1).await;
    let _first = Raw5::connect(b.addr, "mc-1").await;
    let (_second, ack) = Raw5::connect_with(b.addr, "mc-2", true, None, None).await;
    assert_eq!(ack.code, Code5::QuotaExceeded);
}

/// [MQTT-3.3.4-9] / 4.9: a client over our Receive Maximum gets
/// DISCONNECT 0x93. QoS 2 holds its slot until PUBCOMP, so three PUBLISHes
/// without PUBREL against a maximum of 2 overflow deterministically.
#[tokio::test]
async fn mqtt_3_3_4_9_receive_maximum_exceeded_0x93() {
    let b = TestBroker::start_with(|o| o.limits.max_inflight = 2).await;
    let (mut c, ack) = Raw5::connect_with(b.addr, "rm-in", true, Some(props()), None).await;
    assert_eq!(ack.properties.and_then(|p| p.receive_max), Some(2));
    for n in 0..3u8 {
        c.publish("rm/x", &[n], Q5::ExactlyOnce, false, None).await;
    }
    c.expect_disconnect(DisconnectReasonCode::ReceiveMaximumExceeded)
        .await;
}

/// [MQTT-3.3.4-7] we never have more QoS 1 PUBLISHes in flight to a client
/// than its Receive Maximum: the second waits for the first's PUBACK.
#[tokio::test]
async fn mqtt_3_3_4_7_outbound_receive_maximum_honoured() {
    let b = TestBroker::start().await;
    let mut p = props();
    p.receive_maximum = Some(1);
    let (mut sub, _) = Raw5::connect_with(b.addr, "rm-out", true, Some(p), None).await;
    sub.subscribe(vec![filter("rmo/#", Q5::AtLeastOnce)], None)
        .await;
    let mut publ = Raw5::connect(b.addr, "rm-out-pub").await;
    for n in 0..3u8 {
        publ.publish("rmo/x", &[b'0' + n], Q5::AtLeastOnce, false, None)
            .await;
    }
    let first = sub.next_publish().await;
    assert_eq!(&first.payload[..], b"0");
    // Everything is routed by the time our PINGRESP comes (the router
    // answers PINGREQ in order): nothing else may have been sent.
    for _ in 0..3 {
        publ.ping_collect().await;
    }
    assert!(
        sub.ping_collect().await.is_empty(),
        "a second PUBLISH beyond Receive Maximum 1"
    );
    sub.send(P5::PubAck(v5p::PubAck::new(first.pkid, None)))
        .await;
    assert_eq!(&sub.next_publish().await.payload[..], b"1");
}

/// [MQTT-4.3.3] / 4.9: a subscriber answering our QoS 2 PUBLISH with a
/// PUBREC of 0x80 or more ends that flow: no PUBREL comes, the window slot
/// is free for the next message, and the message is released from the
/// session (a resumed session gets neither it nor a PUBREL again).
#[tokio::test]
async fn mqtt_4_3_3_failing_pubrec_ends_the_qos2_flow() {
    let b = TestBroker::start().await;
    let mut p = props();
    p.receive_maximum = Some(1);
    p.session_expiry_interval = Some(600);
    let (mut sub, _) = Raw5::connect_with(b.addr, "prf-sub", true, Some(p.clone()), None).await;
    sub.subscribe(vec![filter("prf/#", Q5::ExactlyOnce)], None)
        .await;
    let mut publ = Raw5::connect(b.addr, "prf-pub").await;
    for n in ["2", "3"] {
        publ.publish("prf/x", n.as_bytes(), Q5::ExactlyOnce, false, None)
            .await;
    }
    let qos2 = sub.next_publish().await;
    assert_eq!((&qos2.payload[..], qos2.qos), (&b"2"[..], Q5::ExactlyOnce));
    let mut refusal = v5p::PubRec::new(qos2.pkid, None);
    refusal.reason = v5p::PubRecReason::UnspecifiedError;
    sub.send(P5::PubRec(refusal)).await;
    // No PUBREL: the next thing is the next message, in the freed slot.
    match sub.next().await {
        P5::Publish(next) => assert_eq!(&next.payload[..], b"3"),
        other => panic!("expected the next PUBLISH, got {other:?}"),
    }
    // Resumed: only "3" (unacknowledged) comes again, never "2" nor a PUBREL.
    drop(sub);
    let (mut sub, ack) = Raw5::connect_with(b.addr, "prf-sub", false, Some(p), None).await;
    assert!(ack.session_present);
    let again: Vec<Vec<u8>> = sub
        .ping_collect()
        .await
        .into_iter()
        .map(|p| p.payload.to_vec())
        .collect();
    assert_eq!(again, [b"3".to_vec()]);
}

/// [MQTT-3.1.2-24, MQTT-3.1.2-25] a PUBLISH larger than the client's
/// Maximum Packet Size is not sent to it (dropped, counted, as if
/// delivered: it holds no inflight slot); the next one that fits is.
#[tokio::test]
async fn mqtt_3_1_2_24_oversized_packet_dropped_for_that_client() {
    let b = TestBroker::start().await;
    let mut p = props();
    p.max_packet_size = Some(64);
    // One in flight at a time: a dropped QoS 1 message must not hold it.
    p.receive_maximum = Some(1);
    let (mut small, _) = Raw5::connect_with(b.addr, "mps-small", true, Some(p), None).await;
    small
        .subscribe(vec![filter("mps/#", Q5::AtLeastOnce)], None)
        .await;
    let mut big = Raw5::connect(b.addr, "mps-big").await;
    big.subscribe(vec![filter("mps/#", Q5::AtLeastOnce)], None)
        .await;
    let mut publ = Raw5::connect(b.addr, "mps-pub").await;
    publ.publish("mps/x", &[b'x'; 200], Q5::AtLeastOnce, false, None)
        .await;
    publ.publish("mps/x", b"fits", Q5::AtLeastOnce, false, None)
        .await;
    assert_eq!(big.next_publish().await.payload.len(), 200);
    assert_eq!(&big.next_publish().await.payload[..], b"fits");
    assert_eq!(&small.next_publish().await.payload[..], b"fits");
    assert_eq!(b.broker.stats().dropped_too_large, 1);
}

/// Inbound larger than our Maximum Packet Size: DISCONNECT 0x95.
#[tokio::test]
async fn mqtt_3_2_2_15_inbound_packet_too_large_0x95() {
    let b = TestBroker::start_with(|o| o.limits.max_packet_size = 128).await;
    let mut c = Raw5::connect(b.addr, "ptl").await;
    c.publish("ptl/x", &[0u8; 300], Q5::AtMostOnce, false, None)
        .await;
    c.expect_disconnect(DisconnectReasonCode::PacketTooLarge)
        .await;
}

/// Topic aliases from the client: set, then used alone; an alias over our
/// Topic Alias Maximum is DISCONNECT 0x94 [MQTT-3.3.2-9].
#[tokio::test]
async fn mqtt_3_3_2_9_inbound_topic_aliases() {
    let b = TestBroker::start().await;
    let mut sub = Raw5::connect(b.addr, "ta-sub").await;
    sub.subscribe(vec![filter("ta/#", Q5::AtMostOnce)], None)
        .await;
    let mut c = Raw5::connect(b.addr, "ta-pub").await;
    let alias = |a| {
        Some(PublishProperties {
            topic_alias: Some(a),
            ..Default::default()
        })
    };
    c.publish("ta/one", b"1", Q5::AtMostOnce, false, alias(1))
        .await;
    c.publish("", b"2", Q5::AtMostOnce, false, alias(1)).await;
    for want in [&b"1"[..], b"2"] {
        let p = sub.next_publish().await;
        assert_eq!((&p.topic[..], &p.payload[..]), (&b"ta/one"[..], want));
    }
    let over = mqbridge::broker::DEFAULT_TOPIC_ALIAS_MAXIMUM + 1;
    c.publish("ta/two", b"3", Q5::AtMostOnce, false, alias(over))
        .await;
    c.expect_disconnect(DisconnectReasonCode::TopicAliasInvalid)
        .await;
}

/// `limits.topic_alias_maximum`: the CONNACK announces the configured
/// Topic Alias Maximum [MQTT-3.2.2-17] and an alias above it is DISCONNECT
/// 0x94 [MQTT-3.3.2-9]; 0 leaves the property out and refuses every alias
/// [MQTT-3.3.2-8].
#[tokio::test]
async fn mqtt_3_3_2_9_configured_topic_alias_maximum() {
    let alias = |a| {
        Some(PublishProperties {
            topic_alias: Some(a),
            ..Default::default()
        })
    };
    let b = TestBroker::start_with(|o| o.limits.topic_alias_maximum = 3).await;
    let (mut c, ack) = Raw5::connect_with(b.addr, "tam-3", true, Some(props()), None).await;
    assert_eq!(ack.properties.and_then(|p| p.topic_alias_max), Some(3));
    // Aliases 1..=3 are fine; a PINGRESP proves the connection is up.
    c.publish("tam/x", b"1", Q5::AtMostOnce, false, alias(3))
        .await;
    assert!(c.ping_collect().await.is_empty());
    c.publish("tam/x", b"2", Q5::AtMostOnce, false, alias(4))
        .await;
    c.expect_disconnect(DisconnectReasonCode::TopicAliasInvalid)
        .await;

    let b = TestBroker::start_with(|o| o.limits.topic_alias_maximum = 0).await;
    let (mut c, ack) = Raw5::connect_with(b.addr, "tam-0", true, Some(props()), None).await;
    assert_eq!(ack.code, Code5::Success);
    assert_eq!(ack.properties.and_then(|p| p.topic_alias_max), None);
    c.publish("tam/x", b"1", Q5::AtMostOnce, false, alias(1))
        .await;
    c.expect_disconnect(DisconnectReasonCode::TopicAliasInvalid)
        .await;
}

/// Topic aliases towards the client, up to its Topic Alias Maximum: the
/// second PUBLISH of a topic carries only the alias [MQTT-3.3.2-12].
#[tokio::test]
async fn mqtt_3_3_2_12_outbound_topic_aliases() {
    let b = TestBroker::start().await;
    let mut p = props();
    p.topic_alias_max = Some(4);
    let (mut sub, _) = Raw5::connect_with(b.addr, "tao-sub", true, Some(p), None).await;
    sub.subscribe(vec![filter("tao/#", Q5::AtMostOnce)], None)
        .await;
    let mut publ = Raw5::connect(b.addr, "tao-pub").await;
    publ.publish("tao/x", b"1", Q5::AtMostOnce, false, None)
        .await;
    publ.publish("tao/x", b"2", Q5::AtMostOnce, false, None)
        .await;
    let first = sub.next_publish().await;
    let second = sub.next_publish().await;
    let a1 = first
        .properties
        .and_then(|p| p.topic_alias)
        .expect("alias set");
    assert_eq!(&first.topic[..], b"tao/x");
    assert!(second.topic.is_empty());
    assert_eq!(second.properties.and_then(|p| p.topic_alias), Some(a1));
}

/// Payload format indicator 1 with a payload that is not UTF-8: PUBACK
/// 0x99 (QoS 1), not delivered; at QoS 0, DISCONNECT 0x99 [MQTT-3.3.2-4].
#[tokio::test]
async fn mqtt_3_3_2_4_payload_format_invalid_0x99() {
    let b = TestBroker::start().await;
    let mut sub = Raw5::connect(b.addr, "pfi-sub").await;
    sub.subscribe(vec![filter("pfi/#", Q5::AtLeastOnce)], None)
        .await;
    let mut c = Raw5::connect(b.addr, "pfi").await;
    let utf8 = || {
        Some(PublishProperties {
            payload_format_indicator: Some(1),
            ..Default::default()
        })
    };
    let pkid = c
        .publish("pfi/x", b"\xff\xfe", Q5::AtLeastOnce, false, utf8())
        .await;
    match c.next().await {
        P5::PubAck(a) => assert_eq!(
            (a.pkid, ReasonCode::from(a.reason)),
            (pkid, ReasonCode::PayloadFormatInvalid)
        ),
        other => panic!("{other:?}"),
    }
    c.publish("pfi/x", "ok ü".as_bytes(), Q5::AtLeastOnce, false, utf8())
        .await;
    assert_eq!(sub.next_publish().await.payload, "ok ü".as_bytes());
    c.publish("pfi/x", b"\xff", Q5::AtMostOnce, false, utf8())
        .await;
    c.expect_disconnect(DisconnectReasonCode::PayloadFormatInvalid)
        .await;
}

/// No local [MQTT-3.8.3-3]: a subscription with no local gets nothing its
/// own client publishes; another client's message still arrives.
#[tokio::test]
async fn mqtt_3_8_3_3_no_local() {
    let b = TestBroker::start().await;
    let mut c = Raw5::connect(b.addr, "nl").await;
    let mut f = filter("nl/#", Q5::AtMostOnce);
    f.nolocal = true;
    c.subscribe(vec![f], None).await;
    c.publish("nl/x", b"mine", Q5::AtMostOnce, false, None)
        .await;
    assert!(c.ping_collect().await.is_empty(), "own message delivered");
    let mut other = Raw5::connect(b.addr, "nl-other").await;
    other
        .publish("nl/x", b"theirs", Q5::AtMostOnce, false, None)
        .await;
    assert_eq!(&c.next_publish().await.payload[..], b"theirs");
}

/// Retain as published [MQTT-3.3.1-12, MQTT-3.3.1-13]: the retain flag of
/// a live message is kept only for a subscription that asks for it.
#[tokio::test]
async fn mqtt_3_3_1_12_retain_as_published() {
    let b = TestBroker::start().await;
    let mut keep = Raw5::connect(b.addr, "rap-keep").await;
    let mut f = filter("rap/#", Q5::AtMostOnce);
    f.preserve_retain = true;
    keep.subscribe(vec![f], None).await;
    let mut clear = Raw5::connect(b.addr, "rap-clear").await;
    clear
        .subscribe(vec![filter("rap/#", Q5::AtMostOnce)], None)
        .await;
    let mut publ = Raw5::connect(b.addr, "rap-pub").await;
    publ.publish("rap/x", b"r", Q5::AtMostOnce, true, None)
        .await;
    assert!(keep.next_publish().await.retain);
    assert!(!clear.next_publish().await.retain);
}

/// Retain handling 0/1/2 [MQTT-3.3.1-9, MQTT-3.3.1-10, MQTT-3.3.1-11]:
/// 0 sends retained messages at every SUBSCRIBE, 1 only when the
/// subscription is new, 2 never.
#[tokio::test]
async fn mqtt_3_3_1_9_to_11_retain_handling() {
    let b = TestBroker::start().await;
    mosquitto_pub(
        b.addr,
        &["-V", "5", "-t", "rh/x", "-m", "kept", "-r", "-q", "1"],
    )
    .await;
    let mut c = Raw5::connect(b.addr, "rh").await;
    for (rule, first, again) in [
        (RetainForwardRule::OnEverySubscribe, 1, 1),
        (RetainForwardRule::OnNewSubscribe, 1, 0),
        (RetainForwardRule::Never, 0, 0),
    ] {
        let mut f = filter("rh/#", Q5::AtMostOnce);
        f.retain_forward_rule = rule.clone();
        c.send(P5::Unsubscribe(v5p::Unsubscribe {
            pkid: 90,
            filters: vec!["rh/#".into()],
            properties: None,
        }))
        .await;
        assert!(matches!(c.next().await, P5::UnsubAck(_)));
        c.subscribe(vec![f.clone()], None).await;
        let got = c.ping_collect().await;
        assert_eq!(got.len(), first, "{rule:?} on a new subscription");
        assert!(got.iter().all(|p| p.retain));
        c.subscribe(vec![f], None).await;
        assert_eq!(
            c.ping_collect().await.len(),
            again,
            "{rule:?} on a repeated SUBSCRIBE"
        );
    }
}

/// Subscription identifiers [MQTT-3.3.4-3]: a delivery carries the
/// identifiers of every matching subscription of the session.
#[tokio::test]
async fn mqtt_3_3_4_3_subscription_identifiers_on_delivery() {
    let b = TestBroker::start().await;
    let mut c = Raw5::connect(b.addr, "sid").await;
    c.subscribe(vec![filter("sid/#", Q5::AtMostOnce)], Some(7))
        .await;
    c.subscribe(vec![filter("sid/+", Q5::AtLeastOnce)], Some(300))
        .await;
    c.subscribe(vec![filter("sid/x", Q5::AtMostOnce)], None)
        .await;
    let mut publ = Raw5::connect(b.addr, "sid-pub").await;
    publ.publish("sid/x", b"1", Q5::AtLeastOnce, false, None)
        .await;
    let p = c.next_publish().await;
    assert_eq!(p.qos, Q5::AtLeastOnce, "the highest granted QoS");
    let mut ids = p.properties.expect("identifiers").subscription_identifiers;
    ids.sort_unstable();
    assert_eq!(ids, [7, 300]);
    assert!(c.ping_collect().await.is_empty(), "one copy per session");
}

/// Session expiry interval [MQTT-3.1.2-23]: a session with an interval
/// survives the connection; 0 (the default) ends with it.
#[tokio::test]
async fn mqtt_3_1_2_23_session_expiry_interval() {
    let b = TestBroker::start().await;
    let mut p = props();
    p.session_expiry_interval = Some(300);
    let (c, _) = Raw5::connect_with(b.addr, "se-keep", true, Some(p.clone()), None).await;
    drop(c);
    let (c, _) = Raw5::connect_with(b.addr, "se-gone", true, None, None).await;
    drop(c);
    wait_until(|| b.broker.stats().clients_connected == 0).await;
    let (_k, ack) = Raw5::connect_with(b.addr, "se-keep", false, Some(p.clone()), None).await;
    assert!(ack.session_present);
    let (_g, ack) = Raw5::connect_with(b.addr, "se-gone", false, Some(p), None).await;
    assert!(!ack.session_present);
}

/// [MQTT-3.14.2-2] a DISCONNECT may not raise a session expiry interval of
/// 0: protocol error 0x82; lowering one to 0 ends the session.
#[tokio::test]
async fn mqtt_3_14_2_2_disconnect_session_expiry() {
    let b = TestBroker::start().await;
    let raise = v5p::DisconnectProperties {
        session_expiry_interval: Some(60),
        reason_string: None,
        user_properties: Vec::new(),
        server_reference: None,
    };
    let mut c = Raw5::connect(b.addr, "sed-raise").await;
    c.send(P5::Disconnect(v5p::Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
        properties: Some(raise),
    }))
    .await;
    c.expect_disconnect(DisconnectReasonCode::ProtocolError)
        .await;
    let mut p = props();
    p.session_expiry_interval = Some(300);
    let (mut c, _) = Raw5::connect_with(b.addr, "sed-end", true, Some(p.clone()), None).await;
    c.send(P5::Disconnect(v5p::Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
        properties: Some(v5p::DisconnectProperties {
            session_expiry_interval: Some(0),
            reason_string: None,
            user_properties: Vec::new(),
            server_reference: None,
        }),
    }))
    .await;
    assert!(c.try_next().await.is_none());
    wait_until(|| b.broker.stats().clients_connected == 0).await;
    let (_c, ack) = Raw5::connect_with(b.addr, "sed-end", false, Some(p), None).await;
    assert!(!ack.session_present);
}

/// Will delay interval [MQTT-3.1.3-9]: a client back before the delay
/// cancels its will; one that stays away has it published, with its will
/// properties.
#[tokio::test]
async fn mqtt_3_1_3_9_will_delay_and_properties() {
    let b = TestBroker::start().await;
    let mut watcher = Raw5::connect(b.addr, "wd-watch").await;
    watcher
        .subscribe(vec![filter("wd/#", Q5::AtLeastOnce)], None)
        .await;
    let mut sp = props();
    sp.session_expiry_interval = Some(300);
    let will = |id: &str| {
        v5p::LastWill::new(
            format!("wd/{id}"),
            "gone",
            Q5::AtLeastOnce,
            false,
            Some(v5p::LastWillProperties {
                delay_interval: Some(1),
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: Some("text/plain".into()),
                response_topic: None,
                correlation_data: None,
                user_properties: vec![("why".into(), "lost".into())],
            }),
        )
    };
    // Dropped without DISCONNECT, back at once: no will.
    let (c, _) = Raw5::connect_with(
        b.addr,
        "wd-back",
        true,
        Some(sp.clone()),
        Some(will("wd-back")),
    )
    .await;
    drop(c);
    wait_until(|| b.broker.stats().clients_connected == 1).await;
    let (_back, ack) = Raw5::connect_with(b.addr, "wd-back", false, Some(sp.clone()), None).await;
    assert!(ack.session_present);
    // Dropped and away: the will comes after its delay.
    let (c, _) = Raw5::connect_with(b.addr, "wd-away", true, Some(sp), Some(will("wd-away"))).await;
    let gone_at = std::time::Instant::now();
    drop(c);
    let p = watcher.next_publish().await;
    assert!(gone_at.elapsed() >= std::time::Duration::from_millis(900));
    assert_eq!(&p.topic[..], b"wd/wd-away");
    let props = p.properties.expect("will properties");
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        props.user_properties,
        [("why".to_string(), "lost".to_string())]
    );
    // The first client's will never comes.
    assert!(watcher.ping_collect().await.is_empty());
}

/// A persistent v5 session's subscription options and identifier survive
/// a broker restart (store directory from `data_dir()`).
#[tokio::test]
async fn v5_session_options_survive_restart() {
    let plan = mqbridge::config::StoragePlan {
        dir: common::data_dir(),
        fsync: mqbridge::config::FsyncPolicy::Batch,
        max_bytes: 1 << 30,
    };
    // One store, two broker lifetimes: the second rebuilds its sessions
    // from what the first wrote.
    let shared = mqbridge::store::Store::open(&plan).expect("store opens");
    let store = || shared.clone();
    let mut p = props();
    p.session_expiry_interval = Some(3600);
    {
        let s = store();
        let b = TestBroker::start_with(|o| o.store = Some(s.clone())).await;
        let (mut c, _) = Raw5::connect_with(b.addr, "rs5", true, Some(p.clone()), None).await;
        let mut f = filter("rs/#", Q5::AtLeastOnce);
        f.nolocal = true;
        f.preserve_retain = true;
        c.subscribe(vec![f], Some(42)).await;
        c.send(P5::Disconnect(v5p::Disconnect::new(
            DisconnectReasonCode::NormalDisconnection,
        )))
        .await;
        assert!(c.try_next().await.is_none());
        wait_until(|| b.broker.stats().clients_connected == 0).await;
        b.token.cancel();
        within(b.broker.closed()).await;
    }
    let s = store();
    let b = TestBroker::start_with(|o| o.store = Some(s.clone())).await;
    let (mut c, ack) = Raw5::connect_with(b.addr, "rs5", false, Some(p), None).await;
    assert!(ack.session_present);
    c.publish("rs/own", b"mine", Q5::AtMostOnce, true, None)
        .await;
    assert!(c.ping_collect().await.is_empty(), "no local kept");
    let mut other = Raw5::connect(b.addr, "rs5-other").await;
    other
        .publish("rs/x", b"theirs", Q5::AtLeastOnce, true, None)
        .await;
    let got = c.next_publish().await;
    assert!(got.retain, "retain as published kept");
    assert_eq!(
        got.properties.map(|p| p.subscription_identifiers),
        Some(vec![42])
    );
}

/// Message expiry [MQTT-3.3.2-6]: a message queued for an offline session
/// goes out with the interval it has left, never more than was sent.
#[tokio::test]
async fn mqtt_3_3_2_6_queued_message_expiry_is_reduced() {
    let b = TestBroker::start().await;
    let mut p = props();
    p.session_expiry_interval = Some(300);
    let (mut c, _) = Raw5::connect_with(b.addr, "me-sub", true, Some(p.clone()), None).await;
    c.subscribe(vec![filter("me/#", Q5::AtLeastOnce)], None)
        .await;
    drop(c);
    wait_until(|| b.broker.stats().clients_connected == 0).await;
    let mut publ = Raw5::connect(b.addr, "me-pub").await;
    let expiring = Some(PublishProperties {
        message_expiry_interval: Some(30),
        ..Default::default()
    });
    publ.publish("me/x", b"q", Q5::AtLeastOnce, false, expiring)
        .await;
    wait_until(|| b.broker.stats().queued == 1).await;
    let (mut c, ack) = Raw5::connect_with(b.addr, "me-sub", false, Some(p), None).await;
    assert!(ack.session_present);
    let got = c.next_publish().await;
    let left = got
        .properties
        .and_then(|p| p.message_expiry_interval)
        .expect("expiry kept");
    assert!((1..=30).contains(&left), "{left}");
}

/// [MQTT-3.1.4-3] a second connection with the same client id takes the
/// session over: the first is told DISCONNECT 0x8E and closed.
#[tokio::test]
async fn mqtt_3_1_4_3_session_taken_over_0x8e() {
    let b = TestBroker::start().await;
    let mut first = Raw5::connect(b.addr, "to").await;
    let _second = Raw5::connect(b.addr, "to").await;
    first
        .expect_disconnect(DisconnectReasonCode::SessionTakenOver)
        .await;
}

/// A broker shutting down tells its MQTT 5 clients 0x8B.
#[tokio::test]
async fn server_shutting_down_0x8b() {
    let b = TestBroker::start().await;
    let mut c = Raw5::connect(b.addr, "sd").await;
    b.token.cancel();
    c.expect_disconnect(DisconnectReasonCode::ServerShuttingDown)
        .await;
}

/// One store for several broker lifetimes in this test (a restart is a
/// new broker on the same store).
fn restart_store() -> mqbridge::store::Store {
    let plan = mqbridge::config::StoragePlan {
        dir: common::data_dir(),
        fsync: mqbridge::config::FsyncPolicy::Batch,
        max_bytes: 1 << 30,
    };
    mqbridge::store::Store::open(&plan).expect("store opens")
}

/// Stops broker `b` and waits until it is gone (its store stays).
async fn stop(b: TestBroker) {
    b.token.cancel();
    within(b.broker.closed()).await;
}

fn expiring(secs: u32) -> Option<PublishProperties> {
    Some(PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    })
}

fn expiry_of(p: &v5p::Publish) -> Option<u32> {
    p.properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
}

/// [MQTT-3.3.2-5, MQTT-3.3.2-6] retained messages expire: once its
/// interval has passed a retained message is removed from the retained
/// store and a new subscriber does not get it; one still alive goes out
/// with the interval it has left.
#[tokio::test]
async fn mqtt_3_3_2_6_retained_messages_expire() {
    let b = TestBroker::start().await;
    let mut publ = Raw5::connect(b.addr, "rx-pub").await;
    // The long one first: by the time the short one has expired, the
    // long one is more than a second old too.
    publ.publish("rx/long", b"l", Q5::AtMostOnce, true, expiring(60))
        .await;
    publ.publish("rx/short", b"s", Q5::AtMostOnce, true, expiring(1))
        .await;
    publ.ping_collect().await;
    assert_eq!(b.broker.stats().retained, 2);
    // Removed by the broker's once-a-second pass, after its 1 s.
    wait_until(|| b.broker.stats().retained == 1).await;
    let mut sub = Raw5::connect(b.addr, "rx-sub").await;
    sub.subscribe(vec![filter("rx/#", Q5::AtMostOnce)], None)
        .await;
    let got = sub.ping_collect().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(&got[0].topic[..], b"rx/long");
    // More than a second has passed since it was published.
    let left = expiry_of(&got[0]).expect("expiry kept");
    assert!((50..=59).contains(&left), "{left}");
}

/// [MQTT-3.3.2-5, MQTT-3.3.2-6] across a restart: a retained message's
/// expiry keeps counting while the broker is down; one that expired then
/// is gone (from the store too), one still alive has its interval reduced
/// by the downtime.
#[tokio::test]
async fn mqtt_3_3_2_6_retained_expiry_counts_across_a_restart() {
    let store = restart_store();
    let b = TestBroker::start_with(|o| o.store = Some(store.clone())).await;
    let mut publ = Raw5::connect(b.addr, "rr-pub").await;
    // QoS 1: the PUBACK comes once the retained message is on disk.
    publ.publish("rr/short", b"s", Q5::AtLeastOnce, true, expiring(2))
        .await;
    publ.publish("rr/long", b"l", Q5::AtLeastOnce, true, expiring(3600))
        .await;
    for _ in 0..2 {
        assert!(matches!(publ.next().await, P5::PubAck(_)));
    }
    drop(publ);
    stop(b).await;
    // The broker is down while the short one's 2 s pass.
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let b = TestBroker::start_with(|o| o.store = Some(store.clone())).await;
    assert_eq!(
        (b.broker.stats().retained, b.broker.stats().retained_stored),
        (1, 1)
    );
    let mut sub = Raw5::connect(b.addr, "rr-sub").await;
    sub.subscribe(vec![filter("rr/#", Q5::AtMostOnce)], None)
        .await;
    let got = sub.ping_collect().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(&got[0].topic[..], b"rr/long");
    let left = expiry_of(&got[0]).expect("expiry kept");
    assert!((3590..=3598).contains(&left), "{left}");
    // The expired one is deleted from the store (written by now: the
    // router flushes after each batch of events).
    let on_disk = store
        .keyspace("broker.test.retained")
        .expect("keyspace")
        .iter()
        .count();
    assert_eq!(on_disk, 1);
}

/// [MQTT-3.3.2-5, MQTT-3.3.2-6] across a restart, for a persistent
/// session: expiry counts from each message's arrival, downtime included.
/// A queued message that expired while the broker was down is dropped
/// (counted as expired); one still alive goes out with what it has left;
/// messages in flight are resent with what they have left, and one whose
/// interval ran out while in flight still goes (its delivery had started)
/// with an interval of 1 s.
#[tokio::test]
async fn mqtt_3_3_2_6_session_message_expiry_counts_across_a_restart() {
    let store = restart_store();
    let b = TestBroker::start_with(|o| o.store = Some(store.clone())).await;
    let mut p = props();
    p.session_expiry_interval = Some(3600);
    p.receive_maximum = Some(2);
    let (mut sub, _) = Raw5::connect_with(b.addr, "sx-sub", true, Some(p.clone()), None).await;
    sub.subscribe(vec![filter("sx/#", Q5::ExactlyOnce)], None)
        .await;
    let mut publ = Raw5::connect(b.addr, "sx-pub").await;
    // Two in flight (receive maximum 2), two queued.
    for (payload, secs) in [
        ("f-short", 2),
        ("f-long", 3600),
        ("q-short", 2),
        ("q-long", 3600),
    ] {
        publ.publish(
            "sx/m",
            payload.as_bytes(),
            Q5::ExactlyOnce,
            false,
            expiring(secs),
        )
        .await;
        assert!(matches!(publ.next().await, P5::PubRec(_)));
    }
    let in_flight: Vec<Vec<u8>> = [sub.next_publish().await, sub.next_publish().await]
        .iter()
        .map(|p| p.payload.to_vec())
        .collect();
    assert_eq!(in_flight, [b"f-short".to_vec(), b"f-long".to_vec()]);
    drop(sub);
    drop(publ);
    wait_until(|| b.broker.stats().clients_connected == 0).await;
    stop(b).await;
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let b = TestBroker::start_with(|o| o.store = Some(store.clone())).await;
    assert_eq!(
        b.broker.stats().dropped_expired,
        1,
        "q-short expired while down"
    );
    let (mut sub, ack) = Raw5::connect_with(b.addr, "sx-sub", false, Some(p), None).await;
    assert!(ack.session_present);
    // Each QoS 2 flow completed as it comes, so the queued one follows.
    let mut got = Vec::new();
    while got.len() < 3 {
        match sub.next().await {
            P5::Publish(m) => {
                got.push((m.payload.to_vec(), m.dup, expiry_of(&m)));
                sub.send(P5::PubRec(v5p::PubRec::new(m.pkid, None))).await;
            }
            P5::PubRel(r) => sub.send(P5::PubComp(v5p::PubComp::new(r.pkid, None))).await,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got[0], (b"f-short".to_vec(), true, Some(1)));
    let alive = |left: Option<u32>| left.is_some_and(|l| (3590..=3598).contains(&l));
    assert_eq!((&got[1].0[..], got[1].1), (&b"f-long"[..], true));
    assert!(alive(got[1].2), "{got:?}");
    assert_eq!((&got[2].0[..], got[2].1), (&b"q-long"[..], false));
    assert!(alive(got[2].2), "{got:?}");
}

fn delayed_will(topic: &str, delay: u32, retain: bool) -> v5p::LastWill {
    v5p::LastWill::new(
        topic,
        "gone",
        Q5::AtLeastOnce,
        retain,
        Some(v5p::LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    )
}

/// [MQTT-3.1.3-9] a delayed will is kept with its persistent session: the
/// broker restarting within the delay does not lose it, it is published
/// when due after the restart.
#[tokio::test]
async fn mqtt_3_1_3_9_delayed_will_survives_a_restart() {
    let store = restart_store();
    let b = TestBroker::start_with(|o| o.store = Some(store.clone())).await;
    let mut p = props();
    p.session_expiry_interval = Some(3600);
    // Retained, so the watcher gets it whether it comes before or after
    // the watcher subscribed.
    let will = delayed_will("dwr/will", 2, true);
    let (c, _) = Raw5::connect_with(b.addr, "dwr", true, Some(p), Some(will)).await;
    drop(c);
    wait_until(|| b.broker.stats().clients_connected == 0).await;
    stop(b).await;
    let b = TestBroker::start_with(|o| o.store = Some(store.clone())).await;
    let mut watcher = Raw5::connect(b.addr, "dwr-watch").await;
    watcher
        .subscribe(vec![filter("dwr/#", Q5::AtLeastOnce)], None)
        .await;
    let w = watcher.next_publish().await;
    assert_eq!(
        (&w.topic[..], &w.payload[..]),
        (&b"dwr/will"[..], &b"gone"[..])
    );
}

/// [MQTT-3.1.3-9] with [MQTT-3.1.4-3]: a connection taken over by one that
/// resumes its session (Clean Start 0) before its will delay has passed
/// does not have its will published, neither at once nor after the delay;
/// taken over with Clean Start 1, its session ends, and its will is
/// published at once (3.1.2.5).
#[tokio::test]
async fn mqtt_3_1_3_9_takeover_resuming_the_session_holds_the_will_back() {
    let b = TestBroker::start().await;
    let mut watcher = Raw5::connect(b.addr, "tk-watch").await;
    watcher
        .subscribe(vec![filter("tk/#", Q5::AtLeastOnce)], None)
        .await;
    let mut p = props();
    p.session_expiry_interval = Some(600);
    let (mut first, _) = Raw5::connect_with(
        b.addr,
        "tk-resume",
        true,
        Some(p.clone()),
        Some(delayed_will("tk/resume", 1, false)),
    )
    .await;
    let (_second, ack) =
        Raw5::connect_with(b.addr, "tk-resume", false, Some(p.clone()), None).await;
    assert!(ack.session_present);
    first
        .expect_disconnect(DisconnectReasonCode::SessionTakenOver)
        .await;
    // Past the will delay: had the will been published (at once, or when
    // the delay passed), it would come before the marker.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let mut marker = Raw5::connect(b.addr, "tk-marker").await;
    marker
        .publish("tk/marker", b"m", Q5::AtLeastOnce, false, None)
        .await;
    assert_eq!(&watcher.next_publish().await.topic[..], b"tk/marker");

    // Clean Start 1: the old session ends, its will goes at once (a delay
    // of an hour would otherwise hold it back).
    let (mut first, _) = Raw5::connect_with(
        b.addr,
        "tk-clean",
        true,
        Some(p.clone()),
        Some(delayed_will("tk/clean", 3600, false)),
    )
    .await;
    let (_second, ack) = Raw5::connect_with(b.addr, "tk-clean", true, Some(p), None).await;
    assert!(!ack.session_present);
    first
        .expect_disconnect(DisconnectReasonCode::SessionTakenOver)
        .await;
    assert_eq!(&watcher.next_publish().await.topic[..], b"tk/clean");
}

/// A pipe's link session resends its unacknowledged messages after a
/// re-attach with their MQTT 5 properties (user properties, content type,
/// the expiry interval left), not as bare 3.1.1 PUBLISHes.
#[tokio::test]
async fn a_link_resend_after_re_attach_keeps_the_properties() {
    let b = TestBroker::start().await;
    let (link, mut deliveries) = b.broker.link("prop-link", false);
    within(link.subscribe(vec![("lp/#".into(), QoS::AtLeastOnce)]))
        .await
        .expect("subscribed");
    let mut state = link.state();
    let mut dev = Raw5::connect(b.addr, "lp-dev").await;
    let sent = PublishProperties {
        user_properties: vec![("k".into(), "v".into())],
        content_type: Some("text/plain".into()),
        message_expiry_interval: Some(3600),
        ..Default::default()
    };
    dev.publish("lp/x", b"p", Q5::AtLeastOnce, false, Some(sent))
        .await;
    let first = within(deliveries.recv()).await.expect("delivery");
    // Not acknowledged before the link goes down: the session resends it.
    let hold = b
        .broker
        .hold_link_down("prop-link")
        .await
        .expect("link exists");
    within(state.wait_for(|s| matches!(s, mqbridge::link::LinkState::Disconnected { .. })))
        .await
        .expect("state watch");
    drop(hold);
    drop(first);
    let again = within(deliveries.recv()).await.expect("redelivery");
    assert!(again.message.dup, "a resend");
    let p = again.message.properties.as_ref().expect("properties kept");
    assert_eq!(p.user_properties, [("k".to_string(), "v".to_string())]);
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert!(
        p.message_expiry_interval
            .is_some_and(|s| (3590..=3600).contains(&s))
    );
    again.ack.ack();
}
