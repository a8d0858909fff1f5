//! Device pages: the Devices tab (filter by tag, state and last seen; Add device with its
//! one-time token), the device page (tags, permissions, configuration, latest values, a
//! chart per resource, the newest changes from the audit log), the device's changes page
//! (its whole audit log, paged) and the data view of one resource over time.
//!
//! The list is read through `ops::devices::page`, the same function as
//! `GET /api/v1/connectors/{cid}/devices`, so paging and tag filtering behave the same in
//! both. Every edit is a `DeviceChange` through `ops::devices::update`.
//!
//! Paired connectors also show the peer's side, looked up live (docs/spec.md §5): the Devices tab's
//! switch *This site / Remote site* (`?side=remote`) and the device page's *Remote view*.
//! Both render a shell that `app.js` fills from `GET …/remote/devices[/{id}]` and keeps
//! fresh, so a page never waits on the peer: an offline peer shows "Remote site offline"
//! after the lookup's timeout, never a spinner forever.
//!
//! Edits here reach the peer through the durable sync stream. Until the peer has applied a
//! device's latest change made on this site (`Device::sync_pending`), the list marks the
//! device *pending* and the device page shows a *pending* badge; on paired connectors the
//! list's rows re-render every few seconds and the badge follows the device API, so both go
//! away by themselves once the peer has it.

use std::collections::BTreeMap;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use proto::model::{Access, DeviceSort, DeviceState, Format, Identity, Permission};
use serde::Deserialize;
use serde_json::Value as Json;
use store::{Device, Resource};

use super::connectors::ConnView;
use super::error_page::{OrPage, UiError, UiResult, connector_crumbs, load_connector};
use super::frame::{Crumb, Frame};
use super::session::Ctx;
use super::session::{flash_error_redirect, flash_redirect, refusal_redirect};
use super::view::{When, count, parse_search, parse_tags, thousands, value_input, value_text};
use crate::api::render::device_json;
use crate::clock::now_micros;
use crate::error::ApiError;
use crate::ops::devices::{self as dev_ops, DeviceChange, NewDevice};
use crate::ops::{self, identity, resource_name};
use crate::state::AppState;

/// Rows of one page of the device list.
const PAGE: usize = 100;

/// Chart time ranges of the picker: URL value, label, length in µs.
const RANGES: [(&str, &str, i64); 4] = [
    ("1h", "1 h", 3_600_000_000),
    ("24h", "24 h", 86_400_000_000),
    ("7d", "7 d", 7 * 86_400_000_000),
    ("30d", "30 d", 30 * 86_400_000_000),
];

fn range_or_default(r: Option<&str>) -> &'static str {
    RANGES
        .iter()
        .find(|(k, _, _)| Some(*k) == r)
        .map_or(RANGES[0].0, |(k, _, _)| k)
}

/// One button of the time range picker.
pub struct RangeOpt {
    pub key: &'static str,
    pub label: &'static str,
    pub on: bool,
}

fn range_opts(current: &str) -> Vec<RangeOpt> {
    RANGES
        .iter()
        .map(|(key, label, _)| RangeOpt {
            key,
            label,
            on: *key == current,
        })
        .collect()
}

/// One row of the device list.
pub struct DeviceRow {
    pub identity: String,
    pub tags: Vec<(String, String)>,
    pub state: String,
    pub last_seen: Option<When>,
    /// A change to this device has not reached the peer yet.
    pub pending: bool,
}

impl DeviceRow {
    fn from_device(d: &Device) -> Self {
        Self {
            identity: d.identity.to_string(),
            tags: d.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            state: d.state.as_str().to_owned(),
            last_seen: d.last_seen().map(When::ago),
            pending: d.sync_pending,
        }
    }
}

/// The Devices tab's filter and sort, as the query string carries it.
#[derive(Deserialize, Default)]
pub struct ListFilter {
    /// The search box: the start of an identity and `key:value` tags.
    #[serde(default)]
    tag: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    seen: String,
    /// `identity` (the default), `state`, `last_seen` or `sync`.
    #[serde(default)]
    sort: String,
    /// `asc` or `desc`; empty: the column's own first order ([`first_order`]).
    #[serde(default)]
    order: String,
    cursor: Option<String>,
    /// The number of this page, for the pager's words only (paging itself is by cursor;
    /// anything but a number reads as page 2 of a page reached through a cursor).
    #[serde(default)]
    page: String,
    /// `remote` shows the peer's list (paired connectors only).
    #[serde(default)]
    side: String,
}

/// The order a column sorts in when first clicked: newest seen and pending devices first,
/// identities and states ascending.
fn first_order(sort: DeviceSort) -> bool {
    matches!(sort, DeviceSort::LastSeen | DeviceSort::Sync)
}

impl ListFilter {
    fn filtered(&self) -> bool {
        !(self.tag.is_empty() && self.state.is_empty() && self.seen.is_empty())
    }

    fn remote(&self) -> bool {
        self.side == "remote"
    }

    fn sort_key(&self) -> DeviceSort {
        DeviceSort::parse(&self.sort).unwrap_or_default()
    }

    fn descending(&self) -> bool {
        match self.order.as_str() {
            "desc" => true,
            "asc" => false,
            _ => first_order(self.sort_key()),
        }
    }

    /// The query string of this filter sorted by `sort` (`descending`), at `cursor` (none:
    /// the first page), showing page number `page`.
    fn at(&self, sort: DeviceSort, descending: bool, cursor: Option<&str>, page: usize) -> String {
        let mut pairs = vec![];
        if self.remote() {
            pairs.push(("side", "remote"));
        }
        for (k, v) in [
            ("tag", self.tag.as_str()),
            ("state", self.state.as_str()),
            ("seen", self.seen.as_str()),
        ] {
            if !v.is_empty() {
                pairs.push((k, v));
            }
        }
        if sort != DeviceSort::Identity {
            pairs.push(("sort", sort.as_str()));
        }
        if descending != first_order(sort) {
            pairs.push(("order", if descending { "desc" } else { "asc" }));
        }
        let page = page.to_string();
        if let Some(c) = cursor {
            pairs.push(("cursor", c));
            pairs.push(("page", page.as_str()));
        }
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }

    /// The number of this page (1 for the first).
    fn page_number(&self) -> usize {
        match self.cursor {
            None => 1,
            Some(_) => self.page.parse().unwrap_or(2).max(1),
        }
    }

    /// The query string of the list sorted by column `col`: the other way round when it is
    /// sorted by it already, else in the column's first order; always from the first page.
    pub fn sort_href(&self, col: &str) -> String {
        let sort = DeviceSort::parse(col).unwrap_or_default();
        let descending = if sort == self.sort_key() {
            !self.descending()
        } else {
            first_order(sort)
        };
        self.at(sort, descending, None, 1)
    }

    /// `ascending`, `descending` or `none`: the column's `aria-sort`.
    pub fn aria_sort(&self, col: &str) -> &'static str {
        match (self.sort_key().as_str() == col, self.descending()) {
            (false, _) => "none",
            (true, false) => "ascending",
            (true, true) => "descending",
        }
    }
}

#[derive(Template)]
#[template(path = "devices.html")]
struct ListPage {
    frame: Frame,
    c: ConnView,
    tab: &'static str,
    q: ListFilter,
    rows: Vec<DeviceRow>,
    next: Option<String>,
    prev: Option<String>,
    /// "5,000 devices", "12 of 5,000 devices match" (the search and the filters).
    total: Option<String>,
    page_number: usize,
    error: Option<String>,
    /// On the remote side: the API URL of the peer's page for this filter and cursor.
    remote_src: Option<String>,
    /// On the remote side: this page's query without the cursor, for the pager's links.
    remote_base: String,
}

/// The API query of the peer's list for this filter, sort and cursor (the remote side's
/// page fetches it live).
fn api_query(q: &ListFilter, tags: &[(String, String)], prefix: Option<&str>) -> String {
    let mut pairs: Vec<(&str, String)> = tags
        .iter()
        .map(|(k, v)| ("tag", format!("{k}:{v}")))
        .collect();
    if let Some(p) = prefix {
        pairs.push(("prefix", p.to_owned()));
    }
    for (k, v) in [("state", &q.state), ("seen", &q.seen)] {
        if !v.is_empty() {
            pairs.push((k, v.clone()));
        }
    }
    pairs.push(("sort", q.sort_key().as_str().to_owned()));
    let order = if q.descending() { "desc" } else { "asc" };
    pairs.push(("order", order.to_owned()));
    pairs.push(("limit", PAGE.to_string()));
    if let Some(c) = &q.cursor {
        pairs.push(("cursor", c.clone()));
    }
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// The list query of the Devices tab's search and filters (first page, identity order), or
/// the refusal of one it cannot read.
fn filters(q: &ListFilter, now: i64) -> Result<dev_ops::ListQuery, ApiError> {
    let (tags, prefix) = parse_search(&q.tag)?;
    let state = match q.state.as_str() {
        "" => None,
        s => Some(DeviceState::parse(s).ok_or_else(|| {
            ApiError::invalid_query(format!("state must be provisioned or locked, not {s:?}"))
        })?),
    };
    let seen = match q.seen.as_str() {
        "" => None,
        s => Some(dev_ops::seen_filter(s, now)?),
    };
    Ok(dev_ops::ListQuery {
        tags,
        prefix,
        state,
        seen,
        limit: PAGE as u32,
        ..dev_ops::ListQuery::default()
    })
}

/// The list query of the Devices tab's filter, sort and cursor, or the refusal of one it
/// cannot read.
fn list_query(q: &ListFilter, now: i64) -> Result<dev_ops::ListQuery, ApiError> {
    let (sort, descending) = (q.sort_key(), q.descending());
    let from = q
        .cursor
        .as_deref()
        .map(|c| dev_ops::parse_cursor(c, sort, descending))
        .transpose()?;
    Ok(dev_ops::ListQuery {
        sort,
        descending,
        from,
        ..filters(q, now)?
    })
}

pub async fn list(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(cid): Path<String>,
    Query(q): Query<ListFilter>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let mut crumbs = connector_crumbs(&c);
    crumbs.push(Crumb::here("Devices"));
    let frame = ctx.frame(format!("{} · Devices", c.name), crumbs);
    let mut rows = Vec::new();
    let (mut next, mut prev) = (None, None);
    let mut error = None;
    let mut remote_src = None;
    let remote = q.remote() && c.state == proto::model::SyncState::Paired;
    let mut total = None;
    let page_number = q.page_number();
    if remote {
        // Checked here as the local list would (the peer checks again); the peer's cursors
        // are its own, passed through.
        match filters(&q, now_micros()) {
            Err(e) => error = Some(super::view::sentence(&e.to_string())),
            Ok(f) => {
                remote_src = Some(format!(
                    "/api/v1/connectors/{}/remote/devices?{}",
                    c.id,
                    api_query(&q, &f.tags, f.prefix.as_deref())
                ));
            }
        }
    } else {
        match list_query(&q, now_micros()) {
            Err(e) => error = Some(super::view::sentence(&e.to_string())),
            Ok(query) => {
                let page = ops::devices::page(&state, &c.id, query.clone())
                    .await
                    .or_page(&ctx)?;
                let all = c.device_count;
                let matching = page.total.unwrap_or(all);
                total = Some(if query.filtered() {
                    format!(
                        "{} of {} match{}",
                        thousands(matching),
                        count(all, "device"),
                        if matching == 1 { "es" } else { "" }
                    )
                } else {
                    count(matching, "device")
                });
                rows = page.devices.iter().map(DeviceRow::from_device).collect();
                let (sort, desc) = (query.sort, query.descending);
                next = page
                    .next
                    .map(|p| q.at(sort, desc, Some(&query.cursor(&p)), page_number + 1));
                prev = page.prev.map(|p| {
                    q.at(
                        sort,
                        desc,
                        Some(&query.cursor(&p)),
                        (page_number - 1).max(1),
                    )
                });
            }
        }
    }
    let remote_base = q.at(q.sort_key(), q.descending(), None, 1);
    Ok(ctx.page(&ListPage {
        frame,
        c: ConnView::new(&state, &c),
        tab: "devices",
        q,
        rows,
        next,
        prev,
        total,
        page_number,
        error,
        remote_src,
        remote_base,
    }))
}

/// The Add device form, kept to fill it in again after a refusal.
#[derive(Deserialize, Default)]
pub struct CreateForm {
    #[serde(default)]
    identity: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    state: String,
}

#[derive(Template)]
#[template(path = "device_new.html")]
struct NewPage {
    frame: Frame,
    c: ConnView,
    tab: &'static str,
    form: CreateForm,
    error: Option<String>,
    /// The id of the field the refusal is about (marked and focused), or empty.
    error_field: &'static str,
}

#[derive(Template)]
#[template(path = "device_created.html")]
struct CreatedPage {
    frame: Frame,
    c: ConnView,
    tab: &'static str,
    identity: String,
    token: String,
    /// A new token for an existing device (the old one stopped working), not a new device.
    rotated: bool,
    /// Where the device writes its data, and how, with its token.
    start: DeviceStart,
}

/// How a device gets started: the URL of its data API and a request to copy, with its
/// token. Shown only on the response that shows the token (nothing server-side logs it).
pub struct DeviceStart {
    pub url: String,
    /// The JSON body of the example: a value of one of the connector's resources.
    pub body: String,
    /// A `curl` command that writes that value.
    pub curl: String,
    /// Whether the connector has no resource yet (the example names one to create).
    pub no_resources: bool,
}

/// A value of `format` for an example request.
fn example_value(format: Format) -> Json {
    match format {
        Format::Number => Json::from(21.5),
        Format::Integer => Json::from(1),
        Format::Boolean => Json::from(true),
        Format::String => Json::from("on"),
        Format::Json => serde_json::json!({ "mode": "eco" }),
    }
}

impl DeviceStart {
    /// The start of device `identity` of connector `cid`, on the site the browser reached
    /// at `base` (`http://host:port`), which writes `token`. The example writes a value of
    /// the first resource that is not settable (a reading), else of any resource.
    fn new(
        base: &str,
        cid: &proto::model::ConnectorId,
        identity: &str,
        token: &str,
        resources: &[Resource],
    ) -> Self {
        let url = format!("{base}/api/v1/connectors/{cid}/devices/{identity}/data");
        let example = resources
            .iter()
            .find(|r| !r.settable)
            .or_else(|| resources.first())
            .map(|r| (r.name.to_string(), example_value(r.format)));
        let no_resources = example.is_none();
        let (name, value) = example.unwrap_or_else(|| ("temperature".into(), Json::from(21.5)));
        let body = serde_json::json!({ "values": { name: value } }).to_string();
        let curl = format!(
            "curl -X POST '{url}' \\\n  -H 'Authorization: Bearer {token}' \\\n  -H 'Content-Type: application/json' \\\n  -d '{body}'"
        );
        Self {
            url,
            body,
            curl,
            no_resources,
        }
    }
}

/// The address the browser reached this site at (`http://host:port`): the `Host` of a
/// request that the cross-site guard has already checked against its `Origin`.
fn site_base(state: &AppState, headers: &axum::http::HeaderMap) -> String {
    let scheme = if state.tls { "https" } else { "http" };
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

fn new_crumbs(c: &store::Connector) -> Vec<Crumb> {
    let mut crumbs = connector_crumbs(c);
    crumbs.push(Crumb::link(
        "Devices",
        format!("/connectors/{}/devices", c.id),
    ));
    crumbs.push(Crumb::here("Add device"));
    crumbs
}

pub async fn new_page(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(cid): Path<String>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    Ok(ctx.page(&NewPage {
        frame: ctx.frame(format!("{} · Add device", c.name), new_crumbs(&c)),
        c: ConnView::new(&state, &c),
        tab: "devices",
        form: CreateForm::default(),
        error: None,
        error_field: "",
    }))
}

/// Creates the device and shows its token on this response only: it is never stored in
/// clear, so no later page can show it again.
pub async fn create(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(cid): Path<String>,
    headers: axum::http::HeaderMap,
    Form(form): Form<CreateForm>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    // Each refusal comes back with the id of the field it is about.
    let result = async {
        let tags = parse_tags(&form.tags)
            .and_then(|t| {
                proto::model::check_tags(&t)
                    .map(|()| t)
                    .map_err(ApiError::from)
            })
            .map_err(|e| (e, "device-tags"))?;
        let identity = Identity::parse(form.identity.trim())
            .map_err(|e| (ApiError::from(e), "device-identity"))?;
        let new = NewDevice {
            identity,
            tags,
            permissions: Vec::new(),
            state: DeviceState::parse(&form.state).unwrap_or_default(),
        };
        ops::devices::create(&state, &c.id, new, &ctx.actor())
            .await
            .map_err(|e| (ApiError::from(e), "device-identity"))
    }
    .await;
    match result {
        Ok((device, token)) => {
            // Read the connector again so that the tab counts include the new device.
            let c = state.store.connector(&c.id).await.unwrap_or(c);
            let resources = state.store.resources(&c.id).await.unwrap_or_default();
            let identity = device.identity.to_string();
            let start = DeviceStart::new(
                &site_base(&state, &headers),
                &c.id,
                &identity,
                &token,
                &resources,
            );
            Ok(ctx.page(&CreatedPage {
                frame: ctx.frame(format!("{} · Device created", c.name), new_crumbs(&c)),
                c: ConnView::new(&state, &c),
                tab: "devices",
                identity,
                token,
                rotated: false,
                start,
            }))
        }
        Err((e, field)) => {
            let mut resp = ctx.page(&NewPage {
                frame: ctx.frame(format!("{} · Add device", c.name), new_crumbs(&c)),
                c: ConnView::new(&state, &c),
                tab: "devices",
                form,
                error: Some(super::view::sentence(&e.to_string())),
                error_field: field,
            });
            *resp.status_mut() = e.status();
            Ok(resp)
        }
    }
}

/// A settable resource's row of the Configuration card.
pub struct ConfigRow {
    pub name: String,
    /// The id of its desired-value field (focused when a refusal is about it).
    pub id: String,
    pub format: &'static str,
    pub desired: Option<String>,
    pub reported: Option<String>,
    pub reported_at: Option<When>,
}

/// A resource's row of the Latest values card, and its chart below.
pub struct ValueRow {
    pub name: String,
    pub format: &'static str,
    pub unit: String,
    pub value: Option<String>,
    pub at: Option<When>,
    /// Numbers, integers and booleans are drawn; strings and JSON are listed in the data view.
    pub chartable: bool,
}

fn chartable(f: Format) -> bool {
    matches!(f, Format::Number | Format::Integer | Format::Boolean)
}

fn value_rows(d: &Device, resources: &[Resource]) -> Vec<ValueRow> {
    resources
        .iter()
        .map(|r| {
            let point = d.values.get(&r.name);
            ValueRow {
                name: r.name.to_string(),
                format: r.format.as_str(),
                unit: r.unit.clone().unwrap_or_default(),
                value: point.map(|p| value_text(&p.v, r.unit.as_deref())),
                at: point.map(|p| When::at(p.t)),
                chartable: chartable(r.format),
            }
        })
        .collect()
}

fn chart_rows(d: &Device, resources: &[Resource]) -> Vec<ValueRow> {
    let mut rows: Vec<ValueRow> = value_rows(d, resources)
        .into_iter()
        .filter(|r| r.chartable)
        .collect();
    // Stable: alphabetical within each group.
    rows.sort_by_key(|r| r.value.is_none());
    rows
}

/// One entry of a device's audit log as the device page lists it.
pub struct AuditRow {
    pub at: When,
    /// "admin", "admin (API token)", "site-b (peer)".
    pub by: String,
    /// `user`, `token` or `peer` (for styling and tests).
    pub by_kind: &'static str,
    /// "Created", "Changed", "Deleted", "New token".
    pub action: &'static str,
    /// One line a field: `tags.floor: 1 → 2`.
    pub changes: Vec<String>,
}

/// Entries of the audit log on the device page; the changes page shows the rest.
const AUDIT_ON_PAGE: u32 = 10;
/// Users the grant form suggests (the first by name).
const KNOWN_USERS: usize = 200;
/// Entries a page of the changes page.
const AUDIT_PER_PAGE: u32 = 50;

/// A value of a field change as the operator reads it: strings without quotes, `—` for
/// absent.
fn change_value(v: Option<&Json>) -> String {
    match v {
        None => "—".into(),
        Some(Json::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

impl AuditRow {
    fn from_entry(e: &store::AuditEntry) -> Self {
        Self {
            at: When::at(e.at),
            by: e.by.to_string(),
            by_kind: e.by.kind(),
            action: match e.action {
                store::AuditAction::Created => "Created",
                store::AuditAction::Changed => "Changed",
                store::AuditAction::Deleted => "Deleted",
                store::AuditAction::Token => "New token",
            },
            changes: e
                .changes
                .iter()
                .map(|c| match e.action {
                    store::AuditAction::Created => {
                        format!("{}: {}", c.field, change_value(c.to.as_ref()))
                    }
                    _ => format!(
                        "{}: {} → {}",
                        c.field,
                        change_value(c.from.as_ref()),
                        change_value(c.to.as_ref())
                    ),
                })
                .collect(),
        }
    }
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    frame: Frame,
    c: ConnView,
    tab: &'static str,
    identity: String,
    state: &'static str,
    created: When,
    last_seen: Option<When>,
    tags: Vec<(String, String)>,
    permissions: Vec<(String, &'static str)>,
    /// The grants' principals that name no user of this site, marked in the list.
    unknown_principals: Vec<String>,
    /// This site's users, suggested by the grant form.
    known_users: Vec<String>,
    config: Vec<ConfigRow>,
    values: Vec<ValueRow>,
    /// The drawable resources, those with data first so that the charts that matter are on
    /// screen without scrolling.
    charts: Vec<ValueRow>,
    range: &'static str,
    ranges: Vec<RangeOpt>,
    /// This site's latest change of the device has not been applied by the peer yet: the
    /// *pending* badge, which `app.js` keeps up to date from the device API.
    pending: bool,
    /// The managed fields as rendered ([`managed_fields`]): `app.js` compares them with the
    /// device API's answer and says when the device changed since (on the peer, say).
    managed: String,
    /// The newest entries of the device's audit log (the changes page has them all).
    audit: Vec<AuditRow>,
}

/// Tags, permissions, state and configuration of a device's API JSON, as one string: the
/// same text for the same fields, in the page and in `app.js` (which builds it from the
/// device API's answer the same way, `JSON.stringify([tags, permissions, state, config])`).
pub fn managed_fields(device_json: &Json) -> String {
    serde_json::json!([
        device_json["tags"],
        device_json["permissions"],
        device_json["state"],
        device_json["config"]
    ])
    .to_string()
}

/// The device page of a device that exists on the peer's site only (or nowhere).
#[derive(Template)]
#[template(path = "device_remote.html")]
struct RemoteOnlyPage {
    frame: Frame,
    c: ConnView,
    tab: &'static str,
    identity: String,
}

fn access_str(a: Access) -> &'static str {
    match a {
        Access::Read => "read",
        Access::Write => "write",
        Access::Manage => "manage",
    }
}

fn parse_access(s: &str) -> Result<Access, ApiError> {
    match s {
        "read" => Ok(Access::Read),
        "write" => Ok(Access::Write),
        "manage" => Ok(Access::Manage),
        other => Err(ApiError::invalid(format!(
            "access must be read, write or manage, not {other:?}"
        ))),
    }
}

#[derive(Deserialize)]
pub struct RangeQuery {
    range: Option<String>,
}

fn device_crumbs(c: &store::Connector, id: &Identity) -> Vec<Crumb> {
    let mut crumbs = connector_crumbs(c);
    crumbs.push(Crumb::link(
        "Devices",
        format!("/connectors/{}/devices", c.id),
    ));
    crumbs.push(Crumb::link(
        id.to_string(),
        format!("/connectors/{}/devices/{id}", c.id),
    ));
    crumbs
}

pub async fn page(
    ctx: Ctx,
    State(state): State<AppState>,
    Path((cid, id)): Path<(String, String)>,
    Query(q): Query<RangeQuery>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let id = identity(&id).or_page(&ctx)?;
    let mut crumbs = device_crumbs(&c, &id);
    if let Some(last) = crumbs.last_mut() {
        last.href = None;
    }
    let d = match state.store.device(&c.id, &id).await {
        // A device of the remote list that this site does not have: its remote view alone.
        Err(store::StoreError::DeviceNotFound(_)) if c.state == proto::model::SyncState::Paired => {
            return Ok(ctx.page(&RemoteOnlyPage {
                frame: ctx.frame(format!("{} · {}", c.name, id), crumbs),
                c: ConnView::new(&state, &c),
                tab: "devices",
                identity: id.to_string(),
            }));
        }
        other => other.or_page(&ctx)?,
    };
    let resources = state.store.resources(&c.id).await.or_page(&ctx)?;
    let audit = dev_ops::audit(&state, &c.id, Some(id.clone()), None, AUDIT_ON_PAGE)
        .await
        .or_page(&ctx)?;
    let principals: Vec<String> = d.permissions.iter().map(|p| p.principal.clone()).collect();
    let unknown_principals = ops::users::not_users(&state, &principals)
        .await
        .or_page(&ctx)?;
    let known_users = ops::users::names(&state, KNOWN_USERS).await.or_page(&ctx)?;
    let config = resources
        .iter()
        .filter(|r| r.settable)
        .map(|r| {
            let reported = d.values.get(&r.name);
            ConfigRow {
                name: r.name.to_string(),
                id: config_field(r.name.as_str()),
                format: r.format.as_str(),
                desired: d.config.get(&r.name).map(value_input),
                reported: reported.map(|p| value_text(&p.v, r.unit.as_deref())),
                reported_at: reported.map(|p| When::at(p.t)),
            }
        })
        .collect();
    Ok(ctx.page(&DevicePage {
        frame: ctx.frame(format!("{} · {}", c.name, d.identity), crumbs),
        c: ConnView::new(&state, &c),
        tab: "devices",
        identity: d.identity.to_string(),
        state: d.state.as_str(),
        created: When::at(d.created_at),
        last_seen: d.last_seen().map(When::ago),
        tags: d.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        permissions: d
            .permissions
            .iter()
            .map(|p| (p.principal.clone(), access_str(p.access)))
            .collect(),
        unknown_principals,
        known_users,
        config,
        values: value_rows(&d, &resources),
        charts: chart_rows(&d, &resources),
        range: range_or_default(q.range.as_deref()),
        ranges: range_opts(range_or_default(q.range.as_deref())),
        pending: d.sync_pending,
        managed: managed_fields(&device_json(&d)),
        audit: audit.entries.iter().map(AuditRow::from_entry).collect(),
    }))
}

#[derive(Template)]
#[template(path = "device_changes.html")]
struct ChangesPage {
    frame: Frame,
    c: ConnView,
    tab: &'static str,
    identity: String,
    audit: Vec<AuditRow>,
    /// The query string of the next (older) page.
    older: Option<String>,
}

#[derive(Deserialize)]
pub struct ChangesQuery {
    cursor: Option<String>,
}

/// `GET /connectors/{cid}/devices/{id}/changes`: the device's whole audit log, newest first,
/// a page at a time (also of a device deleted since: the log says who deleted it).
pub async fn changes(
    ctx: Ctx,
    State(state): State<AppState>,
    Path((cid, id)): Path<(String, String)>,
    Query(q): Query<ChangesQuery>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let id = identity(&id).or_page(&ctx)?;
    let page = dev_ops::audit(
        &state,
        &c.id,
        Some(id.clone()),
        q.cursor.as_deref(),
        AUDIT_PER_PAGE,
    )
    .await
    .or_page(&ctx)?;
    let mut crumbs = device_crumbs(&c, &id);
    crumbs.push(Crumb::here("Changes"));
    Ok(ctx.page(&ChangesPage {
        frame: ctx.frame(format!("{} · {} · Changes", c.name, id), crumbs),
        c: ConnView::new(&state, &c),
        tab: "devices",
        identity: id.to_string(),
        audit: page.entries.iter().map(AuditRow::from_entry).collect(),
        older: page
            .next
            .map(|n| serde_urlencoded::to_string([("cursor", n)]).unwrap_or_default()),
    }))
}

/// `POST /connectors/{cid}/devices/{id}/token`: a new token for the device, shown on this
/// response only; the old one stops working.
pub async fn new_token(
    ctx: Ctx,
    State(state): State<AppState>,
    Path((cid, id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> UiResult {
    let (c, d, back) = device_for_edit(&ctx, &state, &cid, &id).await?;
    let resources = state.store.resources(&c.id).await.or_page(&ctx)?;
    Ok(
        match ops::devices::new_token(&state, &c.id, &d.identity, &ctx.actor()).await {
            Ok(token) => {
                let mut crumbs = connector_crumbs(&c);
                crumbs.push(Crumb::link(
                    "Devices",
                    format!("/connectors/{}/devices", c.id),
                ));
                crumbs.push(Crumb::link(d.identity.to_string(), back));
                crumbs.push(Crumb::here("New token"));
                let identity = d.identity.to_string();
                let start = DeviceStart::new(
                    &site_base(&state, &headers),
                    &c.id,
                    &identity,
                    &token,
                    &resources,
                );
                ctx.page(&CreatedPage {
                    frame: ctx.frame(format!("{} · {} · New token", c.name, d.identity), crumbs),
                    c: ConnView::new(&state, &c),
                    tab: "devices",
                    identity,
                    token,
                    rotated: true,
                    start,
                })
            }
            Err(e) => flash_error_redirect(&back, &e.to_string()),
        },
    )
}

/// Loads what an edit of a device needs, and where to come back to.
async fn device_for_edit(
    ctx: &Ctx,
    state: &AppState,
    cid: &str,
    id: &str,
) -> Result<(store::Connector, Device, String), UiError> {
    let c = load_connector(state, ctx, cid).await?;
    let id = identity(id).or_page(ctx)?;
    let d = state.store.device(&c.id, &id).await.or_page(ctx)?;
    let back = format!("/connectors/{}/devices/{}", c.id, d.identity);
    Ok((c, d, back))
}

/// Which field of the device page a refusal is about (its id, marked and focused when the
/// page shows the refusal) and what was typed into that field's form (by field id), so that
/// the page fills it in again.
struct Refused<'a> {
    field: &'a str,
    typed: &'a [(&'a str, &'a str)],
}

/// Applies `patch` made `by` the operator and comes back to the device page with `done` or
/// the refusal, its field focused and its form as it was typed.
#[allow(clippy::too_many_arguments)]
async fn apply(
    state: &AppState,
    by: &store::Actor,
    c: &store::Connector,
    d: &Device,
    back: &str,
    change: Result<DeviceChange, ApiError>,
    done: &str,
    refused: Refused<'_>,
) -> Response {
    let result = match change {
        Ok(change) => ops::devices::update(state, &c.id, &d.identity, change, by)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => flash_redirect(back, done),
        Err(e) => refusal_redirect(back, &e.to_string(), refused.field, refused.typed),
    }
}

#[derive(Deserialize)]
pub struct TagForm {
    action: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

pub async fn tags(
    ctx: Ctx,
    State(state): State<AppState>,
    Path((cid, id)): Path<(String, String)>,
    Form(form): Form<TagForm>,
) -> UiResult {
    let (c, d, back) = device_for_edit(&ctx, &state, &cid, &id).await?;
    let mut tags = d.tags.clone();
    let key = form.key.trim().to_owned();
    let value = form.value.trim().to_owned();
    let mut field = "tag-key";
    let done = if form.action == "remove" {
        tags.remove(&key);
        format!("Tag {key} removed.")
    } else {
        let one: proto::model::Tags = [(key.clone(), value.clone())].into();
        if let Err(proto::model::ModelError::TagValue { .. }) = proto::model::check_tags(&one) {
            field = "tag-value";
        }
        tags.insert(key.clone(), value.clone());
        format!("Tag {key} set.")
    };
    let patch = DeviceChange {
        tags: Some(tags),
        ..DeviceChange::default()
    };
    let typed = [
        ("tag-key", form.key.as_str()),
        ("tag-value", form.value.as_str()),
    ];
    let refused = Refused {
        field,
        typed: &typed,
    };
    Ok(apply(
        &state,
        &ctx.actor(),
        &c,
        &d,
        &back,
        Ok(patch),
        &done,
        refused,
    )
    .await)
}

#[derive(Deserialize)]
pub struct PermissionForm {
    action: String,
    #[serde(default)]
    principal: String,
    #[serde(default)]
    access: String,
}

pub async fn permissions(
    ctx: Ctx,
    State(state): State<AppState>,
    Path((cid, id)): Path<(String, String)>,
    Form(form): Form<PermissionForm>,
) -> UiResult {
    let (c, d, back) = device_for_edit(&ctx, &state, &cid, &id).await?;
    let principal = form.principal.trim().to_owned();
    let mut perms: Vec<Permission> = d
        .permissions
        .iter()
        .filter(|p| p.principal != principal)
        .cloned()
        .collect();
    let mut field = "";
    let (patch, done) = if form.action == "revoke" {
        (Ok(()), format!("Access of {principal} revoked."))
    } else {
        let granted = parse_access(&form.access).map(|access| {
            perms.push(Permission {
                principal: principal.clone(),
                access,
            });
        });
        // A new grant's refusal is about who (the access is one of three choices), unless
        // the access itself was not one of them.
        if form.action == "add" {
            field = if granted.is_err() {
                "grant-access"
            } else {
                "grant-principal"
            };
        }
        // A grant may name a group or a user of the paired site (grants sync, users do
        // not): accepted, and said plainly when it names no user here, so a typo shows.
        let stranger = !ops::users::not_users(&state, std::slice::from_ref(&principal))
            .await
            .or_page(&ctx)?
            .is_empty();
        let note = if stranger {
            format!(
                " Note: {principal} is not a user on this site (a group, a user of the \
                 paired site, or a typo?); the grant is kept and marked."
            )
        } else {
            String::new()
        };
        (
            granted,
            format!("Granted {} access to {principal}.{note}", form.access),
        )
    };
    let patch = patch.map(|()| DeviceChange {
        permissions: Some(perms),
        ..DeviceChange::default()
    });
    let typed = [
        ("grant-principal", form.principal.as_str()),
        ("grant-access", form.access.as_str()),
    ];
    let refused = Refused {
        field,
        typed: if form.action == "add" { &typed } else { &[] },
    };
    Ok(apply(&state, &ctx.actor(), &c, &d, &back, patch, &done, refused).await)
}

#[derive(Deserialize)]
pub struct ConfigForm {
    action: String,
    resource: String,
    #[serde(default)]
    value: String,
}

/// Reads what the operator typed as a value of a resource of `format`: strings as typed,
/// everything else as JSON (`21.5`, `true`, `{"mode":"eco"}`); the store checks the format.
fn typed_value(format: Format, text: &str) -> Result<Json, ApiError> {
    match format {
        Format::String => Ok(Json::String(text.to_owned())),
        _ => serde_json::from_str(text.trim())
            .map_err(|_| ApiError::invalid(format!("{text:?} is not a valid {format} value"))),
    }
}

pub async fn config(
    ctx: Ctx,
    State(state): State<AppState>,
    Path((cid, id)): Path<(String, String)>,
    Form(form): Form<ConfigForm>,
) -> UiResult {
    let (c, d, back) = device_for_edit(&ctx, &state, &cid, &id).await?;
    let resources = state.store.resources(&c.id).await.or_page(&ctx)?;
    let patch = async {
        let name = resource_name(&form.resource)?;
        let r = resources
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| ApiError::not_found(format!("resource {name} does not exist")))?;
        let value = if form.action == "clear" {
            Json::Null
        } else {
            typed_value(r.format, &form.value)?
        };
        Ok(DeviceChange {
            config: Some(BTreeMap::from([(
                name,
                (!value.is_null()).then_some(value),
            )])),
            ..DeviceChange::default()
        })
    }
    .await;
    let done = if form.action == "clear" {
        format!("Desired value of {} cleared.", form.resource)
    } else {
        format!("Desired value of {} set.", form.resource)
    };
    let field = config_field(&form.resource);
    let typed = [(field.as_str(), form.value.as_str())];
    let refused = Refused {
        field: &field,
        typed: &typed,
    };
    Ok(apply(&state, &ctx.actor(), &c, &d, &back, patch, &done, refused).await)
}

/// The id of a settable resource's desired-value field on the device page.
fn config_field(resource: &str) -> String {
    format!("config-{resource}")
}

#[derive(Deserialize)]
pub struct StateForm {
    state: String,
}

pub async fn set_state(
    ctx: Ctx,
    State(state): State<AppState>,
    Path((cid, id)): Path<(String, String)>,
    Form(form): Form<StateForm>,
) -> UiResult {
    let (c, d, back) = device_for_edit(&ctx, &state, &cid, &id).await?;
    let patch = DeviceState::parse(&form.state)
        .map(|s| DeviceChange {
            state: Some(s),
            ..DeviceChange::default()
        })
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "state must be provisioned or locked, not {:?}",
                form.state
            ))
        });
    let done = format!("Device {} is now {}.", d.identity, form.state);
    let refused = Refused {
        field: "",
        typed: &[],
    };
    Ok(apply(&state, &ctx.actor(), &c, &d, &back, patch, &done, refused).await)
}

pub async fn delete(
    ctx: Ctx,
    State(state): State<AppState>,
    Path((cid, id)): Path<(String, String)>,
) -> UiResult {
    let (c, d, back) = device_for_edit(&ctx, &state, &cid, &id).await?;
    Ok(
        match ops::devices::delete(&state, &c.id, &d.identity, &ctx.actor()).await {
            Ok(()) => flash_redirect(
                &format!("/connectors/{}/devices", c.id),
                &format!("Device {} deleted.", d.identity),
            ),
            Err(e) => flash_error_redirect(&back, &e.to_string()),
        },
    )
}

#[derive(Template)]
#[template(path = "data.html")]
struct DataPage {
    frame: Frame,
    c: ConnView,
    tab: &'static str,
    identity: String,
    r: super::resources::ResView,
    latest: Option<String>,
    latest_at: Option<When>,
    chartable: bool,
    range: &'static str,
    ranges: Vec<RangeOpt>,
}

pub async fn data_view(
    ctx: Ctx,
    State(state): State<AppState>,
    Path((cid, id, name)): Path<(String, String, String)>,
    Query(q): Query<RangeQuery>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let id = identity(&id).or_page(&ctx)?;
    let name = resource_name(&name).or_page(&ctx)?;
    let d = state.store.device(&c.id, &id).await.or_page(&ctx)?;
    let resources = state.store.resources(&c.id).await.or_page(&ctx)?;
    let r = resources
        .iter()
        .find(|r| r.name == name)
        .ok_or(store::StoreError::ResourceNotFound(name))
        .or_page(&ctx)?;
    let mut crumbs = device_crumbs(&c, &id);
    crumbs.push(Crumb::here(r.name.to_string()));
    let latest = d.values.get(&r.name);
    Ok(ctx.page(&DataPage {
        frame: ctx.frame(format!("{} · {} · {}", c.name, d.identity, r.name), crumbs),
        c: ConnView::new(&state, &c),
        tab: "devices",
        identity: d.identity.to_string(),
        latest: latest.map(|p| value_text(&p.v, r.unit.as_deref())),
        latest_at: latest.map(|p| When::at(p.t)),
        chartable: chartable(r.format),
        r: super::resources::ResView::from(r),
        range: range_or_default(q.range.as_deref()),
        ranges: range_opts(range_or_default(q.range.as_deref())),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_default_to_the_first() {
        assert_eq!(range_or_default(None), "1h");
        assert_eq!(range_or_default(Some("7d")), "7d");
        assert_eq!(range_or_default(Some("1y")), "1h");
    }

    #[test]
    fn sort_links_start_over_and_turn_the_sorted_column_around() {
        let q = |query: &str| -> ListFilter { serde_urlencoded::from_str(query).unwrap() };
        let plain = q("");
        assert_eq!(plain.aria_sort("identity"), "ascending");
        assert_eq!(plain.aria_sort("state"), "none");
        assert_eq!(plain.sort_href("identity"), "order=desc");
        // Last seen and sync start newest / pending first; the filters stay, the cursor goes.
        let filtered = q("tag=00AB&state=locked&cursor=abc&page=3");
        assert_eq!(
            filtered.sort_href("last_seen"),
            "tag=00AB&state=locked&sort=last_seen"
        );
        let by_seen = q("sort=last_seen");
        assert_eq!(by_seen.aria_sort("last_seen"), "descending");
        assert_eq!(by_seen.sort_href("last_seen"), "sort=last_seen&order=asc");
        assert_eq!(
            q("side=remote").sort_href("state"),
            "side=remote&sort=state"
        );
        // The page number is words only: anything but a number is a page after the first.
        assert_eq!(filtered.page_number(), 3);
        assert_eq!(q("cursor=abc&page=x").page_number(), 2);
        assert_eq!(q("page=7").page_number(), 1);
    }

    #[test]
    fn typed_values_follow_the_format() {
        assert_eq!(typed_value(Format::String, "on").unwrap(), Json::from("on"));
        assert_eq!(
            typed_value(Format::Number, " 21.5 ").unwrap(),
            Json::from(21.5)
        );
        assert_eq!(
            typed_value(Format::Boolean, "true").unwrap(),
            Json::from(true)
        );
        assert!(typed_value(Format::Number, "warm").is_err());
    }
}
