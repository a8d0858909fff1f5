//! The backfill controls (docs/ui.md): the **Send history again** form on the Remote-Sync
//! tab and on a resource's page, the offer after Remote-Sync was switched on for a resource
//! with history, and the progress bar of the connector's backfill. Everything goes through
//! `ops::backfill`, on a Target as a request to its Source.
//!
//! The part is one template (`backfill.html`) included by both pages, fed by [`Part`]; its
//! progress is a live part (`data-live-refresh`), re-rendered from the server.

use axum::Form;
use axum::extract::{Path, State};
use proto::lookup::{BackfillState, BackfillView};
use proto::model::{Role, SyncState};
use serde::Deserialize;
use store::Connector;

use super::error_page::{UiResult, load_connector};
use super::session::{Ctx, flash_error_redirect, flash_redirect, refusal_redirect};
use super::view::{When, count, thousands};
use crate::ops;
use crate::state::AppState;

/// The ranges the form offers, as `(value, words)`.
pub const RANGES: [(&str, &str); 4] = [
    ("held", "everything the Source still holds"),
    ("1h", "the last hour"),
    ("24h", "the last 24 hours"),
    ("7d", "the last 7 days"),
];

/// What the backfill part of a page shows.
pub struct Part {
    /// Whether the connector is paired (else the part is not shown).
    pub shown: bool,
    /// The connector's latest backfill.
    pub progress: Option<Progress>,
    /// Resources the form offers; empty on a resource's page (`fixed`).
    pub resources: Vec<String>,
    /// The resource of the page the part is on.
    pub fixed: Option<String>,
    /// Why the form cannot be used here, if it cannot (Remote-Sync off on a Source).
    pub why_not: Option<String>,
    /// Show the offer to send the history (Remote-Sync was just switched on).
    pub offer: bool,
    /// Where the form returns: `remote-sync` or `resource`.
    pub back: &'static str,
    /// The site that sends the points ("this site" or the Source's name).
    pub sender: String,
    /// What "held" means here ("the last 30 days").
    pub held_words: String,
    /// The range choices, `(value, words)`.
    pub ranges: Vec<(&'static str, String)>,
}

/// A backfill's progress as the bar shows it.
pub struct Progress {
    pub resource: String,
    pub since: When,
    pub until: When,
    /// `queuing`, `sending`, `done`, `cancelled` or `failed`.
    pub state: &'static str,
    /// A sentence: "1,200 of 2,400 points applied by site-b".
    pub words: String,
    /// 0–100, of the queued points applied.
    pub percent: u64,
    /// `ok`, `warn` or `bad`, the status colour.
    pub class: &'static str,
    /// Whether it still queues (then it can be cancelled).
    pub running: bool,
    /// "asked on site-b" or "asked here".
    pub asked: String,
}

impl Progress {
    fn new(v: &BackfillView, c: &Connector) -> Self {
        let peer = c.peer.as_ref().map_or("", |p| p.site.as_str());
        let target = if c.role == Role::Source {
            peer.to_owned()
        } else {
            "this site".to_owned()
        };
        let words = match v.state {
            BackfillState::Queuing => format!(
                "{} queued so far, {} applied by {target}",
                count(v.queued, "point"),
                thousands(v.applied)
            ),
            BackfillState::Failed => format!(
                "Stopped by a failure of the Source after {} (its log says why); {} applied by {target}",
                count(v.queued, "point"),
                thousands(v.applied)
            ),
            BackfillState::Cancelled => format!(
                "Cancelled after {}; {} applied by {target}",
                count(v.queued, "point"),
                thousands(v.applied)
            ),
            _ => format!(
                "{} of {} applied by {target}",
                thousands(v.applied),
                count(v.queued, "point")
            ),
        };
        let percent = match (v.applied.min(v.queued) * 100).checked_div(v.queued) {
            Some(p) => p,
            None if v.state == BackfillState::Done => 100,
            None => 0,
        };
        let asked_here = (c.role == Role::Target) == v.by_target;
        Self {
            resource: v.resource.to_string(),
            since: When::at(v.since),
            until: When::at(v.until),
            state: v.state.as_str(),
            words,
            percent,
            class: match v.state {
                BackfillState::Done => "ok",
                BackfillState::Failed => "bad",
                _ => "warn",
            },
            running: v.state.is_running(),
            asked: if asked_here {
                "asked here".into()
            } else {
                format!("asked on {peer}")
            },
        }
    }
}

/// The part for connector `c`; `fixed`: the resource of the page it is on.
pub async fn part(
    state: &AppState,
    c: &Connector,
    fixed: Option<&store::Resource>,
    offer: bool,
) -> Part {
    let shown = c.state == SyncState::Paired;
    let progress = if shown {
        ops::backfill::status(state, c)
            .await
            .ok()
            .flatten()
            .map(|v| Progress::new(&v, c))
    } else {
        None
    };
    let resources = if fixed.is_none() && shown {
        state
            .store
            .resources(&c.id)
            .await
            .unwrap_or_default()
            .into_iter()
            // A Source sends only resources with Remote-Sync on; a Target names what it
            // has, and its Source says whether that is sent.
            .filter(|r| c.role != Role::Source || r.remote_sync)
            .map(|r| r.name.to_string())
            .collect()
    } else {
        Vec::new()
    };
    let why_not = match fixed {
        Some(r) if c.role == Role::Source && !r.remote_sync => Some(format!(
            "Remote-Sync is off for {}: switch it on above to send its data, and its history with it.",
            r.name
        )),
        _ => None,
    };
    let days = state.sync.retention.as_secs() / 86_400;
    let (sender, held_words) = if c.role == Role::Source {
        (
            "this site".to_owned(),
            format!("the last {}", count(days, "day")),
        )
    } else {
        (
            c.peer.as_ref().map_or(String::new(), |p| p.site.clone()),
            "as far back as the Source's retention reaches".to_owned(),
        )
    };
    Part {
        shown,
        progress,
        resources,
        fixed: fixed.map(|r| r.name.to_string()),
        offer: offer && shown && why_not.is_none(),
        why_not,
        back: if fixed.is_some() {
            "resource"
        } else {
            "remote-sync"
        },
        sender,
        ranges: RANGES
            .iter()
            .map(|(v, w)| {
                let words = if *v == "held" {
                    format!("{w} ({held_words})")
                } else {
                    (*w).to_owned()
                };
                (*v, words)
            })
            .collect(),
        held_words,
    }
}

/// The form: `resource`, `range` (one of [`RANGES`]), `devices` (identities separated by
/// commas or spaces; empty for all) and `back`.
#[derive(Deserialize)]
pub struct StartForm {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    range: String,
    #[serde(default)]
    devices: String,
    #[serde(default)]
    back: String,
}

fn back_to(cid: &str, back: &str, resource: &str) -> String {
    match back {
        "resource" if proto::model::ResourceName::parse(resource).is_ok() => {
            format!("/connectors/{cid}/resources/{resource}")
        }
        _ => format!("/connectors/{cid}/settings/remote-sync"),
    }
}

/// `POST /connectors/{cid}/settings/remote-sync/backfill`.
pub async fn start(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(cid): Path<String>,
    Form(form): Form<StartForm>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let back = back_to(c.id.as_str(), &form.back, form.resource.trim());
    let hour = 3_600_000_000i64;
    let now = state.sync.clock.now();
    let since = match form.range.as_str() {
        "" | "held" => None,
        "1h" => Some(now - hour),
        "24h" => Some(now - 24 * hour),
        "7d" => Some(now - 7 * 24 * hour),
        other => {
            return Ok(refusal_redirect(
                &back,
                &format!("Nothing was sent: {other:?} is not a range this form offers."),
                "backfill-range",
                &typed(&form),
            ));
        }
    };
    let devices: Vec<String> = form
        .devices
        .split(|ch: char| ch == ',' || ch.is_whitespace())
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect();
    let ask = ops::backfill::Ask {
        resource: form.resource.trim().to_owned(),
        since,
        until: None,
        devices: (!devices.is_empty()).then_some(devices),
    };
    Ok(match ops::backfill::start(&state, &c.id, ask).await {
        Ok(v) => flash_redirect(
            &back,
            &format!(
                "Sending the history of {} again, from {} on; the progress is below.",
                v.resource,
                super::view::utc_text(v.since) + " UTC"
            ),
        ),
        Err(e) => refusal_redirect(
            &back,
            &format!("Nothing was sent: {e}"),
            start_field(&e),
            &typed(&form),
        ),
    })
}

/// What the Send history again form held, by field id, to fill it in again after a refusal.
fn typed(form: &StartForm) -> [(&'static str, &str); 3] {
    [
        ("backfill-resource", form.resource.as_str()),
        ("backfill-range", form.range.as_str()),
        ("backfill-devices", form.devices.as_str()),
    ]
}

/// The id of the Send history again field a refusal is about: the devices named, the
/// resource, or the range (empty when it is about none: the pairing, a backfill running).
fn start_field(e: &crate::ops::Error) -> &'static str {
    use crate::ops::Error as E;
    let m = e.to_string();
    match e {
        E::RangeNotHeld(_) => "backfill-range",
        _ if m.contains("device") => "backfill-devices",
        E::Invalid(_) | E::NotFound(_) if m.contains("resource") => "backfill-resource",
        _ if m.contains("since") || m.contains("until") => "backfill-range",
        _ => "",
    }
}

/// `POST /connectors/{cid}/settings/remote-sync/backfill/cancel`, field `back`.
pub async fn cancel(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(cid): Path<String>,
    Form(form): Form<StartForm>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let back = back_to(c.id.as_str(), &form.back, form.resource.trim());
    Ok(match ops::backfill::cancel(&state, &c.id).await {
        Ok(v) => flash_redirect(
            &back,
            &format!(
                "Backfill cancelled after {}; those still go to the Target.",
                count(v.queued, "point")
            ),
        ),
        Err(e) => flash_error_redirect(&back, &format!("Not cancelled: {e}")),
    })
}

/// Whether a resource has history on this site: a latest value among the connector's first
/// devices (at most 1,000 looked at, so the check stays cheap on a large fleet).
pub async fn has_history(state: &AppState, c: &Connector, r: &store::Resource) -> bool {
    let q = store::DeviceQuery {
        limit: 1000,
        ..Default::default()
    };
    state
        .store
        .devices(&c.id, q)
        .await
        .is_ok_and(|ds| ds.iter().any(|d| d.values.contains_key(&r.name)))
}
