//! The drift check page of a paired connector (Settings › Remote-Sync › *Compare with
//! remote*): "in sync", or the devices that differ with this site's record beside the peer's
//! and the differing fields marked.
//!
//! It renders `ops::peer::diff`, the same function as `GET …/remote/diff`, once per
//! request: the operator asks for a comparison, so the page may take the lookup's timeout to
//! answer, and then says "Remote site offline" rather than waiting longer. Comparing changes
//! nothing.
//!
//! When devices differ, **Re-send these devices** posts the listed identities to
//! [`resend`], which calls `ops::peer::resend` (the same function as
//! `POST …/remote/resend`): both sites queue their record of those devices on the durable
//! sync stream, and each merges what it receives, so once delivered both hold the same
//! devices. The post redirects back to the comparison with what each side queued (or why the
//! peer could not be asked) as the page's notice, so reloading never re-sends.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use serde_json::Value as Json;

use super::connectors::ConnView;
use super::error_page::{UiResult, connector_crumbs, load_connector};
use super::frame::{Crumb, Frame};
use super::session::Ctx;
use super::session::{flash_error_redirect, flash_redirect, refusal_redirect};
use crate::api::render::{drift_json, resent_json};
use crate::ops;
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
    /// A change of the device on its way between the sites, in words: the difference may be
    /// that change in flight rather than drift.
    pub pending: Option<String>,
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
    /// The registries kept changing under the comparison (changes being delivered).
    changing: bool,
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
    let pending_here = local.is_some_and(|l| l["sync"]["pending"] == true);
    let pending_there = remote.is_some_and(|r| r["sync"]["pending"] == true);
    let pending = match (pending_here, pending_there) {
        (true, true) => {
            Some("changes made on both sites have not been applied by the other yet".to_owned())
        }
        (true, false) => Some(format!(
            "a change made on this site has not been applied by {peer} yet"
        )),
        (false, true) => Some(format!(
            "a change made on {peer} has not been applied here yet"
        )),
        (false, false) => None,
    };
    DiffRow {
        identity: d["identity"].as_str().unwrap_or_default().to_owned(),
        verdict,
        local_exists: local.is_some(),
        remote_exists: remote.is_some(),
        fields,
        pending,
    }
}

/// "1 device", "3 devices".
fn devices(n: u64) -> String {
    format!("{n} device{}", if n == 1 { "" } else { "s" })
}

/// What one side queued of the `asked` devices, for the notice after a re-send: `who` queued
/// its record of all of them, or of some (the others do not exist there).
fn queued_words(who: &str, queued: u64, asked: u64) -> String {
    if queued >= asked {
        let all = if asked == 1 {
            "it".to_owned()
        } else {
            format!("all {asked}")
        };
        format!("{who} queued its record of {all}")
    } else if queued == 0 {
        let which = if asked == 1 { "it" } else { "any of them" };
        format!("{who} has no record of {which}")
    } else {
        let missing = asked - queued;
        format!(
            "{who} queued its record of {queued} ({} not on {who})",
            if missing == 1 {
                "the other is".to_owned()
            } else {
                format!("the other {missing} are")
            }
        )
    }
}

/// The notice after re-sending `asked` devices, from `lookup::resend`'s answer
/// (`{"queued", "peer": {"queued"} | {"error"}}`); true when the peer could be asked too.
fn resend_notice(asked: u64, answer: &Json, here: &str, peer: &str) -> (String, bool) {
    let local = queued_words(here, answer["queued"].as_u64().unwrap_or(0), asked);
    match (
        answer["peer"]["queued"].as_u64(),
        answer["peer"]["error"].as_str(),
    ) {
        (Some(theirs), _) => (
            format!(
                "Re-sent {}: {local}; {}. Each site keeps the latest change of every field, so once \
                 both are delivered the two sites hold the same devices — compare again to check.",
                devices(asked),
                queued_words(peer, theirs, asked),
            ),
            true,
        ),
        (None, error) if answer["queued"].as_u64().unwrap_or(0) == 0 => (
            format!(
                "Nothing was re-sent: {local}, and {peer} could not be asked ({}).",
                error.unwrap_or("no answer").trim_end_matches('.'),
            ),
            false,
        ),
        (None, error) => (
            format!(
                "Re-sent {} from this site only: {local}, but {peer} could not be asked ({}). \
                 What {here} queued reaches {peer} once it is back; re-send then so that {peer} \
                 sends its records too.",
                devices(asked),
                error.unwrap_or("no answer").trim_end_matches('.'),
            ),
            false,
        ),
    }
}

/// `POST /connectors/{cid}/settings/remote-sync/resend`, one `identity` field per device the
/// comparison listed: re-sends them in both directions, then back to the comparison with what
/// each side queued.
pub async fn resend(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(cid): Path<String>,
    Form(fields): Form<Vec<(String, String)>>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let back = format!("/connectors/{}/settings/remote-sync/compare", c.id);
    let identities: Vec<String> = fields
        .into_iter()
        .filter(|(k, _)| k == "identity")
        .map(|(_, v)| v)
        .collect();
    if identities.is_empty() {
        return Ok(flash_error_redirect(
            &back,
            "No device was named to re-send: compare again, then re-send the devices it lists.",
        ));
    }
    let asked = identities.len() as u64;
    let peer = c.peer.as_ref().map(|p| p.site.clone()).unwrap_or_default();
    let resent = ops::peer::resend(&state, &c, &identities).await;
    Ok(match resent.map(|r| resent_json(&r)) {
        Ok(answer) => match resend_notice(asked, &answer, &state.site_name, &peer) {
            (words, true) => flash_redirect(&back, &words),
            (words, false) => flash_error_redirect(&back, &words),
        },
        Err(e) => flash_error_redirect(&back, &format!("Nothing was re-sent: {e}")),
    })
}

/// `POST /connectors/{cid}/settings/remote-sync/budget`, field `max_bytes_per_s` (empty: no
/// budget): the Source's bandwidth budget, then back to the Remote-Sync tab.
pub async fn set_budget(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(cid): Path<String>,
    Form(fields): Form<Vec<(String, String)>>,
) -> UiResult {
    let c = load_connector(&state, &ctx, &cid).await?;
    let back = format!("/connectors/{}/settings/remote-sync", c.id);
    let raw = fields
        .iter()
        .find(|(k, _)| k == "max_bytes_per_s")
        .map_or("", |(_, v)| v.trim());
    let budget = match raw {
        "" => None,
        raw => match raw.parse::<u64>() {
            Ok(b) => Some(b),
            Err(_) => {
                return Ok(refusal_redirect(
                    &back,
                    &format!(
                        "The budget was not changed: {raw:?} is not a whole number of bytes per \
                         second (leave it empty for no limit)."
                    ),
                    BUDGET_FIELD,
                    &[(BUDGET_FIELD, raw)],
                ));
            }
        },
    };
    Ok(match ops::budget::set(&state, &c.id, budget).await {
        Ok(_) => flash_redirect(
            &back,
            &match budget {
                Some(b) => format!("Bandwidth budget set: at most {b} bytes/s to the hub."),
                None => "Bandwidth budget removed: the sync sends as fast as the link allows."
                    .to_owned(),
            },
        ),
        Err(e) => refusal_redirect(
            &back,
            &format!("The budget was not changed: {e}"),
            BUDGET_FIELD,
            &[(BUDGET_FIELD, raw)],
        ),
    })
}

/// The id of the bandwidth budget's field on the Remote-Sync tab.
const BUDGET_FIELD: &str = "max-bytes-per-s";

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
        changing: false,
        local_count: 0,
        remote_count: 0,
        differing: 0,
        truncated: false,
        rows: Vec::new(),
        c: view,
    };
    match ops::peer::diff(&state, &c).await.map(|d| drift_json(&d)) {
        Ok(d) => {
            page.in_sync = d["in_sync"] == true;
            page.changing = d["changing"] == true;
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
            page.offline = matches!(e, ops::Error::PeerOffline(_));
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
        assert_eq!(row.pending, None);
    }

    #[test]
    fn a_change_in_flight_is_named() {
        let check = |here: bool, there: bool, expected: Option<&str>| {
            let d = json!({"identity": "d1", "fields": ["tags"],
                           "local": {"tags": {"a": "1"}, "sync": {"pending": here}},
                           "remote": {"tags": {"a": "2"}, "sync": {"pending": there}}});
            assert_eq!(diff_row(&d, "site-b").pending.as_deref(), expected);
        };
        check(false, false, None);
        check(
            true,
            false,
            Some("a change made on this site has not been applied by site-b yet"),
        );
        check(
            false,
            true,
            Some("a change made on site-b has not been applied here yet"),
        );
    }

    #[test]
    fn the_resend_notice_says_what_each_side_queued() {
        let check = |asked: u64, answer: Json, ok: bool, expected: &str| {
            let (words, peer_asked) = resend_notice(asked, &answer, "site-a", "site-b");
            assert_eq!(peer_asked, ok, "{words}");
            assert!(words.starts_with(expected), "{words}");
        };
        check(
            3,
            json!({"queued": 2, "peer": {"queued": 3}}),
            true,
            "Re-sent 3 devices: site-a queued its record of 2 (the other is not on site-a); \
             site-b queued its record of all 3. Each site keeps",
        );
        check(
            1,
            json!({"queued": 1, "peer": {"queued": 0}}),
            true,
            "Re-sent 1 device: site-a queued its record of it; site-b has no record of it.",
        );
        check(
            2,
            json!({"queued": 2, "peer": {"error": "site-b did not answer within 5 s."}}),
            false,
            "Re-sent 2 devices from this site only: site-a queued its record of all 2, but \
             site-b could not be asked (site-b did not answer within 5 s). What site-a queued \
             reaches site-b once it is back",
        );
        check(
            1,
            json!({"queued": 0, "peer": {"error": "remote site site-b could not answer: offline"}}),
            false,
            "Nothing was re-sent: site-a has no record of it, and site-b could not be asked \
             (remote site site-b could not answer: offline).",
        );
    }
}
