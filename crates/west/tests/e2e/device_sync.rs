//! Device changes across a pair (docs/spec.md §5) between real processes: an edit made while the
//! peer is down waits durably and arrives when it returns; edits of the same device on both
//! sides during a hub outage converge to the same device on both, per field (last writer
//! wins on the hybrid logical clock), with a delete winning over a concurrent edit; and the
//! drift check then says "in sync".
//!
//! The merge itself is property-tested in `proto::sync::device`; the store's merge, stamps,
//! tombstones and re-sent snapshots by its unit tests. These tests prove the wiring.

use serde_json::{Value, json};
use testkit::{Api, DEADLINE, eventually};

use crate::util;

/// Settable `mode` on both sides, and device `pump-1` (and `gone`) created on the Source
/// and arrived on the Target.
async fn setup(a: &Api, cid: &str, b: &Api, tid: &str) -> anyhow::Result<()> {
    for (api, id) in [(a, cid), (b, tid)] {
        api.post_ok(
            &format!("/api/v1/connectors/{id}/resources"),
            json!({"name": "mode", "format": "string", "settable": true}),
        )
        .await?;
    }
    for identity in ["pump-1", "gone"] {
        a.post_ok(
            &format!("/api/v1/connectors/{cid}/devices"),
            json!({"identity": identity, "tags": {"site": "north"},
                   "permissions": [{"principal": "ops", "access": "read"}]}),
        )
        .await?;
        util::wait_device(b, tid, identity, "the device on the Target", |d| {
            d.is_some()
        })
        .await?;
    }
    Ok(())
}

/// What both sides must agree on: tags, permissions, state and configuration.
fn managed(d: &Value) -> Value {
    json!([d["tags"], d["permissions"], d["state"], d["config"]])
}

async fn device(api: &Api, cid: &str, identity: &str) -> anyhow::Result<Option<Value>> {
    let (s, d) = api
        .get(&format!("/api/v1/connectors/{cid}/devices/{identity}"))
        .await?;
    Ok((s == reqwest::StatusCode::OK).then_some(d))
}

async fn in_sync(api: &Api, cid: &str) -> anyhow::Result<()> {
    eventually("the drift check to say in sync", DEADLINE, || async {
        let (s, d) = api
            .get(&format!("/api/v1/connectors/{cid}/remote/diff"))
            .await?;
        Ok((s == reqwest::StatusCode::OK && d["in_sync"] == true).then_some(()))
    })
    .await
}

#[tokio::test]
async fn an_edit_on_the_target_while_the_source_is_down_arrives_when_it_returns()
-> anyhow::Result<()> {
    let (_hub, mut sites, cid, tid) = util::paired_sites().await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    setup(&a, &cid, &b, &tid).await?;

    sites[0].kill9().await?;
    let edited = b
        .patch_ok(
            &format!("/api/v1/connectors/{tid}/devices/pump-1"),
            json!({"tags": {"site": "north", "rack": "4"}, "config": {"mode": "eco"},
                   "permissions": [{"principal": "ops", "access": "write"}]}),
        )
        .await?;
    assert_eq!(edited["sync"]["pending"], true, "{edited}");
    b.post_ok(
        &format!("/api/v1/connectors/{tid}/devices"),
        json!({"identity": "valve-9", "tags": {"made": "on-b"}}),
    )
    .await?;
    b.delete(&format!("/api/v1/connectors/{tid}/devices/gone"))
        .await?;
    // Still pending while the Source is down: nothing acknowledged it.
    let d = device(&b, &tid, "pump-1").await?.expect("pump-1 on site-b");
    assert_eq!(d["sync"]["pending"], true, "{d}");

    sites[0].restart().await?;
    let a = sites[0].admin().await?;
    let on_a = util::wait_device(&a, &cid, "pump-1", "the Target's edit on the Source", |d| {
        d.is_some_and(|d| d["tags"]["rack"] == "4")
    })
    .await?
    .expect("pump-1 on site-a");
    assert_eq!(on_a["config"], json!({"mode": "eco"}), "{on_a}");
    assert_eq!(
        on_a["permissions"],
        json!([{"principal": "ops", "access": "write"}])
    );
    util::wait_device(&a, &cid, "valve-9", "the Target's new device", |d| {
        d.is_some_and(|d| d["tags"]["made"] == "on-b")
    })
    .await?;
    util::wait_device(&a, &cid, "gone", "the Target's delete", |d| d.is_none()).await?;
    util::wait_device(&b, &tid, "pump-1", "the pending mark to clear", |d| {
        d.is_some_and(|d| d["sync"]["pending"] == false)
    })
    .await?;
    let on_b = device(&b, &tid, "pump-1").await?.expect("pump-1 on site-b");
    assert_eq!(managed(&on_a), managed(&on_b));
    in_sync(&a, &cid).await?;
    in_sync(&b, &tid).await
}

#[tokio::test]
async fn edits_of_the_same_device_on_both_sides_during_a_hub_outage_converge() -> anyhow::Result<()>
{
    let (mut hub, sites, cid, tid) = util::paired_sites().await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    setup(&a, &cid, &b, &tid).await?;

    hub.kill9().await?;
    // site-a first, then site-b: site-b's edits are the later ones.
    a.patch_ok(
        &format!("/api/v1/connectors/{cid}/devices/pump-1"),
        json!({"tags": {"site": "north", "color": "red"}, "state": "locked"}),
    )
    .await?;
    a.delete(&format!("/api/v1/connectors/{cid}/devices/gone"))
        .await?;
    b.patch_ok(
        &format!("/api/v1/connectors/{tid}/devices/pump-1"),
        json!({"tags": {"site": "south"}, "config": {"mode": "boost"},
               "permissions": [{"principal": "ops", "access": "manage"}]}),
    )
    .await?;
    // An edit of a device the other side deleted meanwhile.
    b.patch_ok(
        &format!("/api/v1/connectors/{tid}/devices/gone"),
        json!({"tags": {"late": "edit"}}),
    )
    .await?;
    hub.restart().await?;

    // Per field, the later write: site-b's `site`, config and permissions; site-a's `color`
    // (site-b never saw it, so did not remove it) and state.
    let expected = json!([
        {"color": "red", "site": "south"},
        [{"principal": "ops", "access": "manage"}],
        "locked",
        {"mode": "boost"}
    ]);
    for (api, id) in [(&a, &cid), (&b, &tid)] {
        util::wait_device(api, id, "pump-1", "pump-1 to converge", |d| {
            d.is_some_and(|d| managed(d) == expected)
        })
        .await?;
        // The delete wins over the concurrent edit.
        util::wait_device(api, id, "gone", "the delete to win", |d| d.is_none()).await?;
    }
    in_sync(&a, &cid).await?;
    in_sync(&b, &tid).await
}
