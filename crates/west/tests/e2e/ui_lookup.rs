//! The live device lookup in the web UI, in headless Chromium against two real paired sites:
//! the Devices tab's *This site / Remote site (site-b)* switch lists the peer's devices (with
//! the tag filter), a device page shows the Remote view beside the local record with the
//! differing fields highlighted, *Compare with remote* lists the drift, a killed peer turns
//! into "Remote site offline" instead of a spinner (and a re-send then says the peer's side is
//! missing), and once the peer is back *Re-send these devices* makes the two registries the
//! same again.
//!
//! Device changes propagate between the sites, so the drift is made the way it happens in
//! the field: behind site-b's back, by changing its database while it is stopped (a restore
//! from an older backup, a hand edit). Screenshots land in `target/ui-screenshots/3x-*.png`
//! for a person to look at; the test asserts on the DOM only.

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

/// Site-b's registry drifts from site-a's: pump-1 moved to rack 4, and two devices that only
/// site-b has (rows without a device record are not propagated by themselves).
fn drift_sql(tid: &str) -> String {
    let ops = r#"[{"principal":"ops","access":"read"}]"#;
    format!(
        r#"UPDATE devices SET tags = '{{"rack":"4","site":"north"}}'
             WHERE connector = '{tid}' AND identity = 'pump-1';
           INSERT INTO devices (connector, identity, tags, permissions, state, created_at) VALUES
             ('{tid}', 'pump-2', '{{"site":"south"}}', '{ops}', 'provisioned', 1700000000000000),
             ('{tid}', 'valve-7', '{{"site":"north"}}', '{ops}', 'locked', 1700000000000000);"#
    )
}

#[tokio::test]
async fn operator_sees_the_remote_sites_devices_live_and_what_differs() -> anyhow::Result<()> {
    let (_hub, mut sites, cid, tid) = util::paired_sites().await?;
    let (a, b_api) = (sites[0].admin().await?, sites[1].admin().await?);
    // pump-1 is created on site-a and reaches site-b; once site-a knows site-b applied it,
    // nothing in flight can undo the drift made next.
    device(&a, &cid, "pump-1", json!({"site": "north", "rack": "5"})).await?;
    util::wait_device(&b_api, &tid, "pump-1", "pump-1 on site-b", |d| {
        d.is_some_and(|d| d["tags"]["rack"] == "5")
    })
    .await?;
    util::wait_device(&a, &cid, "pump-1", "site-b to apply pump-1", |d| {
        d.is_some_and(|d| d["sync"]["pending"] == false)
    })
    .await?;
    util::tamper(&mut sites[1], &drift_sql(&tid)).await?;
    util::session_up(&a, &cid).await?;
    util::session_up(&b_api, &tid).await?;
    let valve = b_api
        .get_ok(&format!("/api/v1/connectors/{tid}/devices/valve-7"))
        .await?;
    ensure!(valve["state"] == "locked", "the drift is in place: {valve}");

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
    wait_text(&b, "#remote-total", "2 devices match").await?;

    // The same search box, filters and sortable headers as the local list, answered by
    // site-b's own list: the start of an identity, the state, a sort by state.
    fill(&b, "#filter-tag", "valve").await?;
    click(&b, "#device-filter button[type='submit']").await?;
    wait_text(&b, "#remote-total", "1 device matches").await?;
    b.wait_for("#remote-list[data-state='ok'] #remote-devices tr[data-device='valve-7']")
        .await?;
    ensure!(!exists(&b, "#remote-devices tr[data-device='pump-1']").await?);
    b.goto(&format!(
        "{site_a}/connectors/{cid}/devices?side=remote&state=locked"
    ))
    .await?;
    wait_text(&b, "#remote-total", "1 device matches").await?;
    b.goto(&format!("{site_a}/connectors/{cid}/devices?side=remote"))
        .await?;
    wait_text(&b, "#remote-total", "3 devices").await?;
    click(&b, "#sort-state").await?;
    b.wait_for("th[aria-sort='ascending'] #sort-state").await?;
    let first = b
        .wait_for("#remote-list[data-state='ok'] #remote-devices tbody tr")
        .await?
        .attr("data-device")
        .await?;
    ensure!(
        first.as_deref() == Some("valve-7"),
        "locked first: {first:?}"
    );
    click(&b, "#remote-devices tr[data-device='pump-1'] a").await?;

    // The device page: the Remote view beside the local record, the differing field marked.
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
    ensure!(
        !exists(&b, "#drift-devices .pending").await?,
        "no change is in flight: the difference is drift"
    );
    shot(&b, "32-compare-with-remote").await?;

    // The peer goes down while the operator looks at the drift. Re-sending then queues this
    // site's side only, and the notice says why the peer's side is missing.
    sites[1].kill9().await?;
    click(&b, "#resend-devices").await?;
    let confirm = wait_text(&b, "#confirm-text", "Re-send 3 devices").await?;
    ensure!(confirm.contains("replaced"), "{confirm}");
    click(&b, "#confirm-ok").await?;
    let notice = wait_text(&b, "#flash.bad", "could not be asked").await?;
    ensure!(
        notice.starts_with(
            "Re-sent 3 devices from this site only: site-a queued its record of 1 \
             (the other 2 are not on site-a), but site-b could not be asked"
        ) && notice.contains("re-send then"),
        "{notice}"
    );
    b.wait_for("#drift-offline").await?;
    shot(&b, "35-resend-peer-offline").await?;

    // The remote list says plainly that the peer is down, and so does the Remote view.
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

    // Site-b is back: compare again, and re-send what still differs (site-a's side of pump-1
    // may have arrived by then); both sites queue their records this time.
    sites[1].restart().await?;
    util::session_up(&a, &cid).await?;
    util::session_up(&b_api, &tid).await?;
    b.goto(&format!(
        "{site_a}/connectors/{cid}/settings/remote-sync/compare"
    ))
    .await?;
    eventually("devices to re-send", DEADLINE, || async {
        if exists(&b, "#resend-devices").await? {
            return Ok(Some(()));
        }
        click(&b, "#compare-again").await?;
        Ok(None)
    })
    .await?;
    click(&b, "#resend-devices").await?;
    click(&b, "#confirm-ok").await?;
    let notice = wait_text(&b, "#flash", "Re-sent").await?;
    ensure!(
        notice.contains("site-b queued its record of all") && !notice.contains("could not"),
        "{notice}"
    );
    ensure!(
        !exists(&b, "#flash.bad").await?,
        "the peer was asked too: {notice}"
    );
    shot(&b, "36-resent").await?;

    // Compare again until both registries are the same, all three devices on each site.
    let verdict = eventually("the comparison to say in sync", DEADLINE, || async {
        if let Ok(v) = b.client.find(Locator::Css("#drift-verdict")).await {
            let v = v.text().await.unwrap_or_default();
            if v.contains("In sync") && v.contains("on each site") {
                return Ok(Some(v));
            }
        }
        click(&b, "#compare-again").await?;
        Ok(None)
    })
    .await?;
    if !verdict.contains("3 devices on each site") {
        anyhow::bail!(
            "{verdict}\nsite-a: {}\nsite-b: {}",
            a.get_ok(&format!("/api/v1/connectors/{cid}/devices"))
                .await?,
            b_api
                .get_ok(&format!("/api/v1/connectors/{tid}/devices"))
                .await?
        );
    }
    ensure!(
        !exists(&b, "#resend-devices").await?,
        "nothing left to re-send"
    );
    shot(&b, "37-in-sync-after-resend").await?;

    // pump-1 no longer differs, and the devices only site-b had are on site-a now.
    b.goto(&format!("{site_a}/connectors/{cid}/devices/pump-1"))
        .await?;
    b.wait_for("#remote-view[data-state='ok']").await?;
    wait_text(&b, "#remote-verdict", "Same on both sites").await?;
    ensure!(!exists(&b, "#remote-compare tr.differs").await?);
    shot(&b, "38-device-same-after-resend").await?;
    b.goto(&format!("{site_a}/connectors/{cid}/devices/valve-7"))
        .await?;
    wait_text(&b, "h2.identity", "locked").await?;
    ensure!(!exists(&b, "#remote-only").await?, "valve-7 is on site-a");
    wait_text(&b, "#remote-verdict", "Same on both sites").await?;
    b.close().await
}
