//! Shared integration-test helpers. Each test crate uses only part of them,
//! hence the one `dead_code` allowance here rather than in every file.
#![allow(dead_code)]

pub mod bridge;
pub mod broker;
pub mod certs;
pub mod chromium;
pub mod client;
pub mod docs;
pub mod fake_broker;
pub mod http;
pub mod mosquitto;
pub mod process;
pub mod prometheus;
pub mod sockets;
pub mod wait;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh data directory (`storage.dir`) for one bridge run, under cargo's
/// per-target temporary directory (removed by `cargo clean`); tests run in
/// parallel and each store is locked by the process that opened it.
pub fn data_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("data")
        .join(format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
