//! The hub's findings of the security review (issue 13), each reproduced as the probe that
//! found it and now seen refused: a sender named like a service reaching any connector, a
//! hello telling unknown site names from wrong credentials, a flood of Claims, and clients
//! that trickle headers or hold connections open. docs/security.md lists them.
//!
//! Nothing here asserts how fast something happens; waits poll with a deadline.

use proto::wire::{Address, Claims, Frame, Kind, Pairing, UndeliveredReason};
use testkit::{DEADLINE, HubProc, RawClient, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{frames, util};

async fn wait_connected(hub: &HubProc, site: &str) -> anyhow::Result<()> {
    eventually(&format!("the hub to see {site}"), DEADLINE, || async {
        Ok(hub.site_connected(site).await?.then_some(()))
    })
    .await
}

/// Two raw clients, authenticated as site-a and site-b.
async fn two_raw(hub: &HubProc) -> anyhow::Result<(RawClient, RawClient)> {
    let cred_a = hub.add_site("site-a").await?;
    let cred_b = hub.add_site("site-b").await?;
    let (a, _) = RawClient::hello(hub, "site-a", &cred_a).await?;
    let (b, _) = RawClient::hello(hub, "site-b", &cred_b).await?;
    wait_connected(hub, "site-a").await?;
    wait_connected(hub, "site-b").await?;
    Ok((a, b))
}

#[tokio::test]
async fn a_service_named_sender_reaches_a_connector_only_as_the_answer_it_was_asked_for()
-> anyhow::Result<()> {
    let hub = HubProc::start(util::bin()).await?;
    let (mut a, mut b) = two_raw(&hub).await?;

    // The probe: site-b names its sender `_x` and writes to site-a's connector, unpaired.
    b.send(&frames::routed("site-b/_x", "site-a/c1", Kind::Message, 1))
        .await?;
    frames::expect_undelivered(&mut b, 1, UndeliveredReason::NotPaired).await?;
    b.send(&frames::routed("site-b/_x", "site-a/c1", Kind::Response, 2))
        .await?;
    frames::expect_undelivered(&mut b, 2, UndeliveredReason::NotPaired).await?;
    // Even between paired connectors' sites, a service sender opens nothing.
    a.claim(&[("c1", Address::new("site-b", "c2"))]).await?;
    b.claim(&[("c2", Address::new("site-a", "c1"))]).await?;
    b.send(&frames::routed("site-b/_x", "site-a/c1", Kind::Request, 3))
        .await?;
    frames::expect_undelivered(&mut b, 3, UndeliveredReason::NotPaired).await?;

    // A connector's request to a service: the service answers it, once.
    a.send(&frames::routed(
        "site-a/c1",
        "site-b/_svc",
        Kind::Request,
        4,
    ))
    .await?;
    frames::expect_only(&mut b, 4).await?;
    b.send(&frames::routed(
        "site-b/_svc",
        "site-a/c1",
        Kind::Response,
        4,
    ))
    .await?;
    let answer = frames::expect_only(&mut a, 4).await?;
    assert_eq!(answer.kind, Kind::Response);
    b.send(&frames::routed(
        "site-b/_svc",
        "site-a/c1",
        Kind::Response,
        4,
    ))
    .await?;
    frames::expect_undelivered(&mut b, 4, UndeliveredReason::NotPaired).await?;
    // Another service of the same site cannot answer in its place.
    a.send(&frames::routed(
        "site-a/c1",
        "site-b/_svc",
        Kind::Request,
        5,
    ))
    .await?;
    frames::expect_only(&mut b, 5).await?;
    b.send(&frames::routed(
        "site-b/_other",
        "site-a/c1",
        Kind::Failure,
        5,
    ))
    .await?;
    frames::expect_undelivered(&mut b, 5, UndeliveredReason::NotPaired).await?;

    // Nothing of the refused frames reached site-a: the next thing it gets is this marker.
    b.send(&frames::routed("site-b/c2", "site-a/c1", Kind::Message, 99))
        .await?;
    frames::expect_only(&mut a, 99).await?;
    Ok(())
}

#[tokio::test]
async fn an_unknown_site_a_removed_one_and_a_wrong_credential_get_the_same_answer()
-> anyhow::Result<()> {
    let hub = HubProc::start(util::bin()).await?;
    hub.add_site("site-a").await?;
    hub.add_site("site-r").await?;
    hub.remove_site("site-r").await?;

    let mut answers = Vec::new();
    for site in ["site-a", "site-x", "site-r"] {
        let (_, answer) = RawClient::hello(&hub, site, "guess").await?;
        let Frame::Refused(r) = answer else {
            anyhow::bail!("{site}: expected a refusal, got {answer:?}");
        };
        // The name is the client's own; everything else must be identical.
        answers.push((r.code, r.message.replace(site, "NAME")));
    }
    assert_eq!(answers[0].0, "wrong_credential");
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "the answers tell the cases apart: {answers:?}"
    );
    // The hub's operator still sees which it was.
    eventually("the hub to log the three refusals", DEADLINE, || async {
        Ok((hub.log_contains("site site-x is not registered")
            && hub.log_contains("the credential is not the current one of site site-a")
            && hub.log_contains("site site-r was removed"))
        .then_some(()))
    })
    .await?;
    let metrics = hub.metrics().await?;
    assert!(
        metrics.contains("west_hub_refused_total{code=\"unknown_site\"} 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_flood_of_claims_is_slowed_and_the_last_claims_still_hold() -> anyhow::Result<()> {
    let hub = HubProc::start(util::bin()).await?;
    let (mut a, mut b) = two_raw(&hub).await?;

    // Forty different claim sets in a row, as fast as the socket takes them.
    for i in 0..40 {
        let pairings = (0..100)
            .map(|j| Pairing::new(format!("c{i}-{j}"), Address::new("site-b", "c2")))
            .collect();
        a.send(&Frame::Claims(Claims { pairings })).await?;
    }
    // The last word, confirmed by the Pong behind it: the hub applies claims in order.
    a.claim(&[("c1", Address::new("site-b", "c2"))]).await?;
    eventually(
        "the hub to log that it slowed the flood",
        DEADLINE,
        || async { Ok(hub.log_contains("claims rate-limited").then_some(())) },
    )
    .await?;
    // The other site was never held up, and the final claims are the ones enforced.
    b.claim(&[("c2", Address::new("site-a", "c1"))]).await?;
    a.send(&frames::routed("site-a/c1", "site-b/c2", Kind::Message, 7))
        .await?;
    frames::expect_only(&mut b, 7).await?;
    a.send(&frames::routed(
        "site-a/c0-0",
        "site-b/c2",
        Kind::Message,
        8,
    ))
    .await?;
    frames::expect_undelivered(&mut a, 8, UndeliveredReason::NotPaired).await?;
    Ok(())
}

#[tokio::test]
async fn clients_that_trickle_headers_are_closed_and_connections_are_capped() -> anyhow::Result<()>
{
    let hub = HubProc::start_with(util::bin(), &["--max-connections", "2"]).await?;
    hub.health().await?;

    // Two clients that start a request and never finish its headers.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut tls = hub.tls().await?;
        tls.write_all(b"GET /health HTTP/1.1\r\nHost: hub\r\nX-Slow: ")
            .await?;
        tls.flush().await?;
        slow.push(tls);
    }
    // They hold every connection the hub allows: a third is closed at once.
    eventually("the hub to refuse a third connection", DEADLINE, || async {
        Ok(hub.health().await.is_err().then_some(()))
    })
    .await?;
    assert!(hub.log_contains("connection limit reached"));

    // The header deadline closes both (the probe saw them open for 65 s and more).
    for mut tls in slow {
        let closed = tokio::time::timeout(DEADLINE, async {
            let mut buf = [0u8; 256];
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a half-sent request kept its connection open"
        );
    }
    // And the hub answers again.
    eventually("the hub to answer again", DEADLINE, || async {
        Ok(hub.health().await.ok())
    })
    .await?;
    Ok(())
}
