//! Editing in the web UI (#16 item 8, docs/ui.md) in headless Chromium against real paired
//! sites: Settings › General renames and re-describes a paired connector (a blank name and a
//! name another connector has are refused with a capitalised sentence that focuses the
//! field, changing nothing), and says what renaming means for the peer; the Add resource
//! form has the Remote-Sync switch (not on the Target); a resource's page deletes it after a
//! confirmation that says in words what that means for the Target, with the count of points
//! it deletes, and the Target's page says what deleting there would mean.
//!
//! Screenshots land in `target/ui-screenshots/9x-*.png` for a person to look at; the test
//! asserts on the DOM only. Nothing sleeps: every wait polls with a deadline.

use reqwest::StatusCode;
use serde_json::json;
use testkit::browser::Browser;
use testkit::{DEADLINE, eventually};

use crate::ui::{click, fill, shot, sign_in, wait_text};
use crate::util;

/// The id of the element that has the focus.
async fn focused(b: &Browser) -> anyhow::Result<serde_json::Value> {
    Ok(b.client
        .execute(
            "return document.activeElement && document.activeElement.id;",
            vec![],
        )
        .await?)
}

#[tokio::test]
async fn operator_renames_a_paired_connector_adds_a_synced_resource_and_deletes_it()
-> anyhow::Result<()> {
    let (_hub, sites, cid, tid) = util::paired_sites().await?;
    let base = &sites[0].url;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    a.post_ok("/api/v1/connectors", json!({"name": "spare"}))
        .await?;
    let br = Browser::start().await?;
    sign_in(&br, base, &sites[0].opts.admin_password).await?;

    // Settings › General: the form, and what renaming means for site-b.
    br.goto(&format!("{base}/connectors/{cid}/settings"))
        .await?;
    let note = wait_text(&br, "#rename-note", "site-b").await?;
    assert!(
        note.contains("by connector ID") && note.contains(&cid),
        "{note}"
    );
    // The browser's own checks off, so that the site's refusals show.
    br.client
        .execute(
            "document.getElementById('connector-edit').noValidate = true;",
            vec![],
        )
        .await?;
    fill(&br, "#name", "   ").await?;
    click(&br, "#save-connector").await?;
    let error = wait_text(&br, "#form-error", "Connector name must be 1 to 128").await?;
    assert!(error.ends_with('.'), "{error}");
    assert_eq!(focused(&br).await?, "name");
    fill(&br, "#name", "Spare").await?;
    click(&br, "#save-connector").await?;
    let error = wait_text(&br, "#form-error", "already exists on this site").await?;
    assert!(error.starts_with("A connector named"), "{error}");
    assert_eq!(focused(&br).await?, "name");
    shot(&br, "90-rename-refused").await?;
    let stored = a.get_ok(&format!("/api/v1/connectors/{cid}")).await?;
    assert_eq!(stored["name"], "plant", "{stored}");

    fill(&br, "#name", "plant-north").await?;
    fill(&br, "#description", "Boilers of the north plant").await?;
    click(&br, "#save-connector").await?;
    wait_text(&br, "#flash", "Connector plant renamed to plant-north").await?;
    let stored = a.get_ok(&format!("/api/v1/connectors/{cid}")).await?;
    assert_eq!(stored["name"], "plant-north");
    assert_eq!(stored["description"], "Boilers of the north plant");
    // site-b still knows its Source by site and id.
    let target = b.get_ok(&format!("/api/v1/connectors/{tid}")).await?;
    assert_eq!(
        target["remote_sync"]["peer"],
        json!({"site": "site-a", "connector_id": cid}),
        "{target}"
    );
    shot(&br, "91-renamed").await?;

    // Add resource with the Remote-Sync switch on; the Target has the resource too.
    br.goto(&format!("{base}/connectors/{cid}/resources"))
        .await?;
    fill(&br, "#resource-name", "pressure").await?;
    click(&br, "#resource-form label.switch").await?;
    click(&br, "#add-resource").await?;
    let row = wait_text(&br, "tr[data-resource='pressure']", "pressure").await?;
    assert!(row.ends_with("on"), "Remote-Sync column: {row}");
    let r = a
        .get_ok(&format!("/api/v1/connectors/{cid}/resources/pressure"))
        .await?;
    assert_eq!(r["remote_sync"], true, "{r}");
    b.post_ok(
        &format!("/api/v1/connectors/{tid}/resources"),
        json!({"name": "pressure", "format": "number"}),
    )
    .await?;
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/devices"),
        json!({"identity": "dev1"}),
    )
    .await?;
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/devices/dev1/data"),
        json!([{"t": 1_000_000, "values": {"pressure": 1.1}},
               {"t": 2_000_000, "values": {"pressure": 1.2}},
               {"t": 3_000_000, "values": {"pressure": 1.3}}]),
    )
    .await?;
    let on_target = format!("/api/v1/connectors/{tid}/devices/dev1/resources/pressure/data");
    let target_points = || async {
        let (s, page) = b.get(&on_target).await?;
        anyhow::Ok((s, page["points"].as_array().map_or(0, Vec::len)))
    };
    eventually("3 points of pressure on site-b", DEADLINE, || async {
        Ok((target_points().await? == (StatusCode::OK, 3)).then_some(()))
    })
    .await?;

    // Its page says what deleting means, with the count, and asks before deleting.
    br.goto(&format!("{base}/connectors/{cid}/resources/pressure"))
        .await?;
    let words = wait_text(&br, "#delete-resource-words", "3 points from 1 device").await?;
    assert!(
        words.contains("still delivered") && words.contains("site-b keeps every point"),
        "{words}"
    );
    click(&br, "#delete-resource").await?;
    let asked = wait_text(&br, "#confirm-text", "3 points from 1 device").await?;
    assert_eq!(asked, words);
    shot(&br, "92-confirm-delete-resource").await?;
    click(&br, "#confirm-ok").await?;
    wait_text(&br, "#flash", "Resource pressure deleted with its 3 points").await?;
    assert!(
        br.client
            .find(fantoccini::Locator::Css("tr[data-resource='pressure']"))
            .await
            .is_err(),
        "the list no longer shows it"
    );
    let (s, _) = a
        .get(&format!("/api/v1/connectors/{cid}/resources/pressure"))
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        target_points().await?,
        (StatusCode::OK, 3),
        "site-b keeps them"
    );
    shot(&br, "93-resource-deleted").await?;

    // On the Target, Add resource has no Remote-Sync switch (the data comes from the
    // Source), and deleting says what it means there.
    let target = &sites[1].url;
    sign_in(&br, target, &sites[1].opts.admin_password).await?;
    br.goto(&format!("{target}/connectors/{tid}/resources"))
        .await?;
    br.wait_for("#resource-form").await?;
    assert!(
        br.client
            .find(fantoccini::Locator::Css("#resource-remote-sync"))
            .await
            .is_err(),
        "no Remote-Sync switch on a Target"
    );
    br.goto(&format!("{target}/connectors/{tid}/resources/pressure"))
        .await?;
    let words = wait_text(
        &br,
        "#delete-resource-words",
        "3 points from 1 device on site-b",
    )
    .await?;
    assert!(
        words.contains("deleted here only: site-a keeps its pressure")
            && words.contains("wait here until a resource of that name exists again"),
        "{words}"
    );
    shot(&br, "94-target-delete-words").await?;
    Ok(())
}
