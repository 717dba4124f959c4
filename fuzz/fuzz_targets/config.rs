//! Fuzzes the config compiler with arbitrary text (seed it with the shipped
//! configs): it must return a plan or errors, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqbridge::config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = config::load_str(text, "fuzz.yaml");
    }
});
