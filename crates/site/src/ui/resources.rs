//! The Resources tab of a connector (list and Add resource, with the Remote-Sync switch on a
//! Source or a standalone connector) and the resource settings page with its Remote-Sync
//! toggle, backfill form (`backfill`) and Delete resource, whose confirmation says in words
//! what deleting means here and on the peer, with the count of points it deletes.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use proto::model::{Format, ResourceName, Role, SyncState};
use serde::Deserialize;
use store::{Connector, Resource, ResourceUsage};

use super::connectors::{ConnView, WaitingRow};
use super::error_page::{OrPage, UiError, UiResult, connector_crumbs, load_connector, status_of};
use super::frame::{Crumb, Frame};
use super::session::Ctx;
use super::session::{flash_error_redirect, flash_redirect};
use super::view::count;
use crate::ops;
use crate::ops::resources::{NewResource, ResourceChange};
use crate::state::AppState;

/// A resource as its pages show it.
pub struct ResView {
    pub name: String,
    pub format: &'static str,
    pub unit: String,
    pub settable: bool,
    pub remote_sync: bool,
}

impl From<&Resource> for ResView {
    fn from(r: &Resource) -> Self {
        Self {
            name: r.name.to_string(),
            format: r.format.as_str(),
            unit: r.unit.clone().unwrap_or_default(),
            settable: r.settable,
            remote_sync: r.remote_sync,
        }
    }
}

/// The Add resource form, kept to fill it in again after a refusal.
#[derive(Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    name: String,
    #[serde(default = "default_format")]
    format: String,
    #[serde(default)]
    unit: String,
    settable: Option<String>,
    /// Present ("on") when the Remote-Sync switch is on (not offered on a Target).
    remote_sync: Option<String>,
    /// `remote-sync`: the form was the **Create** button of a resource that points wait for
    /// on the Remote-Sync tab, which the operator returns to.
    #[serde(default)]
    back: String,
}

fn default_format() -> String {
    Format::Number.as_str().into()
}

impl Default for CreateForm {
    fn default() -> Self {
        Self {
            name: String::new(),
            format: default_format(),
            unit: String::new(),
            settable: None,
            remote_sync: None,
            back: String::new(),
        }
    }
}

#[derive(Template)]
#[template(path = "resources.html")]
struct ListPage {
    frame: Frame,
    c: ConnView,
    tab: &'static str,
    resources: Vec<ResView>,
    /// On a Target: points that wait for resources it does not have.
    waiting: Vec<WaitingRow>,
    formats: Vec<&'static str>,
    form: CreateForm,
    error: Option<String>,
}

async fn list_page(
    ctx: &Ctx,
    state: &AppState,
    cid: &str,
    form: CreateForm,
    error: Option<String>,
) -> UiResult {
    let c = load_connector(state, ctx, cid).await?;
    let resources = state.store.resources(&c.id).await.or_page(ctx)?;
    let waiting = if c.role == Role::Target {
        ops::peer::waiting_here(state, &c.id)
            .await
            .or_page(ctx)?
            .iter()
            .map(WaitingRow::new)
            .collect()
    } else {
        Vec::new()
    };
    let mut crumbs = connector_crumbs(&c);
    crumbs.push(Crumb::here("Resources"));
    Ok(ctx.page(&ListPage {
        waiting,
        frame: ctx.frame(format!("{} · Resources", c.name), crumbs),
        c: ConnView::new(state, &c),
        tab: "resources",
        resources: resources.iter().map(ResView::from).collect(),
        formats: Format::ALL.iter().map(|f| f.as_str()).collect(),
        form,
        error,
    }))
}

pub async fn list(ctx: Ctx, State(state): State<AppState>, Path(cid): Path<String>) -> UiResult {
    list_page(&ctx, &state, &cid, CreateForm::default(), None).await
}

pub async fn create(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(cid): Path<String>,
    Form(form): Form<CreateForm>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let result = async {
        let new = NewResource {
            name: ResourceName::parse(form.name.trim())?,
            format: Format::parse(&form.format)?,
            unit: Some(form.unit.clone()),
            settable: form.settable.is_some(),
            // A Target's data comes from its Source: its switch is not the operator's.
            remote_sync: c.role != Role::Target && form.remote_sync.is_some(),
        };
        ops::resources::create(&state, &c.id, new).await
    }
    .await;
    match result {
        Ok(r) if form.back == "remote-sync" => Ok(flash_redirect(
            &format!("/connectors/{}/settings/remote-sync", c.id),
            &format!(
                "Resource {} created: the points that waited for it are applied.",
                r.name
            ),
        )),
        Ok(r) => Ok(flash_redirect(
            &format!("/connectors/{}/resources", c.id),
            &format!("Resource {} created.", r.name),
        )),
        Err(e) => {
            let status = status_of(&e);
            let mut resp = list_page(&ctx, &state, &cid, form, Some(e.to_string())).await?;
            *resp.status_mut() = status;
            Ok(resp)
        }
    }
}

#[derive(Template)]
#[template(path = "resource.html")]
struct SettingsPage {
    frame: Frame,
    c: ConnView,
    tab: &'static str,
    r: ResView,
    /// The Send history again form and the backfill's progress.
    backfill: super::backfill::Part,
    /// What deleting the resource deletes and means, in words.
    delete_words: String,
}

/// `?offer=history`: Remote-Sync was just switched on and the resource has history.
#[derive(Deserialize)]
pub struct SettingsQuery {
    offer: Option<String>,
}

pub async fn settings(
    ctx: Ctx,
    State(state): State<AppState>,
    Path((cid, name)): Path<(String, String)>,
    Query(q): Query<SettingsQuery>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let wanted = ops::resource_name(&name).or_page(&ctx)?;
    let all = state.store.resources(&c.id).await.or_page(&ctx)?;
    let r = all
        .iter()
        .find(|r| r.name == wanted)
        .ok_or(store::StoreError::ResourceNotFound(wanted))
        .or_page(&ctx)?;
    let mut crumbs = connector_crumbs(&c);
    crumbs.push(Crumb::link(
        "Resources",
        format!("/connectors/{}/resources", c.id),
    ));
    crumbs.push(Crumb::here(r.name.to_string()));
    let usage = ops::resources::usage(&state, &c.id, &r.name)
        .await
        .or_page(&ctx)?;
    Ok(ctx.page(&SettingsPage {
        delete_words: delete_words(&c, r, usage, &state.site_name),
        frame: ctx.frame(format!("{} · {}", c.name, r.name), crumbs),
        c: ConnView::new(&state, &c),
        tab: "resources",
        r: ResView::from(r),
        backfill: super::backfill::part(&state, &c, Some(r), q.offer.as_deref() == Some("history"))
            .await,
    }))
}

#[derive(Deserialize)]
pub struct UpdateForm {
    #[serde(default)]
    unit: String,
    settable: Option<String>,
    remote_sync: Option<String>,
}

pub async fn update(
    ctx: Ctx,
    State(state): State<AppState>,
    Path((cid, name)): Path<(String, String)>,
    Form(form): Form<UpdateForm>,
) -> Result<Response, UiError> {
    let c = load_connector(&state, &ctx, &cid).await?;
    let name = ops::resource_name(&name).or_page(&ctx)?;
    let back = format!("/connectors/{}/resources/{}", c.id, name);
    // A Target's data comes from its Source: its Remote-Sync switch is not the operator's.
    let remote_sync = (c.role != Role::Target).then_some(form.remote_sync.is_some());
    let change = ResourceChange {
        unit: Some(Some(form.unit)),
        settable: Some(form.settable.is_some()),
        remote_sync,
    };
    let was_on = state
        .store
        .resources(&c.id)
        .await
        .ok()
        .and_then(|all| all.into_iter().find(|r| r.name == name))
        .is_some_and(|r| r.remote_sync);
    Ok(
        match ops::resources::update(&state, &c.id, &name, change).await {
            // Switched on while data exists: offer to send the history still inside the
            // retention window (the resource page then shows the offer and its progress).
            Ok(r)
                if c.role == Role::Source
                    && c.state == proto::model::SyncState::Paired
                    && !was_on
                    && r.remote_sync
                    && super::backfill::has_history(&state, &c, &r).await =>
            {
                flash_redirect(
                    &format!("{back}?offer=history"),
                    &format!("Resource {} saved: its data is sent from now on.", r.name),
                )
            }
            Ok(r) => flash_redirect(&back, &format!("Resource {} saved.", r.name)),
            Err(e) => flash_error_redirect(&back, &e.to_string()),
        },
    )
}

/// What the Delete resource confirmation says: what is deleted on this site (with the count
/// of points), and what it means for the peer of a paired connector.
fn delete_words(c: &Connector, r: &Resource, usage: ResourceUsage, site: &str) -> String {
    let name = &r.name;
    let mut words = format!(
        "Delete resource {name} and its {} from {} on {site}? This cannot be undone.",
        count(usage.points, "point"),
        count(usage.devices, "device"),
    );
    if r.settable {
        words.push_str(" The devices' configuration of it goes too.");
    }
    let peer = c.peer.as_ref().map(|p| p.site.as_str());
    match (c.role, c.state, peer) {
        (Role::Source, SyncState::Paired, Some(peer)) if r.remote_sync => words.push_str(&format!(
            " Remote-Sync of {name} stops: points already queued for {peer} are still \
             delivered, nothing written after this is sent, and {peer} keeps every point it \
             received unless it deletes its own {name} too."
        )),
        (Role::Source, SyncState::Paired, Some(peer)) => words.push_str(&format!(
            " {peer} is not affected: Remote-Sync is off for {name}, so none of its points \
             were sent there."
        )),
        (Role::Target, _, Some(peer)) => words.push_str(&format!(
            " The points received from {peer} are deleted here only: {peer} keeps its {name}, \
             and the points it sends for it from now on wait here until a resource of that \
             name exists again (creating it applies them)."
        )),
        _ => words.push_str(&format!(
            " Devices that write to {name} are refused until a resource of that name exists again."
        )),
    }
    words
}

/// `POST /connectors/{cid}/resources/{name}/delete`: the resource and its points.
pub async fn delete(
    ctx: Ctx,
    State(state): State<AppState>,
    Path((cid, name)): Path<(String, String)>,
) -> Result<Response, UiError> {
    let c = load_connector(&state, &ctx, &cid).await?;
    let name = ops::resource_name(&name).or_page(&ctx)?;
    let usage = ops::resources::usage(&state, &c.id, &name).await;
    Ok(match ops::resources::delete(&state, &c.id, &name).await {
        Ok(()) => flash_redirect(
            &format!("/connectors/{}/resources", c.id),
            &match usage {
                Ok(u) => format!(
                    "Resource {name} deleted with its {}.",
                    count(u.points, "point")
                ),
                Err(_) => format!("Resource {name} deleted."),
            },
        ),
        Err(e) => flash_error_redirect(
            &format!("/connectors/{}/resources/{name}", c.id),
            &super::view::sentence(&format!("Not deleted: {e}")),
        ),
    })
}

#[cfg(test)]
mod tests {
    use proto::model::ConnectorId;
    use store::Peer;

    use super::*;

    fn connector(role: Role, state: SyncState) -> Connector {
        Connector {
            id: ConnectorId::parse("09iolmnn8090ol").unwrap(),
            name: "plant".into(),
            description: String::new(),
            created_at: 0,
            role,
            state,
            pairing_expires_at: None,
            peer: (state == SyncState::Paired).then(|| Peer {
                site: "site-b".into(),
                connector_id: ConnectorId::parse("abcdefghijklmn").unwrap(),
            }),
            paired_at: None,
            device_count: 2,
            resource_count: 1,
            pairing_confirmed: true,
        }
    }

    fn resource(settable: bool, remote_sync: bool) -> Resource {
        Resource {
            name: ResourceName::parse("pressure").unwrap(),
            format: Format::Number,
            unit: None,
            settable,
            remote_sync,
            created_at: 0,
        }
    }

    #[test]
    fn the_delete_confirmation_says_what_it_deletes_and_means_for_the_peer() {
        let check = |c: Connector, r: Resource, points: u64, expected: &str| {
            let usage = ResourceUsage { points, devices: 1 };
            assert_eq!(delete_words(&c, &r, usage, "site-a"), expected);
        };
        let head = "Delete resource pressure and its 1,250 points from 1 device on site-a? This \
                    cannot be undone.";
        check(
            connector(Role::None, SyncState::Disabled),
            resource(false, false),
            1250,
            &format!(
                "{head} Devices that write to pressure are refused until a resource of that \
                 name exists again."
            ),
        );
        check(
            connector(Role::Source, SyncState::Paired),
            resource(true, true),
            1250,
            &format!(
                "{head} The devices' configuration of it goes too. Remote-Sync of pressure \
                 stops: points already queued for site-b are still delivered, nothing written \
                 after this is sent, and site-b keeps every point it received unless it \
                 deletes its own pressure too."
            ),
        );
        check(
            connector(Role::Source, SyncState::Paired),
            resource(false, false),
            1250,
            &format!(
                "{head} site-b is not affected: Remote-Sync is off for pressure, so none of \
                 its points were sent there."
            ),
        );
        check(
            connector(Role::Target, SyncState::Paired),
            resource(false, false),
            1,
            "Delete resource pressure and its 1 point from 1 device on site-a? This cannot be \
             undone. The points received from site-b are deleted here only: site-b keeps its \
             pressure, and the points it sends for it from now on wait here until a resource \
             of that name exists again (creating it applies them).",
        );
        // A Source still in its pairing countdown has no peer yet.
        check(
            connector(Role::Source, SyncState::Pairing),
            resource(false, true),
            0,
            "Delete resource pressure and its 0 points from 1 device on site-a? This cannot \
             be undone. Devices that write to pressure are refused until a resource of that \
             name exists again.",
        );
    }
}
