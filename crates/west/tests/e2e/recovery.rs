//! A site under conditions an operator's machine really has: its log on a full disk. Writing
//! a log line or a start-up message must never stop, stall or crash a site.

use std::process::Stdio;

use serde_json::json;
use testkit::{Api, DEADLINE, eventually};

use crate::util;

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test]
async fn a_site_whose_log_goes_to_a_full_disk_still_starts_and_serves() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    // /dev/full answers every write with ENOSPC, as a filled disk does.
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full");
    let mut child = tokio::process::Command::new(util::bin())
        .args(["--log", "debug", "site", "--name", "site-a", "--data-dir"])
        .arg(dir.path().join("site-a"))
        .args(["--http", &format!("127.0.0.1:{port}")])
        .args(["--admin-password", "correct-horse-battery"])
        .env_remove("WEST_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(full()?)
        .stderr(full()?)
        .kill_on_drop(true)
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    eventually("the site to answer /health", DEADLINE, || async {
        Ok(Api::new(&base).get("/health").await.ok().map(|_| ()))
    })
    .await?;

    // Everything that logs (sign-in, writes, reads) works, and the process stays up.
    let api = Api::login(&base, "admin", "correct-horse-battery").await?;
    let cid = api
        .post_ok("/api/v1/connectors", json!({ "name": "plant" }))
        .await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/resources"),
        json!({ "name": "temperature", "format": "number" }),
    )
    .await?;
    for i in 0..100 {
        api.post_ok(
            &format!("/api/v1/connectors/{cid}/devices"),
            json!({ "identity": format!("d{i}") }),
        )
        .await?;
    }
    let points: Vec<_> = (0..100)
        .map(|i| json!({ "device": format!("d{i}"), "t": 1_764_150_000_000_000i64 + i, "values": { "temperature": i } }))
        .collect();
    let answer = api
        .post_ok(&format!("/api/v1/connectors/{cid}/data"), json!(points))
        .await?;
    assert_eq!(answer["accepted"], 100, "{answer}");
    let read = api
        .get_ok(&format!(
            "/api/v1/connectors/{cid}/devices/d7/resources/temperature/data"
        ))
        .await?;
    assert_eq!(read["points"].as_array().map(Vec::len), Some(1), "{read}");
    assert!(
        child.try_wait()?.is_none(),
        "the site exited over its log: {:?}",
        child.try_wait()
    );
    Ok(())
}
