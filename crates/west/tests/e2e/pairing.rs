//! Pairing a Source connector with a Target connector through a real hub (docs/spec.md §4): the
//! happy path and its consequences (roles, 409 on delete and disable, survival across
//! restarts), and every failure path with its error code and nothing created.
//!
//! That a relay cannot read or alter pairing messages undetected is proven where every byte
//! can be controlled: `proto::pairing`'s tests run the exchange through a tampering relay
//! that flips, truncates, replays and splices each message, and never see a wrong pairing.

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{Api, DEADLINE, SiteProc, eventually};

use crate::util;

/// A connector on `site` with its pairing window open: (connector id, code).
async fn enable(api: &Api) -> anyhow::Result<(String, String)> {
    let (cid, e) = testkit::pairing::source(api, "plant").await?;
    assert_eq!(e["state"], "pairing");
    assert_eq!(e["site"], "site-a");
    assert_eq!(e["connector_id"], cid.as_str());
    assert!(e["expires_at"].as_str().is_some(), "{e}");
    let code = e["pairing_code"].as_str().unwrap().to_owned();
    Ok((cid, code))
}

/// Asks `target` to create a Target connector paired with `cid` on site-a.
async fn pair(target: &Api, cid: &str, code: &str) -> anyhow::Result<(StatusCode, Value)> {
    testkit::pairing::request_target(target, "plant-copy", "site-a", cid, code).await
}

fn refused(answer: (StatusCode, Value), status: StatusCode, code: &str) {
    let (s, body) = answer;
    assert_eq!(s, status, "{body}");
    assert_eq!(body["error"], code, "{body}");
}

/// Refused because the Source's pairing window is closed, saying what to do about it.
fn refused_as_closed(answer: (StatusCode, Value)) {
    let (s, body) = answer;
    assert_eq!(s, StatusCode::GONE, "{body}");
    assert_eq!(body["error"], "pairing_expired");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("ENABLE REMOTE-SYNC"),
        "{body}"
    );
}

async fn connector_count(api: &Api) -> anyhow::Result<usize> {
    Ok(api
        .get_ok("/api/v1/connectors")
        .await?
        .as_array()
        .unwrap()
        .len())
}

/// A code that passes the check character but is not the one the Source shows.
pub(crate) fn other_code(code: &str) -> String {
    // Codes are Crockford base-32 with a check character; generate valid wrong ones by
    // walking candidates until one parses and differs.
    let alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let plain: String = code.chars().filter(|c| *c != '-').collect();
    for a in alphabet.chars() {
        for b in alphabet.chars() {
            let candidate: String = plain
                .chars()
                .enumerate()
                .map(|(i, c)| match i {
                    0 => a,
                    9 => b,
                    _ => c,
                })
                .collect();
            if candidate != plain && proto::pairing::PairingCode::parse(&candidate).is_ok() {
                return candidate;
            }
        }
    }
    unreachable!("some variant of a code is valid")
}

/// Waits until a round trip through the connector's end-to-end session succeeds.
async fn session_up(api: &Api, cid: &str) -> anyhow::Result<()> {
    let what = format!("the encrypted session of {cid}");
    eventually(&what, DEADLINE, || async {
        let (s, body) = api
            .post(
                &format!("/api/v1/connectors/{cid}/remote-sync/ping"),
                json!({}),
            )
            .await?;
        Ok((s == StatusCode::OK && body["rtt_ms"].as_f64().is_some()).then_some(()))
    })
    .await?;
    let rs = remote_sync(api, cid).await?;
    anyhow::ensure!(
        rs["link"]["connected"] == true,
        "link not shown connected: {rs}"
    );
    Ok(())
}

async fn remote_sync(api: &Api, cid: &str) -> anyhow::Result<Value> {
    api.get_ok(&format!("/api/v1/connectors/{cid}/remote-sync"))
        .await
}

#[tokio::test]
async fn a_source_and_a_target_pair_and_stay_paired() -> anyhow::Result<()> {
    let (mut hub, mut sites) = util::hub_and_sites(&[("site-a", &[]), ("site-b", &[])]).await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    let (cid, code) = enable(&a).await?;

    let (status, t) = pair(&b, &cid, &code).await?;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    let tid = t["id"].as_str().unwrap().to_owned();
    assert_eq!(t["remote_sync"]["role"], "target");
    assert_eq!(t["remote_sync"]["state"], "paired");
    assert_eq!(
        t["remote_sync"]["peer"],
        json!({"site": "site-a", "connector_id": cid})
    );

    let s = remote_sync(&a, &cid).await?;
    assert_eq!(s["role"], "source");
    assert_eq!(s["state"], "paired");
    assert_eq!(s["peer"], json!({"site": "site-b", "connector_id": tid}));
    assert_eq!(s["gaps"], json!([]));
    assert!(s["paired_at"].as_str().is_some(), "{s}");

    // Both connectors reach each other through the end-to-end encrypted session.
    session_up(&a, &cid).await?;
    session_up(&b, &tid).await?;

    // Paired connectors cannot be deleted, disabled, or paired again.
    for (api, id) in [(&a, &cid), (&b, &tid)] {
        refused(
            api.delete(&format!("/api/v1/connectors/{id}")).await?,
            StatusCode::CONFLICT,
            "conflict",
        );
        refused(
            api.post(
                &format!("/api/v1/connectors/{id}/remote-sync/disable"),
                json!({}),
            )
            .await?,
            StatusCode::CONFLICT,
            "conflict",
        );
        refused(
            api.post(
                &format!("/api/v1/connectors/{id}/remote-sync/enable"),
                json!({}),
            )
            .await?,
            StatusCode::CONFLICT,
            "conflict",
        );
    }
    // A second Target for the same Source is refused, and creates nothing.
    refused(
        pair(&b, &cid, &code).await?,
        StatusCode::CONFLICT,
        "conflict",
    );
    assert_eq!(connector_count(&b).await?, 1);

    // The pairing survives restarts of both sites and of the hub.
    for site in sites.iter_mut() {
        site.kill9().await?;
        site.restart().await?;
    }
    hub.kill9().await?;
    hub.restart().await?;
    for site in &sites {
        util::wait_hub_connected(site).await?;
    }
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    assert_eq!(remote_sync(&a, &cid).await?["state"], "paired");
    assert_eq!(
        remote_sync(&b, &tid).await?["peer"]["connector_id"],
        cid.as_str()
    );
    let list = a.get_ok("/api/v1/connectors").await?;
    assert_eq!(list[0]["remote_sync"]["role"], "source");
    Ok(())
}

#[tokio::test]
async fn wrong_codes_are_refused_and_five_close_the_window() -> anyhow::Result<()> {
    let (_hub, sites) = util::hub_and_sites(&[("site-a", &[]), ("site-b", &[])]).await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    let (cid, code) = enable(&a).await?;

    // A typo is caught by the check character on the Target and costs no attempt.
    let mut typo: Vec<char> = code.chars().collect();
    typo[0] = if typo[0] == 'A' { 'B' } else { 'A' };
    let typo: String = typo.into_iter().collect();
    if proto::pairing::PairingCode::parse(&typo).is_err() {
        refused(
            pair(&b, &cid, &typo).await?,
            StatusCode::FORBIDDEN,
            "pairing_code_wrong",
        );
    }
    let wrong = other_code(&code);
    for attempt in 1..=5 {
        let answer = pair(&b, &cid, &wrong).await?;
        assert_eq!(
            answer.0,
            StatusCode::FORBIDDEN,
            "attempt {attempt}: {}",
            answer.1
        );
        assert_eq!(answer.1["error"], "pairing_code_wrong", "attempt {attempt}");
        assert!(answer.1["message"].as_str().unwrap().contains("wrong"));
    }
    assert_eq!(
        connector_count(&b).await?,
        0,
        "a refused pairing creates nothing"
    );
    // The window is closed now: even the right code is refused, and says what to do.
    refused_as_closed(pair(&b, &cid, &code).await?);
    assert_eq!(remote_sync(&a, &cid).await?["state"], "disabled");
    assert_eq!(connector_count(&b).await?, 0);

    // Enabling again gives a fresh code that works.
    let e = testkit::pairing::enable(&a, &cid).await?;
    let fresh = e["pairing_code"].as_str().unwrap();
    assert_ne!(fresh, code);
    let (status, body) = pair(&b, &cid, fresh).await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    Ok(())
}

#[tokio::test]
async fn an_expired_or_cancelled_countdown_refuses_and_says_what_to_do() -> anyhow::Result<()> {
    let (_hub, sites) =
        util::hub_and_sites(&[("site-a", &["--pairing-window", "2s"]), ("site-b", &[])]).await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    let (cid, code) = enable(&a).await?;
    eventually("the countdown to expire", DEADLINE, || async {
        Ok((remote_sync(&a, &cid).await?["state"] == "disabled").then_some(()))
    })
    .await?;
    refused_as_closed(pair(&b, &cid, &code).await?);

    // Cancelled: same answer, nothing created.
    let e = testkit::pairing::enable(&a, &cid).await?;
    let code = e["pairing_code"].as_str().unwrap().to_owned();
    let d = a
        .post_ok(
            &format!("/api/v1/connectors/{cid}/remote-sync/disable"),
            json!({}),
        )
        .await?;
    assert_eq!(d["state"], "disabled");
    refused(
        pair(&b, &cid, &code).await?,
        StatusCode::GONE,
        "pairing_expired",
    );
    assert_eq!(connector_count(&b).await?, 0);
    Ok(())
}

#[tokio::test]
async fn unknown_or_offline_sources_are_refused_clearly() -> anyhow::Result<()> {
    let (_hub, mut sites) = util::hub_and_sites(&[("site-a", &[]), ("site-b", &[])]).await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    let (cid, code) = enable(&a).await?;

    // Unknown connector on a live site.
    let (status, body) = pair(&b, "zzzzzzzzzzzzzz", &code).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "not_found");
    // Unknown site.
    let (status, body) = b
        .post(
            "/api/v1/connectors",
            json!({"name": "x", "remote_sync_target":
                   {"remote_site": "site-z", "remote_connector_id": cid, "pairing_code": code}}),
        )
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "not_found");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("site-z") && message.contains("not registered on the hub"),
        "{body}"
    );
    // The source site is down.
    sites[0].kill9().await?;
    let (status, body) = pair(&b, &cid, &code).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "peer_offline");
    assert_eq!(connector_count(&b).await?, 0);

    // Back up within the countdown: the window survived the crash and the code still works.
    sites[0].restart().await?;
    util::wait_hub_connected(&sites[0]).await?;
    let (status, body) = pair(&b, &cid, &code).await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    Ok(())
}

#[tokio::test]
async fn pairing_needs_a_hub() -> anyhow::Result<()> {
    let site: SiteProc = util::site("site-a").await?;
    let api = site.admin().await?;
    let c = api
        .post_ok("/api/v1/connectors", json!({"name": "plant"}))
        .await?;
    let cid = c["id"].as_str().unwrap();
    refused(
        api.post(
            &format!("/api/v1/connectors/{cid}/remote-sync/enable"),
            json!({}),
        )
        .await?,
        StatusCode::CONFLICT,
        "conflict",
    );
    refused(
        pair(&api, "abcdefghijklmn", "ABCD-EFGH-JK").await?,
        StatusCode::SERVICE_UNAVAILABLE,
        "peer_offline",
    );
    Ok(())
}

/// Plays a Target that completes the pairing exchange with connector `cid` of site-a and
/// then vanishes, as one whose Confirm was lost would: it never creates its connector and
/// never opens a session. Speaks the hub's wire protocol directly as `site`.
pub(crate) async fn vanishing_target(
    hub: &testkit::HubProc,
    site: &str,
    credential: &str,
    cid: &str,
    code: &str,
) -> anyhow::Result<()> {
    use proto::pairing::{
        ConnectorAddr, InitiatorStep, PairingCode, PairingInitiator, StaticKeypair,
    };
    use proto::wire::{Address, Frame, Kind, Routed};
    use rand_core::OsRng;

    let (mut raw, welcome) = testkit::RawClient::hello(hub, site, credential).await?;
    anyhow::ensure!(matches!(welcome, Frame::Welcome(_)), "{welcome:?}");
    let fake = proto::model::ConnectorId::parse("vanished000001")?;
    let local = ConnectorAddr::new(site, fake.clone())?;
    let remote = ConnectorAddr::new("site-a", proto::model::ConnectorId::parse(cid)?)?;
    let (mut initiator, mut out) = PairingInitiator::start(
        local,
        StaticKeypair::generate(&mut OsRng),
        remote,
        &PairingCode::parse(code)?,
        &mut OsRng,
    );
    for id in 1.. {
        raw.send(&Frame::Route(Routed {
            from: Address::new(site, fake.as_str()),
            to: Address::new("site-a", "_pairing"),
            kind: Kind::Request,
            id,
            payload: out,
        }))
        .await?;
        let answer = loop {
            match raw.recv().await? {
                Some(Frame::Route(r)) if r.id == id => break r,
                Some(Frame::Ping(_)) => continue,
                other => anyhow::bail!("expected the Source's answer, got {other:?}"),
            }
        };
        anyhow::ensure!(answer.kind == Kind::Response, "{answer:?}");
        match initiator.on_message(&answer.payload) {
            Ok(InitiatorStep::Send(next)) => out = next,
            Ok(InitiatorStep::Paired(_)) => return Ok(()),
            Err(f) => anyhow::bail!("pairing failed: {:?}", f.error),
        }
    }
    unreachable!("the loop returns")
}

#[tokio::test]
async fn a_pairing_its_target_never_confirmed_can_be_cancelled_then_paired_again()
-> anyhow::Result<()> {
    let (hub, site_a, credential_b) = util::hub_and_source().await?;
    let a = site_a.admin().await?;

    // The Source completes its side, but no Target ever shows up.
    let (cid, code) = enable(&a).await?;
    vanishing_target(&hub, "site-b", &credential_b, &cid, &code).await?;
    let c = a.get_ok(&format!("/api/v1/connectors/{cid}")).await?;
    assert_eq!(c["remote_sync"]["state"], "paired", "{c}");
    assert_eq!(c["remote_sync"]["confirmed"], false, "{c}");
    refused(
        a.delete(&format!("/api/v1/connectors/{cid}")).await?,
        StatusCode::CONFLICT,
        "conflict",
    );

    // Unconfirmed, the operator may cancel it: back to a standalone connector.
    let d = a
        .post_ok(
            &format!("/api/v1/connectors/{cid}/remote-sync/disable"),
            json!({}),
        )
        .await?;
    assert_eq!(
        (&d["role"], &d["state"]),
        (&json!("none"), &json!("disabled")),
        "{d}"
    );

    // And pair it again, with a real Target: its first session confirms; then it is final.
    let site_b = util::join(&hub, "site-b", &credential_b).await?;
    let b = site_b.admin().await?;
    let e = testkit::pairing::enable(&a, &cid).await?;
    let (s, t) = pair(&b, &cid, e["pairing_code"].as_str().unwrap()).await?;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    eventually(
        "the Target's session to confirm the pairing",
        DEADLINE,
        || async {
            let c = a.get_ok(&format!("/api/v1/connectors/{cid}")).await?;
            Ok((c["remote_sync"]["confirmed"] == true).then_some(()))
        },
    )
    .await?;
    refused(
        a.post(
            &format!("/api/v1/connectors/{cid}/remote-sync/disable"),
            json!({}),
        )
        .await?,
        StatusCode::CONFLICT,
        "conflict",
    );
    Ok(())
}
