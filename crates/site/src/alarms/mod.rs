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
//! This module is data below `state`, as `peers` is: the evaluator task that writes it is
//! `remote::alarms`, the operations that read it `ops::alarms`. Deliberately absent: any
//! timer per connector (one look per site covers all of them, and reads only memory; the
//! store is written only when an alarm is raised or cleared).

pub mod eval;

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
    /// Stored thresholds by connector (a connector not here has [`DEFAULTS`]), loaded by
    /// the evaluator when it starts and kept current by `ops::alarms`.
    thresholds: Mutex<HashMap<ConnectorId, AlarmSettings>>,
    /// Alarms active now, for the header's badge; written by the evaluator.
    active: AtomicU64,
}

impl Alarms {
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
