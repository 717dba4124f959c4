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
