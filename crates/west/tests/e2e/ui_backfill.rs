//! Backfill in headless Chromium against real sites (docs/ui.md): switching Remote-Sync on
//! for a resource that has history offers to send it; **Send the history** shows a progress
//! bar that fills as the Target applies it; the Target's Remote-Sync tab asks its Source for
//! one device's history with the **Send history again** form. The Target then holds exactly
//! the Source's points.
//!
//! Screenshots land in `target/ui-screenshots/8x-*.png` for a person to look at; the test
//! asserts on the DOM and the API. Nothing sleeps: every wait polls with a deadline.

use anyhow::ensure;
use fantoccini::Locator;
use serde_json::{Value, json};
use testkit::browser::Browser;
use testkit::eventually;

use crate::ui::{click, fill, shot, sign_in, wait_text};
use crate::util;

const PER_DEVICE: i64 = 40;
const MINUTE: i64 = 60_000_000;

/// Waits until the backfill progress on the page is in `state`; returns its words.
async fn progress(b: &Browser, state: &str) -> anyhow::Result<String> {
    eventually(
        &format!("the backfill to be {state}"),
        testkit::DEADLINE,
        || async {
            let Ok(e) = b.client.find(Locator::Css("#backfill-progress")).await else {
                return Ok(None);
            };
            if e.attr("data-state").await?.as_deref() != Some(state) {
                return Ok(None);
            }
            Ok(Some(
                b.client
                    .find(Locator::Css("#backfill-words"))
                    .await?
                    .text()
                    .await?,
            ))
        },
    )
    .await
}

async fn count(api: &testkit::Api, cid: &str, device: &str) -> anyhow::Result<usize> {
    let page = api
        .get_ok(&format!(
            "/api/v1/connectors/{cid}/devices/{device}/resources/temperature/data?limit=10000"
        ))
        .await?;
    Ok(page["points"].as_array().map_or(0, Vec::len))
}

#[tokio::test]
async fn switching_remote_sync_on_offers_the_history_and_the_target_asks_for_more()
-> anyhow::Result<()> {
    let (_hub, sites, cid, tid) = util::paired_sites().await?;
    let (a, t) = (sites[0].admin().await?, sites[1].admin().await?);
    for (api, c) in [(&a, &cid), (&t, &tid)] {
        api.post_ok(
            &format!("/api/v1/connectors/{c}/resources"),
            json!({"name": "temperature", "format": "number"}),
        )
        .await?;
    }
    let now = site::clock::now_micros();
    for d in ["dev-0", "dev-1"] {
        a.post_ok(
            &format!("/api/v1/connectors/{cid}/devices"),
            json!({"identity": d}),
        )
        .await?;
        let body: Vec<Value> = (0..PER_DEVICE)
            .map(|i| json!({"t": now - (PER_DEVICE - i) * MINUTE, "values": {"temperature": i as f64 / 4.0}}))
            .collect();
        a.post_ok(
            &format!("/api/v1/connectors/{cid}/devices/{d}/data"),
            Value::Array(body),
        )
        .await?;
    }

    let b = Browser::start().await?;
    sign_in(&b, &sites[0].url, &sites[0].opts.admin_password).await?;
    b.goto(&format!(
        "{}/connectors/{cid}/resources/temperature",
        sites[0].url
    ))
    .await?;
    // Remote-Sync off: the form says why it cannot send.
    wait_text(&b, "#backfill-why-not", "Remote-Sync is off").await?;
    click(&b, "#resource-settings label.switch").await?;
    click(&b, "#save-resource").await?;
    wait_text(&b, "#backfill-offer", "already has history").await?;
    shot(&b, "80-backfill-offer").await?;
    click(&b, "#backfill-offer-send").await?;
    wait_text(&b, "#flash", "Sending the history of temperature").await?;
    let words = progress(&b, "done").await?;
    ensure!(
        words.contains(&format!(
            "{} of {} points applied by site-b",
            2 * PER_DEVICE,
            2 * PER_DEVICE
        )),
        "{words}"
    );
    let bar = b.wait_for("#backfill-bar").await?;
    ensure!(
        bar.attr("value").await?.as_deref() == Some("100"),
        "the bar is not full"
    );
    ensure!(
        b.client
            .find_all(Locator::Css("#backfill-offer"))
            .await?
            .is_empty(),
        "the offer is gone once taken"
    );
    shot(&b, "81-backfill-done").await?;
    for d in ["dev-0", "dev-1"] {
        ensure!(
            count(&t, &tid, d).await? == PER_DEVICE as usize,
            "{d} on the Target"
        );
    }

    // A refused bandwidth budget comes back focused with what was typed (#16 item 10).
    b.goto(&format!(
        "{}/connectors/{cid}/settings/remote-sync",
        sites[0].url
    ))
    .await?;
    fill(&b, "#max-bytes-per-s", "10").await?;
    b.client
        .execute(
            "const f = document.getElementById('budget-form'); f.noValidate = true; \
             document.getElementById('set-budget').click(); return null;",
            vec![],
        )
        .await?;
    wait_text(&b, "#flash", "The budget was not changed").await?;
    refused_field(&b, "max-bytes-per-s", "10").await?;

    // The Target asks its Source again for one device, from its Remote-Sync tab; a device
    // the Source does not have is refused with the field focused and kept.
    sign_in(&b, &sites[1].url, &sites[1].opts.admin_password).await?;
    b.goto(&format!(
        "{}/connectors/{tid}/settings/remote-sync",
        sites[1].url
    ))
    .await?;
    b.wait_for("#backfill-form").await?;
    fill(&b, "#backfill-devices", "dev-1, nope-9").await?;
    click(&b, "#backfill-start").await?;
    wait_text(&b, "#flash", "Nothing was sent").await?;
    refused_field(&b, "backfill-devices", "dev-1, nope-9").await?;
    fill(&b, "#backfill-devices", "dev-1").await?;
    click(&b, "#backfill-start").await?;
    wait_text(&b, "#flash", "Sending the history of temperature").await?;
    let words = progress(&b, "done").await?;
    ensure!(
        words.contains(&format!(
            "{PER_DEVICE} of {PER_DEVICE} points applied by this site"
        )),
        "{words}"
    );
    wait_text(&b, "#backfill-progress", "asked here").await?;
    shot(&b, "82-backfill-from-target").await?;
    // Nothing doubled.
    ensure!(count(&t, &tid, "dev-1").await? == PER_DEVICE as usize);
    b.close().await
}

/// The focused element is the field `id`, marked invalid, holding `value`.
async fn refused_field(b: &Browser, id: &str, value: &str) -> anyhow::Result<()> {
    let got = b
        .client
        .execute(
            "const e = document.activeElement; \
             return e ? [e.id, e.value, e.getAttribute('aria-invalid')] : null;",
            vec![],
        )
        .await?;
    ensure!(
        got == serde_json::json!([id, value, "true"]),
        "focused {got}, not {id} holding {value:?}"
    );
    Ok(())
}
