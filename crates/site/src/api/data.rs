//! The device API: writing points (one device, or many at once for gateways) and reading a
//! series back in pages.
//!
//! A write answers `{"accepted": N}` only after the store has committed every point of the
//! request; a request with any bad point is refused whole and stores nothing.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use proto::model::{ConnectorId, Identity, ResourceName};
use serde::Deserialize;
use serde_json::{Value as Json_, json};
use store::{Order, PointsIn, RangeQuery};

use super::extract::{ApiBytes, QueryPairs, parse_json};
use crate::auth::{User, Writer};
use crate::clock::now_micros;
use crate::error::ApiError;
use crate::ops::{self, connector_id, identity, resource_name};
use crate::state::AppState;

const ONLY_OWN: &str = "a device token may write only its own device's data";
const DEFAULT_PAGE: i64 = 1000;
const MAX_PAGE: i64 = 10_000;

/// Values one device reports at one time; `t` defaults to the time of arrival.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PointBody<'a> {
    t: Option<i64>,
    #[serde(borrow)]
    values: Values<'a>,
}

/// One entry of the bulk endpoint: a `PointBody` naming its device.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody<'a> {
    #[serde(borrow)]
    device: Cow<'a, str>,
    t: Option<i64>,
    #[serde(borrow)]
    values: Values<'a>,
}

/// A body's `values`, resource name → value: in name order, a repeated name's last value
/// (as a map keeps them), names borrowed from the body unless they hold an escape. A
/// `BTreeMap<String, _>` cost a node and a `String` an entry, which with the device's
/// `String` were most of the parse of a request for a thousand devices, on the way to
/// every answer.
struct Values<'a>(Vec<(Cow<'a, str>, Json_)>);

impl<'de: 'a, 'a> Deserialize<'de> for Values<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Values<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of resource names to values")
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Values<'a>, M::Error> {
                let mut all: Vec<(Cow<'a, str>, Json_)> = Vec::with_capacity(1);
                while let Some((Name(name), value)) = m.next_entry::<Name<'a>, Json_>()? {
                    all.push((name, value));
                }
                if all.len() > 1 {
                    // Stable: a repeated name's values stay in body order, the last kept.
                    all.sort_by(|a, b| a.0.cmp(&b.0));
                    let mut kept: Vec<(Cow<'a, str>, Json_)> = Vec::with_capacity(all.len());
                    for e in all {
                        match kept.last_mut() {
                            Some(last) if last.0 == e.0 => *last = e,
                            _ => kept.push(e),
                        }
                    }
                    all = kept;
                }
                Ok(Values(all))
            }
        }
        d.deserialize_map(Visit(PhantomData))
    }
}

/// A map key borrowed from the body where it can be (serde's own `Cow` never borrows).
struct Name<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Name<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a resource name")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visit(PhantomData))
    }
}

/// The resource names of one request, each parsed once: a thousand devices' points name
/// the same few, and each parse is an allocation.
#[derive(Default)]
struct Names(Vec<ResourceName>);

impl Names {
    /// Names kept; a request naming more parses the others each time.
    const KEPT: usize = 16;

    fn parse(&mut self, name: &str) -> Result<ResourceName, ApiError> {
        if let Some(known) = self.0.iter().find(|n| n.as_str() == name) {
            return Ok(known.clone());
        }
        let parsed = ResourceName::parse(name)?;
        if self.0.len() < Self::KEPT {
            self.0.push(parsed.clone());
        }
        Ok(parsed)
    }
}

fn points_in(
    identity: Identity,
    t: Option<i64>,
    Values(values): Values<'_>,
    now: i64,
    names: &mut Names,
) -> Result<PointsIn, ApiError> {
    if values.is_empty() {
        return Err(ApiError::invalid(
            "values must name at least one resource".into(),
        ));
    }
    let values = values
        .into_iter()
        .map(|(k, v)| Ok((names.parse(&k)?, v)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(PointsIn {
        identity,
        t: t.unwrap_or(now),
        values,
    })
}

/// Whether a body is a JSON array, judged by its first significant byte.
fn is_array(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[')
}

pub async fn ingest_device(
    State(state): State<AppState>,
    writer: Writer,
    Path((cid, id)): Path<(String, String)>,
    ApiBytes(body): ApiBytes,
) -> Result<Json<Json_>, ApiError> {
    let started = Instant::now();
    let (cid, id) = (connector_id(&cid)?, identity(&id)?);
    if !writer.may_write(&cid, &id) {
        return Err(ApiError::forbidden(ONLY_OWN.into()));
    }
    let points = parse_device_body(&body, &id, now_micros());
    store_points(&state, &cid, points, started).await
}

/// The points of a one-device ingest body (one object or an array of them) for device
/// `id`, stamped `now` where a body has no `t`. Pure (no I/O), so that it can be fuzzed
/// (fuzz/fuzz_targets/ingest_json.rs); the answer's error is the call's error.
pub fn parse_device_body(body: &[u8], id: &Identity, now: i64) -> Result<Vec<PointsIn>, ApiError> {
    let bodies: Vec<PointBody> = if is_array(body) {
        parse_json(body)?
    } else {
        vec![parse_json(body)?]
    };
    let mut names = Names::default();
    bodies
        .into_iter()
        .map(|b| points_in(id.clone(), b.t, b.values, now, &mut names))
        .collect()
}

pub async fn ingest_bulk(
    State(state): State<AppState>,
    writer: Writer,
    Path(cid): Path<String>,
    ApiBytes(body): ApiBytes,
) -> Result<Json<Json_>, ApiError> {
    let started = Instant::now();
    let cid = connector_id(&cid)?;
    let points = parse_bulk_body(&body, now_micros(), |id| writer.may_write(&cid, id));
    store_points(&state, &cid, points, started).await
}

/// The points of a bulk ingest body (an array of entries naming their devices), stamped
/// `now` where an entry has no `t`; `may_write` is asked for each entry's device, in order.
/// Pure (no I/O), so that it can be fuzzed (fuzz/fuzz_targets/ingest_json.rs).
pub fn parse_bulk_body(
    body: &[u8],
    now: i64,
    may_write: impl Fn(&Identity) -> bool,
) -> Result<Vec<PointsIn>, ApiError> {
    let bodies: Vec<BulkBody> = parse_json(body)?;
    let mut names = Names::default();
    bodies
        .into_iter()
        .map(|b| {
            let id = Identity::parse(&b.device)?;
            if !may_write(&id) {
                return Err(ApiError::forbidden(ONLY_OWN.into()));
            }
            points_in(id, b.t, b.values, now, &mut names)
        })
        .collect()
}

async fn store_points(
    state: &AppState,
    cid: &ConnectorId,
    points: Result<Vec<PointsIn>, ApiError>,
    started: Instant,
) -> Result<Json<Json_>, ApiError> {
    let points = points.inspect_err(|_| ops::data::refused(state))?;
    let n = ops::data::ingest(state, cid, points, started).await?;
    Ok(Json(json!({ "accepted": n })))
}

pub async fn read(
    State(state): State<AppState>,
    _: User,
    Path((cid, id, name)): Path<(String, String, String)>,
    q: QueryPairs,
) -> Result<Json<Json_>, ApiError> {
    let (cid, id, name) = (connector_id(&cid)?, identity(&id)?, resource_name(&name)?);
    let since = q.number("since", 0, 0..=i64::MAX)?;
    let until = q.number("until", i64::MAX, 0..=i64::MAX)?;
    if q.get("buckets").is_some() {
        return drawn(&state, (&cid, &id, &name), (since, until), &q).await;
    }
    let limit = q.number("limit", DEFAULT_PAGE, 1..=MAX_PAGE)?;
    let order = match q.get("order") {
        None | Some("asc") => Order::Asc,
        Some("desc") => Order::Desc,
        Some(other) => {
            return Err(ApiError::invalid_query(format!(
                "order must be asc or desc, not {other:?}"
            )));
        }
    };
    let after =
        match q.get("cursor") {
            None => None,
            Some(c) => Some(c.parse::<i64>().map_err(|_| {
                ApiError::invalid_query("cursor is not one this site gave out".into())
            })?),
        };
    let query = RangeQuery {
        since,
        until,
        after,
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
        order,
    };
    let series = ops::data::series(&state, &cid, &id, &name, query).await?;
    let mut page = json!({});
    if let Some(t) = series.next {
        page["next"] = json!(t.to_string());
    }
    page["points"] = Json_::Array(
        series
            .points
            .iter()
            .map(|p| json!({ "t": p.t, "v": p.v.to_json() }))
            .collect(),
    );
    Ok(Json(page))
}

/// `…/data?since=&until=&buckets=N`: the range as a chart draws it, its points while there
/// are at most 2 × N, else N equal spans with their count, min, max, first and last point
/// (empty ones left out).
async fn drawn(
    state: &AppState,
    (cid, id, name): (
        &proto::model::ConnectorId,
        &proto::model::Identity,
        &proto::model::ResourceName,
    ),
    (since, until): (i64, i64),
    q: &QueryPairs,
) -> Result<Json<Json_>, ApiError> {
    use crate::ops::export::{self, Drawn, MAX_BUCKETS};
    let buckets = q.number("buckets", 1, 1..=MAX_BUCKETS as i64)?;
    if q.get("since").is_none() || q.get("until").is_none() {
        return Err(ApiError::invalid_query(
            "buckets split a range: give since and until too".into(),
        ));
    }
    let n = usize::try_from(buckets).unwrap_or(1);
    Ok(Json(
        match export::drawn(state, cid, id, name, (since, until), n).await? {
            Drawn::Points(points) => json!({
                "points": points.iter().map(|p| json!({ "t": p.t, "v": p.v.to_json() })).collect::<Vec<_>>()
            }),
            Drawn::Buckets(buckets) => json!({
                "buckets": buckets.iter().map(|b| json!({
                    "from": b.from, "until": b.until, "n": b.n, "min": b.min, "max": b.max,
                    "first": { "t": b.first.0, "v": b.first.1 },
                    "last": { "t": b.last.0, "v": b.last.1 },
                })).collect::<Vec<_>>()
            }),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(p: &PointsIn) -> Vec<(&str, i64)> {
        p.values
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_i64().expect("integer")))
            .collect()
    }

    #[test]
    fn values_come_in_name_order_with_a_repeated_names_last_value() {
        let body = br#"[{"device":"d1","t":5,"values":{"b":1,"a":2,"b":3}},
                        {"device":"d2","t":6,"values":{"a":4}}]"#;
        let points = parse_bulk_body(body, 0, |_| true).expect("parsed");
        assert_eq!(values(&points[0]), [("a", 2), ("b", 3)]);
        assert_eq!(values(&points[1]), [("a", 4)]);
        assert_eq!(points[1].identity.as_str(), "d2");
    }

    #[test]
    fn escaped_names_are_read_as_their_characters() {
        let body = br#"[{"device":"d\u0031","values":{"te\u006dp":1}}]"#;
        let points = parse_bulk_body(body, 7, |_| true).expect("parsed");
        assert_eq!(points[0].identity.as_str(), "d1");
        assert_eq!(values(&points[0]), [("temp", 1)]);
        assert_eq!(points[0].t, 7);
        let id = Identity::parse("d1").expect("identity");
        let one = parse_device_body(br#"{"values":{"a\u0062":2}}"#, &id, 0).expect("parsed");
        assert_eq!(values(&one[0]), [("ab", 2)]);
    }

    #[test]
    fn values_that_are_not_a_map_of_names_are_refused_as_not_fitting() {
        for body in [
            &br#"[{"device":"d1","values":[1]}]"#[..],
            br#"[{"device":"d1","values":{}}]"#,
            br#"[{"device":"d1","values":{"bad name!":1}}]"#,
            br#"[{"device":"d1","values":{"a":1},"extra":2}]"#,
        ] {
            let e = parse_bulk_body(body, 0, |_| true).expect_err("refused");
            assert!(!matches!(e, ApiError::InvalidJson(_)), "{e:?}");
        }
        let e = parse_bulk_body(br#"[{"device":"d1","values":{"a":1}"#, 0, |_| true)
            .expect_err("refused");
        assert!(matches!(e, ApiError::InvalidJson(_)), "{e:?}");
    }
}
