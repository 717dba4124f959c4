//! Endpoint and listener URLs: `mqtt://host:port`, `mqtts://…`, `tcp://ip:port`, `tls://…`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::plan::{EndpointPlan, Scheme};

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
