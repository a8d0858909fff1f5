//! What an operator's monitoring reads: every `/metrics` endpoint passes
//! `promtool check metrics` (HELP on every metric, sane names and types), and the shipped
//! alerting rules and Grafana dashboard load and name only metrics that really exist.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::util;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path)
}

/// Runs `promtool ARGS` with `stdin`; returns its exit success and everything it printed.
async fn promtool(args: &[&str], stdin: &str) -> anyhow::Result<(bool, String)> {
    let mut child = tokio::process::Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("running promtool (apt-get install prometheus): {e}"))?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// Metric family names of a text exposition (from its TYPE lines).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Every `west_…` metric name an expression mentions (histogram suffixes stripped).
fn mentioned(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("west_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn every_metrics_endpoint_passes_promtool_and_the_rules_name_real_metrics()
-> anyhow::Result<()> {
    let (hub, sites, cid, _tid) = util::paired_sites().await?;
    let a = sites[0].admin().await?;
    // A point through the pairing, so that ingest and sync metrics exist on both sides.
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/resources"),
        serde_json::json!({ "name": "temperature", "format": "number" }),
    )
    .await?;
    // The alarm evaluator publishes `west_alarm_active` of a pairing at its first look.
    for site in &sites {
        let api = site.admin().await?;
        testkit::eventually("west_alarm_active", testkit::DEADLINE, || async {
            let (_, text) = api.get("/metrics").await?;
            let text = text.as_str().unwrap_or_default().to_owned();
            Ok(text.contains("west_alarm_active{").then_some(()))
        })
        .await?;
    }
    let mut exposed = BTreeSet::new();
    for site in &sites {
        let api = site.admin().await?;
        let (status, body) = api.get("/metrics").await?;
        assert_eq!(status.as_u16(), 200);
        let text = body.as_str().unwrap_or_default().to_owned();
        let (ok, said) = promtool(&["check", "metrics"], &text).await?;
        assert!(
            ok && said.trim().is_empty(),
            "{}: promtool says:\n{said}\n{text}",
            site.opts.name
        );
        exposed.extend(families(&text));
    }
    let text = hub.metrics().await?;
    let (ok, said) = promtool(&["check", "metrics"], &text).await?;
    assert!(
        ok && said.trim().is_empty(),
        "hub: promtool says:\n{said}\n{text}"
    );
    exposed.extend(families(&text));

    let rules = std::fs::read_to_string(deploy("prometheus/west-alerts.yml"))?;
    let path = deploy("prometheus/west-alerts.yml");
    let (ok, said) = promtool(&["check", "rules", &path.display().to_string()], "").await?;
    assert!(ok, "promtool check rules:\n{said}");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(deploy(
        "grafana/west-dashboard.json",
    ))?)?;
    let mut exprs = vec![rules];
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap_or_default().to_owned());
        }
    }
    let unknown: Vec<String> = exprs
        .iter()
        .flat_map(|e| mentioned(e))
        .filter(|m| !exposed.contains(m))
        .collect();
    assert!(
        unknown.is_empty(),
        "rules or dashboard name metrics no endpoint exposes: {unknown:?}"
    );
    Ok(())
}
