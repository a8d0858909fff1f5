//! The site crate's modules stay in layers (ARCHITECTURE.md, "Code map"): no file imports
//! one that imports it back, and no top-level module one above it. `tools/moddeps.py`
//! reads the `crate::`/`super::` paths of every file and fails on a cycle; this test runs it
//! so that a circle cannot land unnoticed (one did: `auth` ↔ `login` ↔ `state`).

use std::process::Command;

#[test]
fn the_site_modules_import_each_other_in_no_circle() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = Command::new("python3")
        .current_dir(root)
        .args(["tools/moddeps.py", "crates/site/src"])
        .output()
        .expect("python3 runs tools/moddeps.py (.ci/run installs python3)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the site's modules import each other in a circle:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("no cycles"), "{report}");
}
