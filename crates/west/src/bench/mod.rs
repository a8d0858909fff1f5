//! `west bench`: measurements against real `west` processes on loopback, printed as one
//! table per part (or one JSON object with `--json`). Nothing here asserts a speed; it
//! reports one. `west bench` alone runs the parts of `--parts` (main = `sync`, `devices`,
//! `scale`, `cluster`, `read`), each beside the NATS baselines where it has them, with
//! `--baseline nats`.
//!
//! Scenarios:
//! - `ingest`: one site; bulk ingest throughput (batches of `--batch` points from
//!   `--clients` concurrent clients) and the latency of single-point writes from one client.
//! - `nats`: a NATS JetStream baseline, the same figures and row names as `sync` through
//!   three `nats-server` processes: one point a message, `--nats-batch` points a message,
//!   and with `--store` a consumer writing them into SQLite on site-b (`nats.rs`, `sink.rs`).
//! - `devices`: device-shaped load, each device posting its own readings, one a request,
//!   over its own connection; NATS beside with one publish per reading.
//! - `scale`: the throughput and latency phases of `sync` per fleet size.
//! - `cluster`: the throughput and latency phases of `sync` through one hub and through a
//!   hub cluster on NATS (`--hub-nodes`, the Source and the Target on different nodes), their
//!   ratios, and the failover time when a site's node is SIGKILLed (`cluster.rs`).
//! - `read`: one site; reading a day of one series (86,400 points, paged) and the latest
//!   values of 1,000 devices.
//! - `idle`: a hub and two sites with 10, 100, 1,000 idle pairings: CPU and RSS per site
//!   (`idle.rs`; not part of the default run).
//! - `sync`: a hub and two paired sites; end-to-end replicated points/s, latency from the
//!   Source's acknowledgement to visibility on the Target at a fixed rate (seen on its live
//!   stream, `live.rs`), catch-up after an outage, wire bytes per point counted at the hub,
//!   stored and disk-written bytes per point, peak RSS and CPU of every process.
//!
//! `procstat` measures processes and directories the same way for every scenario;
//! `progress` shows the run's phases on stderr.

mod cluster;
mod devices;
mod idle;
pub mod ingest;
mod live;
mod nats;
mod procstat;
mod progress;
mod read;
mod scale;
mod sink;
mod sync;

use progress::Progress;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `west bench [--points N] [--devices N] [--rate R] [--baseline nats] [--json]` (docs/api.md)
/// runs every part (`--parts`): the end-to-end scenario, device-shaped load, the scale curve,
/// the hub cluster and the reads; a scenario name runs that one with all its flags.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Option<Scenario>,
    /// Points in the throughput phase of the end-to-end run and of each run of the cluster
    /// part [default: 500000].
    #[arg(long)]
    points: Option<u64>,
    /// Devices the points are spread over (in the end-to-end run and the cluster part);
    /// also the fleet of the devices part and the devices whose latest values the read
    /// part reads [default: 1000].
    #[arg(long)]
    devices: Option<u64>,
    /// Rate of the latency phase, points/s (also of the scale and cluster parts')
    /// [default: 10000].
    #[arg(long)]
    rate: Option<u64>,
    /// Length of the latency phase, seconds (also of the cluster part's) [default: points /
    /// 25,000, from 1 to 20].
    #[arg(long)]
    seconds: Option<u64>,
    /// Points written while the Target is down [default: 3,600,000, but at most 10 × points].
    #[arg(long)]
    outage_points: Option<u64>,
    /// Run the same workload through a baseline too and print the ratio of every figure.
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// Points a message in the batched NATS baselines (the per-point one stays at 1).
    #[arg(long, default_value_t = 1_000)]
    nats_batch: u64,
    /// Parts of the run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Part::all())]
    parts: Vec<Part>,
    /// Readings each device posts in the devices part [default: 100].
    #[arg(long)]
    readings: Option<u64>,
    /// Fleet sizes of the scale part, comma-separated [default: 100,1000,10000,100000].
    #[arg(long, value_delimiter = ',')]
    fleets: Option<Vec<u64>>,
    /// Points in each throughput phase of the scale part [default: 200000].
    #[arg(long)]
    scale_points: Option<u64>,
    /// Hub nodes of the cluster part, on three nats-server processes [default: 3].
    #[arg(long)]
    hub_nodes: Option<usize>,
    /// SIGKILLs of a site's hub node for the cluster part's failover time [default: 10].
    #[arg(long)]
    kills: Option<u32>,
    /// Print the results as one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Part {
    /// The end-to-end scenario (`sync`): throughput, latency, catch-up, bytes, RSS, CPU.
    Main,
    /// Device-shaped load: each device posts its own readings (`devices`).
    Devices,
    /// Replicated points/s and latency per fleet size (`scale`).
    Scale,
    /// One hub against a hub cluster on NATS, and its failover time (`cluster`).
    Cluster,
    /// A day of one series and the latest values of every device, on one site (`read`).
    Read,
}

impl Part {
    fn all() -> Vec<Self> {
        vec![
            Self::Main,
            Self::Devices,
            Self::Scale,
            Self::Cluster,
            Self::Read,
        ]
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self
            .to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default();
        f.write_str(&name)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Baseline {
    /// NATS JetStream: three nats-server processes, a stream mirrored across domains, run
    /// three ways: one point a message; `--nats-batch` points a message; and batched with a
    /// consumer on site-b that stores every point in SQLite.
    Nats,
}

/// The NATS baselines of `--baseline nats`: JSON key, and how it differs from the
/// per-point one.
const NATS_VARIANTS: [(&str, bool, bool); 3] = [
    ("nats", false, false),
    ("nats_batched", true, false),
    ("nats_store", true, true),
];

#[derive(Subcommand)]
enum Scenario {
    /// Ingest throughput and single-point latency of one site.
    Ingest(ingest::IngestArgs),
    /// A NATS JetStream baseline: the same figures through three nats-server processes
    /// (hub, site-a's stream, site-b's mirror of it over leafnodes); one point a message,
    /// or `--nats-batch N`, and `--store` for a SQLite store on site-b.
    Nats(nats::NatsArgs),
    /// Hub and two paired sites: replicated points/s, latency Source ack → Target visible,
    /// catch-up after an outage, wire bytes per point.
    Sync(sync::SyncArgs),
    /// Reads of one site: a day of one series (paged) and the latest values of every device.
    Read(read::ReadArgs),
    /// Device-shaped load: each device posts its own readings over its own connection.
    Devices(devices::DevicesArgs),
    /// The scale curve: replicated points/s and latency per fleet size.
    Scale(scale::ScaleArgs),
    /// One hub against a cluster of hub nodes on NATS (Source and Target on different
    /// nodes): throughput and latency of each and their ratios, and the failover time when
    /// a site's node is SIGKILLed.
    Cluster(cluster::ClusterArgs),
    /// What idle pairings cost: CPU and RSS of both sites at 10, 100 and 1,000 pairings.
    Idle(idle::IdleArgs),
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

/// A scenario's flags as parsed from `flags`, so that the default run and the named
/// scenarios have one definition of each default.
fn scenario_args_from<T: Args>(flags: &[String]) -> anyhow::Result<T> {
    #[derive(Parser)]
    struct Wrap<T: Args> {
        #[command(flatten)]
        inner: T,
    }
    let argv = std::iter::once("bench".to_string()).chain(flags.iter().cloned());
    Ok(Wrap::<T>::try_parse_from(argv)?.inner)
}

/// Parses the end-to-end scenario's flags (`sync`'s or `nats`') from the shared ones.
fn scenario_args<T: Args>(args: &BenchArgs) -> anyhow::Result<T> {
    let mut argv = Vec::new();
    for (flag, value) in [
        ("--points", args.points),
        ("--devices", args.devices),
        ("--rate", args.rate),
        ("--seconds", args.seconds),
        ("--outage-points", args.outage_points),
    ] {
        if let Some(v) = value {
            argv.push(flag.to_string());
            argv.push(v.to_string());
        }
    }
    scenario_args_from(&argv)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut progress = match &args.scenario {
        Some(Scenario::Ingest(_) | Scenario::Read(_) | Scenario::Idle(_)) => Progress::off(),
        Some(Scenario::Nats(_) | Scenario::Sync(_)) => Progress::new(PHASES),
        Some(Scenario::Devices(a)) => Progress::new(if a.nats { 4 } else { 2 }),
        Some(Scenario::Scale(a)) => Progress::new(scale::phases(a)),
        Some(Scenario::Cluster(a)) => Progress::new(cluster::phases(a)),
        None => Progress::new(phases(&args)?),
    };
    let result = run_with(&args, &mut progress).await;
    progress.finish();
    let sections = result?;
    if args.json {
        let out = match sections.as_slice() {
            [(_, ours, theirs)] if theirs.is_empty() => ours.json(),
            _ => sections_json(&sections),
        };
        println!("{}", serde_json::Value::Object(out));
        return Ok(());
    }
    for (i, (title, ours, theirs)) in sections.iter().enumerate() {
        if let Some(title) = title {
            if i > 0 {
                println!();
            }
            println!("## {title}");
        }
        if theirs.is_empty() {
            print!("{}", ours.table());
        } else {
            print!("{}", compared_table(ours, theirs));
        }
    }
    Ok(())
}

/// One part's results: its title (none for a single scenario), ours, and the baselines'
/// (JSON key, column label, report).
type Section = (Option<&'static str>, Report, Vec<(String, String, Report)>);

/// The JSON object of a run: the end-to-end part at the top level (`west`, `nats`, …, as
/// before the other parts existed), each other part under its own key.
fn sections_json(sections: &[Section]) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (title, ours, theirs) in sections {
        let mut part = serde_json::Map::new();
        part.insert("west".into(), serde_json::Value::Object(ours.json()));
        for (key, _, report) in theirs {
            part.insert(key.clone(), serde_json::Value::Object(report.json()));
        }
        match title.and_then(|t| t.split(':').next()) {
            None | Some("end to end") => out.extend(part),
            Some(key) => {
                out.insert(key.to_owned(), serde_json::Value::Object(part));
            }
        }
    }
    out
}

/// Phases of the default run, for the progress display.
fn phases(args: &BenchArgs) -> anyhow::Result<usize> {
    let nats = args.baseline.is_some();
    let sides = if nats { 1 + NATS_VARIANTS.len() } else { 1 };
    let mut n = 0;
    for part in &args.parts {
        n += match part {
            Part::Main => sides * PHASES,
            Part::Devices => 2 * if nats { 2 } else { 1 },
            Part::Scale => scale::phases(&scale_args(args)?),
            Part::Cluster => cluster::phases(&cluster_args(args)?),
            Part::Read => 1,
        };
    }
    Ok(n)
}

fn scale_args(args: &BenchArgs) -> anyhow::Result<scale::ScaleArgs> {
    let mut a: scale::ScaleArgs = scenario_args_from(&[])?;
    if let Some(fleets) = &args.fleets {
        a.fleets = fleets.clone();
    }
    if let Some(points) = args.scale_points {
        a.points = points;
    }
    if let Some(rate) = args.rate {
        a.rate = rate;
    }
    a.nats = args.baseline.is_some();
    a.nats_batch = args.nats_batch;
    Ok(a)
}

/// The cluster part's flags: the end-to-end part's sizes, `--hub-nodes` and `--kills`.
fn cluster_args(args: &BenchArgs) -> anyhow::Result<cluster::ClusterArgs> {
    let mut a: cluster::ClusterArgs = scenario_args_from(&[])?;
    if let Some(points) = args.points {
        a.points = points;
    }
    if let Some(devices) = args.devices {
        a.devices = devices;
    }
    if let Some(rate) = args.rate {
        a.rate = rate;
    }
    a.seconds = args.seconds;
    if let Some(nodes) = args.hub_nodes {
        a.hub_nodes = nodes;
    }
    if let Some(kills) = args.kills {
        a.kills = kills;
    }
    Ok(a)
}

/// Runs what `args` asks for: a section per part.
async fn run_with(args: &BenchArgs, progress: &mut Progress) -> anyhow::Result<Vec<Section>> {
    let single = |ours| Ok(vec![(None, ours, Vec::new())]);
    match &args.scenario {
        Some(Scenario::Ingest(a)) => return single(ingest::run(a.clone()).await?),
        Some(Scenario::Nats(a)) => return single(nats::run(a, progress).await?),
        Some(Scenario::Sync(a)) => return single(sync::run(a.clone(), progress).await?),
        Some(Scenario::Read(a)) => return single(read::run(a.clone()).await?),
        Some(Scenario::Idle(a)) => return single(idle::run(a.clone()).await?),
        Some(Scenario::Devices(a)) => {
            let (ours, theirs) = devices::run(a, progress).await?;
            let theirs = theirs
                .map(|r| ("nats".to_owned(), "nats, 1 a reading".to_owned(), r))
                .into_iter()
                .collect();
            return Ok(vec![(None, ours, theirs)]);
        }
        Some(Scenario::Scale(a)) => {
            let (ours, theirs) = scale::run(a, progress).await?;
            return Ok(vec![(None, ours, theirs)]);
        }
        Some(Scenario::Cluster(a)) => return single(cluster::run(a, progress).await?),
        None => {}
    }
    let mut sections = Vec::new();
    for part in &args.parts {
        sections.push(match part {
            Part::Main => {
                let ours = sync::run(scenario_args(args)?, progress).await?;
                let mut theirs = Vec::new();
                if let Some(Baseline::Nats) = args.baseline {
                    for (key, batched, store) in NATS_VARIANTS {
                        let mut a: nats::NatsArgs = scenario_args(args)?;
                        if batched {
                            a.nats_batch = args.nats_batch;
                        }
                        a.store = store;
                        let report = nats::run(&a, progress).await?;
                        theirs.push((key.to_owned(), nats::label(&a), report));
                    }
                }
                (Some("end to end"), ours, theirs)
            }
            Part::Devices => {
                let mut a: devices::DevicesArgs = scenario_args_from(&[])?;
                if let Some(d) = args.devices {
                    a.devices = d;
                }
                if let Some(r) = args.readings {
                    a.readings = r;
                }
                a.nats = args.baseline.is_some();
                let (ours, theirs) = devices::run(&a, progress).await?;
                let theirs = theirs
                    .map(|r| ("nats".to_owned(), "nats, 1 a reading".to_owned(), r))
                    .into_iter()
                    .collect();
                (
                    Some("devices: each posts its own readings, one a request"),
                    ours,
                    theirs,
                )
            }
            Part::Scale => {
                let (ours, theirs) = scale::run(&scale_args(args)?, progress).await?;
                (Some("scale: per fleet size"), ours, theirs)
            }
            Part::Cluster => (
                Some("cluster: one hub, then a hub cluster on NATS with the Source and the Target on different nodes"),
                cluster::run(&cluster_args(args)?, progress).await?,
                Vec::new(),
            ),
            Part::Read => {
                progress.phase("west: read", 0);
                let mut a: read::ReadArgs = scenario_args_from(&[])?;
                if let Some(d) = args.devices {
                    a.devices = d;
                }
                (
                    Some("read: a day of one series, the latest values of every device"),
                    read::run(a).await?,
                    Vec::new(),
                )
            }
        });
    }
    Ok(sections)
}

/// The table of ours beside the baselines: a row per figure of ours, then the figures only a
/// baseline reports; a column of values and one of ratios per baseline.
fn compared_table(ours: &Report, theirs: &[(String, String, Report)]) -> String {
    let mut names: Vec<(&str, &'static str)> =
        ours.rows.iter().map(|r| (r.0.as_str(), r.2)).collect();
    for (_, _, report) in theirs {
        for (name, _, unit) in &report.rows {
            if !names.iter().any(|n| n.0 == name) {
                names.push((name, unit));
            }
        }
    }
    let width = names.iter().map(|n| n.0.len()).max().unwrap_or(0);
    let value = |report: &Report, name: &str| report.rows.iter().find(|r| r.0 == name).map(|r| r.1);
    let mut out = format!("{:<width$}  {:>14}", "", "west");
    for (_, label, _) in theirs {
        out.push_str(&format!(" {label:>20} {:>7}", "ratio"));
    }
    out.push('\n');
    for (name, unit) in names {
        let ours_v = value(ours, name);
        let text = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.2}"));
        out.push_str(&format!("{name:<width$}  {:>14}", text(ours_v)));
        for (_, _, report) in theirs {
            let theirs_v = value(report, name);
            let ratio = match (ours_v, theirs_v) {
                (Some(o), Some(t)) if t != 0.0 => format!("{:.2}", o / t),
                _ => "—".into(),
            };
            out.push_str(&format!(" {:>20} {ratio:>7}", text(theirs_v)));
        }
        out.push_str(&format!("  {unit}\n"));
    }
    out
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
                    name.replace(',', "").replace([' ', '-'], "_"),
                    unit.replace('/', "_per_")
                );
                (key, serde_json::json!(value))
            })
            .collect()
    }
}
