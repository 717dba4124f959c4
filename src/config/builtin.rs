//! Compiling a `type: builtin` broker and its listeners.

use std::time::Duration;

use super::broker_fields::{packet_size, positive_duration, reject_fields};
use super::certs::CertUse;
use super::ctx::Ctx;
use super::error::Scope;
use super::plan::{BuiltInPlan, LimitsPlan, ListenerPlan, ListenerTlsPlan, Scheme};
use super::raw::{OrMap, RawBroker, RawLimits, RawListener, Text, defaults};
use super::units::parse_duration;
use super::urls::parse_listen_url;

/// Shortest `sys_interval`.
const MIN_SYS_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) fn compile_builtin(
    ctx: &mut Ctx,
    key: &Text,
    scope: &Scope,
    raw: &RawBroker,
) -> BuiltInPlan {
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
        ("ws_headers", raw.ws_headers.as_ref().map(|s| s.referenced)),
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
    let cert_login = listeners
        .iter()
        .any(|l| l.tls.as_ref().is_some_and(|t| t.cert_cn_as_username));
    if !allow_anonymous
        && raw.password_file.is_none()
        && !cert_login
        && let Some(t) = &raw.allow_anonymous
    {
        ctx.warn(
            &t.referenced,
            scope,
            "allow_anonymous: false with no `password_file` and no `cert_cn_as_username` listener: only mqbridge's own pipes can use this broker",
        );
    }

    let l = raw.limits.as_ref().map(|s| &s.value);
    // `limits.<name>`: an integer from 1 to `max`, `default` when unset.
    let limit = |ctx: &mut Ctx, t: Option<&Text>, name: &str, default: u64, max: u64| {
        ctx.int(
            &t.cloned(),
            scope,
            &format!("limits.{name}"),
            default,
            1,
            max,
        )
    };
    let limits = LimitsPlan {
        max_connections: limit(
            ctx,
            l.and_then(|l| l.max_connections.as_ref()),
            "max_connections",
            defaults::max_connections() as u64,
            10_000_000,
        ) as usize,
        max_packet_size: packet_size(
            ctx,
            &l.and_then(|l| l.max_packet_size.clone()),
            scope,
            "limits.max_packet_size",
            defaults::builtin_max_packet_size(),
        ),
        max_queued_messages: limit(
            ctx,
            l.and_then(|l| l.max_queued_messages.as_ref()),
            "max_queued_messages",
            defaults::max_queued_messages() as u64,
            100_000_000,
        ) as usize,
        max_inflight: limit(
            ctx,
            l.and_then(|l| l.max_inflight.as_ref()),
            "max_inflight",
            defaults::max_inflight().into(),
            u16::MAX.into(),
        ) as u16,
        handshake_timeout: handshake_timeout(ctx, scope, l),
        max_pending_handshakes: limit(
            ctx,
            l.and_then(|l| l.max_pending_handshakes.as_ref()),
            "max_pending_handshakes",
            defaults::max_pending_handshakes() as u64,
            10_000_000,
        ) as usize,
        max_pending_per_ip: limit(
            ctx,
            l.and_then(|l| l.max_pending_per_ip.as_ref()),
            "max_pending_per_ip",
            defaults::max_pending_per_ip() as u64,
            10_000_000,
        ) as usize,
        max_topic_levels: limit(
            ctx,
            l.and_then(|l| l.max_topic_levels.as_ref()),
            "max_topic_levels",
            defaults::max_topic_levels() as u64,
            32_768,
        ) as usize,
        max_filters_per_subscribe: limit(
            ctx,
            l.and_then(|l| l.max_filters_per_subscribe.as_ref()),
            "max_filters_per_subscribe",
            defaults::max_filters_per_subscribe() as u64,
            65_535,
        ) as usize,
        max_subscriptions_per_client: limit(
            ctx,
            l.and_then(|l| l.max_subscriptions_per_client.as_ref()),
            "max_subscriptions_per_client",
            defaults::max_subscriptions_per_client() as u64,
            10_000_000,
        ) as usize,
        max_trie_nodes: limit(
            ctx,
            l.and_then(|l| l.max_trie_nodes.as_ref()),
            "max_trie_nodes",
            defaults::max_trie_nodes() as u64,
            1_000_000_000,
        ) as usize,
        // 0 is allowed here: no topic aliases at all.
        topic_alias_maximum: ctx.int(
            &l.and_then(|l| l.topic_alias_maximum.clone()),
            scope,
            "limits.topic_alias_maximum",
            defaults::topic_alias_maximum().into(),
            0,
            u16::MAX.into(),
        ) as u16,
    };

    let sys_interval = sys_interval(ctx, scope, &raw.sys_interval);
    let session_expiry = session_expiry(ctx, scope, &raw.session_expiry);
    if raw.session_expiry.is_none()
        && let Some(l) = listeners.iter().find(|l| !l.addr.ip().is_loopback())
    {
        ctx.warn(
            &key.referenced,
            scope,
            format!(
                "session_expiry is not set and {} listens on the network: persistent sessions of clients that never come back are kept (with their queued messages) forever; set e.g. `session_expiry: 168h`, or `never` to keep them on purpose",
                l.addr
            ),
        );
    }

    BuiltInPlan {
        listeners,
        allow_anonymous,
        password_file,
        acl_file,
        limits,
        sys_interval,
        session_expiry,
    }
}

/// `session_expiry`: a duration of at least 1 s, or `never` (the default,
/// as Mosquitto's `persistent_client_expiration`).
fn session_expiry(ctx: &mut Ctx, scope: &Scope, t: &Option<Text>) -> Option<Duration> {
    let t = t.as_ref()?;
    let s = ctx.text(t, scope, "session_expiry")?;
    if s.trim().eq_ignore_ascii_case("never") {
        return None;
    }
    match parse_duration(&s) {
        Ok(d) if d >= Duration::from_secs(1) => Some(d),
        Ok(_) => {
            ctx.err(
                &t.referenced,
                scope,
                "session_expiry: must be at least 1s (or `never`)",
            );
            None
        }
        Err(e) => {
            ctx.err(
                &t.referenced,
                scope,
                format!("session_expiry: {e} (or `never`)"),
            );
            None
        }
    }
}

/// `sys_interval`: default 10 s (as Mosquitto); `0` or `off` disables
/// `$SYS`; otherwise at least 1 s (a shorter one would flood subscribers).
fn sys_interval(ctx: &mut Ctx, scope: &Scope, t: &Option<Text>) -> Option<Duration> {
    let default = Some(defaults::sys_interval());
    let Some(t) = t else { return default };
    let s = ctx.text(t, scope, "sys_interval")?;
    if s.trim().eq_ignore_ascii_case("off") {
        return None;
    }
    match parse_duration(&s) {
        Ok(d) if d.is_zero() => None,
        Ok(d) if d < MIN_SYS_INTERVAL => {
            ctx.err(
                &t.referenced,
                scope,
                "sys_interval: must be at least 1s (or `0` / `off` to disable `$SYS`)",
            );
            default
        }
        Ok(d) => Some(d),
        Err(e) => {
            ctx.err(
                &t.referenced,
                scope,
                format!("sys_interval: {e} (or `0` / `off` to disable `$SYS`)"),
            );
            default
        }
    }
}

/// `limits.handshake_timeout`, or its old name `limits.connect_timeout`
/// (accepted with a warning; both at once is an error).
fn handshake_timeout(ctx: &mut Ctx, scope: &Scope, l: Option<&RawLimits>) -> Duration {
    let new = l.and_then(|l| l.handshake_timeout.clone());
    let old = l.and_then(|l| l.connect_timeout.clone());
    match (&new, &old) {
        (Some(_), Some(o)) => ctx.err(
            &o.referenced,
            scope,
            "limits.connect_timeout: the old name of `limits.handshake_timeout`; set only `handshake_timeout`",
        ),
        (None, Some(o)) => ctx.warn(
            &o.referenced,
            scope,
            "limits.connect_timeout is now `limits.handshake_timeout` (it covers the TLS handshake and the CONNECT); the old name still works",
        ),
        _ => {}
    }
    let (value, name) = match new {
        Some(t) => (Some(t), "limits.handshake_timeout"),
        None => (old, "limits.connect_timeout"),
    };
    positive_duration(ctx, &value, scope, name, defaults::handshake_timeout())
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
        Scheme::Tcp | Scheme::Ws => {
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
                        format!("listen.{name}: only for `tls://` and `wss://` listeners"),
                    );
                }
            }
            None
        }
        Scheme::Tls | Scheme::Wss => {
            if raw.cert_file.is_none() || raw.key_file.is_none() {
                ctx.err(
                    &item.referenced,
                    scope,
                    format!("listen: `{url}` needs `cert_file` and `key_file`"),
                );
            }
            let cert_file =
                ctx.cert_file(&raw.cert_file, scope, "listen.cert_file", CertUse::Chain);
            let key_file = ctx.file(&raw.key_file, scope, "listen.key_file");
            let client_ca_file = ctx.cert_file(
                &raw.client_ca_file,
                scope,
                "listen.client_ca_file",
                CertUse::Trust,
            );
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
    Some(ListenerPlan {
        url,
        addr,
        tls,
        websocket: scheme.is_websocket(),
    })
}
