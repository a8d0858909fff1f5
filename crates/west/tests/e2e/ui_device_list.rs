//! The Devices tab of a connector with a few hundred devices, in headless Chromium against a
//! real site (#16 item 5): a search box that takes the start of an identity as well as tags
//! (a bare word used to be refused), the total and matching counts, previous and next pages,
//! and a page that scrolls as a whole (no scroll box inside it). The API's list answers the
//! same search (`prefix=`) and total.

use anyhow::{Context, ensure};
use serde_json::json;
use testkit::browser::Browser;

use crate::ui::{click, fill, shot, sign_in, wait_text};
use crate::util;

/// The identity in the first row of the list.
async fn first_row(b: &Browser) -> anyhow::Result<String> {
    let row = b.wait_for("#devices tbody tr").await?;
    Ok(row.attr("data-device").await?.unwrap_or_default())
}

#[tokio::test]
async fn the_device_list_searches_by_identity_counts_and_pages_both_ways() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let a = site.admin().await?;
    let cid = a
        .post_ok("/api/v1/connectors", json!({"name": "plant"}))
        .await?["id"]
        .as_str()
        .context("id")?
        .to_owned();
    let ids: Vec<String> = (0..120)
        .map(|i| format!("00AB{i:03}"))
        .chain((0..130).map(|i| format!("00CD{i:03}")))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let site_tag = if i % 2 == 0 { "north" } else { "south" };
        a.post_ok(
            &format!("/api/v1/connectors/{cid}/devices"),
            json!({"identity": id, "tags": {"site": site_tag}}),
        )
        .await?;
    }

    // The API: a prefix finds exactly the identities that start with it; the total counts
    // what the filter keeps, on every page.
    let list = format!("/api/v1/connectors/{cid}/devices");
    let page = a.get_ok(&format!("{list}?prefix=00CD&limit=1000")).await?;
    let got = page["devices"].as_array().context("devices")?;
    ensure!(
        got.len() == 130 && page["total"] == 130 && got[0]["identity"] == "00CD000",
        "{}",
        page["total"]
    );
    let page = a.get_ok(&format!("{list}?limit=10")).await?;
    ensure!(page["total"] == 250 && page["next"].is_string(), "{page}");

    let b = Browser::start().await?;
    sign_in(&b, &site.url, &site.opts.admin_password).await?;
    b.goto(&format!("{}/connectors/{cid}/devices", site.url))
        .await?;
    wait_text(&b, "#device-total", "250 devices").await?;
    ensure!(first_row(&b).await? == "00AB000");
    ensure!(
        b.client
            .find_all(fantoccini::Locator::Css("#prev-page"))
            .await?
            .is_empty(),
        "the first page has no previous page"
    );
    // No scroll box inside the page: the table is as tall as its rows.
    let nested = b
        .client
        .execute(
            "const w = document.querySelector('#devices').closest('.table-wrap'); \
             return [getComputedStyle(w).maxHeight, w.scrollHeight > w.clientHeight + 1];",
            vec![],
        )
        .await?;
    ensure!(nested == json!(["none", false]), "{nested}");

    // Next, next, then back twice.
    click(&b, "#next-page").await?;
    wait_text(&b, "#device-pager", "page 2").await?;
    ensure!(first_row(&b).await? == "00AB100");
    click(&b, "#next-page").await?;
    wait_text(&b, "#device-pager", "page 3").await?;
    ensure!(first_row(&b).await? == "00CD080");
    ensure!(
        b.client
            .find_all(fantoccini::Locator::Css("#next-page"))
            .await?
            .is_empty(),
        "the last page has no next page"
    );
    click(&b, "#prev-page").await?;
    wait_text(&b, "#device-pager", "page 2").await?;
    ensure!(first_row(&b).await? == "00AB100");
    click(&b, "#prev-page").await?;
    wait_text(&b, "#device-total", "250 devices").await?;
    ensure!(first_row(&b).await? == "00AB000");

    // The search box takes the start of an identity, alone or with tags.
    fill(&b, "#filter-tag", "00CD").await?;
    click(&b, "#device-filter button[type=submit]").await?;
    wait_text(&b, "#device-total", "130 of 250 devices match").await?;
    ensure!(first_row(&b).await? == "00CD000");
    fill(&b, "#filter-tag", "00CD site:north").await?;
    click(&b, "#device-filter button[type=submit]").await?;
    wait_text(&b, "#device-total", "65 of 250 devices match").await?;
    shot(&b, "70-device-list-search").await?;
    b.close().await
}

/// Item 7 of #16: a device page follows the live stream — its latest value and chart move
/// when a point is stored, without a reload.
#[tokio::test]
async fn a_device_page_follows_the_live_stream_without_a_reload() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let a = site.admin().await?;
    let cid = util::thermometers(&a, &["d1".to_owned()]).await?;
    let data = format!("/api/v1/connectors/{cid}/devices/d1/data");
    a.post_ok(&data, json!({"values": {"temperature": 20.5}}))
        .await?;
    let b = Browser::start().await?;
    sign_in(&b, &site.url, &site.opts.admin_password).await?;
    b.goto(&format!("{}/connectors/{cid}/devices/d1", site.url))
        .await?;
    b.wait_for(".device-head[data-live='open']").await?;
    b.wait_for("figure.chart svg.plot[data-last='20.5']")
        .await?;
    b.client
        .execute("window.__samePage = true; return true;", vec![])
        .await?;

    a.post_ok(&data, json!({"values": {"temperature": 42.5}}))
        .await?;
    wait_text(&b, "[data-value-of='temperature']", "42.5").await?;
    b.wait_for("figure.chart svg.plot[data-last='42.5']")
        .await?;
    let same = b
        .client
        .execute("return window.__samePage === true;", vec![])
        .await?;
    ensure!(same == json!(true), "the page was reloaded");
    shot(&b, "71-device-live").await?;
    b.close().await
}
