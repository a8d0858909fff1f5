//! The NATS JetStream baseline of `west bench`: the workload of the `sync` scenario, run
//! through three `nats-server` child processes (Debian's `nats-server` package) and an
//! `async-nats` client, reported under the same row names so that the two can share a table.
//!
//! ```text
//!   client ──publish, await ack──▶ site-a   JetStream domain "a", file stream POINTS on west.>
//!                                    │ leafnode, through a byte-counting relay (Meter)
//!                                   hub      no JetStream, only routes
//!                                    │ leafnode
//!   client ◀──stream info, consumer── site-b JetStream domain "b", file stream POINTS that
//!                                            mirrors site-a's through the API prefix $JS.a.API
//! ```
//!
//! The workload: point `n` belongs to device `n % devices` at step `n / devices`, one second
//! apart, with [`sensor_value`]. Three ways to carry it (`--baseline nats` runs all three):
//!
//! - one point a message (`--nats-batch 1`, the default of `west bench nats`): a NATS user
//!   addresses per subject, so every point is one JetStream message on `west.<device>` whose
//!   payload is 16 bytes (timestamp µs, i64 LE; value, f64 LE), the most compact fixed
//!   encoding of what our points carry;
//! - batched (`--nats-batch N`): N points a message, a JSON array `[[device, t, v], …]` on
//!   `west.batch`, as a gateway that batches would publish them; the mirror moves opaque
//!   blobs, nothing on site-b can query a point;
//! - batched into a store (`--store`): the same, plus a consumer on site-b that writes every
//!   point into a per-series SQLite store and acks after commit (`sink.rs`); "replicated" and
//!   the latency then count points queryable there.
//!
//! Bulk publishing keeps up to `--batch` acks outstanding (a sliding window).
//!
//! 1. Throughput: `--points` points as fast as site-a acks them; replicated points/s = points /
//!    time from the first publish until site-b's mirror (or store) holds them all. Wire bytes
//!    per point = bytes site-a sent to the hub during this phase, NATS protocol lines
//!    included, / points (acks and flow control travelling the other way are not counted, as
//!    in our figure). Disk bytes written per point = `write_bytes` of `/proc/PID/io` of
//!    site-a and site-b (plus this process's, which runs the SQLite store) / points.
//! 2. Latency: `--rate` points/s for `--seconds`, in messages of up to `--nats-batch` points
//!    published as soon as their points are due; for every message, the time from its ack on
//!    site-a until an ordered consumer on site-b's mirror receives it (or its commit in the
//!    store); p50/p99/max; and p50/p99 from its publish, which adds site-a's ingest.
//! 3. Catch-up (unless `--outage-points 0`): site-b is killed (SIGKILL) with the store's
//!    consumer, the outage backlog is published, site-b is started again on the same ports and
//!    store; catch-up points/s = backlog / time from the restart until the mirror (or store)
//!    holds everything (and, apart, the time until its first new point).
//!
//! Then stored bytes per point (site-b's JetStream directory, and its SQLite store, / points
//! it holds; and the same after the throughput phase), and the peak RSS (VmHWM) and CPU
//! seconds (utime + stime) of each process, site-b's summed over both of its lives, plus the
//! client (this process, over this scenario only, the store's consumer included), all
//! measured by `procstat` as for our own processes. `run_devices` is the NATS side of the
//! devices scenario: one connection per device, one publish per reading.
//!
//! Invariants: every child is killed when the benchmark ends or fails (`kill_on_drop`), or is
//! killed itself (a parent-death signal, `launch::process::die_with_parent`); the run
//! fails unless site-a acknowledged every message exactly once, in order, site-b's mirror
//! holds exactly that many, and the store (if any) holds every point. Nothing here asserts a speed, uses TLS or authentication, or
//! leaves loopback.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_util::task::AbortOnDropHandle;

use super::Report;
use super::ingest::sensor_value;
use super::procstat::{self, ClientMeter, Usage};
use super::progress::Progress;
use super::sink::{self, Sink};

#[derive(Args, Clone, Debug)]
pub struct NatsArgs {
    /// Points in the throughput phase.
    #[arg(long, default_value_t = 500_000)]
    pub points: u64,
    /// Devices the points are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub devices: u64,
    /// Rate of the latency phase, points/s.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Length of the latency phase, seconds [default: points / 25,000, from 1 to 20].
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Points published while site-b is down [default: 3,600,000, one hour at 1,000
    /// points/s, but at most 10 × points].
    #[arg(long)]
    pub outage_points: Option<u64>,
    /// Publish acks that may be outstanding at once in the bulk phases.
    #[arg(long, default_value_t = 1_000)]
    pub batch: u64,
    /// Points a message: 1 publishes each point as its own 16-byte message on its device's
    /// subject; more packs that many points into one JSON array `[[device, t, v], …]` on
    /// `west.batch`, as a gateway that batches would.
    #[arg(long, default_value_t = 1)]
    pub nats_batch: u64,
    /// Also run a consumer on site-b that writes every point into a per-series SQLite store
    /// and acks after commit; "replicated" then counts points queryable there.
    #[arg(long)]
    pub store: bool,
}

impl NatsArgs {
    fn seconds(&self) -> u64 {
        self.seconds
            .unwrap_or_else(|| super::default_seconds(self.points))
    }

    fn outage_points(&self) -> u64 {
        self.outage_points
            .unwrap_or_else(|| super::default_outage_points(self.points))
    }
}

/// The stream on site-a and its mirror on site-b.
const STREAM: &str = "POINTS";
/// The subject of messages that carry many points.
pub const BATCH_SUBJECT: &str = "west.batch";
/// Most points a message may carry: about 40 bytes each in JSON, under nats-server's
/// default `max_payload` of 1 MiB.
const MAX_PER_MESSAGE: u64 = 20_000;
/// Timestamp of step 0, µs since the epoch (as in the `sync` scenario).
const T0: i64 = 1_700_000_000_000_000;
/// How long a wait may see no progress before the benchmark gives up.
const STALL: Duration = Duration::from_secs(60);

/// The name of this variant in progress lines and tables: `nats`, `nats ×1000`,
/// `nats ×1000 + SQLite`.
pub fn label(args: &NatsArgs) -> String {
    let mut label = "nats".to_owned();
    if args.nats_batch > 1 {
        label.push_str(&format!(" ×{}", args.nats_batch));
    }
    if args.store {
        label.push_str(" + SQLite");
    }
    label
}

pub async fn run(args: &NatsArgs, progress: &mut Progress) -> anyhow::Result<Report> {
    ensure!(
        args.points > 0
            && args.devices > 0
            && args.rate > 0
            && args.batch > 0
            && args.nats_batch > 0,
        "counts must be positive"
    );
    ensure!(
        args.nats_batch <= MAX_PER_MESSAGE,
        "--nats-batch {} is more than {MAX_PER_MESSAGE} points a message \
         (nats-server refuses messages over 1 MiB)",
        args.nats_batch
    );
    let name = label(args);
    let bin = launch::nats::nats_server_bin()?;
    let tick = procstat::clock_ticks().await;
    let client = ClientMeter::start(tick)?;
    progress.phase(
        &format!("{name}: start three nats-server, stream and mirror"),
        0,
    );
    let dir = tempfile::tempdir().context("making a temp dir for nats-server")?;
    let mut net = Topology::start(&bin, dir.path()).await?;
    let mut report = Report::default();
    let window = usize::try_from(args.batch).context("--batch")?;
    let mut w = Workload::new(args.devices, args.nats_batch);

    let client_a = connect(&net.a).await?;
    let js_a = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(30))
        .max_ack_inflight(window.max(5_000))
        .backpressure_on_inflight(true)
        .build(client_a);
    let mut client_b = connect(&net.b).await?;
    let mut js_b = jetstream::new(client_b.clone());
    let mut origin = js_a
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["west.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("creating the stream on site-a")?;
    let mut mirror = js_b
        .create_stream(mirror_config())
        .await
        .context("creating the mirror on site-b")?;
    // The mirror is live once site-b has heard from its consumer on site-a (a mirror's
    // consumer is internal: site-a's consumer count does not show it).
    launch::eventually("site-b's mirror to start", STALL, || {
        let mut mirror = mirror.clone();
        async move {
            let info = mirror.info().await?;
            Ok(info.mirror.as_ref().and_then(|m| m.active).map(|_| ()))
        }
    })
    .await
    .with_context(|| format!("site-b's log tail:\n{}", net.b.log_tail(20)))?;
    let db = sink::path(dir.path());
    let mut store = None;
    if args.store {
        std::fs::create_dir_all(db.parent().context("the store's dir")?)?;
        store = Some(Sink::start(&js_b, STREAM, &db).await?);
    }

    // 1. Throughput, wire bytes, disk bytes written, stored bytes.
    progress.phase(&format!("{name}: throughput"), args.points);
    progress.stage("site-a publish");
    let before = net.wire_from_a();
    let written_before = net.disk_written(args.store)?;
    let started = Instant::now();
    publish_bulk(&js_a, &mut w, args.points, window, progress).await?;
    let ingested = started.elapsed().as_secs_f64();
    progress.stage(if args.store {
        "site-b storing"
    } else {
        "site-b mirroring"
    });
    wait_replicated(&mut mirror, store.as_ref(), &w, 0, w.msgs, &net.b, progress).await?;
    let secs = started.elapsed().as_secs_f64();
    let wire = net.wire_from_a() - before;
    let written = net.disk_written(args.store)?;
    let stored_dir = |net: &Topology| -> anyhow::Result<u64> {
        let mut bytes =
            procstat::dir_size(&net.b.store_dir()).context("measuring site-b's store")?;
        if args.store {
            bytes += procstat::dir_size(db.parent().context("the store's dir")?)
                .context("measuring site-b's SQLite store")?;
        }
        Ok(bytes)
    };
    let stored_early = stored_dir(&net)?;

    // 2. Latency at a fixed rate.
    let count = args.rate * args.seconds();
    progress.phase(&format!("{name}: latency"), count);
    let site_b = SiteB {
        mirror: &mut mirror,
        store: store.as_ref(),
        server: &net.b,
    };
    let (hist, from_send) = latency(&js_a, site_b, &mut w, args.rate, count, progress).await?;

    // 3. Catch-up after an outage of site-b.
    let outage = args.outage_points();
    progress.phase(&format!("{name}: catch-up"), outage);
    let mut catch_up = None;
    if outage > 0 {
        progress.stage("backlog, site-b down");
        // The store's consumer goes down with site-b and comes back with it.
        drop((store.take(), mirror, js_b, client_b));
        net.b.kill9().await?;
        let held = w.msgs;
        publish_bulk(&js_a, &mut w, outage, window, progress).await?;
        progress.stage("site-b catching up");
        let restarted = Instant::now();
        net.b.restart().await?;
        client_b = connect(&net.b).await?;
        js_b = jetstream::new(client_b.clone());
        mirror = open_stream(&js_b, &net.b).await?;
        if args.store {
            store = Some(
                launch::eventually(
                    "the store's consumer after site-b's restart",
                    STALL,
                    || async { Ok(Sink::start(&js_b, STREAM, &db).await.ok()) },
                )
                .await?,
            );
        }
        let moved = wait_replicated(
            &mut mirror,
            store.as_ref(),
            &w,
            held,
            w.msgs,
            &net.b,
            progress,
        )
        .await?;
        catch_up = Some((
            restarted.elapsed().as_secs_f64(),
            moved.saturating_duration_since(restarted).as_secs_f64(),
        ));
    }

    // Every message acknowledged exactly once on site-a, and all of them on site-b.
    let on_a = origin.info().await?.state.clone();
    let on_b = mirror.info().await?.state.clone();
    ensure!(
        on_a.messages == w.msgs && on_a.last_sequence == w.msgs,
        "site-a holds {} messages up to sequence {}, but {} were acknowledged",
        on_a.messages,
        on_a.last_sequence,
        w.msgs
    );
    ensure!(
        on_b.messages == w.msgs && on_b.last_sequence == w.msgs,
        "site-b's mirror holds {} messages up to sequence {}, but site-a acknowledged {}",
        on_b.messages,
        on_b.last_sequence,
        w.msgs
    );
    let points_on_b = if args.store {
        drop(store.take());
        let n = sink::count(&db)?;
        ensure!(
            n == w.next,
            "site-b's SQLite store holds {n} points, but site-a acknowledged {}",
            w.next
        );
        n
    } else {
        w.next
    };
    let stored = stored_dir(&net)?;

    report.add("replicated", args.points as f64 / secs, "points/s");
    report.add(
        "  source ingest alone",
        args.points as f64 / ingested,
        "points/s",
    );
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    report.add("latency p50", ms(0.50), "ms");
    report.add("latency p99", ms(0.99), "ms");
    report.add("latency max", hist.max() as f64 / 1000.0, "ms");
    let ms = |q: f64| from_send.value_at_quantile(q) as f64 / 1000.0;
    report.add("latency p50 from send", ms(0.50), "ms");
    report.add("latency p99 from send", ms(0.99), "ms");
    if let Some((secs, first_point)) = catch_up {
        report.add("catch-up", outage as f64 / secs, "points/s");
        report.add("  catch-up time", secs, "s");
        report.add("  restart to first point", first_point, "s");
    }
    report.add(
        "wire bytes per point",
        wire as f64 / args.points as f64,
        "B",
    );
    report.add(
        "stored bytes per point",
        stored as f64 / points_on_b as f64,
        "B",
    );
    report.add(
        "  after throughput",
        stored_early as f64 / args.points as f64,
        "B",
    );
    for (site, (after, before)) in ["site-a", "site-b"]
        .into_iter()
        .zip([(written.0, written_before.0), (written.1, written_before.1)])
    {
        report.add(
            format!("disk written per point {site}"),
            after.saturating_sub(before) as f64 / args.points as f64,
            "B",
        );
    }
    let mut usage: Vec<(&str, Usage)> = Vec::new();
    for s in [&net.hub, &net.a, &net.b] {
        usage.push((s.name, s.usage(tick)?));
    }
    usage.push(("client", client.finish(tick)?));
    procstat::report(&mut report, &usage);
    report.add("points published", w.next as f64, "points");
    report.add("points on B", points_on_b as f64, "points");
    Ok(report)
}

/// Device-shaped load through NATS (see `devices.rs`): each device its own connection to
/// site-a, publishing its readings one at a time (16 bytes on `west.<device>`) and awaiting
/// each ack; replicated when site-b's mirror holds them all.
pub async fn run_devices(
    args: &super::devices::DevicesArgs,
    progress: &mut Progress,
) -> anyhow::Result<Report> {
    let bin = launch::nats::nats_server_bin()?;
    let tick = procstat::clock_ticks().await;
    let client = ClientMeter::start(tick)?;
    progress.phase(
        "nats devices: start three nats-server, stream, mirror, devices",
        0,
    );
    let dir = tempfile::tempdir().context("making a temp dir for nats-server")?;
    let net = Topology::start(&bin, dir.path()).await?;
    let js_a = jetstream::new(connect(&net.a).await?);
    let mut origin = js_a
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["west.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("creating the stream on site-a")?;
    let js_b = jetstream::new(connect(&net.b).await?);
    let mut mirror = js_b
        .create_stream(mirror_config())
        .await
        .context("creating the mirror on site-b")?;
    launch::eventually("site-b's mirror to start", STALL, || {
        let mut mirror = mirror.clone();
        async move {
            let info = mirror.info().await?;
            Ok(info.mirror.as_ref().and_then(|m| m.active).map(|_| ()))
        }
    })
    .await
    .with_context(|| format!("site-b's log tail:\n{}", net.b.log_tail(20)))?;
    // One connection per device, opened before the clock starts, as devices that are online.
    let devices: Vec<jetstream::Context> = futures::stream::iter(0..args.devices)
        .map(|_| async { anyhow::Ok(jetstream::new(connect(&net.a).await?)) })
        .buffered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;

    let total = args.devices * args.readings;
    progress.phase("nats devices: one publish a reading", total);
    progress.stage("site-a publish");
    let written_before = net.disk_written(false)?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (d, js) in (0..args.devices).zip(devices) {
        let subject = async_nats::Subject::from(format!("west.sensor-{d:05}"));
        let (readings, bar) = (args.readings, progress.counter());
        tasks.spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            for k in 0..readings {
                let mut payload = Vec::with_capacity(16);
                payload.extend_from_slice(&super::devices::reading_time(k).to_le_bytes());
                payload.extend_from_slice(&sensor_value(d, k).to_le_bytes());
                let sent = Instant::now();
                let ack = js
                    .publish(subject.clone(), Bytes::from(payload))
                    .await
                    .context("publishing on site-a")?
                    .await
                    .context("site-a's ack")?;
                ensure!(
                    !ack.duplicate,
                    "site-a took a reading of device {d} for a duplicate"
                );
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
    progress.stage("site-b mirroring");
    let w = Workload::new(1, 1);
    wait_replicated(&mut mirror, None, &w, 0, total, &net.b, progress).await?;
    let secs = started.elapsed().as_secs_f64();
    let written = net.disk_written(false)?;
    let on_a = origin.info().await?.state.messages;
    ensure!(
        on_a == total,
        "site-a holds {on_a} readings, but acknowledged {total}"
    );

    let mut report = Report::default();
    super::devices::add_rows(&mut report, total, secs, ingested, &hist);
    for (site, (after, before)) in ["site-a", "site-b"]
        .into_iter()
        .zip([(written.0, written_before.0), (written.1, written_before.1)])
    {
        report.add(
            format!("disk written per point {site}"),
            after.saturating_sub(before) as f64 / total as f64,
            "B",
        );
    }
    let mut usage: Vec<(&str, Usage)> = Vec::new();
    for s in [&net.hub, &net.a, &net.b] {
        usage.push((s.name, s.usage(tick)?));
    }
    usage.push(("client", client.finish(tick)?));
    procstat::report(&mut report, &usage);
    Ok(report)
}

fn mirror_config() -> stream::Config {
    stream::Config {
        name: STREAM.into(),
        storage: stream::StorageType::File,
        mirror: Some(stream::Source {
            name: STREAM.into(),
            external: Some(stream::External {
                api_prefix: "$JS.a.API".into(),
                delivery_prefix: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn connect(server: &Server) -> anyhow::Result<async_nats::Client> {
    let url = format!("nats://127.0.0.1:{}", server.client_port);
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(10))
        .connect(&url)
        .await
        .with_context(|| format!("connecting to {} at {url}", server.name))
}

/// The mirror on a restarted site-b, once its JetStream answers.
async fn open_stream(js: &jetstream::Context, b: &Server) -> anyhow::Result<stream::Stream> {
    launch::eventually("site-b's mirror after its restart", STALL, || async {
        Ok(js.get_stream(STREAM).await.ok())
    })
    .await
    .with_context(|| format!("site-b's log tail:\n{}", b.log_tail(20)))
}

/// Points in the order they are published: point `n` is device `n % devices` at step
/// `n / devices`. With one point a message it becomes stream sequence `n + 1` on site-a;
/// with more, each message carries the next `per_message` points.
struct Workload {
    /// One subject per device, `west.sensor-00042`.
    subjects: Vec<async_nats::Subject>,
    /// Points a message (1: a 16-byte message on the device's subject).
    per_message: u64,
    /// The next point's number, hence also the number of points published so far.
    next: u64,
    /// Messages published so far: the last one's stream sequence on site-a.
    msgs: u64,
}

impl Workload {
    fn new(devices: u64, per_message: u64) -> Self {
        let subjects = (0..devices)
            .map(|d| async_nats::Subject::from(format!("west.sensor-{d:05}")))
            .collect();
        Self {
            subjects,
            per_message: per_message.max(1),
            next: 0,
            msgs: 0,
        }
    }

    /// The next point: (device, t, value).
    fn point(&mut self) -> (usize, i64, f64) {
        let devices = self.subjects.len() as u64;
        let (d, step) = (self.next % devices, self.next / devices);
        self.next += 1;
        let t = T0 + i64::try_from(step).unwrap_or(i64::MAX / 2_000_000) * 1_000_000;
        let d_index = usize::try_from(d).expect("device index fits in usize");
        (d_index, t, sensor_value(d, step))
    }

    /// The next message of `n` points (1 unless batching): its subject and payload.
    fn take(&mut self, n: u64) -> (async_nats::Subject, Bytes) {
        self.msgs += 1;
        if self.per_message == 1 {
            let (d, t, v) = self.point();
            let mut payload = Vec::with_capacity(16);
            payload.extend_from_slice(&t.to_le_bytes());
            payload.extend_from_slice(&v.to_le_bytes());
            return (self.subjects[d].clone(), Bytes::from(payload));
        }
        let points: Vec<(usize, i64, f64)> = (0..n).map(|_| self.point()).collect();
        let points: Vec<(&str, i64, f64)> = points
            .into_iter()
            .map(|(d, t, v)| (&self.subjects[d].as_str()["west.".len()..], t, v))
            .collect();
        let payload = serde_json::to_vec(&points).expect("points serialize");
        (
            async_nats::Subject::from_static(BATCH_SUBJECT),
            Bytes::from(payload),
        )
    }

    /// Points in `msgs` whole messages, for progress.
    fn points_in(&self, msgs: u64) -> u64 {
        msgs.saturating_mul(self.per_message)
    }
}

/// Publishes `count` points in messages of up to `per_message` points with at most `window`
/// acks outstanding, and checks that each ack is the sequence that message must get.
async fn publish_bulk(
    js: &jetstream::Context,
    w: &mut Workload,
    count: u64,
    window: usize,
    progress: &Progress,
) -> anyhow::Result<()> {
    let mut acks = VecDeque::with_capacity(window);
    let mut left = count;
    while left > 0 {
        if acks.len() >= window
            && let Some((seq, n, ack)) = acks.pop_front()
        {
            check_ack(seq, ack).await?;
            progress.inc(n);
        }
        let n = w.per_message.min(left);
        let (subject, payload) = w.take(n);
        let ack = js
            .publish(subject, payload)
            .await
            .context("publishing on site-a")?;
        acks.push_back((w.msgs, n, ack));
        left -= n;
    }
    while let Some((seq, n, ack)) = acks.pop_front() {
        check_ack(seq, ack).await?;
        progress.inc(n);
    }
    Ok(())
}

async fn check_ack(seq: u64, ack: jetstream::context::PublishAckFuture) -> anyhow::Result<()> {
    let ack = ack
        .await
        .with_context(|| format!("site-a's ack of sequence {seq}"))?;
    ensure!(
        ack.sequence == seq && !ack.duplicate,
        "site-a acknowledged the message meant for sequence {seq} as sequence {} (duplicate: {})",
        ack.sequence,
        ack.duplicate
    );
    Ok(())
}

/// Waits until site-b holds exactly `target` messages — in its mirror, or committed to its
/// SQLite store when there is one — and returns when it was first seen past `from`; fails
/// when the mirror holds more than `target`, or when the count has not moved for [`STALL`].
/// Polls every 2 ms: the wait is what is measured.
async fn wait_replicated(
    mirror: &mut stream::Stream,
    store: Option<&Sink>,
    w: &Workload,
    from: u64,
    target: u64,
    b: &Server,
    progress: &Progress,
) -> anyhow::Result<Instant> {
    let mut last = (u64::MAX, Instant::now());
    let mut moved = None;
    loop {
        let held = match store {
            Some(store) => {
                store.check()?;
                store.applied()
            }
            // site-b may still be recovering its store: an error is no progress, not a
            // failure.
            None => match mirror.info().await {
                Ok(info) => info.state.messages,
                Err(e) => {
                    tracing::debug!("site-b's stream info: {e}");
                    last.0
                }
            },
        };
        ensure!(
            held == u64::MAX || held <= target,
            "site-b holds {held} messages, more than the {target} published"
        );
        if held != u64::MAX && held > from {
            moved.get_or_insert_with(Instant::now);
            progress.set(w.points_in(held - from));
        }
        if held == target {
            return Ok(moved.unwrap_or_else(Instant::now));
        }
        if held != last.0 {
            last = (held, Instant::now());
        } else if last.1.elapsed() > STALL {
            bail!(
                "site-b stalled at {held} of {target} messages for {STALL:?}; \
                 site-b's log tail:\n{}",
                b.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Where the latency phase sees points arrive: site-b's mirror, or its store if there is one.
struct SiteB<'a> {
    mirror: &'a mut stream::Stream,
    store: Option<&'a Sink>,
    server: &'a Server,
}

/// Publishes `count` points at `rate` points/s in messages of up to `--nats-batch` points
/// (no more than a second's worth), paced, and returns the distributions of (receipt by a
/// consumer on site-b's mirror, or commit in site-b's store) − (ack by site-a), and of the
/// same − (publish), µs, one sample a message.
async fn latency(
    js_a: &jetstream::Context,
    site_b: SiteB<'_>,
    w: &mut Workload,
    rate: u64,
    count: u64,
    progress: &Progress,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let SiteB {
        mirror,
        store,
        server: b,
    } = site_b;
    let per_message = w.per_message.min(rate);
    let messages = count.div_ceil(per_message);
    let first = w.msgs + 1;
    let last = first + messages - 1;
    let seen: AbortOnDropHandle<anyhow::Result<Vec<(u64, Instant)>>> = match store {
        Some(store) => {
            store.record();
            AbortOnDropHandle::new(tokio::spawn(async { Ok(Vec::new()) }))
        }
        None => {
            let consumer = mirror
                .create_consumer(consumer::push::OrderedConfig {
                    deliver_subject: format!("_INBOX.bench.{first}"),
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: first,
                    },
                    ..Default::default()
                })
                .await
                .context("creating a consumer on site-b's mirror")?;
            let mut messages = consumer.messages().await?;
            AbortOnDropHandle::new(tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(m) = messages.next().await {
                    let at = Instant::now();
                    let m = m.map_err(|e| anyhow::anyhow!("consuming site-b's mirror: {e}"))?;
                    let seq = m
                        .info()
                        .map_err(|e| anyhow::anyhow!("a mirror message without stream info: {e}"))?
                        .stream_sequence;
                    seen.push((seq, at));
                    if seq >= last {
                        break;
                    }
                }
                anyhow::Ok(seen)
            }))
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let acked = AbortOnDropHandle::new(tokio::spawn(async move {
        let mut acked = Vec::new();
        while let Some((seq, sent_at, ack)) = rx.recv().await {
            check_ack(seq, ack).await?;
            acked.push((sent_at, Instant::now()));
        }
        anyhow::Ok(acked)
    }));

    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0;
    while sent < count {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(count);
        // A message leaves once all its points are due (or the last, partial one).
        while sent < due && (due - sent >= per_message || due == count) {
            let n = per_message.min(count - sent);
            let (subject, payload) = w.take(n);
            let sent_at = Instant::now();
            let ack = js_a.publish(subject, payload).await?;
            tx.send((w.msgs, sent_at, ack))
                .map_err(|_| anyhow::anyhow!("the ack collector stopped"))?;
            sent += n;
            progress.inc(n);
        }
    }
    drop(tx);
    let acked = acked.await.context("ack collector panicked")??;
    let seen = match store {
        Some(store) => {
            let quiet = Progress::off();
            wait_replicated(mirror, Some(store), w, first - 1, last, b, &quiet).await?;
            store.recorded()
        }
        None => tokio::time::timeout(STALL, seen)
            .await
            .with_context(|| format!("site-b's mirror did not deliver up to sequence {last}"))?
            .context("mirror consumer panicked")??,
    };

    // An ordered consumer may deliver a sequence again after it resets: count the first.
    let mut received: Vec<Option<Instant>> = vec![None; acked.len()];
    for (seq, at) in seen {
        if let Some(slot) = seq
            .checked_sub(first)
            .and_then(|i| received.get_mut(usize::try_from(i).ok()?))
        {
            slot.get_or_insert(at);
        }
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram")?;
    let mut from_send = hist.clone();
    for (i, ((sent_at, ack), got)) in acked.iter().zip(&received).enumerate() {
        let got =
            got.with_context(|| format!("site-b never received sequence {}", first + i as u64))?;
        let us = |since: &Instant| {
            u64::try_from(got.saturating_duration_since(*since).as_micros()).unwrap_or(u64::MAX)
        };
        hist.record(us(ack).max(1)).context("recording latency")?;
        from_send
            .record(us(sent_at).max(1))
            .context("recording latency")?;
    }
    Ok((hist, from_send))
}

/// The hub and the two sites.
struct Topology {
    hub: Server,
    a: Server,
    b: Server,
    /// Between site-a and the hub's leafnode port: counts what site-a sends on the wire.
    meter: Meter,
    http: reqwest::Client,
}

impl Topology {
    async fn start(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        let mut hub = Server::new(bin, dir, "hub", Role::Hub);
        hub.spawn().await?;
        let leaf = hub.leaf_port.context("the hub's leafnode port")?;
        let meter = Meter::start(leaf).await?;
        let via = meter.port;
        let mut a = Server::new(
            bin,
            dir,
            "site-a",
            Role::Site {
                domain: "a",
                leaf: via,
            },
        );
        let mut b = Server::new(bin, dir, "site-b", Role::Site { domain: "b", leaf });
        a.spawn().await?;
        b.spawn().await?;
        let net = Self {
            hub,
            a,
            b,
            meter,
            http: reqwest::Client::new(),
        };
        launch::eventually("both sites' leafnode links", STALL, || async {
            Ok((net.leafz().await?["leafnodes"] == 2).then_some(()))
        })
        .await
        .with_context(|| format!("the hub's log tail:\n{}", net.hub.log_tail(20)))?;
        Ok(net)
    }

    async fn leafz(&self) -> anyhow::Result<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/leafz", self.hub.http_port);
        let resp = self.http.get(&url).send().await.context("GET /leafz")?;
        resp.json().await.context("the hub's /leafz")
    }

    /// Bytes written to disk so far by site-a and by site-b (`/proc/PID/io`), site-b's
    /// including this process's when it runs the SQLite store of site-b (`store`): nothing
    /// else in this process writes to disk.
    fn disk_written(&self, store: bool) -> anyhow::Result<(u64, u64)> {
        let a = procstat::disk_written(self.a.pid())?;
        let mut b = procstat::disk_written(self.b.pid())?;
        if store {
            b += procstat::read_written("/proc/self")?;
        }
        Ok((a, b))
    }

    /// Bytes site-a has sent to the hub's leafnode port, protocol lines included: the hub's
    /// own counters (/varz, /leafz `in_bytes`) count message payloads only, without the
    /// subjects, reply subjects and headers that make up most of a small message.
    fn wire_from_a(&self) -> u64 {
        self.meter.bytes.load(Ordering::Relaxed)
    }
}

/// A byte-counting TCP relay in front of the hub's leafnode port for site-a, the only way to
/// see the wire bytes of one leafnode connection without touching nats-server. It costs this
/// process a copy of site-a's leafnode traffic; its tasks end when it is dropped.
struct Meter {
    port: u16,
    /// Bytes relayed from site-a to the hub.
    bytes: Arc<AtomicU64>,
    _tasks: AbortOnDropHandle<()>,
}

impl Meter {
    async fn start(hub_leaf: u16) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the leafnode meter")?;
        let port = listener.local_addr()?.port();
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&bytes);
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((from_a, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                links.spawn(async move {
                    let to_hub = tokio::net::TcpStream::connect(("127.0.0.1", hub_leaf)).await?;
                    for s in [&from_a, &to_hub] {
                        s.set_nodelay(true)?;
                    }
                    let (mut a_read, mut a_write) = from_a.into_split();
                    let (mut hub_read, mut hub_write) = to_hub.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = a_read.read(&mut buf).await?;
                            if n == 0 {
                                return hub_write.shutdown().await;
                            }
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                            hub_write.write_all(&buf[..n]).await?;
                        }
                    };
                    let down = tokio::io::copy(&mut hub_read, &mut a_write);
                    tokio::try_join!(up, down)?;
                    std::io::Result::Ok(())
                });
                // Reap finished links so that reconnects do not accumulate.
                while links.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            port,
            bytes,
            _tasks: AbortOnDropHandle::new(task),
        })
    }
}

enum Role {
    /// No JetStream; accepts the sites' leafnode connections.
    Hub,
    /// JetStream in its own domain; a leafnode connection to the hub's port `leaf`.
    Site { domain: &'static str, leaf: u16 },
}

/// One `nats-server` child process, its config file and log in the temp dir.
struct Server {
    name: &'static str,
    role: Role,
    bin: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
    /// Ports as bound at the first start (`-1` in the config), reused on a restart.
    client_port: u16,
    http_port: u16,
    leaf_port: Option<u16>,
    /// Usage of earlier lives: site-b is killed and started again.
    past: Usage,
}

impl Server {
    fn new(bin: &Path, dir: &Path, name: &'static str, role: Role) -> Self {
        Self {
            name,
            role,
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            child: None,
            client_port: 0,
            http_port: 0,
            leaf_port: None,
            past: Usage::default(),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    fn store_dir(&self) -> PathBuf {
        self.dir.join(format!("{}-js", self.name))
    }

    fn config(&self) -> String {
        let port = |p: u16| {
            if p == 0 {
                "-1".to_owned()
            } else {
                p.to_string()
            }
        };
        let mut c = format!(
            "server_name: \"{}\"\nlisten: \"127.0.0.1:{}\"\nhttp: \"127.0.0.1:{}\"\n",
            self.name,
            port(self.client_port),
            port(self.http_port)
        );
        match self.role {
            Role::Hub => c.push_str("leafnodes { listen: \"127.0.0.1:-1\" }\n"),
            Role::Site { domain, leaf } => c.push_str(&format!(
                "jetstream {{ store_dir: \"{}\", domain: \"{domain}\" }}\n\
                 leafnodes {{ remotes: [ {{ url: \"nats-leaf://127.0.0.1:{leaf}\" }} ] }}\n",
                self.store_dir().display()
            )),
        }
        c
    }

    /// Writes the config, starts the process and waits until it is ready; learns its ports.
    async fn spawn(&mut self) -> anyhow::Result<()> {
        let conf = self.dir.join(format!("{}.conf", self.name));
        std::fs::write(&conf, self.config())
            .with_context(|| format!("writing {}", conf.display()))?;
        let log_path = self.log_path();
        let offset = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        // A benchmark killed outright leaves no nats-server behind.
        launch::process::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} for {}", self.bin.display(), self.name))?;
        self.child = Some(child);
        let text = self.wait_ready(offset).await?;
        let port_after = |needle: &str| -> Option<u16> {
            let rest = &text[text.find(needle)? + needle.len()..];
            let addr = rest.split_whitespace().next()?;
            addr.rsplit(':').next()?.parse().ok()
        };
        self.client_port = port_after("Listening for client connections on ")
            .context("no client port in the log")?;
        self.http_port = port_after("Starting http monitor on ").context("no http port")?;
        if matches!(self.role, Role::Hub) {
            self.leaf_port = Some(
                port_after("Listening for leafnode connections on ")
                    .context("no leafnode port in the hub's log")?,
            );
        }
        Ok(())
    }

    /// Polls the log (from `offset`, this life's start) for "Server is ready".
    async fn wait_ready(&mut self, offset: u64) -> anyhow::Result<String> {
        let start = Instant::now();
        loop {
            let all = std::fs::read(self.log_path()).unwrap_or_default();
            let text = String::from_utf8_lossy(
                all.get(usize::try_from(offset).unwrap_or(usize::MAX)..)
                    .unwrap_or_default(),
            )
            .into_owned();
            if text.contains("Server is ready") {
                return Ok(text);
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "{} exited with {status} while starting; log tail:\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
            if start.elapsed() > launch::DEADLINE {
                bail!(
                    "{} not ready after {:?}; log tail:\n{}",
                    self.name,
                    launch::DEADLINE,
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Peak RSS and CPU of this life and the earlier ones.
    fn usage(&self, tick: f64) -> anyhow::Result<Usage> {
        let now = Usage::of(self.child.as_ref().and_then(Child::id), tick)?;
        Ok(self.past.and(now))
    }

    /// SIGKILL, after recording what this life used.
    async fn kill9(&mut self) -> anyhow::Result<()> {
        self.past = self.usage(procstat::clock_ticks().await)?;
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .await
                .with_context(|| format!("killing {}", self.name))?;
        }
        Ok(())
    }

    /// Starts again with the same ports and store.
    async fn restart(&mut self) -> anyhow::Result<()> {
        ensure!(self.child.is_none(), "{} is still running", self.name);
        self.spawn().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_sixteen_bytes_round_robin_over_devices() {
        let mut w = Workload::new(3, 1);
        let subjects: Vec<String> = (0..4).map(|_| w.take(1).0.to_string()).collect();
        assert_eq!(
            subjects,
            [
                "west.sensor-00000",
                "west.sensor-00001",
                "west.sensor-00002",
                "west.sensor-00000"
            ]
        );
        let (subject, payload) = Workload::new(1, 1).take(1);
        assert_eq!(payload.len(), 16);
        assert_eq!(payload[..8], T0.to_le_bytes());
        assert_eq!(payload[8..], sensor_value(0, 0).to_le_bytes());
        let decoded = sink::decode(subject.as_str(), &payload).expect("decoding");
        assert_eq!(
            decoded,
            [("sensor-00000".to_owned(), T0, sensor_value(0, 0))]
        );
    }

    #[test]
    fn a_batch_is_the_same_points_as_a_json_array() {
        let mut one = Workload::new(3, 1);
        let singles: Vec<_> = (0..5)
            .flat_map(|_| {
                let (s, p) = one.take(1);
                sink::decode(s.as_str(), &p).expect("decoding a point")
            })
            .collect();
        let mut batched = Workload::new(3, 4);
        let (s1, p1) = batched.take(4);
        let (s2, p2) = batched.take(1);
        assert_eq!(
            (s1.as_str(), batched.msgs, batched.next),
            (BATCH_SUBJECT, 2, 5)
        );
        let mut points = sink::decode(s1.as_str(), &p1).expect("decoding a batch");
        points.extend(sink::decode(s2.as_str(), &p2).expect("decoding a batch"));
        assert_eq!(points, singles);
    }

    #[test]
    fn defaults_scale_down_for_small_runs() {
        let args = |points| NatsArgs {
            points,
            devices: 100,
            rate: 10_000,
            seconds: None,
            outage_points: None,
            batch: 1_000,
            nats_batch: 1,
            store: false,
        };
        assert_eq!(args(500_000).seconds(), 20);
        assert_eq!(args(500_000).outage_points(), 3_600_000);
        assert_eq!(args(20_000).seconds(), 1);
        assert_eq!(args(20_000).outage_points(), 200_000);
    }
}
