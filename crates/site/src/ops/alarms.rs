//! Alarms as an operator sees them (docs/api.md, "Alarms"): a connector's thresholds (read,
//! changed, checked) and the alarms the site's evaluator raised and cleared, paged.

use proto::model::ConnectorId;
use store::{AlarmQuery, AlarmRow, AlarmSettings};

use super::{Error, Result};
use crate::alarms::DEFAULTS;
use crate::state::AppState;

/// The largest threshold in seconds: a year.
pub const MAX_SECONDS: u64 = 365 * 24 * 3600;
/// The largest threshold in points.
pub const MAX_POINTS: u64 = 1_000_000_000_000;

/// A change of thresholds: `None` leaves one as it is, `Some(None)` turns that alarm off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Patch {
    pub lag_seconds: Option<Option<u64>>,
    pub backlog_points: Option<Option<u64>>,
    pub unreachable_seconds: Option<Option<u64>>,
    pub gap_points: Option<Option<u64>>,
}

/// The thresholds connector `cid` is evaluated with.
pub async fn thresholds(state: &AppState, cid: &ConnectorId) -> Result<AlarmSettings> {
    state.store.connector(cid).await?;
    let stored = state.store.alarm_settings().await?;
    Ok(stored
        .into_iter()
        .find(|(c, _)| c == cid)
        .map_or(DEFAULTS, |(_, s)| s))
}

/// Changes connector `cid`'s thresholds, all checked before any is stored; returns them as
/// they now are. The evaluator applies them at its next look.
pub async fn set_thresholds(
    state: &AppState,
    cid: &ConnectorId,
    patch: Patch,
) -> Result<AlarmSettings> {
    for (field, value, max) in [
        ("lag_seconds", patch.lag_seconds, MAX_SECONDS),
        ("backlog_points", patch.backlog_points, MAX_POINTS),
        (
            "unreachable_seconds",
            patch.unreachable_seconds,
            MAX_SECONDS,
        ),
        ("gap_points", patch.gap_points, MAX_POINTS),
    ] {
        if let Some(Some(v)) = value
            && !(1..=max).contains(&v)
        {
            return Err(Error::Invalid(format!(
                "{field} must be a whole number from 1 to {max} (or null to turn the alarm off), not {v}"
            )));
        }
    }
    let mut s = thresholds(state, cid).await?;
    let pick = |new: Option<Option<u64>>, old: Option<u64>| new.unwrap_or(old);
    s = AlarmSettings {
        lag_seconds: pick(patch.lag_seconds, s.lag_seconds),
        backlog_points: pick(patch.backlog_points, s.backlog_points),
        unreachable_seconds: pick(patch.unreachable_seconds, s.unreachable_seconds),
        gap_points: pick(patch.gap_points, s.gap_points),
    };
    state.store.set_alarm_settings(cid, s).await?;
    state.alarms.set_thresholds(cid, s);
    Ok(s)
}

/// Which alarms to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub connector: Option<ConnectorId>,
    /// `Some(true)`: active only; `Some(false)`: cleared only.
    pub active: Option<bool>,
    /// The id below which the page starts (the previous page's `next`).
    pub before: Option<i64>,
    /// 1 to [`MAX_PAGE`].
    pub limit: usize,
}

/// The most alarms in one page.
pub const MAX_PAGE: usize = 1000;

/// One page of alarms, newest first, and the cursor of the next page if there may be one.
pub async fn list(state: &AppState, l: Listing) -> Result<(Vec<AlarmRow>, Option<i64>)> {
    if let Some(cid) = &l.connector {
        state.store.connector(cid).await?;
    }
    let limit = l.limit.clamp(1, MAX_PAGE);
    let mut page = state
        .store
        .alarms(AlarmQuery {
            connector: l.connector,
            active: l.active,
            before: l.before,
            limit: limit + 1,
        })
        .await?;
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|a| a.id)
    } else {
        None
    };
    Ok((page, next))
}

/// How many alarms are active now (the UI header's badge): the evaluator's count, no store
/// read.
pub fn active_count(state: &AppState) -> u64 {
    state.alarms.active()
}
