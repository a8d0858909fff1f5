//! `west bench idle`: what idle pairings cost (#17 item 4). A hub and two sites; pairs 10,
//! then 100, then 1,000 connectors between them (`--pairings`, cumulative), waits until every
//! session is up and both sites' sync drivers have stopped waking
//! (`west_sync_driver_wakeups_total` still for 2 s), then measures each site over
//! `--seconds` (at least 10): CPU as a percentage of one core (`utime + stime` of
//! `/proc/PID/stat`), the resident set now (`VmRSS` of `/proc/PID/status`, not the peak),
//! and the resident set per pairing above the sites' own with no pairing.
//!
//! Rows: `cpu site-a, N pairings` (% of a core), `rss site-a, N pairings` (MiB), `rss per
//! pairing site-a, N pairings` (KiB), the same for site-b, and the hub's CPU.
//!
//! Targets (docs/sync.md, "Idle pairings"): ≤ 1 % of a core for 1,000 idle pairings per
//! site, ≤ 64 KiB each.
//!
//! Deliberately absent: any traffic; any assertion (the e2e test `idle::` asserts counts).

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use launch::{Api, HubProc, SiteOpts, SiteProc};

use super::Report;
use super::procstat;

#[derive(Args, Clone, Debug)]
pub struct IdleArgs {
    /// Numbers of paired connectors, comma-separated, ascending (pairings are added).
    #[arg(long, value_delimiter = ',', default_values_t = [10, 100, 1_000])]
    pub pairings: Vec<usize>,
    /// Seconds each measurement lasts (at least 10).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Pairings made at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

/// `utime + stime` (seconds) and `VmRSS` (KiB) of a process now.
fn sample(pid: Option<u32>, tick: f64) -> anyhow::Result<(f64, u64)> {
    let pid = pid.context("the process is not running")?;
    let cpu = procstat::Usage::read(&format!("/proc/{pid}"), tick)?.cpu_secs;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    Ok((cpu, rss))
}

/// A site metric: the sum of every series of `name` (all labels).
async fn metric_sum(api: &Api, name: &str, only: Option<&str>) -> anyhow::Result<f64> {
    let (_, text) = api.get("/metrics").await?;
    Ok(text
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .filter(|v| only.is_none_or(|o| o.parse::<f64>().ok() == Some(*v)))
        .sum())
}

/// Waits until every session of both sites is up and neither site's drivers wake.
async fn wait_idle(apis: [&Api; 2], pairings: usize) -> anyhow::Result<()> {
    let deadline = Duration::from_secs(120 + pairings as u64 / 5);
    for api in apis {
        launch::eventually("every sync session up", deadline, || async {
            let up = metric_sum(api, "west_sync_link_up", None).await? as usize;
            Ok((up >= pairings).then_some(()))
        })
        .await?;
    }
    for api in apis {
        launch::eventually("the sync drivers to go idle", deadline, || async {
            let before = metric_sum(api, "west_sync_driver_wakeups_total", None).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = metric_sum(api, "west_sync_driver_wakeups_total", None).await?;
            Ok((after == before).then_some(()))
        })
        .await?;
    }
    Ok(())
}

pub async fn run(args: IdleArgs) -> anyhow::Result<Report> {
    let bin = std::env::current_exe().context("finding the west binary")?;
    let tick = procstat::clock_ticks().await;
    let hub = HubProc::start(&bin).await?;
    let mut sites: Vec<SiteProc> = Vec::new();
    for name in ["site-a", "site-b"] {
        let mut opts = SiteOpts::new(name);
        opts.extra = hub.site_args(&hub.add_site(name).await?)?;
        sites.push(SiteProc::start(&bin, opts).await?);
    }
    let (api_a, api_b) = (sites[0].admin().await?, sites[1].admin().await?);
    for api in [&api_a, &api_b] {
        launch::eventually("the hub link", launch::DEADLINE, || async {
            Ok((api.get_ok("/health").await?["hub"]["connected"] == true).then_some(()))
        })
        .await?;
    }
    let pids = [sites[0].proc.pid(), sites[1].proc.pid()];
    let rss0 = [sample(pids[0], tick)?.1, sample(pids[1], tick)?.1];
    let seconds = args.seconds.max(10);
    let mut report = Report::default();
    let mut paired = 0;
    for &n in &args.pairings {
        let started = Instant::now();
        futures::stream::iter(paired..n)
            .map(|i| {
                let (a, b) = (&api_a, &api_b);
                async move { launch::pair(a, b, &format!("idle{i}")).await }
            })
            .buffer_unordered(args.concurrency.max(1))
            .try_collect::<Vec<_>>()
            .await?;
        paired = paired.max(n);
        wait_idle([&api_a, &api_b], paired).await?;
        eprintln!(
            "{paired} pairings made and idle after {:.1} s; measuring {seconds} s",
            started.elapsed().as_secs_f64()
        );
        let before = [
            sample(pids[0], tick)?,
            sample(pids[1], tick)?,
            sample(hub.proc.pid(), tick)?,
        ];
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let after = [
            sample(pids[0], tick)?,
            sample(pids[1], tick)?,
            sample(hub.proc.pid(), tick)?,
        ];
        let secs = t0.elapsed().as_secs_f64();
        for (i, site) in ["site-a", "site-b"].into_iter().enumerate() {
            let cpu = (after[i].0 - before[i].0) / secs * 100.0;
            report.add(format!("cpu {site}, {paired} pairings"), cpu, "% of a core");
            report.add(
                format!("rss {site}, {paired} pairings"),
                after[i].1 as f64 / 1024.0,
                "MiB",
            );
            report.add(
                format!("rss per pairing {site}, {paired} pairings"),
                after[i].1.saturating_sub(rss0[i]) as f64 / paired.max(1) as f64,
                "KiB",
            );
        }
        report.add(
            format!("cpu hub, {paired} pairings"),
            (after[2].0 - before[2].0) / secs * 100.0,
            "% of a core",
        );
    }
    drop(sites);
    drop(hub);
    Ok(report)
}
