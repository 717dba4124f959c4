//! Scraping the observability endpoint over TCP: a minimal HTTP/1.1 GET, the
//! value of one Prometheus sample line, and condition waits on `/metrics` and
//! `/readyz`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::wait::WAIT;

/// Pause between two scrapes of a condition wait.
const POLL: Duration = Duration::from_millis(25);

/// Minimal HTTP/1.1 GET: returns (status code, body).
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("read timed out")
        .expect("read");
    let text = String::from_utf8(buf).expect("utf8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_owned())
}

/// The value of the sample line starting with `series ` (exact series text).
pub fn value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The value of a counter in `body`; a series not yet recorded reads as 0.
pub fn counter(body: &str, series: &str) -> f64 {
    value(body, series).unwrap_or(0.0)
}

/// One scrape of `/metrics` (the body).
pub async fn scrape(addr: SocketAddr) -> String {
    get(addr, "/metrics").await.1
}

/// Scrapes `/metrics` until `series` has `want`; returns that scrape.
pub async fn metric_becomes(addr: SocketAddr, series: &str, want: f64) -> String {
    let mut last = String::new();
    let ok = timeout(WAIT, async {
        loop {
            let (_, body) = get(addr, "/metrics").await;
            if value(&body, series) == Some(want) {
                return body;
            }
            last = body;
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    ok.unwrap_or_else(|_| panic!("{series} never became {want}; last scrape:\n{last}"))
}

/// Polls `/readyz` until it answers `code` (bounded by [`WAIT`]); returns the body.
pub async fn readyz_becomes(addr: SocketAddr, code: u16) -> String {
    readyz_becomes_within(addr, code, WAIT).await
}

/// Polls `/readyz` until it answers `code` (bounded by `limit`); returns the body.
pub async fn readyz_becomes_within(addr: SocketAddr, code: u16, limit: Duration) -> String {
    timeout(limit, async {
        loop {
            let (c, body) = get(addr, "/readyz").await;
            if c == code {
                return body;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("/readyz never answered {code}"))
}
