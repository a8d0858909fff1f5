//! The ingest scenario: a real `west site` child process, a connector with one `number`
//! resource and `--devices` devices, values that drift like a sensor.
//!
//! 1. Throughput: `--points` points in bulk requests of `--batch` points, round-robin over
//!    the devices, from `--clients` concurrent clients; points/s = points / wall time from
//!    the first request to the last acknowledgement.
//! 2. Latency: `--samples` single-point writes, one at a time, from one client; p50/p99/max
//!    of request to durable acknowledgement.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use launch::{Api, SiteOpts, SiteProc};
use serde_json::{Value, json};

use super::Report;

#[derive(Args, Clone)]
pub struct IngestArgs {
    /// Points to ingest in the throughput phase.
    #[arg(long, default_value_t = 1_000_000)]
    points: u64,
    /// Devices the points are spread over.
    #[arg(long, default_value_t = 1_000)]
    devices: u64,
    /// Points per bulk request.
    #[arg(long, default_value_t = 1_000)]
    batch: u64,
    /// Concurrent clients in the throughput phase.
    #[arg(long, default_value_t = 1)]
    clients: u64,
    /// Single-point writes in the latency phase.
    #[arg(long, default_value_t = 2_000)]
    samples: u64,
    /// Commit durability of the site: normal or full.
    #[arg(long, default_value = "normal")]
    synchronous: String,
}

/// A sensor-like value of device `d` at step `i`: a slow sine per device plus a small
/// wobble, on 0.01 steps like a real thermometer's.
pub fn sensor_value(d: u64, i: u64) -> f64 {
    let phase = d as f64 * 0.37;
    let v = 20.0 + 5.0 * ((i as f64) / 600.0 + phase).sin() + ((i * 7 + d * 13) % 11) as f64 * 0.01;
    (v * 100.0).round() / 100.0
}

pub async fn run(args: IngestArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.devices > 0 && args.batch > 0 && args.clients > 0,
        "counts must be positive"
    );
    let bin = std::env::current_exe().context("finding the west binary")?;
    let mut opts = SiteOpts::new("bench-site");
    opts.extra = vec!["--synchronous".into(), args.synchronous.clone()];
    let site = SiteProc::start(&bin, opts).await?;
    let api = site.admin().await?;
    let c = api
        .post_ok("/api/v1/connectors", json!({"name": "bench"}))
        .await?;
    let cid = c["id"].as_str().context("connector id")?.to_owned();
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/resources"),
        json!({"name": "temperature", "format": "number", "unit": "°C"}),
    )
    .await?;
    for d in 0..args.devices {
        api.post_ok(
            &format!("/api/v1/connectors/{cid}/devices"),
            json!({"identity": device_name(d)}),
        )
        .await?;
    }

    let mut report = Report::default();
    let (secs, points) = throughput(&api, &cid, &args).await?;
    report.add("bulk ingest", points as f64 / secs, "points/s");
    report.add("bulk ingest wall time", secs, "s");

    let hist = latency(&api, &cid, args.samples).await?;
    report.add(
        "single-point p50",
        hist.value_at_quantile(0.50) as f64 / 1000.0,
        "ms",
    );
    report.add(
        "single-point p99",
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        "ms",
    );
    report.add("single-point max", hist.max() as f64 / 1000.0, "ms");

    let db = std::fs::metadata(site.data_dir.join("site.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    let wal = std::fs::metadata(site.data_dir.join("site.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    report.add(
        "stored bytes per point",
        (db + wal) as f64 / (points + args.samples) as f64,
        "B",
    );
    Ok(report)
}

fn device_name(d: u64) -> String {
    format!("sensor-{d:05}")
}

fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{msg:>12} {wide_bar} {pos}/{len} {per_sec}") {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar
}

async fn throughput(api: &Api, cid: &str, args: &IngestArgs) -> anyhow::Result<(f64, u64)> {
    let batches = args.points.div_ceil(args.batch);
    let bar = progress(batches * args.batch, "ingest");
    let start_t = 1_700_000_000_000_000i64;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..args.clients {
        let (api, cid, bar) = (api.clone(), cid.to_owned(), bar.clone());
        let (devices, batch, clients) = (args.devices, args.batch, args.clients);
        tasks.spawn(async move {
            let path = format!("/api/v1/connectors/{cid}/data");
            let mut b = client;
            while b < batches {
                let body: Vec<Value> = (0..batch)
                    .map(|k| {
                        let n = b * batch + k;
                        let (d, step) = (n % devices, n / devices);
                        json!({"device": device_name(d),
                               "t": start_t + i64::try_from(step).unwrap_or(0) * 1_000_000,
                               "values": {"temperature": sensor_value(d, step)}})
                    })
                    .collect();
                api.post_ok(&path, Value::Array(body)).await?;
                bar.inc(batch);
                b += clients;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("ingest client panicked")??;
    }
    bar.finish_and_clear();
    Ok((started.elapsed().as_secs_f64(), batches * args.batch))
}

async fn latency(api: &Api, cid: &str, samples: u64) -> anyhow::Result<Histogram<u64>> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?;
    let bar = progress(samples, "latency");
    let path = format!("/api/v1/connectors/{cid}/devices/{}/data", device_name(0));
    for i in 0..samples {
        let body = json!({"values": {"temperature": sensor_value(0, i)}});
        let started = Instant::now();
        api.post_ok(&path, body).await?;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        hist.record(us.max(1)).context("recording latency")?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(hist)
}
