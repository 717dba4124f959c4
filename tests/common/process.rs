//! The `mqbridge` binary as a child process: a plain command, a bridge
//! running a config file (SIGKILLed on drop), one with its JSON log lines
//! streamed to the test, and sending signals.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long to wait for one log line.
pub const LOG_WAIT: Duration = Duration::from_secs(20);

/// A command for the `mqbridge` binary built for these tests, with its own
/// data directory (`MQBRIDGE_DATA_DIR`; override it to share one across
/// restarts).
pub fn mqbridge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mqbridge"));
    cmd.env("MQBRIDGE_DATA_DIR", super::data_dir());
    cmd
}

/// Sends `sig` (e.g. `-TERM`, `-HUP`) to `pid` with `kill`; asserts it was sent.
pub fn signal(pid: u32, sig: &str) {
    let sent = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(sent.success(), "kill {sig} {pid} failed");
}

/// `mqbridge run --log-level warn --config <config>`; SIGKILLed on drop.
pub struct BridgeProcess(pub Child);

impl BridgeProcess {
    /// Starts the bridge on `config` (stdout discarded, stderr inherited).
    pub fn spawn(config: &Path) -> BridgeProcess {
        let child = mqbridge()
            .args(["run", "--log-level", "warn", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mqbridge");
        BridgeProcess(child)
    }

    /// SIGKILL (no graceful shutdown) and reap.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Sends `sig` (e.g. `-TERM`).
    pub fn signal(&self, sig: &str) {
        signal(self.0.id(), sig);
    }

    /// Waits (polling, without blocking the runtime) up to `limit` for the exit.
    pub async fn exited_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mqbridge did not exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `mqbridge --log-format json run <args> --config <config>` with its stderr
/// lines streamed over a channel; SIGKILLed on drop.
pub struct JsonLogRun {
    /// The process.
    pub child: Child,
    /// Its stderr, one line per message; closed at EOF.
    pub lines: mpsc::Receiver<String>,
}

impl JsonLogRun {
    /// Starts `run` with `run_args` before `--config` (`RUST_LOG` removed).
    pub fn spawn(run_args: &[&str], config: &Path) -> JsonLogRun {
        let mut child = mqbridge()
            .args(["--log-format", "json", "run"])
            .args(run_args)
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mqbridge");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        JsonLogRun { child, lines }
    }

    /// Waits for a JSON log line whose `message` is `msg`; returns it.
    pub fn wait_message(&self, msg: &str) -> serde_json::Value {
        let mut seen = Vec::new();
        loop {
            let Ok(line) = self.lines.recv_timeout(LOG_WAIT) else {
                panic!("no log line {msg:?}; got:\n{}", seen.join("\n"));
            };
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if v.get("message").and_then(|m| m.as_str()) == Some(msg) {
                return v;
            }
            seen.push(line);
        }
    }

    /// Sends `sig` (e.g. `-TERM`, `-HUP`).
    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }
}

impl Drop for JsonLogRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary `.yaml` file holding `yaml` (removed on drop).
pub fn config_file(yaml: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut f = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    f.write_all(yaml.as_bytes()).expect("write config");
    f
}
