//! Fuzzes the decoder adapter: any byte stream, cut into packets at a
//! fuzzer-chosen maximum size, must decode or fail cleanly (never panic), and
//! whatever decodes must encode again.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqbridge::protocol::{MQTT_MAX_PACKET_SIZE, decode, encode};

fuzz_target!(|data: &[u8]| {
    let Some((&limit, bytes)) = data.split_first() else {
        return;
    };
    let max = 2 + usize::from(limit) * 64;
    let mut buf = BytesMut::from(bytes);
    // Every packet in the buffer, as a broker connection would read them.
    while let Ok(Some(packet)) = decode(&mut buf, max) {
        let mut out = BytesMut::new();
        let _ = encode(&packet, &mut out, MQTT_MAX_PACKET_SIZE);
    }
});
