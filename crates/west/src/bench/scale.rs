//! The scale curve: the throughput and latency phases of the sync scenario (no outage), run
//! once per fleet size in `--fleets` (100, 1,000, 10,000, 100,000 devices), the points spread
//! round-robin over the fleet, so that how the cost grows with the number of devices (series)
//! shows. With `--nats`, the NATS baselines run the same workload per fleet size (one point a
//! message, `--nats-batch` points a message, and batched into SQLite).
//!
//! The load is a gateway's bulk requests of 1,000 points, as in the sync scenario: 100,000
//! devices with a keep-alive connection each would need more loopback ports than one client
//! has; the devices scenario measures device-shaped load at 1,000 devices.
//!
//! Rows: `replicated`, `latency p50`, `latency p99` and `disk written per point site-b`,
//! each as `<row>, <N> devices`.

use clap::Args;

use super::Report;
use super::nats::{self, NatsArgs};
use super::progress::Progress;
use super::sync::{self, SyncArgs};

#[derive(Args, Clone, Debug)]
pub struct ScaleArgs {
    /// Fleet sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1_000, 10_000, 100_000])]
    pub fleets: Vec<u64>,
    /// Points in each throughput phase.
    #[arg(long, default_value_t = 200_000)]
    pub points: u64,
    /// Rate of each latency phase, points/s.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Length of each latency phase, seconds.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Run the NATS baselines beside.
    #[arg(long)]
    pub nats: bool,
    /// Points a message in the batched NATS baselines.
    #[arg(long, default_value_t = 1_000)]
    pub nats_batch: u64,
}

/// Figures of each run that make the curve.
const ROWS: [&str; 4] = [
    "replicated",
    "latency p50",
    "latency p99",
    "disk written per point site-b",
];

/// Phases of one fleet size: 4 for ours and for each baseline.
pub fn phases(args: &ScaleArgs) -> usize {
    let sides = if args.nats { 4 } else { 1 };
    args.fleets.len() * sides * super::PHASES
}

/// Ours, and each NATS baseline's (JSON key, label, report) when `--nats` asks for them.
pub async fn run(
    args: &ScaleArgs,
    progress: &mut Progress,
) -> anyhow::Result<(Report, Vec<(String, String, Report)>)> {
    let mut ours = Report::default();
    let mut theirs: Vec<(String, String, Report)> = Vec::new();
    for &devices in &args.fleets {
        let sync_args = SyncArgs {
            points: args.points,
            devices,
            rate: args.rate,
            seconds: Some(args.seconds),
            outage_points: Some(0),
            clients: 4,
        };
        let report = sync::run(sync_args, progress).await?;
        pick(&mut ours, &report, devices);
        if !args.nats {
            continue;
        }
        for (i, (key, batched, store)) in super::NATS_VARIANTS.into_iter().enumerate() {
            let a = NatsArgs {
                points: args.points,
                devices,
                rate: args.rate,
                seconds: Some(args.seconds),
                outage_points: Some(0),
                batch: 1_000,
                nats_batch: if batched { args.nats_batch } else { 1 },
                store,
            };
            let report = nats::run(&a, progress).await?;
            if theirs.len() <= i {
                theirs.push((key.to_owned(), nats::label(&a), Report::default()));
            }
            pick(&mut theirs[i].2, &report, devices);
        }
    }
    Ok((ours, theirs))
}

/// Copies the curve's rows of one run into `into`, named for the fleet size.
fn pick(into: &mut Report, run: &Report, devices: u64) {
    for name in ROWS {
        if let Some((_, value, unit)) = run.rows.iter().find(|r| r.0 == name) {
            into.add(format!("{name}, {devices} devices"), *value, unit);
        }
    }
}
