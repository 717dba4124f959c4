//! Fuzzes the decoders of what mqbridge keeps on disk (spool records and
//! blocks, the built-in broker's stored messages, sessions and flows, the
//! client's stored QoS 2 flows) with CRC-valid records of arbitrary content:
//! see `mqbridge::fuzzing::records`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mqbridge::fuzzing::records(data));
