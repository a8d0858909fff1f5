//! Alarms in the web UI (#16 item 2, docs/ui.md "Alarms") in headless Chromium against real
//! sites: a connector's Settings › Alarms form refuses a bad threshold with a sentence that
//! names the field and focuses it, and saves a good one; stopping the hub raises the alarm,
//! which the header's badge shows on the page already open (it polls), and the Alarms page
//! lists it with its sentence; once the hub is back it is listed as cleared and the badge
//! goes back to zero.
//!
//! At a phone's 390 px no main page scrolls sideways, and the pairing code field shows
//! what a code looks like (#16 item 10).
//!
//! Screenshots land in `target/ui-screenshots/8x-*.png` for a person to look at; the test
//! asserts on the DOM only. Nothing sleeps: every wait polls with a deadline.

use fantoccini::Locator;
use testkit::browser::Browser;
use testkit::eventually;

use crate::ui::{click, fill, shot, sign_in, wait_text};
use crate::util;

/// Waits until the element at `css` has `class` among its classes (or, with `on` false,
/// not).
async fn wait_class(b: &Browser, css: &str, class: &str, on: bool) -> anyhow::Result<()> {
    eventually(
        &format!("{css} with class {class}: {on}"),
        testkit::DEADLINE,
        || async {
            let classes = match b.client.find(Locator::Css(css)).await {
                Ok(e) => e.attr("class").await?.unwrap_or_default(),
                Err(_) => return Ok(None),
            };
            Ok((classes.split_whitespace().any(|c| c == class) == on).then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn the_header_counts_active_alarms_and_the_alarms_page_lists_them() -> anyhow::Result<()> {
    let (mut hub, sites, cid, _tid) = util::paired_sites().await?;
    let base = &sites[0].url;
    let b = Browser::start().await?;
    sign_in(&b, base, &sites[0].opts.admin_password).await?;

    b.goto(&format!("{base}/connectors/{cid}/settings/alarms"))
        .await?;
    wait_text(&b, "#alarm-badge", "Alarms").await?;
    wait_text(&b, "#alarm-count", "0").await?;
    wait_class(&b, "#alarm-badge", "on", false).await?;

    // A bad value: the browser's own check is off, so that the site's refusal shows.
    b.client
        .execute(
            "document.getElementById('alarm-thresholds').noValidate = true;",
            vec![],
        )
        .await?;
    fill(&b, "#unreachable_seconds", "0").await?;
    click(&b, "#save-alarms").await?;
    let notice = wait_text(&b, "#flash", "Peer unreachable must be a whole number").await?;
    assert!(notice.contains("Nothing was changed"), "{notice}");
    assert!(
        notice.starts_with("Peer"),
        "a sentence starts with a capital: {notice}"
    );
    let focused = b
        .client
        .execute(
            "return document.activeElement && document.activeElement.id;",
            vec![],
        )
        .await?;
    assert_eq!(
        focused, "unreachable_seconds",
        "the refused field has the focus"
    );
    shot(&b, "80-alarm-threshold-refused").await?;
    let api = sites[0].admin().await?;
    let stored = api
        .get_ok(&format!("/api/v1/connectors/{cid}/alarms"))
        .await?;
    assert_eq!(stored["unreachable_seconds"], 120, "{stored}");

    fill(&b, "#unreachable_seconds", "2").await?;
    click(&b, "#save-alarms").await?;
    wait_text(&b, "#flash", "Alarm thresholds saved").await?;
    let saved = b
        .wait_for("#unreachable_seconds")
        .await?
        .prop("value")
        .await?
        .unwrap_or_default();
    assert_eq!(saved, "2");

    // The hub goes away: the badge on the open page counts the alarm by itself.
    hub.kill9().await?;
    wait_text(&b, "#alarm-count", "1").await?;
    wait_class(&b, "#alarm-badge", "on", true).await?;
    shot(&b, "81-alarm-badge").await?;
    click(&b, "#alarm-badge").await?;
    let row = wait_text(&b, "#alarms tr.alarm.active", "Peer unreachable").await?;
    assert!(row.contains("site-b"), "{row}");
    assert!(row.contains("Active"), "{row}");
    shot(&b, "82-alarms-active").await?;

    // The hub is back: the alarm clears, the list says so, the badge goes back to 0.
    hub.restart().await?;
    eventually(
        "the alarm listed as cleared",
        testkit::DEADLINE * 2,
        || async {
            b.goto(&format!("{base}/alarms?state=cleared")).await?;
            let rows = b
                .client
                .find_all(Locator::Css("#alarms tr.alarm.cleared"))
                .await?;
            Ok((!rows.is_empty()).then_some(()))
        },
    )
    .await?;
    let row = wait_text(&b, "#alarms tr.alarm.cleared", "Peer unreachable").await?;
    assert!(row.contains("Cleared"), "{row}");
    wait_text(&b, "#alarm-count", "0").await?;
    wait_class(&b, "#alarm-badge", "on", false).await?;
    b.goto(&format!("{base}/alarms?state=active")).await?;
    wait_text(&b, "#no-alarms", "No alarm matches this filter").await?;
    shot(&b, "83-alarms-cleared").await?;
    b.close().await
}

/// The page's width beyond the viewport, in CSS pixels (0: no sideways scroll).
async fn overflow(b: &Browser) -> anyhow::Result<i64> {
    let v = b
        .client
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await?;
    Ok(v.as_i64().unwrap_or(i64::MAX))
}

/// #16 item 10: at a phone's 390 px, no main page scrolls sideways (wide tables scroll
/// inside their own box), and the pairing code field says what a code looks like.
#[tokio::test]
async fn the_main_pages_fit_a_phone_390_px_wide() -> anyhow::Result<()> {
    let (_hub, sites, cid, _tid) = util::paired_sites().await?;
    let a = sites[0].admin().await?;
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/resources"),
        serde_json::json!({"name": "temperature", "format": "number", "unit": "°C", "remote_sync": true}),
    )
    .await?;
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/devices"),
        serde_json::json!({"identity": "boiler-north-0001", "tags": {"site": "north", "floor": "3"}}),
    )
    .await?;
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/devices/boiler-north-0001/data"),
        serde_json::json!({"values": {"temperature": 21.5}}),
    )
    .await?;
    let base = &sites[0].url;
    let b = Browser::start().await?;
    sign_in(&b, base, &sites[0].opts.admin_password).await?;
    let chrome = b
        .client
        .execute("return window.outerWidth - window.innerWidth;", vec![])
        .await?
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    b.client.set_window_size(390 + chrome, 844).await?;
    let inner = b
        .client
        .execute("return window.innerWidth;", vec![])
        .await?
        .as_i64()
        .unwrap_or(0);
    assert!(
        inner <= 400,
        "the viewport is {inner} px wide, not a phone's"
    );

    for (i, path) in [
        "/".to_owned(),
        "/connectors/new".to_owned(),
        format!("/connectors/{cid}/devices"),
        format!("/connectors/{cid}/devices/boiler-north-0001"),
        format!("/connectors/{cid}/resources"),
        format!("/connectors/{cid}/settings"),
        format!("/connectors/{cid}/settings/remote-sync"),
        format!("/connectors/{cid}/settings/alarms"),
        "/alarms".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        b.goto(&format!("{base}{path}")).await?;
        b.wait_for("main").await?;
        let over = overflow(&b).await?;
        shot(&b, &format!("85-phone-{i}")).await?;
        assert!(
            over <= 0,
            "{path} scrolls sideways by {over} px at {inner} px"
        );
    }

    b.goto(&format!("{base}/connectors/new")).await?;
    click(&b, "label.switch").await?;
    let code = b.wait_for("#pairing-code").await?;
    assert_eq!(
        code.attr("placeholder").await?.as_deref(),
        Some("ABCD-EFGH-JK")
    );
    wait_text(&b, "#pairing-code-hint", "10 letters and digits").await?;
    b.close().await
}
