//! Retention of stored points (`--keep-points`) on a real site: history older than the
//! setting is dropped once folded, whole hours at a time, while newer points and the
//! device's latest value stay. The site's clock is moved forward through its test-only
//! offset file, an hour per look, so that each look starts another retention pass.

use serde_json::{Value, json};
use testkit::{DEADLINE, SiteOpts, SiteProc, eventually};

use crate::util;

/// More old points than the tail holds before it folds (65,536), so that they are folded.
const OLD: i64 = 70_000;
const DAY_US: i64 = 86_400_000_000;

#[tokio::test]
async fn points_older_than_keep_points_are_dropped_and_newer_ones_stay() -> anyhow::Result<()> {
    let clock = tempfile::tempdir()?;
    let offset = clock.path().join("offset");
    std::fs::write(&offset, "0")?;
    let mut opts = SiteOpts::new("site-a");
    opts.extra = vec![
        "--keep-points".into(),
        "30d".into(),
        "--test-clock-offset-file".into(),
        offset.display().to_string(),
    ];
    let site = SiteProc::start(util::bin(), opts).await?;
    let api = site.admin().await?;
    let cid = util::thermometers(&api, &["d1".into()]).await?;
    let data = format!("/api/v1/connectors/{cid}/data");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as i64;
    // 40 days old, one a second, then ten of the last ten minutes.
    let old_from = now - 40 * DAY_US;
    for chunk in 0..OLD / 5_000 {
        let body: Vec<Value> = (0..5_000)
            .map(|i| {
                let t = old_from + (chunk * 5_000 + i) * 1_000_000;
                json!({"device": "d1", "t": t, "values": {"temperature": 1.0}})
            })
            .collect();
        api.post_ok(&data, Value::Array(body)).await?;
    }
    let recent: Vec<Value> = (0..10)
        .map(|i| json!({"device": "d1", "t": now - 600_000_000 + i * 60_000_000, "values": {"temperature": 20.0 + i as f64}}))
        .collect();
    api.post_ok(&data, Value::Array(recent)).await?;

    let series = format!("/api/v1/connectors/{cid}/devices/d1/resources/temperature/data");
    let count = |since: i64, until: i64| {
        let (api, series) = (&api, &series);
        async move {
            let page = api
                .get_ok(&format!("{series}?since={since}&until={until}&limit=10000"))
                .await?;
            anyhow::Ok(page["points"].as_array().map_or(0, Vec::len))
        }
    };
    assert_eq!(count(old_from, old_from + 10_000_000_000).await?, 10_000);

    let mut hours = 0;
    eventually("the old points to be dropped", DEADLINE, || {
        hours += 1;
        let moved = std::fs::write(&offset, (hours * 3600).to_string());
        let count = &count;
        async move {
            moved?;
            Ok((count(old_from, now - 30 * DAY_US).await? == 0).then_some(()))
        }
    })
    .await?;
    // The newer points and the latest value stay.
    assert_eq!(count(now - DAY_US, now + DAY_US).await?, 10);
    let device = api
        .get_ok(&format!("/api/v1/connectors/{cid}/devices/d1"))
        .await?;
    assert_eq!(
        device["values"]["temperature"]["v"],
        json!(29.0),
        "{device}"
    );
    util::wait_logged(&site.proc, "dropped stored points older than --keep-points").await?;
    Ok(())
}
