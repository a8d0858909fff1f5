//! How each paired connector's sync is doing, and how to wake its driver: the part of
//! resource data synchronisation that the rest of the site reads (the API, the UI,
//! `/metrics`) and writes (`ops` wakes a connector's driver after every write that may have
//! grown its outbox). The driver itself is `remote::sync`; it registers here when it starts.
//!
//! The status publisher of each driver also keeps the connector's [`RateHistory`]: one
//! sample of the send and apply rates and the backlog every [`HISTORY_EVERY`], the last hour
//! of them, in memory only (no store writes), for the Remote-Sync tab's chart. It starts
//! empty when the site starts, and when a connector's pairing is cancelled.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::model::ConnectorId;
use store::Clock;
use tokio::sync::Notify;

/// Retention and clock of the sync engine, from the site's configuration.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// How long undelivered data (Source) and points for missing resources (Target) are kept.
    /// Default: 30 days.
    pub retention: Duration,
    /// Most estimated bytes a connector's outbox may hold; beyond it the oldest undelivered
    /// data is dropped (and reported as a gap). Default: none.
    pub disk_budget: Option<u64>,
    /// How long stored points are kept (whole hours are dropped past it). Default: for ever.
    pub keep_points: Option<Duration>,
    /// The wall clock of retention and of outbox partitions. Default: the system clock.
    pub clock: Clock,
    /// TEST ONLY: the sync protocol version this site puts on its sync messages and expects
    /// of its peer's, instead of `proto::sync::message::SYNC_VERSION`, so that a test can
    /// play a site of another version. Default: none (the build's).
    pub test_sync_version: Option<u8>,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(30 * 24 * 3600),
            disk_budget: None,
            keep_points: None,
            clock: Clock::system(),
            test_sync_version: None,
        }
    }
}

/// A clock that adds the number of seconds written in `path` (if any) to the system
/// clock. Test-only: it lets an end-to-end test jump a site past its retention. The file is
/// read at most every 200 ms.
pub fn offset_clock(path: PathBuf) -> Clock {
    let cache: Mutex<(Option<Instant>, i64)> = Mutex::new((None, 0));
    let system = Clock::system();
    Clock::new(move || {
        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.0
            .is_none_or(|at| at.elapsed() > Duration::from_millis(200))
        {
            let secs = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .unwrap_or(0);
            *c = (Some(Instant::now()), secs.saturating_mul(1_000_000));
        }
        system.now().saturating_add(c.1)
    })
}

/// How one connector's sync is doing, for the API, the UI and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncStatus {
    /// Whether a sync session with the peer is established.
    pub session_up: bool,
    /// Records still to deliver: on a Source the unacknowledged outbox, on a Target what
    /// the Source reported it holds beyond this side's cursor.
    pub backlog_points: u64,
    /// Age of the oldest record not yet applied on the Target, in seconds.
    pub lag_seconds: f64,
    pub outbox_head: u64,
    pub acked: u64,
    pub applied: u64,
    pub last_applied_at: Option<i64>,
    pub outbox_bytes: u64,
    pub outbox_partitions: u64,
    /// Since this process started.
    pub points_sent: u64,
    pub points_applied: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub gaps_recorded: u64,
    pub points_lost: u64,
    /// Undelivered points this side's retention dropped (reported to the peer as gaps),
    /// since this process started.
    pub points_expired: u64,
    pub reconnects: u64,
    /// Points per second over the last few seconds.
    pub send_rate: f64,
    pub apply_rate: f64,
    /// Records per second the peer acknowledged as applied, over the last few seconds: on
    /// a Source, how fast its Target applies the data stream.
    pub peer_apply_rate: f64,
    /// When (µs, system clock) the peer's acknowledgement last moved forward, since this
    /// process started.
    pub peer_applied_at: Option<i64>,
    /// Seconds until the backlog is delivered at the current rate, if it is moving.
    pub eta_seconds: Option<f64>,
    /// Where the live lane starts while a backlog drains behind it (docs/sync.md, "Two
    /// lanes"); `None` while the stream is one lane.
    pub live_from: Option<u64>,
    /// Records of the live lane not yet applied on the Target.
    pub live_lag_points: u64,
    /// Records of the backlog lane (below the live lane) not yet applied on the Target.
    pub catchup_points: u64,
    /// Estimated bytes of them in the Source's outbox (known on a Source only).
    pub catchup_bytes: Option<u64>,
    /// When (µs, system clock) the oldest of them was written on the Source (on a Target:
    /// when it first heard of it).
    pub catchup_oldest_at: Option<i64>,
    /// Records per second the backlog lane shrinks, over the last few seconds.
    pub catchup_rate: f64,
    /// Seconds until the backlog reaches the live lane at that rate, if it is moving.
    pub catchup_eta_seconds: Option<f64>,
    /// How long the hub link has been up without an encrypted session, if it is now.
    pub session_down_seconds: Option<f64>,
    /// Whether that has lasted [`STALL_AFTER`](super::peer::STALL_AFTER) or longer: the
    /// session layer keeps trying, but something is wrong (the peer's keys, say).
    pub session_stalled: bool,
    /// Session messages dropped because this driver lagged, since the site started.
    pub messages_dropped: u64,
    /// `(peer's, this site's)` sync protocol version while the peer's sync messages carry
    /// another version than this site's: nothing syncs until both sites run the same one.
    pub version_mismatch: Option<(u8, u8)>,
}

/// How often the rate history takes a sample.
pub const HISTORY_EVERY: Duration = Duration::from_secs(10);
/// How many samples the rate history keeps: an hour of them.
pub const HISTORY_LEN: usize = 360;

/// One sample of a connector's [`RateHistory`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSample {
    /// When it was taken: µs since the Unix epoch on the system clock (the viewer's time,
    /// not the sync engine's retention clock, which a test may move).
    pub t: i64,
    /// Points per second sent and applied over the interval that ends at `t`; on a Source
    /// "applied" is what its Target acknowledged, on a Target what it applied itself.
    pub send_rate: f64,
    pub apply_rate: f64,
    /// Records still to deliver at `t`, as [`SyncStatus::backlog_points`].
    pub backlog_points: u64,
}

/// The recent past of a connector's send and apply rates and backlog: a ring of the last
/// `capacity` samples, one every `every`, each rate averaged over its whole interval (not the
/// last few seconds of [`SyncStatus`]), so that a chart of them misses no burst.
///
/// Kept in memory only, so it is cheap and starts empty when the site starts; `since` says
/// from when it covers.
#[derive(Debug, Clone)]
pub struct RateHistory {
    samples: VecDeque<RateSample>,
    capacity: usize,
    every: Duration,
    /// When (µs, system clock) the history began: a chart says when it covers less than its
    /// range.
    since: i64,
    /// `(when, points sent, points applied)` at the previous sample: the base of the next
    /// one's rates.
    base: (Instant, u64, u64),
    /// When the next sample is due; sampling keeps to this schedule rather than drifting by
    /// the publisher's lateness.
    due: Instant,
}

impl RateHistory {
    /// An empty history that begins at `at` (wall clock `since`, µs), with the driver's
    /// counters at zero.
    pub fn new(capacity: usize, every: Duration, at: Instant, since: i64) -> Self {
        Self {
            samples: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
            every,
            since,
            base: (at, 0, 0),
            due: at + every,
        }
    }

    /// Takes a sample when one is due at `at` (wall clock `wall`, µs): the rates since the
    /// previous one from the driver's running totals `sent` and `applied`, and the current
    /// `backlog`. Returns whether it took one. Totals lower than the previous sample's mean
    /// that the driver restarted and counts from zero again.
    pub fn observe(
        &mut self,
        at: Instant,
        wall: i64,
        sent: u64,
        applied: u64,
        backlog: u64,
    ) -> bool {
        if at < self.due {
            return false;
        }
        let (then, sent0, applied0) = self.base;
        let secs = at.duration_since(then).as_secs_f64();
        let rate = |now: u64, before: u64| {
            let n = if now >= before { now - before } else { now };
            if secs > 0.0 { n as f64 / secs } else { 0.0 }
        };
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(RateSample {
            t: wall,
            send_rate: rate(sent, sent0),
            apply_rate: rate(applied, applied0),
            backlog_points: backlog,
        });
        self.base = (at, sent, applied);
        self.due += self.every;
        if self.due <= at {
            // The publisher was held up for more than an interval: start the schedule over.
            self.due = at + self.every;
        }
        true
    }

    /// Fills the intervals that ended by `at` (wall clock `wall`, µs) while the driver was
    /// idle with the samples it would have taken: zero rates (its totals did not move, or it
    /// would not have been idle) and the last backlog. An idle driver has no timer, so the
    /// history is completed when it is read and when the driver wakes up.
    pub fn fill_idle(&mut self, at: Instant, wall: i64) {
        let backlog = self.samples.back().map_or(0, |s| s.backlog_points);
        let mut filled = 0;
        while self.due <= at && filled < self.capacity {
            let ago = i64::try_from(at.duration_since(self.due).as_micros()).unwrap_or(i64::MAX);
            if self.samples.len() == self.capacity {
                self.samples.pop_front();
            }
            self.samples.push_back(RateSample {
                t: wall.saturating_sub(ago),
                send_rate: 0.0,
                apply_rate: 0.0,
                backlog_points: backlog,
            });
            self.base.0 = self.due;
            self.due += self.every;
            filled += 1;
        }
        if self.due <= at {
            // Idle for longer than the whole history: start the schedule over.
            self.base.0 = at;
            self.due = at + self.every;
        }
    }

    /// The samples taken at or after `since` (µs), oldest first.
    pub fn samples_since(&self, since: i64) -> Vec<RateSample> {
        let first = self.samples.partition_point(|s| s.t < since);
        self.samples.range(first..).copied().collect()
    }

    /// When (µs, system clock) the history began.
    pub fn since(&self) -> i64 {
        self.since
    }

    /// The interval between two samples.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// The most samples it keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

pub(crate) struct Shared {
    /// Wakes the driver: its outbox grew, or retention changed it.
    pub(crate) notify: Notify,
    /// Undelivered points the site's retention pass dropped from this connector's outbox.
    pub(crate) points_expired: AtomicU64,
    /// Set while the driver has no timer armed (nothing moves): readers of the history
    /// complete it up to now ([`RateHistory::fill_idle`]).
    pub(crate) idle: AtomicBool,
    /// The connector's bandwidth budget, bytes per second (0: none); the driver follows it.
    pub(crate) budget: AtomicU64,
    pub(crate) status: Mutex<SyncStatus>,
    /// The last hour of rates, for the UI's chart; written only by the status publisher.
    pub(crate) history: Mutex<RateHistory>,
}

/// Every running driver's wake-up and status, by connector.
#[derive(Default)]
pub struct SyncDrivers {
    drivers: Arc<Mutex<HashMap<ConnectorId, Arc<Shared>>>>,
    /// Whether the store wakes a driver itself once an append to its outbox is durable
    /// (`Store::wake_on_append`), so that a writer need not after its write returns.
    store_wakes: AtomicBool,
}

impl SyncDrivers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectorId, Arc<Shared>>> {
        self.drivers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Has the store wake each connector's driver as soon as an append to its outbox is
    /// durable: the driver then reads and sends while the write's caller is answered,
    /// instead of after (a point reaches the Target that much sooner).
    pub fn wake_from(&self, store: &dyn store::Store) {
        let drivers = Arc::clone(&self.drivers);
        let wakes = store.wake_on_append(Arc::new(move |cid: &ConnectorId| {
            let drivers = drivers.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = drivers.get(cid) {
                s.notify.notify_one();
            }
        }));
        self.store_wakes.store(wakes, Ordering::Relaxed);
    }

    /// Ingest committed points of `cid`: wake its driver unless the store already did.
    pub fn ingested(&self, cid: &ConnectorId) {
        if !self.store_wakes.load(Ordering::Relaxed) {
            self.appended(cid);
        }
    }

    pub(crate) fn register(&self, cid: &ConnectorId) -> Arc<Shared> {
        Arc::clone(self.lock().entry(cid.clone()).or_insert_with(|| {
            Arc::new(Shared {
                notify: Notify::new(),
                points_expired: AtomicU64::new(0),
                idle: AtomicBool::new(false),
                budget: AtomicU64::new(0),
                status: Mutex::new(SyncStatus::default()),
                history: Mutex::new(RateHistory::new(
                    HISTORY_LEN,
                    HISTORY_EVERY,
                    Instant::now(),
                    crate::clock::now_micros(),
                )),
            })
        }))
    }

    /// Forgets a connector's driver (its pairing was cancelled).
    pub fn unregister(&self, cid: &ConnectorId) {
        self.lock().remove(cid);
    }

    /// The connectors whose drivers run.
    pub fn connectors(&self) -> Vec<ConnectorId> {
        self.lock().keys().cloned().collect()
    }

    /// The site's retention pass dropped `points` undelivered points of `cid`: count them
    /// and wake its driver, whose gauges changed.
    pub fn expired(&self, cid: &ConnectorId, points: u64) {
        if let Some(s) = self.lock().get(cid) {
            s.points_expired.fetch_add(points, Ordering::Relaxed);
            s.notify.notify_one();
        }
    }

    /// The connector's bandwidth budget changed (it is persisted already): its driver, if
    /// it runs, paces its sends to it from now on.
    pub fn set_budget(&self, cid: &ConnectorId, max_bytes_per_s: Option<u64>) {
        if let Some(s) = self.lock().get(cid) {
            s.budget
                .store(max_bytes_per_s.unwrap_or(0), Ordering::Relaxed);
            s.notify.notify_one();
        }
    }

    /// Ingest committed points of `cid`: wake its driver, if it runs.
    pub fn appended(&self, cid: &ConnectorId) {
        if let Some(s) = self.lock().get(cid) {
            s.notify.notify_one();
        }
    }

    /// The latest status of a connector's driver, if it runs.
    pub fn status(&self, cid: &ConnectorId) -> Option<SyncStatus> {
        let shared = self.lock().get(cid).cloned()?;
        let s = shared.status.lock().unwrap_or_else(|e| e.into_inner());
        Some(s.clone())
    }

    /// The rate history of a connector's driver, if it runs.
    pub fn history(&self, cid: &ConnectorId) -> Option<RateHistory> {
        let shared = self.lock().get(cid).cloned()?;
        let mut h = shared
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if shared.idle.load(Ordering::Acquire) {
            h.fill_idle(Instant::now(), crate::clock::now_micros());
        }
        Some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(10);

    /// A history of `capacity` that began at `t0` (wall clock 1,000 s).
    fn history(capacity: usize, t0: Instant) -> RateHistory {
        RateHistory::new(capacity, EVERY, t0, 1_000_000_000)
    }

    fn wall(secs: u64) -> i64 {
        1_000_000_000 + i64::try_from(secs).unwrap() * 1_000_000
    }

    #[test]
    fn a_sample_is_taken_once_per_interval_with_the_rates_over_it() {
        let t0 = Instant::now();
        let mut h = history(360, t0);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // Nothing before the first interval has passed, however often it is asked.
        assert!(!h.observe(at(0), wall(0), 0, 0, 0));
        assert!(!h.observe(at(9), wall(9), 500, 100, 400));
        assert!(h.observe(at(10), wall(10), 1_000, 200, 800));
        assert!(!h.observe(at(15), wall(15), 1_500, 300, 1_200));
        // A late publisher: rates over the 12 s that really passed; the schedule keeps.
        assert!(h.observe(at(22), wall(22), 2_200, 1_400, 0));
        assert!(h.observe(at(30), wall(30), 2_200, 2_200, 0));
        let got: Vec<(i64, f64, f64, u64)> = h
            .samples_since(0)
            .iter()
            .map(|s| (s.t, s.send_rate, s.apply_rate, s.backlog_points))
            .collect();
        assert_eq!(
            got,
            vec![
                (wall(10), 100.0, 20.0, 800),
                (wall(22), 100.0, 100.0, 0),
                (wall(30), 0.0, 100.0, 0),
            ]
        );
        assert_eq!(h.since(), wall(0));
    }

    #[test]
    fn the_ring_keeps_only_the_newest_samples() {
        let t0 = Instant::now();
        let mut h = history(360, t0);
        for i in 1..=400u64 {
            let secs = i * 10;
            assert!(h.observe(t0 + Duration::from_secs(secs), wall(secs), i * 10, 0, i));
        }
        let all = h.samples_since(0);
        assert_eq!(all.len(), 360);
        assert_eq!(all[0].t, wall(410), "the oldest 40 fell out");
        assert_eq!(all[359].t, wall(4_000));
        assert!(all.iter().all(|s| s.send_rate == 1.0));
        assert_eq!(h.capacity(), 360);
    }

    #[test]
    fn since_selects_the_samples_at_or_after_a_time() {
        let t0 = Instant::now();
        let mut h = history(8, t0);
        for secs in [10, 20, 30, 40] {
            h.observe(t0 + Duration::from_secs(secs), wall(secs), 0, 0, 0);
        }
        let times = |since| -> Vec<i64> { h.samples_since(since).iter().map(|s| s.t).collect() };
        assert_eq!(times(wall(20)), vec![wall(20), wall(30), wall(40)]);
        assert_eq!(times(wall(20) + 1), vec![wall(30), wall(40)]);
        assert_eq!(times(wall(41)), Vec::<i64>::new());
    }

    #[test]
    fn a_stall_longer_than_an_interval_restarts_the_schedule() {
        let t0 = Instant::now();
        let mut h = history(8, t0);
        // Held up for 95 s: one sample over the whole stretch, not nine catching up.
        assert!(h.observe(t0 + Duration::from_secs(95), wall(95), 950, 0, 0));
        assert!(!h.observe(t0 + Duration::from_secs(100), wall(100), 1_000, 0, 0));
        assert!(h.observe(t0 + Duration::from_secs(105), wall(105), 1_050, 0, 0));
        let rates: Vec<f64> = h.samples_since(0).iter().map(|s| s.send_rate).collect();
        assert_eq!(rates, vec![10.0, 10.0]);
    }

    #[test]
    fn an_idle_stretch_reads_as_zero_rates_on_schedule() {
        let t0 = Instant::now();
        let mut h = history(8, t0);
        h.observe(t0 + EVERY, wall(10), 100, 0, 7);
        // Idle from 10 s to 45 s: no timer, no sample, until someone reads or it wakes.
        h.fill_idle(t0 + Duration::from_secs(45), wall(45));
        let got: Vec<(i64, f64, u64)> = h
            .samples_since(0)
            .iter()
            .map(|s| (s.t, s.send_rate, s.backlog_points))
            .collect();
        assert_eq!(
            got,
            vec![
                (wall(10), 10.0, 7),
                (wall(20), 0.0, 7),
                (wall(30), 0.0, 7),
                (wall(40), 0.0, 7)
            ]
        );
        // It wakes at 47 s and sends 30 points: the next sample counts them over its own
        // interval only.
        assert!(h.observe(t0 + Duration::from_secs(50), wall(50), 130, 0, 0));
        assert_eq!(h.samples_since(wall(50))[0].send_rate, 3.0);
        // Idle for longer than the whole ring: it holds one ring of zeros.
        h.fill_idle(t0 + Duration::from_secs(500), wall(500));
        let all = h.samples_since(0);
        assert_eq!(all.len(), 8);
        assert!(all.iter().all(|s| s.send_rate == 0.0));
    }

    #[test]
    fn totals_that_went_down_mean_a_restarted_driver_counting_from_zero() {
        let t0 = Instant::now();
        let mut h = history(8, t0);
        h.observe(t0 + EVERY, wall(10), 5_000, 5_000, 0);
        h.observe(t0 + 2 * EVERY, wall(20), 300, 100, 0);
        let last = h.samples_since(wall(20))[0];
        assert_eq!((last.send_rate, last.apply_rate), (30.0, 10.0));
    }
}
