//! `west bench nats`, the NATS JetStream baselines, run small: three real nats-server
//! processes (Debian's `nats-server`, which .ci/run installs) and the real `west` binary.
//! Checks that every figure is reported and positive and that site-b holds exactly what
//! site-a acknowledged (its mirror, or its SQLite store); the speeds themselves are reported,
//! never asserted. Then the default form, `west bench --baseline nats`: our end-to-end
//! scenario and the three baselines in one run, with every figure of each on our side too;
//! and the other parts alone (devices, scale, the hub cluster with its failovers, reads).

use std::process::Stdio;

use anyhow::Context;

use crate::util;

/// Runs `west --log warn bench ARGS` small (5,000 points over 50 devices, 1 s at 2,000
/// points/s, an outage of 20,000 points) with `--json`; its JSON, stderr.
async fn bench(args: &[&str]) -> anyhow::Result<(serde_json::Value, String)> {
    let mut all = args.to_vec();
    all.extend(["--points", "5000", "--devices", "50", "--rate", "2000"]);
    all.extend(["--seconds", "1", "--outage-points", "20000"]);
    run(&all).await
}

/// Runs `west --log warn bench ARGS --json`; its JSON, stderr.
async fn run(args: &[&str]) -> anyhow::Result<(serde_json::Value, String)> {
    let out = tokio::process::Command::new(util::bin())
        .args(["--log", "warn", "bench"])
        .args(args)
        .arg("--json")
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
        "latency_p50_from_send_ms",
        "latency_p99_from_send_ms",
        "catch_up_points_per_s",
        "__catch_up_time_s",
        "__restart_to_first_point_s",
        "wire_bytes_per_point_B",
        "stored_bytes_per_point_B",
        "__after_throughput_B",
        "disk_written_per_point_site_a_B",
        "disk_written_per_point_site_b_B",
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
        // CPU time is counted in clock ticks (10 ms): a process that idled through this
        // small run (the hub, since idle pairings cost nothing) may truly show 0.
        let least = if key.starts_with("CPU_") {
            0.0
        } else {
            f64::MIN_POSITIVE
        };
        assert!(
            v.is_some_and(|v| v >= least),
            "{key} is {v:?} in the report: {report}"
        );
    }
}

/// Every figure is there, and site-b holds every point site-a acknowledged, no more.
fn assert_complete(report: &serde_json::Value) {
    let mut keys = shared_keys();
    keys.push("points_on_B_points".into());
    assert_positive(report, &keys);
    // 5,000 points, then 1 s at 2,000 points/s, then an outage of 20,000.
    assert_eq!(report["points_published_points"], 27_000.0, "{report}");
    assert_eq!(report["points_on_B_points"], 27_000.0, "{report}");
}

#[tokio::test]
async fn bench_nats_reports_every_figure_and_replicates_every_point() -> anyhow::Result<()> {
    let (report, _) = bench(&["nats"]).await?;
    assert_complete(&report);
    Ok(())
}

#[tokio::test]
async fn bench_nats_batched_into_sqlite_stores_every_point_once() -> anyhow::Result<()> {
    // 70 points a message: the throughput phase and the outage end on a partial message.
    let (report, _) = bench(&["nats", "--nats-batch", "70", "--store"]).await?;
    assert_complete(&report);
    Ok(())
}

#[tokio::test]
async fn bench_with_the_nats_baseline_reports_every_figure_on_every_side() -> anyhow::Result<()> {
    let (report, stderr) = bench(&[
        "--baseline",
        "nats",
        "--parts",
        "main",
        "--nats-batch",
        "100",
    ])
    .await?;
    assert_positive(&report["west"], &shared_keys());
    assert_eq!(
        report["west"]["points_published_points"], 27_000.0,
        "{report}"
    );
    for side in ["nats", "nats_batched", "nats_store"] {
        assert_complete(&report[side]);
    }
    // Without a terminal the progress is one line per phase, sixteen phases in all.
    for phase in [
        "[1/16] west: start",
        "[4/16] west: catch-up",
        "[8/16] nats: catch-up",
        "[12/16] nats ×100: catch-up",
        "[16/16] nats ×100 + SQLite: catch-up",
    ] {
        assert!(stderr.contains(phase), "no {phase:?} in stderr: {stderr}");
    }
    Ok(())
}

#[tokio::test]
async fn bench_devices_posts_every_reading_on_both_sides() -> anyhow::Result<()> {
    let (report, _) = run(&["devices", "--devices", "10", "--readings", "10", "--nats"]).await?;
    let mut keys: Vec<String> = [
        "replicated_points_per_s",
        "__source_ingest_alone_points_per_s",
        "request_latency_p50_ms",
        "request_latency_p99_ms",
        "disk_written_per_point_site_a_B",
        "disk_written_per_point_site_b_B",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // CPU seconds of so short a run may round to 0 clock ticks: only the peak RSS here.
    for p in ["hub", "site_a", "site_b", "client"] {
        keys.push(format!("peak_RSS_{p}_MiB"));
    }
    for side in ["west", "nats"] {
        assert_positive(&report[side], &keys);
        assert_eq!(report[side]["points_published_points"], 100.0, "{report}");
    }
    Ok(())
}

#[tokio::test]
async fn bench_scale_reports_each_fleet_size() -> anyhow::Result<()> {
    let (report, _) = run(&[
        "scale",
        "--fleets",
        "10,20",
        "--points",
        "2000",
        "--seconds",
        "1",
        "--rate",
        "1000",
    ])
    .await?;
    let keys: Vec<String> = ["10", "20"]
        .iter()
        .flat_map(|n| {
            [
                format!("replicated_{n}_devices_points_per_s"),
                format!("latency_p50_{n}_devices_ms"),
                format!("latency_p99_{n}_devices_ms"),
                format!("disk_written_per_point_site_b_{n}_devices_B"),
            ]
        })
        .collect();
    assert_positive(&report, &keys);
    Ok(())
}

#[tokio::test]
async fn bench_cluster_compares_one_hub_with_three_nodes_and_times_every_failover()
-> anyhow::Result<()> {
    let (report, _) = run(&[
        "cluster",
        "--points",
        "3000",
        "--devices",
        "20",
        "--rate",
        "1000",
        "--seconds",
        "1",
        "--kills",
        "2",
    ])
    .await?;
    let mut keys: Vec<String> = [
        "replicated_ratio_3_nodes_to_one_hub_x",
        "failover_p50_ms",
        "failover_p99_ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for side in ["one_hub", "3_nodes"] {
        for row in ["replicated", "source_ingest_alone"] {
            keys.push(format!("{row}_{side}_points_per_s"));
        }
        for row in ["latency_p50", "latency_p99"] {
            keys.push(format!("{row}_{side}_ms"));
        }
    }
    assert_positive(&report, &keys);
    // What the cluster adds may be negative; it must be there.
    for key in [
        "latency_p50_added_by_3_nodes_ms",
        "latency_p99_added_by_3_nodes_ms",
    ] {
        assert!(report[key].is_number(), "{key} missing: {report}");
    }
    // Both kills happened, and the stream moved again after each.
    assert_eq!(report["failover_kills_kills"], 2.0, "{report}");
    Ok(())
}

#[tokio::test]
async fn bench_read_reads_the_whole_series_and_every_latest_value() -> anyhow::Result<()> {
    let (report, _) = run(&[
        "read",
        "--points",
        "3000",
        "--devices",
        "30",
        "--page",
        "1000",
        "--repeat",
        "2",
    ])
    .await?;
    let keys: Vec<String> = [
        "read_series_median_ms",
        "read_series_points_per_s",
        "latest_values_median_ms",
        "latest_values_devices_per_s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_positive(&report, &keys);
    // 3,000 points in pages of 1,000: the last page says no more.
    assert_eq!(report["read_series_pages_pages"], 3.0, "{report}");
    Ok(())
}
