//! `west bench`: measurements against real `west` processes on loopback, printed as one
//! table (or one JSON object with `--json`). Nothing here asserts a speed; it reports one.
//!
//! Scenarios:
//! - `ingest`: one site; bulk ingest throughput (batches of `--batch` points from
//!   `--clients` concurrent clients) and the latency of single-point writes from one client.
//! - `nats`: the NATS JetStream baseline, the same figures and row names as `sync` through
//!   three `nats-server` processes (see `nats.rs`).
//! - `sync`: a hub and two paired sites; end-to-end replicated points/s, latency from the
//!   Source's acknowledgement to visibility on the Target at a fixed rate, catch-up after an
//!   outage, wire bytes per point counted at the hub, stored bytes per point on the Target,
//!   peak RSS and CPU of every process.
//!
//! `procstat` measures processes and directories the same way for every scenario;
//! `progress` shows the run's phases on stderr.

pub mod ingest;
mod nats;
mod procstat;
mod progress;
mod sync;

use progress::Progress;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `west bench [--points N] [--devices N] [--rate R] [--baseline nats] [--json]` (API.md)
/// runs the end-to-end scenario; a scenario name runs that one with all its flags.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Option<Scenario>,
    /// Points in the throughput phase of the end-to-end run [default: 500000].
    #[arg(long)]
    points: Option<u64>,
    /// Devices the points are spread over [default: 1000].
    #[arg(long)]
    devices: Option<u64>,
    /// Rate of the latency phase, points/s [default: 10000].
    #[arg(long)]
    rate: Option<u64>,
    /// Run the same workload through a baseline too and print the ratio of every figure.
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// Print the results as one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Baseline {
    /// NATS JetStream: three nats-server processes, a stream mirrored across domains.
    Nats,
}

#[derive(Subcommand)]
enum Scenario {
    /// Ingest throughput and single-point latency of one site.
    Ingest(ingest::IngestArgs),
    /// The NATS JetStream baseline: the same figures through three nats-server processes
    /// (hub, site-a's stream, site-b's mirror of it over leafnodes).
    Nats(nats::NatsArgs),
    /// Hub and two paired sites: replicated points/s, latency Source ack → Target visible,
    /// catch-up after an outage, wire bytes per point.
    Sync(sync::SyncArgs),
}

/// Length of the latency phase when `--seconds` is not given: 20 s, shorter for small runs
/// (points / 25,000, at least 1 s), the same for every scenario.
fn default_seconds(points: u64) -> u64 {
    (points / 25_000).clamp(1, 20)
}

/// Points written while the Target is down when `--outage-points` is not given: one hour
/// at 1,000 points/s (3,600,000), but at most ten times the throughput phase's points.
fn default_outage_points(points: u64) -> u64 {
    3_600_000.min(points.saturating_mul(10))
}

/// Phases of one scenario in the progress display: start, throughput, latency, catch-up.
const PHASES: usize = 4;

/// Parses a scenario's flags from the shared ones, so that the default run and the named
/// scenarios have one definition of each default.
fn scenario_args<T: Args>(args: &BenchArgs) -> anyhow::Result<T> {
    #[derive(Parser)]
    struct Wrap<T: Args> {
        #[command(flatten)]
        inner: T,
    }
    let mut argv = vec!["bench".to_string()];
    for (flag, value) in [
        ("--points", args.points),
        ("--devices", args.devices),
        ("--rate", args.rate),
    ] {
        if let Some(v) = value {
            argv.push(flag.into());
            argv.push(v.to_string());
        }
    }
    Ok(Wrap::<T>::try_parse_from(argv)?.inner)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut progress = match (&args.scenario, args.baseline) {
        (Some(Scenario::Ingest(_)), _) => Progress::off(),
        (None, Some(_)) => Progress::new(2 * PHASES),
        _ => Progress::new(PHASES),
    };
    let result = run_with(&args, &mut progress).await;
    progress.finish();
    let (ours, theirs) = result?;
    if let Some(theirs) = theirs {
        return print_compared(&ours, &theirs, args.json);
    }
    let report = ours;
    if args.json {
        println!("{}", serde_json::Value::Object(report.json()));
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// Runs what `args` asks for: our report, and the baseline's when there is one.
async fn run_with(
    args: &BenchArgs,
    progress: &mut Progress,
) -> anyhow::Result<(Report, Option<Report>)> {
    Ok(match &args.scenario {
        Some(Scenario::Ingest(a)) => (ingest::run(a.clone()).await?, None),
        Some(Scenario::Nats(a)) => (nats::run(a, progress).await?, None),
        Some(Scenario::Sync(a)) => (sync::run(a.clone(), progress).await?, None),
        None => {
            let ours = sync::run(scenario_args(args)?, progress).await?;
            let theirs = match args.baseline {
                None => None,
                Some(Baseline::Nats) => Some(nats::run(&scenario_args(args)?, progress).await?),
            };
            (ours, theirs)
        }
    })
}

/// One table (or JSON object) of our figures, the baseline's, and ours / theirs.
fn print_compared(ours: &Report, theirs: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        let mut out = serde_json::Map::new();
        out.insert("west".into(), serde_json::Value::Object(ours.json()));
        out.insert("nats".into(), serde_json::Value::Object(theirs.json()));
        println!("{}", serde_json::Value::Object(out));
        return Ok(());
    }
    let width = ours
        .rows
        .iter()
        .chain(&theirs.rows)
        .map(|r| r.0.len())
        .max()
        .unwrap_or(0);
    println!(
        "{:<width$}  {:>14} {:>14} {:>8}",
        "", "west", "nats", "ratio"
    );
    for (name, value, unit) in &ours.rows {
        let other = theirs.rows.iter().find(|r| &r.0 == name);
        let (theirs_text, ratio) = match other {
            Some((_, v, _)) if *v != 0.0 => (format!("{v:.2}"), format!("{:.2}", value / v)),
            Some((_, v, _)) => (format!("{v:.2}"), "—".into()),
            None => ("—".into(), "—".into()),
        };
        println!(
            "{name:<width$}  {:>14} {:>14} {:>8}  {unit}",
            format!("{value:.2}"),
            theirs_text,
            ratio
        );
    }
    // What only the baseline reports, so that no figure of either side is left out.
    for (name, value, unit) in &theirs.rows {
        if !ours.rows.iter().any(|r| &r.0 == name) {
            println!(
                "{name:<width$}  {:>14} {:>14} {:>8}  {unit}",
                "—",
                format!("{value:.2}"),
                "—"
            );
        }
    }
    Ok(())
}

/// A list of named figures with units, printed as a table or JSON.
#[derive(Default)]
pub struct Report {
    rows: Vec<(String, f64, &'static str)>,
}

impl Report {
    pub fn add(&mut self, name: impl Into<String>, value: f64, unit: &'static str) {
        self.rows.push((name.into(), value, unit));
    }

    fn table(&self) -> String {
        let width = self.rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (name, value, unit) in &self.rows {
            let v = if value.fract() == 0.0 || *value >= 100.0 {
                format!("{value:.0}")
            } else {
                format!("{value:.2}")
            };
            out.push_str(&format!("{name:<width$}  {v:>12} {unit}\n"));
        }
        out
    }

    fn json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.rows
            .iter()
            .map(|(name, value, unit)| {
                let key = format!(
                    "{}_{}",
                    name.replace([' ', '-'], "_"),
                    unit.replace('/', "_per_")
                );
                (key, serde_json::json!(value))
            })
            .collect()
    }
}
