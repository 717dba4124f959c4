//! Fuzzes the MQTT 5 adapter's `decode` with arbitrary bytes, as either side
//! would receive them: it must never panic, and whatever it accepts must
//! encode back (where our encoder takes it) to bytes that decode to the same
//! packet.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqbridge::protocol::v5::{Sender, decode, encode};

fuzz_target!(|data: &[u8]| {
    // The first byte picks who sent the bytes (low bit) and the maximum
    // packet size (the rest), so the size-limit paths are exercised too.
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let sender = if first & 1 == 0 {
        Sender::Client
    } else {
        Sender::Server
    };
    let max = usize::from(first >> 1) * 64 + 2;
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(packet)) = decode(&mut buf, max, sender) {
        let mut out = BytesMut::new();
        if encode(&packet, &mut out, usize::MAX, sender).is_ok() {
            let again = decode(&mut out, usize::MAX, sender).expect("re-decoding our own encoding");
            assert_eq!(again.as_ref(), Some(&packet));
        }
    }
});
