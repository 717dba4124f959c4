//! Maps the plan onto the options of the client, the built-in broker and
//! the pipe runtime.

use crate::broker::{self, BrokerOptions};
use crate::client::{BackoffOptions, ClientOptions, Endpoint, FailbackOptions, TlsOptions};
use crate::config::plan::{BuiltInPlan, DropPolicy, PipePlan, QosRule, RemotePlan, RetainRule};
use crate::pipe::PipeSpec;
use crate::pipe::loopguard::BrokerIx;
use crate::pipe::queue::WhenFull;
use crate::pipe::rules::{PipeRules, QosPolicy};
use crate::protocol::{Message, QoS};

/// Maps a pipe's plan onto the runtime's spec, with its brokers' indices
/// and the destination's publish window.
pub(super) fn pipe_spec(p: &PipePlan, source: BrokerIx, dest: BrokerIx, window: usize) -> PipeSpec {
    PipeSpec {
        name: p.name.clone(),
        source,
        dest,
        filters: p.filters.clone(),
        rules: PipeRules::new(
            &p.exclude,
            p.remap.clone(),
            match p.qos {
                QosRule::Max(q) => QosPolicy::Max(q),
                QosRule::Force(q) => QosPolicy::Force(q),
            },
            p.retain == RetainRule::Clear,
            p.max_payload,
        ),
        queue_size: p.queue.size,
        when_full: match p.queue.when_full {
            DropPolicy::DropOldest => WhenFull::DropOldest,
            DropPolicy::DropNewest => WhenFull::DropNewest,
        },
        rate_limit: p.rate_limit.as_ref().map(|r| (r.per_second, r.burst)),
        inflight: window,
    }
}

fn status_message(topic: &str, payload: &str) -> Message {
    Message::new(topic, payload.as_bytes().to_vec(), QoS::AtLeastOnce, true)
}

/// Maps a remote broker's plan onto the client's options.
pub(super) fn client_options(name: &str, r: &RemotePlan) -> ClientOptions {
    let endpoints = r
        .endpoints
        .iter()
        .map(|e| Endpoint {
            host: e.host.clone(),
            port: e.port,
            tls: e.scheme.is_tls(),
            ws_path: e.path.clone(),
        })
        .collect();
    let mut o = ClientOptions::new(name, endpoints, r.client_id.clone());
    o.username = r.username.clone();
    o.password = r.password.clone();
    o.keepalive = r.keepalive;
    o.clean_session = r.clean_session;
    o.ws_headers = r.ws_headers.clone();
    if let Some(t) = &r.tls {
        o.tls = TlsOptions {
            ca_file: t.ca_file.clone(),
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            server_name: t.server_name.clone(),
            alpn: t.alpn.clone(),
            insecure: t.insecure,
        };
    }
    o.backoff = BackoffOptions {
        min: r.reconnect.min,
        max: r.reconnect.max,
        jitter: r.reconnect.jitter,
        stable_after: r.reconnect.stable_after,
    };
    o.failback = FailbackOptions {
        enabled: r.failback.enabled,
        probe_interval: r.failback.probe_interval,
        probes_required: r.failback.probes_required,
    };
    o.connect_timeout = r.connect_timeout;
    o.max_packet_size = r.max_packet_size;
    o.inflight = usize::from(r.inflight).max(1);
    if let Some(s) = &r.status {
        o.will = Some(status_message(&s.topic, &s.offline));
        o.birth = Some(status_message(&s.topic, &s.online));
    }
    o
}

/// Maps a built-in broker's plan onto the broker's options.
pub(super) fn broker_options(name: &str, b: &BuiltInPlan) -> BrokerOptions {
    BrokerOptions {
        name: name.to_string(),
        listeners: b
            .listeners
            .iter()
            .map(|l| broker::ListenerOptions {
                addr: l.addr,
                tls: l.tls.as_ref().map(|t| broker::ServerTls {
                    cert_file: t.cert_file.clone(),
                    key_file: t.key_file.clone(),
                    client_ca_file: t.client_ca_file.clone(),
                    require_client_cert: t.require_client_cert,
                    cert_cn_as_username: t.cert_cn_as_username,
                }),
                websocket: l.websocket,
            })
            .collect(),
        allow_anonymous: b.allow_anonymous,
        password_file: b.password_file.clone(),
        acl_file: b.acl_file.clone(),
        limits: broker::Limits {
            max_connections: b.limits.max_connections,
            max_packet_size: b.limits.max_packet_size,
            max_inflight: b.limits.max_inflight,
            max_queued_messages: b.limits.max_queued_messages,
            overflow: broker::OverflowPolicy::DropOldest,
            connect_timeout: b.limits.connect_timeout,
        },
        sys_interval: None,
    }
}
