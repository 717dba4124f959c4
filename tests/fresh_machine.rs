//! The two commands on a fresh machine: `scripts/test` says exactly what to
//! install when something is missing (or installs it), and the tests find the
//! broker binary on `PATH`, in `/usr/sbin`, or where `MQBRIDGE_TEST_MOSQUITTO`
//! says.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::mosquitto::{Mosquitto, mosquitto_bin, resolve_mosquitto};

/// Where Debian puts the broker.
const USR_SBIN: &[&str] = &["/usr/sbin"];
use common::prometheus::repo;

/// Writes an executable shell script `name` into `dir`.
fn script(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Links the real `bin` (found on the normal PATH) into `dir`.
fn link(dir: &Path, bin: &str) {
    let real = which(bin);
    std::os::unix::fs::symlink(real, dir.join(bin)).expect("symlink");
}

fn which(bin: &str) -> std::path::PathBuf {
    common::mosquitto::find_bin(bin, std::env::var_os("PATH").as_deref())
        .unwrap_or_else(|| panic!("`{bin}` not found"))
}

#[test]
fn script_as_non_root_stops_with_the_exact_install_command() {
    // A PATH with bash and the few tools the script uses, but no mosquitto
    // clients, no prometheus and no chromium; `id -u` says we are not root.
    let bin = tempfile::tempdir().expect("tempdir");
    for b in ["bash", "dirname", "awk", "cat"] {
        link(bin.path(), b);
    }
    script(bin.path(), "id", "echo 1000");
    // A cargo that would fail the test if the script went on to run the suite.
    script(bin.path(), "cargo", "echo cargo must not run >&2; exit 99");
    let out = Command::new(repo().join("scripts/test"))
        .env("PATH", bin.path())
        .output()
        .expect("run scripts/test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    // The script adds /usr/sbin to PATH itself, so only what lives elsewhere is missing.
    let mut want = Vec::new();
    if !Path::new("/usr/sbin/mosquitto").exists() {
        want.push("mosquitto");
    }
    want.extend(["mosquitto-clients", "prometheus", "chromium"]);
    let cmd = format!("apt-get update && apt-get install -y {}", want.join(" "));
    assert!(
        stderr.contains(&format!("run:  sudo sh -c '{cmd}'")),
        "no exact install command in:\n{stderr}"
    );
    assert!(!stderr.contains("cargo must not run"), "{stderr}");
}

#[test]
fn script_runs_nextest_with_the_given_arguments_when_all_is_installed() {
    // Everything present (as symlinks to the real tools); `cargo` records its
    // arguments instead of running the suite.
    let bin = tempfile::tempdir().expect("tempdir");
    for b in [
        "bash",
        "dirname",
        "awk",
        "cat",
        "mosquitto_pub",
        "prometheus",
        "promtool",
        "chromium",
    ] {
        link(bin.path(), b);
    }
    script(bin.path(), "id", "echo 1000");
    let args = bin.path().join("args");
    script(
        bin.path(),
        "cargo",
        &format!("echo \"$@\" >> {}", args.display()),
    );
    let out = Command::new(repo().join("scripts/test"))
        .args(["--test", "reload"])
        .env("PATH", bin.path())
        .output()
        .expect("run scripts/test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = std::fs::read_to_string(&args).expect("cargo was called");
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        [
            "nextest --version",
            "nextest run --locked --no-fail-fast --test reload"
        ]
    );
}

#[test]
fn ci_and_readme_use_the_script() {
    let ci = std::fs::read_to_string(repo().join(".ci/run")).expect(".ci/run");
    assert!(ci.contains("cargo fmt --check"), "{ci}");
    assert!(ci.contains("cargo clippy --all-targets"), "{ci}");
    assert!(ci.contains("exec scripts/test"), "{ci}");
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    let quick = readme
        .split("## Quick start")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Quick start section");
    let commands: Vec<&str> = quick
        .lines()
        .filter(|l| l.starts_with("cargo ") || l.starts_with("scripts/"))
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .collect();
    assert_eq!(commands, ["cargo run --release -- run", "scripts/test"]);
}

#[test]
fn broker_binary_comes_from_the_env_var_then_path_then_usr_sbin() {
    let dir = tempfile::tempdir().expect("tempdir");
    script(dir.path(), "mosquitto", "exit 0");
    let fake = dir.path().join("mosquitto");

    // The variable wins over PATH.
    assert_eq!(
        resolve_mosquitto(
            Some(fake.clone().into()),
            Some("/usr/sbin".as_ref()),
            USR_SBIN
        ),
        Ok(fake.clone())
    );
    // A variable naming nothing runnable is an error that names it.
    let err = resolve_mosquitto(Some("/nonexistent/mosquitto".into()), None, USR_SBIN).unwrap_err();
    assert!(
        err.contains("MQBRIDGE_TEST_MOSQUITTO=/nonexistent/mosquitto"),
        "{err}"
    );
    // PATH, in order, before /usr/sbin.
    let path = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).expect("PATH");
    assert_eq!(resolve_mosquitto(None, Some(&path), USR_SBIN), Ok(fake));
    // A PATH without it falls back to /usr/sbin, where Debian puts it.
    if Path::new("/usr/sbin/mosquitto").exists() {
        assert_eq!(
            resolve_mosquitto(None, Some("/nonexistent".as_ref()), USR_SBIN),
            Ok("/usr/sbin/mosquitto".into())
        );
    }
}

#[test]
fn missing_broker_fails_with_the_install_command() {
    let empty = tempfile::tempdir().expect("tempdir");
    let err = resolve_mosquitto(None, Some(empty.path().as_os_str()), &[]).unwrap_err();
    assert!(
        err.contains("apt-get install mosquitto mosquitto-clients"),
        "{err}"
    );
    assert!(err.contains("MQBRIDGE_TEST_MOSQUITTO"), "{err}");
    // A file that is not executable does not count.
    std::fs::write(empty.path().join("mosquitto"), "not executable").expect("write");
    assert!(resolve_mosquitto(None, Some(empty.path().as_os_str()), &[]).is_err());
    let err =
        resolve_mosquitto(Some(empty.path().join("mosquitto").into()), None, &[]).unwrap_err();
    assert!(err.contains("is not an executable file"), "{err}");
}

#[test]
fn the_resolved_broker_runs() {
    let m = Mosquitto::start();
    std::net::TcpStream::connect(m.addr()).expect("broker accepts TCP");
    assert!(mosquitto_bin().is_absolute());
}
