//! The site's wall-clock time: microseconds since the Unix epoch, and their RFC 3339
//! rendering for the `_at` fields of the API (docs/api.md).

/// Microseconds since the Unix epoch, from the system clock (the store's reading, so that
/// the site and its store never disagree about how to read it).
pub use store::now_micros;

/// An RFC 3339 rendering of a µs timestamp.
pub fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
