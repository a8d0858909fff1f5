//! `/api/v1/alarms` and `/api/v1/connectors/{cid}/alarms`: the alarms the site raised and
//! cleared, paged, and each connector's thresholds.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::Value as Json_;

use super::extract::{ApiJson, QueryPairs};
use super::render::{alarm_json, alarm_thresholds_json};
use crate::auth::User;
use crate::error::ApiError;
use crate::ops::alarms::{Listing, MAX_PAGE, MAX_POINTS, MAX_SECONDS, Patch};
use crate::ops::{self, connector_id};
use crate::state::AppState;

pub async fn thresholds(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let s = ops::alarms::thresholds(&state, &connector_id(&cid)?).await?;
    Ok(Json(alarm_thresholds_json(&s)))
}

/// `PATCH …/alarms`: any of the four thresholds; a number sets it, `null` turns that alarm
/// off, an absent field leaves it. Values are read as JSON first, so that a refusal names
/// its field whatever is wrong with it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdsPatch {
    #[serde(default, deserialize_with = "present")]
    lag_seconds: Option<Json_>,
    #[serde(default, deserialize_with = "present")]
    backlog_points: Option<Json_>,
    #[serde(default, deserialize_with = "present")]
    unreachable_seconds: Option<Json_>,
    #[serde(default, deserialize_with = "present")]
    gap_points: Option<Json_>,
}

/// A field that is present, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Json_>, D::Error> {
    Json_::deserialize(d).map(Some)
}

/// A threshold as the body gives it: absent, `null` (off), or a whole number from 1 to
/// `max` (checked again by `ops`, which knows no JSON).
fn threshold(field: &str, v: Option<Json_>, max: u64) -> Result<Option<Option<u64>>, ApiError> {
    match v {
        None => Ok(None),
        Some(Json_::Null) => Ok(Some(None)),
        Some(v) => match v.as_u64() {
            Some(n) => Ok(Some(Some(n))),
            None => Err(ApiError::invalid(format!(
                "{field} must be a whole number from 1 to {max} (or null to turn the alarm off), not {v}"
            ))),
        },
    }
}

pub async fn set_thresholds(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
    ApiJson(body): ApiJson<ThresholdsPatch>,
) -> Result<Json<Json_>, ApiError> {
    let patch = Patch {
        lag_seconds: threshold("lag_seconds", body.lag_seconds, MAX_SECONDS)?,
        backlog_points: threshold("backlog_points", body.backlog_points, MAX_POINTS)?,
        unreachable_seconds: threshold(
            "unreachable_seconds",
            body.unreachable_seconds,
            MAX_SECONDS,
        )?,
        gap_points: threshold("gap_points", body.gap_points, MAX_POINTS)?,
    };
    let s = ops::alarms::set_thresholds(&state, &connector_id(&cid)?, patch).await?;
    Ok(Json(alarm_thresholds_json(&s)))
}

/// `GET /api/v1/alarms?connector=CID&state=active|cleared&limit=N&cursor=C`.
pub async fn list(
    State(state): State<AppState>,
    _: User,
    q: QueryPairs,
) -> Result<Json<Json_>, ApiError> {
    let connector = match q.get("connector") {
        Some(c) => Some(connector_id(c)?),
        None => None,
    };
    let active = match q.get("state") {
        None | Some("all") => None,
        Some("active") => Some(true),
        Some("cleared") => Some(false),
        Some(other) => {
            return Err(ApiError::invalid_query(format!(
                "state must be active, cleared or all, not {other:?}"
            )));
        }
    };
    let before = match q.get("cursor") {
        None => None,
        Some(c) => Some(c.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::invalid_query(format!(
                "cursor must be the next field of a previous page, not {c:?}"
            ))
        })?),
    };
    let max = i64::try_from(MAX_PAGE).unwrap_or(i64::MAX);
    let limit = usize::try_from(q.number("limit", 100, 1..=max)?).unwrap_or(MAX_PAGE);
    let (page, next) = ops::alarms::list(
        &state,
        Listing {
            connector,
            active,
            before,
            limit,
        },
    )
    .await?;
    let mut out = serde_json::json!({
        "alarms": page.iter().map(alarm_json).collect::<Vec<_>>(),
        "active": ops::alarms::active_count(&state),
    });
    if let Some(n) = next {
        out["next"] = serde_json::json!(n.to_string());
    }
    Ok(Json(out))
}
