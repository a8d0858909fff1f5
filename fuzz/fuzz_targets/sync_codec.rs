//! Fuzz target: the sync batch codec's decoder (`proto::sync::codec::decode`) on arbitrary
//! payloads, the bytes a paired peer sends inside its encrypted session, and its plain layout
//! (`decode_plain`, a store's log rows).
//!
//! Half the inputs go to the decoder as they are (the zstd frame check); the other half are
//! first compressed, so that the fuzzer explores the body layout behind the zstd frame (a
//! random input is almost never a valid frame). What it checks: decoding never panics;
//! whatever decodes encodes again, to a payload that decodes to as many records, and that
//! canonical form is stable (encode ∘ decode of it gives it back). The encoder groups a
//! batch's points per series and sorts them by time, so the first decode's order may differ
//! from the canonical one; the end-to-end tests check what a Target stores.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::sync::codec;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // A third of the inputs: the plain layout of a store's log rows, which must decode to
    // points that encode back to the very same row.
    if mode % 3 == 2 {
        if let Ok(points) = codec::decode_plain(rest) {
            let mut row = Vec::new();
            codec::encode_plain(
                points.iter().map(|p| (p.device, p.resource, p.t, &p.value)),
                &mut row,
            );
            assert_eq!(codec::decode_plain(&row).as_ref(), Ok(&points), "a plain row changed");
        }
        return;
    }
    let decoded = if mode % 2 == 0 {
        codec::decode(rest)
    } else {
        let payload = zstd::bulk::compress(rest, 1).expect("zstd compresses any bytes");
        codec::decode(&payload)
    };
    let Ok(records) = decoded else {
        return;
    };
    let canonical = codec::decode(&codec::encode(&records).expect("decoded records encode"))
        .expect("an encoded batch decodes");
    assert_eq!(canonical.len(), records.len(), "records lost or added");
    let again = codec::decode(&codec::encode(&canonical).expect("canonical records encode"))
        .expect("an encoded batch decodes");
    assert_eq!(again, canonical, "the canonical form is not stable");
});
