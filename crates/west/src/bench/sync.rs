//! The sync scenario: a real `west hub` and two `west site` child processes on loopback,
//! paired through the API, a `number` resource with Remote-Sync on and `--devices` devices on
//! the Source, values that drift like a sensor.
//!
//! 0. The devices are created after the pairing, so they are replicated first; the
//!    measurements start once the Target has them.
//! 1. Throughput: `--points` points in bulk requests of 1,000 points, round-robin over the
//!    devices, `--clients` requests in flight at once (4), as fast as the Source takes them;
//!    replicated points/s = points / time from the first request until the Target has
//!    applied the last one. Wire bytes per point = bytes the hub received from the Source
//!    during this phase / points. Disk bytes written per point = `write_bytes` of
//!    `/proc/PID/io` of site-a and of site-b over this phase / points.
//!    Stored bytes per point, after this phase = size of the Target's data dir (its SQLite
//!    database, WAL included) / points.
//! 2. Latency: `--rate` points/s for `--seconds` (one bulk request per 1,000 points, paced);
//!    for each request, the time from the Source's acknowledgement until its last point is
//!    visible on the Target: its event on the Target's live stream (`live.rs`), as the
//!    baseline subscribes to its mirror, or, on a site without one, readable through the
//!    data API (polled every 1 ms; also for a point the stream has not shown after 2 s, and
//!    after it lagged; `latency samples polled` counts those); p50/p99/max; and p50/p99 from
//!    sending the request, which adds the Source's ingest.
//! 3. Catch-up: the Target is killed (SIGKILL), `--outage-points` points are written (one
//!    hour at 1,000 points/s by default), the Target is restarted; catch-up points/s = points
//!    / time from the restart until the Target has applied them all (and, apart, the time
//!    until the first of them was applied).
//!
//! Then, as in the NATS baseline: stored bytes per point (the Target's data dir / every point
//! it holds), and the peak RSS (VmHWM) and CPU seconds of the hub, site-a, site-b (both of
//! its lives) and the client (this process, over this scenario only).
//!
//! Waits poll the Target's sync status every 5 ms (the wait is what is measured) and give
//! up when its applied sequence has not moved for a minute. Children die with this process
//! (`launch`'s `kill_on_drop` and parent-death signal). Nothing here asserts a speed; it
//! reports one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;
use launch::{Api, HubProc, SiteOpts, SiteProc};
use serde_json::{Value, json};

use super::Report;
use super::ingest::sensor_value;
use super::live::Live;
use super::procstat::{self, ClientMeter, Usage};
use super::progress::Progress;

#[derive(Args, Clone)]
pub struct SyncArgs {
    /// Points in the throughput phase.
    #[arg(long, default_value_t = 500_000)]
    pub(super) points: u64,
    /// Devices the points are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub(super) devices: u64,
    /// Rate of the latency phase, points/s.
    #[arg(long, default_value_t = 10_000)]
    pub(super) rate: u64,
    /// Length of the latency phase, seconds [default: points / 25,000, from 1 to 20].
    #[arg(long)]
    pub(super) seconds: Option<u64>,
    /// Points written while the Target is down [default: 3,600,000, one hour at 1,000
    /// points/s, but at most 10 × points; 0 skips the phase].
    #[arg(long)]
    pub(super) outage_points: Option<u64>,
    /// Bulk requests in flight at once in the throughput and outage phases, as a fleet of
    /// gateways would send them (the baseline keeps 1,000 one-point publishes in flight).
    #[arg(long, default_value_t = 4)]
    pub(super) clients: usize,
}

impl SyncArgs {
    fn seconds(&self) -> u64 {
        self.seconds
            .unwrap_or_else(|| super::default_seconds(self.points))
    }

    fn outage_points(&self) -> u64 {
        self.outage_points
            .unwrap_or_else(|| super::default_outage_points(self.points))
    }
}

const T0: i64 = 1_700_000_000_000_000;
/// How long the latency phase waits for a point on the Target's live stream before it
/// polls the data API for it instead.
const LIVE_PATIENCE: Duration = Duration::from_secs(2);
/// Points a bulk request, as a gateway sends them.
const PER_REQUEST: u64 = 1_000;
/// How long a wait may see no progress before the benchmark gives up.
const STALL: Duration = Duration::from_secs(60);

pub(super) fn device_name(d: u64) -> String {
    format!("sensor-{d:05}")
}

/// Creates devices `0..devices` on the Source, 16 requests in flight; their tokens.
async fn create_devices(api: &Api, cid: &str, devices: u64) -> anyhow::Result<Vec<String>> {
    use futures::StreamExt as _;
    let path = format!("/api/v1/connectors/{cid}/devices");
    futures::stream::iter(0..devices)
        .map(|d| {
            let (api, path) = (api.clone(), path.clone());
            async move {
                let created = api
                    .post_ok(&path, json!({"identity": device_name(d)}))
                    .await?;
                let token = created["token"]
                    .as_str()
                    .with_context(|| format!("no token for device {d}: {created}"))?;
                anyhow::Ok(token.to_owned())
            }
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// The hub, the two paired sites and the workload's position; shared with the devices
/// scenario.
pub(super) struct Bench {
    pub(super) hub: HubProc,
    /// The Source.
    pub(super) a: SiteProc,
    /// The Target.
    pub(super) b: SiteProc,
    pub(super) api_a: Api,
    api_b: Api,
    pub(super) src: String,
    tgt: String,
    devices: u64,
    /// Each device's own token (its credential for writing its data), by device number.
    pub(super) tokens: Vec<String>,
    /// Next point number: step = n / devices, device = n % devices.
    pub(super) next: u64,
    /// Records of the stream before the first point: the devices, which are replicated
    /// too. Point n has seq `seq0 + n + 1`.
    seq0: u64,
    clients: usize,
}

impl Bench {
    pub(super) async fn start(devices: u64, clients: usize) -> anyhow::Result<Self> {
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
            launch::eventually("the hub link", launch::DEADLINE, || async {
                Ok((api.get_ok("/health").await?["hub"]["connected"] == true).then_some(()))
            })
            .await?;
        }
        let (src, tgt) = launch::pair(&api_a, &api_b, "bench").await?;
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
        let tokens = create_devices(&api_a, &src, devices).await?;
        let mut bench = Self {
            hub,
            a,
            b,
            api_a,
            api_b,
            src,
            tgt,
            devices,
            tokens,
            next: 0,
            seq0: 0,
            clients: clients.max(1),
        };
        // The devices travel first; the points' seqs start after them.
        let head = bench
            .api_a
            .get_ok(&format!("/api/v1/connectors/{}/remote-sync", bench.src))
            .await?["link"]["outbox_head"]
            .as_u64()
            .context("the Source's outbox head")?;
        bench.applied(0, head, &Progress::off()).await?;
        bench.seq0 = head;
        Ok(bench)
    }

    /// The next `n` points as one bulk request, and the (device, t) of its last point.
    fn body(&mut self, n: u64) -> (Value, (String, i64)) {
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
        self.next += n;
        (Value::Array(body), last)
    }

    /// The Target's applied sequence, or `None` while it does not answer (restarting).
    async fn applied_seq(&self) -> Option<u64> {
        let path = format!("/api/v1/connectors/{}/remote-sync", self.tgt);
        let t = self.api_b.get_ok(&path).await.ok()?;
        t["link"]["applied_seq"].as_u64()
    }

    /// Waits until the Target has applied point `n` (seq `seq0 + n`), showing progress from
    /// point `from`; returns when it was first seen past `from`. Fails when the applied
    /// sequence has not moved for [`STALL`].
    pub(super) async fn applied_points(
        &self,
        from: u64,
        n: u64,
        progress: &Progress,
    ) -> anyhow::Result<Instant> {
        self.applied(self.seq0 + from, self.seq0 + n, progress)
            .await
    }

    /// Waits until the Target has applied stream record `seq` (see [`applied_points`]).
    async fn applied(&self, from: u64, seq: u64, progress: &Progress) -> anyhow::Result<Instant> {
        let mut last = (None, Instant::now());
        let mut moved = None;
        loop {
            let applied = self.applied_seq().await;
            if let Some(a) = applied {
                progress.set(a.saturating_sub(from));
                if a > from {
                    moved.get_or_insert_with(Instant::now);
                }
                if a >= seq {
                    return Ok(moved.unwrap_or_else(Instant::now));
                }
            }
            if applied != last.0 {
                last = (applied, Instant::now());
            } else if last.1.elapsed() > STALL {
                bail!(
                    "the Target's applied sequence stayed at {applied:?} of {seq} for {STALL:?}; \
                     its log tail:\n{}",
                    self.b.proc.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Writes `points` in bulk requests of [`PER_REQUEST`] points, round-robin over the
    /// devices.
    async fn write_bulk(&mut self, points: u64, progress: &Progress) -> anyhow::Result<()> {
        use futures::StreamExt as _;
        let batch = PER_REQUEST;
        let path = format!("/api/v1/connectors/{}/data", self.src);
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut written = 0;
        while written < points || !in_flight.is_empty() {
            while written < points && in_flight.len() < self.clients {
                let n = batch.min(points - written);
                let (body, _) = self.body(n);
                let (api, path) = (self.api_a.clone(), path.clone());
                in_flight.push(async move { api.post_ok(&path, body).await.map(|_| n) });
                written += n;
            }
            if let Some(done) = in_flight.next().await {
                progress.inc(done?);
            }
        }
        Ok(())
    }

    /// Bytes site-a and site-b have written to disk so far (`/proc/PID/io`).
    pub(super) fn disk_written(&self) -> anyhow::Result<(u64, u64)> {
        Ok((
            procstat::disk_written(self.a.proc.pid())?,
            procstat::disk_written(self.b.proc.pid())?,
        ))
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

pub async fn run(args: SyncArgs, progress: &mut Progress) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.points > 0 && args.devices > 0 && args.rate > 0,
        "counts must be positive"
    );
    let tick = procstat::clock_ticks().await;
    let client = ClientMeter::start(tick)?;
    progress.phase("west: start, pair, create devices", 0);
    let mut b = Bench::start(args.devices, args.clients).await?;
    let mut report = Report::default();

    // 1. Throughput, wire bytes, stored bytes.
    progress.phase("west: throughput", args.points);
    progress.stage("Source ingest");
    let wire_before = b
        .hub
        .counter("west_hub_bytes_received_total", "site-a")
        .await?;
    let disk_before = b.disk_written()?;
    let started = Instant::now();
    let base = b.next;
    b.write_bulk(args.points, progress).await?;
    let ingested = started.elapsed().as_secs_f64();
    // Every point is remote-synced, so the outbox head is the number of points written.
    progress.stage("Target applying");
    b.applied_points(base, b.next, progress).await?;
    let secs = started.elapsed().as_secs_f64();
    let wire = b
        .hub
        .counter("west_hub_bytes_received_total", "site-a")
        .await?
        - wire_before;
    let disk = b.disk_written()?;
    let stored_early =
        procstat::dir_size(&b.b.data_dir).context("measuring the Target's data dir")?;
    let written = b.next - base;

    // 2. Latency at a fixed rate.
    let per_request = 1_000.min(args.rate);
    let interval = Duration::from_secs_f64(per_request as f64 / args.rate as f64);
    let requests = (args.rate * args.seconds() / per_request).max(1);
    progress.phase("west: latency", requests * per_request);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram")?;
    let mut from_send = hist.clone();
    let mut waiting: VecDeque<(Instant, Instant, String, i64)> = VecDeque::new();
    // The Target's live stream says when a point is visible, if it has one; else polling.
    let live = Live::subscribe(&b.b.url, b.api_b.token.as_deref(), &b.tgt).await?;
    let mut polled = 0u64;
    let path = format!("/api/v1/connectors/{}/data", b.src);
    let phase = Instant::now();
    let mut sent = 0;
    while sent < requests || !waiting.is_empty() {
        let due = phase + interval.mul_f64(sent as f64);
        if sent < requests && Instant::now() >= due {
            let (body, (device, t)) = b.body(per_request);
            if let Some(live) = &live {
                live.want(&device, t);
            }
            let sent_at = Instant::now();
            b.api_a.post_ok(&path, body).await?;
            waiting.push_back((sent_at, Instant::now(), device, t));
            sent += 1;
            progress.inc(per_request);
            continue;
        }
        if let Some((sent_at, acked, device, t)) = waiting.front().cloned() {
            let seen = match &live {
                Some(live) => match live.take(&device, t) {
                    Some(at) => Some(at),
                    // A stream that lagged, ended or stays silent: poll instead, and say so.
                    None if live.broken() || acked.elapsed() > LIVE_PATIENCE => {
                        let at = b.visible(&device, t).await?.then(Instant::now);
                        polled += u64::from(at.is_some());
                        at
                    }
                    None => None,
                },
                None => {
                    let at = b.visible(&device, t).await?.then(Instant::now);
                    polled += u64::from(at.is_some());
                    at
                }
            };
            if let Some(at) = seen {
                let us = |since: Instant| {
                    u64::try_from(at.saturating_duration_since(since).as_micros())
                        .unwrap_or(u64::MAX)
                };
                hist.record(us(acked).max(1)).context("recording latency")?;
                from_send
                    .record(us(sent_at).max(1))
                    .context("recording latency")?;
                waiting.pop_front();
                continue;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(live);

    // 3. Catch-up after an outage of the Target.
    let outage = args.outage_points();
    let mut b_before = Usage::default();
    let mut catch_up = None;
    progress.phase("west: catch-up", outage);
    if outage > 0 {
        progress.stage("backlog, Target down");
        b_before = Usage::of(b.b.proc.pid(), tick)?;
        b.b.kill9().await?;
        let held = b.next;
        b.write_bulk(outage, progress).await?;
        let head = b.next;
        progress.stage("Target catching up");
        let restarted = Instant::now();
        b.b.restart().await?;
        b.api_b = b.b.admin().await?;
        let moved = b.applied_points(held, head, progress).await?;
        catch_up = Some((
            restarted.elapsed().as_secs_f64(),
            moved.saturating_duration_since(restarted).as_secs_f64(),
        ));
    }
    let stored = procstat::dir_size(&b.b.data_dir).context("measuring the Target's data dir")?;

    report.add("replicated", written as f64 / secs, "points/s");
    report.add(
        "  source ingest alone",
        written as f64 / ingested,
        "points/s",
    );
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    report.add("latency p50", ms(0.50), "ms");
    report.add("latency p99", ms(0.99), "ms");
    report.add("latency max", hist.max() as f64 / 1000.0, "ms");
    report.add(
        "  latency samples polled, not streamed",
        polled as f64,
        "samples",
    );
    report.add(
        "latency p50 from send",
        from_send.value_at_quantile(0.5) as f64 / 1000.0,
        "ms",
    );
    report.add(
        "latency p99 from send",
        from_send.value_at_quantile(0.99) as f64 / 1000.0,
        "ms",
    );
    if let Some((secs, first_point)) = catch_up {
        report.add("catch-up", outage as f64 / secs, "points/s");
        report.add("  catch-up time", secs, "s");
        report.add("  restart to first point", first_point, "s");
    }
    report.add("wire bytes per point", wire as f64 / written as f64, "B");
    report.add("stored bytes per point", stored as f64 / b.next as f64, "B");
    report.add(
        "  after throughput",
        stored_early as f64 / written as f64,
        "B",
    );
    for (site, (after, before)) in ["site-a", "site-b"]
        .into_iter()
        .zip([(disk.0, disk_before.0), (disk.1, disk_before.1)])
    {
        report.add(
            format!("disk written per point {site}"),
            after.saturating_sub(before) as f64 / written as f64,
            "B",
        );
    }
    let usage = [
        ("hub", Usage::of(b.hub.proc.pid(), tick)?),
        ("site-a", Usage::of(b.a.proc.pid(), tick)?),
        ("site-b", b_before.and(Usage::of(b.b.proc.pid(), tick)?)),
        ("client", client.finish(tick)?),
    ];
    procstat::report(&mut report, &usage);
    report.add("points published", b.next as f64, "points");
    Ok(report)
}
