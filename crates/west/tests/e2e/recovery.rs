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
    let devices: Vec<String> = (0..100).map(|i| format!("d{i}")).collect();
    let cid = util::thermometers(&api, &devices).await?;
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

/// A small tmpfs mounted on a fresh directory, unmounted on drop: a disk that really fills.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` where this process may not mount (not root): the test then says so and passes,
    /// as it cannot build its disk. CI runs as root, so there it always runs.
    fn mount(mib: u32) -> anyhow::Result<Option<Self>> {
        let dir = tempfile::tempdir()?;
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        Ok(ok.then_some(Self { dir }))
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Every point of `device` on the site, counted through the paged data API.
async fn stored(api: &Api, cid: &str, device: &str) -> anyhow::Result<u64> {
    let mut n = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!(
            "/api/v1/connectors/{cid}/devices/{device}/resources/temperature/data?limit=10000"
        );
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = api.get_ok(&path).await?;
        n += page["points"].as_array().map_or(0, Vec::len) as u64;
        match page["next"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(n),
        }
    }
}

#[tokio::test]
async fn a_full_disk_refuses_writes_with_507_keeps_reads_and_recovers_by_itself()
-> anyhow::Result<()> {
    let Some(disk) = SmallDisk::mount(8)? else {
        println!("skipped: mounting a tmpfs needs root");
        return Ok(());
    };
    let mut opts = testkit::SiteOpts::new("site-a");
    opts.extra = vec![];
    let site = testkit::SiteProc::start_in(
        util::bin(),
        opts,
        &disk.path().join("site-a"),
        "127.0.0.1:0",
    )
    .await?;
    let api = site.admin().await?;
    let devices: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
    let cid = util::thermometers(&api, &devices).await?;
    // Ballast that the "operator" deletes later to free space: it takes all but ~1 MiB.
    let ballast = disk.path().join("ballast");
    std::fs::create_dir(&ballast)?;
    let chunk = vec![0x5au8; 256 << 10];
    let mut chunks = 0;
    while std::fs::write(ballast.join(chunks.to_string()), &chunk).is_ok() {
        chunks += 1;
    }
    for i in (0..chunks).rev().take(4) {
        std::fs::remove_file(ballast.join(i.to_string()))?;
    }
    let http = reqwest::Client::new();
    let token = api.token.clone().unwrap_or_default();
    // Values that do not compress (a multiplicative hash of the point's number): the log
    // and the blocks store sequential small numbers in well under a byte each, and 2,000
    // batches of those would never fill the disk.
    let batch = |k: i64| -> serde_json::Value {
        json!(
            (0..1000)
                .map(|i| {
                    let n = u64::try_from(k * 1000 + i).unwrap_or(0);
                    let bits = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
                    json!({
                        "device": format!("d{}", i % 10),
                        "t": 1_764_150_000_000_000i64 + k * 1000 + i,
                        "values": { "temperature": bits as f64 / (1u64 << 53) as f64 * 100.0 }
                    })
                })
                .collect::<Vec<_>>()
        )
    };
    let post = |k: i64| {
        http.post(format!("{}/api/v1/connectors/{cid}/data", site.url))
            .bearer_auth(&token)
            .json(&batch(k))
            .send()
    };

    // Fill the disk: every batch is either acknowledged whole or refused whole.
    let mut accepted = 0u64;
    let mut k = 0i64;
    let refusal = loop {
        anyhow::ensure!(k < 2_000, "the disk never filled after {accepted} points");
        let r = post(k).await?;
        if r.status().is_success() {
            accepted += 1000;
            k += 1;
            continue;
        }
        break r;
    };
    assert_eq!(refusal.status().as_u16(), 507, "a full disk is not a bug");
    assert!(refusal.headers().contains_key("retry-after"));
    let body: serde_json::Value = refusal.json().await?;
    assert_eq!(body["error"], "storage_full", "{body}");
    let health = Api::new(&site.url).get_ok("/health").await?;
    assert_eq!(health["storage"]["full"], true, "{health}");
    let (_, metrics) = api.get("/metrics").await?;
    assert!(
        metrics
            .as_str()
            .unwrap_or("")
            .contains("west_storage_full 1"),
        "{metrics}"
    );

    // Reads go on while full, and hold exactly what was acknowledged.
    let mut total = 0;
    for d in &devices {
        total += stored(&api, &cid, d).await?;
    }
    assert_eq!(
        total, accepted,
        "acknowledged points lost or extra ones stored"
    );

    // Space frees: the same request is accepted again, without a restart.
    std::fs::remove_dir_all(&ballast)?;
    eventually("ingest to be accepted again", DEADLINE, || async {
        Ok(post(k).await?.status().is_success().then_some(()))
    })
    .await?;
    accepted += 1000;
    let health = Api::new(&site.url).get_ok("/health").await?;
    assert_eq!(health["storage"]["full"], false, "{health}");
    let mut total = 0;
    for d in &devices {
        total += stored(&api, &cid, d).await?;
    }
    assert_eq!(total, accepted);
    Ok(())
}
