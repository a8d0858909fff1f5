//! The live device lookup in the web UI, in headless Chromium against two real paired sites:
//! the Devices tab's *This site / Remote site (site-b)* switch lists the peer's devices (with
//! the tag filter), a device page shows the Remote view beside the local record with the
//! differing fields highlighted, *Compare with remote* lists the drift, and a killed peer
//! turns into "Remote site offline" instead of a spinner.
//!
//! Screenshots land in `target/ui-screenshots/3x-*.png` for a person to look at; the test
//! asserts on the DOM only.

use anyhow::ensure;
use fantoccini::Locator;
use serde_json::json;
use testkit::browser::Browser;
use testkit::{Api, DEADLINE, eventually};

use crate::ui::{click, fill, shot, wait_text};
use crate::util;

async fn exists(b: &Browser, css: &str) -> anyhow::Result<bool> {
    Ok(!b.client.find_all(Locator::Css(css)).await?.is_empty())
}

async fn device(
    api: &Api,
    cid: &str,
    identity: &str,
    tags: serde_json::Value,
) -> anyhow::Result<()> {
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/devices"),
        json!({"identity": identity, "tags": tags,
               "permissions": [{"principal": "ops", "access": "read"}]}),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn operator_sees_the_remote_sites_devices_live_and_what_differs() -> anyhow::Result<()> {
    let (_hub, mut sites, cid, tid) = util::paired_sites().await?;
    let (a, b_api) = (sites[0].admin().await?, sites[1].admin().await?);
    // The same pump on both sites, in a different rack; two more only on site-b.
    device(&a, &cid, "pump-1", json!({"site": "north", "rack": "5"})).await?;
    device(
        &b_api,
        &tid,
        "pump-1",
        json!({"site": "north", "rack": "4"}),
    )
    .await?;
    device(&b_api, &tid, "pump-2", json!({"site": "south"})).await?;
    device(&b_api, &tid, "valve-7", json!({"site": "north"})).await?;
    b_api
        .patch(
            &format!("/api/v1/connectors/{tid}/devices/valve-7"),
            json!({"state": "locked"}),
        )
        .await?;

    let b = Browser::start().await?;
    let site_a = sites[0].url.clone();
    b.goto(&format!("{site_a}/login")).await?;
    fill(&b, "#username", "admin").await?;
    fill(&b, "#password", &sites[0].opts.admin_password).await?;
    click(&b, "#sign-in").await?;
    b.wait_for("header.top").await?;

    // The Devices tab of the paired connector offers the switch; Remote site lists site-b's
    // devices, looked up live.
    b.goto(&format!("{site_a}/connectors/{cid}/devices"))
        .await?;
    let switch = wait_text(&b, "#side-remote", "Remote site (site-b)").await?;
    ensure!(switch == "Remote site (site-b)", "{switch}");
    ensure!(exists(&b, "#devices tr[data-device='pump-1']").await?);
    click(&b, "#side-remote").await?;
    b.wait_for("#remote-list[data-state='ok']").await?;
    let rows = wait_text(&b, "#remote-devices", "valve-7").await?;
    ensure!(
        rows.contains("pump-1") && rows.contains("pump-2") && rows.contains("south"),
        "{rows}"
    );
    ensure!(
        wait_text(&b, "#remote-devices tr[data-device='valve-7']", "locked")
            .await?
            .contains("ops: read"),
        "the remote rows show state and permissions"
    );
    shot(&b, "30-remote-devices").await?;

    // The tag filter applies on the remote site.
    fill(&b, "#filter-tag", "site:north").await?;
    click(&b, "#device-filter button[type='submit']").await?;
    eventually("the filtered page", DEADLINE, || async {
        Ok(b.client
            .current_url()
            .await?
            .as_str()
            .contains("tag=site")
            .then_some(()))
    })
    .await?;
    b.wait_for("#remote-list[data-state='ok'] #remote-devices tr[data-device='valve-7']")
        .await?;
    ensure!(
        !exists(&b, "#remote-devices tr[data-device='pump-2']").await?,
        "site:north hides pump-2"
    );
    ensure!(exists(&b, "#remote-devices tr[data-device='pump-1']").await?);

    // The device page: the Remote view beside the local record, the differing field marked.
    click(&b, "#remote-devices tr[data-device='pump-1'] a").await?;
    b.wait_for("#remote-view[data-state='ok']").await?;
    let tags = wait_text(&b, "#remote-compare tr[data-field='tags'].differs", "rack").await?;
    ensure!(tags.contains('5') && tags.contains('4'), "{tags}");
    let marked = b
        .client
        .find_all(Locator::Css(
            "#remote-compare tr[data-field='tags'] .chip.differs",
        ))
        .await?;
    ensure!(
        marked.len() == 2,
        "the rack chip is marked on both sides: {}",
        marked.len()
    );
    for same in ["state", "permissions", "config"] {
        ensure!(
            !exists(
                &b,
                &format!("#remote-compare tr[data-field='{same}'].differs")
            )
            .await?,
            "{same} is the same on both sites"
        );
    }
    wait_text(&b, "#remote-verdict", "1 field differs").await?;
    shot(&b, "31-device-remote-view").await?;

    // A device of the remote list that this site lacks opens as its remote record alone.
    b.goto(&format!("{site_a}/connectors/{cid}/devices/valve-7"))
        .await?;
    wait_text(&b, "#remote-only", "does not exist on this site").await?;
    wait_text(&b, "#remote-verdict", "Only on site-b").await?;

    // Compare with remote (Settings › Remote-Sync) lists the drift side by side.
    b.goto(&format!("{site_a}/connectors/{cid}/settings/remote-sync"))
        .await?;
    click(&b, "#compare-remote").await?;
    // The page is one comparison; should the session be re-keyed meanwhile (the sync layer
    // may ask for that), it says so and the operator compares again.
    eventually("the drift verdict", DEADLINE, || async {
        if let Ok(v) = b.client.find(Locator::Css("#drift-verdict")).await {
            return Ok(Some(v.text().await?));
        }
        if exists(&b, "#drift-offline").await? {
            click(&b, "#compare-again").await?;
        }
        Ok(None)
    })
    .await?;
    wait_text(&b, "#drift-verdict", "3 devices differ").await?;
    let pump = wait_text(
        &b,
        "#drift-devices tbody[data-device='pump-1']",
        "tags differ",
    )
    .await?;
    ensure!(pump.contains("rack=5") && pump.contains("rack=4"), "{pump}");
    ensure!(
        exists(
            &b,
            "#drift-devices tbody[data-device='pump-1'] tr.differs .item.differs"
        )
        .await?
    );
    wait_text(
        &b,
        "#drift-devices tbody[data-device='pump-2']",
        "not on this site",
    )
    .await?;
    shot(&b, "32-compare-with-remote").await?;

    // The peer goes down: the remote list says so plainly, and so does the Remote view.
    sites[1].kill9().await?;
    b.goto(&format!("{site_a}/connectors/{cid}/devices?side=remote"))
        .await?;
    wait_text(&b, "#remote-status", "Remote site offline").await?;
    ensure!(
        !b.wait_for("#remote-table").await?.is_displayed().await?,
        "no stale list while offline"
    );
    shot(&b, "33-remote-offline").await?;
    b.goto(&format!("{site_a}/connectors/{cid}/devices/pump-1"))
        .await?;
    wait_text(&b, "#remote-device-status", "Remote site offline").await?;
    shot(&b, "34-device-remote-offline").await?;
    b.close().await
}
