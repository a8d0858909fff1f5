//! The device audit log (docs/api.md, "Audit log") between two real paired sites: each site
//! records who changed a device (a user of its own through an API token, or the peer site
//! through Remote-Sync), what changed and when, pages it newest first, keeps a deleted
//! device's log, and refuses malformed queries with `invalid_query`.
//!
//! The diff, the bounds and paging over many entries are unit-tested in the store
//! (`sqlite::devices::tests::the_audit_log_*`); the device page's section in Chromium
//! (`ui_device_sync`).

use serde_json::{Value, json};
use testkit::{Api, DEADLINE, eventually};

use crate::util;

/// The entries of a page of `path`, and its `next` cursor.
async fn page(api: &Api, path: &str) -> anyhow::Result<(Vec<Value>, Option<String>)> {
    let body = api.get_ok(path).await?;
    let entries = body["entries"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no entries in {body}"))?
        .clone();
    Ok((entries, body["next"].as_str().map(str::to_owned)))
}

#[tokio::test]
async fn each_site_records_who_changed_a_device_and_the_peers_edits_as_the_peers()
-> anyhow::Result<()> {
    let (_hub, sites, cid, tid) = util::paired_sites().await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/devices"),
        json!({"identity": "pump-1", "tags": {"floor": "1"}}),
    )
    .await?;
    util::wait_device(&b, &tid, "pump-1", "pump-1 on site-b", |d| d.is_some()).await?;

    // Site-b's operator edits the device with an API token; site-a records it as site-b's.
    b.patch_ok(
        &format!("/api/v1/connectors/{tid}/devices/pump-1"),
        json!({"tags": {"floor": "2"}, "state": "locked"}),
    )
    .await?;
    let on_a = format!("/api/v1/connectors/{cid}/devices/pump-1/audit");
    let entries = eventually("site-b's edit in site-a's audit log", DEADLINE, || async {
        let (entries, _) = page(&a, &on_a).await?;
        Ok((entries.len() == 2).then_some(entries))
    })
    .await?;
    let newest = &entries[0];
    assert_eq!(
        newest["by"],
        json!({"kind": "peer", "name": "site-b"}),
        "{newest}"
    );
    assert_eq!(newest["action"], "changed");
    assert_eq!(newest["device"], "pump-1");
    assert_eq!(
        newest["changes"],
        json!([
            {"field": "state", "from": "provisioned", "to": "locked"},
            {"field": "tags.floor", "from": "1", "to": "2"},
        ])
    );
    assert!(
        newest["changed_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{newest}"
    );
    assert_eq!(entries[1]["action"], "created");
    assert_eq!(entries[1]["by"], json!({"kind": "token", "name": "admin"}));

    // On site-b: the creation came from site-a, the edit from its own admin's token.
    let (on_b, _) = page(&b, &format!("/api/v1/connectors/{tid}/audit?device=pump-1")).await?;
    let who: Vec<_> = on_b
        .iter()
        .map(|e| (e["action"].clone(), e["by"].clone()))
        .collect();
    assert_eq!(
        who,
        [
            (json!("changed"), json!({"kind": "token", "name": "admin"})),
            (json!("created"), json!({"kind": "peer", "name": "site-a"})),
        ]
    );

    // A new token and a delete are recorded; the log outlives the device, in pages.
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/devices/pump-1/token"),
        json!({}),
    )
    .await?;
    a.delete(&format!("/api/v1/connectors/{cid}/devices/pump-1"))
        .await?;
    let (first, next) = page(&a, &format!("{on_a}?limit=3")).await?;
    let actions: Vec<_> = first.iter().map(|e| e["action"].clone()).collect();
    assert_eq!(
        actions,
        [json!("deleted"), json!("token"), json!("changed")]
    );
    let next = next.ok_or_else(|| anyhow::anyhow!("a fourth entry follows"))?;
    let (rest, end) = page(&a, &format!("{on_a}?limit=3&cursor={next}")).await?;
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["action"], "created");
    assert_eq!(end, None);

    // Malformed queries are refused with a sentence; an unknown connector is 404.
    for bad in [
        format!("/api/v1/connectors/{cid}/audit?device=no%20spaces"),
        format!("/api/v1/connectors/{cid}/audit?limit=0"),
        format!("/api/v1/connectors/{cid}/audit?limit=501"),
        format!("/api/v1/connectors/{cid}/audit?cursor=yesterday"),
    ] {
        let (status, body) = a.get(&bad).await?;
        assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_query", "{bad}: {body}");
    }
    let (status, body) = a.get("/api/v1/connectors/00000000000000/audit").await?;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND, "{body}");
    Ok(())
}
