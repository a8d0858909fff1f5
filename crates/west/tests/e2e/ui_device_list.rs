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

/// The rows' identities, top to bottom.
async fn rows(b: &Browser) -> anyhow::Result<Vec<String>> {
    let v = b
        .client
        .execute(
            "return Array.from(document.querySelectorAll('#devices tbody tr'), (r) => r.dataset.device);",
            vec![],
        )
        .await?;
    Ok(serde_json::from_value(v)?)
}

/// Clicks a column's header and waits for the list sorted by it in `dir`.
async fn sort_by(b: &Browser, col: &str, dir: &str) -> anyhow::Result<()> {
    click(b, &format!("#sort-{col}")).await?;
    b.wait_for(&format!("th[aria-sort='{dir}'] #sort-{col}"))
        .await?;
    Ok(())
}

/// Every page of the API's list from `first` (a query), following `key` (`next` or `prev`).
async fn follow(
    a: &testkit::Api,
    list: &str,
    query: &str,
    start: Option<String>,
    key: &str,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cursor = start;
    loop {
        let url = match &cursor {
            Some(c) => format!("{list}?{query}&cursor={c}"),
            None => format!("{list}?{query}"),
        };
        let page = a.get_ok(&url).await?;
        let mut ids: Vec<String> = page["devices"]
            .as_array()
            .context("devices")?
            .iter()
            .filter_map(|d| d["identity"].as_str().map(str::to_owned))
            .collect();
        if key == "prev" {
            ids.extend(out);
            out = ids;
        } else {
            out.extend(ids);
        }
        match page[key].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(out),
        }
    }
}

/// #16 item 5: sortable columns. The store sorts the whole list (never one page of it), a
/// header sorts by its column and a second click the other way round; paging, the filters
/// and the total follow the sort. The API sorts the same way, with cursors both ways.
#[tokio::test]
async fn the_device_list_sorts_by_each_column_across_pages() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let a = site.admin().await?;
    let ids: Vec<String> = (0..130).map(|i| format!("dev-{i:03}")).collect();
    let cid = util::thermometers(&a, &ids).await?;
    for id in ["dev-050", "dev-100", "dev-120"] {
        a.patch_ok(
            &format!("/api/v1/connectors/{cid}/devices/{id}"),
            json!({"state": "locked"}),
        )
        .await?;
    }
    // dev-010 … dev-019 wrote a minute apart within the last hour (dev-019 last), dev-005
    // three days ago; the other 119 never wrote.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as i64;
    let mut points: Vec<serde_json::Value> = (10..20)
        .map(|i| {
            json!({"device": format!("dev-{i:03}"), "t": now - (30 - i) * 60_000_000,
                   "values": {"temperature": 20.0}})
        })
        .collect();
    points.push(json!({"device": "dev-005", "t": now - 3 * 86_400_000_000,
                       "values": {"temperature": 20.0}}));
    a.post_ok(&format!("/api/v1/connectors/{cid}/data"), json!(points))
        .await?;

    // The API: the whole list under a sort, forwards and backwards, each device once.
    let list = format!("/api/v1/connectors/{cid}/devices");
    let query = "sort=last_seen&order=desc&limit=40";
    let forwards = follow(&a, &list, query, None, "next").await?;
    ensure!(forwards.len() == 130, "{}", forwards.len());
    ensure!(
        forwards[..3] == ["dev-019", "dev-018", "dev-017"],
        "{forwards:?}"
    );
    // Then never seen, identities descending too.
    ensure!(forwards[10] == "dev-005" && forwards[11] == "dev-129");
    let mut last = a.get_ok(&format!("{list}?{query}")).await?;
    while let Some(next) = last["next"].as_str().map(str::to_owned) {
        last = a.get_ok(&format!("{list}?{query}&cursor={next}")).await?;
    }
    let back_from = last["prev"].as_str().context("the last page has a prev")?;
    let backwards = follow(&a, &list, query, Some(back_from.to_owned()), "prev").await?;
    let shown_last = last["devices"].as_array().context("devices")?.len();
    ensure!(backwards == forwards[..130 - shown_last], "{backwards:?}");
    let page = a.get_ok(&format!("{list}?state=locked&sort=state")).await?;
    ensure!(page["total"] == 3, "{page}");
    let page = a.get_ok(&format!("{list}?seen=stale")).await?;
    ensure!(
        page["total"] == 1 && page["devices"][0]["identity"] == "dev-005",
        "{page}"
    );
    let page = a.get_ok(&format!("{list}?seen=never&limit=1")).await?;
    ensure!(page["total"] == 119, "{page}");
    for bad in ["sort=colour", "order=up", "state=asleep", "seen=1y"] {
        let (status, body) = a.get(&format!("{list}?{bad}")).await?;
        ensure!(
            status == 400 && body["error"] == "invalid_query",
            "{bad}: {status} {body}"
        );
    }
    let other = a.get_ok(&format!("{list}?sort=state&limit=10")).await?;
    let cursor = other["next"].as_str().context("next")?;
    let (status, body) = a.get(&format!("{list}?cursor={cursor}")).await?;
    ensure!(
        status == 400
            && body["message"]
                .as_str()
                .unwrap_or("")
                .contains("sorted another way"),
        "a cursor of another sort: {status} {body}"
    );

    // The browser: click the headers.
    let b = Browser::start().await?;
    sign_in(&b, &site.url, &site.opts.admin_password).await?;
    b.goto(&format!("{}/connectors/{cid}/devices", site.url))
        .await?;
    b.wait_for("th[aria-sort='ascending'] #sort-identity")
        .await?;
    sort_by(&b, "last_seen", "descending").await?;
    ensure!(rows(&b).await?[..2] == ["dev-019", "dev-018"]);
    sort_by(&b, "last_seen", "ascending").await?;
    // Never seen first (in identity order), then the oldest point: a sort of the whole list.
    let page1 = rows(&b).await?;
    ensure!(
        page1.len() == 100 && page1[..2] == ["dev-000", "dev-001"],
        "{page1:?}"
    );
    click(&b, "#next-page").await?;
    wait_text(&b, "#device-pager", "page 2").await?;
    let page2 = rows(&b).await?;
    ensure!(
        page2.len() == 30
            && page2[0] == "dev-111"
            && page2[19] == "dev-005"
            && page2[29] == "dev-019",
        "{page2:?}"
    );
    click(&b, "#prev-page").await?;
    wait_text(&b, "#device-pager", "page 1").await?;
    ensure!(rows(&b).await? == page1);
    sort_by(&b, "state", "ascending").await?;
    ensure!(rows(&b).await?[..4] == ["dev-050", "dev-100", "dev-120", "dev-000"]);
    // The filters keep the sort and count exactly what they keep.
    b.client
        .execute(
            "document.getElementById('filter-seen').value = 'stale'; return null;",
            vec![],
        )
        .await?;
    click(&b, "#device-filter button[type=submit]").await?;
    wait_text(&b, "#device-total", "1 of 130 devices matches").await?;
    ensure!(rows(&b).await? == ["dev-005"]);
    b.wait_for("th[aria-sort='ascending'] #sort-state").await?;
    shot(&b, "72-device-list-sorted").await?;
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

/// The id and value of the focused element, and whether it is marked invalid.
async fn focused(b: &Browser) -> anyhow::Result<(String, String, bool)> {
    let v = b
        .client
        .execute(
            "const e = document.activeElement;
             return e ? [e.id, e.value || '', e.getAttribute('aria-invalid') === 'true'] : ['', '', false];",
            vec![],
        )
        .await?;
    Ok(serde_json::from_value(v)?)
}

/// Submits the form around `css` with the browser's own checks off, so that the site's
/// refusal is what shows.
async fn submit_unchecked(b: &Browser, css: &str) -> anyhow::Result<()> {
    b.client
        .execute(
            "const f = document.querySelector(arguments[0]).form; f.noValidate = true; \
             f.querySelector('button[type=submit]').click(); return null;",
            vec![json!(css)],
        )
        .await?;
    Ok(())
}

/// #16 item 10: a form refused with a sentence focuses the field at fault and keeps what
/// was typed: Add device (identity, tags), the device page's tag, configuration and grant
/// forms, and sign-in (the password).
#[tokio::test]
async fn a_refused_form_focuses_its_field_and_keeps_what_was_typed() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let a = site.admin().await?;
    let cid = util::thermometers(&a, &["d1".to_owned()]).await?;
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/resources"),
        json!({"name": "setpoint", "format": "number", "settable": true}),
    )
    .await?;
    let b = Browser::start().await?;

    // Sign-in: a wrong password keeps the username and focuses the password.
    b.goto(&format!("{}/login", site.url)).await?;
    fill(&b, "#username", "admin").await?;
    fill(&b, "#password", "not-the-password").await?;
    click(&b, "#sign-in").await?;
    let error = wait_text(&b, "#form-error", "").await?;
    ensure!(error.starts_with(char::is_uppercase), "a sentence: {error}");
    let (id, _, invalid) = focused(&b).await?;
    ensure!(id == "password" && invalid, "{id}");
    let user = b.wait_for("#username").await?.prop("value").await?;
    ensure!(user.as_deref() == Some("admin"));
    sign_in(&b, &site.url, &site.opts.admin_password).await?;

    // Add device: a bad identity, then bad tags, each focused, the rest kept.
    b.goto(&format!("{}/connectors/{cid}/devices/new", site.url))
        .await?;
    fill(&b, "#device-identity", "no spaces allowed").await?;
    fill(&b, "#device-tags", "site=north").await?;
    submit_unchecked(&b, "#device-identity").await?;
    wait_text(&b, "#form-error", "Device identity").await?;
    let (id, value, invalid) = focused(&b).await?;
    ensure!(
        id == "device-identity" && value == "no spaces allowed" && invalid,
        "{id} {value}"
    );
    fill(&b, "#device-identity", "d2").await?;
    fill(&b, "#device-tags", "just-a-word").await?;
    submit_unchecked(&b, "#device-identity").await?;
    wait_text(&b, "#form-error", "Tag").await?;
    let (id, value, invalid) = focused(&b).await?;
    ensure!(
        id == "device-tags" && value == "just-a-word" && invalid,
        "{id} {value}"
    );
    let kept = b.wait_for("#device-identity").await?.prop("value").await?;
    ensure!(kept.as_deref() == Some("d2"), "{kept:?}");

    // The device page: each form's refusal comes back focused and filled in.
    let page = format!("{}/connectors/{cid}/devices/d1", site.url);
    b.goto(&page).await?;
    fill(&b, "#tag-key", "bad key").await?;
    fill(&b, "#tag-value", "north").await?;
    submit_unchecked(&b, "#tag-key").await?;
    wait_text(&b, "#flash", "Tag key").await?;
    let (id, value, invalid) = focused(&b).await?;
    ensure!(
        id == "tag-key" && value == "bad key" && invalid,
        "{id} {value}"
    );
    let kept = b.wait_for("#tag-value").await?.prop("value").await?;
    ensure!(kept.as_deref() == Some("north"), "{kept:?}");

    fill(&b, "#tag-key", "site").await?;
    fill(&b, "#tag-value", &"x".repeat(300)).await?;
    submit_unchecked(&b, "#tag-key").await?;
    wait_text(&b, "#flash", "longer than").await?;
    let (id, _, invalid) = focused(&b).await?;
    ensure!(id == "tag-value" && invalid, "{id}");

    fill(&b, "#config-setpoint", "warm").await?;
    submit_unchecked(&b, "#config-setpoint").await?;
    wait_text(&b, "#flash", "not a valid number").await?;
    let (id, value, invalid) = focused(&b).await?;
    ensure!(
        id == "config-setpoint" && value == "warm" && invalid,
        "{id} {value}"
    );

    fill(&b, "#grant-principal", &"p".repeat(200)).await?;
    submit_unchecked(&b, "#grant-principal").await?;
    b.wait_for("#grant-principal[aria-invalid='true']").await?;
    let (id, value, invalid) = focused(&b).await?;
    ensure!(
        id == "grant-principal" && value.len() == 200 && invalid,
        "{id}"
    );
    shot(&b, "73-device-form-refused").await?;

    // Nothing of it was stored.
    let d = a
        .get_ok(&format!("/api/v1/connectors/{cid}/devices/d1"))
        .await?;
    ensure!(
        d["tags"] == json!({}) && d["permissions"] == json!([]) && d["config"] == json!({}),
        "{d}"
    );
    b.close().await
}

/// Fills the custom range's inputs with these times (ms) as the browser's local time.
async fn custom_range(b: &Browser, from_ms: i64, to_ms: i64) -> anyhow::Result<()> {
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
    click(b, "#range-apply").await
}

/// #16 item 6 on the device page itself: the data view's custom range, applied to every
/// chart of the page, kept in the address (a reload keeps it) and carried to a resource's
/// data view; a reversed range is refused in words with its field focused.
#[tokio::test]
async fn the_device_page_has_a_custom_range_that_the_data_view_keeps() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let a = site.admin().await?;
    let cid = util::thermometers(&a, &["d1".to_owned()]).await?;
    // Twelve points a minute apart, the last a minute ago.
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let at: Vec<i64> = (0..12).map(|i| now_ms - (12 - i) * 60_000).collect();
    let points: Vec<serde_json::Value> = at
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"t": t * 1000, "values": {"temperature": 20 + i}}))
        .collect();
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/devices/d1/data"),
        json!(points),
    )
    .await?;

    let b = Browser::start().await?;
    sign_in(&b, &site.url, &site.opts.admin_password).await?;
    b.goto(&format!("{}/connectors/{cid}/devices/d1", site.url))
        .await?;
    b.wait_for("figure.chart svg.plot[data-points='12']")
        .await?;
    // Points 3 to 8: six of them.
    custom_range(&b, at[3] - 30_000, at[8] + 30_000).await?;
    b.wait_for("figure.chart svg.plot[data-range='custom'][data-points='6']")
        .await?;
    let here = b.client.current_url().await?;
    let kept: std::collections::HashMap<_, _> = here.query_pairs().into_owned().collect();
    ensure!(
        kept.contains_key("from") && kept.contains_key("to"),
        "the range is in the address: {here}"
    );
    // A reload shows the same range.
    b.goto(here.as_str()).await?;
    b.wait_for("figure.chart svg.plot[data-range='custom'][data-points='6']")
        .await?;
    let reset = b.wait_for("#zoom-reset").await?.attr("hidden").await?;
    ensure!(reset.is_none(), "Reset zoom is offered");
    // The resource's data view opens over it.
    click(&b, "figure.chart figcaption a").await?;
    b.wait_for("#data-chart svg.plot[data-range='custom'][data-points='6']")
        .await?;
    let from = b.wait_for("#range-from").await?.prop("value").await?;
    ensure!(from.is_some_and(|f| !f.is_empty()), "the inputs show it");
    // A range that ends before it starts is refused in words, its start focused.
    custom_range(&b, at[8], at[3]).await?;
    wait_text(&b, "#range-error", "Choose a start before the end").await?;
    let (id, _, invalid) = focused(&b).await?;
    ensure!(id == "range-from" && invalid, "{id}");
    // A range of the picker leaves the custom one, in the address too.
    click(&b, "[data-range-picker] a[data-range='24h']").await?;
    b.wait_for("#data-chart svg.plot[data-range='24h'][data-points='12']")
        .await?;
    let here = b.client.current_url().await?;
    ensure!(!here.query().unwrap_or("").contains("from="), "{here}");
    shot(&b, "74-device-custom-range").await?;
    b.close().await
}
