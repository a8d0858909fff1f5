//! Private files (issue 13 #4): `site.db` holds connectors' static private keys,
//! `quickstart.json` the admin password and the sites' credentials, `hub.db` the credential
//! hashes, `hub-key.pem` the hub's TLS key. The process runs with umask 077, so every
//! directory it creates is 0700 and every file 0600; one made looser before (by an older
//! version, or by hand) is reported at start, not changed behind the operator's back.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Makes everything this process creates private to its user.
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Warns about `dir` and each of `files` in it that group or others may read or write.
pub fn warn_if_loose(dir: &Path, files: &[&str]) {
    let paths = std::iter::once(dir.to_owned()).chain(files.iter().map(|f| dir.join(f)));
    for path in paths {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "readable by other users of this machine: it holds secrets; chmod {} {}",
                if meta.is_dir() { "700" } else { "600" },
                path.display()
            );
        }
    }
}
