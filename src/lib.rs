//! mqbridge: an MQTT-to-MQTT bridge and gateway.
//!
//! Module map (see `docs/development.md`): `config` (bridges.yaml → checked plan),
//! `topic` (filters, trie, remaps; pure), `protocol` (codec adapter and sans-IO
//! session state machines), `link` (the API a pipe sees for any broker),
//! `client` (remote brokers), `broker` (built-in broker), `pipe`, `metrics`
//! (observability, a leaf), `run` (wires it all),
//! `shutdown`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Module docs point readers of the source at the crate's internal modules;
// `cargo doc --document-private-items` renders those links.
#![allow(rustdoc::private_intra_doc_links)]

pub mod broker;
pub mod client;
pub mod config;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
pub mod link;
pub mod metrics;
pub mod pipe;
pub mod protocol;
pub mod run;
pub mod shutdown;
pub mod spool;
pub mod store;
pub mod topic;

pub use run::{RunError, RunHandle, RunReport, run};
