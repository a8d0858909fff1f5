//! Alarms (#16 item 2, docs/api.md "Alarms"), through real processes: a connector's
//! thresholds are set and checked through the API; stopping the hub makes the peer
//! unreachable, which raises an alarm on both sides (API and `/metrics`) and reaches
//! site-a's webhook (a small HTTP receiver in this test, which refuses the first try so that
//! the retry shows); the alarm survives a restart of the site while the outage lasts, and
//! clears once the hub is back, which the webhook hears too.

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::util;

/// One POST the receiver got: its request line and headers (lower-cased), and its body.
struct Received {
    head: String,
    body: Value,
}

/// A webhook receiver on loopback: answers 503 to the first `refuse` requests, then 204,
/// and hands every request it read to the channel. Returns its address.
async fn receiver(refuse: usize) -> anyhow::Result<(String, mpsc::UnboundedReceiver<Received>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut seen = 0;
        while let Ok((mut conn, _)) = listener.accept().await {
            let Some((head, body)) = read_request(&mut conn).await else {
                continue;
            };
            seen += 1;
            let status = if seen <= refuse {
                "503 Service Unavailable"
            } else {
                "204 No Content"
            };
            let answer =
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = conn.write_all(answer.as_bytes()).await;
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if tx.send(Received { head, body }).is_err() {
                return;
            }
        }
    });
    Ok((addr.to_string(), rx))
}

/// The head (lower-cased) and the body of one HTTP/1.1 request, as Content-Length says.
async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            return Some((head, buf[end + 4..end + 4 + len].to_vec()));
        }
    }
}

/// The next request the receiver got, within a deadline.
async fn next_post(rx: &mut mpsc::UnboundedReceiver<Received>) -> anyhow::Result<Received> {
    let deadline = testkit::DEADLINE * 2;
    tokio::time::timeout(deadline, rx.recv())
        .await
        .map_err(|_| anyhow::anyhow!("no webhook request within {deadline:?}"))?
        .ok_or_else(|| anyhow::anyhow!("the webhook receiver stopped"))
}

fn thresholds(cid: &str) -> String {
    format!("/api/v1/connectors/{cid}/alarms")
}

/// The value of `west_alarm_active{connector, kind}` on a site, if it has one.
async fn alarm_metric(api: &testkit::Api, cid: &str, kind: &str) -> anyhow::Result<Option<f64>> {
    let (_, text) = api.get("/metrics").await?;
    let line = format!("west_alarm_active{{connector=\"{cid}\",kind=\"{kind}\"}} ");
    Ok(text
        .as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.trim().parse().ok()))
}

/// The connector's alarms of `kind` in `state`, newest first.
async fn alarms(
    api: &testkit::Api,
    cid: &str,
    kind: &str,
    state: &str,
) -> anyhow::Result<Vec<Value>> {
    let page = api
        .get_ok(&format!("/api/v1/alarms?connector={cid}&state={state}"))
        .await?;
    Ok(page["alarms"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["kind"] == kind)
        .collect())
}

#[tokio::test]
async fn thresholds_refuse_bad_values_and_change_nothing() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let api = site.admin().await?;
    let c = api
        .post_ok("/api/v1/connectors", json!({"name": "plant"}))
        .await?;
    let cid = c["id"].as_str().unwrap_or_default().to_owned();
    let defaults = api.get_ok(&thresholds(&cid)).await?;
    assert_eq!(defaults["unreachable_seconds"], 120, "{defaults}");
    assert_eq!(defaults["lag_seconds"], 300, "{defaults}");
    assert_eq!(defaults["defaults"]["gap_points"], 1, "{defaults}");

    for (body, says) in [
        (
            json!({"lag_seconds": 0}),
            "lag_seconds must be a whole number from 1",
        ),
        (
            json!({"unreachable_seconds": 40_000_000}),
            "unreachable_seconds must be",
        ),
        (json!({"backlog_points": 1.5}), "backlog_points"),
        (json!({"gap_points": -1}), "gap_points"),
        (json!({"gap_points": "ten"}), "gap_points"),
        (json!({"lag_seconds": 60, "nonsense": 1}), "nonsense"),
    ] {
        let (status, e) = api.patch(&thresholds(&cid), body.clone()).await?;
        assert_eq!(status, 400, "{body}: {e}");
        assert_eq!(e["error"], "invalid_value", "{body}: {e}");
        let message = e["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{body}: {message}");
    }
    let (status, e) = api
        .patch(
            &thresholds(&cid),
            json!({"lag_seconds": 60, "gap_points": 0}),
        )
        .await?;
    assert_eq!(status, 400, "{e}");
    assert_eq!(
        api.get_ok(&thresholds(&cid)).await?,
        defaults,
        "a refused change changed nothing, not even its valid fields"
    );
    let (status, e) = api.get("/api/v1/connectors/zzzzzzzzzzzzzz/alarms").await?;
    assert_eq!(status, 404, "{e}");

    // A change: numbers set, null turns off, an absent field stays.
    let set = api
        .patch_ok(
            &thresholds(&cid),
            json!({"lag_seconds": 60, "backlog_points": null}),
        )
        .await?;
    assert_eq!(set["lag_seconds"], 60);
    assert_eq!(set["backlog_points"], Value::Null);
    assert_eq!(set["unreachable_seconds"], 120);
    assert_eq!(api.get_ok(&thresholds(&cid)).await?, set);

    // The list's own refusals.
    for (query, status) in [
        ("state=bogus", 400),
        ("limit=0", 400),
        ("limit=1001", 400),
        ("cursor=abc", 400),
        ("connector=zzzzzzzzzzzzzz", 404),
    ] {
        let (s, e) = api.get(&format!("/api/v1/alarms?{query}")).await?;
        assert_eq!(s, status, "{query}: {e}");
    }
    let empty = api.get_ok("/api/v1/alarms").await?;
    assert_eq!(empty, json!({"alarms": [], "active": 0}));
    Ok(())
}

#[tokio::test]
async fn a_stopped_hub_raises_unreachable_on_both_sides_until_it_is_back() -> anyhow::Result<()> {
    let (receiver_at, mut posts) = receiver(1).await?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("webhook-token");
    std::fs::write(&token_file, "tok-3f9a-secret\n")?;
    let hook = format!("http://{receiver_at}/hooks/path-secret-77");
    let token_path = token_file.display().to_string();
    let a_flags = [
        "--alarm-webhook",
        hook.as_str(),
        "--alarm-webhook-token-file",
        token_path.as_str(),
    ];
    let (mut hub, mut sites) =
        util::hub_and_sites(&[("site-a", &a_flags), ("site-b", &[])]).await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    let (cid, tid) = testkit::pair(&a, &b, "plant").await?;
    util::session_up(&a, &cid).await?;
    util::session_up(&b, &tid).await?;
    a.patch_ok(&thresholds(&cid), json!({"unreachable_seconds": 2}))
        .await?;
    b.patch_ok(&thresholds(&tid), json!({"unreachable_seconds": 2}))
        .await?;
    // A healthy link raises nothing.
    assert!(alarms(&a, &cid, "unreachable", "all").await?.is_empty());

    hub.kill9().await?;
    for (name, api, id) in [("site-a", &a, &cid), ("site-b", &b, &tid)] {
        let raised = testkit::eventually(
            &format!("{name}'s unreachable alarm"),
            testkit::DEADLINE,
            || async {
                let active = alarms(api, id, "unreachable", "active").await?;
                Ok(active.into_iter().next())
            },
        )
        .await?;
        assert_eq!(raised["state"], "active", "{raised}");
        assert_eq!(raised["threshold"], 2, "{raised}");
        assert_eq!(raised["unit"], "seconds", "{raised}");
        assert!(raised["value"].as_f64().unwrap_or(0.0) >= 2.0, "{raised}");
        assert!(raised.get("cleared_at").is_none(), "{raised}");
        let message = raised["message"].as_str().unwrap_or_default();
        assert!(message.contains("unreachable"), "{message}");
        assert_eq!(alarm_metric(api, id, "unreachable").await?, Some(1.0));
        assert_eq!(api.get_ok("/api/v1/alarms").await?["active"], 1);
    }

    // The webhook: the first try was refused (503), the retry delivered the same event.
    let first = next_post(&mut posts).await?;
    let retried = next_post(&mut posts).await?;
    assert_eq!(first.body, retried.body, "a retry posts the same event");
    let raised = &retried.body;
    assert_eq!(raised["event"], "raised", "{raised}");
    assert_eq!(raised["site"], "site-a", "{raised}");
    assert_eq!(raised["alarm"]["connector_id"], cid.as_str(), "{raised}");
    assert_eq!(raised["alarm"]["kind"], "unreachable", "{raised}");
    assert_eq!(raised["alarm"]["state"], "active", "{raised}");
    let head = &retried.head;
    assert!(
        head.starts_with("post /hooks/path-secret-77 http/1.1"),
        "{head}"
    );
    assert!(
        head.contains("authorization: bearer tok-3f9a-secret"),
        "{head}"
    );
    assert!(head.contains("content-type: application/json"), "{head}");

    // Site-a restarts during the outage: its alarm is still the same active one.
    let before = alarms(&a, &cid, "unreachable", "active").await?;
    sites[0].kill9().await?;
    sites[0].restart().await?;
    let a = sites[0].admin().await?;
    let after = testkit::eventually(
        "site-a's active alarms after its restart",
        testkit::DEADLINE,
        || async {
            let active = alarms(&a, &cid, "unreachable", "active").await?;
            let counted = a.get_ok("/api/v1/alarms").await?["active"] == 1;
            Ok((counted && !active.is_empty()).then_some(active))
        },
    )
    .await?;
    assert_eq!(after[0]["id"], before[0]["id"], "{after:?} {before:?}");
    assert_eq!(after[0]["raised_at"], before[0]["raised_at"]);

    hub.restart().await?;
    for (name, api, id) in [("site-a", &a, &cid), ("site-b", &b, &tid)] {
        let cleared = testkit::eventually(
            &format!("{name}'s unreachable alarm to clear"),
            testkit::DEADLINE * 2,
            || async {
                let cleared = alarms(api, id, "unreachable", "cleared").await?;
                Ok(cleared.into_iter().next())
            },
        )
        .await?;
        assert!(cleared["cleared_at"].is_string(), "{cleared}");
        assert!(
            cleared["cleared_at"].as_str() >= cleared["raised_at"].as_str(),
            "{cleared}"
        );
        assert!(alarms(api, id, "unreachable", "active").await?.is_empty());
        assert_eq!(alarm_metric(api, id, "unreachable").await?, Some(0.0));
        assert_eq!(api.get_ok("/api/v1/alarms").await?["active"], 0);
    }
    // The restarted site-a posts the clear of the alarm raised before its restart.
    let cleared = next_post(&mut posts).await?.body;
    assert_eq!(cleared["event"], "cleared", "{cleared}");
    assert_eq!(cleared["alarm"]["id"], before[0]["id"], "{cleared}");
    assert!(cleared["alarm"]["cleared_at"].is_string(), "{cleared}");
    // Neither the token nor the URL's path reached the log.
    let log = std::fs::read_to_string(&sites[0].proc.log_path)?;
    assert!(!log.contains("tok-3f9a"), "the token is in site-a's log");
    assert!(
        !log.contains("path-secret"),
        "the webhook's path is in site-a's log"
    );
    Ok(())
}
