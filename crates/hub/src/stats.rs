//! What the hub counts, per site: frames and bytes in each direction, connections, frames
//! answered as undeliverable (by reason: offline, unknown site, not paired) and refusals; rendered as Prometheus text on `/metrics` and as JSON on
//! `/health`.
//!
//! Deliberately absent: anything about payload contents (the hub only counts them), and
//! per-site series for names that never authenticated (refusals of unknown names are counted
//! by code only, so a stranger cannot grow the hub's memory).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::registry::SiteEntry;
use crate::routing::PeerHandle;

/// Counters of one authenticated site; they survive its reconnections.
#[derive(Debug, Default)]
pub struct SiteCounters {
    pub frames_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    /// Frames from the site whose addressed site is registered but not connected.
    pub peer_offline: AtomicU64,
    /// Frames from the site addressed to a site the registry does not know.
    pub unknown_site: AtomicU64,
    /// Frames from the site refused because the two connectors have not both claimed the
    /// pairing.
    pub not_paired: AtomicU64,
    /// Frames dropped because the addressed site did not take them in time.
    pub stalled: AtomicU64,
}

impl SiteCounters {
    pub fn received(&self, bytes: usize) {
        self.frames_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn sent(&self, bytes: usize) {
        self.frames_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// A per-site metric: name, type, help and the counter it reads.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&SiteCounters) -> &AtomicU64,
);

/// Every counter of the hub.
#[derive(Debug, Default)]
pub struct Stats {
    sites: Mutex<BTreeMap<String, Arc<SiteCounters>>>,
    refused: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    /// The counters of an authenticated site, created on its first connection.
    pub fn site(&self, name: &str) -> Arc<SiteCounters> {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(sites.entry(name.to_owned()).or_default())
    }

    pub fn refused(&self, code: &str) {
        let mut r = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        *r.entry(code.to_owned()).or_default() += 1;
    }

    fn snapshot(&self) -> Vec<(String, Arc<SiteCounters>)> {
        let sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        sites
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }

    fn refusals(&self) -> Vec<(String, u64)> {
        let r = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Prometheus text exposition of every counter and of which sites are connected.
    pub fn prometheus(&self, attached: &[PeerHandle], claimed_pairings: usize) -> String {
        let mut out = String::new();
        let sites = self.snapshot();
        let series: [Series; 10] = [
            (
                "west_hub_frames_received_total",
                "counter",
                "Frames received from the site.",
                |c| &c.frames_in,
            ),
            (
                "west_hub_bytes_received_total",
                "counter",
                "Bytes of frames received from the site.",
                |c| &c.bytes_in,
            ),
            (
                "west_hub_frames_sent_total",
                "counter",
                "Frames written to the site.",
                |c| &c.frames_out,
            ),
            (
                "west_hub_bytes_sent_total",
                "counter",
                "Bytes of frames written to the site.",
                |c| &c.bytes_out,
            ),
            (
                "west_hub_connects_total",
                "counter",
                "Accepted connections of the site.",
                |c| &c.connects,
            ),
            (
                "west_hub_disconnects_total",
                "counter",
                "Ended connections of the site.",
                |c| &c.disconnects,
            ),
            (
                "west_hub_peer_offline_total",
                "counter",
                "Frames from the site answered with peer offline.",
                |c| &c.peer_offline,
            ),
            (
                "west_hub_unknown_site_total",
                "counter",
                "Frames from the site addressed to a site the hub does not know.",
                |c| &c.unknown_site,
            ),
            (
                "west_hub_not_paired_total",
                "counter",
                "Frames from the site refused because the connectors are not paired.",
                |c| &c.not_paired,
            ),
            (
                "west_hub_stalled_total",
                "counter",
                "Frames for the site dropped because it did not take them in time.",
                |c| &c.stalled,
            ),
        ];
        for (name, kind, help, field) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (site, c) in &sites {
                let _ = writeln!(
                    out,
                    "{name}{{site=\"{site}\"}} {}",
                    SiteCounters::get(field(c))
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP west_hub_site_connected Whether the site has a live link.\n# TYPE west_hub_site_connected gauge"
        );
        for (site, _) in &sites {
            let up = attached.iter().any(|p| &*p.site == site.as_str());
            let _ = writeln!(
                out,
                "west_hub_site_connected{{site=\"{site}\"}} {}",
                u8::from(up)
            );
        }
        let _ = writeln!(
            out,
            "# HELP west_hub_sites_connected Sites with a live link.\n# TYPE west_hub_sites_connected gauge\nwest_hub_sites_connected {}",
            attached.len()
        );
        let _ = writeln!(
            out,
            "# HELP west_hub_claimed_pairings Pairings claimed by sites (each pairing counts once per side).\n# TYPE west_hub_claimed_pairings gauge\nwest_hub_claimed_pairings {claimed_pairings}"
        );
        let _ = writeln!(
            out,
            "# HELP west_hub_refused_total Connections refused, by reason.\n# TYPE west_hub_refused_total counter"
        );
        for (code, n) in self.refusals() {
            let _ = writeln!(out, "west_hub_refused_total{{code=\"{code}\"}} {n}");
        }
        out
    }

    /// The `sites` part of `/health`: every registered site with its link and counters.
    pub fn sites_json(&self, registry: &[SiteEntry], attached: &[PeerHandle]) -> serde_json::Value {
        let counters: BTreeMap<String, Arc<SiteCounters>> = self.snapshot().into_iter().collect();
        let list: Vec<serde_json::Value> = registry
            .iter()
            .map(|s| {
                let peer = attached.iter().find(|p| *p.site == *s.name);
                let c = counters.get(&s.name);
                let n =
                    |f: fn(&SiteCounters) -> &AtomicU64| c.map_or(0, |c| SiteCounters::get(f(c)));
                json!({
                    "name": s.name,
                    "active": s.active,
                    "connected": peer.is_some(),
                    "remote": peer.map(|p| p.remote.to_string()),
                    "frames_in": n(|c| &c.frames_in),
                    "bytes_in": n(|c| &c.bytes_in),
                    "frames_out": n(|c| &c.frames_out),
                    "bytes_out": n(|c| &c.bytes_out),
                    "connects": n(|c| &c.connects),
                    "disconnects": n(|c| &c.disconnects),
                    "peer_offline": n(|c| &c.peer_offline),
                    "unknown_site": n(|c| &c.unknown_site),
                    "not_paired": n(|c| &c.not_paired),
                })
            })
            .collect();
        serde_json::Value::Array(list)
    }
}
