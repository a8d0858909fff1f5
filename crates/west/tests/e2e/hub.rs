//! The Connectivity Hub and the site link, end to end: a real `west hub` and real `west site`
//! processes on loopback, a fault-injecting proxy between a site and the hub, and a raw wire
//! client for what no honest site would send. Routing between connectors needs a pairing both
//! sites have claimed; refusals say why (offline, unknown site, not paired).
//!
//! Nothing here asserts how fast something happens; waits poll with a deadline.

use std::time::Duration;

use proto::wire::{self, Address, Frame, Kind, Routed, UndeliveredReason};
use serde_json::{Value, json};
use testkit::{DEADLINE, FaultProxy, HubProc, RawClient, SiteOpts, SiteProc, eventually};

use crate::{frames, util};

/// Registers `name` on the hub and starts it as a site dialing `url` (the hub, or a proxy).
async fn site_via(hub: &HubProc, name: &str, url: &str) -> anyhow::Result<SiteProc> {
    let credential = hub.add_site(name).await?;
    let mut opts = SiteOpts::new(name);
    opts.extra = hub.site_args_via(url, &credential)?;
    SiteProc::start(util::bin(), opts).await
}

async fn site(hub: &HubProc, name: &str) -> anyhow::Result<SiteProc> {
    site_via(hub, name, &hub.url).await
}

/// The `hub` part of a site's `/health`.
async fn link(site: &SiteProc) -> anyhow::Result<Value> {
    let h = testkit::Api::new(&site.url).get_ok("/health").await?;
    Ok(h["hub"].clone())
}

async fn wait_link(site: &SiteProc, connected: bool) -> anyhow::Result<()> {
    let what = format!("{} to report hub connected = {connected}", site.opts.name);
    eventually(&what, DEADLINE, || async {
        Ok((link(site).await?["connected"] == connected).then_some(()))
    })
    .await
}

async fn wait_hub_sees(hub: &HubProc, name: &str, connected: bool) -> anyhow::Result<()> {
    let what = format!("the hub to see {name} connected = {connected}");
    eventually(&what, DEADLINE, || async {
        Ok((hub.site_connected(name).await? == connected).then_some(()))
    })
    .await
}

/// `POST /api/v1/hub/ping` from `from` to site `to`.
async fn ping(from: &SiteProc, to: &str) -> anyhow::Result<(u16, Value)> {
    let api = from.admin().await?;
    let (status, body) = api.post("/api/v1/hub/ping", json!({ "site": to })).await?;
    Ok((status.as_u16(), body))
}

async fn ping_ok(from: &SiteProc, to: &str) -> anyhow::Result<f64> {
    let (status, body) = ping(from, to).await?;
    anyhow::ensure!(status == 200, "ping {to} answered {status} {body}");
    body["rtt_ms"]
        .as_f64()
        .map_or_else(|| Err(anyhow::anyhow!("no rtt_ms in {body}")), Ok)
}

/// Two sites joined to one hub, both connected.
async fn two_sites() -> anyhow::Result<(HubProc, SiteProc, SiteProc)> {
    let hub = HubProc::start(util::bin()).await?;
    let a = site(&hub, "site-a").await?;
    let b = site(&hub, "site-b").await?;
    wait_link(&a, true).await?;
    wait_link(&b, true).await?;
    Ok((hub, a, b))
}

#[tokio::test]
async fn a_request_from_one_site_reaches_the_other_and_the_answer_returns() -> anyhow::Result<()> {
    let (hub, a, b) = two_sites().await?;
    assert_eq!(link(&a).await?["link"]["state"], "connected");
    assert_eq!(link(&a).await?["message"], "Hub: connected");
    wait_hub_sees(&hub, "site-a", true).await?;
    wait_hub_sees(&hub, "site-b", true).await?;

    let rtt = ping_ok(&a, "site-b").await?;
    assert!(rtt > 0.0);
    ping_ok(&b, "site-a").await?;

    // The request and its answer went through the hub, which counted them per site.
    assert!(
        hub.counter("west_hub_frames_received_total", "site-a")
            .await?
            >= 1
    );
    assert!(hub.counter("west_hub_frames_sent_total", "site-b").await? >= 1);
    assert!(
        hub.counter("west_hub_bytes_received_total", "site-b")
            .await?
            > 0
    );

    // A site the hub does not know is answered at once, as such.
    let (status, body) = ping(&a, "site-z").await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("site site-z is not registered on the hub"),
        "{body}"
    );
    assert_eq!(
        hub.counter("west_hub_unknown_site_total", "site-a").await?,
        1
    );
    // A registered site that is not connected: peer offline.
    hub.add_site("site-y").await?;
    let (status, body) = ping(&a, "site-y").await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("peer_offline")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("site site-y is offline"),
        "{body}"
    );
    assert_eq!(
        hub.counter("west_hub_peer_offline_total", "site-a").await?,
        1
    );

    // The site's own metrics show its link up and the heartbeat's round trip.
    let admin = a.admin().await?;
    eventually("site-a to export its hub round trip", DEADLINE, || async {
        let (_, text) = admin.get("/metrics").await?;
        let text = text.as_str().unwrap_or_default().to_owned();
        anyhow::ensure!(text.contains("west_hub_link_up 1"), "{text}");
        Ok(site_metric(&text, "west_hub_rtt_seconds").filter(|v| *v > 0.0))
    })
    .await?;

    // The call needs a login like every other API call.
    let (status, _) = testkit::Api::new(&a.url)
        .post("/api/v1/hub/ping", json!({"site": "site-b"}))
        .await?;
    assert_eq!(status, 401);
    Ok(())
}

/// A metric of the site's `/metrics` without labels.
fn site_metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn after_a_hub_restart_both_sites_reconnect_on_their_own() -> anyhow::Result<()> {
    let (mut hub, a, b) = two_sites().await?;
    ping_ok(&a, "site-b").await?;

    hub.kill9().await?;
    wait_link(&a, false).await?;
    wait_link(&b, false).await?;
    let (_, text) = a.admin().await?.get("/metrics").await?;
    assert_eq!(
        site_metric(text.as_str().unwrap_or_default(), "west_hub_link_up"),
        Some(0.0),
        "{text}"
    );
    let state = link(&a).await?;
    assert!(
        ["reconnecting", "connecting"].contains(&state["link"]["state"].as_str().unwrap_or("")),
        "{state}"
    );
    let (status, _) = ping(&a, "site-b").await?;
    assert_eq!(status, 503);

    hub.restart().await?;
    wait_link(&a, true).await?;
    wait_link(&b, true).await?;
    ping_ok(&a, "site-b").await?;
    ping_ok(&b, "site-a").await?;
    Ok(())
}

#[tokio::test]
async fn the_hub_sees_a_site_leave_and_return() -> anyhow::Result<()> {
    let (hub, a, mut b) = two_sites().await?;
    wait_hub_sees(&hub, "site-b", true).await?;

    b.kill9().await?;
    wait_hub_sees(&hub, "site-b", false).await?;
    assert!(hub.log_contains("site disconnected"));
    let (status, body) = ping(&a, "site-b").await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("peer_offline"))
    );

    b.restart().await?;
    wait_hub_sees(&hub, "site-b", true).await?;
    wait_link(&b, true).await?;
    ping_ok(&a, "site-b").await?;
    assert_eq!(hub.counter("west_hub_connects_total", "site-b").await?, 2);
    Ok(())
}

/// Starts a site whose credential is read from a file holding `credential`, and waits
/// until it listens.
async fn site_with_credential_file(
    hub: &HubProc,
    name: &str,
    credential: &str,
) -> anyhow::Result<(SiteProc, std::path::PathBuf, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("credential");
    std::fs::write(&file, format!("{credential}\n"))?;
    let mut opts = SiteOpts::new(name);
    opts.extra = hub
        .site_args(credential)?
        .chunks(2)
        .flat_map(|kv| match kv[0].as_str() {
            "--site-credential-file" => {
                vec!["--site-credential-file".into(), file.display().to_string()]
            }
            _ => kv.to_vec(),
        })
        .collect();
    let site = SiteProc::start(util::bin(), opts).await?;
    Ok((site, file, dir))
}

/// Waits until `site`'s `/health` shows the hub's refusal, and returns its reason.
async fn wait_refused(site: &SiteProc) -> anyhow::Result<String> {
    let what = format!("{} to show the hub's refusal", site.opts.name);
    let l = eventually(&what, DEADLINE, || async {
        let l = link(site).await?;
        Ok((l["link"]["state"] == "refused").then_some(l))
    })
    .await?;
    Ok(l["link"]["reason"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_refused_site_keeps_serving_its_devices_and_takes_a_corrected_credential_file()
-> anyhow::Result<()> {
    let hub = HubProc::start(util::bin()).await?;
    let right = hub.add_site("site-a").await?;

    let (mut a, file, _dir) =
        site_with_credential_file(&hub, "site-a", "not-the-credential").await?;
    let reason = wait_refused(&a).await?;
    assert!(reason.contains("wrong_credential"), "{reason}");
    eventually("the hub to log the refusal", DEADLINE, || async {
        Ok(hub.log_contains("refused a site").then_some(()))
    })
    .await?;
    assert!(hub.log_contains("the credential is not the current one of site site-a"));

    // Refused, the site still serves its own platform: devices write and read.
    let api = a.admin().await?;
    let cid = util::thermometers(&api, &["00AB01".to_owned()]).await?;
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/devices/00AB01/data"),
        json!({ "values": { "temperature": 21.5 } }),
    )
    .await?;
    let metrics = |api: testkit::Api| async move {
        let (_, text) = api.get("/metrics").await?;
        anyhow::Ok(text.as_str().unwrap_or_default().to_owned())
    };
    let text = metrics(api.clone()).await?;
    assert!(text.contains("west_hub_link_refused 1"), "{text}");
    assert!(text.contains("west_hub_link_up 0"), "{text}");
    let message = link(&a).await?["message"].clone();
    assert!(
        message.as_str().unwrap_or("").starts_with("Hub: refused"),
        "{message}"
    );

    // The operator corrects the file: the running site picks it up, no restart.
    std::fs::write(&file, format!("{right}\n"))?;
    wait_link(&a, true).await?;
    wait_hub_sees(&hub, "site-a", true).await?;
    let text = metrics(api.clone()).await?;
    assert!(text.contains("west_hub_link_refused 0"), "{text}");

    // A name the hub never heard of, even with a real credential of another site: the same
    // answer as a wrong credential (names stay private; the hub's log says which), and the
    // site stays up.
    a.kill9().await?;
    let (x, _file, _dir) = site_with_credential_file(&hub, "site-x", &right).await?;
    let reason = wait_refused(&x).await?;
    assert!(reason.contains("wrong_credential"), "{reason}");
    assert!(hub.log_contains("site site-x is not registered"));
    assert!(
        hub.metrics()
            .await?
            .contains("west_hub_refused_total{code=\"wrong_credential\"} 1"),
        "{}",
        hub.metrics().await?
    );
    Ok(())
}

fn route(from: &str, to: &str, id: u64) -> Frame {
    Frame::Route(Routed {
        from: Address::new(from, "c1"),
        to: Address::new(to, "c2"),
        kind: Kind::Message,
        id,
        payload: b"forged?".to_vec(),
    })
}

fn refusal_code(f: &Option<Frame>) -> Option<&str> {
    match f {
        Some(Frame::Refused(r)) => Some(r.code.as_str()),
        _ => None,
    }
}

#[tokio::test]
async fn frames_from_forged_or_unauthenticated_peers_are_never_forwarded() -> anyhow::Result<()> {
    let hub = HubProc::start(util::bin()).await?;
    let cred_a = hub.add_site("site-a").await?;
    let cred_b = hub.add_site("site-b").await?;
    let cred_c = hub.add_site("site-c").await?;
    let (mut receiver, welcome) = RawClient::hello(&hub, "site-b", &cred_b).await?;
    assert!(matches!(welcome, Frame::Welcome(_)), "{welcome:?}");

    // No hello at all.
    let mut c = RawClient::connect(&hub).await?;
    c.send(&route("site-a", "site-b", 1)).await?;
    assert_eq!(refusal_code(&c.recv().await?), Some("malformed_frame"));
    assert_eq!(c.recv().await?, None);

    // A wrong credential, with a frame sent right behind the hello.
    let mut c = RawClient::connect(&hub).await?;
    c.send(&Frame::Hello(wire::Hello {
        magic: wire::MAGIC,
        min_version: wire::MIN_VERSION,
        max_version: wire::MAX_VERSION,
        site: "site-a".into(),
        credential: "guess".into(),
    }))
    .await?;
    let _ = c.send(&route("site-a", "site-b", 2)).await;
    assert_eq!(refusal_code(&c.recv().await?), Some("wrong_credential"));

    // Authenticated as site-c, claiming to be site-a.
    let (mut c, _) = RawClient::hello(&hub, "site-c", &cred_c).await?;
    c.send(&route("site-a", "site-b", 3)).await?;
    assert_eq!(refusal_code(&c.recv().await?), Some("forged_sender"));
    assert_eq!(c.recv().await?, None);

    // Garbage, then an oversized frame, from a real site.
    let (mut c, _) = RawClient::hello(&hub, "site-a", &cred_a).await?;
    c.send_raw(vec![3, 0xff, 0xff, 0xff]).await?;
    assert_eq!(refusal_code(&c.recv().await?), Some("malformed_frame"));
    let (mut c, _) = RawClient::hello(&hub, "site-a", &cred_a).await?;
    let _ = c.send_raw(vec![3u8; wire::MAX_FRAME_LEN + 1]).await;
    let answer = c.recv().await?;
    assert!(
        matches!(refusal_code(&answer), Some("frame_too_large")) || answer.is_none(),
        "{answer:?}"
    );

    // An honest frame between connectors that both claimed the pairing: the first and only
    // thing the receiver gets.
    receiver
        .claim(&[("c2", Address::new("site-a", "c1"))])
        .await?;
    let (mut honest, _) = RawClient::hello(&hub, "site-a", &cred_a).await?;
    honest
        .claim(&[("c1", Address::new("site-b", "c2"))])
        .await?;
    honest.send(&route("site-a", "site-b", 99)).await?;
    frames::expect_only(&mut receiver, 99).await?;
    // The pong that confirmed its claims, and the frame.
    assert_eq!(
        hub.counter("west_hub_frames_sent_total", "site-b").await?,
        2
    );
    let metrics = hub.metrics().await?;
    assert!(
        metrics.contains("west_hub_refused_total{code=\"forged_sender\"} 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_second_connection_with_the_same_name_replaces_the_first() -> anyhow::Result<()> {
    let hub = HubProc::start(util::bin()).await?;
    let cred = hub.add_site("site-a").await?;
    let (mut older, _) = RawClient::hello(&hub, "site-a", &cred).await?;
    let (mut newer, welcome) = RawClient::hello(&hub, "site-a", &cred).await?;
    assert!(matches!(welcome, Frame::Welcome(_)));

    assert_eq!(refusal_code(&older.recv().await?), Some("superseded"));
    assert_eq!(older.recv().await?, None);
    eventually("the hub to log the replacement", DEADLINE, || async {
        Ok(hub
            .log_contains("site connected again; closing its older connection")
            .then_some(()))
    })
    .await?;

    // The newer connection carries traffic (here, between two of its own paired connectors).
    newer
        .claim(&[
            ("c1", Address::new("site-a", "c2")),
            ("c2", Address::new("site-a", "c1")),
        ])
        .await?;
    newer.send(&route("site-a", "site-a", 7)).await?;
    frames::expect_only(&mut newer, 7).await?;
    Ok(())
}

#[tokio::test]
async fn removing_a_site_cuts_it_off_while_the_hub_runs() -> anyhow::Result<()> {
    let (hub, a, b) = two_sites().await?;
    ping_ok(&a, "site-b").await?;

    hub.remove_site("site-b").await?;
    let what = "site-b to show the hub's refusal";
    let state = eventually(what, DEADLINE, || async {
        let l = link(&b).await?;
        Ok((l["link"]["state"] == "refused").then_some(l))
    })
    .await?;
    let reason = state["link"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("removed"), "{state}");
    assert!(
        state["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("Hub: refused")
    );
    wait_hub_sees(&hub, "site-b", false).await?;
    // A removed site is no longer registered: the hub says so rather than "offline".
    let (status, body) = ping(&a, "site-b").await?;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    // The site that stayed is unaffected.
    assert_eq!(link(&a).await?["connected"], true);
    Ok(())
}

/// A hub, site-b connected directly, site-a through a fault proxy.
async fn proxied() -> anyhow::Result<(HubProc, FaultProxy, SiteProc, SiteProc)> {
    let hub = HubProc::start(util::bin()).await?;
    let proxy = FaultProxy::start(hub.addr).await?;
    let a = site_via(&hub, "site-a", &format!("wss://{}", proxy.addr())).await?;
    let b = site(&hub, "site-b").await?;
    wait_link(&a, true).await?;
    wait_link(&b, true).await?;
    ping_ok(&a, "site-b").await?;
    Ok((hub, proxy, a, b))
}

#[tokio::test]
async fn a_blackholed_link_is_detected_dead_on_both_sides_and_recovers() -> anyhow::Result<()> {
    let (hub, proxy, a, _b) = proxied().await?;

    proxy.blackhole(true);
    // Nothing is closed: only the heartbeats' silence tells either side.
    wait_link(&a, false).await?;
    wait_hub_sees(&hub, "site-a", false).await?;
    let log = std::fs::read_to_string(&a.proc.log_path)?;
    assert!(log.contains("the connection is dead"), "{log}");
    assert!(hub.log_contains("nothing received for"));

    proxy.blackhole(false);
    wait_link(&a, true).await?;
    wait_hub_sees(&hub, "site-a", true).await?;
    ping_ok(&a, "site-b").await?;
    assert!(hub.counter("west_hub_connects_total", "site-a").await? >= 2);
    Ok(())
}

#[tokio::test]
async fn reset_connections_are_redialled() -> anyhow::Result<()> {
    let (hub, proxy, a, _b) = proxied().await?;
    assert_eq!(hub.counter("west_hub_connects_total", "site-a").await?, 1);

    proxy.reset_all();
    eventually("site-a to reconnect after the reset", DEADLINE, || async {
        Ok((hub.counter("west_hub_connects_total", "site-a").await? >= 2).then_some(()))
    })
    .await?;
    wait_link(&a, true).await?;
    ping_ok(&a, "site-b").await?;
    Ok(())
}

#[tokio::test]
async fn a_slow_path_keeps_the_link_up() -> anyhow::Result<()> {
    let (hub, proxy, a, _b) = proxied().await?;
    let delay = Duration::from_millis(300);
    proxy.set_delay(delay);
    // The request and its answer each cross the proxy once: the delay is in the round trip.
    let rtt = ping_ok(&a, "site-b").await?;
    assert!(rtt >= 2.0 * delay.as_millis() as f64, "rtt {rtt} ms");
    // A few heartbeats later the link is still the same connection.
    let _ = ping_ok(&a, "site-b").await?;
    assert_eq!(link(&a).await?["connected"], true);
    assert_eq!(hub.counter("west_hub_connects_total", "site-a").await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_site_that_does_not_trust_the_hub_certificate_never_connects() -> anyhow::Result<()> {
    let hub = HubProc::start(util::bin()).await?;
    let credential = hub.add_site("site-a").await?;
    let mut opts = SiteOpts::new("site-a");
    opts.extra = vec![
        "--hub".into(),
        hub.url.clone(),
        "--site-credential".into(),
        credential,
    ];
    let a = SiteProc::start(util::bin(), opts).await?;
    eventually(
        "the site to log the certificate failure",
        DEADLINE,
        || async {
            let log = std::fs::read_to_string(&a.proc.log_path)?;
            Ok(log.contains("invalid peer certificate").then_some(()))
        },
    )
    .await?;
    assert_eq!(link(&a).await?["connected"], false);
    assert!(!hub.site_connected("site-a").await?);
    Ok(())
}

#[tokio::test]
async fn a_site_answers_every_request_echo_or_failure() -> anyhow::Result<()> {
    let hub = HubProc::start(util::bin()).await?;
    let a = site(&hub, "site-a").await?;
    wait_link(&a, true).await?;
    let cred = hub.add_site("site-c").await?;
    let (mut c, _) = RawClient::hello(&hub, "site-c", &cred).await?;
    let request = |connector: &str, id: u64| {
        Frame::Route(Routed {
            from: Address::new("site-c", "c1"),
            to: Address::new("site-a", connector),
            kind: Kind::Request,
            id,
            payload: b"are you there".to_vec(),
        })
    };

    // The built-in echo answers with the payload.
    c.send(&request("_echo", 1)).await?;
    match c.recv().await? {
        Some(Frame::Route(r)) => {
            assert_eq!((r.kind, r.id), (Kind::Response, 1));
            assert_eq!(r.payload, b"are you there");
            assert_eq!(r.from, Address::new("site-a", "_echo"));
        }
        other => anyhow::bail!("expected the echo, got {other:?}"),
    }
    // A service nobody offers: a failure with a reason, not silence.
    c.send(&request("_nosuch", 2)).await?;
    match c.recv().await? {
        Some(Frame::Route(r)) => {
            assert_eq!((r.kind, r.id), (Kind::Failure, 2));
            assert!(String::from_utf8_lossy(&r.payload).contains("no service"));
        }
        other => anyhow::bail!("expected a failure, got {other:?}"),
    }
    // A connector, unpaired: the hub answers for the site, which never sees it.
    c.send(&request("09iolmnn8090ol", 3)).await?;
    frames::expect_undelivered(&mut c, 3, UndeliveredReason::NotPaired).await?;
    Ok(())
}

#[tokio::test]
async fn connectors_talk_only_when_both_sites_claim_the_pairing() -> anyhow::Result<()> {
    let hub = HubProc::start(util::bin()).await?;
    let cred_a = hub.add_site("site-a").await?;
    let cred_b = hub.add_site("site-b").await?;
    let cred_c = hub.add_site("site-c").await?;
    hub.add_site("site-d").await?;
    let (mut a, _) = RawClient::hello(&hub, "site-a", &cred_a).await?;
    let (mut b, welcome) = RawClient::hello(&hub, "site-b", &cred_b).await?;
    assert!(
        matches!(&welcome, Frame::Welcome(w) if w.version == wire::MAX_VERSION),
        "{welcome:?}"
    );
    let (mut c, _) = RawClient::hello(&hub, "site-c", &cred_c).await?;
    // The Welcome leaves just before the hub routes to the site.
    wait_hub_sees(&hub, "site-b", true).await?;
    wait_hub_sees(&hub, "site-a", true).await?;

    // Nobody claimed anything: refused, with the reason, and the request is handed back.
    a.send(&frames::routed("site-a/c1", "site-b/c2", Kind::Request, 1))
        .await?;
    let u = frames::expect_undelivered(&mut a, 1, UndeliveredReason::NotPaired).await?;
    assert_eq!(
        (u.to, u.from_connector.as_str(), u.kind),
        (Address::new("site-b", "c2"), "c1", Kind::Request)
    );
    // One side alone opens nothing.
    a.claim(&[("c1", Address::new("site-b", "c2"))]).await?;
    a.send(&frames::routed("site-a/c1", "site-b/c2", Kind::Message, 2))
        .await?;
    frames::expect_undelivered(&mut a, 2, UndeliveredReason::NotPaired).await?;
    // Both sides: traffic flows both ways.
    b.claim(&[("c2", Address::new("site-a", "c1"))]).await?;
    a.send(&frames::routed("site-a/c1", "site-b/c2", Kind::Message, 3))
        .await?;
    frames::expect_only(&mut b, 3).await?;
    b.send(&frames::routed("site-b/c2", "site-a/c1", Kind::Message, 4))
        .await?;
    frames::expect_only(&mut a, 4).await?;
    // A third site cannot reach either end, even claiming a pairing of its own with them.
    c.claim(&[
        ("c1", Address::new("site-b", "c2")),
        ("c2", Address::new("site-a", "c1")),
    ])
    .await?;
    c.send(&frames::routed("site-c/c1", "site-b/c2", Kind::Message, 5))
        .await?;
    frames::expect_undelivered(&mut c, 5, UndeliveredReason::NotPaired).await?;
    c.send(&frames::routed("site-c/c2", "site-a/c1", Kind::Request, 6))
        .await?;
    frames::expect_undelivered(&mut c, 6, UndeliveredReason::NotPaired).await?;
    // Services need no pairing; absent sites are told apart.
    c.send(&frames::routed(
        "site-c/c9",
        "site-b/_echo",
        Kind::Message,
        7,
    ))
    .await?;
    frames::expect_only(&mut b, 7).await?;
    c.send(&frames::routed(
        "site-c/c9",
        "site-z/_echo",
        Kind::Request,
        8,
    ))
    .await?;
    frames::expect_undelivered(&mut c, 8, UndeliveredReason::UnknownSite).await?;
    c.send(&frames::routed(
        "site-c/c9",
        "site-d/_echo",
        Kind::Request,
        9,
    ))
    .await?;
    frames::expect_undelivered(&mut c, 9, UndeliveredReason::Offline).await?;
    // New claims replace the old: b withdraws, and the route closes again.
    b.claim(&[]).await?;
    a.send(&frames::routed("site-a/c1", "site-b/c2", Kind::Message, 10))
        .await?;
    frames::expect_undelivered(&mut a, 10, UndeliveredReason::NotPaired).await?;

    // Every refusal was counted against its sender, by reason.
    assert_eq!(hub.counter("west_hub_not_paired_total", "site-a").await?, 3);
    assert_eq!(hub.counter("west_hub_not_paired_total", "site-c").await?, 2);
    assert_eq!(
        hub.counter("west_hub_unknown_site_total", "site-c").await?,
        1
    );
    assert_eq!(
        hub.counter("west_hub_peer_offline_total", "site-c").await?,
        1
    );
    Ok(())
}

#[tokio::test]
async fn a_version_1_site_gets_peer_offline_and_cannot_claim() -> anyhow::Result<()> {
    let hub = HubProc::start(util::bin()).await?;
    let cred = hub.add_site("site-a").await?;
    let (mut old, welcome) = RawClient::hello_versions(&hub, "site-a", &cred, (1, 1)).await?;
    assert!(
        matches!(&welcome, Frame::Welcome(w) if w.version == 1),
        "{welcome:?}"
    );
    // Refused for not being paired, but answered in the only form version 1 knows.
    old.send(&frames::routed("site-a/c1", "site-b/c2", Kind::Request, 1))
        .await?;
    match old.recv().await? {
        Some(Frame::PeerOffline(u)) => assert_eq!((u.id, u.kind), (1, Kind::Request)),
        other => anyhow::bail!("expected peer offline, got {other:?}"),
    }
    assert_eq!(hub.counter("west_hub_not_paired_total", "site-a").await?, 1);
    // Claims do not exist in version 1.
    old.send(&Frame::Claims(wire::Claims::default())).await?;
    assert_eq!(refusal_code(&old.recv().await?), Some("malformed_frame"));
    Ok(())
}

#[tokio::test]
async fn claimed_pairings_are_enforced_by_a_restarted_hub_before_sites_claim_again()
-> anyhow::Result<()> {
    let mut hub = HubProc::start(util::bin()).await?;
    let cred_a = hub.add_site("site-a").await?;
    let cred_b = hub.add_site("site-b").await?;
    {
        let (mut a, _) = RawClient::hello(&hub, "site-a", &cred_a).await?;
        let (mut b, _) = RawClient::hello(&hub, "site-b", &cred_b).await?;
        a.claim(&[("c1", Address::new("site-b", "c2"))]).await?;
        b.claim(&[("c2", Address::new("site-a", "c1"))]).await?;
    }
    hub.kill9().await?;
    hub.restart().await?;
    assert!(hub.metrics().await?.contains("west_hub_claimed_pairings 2"));

    // Neither reconnected client claims anything: the hub remembers.
    let (mut a, _) = RawClient::hello(&hub, "site-a", &cred_a).await?;
    let (mut b, _) = RawClient::hello(&hub, "site-b", &cred_b).await?;
    // The Welcome leaves just before the hub routes to the site.
    wait_hub_sees(&hub, "site-b", true).await?;
    a.send(&frames::routed("site-a/c1", "site-b/c2", Kind::Message, 1))
        .await?;
    frames::expect_only(&mut b, 1).await?;
    a.send(&frames::routed("site-a/c3", "site-b/c2", Kind::Message, 2))
        .await?;
    frames::expect_undelivered(&mut a, 2, UndeliveredReason::NotPaired).await?;
    Ok(())
}

#[tokio::test]
async fn paired_sites_talk_through_a_hub_restart_and_a_third_site_cannot_join_in()
-> anyhow::Result<()> {
    let (mut hub, sites, cid, tid) = util::paired_sites().await?;
    // Both sites declared their pairing.
    assert!(hub.metrics().await?.contains("west_hub_claimed_pairings 2"));

    // site-c forges a frame from its own connector named like the Target, and a request.
    let cred_c = hub.add_site("site-c").await?;
    let (mut c, _) = RawClient::hello(&hub, "site-c", &cred_c).await?;
    c.claim(&[(tid.as_str(), Address::new("site-a", cid.as_str()))])
        .await?;
    let to_source = format!("site-a/{cid}");
    c.send(&frames::routed(
        &format!("site-c/{tid}"),
        &to_source,
        Kind::Message,
        1,
    ))
    .await?;
    frames::expect_undelivered(&mut c, 1, UndeliveredReason::NotPaired).await?;
    c.send(&frames::routed(
        "site-c/c9",
        &format!("site-b/{tid}"),
        Kind::Request,
        2,
    ))
    .await?;
    frames::expect_undelivered(&mut c, 2, UndeliveredReason::NotPaired).await?;
    // The sites' services stay reachable for it.
    c.send(&frames::routed(
        "site-c/c9",
        "site-a/_echo",
        Kind::Request,
        3,
    ))
    .await?;
    match c.recv().await? {
        Some(Frame::Route(r)) => assert_eq!((r.kind, r.id), (Kind::Response, 3)),
        other => anyhow::bail!("expected the echo, got {other:?}"),
    }
    assert_eq!(hub.counter("west_hub_not_paired_total", "site-c").await?, 2);
    drop(c);

    // The paired connectors keep talking after the hub is killed and restarted.
    hub.kill9().await?;
    hub.restart().await?;
    for site in &sites {
        util::wait_hub_connected(site).await?;
    }
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    util::session_up(&a, &cid).await?;
    util::session_up(&b, &tid).await?;
    Ok(())
}
