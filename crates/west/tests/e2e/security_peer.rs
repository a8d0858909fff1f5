//! The peer-facing findings of the security review (issue 13), each reproduced between real
//! processes and now seen refused: a paired peer stamping device changes far in the future
//! (#11), and a Source that cannot record a pairing attempt (#12). docs/security.md lists
//! them.
//!
//! A forged stamp needs a peer that holds the pinned key, so the test makes the real Source
//! misbehave: its stored hybrid clock is set to `i64::MAX` behind its back (what a broken or
//! malicious peer would send). A failed write needs a store fault, so the test holds the
//! Source's database write lock from outside, as another process would.
//!
//! Nothing here asserts how fast something happens; waits poll with a deadline.

use serde_json::json;
use testkit::{DEADLINE, eventually};

use crate::util;

#[tokio::test]
async fn a_device_change_stamped_far_ahead_is_refused_reported_and_the_clock_stays_sane()
-> anyhow::Result<()> {
    let (_hub, mut sites, cid, tid) = util::paired_sites().await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    for identity in ["pump-1", "pump-2"] {
        a.post_ok(
            &format!("/api/v1/connectors/{cid}/devices"),
            json!({"identity": identity, "tags": {"site": "north"}}),
        )
        .await?;
        util::wait_device(&b, &tid, identity, "the device on the Target", |d| {
            d.is_some()
        })
        .await?;
    }

    // The probe: every device change of the Source now carries a stamp at i64::MAX.
    util::tamper(
        &mut sites[0],
        "UPDATE device_clock SET wall_us = 9223372036854775807, counter = 0",
    )
    .await?;
    let a = sites[0].admin().await?;
    util::session_up(&a, &cid).await?;
    a.patch_ok(
        &format!("/api/v1/connectors/{cid}/devices/pump-1"),
        json!({"tags": {"site": "forged"}}),
    )
    .await?;

    // Refused and reported: the Target logs it, keeps its own version, and its drift check
    // names the device.
    util::wait_logged(&sites[1].proc, "refused a replicated device change").await?;
    let diff = eventually(
        "the Target's drift check to name pump-1",
        DEADLINE,
        || async {
            let d = b
                .get_ok(&format!("/api/v1/connectors/{tid}/remote/diff"))
                .await?;
            let named = d["differences"]
                .as_array()
                .is_some_and(|ds| ds.iter().any(|x| x["identity"] == "pump-1"));
            Ok((d["in_sync"] == false && named).then_some(d))
        },
    )
    .await?;
    let on_b = b
        .get_ok(&format!("/api/v1/connectors/{tid}/devices/pump-1"))
        .await?;
    assert_eq!(on_b["tags"], json!({"site": "north"}), "{on_b} {diff}");

    // The Target's clock did not follow the stamp: its next edit carries a sane stamp, so
    // the Source (which checks stamps the same way) takes it. A Target whose clock had
    // jumped to i64::MAX would stamp it there, and the Source would refuse it.
    b.patch_ok(
        &format!("/api/v1/connectors/{tid}/devices/pump-2"),
        json!({"tags": {"site": "south"}}),
    )
    .await?;
    util::wait_device(&a, &cid, "pump-2", "the Target's edit on the Source", |d| {
        d.is_some_and(|d| d["tags"]["site"] == "south")
    })
    .await?;
    assert!(
        !util::logged(&sites[0].proc, "refused a replicated device change"),
        "the Source refused the Target's edit"
    );
    Ok(())
}

#[tokio::test]
async fn a_source_that_cannot_record_a_pairing_attempt_answers_no_challenge() -> anyhow::Result<()>
{
    let (_hub, sites) = util::hub_and_sites(&[("site-a", &[]), ("site-b", &[])]).await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    let (cid, e) = testkit::pairing::source(&a, "plant").await?;
    let code = e["pairing_code"].as_str().unwrap_or_default().to_owned();

    // Another process holds the Source's write lock: counting the attempt fails (after the
    // store's 5 s busy timeout).
    let db = rusqlite::Connection::open(sites[0].data_dir.join("site.db"))?;
    db.execute_batch("BEGIN IMMEDIATE")?;
    let (status, answer) =
        testkit::pairing::request_target(&b, "plant-copy", "site-a", &cid, &code).await?;
    db.execute_batch("ROLLBACK")?;
    drop(db);

    // No Challenge went out: the Target heard the Source's failure instead, and paired
    // nothing. (With a Challenge the Target would have answered it and the run would have
    // ended elsewhere — in a pairing, or a failure to store one.)
    assert!(!status.is_success(), "{status} {answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("could not record the pairing attempt"),
        "{status} {answer}"
    );
    util::wait_logged(&sites[0].proc, "could not count a pairing attempt").await?;
    let connectors = b.get_ok("/api/v1/connectors").await?;
    assert_eq!(connectors, json!([]), "the Target created a connector");

    // Once the Source can write again, the same code pairs.
    let t = testkit::pairing::target(&b, "plant-copy", "site-a", &cid, &code).await?;
    let tid = t["id"].as_str().unwrap_or_default().to_owned();
    util::session_up(&b, &tid).await
}
