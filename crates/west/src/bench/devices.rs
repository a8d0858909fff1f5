//! The devices scenario: device-shaped load. Instead of a gateway's bulk requests, each of
//! `--devices` simulated devices posts its own readings with its own token over its own
//! keep-alive connection, one point a request, each request after the previous one's
//! answer (`--readings` each), all devices at once.
//!
//! Ours: a hub and two paired sites as in the sync scenario; each device is a
//! `POST /api/v1/connectors/{cid}/devices/{identity}/data` client with its device token.
//! Figures: sustained points/s on the Source (points / time until the last answer), p50/p99/
//! max of the request latency (request sent → durable acknowledgement), replicated points/s
//! (points / time until the Target has applied the last one: a point written in bulk after
//! the last answer ends the stream, and is polled for on the Target), disk bytes written per point,
//! peak RSS and CPU. Beside it, with `--nats`, NATS JetStream with one publish per reading:
//! each device its own connection to site-a, publishing and awaiting the ack of each
//! reading (see `nats::run_devices`), under the same row names.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use launch::Api;
use serde_json::json;

use super::Report;
use super::ingest::sensor_value;
use super::procstat::{self, ClientMeter, Usage};
use super::progress::Progress;
use super::sync::{Bench, device_name};

#[derive(Args, Clone, Debug)]
pub struct DevicesArgs {
    /// Simulated devices, each with its own token and keep-alive connection.
    #[arg(long, default_value_t = 1_000)]
    pub devices: u64,
    /// Readings each device posts, one a request.
    #[arg(long, default_value_t = 100)]
    pub readings: u64,
    /// Run NATS JetStream beside, one publish per reading.
    #[arg(long)]
    pub nats: bool,
}

/// Timestamp of a device's first reading, µs; one a second after it.
const T0: i64 = 1_700_000_000_000_000;

pub fn reading_time(k: u64) -> i64 {
    T0 + i64::try_from(k).unwrap_or(0) * 1_000_000
}

/// Ours, and NATS's when `--nats` asks for it.
pub async fn run(
    args: &DevicesArgs,
    progress: &mut Progress,
) -> anyhow::Result<(Report, Option<Report>)> {
    anyhow::ensure!(
        args.devices > 0 && args.readings > 0,
        "counts must be positive"
    );
    let ours = run_west(args, progress).await?;
    let theirs = match args.nats {
        true => Some(super::nats::run_devices(args, progress).await?),
        false => None,
    };
    Ok((ours, theirs))
}

async fn run_west(args: &DevicesArgs, progress: &mut Progress) -> anyhow::Result<Report> {
    let tick = procstat::clock_ticks().await;
    let client = ClientMeter::start(tick)?;
    progress.phase("west devices: start, pair, create devices", 0);
    let mut b = Bench::start(args.devices, 1).await?;
    let total = args.devices * args.readings;
    progress.phase("west devices: one reading a request", total);
    progress.stage("Source ingest");
    let disk_before = b.disk_written()?;
    let base = b.next;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for d in 0..args.devices {
        let token = b
            .tokens
            .get(usize::try_from(d)?)
            .context("a device without a token")?;
        // A client of its own: its own keep-alive connection.
        let api = Api::new(&b.a.url).with_token(token);
        let path = format!(
            "/api/v1/connectors/{}/devices/{}/data",
            b.src,
            device_name(d)
        );
        let (readings, bar) = (args.readings, progress.counter());
        tasks.spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            for k in 0..readings {
                let body =
                    json!({"t": reading_time(k), "values": {"temperature": sensor_value(d, k)}});
                let sent = Instant::now();
                api.post_ok(&path, body).await?;
                let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                hist.record(us.max(1))?;
                bar.inc(1);
            }
            anyhow::Ok(hist)
        });
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    while let Some(done) = tasks.join_next().await {
        hist.add(done.context("a device panicked")??)?;
    }
    let ingested = started.elapsed().as_secs_f64();
    b.written_elsewhere(total);
    // One more point, written after every device's last answer, ends the stream: once it
    // is readable on the Target, every reading is (the Target applies in stream order).
    let (marker, _) = b.body(1);
    b.api_a
        .post_ok(&format!("/api/v1/connectors/{}/data", b.src), marker)
        .await
        .context("writing the point that ends the stream")?;
    progress.stage("Target applying");
    b.applied_all(base, progress).await?;
    let secs = started.elapsed().as_secs_f64();
    let disk = b.disk_written()?;

    let mut report = Report::default();
    add_rows(&mut report, total, secs, ingested, &hist);
    for (site, (after, before)) in ["site-a", "site-b"]
        .into_iter()
        .zip([(disk.0, disk_before.0), (disk.1, disk_before.1)])
    {
        report.add(
            format!("disk written per point {site}"),
            after.saturating_sub(before) as f64 / total as f64,
            "B",
        );
    }
    let usage = [
        ("hub", Usage::of(b.hub().proc.pid(), tick)?),
        ("site-a", Usage::of(b.a.proc.pid(), tick)?),
        ("site-b", Usage::of(b.b.proc.pid(), tick)?),
        ("client", client.finish(tick)?),
    ];
    procstat::report(&mut report, &usage);
    Ok(report)
}

/// The rows both sides share: replicated, sustained ingest, request latency.
pub fn add_rows(report: &mut Report, total: u64, secs: f64, ingested: f64, hist: &Histogram<u64>) {
    report.add("replicated", total as f64 / secs, "points/s");
    report.add("  source ingest alone", total as f64 / ingested, "points/s");
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    report.add("request latency p50", ms(0.50), "ms");
    report.add("request latency p99", ms(0.99), "ms");
    report.add("request latency max", hist.max() as f64 / 1000.0, "ms");
    report.add("points published", total as f64, "points");
}
