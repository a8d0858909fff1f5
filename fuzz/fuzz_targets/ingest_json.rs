//! Fuzz target: the device API's ingest body parsers (`site::api::parse_device_body` and
//! `parse_bulk_body`, the code between the request's bytes and the store) on arbitrary bytes.
//!
//! What it checks: parsing never panics; bytes that are not JSON are refused as
//! `invalid_json` whatever shape the call expects, and JSON is never called `invalid_json`
//! (docs/api.md); an accepted body gives points that each name at least one resource. It
//! does not check the store's conversion of values (the store's and the e2e tests do).
//!
//! "JSON" is judged by serde_json: bytes it cannot skip as one value are not JSON; bytes it
//! reads as a `serde_json::Value` are. Between the two lie numbers outside f64 (`1e400`),
//! which a call may refuse either way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::model::Identity;
use site::api::{parse_bulk_body, parse_device_body};
use site::error::ApiError;

const NOW: i64 = 1_750_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    let syntax_ok = serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok();
    let value_ok = serde_json::from_slice::<serde_json::Value>(data).is_ok();
    let id = Identity::parse("fuzz-device").expect("a valid identity");
    check(syntax_ok, value_ok, parse_device_body(data, &id, NOW));
    // Devices with names of odd length are refused, so that the permission path runs too.
    check(
        syntax_ok,
        value_ok,
        parse_bulk_body(data, NOW, |d| d.as_str().len() % 2 == 0),
    );
});

fn check(syntax_ok: bool, value_ok: bool, parsed: Result<Vec<store::PointsIn>, ApiError>) {
    match parsed {
        Ok(points) => {
            assert!(syntax_ok, "bytes that are not JSON were accepted");
            assert!(
                points.iter().all(|p| !p.values.is_empty()),
                "an accepted point names no resource"
            );
        }
        Err(ApiError::InvalidJson(e)) => assert!(!value_ok, "JSON refused as invalid_json: {e}"),
        Err(e) => assert!(syntax_ok, "bytes that are not JSON refused as {e:?}"),
    }
}
