//! A `west hub` child process: [`HubProc`] starts the real binary on a free loopback port
//! with a fresh data dir, runs `west hub add-site` / `remove-site` against it, reads its
//! `/health` and `/metrics` over TLS (trusting its self-signed certificate), and restarts
//! it on the same port.
//!
//! [`HubProc::start_node`] starts one node of a hub cluster on NATS; its registry commands
//! then go to the cluster (`--cluster`), and it is ready once its `/health` says the
//! registry is loaded.
//!
//! Deliberately absent: any hub logic; everything goes through the process's public surface.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WestProc;

/// A running `west hub`.
pub struct HubProc {
    pub proc: WestProc,
    /// `wss://127.0.0.1:PORT`, stable across restarts.
    pub url: String,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// The hub's self-signed certificate, for `--hub-ca`.
    pub ca: PathBuf,
    /// The NATS URLs of its cluster, for a node of one.
    pub cluster: Option<String>,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

impl HubProc {
    /// Starts a hub on a free loopback port in a fresh temporary data dir.
    pub async fn start(bin: &Path) -> anyhow::Result<Self> {
        Self::start_with(bin, &[]).await
    }

    /// Starts a hub with extra flags (e.g. `--heartbeat 500ms`).
    pub async fn start_with(bin: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_inner(bin, extra, None, None).await
    }

    /// Starts node `node` of the hub cluster on NATS `cluster` (comma-separated URLs) and
    /// waits until it serves sites. With `tls_from`, it presents that node's certificate (all
    /// nodes of a cluster present one certificate); otherwise it makes its own.
    pub async fn start_node(
        bin: &Path,
        cluster: &str,
        node: &str,
        tls_from: Option<&HubProc>,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut args: Vec<String> = vec![
            "--cluster".into(),
            cluster.into(),
            "--node-name".into(),
            node.into(),
        ];
        if let Some(first) = tls_from {
            let key = first.data_dir.join("hub-key.pem");
            args.extend([
                "--tls-cert".into(),
                first.ca.display().to_string(),
                "--tls-key".into(),
                key.display().to_string(),
            ]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let hub = Self::start_inner(
            bin,
            &args,
            Some(cluster.to_owned()),
            tls_from.map(|f| f.ca.clone()),
        )
        .await?;
        hub.wait_cluster_ready().await?;
        Ok(hub)
    }

    /// Waits until a node's `/health` says its registry is loaded.
    pub async fn wait_cluster_ready(&self) -> anyhow::Result<()> {
        crate::eventually(
            "the hub node to load the registry",
            crate::DEADLINE,
            || async {
                let h = self.health().await?;
                Ok((h["cluster"]["registry"] == "ready").then_some(()))
            },
        )
        .await
    }

    async fn start_inner(
        bin: &Path,
        extra: &[&str],
        cluster: Option<String>,
        ca: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("making a temp dir")?;
        let data_dir = dir.path().join("hub");
        std::fs::create_dir_all(&data_dir)?;
        let mut args: Vec<String> = vec![
            "hub".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut proc = WestProc::spawn(bin, &args, &[], &dir.path().join("hub.log"))?;
        let line = proc.wait_line("hub listening on wss://").await?;
        let url = line
            .split_whitespace()
            .last()
            .context("no address in the listening line")?
            .to_owned();
        let addr: SocketAddr = url
            .trim_start_matches("wss://")
            .parse()
            .with_context(|| format!("parsing the hub address in {line:?}"))?;
        // Later restarts must come back on the same port.
        proc.set_arg("--listen", &addr.to_string());
        Ok(Self {
            proc,
            url,
            addr,
            ca: ca.unwrap_or_else(|| data_dir.join("hub-cert.pem")),
            cluster,
            data_dir,
            bin: bin.to_owned(),
            _dir: dir,
        })
    }

    /// The flags a site needs to join this hub with `credential`. The credential goes into
    /// a file of the hub's temporary directory, readable by its owner alone, never on a
    /// command line, where any local user's `ps` reads it.
    pub fn site_args(&self, credential: &str) -> anyhow::Result<Vec<String>> {
        self.site_args_via(&self.url, credential)
    }

    /// The same, dialing `url` instead (a proxy in front of the hub).
    pub fn site_args_via(&self, url: &str, credential: &str) -> anyhow::Result<Vec<String>> {
        Ok(vec![
            "--hub".into(),
            url.into(),
            "--site-credential-file".into(),
            self.credential_file(credential)?.display().to_string(),
            "--hub-ca".into(),
            self.ca.display().to_string(),
        ])
    }

    /// A new file (0600) of the hub's temporary directory holding `credential`.
    fn credential_file(&self, credential: &str) -> anyhow::Result<PathBuf> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = self._dir.path().join(format!(
            "site-credential-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        writeln!(file, "{credential}").with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    async fn registry_cmd(&self, args: &[&str]) -> anyhow::Result<Vec<String>> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("hub").args(args);
        match &self.cluster {
            Some(urls) => cmd.arg("--cluster").arg(urls),
            None => cmd.arg("--data-dir").arg(&self.data_dir),
        };
        let out = cmd
            .env_remove("WEST_DATA_DIR")
            .env_remove("WEST_CLUSTER")
            .output()
            .await
            .with_context(|| format!("running west hub {args:?}"))?;
        if !out.status.success() {
            bail!(
                "west hub {args:?} failed with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// Registers a site and returns its credential (the last line `add-site` prints).
    pub async fn add_site(&self, name: &str) -> anyhow::Result<String> {
        let lines = self.registry_cmd(&["add-site", name]).await?;
        lines
            .last()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .context("add-site printed no credential")
    }

    /// Removes a site from the registry.
    pub async fn remove_site(&self, name: &str) -> anyhow::Result<()> {
        self.registry_cmd(&["remove-site", name]).await.map(drop)
    }

    /// `GET /health` over TLS.
    pub async fn health(&self) -> anyhow::Result<Value> {
        let (status, body) = https_get(self.addr, &self.ca, "/health").await?;
        anyhow::ensure!(status == 200, "GET /health answered {status}: {body}");
        serde_json::from_str(&body).context("parsing /health")
    }

    /// `GET /metrics` over TLS.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = https_get(self.addr, &self.ca, "/metrics").await?;
        anyhow::ensure!(status == 200, "GET /metrics answered {status}: {body}");
        Ok(body)
    }

    /// Whether `/health` lists `site` as connected.
    pub async fn site_connected(&self, site: &str) -> anyhow::Result<bool> {
        let h = self.health().await?;
        Ok(h["sites"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == site && s["connected"] == true))
    }

    /// One per-site counter from `/metrics`, 0 when absent.
    pub async fn counter(&self, metric: &str, site: &str) -> anyhow::Result<u64> {
        let text = self.metrics().await?;
        let prefix = format!("{metric}{{site=\"{site}\"}} ");
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }

    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.proc.kill9().await
    }

    /// Starts the hub again on the same port and data dir, and waits until it listens.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.restart()?;
        self.proc.wait_line("hub listening on wss://").await?;
        // A node of a cluster: until it serves sites.
        if self.cluster.is_some() {
            self.wait_cluster_ready().await?;
        }
        Ok(())
    }

    /// A raw TLS connection to the hub's port, for what no HTTP client sends (a header
    /// trickled byte by byte, a connection held open).
    pub async fn tls(&self) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        tls_connect(self.addr, &self.ca).await
    }

    /// Whether the hub's log contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        std::fs::read_to_string(&self.proc.log_path)
            .map(|t| t.contains(needle))
            .unwrap_or(false)
    }
}

pub fn client_tls(ca: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

pub async fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let name = ServerName::try_from(addr.ip().to_string())?;
    Ok(tokio_rustls::TlsConnector::from(client_tls(ca)?)
        .connect(name, tcp)
        .await?)
}

/// A minimal HTTPS GET: status and body.
async fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> anyhow::Result<(u16, String)> {
    let mut tls = tls_connect(addr, ca).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    // The server closes after answering; a TLS close_notify may or may not come first.
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP answer from {addr}{path}: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
