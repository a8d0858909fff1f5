//! The Connectivity Hub and the site link, end to end: a real `west hub` and real `west site`
//! processes on loopback, a fault-injecting proxy between a site and the hub, and a raw wire
//! client for what no honest site would send.
//!
//! Nothing here asserts how fast something happens; waits poll with a deadline.

use std::time::Duration;

use proto::wire::{self, Address, Frame, Kind, Routed};
use serde_json::{Value, json};
use testkit::{DEADLINE, FaultProxy, HubProc, RawClient, SiteOpts, SiteProc, WestProc, eventually};

use crate::util;

/// Registers `name` on the hub and starts it as a site dialing `url` (the hub, or a proxy).
async fn site_via(hub: &HubProc, name: &str, url: &str) -> anyhow::Result<SiteProc> {
    let credential = hub.add_site(name).await?;
    let mut opts = SiteOpts::new(name);
    opts.extra = hub.site_args_via(url, &credential);
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

    // A site that is not connected is answered at once: peer offline.
    let (status, body) = ping(&a, "site-z").await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("peer_offline")),
        "{body}"
    );
    assert!(hub.counter("west_hub_peer_offline_total", "site-a").await? >= 1);

    // The call needs a login like every other API call.
    let (status, _) = testkit::Api::new(&a.url)
        .post("/api/v1/hub/ping", json!({"site": "site-b"}))
        .await?;
    assert_eq!(status, 401);
    Ok(())
}

#[tokio::test]
async fn after_a_hub_restart_both_sites_reconnect_on_their_own() -> anyhow::Result<()> {
    let (mut hub, a, b) = two_sites().await?;
    ping_ok(&a, "site-b").await?;

    hub.kill9().await?;
    wait_link(&a, false).await?;
    wait_link(&b, false).await?;
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

/// Starts a site that the hub will refuse and returns its exit code and log.
async fn refused_site(
    hub: &HubProc,
    name: &str,
    credential: &str,
) -> anyhow::Result<(Option<i32>, String)> {
    let dir = tempfile::tempdir()?;
    let mut args = vec![
        "site".to_string(),
        "--name".into(),
        name.into(),
        "--data-dir".into(),
        dir.path().join(name).display().to_string(),
        "--http".into(),
        "127.0.0.1:0".into(),
        "--admin-password".into(),
        "correct-horse-battery".into(),
    ];
    args.extend(hub.site_args(credential));
    let log = dir.path().join("site.log");
    let mut proc = WestProc::spawn(util::bin(), &args, &[], &log)?;
    let code = proc.wait_exit(DEADLINE).await?;
    Ok((code, std::fs::read_to_string(&log)?))
}

#[tokio::test]
async fn a_wrong_credential_is_refused_with_the_reason_logged_on_both_sides() -> anyhow::Result<()>
{
    let hub = HubProc::start(util::bin()).await?;
    let right = hub.add_site("site-a").await?;

    let (code, log) = refused_site(&hub, "site-a", "not-the-credential").await?;
    assert_eq!(code, Some(1), "the site must exit non-zero; log:\n{log}");
    assert!(log.contains("the hub refused this site"), "{log}");
    assert!(log.contains("wrong_credential"), "{log}");
    eventually("the hub to log the refusal", DEADLINE, || async {
        Ok(hub.log_contains("refused a site").then_some(()))
    })
    .await?;
    assert!(hub.log_contains("the credential is not the current one of site site-a"));

    // A name the hub never heard of, even with a real credential of another site.
    let (code, log) = refused_site(&hub, "site-x", &right).await?;
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("unknown_site"), "{log}");
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

/// Reads routed frames until `id` arrives; fails if any other routed frame comes first.
async fn expect_only(receiver: &mut RawClient, id: u64) -> anyhow::Result<()> {
    loop {
        match receiver.recv().await? {
            Some(Frame::Route(r)) if r.id == id => return Ok(()),
            Some(Frame::Ping(_)) => continue,
            other => anyhow::bail!("before the marker, the receiver got {other:?}"),
        }
    }
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

    // An honest frame: the first and only thing the receiver gets.
    let (mut honest, _) = RawClient::hello(&hub, "site-a", &cred_a).await?;
    honest.send(&route("site-a", "site-b", 99)).await?;
    expect_only(&mut receiver, 99).await?;
    assert_eq!(
        hub.counter("west_hub_frames_sent_total", "site-b").await?,
        1
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

    // The newer connection carries traffic (here, to itself).
    newer.send(&route("site-a", "site-a", 7)).await?;
    expect_only(&mut newer, 7).await?;
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
    let (status, _) = ping(&a, "site-b").await?;
    assert_eq!(status, 503);
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
    // A connector no service listens on: a failure with a reason, not silence.
    c.send(&request("09iolmnn8090ol", 2)).await?;
    match c.recv().await? {
        Some(Frame::Route(r)) => {
            assert_eq!((r.kind, r.id), (Kind::Failure, 2));
            assert!(String::from_utf8_lossy(&r.payload).contains("no service"));
        }
        other => anyhow::bail!("expected a failure, got {other:?}"),
    }
    Ok(())
}
