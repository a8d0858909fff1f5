//! `west bench nats`, the NATS JetStream baseline, run small: three real nats-server
//! processes (Debian's `nats-server`, which .ci/run installs) and the real `west` binary.
//! Checks that every figure is reported and positive and that site-b's mirror holds exactly
//! what site-a acknowledged; the speeds themselves are reported, never asserted. Then the
//! default form, `west bench --baseline nats`: our end-to-end scenario and the baseline in one
//! run, with every figure of the baseline on our side too.

use std::process::Stdio;

use anyhow::Context;

use crate::util;

/// Runs `west --log warn bench ARGS --points 20000 --devices 100 --json`; its JSON, stderr.
async fn bench(args: &[&str]) -> anyhow::Result<(serde_json::Value, String)> {
    let out = tokio::process::Command::new(util::bin())
        .args(["--log", "warn", "bench"])
        .args(args)
        .args(["--points", "20000", "--devices", "100", "--json"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running west bench {args:?}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    anyhow::ensure!(out.status.success(), "west bench {args:?} failed: {stderr}");
    let report = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("the benchmark's JSON; stderr: {stderr}"))?;
    Ok((report, stderr))
}

/// The JSON keys of every figure both scenarios report.
fn shared_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "replicated_points_per_s",
        "__source_ingest_alone_points_per_s",
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_max_ms",
        "catch_up_points_per_s",
        "__catch_up_time_s",
        "__restart_to_first_point_s",
        "wire_bytes_per_point_B",
        "stored_bytes_per_point_B",
        "__after_throughput_B",
        "points_published_points",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for p in ["hub", "site_a", "site_b", "client"] {
        keys.extend([format!("peak_RSS_{p}_MiB"), format!("CPU_{p}_s")]);
    }
    keys
}

fn assert_positive(report: &serde_json::Value, keys: &[String]) {
    for key in keys {
        let v = report[key].as_f64();
        assert!(
            v.is_some_and(|v| v > 0.0),
            "{key} is {v:?} in the report: {report}"
        );
    }
}

#[tokio::test]
async fn bench_nats_reports_every_figure_and_replicates_every_point() -> anyhow::Result<()> {
    let (report, _) = bench(&["nats"]).await?;

    let mut keys = shared_keys();
    keys.push("points_on_B_points".into());
    assert_positive(&report, &keys);
    let published = report["points_published_points"].as_f64();
    assert!(published.is_some_and(|p| p >= 20_000.0), "{report}");
    assert_eq!(published, report["points_on_B_points"].as_f64(), "{report}");
    Ok(())
}

#[tokio::test]
async fn bench_with_the_nats_baseline_reports_every_figure_on_both_sides() -> anyhow::Result<()> {
    let (report, stderr) = bench(&["--baseline", "nats"]).await?;
    assert_positive(&report["west"], &shared_keys());
    assert_positive(&report["nats"], &shared_keys());
    // The same workload on both sides: 20,000 points, then 1 s at 10,000 points/s, then an
    // outage of 10 × 20,000.
    assert_eq!(
        report["west"]["points_published_points"], 230_000.0,
        "{report}"
    );
    assert_eq!(
        report["nats"]["points_published_points"], 230_000.0,
        "{report}"
    );
    // Without a terminal the progress is one line per phase, eight phases in all.
    for phase in [
        "[1/8] west: start",
        "[4/8] west: catch-up",
        "[8/8] nats: catch-up",
    ] {
        assert!(stderr.contains(phase), "no {phase:?} in stderr: {stderr}");
    }
    Ok(())
}
