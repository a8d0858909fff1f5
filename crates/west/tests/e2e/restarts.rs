//! The encrypted session comes back by itself after any process of a pairing restarts
//! (issue 19, issue 17 item 1): the hub killed with SIGKILL again and again while the
//! Source ingests in bulk, and the Source and the Target each killed and restarted. After
//! every restart sync must resume (the Target reaches what the Source had acknowledged),
//! and in the end the Target holds every point exactly once.
//!
//! `restart_delays` (ignored: it measures, run it by hand) prints the time from a restarted
//! process being back to a new point being readable on the Target, p50 and p99 over 20
//! restarts of each process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{Api, HubProc, SiteProc, eventually};

use crate::util;

const T0: i64 = 1_700_000_000_000_000;
/// Sync must resume within this after each restart (a deadline, not a measurement).
const RESUME: Duration = Duration::from_secs(30);

struct Pairing {
    hub: HubProc,
    a: SiteProc,
    b: SiteProc,
    src: String,
    tgt: String,
}

impl Pairing {
    /// A Source (site-a) and its Target (site-b) with a `temperature` resource on both and
    /// `devices` devices, both sessions up.
    async fn start(devices: usize) -> anyhow::Result<Self> {
        let (hub, mut sites, src, tgt) = util::paired_sites().await?;
        let b = sites.pop().expect("two sites");
        let a = sites.pop().expect("two sites");
        let p = Self {
            hub,
            a,
            b,
            src,
            tgt,
        };
        let (api_a, api_b) = p.apis().await?;
        api_a
            .post_ok(
                &format!("/api/v1/connectors/{}/resources", p.src),
                json!({"name": "temperature", "format": "number", "remote_sync": true}),
            )
            .await?;
        api_b
            .post_ok(
                &format!("/api/v1/connectors/{}/resources", p.tgt),
                json!({"name": "temperature", "format": "number"}),
            )
            .await?;
        for d in 0..devices {
            api_a
                .post_ok(
                    &format!("/api/v1/connectors/{}/devices", p.src),
                    json!({"identity": device(d)}),
                )
                .await?;
        }
        Ok(p)
    }

    async fn apis(&self) -> anyhow::Result<(Api, Api)> {
        Ok((self.a.admin().await?, self.b.admin().await?))
    }

    /// The Source's `remote-sync` link status.
    async fn source_link(&self) -> anyhow::Result<Value> {
        let a = self.a.admin().await?;
        Ok(
            a.get_ok(&format!("/api/v1/connectors/{}/remote-sync", self.src))
                .await?["link"]
                .clone(),
        )
    }

    /// Waits until the Target has applied at least `seq`.
    async fn target_reaches(&self, seq: u64, what: &str, within: Duration) -> anyhow::Result<()> {
        let b = self.b.admin().await?;
        let path = format!("/api/v1/connectors/{}/remote-sync", self.tgt);
        eventually(what, within, || async {
            let t = b.get_ok(&path).await?;
            Ok((t["link"]["applied_seq"].as_u64().unwrap_or(0) >= seq).then_some(()))
        })
        .await
    }

    /// Waits until everything the Source holds is acknowledged and applied.
    async fn caught_up(&self) -> anyhow::Result<u64> {
        let (a, b) = self.apis().await?;
        eventually("the Target to catch up", RESUME * 2, || async {
            let s = a
                .get_ok(&format!("/api/v1/connectors/{}/remote-sync", self.src))
                .await?;
            let t = b
                .get_ok(&format!("/api/v1/connectors/{}/remote-sync", self.tgt))
                .await?;
            let head = s["link"]["outbox_head"].as_u64().unwrap_or(0);
            let done = head > 0
                && s["link"]["acked_seq"].as_u64() == Some(head)
                && t["link"]["applied_seq"].as_u64() == Some(head);
            Ok(done.then_some(head))
        })
        .await
    }
}

fn device(d: usize) -> String {
    format!("dev-{d:03}")
}

/// One point per device at `step`, in one bulk request.
async fn ingest_step(api: &Api, cid: &str, devices: usize, step: u64) -> anyhow::Result<()> {
    let body: Vec<Value> = (0..devices)
        .map(|d| {
            json!({"device": device(d), "t": T0 + step as i64 * 1_000_000,
                   "values": {"temperature": (step % 1000) as f64 + d as f64 / 1000.0}})
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

/// Ingests steps back to back until `stop` (or `max_steps`); `done` counts the steps the
/// Source acknowledged.
fn bulk_ingest(
    api: Api,
    cid: String,
    devices: usize,
    max_steps: u64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut step = 0;
        while step < max_steps && !stop.load(Ordering::SeqCst) {
            if ingest_step(&api, &cid, devices, step).await.is_ok() {
                step += 1;
                done.store(step, Ordering::SeqCst);
            }
        }
    })
}

/// The points of one device on a connector.
async fn points(api: &Api, cid: &str, dev: &str) -> anyhow::Result<Vec<(i64, f64)>> {
    let page = api
        .get_ok(&format!(
            "/api/v1/connectors/{cid}/devices/{dev}/resources/temperature/data?limit=10000"
        ))
        .await?;
    anyhow::ensure!(page.get("next").is_none(), "more than one page for {dev}");
    Ok(page["points"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["t"].as_i64().unwrap_or(0),
                p["v"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect())
}

#[tokio::test]
async fn sync_resumes_after_every_hub_kill9_under_load() -> anyhow::Result<()> {
    const DEVICES: usize = 50;
    const KILLS: usize = 20;
    let mut p = Pairing::start(DEVICES).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    // At most 9,000 points a device, so that each series reads back in one page.
    const STEPS: u64 = 9_000;
    let ingest = bulk_ingest(
        p.a.admin().await?,
        p.src.clone(),
        DEVICES,
        STEPS,
        Arc::clone(&stop),
        Arc::clone(&done),
    );
    for kill in 1..=KILLS {
        // Let data flow for a moment: some acknowledged, some in flight.
        // Once all STEPS are in, the remaining kills find the ingest over: a fast Source
        // can finish before the 20 kills do (the cause of "no ingest for 30 s" in two
        // earlier runs, which waited here for steps that would never come).
        let before = done.load(Ordering::SeqCst);
        eventually(
            &format!("ingest to go on before kill {kill} ({before} of {STEPS} steps)"),
            RESUME,
            || async {
                let now = done.load(Ordering::SeqCst);
                Ok((now >= before + 5 || now >= STEPS).then_some(()))
            },
        )
        .await?;
        p.hub.kill9().await?;
        // A short outage, varied so that reconnections land at different moments.
        tokio::time::sleep(Duration::from_millis(100 + 75 * (kill as u64 % 5))).await;
        p.hub.restart().await?;
        // Everything the Source held once the hub was back must reach the Target.
        let head = p.source_link().await?["outbox_head"].as_u64().unwrap_or(0);
        let resumed = p
            .target_reaches(
                head,
                &format!("sync to resume after hub restart {kill} (Source head {head})"),
                RESUME,
            )
            .await;
        if resumed.is_err() {
            eprintln!("Source log:\n{}", p.a.proc.log_tail(40));
            eprintln!("Target log:\n{}", p.b.proc.log_tail(40));
        }
        resumed?;
    }
    stop.store(true, Ordering::SeqCst);
    ingest.await?;
    // Nothing to report: the session is back on both sides.
    let link = p.source_link().await?;
    assert_eq!(link["session_stalled"], false, "{link}");
    let steps = done.load(Ordering::SeqCst);
    p.caught_up().await?;
    // Exactly once: every device's series is the same on both sides, one point per step.
    let (a, b) = p.apis().await?;
    for d in 0..DEVICES {
        let source = points(&a, &p.src, &device(d)).await?;
        let target = points(&b, &p.tgt, &device(d)).await?;
        assert_eq!(source.len() as u64, steps, "{} on the Source", device(d));
        assert_eq!(source, target, "series of {}", device(d));
    }
    Ok(())
}

/// Which process a restart test kills.
#[derive(Debug, Clone, Copy)]
enum Victim {
    Hub,
    Source,
    Target,
}

/// Kills `victim` with SIGKILL, restarts it, then ingests one new point on the Source and
/// waits until the Target has it; returns the time from the process being back to the point
/// being readable on the Target.
async fn restart_and_deliver(
    p: &mut Pairing,
    victim: Victim,
    step: u64,
) -> anyhow::Result<Duration> {
    match victim {
        Victim::Hub => p.hub.kill9().await?,
        Victim::Source => p.a.kill9().await?,
        Victim::Target => p.b.kill9().await?,
    }
    match victim {
        Victim::Hub => p.hub.restart().await?,
        Victim::Source => p.a.restart().await?,
        Victim::Target => p.b.restart().await?,
    }
    let back = Instant::now();
    let (a, b) = p.apis().await?;
    // The Source may still be opening its store: retry the ingest until it is taken.
    eventually("the Source to take the point", RESUME, || async {
        Ok(ingest_step(&a, &p.src, 1, step).await.ok())
    })
    .await?;
    let path = format!(
        "/api/v1/connectors/{}/devices/{}/resources/temperature/data?limit=1&order=desc",
        p.tgt,
        device(0)
    );
    let want = T0 + step as i64 * 1_000_000;
    eventually(
        &format!("the point after the {victim:?} restart to reach the Target"),
        RESUME,
        || async {
            let (status, page) = b.get(&path).await?;
            let has = status.is_success()
                && page["points"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|pt| pt["t"].as_i64() == Some(want));
            Ok(has.then_some(()))
        },
    )
    .await?;
    Ok(back.elapsed())
}

#[tokio::test]
async fn a_new_point_reaches_the_target_after_a_restart_of_each_process() -> anyhow::Result<()> {
    let mut p = Pairing::start(1).await?;
    let mut step = 0;
    for victim in [Victim::Source, Victim::Target, Victim::Hub, Victim::Source] {
        step += 1;
        restart_and_deliver(&mut p, victim, step).await?;
    }
    Ok(())
}

/// Measures (run by hand): `cargo nextest run -p west --test e2e --run-ignored only
/// -E 'test(restart_delays)' --no-capture`.
#[tokio::test]
#[ignore = "a measurement, not a check: run by hand"]
async fn restart_delays() -> anyhow::Result<()> {
    const RUNS: usize = 20;
    let mut p = Pairing::start(1).await?;
    let mut step = 0;
    for victim in [Victim::Hub, Victim::Source, Victim::Target] {
        let mut delays = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            step += 1;
            delays.push(restart_and_deliver(&mut p, victim, step).await?);
        }
        delays.sort();
        let pick = |q: f64| delays[((delays.len() - 1) as f64 * q).round() as usize];
        println!(
            "restart of the {victim:?}: new point on the Target after p50 {:?}, p99 {:?}, max {:?} ({RUNS} runs)",
            pick(0.5),
            pick(0.99),
            delays[delays.len() - 1]
        );
    }
    Ok(())
}
