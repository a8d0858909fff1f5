//! Headless Chromium for web UI tests, driven through WebDriver with `fantoccini`.
//!
//! [`Browser::start`] runs the Debian `chromedriver` on a free loopback port (in its own
//! process group) and opens a session of `/usr/bin/chromium` in headless mode with a fresh
//! profile directory and a 1280×800 window. Dropping the [`Browser`] kills the driver and
//! every browser process it started, so a failing test leaves nothing behind; call
//! [`Browser::close`] to end the session politely first.
//!
//! The WebDriver connection is plain HTTP on loopback, so no TLS library is built for it.
//! Nothing here sleeps to wait: waits poll with a deadline.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::{DEADLINE, eventually};

/// The browser and driver of Debian's `chromium` and `chromium-driver` packages.
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Window size of every session: a laptop screen, as docs/ui.md asks the UI to fit.
pub const WINDOW: (u32, u32) = (1280, 800);

/// A headless Chromium session and the `chromedriver` serving it.
pub struct Browser {
    /// The WebDriver session; every command of a test goes through it.
    pub client: Client,
    driver: Child,
    /// Process group of the driver and the browsers it starts, killed as a whole on drop.
    pgid: Option<u32>,
    /// The browser's profile: fresh for every session, so no state leaks between tests.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium session.
    pub async fn start() -> anyhow::Result<Self> {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(bin).exists() {
                bail!("{bin} is missing: install the Debian packages chromium and chromium-driver");
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port for chromedriver")?
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {CHROMEDRIVER}"))?;
        let pgid = driver.id();
        let profile = tempfile::tempdir().context("making a browser profile dir")?;
        let mut browser = BrowserParts {
            driver: Some(driver),
            pgid,
        };

        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually("chromedriver to answer /status", DEADLINE, || {
            let req = http.get(format!("{base}/status"));
            async move {
                let ready = match req.send().await {
                    Ok(r) => r.json::<Value>().await.ok(),
                    Err(_) => None,
                }
                .is_some_and(|s| s["value"]["ready"] == true);
                Ok(ready.then_some(()))
            }
        })
        .await?;

        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([
            format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            format!("--user-data-dir={}", profile.path().display()),
        ])
        .collect::<Vec<_>>();
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": CHROMIUM, "args": args }),
        );
        let mut connector = HttpConnector::new();
        connector.enforce_http(true);
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&base)
            .await
            .with_context(|| format!("opening a Chromium session through {base}"))?;
        // `--window-size` is the outer size; headless Chromium still reserves room for its
        // (invisible) toolbars, so grow the window until the page itself gets 1280×800.
        let chrome = client
            .execute(
                "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight];",
                vec![],
            )
            .await
            .context("measuring the browser's toolbars")?;
        let extra = |i: usize| {
            chrome[i]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0)
        };
        client
            .set_window_size(WINDOW.0 + extra(0), WINDOW.1 + extra(1))
            .await
            .context("sizing the browser window")?;
        Ok(Self {
            client,
            driver: browser.driver.take().context("driver handle")?,
            pgid: browser.pgid.take(),
            _profile: profile,
        })
    }

    /// Opens `url` in the session.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("opening {url}"))
    }

    /// Waits until an element matching `css` exists, and returns it.
    pub async fn wait_for(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        self.client
            .wait()
            .at_most(DEADLINE)
            .every(Duration::from_millis(50))
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("waiting for {css:?} on the page"))
    }

    /// Saves a PNG of the viewport to `path`, creating its directory.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let png = self
            .client
            .screenshot()
            .await
            .context("taking a screenshot")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Ends the session (the driver closes the browser), then stops the driver.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let closed = self.client.clone().close().await;
        kill_group(self.pgid.take());
        let _ = self.driver.kill().await;
        closed.context("closing the browser session")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(self.pgid);
    }
}

/// The driver while the session is being opened: an early return kills it and its group.
struct BrowserParts {
    driver: Option<Child>,
    pgid: Option<u32>,
}

impl Drop for BrowserParts {
    fn drop(&mut self) {
        kill_group(self.pgid);
    }
}

/// SIGKILLs a process group: the driver and every browser process it started. The test
/// fixture may not use `unsafe` (no libc), so it asks `kill(1)`.
fn kill_group(pgid: Option<u32>) {
    if let Some(pgid) = pgid {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
