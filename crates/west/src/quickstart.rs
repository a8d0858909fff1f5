//! `west quickstart`: the whole system on one machine with embedded defaults. A hub and two
//! sites (`site-a`, `site-b`) run as child processes of this one, on loopback, with their
//! data under `./west-data`; a demo connector on site-a is paired as Source with a Target on
//! site-b, and simulated devices write drifting sensor values into it until Ctrl-C.
//!
//! Re-running reuses the data dir: the admin password, the sites' credentials and the
//! paired connectors are remembered in `west-data/quickstart.json`, so the second start
//! only starts the processes and the simulated devices again.
//!
//! The children never outlive this process: Ctrl-C or SIGTERM stops the sites, then the
//! hub; any other end (a panic, SIGKILL) still reaches them, because `launch` spawns every
//! child with a parent-death signal (SIGTERM, `prctl(PR_SET_PDEATHSIG)` on Linux) and
//! `kill_on_drop`. Children are spawned from the runtime's own threads, which live as long as
//! the process, never from a `spawn_blocking` thread (the signal follows the spawning thread).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use launch::{Api, DEADLINE, SiteOpts, SiteProc, WestProc, eventually};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Args)]
pub struct QuickstartArgs {
    /// Where everything is stored.
    #[arg(long, env = "WEST_DATA_DIR", default_value = "west-data")]
    data_dir: PathBuf,
    /// Port of the hub on 127.0.0.1 (0 picks a free one, as do the site ports).
    #[arg(long, default_value_t = 7443)]
    hub_port: u16,
    /// Port of site-a's web UI and API on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    port_a: u16,
    /// Port of site-b's web UI and API on 127.0.0.1.
    #[arg(long, default_value_t = 8081)]
    port_b: u16,
    /// Simulated devices on the demo connector.
    #[arg(long, default_value_t = 20)]
    devices: u32,
    /// Seconds between two readings of each simulated device.
    #[arg(long, default_value_t = 2)]
    every: u64,
}

/// What a re-run needs to find everything again.
#[derive(Serialize, Deserialize, Default)]
struct Remembered {
    admin_password: String,
    credentials: std::collections::BTreeMap<String, String>,
    source_connector: Option<String>,
    target_connector: Option<String>,
}

const SITES: [&str; 2] = ["site-a", "site-b"];

pub async fn run(args: QuickstartArgs) -> anyhow::Result<()> {
    let bin = std::env::current_exe().context("finding the west binary")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let memory_path = args.data_dir.join("quickstart.json");
    crate::perms::warn_if_loose(&args.data_dir, &["quickstart.json"]);
    let mut memory: Remembered = match std::fs::read_to_string(&memory_path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("reading {}", memory_path.display()))?,
        Err(_) => Remembered {
            admin_password: site::auth::generate_password(),
            ..Default::default()
        },
    };
    let hub_dir = args.data_dir.join("hub");
    for name in SITES {
        if !memory.credentials.contains_key(name) {
            let credential = add_site(&bin, &hub_dir, name).await?;
            memory.credentials.insert(name.to_owned(), credential);
        }
    }
    save(&memory_path, &memory)?;

    say!(
        "Starting the hub and two sites under {} …",
        args.data_dir.display()
    );
    let hub_addr = format!("127.0.0.1:{}", args.hub_port);
    let hub_args: Vec<String> = vec![
        "hub".into(),
        "--listen".into(),
        hub_addr.clone(),
        "--data-dir".into(),
        hub_dir.display().to_string(),
    ];
    let mut hub = WestProc::spawn(&bin, &hub_args, &[], &args.data_dir.join("hub.log"))?;
    let line = hub
        .wait_line("hub listening on wss://")
        .await
        .context("starting the hub")?;
    let hub_url = line
        .split_whitespace()
        .last()
        .context("no address in the hub's listening line")?
        .to_owned();
    let ca = hub_dir.join("hub-cert.pem");

    let mut sites = Vec::new();
    for (name, port) in [("site-a", args.port_a), ("site-b", args.port_b)] {
        let mut opts = SiteOpts::new(name);
        opts.admin_password = memory.admin_password.clone();
        // Secrets in a private file (the process runs with umask 077), never on a command
        // line that every local user can read.
        let site_dir = args.data_dir.join(name);
        std::fs::create_dir_all(&site_dir)
            .with_context(|| format!("creating {}", site_dir.display()))?;
        let credential_file = site_dir.join("hub-credential");
        std::fs::write(&credential_file, format!("{}\n", memory.credentials[name]))
            .with_context(|| format!("writing {}", credential_file.display()))?;
        opts.extra = vec![
            "--hub".into(),
            hub_url.clone(),
            "--site-credential-file".into(),
            credential_file.display().to_string(),
            "--hub-ca".into(),
            ca.display().to_string(),
        ];
        let site = SiteProc::start_in(
            &bin,
            opts,
            &args.data_dir.join(name),
            &format!("127.0.0.1:{port}"),
        )
        .await
        .with_context(|| format!("starting {name}"))?;
        wait_connected(&site).await?;
        sites.push(site);
    }
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);

    let source = match &memory.source_connector {
        Some(cid) => cid.clone(),
        None => {
            let (source, target) = set_up_demo(&a, &b, args.devices).await?;
            memory.source_connector = Some(source.clone());
            memory.target_connector = Some(target);
            save(&memory_path, &memory)?;
            source
        }
    };

    say!();
    say!("West Remote Sync is running.");
    say!("  site-a (Source): {}", sites[0].url);
    say!("  site-b (Target): {}", sites[1].url);
    say!("  sign in as admin / {}", memory.admin_password);
    say!(
        "  demo connector {source} on site-a: {} simulated devices, temperature synced to site-b",
        args.devices
    );
    say!(
        "Logs: {}/*.log. Press Ctrl-C to stop.",
        args.data_dir.display()
    );

    tokio::select! {
        r = simulate(&a, &source, args.devices, Duration::from_secs(args.every.max(1))) => r?,
        () = crate::shutdown_signal() => {}
    }
    // Sites first, so that they never see their hub vanish while they still run.
    for site in &mut sites {
        site.proc.terminate(Duration::from_secs(10)).await?;
    }
    hub.terminate(Duration::from_secs(10)).await?;
    say!("Stopped. Run `west quickstart` again to continue where this left off.");
    Ok(())
}

fn save(path: &Path, memory: &Remembered) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(memory)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

async fn add_site(bin: &Path, hub_dir: &Path, name: &str) -> anyhow::Result<String> {
    let run = |verb: &'static str| {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["hub", verb, name, "--data-dir"])
            .arg(hub_dir)
            .kill_on_drop(true);
        launch::process::die_with_parent(&mut cmd);
        cmd.output()
    };
    let mut out = run("add-site").await.context("running west hub add-site")?;
    if !out.status.success() {
        // Registered by an earlier run whose quickstart.json is gone: register anew.
        let _ = run("remove-site").await;
        out = run("add-site").await.context("running west hub add-site")?;
    }
    if !out.status.success() {
        bail!(
            "west hub add-site {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .context("add-site printed no credential")
}

async fn wait_connected(site: &SiteProc) -> anyhow::Result<()> {
    let api = Api::new(&site.url);
    eventually("the site to join the hub", DEADLINE, || async {
        let h = api.get_ok("/health").await?;
        Ok((h["hub"]["connected"] == true).then_some(()))
    })
    .await
}

fn id(v: &Value) -> anyhow::Result<String> {
    v["id"]
        .as_str()
        .map(str::to_owned)
        .context("answer has no id")
}

/// The demo: a connector with three resources and simulated devices on site-a, paired as
/// Source with a Target on site-b that has the synced resource.
async fn set_up_demo(a: &Api, b: &Api, devices: u32) -> anyhow::Result<(String, String)> {
    let c = a
        .post_ok(
            "/api/v1/connectors",
            json!({"name": "demo-plant", "description": "Simulated boiler room sensors"}),
        )
        .await?;
    let source = id(&c)?;
    let res = format!("/api/v1/connectors/{source}/resources");
    a.post_ok(
        &res,
        json!({"name": "temperature", "format": "number", "unit": "°C", "remote_sync": true}),
    )
    .await?;
    a.post_ok(
        &res,
        json!({"name": "humidity", "format": "number", "unit": "%"}),
    )
    .await?;
    a.post_ok(
        &res,
        json!({"name": "valve", "format": "boolean", "settable": true}),
    )
    .await?;
    for d in 0..devices {
        a.post_ok(
            &format!("/api/v1/connectors/{source}/devices"),
            json!({"identity": device_name(d),
                   "tags": {"room": if d % 2 == 0 { "boiler" } else { "pump" }}}),
        )
        .await?;
    }
    let e = a
        .post_ok(
            &format!("/api/v1/connectors/{source}/remote-sync/enable"),
            json!({}),
        )
        .await?;
    let code = e["pairing_code"]
        .as_str()
        .context("enable answered no code")?;
    let t = b
        .post_ok(
            "/api/v1/connectors",
            json!({"name": "demo-plant (from site-a)",
                   "remote_sync_target": {"remote_site": "site-a",
                                          "remote_connector_id": source,
                                          "pairing_code": code}}),
        )
        .await
        .context("pairing the demo connector")?;
    let target = id(&t)?;
    b.post_ok(
        &format!("/api/v1/connectors/{target}/resources"),
        json!({"name": "temperature", "format": "number", "unit": "°C"}),
    )
    .await?;
    Ok((source, target))
}

fn device_name(d: u32) -> String {
    format!("sensor-{d:03}")
}

/// Writes one reading per device every `every`, values drifting like real sensors.
async fn simulate(api: &Api, cid: &str, devices: u32, every: Duration) -> anyhow::Result<()> {
    let path = format!("/api/v1/connectors/{cid}/data");
    let mut tick = tokio::time::interval(every);
    let mut step: u64 = 0;
    loop {
        tick.tick().await;
        let body: Vec<Value> = (0..devices)
            .map(|d| {
                let t = crate::bench::ingest::sensor_value(u64::from(d), step);
                let h = 40.0 + (t - 20.0) * 2.0;
                json!({"device": device_name(d),
                       "values": {"temperature": t, "humidity": (h * 10.0).round() / 10.0}})
            })
            .collect();
        if let Err(e) = api.post_ok(&path, Value::Array(body)).await {
            say!("simulated devices: {e:#}");
        }
        step += 1;
    }
}
