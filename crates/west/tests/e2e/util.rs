//! Shared helpers of the end-to-end tests.

use std::path::Path;

use testkit::{SiteOpts, SiteProc};

/// The `west` binary cargo built for these tests.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_west"))
}

/// A standalone site on a free port in a fresh data dir.
pub async fn site(name: &str) -> anyhow::Result<SiteProc> {
    SiteProc::start(bin(), SiteOpts::new(name)).await
}

/// A hub and sites joined to it (all connected), each with extra site flags.
pub async fn hub_and_sites(
    names: &[(&str, &[&str])],
) -> anyhow::Result<(testkit::HubProc, Vec<SiteProc>)> {
    let hub = testkit::HubProc::start(bin()).await?;
    let mut sites = Vec::new();
    for (name, extra) in names {
        let credential = hub.add_site(name).await?;
        let mut opts = SiteOpts::new(name);
        opts.extra = hub.site_args(&credential)?;
        opts.extra.extend(extra.iter().map(|s| s.to_string()));
        sites.push(SiteProc::start(bin(), opts).await?);
    }
    for site in &sites {
        wait_hub_connected(site).await?;
    }
    Ok((hub, sites))
}

/// A hub with `site-a` joined and connected, and `site-b` registered but not started, so
/// that something else can take site-b's place first: the hub, site-a, site-b's credential.
pub async fn hub_and_source() -> anyhow::Result<(testkit::HubProc, SiteProc, String)> {
    let hub = testkit::HubProc::start(bin()).await?;
    let credential_a = hub.add_site("site-a").await?;
    let site_a = join(&hub, "site-a", &credential_a).await?;
    let credential_b = hub.add_site("site-b").await?;
    Ok((hub, site_a, credential_b))
}

/// Starts site `name` joined to `hub` with its `credential`, and waits for its hub link.
pub async fn join(
    hub: &testkit::HubProc,
    name: &str,
    credential: &str,
) -> anyhow::Result<SiteProc> {
    let mut opts = SiteOpts::new(name);
    opts.extra = hub.site_args(credential)?;
    let site = SiteProc::start(bin(), opts).await?;
    wait_hub_connected(&site).await?;
    Ok(site)
}

/// Waits until a site's `/health` says its hub link is up.
pub async fn wait_hub_connected(site: &SiteProc) -> anyhow::Result<()> {
    let api = testkit::Api::new(&site.url);
    testkit::eventually("the site's hub link", testkit::DEADLINE, || async {
        let h = api.get_ok("/health").await?;
        Ok((h["hub"]["connected"] == true).then_some(()))
    })
    .await
}

/// A paired pair: a hub, `site-a` with a Source connector and `site-b` with its Target,
/// both encrypted sessions up. Returns the hub, the sites, and the connector ids (a, b).
pub async fn paired_sites() -> anyhow::Result<(testkit::HubProc, Vec<SiteProc>, String, String)> {
    let (hub, sites) = hub_and_sites(&[("site-a", &[]), ("site-b", &[])]).await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    let (cid, tid) = testkit::pair(&a, &b, "plant").await?;
    session_up(&a, &cid).await?;
    session_up(&b, &tid).await?;
    Ok((hub, sites, cid, tid))
}

/// Waits until a round trip through the connector's end-to-end session succeeds.
pub async fn session_up(api: &testkit::Api, cid: &str) -> anyhow::Result<()> {
    testkit::eventually(
        &format!("the encrypted session of {cid}"),
        testkit::DEADLINE,
        || async {
            let (s, _) = api
                .post(
                    &format!("/api/v1/connectors/{cid}/remote-sync/ping"),
                    serde_json::json!({}),
                )
                .await?;
            Ok((s == reqwest::StatusCode::OK).then_some(()))
        },
    )
    .await
}

/// Stops a site, changes its database behind its back with `sql` (what a botched restore
/// from backup or a hand edit would do), and starts it again. The only way to make two
/// paired registries drift once device changes propagate.
pub async fn tamper(site: &mut SiteProc, sql: &str) -> anyhow::Result<()> {
    site.proc.terminate(testkit::DEADLINE).await?;
    let db = rusqlite::Connection::open(site.data_dir.join("site.db"))?;
    db.execute_batch(sql)?;
    drop(db);
    site.restart().await
}

/// Waits until device `identity` of connector `cid` satisfies `ok` (`None`: the device does
/// not exist); returns it.
pub async fn wait_device(
    api: &testkit::Api,
    cid: &str,
    identity: &str,
    what: &str,
    ok: impl Fn(Option<&serde_json::Value>) -> bool,
) -> anyhow::Result<Option<serde_json::Value>> {
    let path = format!("/api/v1/connectors/{cid}/devices/{identity}");
    testkit::eventually(what, testkit::DEADLINE, || async {
        let (status, d) = api.get(&path).await?;
        let d = (status == reqwest::StatusCode::OK).then_some(d);
        Ok(ok(d.as_ref()).then_some(d))
    })
    .await
}

/// A connector `plant` with a number resource `temperature` and the devices `identities`;
/// returns the connector's id.
pub async fn thermometers(api: &testkit::Api, identities: &[String]) -> anyhow::Result<String> {
    let cid = api
        .post_ok("/api/v1/connectors", serde_json::json!({ "name": "plant" }))
        .await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/resources"),
        serde_json::json!({ "name": "temperature", "format": "number" }),
    )
    .await?;
    for identity in identities {
        api.post_ok(
            &format!("/api/v1/connectors/{cid}/devices"),
            serde_json::json!({ "identity": identity }),
        )
        .await?;
    }
    Ok(cid)
}

/// Waits until a process's log (its stderr, where tracing writes) holds `needle`.
pub async fn wait_logged(proc: &testkit::WestProc, needle: &str) -> anyhow::Result<()> {
    testkit::eventually(
        &format!("a log line with {needle:?}"),
        testkit::DEADLINE,
        || async { Ok(logged(proc, needle).then_some(())) },
    )
    .await
}

/// Whether a process's log holds `needle` now.
pub fn logged(proc: &testkit::WestProc, needle: &str) -> bool {
    std::fs::read_to_string(&proc.log_path).is_ok_and(|log| log.contains(needle))
}
