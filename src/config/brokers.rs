//! Compiling `brokers:` entries (remote and built-in) into plans.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::ctx::Ctx;
use super::error::Scope;
use super::plan::{
    BackoffPlan, BrokerKind, BuiltInPlan, EndpointPlan, FailbackPlan, LimitsPlan, ListenerPlan,
    ListenerTlsPlan, RemotePlan, Scheme, StatusPlan, TlsPlan,
};
use super::raw::{OrMap, RawBroker, RawListener, Text, defaults};
use crate::topic::validate_topic_name;

/// Compiles one broker; `None` when its `type` is missing or unknown.
pub(crate) fn compile_broker(
    ctx: &mut Ctx,
    key: &Text,
    scope: &Scope,
    raw: &RawBroker,
) -> Option<BrokerKind> {
    let Some(kind) = &raw.kind else {
        ctx.err(
            &key.referenced,
            scope,
            "missing `type:` (`remote` to connect to a broker, `builtin` to run our own)",
        );
        return None;
    };
    match ctx.text(kind, scope, "type")?.as_str() {
        "remote" => Some(BrokerKind::Remote(compile_remote(ctx, key, scope, raw))),
        "builtin" => Some(BrokerKind::BuiltIn(compile_builtin(ctx, key, scope, raw))),
        other => {
            ctx.err(
                &kind.referenced,
                scope,
                format!("type: unknown broker type `{other}` (use `remote` or `builtin`)"),
            );
            None
        }
    }
}

/// Reports each present field from `fields` as belonging to the other kind.
fn reject_fields(
    ctx: &mut Ctx,
    scope: &Scope,
    fields: &[(&str, Option<&serde_saphyr::Location>)],
    kind: &str,
) {
    for (name, loc) in fields {
        if let Some(loc) = loc {
            ctx.err(
                loc,
                scope,
                format!("`{name}` is only for `type: {kind}` brokers"),
            );
        }
    }
}

fn compile_remote(ctx: &mut Ctx, key: &Text, scope: &Scope, raw: &RawBroker) -> RemotePlan {
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
        ],
        "builtin",
    );

    let mut endpoints = Vec::new();
    match &raw.endpoints {
        None => ctx.err(
            &key.referenced,
            scope,
            "a remote broker needs `endpoints:` (a list like `- mqtt://host:1883`)",
        ),
        Some(list) if list.value.is_empty() => {
            ctx.err(&list.referenced, scope, "endpoints: the list is empty")
        }
        Some(list) => {
            for t in &list.value {
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

    if let Some(p) = &raw.protocol
        && let Some(v) = ctx.text(p, scope, "protocol")
    {
        match v.trim() {
            "3.1.1" | "4" => {}
            "5" | "5.0" => ctx.err(
                &p.referenced,
                scope,
                "protocol: MQTT 5 is not supported yet (use `3.1.1`)",
            ),
            other => ctx.err(
                &p.referenced,
                scope,
                format!("protocol: unknown MQTT version `{other}` (use `3.1.1`)"),
            ),
        }
    }

    let client_id = match &raw.client_id {
        Some(t) => {
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
        None => format!("mqbridge-{}-{}", ctx.stem, ctx.opts.hostname),
    };

    let username = ctx.opt_text(&raw.username, scope, "username");
    let mut password = ctx.opt_text(&raw.password, scope, "password");
    if let (Some(p), Some(f)) = (&raw.password, &raw.password_file) {
        let _ = p;
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
    let clean_session = ctx.boolean(&raw.clean_session, scope, "clean_session", false);

    let any_tls = endpoints.iter().any(|e| e.scheme == Scheme::Tls);
    let tls = match (&raw.tls, any_tls) {
        (Some(t), false) if !endpoints.is_empty() => {
            ctx.err(
                &t.referenced,
                scope,
                "tls: is set but no endpoint uses `mqtts://`",
            );
            None
        }
        (_, false) => None,
        (raw_tls, true) => Some(compile_tls(ctx, scope, raw_tls.as_ref().map(|t| &t.value))),
    };

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
    let reconnect = BackoffPlan {
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
    };

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
    let failback = FailbackPlan {
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
    };

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

    RemotePlan {
        endpoints,
        client_id,
        username,
        password,
        keepalive,
        clean_session,
        tls,
        reconnect,
        failback,
        connect_timeout,
        max_packet_size,
        inflight,
        status,
        required,
    }
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
    let cert_file = ctx.file(&t.cert_file, scope, "tls.cert_file");
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
        ca_file: ctx.file(&t.ca_file, scope, "tls.ca_file"),
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
                    format!("status.topic: `{v}` is not a valid topic name: {e}"),
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

fn positive_duration(
    ctx: &mut Ctx,
    t: &Option<Text>,
    scope: &Scope,
    field: &str,
    default: std::time::Duration,
) -> std::time::Duration {
    let d = ctx.duration(t, scope, field, default);
    if d.is_zero()
        && let Some(t) = t
    {
        ctx.err(&t.referenced, scope, format!("{field}: must be above 0"));
        return default;
    }
    d
}

fn packet_size(ctx: &mut Ctx, t: &Option<Text>, scope: &Scope, field: &str, default: u64) -> usize {
    let n = ctx.size(t, scope, field, default);
    if let Some(t) = t
        && (n < 16 || n > defaults::max_packet_size())
    {
        ctx.err(&t.referenced, scope, format!("{field}: must be between 16 bytes and 268435455 bytes (256MiB - 1, the MQTT maximum)"));
        return default as usize;
    }
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn compile_builtin(ctx: &mut Ctx, key: &Text, scope: &Scope, raw: &RawBroker) -> BuiltInPlan {
    let loc = |t: &Option<Text>| t.as_ref().map(|t| t.referenced);
    let remote_only = [
        ("endpoints", raw.endpoints.as_ref().map(|s| s.referenced)),
        ("protocol", loc(&raw.protocol)),
        ("client_id", loc(&raw.client_id)),
        ("username", loc(&raw.username)),
        ("password", loc(&raw.password)),
        ("keepalive", loc(&raw.keepalive)),
        ("clean_session", loc(&raw.clean_session)),
        ("tls", raw.tls.as_ref().map(|s| s.referenced)),
        ("reconnect", raw.reconnect.as_ref().map(|s| s.referenced)),
        ("failback", raw.failback.as_ref().map(|s| s.referenced)),
        ("connect_timeout", loc(&raw.connect_timeout)),
        ("max_packet_size", loc(&raw.max_packet_size)),
        ("inflight", loc(&raw.inflight)),
        ("status", raw.status.as_ref().map(|s| s.referenced)),
        ("required", loc(&raw.required)),
    ];
    let refs: Vec<(&str, Option<&serde_saphyr::Location>)> =
        remote_only.iter().map(|(n, l)| (*n, l.as_ref())).collect();
    reject_fields(ctx, scope, &refs, "remote");

    let mut listeners = Vec::new();
    match &raw.listen {
        None => ctx.err(
            &key.referenced,
            scope,
            "a built-in broker needs `listen:` (a list like `- tcp://127.0.0.1:1883`)",
        ),
        Some(l) if l.value.is_empty() => ctx.err(&l.referenced, scope, "listen: the list is empty"),
        Some(l) => {
            for item in &l.value {
                if let Some(p) = compile_listener(ctx, scope, item) {
                    listeners.push(p);
                }
            }
        }
    }

    let password_file = ctx.file(&raw.password_file, scope, "password_file");
    let allow_anonymous = ctx.boolean(
        &raw.allow_anonymous,
        scope,
        "allow_anonymous",
        raw.password_file.is_none(),
    );
    let acl_file = ctx.file(&raw.acl_file, scope, "acl_file");

    let l = raw.limits.as_ref().map(|s| &s.value);
    let limits = LimitsPlan {
        max_connections: ctx.int(
            &l.and_then(|l| l.max_connections.clone()),
            scope,
            "limits.max_connections",
            defaults::max_connections() as u64,
            1,
            10_000_000,
        ) as usize,
        max_packet_size: packet_size(
            ctx,
            &l.and_then(|l| l.max_packet_size.clone()),
            scope,
            "limits.max_packet_size",
            defaults::builtin_max_packet_size(),
        ),
        max_queued_messages: ctx.int(
            &l.and_then(|l| l.max_queued_messages.clone()),
            scope,
            "limits.max_queued_messages",
            defaults::max_queued_messages() as u64,
            1,
            100_000_000,
        ) as usize,
        max_inflight: ctx.int(
            &l.and_then(|l| l.max_inflight.clone()),
            scope,
            "limits.max_inflight",
            defaults::max_inflight().into(),
            1,
            u16::MAX.into(),
        ) as u16,
        connect_timeout: positive_duration(
            ctx,
            &l.and_then(|l| l.connect_timeout.clone()),
            scope,
            "limits.connect_timeout",
            defaults::connect_timeout(),
        ),
    };

    BuiltInPlan {
        listeners,
        allow_anonymous,
        password_file,
        acl_file,
        limits,
    }
}

fn compile_listener(
    ctx: &mut Ctx,
    scope: &Scope,
    item: &serde_saphyr::Spanned<OrMap<RawListener>>,
) -> Option<ListenerPlan> {
    let empty = RawListener {
        url: None,
        cert_file: None,
        key_file: None,
        client_ca_file: None,
        require_client_cert: None,
        cert_cn_as_username: None,
    };
    let (url, raw) = match &item.value {
        OrMap::Short(s) => {
            let t = Text {
                value: s.clone(),
                referenced: item.referenced,
                defined: item.defined,
            };
            (ctx.text(&t, scope, "listen")?, &empty)
        }
        OrMap::Full(r) => match &r.url {
            Some(u) => (ctx.text(u, scope, "listen.url")?, r),
            None => {
                ctx.err(
                    &item.referenced,
                    scope,
                    "listen: a listener map needs `url:` (e.g. `tls://0.0.0.0:8883`)",
                );
                return None;
            }
        },
    };
    let (scheme, addr) = match parse_listen_url(&url) {
        Ok(v) => v,
        Err(e) => {
            ctx.err(&item.referenced, scope, format!("listen: {e}"));
            return None;
        }
    };
    let tls = match scheme {
        Scheme::Tcp => {
            for (name, t) in [
                ("cert_file", &raw.cert_file),
                ("key_file", &raw.key_file),
                ("client_ca_file", &raw.client_ca_file),
                ("require_client_cert", &raw.require_client_cert),
                ("cert_cn_as_username", &raw.cert_cn_as_username),
            ] {
                if let Some(t) = t {
                    ctx.err(
                        &t.referenced,
                        scope,
                        format!("listen.{name}: only for `tls://` listeners"),
                    );
                }
            }
            None
        }
        Scheme::Tls => {
            if raw.cert_file.is_none() || raw.key_file.is_none() {
                ctx.err(
                    &item.referenced,
                    scope,
                    format!("listen: `{url}` needs `cert_file` and `key_file`"),
                );
            }
            let cert_file = ctx.file(&raw.cert_file, scope, "listen.cert_file");
            let key_file = ctx.file(&raw.key_file, scope, "listen.key_file");
            let client_ca_file = ctx.file(&raw.client_ca_file, scope, "listen.client_ca_file");
            let require_client_cert = ctx.boolean(
                &raw.require_client_cert,
                scope,
                "listen.require_client_cert",
                false,
            );
            let cert_cn_as_username = ctx.boolean(
                &raw.cert_cn_as_username,
                scope,
                "listen.cert_cn_as_username",
                false,
            );
            if require_client_cert
                && raw.client_ca_file.is_none()
                && let Some(t) = &raw.require_client_cert
            {
                ctx.err(&t.referenced, scope, "listen.require_client_cert: needs `client_ca_file` to verify client certificates");
            }
            if cert_cn_as_username
                && !require_client_cert
                && let Some(t) = &raw.cert_cn_as_username
            {
                ctx.err(
                    &t.referenced,
                    scope,
                    "listen.cert_cn_as_username: needs `require_client_cert: true`",
                );
            }
            match (cert_file, key_file) {
                (Some(cert_file), Some(key_file)) => Some(ListenerTlsPlan {
                    cert_file,
                    key_file,
                    client_ca_file,
                    require_client_cert,
                    cert_cn_as_username,
                }),
                _ => return None,
            }
        }
    };
    Some(ListenerPlan { url, addr, tls })
}

/// Splits `host:port` / `[v6]:port` / `host`; `port` is `None` when absent.
fn split_host_port(authority: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| "missing `]` after an IPv6 address".to_string())?;
        match after {
            "" => (h, None),
            p => (
                h,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("unexpected `{p}` after `]`"))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err("IPv6 addresses need brackets, e.g. `[::1]:1883`".into());
            }
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("invalid port `{p}`"))?,
        ),
    };
    Ok((host.to_string(), port))
}

fn split_scheme(url: &str) -> Result<(&str, &str), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("`{url}` is not a URL (expected e.g. `mqtt://host:1883`)"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(format!("`{url}`: a path is not allowed"));
    }
    if rest.contains('@') {
        return Err(format!(
            "`{url}`: put credentials in `username`/`password`, not in the URL"
        ));
    }
    Ok((scheme, rest))
}

/// Parses a remote endpoint URL: `mqtt://host[:port]` or `mqtts://host[:port]`.
pub fn parse_endpoint(url: &str) -> Result<EndpointPlan, String> {
    let (scheme, rest) = split_scheme(url)?;
    let (scheme, default_port) = match scheme {
        "mqtt" => (Scheme::Tcp, 1883),
        "mqtts" => (Scheme::Tls, 8883),
        "ws" | "wss" => {
            return Err(format!(
                "`{scheme}://` endpoints are not supported yet (use mqtt:// or mqtts://)"
            ));
        }
        "tcp" => return Err(format!("`{url}`: use `mqtt://` for plain TCP endpoints")),
        "tls" | "ssl" => return Err(format!("`{url}`: use `mqtts://` for TLS endpoints")),
        other => {
            return Err(format!(
                "`{url}`: unknown scheme `{other}` (use mqtt:// or mqtts://)"
            ));
        }
    };
    let (host, port) = split_host_port(rest).map_err(|e| format!("`{url}`: {e}"))?;
    let port = port.unwrap_or(default_port);
    if port == 0 {
        return Err(format!("`{url}`: port 0 is not a valid destination"));
    }
    Ok(EndpointPlan {
        url: url.to_string(),
        scheme,
        host,
        port,
    })
}

/// Parses a built-in listener URL: `tcp://ip:port` or `tls://ip:port` (`localhost` allowed).
pub fn parse_listen_url(url: &str) -> Result<(Scheme, SocketAddr), String> {
    let (scheme, rest) = split_scheme(url)?;
    let scheme = match scheme {
        "tcp" => Scheme::Tcp,
        "tls" => Scheme::Tls,
        "ws" | "wss" => {
            return Err(format!(
                "`{scheme}://` listeners are not supported yet (use tcp:// or tls://)"
            ));
        }
        "mqtt" => return Err(format!("`{url}`: listeners use `tcp://`")),
        "mqtts" => return Err(format!("`{url}`: listeners use `tls://`")),
        other => {
            return Err(format!(
                "`{url}`: unknown scheme `{other}` (use tcp:// or tls://)"
            ));
        }
    };
    let (host, port) = split_host_port(rest).map_err(|e| format!("`{url}`: {e}"))?;
    let port =
        port.ok_or_else(|| format!("`{url}`: missing port (e.g. `:1883`; `:0` picks a free one)"))?;
    let ip = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse::<IpAddr>()
            .map_err(|_| format!("`{url}`: `{host}` is not an IP address (listeners bind to an address such as 127.0.0.1 or 0.0.0.0)"))?
    };
    Ok((scheme, SocketAddr::new(ip, port)))
}

/// Whether two bind addresses would collide (same port, same or wildcard IP). Port 0 never collides.
pub fn addrs_collide(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = parse_endpoint("mqtts://iot.example.com").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (e.scheme, e.host.as_str(), e.port),
            (Scheme::Tls, "iot.example.com", 8883)
        );
        let e = parse_endpoint("mqtt://[::1]:1884/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((e.host.as_str(), e.port), ("::1", 1884));
        assert!(
            parse_endpoint("ws://x:80")
                .unwrap_err()
                .contains("not supported yet")
        );
        assert!(
            parse_endpoint("mqtt://u:p@x")
                .unwrap_err()
                .contains("credentials")
        );
        assert!(
            parse_endpoint("mqtt://x:99999")
                .unwrap_err()
                .contains("invalid port")
        );
        assert!(
            parse_endpoint("mqtt://::1:1883")
                .unwrap_err()
                .contains("brackets")
        );
        assert!(parse_endpoint("x:1883").unwrap_err().contains("not a URL"));
        assert!(
            parse_endpoint("mqtt://:1883")
                .unwrap_err()
                .contains("missing host")
        );
    }

    #[test]
    fn listen_urls() {
        let (s, a) = parse_listen_url("tcp://localhost:0").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s, a.to_string().as_str()), (Scheme::Tcp, "127.0.0.1:0"));
        assert!(
            parse_listen_url("tcp://example.com:1883")
                .unwrap_err()
                .contains("not an IP")
        );
        assert!(
            parse_listen_url("tcp://127.0.0.1")
                .unwrap_err()
                .contains("missing port")
        );
        let a = |s: &str| s.parse::<SocketAddr>().unwrap_or_else(|e| panic!("{e}"));
        assert!(addrs_collide(&a("0.0.0.0:1883"), &a("127.0.0.1:1883")));
        assert!(!addrs_collide(&a("127.0.0.1:0"), &a("127.0.0.1:0")));
        assert!(!addrs_collide(&a("127.0.0.1:1883"), &a("127.0.0.2:1883")));
    }
}
