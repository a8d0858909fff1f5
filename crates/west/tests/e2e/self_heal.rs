//! Sync heals by itself after the hub link passed heartbeats but lost everything the sites
//! said to each other (issue 17 item 5): a `LinkProxy` between the Source and the hub drops
//! every routed frame for a while — the hub link stays up, the encrypted session starves —
//! while the Source keeps acknowledging ingest. The Target must report the stall
//! (`session_stalled` in its Remote-Sync status, `west_sync_session_stalled` on /metrics),
//! and once frames pass again sync must resume on its own and the Target hold every point
//! exactly once.
//!
//! The end-to-end encryption makes sync batches, acknowledgements, session handshakes and
//! end-to-end pings indistinguishable on the wire, so the proxy drops by frame kind (all
//! `Route` frames), not by what is inside; `Ping`/`Pong` heartbeats pass.
//!
//! Nothing here asserts how fast something happens; waits poll with a deadline. The stall
//! is reported after 30 s without a session (`peers::peer::STALL_AFTER`), so this test
//! takes about a minute.

use std::time::Duration;

use serde_json::json;
use testkit::{LinkProxy, SiteOpts, SiteProc, eventually};

use crate::sync::{self, T0};
use crate::util;

const DEVICES: usize = 5;
/// The stall must be reported within this (30 s without a session, plus the keepalive's
/// misses and the status refresh), and sync must heal within it.
const WITHIN: Duration = Duration::from_secs(90);

#[tokio::test]
async fn sync_heals_by_itself_after_a_link_that_passed_only_heartbeats() -> anyhow::Result<()> {
    let hub = testkit::HubProc::start(util::bin()).await?;
    let proxy = LinkProxy::start(&hub).await?;
    let credential_a = hub.add_site("site-a").await?;
    let credential_b = hub.add_site("site-b").await?;
    let mut opts = SiteOpts::new("site-a");
    opts.extra = hub.site_args_via(&proxy.url(), &credential_a)?;
    let site_a = SiteProc::start(util::bin(), opts).await?;
    let site_b = util::join(&hub, "site-b", &credential_b).await?;
    util::wait_hub_connected(&site_a).await?;
    let (a, b) = (site_a.admin().await?, site_b.admin().await?);
    let (src, tgt) = testkit::pair(&a, &b, "plant").await?;
    util::session_up(&b, &tgt).await?;
    a.post_ok(
        &format!("/api/v1/connectors/{src}/resources"),
        json!({"name": "temperature", "format": "number", "remote_sync": true}),
    )
    .await?;
    sync::create_target_resource(&b, &tgt).await?;
    for d in 0..DEVICES {
        a.post_ok(
            &format!("/api/v1/connectors/{src}/devices"),
            json!({"identity": sync::device(d)}),
        )
        .await?;
    }

    // Sync flows; then only heartbeats pass while the Source goes on acknowledging.
    for step in 0..10 {
        sync::ingest_step(&a, &src, DEVICES, step).await?;
    }
    proxy.drop_routed(true);
    for step in 10..20 {
        sync::ingest_step(&a, &src, DEVICES, step).await?;
    }
    let link = eventually(
        "the Target to report the stalled session",
        WITHIN,
        || async {
            let link = sync::remote_sync(&b, &tgt).await?["link"].clone();
            Ok((link["session_stalled"] == true).then_some(link))
        },
    )
    .await?;
    assert_eq!(link["connected"], false, "{link}");
    let (status, metrics) = b.get("/metrics").await?;
    assert_eq!(status.as_u16(), 200);
    let stalled = format!("west_sync_session_stalled{{connector=\"{tgt}\"}} 1");
    assert!(
        metrics.as_str().unwrap_or_default().contains(&stalled),
        "no {stalled} in the Target's metrics"
    );
    // The hub link itself stayed up all along: only routed frames were lost.
    let health = a.get_ok("/health").await?;
    assert_eq!(health["hub"]["connected"], true, "{health}");
    assert!(proxy.dropped() > 0, "the proxy dropped nothing");

    // Frames pass again: the session and sync come back by themselves.
    proxy.drop_routed(false);
    for step in 20..30 {
        sync::ingest_step(&a, &src, DEVICES, step).await?;
    }
    eventually(
        "sync to heal and the Target to catch up",
        WITHIN,
        || async {
            let s = sync::remote_sync(&a, &src).await?["link"].clone();
            let t = sync::remote_sync(&b, &tgt).await?["link"].clone();
            let head = s["outbox_head"].as_u64().unwrap_or(0);
            let done = head > 0
                && s["acked_seq"].as_u64() == Some(head)
                && t["applied_seq"].as_u64() == Some(head);
            Ok(done.then_some(()))
        },
    )
    .await?;
    let link = sync::remote_sync(&b, &tgt).await?["link"].clone();
    assert_eq!(link["session_stalled"], false, "{link}");

    // Exactly once: every device holds steps 0..30, each once, as the Source does.
    let source = sync::dataset(&a, &src, DEVICES).await?;
    let target = sync::dataset(&b, &tgt, DEVICES).await?;
    for d in 0..DEVICES {
        let times: Vec<i64> = target[&sync::device(d)].iter().map(|(t, _)| *t).collect();
        let expected: Vec<i64> = (0..30).map(|step| T0 + step * 1_000_000).collect();
        assert_eq!(times, expected, "{} on the Target", sync::device(d));
    }
    assert_eq!(source, target, "the Target holds what the Source does");
    Ok(())
}
