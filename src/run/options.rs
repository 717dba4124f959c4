//! Maps the plan onto the options of the client, the built-in broker and
//! the pipe runtime.

use crate::broker::{self, BrokerOptions};
use crate::client::{BackoffOptions, ClientOptions, Endpoint, FailbackOptions, TlsOptions};
use crate::config::plan::{
    BuiltInPlan, DeliveryPlan, DropPolicy, PipePlan, Plan, QosRule, RemotePlan, RetainRule,
    SpoolFullPolicy,
};
use crate::pipe::loopguard::BrokerIx;
use crate::pipe::properties::{HopLimit, PropertyRules, ResponseTopic};
use crate::pipe::queue::WhenFull;
use crate::pipe::rules::{PipeRules, QosPolicy};
use crate::pipe::{DeliveryMode, PipeSpec, SpoolSpec};
use crate::protocol::{Message, QoS};
use crate::spool::WhenFull as SpoolWhenFull;

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
        )
        .with_properties(property_rules(p)),
        retain_as_published: p.retain == RetainRule::AsPublished,
        queue_size: p.queue.size,
        when_full: match p.queue.when_full {
            DropPolicy::DropOldest => WhenFull::DropOldest,
            DropPolicy::DropNewest => WhenFull::DropNewest,
        },
        rate_limit: p.rate_limit.as_ref().map(|r| (r.per_second, r.burst)),
        inflight: window,
        delivery: spool_spec(p).map_or(DeliveryMode::EndToEnd, DeliveryMode::Spool),
    }
}

/// A pipe's MQTT 5 property options.
fn property_rules(p: &PipePlan) -> PropertyRules {
    let props = &p.properties;
    PropertyRules {
        response_topic: if props.remap_response_topic {
            ResponseTopic::Remap
        } else {
            ResponseTopic::Keep
        },
        remove: props.remove.clone(),
        add: props.add.clone(),
        hops: props.hops.as_ref().map(|h| HopLimit {
            property: h.property.clone(),
            max_hops: h.max_hops,
        }),
    }
}

/// A spooled pipe's spool settings; `None` for `delivery: end_to_end`.
pub(super) fn spool_spec(p: &PipePlan) -> Option<SpoolSpec> {
    match p.delivery {
        DeliveryPlan::EndToEnd => None,
        DeliveryPlan::Spool(s) => Some(SpoolSpec {
            qos0: s.qos0,
            max_bytes: s.max_bytes,
            when_full: match s.when_full {
                SpoolFullPolicy::Block => SpoolWhenFull::Block,
                SpoolFullPolicy::DropOldest => SpoolWhenFull::DropOldest,
            },
        }),
    }
}

fn status_message(topic: &str, payload: &str) -> Message {
    Message::new(topic, payload.as_bytes().to_vec(), QoS::AtLeastOnce, true)
}

/// Whether broker `name` is the destination of at least one pipe of `plan`
/// (its client then publishes: see [`ClientOptions::publishes`]).
pub(super) fn publishes_to(plan: &Plan, name: &str) -> bool {
    plan.pipes.values().any(|p| p.to == name)
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
    o.protocol = r.protocol;
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
        probe_interval: r.reconnect.probe_interval,
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
/// The broker keeps persistent sessions and retained messages in `store`.
pub(super) fn broker_options(
    name: &str,
    b: &BuiltInPlan,
    store: Option<crate::store::Store>,
) -> BrokerOptions {
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
            handshake_timeout: b.limits.handshake_timeout,
            max_pending_handshakes: b.limits.max_pending_handshakes,
            max_pending_per_ip: b.limits.max_pending_per_ip,
            max_topic_levels: b.limits.max_topic_levels,
            max_filters_per_subscribe: b.limits.max_filters_per_subscribe,
            max_subscriptions_per_client: b.limits.max_subscriptions_per_client,
            max_trie_nodes: b.limits.max_trie_nodes,
            topic_alias_maximum: b.limits.topic_alias_maximum,
        },
        sys_interval: b.sys_interval,
        store,
        session_expiry: b.session_expiry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BrokerKind, LoadOptions, load_str_with};

    /// The config's defaults for the handshake and subscription limits are
    /// the library's (two lists of numbers must not drift apart).
    #[test]
    fn config_defaults_of_new_limits_match_the_library() {
        let opts = LoadOptions { vars: &|_| None };
        let yaml = "brokers:\n  edge: {type: builtin, listen: ['tcp://127.0.0.1:0']}\n";
        let Ok((plan, _)) = load_str_with(yaml, "t.yaml", &opts) else {
            panic!("valid config");
        };
        let Some(BrokerKind::BuiltIn(b)) = plan.brokers.get("edge").map(|b| &b.kind) else {
            panic!("edge is built-in");
        };
        let got = broker_options("edge", b, None).limits;
        let lib = broker::Limits::default();
        assert_eq!(
            (
                got.handshake_timeout,
                got.max_pending_handshakes,
                got.max_pending_per_ip,
                got.max_topic_levels,
                got.max_filters_per_subscribe,
                got.max_subscriptions_per_client,
                got.max_trie_nodes,
                got.topic_alias_maximum
            ),
            (
                lib.handshake_timeout,
                lib.max_pending_handshakes,
                lib.max_pending_per_ip,
                lib.max_topic_levels,
                lib.max_filters_per_subscribe,
                lib.max_subscriptions_per_client,
                lib.max_trie_nodes,
                lib.topic_alias_maximum
            )
        );
    }
}
