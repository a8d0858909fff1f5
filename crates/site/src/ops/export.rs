//! Reading a range of data in bulk: CSV export of one resource over a time range (one
//! device's series, or every device's one after another), streamed a store page at a time,
//! and the chart's downsampling of a dense series into min/max buckets.
//!
//! ```text
//!  export: check (connector, resource, device, range) ─▶ header line ─▶ per device, pages
//!          of PAGE points ─▶ one chunk of CSV each ─▶ client (back-pressure: the next page
//!          is read when the client has taken the last)
//!  buckets: pages of PAGE points ─▶ kept as they are while ≤ 2 × buckets, else folded into
//!           `buckets` equal spans of the range (count, min, max, first, last)
//! ```
//!
//! Invariants: memory is one page (and the buckets) whatever the range holds; every export
//! holds a slot of `AppState::exports` (a few per user, a few more per site) until its
//! stream ends or is dropped with its client.

use bytes::Bytes;
use futures::Stream;
use proto::model::{ConnectorId, Identity, ResourceName, Value};
use store::{DeviceQuery, Order, Point, RangeQuery};

use super::{Error, Result};
use crate::clock::rfc3339;
use crate::slots::Slot;
use crate::state::AppState;

/// Points read from the store at a time.
const PAGE: usize = 10_000;
/// Devices listed from the store at a time (exports of every device).
const DEVICE_PAGE: usize = 1_000;
/// Most buckets a chart may ask for.
pub const MAX_BUCKETS: usize = 5_000;

/// What an export reads: one resource, `[since, until)`, one device or all of them.
#[derive(Debug, Clone)]
pub struct ExportQuery {
    pub resource: ResourceName,
    pub device: Option<Identity>,
    pub since: i64,
    pub until: i64,
}

/// Checks an export and takes its slot; the stream it returns is the CSV, header first.
/// Refused before anything is sent: an unknown connector, resource or device (`not_found`),
/// an empty range (`invalid_query`), or `user` at their bound of exports (`busy`).
pub async fn csv(
    state: &AppState,
    cid: &ConnectorId,
    q: ExportQuery,
    user: &str,
) -> Result<impl Stream<Item = std::result::Result<Bytes, Error>> + Send + 'static> {
    if q.since >= q.until {
        return Err(Error::InvalidQuery(format!(
            "since ({}) must be before until ({})",
            q.since, q.until
        )));
    }
    let resources = state.store.resources(cid).await?;
    if !resources.iter().any(|r| r.name == q.resource) {
        return Err(Error::NotFound(format!(
            "resource {} does not exist",
            q.resource
        )));
    }
    if let Some(d) = &q.device {
        state.store.device(cid, d).await?;
    }
    let slot = state.exports.try_take(user).ok_or_else(|| {
        Error::TooManyRunning(format!(
            "too many exports are running (at most {} a user, {} on the site); \
             try again when one has finished",
            crate::state::EXPORTS_PER_USER,
            crate::state::EXPORTS_PER_SITE
        ))
    })?;
    let run = Export {
        state: state.clone(),
        cid: cid.clone(),
        q,
        devices: Vec::new(),
        devices_done: false,
        after_device: None,
        current: None,
        header: true,
        _slot: slot,
    };
    Ok(futures::stream::unfold(run, |mut run| async move {
        match run.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), run)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(connector = %run.cid, error = %e, "a CSV export failed midway");
                // An error item ends the body without its last chunk: the client sees a
                // truncated transfer, never a short file that looks complete.
                run.devices_done = true;
                run.current = None;
                run.devices.clear();
                Some((Err(e), run))
            }
        }
    }))
}

/// The state of one export between chunks.
struct Export {
    state: AppState,
    cid: ConnectorId,
    q: ExportQuery,
    /// Devices listed and not started yet (all-device exports).
    devices: Vec<Identity>,
    devices_done: bool,
    after_device: Option<Identity>,
    /// The device being read, and the `t` after which its next page starts.
    current: Option<(Identity, Option<i64>)>,
    header: bool,
    _slot: Slot,
}

impl Export {
    /// The next chunk of CSV, `None` at the end.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        if self.header {
            self.header = false;
            return Ok(Some(Bytes::from_static(b"device,resource,t,time,value\n")));
        }
        loop {
            let Some((device, after)) = self.current.clone() else {
                match self.next_device().await? {
                    Some(d) => {
                        self.current = Some((d, None));
                        continue;
                    }
                    None => return Ok(None),
                }
            };
            let query = RangeQuery {
                since: self.q.since,
                until: self.q.until,
                after,
                limit: PAGE,
                order: Order::Asc,
            };
            let points = match self
                .state
                .store
                .points(&self.cid, &device, &self.q.resource, query)
                .await
            {
                Ok(p) => p,
                // Deleted while exporting: its rows end here.
                Err(store::StoreError::DeviceNotFound(_)) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            self.current = match points.last() {
                Some(last) if points.len() == PAGE => Some((device.clone(), Some(last.t))),
                _ => None,
            };
            if points.is_empty() {
                continue;
            }
            let mut out = String::with_capacity(points.len() * 48);
            for p in &points {
                row(&mut out, &device, &self.q.resource, p);
            }
            return Ok(Some(Bytes::from(out)));
        }
    }

    /// The next device to read: the one asked, or the next of the connector's.
    async fn next_device(&mut self) -> Result<Option<Identity>> {
        if let Some(d) = self.q.device.take() {
            self.devices_done = true;
            return Ok(Some(d));
        }
        if self.devices.is_empty() && !self.devices_done {
            let page = self
                .state
                .store
                .devices(
                    &self.cid,
                    DeviceQuery::after(self.after_device.take(), DEVICE_PAGE),
                )
                .await?;
            self.devices_done = page.len() < DEVICE_PAGE;
            self.after_device = page.last().map(|d| d.identity.clone());
            // Popped from the end: reversed, to keep identity order.
            self.devices = page.into_iter().rev().map(|d| d.identity).collect();
        }
        Ok(self.devices.pop())
    }
}

/// One CSV row: `device,resource,t,time,value`.
fn row(out: &mut String, device: &Identity, resource: &ResourceName, p: &Point) {
    use std::fmt::Write;
    let _ = write!(out, "{device},{resource},{},{},", p.t, rfc3339(p.t));
    match &p.v {
        Value::Number(x) => {
            let _ = write!(out, "{x}");
        }
        Value::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Boolean(b) => {
            let _ = write!(out, "{b}");
        }
        Value::String(s) => field(out, s),
        Value::Json(j) => field(out, j),
    }
    out.push('\n');
}

/// A text value as one CSV field (RFC 4180: quoted when it holds a comma, quote or line
/// break, quotes doubled). Text a spreadsheet would run as a formula (`=`, `+`, `-`, `@`,
/// a tab or carriage return first) gets a leading `'`, as OWASP advises: an exported file
/// must not run code when opened.
fn field(out: &mut String, text: &str) {
    let risky = text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = risky || text.contains([',', '"', '\n', '\r']);
    if quote {
        out.push('"');
    }
    if risky {
        out.push('\'');
    }
    for c in text.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    if quote {
        out.push('"');
    }
}

/// One span of a downsampled series: how many points it holds, their least and greatest
/// values, and its first and last point.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub from: i64,
    pub until: i64,
    pub n: u64,
    pub min: f64,
    pub max: f64,
    pub first: (i64, f64),
    pub last: (i64, f64),
}

/// A series as a chart draws it: its points when few, else buckets.
pub enum Drawn {
    Points(Vec<Point>),
    Buckets(Vec<Bucket>),
}

fn numeric(v: &Value) -> Option<f64> {
    match v {
        Value::Number(x) => Some(*x),
        Value::Integer(i) => Some(*i as f64),
        Value::Boolean(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::String(_) | Value::Json(_) => None,
    }
}

/// One device's series of one resource over `[since, until)` for a chart of about
/// `buckets` columns: the points themselves while there are at most twice as many, else
/// `buckets` equal spans of the range (empty ones left out), each with its count, min,
/// max, first and last. Strings and JSON cannot be bucketed (`invalid_query`).
pub async fn drawn(
    state: &AppState,
    cid: &ConnectorId,
    id: &Identity,
    name: &ResourceName,
    (since, until): (i64, i64),
    buckets: usize,
) -> Result<Drawn> {
    if since >= until {
        return Err(Error::InvalidQuery(format!(
            "since ({since}) must be before until ({until})"
        )));
    }
    let keep = buckets.saturating_mul(2);
    let width = ((until - since) / i64::try_from(buckets).unwrap_or(1)).max(1);
    let mut raw: Vec<Point> = Vec::new();
    let mut spans: Vec<Option<Bucket>> = Vec::new();
    let mut after = None;
    loop {
        let query = RangeQuery {
            since,
            until,
            after,
            limit: PAGE,
            order: Order::Asc,
        };
        let page = state.store.points(cid, id, name, query).await?;
        after = page.last().map(|p| p.t);
        let full = page.len() == PAGE;
        if spans.is_empty() && raw.len() + page.len() <= keep {
            raw.extend(page);
        } else {
            if spans.is_empty() {
                spans = vec![None; buckets];
                for p in std::mem::take(&mut raw) {
                    add(&mut spans, since, width, &p)?;
                }
            }
            for p in &page {
                add(&mut spans, since, width, p)?;
            }
        }
        if !full {
            break;
        }
    }
    if spans.is_empty() {
        return Ok(Drawn::Points(raw));
    }
    Ok(Drawn::Buckets(spans.into_iter().flatten().collect()))
}

fn add(spans: &mut [Option<Bucket>], since: i64, width: i64, p: &Point) -> Result<()> {
    let y = numeric(&p.v).ok_or_else(|| {
        Error::InvalidQuery("only numbers, integers and booleans can be bucketed".into())
    })?;
    let i = usize::try_from((p.t - since) / width)
        .unwrap_or(0)
        .min(spans.len().saturating_sub(1));
    let from = since + width * i64::try_from(i).unwrap_or(0);
    let b = spans[i].get_or_insert(Bucket {
        from,
        until: from + width,
        n: 0,
        min: y,
        max: y,
        first: (p.t, y),
        last: (p.t, y),
    });
    b.n += 1;
    b.min = b.min.min(y);
    b.max = b.max.max(y);
    b.last = (p.t, y);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv_field(text: &str) -> String {
        let mut out = String::new();
        field(&mut out, text);
        out
    }

    #[test]
    fn text_fields_are_quoted_as_rfc_4180_says_and_never_run_as_formulas() {
        assert_eq!(csv_field("on"), "on");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("=1+2"), "\"'=1+2\"");
        assert_eq!(csv_field("@SUM(A1)"), "\"'@SUM(A1)\"");
    }

    #[test]
    fn points_fall_into_equal_spans_of_the_range() {
        let mut spans = vec![None; 4];
        for (t, v) in [(0, 1.0), (5, 3.0), (24, -1.0), (39, 2.0), (10, 7.0)] {
            add(
                &mut spans,
                0,
                10,
                &Point {
                    t,
                    v: Value::Number(v),
                },
            )
            .unwrap();
        }
        let b0 = spans[0].clone().unwrap();
        assert_eq!(
            (b0.n, b0.min, b0.max, b0.first, b0.last),
            (2, 1.0, 3.0, (0, 1.0), (5, 3.0))
        );
        assert_eq!(spans[1].as_ref().map(|b| b.n), Some(1));
        assert_eq!(spans[2].as_ref().map(|b| (b.from, b.until)), Some((20, 30)));
        assert_eq!(spans[3].as_ref().map(|b| b.max), Some(2.0));
        let text = Point {
            t: 1,
            v: Value::String("x".into()),
        };
        assert!(add(&mut spans, 0, 10, &text).is_err());
    }
}
