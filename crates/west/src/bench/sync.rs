//! The sync scenario: a real `west hub` and two `west site` child processes on loopback,
//! paired through the API, a `number` resource with Remote-Sync on and `--devices` devices on
//! the Source, values that drift like a sensor.
//!
//! 0. The devices are created after the pairing, so they are replicated first; the
//!    measurements start once the Target has them all.
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
//! A wait for the Target polls its data API every 5 ms for the point that ends the stream
//! (the wait is what is measured; `Bench::applied_all`) and gives up when the applied
//! sequence of its sync status has not moved for a minute. Children die with this process
//! (`launch`'s `kill_on_drop` and parent-death signal). Nothing here asserts a speed; it
//! reports one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;
use launch::{Api, HubProc, Nats, SiteOpts, SiteProc};
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

/// Where the two sites' hub is.
#[derive(Clone, Copy, Debug)]
pub(super) enum Hubs {
    /// One `west hub` with its `hub.db`.
    One,
    /// `nodes` nodes of a hub cluster (`west hub --cluster`) on three `nats-server`
    /// processes joined as a JetStream cluster; the Source dials node 0 first, the Target
    /// node 1, so that their frames cross NATS.
    Cluster { nodes: usize },
}

/// The NATS servers of a cluster: three, so that the registry is kept in 3 replicas.
const NATS_SERVERS: usize = 3;

/// The hub (or the hub nodes), the two paired sites and the workload's position; shared
/// with the devices and cluster scenarios.
pub(super) struct Bench {
    /// The hub, or every node of the cluster (the Source's first, then the Target's).
    pub(super) hubs: Vec<HubProc>,
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
    /// Points of which the one last on the stream is (the last point of each request
    /// that may have been committed last); empty when that is not known.
    tail: Vec<u64>,
    /// Records of the stream before the first point: the devices, which are replicated
    /// too. Point n has seq `seq0 + n + 1`.
    seq0: u64,
    clients: usize,
    /// The NATS servers of a cluster; dropped (killed) after the hub nodes.
    _nats: Option<Nats>,
}

impl Bench {
    /// One hub and two paired sites.
    pub(super) async fn start(devices: u64, clients: usize) -> anyhow::Result<Self> {
        Self::start_on(Hubs::One, devices, clients).await
    }

    /// Two paired sites on `hubs`, `devices` devices on the Source, replicated to the
    /// Target before this returns.
    pub(super) async fn start_on(hubs: Hubs, devices: u64, clients: usize) -> anyhow::Result<Self> {
        let bin = std::env::current_exe().context("finding the west binary")?;
        let (hubs, nats) = match hubs {
            Hubs::One => (vec![HubProc::start(&bin).await?], None),
            Hubs::Cluster { nodes } => {
                anyhow::ensure!(
                    nodes >= 2,
                    "a cluster needs 2 hub nodes or more, to put the Source and the Target on \
                     different nodes"
                );
                let nats = Nats::cluster(NATS_SERVERS).await?;
                let urls = nats.urls();
                let first = HubProc::start_node(&bin, &urls, "node-1", None, &[]).await?;
                let mut all = vec![first];
                for i in 2..=nodes {
                    // Every node presents the first node's certificate.
                    let node =
                        HubProc::start_node(&bin, &urls, &format!("node-{i}"), Some(&all[0]), &[])
                            .await?;
                    all.push(node);
                }
                (all, Some(nats))
            }
        };
        let mut sites = Vec::new();
        for (name, first) in [("site-a", 0), ("site-b", 1 % hubs.len())] {
            // Each site knows every node, its own first.
            let order: Vec<&str> = (0..hubs.len())
                .map(|i| hubs[(first + i) % hubs.len()].url.as_str())
                .collect();
            let mut opts = SiteOpts::new(name);
            opts.extra = hubs[0].site_args_via(&order.join(","), &hubs[0].add_site(name).await?)?;
            if name == "site-a" {
                // Sized for its fleet: a connection per device (the devices scenario opens
                // them all at once) on top of the default cap of 1,024 connections, which
                // 1,000 devices and the benchmark's own clients would exceed.
                opts.extra.push("--max-connections".into());
                opts.extra.push((devices + 1_024).to_string());
            }
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
            hubs,
            a,
            b,
            api_a,
            api_b,
            src,
            tgt,
            devices,
            tokens,
            next: 0,
            tail: Vec::new(),
            seq0: 0,
            clients: clients.max(1),
            _nats: nats,
        };
        // The devices travel first; the points' seqs start after them.
        bench.seq0 = bench.devices_replicated().await?;
        Ok(bench)
    }

    /// Waits until the Target holds every device, and the Source's outbox head (a gauge
    /// refreshed every second, so read until it has counted every device) and the Target's
    /// applied sequence agree; that head.
    async fn devices_replicated(&self) -> anyhow::Result<u64> {
        let (source, target) = (
            format!("/api/v1/connectors/{}/remote-sync", self.src),
            format!("/api/v1/connectors/{}", self.tgt),
        );
        launch::eventually("the devices to reach the Target", STALL, || async {
            let held = self.api_b.get_ok(&target).await?["device_count"].as_u64();
            if held != Some(self.devices) {
                return Ok(None);
            }
            let head = self.api_a.get_ok(&source).await?["link"]["outbox_head"].as_u64();
            let head = head.context("the Source's outbox head")?;
            let applied = self.applied_seq().await;
            Ok((head >= self.devices && applied == Some(head)).then_some(head))
        })
        .await
    }

    /// The next `n` points as one bulk request, and the (device, t) of its last point.
    pub(super) fn body(&mut self, n: u64) -> (Value, (String, i64)) {
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
        // Written alone (the caller awaits it before the next), it ends the stream.
        self.tail = vec![self.next - 1];
        (Value::Array(body), last)
    }

    /// The seq of point `n` (counted from 0) on the stream.
    pub(super) fn seq_of_point(&self, n: u64) -> u64 {
        self.seq0 + n + 1
    }

    /// The hub, or the node the Source dials first.
    pub(super) fn hub(&self) -> &HubProc {
        &self.hubs[0]
    }

    /// The Target's applied sequence, or `None` while it does not answer (restarting).
    pub(super) async fn applied_seq(&self) -> Option<u64> {
        let path = format!("/api/v1/connectors/{}/remote-sync", self.tgt);
        let t = self.api_b.get_ok(&path).await.ok()?;
        t["link"]["applied_seq"].as_u64()
    }

    /// The device and timestamp of point `n` (counted from 0).
    fn point(&self, n: u64) -> (String, i64) {
        let (d, step) = (n % self.devices, n / self.devices);
        (
            device_name(d),
            T0 + i64::try_from(step).unwrap_or(0) * 1_000_000,
        )
    }

    /// Whether point `n` is readable on the Target (not while it does not answer).
    pub(super) async fn point_visible(&self, n: u64) -> bool {
        let (device, t) = self.point(n);
        matches!(self.visible(&device, t).await, Ok(true))
    }

    /// Waits until the Target has applied every point written so far, showing progress from
    /// point `from`; returns when point `from` was first seen there.
    ///
    /// The Target applies in stream order, so once the point that ends the stream (the
    /// last of the last request, or of any request that may have been committed after it,
    /// see `write_bulk`) is readable there, every point is: the wait polls the data API for
    /// those (and for point `from`) every 5 ms. The applied sequence of the Target's sync
    /// status moves the progress bar; it is a gauge published at most every 100 ms, and up
    /// to half a second late when the stream goes quiet, so it times the end only when the
    /// order of the last points is not known (after `written_elsewhere` without a point
    /// written here after it). Fails when it has not moved for [`STALL`].
    pub(super) async fn applied_all(
        &self,
        from: u64,
        progress: &Progress,
    ) -> anyhow::Result<Instant> {
        let n = self.next;
        let mut last = (None, Instant::now());
        let mut moved = None;
        let mut status_read: Option<Instant> = None;
        let mut tail = self.tail.clone();
        loop {
            let mut done = false;
            if status_read.is_none_or(|at| at.elapsed() >= Duration::from_millis(100))
                || tail.is_empty()
            {
                status_read = Some(Instant::now());
                let applied = self.applied_seq().await;
                if let Some(a) = applied {
                    progress.set(a.saturating_sub(self.seq0 + from));
                    done = tail.is_empty() && a >= self.seq0 + n;
                }
                if applied != last.0 {
                    last = (applied, Instant::now());
                } else if last.1.elapsed() > STALL {
                    bail!(
                        "the Target's applied sequence stayed at {applied:?} for {STALL:?} \
                         (waiting for {}); its log tail:\n{}",
                        self.seq0 + n,
                        self.b.proc.log_tail(20)
                    );
                }
            }
            if moved.is_none() && (from >= n || self.point_visible(from).await) {
                moved = Some(Instant::now());
            }
            while let Some(&p) = tail.last() {
                if !self.point_visible(p).await {
                    break;
                }
                tail.pop();
                done = tail.is_empty();
            }
            if done || n == 0 {
                return Ok(moved.unwrap_or_else(Instant::now));
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
        // The last point of each request in flight.
        let mut open = std::collections::BTreeSet::new();
        let mut tail = Vec::new();
        let mut written = 0;
        while written < points || !in_flight.is_empty() {
            while written < points && in_flight.len() < self.clients {
                let n = batch.min(points - written);
                let (body, _) = self.body(n);
                let last = self.next - 1;
                open.insert(last);
                let (api, path) = (self.api_a.clone(), path.clone());
                in_flight.push(async move { api.post_ok(&path, body).await.map(|_| (n, last)) });
                written += n;
                if written == points {
                    // Every request acknowledged before this one was sent has its points
                    // before this one's on the stream: the stream ends with one of these.
                    tail = open.iter().copied().collect();
                }
            }
            if let Some(done) = in_flight.next().await {
                let (n, last) = done?;
                open.remove(&last);
                progress.inc(n);
            }
        }
        if !tail.is_empty() {
            self.tail = tail;
        }
        Ok(())
    }

    /// Counts `n` points written by others (the devices scenario's devices), in an order
    /// not known here.
    pub(super) fn written_elsewhere(&mut self, n: u64) {
        self.next += n;
        self.tail.clear();
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

/// What the throughput phase measured.
pub(super) struct Throughput {
    /// Points written.
    pub(super) points: u64,
    /// From the first request until the Target had applied the last point.
    pub(super) secs: f64,
    /// From the first request until the Source had acknowledged the last one.
    pub(super) ingested: f64,
}

impl Throughput {
    pub(super) fn replicated(&self) -> f64 {
        self.points as f64 / self.secs
    }

    pub(super) fn ingest(&self) -> f64 {
        self.points as f64 / self.ingested
    }
}

/// The throughput phase (`name` prefixes its progress lines): `points` points in bulk
/// requests, as fast as the Source takes them, until the Target has applied them all.
pub(super) async fn throughput(
    b: &mut Bench,
    points: u64,
    name: &str,
    progress: &mut Progress,
) -> anyhow::Result<Throughput> {
    progress.phase(&format!("{name}: throughput"), points);
    progress.stage("Source ingest");
    let started = Instant::now();
    let base = b.next;
    b.write_bulk(points, progress).await?;
    let ingested = started.elapsed().as_secs_f64();
    progress.stage("Target applying");
    b.applied_all(base, progress).await?;
    Ok(Throughput {
        points: b.next - base,
        secs: started.elapsed().as_secs_f64(),
        ingested,
    })
}

/// What the latency phase measured, per request of up to 1,000 points (µs).
pub(super) struct Latency {
    /// From the Source's acknowledgement until the request's last point was visible on the
    /// Target.
    pub(super) from_ack: Histogram<u64>,
    /// From sending the request.
    pub(super) from_send: Histogram<u64>,
    /// Samples whose visibility was polled through the data API instead of streamed.
    pub(super) polled: u64,
}

impl Latency {
    /// A quantile of the latency from the acknowledgement, ms.
    pub(super) fn ms(&self, q: f64) -> f64 {
        self.from_ack.value_at_quantile(q) as f64 / 1000.0
    }

    /// The rows of the main part: p50, p99, max, polled samples, p50 and p99 from send.
    fn add_rows(&self, report: &mut Report) {
        report.add("latency p50", self.ms(0.50), "ms");
        report.add("latency p99", self.ms(0.99), "ms");
        report.add("latency max", self.from_ack.max() as f64 / 1000.0, "ms");
        report.add(
            "  latency samples polled, not streamed",
            self.polled as f64,
            "samples",
        );
        let send = |q: f64| self.from_send.value_at_quantile(q) as f64 / 1000.0;
        report.add("latency p50 from send", send(0.5), "ms");
        report.add("latency p99 from send", send(0.99), "ms");
    }
}

/// The latency phase (`name` prefixes its progress line): `rate` points/s for `seconds` in
/// paced requests of up to 1,000 points; per request, from its acknowledgement (and from
/// its sending) until its last point is visible on the Target.
pub(super) async fn latency(
    b: &mut Bench,
    rate: u64,
    seconds: u64,
    name: &str,
    progress: &mut Progress,
) -> anyhow::Result<Latency> {
    let per_request = 1_000.min(rate);
    let interval = Duration::from_secs_f64(per_request as f64 / rate as f64);
    let requests = (rate * seconds / per_request).max(1);
    progress.phase(&format!("{name}: latency"), requests * per_request);
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
    Ok(Latency {
        from_ack: hist,
        from_send,
        polled,
    })
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
    let wire_before = b
        .hub()
        .counter("west_hub_bytes_received_total", "site-a")
        .await?;
    let disk_before = b.disk_written()?;
    let speed = throughput(&mut b, args.points, "west", progress).await?;
    let wire = b
        .hub()
        .counter("west_hub_bytes_received_total", "site-a")
        .await?
        - wire_before;
    let disk = b.disk_written()?;
    let stored_early =
        procstat::dir_size(&b.b.data_dir).context("measuring the Target's data dir")?;
    let written = speed.points;

    // 2. Latency at a fixed rate.
    let lat = latency(&mut b, args.rate, args.seconds(), "west", progress).await?;

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
        progress.stage("Target catching up");
        let restarted = Instant::now();
        b.b.restart().await?;
        b.api_b = b.b.admin().await?;
        let moved = b.applied_all(held, progress).await?;
        catch_up = Some((
            restarted.elapsed().as_secs_f64(),
            moved.saturating_duration_since(restarted).as_secs_f64(),
        ));
    }
    let stored = procstat::dir_size(&b.b.data_dir).context("measuring the Target's data dir")?;

    report.add("replicated", speed.replicated(), "points/s");
    report.add("  source ingest alone", speed.ingest(), "points/s");
    lat.add_rows(&mut report);
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
        ("hub", Usage::of(b.hub().proc.pid(), tick)?),
        ("site-a", Usage::of(b.a.proc.pid(), tick)?),
        ("site-b", b_before.and(Usage::of(b.b.proc.pid(), tick)?)),
        ("client", client.finish(tick)?),
    ];
    procstat::report(&mut report, &usage);
    report.add("points published", b.next as f64, "points");
    Ok(report)
}
