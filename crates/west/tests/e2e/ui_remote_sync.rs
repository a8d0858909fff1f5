//! The Settings › Remote-Sync tab of a paired connector in headless Chromium against real
//! sites: the last hour's send/apply rate and backlog charts fill in from the site's
//! in-memory rate history after points flowed (with the note that the history is shorter
//! than an hour), and a Source whose Target never confirmed the pairing says so and offers
//! **Cancel pairing**, which turns it back into a standalone connector that pairs again; once
//! the new Target's first session confirms it, the page says by itself that the pairing
//! cannot be undone.
//!
//! Screenshots land in `target/ui-screenshots/6x-*.png` for a person to look at; the test
//! asserts on the DOM only. Nothing sleeps: every wait polls with a deadline.

use std::time::Duration;

use anyhow::{Context, ensure};
use fantoccini::Locator;
use serde_json::{Value, json};
use testkit::browser::Browser;
use testkit::eventually;

use crate::ui::{click, shot, sign_in, wait_text};
use crate::util;

/// The rate history takes a sample every 10 s; the first after points flowed may take two
/// intervals, and the chart polls every 5 s.
const HISTORY_DEADLINE: Duration = Duration::from_secs(60);

/// Waits until attribute `attr` of the element at `css` satisfies `ok`; returns its value.
async fn wait_attr(
    b: &Browser,
    css: &str,
    attr: &str,
    deadline: Duration,
    ok: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    eventually(&format!("{css} [{attr}]"), deadline, || async {
        let v = match b.client.find(Locator::Css(css)).await {
            Ok(e) => e.attr(attr).await?.unwrap_or_default(),
            Err(_) => return Ok(None),
        };
        Ok(ok(&v).then_some(v))
    })
    .await
}

/// Whether an element matches `css` on the page.
async fn has(b: &Browser, css: &str) -> anyhow::Result<bool> {
    Ok(!b.client.find_all(Locator::Css(css)).await?.is_empty())
}

fn count_at_least(n: usize) -> impl Fn(&str) -> bool {
    move |v| v.parse::<usize>().is_ok_and(|got| got >= n)
}

#[tokio::test]
async fn the_remote_sync_tab_charts_the_last_hour_of_rates_after_points_flowed()
-> anyhow::Result<()> {
    let (_hub, sites, cid, _tid) = util::paired_sites().await?;
    let a = sites[0].admin().await?;
    let history = format!("/api/v1/connectors/{cid}/remote-sync/history");

    // The page opens before anything flowed: the charts are there, the note says why the
    // history is short.
    let b = Browser::start().await?;
    sign_in(&b, &sites[0].url, &sites[0].opts.admin_password).await?;
    b.goto(&format!(
        "{}/connectors/{cid}/settings/remote-sync",
        sites[0].url
    ))
    .await?;
    b.wait_for("#sync-rate-chart svg.plot").await?;
    b.wait_for("#sync-backlog-chart svg.plot").await?;
    wait_text(
        &b,
        "#sync-history-note",
        "starts empty whenever the site restarts",
    )
    .await?;
    ensure!(
        has(&b, "#pairing-final").await? && !has(&b, "#cancel-unconfirmed-pairing").await?,
        "a confirmed pairing offers no cancel"
    );

    // Points flow from the Source.
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/resources"),
        json!({"name": "temperature", "format": "number", "remote_sync": true}),
    )
    .await?;
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/devices"),
        json!({"identity": "00AB01"}),
    )
    .await?;
    let t0 = 1_764_150_000_000_000i64;
    let batch: Vec<Value> = (0..500)
        .map(|i| json!({"device": "00AB01", "t": t0 + i * 1_000_000, "values": {"temperature": 20.0 + i as f64 / 100.0}}))
        .collect();
    a.post_ok(&format!("/api/v1/connectors/{cid}/data"), json!(batch))
        .await?;

    // The site's history gets a sample whose interval saw them sent…
    let samples = eventually(
        "a history sample with points sent",
        HISTORY_DEADLINE,
        || async {
            let h = a.get_ok(&history).await?;
            let samples = h["samples"].as_array().cloned().unwrap_or_default();
            let sent = samples
                .iter()
                .any(|s| s["send_rate"].as_f64().is_some_and(|r| r > 0.0));
            Ok(sent.then_some(samples))
        },
    )
    .await?;
    let s = &samples[samples.len() - 1];
    ensure!(
        s["t"].as_i64().is_some()
            && s["apply_rate"].as_f64().is_some()
            && s["backlog_points"].as_u64().is_some(),
        "{s}"
    );

    // …and the page's charts show it without a reload.
    wait_attr(
        &b,
        "#sync-rate-chart svg.plot",
        "data-points",
        HISTORY_DEADLINE,
        count_at_least(samples.len()),
    )
    .await?;
    wait_attr(
        &b,
        "#sync-backlog-chart svg.plot",
        "data-points",
        HISTORY_DEADLINE,
        count_at_least(1),
    )
    .await?;
    for series in ["send_rate", "apply_rate"] {
        ensure!(
            has(
                &b,
                &format!("#sync-rate-chart path.line[data-series='{series}']")
            )
            .await?,
            "a line for {series}"
        );
    }
    let status = b
        .wait_for("#sync-rate-chart .chart-status")
        .await?
        .text()
        .await?;
    ensure!(status.contains("sample"), "{status}");
    let note = b.wait_for("#sync-history-note").await?.text().await?;
    ensure!(note.contains("The charts cover"), "{note}");
    b.client
        .execute(
            "document.getElementById('sync-charts').scrollIntoView()",
            vec![],
        )
        .await?;
    shot(&b, "60-remote-sync-chart").await?;

    // Not paired, no history.
    let c = a
        .post_ok("/api/v1/connectors", json!({"name": "alone"}))
        .await?;
    let (status, body) = a
        .get(&format!(
            "/api/v1/connectors/{}/remote-sync/history",
            c["id"].as_str().context("id")?
        ))
        .await?;
    ensure!(
        status == reqwest::StatusCode::CONFLICT && body["error"] == "conflict",
        "{status} {body}"
    );
    b.close().await
}

#[tokio::test]
async fn a_pairing_its_target_never_confirmed_is_cancelled_in_the_ui_and_paired_again()
-> anyhow::Result<()> {
    let (hub, site_a, credential_b) = util::hub_and_source().await?;
    let a = site_a.admin().await?;

    // The Source completes its side of a pairing whose Target vanishes.
    let (cid, e) = testkit::pairing::source(&a, "plant").await?;
    let code = e["pairing_code"].as_str().context("code")?.to_owned();
    crate::pairing::vanishing_target(&hub, "site-b", &credential_b, &cid, &code).await?;

    // Its Remote-Sync tab says what it waits for, and offers to cancel.
    let b = Browser::start().await?;
    sign_in(&b, &site_a.url, &site_a.opts.admin_password).await?;
    let page = format!("{}/connectors/{cid}/settings/remote-sync", site_a.url);
    b.goto(&page).await?;
    let waiting = wait_text(
        &b,
        "#pairing-unconfirmed",
        "Waiting for site-b to confirm: its connector has not connected yet.",
    )
    .await?;
    ensure!(
        waiting.contains(
            "If creating the Target connector on site-b failed, cancel this pairing and pair again."
        ),
        "{waiting}"
    );
    ensure!(
        !has(&b, "#pairing-final").await?,
        "an unconfirmed pairing is not said to be final"
    );
    wait_text(
        &b,
        "main",
        "waiting for site-b to connect for the first time",
    )
    .await?;
    shot(&b, "61-remote-sync-unconfirmed").await?;

    // The General tab says where to go; deleting stays disabled.
    b.goto(&format!("{}/connectors/{cid}/settings", site_a.url))
        .await?;
    wait_text(
        &b,
        "#delete-unconfirmed",
        "has not confirmed the pairing yet",
    )
    .await?;
    b.goto(&page).await?;

    // Cancel pairing asks first, then the connector is standalone again.
    click(&b, "#cancel-unconfirmed-pairing").await?;
    wait_text(&b, "#confirm-text", "Cancel the pairing with site-b?").await?;
    click(&b, "#confirm-ok").await?;
    wait_text(&b, "#flash", "Pairing with site-b cancelled").await?;
    b.wait_for("#enable-remote-sync").await?;
    let rs = a
        .get_ok(&format!("/api/v1/connectors/{cid}/remote-sync"))
        .await?;
    ensure!(rs["role"] == "none" && rs["state"] == "disabled", "{rs}");
    shot(&b, "62-remote-sync-cancelled").await?;

    // Paired again with a real Target while the tab sits on the countdown: it turns to
    // "Paired", and once the Target's first session confirms the pairing, to final — by
    // itself.
    click(&b, "#enable-remote-sync").await?;
    click(&b, "#confirm-ok").await?;
    let code = b.wait_for("#pairing-code").await?.text().await?;
    let site_b = util::join(&hub, "site-b", &credential_b).await?;
    testkit::pairing::target(&site_b.admin().await?, "plant-copy", "site-a", &cid, &code).await?;
    wait_text(&b, "#pairing-final", "cannot be undone").await?;
    ensure!(
        !has(&b, "#cancel-unconfirmed-pairing").await?,
        "a confirmed pairing offers no cancel"
    );
    b.close().await
}

/// Item 1 of #16: both sides tell the same story. The Source shows its Target's progress
/// from the Target's acknowledgements (applied position, rate, time), and points that wait on
/// the Target for a resource it does not have are named on both sides; one click on the
/// Target creates the resource and applies them. A Target's resources say where their data
/// comes from.
#[tokio::test]
async fn both_sides_show_the_targets_progress_and_the_points_waiting_for_a_resource()
-> anyhow::Result<()> {
    let (_hub, sites, cid, tid) = util::paired_sites().await?;
    let (a, t) = (sites[0].admin().await?, sites[1].admin().await?);
    for name in ["temperature", "pressure"] {
        a.post_ok(
            &format!("/api/v1/connectors/{cid}/resources"),
            json!({"name": name, "format": "number", "remote_sync": true}),
        )
        .await?;
    }
    // The Target has `temperature` only.
    t.post_ok(
        &format!("/api/v1/connectors/{tid}/resources"),
        json!({"name": "temperature", "format": "number"}),
    )
    .await?;
    for d in ["00AB01", "00AB02"] {
        a.post_ok(
            &format!("/api/v1/connectors/{cid}/devices"),
            json!({"identity": d}),
        )
        .await?;
    }
    let t0 = 1_764_150_000_000_000i64;
    let batch: Vec<Value> = (0..6)
        .map(|i| {
            json!({"device": if i % 2 == 0 { "00AB01" } else { "00AB02" }, "t": t0 + i * 1_000_000,
                   "values": {"temperature": 20.0 + i as f64, "pressure": 1000.0 + i as f64}})
        })
        .collect();
    a.post_ok(&format!("/api/v1/connectors/{cid}/data"), json!(batch))
        .await?;

    // The API of both sites: six points of `pressure` from two devices wait on site-b.
    for (api, id) in [(&t, &tid), (&a, &cid)] {
        let w = eventually("points waiting for pressure", testkit::DEADLINE, || async {
            let (status, w) = api
                .get(&format!("/api/v1/connectors/{id}/remote-sync/waiting"))
                .await?;
            Ok(
                (status == reqwest::StatusCode::OK && w["resources"][0]["points"] == 6)
                    .then_some(w),
            )
        })
        .await?;
        ensure!(
            w["site"] == "site-b"
                && w["resources"].as_array().map(Vec::len) == Some(1)
                && w["resources"][0]["resource"] == "pressure"
                && w["resources"][0]["format"] == "number"
                && w["resources"][0]["devices"] == 2,
            "{w}"
        );
    }
    // The Source's link carries the Target's progress, from its acknowledgements.
    let link = eventually(
        "the Target's acknowledgement",
        testkit::DEADLINE,
        || async {
            let rs = a
                .get_ok(&format!("/api/v1/connectors/{cid}/remote-sync"))
                .await?;
            let l = rs["link"].clone();
            Ok(
                (l["acked_seq"] == l["outbox_head"] && l["peer_applied_at"].is_string())
                    .then_some(l),
            )
        },
    )
    .await?;
    ensure!(link["peer_apply_rate"].is_number(), "{link}");

    // The Source's Remote-Sync tab.
    let b = Browser::start().await?;
    sign_in(&b, &sites[0].url, &sites[0].opts.admin_password).await?;
    b.goto(&format!(
        "{}/connectors/{cid}/settings/remote-sync",
        sites[0].url
    ))
    .await?;
    let waiting = wait_text(&b, "#sync-waiting", "6 points of pressure").await?;
    ensure!(
        waiting.contains("from 2 devices wait for the resource on site-b"),
        "{waiting}"
    );
    wait_text(&b, "#sync-backlog", "none: everything is delivered").await?;
    wait_text(&b, "#sync-applied", "site-b has applied").await?;
    wait_text(&b, "#sync-rates", "site-b applies").await?;
    // The time of the last acknowledgement, in the viewer's time like every time of the UI
    // (the script rewrote the UTC text).
    let at = b
        .wait_for("#sync-last-applied time[data-us]")
        .await?
        .text()
        .await?;
    ensure!(
        at.len() == 19 && !at.contains("UTC") && !at.contains('T'),
        "{at}"
    );
    shot(&b, "63-remote-sync-waiting-source").await?;

    // The Target's Resources tab: where its data comes from, and one click creates the
    // missing resource.
    sign_in(&b, &sites[1].url, &sites[1].opts.admin_password).await?;
    b.goto(&format!("{}/connectors/{tid}/resources", sites[1].url))
        .await?;
    wait_text(&b, "#resources", "receiving from site-a").await?;
    wait_text(
        &b,
        "#waiting-resources",
        "6 points of pressure (number) from 2 devices wait",
    )
    .await?;
    b.goto(&format!(
        "{}/connectors/{tid}/settings/remote-sync",
        sites[1].url
    ))
    .await?;
    wait_text(
        &b,
        "#sync-waiting-here",
        "6 points of pressure (number) from 2 devices wait for the resource on this site",
    )
    .await?;
    shot(&b, "64-remote-sync-waiting-target").await?;
    click(&b, "#create-pressure").await?;
    wait_text(&b, "#flash", "Resource pressure created").await?;
    let d = t
        .get_ok(&format!(
            "/api/v1/connectors/{tid}/devices/00AB01/resources/pressure/data"
        ))
        .await?;
    ensure!(d["points"].as_array().map(Vec::len) == Some(3), "{d}");
    let w = t
        .get_ok(&format!("/api/v1/connectors/{tid}/remote-sync/waiting"))
        .await?;
    ensure!(w["resources"] == json!([]), "{w}");
    ensure!(
        !has(&b, "#sync-waiting-here").await?,
        "nothing waits any more"
    );
    b.close().await
}

/// Item 4 of #16: the Source's operator sees the Target's failed tries while the window is
/// open, and why it closed afterwards (five wrong codes, expiry, cancelled); the text names
/// the window the site really runs with, and no dialog puts "Cancel" next to "Cancel
/// pairing".
#[tokio::test]
async fn the_source_sees_failed_tries_and_why_its_pairing_window_closed() -> anyhow::Result<()> {
    let (_hub, sites) =
        util::hub_and_sites(&[("site-a", &["--pairing-window", "30s"]), ("site-b", &[])]).await?;
    let (a, t) = (sites[0].admin().await?, sites[1].admin().await?);
    let cid = a
        .post_ok("/api/v1/connectors", json!({"name": "plant"}))
        .await?["id"]
        .as_str()
        .context("id")?
        .to_owned();
    let b = Browser::start().await?;
    sign_in(&b, &sites[0].url, &sites[0].opts.admin_password).await?;
    let page = format!("{}/connectors/{cid}/settings/remote-sync", sites[0].url);
    b.goto(&page).await?;
    wait_text(
        &b,
        "main",
        "enters within 30 seconds to complete the pairing",
    )
    .await?;

    // Enabling asks first, with buttons that cannot be confused.
    click(&b, "#enable-remote-sync").await?;
    wait_text(&b, "#confirm-cancel", "Not now").await?;
    wait_text(&b, "#confirm-ok", "Enable Remote-Sync").await?;
    click(&b, "#confirm-ok").await?;
    let code = b.wait_for("#pairing-code").await?.text().await?;
    wait_text(&b, "#pairing-tries", "No wrong code yet").await?;
    wait_text(&b, "main", "within 30 seconds of enabling").await?;

    // Two wrong codes on the Target: the Source's page counts them without a reload.
    let wrong = crate::pairing::other_code(&code);
    let try_wrong = || async {
        let (status, body) =
            testkit::pairing::request_target(&t, "plant-copy", "site-a", &cid, &wrong).await?;
        ensure!(
            body["error"] == "pairing_code_wrong" || body["error"] == "pairing_expired",
            "{status} {body}"
        );
        Ok::<_, anyhow::Error>(())
    };
    for _ in 0..2 {
        try_wrong().await?;
    }
    wait_text(&b, "#pairing-tries", "2 of 5 tries used").await?;
    let rs = a
        .get_ok(&format!("/api/v1/connectors/{cid}/remote-sync"))
        .await?;
    ensure!(
        rs["failed_attempts"] == 2 && rs["max_attempts"] == 5 && rs["window_seconds"] == 30,
        "{rs}"
    );
    shot(&b, "65-pairing-tries").await?;

    // Three more close the window: the page says so instead of silently going back.
    for _ in 0..3 {
        try_wrong().await?;
    }
    wait_text(&b, "#pairing-ended", "closed after 5 wrong codes").await?;
    let rs = a
        .get_ok(&format!("/api/v1/connectors/{cid}/remote-sync"))
        .await?;
    ensure!(
        rs["state"] == "disabled"
            && rs["last_window"]["reason"] == "too_many_attempts"
            && rs["last_window"]["failed_attempts"] == 5,
        "{rs}"
    );
    shot(&b, "66-pairing-closed-after-wrong-codes").await?;

    // Stopping a countdown: "Stop pairing" or "Keep waiting".
    click(&b, "#enable-remote-sync").await?;
    click(&b, "#confirm-ok").await?;
    b.wait_for("#pairing-code").await?;
    click(&b, "#cancel-pairing").await?;
    wait_text(&b, "#confirm-cancel", "Keep waiting").await?;
    wait_text(&b, "#confirm-ok", "Stop pairing").await?;
    click(&b, "#confirm-ok").await?;
    wait_text(&b, "#pairing-ended", "was cancelled").await?;

    // A countdown that runs out says it expired.
    click(&b, "#enable-remote-sync").await?;
    click(&b, "#confirm-ok").await?;
    b.wait_for("#pairing-code").await?;
    eventually("the window to expire", Duration::from_secs(60), || async {
        let (_, rs) = a
            .get(&format!("/api/v1/connectors/{cid}/remote-sync"))
            .await?;
        Ok((rs["last_window"]["reason"] == "expired").then_some(()))
    })
    .await?;
    wait_text(&b, "#pairing-ended", "expired with no Target paired").await?;
    shot(&b, "67-pairing-expired").await?;
    b.close().await
}
