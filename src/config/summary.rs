//! The short plan `mqbridge validate` prints.

use std::fmt::Write as _;

use super::plan::{BrokerKind, Plan, QosRule, RetainRule};
use super::units::{format_duration, format_size};

/// A few lines per broker and pipe: endpoints/listeners, filters, exclusions, remaps.
pub fn describe(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "brokers:");
    for b in plan.brokers.values() {
        match &b.kind {
            BrokerKind::Remote(r) => {
                let eps: Vec<&str> = r.endpoints.iter().map(|e| e.url.as_str()).collect();
                let _ = writeln!(out, "  {} (remote, client id {})", b.name, r.client_id);
                let _ = writeln!(out, "    endpoints: {}", eps.join(", "));
                let mut notes = vec![
                    format!("keepalive {}", format_duration(r.keepalive)),
                    format!("inflight {}", r.inflight),
                    if r.clean_session {
                        "clean session"
                    } else {
                        "persistent session"
                    }
                    .to_string(),
                ];
                if let Some(t) = &r.tls {
                    notes.push(
                        if t.cert_file.is_some() {
                            "mutual TLS"
                        } else {
                            "TLS"
                        }
                        .to_string(),
                    );
                    if t.insecure {
                        notes.push("TLS NOT VERIFIED".into());
                    }
                }
                if r.endpoints.len() > 1 {
                    notes.push(if r.failback.enabled {
                        format!("failback after {} probes", r.failback.probes_required)
                    } else {
                        "no failback".into()
                    });
                }
                let _ = writeln!(out, "    {}", notes.join(", "));
            }
            BrokerKind::BuiltIn(bi) => {
                let ls: Vec<String> = bi
                    .listeners
                    .iter()
                    .map(|l| {
                        let scheme = match (l.tls.is_some(), l.websocket) {
                            (false, false) => "tcp",
                            (true, false) => "tls",
                            (false, true) => "ws",
                            (true, true) => "wss",
                        };
                        format!("{scheme}://{}", l.addr)
                    })
                    .collect();
                let _ = writeln!(out, "  {} (built-in)", b.name);
                let _ = writeln!(out, "    listen: {}", ls.join(", "));
                let _ = writeln!(
                    out,
                    "    anonymous {}, max {} connections, max packet {}",
                    if bi.allow_anonymous {
                        "allowed"
                    } else {
                        "refused"
                    },
                    bi.limits.max_connections,
                    format_size(bi.limits.max_packet_size as u64)
                );
            }
        }
    }
    let _ = writeln!(out, "pipes:");
    if plan.pipes.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for p in plan.pipes.values() {
        let _ = writeln!(out, "  {}: {} → {}", p.name, p.from, p.to);
        let fs: Vec<String> = p
            .filters
            .iter()
            .map(|(f, q)| format!("{f} (qos {})", q.as_u8()))
            .collect();
        let _ = writeln!(out, "    topics: {}", fs.join(", "));
        if !p.exclude.is_empty() {
            let _ = writeln!(out, "    exclude: {}", p.exclude.join(", "));
        }
        for r in &p.remap.rules {
            let _ = writeln!(out, "    remap: {}", r.describe());
        }
        let mut notes = Vec::new();
        match p.qos {
            QosRule::Max(q) if q.as_u8() < 2 => notes.push(format!("qos max {}", q.as_u8())),
            QosRule::Max(_) => {}
            QosRule::Force(q) => notes.push(format!("qos forced to {}", q.as_u8())),
        }
        match p.retain {
            RetainRule::Keep => {}
            RetainRule::Clear => notes.push("retain cleared".into()),
            RetainRule::AsPublished => notes.push("retain as published".into()),
        }
        let props = &p.properties;
        if props.remap_response_topic {
            notes.push("response topic remapped".into());
        }
        if !props.remove.is_empty() || !props.add.is_empty() {
            notes.push(format!(
                "user properties -{} +{}",
                props.remove.len(),
                props.add.len()
            ));
        }
        if let Some(h) = &props.hops {
            notes.push(format!("hop limit {} ({})", h.max_hops, h.property));
        }
        if let Some(m) = p.max_payload {
            notes.push(format!("max payload {}", format_size(m as u64)));
        }
        if let Some(r) = &p.rate_limit {
            notes.push(format!("rate {}/s burst {}", r.per_second, r.burst));
        }
        if !p.loop_check {
            notes.push("static loop check off".into());
        }
        if !notes.is_empty() {
            let _ = writeln!(out, "    {}", notes.join(", "));
        }
    }
    out
}
