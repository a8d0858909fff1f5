//! Live lookup of the peer's devices and the drift check (docs/spec.md §5), between two real sites
//! paired through a real hub: `GET …/remote/devices[/{identity}]` answers what the peer's
//! own API answers (tags, permissions, tag filter, paging), `peer_offline` when the peer is
//! down instead of hanging, and `GET …/remote/diff` says "in sync" or lists what differs.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{Api, DEADLINE, eventually};

use crate::util;

/// Creates a device with tags and permissions through the API.
async fn device(
    api: &Api,
    cid: &str,
    identity: &str,
    tags: Value,
    perms: Value,
) -> anyhow::Result<()> {
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/devices"),
        json!({"identity": identity, "tags": tags, "permissions": perms}),
    )
    .await?;
    Ok(())
}

fn identities(page: &Value) -> Vec<String> {
    page["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d["identity"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Every page of `path` (a device list), following `next`.
async fn all_pages(api: &Api, path: &str) -> anyhow::Result<(Vec<String>, usize)> {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.to_owned(),
        };
        let page = api.get_ok(&url).await?;
        pages += 1;
        ids.extend(identities(&page));
        match page["next"].as_str() {
            Some(n) => cursor = Some(n.to_owned()),
            None => return Ok((ids, pages)),
        }
        anyhow::ensure!(pages < 100, "paging does not end");
    }
}

#[tokio::test]
async fn lookup_answers_with_the_peers_devices_tags_permissions_filter_and_paging()
-> anyhow::Result<()> {
    let (_hub, sites, cid, tid) = util::paired_sites().await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);

    // Devices on the Target only; the Source looks them up live.
    for i in 0..5 {
        let place = if i < 3 { "north" } else { "south" };
        device(
            &b,
            &tid,
            &format!("b-{i}"),
            json!({"site": place, "rack": i.to_string()}),
            json!([{"principal": "ops", "access": "read"}, {"principal": format!("eng{i}"), "access": "manage"}]),
        )
        .await?;
    }
    // Compared once the Source has acknowledged them (`sync.pending` false), so that both
    // reads see the same state: each device's flag changes when its acknowledgement is
    // persisted, which may fall between the two reads.
    let theirs = testkit::eventually(
        "the Source to acknowledge b's devices",
        testkit::DEADLINE,
        || async {
            let d = b
                .get_ok(&format!("/api/v1/connectors/{tid}/devices"))
                .await?;
            let pending = d["devices"]
                .as_array()
                .is_none_or(|ds| ds.iter().any(|x| x["sync"]["pending"] != false));
            Ok((!pending).then_some(d))
        },
    )
    .await?;
    assert_eq!(theirs["total"], 5);
    let remote = a
        .get_ok(&format!("/api/v1/connectors/{cid}/remote/devices"))
        .await?;
    assert_eq!(remote, theirs, "the remote list is the peer's own answer");
    assert_eq!(identities(&remote), ["b-0", "b-1", "b-2", "b-3", "b-4"]);
    assert_eq!(
        remote["devices"][3]["tags"],
        json!({"site": "south", "rack": "3"})
    );
    assert_eq!(
        remote["devices"][1]["permissions"],
        json!([{"principal": "ops", "access": "read"}, {"principal": "eng1", "access": "manage"}])
    );

    // Tag filter and paging work across the pair, exactly as on the peer itself.
    let north = a
        .get_ok(&format!(
            "/api/v1/connectors/{cid}/remote/devices?tag=site:north"
        ))
        .await?;
    assert_eq!(identities(&north), ["b-0", "b-1", "b-2"]);
    let both = a
        .get_ok(&format!(
            "/api/v1/connectors/{cid}/remote/devices?tag=site:south&tag=rack:4"
        ))
        .await?;
    assert_eq!(identities(&both), ["b-4"]);
    let first = a
        .get_ok(&format!("/api/v1/connectors/{cid}/remote/devices?limit=2"))
        .await?;
    assert_eq!(identities(&first), ["b-0", "b-1"]);
    assert!(first["next"].as_str().is_some(), "{first}");
    let (paged, pages) = all_pages(
        &a,
        &format!("/api/v1/connectors/{cid}/remote/devices?limit=2"),
    )
    .await?;
    assert_eq!(paged, ["b-0", "b-1", "b-2", "b-3", "b-4"]);
    assert_eq!(pages, 3);
    let (paged, _) = all_pages(
        &a,
        &format!("/api/v1/connectors/{cid}/remote/devices?tag=site:north&limit=1"),
    )
    .await?;
    assert_eq!(paged, ["b-0", "b-1", "b-2"]);
    assert_eq!(north["total"], 3, "the total counts what the filter keeps");

    // The search, filters and sorts of the local list, answered by the peer's list itself
    // (#16 item 5): each remote page is what the peer's own API answers to the same query.
    for query in [
        "prefix=b-3",
        "prefix=b&tag=site:north&sort=identity&order=desc",
        "state=provisioned&seen=never&limit=2",
        "sort=state&order=desc&limit=2",
        "sort=last_seen&limit=3",
    ] {
        let remote = a
            .get_ok(&format!("/api/v1/connectors/{cid}/remote/devices?{query}"))
            .await?;
        let own = b
            .get_ok(&format!("/api/v1/connectors/{tid}/devices?{query}"))
            .await?;
        assert_eq!(remote, own, "{query}");
    }
    let desc = a
        .get_ok(&format!(
            "/api/v1/connectors/{cid}/remote/devices?prefix=b&tag=site:north&order=desc"
        ))
        .await?;
    assert_eq!(identities(&desc), ["b-2", "b-1", "b-0"]);
    assert_eq!(desc["total"], 3);
    // Paged backwards through the pair: from the last page of two, `prev` leads back.
    let mut page = a
        .get_ok(&format!("/api/v1/connectors/{cid}/remote/devices?limit=2"))
        .await?;
    while let Some(next) = page["next"].as_str().map(str::to_owned) {
        page = a
            .get_ok(&format!(
                "/api/v1/connectors/{cid}/remote/devices?limit=2&cursor={next}"
            ))
            .await?;
    }
    assert_eq!(identities(&page), ["b-4"]);
    let mut back = Vec::new();
    while let Some(prev) = page["prev"].as_str().map(str::to_owned) {
        page = a
            .get_ok(&format!(
                "/api/v1/connectors/{cid}/remote/devices?limit=2&cursor={prev}"
            ))
            .await?;
        back.splice(0..0, identities(&page));
    }
    assert_eq!(back, ["b-0", "b-1", "b-2", "b-3"]);
    for bad in ["seen=yesterday", "sort=colour", "state=asleep"] {
        let (status, body) = a
            .get(&format!("/api/v1/connectors/{cid}/remote/devices?{bad}"))
            .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_query", "{bad}");
    }

    // One device, with its tags and permissions.
    let one = a
        .get_ok(&format!("/api/v1/connectors/{cid}/remote/devices/b-2"))
        .await?;
    let own = b
        .get_ok(&format!("/api/v1/connectors/{tid}/devices/b-2"))
        .await?;
    assert_eq!(one, own);
    assert_eq!(one["tags"]["site"], "north");
    let (status, body) = a
        .get(&format!("/api/v1/connectors/{cid}/remote/devices/nope"))
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "not_found");
    assert!(
        body["message"].as_str().unwrap().contains("site-b"),
        "{body}"
    );
    let (status, body) = a
        .get(&format!(
            "/api/v1/connectors/{cid}/remote/devices?cursor=!!"
        ))
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Either side can look up the other: the Target sees the Source's devices.
    device(&a, &cid, "a-1", json!({"site": "east"}), json!([])).await?;
    let from_b = b
        .get_ok(&format!("/api/v1/connectors/{tid}/remote/devices/a-1"))
        .await?;
    assert_eq!(from_b["tags"], json!({"site": "east"}));

    // A connector that is not paired has no remote site.
    let lone = a
        .post_ok("/api/v1/connectors", json!({"name": "lone"}))
        .await?;
    let lone = lone["id"].as_str().unwrap();
    for path in ["remote/devices", "remote/devices/x", "remote/diff"] {
        let (status, body) = a.get(&format!("/api/v1/connectors/{lone}/{path}")).await?;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {body}");
        assert_eq!(body["error"], "conflict");
    }
    Ok(())
}

#[tokio::test]
async fn lookup_answers_peer_offline_when_the_peer_is_down() -> anyhow::Result<()> {
    let (_hub, mut sites, cid, tid) = util::paired_sites().await?;
    let a = sites[0].admin().await?;
    device(&sites[1].admin().await?, &tid, "b-1", json!({}), json!([])).await?;
    a.get_ok(&format!("/api/v1/connectors/{cid}/remote/devices/b-1"))
        .await?;

    sites[1].kill9().await?;
    // The answer comes (the lookup's own timeout is seconds; this bound only keeps a broken
    // build from hanging the test run) and says plainly that the peer is offline.
    for path in ["remote/devices", "remote/devices/b-1", "remote/diff"] {
        let url = format!("/api/v1/connectors/{cid}/{path}");
        let call = a.get(&url);
        let (status, body) = tokio::time::timeout(Duration::from_secs(25), call)
            .await
            .map_err(|_| anyhow::anyhow!("{path} did not answer while the peer is down"))??;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert_eq!(body["error"], "peer_offline", "{path}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("site-b"),
            "{body}"
        );
    }

    // Back up: lookups answer again once the session is re-established.
    sites[1].restart().await?;
    util::wait_hub_connected(&sites[1]).await?;
    eventually("the lookup to answer again", DEADLINE, || async {
        let (s, body) = a
            .get(&format!("/api/v1/connectors/{cid}/remote/devices/b-1"))
            .await?;
        Ok((s == StatusCode::OK).then_some(body))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn drift_check_says_in_sync_or_lists_the_differing_devices() -> anyhow::Result<()> {
    let (_hub, mut sites, cid, tid) = util::paired_sites().await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);

    // Devices created on the Source reach the Target: the registries are in sync.
    for i in 0..4 {
        device(
            &a,
            &cid,
            &format!("common-{i}"),
            json!({"site": "north"}),
            json!([{"principal": "ops", "access": "read"}]),
        )
        .await?;
    }
    util::wait_device(&b, &tid, "common-3", "common-3 on the Target", |d| {
        d.is_some()
    })
    .await?;
    for (api, id) in [(&a, &cid), (&b, &tid)] {
        let d = eventually("the registries in sync", DEADLINE, || async {
            let d = api
                .get_ok(&format!("/api/v1/connectors/{id}/remote/diff"))
                .await?;
            Ok((d["in_sync"] == true).then_some(d))
        })
        .await?;
        assert_eq!(d["differences"], json!([]), "{d}");
        assert_eq!(d["devices"], json!({"local": 4, "remote": 4}), "{d}");
    }

    // Now the Target's database is changed behind its back (a restore from an old backup,
    // a hand edit): one device edited, one gone, one that only it has.
    let sql = format!(
        "UPDATE devices SET tags = '{{\"site\":\"south\"}}', state = 'locked'
             WHERE connector = '{tid}' AND identity = 'common-2';
         DELETE FROM devices WHERE connector = '{tid}' AND identity = 'common-3';
         INSERT INTO devices (connector, identity, tags, permissions, state, created_at)
             VALUES ('{tid}', 'only-b', '{{\"k\":\"v\"}}', '[]', 'provisioned', 1);"
    );
    util::tamper(&mut sites[1], &sql).await?;
    let b = sites[1].admin().await?;
    util::session_up(&a, &cid).await?;
    util::session_up(&b, &tid).await?;
    let d = a
        .get_ok(&format!("/api/v1/connectors/{cid}/remote/diff"))
        .await?;
    assert_eq!(d["in_sync"], false, "{d}");
    assert_eq!(d["differing"], 3, "{d}");
    let diffs = d["differences"].as_array().unwrap();
    let ids: Vec<&str> = diffs
        .iter()
        .map(|x| x["identity"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["common-2", "common-3", "only-b"], "{d}");
    assert_eq!(diffs[0]["fields"], json!(["state", "tags"]), "{d}");
    assert_eq!(diffs[0]["local"]["tags"], json!({"site": "north"}));
    assert_eq!(diffs[0]["remote"]["tags"], json!({"site": "south"}));
    assert_eq!(diffs[0]["remote"]["state"], "locked");
    assert_eq!(diffs[1]["only"], "local", "{d}");
    assert!(diffs[1].get("remote").is_none(), "{d}");
    assert_eq!(diffs[2]["only"], "remote", "{d}");
    assert_eq!(diffs[2]["remote"]["tags"], json!({"k": "v"}));

    // The other side sees the mirror image.
    let d = b
        .get_ok(&format!("/api/v1/connectors/{tid}/remote/diff"))
        .await?;
    let diffs = d["differences"].as_array().unwrap();
    assert_eq!(diffs[1]["identity"], "common-3");
    assert_eq!(diffs[1]["only"], "remote", "{d}");
    assert_eq!(diffs[2]["only"], "local", "{d}");

    // Re-sending them in both directions puts it right: each side's record wins where it
    // is newer, so the Source's fields come back on the Target and the Target's extra
    // device reaches the Source.
    let r = a
        .post_ok(
            &format!("/api/v1/connectors/{cid}/remote/resend"),
            json!({"identities": ["common-2", "common-3", "only-b"]}),
        )
        .await?;
    assert_eq!(r["queued"], 2, "only-b is not on the Source: {r}");
    assert_eq!(
        r["peer"]["queued"], 3,
        "the Target still has common-3's record, and only-b's row: {r}"
    );
    for (api, id) in [(&a, &cid), (&b, &tid)] {
        eventually("the registries in sync again", DEADLINE, || async {
            let d = api
                .get_ok(&format!("/api/v1/connectors/{id}/remote/diff"))
                .await?;
            Ok((d["in_sync"] == true).then_some(()))
        })
        .await?;
    }
    let fixed = b
        .get_ok(&format!("/api/v1/connectors/{tid}/devices/common-2"))
        .await?;
    assert_eq!(fixed["tags"], json!({"site": "north"}));
    assert_eq!(fixed["state"], "provisioned");
    a.get_ok(&format!("/api/v1/connectors/{cid}/devices/only-b"))
        .await?;

    // Bad re-send requests are refused and queue nothing.
    let (s, e) = a
        .post(
            &format!("/api/v1/connectors/{cid}/remote/resend"),
            json!({"identities": ["has space"]}),
        )
        .await?;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_value"))
    );
    let (s, _) = a
        .post(
            &format!("/api/v1/connectors/{cid}/remote/resend"),
            json!({"devices": []}),
        )
        .await?;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    Ok(())
}
