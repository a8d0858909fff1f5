//! Device changes across the pair in the web UI, in headless Chromium against two real
//! paired sites: a tag set with the device page's tag form on site-a shows on site-b's device
//! page, a tag chip removed on site-b disappears from site-a's, and while site-b is down an
//! edit on site-a is marked *pending* (the device page's badge, the Devices tab's mark) until
//! site-b is back and has applied it; both marks then go away without a reload. The device
//! page's Changes section (the audit log) names who made each change, site-b's as the
//! peer's. A device page left open follows the peer's changes of tags, permissions, state
//! and configuration in place, keeps what the operator is typing (and then offers a
//! reload), and says when the device was deleted under it.
//!
//! Screenshots land in `target/ui-screenshots/4x-*.png` for a person to look at; the test
//! asserts on the DOM only. Nothing sleeps: every wait polls with a deadline.

use anyhow::ensure;
use fantoccini::Locator;
use serde_json::json;
use testkit::browser::Browser;
use testkit::{DEADLINE, eventually};

use crate::ui::{click, fill, shot, sign_in, wait_text};
use crate::util;

/// The CSS of the tag chip `key=value` on a device page.
fn chip(key: &str, value: &str) -> String {
    format!("#tags form.chip[data-tag='{key}'][data-value='{value}']")
}

/// Reloads `url` until `ok` holds of the page (whether `css` is on it), and fails at the
/// deadline: how an operator waits for the other site's change to arrive.
async fn reload_until(
    b: &Browser,
    url: &str,
    what: &str,
    css: &str,
    present: bool,
) -> anyhow::Result<()> {
    eventually(what, DEADLINE, || async {
        b.goto(url).await?;
        b.wait_for("h2.identity").await?;
        Ok((has(b, css).await? == present).then_some(()))
    })
    .await
}

/// Sets tag `key=value` with the device page's tag form, and waits for the page to confirm.
async fn set_tag(b: &Browser, key: &str, value: &str) -> anyhow::Result<()> {
    fill(b, "#tag-key", key).await?;
    fill(b, "#tag-value", value).await?;
    click(b, "#tag-form button").await?;
    wait_text(b, "#flash", &format!("Tag {key} set")).await?;
    b.wait_for(&chip(key, value)).await?;
    Ok(())
}

/// Whether an element matches `css` on the page.
async fn has(b: &Browser, css: &str) -> anyhow::Result<bool> {
    Ok(!b.client.find_all(Locator::Css(css)).await?.is_empty())
}

/// Whether the element at `css` is on the page and shown.
async fn shown(b: &Browser, css: &str) -> anyhow::Result<bool> {
    Ok(match b.client.find(Locator::Css(css)).await {
        Ok(e) => e.is_displayed().await?,
        Err(_) => false,
    })
}

#[tokio::test]
async fn a_tag_edited_on_one_sites_ui_shows_on_the_others() -> anyhow::Result<()> {
    let (_hub, mut sites, cid, tid) = util::paired_sites().await?;
    let (a, b_api) = (sites[0].admin().await?, sites[1].admin().await?);
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/devices"),
        json!({"identity": "pump-1", "tags": {"site": "north"}}),
    )
    .await?;
    util::wait_device(&b_api, &tid, "pump-1", "pump-1 on site-b", |d| d.is_some()).await?;

    let (site_a, site_b) = (sites[0].url.clone(), sites[1].url.clone());
    let page_a = format!("{site_a}/connectors/{cid}/devices/pump-1");
    let page_b = format!("{site_b}/connectors/{tid}/devices/pump-1");
    let b = Browser::start().await?;
    sign_in(&b, &site_a, &sites[0].opts.admin_password).await?;
    sign_in(&b, &site_b, &sites[1].opts.admin_password).await?;

    // Site-a's operator sets a tag on the device page; site-b's device page shows it.
    b.goto(&page_a).await?;
    set_tag(&b, "rack", "4").await?;
    shot(&b, "40-tag-set-on-site-a").await?;
    reload_until(&b, &page_b, "rack=4 on site-b", &chip("rack", "4"), true).await?;
    ensure!(has(&b, &chip("site", "north")).await?, "site=north stays");
    shot(&b, "41-tag-arrived-on-site-b").await?;

    // The other way: site-b's operator removes a chip (after confirming) and sets another;
    // site-a's device page shows both changes.
    click(&b, "#tags button[aria-label='Remove tag site']").await?;
    wait_text(&b, "#confirm-text", "Remove tag site=north").await?;
    click(&b, "#confirm-ok").await?;
    wait_text(&b, "#flash", "Tag site removed").await?;
    set_tag(&b, "floor", "2").await?;
    reload_until(&b, &page_a, "floor=2 on site-a", &chip("floor", "2"), true).await?;
    reload_until(
        &b,
        &page_a,
        "site=north gone",
        &chip("site", "north"),
        false,
    )
    .await?;
    ensure!(has(&b, &chip("rack", "4")).await?, "rack=4 stays");
    ensure!(
        !shown(&b, "#device-pending").await?,
        "site-a made no change that site-b lacks"
    );
    shot(&b, "42-tag-arrived-on-site-a").await?;

    // The device page's Changes section says who did what: site-b's edits as the peer's,
    // site-a's own operator by name, and the changes page has the same.
    let peer = wait_text(&b, "#audit tbody tr:first-child", "site-b (peer)").await?;
    ensure!(peer.contains("tags.floor: — → 2"), "{peer}");
    let removed = wait_text(&b, "#audit tbody tr:nth-child(2)", "site-b (peer)").await?;
    ensure!(removed.contains("tags.site: north → —"), "{removed}");
    let own = wait_text(&b, "#audit tr[data-by-kind='user']", "admin").await?;
    ensure!(own.contains("tags.rack: — → 4"), "{own}");
    shot(&b, "42a-changes-section").await?;
    click(&b, "#audit-all").await?;
    wait_text(&b, "#audit tbody tr:first-child", "site-b (peer)").await?;
    wait_text(&b, "#audit tbody tr:last-child", "Created").await?;

    // Site-b goes down: site-a's next edit cannot reach it, and says so on the device page
    // and in the Devices tab.
    sites[1].kill9().await?;
    b.goto(&page_a).await?;
    set_tag(&b, "mode", "eco").await?;
    let badge = wait_text(&b, "#device-pending", "pending").await?;
    ensure!(badge.contains("not yet applied on site-b"), "{badge}");
    ensure!(shown(&b, "#device-pending").await?, "the badge is visible");
    shot(&b, "43-pending-badge").await?;
    let device_tab = b.client.window().await?;
    let list_tab = b.client.new_window(true).await?.handle;
    b.client.switch_to_window(list_tab.clone()).await?;
    b.goto(&format!("{site_a}/connectors/{cid}/devices"))
        .await?;
    let mark = wait_text(&b, "tr[data-device='pump-1'] .pending", "pending").await?;
    ensure!(mark == "pending", "{mark}");
    shot(&b, "44-pending-mark").await?;

    // Site-b is back: once it has applied the edit, the mark and the badge go away by
    // themselves (no reload), and site-b shows the edit.
    sites[1].restart().await?;
    eventually("the pending mark to go", DEADLINE, || async {
        b.wait_for("tr[data-device='pump-1']").await?;
        Ok((!shown(&b, "tr[data-device='pump-1'] .pending").await?).then_some(()))
    })
    .await?;
    ensure!(
        b.wait_for("tr[data-device='pump-1']")
            .await?
            .text()
            .await?
            .contains("eco"),
        "the live rows show the edit"
    );
    // The Sync column says so in words rather than going blank.
    wait_text(&b, "tr[data-device='pump-1'] td.sync", "in sync").await?;
    b.client.switch_to_window(device_tab).await?;
    eventually("the pending badge to go", DEADLINE, || async {
        Ok((!shown(&b, "#device-pending").await?).then_some(()))
    })
    .await?;
    shot(&b, "45-pending-cleared").await?;
    reload_until(
        &b,
        &page_b,
        "mode=eco on site-b",
        &chip("mode", "eco"),
        true,
    )
    .await?;
    ensure!(has(&b, &chip("floor", "2")).await?, "floor=2 stays");
    shot(&b, "46-edit-arrived-after-outage").await?;

    // The device came to site-b by Remote-Sync, without a token there: the operator issues
    // one, shown once.
    click(&b, "#new-token").await?;
    wait_text(&b, "#confirm-text", "current token stops working").await?;
    click(&b, "#confirm-ok").await?;
    wait_text(&b, "#device-created h2", "New token for pump-1").await?;
    let token = wait_text(&b, "#device-token", "").await?;
    ensure!(token.trim().len() >= 40, "a token is shown: {token:?}");
    shot(&b, "48-new-token").await?;
    b.goto(&page_b).await?;

    // A page left open follows the device's changes on the peer in place (the state badge
    // and its button, tags, the Changes list), without a reload, and says when it is
    // deleted.
    b.client
        .execute("window.notReloaded = true; return null;", vec![])
        .await?;
    a.patch_ok(
        &format!("/api/v1/connectors/{cid}/devices/pump-1"),
        json!({"state": "locked", "tags": {"floor": "3", "mode": "eco"}}),
    )
    .await?;
    wait_text(&b, ".device-head h2", "locked").await?;
    wait_text(&b, ".device-head", "Unlock device").await?;
    b.wait_for(&chip("floor", "3")).await?;
    wait_text(&b, "#audit tbody tr:first-child", "site-a (peer)").await?;
    ensure!(
        b.client
            .execute("return window.notReloaded === true;", vec![])
            .await?
            == json!(true),
        "the page was rewritten in place, not reloaded"
    );
    ensure!(
        !shown(&b, "#device-changed").await?,
        "up to date, no banner"
    );
    shot(&b, "47-changed-in-place").await?;
    a.delete(&format!("/api/v1/connectors/{cid}/devices/pump-1"))
        .await?;
    wait_text(&b, "#device-changed", "was deleted").await?;
    b.close().await
}

/// Settable `setpoint` on both sites and device `pump-1` on both; the device page of
/// site-a open in `b`.
async fn device_page_open(
    b: &Browser,
    sites: &[testkit::SiteProc],
    cid: &str,
    tid: &str,
) -> anyhow::Result<(testkit::Api, String)> {
    let (a, b_api) = (sites[0].admin().await?, sites[1].admin().await?);
    for (api, id) in [(&a, cid), (&b_api, tid)] {
        api.post_ok(
            &format!("/api/v1/connectors/{id}/resources"),
            json!({"name": "setpoint", "format": "number", "settable": true}),
        )
        .await?;
    }
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/devices"),
        json!({"identity": "pump-1", "tags": {"site": "north"}}),
    )
    .await?;
    util::wait_device(&b_api, tid, "pump-1", "pump-1 on site-b", |d| d.is_some()).await?;
    sign_in(b, &sites[0].url, &sites[0].opts.admin_password).await?;
    let page = format!("{}/connectors/{cid}/devices/pump-1", sites[0].url);
    b.goto(&page).await?;
    b.wait_for("h2.identity").await?;
    Ok((b_api, page))
}

#[tokio::test]
async fn an_open_device_page_follows_the_peers_edits_in_place_and_keeps_what_is_being_typed()
-> anyhow::Result<()> {
    let (_hub, sites, cid, tid) = util::paired_sites().await?;
    let b = Browser::start().await?;
    let (peer, _) = device_page_open(&b, &sites, &cid, &tid).await?;
    b.client
        .execute("window.notReloaded = true; return null;", vec![])
        .await?;

    // Site-b's operator changes tags, permissions and configuration: site-a's open page
    // shows each in place, with the change in its Changes list.
    peer.patch_ok(
        &format!("/api/v1/connectors/{tid}/devices/pump-1"),
        json!({"tags": {"site": "north", "rack": "7"},
               "permissions": [{"principal": "ops", "access": "write"}],
               "config": {"setpoint": 21.5}}),
    )
    .await?;
    b.wait_for(&chip("rack", "7")).await?;
    wait_text(&b, "#permissions", "ops").await?;
    let access = b
        .wait_for("#permissions select[aria-label='Access of ops']")
        .await?
        .prop("value")
        .await?;
    ensure!(access.as_deref() == Some("write"), "{access:?}");
    let desired = b
        .wait_for("#config input[aria-label='Desired setpoint']")
        .await?
        .prop("value")
        .await?;
    ensure!(desired.as_deref() == Some("21.5"), "{desired:?}");
    let row = wait_text(&b, "#audit tbody tr:first-child", "site-b (peer)").await?;
    ensure!(row.contains("config.setpoint: — → 21.5"), "{row}");
    ensure!(
        !shown(&b, "#device-changed").await?,
        "no banner when all is shown"
    );
    shot(&b, "49-peer-edit-in-place").await?;

    // The operator is typing a desired value when the peer changes the device again: what
    // they typed stays, the other sections follow, and the banner offers a reload.
    fill(&b, "#config input[aria-label='Desired setpoint']", "19").await?;
    peer.patch_ok(
        &format!("/api/v1/connectors/{tid}/devices/pump-1"),
        json!({"tags": {"site": "south"}, "config": {"setpoint": 23}}),
    )
    .await?;
    b.wait_for(&chip("site", "south")).await?;
    wait_text(&b, "#device-changed", "changed since the page was shown").await?;
    let typed = b
        .wait_for("#config input[aria-label='Desired setpoint']")
        .await?
        .prop("value")
        .await?;
    ensure!(
        typed.as_deref() == Some("19"),
        "the typed value stays: {typed:?}"
    );
    ensure!(
        b.client
            .execute("return window.notReloaded === true;", vec![])
            .await?
            == json!(true),
        "the page was rewritten in place, not reloaded"
    );
    shot(&b, "50-typing-kept").await?;
    b.close().await
}
