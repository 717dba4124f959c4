//! Debian's real `prometheus` and `promtool` for the deployment tests: a
//! Prometheus server on a free port with a generated config, killed on drop,
//! and queries of its HTTP API.
//!
//! A missing binary fails the test with the install command; it never skips.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mqbridge::metrics::inspect::fetch;

use super::mosquitto::{find_bin, free_port};

/// How long Prometheus may take to start, scrape, and evaluate its rules.
pub const PROMETHEUS_WAIT: Duration = Duration::from_secs(30);
/// Pause between two polls of Prometheus' API.
const POLL: Duration = Duration::from_millis(200);

/// The path of `prometheus` or `promtool`; panics with the install command.
pub fn require(name: &str) -> PathBuf {
    find_bin(name, std::env::var_os("PATH").as_deref()).unwrap_or_else(|| {
        panic!(
            "`{name}` not found on PATH: these tests run the real Prometheus; install it with \
             `apt-get install prometheus` (Debian/Ubuntu), or run `scripts/test`"
        )
    })
}

/// The repository root (where Cargo.toml is).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `promtool <args>` in `dir`; returns (success, stdout + stderr).
pub fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(require("promtool"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A running Prometheus; killed when dropped.
pub struct Prometheus {
    /// Its HTTP API on 127.0.0.1.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Child,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second, evaluating the rule
    /// files `rules` (absolute paths) every second.
    pub fn start(target: SocketAddr, rules: &[&Path]) -> Prometheus {
        let bin = require("prometheus");
        let dir = tempfile::tempdir().expect("tempdir");
        let rule_files: String = rules
            .iter()
            .map(|r| format!("  - {}\n", r.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{rule_files}\
             scrape_configs:\n  - job_name: mqbridge\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        let conf = dir.path().join("prometheus.yml");
        std::fs::write(&conf, config).expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Prometheus {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            dir,
            child,
        }
    }

    /// Its log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` on the API as JSON, or `None` while it is not answering.
    /// (ureq, not the tests' minimal GET: Prometheus answers large bodies chunked.)
    pub async fn api(&self, path: &str) -> Option<serde_json::Value> {
        let base = format!("http://{}", self.addr);
        let path = path.to_owned();
        let got = tokio::task::spawn_blocking(move || fetch(&base, &path))
            .await
            .expect("fetch task");
        match got {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// Polls `path` until `done` accepts its JSON (within [`PROMETHEUS_WAIT`]);
    /// returns that JSON.
    pub async fn api_until(
        &self,
        path: &str,
        mut done: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = None;
        let found = tokio::time::timeout(PROMETHEUS_WAIT, async {
            loop {
                if let Some(v) = self.api(path).await {
                    if done(&v) {
                        return v;
                    }
                    last = Some(v);
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "Prometheus {path} never became as expected; last answer: {last:?}\nlog:\n{}",
                self.log()
            )
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
