//! The site's Prometheus metrics, kept on a recorder owned by the site rather than a global
//! one, so that several sites can live in one process (tests, quickstart) without sharing
//! counters.
//!
//! The hub link's gauges (`west_hub_link_up`, `west_hub_rtt_seconds`) are read from the
//! [`Link`] handed to [`SiteMetrics::watch_link`] each time the metrics are rendered, so they
//! are never stale and nothing polls.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::link::Link;
use crate::peers::status::SyncStatus;

/// Handles on every metric the site records.
pub struct SiteMetrics {
    handle: PrometheusHandle,
    /// Kept to register per-connector sync metrics as connectors get paired.
    recorder: PrometheusRecorder,
    /// Points stored by the device API (single and bulk).
    pub ingest_points: Counter,
    /// Ingest requests refused for bad input.
    pub ingest_refused: Counter,
    /// Seconds from receiving an ingest request to its durable acknowledgement.
    pub ingest_seconds: Histogram,
    /// Wake-ups of the sync drivers, all connectors together: what idle pairings cost.
    pub sync_driver_wakeups: Counter,
    /// Store calls of the sync drivers and of the site's retention pass.
    pub sync_store_jobs: Counter,
    /// Alarm events the webhook's receiver accepted.
    pub alarm_webhook_delivered: Counter,
    /// Alarm events the webhook never delivered: refused, given up after every retry, or
    /// dropped from a full queue.
    pub alarm_webhook_undelivered: Counter,
    /// The hub link whose state and round trip the rendered metrics show (set once, when
    /// the site's services start).
    link: OnceLock<Link>,
    /// 1 while the hub link is connected, else 0 (also 0 without a hub).
    hub_link_up: Gauge,
    /// Round trip of the last heartbeat to the hub; NaN before the first.
    hub_rtt_seconds: Gauge,
    /// 1 while the hub refuses this site (its credential, say), else 0: the site keeps
    /// serving locally and an operator must act.
    hub_link_refused: Gauge,
    /// 1 while writes fail because the disk is full (set by a write that failed so, cleared
    /// by the next one that succeeds).
    storage_full: Gauge,
    storage_full_now: std::sync::atomic::AtomicBool,
}

/// The `# HELP` text of every metric the site exposes: Prometheus and Grafana show it to the
/// operator, and `promtool check metrics` requires it. A metric missing here fails the
/// `every_metric_has_help` test.
const HELP: &[(&str, &str)] = &[
    (
        "west_ingest_points_total",
        "Points stored by the device API (single and bulk).",
    ),
    (
        "west_ingest_refused_total",
        "Ingest requests refused (bad input, unknown device, full disk).",
    ),
    (
        "west_ingest_seconds",
        "Seconds from receiving an ingest request to its durable acknowledgement.",
    ),
    (
        "west_hub_link_up",
        "1 while the link to the Connectivity Hub is connected, else 0.",
    ),
    (
        "west_hub_rtt_seconds",
        "Round trip of the last heartbeat to the hub; NaN before the first.",
    ),
    (
        "west_hub_link_refused",
        "1 while the hub refuses this site (credential, version); the site keeps serving locally.",
    ),
    (
        "west_storage_full",
        "1 while writes fail because the disk is full; ingest answers 507 storage_full.",
    ),
    (
        "west_sync_link_up",
        "1 while the connector's end-to-end encrypted session with its peer is up.",
    ),
    (
        "west_sync_lag_seconds",
        "Age in seconds of the oldest record not yet applied on the Target.",
    ),
    (
        "west_sync_backlog_points",
        "Records still to deliver: on a Source the unacknowledged outbox, on a Target what the Source reported beyond the cursor.",
    ),
    (
        "west_sync_live_lane",
        "1 while a live lane runs ahead of a backlog that drains behind it (docs/sync.md, Two lanes), else 0.",
    ),
    (
        "west_sync_live_lag_points",
        "Records of the live lane not yet applied on the Target.",
    ),
    (
        "west_sync_catchup_points",
        "Records of the backlog lane, behind the live lane, not yet applied on the Target (0 with one lane).",
    ),
    (
        "west_sync_catchup_bytes",
        "Estimated bytes of the backlog lane in the Source's outbox (0 on a Target or with one lane).",
    ),
    (
        "west_sync_catchup_oldest_seconds",
        "Age in seconds of the oldest record of the backlog lane (0 with one lane).",
    ),
    (
        "west_sync_catchup_rate",
        "Records per second the backlog lane shrinks.",
    ),
    (
        "west_sync_catchup_eta_seconds",
        "Seconds until the backlog lane reaches the live lane at its rate (0 with one lane or while it does not move).",
    ),
    (
        "west_sync_backlog_bytes",
        "Estimated bytes of undelivered data the Source keeps for its peer.",
    ),
    (
        "west_sync_outbox_partitions",
        "Time partitions of the Source's outbox still held.",
    ),
    (
        "west_sync_send_rate",
        "Points per second sent to the peer over the last few seconds.",
    ),
    (
        "west_sync_apply_rate",
        "Points per second applied from the peer over the last few seconds.",
    ),
    (
        "west_sync_points_sent_total",
        "Records sent to the peer since the site started.",
    ),
    (
        "west_sync_points_applied_total",
        "Records applied from the peer since the site started.",
    ),
    (
        "west_sync_gaps_total",
        "Gaps (data the Source's retention dropped before delivery) recorded since the site started.",
    ),
    (
        "west_sync_points_lost_total",
        "Points inside recorded gaps since the site started.",
    ),
    (
        "west_sync_points_expired_total",
        "Undelivered points this site's retention dropped (reported to the peer as gaps) since it started.",
    ),
    (
        "west_sync_wire_bytes_sent_total",
        "Sync bytes sent to the peer (compressed, before encryption) since the site started.",
    ),
    (
        "west_sync_wire_bytes_received_total",
        "Sync bytes received from the peer since the site started.",
    ),
    (
        "west_sync_reconnects_total",
        "Times the sync layer asked for a new session (no progress, errors) since the site started.",
    ),
    (
        "west_sync_session_stalled",
        "1 while a paired connector's hub link has been up for 30 s or more without an encrypted session with its peer (sync cannot resume; the site keeps trying), else 0",
    ),
    (
        "west_sync_peer_version_mismatch",
        "1 while the peer's sync messages carry another protocol version than this site's (the peer runs an older or newer version of West; nothing syncs until both run the same), else 0",
    ),
    (
        "west_sync_session_down_seconds",
        "Seconds the hub link has been up without an encrypted session with the peer; 0 while the session is up or the link down",
    ),
    (
        "west_sync_session_messages_dropped_total",
        "Messages from the peer dropped because this site's session could not take them in time (the sync layer resends them).",
    ),
    (
        "west_alarm_active",
        "1 while the connector's alarm of this kind (lag, backlog, unreachable, gap) is raised, 0 once cleared.",
    ),
    (
        "west_alarm_webhook_delivered_total",
        "Alarm events (raised, cleared) the alarm webhook's receiver accepted since the site started.",
    ),
    (
        "west_alarm_webhook_undelivered_total",
        "Alarm events the alarm webhook did not deliver (refused, retries exhausted, or its queue full) since the site started.",
    ),
    (
        "west_sync_driver_wakeups_total",
        "Wake-ups of the sync drivers of all connectors together; idle pairings add none.",
    ),
    (
        "west_sync_store_jobs_total",
        "Store calls of the sync drivers and of the site's retention pass; idle pairings add none.",
    ),
];

impl SiteMetrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        for (name, help) in HELP {
            // The exporter prints one HELP line per metric name, whatever its kind.
            recorder.describe_gauge(
                KeyName::from_const_str(name),
                None,
                metrics::SharedString::const_str(help),
            );
        }
        let handle = recorder.handle();
        let meta = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
        let counter =
            |name: &'static str| recorder.register_counter(&Key::from_static_name(name), &meta);
        Self {
            ingest_points: counter("west_ingest_points_total"),
            ingest_refused: counter("west_ingest_refused_total"),
            sync_driver_wakeups: counter("west_sync_driver_wakeups_total"),
            sync_store_jobs: counter("west_sync_store_jobs_total"),
            alarm_webhook_delivered: counter("west_alarm_webhook_delivered_total"),
            alarm_webhook_undelivered: counter("west_alarm_webhook_undelivered_total"),
            ingest_seconds: recorder
                .register_histogram(&Key::from_static_name("west_ingest_seconds"), &meta),
            link: OnceLock::new(),
            hub_link_up: recorder.register_gauge(&Key::from_static_name("west_hub_link_up"), &meta),
            hub_rtt_seconds: recorder
                .register_gauge(&Key::from_static_name("west_hub_rtt_seconds"), &meta),
            hub_link_refused: recorder
                .register_gauge(&Key::from_static_name("west_hub_link_refused"), &meta),
            storage_full: recorder
                .register_gauge(&Key::from_static_name("west_storage_full"), &meta),
            storage_full_now: std::sync::atomic::AtomicBool::new(false),
            handle,
            recorder,
        }
    }

    /// Records whether the last write found the disk full.
    pub fn set_storage_full(&self, full: bool) {
        use std::sync::atomic::Ordering;
        if self.storage_full_now.swap(full, Ordering::Relaxed) != full {
            self.storage_full.set(if full { 1.0 } else { 0.0 });
            if !full {
                tracing::info!("the disk has room again; writes are accepted");
            }
        }
    }

    /// Whether the last write found the disk full.
    pub fn storage_full(&self) -> bool {
        self.storage_full_now
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Publishes one connector's sync status: link, lag, backlog, throughput, gaps, bytes.
    pub fn sync_status(&self, connector: &proto::model::ConnectorId, s: &SyncStatus) {
        let meta = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
        let key = |name: &'static str| {
            Key::from_parts(name, vec![Label::new("connector", connector.to_string())])
        };
        let gauge = |name: &'static str, v: f64| {
            self.recorder.register_gauge(&key(name), &meta).set(v);
        };
        gauge("west_sync_link_up", if s.session_up { 1.0 } else { 0.0 });
        gauge(
            "west_sync_session_stalled",
            if s.session_stalled { 1.0 } else { 0.0 },
        );
        gauge(
            "west_sync_session_down_seconds",
            s.session_down_seconds.unwrap_or(0.0),
        );
        gauge(
            "west_sync_peer_version_mismatch",
            if s.version_mismatch.is_some() {
                1.0
            } else {
                0.0
            },
        );
        gauge("west_sync_lag_seconds", s.lag_seconds);
        gauge("west_sync_backlog_points", s.backlog_points as f64);
        gauge("west_sync_backlog_bytes", s.outbox_bytes as f64);
        gauge(
            "west_sync_live_lane",
            if s.live_from.is_some() { 1.0 } else { 0.0 },
        );
        gauge("west_sync_live_lag_points", s.live_lag_points as f64);
        gauge("west_sync_catchup_points", s.catchup_points as f64);
        gauge(
            "west_sync_catchup_bytes",
            s.catchup_bytes.unwrap_or(0) as f64,
        );
        gauge(
            "west_sync_catchup_oldest_seconds",
            s.catchup_oldest_at.map_or(0.0, |at| {
                (crate::clock::now_micros() - at).max(0) as f64 / 1e6
            }),
        );
        gauge("west_sync_catchup_rate", s.catchup_rate);
        gauge(
            "west_sync_catchup_eta_seconds",
            s.catchup_eta_seconds.unwrap_or(0.0),
        );
        gauge("west_sync_outbox_partitions", s.outbox_partitions as f64);
        gauge("west_sync_send_rate", s.send_rate);
        gauge("west_sync_apply_rate", s.apply_rate);
        let counter = |name: &'static str, v: u64| {
            self.recorder
                .register_counter(&key(name), &meta)
                .absolute(v);
        };
        counter("west_sync_points_sent_total", s.points_sent);
        counter("west_sync_points_applied_total", s.points_applied);
        counter("west_sync_gaps_total", s.gaps_recorded);
        counter("west_sync_points_lost_total", s.points_lost);
        counter("west_sync_points_expired_total", s.points_expired);
        counter("west_sync_wire_bytes_sent_total", s.bytes_sent);
        counter("west_sync_wire_bytes_received_total", s.bytes_received);
        counter("west_sync_reconnects_total", s.reconnects);
        counter(
            "west_sync_session_messages_dropped_total",
            s.messages_dropped,
        );
    }

    /// Publishes whether `connector`'s alarm of `kind` is raised.
    pub fn alarm_active(&self, connector: &proto::model::ConnectorId, kind: &str, active: bool) {
        let meta = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
        let key = Key::from_parts(
            "west_alarm_active",
            vec![
                Label::new("connector", connector.to_string()),
                Label::new("kind", kind.to_owned()),
            ],
        );
        self.recorder
            .register_gauge(&key, &meta)
            .set(if active { 1.0 } else { 0.0 });
    }

    /// Makes the rendered metrics show `link`'s state and round trip. The first call wins.
    pub fn watch_link(&self, link: Link) {
        let _ = self.link.set(link);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let (up, rtt, refused) = self.link.get().map_or((false, None, false), |l| {
            let state = l.state();
            (
                state.connected(),
                l.hub_rtt(),
                matches!(state, crate::link::LinkState::Refused { .. }),
            )
        });
        self.hub_link_up.set(if up { 1.0 } else { 0.0 });
        self.hub_link_refused.set(if refused { 1.0 } else { 0.0 });
        self.hub_rtt_seconds
            .set(rtt.map_or(f64::NAN, |d| d.as_secs_f64()));
        self.handle.render()
    }
}

impl Default for SiteMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, metric: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{metric} ")))
            .map(str::to_owned)
    }

    #[test]
    fn a_stalled_session_is_a_gauge_with_its_help() {
        let m = SiteMetrics::new();
        let cid = proto::model::ConnectorId::parse("sourceconn0001").expect("valid id");
        let mut s = SyncStatus {
            session_down_seconds: Some(42.5),
            session_stalled: true,
            ..SyncStatus::default()
        };
        m.sync_status(&cid, &s);
        let text = m.render();
        let stalled = "west_sync_session_stalled{connector=\"sourceconn0001\"}";
        assert_eq!(value(&text, stalled).as_deref(), Some("1"), "{text}");
        assert_eq!(
            value(
                &text,
                "west_sync_session_down_seconds{connector=\"sourceconn0001\"}"
            )
            .as_deref(),
            Some("42.5")
        );
        assert!(
            text.contains("# HELP west_sync_session_stalled 1 while"),
            "{text}"
        );
        s.session_down_seconds = None;
        s.session_stalled = false;
        m.sync_status(&cid, &s);
        assert_eq!(value(&m.render(), stalled).as_deref(), Some("0"));
    }

    #[test]
    fn every_metric_has_help() {
        let m = SiteMetrics::new();
        let cid = proto::model::ConnectorId::parse("58s2flofdl92if").unwrap();
        m.sync_status(&cid, &SyncStatus::default());
        m.alarm_active(&cid, "lag", true);
        m.ingest_seconds.record(0.01);
        let text = m.render();
        let helped: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let typed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(typed.len() >= HELP.len(), "{text}");
        for name in typed {
            assert!(helped.contains(&name), "{name} has no HELP line:\n{text}");
        }
    }

    #[test]
    fn an_alarm_reads_zero_until_raised_and_after_it_clears() {
        let m = SiteMetrics::new();
        let cid = proto::model::ConnectorId::parse("sourceconn0001").expect("valid id");
        let line = "west_alarm_active{connector=\"sourceconn0001\",kind=\"gap\"}";
        m.alarm_active(&cid, "gap", false);
        assert_eq!(value(&m.render(), line).as_deref(), Some("0"));
        m.alarm_active(&cid, "gap", true);
        assert_eq!(value(&m.render(), line).as_deref(), Some("1"));
        m.alarm_active(&cid, "gap", false);
        assert_eq!(value(&m.render(), line).as_deref(), Some("0"));
    }

    #[test]
    fn hub_link_gauges_follow_the_link() {
        let m = SiteMetrics::new();
        // No link watched yet: down, no round trip.
        let text = m.render();
        assert_eq!(value(&text, "west_hub_link_up").as_deref(), Some("0"));
        assert_eq!(value(&text, "west_hub_rtt_seconds").as_deref(), Some("NaN"));
        m.watch_link(Link::disabled());
        let text = m.render();
        assert_eq!(value(&text, "west_hub_link_up").as_deref(), Some("0"));
    }
}
