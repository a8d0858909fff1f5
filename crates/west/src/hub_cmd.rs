//! `west hub`: not built yet (the hub issue fills this in).

use clap::Args;

#[derive(Args)]
pub struct HubArgs {}

pub async fn run(_args: HubArgs) -> anyhow::Result<()> {
    anyhow::bail!("the Connectivity Hub is not built yet")
}
