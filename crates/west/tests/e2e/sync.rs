//! Resource data synchronisation between real processes (docs/spec.md §6, §7): a Source streams
//! points of a remote-synced resource to its Target through a real hub while the Source,
//! the Target and the hub are killed with SIGKILL, or while the link is blackholed; then
//! the Target must hold exactly the Source's points (full datasets compared, not counts).
//! Also: points that arrive before the Target has the resource, and an outage longer than
//! the retention (a test-only clock offset jumps the Source 31 days ahead), which must lose
//! exactly the expired points and report that gap precisely.
//!
//! The protocol's corner cases (duplicates, reordering, holes, lease and pin, crashes at
//! every step) are proven by the seeded simulation in `crates/proto/tests/sync`; the store's
//! by its unit tests. These tests prove the wiring: store, driver, session, hub.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use testkit::{Api, FaultProxy, HubProc, SiteOpts, SiteProc, eventually};

use crate::util;

pub(crate) const T0: i64 = 1_700_000_000_000_000;
/// Catching up after several crashes takes longer than one ordinary wait.
pub(crate) const CATCH_UP: Duration = Duration::from_secs(90);

/// Two sites paired through the hub: site-a's connector `src` is the Source of site-b's `tgt`.
struct Paired {
    hub: HubProc,
    a: SiteProc,
    b: SiteProc,
    src: String,
    tgt: String,
    /// Keeps the proxy (if any) alive for the test's duration.
    proxy: Option<FaultProxy>,
}

impl Paired {
    async fn start(extra_a: &[&str]) -> anyhow::Result<Self> {
        let (hub, mut sites) = util::hub_and_sites(&[("site-a", extra_a), ("site-b", &[])]).await?;
        let b = sites.pop().expect("two sites");
        let a = sites.pop().expect("two sites");
        Self::pair(hub, a, b, None).await
    }

    /// Like [`start`](Self::start), with site-a reaching the hub through a fault proxy.
    async fn start_proxied() -> anyhow::Result<Self> {
        let hub = HubProc::start(util::bin()).await?;
        let proxy = FaultProxy::start(hub.addr).await?;
        let mut opts = SiteOpts::new("site-a");
        opts.extra = hub.site_args_via(
            &format!("wss://{}", proxy.addr()),
            &hub.add_site("site-a").await?,
        )?;
        let a = SiteProc::start(util::bin(), opts).await?;
        let mut opts = SiteOpts::new("site-b");
        opts.extra = hub.site_args(&hub.add_site("site-b").await?)?;
        let b = SiteProc::start(util::bin(), opts).await?;
        util::wait_hub_connected(&a).await?;
        util::wait_hub_connected(&b).await?;
        Self::pair(hub, a, b, Some(proxy)).await
    }

    async fn pair(
        hub: HubProc,
        a: SiteProc,
        b: SiteProc,
        proxy: Option<FaultProxy>,
    ) -> anyhow::Result<Self> {
        let (api_a, api_b) = (a.admin().await?, b.admin().await?);
        let (src, tgt) = testkit::pair(&api_a, &api_b, "plant").await?;
        Ok(Self {
            hub,
            a,
            b,
            src,
            tgt,
            proxy,
        })
    }

    async fn apis(&self) -> anyhow::Result<(Api, Api)> {
        Ok((self.a.admin().await?, self.b.admin().await?))
    }

    /// Creates `temperature` on the Source (Remote-Sync on) and, if asked, on the Target,
    /// and `devices` devices on the Source.
    async fn setup(&self, devices: usize, on_target: bool) -> anyhow::Result<()> {
        let (a, b) = self.apis().await?;
        a.post_ok(
            &format!("/api/v1/connectors/{}/resources", self.src),
            json!({"name": "temperature", "format": "number", "remote_sync": true}),
        )
        .await?;
        if on_target {
            create_target_resource(&b, &self.tgt).await?;
        }
        for d in 0..devices {
            a.post_ok(
                &format!("/api/v1/connectors/{}/devices", self.src),
                json!({"identity": device(d)}),
            )
            .await?;
        }
        Ok(())
    }

    /// Waits until the Target has applied everything the Source holds.
    async fn caught_up(&self, within: Duration) -> anyhow::Result<()> {
        let (a, b) = self.apis().await?;
        eventually("the Target to catch up", within, || async {
            let s = remote_sync(&a, &self.src).await?;
            let t = remote_sync(&b, &self.tgt).await?;
            let head = s["link"]["outbox_head"].as_u64().unwrap_or(0);
            let done = head > 0
                && s["link"]["acked_seq"].as_u64() == Some(head)
                && t["link"]["applied_seq"].as_u64() == Some(head);
            Ok(done.then_some(()))
        })
        .await
    }
}

pub(crate) async fn create_target_resource(b: &Api, tgt: &str) -> anyhow::Result<Value> {
    b.post_ok(
        &format!("/api/v1/connectors/{tgt}/resources"),
        json!({"name": "temperature", "format": "number"}),
    )
    .await
}

pub(crate) fn device(d: usize) -> String {
    format!("dev-{d:04}")
}

/// A sensor-like value on 0.01 steps.
pub(crate) fn value(d: usize, step: u64) -> f64 {
    ((20.0 + (d % 17) as f64 + (step % 50) as f64 * 0.37) * 100.0).round() / 100.0
}

pub(crate) async fn remote_sync(api: &Api, cid: &str) -> anyhow::Result<Value> {
    api.get_ok(&format!("/api/v1/connectors/{cid}/remote-sync"))
        .await
}

/// Writes one point per device at step `step` in one bulk request.
pub(crate) async fn ingest_step(
    api: &Api,
    cid: &str,
    devices: usize,
    step: u64,
) -> anyhow::Result<()> {
    let body: Vec<Value> = (0..devices)
        .map(|d| {
            json!({"device": device(d), "t": T0 + step as i64 * 1_000_000,
                   "values": {"temperature": value(d, step)}})
        })
        .collect();
    let answer = api
        .post_ok(
            &format!("/api/v1/connectors/{cid}/data"),
            Value::Array(body),
        )
        .await?;
    anyhow::ensure!(answer["accepted"] == devices, "{answer}");
    Ok(())
}

pub(crate) type Series = Vec<(i64, f64)>;

/// Every point of `temperature` of every device, through the data read API.
pub(crate) async fn dataset(
    api: &Api,
    cid: &str,
    devices: usize,
) -> anyhow::Result<BTreeMap<String, Series>> {
    let mut out = BTreeMap::new();
    for d in 0..devices {
        let path = format!(
            "/api/v1/connectors/{cid}/devices/{}/resources/temperature/data?limit=10000",
            device(d)
        );
        let (status, page) = api.get(&path).await?;
        let series: Series = if status == reqwest::StatusCode::NOT_FOUND {
            Vec::new()
        } else {
            anyhow::ensure!(status.is_success(), "GET {path}: {status} {page}");
            anyhow::ensure!(page.get("next").is_none(), "more than one page: {path}");
            page["points"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    (
                        p["t"].as_i64().unwrap_or(0),
                        p["v"].as_f64().unwrap_or(f64::NAN),
                    )
                })
                .collect()
        };
        out.insert(device(d), series);
    }
    Ok(out)
}

/// The Target must hold exactly the Source's points.
async fn same_datasets(p: &Paired, devices: usize) -> anyhow::Result<usize> {
    let (a, b) = p.apis().await?;
    let source = dataset(&a, &p.src, devices).await?;
    let target = dataset(&b, &p.tgt, devices).await?;
    for (dev, points) in &source {
        assert_eq!(Some(points), target.get(dev), "series of {dev} differs");
    }
    assert_eq!(source.len(), target.len());
    Ok(source.values().map(Vec::len).sum())
}

/// Streams steps from a task that retries a step until the Source acknowledges it (the
/// Source may be down); `progress` counts acknowledged steps.
pub(crate) fn streamer(
    url: String,
    password: String,
    cid: String,
    devices: usize,
    steps: u64,
    progress: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let mut api: Option<Api> = None;
        let mut step = 0;
        while step < steps {
            let client = match &api {
                Some(c) => c.clone(),
                None => match Api::login(&url, "admin", &password).await {
                    Ok(c) => {
                        api = Some(c.clone());
                        c
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            match ingest_step(&client, &cid, devices, step).await {
                Ok(()) => {
                    step += 1;
                    progress.store(step, Ordering::SeqCst);
                }
                // The Source is down (or restarting): retry the same step, which is
                // idempotent; the pause is a retry backoff, not a synchronisation.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        Ok(())
    })
}

pub(crate) async fn reached(progress: &AtomicU64, step: u64) -> anyhow::Result<()> {
    eventually(&format!("step {step} acknowledged"), CATCH_UP, || async {
        Ok((progress.load(Ordering::SeqCst) >= step).then_some(()))
    })
    .await
}

#[tokio::test]
async fn points_survive_kill9_of_source_target_and_hub() -> anyhow::Result<()> {
    const DEVICES: usize = 1_000;
    const STEPS: u64 = 24;
    let mut p = Paired::start(&[]).await?;
    p.setup(DEVICES, true).await?;
    let progress = Arc::new(AtomicU64::new(0));
    let stream = streamer(
        p.a.url.clone(),
        p.a.opts.admin_password.clone(),
        p.src.clone(),
        DEVICES,
        STEPS,
        Arc::clone(&progress),
    );

    reached(&progress, 3).await?;
    p.a.kill9().await?;
    p.a.restart().await?;
    reached(&progress, 8).await?;
    p.b.kill9().await?;
    reached(&progress, 11).await?;
    p.b.restart().await?;
    reached(&progress, 14).await?;
    p.hub.kill9().await?;
    reached(&progress, 17).await?;
    p.hub.restart().await?;
    reached(&progress, 19).await?;
    p.a.kill9().await?;
    p.b.kill9().await?;
    p.a.restart().await?;
    p.b.restart().await?;
    stream.await??;

    p.caught_up(CATCH_UP).await?;
    let n = same_datasets(&p, DEVICES).await?;
    assert_eq!(n, DEVICES * STEPS as usize);
    Ok(())
}

#[tokio::test]
async fn points_cross_a_blackholed_link_once_it_heals() -> anyhow::Result<()> {
    const DEVICES: usize = 200;
    let p = Paired::start_proxied().await?;
    p.setup(DEVICES, true).await?;
    let (a, _) = p.apis().await?;
    for step in 0..5 {
        ingest_step(&a, &p.src, DEVICES, step).await?;
    }
    p.caught_up(testkit::DEADLINE).await?;

    let proxy = p.proxy.as_ref().expect("proxied");
    proxy.blackhole(true);
    // Ingest goes on while nothing passes: the Source's writes never wait for the peer.
    for step in 5..15 {
        ingest_step(&a, &p.src, DEVICES, step).await?;
    }
    eventually("site-a to see its hub link dead", CATCH_UP, || async {
        let h = Api::new(&p.a.url).get_ok("/health").await?;
        Ok((h["hub"]["connected"] == false).then_some(()))
    })
    .await?;
    for step in 15..20 {
        ingest_step(&a, &p.src, DEVICES, step).await?;
    }
    proxy.blackhole(false);

    p.caught_up(CATCH_UP).await?;
    assert_eq!(same_datasets(&p, DEVICES).await?, DEVICES * 20);
    Ok(())
}

#[tokio::test]
async fn points_sent_before_the_target_resource_exists_arrive_once_it_is_created()
-> anyhow::Result<()> {
    const DEVICES: usize = 3;
    let p = Paired::start(&[]).await?;
    p.setup(DEVICES, false).await?;
    let (a, b) = p.apis().await?;
    for step in 0..10 {
        ingest_step(&a, &p.src, DEVICES, step).await?;
    }
    // Delivered and acknowledged, but kept aside: the Target has no such resource yet.
    p.caught_up(testkit::DEADLINE).await?;
    let (status, _) = b
        .get(&format!(
            "/api/v1/connectors/{}/devices/{}/resources/temperature/data",
            p.tgt,
            device(0)
        ))
        .await?;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
    // The devices were created on the Target as the points arrived.
    let devices = b
        .get_ok(&format!("/api/v1/connectors/{}/devices", p.tgt))
        .await?;
    assert_eq!(devices["devices"].as_array().map(Vec::len), Some(DEVICES));

    create_target_resource(&b, &p.tgt).await?;
    assert_eq!(same_datasets(&p, DEVICES).await?, DEVICES * 10);
    // Later points go straight in.
    ingest_step(&a, &p.src, DEVICES, 10).await?;
    p.caught_up(testkit::DEADLINE).await?;
    assert_eq!(same_datasets(&p, DEVICES).await?, DEVICES * 11);
    Ok(())
}

#[tokio::test]
async fn an_outage_longer_than_retention_loses_exactly_the_expired_points_as_a_gap()
-> anyhow::Result<()> {
    const DEVICES: usize = 3;
    let clock = tempfile::tempdir()?;
    let offset = clock.path().join("offset");
    std::fs::write(&offset, "0")?;
    let offset_arg = offset.display().to_string();
    let mut p = Paired::start(&["--test-clock-offset-file", &offset_arg]).await?;
    p.setup(DEVICES, true).await?;
    // The devices reach the Target first (they are never lost, see below).
    p.caught_up(CATCH_UP).await?;

    // The Target goes away before any point was sent; the Source restarts so that no send
    // lease covers what follows (a lease would rightly pin it past retention), and an hour
    // later, so that the points start a partition of their own: the devices' partition is
    // delivered and goes silently.
    p.b.kill9().await?;
    p.a.kill9().await?;
    std::fs::write(&offset, "3600")?;
    p.a.restart().await?;
    let a = p.a.admin().await?;
    for step in 0..20 {
        ingest_step(&a, &p.src, DEVICES, step).await?;
    }
    // 31 days later, with the default retention of 30 days.
    std::fs::write(&offset, (31 * 24 * 3600 + 3600).to_string())?;
    eventually("the Source to expire the outbox", CATCH_UP, || async {
        let s = remote_sync(&a, &p.src).await?;
        let link = &s["link"];
        Ok((link["backlog_points"] == 60 && link["expired_points"] == 60).then_some(()))
    })
    .await?;
    for step in 20..30 {
        ingest_step(&a, &p.src, DEVICES, step).await?;
    }

    p.b.restart().await?;
    p.caught_up(CATCH_UP).await?;
    let (_, b) = p.apis().await?;
    let gaps = remote_sync(&b, &p.tgt).await?["gaps"].clone();
    let gaps = gaps.as_array().cloned().unwrap_or_default();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let g = &gaps[0];
    assert_eq!(g["resource"], "temperature");
    assert_eq!(g["points"], 60);
    assert_eq!(g["devices"], DEVICES);
    assert_eq!(g["from"], T0);
    assert_eq!(g["until"], T0 + 19 * 1_000_000);
    assert_eq!(g["reason"], "retention");

    // The Target holds exactly the points after the loss.
    let target = dataset(&b, &p.tgt, DEVICES).await?;
    for d in 0..DEVICES {
        let expected: Series = (20..30)
            .map(|s| (T0 + s as i64 * 1_000_000, value(d, s)))
            .collect();
        assert_eq!(target[&device(d)], expected, "{}", device(d));
    }
    let metrics = b.get("/metrics").await?;
    let text = metrics.1.as_str().unwrap_or_default().to_owned();
    assert!(
        text.lines()
            .any(|l| l.starts_with("west_sync_gaps_total") && l.ends_with(" 1")),
        "{text}"
    );
    Ok(())
}
