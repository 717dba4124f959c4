//! Compiling a `type: remote` broker.

use std::time::Duration;

use super::broker_fields::{packet_size, positive_duration, reject_fields};
use super::certs::CertUse;
use super::client_id::{default_client_id, host_variables, unstable_look};
use super::ctx::Ctx;
use super::error::Scope;
use super::plan::{BackoffPlan, EndpointPlan, FailbackPlan, RemotePlan, StatusPlan, TlsPlan};
use super::raw::{RawBroker, Text, TextList, defaults};
use super::urls::parse_endpoint;
use crate::protocol::version::{ProtocolChoice, ProtocolVersion};
use crate::topic::validate_topic_name;

/// Compiles a `type: remote` broker: a recipe of named steps, each
/// reporting its own errors (with file, line and column) into `ctx`.
pub(crate) fn compile_remote(
    ctx: &mut Ctx,
    key: &Text,
    scope: &Scope,
    raw: &RawBroker,
) -> RemotePlan {
    reject_builtin_fields(ctx, scope, raw);
    let endpoints = compile_endpoints(ctx, key, scope, raw);
    let protocol = compile_protocol(ctx, scope, raw);
    let client_id = compile_client_id(ctx, key, scope, raw);
    let (username, password) = compile_credentials(ctx, scope, raw);
    let keepalive = compile_keepalive(ctx, scope, raw);
    let clean_session = ctx.boolean(&raw.clean_session, scope, "clean_session", false);
    if !clean_session && let Some(t) = &raw.client_id {
        warn_unstable_client_id(ctx, scope, t, &client_id);
    }
    let tls = compile_endpoint_tls(ctx, scope, raw, &endpoints);
    let reconnect = compile_reconnect(ctx, key, scope, raw);
    let failback = compile_failback(ctx, scope, raw);
    let connect_timeout = positive_duration(
        ctx,
        &raw.connect_timeout,
        scope,
        "connect_timeout",
        defaults::connect_timeout(),
    );
    let max_packet_size = packet_size(
        ctx,
        &raw.max_packet_size,
        scope,
        "max_packet_size",
        defaults::max_packet_size(),
    );
    let inflight = ctx.int(
        &raw.inflight,
        scope,
        "inflight",
        defaults::inflight().into(),
        1,
        u16::MAX.into(),
    ) as u16;
    let status = compile_status(ctx, scope, raw, &client_id);
    let required = ctx.boolean(&raw.required, scope, "required", true);
    let ws_headers = compile_ws_headers(ctx, scope, raw, &endpoints);
    RemotePlan {
        endpoints,
        protocol,
        client_id,
        username,
        password,
        keepalive,
        clean_session,
        tls,
        ws_headers,
        reconnect,
        failback,
        connect_timeout,
        max_packet_size,
        inflight,
        status,
        required,
    }
}

/// Fields only a built-in broker takes.
fn reject_builtin_fields(ctx: &mut Ctx, scope: &Scope, raw: &RawBroker) {
    reject_fields(
        ctx,
        scope,
        &[
            ("listen", raw.listen.as_ref().map(|s| &s.referenced)),
            (
                "allow_anonymous",
                raw.allow_anonymous.as_ref().map(|s| &s.referenced),
            ),
            ("acl_file", raw.acl_file.as_ref().map(|s| &s.referenced)),
            ("limits", raw.limits.as_ref().map(|s| &s.referenced)),
            (
                "sys_interval",
                raw.sys_interval.as_ref().map(|s| &s.referenced),
            ),
            (
                "session_expiry",
                raw.session_expiry.as_ref().map(|s| &s.referenced),
            ),
        ],
        "builtin",
    );
}

/// `endpoints:`, in priority order (non-empty when there is no error).
fn compile_endpoints(
    ctx: &mut Ctx,
    key: &Text,
    scope: &Scope,
    raw: &RawBroker,
) -> Vec<EndpointPlan> {
    let mut endpoints = Vec::new();
    match &raw.endpoints {
        None => ctx.err(
            &key.referenced,
            scope,
            "a remote broker needs `endpoints:` (a list like `- mqtt://host:1883`)",
        ),
        Some(list) if list.value.0.is_empty() => {
            ctx.err(&list.referenced, scope, "endpoints: the list is empty")
        }
        Some(list) => {
            for t in &TextList::located(list) {
                let Some(url) = ctx.text(t, scope, "endpoints") else {
                    continue;
                };
                match parse_endpoint(&url) {
                    Ok(ep) => endpoints.push(ep),
                    Err(e) => ctx.err(&t.referenced, scope, format!("endpoints: {e}")),
                }
            }
        }
    }
    endpoints
}

/// `protocol: 5 | 3.1.1 | 3.1`; absent: MQTT 5, falling back to 3.1.1
/// when the broker refuses it, or when it is a pipe's destination and
/// grants a receive maximum below `inflight`.
fn compile_protocol(ctx: &mut Ctx, scope: &Scope, raw: &RawBroker) -> ProtocolChoice {
    let Some(p) = &raw.protocol else {
        return ProtocolChoice::Auto;
    };
    let Some(v) = ctx.text(p, scope, "protocol") else {
        return ProtocolChoice::Auto;
    };
    match v.trim() {
        "5" | "5.0" => ProtocolChoice::Only(ProtocolVersion::V5),
        "3.1.1" | "4" => ProtocolChoice::Only(ProtocolVersion::V3_1_1),
        "3.1" | "3" => ProtocolChoice::Only(ProtocolVersion::V3_1),
        other => {
            ctx.err(
                &p.referenced,
                scope,
                format!("protocol: unknown MQTT version `{other}` (use `5`, `3.1.1` or `3.1`)"),
            );
            ProtocolChoice::Auto
        }
    }
}

/// `client_id:`, or the stable default.
fn compile_client_id(ctx: &mut Ctx, key: &Text, scope: &Scope, raw: &RawBroker) -> String {
    let Some(t) = &raw.client_id else {
        return default_client_id(&ctx.stem, &key.value);
    };
    let id = ctx.text(t, scope, "client_id").unwrap_or_default();
    if id.is_empty() {
        ctx.err(
            &t.referenced,
            scope,
            "client_id: must not be empty (a bridge keeps a persistent session under it)",
        );
    } else if id.len() > 65_535 || id.contains('\0') {
        ctx.err(
            &t.referenced,
            scope,
            "client_id: must be at most 65,535 bytes without NUL",
        );
    }
    id
}

/// `username:` and `password:` or `password_file:`.
fn compile_credentials(
    ctx: &mut Ctx,
    scope: &Scope,
    raw: &RawBroker,
) -> (Option<String>, Option<String>) {
    let username = ctx.opt_text(&raw.username, scope, "username");
    let mut password = ctx.opt_text(&raw.password, scope, "password");
    if let (Some(_), Some(f)) = (&raw.password, &raw.password_file) {
        ctx.err(
            &f.referenced,
            scope,
            "password_file: set either `password` or `password_file`, not both",
        );
    } else if raw.password_file.is_some() {
        password = ctx.secret_file(&raw.password_file, scope, "password_file");
    }
    if raw.username.is_none()
        && let Some(t) = raw.password.as_ref().or(raw.password_file.as_ref())
    {
        ctx.err(
            &t.referenced,
            scope,
            "a password needs a `username` (MQTT 3.1.1 forbids a password alone)",
        );
    }
    (username, password)
}

/// `keepalive:`: whole seconds, at most 65,535; 0 disables it.
fn compile_keepalive(ctx: &mut Ctx, scope: &Scope, raw: &RawBroker) -> Duration {
    let keepalive = ctx.duration(&raw.keepalive, scope, "keepalive", defaults::keepalive());
    if let Some(t) = &raw.keepalive {
        if keepalive > defaults::keepalive_max() {
            ctx.err(
                &t.referenced,
                scope,
                "keepalive: at most 18h12m15s (65,535 s, the MQTT maximum); 0 disables it",
            );
        } else if keepalive.subsec_nanos() != 0 {
            ctx.err(&t.referenced, scope, "keepalive: must be whole seconds");
        }
    }
    keepalive
}

/// `tls:`, which needs (and is needed by) a TLS endpoint.
fn compile_endpoint_tls(
    ctx: &mut Ctx,
    scope: &Scope,
    raw: &RawBroker,
    endpoints: &[EndpointPlan],
) -> Option<TlsPlan> {
    let any_tls = endpoints.iter().any(|e| e.scheme.is_tls());
    match (&raw.tls, any_tls) {
        (Some(t), false) if !endpoints.is_empty() => {
            ctx.err(
                &t.referenced,
                scope,
                "tls: is set but no endpoint uses `mqtts://` or `wss://`",
            );
            None
        }
        (_, false) => None,
        (raw_tls, true) => Some(compile_tls(ctx, scope, raw_tls.as_ref().map(|t| &t.value))),
    }
}

/// `reconnect:` backoff.
fn compile_reconnect(ctx: &mut Ctx, key: &Text, scope: &Scope, raw: &RawBroker) -> BackoffPlan {
    let r = raw.reconnect.as_ref().map(|s| &s.value);
    let min = ctx.duration(
        &r.and_then(|r| r.min.clone()),
        scope,
        "reconnect.min",
        defaults::reconnect_min(),
    );
    let max = ctx.duration(
        &r.and_then(|r| r.max.clone()),
        scope,
        "reconnect.max",
        defaults::reconnect_max(),
    );
    let rloc = raw
        .reconnect
        .as_ref()
        .map(|s| s.referenced)
        .unwrap_or(key.referenced);
    if min.is_zero() {
        ctx.err(
            &rloc,
            scope,
            "reconnect.min: must be above 0 (a zero delay is a tight reconnect loop)",
        );
    }
    if min > max {
        ctx.err(
            &rloc,
            scope,
            format!(
                "reconnect: min ({}) is larger than max ({})",
                super::units::format_duration(min),
                super::units::format_duration(max)
            ),
        );
    }
    BackoffPlan {
        min,
        max,
        jitter: ctx.boolean(
            &r.and_then(|r| r.jitter.clone()),
            scope,
            "reconnect.jitter",
            true,
        ),
        stable_after: ctx.duration(
            &r.and_then(|r| r.stable_after.clone()),
            scope,
            "reconnect.stable_after",
            defaults::stable_after(),
        ),
        probe_interval: ctx.duration(
            &r.and_then(|r| r.probe_interval.clone()),
            scope,
            "reconnect.probe_interval",
            defaults::reconnect_probe_interval(),
        ),
    }
}

/// `failback:` to the primary endpoint.
fn compile_failback(ctx: &mut Ctx, scope: &Scope, raw: &RawBroker) -> FailbackPlan {
    let f = raw.failback.as_ref().map(|s| &s.value);
    let probe_interval = ctx.duration(
        &f.and_then(|f| f.probe_interval.clone()),
        scope,
        "failback.probe_interval",
        defaults::probe_interval(),
    );
    if probe_interval.is_zero()
        && let Some(t) = f.and_then(|f| f.probe_interval.as_ref())
    {
        ctx.err(
            &t.referenced,
            scope,
            "failback.probe_interval: must be above 0",
        );
    }
    FailbackPlan {
        enabled: ctx.boolean(
            &f.and_then(|f| f.enabled.clone()),
            scope,
            "failback.enabled",
            true,
        ),
        probe_interval,
        probes_required: ctx.int(
            &f.and_then(|f| f.probes_required.clone()),
            scope,
            "failback.probes_required",
            defaults::probes_required().into(),
            1,
            1000,
        ) as u32,
    }
}

/// Headers the WebSocket handshake sets itself; overriding them would break it.
const RESERVED_WS_HEADERS: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
];

/// `ws_headers:`: valid HTTP header names and values, none the handshake owns,
/// and only with a `ws://`/`wss://` endpoint.
fn compile_ws_headers(
    ctx: &mut Ctx,
    scope: &Scope,
    raw: &RawBroker,
    endpoints: &[super::plan::EndpointPlan],
) -> Vec<(String, String)> {
    let Some(map) = &raw.ws_headers else {
        return Vec::new();
    };
    if !endpoints.is_empty() && !endpoints.iter().any(|e| e.scheme.is_websocket()) {
        ctx.err(
            &map.referenced,
            scope,
            "ws_headers: is set but no endpoint uses `ws://` or `wss://`",
        );
        return Vec::new();
    }
    let mut headers = Vec::new();
    for (name, value) in &map.value {
        let Some(v) = ctx.text(value, scope, "ws_headers") else {
            continue;
        };
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            ctx.err(
                &value.referenced,
                scope,
                format!("ws_headers: `{name}` is not a valid HTTP header name"),
            );
        } else if RESERVED_WS_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            ctx.err(
                &value.referenced,
                scope,
                format!("ws_headers: `{name}` is set by the WebSocket handshake itself"),
            );
        } else if http::HeaderValue::from_str(&v).is_err() {
            ctx.err(
                &value.referenced,
                scope,
                format!("ws_headers: the value of `{name}` is not a valid HTTP header value"),
            );
        } else {
            headers.push((name.clone(), v));
        }
    }
    headers
}

fn compile_tls(ctx: &mut Ctx, scope: &Scope, raw: Option<&super::raw::RawTls>) -> TlsPlan {
    let Some(t) = raw else {
        return TlsPlan {
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
            alpn: Vec::new(),
            insecure: false,
        };
    };
    let cert_file = ctx.cert_file(&t.cert_file, scope, "tls.cert_file", CertUse::Chain);
    let key_file = ctx.file(&t.key_file, scope, "tls.key_file");
    match (&t.cert_file, &t.key_file) {
        (Some(c), None) => ctx.err(
            &c.referenced,
            scope,
            "tls.cert_file: needs `key_file` too (client certificate and key go together)",
        ),
        (None, Some(k)) => ctx.err(
            &k.referenced,
            scope,
            "tls.key_file: needs `cert_file` too (client certificate and key go together)",
        ),
        _ => {}
    }
    let mut alpn = Vec::new();
    for a in t.alpn.iter().flatten() {
        if let Some(v) = ctx.text(a, scope, "tls.alpn") {
            if v.is_empty() || v.len() > 255 {
                ctx.err(
                    &a.referenced,
                    scope,
                    "tls.alpn: protocol names must be 1 to 255 bytes",
                );
            } else {
                alpn.push(v);
            }
        }
    }
    let insecure = ctx.boolean(&t.insecure, scope, "tls.insecure", false);
    if insecure && let Some(i) = &t.insecure {
        ctx.warn(
            &i.referenced,
            scope,
            "tls.insecure: server certificates are NOT verified",
        );
    }
    let server_name = ctx.opt_text(&t.server_name, scope, "tls.server_name");
    if let (Some(n), Some(loc)) = (&server_name, &t.server_name)
        && n.is_empty()
    {
        ctx.err(&loc.referenced, scope, "tls.server_name: must not be empty");
    }
    TlsPlan {
        ca_file: ctx.cert_file(&t.ca_file, scope, "tls.ca_file", CertUse::Trust),
        cert_file,
        key_file,
        server_name,
        alpn,
        insecure,
    }
}

fn compile_status(
    ctx: &mut Ctx,
    scope: &Scope,
    raw: &RawBroker,
    client_id: &str,
) -> Option<StatusPlan> {
    let s = raw.status.as_ref().map(|s| &s.value);
    if !ctx.boolean(
        &s.and_then(|s| s.enabled.clone()),
        scope,
        "status.enabled",
        true,
    ) {
        return None;
    }
    let topic = match s.and_then(|s| s.topic.as_ref()) {
        Some(t) => {
            let v = ctx.text(t, scope, "status.topic").unwrap_or_default();
            if let Err(e) = validate_topic_name(&v) {
                ctx.err(
                    &t.referenced,
                    scope,
                    format!("status.topic: `{v}` is not a valid topic name: it {e}"),
                );
            }
            v
        }
        None => {
            let v = format!("mqbridge/{client_id}/status");
            if validate_topic_name(&v).is_err()
                && let Some(c) = &raw.client_id
            {
                ctx.err(&c.referenced, scope, format!("client_id: the default status topic `{v}` is not a valid topic; set `status.topic`"));
            }
            v
        }
    };
    Some(StatusPlan {
        topic,
        online: ctx
            .opt_text(&s.and_then(|s| s.online.clone()), scope, "status.online")
            .unwrap_or_else(|| defaults::status_online().to_string()),
        offline: ctx
            .opt_text(&s.and_then(|s| s.offline.clone()), scope, "status.offline")
            .unwrap_or_else(|| defaults::status_offline().to_string()),
    })
}

/// A persistent session's explicit client id that would change between
/// restarts: a host-derived `${VAR}`, or a value that looks generated.
fn warn_unstable_client_id(ctx: &mut Ctx, scope: &Scope, raw: &Text, id: &str) {
    const WHY: &str = "a new id on every restart starts a new persistent session and strands the messages queued for the old one; use a fixed name (e.g. the site or gateway name)";
    let vars = host_variables(&raw.value);
    if let Some(var) = vars.first() {
        ctx.warn(
            &raw.referenced,
            scope,
            format!("client_id: uses `${{{var}}}`, which changes when the container or pod is replaced; {WHY}"),
        );
    } else if let Some(look) = unstable_look(id) {
        ctx.warn(
            &raw.referenced,
            scope,
            format!("client_id: `{id}` looks unstable ({look}); {WHY}"),
        );
    }
}
