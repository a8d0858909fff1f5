//! Secrets at rest and on the command line (issue 13 #4, #9): what the site and the hub
//! write is private to their user, a data directory made looser before is reported at
//! start, and the admin password can come from a file instead of the command line.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use testkit::{Api, DEADLINE, HubProc, WestProc, eventually};

use crate::util;

fn mode(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

#[tokio::test]
async fn a_site_keeps_its_keys_private_and_takes_its_password_from_a_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("site-p");
    let secret = dir.path().join("admin-password");
    std::fs::write(&secret, "correct-horse-battery\n")?;
    let args: Vec<String> = [
        "site",
        "--name",
        "site-p",
        "--data-dir",
        &data.display().to_string(),
        "--http",
        "127.0.0.1:0",
        "--admin-password-file",
        &secret.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut proc = WestProc::spawn(util::bin(), &args, &[], &dir.path().join("site.log"))?;
    let line = proc.wait_line("listening on http://").await?;
    let url = line
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_owned();

    // The password is not on the command line, and it works.
    let pid = proc.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    assert!(!String::from_utf8_lossy(&cmdline).contains("correct-horse-battery"));
    Api::login(&url, "admin", "correct-horse-battery").await?;

    // The data directory and the database (connectors' private keys) are the user's alone.
    assert_eq!(mode(&data)?, 0o700);
    assert_eq!(mode(&data.join("site.db"))?, 0o600);
    for extra in ["site.db-wal", "site.db-shm"] {
        if data.join(extra).exists() {
            assert_eq!(mode(&data.join(extra))? & 0o077, 0, "{extra}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_hubs_registry_and_key_are_private_and_a_loose_data_dir_is_reported()
-> anyhow::Result<()> {
    // The fixture makes the hub's data directory with the test's umask (0755): the hub
    // must say so.
    let hub = HubProc::start(util::bin()).await?;
    assert_ne!(mode(&hub.data_dir)? & 0o077, 0, "the fixture changed");
    eventually("the hub to report its loose data dir", DEADLINE, || async {
        Ok(hub.log_contains("readable by other users").then_some(()))
    })
    .await?;
    assert_eq!(mode(&hub.data_dir.join("hub.db"))?, 0o600);
    assert_eq!(mode(&hub.data_dir.join("hub-key.pem"))?, 0o600);
    Ok(())
}

/// The sites the tests and `west bench` start take their hub credential from a private
/// file, never from the command line, where any local user's `ps` reads it.
#[tokio::test]
async fn a_launched_site_takes_its_hub_credential_from_a_private_file() -> anyhow::Result<()> {
    let hub = HubProc::start(util::bin()).await?;
    let credential = hub.add_site("site-a").await?;
    let args = hub.site_args(&credential)?;
    let at = args
        .iter()
        .position(|a| a == "--site-credential-file")
        .ok_or_else(|| anyhow::anyhow!("no credential file in {args:?}"))?;
    let file = Path::new(&args[at + 1]);
    assert_eq!(mode(file)?, 0o600);
    assert_eq!(std::fs::read_to_string(file)?.trim(), credential);
    let site = util::join(&hub, "site-a", &credential).await?;
    let pid = site.proc.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    assert!(!String::from_utf8_lossy(&cmdline).contains(&credential));
    Ok(())
}
