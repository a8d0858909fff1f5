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
//!   outage, wire bytes per point counted at the hub.

pub mod ingest;
mod nats;
mod sync;

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
    /// Print the results as one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
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

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = match args.scenario {
        Scenario::Ingest(a) => ingest::run(a).await?,
        Scenario::Nats(a) => nats::run(&a).await?,
        Scenario::Sync(a) => sync::run(a).await?,
    };
    if args.json {
        println!("{}", serde_json::Value::Object(report.json()));
    } else {
        print!("{}", report.table());
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
