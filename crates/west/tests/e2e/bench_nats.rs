//! `west bench nats`, the NATS JetStream baseline, run small: three real nats-server
//! processes (Debian's `nats-server`, which .ci/run installs) and the real `west` binary.
//! Checks that every figure is reported and positive and that site-b's mirror holds exactly
//! what site-a acknowledged; the speeds themselves are reported, never asserted.

use std::process::Stdio;

use anyhow::Context;

use crate::util;

#[tokio::test]
async fn bench_nats_reports_every_figure_and_replicates_every_point() -> anyhow::Result<()> {
    let out = tokio::process::Command::new(util::bin())
        .args(["--log", "warn", "bench", "nats"])
        .args(["--points", "20000", "--devices", "100", "--json"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running west bench nats")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "west bench nats failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("the benchmark's JSON")?;

    let mut keys = vec![
        "replicated_points_per_s",
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_max_ms",
        "catch_up_points_per_s",
        "wire_bytes_per_point_B",
        "stored_bytes_per_point_B",
        "points_published_points",
        "points_on_B_points",
    ];
    let per_process: Vec<String> = ["hub", "site_a", "site_b", "client"]
        .iter()
        .flat_map(|p| [format!("peak_RSS_{p}_MiB"), format!("CPU_{p}_s")])
        .collect();
    keys.extend(per_process.iter().map(String::as_str));
    for key in keys {
        let v = report[key].as_f64();
        assert!(
            v.is_some_and(|v| v > 0.0),
            "{key} is {v:?} in the report: {report}"
        );
    }
    let published = report["points_published_points"].as_f64();
    assert!(published.is_some_and(|p| p >= 20_000.0), "{report}");
    assert_eq!(published, report["points_on_B_points"].as_f64(), "{report}");
    Ok(())
}
