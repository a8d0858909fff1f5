//! The bandwidth budget of a Source connector (#15 part 2, docs/sync.md "Bandwidth
//! budget"): `PATCH …/remote-sync {"max_bytes_per_s": N}` caps what its sync sends to the
//! hub, as the hub counts it (`west_hub_bytes_received_total` of the Source's site), within
//! ±10 % over 30 s; it survives a restart; `null` lifts it and the backlog drains.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util;

const BUDGET: u64 = 8_000;
const WINDOW: Duration = Duration::from_secs(30);
const DEVICES: usize = 10;
/// Points of barely compressible values: several times what the budget lets through in the
/// window, so that the budget, not the backlog, decides.
const POINTS: usize = 60_000;

fn remote_sync(cid: &str) -> String {
    format!("/api/v1/connectors/{cid}/remote-sync")
}

#[tokio::test]
async fn a_budget_caps_the_bytes_the_source_sends_to_the_hub() -> anyhow::Result<()> {
    let (hub, mut sites) = util::hub_and_sites(&[("site-a", &[]), ("site-b", &[])]).await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    let (src, tgt) = testkit::pair(&a, &b, "plant").await?;
    util::session_up(&a, &src).await?;

    // Refusals change nothing and say why.
    let (s, e) = b
        .patch(&remote_sync(&tgt), json!({"max_bytes_per_s": BUDGET}))
        .await?;
    assert_eq!(s, 409, "a Target has no budget: {e}");
    let (s, e) = a
        .patch(&remote_sync(&src), json!({"max_bytes_per_s": 100}))
        .await?;
    assert_eq!(s, 400, "{e}");
    assert!(e.to_string().contains("at least 1024"), "{e}");
    let (s, e) = a
        .patch(&remote_sync(&src), json!({"max_bytes_per_s": -5}))
        .await?;
    assert_eq!(s, 400, "{e}");
    assert_eq!(
        a.get_ok(&remote_sync(&src)).await?["max_bytes_per_s"],
        Value::Null
    );

    let set = a
        .patch_ok(&remote_sync(&src), json!({"max_bytes_per_s": BUDGET}))
        .await?;
    assert_eq!(set["max_bytes_per_s"], BUDGET);

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
    for d in 0..DEVICES {
        a.post_ok(
            &format!("/api/v1/connectors/{src}/devices"),
            json!({"identity": format!("dev-{d}")}),
        )
        .await?;
    }
    let mut x: u64 = 7;
    for chunk in 0..POINTS / 1_000 {
        let body: Vec<Value> = (0..1_000)
            .map(|i| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let n = chunk * 1_000 + i;
                json!({"device": format!("dev-{}", n % DEVICES),
                       "t": 1_700_000_000_000_000i64 + (n / DEVICES) as i64 * 1_000_000,
                       "values": {"temperature": (x >> 11) as f64 / (1u64 << 53) as f64 * 1e3}})
            })
            .collect();
        a.post_ok(
            &format!("/api/v1/connectors/{src}/data"),
            Value::Array(body),
        )
        .await?;
    }

    let counted = || hub.counter("west_hub_bytes_received_total", "site-a");
    let (c0, t0) = (counted().await?, Instant::now());
    tokio::time::sleep(WINDOW).await;
    let (c1, secs) = (counted().await?, t0.elapsed().as_secs_f64());
    let rate = (c1 - c0) as f64 / secs;
    let backlog = a.get_ok(&remote_sync(&src)).await?["link"]["backlog_points"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        backlog > 0,
        "the backlog ran out: the window measured less than the budget"
    );
    let budget = BUDGET as f64;
    eprintln!(
        "{rate:.0} bytes/s reached the hub over {secs:.1} s (budget {BUDGET}); backlog {backlog}"
    );
    assert!(
        (rate - budget).abs() <= budget * 0.1,
        "{rate:.0} bytes/s reached the hub over {secs:.1} s with a budget of {BUDGET}"
    );

    // Kept across a restart.
    sites[0].kill9().await?;
    sites[0].restart().await?;
    let a = sites[0].admin().await?;
    assert_eq!(
        a.get_ok(&remote_sync(&src)).await?["max_bytes_per_s"],
        BUDGET
    );

    // Lifted: everything arrives.
    let lifted = a
        .patch_ok(&remote_sync(&src), json!({"max_bytes_per_s": null}))
        .await?;
    assert_eq!(lifted["max_bytes_per_s"], Value::Null);
    testkit::eventually("the backlog to drain", testkit::DEADLINE * 3, || async {
        let s = a.get_ok(&remote_sync(&src)).await?;
        let t = b.get_ok(&remote_sync(&tgt)).await?;
        let head = s["link"]["outbox_head"].as_u64().unwrap_or(0);
        Ok((head > 0 && t["link"]["applied_seq"].as_u64() == Some(head)).then_some(()))
    })
    .await?;
    Ok(())
}
