//! Shared integration-test helpers.
#![allow(dead_code)]

pub mod certs;
pub mod mosquitto;
