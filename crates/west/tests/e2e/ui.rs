//! The web UI in headless Chromium against a real `west site`: sign in through the form,
//! create a connector (first refused with the Remote-Sync Target toggle on, the form kept
//! filled in), a `number` resource and a device through the UI, write points with the device
//! token the UI showed once (with the device API's URL and a request to copy, which works as
//! shown), and watch them appear on the device page's chart without a reload.
//!
//! Screenshots of each main page at 1280×800 land in `target/ui-screenshots/` for a person to
//! look at; the test asserts on the DOM, never on pixels.

use std::path::PathBuf;

use anyhow::{Context, ensure};
use fantoccini::Locator;
use fantoccini::actions::{InputSource, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
use serde_json::json;
use testkit::browser::Browser;
use testkit::{DEADLINE, SiteOpts, SiteProc, eventually};

use crate::util;

/// Points the test writes, one a minute over the last quarter hour.
const POINTS: usize = 12;

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots")
}

pub(crate) async fn shot(b: &Browser, name: &str) -> anyhow::Result<()> {
    b.screenshot(&shots().join(format!("{name}.png"))).await
}

pub(crate) async fn fill(b: &Browser, css: &str, text: &str) -> anyhow::Result<()> {
    let input = b.wait_for(css).await?;
    input
        .clear()
        .await
        .with_context(|| format!("clearing {css}"))?;
    input
        .send_keys(text)
        .await
        .with_context(|| format!("typing into {css}"))
}

pub(crate) async fn click(b: &Browser, css: &str) -> anyhow::Result<()> {
    b.wait_for(css)
        .await?
        .click()
        .await
        .with_context(|| format!("clicking {css}"))
}

async fn text(b: &Browser, css: &str) -> anyhow::Result<String> {
    Ok(b.wait_for(css).await?.text().await?)
}

async fn value(b: &Browser, css: &str) -> anyhow::Result<String> {
    Ok(b.wait_for(css)
        .await?
        .prop("value")
        .await?
        .unwrap_or_default())
}

/// Waits until the element at `css` exists and its text contains `needle` (a click that
/// navigates may return before the next page is there).
pub(crate) async fn wait_text(b: &Browser, css: &str, needle: &str) -> anyhow::Result<String> {
    eventually(&format!("{css} to say {needle:?}"), DEADLINE, || async {
        let t = match b.client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => return Ok(None),
        };
        Ok(t.contains(needle).then_some(t))
    })
    .await
}

/// Waits until `attr` of the element at `css` satisfies `ok`.
async fn wait_attr(
    b: &Browser,
    css: &str,
    attr: &str,
    ok: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    eventually(&format!("{css} [{attr}]"), DEADLINE, || async {
        let found = b.client.find(Locator::Css(css)).await;
        let v = match found {
            Ok(e) => e.attr(attr).await?.unwrap_or_default(),
            Err(_) => return Ok(None),
        };
        Ok(ok(&v).then_some(v))
    })
    .await
}

#[tokio::test]
async fn operator_creates_a_connector_resource_and_device_and_sees_data_on_the_chart()
-> anyhow::Result<()> {
    let opts = SiteOpts::new("site-a");
    let password = opts.admin_password.clone();
    let site = SiteProc::start(util::bin(), opts).await?;
    let b = Browser::start().await?;
    let url = |path: &str| format!("{}{path}", site.url);

    // Unauthenticated pages redirect to the sign-in form; a wrong password is refused.
    b.goto(&url("/connectors/new")).await?;
    b.wait_for("#login-form").await?;
    fill(&b, "#username", "admin").await?;
    fill(&b, "#password", "not-the-password").await?;
    click(&b, "#sign-in").await?;
    let refusal = text(&b, "#form-error").await?;
    ensure!(refusal.contains("Wrong username or password."), "{refusal}");
    shot(&b, "01-login").await?;
    fill(&b, "#password", &password).await?;
    click(&b, "#sign-in").await?;

    // Signing in returns to the page asked for: Create a Connector. With the Target toggle
    // on, the site cannot pair yet: the reason shows and the form stays filled in.
    b.wait_for("#connector-form").await?;
    let header = text(&b, "header.top").await?;
    ensure!(
        header.contains("site-a") && header.contains("admin") && header.contains("Hub:"),
        "header: {header}"
    );
    fill(&b, "#name", "plant-north").await?;
    fill(&b, "#description", "Boilers and pumps of the north plant").await?;
    ensure!(!b.wait_for("#remote-site").await?.is_displayed().await?);
    click(&b, "label.switch").await?;
    ensure!(b.wait_for("#remote-site").await?.is_displayed().await?);
    fill(&b, "#remote-site", "site-b").await?;
    fill(&b, "#remote-connector-id", "09iolmnn8090ol").await?;
    fill(&b, "#pairing-code", "4711-0815").await?;
    click(&b, "#create").await?;
    let error = text(&b, "#form-error").await?;
    ensure!(error.contains("site-b") && error.contains("hub"), "{error}");
    ensure!(value(&b, "#name").await? == "plant-north");
    ensure!(value(&b, "#remote-site").await? == "site-b");
    ensure!(value(&b, "#remote-connector-id").await? == "09iolmnn8090ol");
    ensure!(value(&b, "#pairing-code").await? == "4711-0815");
    shot(&b, "02-create-connector-refused").await?;

    // Without the toggle the connector is created and its Devices tab opens.
    click(&b, "label.switch").await?;
    click(&b, "#create").await?;
    b.wait_for("#add-device").await?;
    wait_text(&b, "#flash", "plant-north").await?;
    let cid = text(&b, "#connector-id").await?;
    ensure!(cid.len() == 14, "connector id {cid:?}");

    // A number resource through the Resources tab.
    click(&b, "nav.tabs a[href$='/resources']").await?;
    fill(&b, "#resource-name", "temperature").await?;
    b.wait_for("#resource-format")
        .await?
        .select_by_value("number")
        .await?;
    fill(&b, "#resource-unit", "°C").await?;
    click(&b, "#add-resource").await?;
    b.wait_for("tr[data-resource='temperature']").await?;
    fill(&b, "#resource-name", "setpoint").await?;
    fill(&b, "#resource-unit", "°C").await?;
    click(&b, "#resource-settable").await?;
    click(&b, "#add-resource").await?;
    b.wait_for("tr[data-resource='setpoint']").await?;
    shot(&b, "03-resources").await?;

    // A device through Add device; its token is shown once.
    click(&b, "nav.tabs a[href$='/devices']").await?;
    click(&b, "#add-device").await?;
    fill(&b, "#device-identity", "00AB01").await?;
    fill(&b, "#device-tags", "site=north\nrack=4").await?;
    click(&b, "#create-device").await?;
    let token = text(&b, "#device-token").await?;
    ensure!(token.len() >= 32, "device token {token:?}");
    let copy = b
        .wait_for("#device-created button.copy")
        .await?
        .attr("data-copy")
        .await?;
    ensure!(
        copy.as_deref() == Some(token.as_str()),
        "copy button carries the token"
    );
    // The same page says where the device sends its data, with a command to copy.
    let api_url = text(&b, "#device-api-url").await?;
    ensure!(
        api_url == format!("{}/api/v1/connectors/{cid}/devices/00AB01/data", site.url),
        "device API URL {api_url:?}"
    );
    let curl = b.wait_for("#device-curl").await?;
    let command = curl.text().await?;
    let body = curl.attr("data-body").await?.unwrap_or_default();
    ensure!(
        command.starts_with(&format!("curl -X POST '{api_url}'"))
            && command.contains(&format!("Authorization: Bearer {token}"))
            && command.contains(&format!("-d '{body}'"))
            && body.contains("temperature"),
        "curl example {command:?} with body {body:?}"
    );
    let copy_command = b
        .wait_for("#device-created .example button.copy")
        .await?
        .attr("data-copy")
        .await?;
    ensure!(
        copy_command.as_deref() == Some(command.as_str()),
        "{copy_command:?}"
    );
    shot(&b, "04-device-created").await?;

    // The device page draws an empty chart, then the points written through the device API
    // appear on it without a reload.
    click(&b, "#open-device").await?;
    let chart = "figure.chart[data-resource='temperature'] svg.plot";
    wait_attr(&b, chart, "data-points", |v| v == "0").await?;
    let now = site::clock::now_micros();
    let points: Vec<_> = (0..POINTS)
        .map(|i| {
            let minutes_ago = (POINTS - 1 - i) as i64;
            json!({ "t": now - minutes_ago * 60_000_000, "values": { "temperature": 20.0 + i as f64 * 0.5 } })
        })
        .collect();
    let device = testkit::Api::new(&site.url).with_token(&token);
    let answer = device
        .post_ok(
            &format!("/api/v1/connectors/{cid}/devices/00AB01/data"),
            json!(points),
        )
        .await?;
    ensure!(answer["accepted"] == POINTS, "{answer}");

    wait_attr(&b, chart, "data-points", |v| v == POINTS.to_string()).await?;
    let last = wait_attr(&b, chart, "data-last", |v| !v.is_empty()).await?;
    ensure!(last == "25.5", "last plotted value {last}");
    let dots = b
        .client
        .find_all(Locator::Css(&format!("{chart} circle.pt")))
        .await?;
    ensure!(dots.len() == POINTS, "{} plotted points", dots.len());
    eventually("the latest value to update", DEADLINE, || async {
        let t = text(&b, "td[data-value-of='temperature']").await?;
        Ok((t == "25.5 °C").then_some(()))
    })
    .await?;
    // The range picker redraws without a reload.
    click(&b, "[data-range-picker] a[data-range='24h']").await?;
    wait_attr(&b, chart, "data-range", |v| v == "24h").await?;
    wait_attr(&b, chart, "data-points", |v| v == POINTS.to_string()).await?;

    // Tags and configuration are edited in place; each change comes back as a notice.
    fill(&b, "#tag-key", "floor").await?;
    fill(&b, "#tag-value", "2").await?;
    click(&b, "#tag-form button").await?;
    wait_text(&b, "#flash", "floor").await?;
    let tags = text(&b, "#tags").await?;
    ensure!(
        tags.contains("site") && tags.contains("north") && tags.contains("floor"),
        "tags {tags}"
    );
    fill(&b, "#config input[name='value']", "21.5").await?;
    click(&b, "#config button[value='set']").await?;
    wait_text(&b, "#flash", "setpoint").await?;
    ensure!(value(&b, "#config input[name='value']").await? == "21.5");
    wait_attr(&b, chart, "data-points", |v| v == POINTS.to_string()).await?;
    shot(&b, "05-device").await?;

    // The data view of the resource draws the same series, larger.
    click(&b, "figure.chart[data-resource='temperature'] figcaption a").await?;
    wait_attr(&b, "#data-chart svg.plot", "data-points", |v| {
        v == POINTS.to_string()
    })
    .await?;
    b.wait_for("#recent tbody tr td.num").await?;
    shot(&b, "06-data-view").await?;

    // A custom range shows only its points, and the CSV link covers it; a range that ends
    // before it starts is refused in words and changes nothing.
    let plot = "#data-chart svg.plot";
    let now_ms = now / 1000;
    set_range(&b, now_ms - 330_000, now_ms + 60_000).await?;
    click(&b, "#range-apply").await?;
    wait_attr(&b, plot, "data-range", |v| v == "custom").await?;
    wait_attr(&b, plot, "data-points", |v| v == "6").await?;
    let href = b
        .wait_for("#export-csv")
        .await?
        .attr("href")
        .await?
        .unwrap_or_default();
    // The inputs hold whole seconds.
    let since_s = (now_ms - 330_000) / 1000;
    ensure!(
        href.contains(&format!("since={}", since_s * 1_000_000)),
        "{href}"
    );
    set_range(&b, now_ms, now_ms - 60_000).await?;
    click(&b, "#range-apply").await?;
    wait_text(&b, "#range-error", "start before the end").await?;
    ensure!(
        attr(&b, plot, "data-points").await? == "6",
        "the chart stays as it was"
    );
    shot(&b, "06a-custom-range").await?;

    // Back to the last hour, then zoom by dragging across the newest tenth of the chart:
    // fewer points, and Reset zoom brings them back.
    click(&b, "#zoom-reset").await?;
    wait_attr(&b, plot, "data-range", |v| v == "1h").await?;
    wait_attr(&b, plot, "data-points", |v| v == POINTS.to_string()).await?;
    let svg = b.wait_for(plot).await?;
    let (_, _, width, _) = svg.rectangle().await?;
    let (left, right) = (52.0, 12.0);
    let at = |share: f64| left + share * (width - left - right) - width / 2.0;
    let drag = MouseActions::new("mouse".into())
        .then(PointerAction::MoveToElement {
            element: svg.clone(),
            duration: None,
            x: at(0.9),
            y: 0.0,
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::MoveToElement {
            element: svg.clone(),
            duration: Some(std::time::Duration::from_millis(150)),
            x: at(1.0) - 2.0,
            y: 0.0,
        })
        .then(PointerAction::Up {
            button: MOUSE_BUTTON_LEFT,
        });
    b.client.perform_actions(drag).await?;
    wait_attr(&b, plot, "data-range", |v| v == "custom").await?;
    let zoomed: usize = attr(&b, plot, "data-points").await?.parse()?;
    ensure!(
        (1..POINTS).contains(&zoomed),
        "{zoomed} points after zooming on the newest tenth"
    );
    ensure!(b.wait_for("#zoom-reset").await?.is_displayed().await?);
    shot(&b, "06b-zoomed").await?;
    click(&b, "#zoom-reset").await?;
    wait_attr(&b, plot, "data-points", |v| v == POINTS.to_string()).await?;

    // The Devices tab lists the device with its tags; a tag filter that matches nothing
    // empties it.
    b.goto(&url(&format!("/connectors/{cid}/devices"))).await?;
    b.wait_for("tr[data-device='00AB01']").await?;
    shot(&b, "07-devices").await?;
    b.goto(&url(&format!("/connectors/{cid}/devices?tag=site:south")))
        .await?;
    b.wait_for("#device-filter").await?;
    ensure!(
        b.client
            .find(Locator::Css("tr[data-device='00AB01']"))
            .await
            .is_err(),
        "the filter site:south must hide 00AB01"
    );

    // The example request of the device's start page works as shown, and the site never
    // logged the token.
    let example = testkit::Api::new(&site.url).with_token(&token);
    let path = api_url
        .strip_prefix(site.url.as_str())
        .context("the device API URL is on this site")?;
    let answer = example
        .post_ok(
            path,
            serde_json::from_str(&body).context("the example body is JSON")?,
        )
        .await?;
    ensure!(answer["accepted"] == 1, "{answer}");
    ensure!(
        !util::logged(&site.proc, &token),
        "the site logged the device token"
    );

    // Resource settings: Remote-Sync toggle saved through the same function as the API.
    b.goto(&url(&format!("/connectors/{cid}/resources/temperature")))
        .await?;
    click(&b, "label.switch").await?;
    click(&b, "#save-resource").await?;
    wait_text(&b, "#flash", "saved").await?;
    let admin = site.admin().await?;
    let saved = admin
        .get_ok(&format!("/api/v1/connectors/{cid}/resources/temperature"))
        .await?;
    ensure!(saved["remote_sync"] == true, "{saved}");
    ensure!(
        b.wait_for("#remote-sync-toggle")
            .await?
            .is_selected()
            .await?
    );
    shot(&b, "08-resource-settings").await?;

    // Settings: General offers deletion with a confirmation; Remote-Sync needs the hub.
    b.goto(&url(&format!("/connectors/{cid}/settings"))).await?;
    b.wait_for("#delete-connector").await?;
    shot(&b, "09-settings-general").await?;
    b.goto(&url(&format!("/connectors/{cid}/settings/remote-sync")))
        .await?;
    let enable = b.wait_for("#enable-remote-sync").await?;
    ensure!(
        !enable.is_enabled().await?,
        "ENABLE REMOTE-SYNC without a hub"
    );
    let note = text(&b, "#enable-note").await?;
    ensure!(note.contains("requires a hub connection"), "{note}");
    shot(&b, "10-settings-remote-sync").await?;

    // Home lists the connector with its counts.
    click(&b, "a.brand").await?;
    let row = text(&b, &format!("tr[data-connector='{cid}']")).await?;
    ensure!(row.contains("plant-north"), "{row}");
    shot(&b, "11-connectors").await?;

    // Deleting asks first, then deletes; signing out ends the session.
    b.goto(&url(&format!("/connectors/{cid}/settings"))).await?;
    click(&b, "#delete-connector").await?;
    wait_text(&b, "#confirm-text", "cannot be undone").await?;
    shot(&b, "12-confirm-delete").await?;
    click(&b, "#confirm-ok").await?;
    wait_text(&b, "#flash", "deleted").await?;
    let left = admin.get_ok("/api/v1/connectors").await?;
    ensure!(left.as_array().is_some_and(Vec::is_empty), "{left}");

    click(&b, "header form[action='/logout'] button").await?;
    b.wait_for("#login-form").await?;
    b.goto(&url("/")).await?;
    b.wait_for("#login-form").await?;

    b.close().await
}

/// Fills the custom range's inputs with these times (ms) as the browser's local time.
async fn set_range(b: &Browser, from_ms: i64, to_ms: i64) -> anyhow::Result<()> {
    b.client
        .execute(
            "const f = (ms) => { const d = new Date(ms), p = (n) => String(n).padStart(2, '0');
               return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`; };
             document.getElementById('range-from').value = f(arguments[0]);
             document.getElementById('range-to').value = f(arguments[1]);
             return null;",
            vec![json!(from_ms), json!(to_ms)],
        )
        .await?;
    Ok(())
}

async fn attr(b: &Browser, css: &str, name: &str) -> anyhow::Result<String> {
    Ok(b.wait_for(css).await?.attr(name).await?.unwrap_or_default())
}

/// Signs in on the site at `base` in the same browser (each site is its own origin, so each
/// keeps its own session cookie).
pub(crate) async fn sign_in(b: &Browser, base: &str, password: &str) -> anyhow::Result<()> {
    b.goto(&format!("{base}/login")).await?;
    fill(b, "#username", "admin").await?;
    fill(b, "#password", password).await?;
    click(b, "#sign-in").await?;
    b.wait_for("header.top").await?;
    Ok(())
}

/// Whether the sync facts say nothing has been applied yet.
fn last_applied_is_none(facts: &str) -> bool {
    facts
        .split("Last applied")
        .nth(1)
        .is_some_and(|rest| rest.trim_start().starts_with("never"))
}

/// The first window of the browser (the Source's tab).
async fn source_tab_again(b: &Browser) -> anyhow::Result<fantoccini::wd::WindowHandle> {
    let windows = b.client.windows().await?;
    windows.into_iter().next().context("no window")
}

/// Seconds left on the countdown `mm:ss`, if it shows one.
fn countdown_secs(text: &str) -> Option<u32> {
    let (m, s) = text.trim().split_once(':')?;
    Some(m.parse::<u32>().ok()? * 60 + s.parse::<u32>().ok()?)
}

#[tokio::test]
async fn two_operators_pair_their_sites_entirely_through_the_web_uis() -> anyhow::Result<()> {
    let (_hub, sites) = util::hub_and_sites(&[("site-a", &[]), ("site-b", &[])]).await?;
    let (a, b_site) = (&sites[0], &sites[1]);
    let b = Browser::start().await?;

    // Source operator: a connector, then Settings → Remote-Sync → ENABLE REMOTE-SYNC.
    sign_in(&b, &a.url, &a.opts.admin_password).await?;
    b.goto(&format!("{}/connectors/new", a.url)).await?;
    fill(&b, "#name", "plant-north").await?;
    click(&b, "#create").await?;
    b.wait_for("#add-device").await?;
    let source_id = text(&b, "#connector-id").await?;
    b.goto(&format!(
        "{}/connectors/{source_id}/settings/remote-sync",
        a.url
    ))
    .await?;
    click(&b, "#enable-remote-sync").await?;
    wait_text(&b, "#confirm-text", "cannot be undone").await?;
    click(&b, "#confirm-ok").await?;

    // The countdown runs, and the card says what the Target operator must enter.
    let first = wait_text(&b, "#countdown", ":").await?;
    let start = countdown_secs(&first).context("countdown shows mm:ss")?;
    ensure!(
        (540..=600).contains(&start),
        "a fresh ten-minute countdown: {first}"
    );
    eventually("the countdown to tick", DEADLINE, || async {
        let now = text(&b, "#countdown").await?;
        Ok(countdown_secs(&now).filter(|s| *s < start))
    })
    .await?;
    let card = text(&b, "section.pairing").await?;
    ensure!(
        card.contains("site-a") && card.contains(&source_id),
        "{card}"
    );
    let code = text(&b, "#pairing-code").await?;
    ensure!(
        code.len() == 12 && code.matches('-').count() == 2,
        "code {code:?}"
    );
    shot(&b, "20-pairing-countdown").await?;

    // Target operator, on the other site in a second tab: Create a Connector with the
    // Target toggle on. The Source's tab stays open on the countdown.
    let source_tab = b.client.window().await?;
    let target_tab = b.client.new_window(true).await?;
    let target_tab = target_tab.handle;
    b.client.switch_to_window(target_tab.clone()).await?;
    sign_in(&b, &b_site.url, &b_site.opts.admin_password).await?;
    b.goto(&format!("{}/connectors/new", b_site.url)).await?;
    fill(&b, "#name", "plant-north-copy").await?;
    click(&b, "label.switch").await?;
    fill(&b, "#remote-site", "site-a").await?;
    fill(&b, "#remote-connector-id", &source_id).await?;
    fill(&b, "#pairing-code", &code.to_lowercase()).await?;
    click(&b, "#create").await?;
    b.wait_for("#add-device").await?;
    let target_id = text(&b, "#connector-id").await?;
    let head = text(&b, "div.page-head").await?;
    ensure!(head.contains("Target") && head.contains("site-a"), "{head}");
    b.goto(&b_site.url).await?;
    let row = text(&b, "table").await?;
    ensure!(
        row.contains("plant-north-copy") && row.contains("Target"),
        "{row}"
    );
    shot(&b, "21-target-connectors").await?;

    // Back on the Source's tab, untouched since the countdown: it turned to "Paired" by
    // itself.
    b.client.switch_to_window(source_tab).await?;
    let paired = wait_text(&b, "main", "Paired").await?;
    ensure!(paired.contains("site-b"), "{paired}");
    ensure!(paired.contains("cannot be undone"), "{paired}");
    shot(&b, "22-source-paired").await?;
    b.goto(&a.url).await?;
    let row = text(&b, "table").await?;
    ensure!(row.contains("Source") && row.contains("site-b"), "{row}");
    // The Target's Remote-Sync tab shows data arriving, live: open it first, then write.
    b.client.switch_to_window(target_tab).await?;
    b.goto(&format!(
        "{}/connectors/{target_id}/settings/remote-sync",
        b_site.url
    ))
    .await?;
    let before = text(&b, "#sync-live").await?;
    ensure!(last_applied_is_none(&before), "{before}");
    let (api_a, api_b) = (a.admin().await?, b_site.admin().await?);
    api_a
        .post_ok(
            &format!("/api/v1/connectors/{source_id}/resources"),
            json!({"name": "temperature", "format": "number", "remote_sync": true}),
        )
        .await?;
    api_b
        .post_ok(
            &format!("/api/v1/connectors/{target_id}/resources"),
            json!({"name": "temperature", "format": "number"}),
        )
        .await?;
    api_a
        .post_ok(
            &format!("/api/v1/connectors/{source_id}/devices"),
            json!({"identity": "00AB01"}),
        )
        .await?;
    api_a
        .post_ok(
            &format!("/api/v1/connectors/{source_id}/devices/00AB01/data"),
            json!({"values": {"temperature": 21.5}}),
        )
        .await?;
    eventually(
        "the Target tab to show an applied point",
        DEADLINE,
        || async {
            let now = text(&b, "#sync-live").await?;
            Ok((!last_applied_is_none(&now)).then_some(()))
        },
    )
    .await?;
    shot(&b, "23-target-sync-live").await?;
    b.client
        .switch_to_window(source_tab_again(&b).await?)
        .await?;

    // Deleting is disabled with the reason.
    b.goto(&format!("{}/connectors/{source_id}/settings", a.url))
        .await?;
    let general = text(&b, "main").await?;
    ensure!(general.contains("paired"), "{general}");
    b.close().await
}
