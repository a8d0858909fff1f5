//! The cluster scenario (issue 12): the hub as a cluster against one hub, in one run.
//!
//! 1. One hub (`west hub` with its `hub.db`) and two paired sites: the throughput and
//!    latency phases of the sync scenario (`sync::throughput`, `sync::latency`).
//! 2. Three `nats-server` processes joined as a JetStream cluster (`launch::nats`, in a
//!    temporary directory), `--hub-nodes` `west hub --cluster` nodes on them (all presenting
//!    the first node's certificate), and two paired sites that know every node: the Source
//!    dials node 1 first, the Target node 2, so every frame between them crosses NATS. The
//!    same two phases, the same sizes; then the ratios: replicated points/s of the cluster
//!    / one hub (issue 12's target: ≥ 0.9), and the latency p99 the cluster adds (target:
//!    ≤ 1 ms).
//! 3. Failover, `--kills` times (10): once the Target has applied everything written so
//!    far, SIGKILL the node holding the Source (odd kills) or the Target (even kills) — the
//!    node the site's `/health` names — and keep writing 100 points every 10 ms; failover
//!    time = from the kill until the Target has applied the first point written after it
//!    (its sync status, polled every 5 ms). The killed node is then started again (same
//!    port, same certificate) and waited for, so every kill finds all nodes up. p50 and p99
//!    of the kills (issue 12's target: p99 ≤ 3 s); with 10 kills the p99 is the slowest.
//!
//! The sites may end up on one node after a failover; the next kill then moves both. The
//! throughput and latency phases run before any kill, with the sites on different nodes.
//! Nothing here asserts a speed; it reports one.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use launch::Api;

use super::Report;
use super::progress::Progress;
use super::sync::{self, Bench, Hubs};

#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    /// Hub nodes of the cluster (at least 2: the Source and the Target on different nodes).
    #[arg(long, default_value_t = 3)]
    pub hub_nodes: usize,
    /// Points in each throughput phase.
    #[arg(long, default_value_t = 500_000)]
    pub points: u64,
    /// Devices the points are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub devices: u64,
    /// Rate of each latency phase, points/s.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Length of each latency phase, seconds [default: points / 25,000, from 1 to 20].
    #[arg(long)]
    pub seconds: Option<u64>,
    /// SIGKILLs of a site's node for the failover time (0 skips it).
    #[arg(long, default_value_t = 10)]
    pub kills: u32,
}

/// Bulk requests in flight in the throughput phases, as in the sync scenario.
const CLIENTS: usize = 4;
/// While a failover is measured: a request of this many points …
const FAILOVER_BATCH: u64 = 100;
/// … this often.
const FAILOVER_EVERY: Duration = Duration::from_millis(10);
/// A failover that has not happened after this long fails the benchmark.
const FAILOVER_GIVE_UP: Duration = Duration::from_secs(60);

/// Phases of the scenario, for the progress display.
pub fn phases(args: &ClusterArgs) -> usize {
    // One hub: start, throughput, latency; the cluster: the same, then the failovers.
    3 + 3 + usize::from(args.kills > 0)
}

pub async fn run(args: &ClusterArgs, progress: &mut Progress) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.points > 0 && args.devices > 0 && args.rate > 0,
        "counts must be positive"
    );
    anyhow::ensure!(
        args.hub_nodes >= 2,
        "--hub-nodes must be 2 or more: the Source and the Target on different nodes"
    );
    let seconds = args
        .seconds
        .unwrap_or_else(|| super::default_seconds(args.points));
    let nodes = format!("{} nodes", args.hub_nodes);
    // One hub first, stopped before the cluster starts; then the cluster, kept for the
    // failovers.
    let (one, one_lat) = {
        let (_one_hub, speed, lat) = measure(Hubs::One, "one hub", args, seconds, progress).await?;
        (speed, lat)
    };
    let cluster = Hubs::Cluster {
        nodes: args.hub_nodes,
    };
    let (mut b, many, many_lat) = measure(cluster, &nodes, args, seconds, progress).await?;

    let mut report = Report::default();
    report.add("replicated, one hub", one.replicated(), "points/s");
    report.add(
        format!("replicated, {nodes}"),
        many.replicated(),
        "points/s",
    );
    report.add(
        format!("replicated ratio, {nodes} to one hub"),
        many.replicated() / one.replicated(),
        "x",
    );
    report.add("source ingest alone, one hub", one.ingest(), "points/s");
    report.add(
        format!("source ingest alone, {nodes}"),
        many.ingest(),
        "points/s",
    );
    for (q, row) in [(0.5, "latency p50"), (0.99, "latency p99")] {
        report.add(format!("{row}, one hub"), one_lat.ms(q), "ms");
        report.add(format!("{row}, {nodes}"), many_lat.ms(q), "ms");
        report.add(
            format!("{row} added by {nodes}"),
            many_lat.ms(q) - one_lat.ms(q),
            "ms",
        );
    }
    report.add(
        "  latency samples polled, not streamed",
        (one_lat.polled + many_lat.polled) as f64,
        "samples",
    );

    if args.kills > 0 {
        let times = failovers(&mut b, args.kills, progress).await?;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        // Nearest rank: with 10 kills the p99 is the slowest one.
        let rank =
            |q: f64| times[((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
        report.add("failover p50", ms(rank(0.5)), "ms");
        report.add("failover p99", ms(rank(0.99)), "ms");
        report.add("  failover min", ms(times[0]), "ms");
        report.add("failover kills", times.len() as f64, "kills");
    }
    Ok(report)
}

/// Starts two paired sites on `hubs` and runs the throughput and latency phases.
async fn measure(
    hubs: Hubs,
    name: &str,
    args: &ClusterArgs,
    seconds: u64,
    progress: &mut Progress,
) -> anyhow::Result<(Bench, sync::Throughput, sync::Latency)> {
    let label = format!("cluster, {name}");
    progress.phase(&format!("{label}: start, pair, create devices"), 0);
    let mut b = Bench::start_on(hubs, args.devices, CLIENTS).await?;
    if let Hubs::Cluster { .. } = hubs {
        // The phases measure frames crossing NATS: the sites must be on different nodes.
        let (a, t) = (holder(&b, &b.a.url).await?, holder(&b, &b.b.url).await?);
        anyhow::ensure!(
            a != t,
            "the Source and the Target are both on node-{}",
            a + 1
        );
    }
    let speed = sync::throughput(&mut b, args.points, &label, progress).await?;
    let lat = sync::latency(&mut b, args.rate, seconds, &label, progress).await?;
    Ok((b, speed, lat))
}

/// The index of the node a site's `/health` names as the one it is connected to.
async fn holder(b: &Bench, site: &str) -> anyhow::Result<usize> {
    let api = Api::new(site);
    launch::eventually(
        &format!("{site} to be connected to a hub node"),
        launch::DEADLINE,
        || async {
            let h = api.get_ok("/health").await?;
            if h["hub"]["connected"] != true {
                return Ok(None);
            }
            let node = h["hub"]["node"].as_str().unwrap_or_default();
            Ok(b.hubs
                .iter()
                .position(|n| node.starts_with(&format!("{}/", n.url))))
        },
    )
    .await
}

/// Kills the node of the Source, then of the Target, … `kills` times in all; each time
/// waits until the Target has applied a point written after the kill, then starts the node
/// again. The times, sorted.
async fn failovers(
    b: &mut Bench,
    kills: u32,
    progress: &mut Progress,
) -> anyhow::Result<Vec<Duration>> {
    progress.phase(
        &format!("cluster: failover, {kills} kills"),
        u64::from(kills),
    );
    let path = format!("/api/v1/connectors/{}/data", b.src);
    let mut times = Vec::new();
    for k in 0..kills {
        // A quiet stream: what is measured is the move, not a backlog.
        progress.stage("Target catching up");
        progress.set(u64::from(k));
        b.applied_all(b.next, &Progress::off()).await?;
        let (side, url) = match k % 2 {
            0 => ("Source", b.a.url.clone()),
            _ => ("Target", b.b.url.clone()),
        };
        let node = holder(b, &url).await?;
        progress.stage(&format!("kill {}: the {side}'s node-{}", k + 1, node + 1));
        progress.set(u64::from(k));
        b.hubs[node].kill9().await?;
        let killed = Instant::now();
        // The first point written after the kill.
        let first = b.next;
        let mut next_write = killed;
        loop {
            if Instant::now() >= next_write {
                let (body, _) = b.body(FAILOVER_BATCH);
                b.api_a
                    .post_ok(&path, body)
                    .await
                    .context("writing to the Source during a failover")?;
                next_write += FAILOVER_EVERY;
            }
            if b.applied_seq()
                .await
                .is_some_and(|a| a >= b.seq_of_point(first))
            {
                break;
            }
            anyhow::ensure!(
                killed.elapsed() < FAILOVER_GIVE_UP,
                "the stream did not move for {FAILOVER_GIVE_UP:?} after node-{} (the {side}'s) \
                 was killed; the {side}'s log tail:\n{}",
                node + 1,
                if side == "Source" { &b.a } else { &b.b }.proc.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        times.push(killed.elapsed());
        progress.stage(&format!("starting node-{} again", node + 1));
        progress.set(u64::from(k) + 1);
        b.hubs[node]
            .restart()
            .await
            .with_context(|| format!("restarting node-{}", node + 1))?;
    }
    times.sort();
    Ok(times)
}
