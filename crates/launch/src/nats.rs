//! Real `nats-server` processes for a hub cluster on loopback (the benchmark's cluster part
//! and the cluster's end-to-end tests): one server, or a cluster of several joined by
//! routes, each with JetStream in its own temp dir, on loopback ports chosen at start and
//! kept across restarts. They die with the process that started them, as `west` children do.
//!
//! `nats-server` is looked up on PATH, then in /usr/sbin (where Debian's package puts it)
//! and /usr/local/bin.
//!
//! Deliberately absent: TLS and authentication between these processes (loopback only).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::DEADLINE;

/// `nats-server` from PATH, or from /usr/sbin.
pub fn nats_server_bin() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .context(
            "nats-server is not installed (not on PATH, in /usr/sbin or /usr/local/bin): \
             on Debian, `apt-get install nats-server` installs it",
        )
}

/// A free loopback port (bound and released; the server binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// One `nats-server` child.
pub struct NatsServer {
    pub name: String,
    pub port: u16,
    cluster_port: u16,
    routes: Vec<u16>,
    dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    fn config(&self) -> String {
        let mut c = format!(
            "server_name: \"{}\"\nlisten: \"127.0.0.1:{}\"\nmax_payload: 2MB\n\
             jetstream {{ store_dir: \"{}\" }}\n",
            self.name,
            self.port,
            self.dir.join(format!("{}-js", self.name)).display()
        );
        if !self.routes.is_empty() {
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            c.push_str(&format!(
                "cluster {{ name: \"west\", listen: \"127.0.0.1:{}\", routes: [{}] }}\n",
                self.cluster_port,
                routes.join(", ")
            ));
        }
        c
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let conf = self.dir.join(format!("{}.conf", self.name));
        std::fs::write(&conf, self.config())?;
        let log_path = self.log_path();
        let offset = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        crate::process::die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().context("starting nats-server")?);
        let start = Instant::now();
        loop {
            let all = std::fs::read(&log_path).unwrap_or_default();
            let text = String::from_utf8_lossy(
                all.get(usize::try_from(offset).unwrap_or(usize::MAX)..)
                    .unwrap_or_default(),
            )
            .into_owned();
            if text.contains("Server is ready") {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("{} exited with {status} while starting:\n{text}", self.name);
            }
            if start.elapsed() > DEADLINE {
                bail!("{} not ready after {DEADLINE:?}:\n{text}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("killing nats-server")?;
        }
        Ok(())
    }

    /// Starts again on the same ports with the same store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9().await?;
        self.spawn().await
    }
}

/// One nats-server, or several joined as a cluster.
pub struct Nats {
    pub servers: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// One server with JetStream.
    pub async fn single() -> anyhow::Result<Self> {
        Self::cluster(1).await
    }

    /// `n` servers with JetStream, routed to each other (a JetStream cluster when n ≥ 3).
    pub async fn cluster(n: usize) -> anyhow::Result<Self> {
        let bin = nats_server_bin()?;
        let dir = tempfile::tempdir().context("making a temp dir for nats-server")?;
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let mut servers: Vec<NatsServer> = ports
            .iter()
            .enumerate()
            .map(|(i, (port, cluster_port))| NatsServer {
                name: format!("nats-{}", i + 1),
                port: *port,
                cluster_port: *cluster_port,
                routes: if n > 1 {
                    ports
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, (_, c))| *c)
                        .collect()
                } else {
                    Vec::new()
                },
                dir: dir.path().to_owned(),
                bin: bin.clone(),
                child: None,
            })
            .collect();
        // A server of a cluster says it is ready once its own ports are open; they find
        // each other through the routes afterwards.
        for s in &mut servers {
            s.spawn().await?;
        }
        Ok(Self { servers, _dir: dir })
    }

    /// Every server's URL, comma-separated: what `west hub --cluster` takes.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}
