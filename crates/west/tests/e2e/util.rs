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
