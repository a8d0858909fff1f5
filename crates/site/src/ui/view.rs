//! Small renderings shared by the pages: times, values with units, tag parsing of forms.
//!
//! Times are rendered as `<time>` elements carrying the UTC value; `app.js` rewrites their
//! text into the viewer's timezone and keeps the UTC value on hover, so a page without
//! JavaScript still shows a correct (UTC) time.

use std::fmt;

use proto::model::{Tags, Value};

use crate::clock::rfc3339;
use crate::error::ApiError;

/// A point in time (µs since the epoch) as a `<time>` element; render with `|safe` (it holds
/// only digits and punctuation, never operator input).
pub struct When {
    pub us: i64,
    /// Shown as "5 min ago" instead of a date when true.
    pub relative: bool,
}

impl When {
    pub fn at(us: i64) -> Self {
        Self {
            us,
            relative: false,
        }
    }

    pub fn ago(us: i64) -> Self {
        Self { us, relative: true }
    }
}

/// `2026-11-26 09:41:07` in UTC.
pub fn utc_text(us: i64) -> String {
    let iso = rfc3339(us);
    // RFC 3339 from `time` is `YYYY-MM-DDTHH:MM:SS[.frac]Z`; keep it to the second.
    match (iso.get(0..10), iso.get(11..19)) {
        (Some(d), Some(t)) => format!("{d} {t}"),
        _ => iso,
    }
}

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let utc = utc_text(self.us);
        write!(
            f,
            r#"<time datetime="{}" data-us="{}"{} title="{utc} UTC">{utc} UTC</time>"#,
            rfc3339(self.us),
            self.us,
            if self.relative { " data-rel" } else { "" },
        )
    }
}

/// A message as a sentence for the page: capitalised, ending in a full stop (the domain's
/// refusals are lower-case clauses, written to be embedded in the API's JSON).
pub fn sentence(text: &str) -> String {
    let text = text.trim();
    let mut chars = text.chars();
    let Some(first) = chars.next() else {
        return String::new();
    };
    let mut out: String = first.to_uppercase().chain(chars).collect();
    if !out.ends_with(['.', '!', '?', ')']) {
        out.push('.');
    }
    out
}

/// `n` with thousands separators: `12,345`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count with its noun, plural-aware: "1 point", "12,345 points", "0 points".
pub fn count(n: u64, noun: &str) -> String {
    let plural = match noun.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{noun}s"),
    };
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{} {plural}", thousands(n))
    }
}

/// A size in bytes, in the largest binary unit that keeps it at 1 or more: "512 B",
/// "3.4 KiB", "0.7 MiB" never (that is "716.8 KiB").
pub fn bytes_text(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut x = n as f64 / 1024.0;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    format!("{x:.1} {}", UNITS[unit])
}

/// A value as the operator reads it, with its unit when it has one.
pub fn value_text(v: &Value, unit: Option<&str>) -> String {
    let text = match v {
        Value::Number(x) => format!("{x}"),
        Value::Integer(i) => i.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::String(s) => s.clone(),
        Value::Json(j) => j.clone(),
    };
    match (v, unit) {
        (Value::Number(_) | Value::Integer(_), Some(u)) => format!("{text} {u}"),
        _ => text,
    }
}

/// A value as an operator would type it back into a form (strings without quotes).
pub fn value_input(v: &Value) -> String {
    value_text(v, None)
}

/// Parses the "Tags" box of the Add device form: one `key=value` per line or comma.
pub fn parse_tags(text: &str) -> Result<Tags, ApiError> {
    let mut tags = Tags::new();
    for item in text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (k, v) = item
            .split_once('=')
            .or_else(|| item.split_once(':'))
            .ok_or_else(|| ApiError::invalid(format!("tag {item:?} must be written key=value")))?;
        tags.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(tags)
}

/// The device list's search: tags that must all match, and the start of an identity.
pub type Search = (Vec<(String, String)>, Option<String>);

/// Parses the device list's search box: `key:value` or `key=value` words are tags (every one
/// must match); one bare word is the start of an identity ("00AB" finds 00AB01, 00AB02…).
pub fn parse_search(text: &str) -> Result<Search, ApiError> {
    let mut tags = Vec::new();
    let mut prefix: Option<String> = None;
    for item in text
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match item.split_once(':').or_else(|| item.split_once('=')) {
            Some((k, v)) => tags.push((k.to_owned(), v.to_owned())),
            None if prefix.is_none() => prefix = Some(item.to_owned()),
            None => {
                return Err(ApiError::invalid_query(format!(
                    "Search one identity at a time (the start of it, like 00AB), and tags as \
                     key:value; {item:?} is a second identity."
                )));
            }
        }
    }
    Ok((tags, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reads_as_a_sentence() {
        assert_eq!(
            sentence("the pairing code is wrong; check it"),
            "The pairing code is wrong; check it."
        );
        assert_eq!(sentence("Saved."), "Saved.");
        assert_eq!(sentence("  "), "");
        assert_eq!(sentence("é ok"), "É ok.");
    }

    #[test]
    fn times_render_utc_for_the_script_to_localise() {
        let html = When::at(1_700_000_000_123_456).to_string();
        assert!(html.contains(r#"data-us="1700000000123456""#), "{html}");
        assert!(html.contains("2023-11-14 22:13:20 UTC"), "{html}");
        assert!(!html.contains("data-rel"));
        assert!(When::ago(0).to_string().contains("data-rel"));
    }

    #[test]
    fn counts_are_plural_aware_with_separators() {
        assert_eq!(count(0, "point"), "0 points");
        assert_eq!(count(1, "partition"), "1 partition");
        assert_eq!(count(2, "partition"), "2 partitions");
        assert_eq!(count(1_234_567, "point"), "1,234,567 points");
        assert_eq!(count(3, "try"), "3 tries");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(bytes_text(512), "512 B");
        assert_eq!(bytes_text(734_003), "716.8 KiB");
        assert_eq!(bytes_text(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn values_carry_units_only_when_numeric() {
        let check = |v: Value, unit: Option<&str>, expected: &str| {
            assert_eq!(value_text(&v, unit), expected);
        };
        check(Value::Number(21.5), Some("°C"), "21.5 °C");
        check(Value::Integer(3), None, "3");
        check(Value::Boolean(true), Some("x"), "true");
        check(Value::String("on".into()), Some("x"), "on");
    }

    #[test]
    fn tag_forms_parse() {
        let tags = parse_tags("site=north\nrack: 4 , floor=2").unwrap();
        assert_eq!(tags.len(), 3);
        assert_eq!(tags["rack"], "4");
        assert!(parse_tags("nonsense").is_err());
        assert!(parse_tags("  ").unwrap().is_empty());

        let (filter, none) = parse_search("site:north rack=4").unwrap();
        assert_eq!(
            filter,
            vec![("site".into(), "north".into()), ("rack".into(), "4".into())]
        );
        assert_eq!(none, None);

        let (tags, prefix) = parse_search("00AB site:north").unwrap();
        assert_eq!(tags, vec![("site".into(), "north".into())]);
        assert_eq!(prefix.as_deref(), Some("00AB"));
        assert_eq!(parse_search("  ").unwrap(), (vec![], None));
        assert!(parse_search("00AB 00CD").is_err());
    }
}
