//! The hybrid logical clock (HLC) that stamps device changes, and the [`Stamp`] that orders
//! two writes of the same field across sites.
//!
//! An HLC reading is `(wall_us, counter)`: the largest physical time (µs since the epoch)
//! this site has seen, and a counter that orders events within one microsecond. It never goes
//! backwards, stays close to the physical clock, and is always greater than every reading the
//! site has observed from its peer, so that an edit made after seeing a remote change is
//! ordered after it whatever the two wall clocks say.
//!
//! Deliberately absent: reading a clock. The caller passes `now` (µs) to [`Hlc::tick`] and
//! [`Hlc::observe`]. The caller also keeps the clock across restarts: after a restart it
//! starts from the largest stamp in its device table (or a persisted reading), so that a
//! wall clock that went backwards cannot reuse a stamp.
//!
//! Invariants:
//! - `tick` and `observe` return a reading strictly greater than any earlier reading of the
//!   same clock, and `observe(remote, _)` returns one strictly greater than `remote`.
//! - [`Stamp`]s are totally ordered: by clock, then by site name (docs/spec.md §5's tie-break).

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// One reading of a hybrid logical clock. Ordered by `wall_us`, then `counter`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Hlc {
    /// The largest physical time seen, in µs since the epoch.
    pub wall_us: u64,
    /// Orders events that share `wall_us`.
    pub counter: u32,
}

impl Hlc {
    pub const ZERO: Hlc = Hlc {
        wall_us: 0,
        counter: 0,
    };

    pub fn new(wall_us: u64, counter: u32) -> Self {
        Self { wall_us, counter }
    }

    /// Advances the clock for a local event (an edit) and returns the new reading.
    pub fn tick(&mut self, now_us: u64) -> Hlc {
        if now_us > self.wall_us {
            *self = Hlc::new(now_us, 0);
        } else {
            self.bump(self.counter);
        }
        *self
    }

    /// Advances the clock past a reading received from the peer and returns the new reading.
    pub fn observe(&mut self, remote: Hlc, now_us: u64) -> Hlc {
        let wall = now_us.max(self.wall_us).max(remote.wall_us);
        if wall == now_us && wall > self.wall_us && wall > remote.wall_us {
            *self = Hlc::new(wall, 0);
            return *self;
        }
        let base = match (wall == self.wall_us, wall == remote.wall_us) {
            (true, true) => self.counter.max(remote.counter),
            (true, false) => self.counter,
            (false, true) => remote.counter,
            (false, false) => unreachable!("wall is the max of now and the two readings"),
        };
        self.wall_us = wall;
        self.bump(base);
        *self
    }

    /// Sets the counter to `base + 1`, moving to the next microsecond when it would overflow
    /// (four billion events in one microsecond: only a runaway peer gets here).
    fn bump(&mut self, base: u32) {
        match base.checked_add(1) {
            Some(c) => self.counter = c,
            None => {
                self.wall_us = self.wall_us.saturating_add(1);
                self.counter = 0;
            }
        }
    }
}

/// Who wrote a field and when: the HLC reading of the edit and the name of the site that
/// made it. Two stamps from different sites never compare equal, so last-writer-wins always
/// has exactly one winner.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub hlc: Hlc,
    /// The writing site's name on the hub; breaks ties between equal clocks.
    pub site: String,
}

impl Stamp {
    pub fn new(hlc: Hlc, site: impl Into<String>) -> Self {
        Self {
            hlc,
            site: site.into(),
        }
    }
}

impl Ord for Stamp {
    fn cmp(&self, other: &Self) -> Ordering {
        self.hlc
            .cmp(&other.hlc)
            .then_with(|| self.site.cmp(&other.site))
    }
}

impl PartialOrd for Stamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tick_follows_the_wall_clock_and_never_goes_back() {
        let mut c = Hlc::ZERO;
        assert_eq!(c.tick(100), Hlc::new(100, 0));
        assert_eq!(c.tick(100), Hlc::new(100, 1));
        assert_eq!(c.tick(50), Hlc::new(100, 2), "clock went backwards");
        assert_eq!(c.tick(200), Hlc::new(200, 0));
    }

    #[test]
    fn observe_moves_past_the_remote_reading() {
        let mut c = Hlc::new(100, 3);
        assert_eq!(c.observe(Hlc::new(500, 7), 200), Hlc::new(500, 8));
        assert_eq!(c.observe(Hlc::new(500, 2), 200), Hlc::new(500, 9));
        assert_eq!(c.observe(Hlc::new(10, 0), 900), Hlc::new(900, 0));
        let mut c = Hlc::new(7, u32::MAX);
        assert_eq!(c.tick(1), Hlc::new(8, 0), "counter overflow moves the wall");
    }

    #[test]
    fn stamps_break_ties_by_site_name() {
        let a = Stamp::new(Hlc::new(5, 0), "site-a");
        let b = Stamp::new(Hlc::new(5, 0), "site-b");
        assert!(a < b);
        assert!(Stamp::new(Hlc::new(5, 1), "site-a") > b);
    }

    proptest! {
        #[test]
        fn readings_are_strictly_increasing(
            events in proptest::collection::vec((any::<bool>(), 0u64..1000, 0u64..1000, any::<u32>()), 1..50)
        ) {
            let mut c = Hlc::ZERO;
            let mut last = Hlc::ZERO;
            for (remote, now, rw, rc) in events {
                let r = Hlc::new(rw, rc);
                let next = if remote { c.observe(r, now) } else { c.tick(now) };
                prop_assert!(next > last);
                if remote { prop_assert!(next > r); }
                prop_assert!(next.wall_us >= now);
                last = next;
            }
        }
    }
}
