//! `west hub`: run the Connectivity Hub, or manage its site registry (`add-site`,
//! `remove-site`, `list-sites`), configured by flags, `WEST_*` environment and an optional
//! TOML file.
//!
//! The registry commands write `hub.db` directly; they work while the hub runs (SQLite WAL),
//! and a running hub cuts a removed site off within half a second. With `--cluster
//! nats://…` (or `WEST_CLUSTER`) the hub runs as one node of a cluster and the registry
//! commands write the cluster's JetStream bucket instead, from any machine that reaches NATS;
//! the node holding a removed site cuts it off at once.
//!
//! Output contract (tests and scripts parse it): `hub listening on wss://ADDR` on stdout once
//! the port is open; `add-site` prints the credential alone on its last line of stdout.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use hub::{ClusterConfig, ClusterRegistry, HubConfig, Registry, SiteEntry, TlsSource};
use serde::Deserialize;

use crate::config;

#[derive(Args)]
pub struct HubArgs {
    #[command(subcommand)]
    action: Option<HubAction>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum HubAction {
    /// Register a site and print its one-time credential (alone, on the last line).
    AddSite(SiteArgs),
    /// Remove a site: its credential stops working and a running hub cuts it off at once.
    RemoveSite(SiteArgs),
    /// List the registered sites.
    ListSites(DirArgs),
}

#[derive(Args)]
struct SiteArgs {
    /// The site's name, as it will pass `--name` to `west site`.
    name: String,
    #[command(flatten)]
    dir: DirArgs,
}

#[derive(Args)]
struct DirArgs {
    /// Directory of the hub's registry [default: ./west-data/hub].
    #[arg(long, env = "WEST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// NATS URLs of a hub cluster (comma-separated): manage its registry instead of hub.db.
    /// Put credentials for NATS in the environment (WEST_CLUSTER), not on the command line.
    #[arg(long, env = "WEST_CLUSTER")]
    cluster: Option<String>,
    /// TOML file with `data_dir` (flag and environment win over it).
    #[arg(long, env = "WEST_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// Address of the TLS listener [default: 127.0.0.1:7443]; port 0 picks a free one.
    #[arg(long, env = "WEST_LISTEN")]
    listen: Option<String>,
    /// Directory of the hub's registry and self-signed certificate [default: ./west-data/hub].
    #[arg(long, env = "WEST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// PEM certificate chain to present; without it the hub makes a self-signed one.
    #[arg(long, env = "WEST_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "WEST_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Extra DNS names or IP addresses of the self-signed certificate (besides localhost,
    /// 127.0.0.1 and ::1); only used when it is first made.
    #[arg(long, env = "WEST_TLS_NAMES", value_delimiter = ',')]
    tls_name: Vec<String>,
    /// How often sites ping the hub [default: 2s].
    #[arg(long, env = "WEST_HEARTBEAT", value_parser = config::parse_duration)]
    heartbeat: Option<Duration>,
    /// A site silent for this long is disconnected as dead [default: 3 heartbeats].
    #[arg(long, env = "WEST_SILENT_AFTER", value_parser = config::parse_duration)]
    silent_after: Option<Duration>,
    /// Serve /metrics and per-site /health to any client, not only loopback ones.
    #[arg(long, env = "WEST_METRICS_PUBLIC")]
    metrics_public: bool,
    /// Connections open at once, sites' links included; more are closed [default: 10000].
    #[arg(long, env = "WEST_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Run as one node of a hub cluster on NATS (comma-separated URLs): the registry lives in
    /// NATS JetStream and frames for sites on other nodes go through NATS. Put credentials for
    /// NATS in the environment (WEST_CLUSTER), not on the command line.
    #[arg(long, env = "WEST_CLUSTER")]
    cluster: Option<String>,
    /// This node's name in the cluster [default: HOSTNAME-PORT].
    #[arg(long, env = "WEST_NODE_NAME", requires = "cluster")]
    node_name: Option<String>,
    /// Replicas of the registry bucket if this node creates it [default: 3 if the NATS
    /// cluster allows, else 1].
    #[arg(long, env = "WEST_KV_REPLICAS", requires = "cluster")]
    kv_replicas: Option<usize>,
    /// TOML file with any of the settings above (flag and environment win over it).
    #[arg(long, env = "WEST_CONFIG")]
    config: Option<PathBuf>,
}

/// The TOML file's shape: the same settings as the flags, all optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_names: Option<Vec<String>>,
    heartbeat: Option<String>,
    silent_after: Option<String>,
    metrics_public: Option<bool>,
    cluster: Option<String>,
    node_name: Option<String>,
    kv_replicas: Option<usize>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("west-data").join("hub")
}

pub async fn run(args: HubArgs) -> anyhow::Result<()> {
    match args.action {
        None => serve(args.serve).await,
        Some(HubAction::AddSite(a)) => {
            let registry = open_registry(a.dir).await?;
            let credential = registry
                .add_site(&a.name)
                .await
                .with_context(|| format!("adding site {}", a.name))?;
            say!(
                "site {} registered; start it with --name {} --site-credential and this credential (shown once):",
                a.name,
                a.name
            );
            say!("{credential}");
            Ok(())
        }
        Some(HubAction::RemoveSite(a)) => {
            let registry = open_registry(a.dir).await?;
            registry
                .remove_site(&a.name)
                .await
                .with_context(|| format!("removing site {}", a.name))?;
            say!("site {} removed; a running hub cuts it off at once", a.name);
            Ok(())
        }
        Some(HubAction::ListSites(dir)) => {
            let registry = open_registry(dir).await?;
            for s in registry.list_sites().await.context("listing sites")? {
                let state = if s.active { "active" } else { "removed" };
                say!("{}\t{state}\tgeneration {}", s.name, s.generation);
            }
            Ok(())
        }
    }
}

/// The registry the commands manage: `hub.db`, or a cluster's bucket.
enum AnyRegistry {
    Local(Registry),
    Cluster(Box<ClusterRegistry>),
}

impl AnyRegistry {
    async fn add_site(&self, name: &str) -> Result<String, hub::RegistryError> {
        match self {
            AnyRegistry::Local(r) => r.add_site(name),
            AnyRegistry::Cluster(r) => r.add_site(name).await,
        }
    }

    async fn remove_site(&self, name: &str) -> Result<(), hub::RegistryError> {
        match self {
            AnyRegistry::Local(r) => r.remove_site(name),
            AnyRegistry::Cluster(r) => r.remove_site(name).await,
        }
    }

    async fn list_sites(&self) -> Result<Vec<SiteEntry>, hub::RegistryError> {
        match self {
            AnyRegistry::Local(r) => r.list_sites(),
            AnyRegistry::Cluster(r) => r.list_sites().await,
        }
    }
}

async fn open_registry(args: DirArgs) -> anyhow::Result<AnyRegistry> {
    let file: FileConfig = config::load(args.config.as_deref())?;
    if let Some(servers) = args.cluster.or(file.cluster) {
        let client = hub::cluster::connect_once(&servers).await?;
        let registry = ClusterRegistry::open(&client, file.kv_replicas)
            .await
            .context("opening the cluster's registry")?;
        return Ok(AnyRegistry::Cluster(Box::new(registry)));
    }
    let dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating data dir {}", dir.display()))?;
    Registry::open(&dir)
        .map(AnyRegistry::Local)
        .with_context(|| format!("opening the registry in {}", dir.display()))
}

/// `HOSTNAME-PORT`, with anything a node name may not hold replaced by `-`.
fn default_node_name(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "hub".into());
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!("{}-{port}", if host.is_empty() { "hub" } else { &host })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file: FileConfig = config::load(args.config.as_deref())?;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:7443".into());
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(default_data_dir);
    let mut cfg = HubConfig::new(data_dir);
    cfg.tls = match (
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    ) {
        (Some(cert), Some(key)) => TlsSource::Files { cert, key },
        (None, None) => TlsSource::SelfSigned {
            names: if args.tls_name.is_empty() {
                file.tls_names.unwrap_or_default()
            } else {
                args.tls_name
            },
        },
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    let file_duration = |v: Option<String>, what: &str| -> anyhow::Result<Option<Duration>> {
        v.map(|s| config::parse_duration(&s).map_err(|e| anyhow::anyhow!("{what}: {e}")))
            .transpose()
    };
    if let Some(h) = args
        .heartbeat
        .or(file_duration(file.heartbeat, "heartbeat")?)
    {
        anyhow::ensure!(
            h >= Duration::from_millis(100),
            "--heartbeat must be at least 100ms"
        );
        cfg.heartbeat = h;
        cfg.silent_after = h * 3;
    }
    if let Some(s) = args
        .silent_after
        .or(file_duration(file.silent_after, "silent_after")?)
    {
        cfg.silent_after = s;
    }
    anyhow::ensure!(
        cfg.silent_after > cfg.heartbeat,
        "--silent-after must be longer than --heartbeat"
    );
    cfg.status_public = args.metrics_public || file.metrics_public.unwrap_or(false);
    if let Some(n) = args.max_connections {
        anyhow::ensure!(n > 0, "--max-connections must be at least 1");
        cfg.max_connections = n;
    }

    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding the hub listener on {listen}"))?;
    let addr = listener.local_addr().context("reading the hub's address")?;
    if let Some(servers) = args.cluster.or(file.cluster) {
        let node = args
            .node_name
            .or(file.node_name)
            .unwrap_or_else(|| default_node_name(addr.port()));
        anyhow::ensure!(
            proto::wire::is_valid_name(&node),
            "--node-name {node:?}: use 1 to 64 of a-z A-Z 0-9 . _ -"
        );
        cfg.cluster = Some(ClusterConfig {
            servers,
            node,
            replicas: args.kv_replicas.or(file.kv_replicas),
        });
    }
    crate::perms::warn_if_loose(&cfg.data_dir, &["hub.db", "hub-key.pem"]);
    let prepared = hub::prepare(cfg)?;
    if prepared.tls.generated {
        say!(
            "hub made a self-signed certificate; give it to sites as --hub-ca: {}",
            prepared.tls.cert_path.display()
        );
    }
    say!("hub listening on wss://{addr}");
    hub::serve(listener, prepared, crate::shutdown_signal()).await?;
    Ok(())
}
