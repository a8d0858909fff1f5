//! `west site`: one deployment, configured by flags, `WEST_*` environment and an optional
//! TOML file. Every setting is all three: the flag `--pairing-window`, the variable
//! `WEST_PAIRING_WINDOW` and the key `pairing_window` (tests below keep it so); the one
//! exception is the hidden, test-only `--test-clock-offset-file`.

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
    /// Prefer --admin-password-file or the environment: a command line is visible to every
    /// local user.
    #[arg(long, env = "WEST_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// A file whose first line is the password of user `admin` on first start.
    #[arg(
        long,
        env = "WEST_ADMIN_PASSWORD_FILE",
        conflicts_with = "admin_password"
    )]
    admin_password_file: Option<PathBuf>,
    /// How long undelivered data is kept for the peer [default: 30d].
    #[arg(long, env = "WEST_RETENTION", value_parser = config::parse_duration)]
    retention: Option<std::time::Duration>,
    /// How long stored points are kept; older ones are dropped a whole hour at a time
    /// (the latest value of each series stays) [default: kept for ever].
    #[arg(long, env = "WEST_KEEP_POINTS", value_parser = config::parse_duration)]
    keep_points: Option<std::time::Duration>,
    /// Most MiB of undelivered data kept per Source connector; beyond it the oldest is
    /// dropped and reported as a gap [default: no budget, only --retention].
    #[arg(long, env = "WEST_SYNC_DISK_BUDGET_MIB")]
    sync_disk_budget_mib: Option<u64>,
    /// TEST ONLY: a file holding a number of seconds the site adds to its wall clock for
    /// retention and outbox partitions, so that tests can jump past the retention.
    #[arg(long, hide = true)]
    test_clock_offset_file: Option<PathBuf>,
    /// TEST ONLY: the sync protocol version the site's sync messages carry (and it expects
    /// of its peer's), so that tests can play a site of another version.
    #[arg(long, hide = true)]
    test_sync_version: Option<u8>,
    /// How long a pairing code stays valid [default: 10m].
    #[arg(long, env = "WEST_PAIRING_WINDOW", value_parser = config::parse_duration)]
    pairing_window: Option<std::time::Duration>,
    /// Serve /metrics without a token.
    #[arg(long, env = "WEST_METRICS_PUBLIC")]
    metrics_public: bool,
    /// PEM certificate chain of the web UI and API; with --tls-key the site serves HTTPS
    /// only, and its session cookie is `Secure`.
    #[arg(long, env = "WEST_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "WEST_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Connections open at once; more are closed [default: 1024].
    #[arg(long, env = "WEST_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// URL (http:// or https://) the site POSTs a JSON event to whenever an alarm is raised
    /// or cleared, retried with backoff [default: none].
    #[arg(long, env = "WEST_ALARM_WEBHOOK")]
    alarm_webhook: Option<String>,
    /// A file whose first line is a bearer token for --alarm-webhook, read before every
    /// delivery (a rotated token needs no restart) [default: none].
    #[arg(long, env = "WEST_ALARM_WEBHOOK_TOKEN_FILE")]
    alarm_webhook_token_file: Option<PathBuf>,
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

/// The TOML file's shape: the same settings as the flags, all optional; durations are
/// strings as on the command line (`retention = "30d"`).
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
    admin_password_file: Option<PathBuf>,
    retention: Option<String>,
    keep_points: Option<String>,
    sync_disk_budget_mib: Option<u64>,
    pairing_window: Option<String>,
    metrics_public: Option<bool>,
    synchronous: Option<SyncMode>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_connections: Option<usize>,
    alarm_webhook: Option<String>,
    alarm_webhook_token_file: Option<PathBuf>,
}

/// The first line of a secret's file, refused when missing or empty.
fn read_secret(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the secret in {}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim().to_owned();
    anyhow::ensure!(!line.is_empty(), "{} is empty", path.display());
    Ok(line)
}

/// A duration of the file, read as its flag would be; the error names the key.
fn file_duration(key: &str, value: Option<String>) -> anyhow::Result<Option<std::time::Duration>> {
    value
        .map(|v| config::parse_duration(&v).map_err(|e| anyhow::anyhow!("config key {key}: {e}")))
        .transpose()
}

pub async fn run(args: SiteArgs) -> anyhow::Result<()> {
    let file: FileConfig = config::load(args.config.as_deref())?;
    let (cfg, http) = resolve(args, file)?;
    if let Some(hub) = &cfg.hub {
        // A missing or empty file is an operator's slip to show, not a reason to refuse
        // to start: the link reports it and keeps trying. Say so at once all the same.
        if let Err(why) = hub.credential.read() {
            tracing::warn!("{why}; the site starts and keeps trying");
        }
    }
    let listener = tokio::net::TcpListener::bind(&http)
        .await
        .with_context(|| format!("binding the HTTP listener on {http}"))?;
    let addr = listener.local_addr().context("reading the HTTP address")?;
    crate::perms::warn_if_loose(&cfg.data_dir, &["site.db", "site.db-wal", "site.db-shm"]);
    let prepared = site::prepare(&cfg).await?;
    if let Some(password) = &prepared.generated_admin_password {
        say!("admin password (shown once): {password}");
    }
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    say!("site {} listening on {scheme}://{addr}", cfg.name);
    retry_link_on_sighup(prepared.state.link.clone());
    site::serve(listener, prepared, crate::shutdown_signal()).await
}

/// The site's configuration and HTTP address from flags and environment (`args`) over the
/// file over the defaults; checks without I/O.
fn resolve(args: SiteArgs, file: FileConfig) -> anyhow::Result<(SiteConfig, String)> {
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
    let password_file = args.admin_password_file.or(file.admin_password_file);
    cfg.admin_password = match (args.admin_password.or(file.admin_password), password_file) {
        (Some(_), Some(_)) => {
            anyhow::bail!("admin_password and admin_password_file both given; keep one")
        }
        (Some(p), None) => Some(p),
        (None, Some(path)) => Some(read_secret(&path)?),
        (None, None) => None,
    };
    let pairing_window = match args.pairing_window {
        Some(w) => Some(w),
        None => file_duration("pairing_window", file.pairing_window)?,
    };
    if let Some(w) = pairing_window {
        cfg.pairing_window = w;
    }
    let retention = match args.retention {
        Some(r) => Some(r),
        None => file_duration("retention", file.retention)?,
    };
    if let Some(r) = retention {
        anyhow::ensure!(!r.is_zero(), "--retention must be longer than zero");
        cfg.sync.retention = r;
    }
    let keep_points = match args.keep_points {
        Some(k) => Some(k),
        None => file_duration("keep_points", file.keep_points)?,
    };
    if let Some(k) = keep_points {
        anyhow::ensure!(!k.is_zero(), "--keep-points must be longer than zero");
        cfg.sync.keep_points = Some(k);
    }
    cfg.sync.disk_budget = args
        .sync_disk_budget_mib
        .or(file.sync_disk_budget_mib)
        .map(|m| m.saturating_mul(1 << 20));
    if let Some(path) = args.test_clock_offset_file {
        cfg.sync.clock = site::peers::status::offset_clock(path);
    }
    cfg.sync.test_sync_version = args.test_sync_version;
    cfg.metrics_public = args.metrics_public || file.metrics_public.unwrap_or(false);
    cfg.tls = match (
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => anyhow::bail!("tls_cert and tls_key go together: give both or neither"),
    };
    if let Some(n) = args.max_connections.or(file.max_connections) {
        anyhow::ensure!(n > 0, "--max-connections must be at least 1");
        cfg.http_limits.max_connections = n;
    }
    cfg.synchronous = match args.synchronous.or(file.synchronous) {
        Some(SyncMode::Full) => Synchronous::Full,
        _ => Synchronous::Normal,
    };
    cfg.alarm_webhook = match (
        args.alarm_webhook.or(file.alarm_webhook),
        args.alarm_webhook_token_file
            .or(file.alarm_webhook_token_file),
    ) {
        (Some(url), token_file) => {
            let w = site::alarms::webhook::WebhookConfig { url, token_file };
            w.check()
                .map_err(|e| anyhow::anyhow!("--alarm-webhook: {e}"))?;
            Some(w)
        }
        (None, Some(_)) => anyhow::bail!("--alarm-webhook-token-file needs --alarm-webhook"),
        (None, None) => None,
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
        (Some(url), Some(credential)) => Some(LinkConfig {
            url,
            credential,
            ca_pem: args.hub_ca.or(file.hub_ca),
        }),
        (Some(_), None) => anyhow::bail!(
            "--hub needs --site-credential-file or --site-credential (from `west hub add-site`)"
        ),
        (None, Some(_)) => anyhow::bail!("a site credential needs --hub"),
        (None, None) => None,
    };

    Ok((cfg, http))
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
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        site: SiteArgs,
    }

    /// A file holding every setting, none of them its default; `site_credential` and
    /// `admin_password_file`, which exclude `site_credential_file` and `admin_password`,
    /// are checked on their own below.
    const EVERY_KEY: &str = r#"
        name = "plant-7"
        data_dir = "/var/lib/west/plant-7"
        http = "0.0.0.0:9090"
        hub = "wss://hub.example.com:7443"
        site_credential_file = "/etc/west/credential"
        hub_ca = "/etc/west/hub.pem"
        admin_password = "correct horse"
        retention = "7d"
        keep_points = "365d"
        sync_disk_budget_mib = 512
        pairing_window = "15m"
        metrics_public = true
        synchronous = "full"
        tls_cert = "/etc/west/site-cert.pem"
        tls_key = "/etc/west/site-key.pem"
        max_connections = 64
        alarm_webhook = "https://alerts.example.com/west/hook"
        alarm_webhook_token_file = "/etc/west/webhook-token"
    "#;

    #[test]
    fn every_setting_is_a_flag_a_variable_and_a_key() {
        // site_credential and admin_password_file each exclude a key of the full file.
        config::tests::assert_flags_variables_and_keys(
            &Cli::command(),
            EVERY_KEY,
            &["site_credential", "admin_password_file"],
        );
    }

    #[test]
    fn a_file_holding_every_setting_configures_the_site() {
        let file: FileConfig = toml::from_str(EVERY_KEY).unwrap();
        let args = Cli::try_parse_from(["west"]).unwrap().site;
        let (cfg, http) = resolve(args, file).unwrap();
        assert_eq!(http, "0.0.0.0:9090");
        assert_eq!(cfg.name, "plant-7");
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/west/plant-7"));
        let hub = cfg.hub.expect("a hub");
        assert_eq!(hub.url, "wss://hub.example.com:7443");
        assert!(
            matches!(&hub.credential, Credential::File(f) if f == std::path::Path::new("/etc/west/credential"))
        );
        assert_eq!(hub.ca_pem, Some(PathBuf::from("/etc/west/hub.pem")));
        assert_eq!(cfg.admin_password.as_deref(), Some("correct horse"));
        assert_eq!(cfg.sync.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(
            cfg.sync.keep_points,
            Some(Duration::from_secs(365 * 86_400))
        );
        assert_eq!(cfg.sync.disk_budget, Some(512 << 20));
        assert_eq!(cfg.pairing_window, Duration::from_secs(15 * 60));
        assert!(cfg.metrics_public);
        assert_eq!(cfg.synchronous, Synchronous::Full);
        assert_eq!(
            cfg.tls,
            Some((
                PathBuf::from("/etc/west/site-cert.pem"),
                PathBuf::from("/etc/west/site-key.pem")
            ))
        );
        assert_eq!(cfg.http_limits.max_connections, 64);
        assert_eq!(
            cfg.alarm_webhook,
            Some(site::alarms::webhook::WebhookConfig {
                url: "https://alerts.example.com/west/hook".into(),
                token_file: Some(PathBuf::from("/etc/west/webhook-token")),
            })
        );
    }

    #[test]
    fn a_credential_may_be_given_in_the_file_itself() {
        let text = EVERY_KEY.replace(
            "site_credential_file = \"/etc/west/credential\"",
            "site_credential = \"c-123\"",
        );
        let file: FileConfig = toml::from_str(&text).unwrap();
        let args = Cli::try_parse_from(["west"]).unwrap().site;
        let (cfg, _) = resolve(args, file).unwrap();
        let hub = cfg.hub.expect("a hub");
        assert!(matches!(&hub.credential, Credential::Value(c) if c == "c-123"));
    }

    #[test]
    fn the_admin_password_may_come_from_a_file_named_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("admin-password");
        std::fs::write(&secret, "from-a-file\n").unwrap();
        let text = EVERY_KEY.replace(
            "admin_password = \"correct horse\"",
            &format!("admin_password_file = {:?}", secret.display().to_string()),
        );
        let file: FileConfig = toml::from_str(&text).unwrap();
        let args = Cli::try_parse_from(["west"]).unwrap().site;
        let (cfg, _) = resolve(args, file).unwrap();
        assert_eq!(cfg.admin_password.as_deref(), Some("from-a-file"));
    }

    #[test]
    fn a_flag_wins_over_the_file() {
        let file: FileConfig = toml::from_str(EVERY_KEY).unwrap();
        let args = Cli::try_parse_from(["west", "--retention", "2d", "--pairing-window", "1m"])
            .unwrap()
            .site;
        let (cfg, _) = resolve(args, file).unwrap();
        assert_eq!(cfg.sync.retention, Duration::from_secs(2 * 86_400));
        assert_eq!(cfg.pairing_window, Duration::from_secs(60));
    }

    #[test]
    fn a_webhook_url_is_checked_and_its_token_file_needs_it() {
        let parse = |args: &[&str]| {
            let mut all = vec!["west"];
            all.extend(args);
            resolve(
                Cli::try_parse_from(all).unwrap().site,
                FileConfig::default(),
            )
        };
        let err = parse(&["--alarm-webhook", "ftp://example.com/"]).expect_err("ftp");
        assert!(err.to_string().contains("http:// or https://"), "{err}");
        let err = parse(&["--alarm-webhook", "https://u:secret@example.com/"]).expect_err("user");
        assert!(err.to_string().contains("token file"), "{err}");
        let err = parse(&["--alarm-webhook-token-file", "/t"]).expect_err("no url");
        assert!(err.to_string().contains("needs --alarm-webhook"), "{err}");
        let (cfg, _) = parse(&["--alarm-webhook", "http://127.0.0.1:9000/hook"]).unwrap();
        assert_eq!(
            cfg.alarm_webhook.map(|w| w.url).as_deref(),
            Some("http://127.0.0.1:9000/hook")
        );
    }

    #[test]
    fn bad_keys_and_values_are_refused_by_name() {
        let Err(err) = toml::from_str::<FileConfig>("retention_days = 3") else {
            panic!("an unknown key is refused");
        };
        assert!(err.to_string().contains("retention_days"), "{err}");
        let file: FileConfig = toml::from_str(r#"retention = "3 weeks""#).unwrap();
        let args = Cli::try_parse_from(["west"]).unwrap().site;
        let err = resolve(args, file).expect_err("a bad duration is refused");
        assert!(err.to_string().contains("config key retention"), "{err}");
    }
}
