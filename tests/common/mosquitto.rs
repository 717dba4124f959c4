//! Test harness: a real Mosquitto started on a free port with a generated
//! config, killed on drop, restartable on the same port. Also helpers for the
//! `mosquitto_pub` / `mosquitto_sub` / `mosquitto_passwd` command-line
//! clients, blocking (against a [`Mosquitto`]) and async (against any address,
//! e.g. our built-in broker).
//!
//! A missing binary fails the test with a clear message; it never skips.
//!
//! Self-contained (no sibling modules) and with its own `dead_code`
//! allowance: `benches/client.rs` includes this file alone by `#[path]`.
#![allow(dead_code)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// Environment variable naming the broker binary (overrides the search).
pub const MOSQUITTO_ENV: &str = "MQBRIDGE_TEST_MOSQUITTO";
/// Directories searched after `PATH`: Debian installs the broker in
/// `/usr/sbin`, which is not on a normal user's `PATH`.
const FALLBACK_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"];
/// How long a started broker may take to accept TCP.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one step of an async CLI client may take.
const CLI_STEP: Duration = Duration::from_secs(10);

/// Awaits `f` or fails the test after [`CLI_STEP`].
async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(CLI_STEP, f)
        .await
        .expect("timed out waiting for a mosquitto client")
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A running Mosquitto process; killed when dropped.
pub struct Mosquitto {
    /// The TCP port of its listener on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    conf: PathBuf,
    child: Option<Child>,
    kill_on_drop: bool,
}

impl Mosquitto {
    /// Starts a broker with anonymous access and no persistence.
    pub fn start() -> Mosquitto {
        Self::start_with("")
    }

    /// Starts a broker with persistence on (in its temp dir).
    pub fn start_persistent() -> Mosquitto {
        Self::start_with("persistence true\npersistence_location {dir}/\nautosave_interval 1\n")
    }

    /// Starts a broker; `extra_conf` is appended after the listener line (so
    /// listener options like `certfile` apply to it). `{dir}` in it is replaced
    /// by the broker's temp dir.
    pub fn start_with(extra_conf: &str) -> Mosquitto {
        Self::start_on(free_port(), extra_conf)
    }

    /// Starts a broker on a given port (e.g. to take over a port another test
    /// piece expects).
    pub fn start_on(port: u16, extra_conf: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        // Started as root, mosquitto drops to the `mosquitto` user: it must
        // still be able to write its persistence file here.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod tempdir");
        let conf = dir.path().join("mosquitto.conf");
        let extra = extra_conf.replace("{dir}", &dir.path().display().to_string());
        let text = format!(
            "per_listener_settings false\nallow_anonymous true\nlog_dest stderr\nlog_type error\n\
             log_type warning\nlistener {port} 127.0.0.1\n{extra}\n"
        );
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let mut m = Mosquitto {
            port,
            dir,
            conf,
            child: None,
            kill_on_drop: true,
        };
        m.spawn();
        m
    }

    /// The broker's temp dir (config, persistence, certificates).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's log file (stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Whether the broker should be killed on drop (default true).
    pub fn kill_on_drop(&mut self, yes: bool) {
        self.kill_on_drop = yes;
    }

    fn spawn(&mut self) {
        // Logs go to a file: a pipe nobody reads would fill up and block the
        // broker once it logs enough (e.g. "outgoing messages are being dropped").
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open mosquitto log");
        let bin = mosquitto_bin();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls TCP connect until the listener accepts (no sleep-guessing).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let err = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                panic!(
                    "mosquitto exited at start ({status}) on port {}: {err}",
                    self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not accept TCP on port {} within {READY_TIMEOUT:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the broker (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker gracefully (SIGTERM, so persistence is saved) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let sent = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                sent,
                "cannot send SIGTERM to mosquitto: is `kill` (procps) installed?"
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port with the same config.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts the broker again after [`Mosquitto::kill`]/[`Mosquitto::stop`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "broker still running");
        self.spawn();
    }

    /// The protocol of each connection of `client_id` in the log, in order
    /// (`p2` 3.1.1, `p5` MQTT 5; needs `log_type notice`).
    pub fn logged_protocols(&self, client_id: &str) -> Vec<String> {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let marker = format!(" as {client_id} (");
        log.lines()
            .filter_map(|l| {
                let rest = &l[l.find(&marker)? + marker.len()..];
                Some(rest.split(',').next()?.to_owned())
            })
            .collect()
    }

    /// Waits (at most 10 s, polling the log) until it shows `n`
    /// connections of `client_id`; returns their protocols.
    pub async fn protocols_after(&self, client_id: &str, n: usize) -> Vec<String> {
        let logged = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let protocols = self.logged_protocols(client_id);
                if protocols.len() >= n {
                    return protocols;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        logged.await.unwrap_or_else(|_| {
            panic!(
                "{client_id}: {n} connections not logged within 10 s: {:?}",
                self.logged_protocols(client_id)
            )
        })
    }

    /// Runs `mosquitto_pub` against this broker with extra args; panics on failure.
    pub fn publish(&self, topic: &str, payload: &str, qos: u8, extra: &[&str]) {
        let out = client_cmd("mosquitto_pub", self.port)
            .args(["-t", topic, "-m", payload, "-q", &qos.to_string()])
            .args(extra)
            .output()
            .unwrap_or_else(|e| missing("mosquitto_pub", &e));
        assert!(
            out.status.success(),
            "mosquitto_pub failed: {}",
            stderr(&out)
        );
    }

    /// Creates a persistent session for `client_id` subscribed to `filter`
    /// (`mosquitto_sub -c -E`), so later messages are queued for it.
    pub fn prepare_subscriber(&self, client_id: &str, filter: &str, qos: u8) {
        let out = client_cmd("mosquitto_sub", self.port)
            .args([
                "-c",
                "-i",
                client_id,
                "-t",
                filter,
                "-q",
                &qos.to_string(),
                "-E",
            ])
            .output()
            .unwrap_or_else(|e| missing("mosquitto_sub", &e));
        assert!(
            out.status.success(),
            "mosquitto_sub -E failed: {}",
            stderr(&out)
        );
    }

    /// Collects `count` messages for the persistent session `client_id`
    /// (`mosquitto_sub -c -C count -W secs -v`); returns "topic payload" lines.
    pub fn collect(
        &self,
        client_id: &str,
        filter: &str,
        qos: u8,
        count: usize,
        secs: u32,
    ) -> Vec<String> {
        let out = client_cmd("mosquitto_sub", self.port)
            .args([
                "-c",
                "-i",
                client_id,
                "-t",
                filter,
                "-q",
                &qos.to_string(),
                "-v",
            ])
            .args(["-C", &count.to_string(), "-W", &secs.to_string()])
            .output()
            .unwrap_or_else(|e| missing("mosquitto_sub", &e));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if self.kill_on_drop {
            self.kill();
        }
    }
}

fn client_cmd(bin: &str, port: u16) -> Command {
    let mut c = Command::new(require_bin(bin));
    c.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null());
    c
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn missing(bin: &str, e: &std::io::Error) -> Output {
    panic!(
        "cannot run {bin}: {e}; install the `mosquitto` and `mosquitto-clients` packages (these tests need them)"
    )
}

/// Writes a Mosquitto password file `passwd` into `dir` with `users` (by
/// `mosquitto_passwd -b`), readable by a broker that dropped to its own user.
pub fn password_file(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("passwd");
    for (i, (user, pass)) in users.iter().enumerate() {
        let mut cmd = Command::new(require_bin("mosquitto_passwd"));
        if i == 0 {
            cmd.arg("-c");
        }
        let out = cmd
            .arg("-b")
            .arg(&path)
            .args([user, pass])
            .output()
            .unwrap_or_else(|e| missing("mosquitto_passwd", &e));
        assert!(
            out.status.success(),
            "mosquitto_passwd failed: {}",
            stderr(&out)
        );
    }
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod passwd");
    path
}

/// The broker binary: `$MQBRIDGE_TEST_MOSQUITTO` if set, else `mosquitto`
/// on `PATH`, else in `/usr/sbin` (and the other usual directories). Panics
/// with the install command when there is none: these tests need a real broker.
pub fn mosquitto_bin() -> PathBuf {
    resolve_mosquitto(
        std::env::var_os(MOSQUITTO_ENV),
        std::env::var_os("PATH").as_deref(),
        &FALLBACK_DIRS,
    )
    .unwrap_or_else(|msg| panic!("{msg}"))
}

/// [`mosquitto_bin`] with the environment passed in: `override_` is the value
/// of `$MQBRIDGE_TEST_MOSQUITTO`, `path` the value of `$PATH`, `fallback` the
/// directories searched after it.
pub fn resolve_mosquitto(
    override_: Option<std::ffi::OsString>,
    path: Option<&std::ffi::OsStr>,
    fallback: &[&str],
) -> Result<PathBuf, String> {
    if let Some(p) = override_.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(format!(
                "{MOSQUITTO_ENV}={} is not an executable file",
                p.display()
            ))
        };
    }
    find_bin_in("mosquitto", path, fallback).ok_or_else(|| {
        format!(
            "`mosquitto` not found on PATH nor in {fallback:?} (or set {MOSQUITTO_ENV}): \
             these tests need a real broker; install it with \
             `apt-get install mosquitto mosquitto-clients`, or run `scripts/test`"
        )
    })
}

/// `name` in the directories of `path` (a `PATH` value), then in [`FALLBACK_DIRS`].
pub fn find_bin(name: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    find_bin_in(name, path, &FALLBACK_DIRS)
}

/// `name` in the directories of `path`, then in `fallback`.
fn find_bin_in(name: &str, path: Option<&std::ffi::OsStr>, fallback: &[&str]) -> Option<PathBuf> {
    let on_path = path.into_iter().flat_map(std::env::split_paths);
    on_path
        .chain(fallback.iter().map(PathBuf::from))
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Full path of a required client binary (`mosquitto_pub`, …) on `PATH` or in
/// the usual directories; panics with the install command if missing.
pub fn require_bin(name: &str) -> String {
    match find_bin(name, std::env::var_os("PATH").as_deref()) {
        Some(p) => p.display().to_string(),
        None => panic!(
            "`{name}` not found on PATH nor in {FALLBACK_DIRS:?}: install it with \
             `apt-get install mosquitto mosquitto-clients`, or run `scripts/test`"
        ),
    }
}

fn host_port(addr: SocketAddr) -> Vec<String> {
    vec![
        "-h".into(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
    ]
}

/// Runs `mosquitto_pub` to completion and asserts it succeeded.
pub async fn mosquitto_pub(addr: SocketAddr, args: &[&str]) {
    let out = mosquitto_pub_output(addr, args).await;
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `mosquitto_pub` and returns its output (for expected failures).
pub async fn mosquitto_pub_output(addr: SocketAddr, args: &[&str]) -> std::process::Output {
    within(
        tokio::process::Command::new(require_bin("mosquitto_pub"))
            .args(host_port(addr))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("mosquitto_pub runs")
}

/// A running `mosquitto_sub` that exits after `count` messages (`-C`).
pub struct MosqSub {
    child: tokio::process::Child,
}

impl MosqSub {
    pub fn spawn(addr: SocketAddr, args: &[&str], count: usize) -> MosqSub {
        Self::spawn_raw(host_port(addr), args, count)
    }

    pub fn spawn_raw(conn_args: Vec<String>, args: &[&str], count: usize) -> MosqSub {
        let child = tokio::process::Command::new(require_bin("mosquitto_sub"))
            .args(conn_args)
            .args(args)
            .args(["-C", &count.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mosquitto_sub");
        MosqSub { child }
    }

    /// Collects stdout lines until the process exits; asserts success.
    pub async fn lines(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let stdout = self.child.stdout.take().expect("stdout piped");
        let mut reader = BufReader::new(stdout).lines();
        while let Some(line) = within(reader.next_line()).await.expect("read stdout") {
            out.push(line);
        }
        let status = within(self.child.wait()).await.expect("wait");
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut err).await;
            }
            panic!("mosquitto_sub failed ({status}): {err}");
        }
        out
    }

    /// Kills the process (SIGKILL: no DISCONNECT is sent).
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill mosquitto_sub");
    }

    /// Waits for exit and returns (success, stderr).
    pub async fn status(&mut self) -> (bool, String) {
        let status = within(self.child.wait()).await.expect("wait");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err).await;
        }
        (status.success(), err)
    }
}
