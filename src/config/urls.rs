//! Endpoint and listener URLs: `mqtt://host:port`, `mqtts://…`, `ws://host:port/path`,
//! `wss://…`, and listeners `tcp://ip:port`, `tls://…`, `ws://…`, `wss://…`.

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

/// Splits `scheme://authority[/path]`; the path (with its leading `/`) is
/// `None` when absent or just `/`.
fn split_scheme(url: &str) -> Result<(&str, &str, Option<&str>), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("`{url}` is not a URL (expected e.g. `mqtt://host:1883`)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i..]).filter(|p| *p != "/")),
        None => (rest, None),
    };
    if authority.contains('@') {
        return Err(format!(
            "`{url}`: put credentials in `username`/`password`, not in the URL"
        ));
    }
    Ok((scheme, authority, path))
}

/// Checks a WebSocket request path: printable ASCII without spaces or a fragment.
fn check_ws_path(url: &str, path: &str) -> Result<(), String> {
    if path.contains('#') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "`{url}`: the path must be printable ASCII without spaces or `#`"
        ));
    }
    Ok(())
}

/// Parses a remote endpoint URL: `mqtt://host[:port]`, `mqtts://host[:port]`,
/// `ws://host[:port][/path]` or `wss://host[:port][/path]`.
pub fn parse_endpoint(url: &str) -> Result<EndpointPlan, String> {
    let (scheme, rest, path) = split_scheme(url)?;
    let (scheme, default_port) = match scheme {
        "mqtt" => (Scheme::Tcp, 1883),
        "mqtts" => (Scheme::Tls, 8883),
        "ws" => (Scheme::Ws, 80),
        "wss" => (Scheme::Wss, 443),
        "tcp" => return Err(format!("`{url}`: use `mqtt://` for plain TCP endpoints")),
        "tls" | "ssl" => return Err(format!("`{url}`: use `mqtts://` for TLS endpoints")),
        other => {
            return Err(format!(
                "`{url}`: unknown scheme `{other}` (use mqtt://, mqtts://, ws:// or wss://)"
            ));
        }
    };
    let path = match (scheme.is_websocket(), path) {
        (true, Some(p)) => {
            check_ws_path(url, p)?;
            Some(p.to_string())
        }
        (true, None) => Some("/".to_string()),
        (false, Some(_)) => {
            return Err(format!(
                "`{url}`: a path is only allowed for ws:// and wss:// endpoints"
            ));
        }
        (false, None) => None,
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
        path,
    })
}

/// Parses a built-in listener URL: `tcp://ip:port`, `tls://ip:port`,
/// `ws://ip:port` or `wss://ip:port` (`localhost` allowed). A WebSocket
/// listener answers on any request path, so none is written.
pub fn parse_listen_url(url: &str) -> Result<(Scheme, SocketAddr), String> {
    let (scheme, rest, path) = split_scheme(url)?;
    let scheme = match scheme {
        "tcp" => Scheme::Tcp,
        "tls" => Scheme::Tls,
        "ws" => Scheme::Ws,
        "wss" => Scheme::Wss,
        "mqtt" => return Err(format!("`{url}`: listeners use `tcp://`")),
        "mqtts" => return Err(format!("`{url}`: listeners use `tls://`")),
        other => {
            return Err(format!(
                "`{url}`: unknown scheme `{other}` (use tcp://, tls://, ws:// or wss://)"
            ));
        }
    };
    if path.is_some() {
        return Err(format!(
            "`{url}`: a path is not allowed (WebSocket listeners accept any path)"
        ));
    }
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
        let e = parse_endpoint("wss://cloud.example/mqtt").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (e.scheme, e.port, e.path.as_deref()),
            (Scheme::Wss, 443, Some("/mqtt"))
        );
        let e = parse_endpoint("ws://x").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (e.scheme, e.port, e.path.as_deref()),
            (Scheme::Ws, 80, Some("/"))
        );
        assert!(
            parse_endpoint("mqtt://x/mqtt")
                .unwrap_err()
                .contains("only allowed for ws://")
        );
        assert!(
            parse_endpoint("ws://x/a b")
                .unwrap_err()
                .contains("printable ASCII")
        );
        assert_eq!(
            parse_endpoint("mqtt://x/").map(|e| e.path),
            Ok(None),
            "a trailing slash is no path"
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
        let (s, _) = parse_listen_url("wss://0.0.0.0:443").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s, Scheme::Wss);
        assert!(
            parse_listen_url("ws://127.0.0.1:8080/mqtt")
                .unwrap_err()
                .contains("accept any path")
        );
        let a = |s: &str| s.parse::<SocketAddr>().unwrap_or_else(|e| panic!("{e}"));
        assert!(addrs_collide(&a("0.0.0.0:1883"), &a("127.0.0.1:1883")));
        assert!(!addrs_collide(&a("127.0.0.1:0"), &a("127.0.0.1:0")));
        assert!(!addrs_collide(&a("127.0.0.1:1883"), &a("127.0.0.2:1883")));
    }
}
