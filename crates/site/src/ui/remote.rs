//! The drift check page of a paired connector (Settings › Remote-Sync › *Compare with
//! remote*): "in sync", or the devices that differ with this site's record beside the peer's
//! and the differing fields marked.
//!
//! It renders `remote::lookup::diff`, the same function as `GET …/remote/diff`, once per
//! request: the operator asks for a comparison, so the page may take the lookup's timeout to
//! answer, and then says "Remote site offline" rather than waiting longer. It changes
//! nothing: re-sending differing devices belongs to device change propagation (marked
//! `HOOK(device-sync)` in the template).

use askama::Template;
use axum::extract::{Path, State};
use serde_json::Value as Json;

use super::connectors::ConnView;
use super::{Crumb, Ctx, Frame, UiResult, connector_crumbs, load_connector};
use crate::error::ApiError;
use crate::remote::lookup;
use crate::state::AppState;

/// One field of a differing device, side by side.
pub struct FieldRow {
    pub label: &'static str,
    /// Items on this site, each marked when the other side lacks it.
    pub local: Vec<(String, bool)>,
    pub remote: Vec<(String, bool)>,
    pub differs: bool,
}

/// One differing device.
pub struct DiffRow {
    pub identity: String,
    /// What differs, in words.
    pub verdict: String,
    pub local_exists: bool,
    pub remote_exists: bool,
    pub fields: Vec<FieldRow>,
}

#[derive(Template)]
#[template(path = "remote_diff.html")]
struct DiffPage {
    frame: Frame,
    c: ConnView,
    tab: &'static str,
    /// Why the comparison could not be made (the peer is offline, say).
    failure: Option<String>,
    offline: bool,
    in_sync: bool,
    local_count: u64,
    remote_count: u64,
    differing: u64,
    truncated: bool,
    rows: Vec<DiffRow>,
}

/// A field of a `Device` answer as the items the page lists.
fn items(d: &Json, field: &str) -> Vec<String> {
    let v = &d[field];
    match field {
        "state" => v.as_str().map(str::to_owned).into_iter().collect(),
        "permissions" => {
            let mut out: Vec<String> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{}: {}",
                        p["principal"].as_str().unwrap_or_default(),
                        p["access"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            out.sort();
            out
        }
        _ => v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, x)| match x.as_str() {
                Some(s) => format!("{k}={s}"),
                None => format!("{k}={x}"),
            })
            .collect(),
    }
}

fn mark(items: &[String], other: &[String], other_exists: bool) -> Vec<(String, bool)> {
    items
        .iter()
        .map(|i| (i.clone(), other_exists && !other.contains(i)))
        .collect()
}

fn diff_row(d: &Json, peer: &str) -> DiffRow {
    let local = d.get("local");
    let remote = d.get("remote");
    let differing: Vec<&str> = d["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Json::as_str)
        .collect();
    let fields = [
        ("state", "State"),
        ("tags", "Tags"),
        ("permissions", "Permissions"),
        ("config", "Configuration"),
    ]
    .into_iter()
    .map(|(field, label)| {
        let l = local.map(|x| items(x, field)).unwrap_or_default();
        let r = remote.map(|x| items(x, field)).unwrap_or_default();
        FieldRow {
            label,
            local: mark(&l, &r, remote.is_some()),
            remote: mark(&r, &l, local.is_some()),
            differs: differing.contains(&field),
        }
    })
    .collect();
    let verdict = match d["only"].as_str() {
        Some("local") => format!("only on this site, not on {peer}"),
        Some("remote") => format!("only on {peer}, not on this site"),
        _ => format!("{} differ", differing.join(", ")),
    };
    DiffRow {
        identity: d["identity"].as_str().unwrap_or_default().to_owned(),
        verdict,
        local_exists: local.is_some(),
        remote_exists: remote.is_some(),
        fields,
    }
}

/// `GET /connectors/{cid}/settings/remote-sync/compare`.
pub async fn compare(ctx: Ctx, State(state): State<AppState>, Path(cid): Path<String>) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let mut crumbs = connector_crumbs(&c);
    crumbs.push(Crumb::link(
        "Settings",
        format!("/connectors/{}/settings", c.id),
    ));
    crumbs.push(Crumb::link(
        "Remote-Sync",
        format!("/connectors/{}/settings/remote-sync", c.id),
    ));
    crumbs.push(Crumb::here("Compare with remote"));
    let view = ConnView::new(&state, &c);
    let mut page = DiffPage {
        frame: ctx.frame(format!("{} · Compare with remote", c.name), crumbs),
        tab: "settings",
        failure: None,
        offline: false,
        in_sync: false,
        local_count: 0,
        remote_count: 0,
        differing: 0,
        truncated: false,
        rows: Vec::new(),
        c: view,
    };
    match lookup::diff(&state, &c).await {
        Ok(d) => {
            page.in_sync = d["in_sync"] == true;
            page.local_count = d["devices"]["local"].as_u64().unwrap_or(0);
            page.remote_count = d["devices"]["remote"].as_u64().unwrap_or(0);
            page.differing = d["differing"].as_u64().unwrap_or(0);
            page.truncated = d["truncated"] == true;
            page.rows = d["differences"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| diff_row(x, &page.c.peer_site))
                .collect();
        }
        Err(e) => {
            page.offline = matches!(e, ApiError::PeerOffline(_));
            page.failure = Some(e.to_string());
        }
    }
    Ok(ctx.page(&page))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differing_items_are_marked_on_both_sides() {
        let d = json!({
            "identity": "d1",
            "fields": ["tags"],
            "local": {"state": "provisioned", "tags": {"site": "north", "rack": "4"}, "permissions": [], "config": {}},
            "remote": {"state": "provisioned", "tags": {"site": "south", "rack": "4"}, "permissions": [], "config": {}},
        });
        let row = diff_row(&d, "site-b");
        assert_eq!(row.verdict, "tags differ");
        let tags = &row.fields[1];
        assert!(tags.differs && !row.fields[0].differs);
        assert_eq!(
            tags.local,
            vec![
                ("rack=4".to_owned(), false),
                ("site=north".to_owned(), true)
            ]
        );
        assert_eq!(
            tags.remote,
            vec![
                ("rack=4".to_owned(), false),
                ("site=south".to_owned(), true)
            ]
        );

        let only = json!({"identity": "d2", "only": "remote", "fields": [],
                          "remote": {"state": "locked", "tags": {}, "permissions": [{"principal": "ops", "access": "read"}], "config": {"sp": 21.5}}});
        let row = diff_row(&only, "site-b");
        assert!(!row.local_exists && row.remote_exists);
        assert_eq!(row.verdict, "only on site-b, not on this site");
        assert_eq!(row.fields[2].remote, vec![("ops: read".to_owned(), false)]);
        assert_eq!(row.fields[3].remote, vec![("sp=21.5".to_owned(), false)]);
    }
}
