//! When an alarm of one paired connector is raised and cleared: a pure function of what
//! the connector's sync reports ([`Observation`]), its thresholds, which of its alarms are
//! active, and the time, plus the little it remembers between two looks ([`Watch`]: since
//! when the peer is unreachable, how much data was lost and when). No clock, no store, no
//! I/O: the site's evaluator task (`remote::alarms`) feeds it and persists what it decides.
//!
//! | kind | raised when | cleared when |
//! |---|---|---|
//! | `lag` | the oldest record not yet applied on the Target is `lag_seconds` old | it is younger than 80% of that |
//! | `backlog` | `backlog_points` records wait for delivery | fewer than 80% of that wait |
//! | `unreachable` | the encrypted session with the peer has been down for `unreachable_seconds` | the session is up |
//! | `gap` | retention dropped `gap_points` undelivered points (a new gap) since the last `gap` alarm | an hour ([`GAP_HOLD`]) has passed without a new loss |
//!
//! An alarm whose threshold is turned off (`None`) clears at the next look. The 80% margin
//! keeps a figure that hovers at its threshold from raising and clearing over and over.

use std::time::{Duration, Instant};

use store::{AlarmKind, AlarmSettings};

/// A lag or backlog alarm clears once its figure is below this share of its threshold.
pub const CLEAR_BELOW: f64 = 0.8;
/// A gap alarm clears after this long without a new loss.
pub const GAP_HOLD: Duration = Duration::from_secs(3600);

/// What one connector's sync reports at one look.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// The peer's site, for the alarms' sentences.
    pub peer_site: String,
    /// Whether the encrypted session with the peer is up.
    pub connected: bool,
    /// Age of the oldest record not yet applied on the Target, seconds.
    pub lag_seconds: f64,
    /// Records still to deliver.
    pub backlog_points: u64,
    /// Undelivered points lost to retention so far (a running total of the sync driver,
    /// which starts from zero when the driver does).
    pub points_lost: u64,
}

/// What the evaluator decided about one alarm.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Raise {
        kind: AlarmKind,
        /// The figure that crossed the threshold, in the threshold's unit.
        value: f64,
        threshold: u64,
        message: String,
    },
    Clear {
        kind: AlarmKind,
    },
}

/// What the evaluator remembers of one connector between two looks.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Since when the session has been seen down (the first look that found it down).
    down_since: Option<Instant>,
    /// The driver's running total of lost points at the previous look.
    lost_seen: u64,
    /// Points lost since the last gap alarm was raised, not yet reported by one.
    lost_unreported: u64,
    /// When the total of lost points last grew.
    last_loss: Option<Instant>,
}

impl Watch {
    /// A watch of a connector whose gap alarm is active since a loss at `at` (the site
    /// restarted with it active): it clears [`GAP_HOLD`] after `at` unless more is lost.
    pub fn with_loss_at(at: Instant) -> Self {
        Self {
            last_loss: Some(at),
            ..Self::default()
        }
    }

    /// Looks at one observation at `now` and says which alarms to raise and clear, given
    /// the thresholds and whether each kind is `active` now.
    pub fn evaluate(
        &mut self,
        now: Instant,
        obs: &Observation,
        th: &AlarmSettings,
        active: impl Fn(AlarmKind) -> bool,
    ) -> Vec<Change> {
        let mut out = Vec::new();
        let peer = &obs.peer_site;

        // Unreachable: timed from the first look that found the session down.
        let down_for = if obs.connected {
            self.down_since = None;
            None
        } else {
            Some(now.duration_since(*self.down_since.get_or_insert(now)))
        };
        let kind = AlarmKind::Unreachable;
        match (th.unreachable_seconds, down_for) {
            (Some(t), Some(d)) if d.as_secs() >= t => {
                if !active(kind) {
                    out.push(Change::Raise {
                        kind,
                        value: d.as_secs() as f64,
                        threshold: t,
                        message: format!(
                            "The peer {peer} has been unreachable for {} (threshold {}).",
                            duration(d.as_secs()),
                            duration(t)
                        ),
                    });
                }
            }
            (Some(_), Some(_)) => {}
            _ => {
                if active(kind) {
                    out.push(Change::Clear { kind });
                }
            }
        }

        let level = |kind: AlarmKind, threshold: Option<u64>, value: f64, message: String| {
            let on = active(kind);
            match threshold {
                Some(t) if !on && value >= t as f64 => Some(Change::Raise {
                    kind,
                    value,
                    threshold: t,
                    message,
                }),
                Some(t) if on && value < t as f64 * CLEAR_BELOW => Some(Change::Clear { kind }),
                None if on => Some(Change::Clear { kind }),
                _ => None,
            }
        };
        let lag = obs.lag_seconds.max(0.0);
        out.extend(level(
            AlarmKind::Lag,
            th.lag_seconds,
            lag.floor(),
            format!(
                "Sync with {peer} lags: the oldest record not yet applied is {} old (threshold {}).",
                duration(lag as u64),
                duration(th.lag_seconds.unwrap_or(0))
            ),
        ));
        out.extend(level(
            AlarmKind::Backlog,
            th.backlog_points,
            obs.backlog_points as f64,
            format!(
                "{} wait for delivery to or from {peer} (threshold {}).",
                count(obs.backlog_points, "record"),
                count(th.backlog_points.unwrap_or(0), "record")
            ),
        ));

        // Gap: new losses since the previous look; a total lower than before means a
        // restarted driver counting from zero again.
        let new = if obs.points_lost >= self.lost_seen {
            obs.points_lost - self.lost_seen
        } else {
            obs.points_lost
        };
        self.lost_seen = obs.points_lost;
        if new > 0 {
            self.last_loss = Some(now);
        }
        let kind = AlarmKind::Gap;
        let on = active(kind);
        if on || th.gap_points.is_none() {
            self.lost_unreported = 0;
        } else {
            self.lost_unreported = self.lost_unreported.saturating_add(new);
        }
        match th.gap_points {
            Some(t) if !on && self.lost_unreported >= t => {
                out.push(Change::Raise {
                    kind,
                    value: self.lost_unreported as f64,
                    threshold: t,
                    message: format!(
                        "Retention dropped {} before {peer} had {}: a new gap (threshold {}).",
                        count(self.lost_unreported, "undelivered point"),
                        if self.lost_unreported == 1 {
                            "it"
                        } else {
                            "them"
                        },
                        count(t, "point")
                    ),
                });
            }
            Some(_)
                if on
                    && self
                        .last_loss
                        .is_none_or(|at| now.duration_since(at) >= GAP_HOLD) =>
            {
                out.push(Change::Clear { kind });
            }
            None if on => out.push(Change::Clear { kind }),
            _ => {}
        }
        out
    }
}

/// `n` of `noun`, plural-aware, with thousands separators: "1 record", "12,345 records".
pub fn count(n: u64, noun: &str) -> String {
    let digits = n.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{grouped} {noun}{}", if n == 1 { "" } else { "s" })
}

/// Whole seconds as an operator reads them: "45 s", "5 min", "2 h 5 min".
pub fn duration(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        _ if secs % 3600 / 60 == 0 => format!("{} h", secs / 3600),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const TH: AlarmSettings = AlarmSettings {
        lag_seconds: Some(300),
        backlog_points: Some(1000),
        unreachable_seconds: Some(120),
        gap_points: Some(1),
    };

    /// A connector under watch with its active alarms, fed observations at given seconds.
    struct Fixture {
        t0: Instant,
        watch: Watch,
        active: BTreeSet<AlarmKind>,
        th: AlarmSettings,
    }

    fn ok() -> Observation {
        Observation {
            peer_site: "site-b".into(),
            connected: true,
            ..Observation::default()
        }
    }

    impl Fixture {
        fn new(th: AlarmSettings) -> Self {
            Self {
                t0: Instant::now(),
                watch: Watch::default(),
                active: BTreeSet::new(),
                th,
            }
        }

        /// Looks at `obs` at `secs` and applies what it decides; returns the changes as
        /// `("+lag", "-gap", …)`.
        fn look(&mut self, secs: u64, obs: &Observation) -> Vec<String> {
            let now = self.t0 + Duration::from_secs(secs);
            let active = self.active.clone();
            let changes = self
                .watch
                .evaluate(now, obs, &self.th, |k| active.contains(&k));
            changes
                .iter()
                .map(|c| match c {
                    Change::Raise { kind, .. } => {
                        assert!(self.active.insert(*kind), "{kind:?} raised twice");
                        format!("+{}", kind.as_str())
                    }
                    Change::Clear { kind } => {
                        assert!(
                            self.active.remove(kind),
                            "{kind:?} cleared while not active"
                        );
                        format!("-{}", kind.as_str())
                    }
                })
                .collect()
        }
    }

    #[test]
    fn a_healthy_link_raises_nothing() {
        let mut f = Fixture::new(TH);
        for s in 0..1000 {
            assert!(f.look(s, &ok()).is_empty());
        }
    }

    #[test]
    fn unreachable_raises_after_its_threshold_and_clears_when_the_session_is_up() {
        let mut f = Fixture::new(TH);
        let down = Observation {
            connected: false,
            ..ok()
        };
        assert!(f.look(0, &ok()).is_empty());
        assert!(f.look(10, &down).is_empty(), "down from 10 s");
        assert!(f.look(129, &down).is_empty(), "119 s down is under 120");
        assert_eq!(f.look(130, &down), ["+unreachable"]);
        assert!(f.look(500, &down).is_empty(), "raised once");
        assert_eq!(f.look(501, &ok()), ["-unreachable"]);
        // Down again: timed from this outage, not the last one.
        assert!(f.look(600, &down).is_empty());
        assert!(f.look(700, &down).is_empty());
        assert_eq!(f.look(720, &down), ["+unreachable"]);
    }

    #[test]
    fn the_raised_alarm_carries_its_figure_and_a_sentence() {
        let mut w = Watch::default();
        let t0 = Instant::now();
        let down = Observation {
            connected: false,
            ..ok()
        };
        w.evaluate(t0, &down, &TH, |_| false);
        let got = w.evaluate(t0 + Duration::from_secs(125), &down, &TH, |_| false);
        assert_eq!(
            got,
            vec![Change::Raise {
                kind: AlarmKind::Unreachable,
                value: 125.0,
                threshold: 120,
                message: "The peer site-b has been unreachable for 2 min (threshold 2 min).".into()
            }]
        );
    }

    #[test]
    fn lag_and_backlog_raise_at_their_threshold_and_clear_below_eighty_percent() {
        let mut f = Fixture::new(TH);
        let at = |lag: f64, backlog: u64| Observation {
            lag_seconds: lag,
            backlog_points: backlog,
            ..ok()
        };
        assert!(f.look(0, &at(299.9, 999)).is_empty());
        assert_eq!(f.look(1, &at(300.0, 999)), ["+lag"]);
        assert_eq!(f.look(2, &at(310.0, 1000)), ["+backlog"]);
        // Hovering just under the threshold clears nothing.
        assert!(f.look(3, &at(290.0, 990)).is_empty());
        assert!(f.look(4, &at(240.0, 800)).is_empty(), "80% still holds it");
        assert_eq!(f.look(5, &at(239.0, 800)), ["-lag"]);
        assert_eq!(f.look(6, &at(0.0, 799)), ["-backlog"]);
    }

    #[test]
    fn a_new_loss_raises_a_gap_that_clears_after_an_hour_without_more() {
        let mut f = Fixture::new(AlarmSettings {
            gap_points: Some(10),
            ..TH
        });
        let lost = |n: u64| Observation {
            points_lost: n,
            ..ok()
        };
        assert!(f.look(0, &lost(0)).is_empty());
        assert!(f.look(1, &lost(4)).is_empty(), "4 of 10");
        assert_eq!(
            f.look(2, &lost(12)),
            ["+gap"],
            "12 lost since the last alarm"
        );
        assert!(
            f.look(1000, &lost(20)).is_empty(),
            "more loss keeps it raised"
        );
        assert!(f.look(1000 + 3599, &lost(20)).is_empty());
        assert_eq!(f.look(1000 + 3600, &lost(20)), ["-gap"]);
        // What was lost while it was active was reported by it; a fresh 10 raises again.
        assert!(f.look(5000, &lost(29)).is_empty());
        assert_eq!(f.look(5001, &lost(30)), ["+gap"]);
    }

    #[test]
    fn a_restarted_driver_counts_its_losses_from_zero() {
        let mut f = Fixture::new(TH);
        let lost = |n: u64| Observation {
            points_lost: n,
            ..ok()
        };
        assert_eq!(f.look(0, &lost(50)), ["+gap"]);
        assert_eq!(f.look(3600, &lost(50)), ["-gap"]);
        // The driver restarted: its total is 3, lower than 50, and all 3 are new.
        assert_eq!(f.look(3601, &lost(3)), ["+gap"]);
    }

    #[test]
    fn a_gap_active_across_a_restart_clears_an_hour_after_its_loss() {
        let t0 = Instant::now();
        let mut w = Watch::with_loss_at(t0);
        let obs = ok();
        let at = |s| t0 + Duration::from_secs(s);
        assert!(
            w.evaluate(at(3599), &obs, &TH, |k| k == AlarmKind::Gap)
                .is_empty()
        );
        assert_eq!(
            w.evaluate(at(3600), &obs, &TH, |k| k == AlarmKind::Gap),
            vec![Change::Clear {
                kind: AlarmKind::Gap
            }]
        );
    }

    #[test]
    fn an_alarm_turned_off_clears_and_raises_no_more() {
        let mut f = Fixture::new(TH);
        let bad = Observation {
            connected: false,
            lag_seconds: 1e6,
            backlog_points: 1_000_000,
            points_lost: 5,
            ..ok()
        };
        assert_eq!(f.look(0, &bad), ["+lag", "+backlog", "+gap"]);
        assert_eq!(f.look(200, &bad), ["+unreachable"]);
        f.th = AlarmSettings::default();
        let mut cleared = f.look(201, &bad);
        cleared.sort();
        assert_eq!(cleared, ["-backlog", "-gap", "-lag", "-unreachable"]);
        let more = Observation {
            points_lost: 50,
            ..bad
        };
        assert!(f.look(5000, &more).is_empty());
        // Losses while the gap alarm was off are not held against the connector later.
        f.th = TH;
        let got = f.look(5001, &more);
        assert!(!got.contains(&"+gap".to_string()), "{got:?}");
    }

    #[test]
    fn figures_read_as_an_operator_writes_them() {
        for (secs, want) in [
            (0, "0 s"),
            (119, "119 s"),
            (120, "2 min"),
            (7199, "119 min"),
            (7200, "2 h"),
            (7500, "2 h 5 min"),
        ] {
            assert_eq!(duration(secs), want);
        }
        assert_eq!(count(1, "point"), "1 point");
        assert_eq!(count(0, "point"), "0 points");
        assert_eq!(count(1_234_567, "record"), "1,234,567 records");
        assert_eq!(count(100, "record"), "100 records");
    }
}
