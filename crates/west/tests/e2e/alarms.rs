//! Alarms (#16 item 2, docs/api.md "Alarms"), through real processes: a connector's
//! thresholds are set and checked through the API; stopping the hub makes the peer
//! unreachable, which raises an alarm on both sides (API and `/metrics`); the alarm
//! survives a restart of the site while the outage lasts, and clears once the hub is back.

use serde_json::{Value, json};

use crate::util;

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
    let (mut hub, mut sites, cid, tid) = util::paired_sites().await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
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
    Ok(())
}
