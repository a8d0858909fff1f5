//! The site's Prometheus metrics, kept on a recorder owned by the site rather than a global
//! one, so that several sites can live in one process (tests, quickstart) without sharing
//! counters.

use metrics::{Counter, Histogram, Key, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Handles on every metric the site records.
pub struct SiteMetrics {
    handle: PrometheusHandle,
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
        }
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
