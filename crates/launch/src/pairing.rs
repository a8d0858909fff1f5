//! Pairing two sites' connectors through their public APIs (docs/api.md, docs/spec.md §4), the way the
//! end-to-end tests and the benchmark do it: the Source creates a connector and opens its
//! pairing window, the Target creates its connector with the Source's address and code.
//!
//! Deliberately absent: waiting for the encrypted session to come up (callers that need it
//! poll for it), and any assertion on the answers beyond their status; tests of the pairing
//! itself assert on the raw answers of [`enable`], [`source`] and [`request_target`].

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::Api;

/// Opens the pairing window of connector `cid` (it must answer 2xx): the answer, with the
/// `pairing_code`, the Source's `site` and `connector_id`, `expires_at`.
pub async fn enable(api: &Api, cid: &str) -> anyhow::Result<Value> {
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/remote-sync/enable"),
        json!({}),
    )
    .await
}

/// Creates a connector `name` and opens its pairing window: its id and [`enable`]'s answer.
pub async fn source(api: &Api, name: &str) -> anyhow::Result<(String, Value)> {
    let c = api
        .post_ok("/api/v1/connectors", json!({"name": name}))
        .await?;
    let cid = c["id"].as_str().context("connector id")?.to_owned();
    let e = enable(api, &cid).await?;
    Ok((cid, e))
}

/// Asks the site behind `target` to create a Target connector `name` paired with connector
/// `cid` of site `site`, using `code`: the raw answer, refusals included.
pub async fn request_target(
    target: &Api,
    name: &str,
    site: &str,
    cid: &str,
    code: &str,
) -> anyhow::Result<(StatusCode, Value)> {
    let body = json!({"name": name, "remote_sync_target":
                      {"remote_site": site, "remote_connector_id": cid, "pairing_code": code}});
    target.post("/api/v1/connectors", body).await
}

/// Like [`request_target`], but the site must create the Target connector (answer 2xx):
/// the new connector.
pub async fn target(
    target: &Api,
    name: &str,
    site: &str,
    cid: &str,
    code: &str,
) -> anyhow::Result<Value> {
    let (s, t) = request_target(target, name, site, cid, code).await?;
    anyhow::ensure!(s.is_success(), "POST /api/v1/connectors: {s} {t}");
    Ok(t)
}

/// Pairs a new Source connector `name` on `source_api`'s site with a new Target connector
/// `<name>-copy` on `target_api`'s site: (Source id, Target id). The pairing is stored on
/// both sides when this returns; the encrypted session may not be up yet.
pub async fn pair(
    source_api: &Api,
    target_api: &Api,
    name: &str,
) -> anyhow::Result<(String, String)> {
    let (cid, e) = source(source_api, name).await?;
    let site = e["site"].as_str().context("the Source's site name")?;
    let code = e["pairing_code"].as_str().context("the pairing code")?;
    let t = target(target_api, &format!("{name}-copy"), site, &cid, code).await?;
    let tid = t["id"].as_str().context("target id")?.to_owned();
    Ok((cid, tid))
}
