//! Connector pages: the connector list (home), the Create a Connector form with its
//! Remote-Sync Target toggle, and the Settings tab with its General and Remote-Sync sub-tabs.
//!
//! The Remote-Sync tab's figures all come from one status of the connector's sync driver
//! (`peers::status::SyncStatus`), in plural-aware words; a Source shows its Target's
//! progress from the Target's acknowledgements, and a Target the points that wait for a
//! resource it does not have, with a **Create** button each (the Source's page asks the
//! Target for them live, from `app.js`, through `GET …/remote-sync/waiting`).

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::response::Response;
use proto::model::{Role, SyncState};
use serde::Deserialize;
use store::Connector;

use super::error_page::{OrPage, UiResult, connector_crumbs, load_connector, status_of};
use super::frame::{Crumb, Frame, see_other};
use super::session::Ctx;
use super::session::{flash_error_redirect, flash_redirect};
use super::view::When;
use crate::api::render::remote_sync_json;
use crate::ops;
use crate::ops::connectors::{ConnectorChange, NewConnector, PairWith};
use crate::state::AppState;

/// A connector as its pages show it.
pub struct ConnView {
    pub id: String,
    pub name: String,
    pub description: String,
    /// `none`, `source` or `target`.
    pub role: &'static str,
    /// `disabled`, `pairing` or `paired`.
    pub sync_state: &'static str,
    pub peer_site: String,
    pub peer_connector: String,
    pub created: When,
    pub paired_since: Option<When>,
    pub pairing_expires_us: Option<i64>,
    pub devices: u64,
    pub resources: u64,
    /// For paired connectors: whether the peer is reachable and how far behind it is.
    pub link: Option<LinkView>,
    /// A paired Source whose Target has not opened its first session yet: until it does,
    /// the operator may cancel the pairing (its Confirm may have been lost, leaving the
    /// Target without a connector).
    pub unconfirmed: bool,
}

pub struct LinkView {
    pub class: &'static str,
    pub words: String,
}

impl ConnView {
    pub fn new(state: &AppState, c: &Connector) -> Self {
        let rs = remote_sync_json(state, c);
        let unconfirmed = c.role == Role::Source && rs["confirmed"] == false;
        let peer_site = c.peer.as_ref().map(|p| p.site.clone()).unwrap_or_default();
        let link = rs.get("link").map(|l| {
            let connected = l["connected"].as_bool().unwrap_or(false);
            let lag = l["lag_seconds"].as_f64().unwrap_or(0.0);
            if unconfirmed && !connected {
                LinkView {
                    class: "warn",
                    words: format!("waiting for {peer_site} to connect for the first time"),
                }
            } else if let Some(problem) = l["version_mismatch"]["problem"].as_str() {
                let m = &l["version_mismatch"];
                LinkView {
                    class: "bad",
                    words: format!(
                        "{problem} of West (sync protocol {}, this site {}): nothing syncs until both sites run the same version",
                        m["peer_sync_version"], m["sync_version"]
                    ),
                }
            } else if l["session_stalled"] == true {
                let secs = l["session_down_seconds"].as_f64().unwrap_or(0.0);
                LinkView {
                    class: "bad",
                    words: format!(
                        "no encrypted session for {secs:.0} s although the hub link is up: still trying; both sites' logs say why"
                    ),
                }
            } else if connected {
                LinkView {
                    class: if lag > 60.0 { "warn" } else { "ok" },
                    words: format!("connected · lag {lag:.0} s"),
                }
            } else {
                LinkView {
                    class: "bad",
                    words: "peer unreachable".into(),
                }
            }
        });
        Self {
            id: c.id.to_string(),
            name: c.name.clone(),
            description: c.description.clone(),
            role: c.role.as_str(),
            sync_state: c.state.as_str(),
            peer_site,
            peer_connector: c
                .peer
                .as_ref()
                .map(|p| p.connector_id.to_string())
                .unwrap_or_default(),
            created: When::at(c.created_at),
            paired_since: c.paired_at.map(When::at),
            pairing_expires_us: c.pairing_expires_at,
            devices: c.device_count,
            resources: c.resource_count,
            link,
            unconfirmed,
        }
    }

    pub fn paired(&self) -> bool {
        self.sync_state == SyncState::Paired.as_str()
    }
}

#[derive(Template)]
#[template(path = "connectors.html")]
struct ListPage {
    frame: Frame,
    connectors: Vec<ConnView>,
}

pub async fn list(ctx: Ctx, State(state): State<AppState>) -> UiResult {
    let all = state.store.list_connectors().await.or_page(&ctx)?;
    Ok(ctx.page(&ListPage {
        frame: ctx.frame("Connectors", vec![Crumb::here("Connectors")]),
        connectors: all.iter().map(|c| ConnView::new(&state, c)).collect(),
    }))
}

/// The fields of the Create a Connector form, kept to fill the form in again after a refusal.
#[derive(Deserialize, Default)]
pub struct CreateForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    /// Present ("on") when the Enable Remote-Sync Target toggle is on.
    target: Option<String>,
    #[serde(default)]
    remote_site: String,
    #[serde(default)]
    remote_connector_id: String,
    #[serde(default)]
    pairing_code: String,
}

#[derive(Template)]
#[template(path = "connector_new.html")]
struct NewPage {
    frame: Frame,
    form: CreateForm,
    error: Option<String>,
    /// The id of the field the refusal is about (marked and focused), or empty.
    error_field: &'static str,
}

/// Which field of the Create a Connector form a refusal is about.
fn error_field(e: &ops::Error) -> &'static str {
    use ops::Error as E;
    let m = e.to_string();
    match e {
        E::PairingCodeWrong(_) | E::PairingExpired(_) => "pairing-code",
        _ if m.starts_with("connector name") || m.starts_with("a connector named") => "name",
        _ if m.starts_with("description") => "description",
        _ if m.starts_with("connector id") || m.contains("has no connector") => {
            "remote-connector-id"
        }
        E::Invalid(_) | E::NotFound(_) | E::PeerOffline(_) if m.contains("site") => "remote-site",
        _ => "",
    }
}

fn new_frame(ctx: &Ctx) -> Frame {
    ctx.frame(
        "Create a Connector",
        vec![
            Crumb::link("Connectors", "/"),
            Crumb::here("Create a Connector"),
        ],
    )
}

pub async fn new_page(ctx: Ctx) -> Response {
    ctx.page(&NewPage {
        frame: new_frame(&ctx),
        form: CreateForm::default(),
        error: None,
        error_field: "",
    })
}

pub async fn create(
    ctx: Ctx,
    State(state): State<AppState>,
    Form(form): Form<CreateForm>,
) -> Response {
    let new = NewConnector {
        name: form.name.clone(),
        description: form.description.trim().to_owned(),
        pair_with: form.target.is_some().then(|| PairWith {
            remote_site: form.remote_site.trim().to_owned(),
            remote_connector_id: form.remote_connector_id.trim().to_owned(),
            pairing_code: form.pairing_code.trim().to_owned(),
        }),
    };
    match ops::connectors::create(&state, new).await {
        Ok(c) => flash_redirect(
            &format!("/connectors/{}/devices", c.id),
            &format!("Connector {} created.", c.name),
        ),
        Err(e) => {
            let mut resp = ctx.page(&NewPage {
                frame: new_frame(&ctx),
                form,
                error: Some(super::view::sentence(&e.to_string())),
                error_field: error_field(&e),
            });
            *resp.status_mut() = status_of(&e);
            resp
        }
    }
}

pub async fn home(Path(cid): Path<String>) -> Response {
    see_other(&format!("/connectors/{cid}/devices"))
}

#[derive(Template)]
#[template(path = "settings_general.html")]
struct GeneralPage {
    frame: Frame,
    c: ConnView,
    tab: &'static str,
    /// The Name and description form: the stored values, or what a refused save sent.
    form: EditForm,
    error: Option<String>,
    /// The id of the field the refusal is about (marked and focused), or empty.
    error_field: &'static str,
}

/// The General tab's Name and description form.
#[derive(Deserialize, Default)]
pub struct EditForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
}

fn general_page(
    ctx: &Ctx,
    state: &AppState,
    c: &Connector,
    form: EditForm,
    error: Option<&ops::Error>,
) -> Response {
    let mut crumbs = connector_crumbs(c);
    crumbs.push(Crumb::here("Settings"));
    let mut resp = ctx.page(&GeneralPage {
        frame: ctx.frame(format!("{} · Settings", c.name), crumbs),
        c: ConnView::new(state, c),
        tab: "settings",
        form,
        error: error.map(|e| super::view::sentence(&e.to_string())),
        error_field: error.map_or("", error_field),
    });
    if let Some(e) = error {
        *resp.status_mut() = status_of(e);
    }
    resp
}

pub async fn settings(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(cid): Path<String>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let form = EditForm {
        name: c.name.clone(),
        description: c.description.clone(),
    };
    Ok(general_page(&ctx, &state, &c, form, None))
}

/// `POST /connectors/{cid}/settings`: rename and re-describe. A refusal shows the page
/// again with what was typed, the sentence, and the field it is about focused.
pub async fn update(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(cid): Path<String>,
    Form(form): Form<EditForm>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let change = ConnectorChange {
        name: Some(form.name.clone()),
        description: Some(form.description.trim().to_owned()),
    };
    Ok(match ops::connectors::update(&state, &c.id, change).await {
        Ok(saved) => flash_redirect(
            &format!("/connectors/{}/settings", saved.id),
            &if saved.name == c.name {
                format!("Connector {} saved.", saved.name)
            } else {
                format!("Connector {} renamed to {}.", c.name, saved.name)
            },
        ),
        Err(e) => general_page(&ctx, &state, &c, form, Some(&e)),
    })
}

#[derive(Template)]
#[template(path = "settings_remote.html")]
struct RemotePage {
    frame: Frame,
    c: ConnView,
    tab: &'static str,
    /// ENABLE REMOTE-SYNC needs the hub: pairing is a rendezvous through it.
    hub_connected: bool,
    site: String,
    /// The one-time code while the countdown runs.
    pairing_code: Option<String>,
    /// The length of the pairing window in words ("10 minutes").
    window_words: String,
    /// While the countdown runs: how many of the tries the Target has used, in words.
    tries: String,
    /// Whether the wrong codes tried so far call for the operator's attention.
    tries_warn: bool,
    /// On a standalone connector whose last window closed without a pairing: how and when.
    last_window: Option<(String, When)>,
    /// Progress of the data stream, for a paired connector.
    sync: Option<SyncView>,
    /// The Send history again form and the backfill's progress.
    backfill: super::backfill::Part,
}

/// What the Remote-Sync tab says under its chart when the rate history covers less than the
/// hour it shows (it is kept in memory and starts empty when the site starts); `None` once it
/// covers the hour. `kept_since` and `now` are µs.
fn history_note(kept_since: Option<i64>, now: i64) -> Option<String> {
    let hour = i64::try_from(
        (crate::peers::status::HISTORY_EVERY * crate::peers::status::HISTORY_LEN as u32)
            .as_micros(),
    )
    .unwrap_or(i64::MAX);
    let covered = match kept_since {
        Some(since) if now.saturating_sub(since) >= hour => return None,
        Some(since) => match now.saturating_sub(since).max(0) / 60_000_000 {
            0 => "less than a minute".to_owned(),
            1 => "only the last minute".to_owned(),
            m => format!("only the last {m} min"),
        },
        None => "nothing yet".to_owned(),
    };
    Some(format!(
        "The charts cover {covered}: this site keeps the last hour of rates in memory, so \
         the history starts empty whenever the site restarts."
    ))
}

/// The Remote-Sync tab's figures, rendered as text, every one from the same status of the
/// sync driver. On a Source the Target's progress comes from its acknowledgements.
struct SyncView {
    /// Why the chart covers less than an hour, if it does.
    history_note: Option<String>,
    /// Records still to deliver, in words ("none", "1 point").
    backlog: String,
    /// Age of the oldest of them, in words.
    lag: String,
    /// What the outbox holds on disk (Source), when it holds anything.
    outbox: Option<String>,
    rates: String,
    eta: String,
    /// Who applied up to where: "site-b has applied 1,200 of 1,250".
    applied: String,
    /// When that last moved: a `<time>` (local time, like every time of the UI), or why
    /// there is none.
    applied_at: Option<When>,
    applied_never: &'static str,
    /// Points waiting here (a Target) for resources that do not exist.
    waiting: Vec<WaitingRow>,
    gaps: Vec<GapView>,
    /// The bandwidth budget in bytes/s as the form shows it ("" for none).
    budget: String,
    /// The live lane and the backlog behind it, while the backlog drains.
    lanes: Option<LanesView>,
}

/// The two lanes of the Remote-Sync tab (docs/sync.md, "Two lanes").
struct LanesView {
    live: String,
    backlog: String,
    /// When the oldest record of the backlog was written (a `<time>`).
    oldest: Option<When>,
}

/// Points waiting on a Target for a resource it does not have: "6 points of `pressure` …".
pub struct WaitingRow {
    pub resource: String,
    pub format: &'static str,
    /// "6 points", "1 point".
    pub points: String,
    /// "2 devices".
    pub devices: String,
}

impl WaitingRow {
    pub fn new(w: &proto::lookup::WaitingView) -> Self {
        Self {
            resource: w.resource.to_string(),
            format: w.format.as_str(),
            points: super::view::count(w.points, "point"),
            devices: super::view::count(w.devices, "device"),
        }
    }
}

struct GapView {
    resource: String,
    devices: u64,
    points: u64,
    from: When,
    until: When,
    detected: When,
    reason: &'static str,
}

/// The figures of the Remote-Sync tab from one status of the driver.
fn sync_figures(s: &crate::peers::status::SyncStatus, role: Role, peer: &str) -> SyncView {
    use super::view::{count, thousands};
    let source = role != Role::Target;
    let backlog = if s.backlog_points == 0 {
        "none: everything is delivered".to_owned()
    } else if source {
        format!(
            "{} still to deliver to {peer}",
            count(s.backlog_points, "point")
        )
    } else {
        format!(
            "{} still to come from {peer}",
            count(s.backlog_points, "point")
        )
    };
    let lag = if s.backlog_points == 0 {
        "none".to_owned()
    } else {
        format!("{:.1} s (the oldest point not yet applied)", s.lag_seconds)
    };
    let outbox = (source && s.outbox_bytes > 0).then(|| {
        format!(
            "{} in {} on disk: a partition is deleted once {peer} applied all of it",
            super::view::bytes_text(s.outbox_bytes),
            count(s.outbox_partitions, "partition"),
        )
    });
    let rates = if source {
        format!(
            "sending {} points/s · {peer} applies {} points/s",
            thousands(s.send_rate.round() as u64),
            thousands(s.peer_apply_rate.round() as u64)
        )
    } else {
        format!(
            "applying {} points/s",
            thousands(s.apply_rate.round() as u64)
        )
    };
    let (applied, applied_at, applied_never) = if source {
        (
            format!(
                "{peer} has applied {} of {}",
                thousands(s.acked),
                thousands(s.outbox_head)
            ),
            s.peer_applied_at.map(When::at),
            "nothing since this site started",
        )
    } else {
        (
            format!("this site has applied {} from {peer}", thousands(s.applied)),
            s.last_applied_at.map(When::at),
            "never",
        )
    };
    let lanes = s.live_from.map(|from| LanesView {
        live: format!(
            "new points go first, from #{}; {} behind",
            thousands(from),
            count(s.live_lag_points, "point")
        ),
        backlog: format!(
            "{}{} catching up behind it at {} points/s, {}",
            count(s.catchup_points, "point"),
            s.catchup_bytes
                .map(|b| format!(" ({})", super::view::bytes_text(b)))
                .unwrap_or_default(),
            thousands(s.catchup_rate.round() as u64),
            match s.catchup_eta_seconds {
                Some(secs) => format!("about {secs:.0} s to go"),
                None => "not moving".into(),
            }
        ),
        oldest: s.catchup_oldest_at.map(When::at),
    });
    SyncView {
        lanes,
        history_note: None,
        backlog,
        lag,
        outbox,
        rates,
        eta: match s.eta_seconds {
            Some(secs) => format!("about {secs:.0} s"),
            None if s.backlog_points == 0 => "caught up".into(),
            None => "not moving".into(),
        },
        applied,
        applied_at,
        applied_never,
        waiting: Vec::new(),
        gaps: Vec::new(),
        budget: String::new(),
    }
}

async fn sync_view(state: &AppState, c: &Connector) -> Option<SyncView> {
    if c.state != SyncState::Paired {
        return None;
    }
    let s = state.remote.sync.status(&c.id).unwrap_or_default();
    let gaps = state.store.sync_gaps(&c.id).await.unwrap_or_default();
    let kept_since = state.remote.sync.history(&c.id).map(|h| h.since());
    let peer = c.peer.as_ref().map(|p| p.site.as_str()).unwrap_or_default();
    let mut view = sync_figures(&s, c.role, peer);
    view.history_note = history_note(kept_since, crate::clock::now_micros());
    view.budget = ops::budget::get(state, &c.id)
        .await
        .ok()
        .flatten()
        .map_or_else(String::new, |b| b.to_string());
    if c.role == Role::Target {
        view.waiting = ops::peer::waiting_here(state, &c.id)
            .await
            .unwrap_or_default()
            .iter()
            .map(WaitingRow::new)
            .collect();
    }
    view.gaps = gaps
        .iter()
        .rev()
        .map(|g| GapView {
            resource: g.resource.to_string(),
            devices: g.devices,
            points: g.points,
            from: When::at(g.from_us),
            until: When::at(g.until_us),
            detected: When::at(g.detected_at),
            reason: match g.reason {
                store::GapReason::Retention => "the Source's retention expired",
                store::GapReason::PendingExpired => "no such resource here in time",
                store::GapReason::Format => "value does not fit the resource format",
            },
        })
        .collect();
    Some(view)
}

/// "No wrong code yet", "2 of 5 tries used": the Target's wrong codes the window answered.
fn tries_words(used: u32) -> String {
    let max = u32::from(proto::pairing::MAX_ATTEMPTS);
    match used {
        0 => format!("No wrong code yet: {max} tries."),
        n if n >= max => format!("All {max} tries used."),
        n => format!(
            "{n} of {max} tries used: {} wrong code{} entered on the Target site; {} left.",
            n,
            if n == 1 { " was" } else { "s were" },
            super::view::count(u64::from(max - n), "try")
        ),
    }
}

/// How the last pairing window ended, as the sentence before its time.
fn ended_words(end: &crate::peers::windows::WindowEnded) -> String {
    use crate::peers::windows::WindowEnd;
    let max = proto::pairing::MAX_ATTEMPTS;
    let wrong = match end.failed_attempts {
        0 => String::new(),
        1 => " after 1 wrong code was tried".to_owned(),
        n => format!(" after {n} wrong codes were tried"),
    };
    match end.why {
        WindowEnd::Expired => format!(
            "The last pairing window expired with no Target paired{wrong}. Enable Remote-Sync              again for a new code, and enter it on the Target site before the countdown ends."
        ),
        WindowEnd::TooManyAttempts => format!(
            "The last pairing window closed after {max} wrong codes: the code was mistyped or              someone guessed. Enable Remote-Sync again for a new code and check that it is              entered exactly."
        ),
        WindowEnd::Cancelled => format!("The last pairing window was cancelled{wrong}."),
    }
}

pub async fn remote_sync(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(cid): Path<String>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let used = if c.state == SyncState::Pairing {
        ops::pairing::attempts_used(&state, &c.id).await
    } else {
        0
    };
    let last_window = (c.state == SyncState::Disabled)
        .then(|| state.pairings.ended(&c.id))
        .flatten()
        .map(|end| (ended_words(&end), When::at(end.at)));
    let mut crumbs = connector_crumbs(&c);
    crumbs.push(Crumb::link(
        "Settings",
        format!("/connectors/{}/settings", c.id),
    ));
    crumbs.push(Crumb::here("Remote-Sync"));
    Ok(ctx.page(&RemotePage {
        frame: ctx.frame(format!("{} · Remote-Sync", c.name), crumbs),
        c: ConnView::new(&state, &c),
        tab: "settings",
        hub_connected: state.link.state().connected(),
        site: state.site_name.clone(),
        pairing_code: state
            .store
            .pairing_window(&c.id)
            .await
            .ok()
            .flatten()
            .map(|w| w.code),
        sync: sync_view(&state, &c).await,
        backfill: super::backfill::part(&state, &c, None, false).await,
        window_words: ops::pairing::window_words(state.pairing_window),
        tries: tries_words(used),
        tries_warn: used > 0,
        last_window,
    }))
}

/// ENABLE REMOTE-SYNC: starts the countdown and shows the code on the Remote-Sync tab.
pub async fn enable_remote_sync(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(cid): Path<String>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let back = format!("/connectors/{}/settings/remote-sync", c.id);
    match ops::pairing::enable(&state, &c.id).await {
        Ok(_) => Ok(flash_redirect(
            &back,
            "Pairing started: give the Target operator the site name, connector ID and code below.",
        )),
        Err(e) => Ok(flash_error_redirect(&back, &e.to_string())),
    }
}

/// Cancel on the countdown closes the pairing window; **Cancel pairing** on a paired Source
/// its Target has not confirmed yet forgets the pairing (`ops::pairing::disable` either
/// way, which refuses a confirmed pairing).
pub async fn disable_remote_sync(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(cid): Path<String>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let back = format!("/connectors/{}/settings/remote-sync", c.id);
    let done = match &c.peer {
        Some(peer) if c.state == SyncState::Paired => format!(
            "Pairing with {} cancelled: {} is a standalone connector again. Enable Remote-Sync \
             to pair it again.",
            peer.site, c.name
        ),
        _ => "Pairing cancelled.".to_owned(),
    };
    match ops::pairing::disable(&state, &c.id).await {
        Ok(_) => Ok(flash_redirect(&back, &done)),
        Err(e) => Ok(flash_error_redirect(&back, &e.to_string())),
    }
}

pub async fn delete(ctx: Ctx, State(state): State<AppState>, Path(cid): Path<String>) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    match ops::connectors::delete(&state, &c.id).await {
        Ok(()) => Ok(flash_redirect(
            "/",
            &format!("Connector {} deleted.", c.name),
        )),
        Err(e) => Ok(flash_error_redirect(
            &format!("/connectors/{}/settings", c.id),
            &e.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_of_the_name_or_description_marks_that_field() {
        let check = |e: ops::Error, field: &str| assert_eq!(error_field(&e), field, "{e}");
        let name: ops::Error = proto::model::ModelError::ConnectorName.into();
        check(name, "name");
        check(
            store::StoreError::ConnectorNameTaken("Spare".into()).into(),
            "name",
        );
        check(
            ops::Error::Invalid("description must be at most 1024 characters".into()),
            "description",
        );
        check(ops::Error::Internal, "");
    }

    #[test]
    fn the_chart_says_when_it_covers_less_than_an_hour() {
        const MIN: i64 = 60_000_000;
        let now = 1_000 * 60 * MIN;
        let check = |kept_since: Option<i64>, expected: Option<&str>| {
            let note = history_note(kept_since, now);
            match expected {
                None => assert_eq!(note, None),
                Some(covers) => {
                    let note = note.expect("a note");
                    assert!(
                        note.starts_with(&format!("The charts cover {covers}:")),
                        "{note}"
                    );
                    assert!(note.contains("starts empty whenever the site restarts"));
                }
            }
        };
        check(None, Some("nothing yet"));
        check(Some(now - 20_000_000), Some("less than a minute"));
        check(Some(now - MIN - 1), Some("only the last minute"));
        check(
            Some(now - 12 * MIN - 30_000_000),
            Some("only the last 12 min"),
        );
        check(Some(now - 60 * MIN + 1), Some("only the last 59 min"));
        check(Some(now - 60 * MIN), None);
        check(Some(now - 600 * MIN), None);
    }

    #[test]
    fn tries_and_closed_windows_are_said_in_words() {
        use crate::peers::windows::{WindowEnd, WindowEnded};
        assert_eq!(tries_words(0), "No wrong code yet: 5 tries.");
        assert_eq!(
            tries_words(1),
            "1 of 5 tries used: 1 wrong code was entered on the Target site; 4 tries left."
        );
        assert_eq!(
            tries_words(4),
            "4 of 5 tries used: 4 wrong codes were entered on the Target site; 1 try left."
        );
        let end = |why, failed_attempts| WindowEnded {
            at: 0,
            why,
            failed_attempts,
        };
        assert!(
            ended_words(&end(WindowEnd::TooManyAttempts, 5))
                .starts_with("The last pairing window closed after 5 wrong codes")
        );
        assert!(ended_words(&end(WindowEnd::Expired, 2)).starts_with(
            "The last pairing window expired with no Target paired after 2 wrong codes were tried."
        ));
        assert!(
            ended_words(&end(WindowEnd::Expired, 0))
                .starts_with("The last pairing window expired with no Target paired. Enable")
        );
        assert_eq!(
            ended_words(&end(WindowEnd::Cancelled, 1)),
            "The last pairing window was cancelled after 1 wrong code was tried."
        );
    }

    #[test]
    fn a_source_shows_its_targets_progress_in_plural_aware_words() {
        let s = crate::peers::status::SyncStatus {
            backlog_points: 1,
            lag_seconds: 2.25,
            outbox_bytes: 734_003,
            outbox_partitions: 1,
            outbox_head: 1_250,
            acked: 1_249,
            send_rate: 10.2,
            apply_rate: 0.0,
            peer_apply_rate: 9.8,
            peer_applied_at: Some(1_700_000_000_000_000),
            ..Default::default()
        };
        let v = sync_figures(&s, Role::Source, "site-b");
        assert_eq!(v.backlog, "1 point still to deliver to site-b");
        assert_eq!(v.lag, "2.2 s (the oldest point not yet applied)");
        assert_eq!(
            v.outbox.as_deref(),
            Some(
                "716.8 KiB in 1 partition on disk: a partition is deleted once site-b applied all of it"
            )
        );
        assert_eq!(v.rates, "sending 10 points/s · site-b applies 10 points/s");
        assert_eq!(v.applied, "site-b has applied 1,249 of 1,250");
        assert_eq!(v.applied_at.map(|w| w.us), Some(1_700_000_000_000_000));

        // Caught up: no backlog, no lag, whatever the outbox still holds on disk.
        let idle = crate::peers::status::SyncStatus {
            outbox_bytes: 734_003,
            outbox_partitions: 2,
            ..Default::default()
        };
        let v = sync_figures(&idle, Role::Source, "site-b");
        assert_eq!(
            (v.backlog.as_str(), v.lag.as_str()),
            ("none: everything is delivered", "none")
        );
        assert!(v.outbox.unwrap().contains("in 2 partitions"));
        assert_eq!(v.eta, "caught up");

        let t = crate::peers::status::SyncStatus {
            backlog_points: 20,
            applied: 5,
            apply_rate: 10.0,
            ..Default::default()
        };
        let v = sync_figures(&t, Role::Target, "site-a");
        assert_eq!(v.backlog, "20 points still to come from site-a");
        assert_eq!(v.rates, "applying 10 points/s");
        assert_eq!(v.applied, "this site has applied 5 from site-a");
        assert!(v.outbox.is_none() && v.applied_at.is_none());
        assert!(v.lanes.is_none(), "one lane");
    }

    #[test]
    fn a_live_lane_and_the_backlog_behind_it_show_apart() {
        let s = crate::peers::status::SyncStatus {
            backlog_points: 2_000_010,
            live_from: Some(2_000_001),
            live_lag_points: 3,
            catchup_points: 1_500_000,
            catchup_bytes: Some(3 * 1024 * 1024),
            catchup_oldest_at: Some(1_700_000_000_000_000),
            catchup_rate: 100_000.4,
            catchup_eta_seconds: Some(15.2),
            ..Default::default()
        };
        let l = sync_figures(&s, Role::Source, "site-b").lanes.unwrap();
        assert_eq!(
            l.live,
            "new points go first, from #2,000,001; 3 points behind"
        );
        assert_eq!(
            l.backlog,
            "1,500,000 points (3.0 MiB) catching up behind it at 100,000 points/s, about 15 s to go"
        );
        assert_eq!(l.oldest.map(|w| w.us), Some(1_700_000_000_000_000));
    }
}
