//! Idle pairings cost nothing (#17 item 4): once many paired connectors are caught up and
//! nothing is written, neither site's sync drivers wake up or call the store, however many
//! pairings there are. Counted through each site's `/metrics`
//! (`west_sync_driver_wakeups_total`, `west_sync_store_jobs_total`), not timed.

use std::time::Duration;

use crate::util;

/// Paired connectors between the two sites.
const PAIRINGS: usize = 20;
/// How long the counters are watched once idle.
const WINDOW: Duration = Duration::from_secs(10);

/// `(driver wake-ups, store jobs)` of a site so far.
async fn counts(api: &testkit::Api) -> anyhow::Result<(f64, f64)> {
    let (_, text) = api.get("/metrics").await?;
    let text = text.as_str().unwrap_or_default().to_owned();
    let metric = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((
        metric("west_sync_driver_wakeups_total"),
        metric("west_sync_store_jobs_total"),
    ))
}

/// How many of a site's connectors have their sync session up, by its `/metrics`.
async fn links_up(api: &testkit::Api) -> anyhow::Result<usize> {
    let (_, text) = api.get("/metrics").await?;
    Ok(text
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("west_sync_link_up{") && l.ends_with(" 1"))
        .count())
}

#[tokio::test]
async fn idle_pairings_wake_no_driver_and_call_no_store() -> anyhow::Result<()> {
    let (_hub, sites) = util::hub_and_sites(&[("site-a", &[]), ("site-b", &[])]).await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    for i in 0..PAIRINGS {
        testkit::pair(&a, &b, &format!("plant{i}")).await?;
    }
    for (name, api) in [("site-a", &a), ("site-b", &b)] {
        testkit::eventually(
            &format!("every session of {name} up"),
            testkit::DEADLINE * 2,
            || async { Ok((links_up(api).await? == PAIRINGS).then_some(())) },
        )
        .await?;
    }
    // Idle: the counters stop moving (the pairings' first exchanges and the rates' decay
    // take a few seconds). A driver with a timer of its own never gets here.
    for (name, api) in [("site-a", &a), ("site-b", &b)] {
        testkit::eventually(
            &format!("{name}'s sync drivers to go idle"),
            testkit::DEADLINE * 2,
            || async {
                let before = counts(api).await?;
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok((counts(api).await?.0 == before.0).then_some(()))
            },
        )
        .await?;
    }
    let before = (counts(&a).await?, counts(&b).await?);
    tokio::time::sleep(WINDOW).await;
    let after = (counts(&a).await?, counts(&b).await?);
    for (name, (w0, j0), (w1, j1)) in [("site-a", before.0, after.0), ("site-b", before.1, after.1)]
    {
        // Before: each pairing woke its driver ~3.5 times a second and called the store
        // ~1.4 times a second (ack flush, status, retention): ~700 and ~280 here.
        assert!(
            w1 - w0 < PAIRINGS as f64,
            "{name}: {} driver wake-ups in {WINDOW:?} with {PAIRINGS} idle pairings",
            w1 - w0
        );
        // The site's one retention look every 3 s, whatever the number of pairings.
        assert!(
            j1 - j0 <= 5.0,
            "{name}: {} store jobs in {WINDOW:?} with {PAIRINGS} idle pairings",
            j1 - j0
        );
    }
    Ok(())
}
