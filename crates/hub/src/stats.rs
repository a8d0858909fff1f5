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
use crate::routing::SiteHandle;

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

/// A per-site counter as it is shown: its key in `/health`'s JSON (`None`: not shown
/// there), its Prometheus name and help, and where it is kept.
struct Counter {
    key: Option<&'static str>,
    metric: &'static str,
    help: &'static str,
    read: fn(&SiteCounters) -> &AtomicU64,
}

/// Every per-site counter, in the order both `/metrics` and `/health` show them.
const COUNTERS: [Counter; 10] = [
    Counter {
        key: Some("frames_in"),
        metric: "west_hub_frames_received_total",
        help: "Frames received from the site.",
        read: |c| &c.frames_in,
    },
    Counter {
        key: Some("bytes_in"),
        metric: "west_hub_bytes_received_total",
        help: "Bytes of frames received from the site.",
        read: |c| &c.bytes_in,
    },
    Counter {
        key: Some("frames_out"),
        metric: "west_hub_frames_sent_total",
        help: "Frames written to the site.",
        read: |c| &c.frames_out,
    },
    Counter {
        key: Some("bytes_out"),
        metric: "west_hub_bytes_sent_total",
        help: "Bytes of frames written to the site.",
        read: |c| &c.bytes_out,
    },
    Counter {
        key: Some("connects"),
        metric: "west_hub_connects_total",
        help: "Accepted connections of the site.",
        read: |c| &c.connects,
    },
    Counter {
        key: Some("disconnects"),
        metric: "west_hub_disconnects_total",
        help: "Ended connections of the site.",
        read: |c| &c.disconnects,
    },
    Counter {
        key: Some("peer_offline"),
        metric: "west_hub_peer_offline_total",
        help: "Frames from the site answered with peer offline.",
        read: |c| &c.peer_offline,
    },
    Counter {
        key: Some("unknown_site"),
        metric: "west_hub_unknown_site_total",
        help: "Frames from the site addressed to a site the hub does not know.",
        read: |c| &c.unknown_site,
    },
    Counter {
        key: Some("not_paired"),
        metric: "west_hub_not_paired_total",
        help: "Frames from the site refused because the connectors are not paired.",
        read: |c| &c.not_paired,
    },
    Counter {
        key: None,
        metric: "west_hub_stalled_total",
        help: "Frames for the site dropped because it did not take them in time.",
        read: |c| &c.stalled,
    },
];

/// Writes the `# HELP` and `# TYPE` lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The cluster part of `/metrics` of a node: NATS reachable, nodes seen, frames in flight
/// to other nodes.
pub(crate) fn cluster_prometheus(out: &mut String, cluster: &crate::cluster::Cluster) {
    let name = "west_hub_cluster_nats_connected";
    family(
        out,
        name,
        "gauge",
        "Whether this node is connected to NATS.",
    );
    let up = u8::from(cluster.nats_state() == "connected");
    let _ = writeln!(out, "{name}{{node=\"{}\"}} {up}", cluster.node());
    let name = "west_hub_cluster_nodes_seen";
    family(
        out,
        name,
        "gauge",
        "Hub nodes whose heartbeat this node saw recently (itself included).",
    );
    let _ = writeln!(out, "{name} {}", cluster.nodes_seen().len());
    let name = "west_hub_cluster_forwards_in_flight";
    family(
        out,
        name,
        "gauge",
        "Frames sent to other nodes whose answer has not come back yet.",
    );
    let _ = writeln!(out, "{name} {}", cluster.in_flight());
}

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
    pub fn prometheus(&self, attached: &[SiteHandle], claimed_pairings: usize) -> String {
        let mut out = String::new();
        let sites = self.snapshot();
        for counter in &COUNTERS {
            let name = counter.metric;
            family(&mut out, name, "counter", counter.help);
            for (site, c) in &sites {
                let _ = writeln!(
                    out,
                    "{name}{{site=\"{site}\"}} {}",
                    SiteCounters::get((counter.read)(c))
                );
            }
        }
        family(
            &mut out,
            "west_hub_site_connected",
            "gauge",
            "Whether the site has a live link.",
        );
        for (site, _) in &sites {
            let up = attached.iter().any(|p| &*p.site == site.as_str());
            let _ = writeln!(
                out,
                "west_hub_site_connected{{site=\"{site}\"}} {}",
                u8::from(up)
            );
        }
        let name = "west_hub_sites_connected";
        family(&mut out, name, "gauge", "Sites with a live link.");
        let _ = writeln!(out, "{name} {}", attached.len());
        let name = "west_hub_claimed_pairings";
        let help = "Pairings claimed by sites (each pairing counts once per side).";
        family(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {claimed_pairings}");
        family(
            &mut out,
            "west_hub_refused_total",
            "counter",
            "Connections refused, by reason.",
        );
        for (code, n) in self.refusals() {
            let _ = writeln!(out, "west_hub_refused_total{{code=\"{code}\"}} {n}");
        }
        out
    }

    /// The `sites` part of `/health`: every registered site with its link and counters.
    pub fn sites_json(&self, registry: &[SiteEntry], attached: &[SiteHandle]) -> serde_json::Value {
        let counters: BTreeMap<String, Arc<SiteCounters>> = self.snapshot().into_iter().collect();
        let list: Vec<serde_json::Value> = registry
            .iter()
            .map(|s| {
                let peer = attached.iter().find(|p| *p.site == *s.name);
                let c = counters.get(&s.name);
                let mut site = json!({
                    "name": s.name,
                    "active": s.active,
                    "connected": peer.is_some(),
                    "remote": peer.map(|p| p.remote.to_string()),
                });
                for counter in &COUNTERS {
                    if let Some(key) = counter.key {
                        let n = c.map_or(0, |c| SiteCounters::get((counter.read)(c)));
                        site[key] = json!(n);
                    }
                }
                site
            })
            .collect();
        serde_json::Value::Array(list)
    }
}
