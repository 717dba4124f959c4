//! Headless Chromium for browser tests: one-shot `--dump-dom` and
//! `--screenshot` runs, and a page session driven over the DevTools protocol
//! (evaluate an expression, awaiting its promise). Each run gets a fresh
//! profile directory; the browser is killed on drop.
//!
//! A missing `chromium` fails the test with the command that installs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

/// How long one browser step (start, load, evaluate) may take.
pub const BROWSER_WAIT: Duration = Duration::from_secs(30);

/// Flags for a quiet, self-contained headless browser (no network of its own).
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// The browser binary: `chromium` on PATH (Debian's package).
fn binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("chromium"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "chromium not found on PATH: install it (apt-get install -y chromium); \
             the browser tests need a real browser"
        )
    })
}

fn command(profile: &Path) -> Command {
    let mut c = Command::new(binary());
    c.args(FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdin(Stdio::null());
    c
}

/// Runs chromium to completion with `args` and the page `url`; returns stdout.
async fn run_once(args: &[String], url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut c = command(profile.path());
    c.args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut c = tokio::process::Command::from(c);
    c.kill_on_drop(true);
    let out = timeout(BROWSER_WAIT, c.output())
        .await
        .expect("chromium timed out")
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM after load (`--dump-dom`). (With scripts disabled Chromium dumps
/// nothing; use [`Page::open_without_javascript`] for that.)
pub async fn dump_dom(url: &str) -> String {
    run_once(&["--dump-dom".to_string()], url).await
}

/// Renders `url` into the PNG `path` (`--screenshot`).
pub async fn screenshot(url: &str, path: &Path) {
    let args = vec![
        format!("--screenshot={}", path.display()),
        "--window-size=1024,768".into(),
        "--hide-scrollbars".into(),
    ];
    run_once(&args, url).await;
}

/// A browser showing one page, driven over the DevTools protocol.
pub struct Page {
    child: Child,
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    next_id: u64,
    /// The flat-mode DevTools session of the page, once attached.
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Page {
    /// Starts the browser on a blank page, attaches to it, navigates to `url`
    /// and waits for its load event.
    pub async fn open(url: &str) -> Page {
        Self::open_with(url, true).await
    }

    /// [`Page::open`] with the page's scripts disabled.
    pub async fn open_without_javascript(url: &str) -> Page {
        Self::open_with(url, false).await
    }

    async fn open_with(url: &str, javascript: bool) -> Page {
        let profile = tempfile::tempdir().expect("profile dir");
        let child = command(profile.path())
            .arg("--remote-debugging-port=0")
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let port_file = profile.path().join("DevToolsActivePort");
        let (port, path) = timeout(BROWSER_WAIT, async {
            loop {
                if let Ok(text) = std::fs::read_to_string(&port_file) {
                    let mut lines = text.lines();
                    if let (Some(Ok(port)), Some(path)) =
                        (lines.next().map(str::parse::<u16>), lines.next())
                    {
                        return (port, path.to_string());
                    }
                }
                // The browser writes the file once it listens; nothing to await on.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("chromium opens its DevTools port");
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to DevTools");
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}{path}"), tcp)
            .await
            .expect("attach to the browser");
        let mut page = Page {
            child,
            ws,
            next_id: 0,
            session: None,
            _profile: profile,
        };
        let target = timeout(BROWSER_WAIT, async {
            loop {
                let targets = page.call("Target.getTargets", json!({})).await;
                let found = targets["targetInfos"].as_array().and_then(|l| {
                    l.iter()
                        .find(|t| t["type"] == "page" && t["url"] == "about:blank")
                });
                if let Some(id) = found.and_then(|t| t["targetId"].as_str()) {
                    return id.to_string();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the page target appears");
        let attached = page
            .call(
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await;
        page.session = attached["sessionId"].as_str().map(str::to_string);
        assert!(page.session.is_some(), "attached: {attached}");
        page.call("Page.enable", json!({})).await;
        if !javascript {
            page.call(
                "Emulation.setScriptExecutionDisabled",
                json!({"value": true}),
            )
            .await;
        }
        page.call("Page.navigate", json!({"url": url})).await;
        page.event("Page.loadEventFired").await;
        page
    }

    /// The page's current DOM as HTML (through the DOM domain, so it works
    /// with scripts disabled too).
    pub async fn outer_html(&mut self) -> String {
        let doc = self.call("DOM.getDocument", json!({})).await;
        let node = doc["root"]["nodeId"].clone();
        let html = self.call("DOM.getOuterHTML", json!({"nodeId": node})).await;
        html["outerHTML"].as_str().unwrap_or_default().to_string()
    }

    /// Waits for the next event `method` of the page.
    async fn event(&mut self, method: &str) -> Value {
        timeout(BROWSER_WAIT, async {
            while let Some(msg) = self.ws.next().await {
                let Ok(Message::Text(text)) = msg else {
                    continue;
                };
                let v: Value = serde_json::from_str(&text).expect("DevTools JSON");
                if v["method"] == method {
                    return v["params"].clone();
                }
            }
            panic!("DevTools connection closed");
        })
        .await
        .unwrap_or_else(|_| panic!("no {method} in time"))
    }

    /// Sends one DevTools command (to the page once attached) and returns its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut call = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            call["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(call.to_string()))
            .await
            .expect("send to DevTools");
        let reply = timeout(BROWSER_WAIT, async {
            while let Some(msg) = self.ws.next().await {
                let Ok(Message::Text(text)) = msg else {
                    continue;
                };
                let v: Value = serde_json::from_str(&text).expect("DevTools JSON");
                if v["id"] == id {
                    return v;
                }
            }
            panic!("DevTools connection closed");
        })
        .await
        .unwrap_or_else(|_| panic!("no DevTools answer to {method} in time"));
        if let Some(e) = reply.get("error") {
            panic!("DevTools {method} failed: {e}");
        }
        reply["result"].clone()
    }

    /// Evaluates `expression` in the page, awaiting it if it is a promise;
    /// returns its value (JSON).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let params = json!({"expression": expression, "awaitPromise": true, "returnByValue": true});
        let result = self.call("Runtime.evaluate", params).await;
        if let Some(e) = result.get("exceptionDetails") {
            panic!("`{expression}` threw: {e}");
        }
        result["result"]["value"].clone()
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
