//! `west quickstart` as a newcomer runs it: everything starts, the demo connector is paired
//! and its simulated devices write data, Ctrl-C (SIGTERM here) stops it cleanly, and a
//! second run continues with the same data, password and connectors. Killed outright
//! (SIGKILL, no chance to stop anything), it still takes its hub and sites with it.

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use testkit::{Api, DEADLINE, WestProc, eventually};

use crate::util;

struct Running {
    proc: WestProc,
    site_a: String,
    site_b: String,
    password: String,
}

async fn start(dir: &std::path::Path) -> anyhow::Result<Running> {
    let args: Vec<String> = [
        "quickstart",
        "--data-dir",
        &dir.display().to_string(),
        "--hub-port",
        "0",
        "--port-a",
        "0",
        "--port-b",
        "0",
        "--devices",
        "5",
        "--every",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut proc = WestProc::spawn(util::bin(), &args, &[], &dir.join("quickstart.log"))?;
    proc.wait_line("Press Ctrl-C to stop").await?;
    let lines = proc.lines();
    let after = |prefix: &str| -> anyhow::Result<String> {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()))
            .ok_or_else(|| anyhow::anyhow!("no line {prefix:?} in {lines:?}"))
    };
    Ok(Running {
        site_a: after("site-a (Source):")?,
        site_b: after("site-b (Target):")?,
        password: after("sign in as admin /")?,
        proc,
    })
}

async fn points(api: &Api, cid: &str) -> anyhow::Result<usize> {
    let page = api
        .get_ok(&format!(
            "/api/v1/connectors/{cid}/devices/sensor-000/resources/temperature/data?limit=10000"
        ))
        .await?;
    Ok(page["points"].as_array().map_or(0, Vec::len))
}

#[tokio::test]
async fn quickstart_runs_a_paired_demo_and_resumes_after_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut run = start(dir.path()).await?;
    let a = Api::login(&run.site_a, "admin", &run.password).await?;
    let b = Api::login(&run.site_b, "admin", &run.password).await?;
    let list = a.get_ok("/api/v1/connectors").await?;
    let demo: &Value = &list[0];
    assert_eq!(demo["name"], "demo-plant");
    assert_eq!(demo["remote_sync"]["role"], "source");
    assert_eq!(demo["remote_sync"]["state"], "paired");
    assert_eq!(demo["device_count"], 5);
    let cid = demo["id"].as_str().unwrap().to_owned();
    let target = b.get_ok("/api/v1/connectors").await?;
    assert_eq!(target[0]["remote_sync"]["role"], "target");
    assert_eq!(
        target[0]["remote_sync"]["peer"]["connector_id"],
        cid.as_str()
    );
    // The simulated devices keep writing.
    let first = eventually("simulated data", DEADLINE, || async {
        let n = points(&a, &cid).await?;
        Ok((n >= 2).then_some(n))
    })
    .await?;

    run.proc.terminate(Duration::from_secs(20)).await?;
    let log = std::fs::read_to_string(dir.path().join("quickstart.log"))?;
    assert!(!log.contains("panicked"), "{log}");

    // Again: same password, same paired connector, its history kept, new data on top.
    let run = start(dir.path()).await?;
    let a = Api::login(&run.site_a, "admin", &run.password).await?;
    let list = a.get_ok("/api/v1/connectors").await?;
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "no second demo connector"
    );
    assert_eq!(list[0]["id"], cid.as_str());
    eventually(
        "more simulated data after the restart",
        DEADLINE,
        || async { Ok((points(&a, &cid).await? > first).then_some(())) },
    )
    .await?;
    // Stop it as an operator would: its hub and sites must go with it (a SIGKILL of the
    // quickstart process alone would orphan them).
    let mut run = run;
    run.proc.terminate(Duration::from_secs(20)).await?;
    Ok(())
}

/// A process as /proc shows it: its id and start time (field 22 of `stat`, clock ticks since
/// boot), so that a reused pid is never mistaken for the process that was there before.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Proc {
    pid: u32,
    started: u64,
}

/// Fields 3 onwards of `/proc/PID/stat` (after the command name, which may hold spaces).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The children of `parent`, with the `west` subcommand each runs.
fn children(parent: u32) -> anyhow::Result<Vec<(Proc, String)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Some(f) = stat_fields(pid) else { continue };
        // Field 4 is the parent's pid, field 22 the start time.
        if f.get(1).and_then(|p| p.parse::<u32>().ok()) != Some(parent) {
            continue;
        }
        let started = f
            .get(19)
            .and_then(|s| s.parse().ok())
            .context("start time")?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let command = cmdline
            .split(|&b| b == 0)
            .nth(1)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .unwrap_or_default();
        found.push((Proc { pid, started }, command));
    }
    Ok(found)
}

/// Whether `p` still runs: its pid exists with the same start time and is not a zombie
/// (a zombie has exited and only waits for whoever adopted it to reap it).
fn alive(p: Proc) -> bool {
    stat_fields(p.pid).is_some_and(|f| {
        let state = f.first().map(String::as_str);
        f.get(19).and_then(|s| s.parse().ok()) == Some(p.started)
            && !matches!(state, Some("Z" | "X" | "x"))
    })
}

#[tokio::test]
async fn quickstart_killed_with_sigkill_takes_its_hub_and_sites_with_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut run = start(dir.path()).await?;
    let pid = run.proc.pid().context("quickstart is running")?;
    let kids = children(pid)?;
    let mut commands: Vec<&str> = kids.iter().map(|(_, c)| c.as_str()).collect();
    commands.sort_unstable();
    assert_eq!(
        commands,
        ["hub", "site", "site"],
        "quickstart's children: {kids:?}"
    );

    run.proc.kill9().await?;
    let gone = eventually("quickstart's hub and sites to exit", DEADLINE, || async {
        let left: Vec<_> = kids.iter().filter(|(p, _)| alive(*p)).collect();
        Ok(left.is_empty().then_some(()))
    })
    .await;
    if gone.is_err() {
        // Orphans the feature failed to stop: do not leave them running after the test.
        for (p, _) in kids.iter().filter(|(p, _)| alive(*p)) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &p.pid.to_string()])
                .status();
        }
    }
    gone.with_context(|| {
        let left: Vec<_> = kids.iter().filter(|(p, _)| alive(*p)).collect();
        format!("still running after quickstart was killed: {left:?}")
    })
}
