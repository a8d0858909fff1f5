//! `west hub`: run the Connectivity Hub, or manage its site registry (`add-site`,
//! `remove-site`, `list-sites`), configured by flags, `WEST_*` environment and an optional
//! TOML file. Every setting is all three: the flag `--max-connections`, the variable
//! `WEST_MAX_CONNECTIONS` and the key `max_connections` (tests below keep it so).
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
    /// (`--tls-name`, the old spelling, still works.)
    #[arg(
        long,
        visible_alias = "tls-name",
        env = "WEST_TLS_NAMES",
        value_delimiter = ','
    )]
    tls_names: Vec<String>,
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
    max_connections: Option<usize>,
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

/// A cluster node's settings before the listener is bound (the default node name needs
/// its port).
struct ClusterChoice {
    servers: String,
    node: Option<String>,
    replicas: Option<usize>,
}

/// The hub's configuration, listen address and cluster choice from flags and environment
/// (`args`) over the file over the defaults; checks without I/O.
fn resolve(
    args: ServeArgs,
    file: FileConfig,
) -> anyhow::Result<(HubConfig, String, Option<ClusterChoice>)> {
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
            names: if args.tls_names.is_empty() {
                file.tls_names.unwrap_or_default()
            } else {
                args.tls_names
            },
        },
        _ => anyhow::bail!("tls_cert and tls_key go together: give both or neither"),
    };
    let file_duration = |v: Option<String>, key: &str| -> anyhow::Result<Option<Duration>> {
        v.map(|s| config::parse_duration(&s).map_err(|e| anyhow::anyhow!("config key {key}: {e}")))
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
    if let Some(n) = args.max_connections.or(file.max_connections) {
        anyhow::ensure!(n > 0, "--max-connections must be at least 1");
        cfg.max_connections = n;
    }
    let node = args.node_name.or(file.node_name);
    let replicas = args.kv_replicas.or(file.kv_replicas);
    let cluster = args.cluster.or(file.cluster).map(|servers| ClusterChoice {
        servers,
        node,
        replicas,
    });
    Ok((cfg, listen, cluster))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file: FileConfig = config::load(args.config.as_deref())?;
    let (mut cfg, listen, cluster) = resolve(args, file)?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding the hub listener on {listen}"))?;
    let addr = listener.local_addr().context("reading the hub's address")?;
    if let Some(c) = cluster {
        let node = c.node.unwrap_or_else(|| default_node_name(addr.port()));
        anyhow::ensure!(
            proto::wire::is_valid_name(&node),
            "--node-name {node:?}: use 1 to 64 of a-z A-Z 0-9 . _ -"
        );
        cfg.cluster = Some(ClusterConfig {
            servers: c.servers,
            node,
            replicas: c.replicas,
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        hub: HubArgs,
    }

    /// A file holding every setting of `west hub`, none of them its default;
    /// `tls_cert`/`tls_key`, which exclude `tls_names`, are checked on their own below.
    const EVERY_KEY: &str = r#"
        listen = "0.0.0.0:8443"
        data_dir = "/var/lib/west/hub"
        tls_names = ["hub.example.com", "10.0.0.7"]
        heartbeat = "5s"
        silent_after = "30s"
        metrics_public = true
        max_connections = 64
        cluster = "nats://n1:4222,nats://n2:4222"
        node_name = "hub-1"
        kv_replicas = 1
    "#;

    #[test]
    fn every_setting_is_a_flag_a_variable_and_a_key() {
        config::tests::assert_flags_variables_and_keys(
            &Cli::command(),
            EVERY_KEY,
            &["tls_cert", "tls_key"],
        );
    }

    #[test]
    fn a_file_holding_every_setting_configures_the_hub() {
        let file: FileConfig = toml::from_str(EVERY_KEY).unwrap();
        let args = Cli::try_parse_from(["west"]).unwrap().hub.serve;
        let (cfg, listen, cluster) = resolve(args, file).unwrap();
        assert_eq!(listen, "0.0.0.0:8443");
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/west/hub"));
        assert!(
            matches!(&cfg.tls, TlsSource::SelfSigned { names } if names == &["hub.example.com", "10.0.0.7"])
        );
        assert_eq!(cfg.heartbeat, Duration::from_secs(5));
        assert_eq!(cfg.silent_after, Duration::from_secs(30));
        assert!(cfg.status_public);
        assert_eq!(cfg.max_connections, 64);
        let cluster = cluster.expect("a cluster");
        assert_eq!(cluster.servers, "nats://n1:4222,nats://n2:4222");
        assert_eq!(cluster.node.as_deref(), Some("hub-1"));
        assert_eq!(cluster.replicas, Some(1));
    }

    #[test]
    fn a_certificate_may_be_named_in_the_file() {
        let file: FileConfig =
            toml::from_str("tls_cert = \"/etc/west/hub.pem\"\ntls_key = \"/etc/west/hub-key.pem\"")
                .unwrap();
        let args = Cli::try_parse_from(["west"]).unwrap().hub.serve;
        let (cfg, _, _) = resolve(args, file).unwrap();
        assert!(matches!(&cfg.tls, TlsSource::Files { cert, key }
            if cert == std::path::Path::new("/etc/west/hub.pem")
                && key == std::path::Path::new("/etc/west/hub-key.pem")));
        let half: FileConfig = toml::from_str("tls_cert = \"/etc/west/hub.pem\"").unwrap();
        let args = Cli::try_parse_from(["west"]).unwrap().hub.serve;
        assert!(
            resolve(args, half).is_err(),
            "a certificate without its key"
        );
    }

    #[test]
    fn a_flag_wins_over_the_file() {
        let file: FileConfig = toml::from_str(EVERY_KEY).unwrap();
        let args = Cli::try_parse_from(["west", "--heartbeat", "1s", "--max-connections", "9"])
            .unwrap()
            .hub
            .serve;
        let (cfg, _, _) = resolve(args, file).unwrap();
        assert_eq!(cfg.heartbeat, Duration::from_secs(1));
        assert_eq!(cfg.max_connections, 9);
    }

    #[test]
    fn bad_keys_and_values_are_refused_by_name() {
        let Err(err) = toml::from_str::<FileConfig>("heartbeat_ms = 3") else {
            panic!("an unknown key is refused");
        };
        assert!(err.to_string().contains("heartbeat_ms"), "{err}");
        let file: FileConfig = toml::from_str(r#"silent_after = "a while""#).unwrap();
        let args = Cli::try_parse_from(["west"]).unwrap().hub.serve;
        let Err(err) = resolve(args, file) else {
            panic!("a bad duration is refused");
        };
        assert!(err.to_string().contains("config key silent_after"), "{err}");
    }
}
