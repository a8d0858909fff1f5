//! Alarms on each paired connector's sync (docs/api.md, "Alarms"): thresholds per
//! connector with defaults, and what the rest of the site reads of the alarms the
//! evaluator keeps: how many are active (the UI header's badge) and each connector's
//! thresholds as the evaluator applies them.
//!
//! ```text
//!  ops::alarms (API, UI) ── thresholds ──▶ store + Alarms::set_thresholds
//!  remote::alarms (one task per site, a look every second, in memory)
//!      SyncDrivers::status, PeerHandle::is_up ─▶ eval::Watch::evaluate ─▶ raise / clear
//!      ─▶ store (history) ─▶ /metrics west_alarm_active ─▶ webhook (optional) ─▶ Alarms
//! ```
//!
//! The optional webhook (`webhook`) posts every raise and clear as JSON from a bounded
//! queue, retrying with backoff; the evaluator never waits for it.
//!
//! This module is data below `state`, as `peers` is: the evaluator task that writes it is
//! `remote::alarms`, the operations that read it `ops::alarms`. Deliberately absent: any
//! timer per connector (one look per site covers all of them, and reads only memory; the
//! store is written only when an alarm is raised or cleared).

pub mod eval;
pub mod webhook;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use proto::model::ConnectorId;
use store::AlarmSettings;

/// The thresholds of a connector that has none stored.
pub const DEFAULTS: AlarmSettings = AlarmSettings {
    lag_seconds: Some(300),
    backlog_points: Some(1_000_000),
    unreachable_seconds: Some(120),
    gap_points: Some(1),
};

/// The most cleared alarms the site keeps; the oldest go first.
pub const HISTORY_KEEP: usize = 10_000;

/// What the site's evaluator shares with the rest of the site.
#[derive(Default)]
pub struct Alarms {
    /// The webhook's queue, when the site has one (`--alarm-webhook`).
    webhook: Option<webhook::Queue>,
    /// The webhook's delivering end until the evaluator's task takes it.
    deliverer: Mutex<Option<webhook::Deliverer>>,
    /// Stored thresholds by connector (a connector not here has [`DEFAULTS`]), loaded by
    /// the evaluator when it starts and kept current by `ops::alarms`.
    thresholds: Mutex<HashMap<ConnectorId, AlarmSettings>>,
    /// Alarms active now, for the header's badge; written by the evaluator.
    active: AtomicU64,
}

impl Alarms {
    /// The alarms of a site that posts them to a webhook (`Some`) or not.
    pub fn new(webhook: Option<(webhook::Queue, webhook::Deliverer)>) -> Self {
        let (queue, deliverer) = webhook.unzip();
        Self {
            webhook: queue,
            deliverer: Mutex::new(deliverer),
            ..Self::default()
        }
    }

    /// Hands a JSON event to the webhook without waiting: `None` when the site has no
    /// webhook, `Some(false)` when its queue is full and the event is dropped.
    pub fn notify(&self, body: String) -> Option<bool> {
        self.webhook.as_ref().map(|q| q.push(body))
    }

    /// The webhook's delivering end, once, for the task that runs it.
    pub fn take_deliverer(&self) -> Option<webhook::Deliverer> {
        self.deliverer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectorId, AlarmSettings>> {
        self.thresholds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The thresholds the evaluator applies to `cid`.
    pub fn thresholds(&self, cid: &ConnectorId) -> AlarmSettings {
        self.lock().get(cid).copied().unwrap_or(DEFAULTS)
    }

    /// `cid`'s thresholds changed (they are stored already): the next look applies them.
    pub fn set_thresholds(&self, cid: &ConnectorId, settings: AlarmSettings) {
        self.lock().insert(cid.clone(), settings);
    }

    /// The stored thresholds of every connector, as read when the evaluator starts.
    /// Thresholds set since are kept.
    pub fn load(&self, stored: Vec<(ConnectorId, AlarmSettings)>) {
        let mut map = self.lock();
        for (cid, s) in stored {
            map.entry(cid).or_insert(s);
        }
    }

    /// How many alarms are active now.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// The evaluator's count of active alarms.
    pub fn set_active(&self, n: u64) {
        self.active.store(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_thresholds_override_the_defaults_and_later_ones_win_over_the_load() {
        let a = ConnectorId::parse("aaaaaaaaaaaaaa").unwrap();
        let b = ConnectorId::parse("bbbbbbbbbbbbbb").unwrap();
        let alarms = Alarms::default();
        assert_eq!(alarms.thresholds(&a), DEFAULTS);
        let fast = AlarmSettings {
            unreachable_seconds: Some(2),
            ..DEFAULTS
        };
        alarms.set_thresholds(&a, fast);
        // The evaluator's load read the store before that change reached it.
        alarms.load(vec![
            (a.clone(), DEFAULTS),
            (b.clone(), AlarmSettings::default()),
        ]);
        assert_eq!(alarms.thresholds(&a), fast);
        assert_eq!(alarms.thresholds(&b), AlarmSettings::default());
    }
}
