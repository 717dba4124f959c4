//! Shared integration-test helpers.
#![allow(dead_code)]

pub mod bridge;
pub mod certs;
pub mod mosquitto;
