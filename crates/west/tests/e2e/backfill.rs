//! Backfill on request (#15 part 3, docs/sync.md "Backfill"): `POST
//! …/remote-sync/backfill` on the Source re-queues what it holds of a resource's time range;
//! on the Target it asks the Source through the paired session. Both sides hold the same
//! points afterwards, none twice; every refusal says why and queues nothing.

use serde_json::{Value, json};

use crate::util;

const DEVICES: usize = 4;
/// Points per device, one a second from `t0`.
const PER_DEVICE: i64 = 300;
const SECOND: i64 = 1_000_000;

fn backfill(cid: &str) -> String {
    format!("/api/v1/connectors/{cid}/remote-sync/backfill")
}

/// `[(t, v)]` of a device's `temperature` in `[since, until)`.
async fn series(
    api: &testkit::Api,
    cid: &str,
    device: &str,
    (since, until): (i64, i64),
) -> anyhow::Result<Vec<(i64, f64)>> {
    let page = api
        .get_ok(&format!(
            "/api/v1/connectors/{cid}/devices/{device}/resources/temperature/data\
             ?since={since}&until={until}&limit=10000"
        ))
        .await?;
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

/// Waits until the connector's backfill is `done` (every queued point applied by the
/// Target); returns it.
async fn done(api: &testkit::Api, cid: &str, id: &Value) -> anyhow::Result<Value> {
    testkit::eventually("the backfill to be applied", testkit::DEADLINE, || async {
        let b = api
            .get_ok(&format!("/api/v1/connectors/{cid}/remote-sync"))
            .await?["backfill"]
            .clone();
        anyhow::ensure!(b["id"] == *id, "another backfill: {b}");
        Ok((b["state"] == "done").then_some(b))
    })
    .await
}

/// A paired Source (`site-a`, connector `cid`) whose `temperature` had Remote-Sync off
/// while `PER_DEVICE` points per device were written from `t0`, then on; the Target
/// (`site-b`, `tid`) has the resource and none of those points.
async fn late_sync() -> anyhow::Result<(
    testkit::HubProc,
    Vec<testkit::SiteProc>,
    (String, String),
    i64,
)> {
    let (hub, sites, cid, tid) = util::paired_sites().await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    for (api, c) in [(&a, &cid), (&b, &tid)] {
        api.post_ok(
            &format!("/api/v1/connectors/{c}/resources"),
            json!({"name": "temperature", "format": "number"}),
        )
        .await?;
    }
    for d in 0..DEVICES {
        a.post_ok(
            &format!("/api/v1/connectors/{cid}/devices"),
            json!({"identity": format!("dev-{d}")}),
        )
        .await?;
    }
    // Well inside the Source's retention (30 days).
    let t0 = site::clock::now_micros() - 3_600 * SECOND;
    let body: Vec<Value> = (0..DEVICES)
        .flat_map(|d| {
            (0..PER_DEVICE).map(move |i| {
                json!({"device": format!("dev-{d}"), "t": t0 + i * SECOND,
                       "values": {"temperature": (d as f64) * 1000.0 + i as f64}})
            })
        })
        .collect();
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/data"),
        Value::Array(body),
    )
    .await?;
    // Turning Remote-Sync on sends what comes next, not the history.
    let (s, e) = a
        .post(&backfill(&cid), json!({"resource": "temperature"}))
        .await?;
    assert_eq!(s, 409, "a resource without Remote-Sync: {e}");
    assert_eq!(e["error"], "conflict");
    assert!(
        e["message"].as_str().unwrap_or("").contains("Remote-Sync"),
        "{e}"
    );
    a.patch_ok(
        &format!("/api/v1/connectors/{cid}/resources/temperature"),
        json!({"remote_sync": true}),
    )
    .await?;
    for d in 0..DEVICES {
        util::wait_device(
            &b,
            &tid,
            &format!("dev-{d}"),
            "the devices on the Target",
            |d| d.is_some(),
        )
        .await?;
    }
    Ok((hub, sites, (cid, tid), t0))
}

#[tokio::test]
async fn a_range_is_backfilled_from_either_side_and_both_end_equal_without_duplicates()
-> anyhow::Result<()> {
    let (_hub, sites, (cid, tid), t0) = late_sync().await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    let all = (t0, t0 + PER_DEVICE * SECOND);
    let first_half = (t0, t0 + PER_DEVICE / 2 * SECOND);
    assert!(series(&b, &tid, "dev-0", all).await?.is_empty());
    // A newer value at a time the backfill covers, written once Remote-Sync is on: the
    // Target must end with it, not with an older copy.
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/devices/dev-0/data"),
        json!({"t": t0 + 10 * SECOND, "values": {"temperature": -1.5}}),
    )
    .await?;

    // From the Source: the first half of the range, every device.
    let started = a
        .post(
            &backfill(&cid),
            json!({"resource": "temperature", "since": first_half.0, "until": first_half.1}),
        )
        .await?;
    assert_eq!(started.0, 202, "{}", started.1);
    assert_eq!(started.1["asked_by"], "source");
    let finished = done(&a, &cid, &started.1["id"]).await?;
    let expected = (DEVICES as i64 * PER_DEVICE / 2) as u64;
    assert_eq!(finished["points_queued"], expected, "{finished}");
    assert_eq!(finished["points_applied"], expected, "{finished}");
    for d in 0..DEVICES {
        let dev = format!("dev-{d}");
        let there = series(&b, &tid, &dev, all).await?;
        assert_eq!(there, series(&a, &cid, &dev, first_half).await?, "{dev}");
        assert_eq!(there.len() as i64, PER_DEVICE / 2, "{dev}");
    }
    assert!(
        series(&b, &tid, "dev-0", all)
            .await?
            .contains(&(t0 + 10 * SECOND, -1.5))
    );

    // From the Target: two devices, everything the Source holds (no range given).
    let asked = b
        .post(
            &backfill(&tid),
            json!({"resource": "temperature", "devices": ["dev-2", "dev-1"]}),
        )
        .await?;
    assert_eq!(asked.0, 202, "{}", asked.1);
    assert_eq!(asked.1["asked_by"], "target");
    assert_eq!(asked.1["devices"], 2);
    let on_target = done(&b, &tid, &asked.1["id"]).await?;
    assert_eq!(
        on_target["points_queued"],
        2 * PER_DEVICE as u64,
        "{on_target}"
    );
    // The Source shows the same backfill.
    assert_eq!(
        a.get_ok(&format!("/api/v1/connectors/{cid}/remote-sync"))
            .await?["backfill"]["id"],
        asked.1["id"]
    );
    for dev in ["dev-1", "dev-2"] {
        let there = series(&b, &tid, dev, all).await?;
        assert_eq!(there.len() as i64, PER_DEVICE, "{dev}: every point once");
        assert_eq!(there, series(&a, &cid, dev, all).await?, "{dev}");
    }
    // Devices not named were not sent again.
    assert_eq!(
        series(&b, &tid, "dev-3", all).await?.len() as i64,
        PER_DEVICE / 2
    );

    // The same range again: nothing doubles.
    let again = a
        .post(
            &backfill(&cid),
            json!({"resource": "temperature", "since": all.0, "until": all.1}),
        )
        .await?;
    assert_eq!(again.0, 202, "{}", again.1);
    done(&a, &cid, &again.1["id"]).await?;
    for d in 0..DEVICES {
        let dev = format!("dev-{d}");
        let there = series(&b, &tid, &dev, all).await?;
        assert_eq!(there.len() as i64, PER_DEVICE, "{dev}: every point once");
        assert_eq!(there, series(&a, &cid, &dev, all).await?, "{dev}");
    }
    Ok(())
}

#[tokio::test]
async fn every_refusal_says_why_and_queues_nothing() -> anyhow::Result<()> {
    let (_hub, mut sites, (cid, tid), t0) = late_sync().await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    let head = || async {
        anyhow::Ok(
            a.get_ok(&format!("/api/v1/connectors/{cid}/remote-sync"))
                .await?["link"]["outbox_head"]
                .clone(),
        )
    };
    // The status a site shows lags its store by up to a second: first the head once it
    // holds every device's record, as the setup left it.
    let before = testkit::eventually(
        "every device's record in the head",
        testkit::DEADLINE,
        || async {
            let head = head().await?;
            Ok((head.as_u64() >= Some(DEVICES as u64)).then_some(head))
        },
    )
    .await?;
    let now = site::clock::now_micros();
    let month = 31 * 24 * 3_600 * SECOND;
    let many: Vec<String> = (0..1_001).map(|i| format!("dev-{i}")).collect();
    // (body, status, code) on both sides: the Target's refusals come from the Source
    // through the session, or from its own checks.
    let cases = [
        (json!({"resource": "nope"}), 404, "not_found"),
        (json!({"resource": "Not A Name"}), 400, "invalid_value"),
        (
            json!({"resource": "temperature", "since": t0, "until": t0}),
            400,
            "invalid_value",
        ),
        (
            json!({"resource": "temperature", "since": now - month}),
            410,
            "range_not_held",
        ),
        (
            json!({"resource": "temperature", "devices": many}),
            400,
            "invalid_value",
        ),
        (
            json!({"resource": "temperature", "devices": []}),
            400,
            "invalid_value",
        ),
        (
            json!({"resource": "temperature", "devices": ["ghost"]}),
            404,
            "not_found",
        ),
        (
            json!({"resource": "temperature", "colour": "red"}),
            400,
            "invalid_value",
        ),
        (json!({"since": t0}), 400, "invalid_value"),
    ];
    for (body, status, code) in &cases {
        for (api, c) in [(&a, &cid), (&b, &tid)] {
            let (s, e) = api.post(&backfill(c), body.clone()).await?;
            assert_eq!(
                (s.as_u16(), e["error"].as_str()),
                (*status, Some(*code)),
                "{body}: {e}"
            );
            assert!(!e["message"].as_str().unwrap_or("").is_empty(), "{e}");
        }
    }
    let (s, e) = a
        .call_raw(
            reqwest::Method::POST,
            &backfill(&cid),
            b"{not json".to_vec(),
        )
        .await?;
    assert_eq!(
        (s.as_u16(), e["error"].as_str()),
        (400, Some("invalid_json"))
    );
    // A resource without Remote-Sync, asked from the Target.
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/resources"),
        json!({"name": "mode", "format": "integer"}),
    )
    .await?;
    let (s, e) = b.post(&backfill(&tid), json!({"resource": "mode"})).await?;
    assert_eq!(
        (s.as_u16(), e["error"].as_str()),
        (409, Some("conflict")),
        "{e}"
    );
    // Nothing to cancel.
    let (s, e) = a.delete(&backfill(&cid)).await?;
    assert_eq!(
        (s.as_u16(), e["error"].as_str()),
        (409, Some("conflict")),
        "{e}"
    );
    // A connector that is not paired.
    let lone = a
        .post_ok("/api/v1/connectors", json!({"name": "lone"}))
        .await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (s, e) = a
        .post(&backfill(&lone), json!({"resource": "temperature"}))
        .await?;
    assert_eq!(
        (s.as_u16(), e["error"].as_str()),
        (409, Some("conflict")),
        "{e}"
    );
    assert_eq!(head().await?, before, "a refusal queued something");
    // The Source unreachable: the Target says so.
    sites[0].proc.terminate(testkit::DEADLINE).await?;
    let (s, e) = b
        .post(&backfill(&tid), json!({"resource": "temperature"}))
        .await?;
    assert_eq!(
        (s.as_u16(), e["error"].as_str()),
        (503, Some("peer_offline")),
        "{e}"
    );
    Ok(())
}

/// The backfill rate, as docs/benchmarks.md reports it: a Source with `WEST_BACKFILL_POINTS`
/// points (default 200,000) of one resource, written while its Remote-Sync was off, over 100
/// devices, re-queues them all and its Target applies them; prints points/s from the request
/// to `done` (every point applied by the Target). Run by name:
/// `cargo nextest run -p west --test e2e --run-ignored only backfill_rate --no-capture`.
#[tokio::test]
#[ignore = "a measurement, not a check: run by hand"]
async fn backfill_rate() -> anyhow::Result<()> {
    let points: i64 = std::env::var("WEST_BACKFILL_POINTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let devices = 100;
    let (_hub, sites, cid, tid) = util::paired_sites().await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    for (api, c) in [(&a, &cid), (&b, &tid)] {
        api.post_ok(
            &format!("/api/v1/connectors/{c}/resources"),
            json!({"name": "temperature", "format": "number"}),
        )
        .await?;
    }
    for d in 0..devices {
        a.post_ok(
            &format!("/api/v1/connectors/{cid}/devices"),
            json!({"identity": format!("dev-{d}")}),
        )
        .await?;
    }
    let t0 = site::clock::now_micros() - 24 * 3_600 * SECOND;
    for chunk in 0..(points + 999) / 1_000 {
        let body: Vec<Value> = (chunk * 1_000..((chunk + 1) * 1_000).min(points))
            .map(|n| {
                json!({"device": format!("dev-{}", n % devices), "t": t0 + (n / devices) * SECOND,
                       "values": {"temperature": (n % 997) as f64 / 10.0}})
            })
            .collect();
        a.post_ok(
            &format!("/api/v1/connectors/{cid}/data"),
            Value::Array(body),
        )
        .await?;
    }
    a.patch_ok(
        &format!("/api/v1/connectors/{cid}/resources/temperature"),
        json!({"remote_sync": true}),
    )
    .await?;
    let started = std::time::Instant::now();
    let asked = a
        .post(
            &backfill(&cid),
            json!({"resource": "temperature", "since": t0}),
        )
        .await?;
    assert_eq!(asked.0, 202, "{}", asked.1);
    let id = asked.1["id"].clone();
    let queued_at = testkit::eventually("every point queued", testkit::DEADLINE * 20, || async {
        let bf = a
            .get_ok(&format!("/api/v1/connectors/{cid}/remote-sync"))
            .await?["backfill"]
            .clone();
        Ok((bf["id"] == id && bf["state"] != "queuing").then(|| started.elapsed()))
    })
    .await?;
    testkit::eventually("every point applied", testkit::DEADLINE * 20, || async {
        let bf = a
            .get_ok(&format!("/api/v1/connectors/{cid}/remote-sync"))
            .await?["backfill"]
            .clone();
        Ok((bf["state"] == "done").then_some(()))
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let sample = series(&b, &tid, "dev-7", (t0, t0 + points * SECOND)).await?;
    assert_eq!(sample.len() as i64, points / devices);
    eprintln!(
        "backfill_rate: {points} points over {devices} devices: queued in {:.1} s, applied by the \
         Target in {secs:.1} s: {:.0} points/s",
        queued_at.as_secs_f64(),
        points as f64 / secs
    );
    Ok(())
}

/// Writes `points` newer points of the range (after the `PER_DEVICE` a device has, one a
/// second) with Remote-Sync on, behind the smallest bandwidth budget, which keeps the Target
/// from acknowledging them for minutes: an outbox backlog that pauses a backfill (it waits
/// past 262,144 unacknowledged records).
async fn held_backlog(a: &testkit::Api, cid: &str, t0: i64, points: i64) -> anyhow::Result<()> {
    const CHUNK: i64 = 6_000;
    a.patch_ok(
        &format!("/api/v1/connectors/{cid}/remote-sync"),
        json!({"max_bytes_per_s": 1_024}),
    )
    .await?;
    for start in (0..points).step_by(CHUNK as usize) {
        let body: Vec<Value> = (start..(start + CHUNK).min(points))
            .map(|n| {
                json!({"device": format!("dev-{}", n % DEVICES as i64),
                       "t": t0 + (PER_DEVICE + n) * SECOND,
                       "values": {"temperature": n as f64}})
            })
            .collect();
        a.post_ok(
            &format!("/api/v1/connectors/{cid}/data"),
            Value::Array(body),
        )
        .await?;
    }
    Ok(())
}

/// One backfill at a time per connector: while one queues (here it waits, because the
/// outbox holds more unacknowledged records than a backfill may run ahead of, 262,144),
/// another is refused with 409 `conflict` on either side, naming the running one, and the
/// running one goes on until cancelled.
#[tokio::test]
async fn a_backfill_while_another_queues_is_refused_on_either_side() -> anyhow::Result<()> {
    const BACKLOG: i64 = 270_000;
    let (_hub, sites, (cid, tid), t0) = late_sync().await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    let remote_sync = format!("/api/v1/connectors/{cid}/remote-sync");
    held_backlog(&a, &cid, t0, BACKLOG).await?;
    let (s, first) = a
        .post(&backfill(&cid), json!({"resource": "temperature"}))
        .await?;
    assert_eq!(s, 202, "{first}");
    for (api, c) in [(&a, &cid), (&b, &tid)] {
        let (s, e) = api
            .post(&backfill(c), json!({"resource": "temperature"}))
            .await?;
        assert_eq!(
            (s.as_u16(), e["error"].as_str()),
            (409, Some("conflict")),
            "{e}"
        );
        assert!(
            e["message"]
                .as_str()
                .unwrap_or("")
                .contains("a backfill of resource temperature is already running"),
            "{e}"
        );
    }
    let running = a.get_ok(&remote_sync).await?["backfill"].clone();
    assert_eq!(running["id"], first["id"], "{running}");
    assert_eq!(running["state"], "queuing", "{running}");
    let cancelled = a.delete(&backfill(&cid)).await?;
    assert_eq!(cancelled.0, 200, "{}", cancelled.1);
    assert_eq!(cancelled.1["state"], "cancelled", "{}", cancelled.1);
    Ok(())
}

/// A backfill outlives a `kill -9` of its Source: the Source queues a slice or more, pauses
/// behind an unacknowledged backlog (a small budget holds the Target's acknowledgements
/// back), is killed and restarted. The same backfill is there with what it had queued
/// (not counted from zero), goes on after its last slice once the budget is lifted, and ends
/// `done` with every point of the range queued exactly once (more would mean it started the
/// range again) and the Target equal to the Source.
#[tokio::test]
async fn a_backfill_goes_on_after_its_source_is_killed_and_restarted() -> anyhow::Result<()> {
    /// Newer points of the range, written with Remote-Sync on: the backlog that pauses the
    /// backfill after a slice or two (it waits past 262,144 unacknowledged records).
    const NEWER: i64 = 258_000;
    let (_hub, mut sites, (cid, tid), t0) = late_sync().await?;
    let a = sites[0].admin().await?;
    let remote_sync = format!("/api/v1/connectors/{cid}/remote-sync");
    held_backlog(&a, &cid, t0, NEWER).await?;
    let until = t0 + (PER_DEVICE + NEWER) * SECOND;
    let total = (DEVICES as i64 * PER_DEVICE + NEWER) as u64;
    // Asked from the Target, which keeps it too and asks its Source how it goes.
    let (s, started) = sites[1]
        .admin()
        .await?
        .post(
            &backfill(&tid),
            json!({"resource": "temperature", "since": t0, "until": until}),
        )
        .await?;
    assert_eq!(s, 202, "{started}");
    let paused = testkit::eventually("a slice queued", testkit::DEADLINE, || async {
        let bf = a.get_ok(&remote_sync).await?["backfill"].clone();
        Ok((bf["points_queued"].as_u64().unwrap_or(0) > 0).then_some(bf))
    })
    .await?;
    // The budget lets a little through, so a slice may still follow this read.
    let queued = paused["points_queued"].as_u64().unwrap_or(0);
    assert_eq!(paused["state"], "queuing", "{paused}");
    assert!(queued < total, "paused before the end: {paused}");

    sites[0].kill9().await?;
    sites[0].restart().await?;
    let a = sites[0].admin().await?;
    let kept = a.get_ok(&remote_sync).await?["backfill"].clone();
    assert_eq!(kept["id"], started["id"], "{kept}");
    assert_eq!(kept["state"], "queuing", "{kept}");
    let kept_queued = kept["points_queued"].as_u64().unwrap_or(0);
    assert!(
        (queued..total).contains(&kept_queued),
        "what it queued before the kill is counted ({queued} or more): {kept}"
    );
    // The Target, killed and restarted too, still shows the backfill it asked for.
    sites[1].kill9().await?;
    sites[1].restart().await?;
    let b = sites[1].admin().await?;
    let seen = b
        .get_ok(&format!("/api/v1/connectors/{tid}/remote-sync"))
        .await?["backfill"]
        .clone();
    assert_eq!(seen["id"], started["id"], "{seen}");
    assert_eq!(seen["asked_by"], "target", "{seen}");

    a.patch_ok(&remote_sync, json!({"max_bytes_per_s": null}))
        .await?;
    let finished = done(&a, &cid, &started["id"]).await?;
    assert_eq!(finished["points_queued"], total, "{finished}");
    assert_eq!(finished["points_applied"], total, "{finished}");
    // Each device's range in one bucket: count, extremes, first and last point.
    let summary = |api: testkit::Api, c: String, dev: String| async move {
        let page = api
            .get_ok(&format!(
                "/api/v1/connectors/{c}/devices/{dev}/resources/temperature/data\
                 ?since={t0}&until={until}&buckets=1"
            ))
            .await?;
        anyhow::Ok(page["buckets"][0].clone())
    };
    for d in 0..DEVICES {
        let dev = format!("dev-{d}");
        let there = summary(b.clone(), tid.clone(), dev.clone()).await?;
        assert_eq!(
            there["n"],
            total / DEVICES as u64,
            "{dev}: every point once: {there}"
        );
        let here = summary(a.clone(), cid.clone(), dev.clone()).await?;
        assert_eq!(there, here, "{dev}");
    }
    Ok(())
}
