//! Two sites that run different versions of West (docs/sync.md, "Versions"): when the
//! peer's sync messages carry another protocol version, both sites say so — the Remote-Sync
//! status (`link.version_mismatch`: "peer runs an older version" on the newer site), the log
//! naming both versions, `/metrics`, and the Remote-Sync tab in words — instead of stalling
//! on messages they cannot read. Nothing syncs meanwhile and nothing is lost: once both run
//! the same version, what waited arrives by itself.
//!
//! Site-b plays a site of the previous version with the test-only flag
//! `--test-sync-version 1` (its sync messages carry version 1, and it reads only those).

use serde_json::{Value, json};
use testkit::browser::Browser;
use testkit::{Api, SiteProc, eventually};

use crate::ui::{shot, sign_in, wait_text};
use crate::util;

const T0: i64 = 1_700_000_000_000_000;

fn remote_sync(cid: &str) -> String {
    format!("/api/v1/connectors/{cid}/remote-sync")
}

/// Waits until a connector's status names a version mismatch; returns it.
async fn mismatch(api: &Api, cid: &str) -> anyhow::Result<Value> {
    eventually(
        "the version mismatch in the Remote-Sync status",
        testkit::DEADLINE,
        || async {
            let s = api.get_ok(&remote_sync(cid)).await?;
            let m = s["link"]["version_mismatch"].clone();
            Ok((!m.is_null()).then_some(m))
        },
    )
    .await
}

#[tokio::test]
async fn a_peer_of_another_sync_version_is_named_and_what_waited_arrives_after_the_upgrade()
-> anyhow::Result<()> {
    let (_hub, mut sites) =
        util::hub_and_sites(&[("site-a", &[]), ("site-b", &["--test-sync-version", "1"])]).await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    let (src, tgt) = testkit::pair(&a, &b, "plant").await?;
    // Pairing and the encrypted session do not depend on the sync protocol: both come up.
    util::session_up(&a, &src).await?;
    a.post_ok(
        &format!("/api/v1/connectors/{src}/resources"),
        json!({"name": "temperature", "format": "number", "remote_sync": true}),
    )
    .await?;
    b.post_ok(
        &format!("/api/v1/connectors/{tgt}/resources"),
        json!({"name": "temperature", "format": "number"}),
    )
    .await?;
    a.post_ok(
        &format!("/api/v1/connectors/{src}/devices"),
        json!({"identity": "dev-0"}),
    )
    .await?;
    a.post_ok(
        &format!("/api/v1/connectors/{src}/data"),
        json!([{"device": "dev-0", "t": T0, "values": {"temperature": 21.5}}]),
    )
    .await?;

    // Each site names the other's version and its own.
    assert_eq!(
        mismatch(&a, &src).await?,
        json!({"peer_sync_version": 1, "sync_version": 2, "problem": "peer runs an older version"})
    );
    assert_eq!(
        mismatch(&b, &tgt).await?,
        json!({"peer_sync_version": 2, "sync_version": 1, "problem": "peer runs a newer version"})
    );
    util::wait_logged(
        &sites[0].proc,
        "the peer runs an older version of West: its sync messages are version 1, this site's 2",
    )
    .await?;
    let (status, metrics) = a.get("/metrics").await?;
    assert_eq!(status.as_u16(), 200);
    let gauge = format!("west_sync_peer_version_mismatch{{connector=\"{src}\"}} 1");
    assert!(
        metrics.as_str().unwrap_or_default().contains(&gauge),
        "no {gauge} in the Source's metrics"
    );
    let browser = Browser::start().await?;
    sign_in(&browser, &sites[0].url, &sites[0].opts.admin_password).await?;
    browser
        .goto(&format!(
            "{}/connectors/{src}/settings/remote-sync",
            sites[0].url
        ))
        .await?;
    wait_text(&browser, "body", "peer runs an older version of West").await?;
    shot(&browser, "versions-older-peer").await?;
    // Nothing synced meanwhile.
    let (status, _) = b
        .get(&format!("/api/v1/connectors/{tgt}/devices/dev-0"))
        .await?;
    assert_eq!(status.as_u16(), 404, "a device crossed between versions");

    // Site-b is upgraded (runs this version again, same data dir): sync resumes by itself
    // and what waited arrives, once.
    sites[1].kill9().await?;
    let mut opts = sites[1].opts.clone();
    if let Some(i) = opts.extra.iter().position(|a| a == "--test-sync-version") {
        opts.extra.drain(i..i + 2);
    }
    let http = sites[1].url.trim_start_matches("http://").to_owned();
    let upgraded = SiteProc::start_in(util::bin(), opts, &sites[1].data_dir, &http).await?;
    let b = upgraded.admin().await?;
    let points = eventually("the point on the Target", testkit::DEADLINE, || async {
        let (status, page) = b
            .get(&format!(
                "/api/v1/connectors/{tgt}/devices/dev-0/resources/temperature/data"
            ))
            .await?;
        Ok(
            (status.is_success() && page["points"].as_array().is_some_and(|p| !p.is_empty()))
                .then_some(page["points"].clone()),
        )
    })
    .await?;
    assert_eq!(points.as_array().map(Vec::len), Some(1), "{points}");
    eventually("the mismatch to clear", testkit::DEADLINE, || async {
        let s = a.get_ok(&remote_sync(&src)).await?;
        Ok(s["link"]["version_mismatch"].is_null().then_some(()))
    })
    .await?;
    util::wait_logged(
        &sites[0].proc,
        "the peer now speaks this site's sync protocol version",
    )
    .await?;
    browser.close().await?;
    Ok(())
}
