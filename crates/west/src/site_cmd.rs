//! `west site`: one deployment, configured by flags, `WEST_*` environment and an optional
//! TOML file.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Deserialize;
use site::{Credential, LinkConfig, SiteConfig};
use store::Synchronous;

use crate::config;

#[derive(Args)]
pub struct SiteArgs {
    /// The site's name, unique on its hub [default: site].
    #[arg(long, env = "WEST_NAME")]
    name: Option<String>,
    /// Directory of the site's database [default: ./west-data/site].
    #[arg(long, env = "WEST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the web UI and API [default: 127.0.0.1:8080]; port 0 picks a free one.
    #[arg(long, env = "WEST_HTTP")]
    http: Option<String>,
    /// The hub's URL, e.g. wss://hub.example.com:7443.
    #[arg(long, env = "WEST_HUB")]
    hub: Option<String>,
    /// The credential `west hub add-site` printed for this site.
    #[arg(long, env = "WEST_SITE_CREDENTIAL", hide_env_values = true)]
    site_credential: Option<String>,
    /// A file holding the site's credential (its first line). Read before every connection
    /// attempt: a corrected credential is picked up without a restart, within a second
    /// while the hub refuses the old one, or at once on SIGHUP.
    #[arg(
        long,
        env = "WEST_SITE_CREDENTIAL_FILE",
        conflicts_with = "site_credential"
    )]
    site_credential_file: Option<PathBuf>,
    /// PEM certificate the hub presents (its self-signed `hub-cert.pem`, or its CA).
    #[arg(long, env = "WEST_HUB_CA")]
    hub_ca: Option<PathBuf>,
    /// Password of user `admin` on first start; generated and printed once if absent.
    #[arg(long, env = "WEST_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// How long undelivered data is kept for the peer [default: 30d].
    #[arg(long, env = "WEST_RETENTION", value_parser = config::parse_duration)]
    retention: Option<std::time::Duration>,
    /// Most MiB of undelivered data kept per Source connector; beyond it the oldest is
    /// dropped and reported as a gap [default: no budget, only --retention].
    #[arg(long, env = "WEST_SYNC_DISK_BUDGET_MIB")]
    sync_disk_budget_mib: Option<u64>,
    /// TEST ONLY: a file holding a number of seconds the site adds to its wall clock for
    /// retention and outbox partitions, so that tests can jump past the retention.
    #[arg(long, hide = true)]
    test_clock_offset_file: Option<PathBuf>,
    /// How long a pairing code stays valid [default: 10m].
    #[arg(long, env = "WEST_PAIRING_WINDOW", value_parser = config::parse_duration)]
    pairing_window: Option<std::time::Duration>,
    /// Serve /metrics without a token.
    #[arg(long, env = "WEST_METRICS_PUBLIC")]
    metrics_public: bool,
    /// Commit durability: `normal` survives a crash of the process, `full` a power cut too.
    #[arg(long, env = "WEST_SYNCHRONOUS", value_enum)]
    synchronous: Option<SyncMode>,
    /// TOML file with any of the settings above (flag and environment win over it).
    #[arg(long, env = "WEST_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SyncMode {
    Normal,
    Full,
}

/// The TOML file's shape: the same settings as the flags, all optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    name: Option<String>,
    data_dir: Option<PathBuf>,
    http: Option<String>,
    hub: Option<String>,
    site_credential: Option<String>,
    site_credential_file: Option<PathBuf>,
    hub_ca: Option<PathBuf>,
    admin_password: Option<String>,
    metrics_public: Option<bool>,
    synchronous: Option<SyncMode>,
}

pub async fn run(args: SiteArgs) -> anyhow::Result<()> {
    let file: FileConfig = config::load(args.config.as_deref())?;
    let name = args.name.or(file.name).unwrap_or_else(|| "site".into());
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("west-data").join(&name));
    let http = args
        .http
        .or(file.http)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let mut cfg = SiteConfig::new(name, data_dir);
    cfg.admin_password = args.admin_password.or(file.admin_password);
    if let Some(w) = args.pairing_window {
        cfg.pairing_window = w;
    }
    if let Some(r) = args.retention {
        anyhow::ensure!(!r.is_zero(), "--retention must be longer than zero");
        cfg.sync.retention = r;
    }
    cfg.sync.disk_budget = args.sync_disk_budget_mib.map(|m| m.saturating_mul(1 << 20));
    if let Some(path) = args.test_clock_offset_file {
        cfg.sync.clock = site::remote::status::offset_clock(path);
    }
    cfg.metrics_public = args.metrics_public || file.metrics_public.unwrap_or(false);
    cfg.synchronous = match args.synchronous.or(file.synchronous) {
        Some(SyncMode::Full) => Synchronous::Full,
        _ => Synchronous::Normal,
    };
    let credential = match (args.site_credential, args.site_credential_file) {
        (Some(c), _) => Some(Credential::Value(c)),
        (None, Some(f)) => Some(Credential::File(f)),
        (None, None) => match (file.site_credential, file.site_credential_file) {
            (Some(_), Some(_)) => anyhow::bail!(
                "the config file sets both site_credential and site_credential_file; keep one"
            ),
            (Some(c), None) => Some(Credential::Value(c)),
            (None, f) => f.map(Credential::File),
        },
    };
    cfg.hub = match (args.hub.or(file.hub), credential) {
        (Some(url), Some(credential)) => {
            // A missing or empty file is an operator's slip to show, not a reason to refuse
            // to start: the link reports it and keeps trying. Say so at once all the same.
            if let Err(why) = credential.read() {
                tracing::warn!("{why}; the site starts and keeps trying");
            }
            Some(LinkConfig {
                url,
                credential,
                ca_pem: args.hub_ca.or(file.hub_ca),
            })
        }
        (Some(_), None) => anyhow::bail!(
            "--hub needs --site-credential-file or --site-credential (from `west hub add-site`)"
        ),
        (None, Some(_)) => anyhow::bail!("a site credential needs --hub"),
        (None, None) => None,
    };

    let listener = tokio::net::TcpListener::bind(&http)
        .await
        .with_context(|| format!("binding the HTTP listener on {http}"))?;
    let addr = listener.local_addr().context("reading the HTTP address")?;
    let prepared = site::prepare(&cfg).await?;
    if let Some(password) = &prepared.generated_admin_password {
        say!("admin password (shown once): {password}");
    }
    say!("site {} listening on http://{addr}", cfg.name);
    retry_link_on_sighup(prepared.state.link.clone());
    site::serve(listener, prepared, crate::shutdown_signal()).await
}

/// SIGHUP asks the hub link to try again now (after correcting the credential file, say).
fn retry_link_on_sighup(link: site::link::Link) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: the hub link tries again now");
            link.retry_now();
        }
    });
    #[cfg(not(unix))]
    let _ = link;
}
