//! Real `west` processes as children of the test.
//!
//! A process's stdout is read line by line into a shared buffer (tests wait for lines like
//! `listening on http://…`); its stderr (the log) goes to a file beside its data dir, whose
//! tail is printed when a wait fails so that a red test explains itself.
//!
//! A child dies with its parent: when the handle drops (`kill_on_drop`) and, on Linux, also
//! when the parent process is killed outright (SIGKILL gives it no chance to drop anything):
//! [`die_with_parent`] asks the kernel for a SIGTERM to the child when its parent goes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::DEADLINE;

/// A running `west` child process.
pub struct WestProc {
    child: Option<Child>,
    /// Every line the process has printed on stdout so far.
    lines: Arc<Mutex<Vec<String>>>,
    /// Where the process's stderr (its log) goes.
    pub log_path: PathBuf,
    bin: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl WestProc {
    /// Starts `bin` with `args`; stderr is appended to `log_path`.
    pub fn spawn(
        bin: &Path,
        args: &[String],
        envs: &[(String, String)],
        log_path: &Path,
    ) -> anyhow::Result<Self> {
        let mut p = Self {
            child: None,
            lines: Arc::new(Mutex::new(Vec::new())),
            log_path: log_path.to_owned(),
            bin: bin.to_owned(),
            args: args.to_vec(),
            envs: envs.to_vec(),
        };
        p.start()?;
        Ok(p)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening log file {}", self.log_path.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .env_remove("WEST_ADMIN_PASSWORD")
            .env(
                "WEST_LOG",
                "info,west_site=debug,west_hub=debug,west_store=debug",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} {:?}", self.bin.display(), self.args))?;
        let stdout = child.stdout.take().context("child has no stdout")?;
        self.lines
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clear();
        let lines = Arc::clone(&self.lines);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(mut l) = lines.lock() {
                    l.push(line);
                }
            }
        });
        self.child = Some(child);
        Ok(())
    }

    /// Waits for a stdout line containing `needle` and returns it.
    pub async fn wait_line(&mut self, needle: &str) -> anyhow::Result<String> {
        let start = std::time::Instant::now();
        loop {
            let found = self
                .lines
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .iter()
                .find(|l| l.contains(needle))
                .cloned();
            if let Some(line) = found {
                return Ok(line);
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "process exited with {status} before printing {needle:?}; log tail:\n{}",
                    self.log_tail(30)
                );
            }
            if start.elapsed() > DEADLINE {
                bail!(
                    "no line with {needle:?} after {DEADLINE:?}; log tail:\n{}",
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id while it runs (`None` after it was killed or has exited).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The last `n` lines of the process's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGKILL: the process gets no chance to flush or clean up.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("killing the child")?;
        }
        Ok(())
    }

    /// Waits for the process to exit by itself and returns its status code.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<Option<i32>> {
        let child = self.child.as_mut().context("process is not running")?;
        let status = tokio::time::timeout(within, child.wait())
            .await
            .context("process did not exit in time")??;
        self.child = None;
        Ok(status.code())
    }

    /// Replaces the value after `flag` in the command line, for later restarts (e.g. the
    /// real port once `127.0.0.1:0` has been bound).
    pub fn set_arg(&mut self, flag: &str, value: &str) {
        if let Some(i) = self.args.iter().position(|a| a == flag)
            && i + 1 < self.args.len()
        {
            self.args[i + 1] = value.to_owned();
        }
    }

    /// SIGTERM, then waits up to `within` for a clean exit, then SIGKILL.
    pub async fn terminate(&mut self, within: Duration) -> anyhow::Result<()> {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            // `kill` keeps this crate free of unsafe signal calls.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if self.child.is_some() && self.wait_exit(within).await.is_err() {
            self.kill9().await?;
        }
        Ok(())
    }

    /// Starts the same command line again (after [`kill9`](Self::kill9)).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("process is still running");
        }
        self.start()
    }
}

/// Makes a child started with `cmd` receive SIGTERM when this process dies, however it dies
/// (`prctl(PR_SET_PDEATHSIG)`, Linux only; elsewhere nothing but `kill_on_drop` applies).
///
/// The kernel sends the signal when the *thread* that spawned the child exits, not only the
/// process: spawn from a thread that lives as long as the child should (a runtime's worker
/// or the main thread, never a `spawn_blocking` thread, which exits when idle). A parent
/// that died between the fork and the `prctl` would never signal: the child checks that its
/// parent is still the one that forked it, and fails to start otherwise.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn die_with_parent(cmd: &mut Command) {
    let parent = i32::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: `prctl` and `getppid` are plain system calls, and the error is
    // built from an errno without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Elsewhere a child outlives a killed parent; `kill_on_drop` still covers a clean exit.
#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_cmd: &mut Command) {}

/// How to start a site.
#[derive(Debug, Clone)]
pub struct SiteOpts {
    pub name: String,
    pub admin_password: String,
    /// Extra command-line arguments (hub flags, retention, …).
    pub extra: Vec<String>,
}

impl SiteOpts {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            admin_password: "correct-horse-battery".into(),
            extra: Vec::new(),
        }
    }
}

/// A `west site` child process with its data dir and HTTP address.
pub struct SiteProc {
    pub proc: WestProc,
    pub opts: SiteOpts,
    /// `http://127.0.0.1:PORT`, stable across restarts.
    pub url: String,
    pub data_dir: PathBuf,
    /// Keeps the data dir alive as long as the site.
    _dir: Option<tempfile::TempDir>,
}

impl SiteProc {
    /// Starts a site on a free loopback port in a fresh temporary data dir.
    pub async fn start(bin: &Path, opts: SiteOpts) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("making a temp dir")?;
        let data_dir = dir.path().join(&opts.name);
        let mut site = Self::start_in(bin, opts, &data_dir, "127.0.0.1:0").await?;
        site._dir = Some(dir);
        Ok(site)
    }

    /// Starts a site in `data_dir` listening on `http`.
    pub async fn start_in(
        bin: &Path,
        opts: SiteOpts,
        data_dir: &Path,
        http: &str,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let mut args = vec![
            "site".to_string(),
            "--name".into(),
            opts.name.clone(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--http".into(),
            http.into(),
        ];
        args.extend(opts.extra.iter().cloned());
        let log = data_dir.with_extension("log");
        // In the environment, not on the command line, where any local user could read it.
        let env = [("WEST_ADMIN_PASSWORD".into(), opts.admin_password.clone())];
        let mut proc = WestProc::spawn(bin, &args, &env, &log)?;
        let line = proc.wait_line("listening on http://").await?;
        let url = line
            .split_whitespace()
            .last()
            .context("no address in the listening line")?
            .to_owned();
        // Later restarts must come back on the same port.
        let port = url.rsplit(':').next().unwrap_or("0").to_owned();
        if let Some(i) = proc.args.iter().position(|a| a == "--http") {
            proc.args[i + 1] = format!("127.0.0.1:{port}");
        }
        Ok(Self {
            proc,
            opts,
            url,
            data_dir: data_dir.to_owned(),
            _dir: None,
        })
    }

    /// An API client signed in as admin.
    pub async fn admin(&self) -> anyhow::Result<crate::Api> {
        crate::Api::login(&self.url, "admin", &self.opts.admin_password).await
    }

    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.proc.kill9().await
    }

    /// Starts the site again on the same port and data dir, and waits until it listens.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.restart()?;
        self.proc.wait_line("listening on http://").await?;
        Ok(())
    }
}
