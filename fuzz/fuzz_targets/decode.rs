//! Fuzzes the codec adapter's `decode` with arbitrary bytes: it must never
//! panic, and whatever it accepts must encode back to bytes that decode to
//! the same packet.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqbridge::protocol::{decode, encode};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the maximum packet size, so the size-limit paths
    // are exercised too.
    let Some((max, rest)) = data.split_first() else {
        return;
    };
    let max = usize::from(*max) * 64 + 2;
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(packet)) = decode(&mut buf, max) {
        let mut out = BytesMut::new();
        if encode(&packet, &mut out, usize::MAX).is_ok() {
            let again = decode(&mut out, usize::MAX).expect("re-decoding our own encoding");
            assert_eq!(again.as_ref(), Some(&packet));
        }
    }
});
