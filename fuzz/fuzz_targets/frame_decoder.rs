//! Fuzz target: the hub link's frame decoder (`proto::wire::decode`) on arbitrary bytes.
//!
//! What it checks: decoding never panics, never accepts more than the frame limit, and
//! whatever it accepts encodes back to bytes that decode to the same frame. It does not
//! check the hub or the site around the decoder (the end-to-end tests do).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::wire;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = wire::decode(data) {
        assert!(data.len() <= wire::MAX_FRAME_LEN);
        let again = wire::encode(&frame).expect("a decoded frame is valid, so it encodes");
        assert_eq!(wire::decode(&again), Ok(frame));
    }
});
