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
        opts.extra = hub.site_args(&credential);
        opts.extra.extend(extra.iter().map(|s| s.to_string()));
        sites.push(SiteProc::start(bin(), opts).await?);
    }
    for site in &sites {
        wait_hub_connected(site).await?;
    }
    Ok((hub, sites))
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
