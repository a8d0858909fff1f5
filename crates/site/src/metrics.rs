//! The site's Prometheus metrics, kept on a recorder owned by the site rather than a global
//! one, so that several sites can live in one process (tests, quickstart) without sharing
//! counters.

use metrics::{Counter, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::remote::sync::SyncStatus;

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
}

impl SiteMetrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let meta = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
        let counter =
            |name: &'static str| recorder.register_counter(&Key::from_static_name(name), &meta);
        Self {
            ingest_points: counter("west_ingest_points_total"),
            ingest_refused: counter("west_ingest_refused_total"),
            ingest_seconds: recorder
                .register_histogram(&Key::from_static_name("west_ingest_seconds"), &meta),
            handle,
            recorder,
        }
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
        gauge("west_sync_lag_seconds", s.lag_seconds);
        gauge("west_sync_backlog_points", s.backlog_points as f64);
        gauge("west_sync_backlog_bytes", s.outbox_bytes as f64);
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
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

impl Default for SiteMetrics {
    fn default() -> Self {
        Self::new()
    }
}
