//! The sync scenario: a real `west hub` and two `west site` child processes on loopback,
//! paired through the API, a `number` resource with Remote-Sync on and `--devices` devices on
//! the Source, values that drift like a sensor.
//!
//! 1. Throughput: `--points` points in bulk requests of one point per device, as fast as the
//!    Source takes them; replicated points/s = points / time from the first request until
//!    the Target has applied the last one. Wire bytes per point = bytes the hub received
//!    from the Source during this phase / points.
//! 2. Latency: `--rate` points/s for `--seconds` (one bulk request per 1,000 points, paced);
//!    for each request, the time from the Source's acknowledgement until its last point is
//!    readable on the Target (polled through the data API); p50/p99.
//! 3. Catch-up: the Target is killed, `--outage-points` points are written (one hour at
//!    1,000 points/s by default), the Target is restarted; catch-up points/s = points / time
//!    from the restart until the Target has applied them all.
//!
//! Nothing here asserts a speed; it reports one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use testkit::{Api, HubProc, SiteOpts, SiteProc};

use super::Report;
use super::ingest::sensor_value;

#[derive(Args, Clone)]
pub struct SyncArgs {
    /// Points in the throughput phase.
    #[arg(long, default_value_t = 500_000)]
    points: u64,
    /// Devices the points are spread over.
    #[arg(long, default_value_t = 1_000)]
    devices: u64,
    /// Rate of the latency phase, points/s.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Length of the latency phase, seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Points written while the Target is down (3,600,000 = one hour at 1,000 points/s).
    #[arg(long, default_value_t = 3_600_000)]
    outage_points: u64,
}

const T0: i64 = 1_700_000_000_000_000;

fn device_name(d: u64) -> String {
    format!("sensor-{d:05}")
}

struct Bench {
    hub: HubProc,
    /// The Source; kept so that its process lives as long as the bench.
    _a: SiteProc,
    b: SiteProc,
    api_a: Api,
    api_b: Api,
    src: String,
    tgt: String,
    devices: u64,
    /// Next point number: step = n / devices, device = n % devices.
    next: u64,
}

impl Bench {
    async fn start(devices: u64) -> anyhow::Result<Self> {
        let bin = std::env::current_exe().context("finding the west binary")?;
        let hub = HubProc::start(&bin).await?;
        let mut sites = Vec::new();
        for name in ["site-a", "site-b"] {
            let mut opts = SiteOpts::new(name);
            opts.extra = hub.site_args(&hub.add_site(name).await?);
            sites.push(SiteProc::start(&bin, opts).await?);
        }
        let b = sites.pop().context("two sites")?;
        let a = sites.pop().context("two sites")?;
        let (api_a, api_b) = (a.admin().await?, b.admin().await?);
        for api in [&api_a, &api_b] {
            testkit::eventually("the hub link", testkit::DEADLINE, || async {
                Ok((api.get_ok("/health").await?["hub"]["connected"] == true).then_some(()))
            })
            .await?;
        }
        let c = api_a
            .post_ok("/api/v1/connectors", json!({"name": "bench"}))
            .await?;
        let src = c["id"].as_str().context("connector id")?.to_owned();
        let e = api_a
            .post_ok(
                &format!("/api/v1/connectors/{src}/remote-sync/enable"),
                json!({}),
            )
            .await?;
        let t = api_b
            .post_ok(
                "/api/v1/connectors",
                json!({"name": "bench-copy", "remote_sync_target": {"remote_site": "site-a",
                       "remote_connector_id": src, "pairing_code": e["pairing_code"]}}),
            )
            .await?;
        let tgt = t["id"].as_str().context("target id")?.to_owned();
        api_a
            .post_ok(
                &format!("/api/v1/connectors/{src}/resources"),
                json!({"name": "temperature", "format": "number", "unit": "°C", "remote_sync": true}),
            )
            .await?;
        api_b
            .post_ok(
                &format!("/api/v1/connectors/{tgt}/resources"),
                json!({"name": "temperature", "format": "number", "unit": "°C"}),
            )
            .await?;
        for d in 0..devices {
            api_a
                .post_ok(
                    &format!("/api/v1/connectors/{src}/devices"),
                    json!({"identity": device_name(d)}),
                )
                .await?;
        }
        Ok(Self {
            hub,
            _a: a,
            b,
            api_a,
            api_b,
            src,
            tgt,
            devices,
            next: 0,
        })
    }

    /// Writes the next `n` points in one request; returns the last point's (device, t).
    async fn write(&mut self, n: u64) -> anyhow::Result<(String, i64)> {
        let mut last = (String::new(), 0);
        let body: Vec<Value> = (0..n)
            .map(|k| {
                let p = self.next + k;
                let (d, step) = (p % self.devices, p / self.devices);
                let t = T0 + i64::try_from(step).unwrap_or(0) * 1_000_000;
                last = (device_name(d), t);
                json!({"device": device_name(d), "t": t,
                       "values": {"temperature": sensor_value(d, step)}})
            })
            .collect();
        self.api_a
            .post_ok(
                &format!("/api/v1/connectors/{}/data", self.src),
                Value::Array(body),
            )
            .await?;
        self.next += n;
        Ok(last)
    }

    /// Waits until the Target has applied `seq`.
    async fn applied(&self, seq: u64, within: Duration) -> anyhow::Result<()> {
        let path = format!("/api/v1/connectors/{}/remote-sync", self.tgt);
        testkit::eventually("the Target to apply everything", within, || async {
            let t = self.api_b.get_ok(&path).await?;
            Ok((t["link"]["applied_seq"].as_u64().unwrap_or(0) >= seq).then_some(()))
        })
        .await
    }

    async fn visible(&self, device: &str, t: i64) -> anyhow::Result<bool> {
        let path = format!(
            "/api/v1/connectors/{}/devices/{device}/resources/temperature/data?since={t}&until={}&limit=1",
            self.tgt,
            t + 1
        );
        let (status, page) = self.api_b.get(&path).await?;
        Ok(status.is_success() && page["points"].as_array().is_some_and(|p| !p.is_empty()))
    }
}

pub async fn run(args: SyncArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.devices > 0 && args.rate > 0, "counts must be positive");
    let mut b = Bench::start(args.devices).await?;
    let mut report = Report::default();
    let long = Duration::from_secs(3600);

    // 1. Throughput and wire bytes.
    let wire_before = b
        .hub
        .counter("west_hub_bytes_received_total", "site-a")
        .await?;
    let started = Instant::now();
    let batch = args.devices.max(1_000);
    let mut written = 0;
    while written < args.points {
        let n = batch.min(args.points - written);
        b.write(n).await?;
        written += n;
    }
    let ingested = started.elapsed().as_secs_f64();
    // Every point is remote-synced, so the outbox head is the number of points written.
    b.applied(b.next, long).await?;
    let secs = started.elapsed().as_secs_f64();
    let wire = b
        .hub
        .counter("west_hub_bytes_received_total", "site-a")
        .await?
        - wire_before;
    report.add("replicated", written as f64 / secs, "points/s");
    report.add(
        "  source ingest alone",
        written as f64 / ingested,
        "points/s",
    );
    report.add("wire bytes per point", wire as f64 / written as f64, "B");

    // 2. Latency at a fixed rate.
    let per_request = 1_000.min(args.rate);
    let interval = Duration::from_secs_f64(per_request as f64 / args.rate as f64);
    let requests = args.rate * args.seconds / per_request;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram")?;
    let mut waiting: VecDeque<(Instant, String, i64)> = VecDeque::new();
    let phase = Instant::now();
    let mut sent = 0;
    while sent < requests || !waiting.is_empty() {
        let due = phase + interval.mul_f64(sent as f64);
        if sent < requests && Instant::now() >= due {
            let (device, t) = b.write(per_request).await?;
            waiting.push_back((Instant::now(), device, t));
            sent += 1;
            continue;
        }
        if let Some((acked, device, t)) = waiting.front().cloned()
            && b.visible(&device, t).await?
        {
            let us = u64::try_from(acked.elapsed().as_micros()).unwrap_or(u64::MAX);
            hist.record(us.max(1)).context("recording latency")?;
            waiting.pop_front();
            continue;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    report.add(
        "latency p50",
        hist.value_at_quantile(0.50) as f64 / 1000.0,
        "ms",
    );
    report.add(
        "latency p99",
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        "ms",
    );

    // 3. Catch-up after an outage of the Target.
    if args.outage_points > 0 {
        b.b.kill9().await?;
        let mut written = 0;
        while written < args.outage_points {
            let n = batch.min(args.outage_points - written);
            b.write(n).await?;
            written += n;
        }
        let head = b.next;
        let restarted = Instant::now();
        b.b.restart().await?;
        b.api_b = b.b.admin().await?;
        b.applied(head, long).await?;
        report.add(
            "catch-up",
            written as f64 / restarted.elapsed().as_secs_f64(),
            "points/s",
        );
    }
    Ok(report)
}
