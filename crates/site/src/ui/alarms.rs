//! The alarms pages (docs/ui.md, "Alarms"): the site's raised and cleared alarms, newest
//! first, filtered by state and connector and paged; and a connector's Settings › Alarms
//! tab with its thresholds form and its recent alarms. The header's badge (every page, in
//! `frame`) links here.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use store::{AlarmKind, AlarmRow, AlarmSettings};

use super::connectors::ConnView;
use super::error_page::{OrPage, UiResult, connector_crumbs, load_connector};
use super::frame::{Crumb, Frame};
use super::session::{Ctx, flash_error_redirect, flash_redirect};
use super::view::When;
use crate::alarms::DEFAULTS;
use crate::alarms::eval::duration;
use crate::api::extract::QueryPairs;
use crate::ops;
use crate::ops::alarms::{Listing, MAX_POINTS, MAX_SECONDS, Patch};
use crate::state::AppState;

/// Alarms on one page of the list.
const PAGE: usize = 50;

/// One alarm as a row of a table.
pub struct AlarmView {
    pub connector_id: String,
    pub connector_name: String,
    pub kind: &'static str,
    pub active: bool,
    pub message: String,
    pub raised: When,
    pub cleared: Option<When>,
    /// How long it was (or has been) active, in words.
    pub lasted: String,
}

fn kind_label(k: AlarmKind) -> &'static str {
    match k {
        AlarmKind::Lag => "Lag",
        AlarmKind::Backlog => "Backlog",
        AlarmKind::Unreachable => "Peer unreachable",
        AlarmKind::Gap => "Data lost",
    }
}

fn views(rows: &[AlarmRow], names: &[(String, String)]) -> Vec<AlarmView> {
    let now = crate::clock::now_micros();
    rows.iter()
        .map(|a| {
            let id = a.connector.to_string();
            let end = a.cleared_at.unwrap_or(now);
            let secs = u64::try_from(end.saturating_sub(a.raised_at) / 1_000_000).unwrap_or(0);
            AlarmView {
                connector_name: names
                    .iter()
                    .find(|(i, _)| *i == id)
                    .map_or_else(|| id.clone(), |(_, n)| n.clone()),
                connector_id: id,
                kind: kind_label(a.kind),
                active: a.cleared_at.is_none(),
                message: a.message.clone(),
                raised: When::at(a.raised_at),
                cleared: a.cleared_at.map(When::at),
                lasted: duration(secs),
            }
        })
        .collect()
}

#[derive(Template)]
#[template(path = "alarms.html")]
struct ListPage {
    frame: Frame,
    rows: Vec<AlarmView>,
    /// `all`, `active` or `cleared`.
    state: &'static str,
    /// The connector filtered on (its id), or empty for all.
    connector: String,
    /// Every connector, `(id, name)`, for the filter.
    connectors: Vec<(String, String)>,
    /// The next page's address, when there may be one.
    next: Option<String>,
    /// Whether this page continues an earlier one (then it offers the first page).
    paged: bool,
}

/// `GET /alarms?state=&connector=&cursor=`.
pub async fn list(ctx: Ctx, State(state): State<AppState>, q: QueryPairs) -> UiResult {
    let which = match q.get("state") {
        Some("active") => "active",
        Some("cleared") => "cleared",
        _ => "all",
    };
    let connector = match q.get("connector").filter(|c| !c.is_empty()) {
        Some(c) => Some(ops::connector_id(c).or_page(&ctx)?),
        None => None,
    };
    let before = q.get("cursor").and_then(|c| c.parse::<i64>().ok());
    let (rows, next) = ops::alarms::list(
        &state,
        Listing {
            connector: connector.clone(),
            active: match which {
                "active" => Some(true),
                "cleared" => Some(false),
                _ => None,
            },
            before,
            limit: PAGE,
        },
    )
    .await
    .or_page(&ctx)?;
    let connectors: Vec<(String, String)> = state
        .store
        .list_connectors()
        .await
        .or_page(&ctx)?
        .into_iter()
        .map(|c| (c.id.to_string(), c.name))
        .collect();
    let connector = connector.map(|c| c.to_string()).unwrap_or_default();
    let next = next.map(|n| {
        let mut q = vec![("state", which.to_owned())];
        if !connector.is_empty() {
            q.push(("connector", connector.clone()));
        }
        q.push(("cursor", n.to_string()));
        format!(
            "/alarms?{}",
            serde_urlencoded::to_string(q).unwrap_or_default()
        )
    });
    let crumbs = vec![Crumb::link("Connectors", "/"), Crumb::here("Alarms")];
    Ok(ctx.page(&ListPage {
        frame: ctx.frame("Alarms", crumbs),
        rows: views(&rows, &connectors),
        state: which,
        connector,
        connectors,
        next,
        paged: before.is_some(),
    }))
}

/// One threshold as the form shows it.
pub struct Field {
    pub name: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    /// The current value ("" when the alarm is off).
    pub value: String,
    pub default: u64,
    pub max: u64,
    pub help: &'static str,
}

fn fields(s: &AlarmSettings) -> Vec<Field> {
    let v = |x: Option<u64>| x.map(|x| x.to_string()).unwrap_or_default();
    vec![
        Field {
            name: "lag_seconds",
            label: "Lag",
            unit: "seconds",
            value: v(s.lag_seconds),
            default: DEFAULTS.lag_seconds.unwrap_or(0),
            max: MAX_SECONDS,
            help: "Raised when the oldest record not yet applied on the Target is this old.",
        },
        Field {
            name: "backlog_points",
            label: "Backlog",
            unit: "records",
            value: v(s.backlog_points),
            default: DEFAULTS.backlog_points.unwrap_or(0),
            max: MAX_POINTS,
            help: "Raised when this many records wait for delivery.",
        },
        Field {
            name: "unreachable_seconds",
            label: "Peer unreachable",
            unit: "seconds",
            value: v(s.unreachable_seconds),
            default: DEFAULTS.unreachable_seconds.unwrap_or(0),
            max: MAX_SECONDS,
            help: "Raised when the encrypted session with the peer has been down this long.",
        },
        Field {
            name: "gap_points",
            label: "Data lost",
            unit: "points",
            value: v(s.gap_points),
            default: DEFAULTS.gap_points.unwrap_or(0),
            max: MAX_POINTS,
            help: "Raised when retention drops this many undelivered points (a new gap).",
        },
    ]
}

#[derive(Template)]
#[template(path = "settings_alarms.html")]
struct SettingsPage {
    frame: Frame,
    c: ConnView,
    tab: &'static str,
    fields: Vec<Field>,
    rows: Vec<AlarmView>,
    /// The field a refused save named (`?invalid=`): marked and focused.
    invalid: String,
}

/// `GET /connectors/{cid}/settings/alarms[?invalid=FIELD]`.
pub async fn settings(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(cid): Path<String>,
    q: QueryPairs,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let s = ops::alarms::thresholds(&state, &c.id).await.or_page(&ctx)?;
    let (rows, _) = ops::alarms::list(
        &state,
        Listing {
            connector: Some(c.id.clone()),
            active: None,
            before: None,
            limit: 10,
        },
    )
    .await
    .or_page(&ctx)?;
    let names = vec![(c.id.to_string(), c.name.clone())];
    let mut crumbs = connector_crumbs(&c);
    crumbs.push(Crumb::link(
        "Settings",
        format!("/connectors/{}/settings", c.id),
    ));
    crumbs.push(Crumb::here("Alarms"));
    Ok(ctx.page(&SettingsPage {
        frame: ctx.frame(format!("{} · Alarms", c.name), crumbs),
        c: ConnView::new(&state, &c),
        tab: "settings",
        fields: fields(&s),
        rows: views(&rows, &names),
        invalid: q.get("invalid").unwrap_or_default().to_owned(),
    }))
}

/// `POST /connectors/{cid}/settings/alarms`: the four thresholds, each a whole number or
/// empty (that alarm off); all are checked before any is stored.
pub async fn set(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(cid): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let back = format!("/connectors/{}/settings/alarms", c.id);
    let mut patch = Patch::default();
    for f in fields(&AlarmSettings::default()) {
        let raw = form
            .iter()
            .find(|(k, _)| k == f.name)
            .map_or("", |(_, v)| v.trim());
        let value = match raw {
            "" => None,
            raw => match raw.parse::<u64>() {
                Ok(n) if (1..=f.max).contains(&n) => Some(n),
                _ => {
                    return Ok(flash_error_redirect(
                        &format!("{back}?invalid={}", f.name),
                        &format!(
                            "{} must be a whole number of {} from 1 to {}, not {raw:?}; leave it \
                             empty to turn the alarm off. Nothing was changed.",
                            f.label, f.unit, f.max
                        ),
                    ));
                }
            },
        };
        let slot = match f.name {
            "lag_seconds" => &mut patch.lag_seconds,
            "backlog_points" => &mut patch.backlog_points,
            "unreachable_seconds" => &mut patch.unreachable_seconds,
            _ => &mut patch.gap_points,
        };
        *slot = Some(value);
    }
    Ok(
        match ops::alarms::set_thresholds(&state, &c.id, patch).await {
            Ok(_) => flash_redirect(&back, "Alarm thresholds saved; they apply within a second."),
            Err(e) => flash_error_redirect(&back, &format!("Nothing was changed: {e}")),
        },
    )
}
