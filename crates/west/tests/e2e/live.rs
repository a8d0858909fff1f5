//! The live stream (`GET /api/v1/connectors/{cid}/data/live`, Server-Sent Events) on the
//! Target of a real pair: every point written on the Source arrives exactly once, in order
//! per series, and a `device=` filter keeps only that device's points.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use testkit::{Api, eventually};

use crate::util;

const T0: i64 = 1_700_000_000_000_000;
const DEVICES: usize = 4;
const STEPS: i64 = 30;

type Seen = BTreeMap<String, Vec<(i64, f64)>>;

/// Collects the `points` events of a live stream into `seen` until the stream ends.
async fn collect(
    mut response: reqwest::Response,
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
) -> anyhow::Result<()> {
    let mut buffer = String::new();
    while let Some(chunk) = response.chunk().await? {
        buffer.push_str(std::str::from_utf8(&chunk)?);
        // Events end with a blank line.
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if !event.lines().any(|l| l == "event: points") {
                continue;
            }
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    let data: Value = serde_json::from_str(data)?;
                    let mut seen = seen.lock().expect("not poisoned");
                    for p in data["points"].as_array().into_iter().flatten() {
                        seen.entry(p["device"].as_str().unwrap_or("?").to_owned())
                            .or_default()
                            .push((
                                p["t"].as_i64().unwrap_or(-1),
                                p["v"].as_f64().unwrap_or(f64::NAN),
                            ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Subscribes (the answer's headers mean the subscription is in place) and collects.
async fn subscribe(
    api: &Api,
    path: &str,
) -> anyhow::Result<std::sync::Arc<std::sync::Mutex<Seen>>> {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", api.base))
        .bearer_auth(api.token.as_deref().unwrap_or_default())
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "GET {path}: {}",
        response.status()
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::new()));
    let into = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        if let Err(e) = collect(response, into).await {
            eprintln!("live stream ended: {e:#}");
        }
    });
    Ok(seen)
}

fn device(d: usize) -> String {
    format!("dev-{d}")
}

fn value(d: usize, step: i64) -> f64 {
    d as f64 * 100.0 + step as f64 / 4.0
}

#[tokio::test]
async fn the_targets_live_stream_carries_every_point_once_in_order() -> anyhow::Result<()> {
    let (_hub, sites, src, tgt) = util::paired_sites().await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    a.post_ok(
        &format!("/api/v1/connectors/{src}/resources"),
        json!({"name": "temperature", "format": "number", "remote_sync": true}),
    )
    .await?;
    b.post_ok(
        &format!("/api/v1/connectors/{tgt}/resources"),
        json!({"name": "temperature", "format": "number"}),
    )
    .await?;
    for d in 0..=DEVICES {
        a.post_ok(
            &format!("/api/v1/connectors/{src}/devices"),
            json!({"identity": device(d)}),
        )
        .await?;
    }
    let all = subscribe(&b, &format!("/api/v1/connectors/{tgt}/data/live")).await?;
    let one = subscribe(
        &b,
        &format!("/api/v1/connectors/{tgt}/data/live?device={}", device(1)),
    )
    .await?;
    // Requests of two steps of every device.
    let mut expected = Seen::new();
    for pair in 0..STEPS / 2 {
        let mut body = Vec::new();
        for d in 0..DEVICES {
            for step in [2 * pair, 2 * pair + 1] {
                body.push(json!({"device": device(d), "t": T0 + step * 1_000_000,
                                 "values": {"temperature": value(d, step)}}));
                expected
                    .entry(device(d))
                    .or_default()
                    .push((T0 + step * 1_000_000, value(d, step)));
            }
        }
        a.post_ok(
            &format!("/api/v1/connectors/{src}/data"),
            Value::Array(body),
        )
        .await?;
    }
    // A last point from another device: the stream is in commit order, so once it is
    // seen, everything before it has been too.
    a.post_ok(
        &format!("/api/v1/connectors/{src}/data"),
        json!([{"device": device(DEVICES), "t": T0, "values": {"temperature": 1.0}}]),
    )
    .await?;
    eventually(
        "the sentinel on the Target's live stream",
        Duration::from_secs(60),
        || async {
            Ok(all
                .lock()
                .expect("not poisoned")
                .contains_key(&device(DEVICES))
                .then_some(()))
        },
    )
    .await?;
    let mut got = all.lock().expect("not poisoned").clone();
    assert_eq!(got.remove(&device(DEVICES)), Some(vec![(T0, 1.0)]));
    assert_eq!(
        got, expected,
        "every point once, each series in the order written"
    );
    // The filtered stream: device 1 only (it may still be catching up with the sentinel's
    // commit, which it does not carry, so wait for its full series).
    eventually(
        "device 1's live stream",
        Duration::from_secs(30),
        || async {
            let seen = one.lock().expect("not poisoned").clone();
            Ok((seen.get(&device(1)).map(Vec::len) == Some(STEPS as usize)).then_some(seen))
        },
    )
    .await
    .map(|seen| {
        assert_eq!(seen.len(), 1, "only device 1: {:?}", seen.keys());
        assert_eq!(seen[&device(1)], expected[&device(1)]);
    })?;
    Ok(())
}
