//! Entry points for the fuzz targets in `fuzz/` that reach the crate's
//! private decoders. Compiled only with `--cfg fuzzing` (the fuzz build's
//! flags), never into the product.

use crate::broker::record as broker;
use crate::client::durable;
use crate::spool::record::{self as spool, Block};
use crate::store::record::seal;

/// Feeds `body`, sealed with a valid version and CRC (so the fuzzer gets
/// past the checksum, as damage that keeps it valid would), to every decoder
/// of what we keep on disk: none may panic, and a spooled message or a
/// broker's stored message that decodes must encode back to the same value.
/// The unsealed bytes go to the spool's block reader too (damaged lengths
/// and counts).
pub fn records(body: &[u8]) {
    let sealed = seal(body);
    if let Ok(rec) = spool::decode(&sealed) {
        assert_eq!(spool::decode(&spool::encode(&rec)).ok(), Some(rec));
    }
    let mut block = Block::new();
    block.push(&sealed);
    block.push(&sealed);
    let _ = spool::decode_value(&block.finish());
    let _ = spool::decode_value(body);
    if let Ok((msg, arrived)) = broker::decode_message(&sealed) {
        let again = broker::decode_message(&broker::encode_message(&msg, arrived)).ok();
        assert_eq!(again, Some((msg, arrived)));
    }
    let _ = broker::decode_session(&sealed);
    let _ = broker::decode_flow(&sealed);
    let _ = broker::decode_marker(&sealed);
    let _ = durable::decode(&sealed);
}
