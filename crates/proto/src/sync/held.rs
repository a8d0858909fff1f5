//! What a receiver holds of a stream: the sequence numbers it has applied, as at most two
//! intervals — the *prefix* `1..=applied`, and above a hole the *live lane* `from..=to` that
//! a sender opens at its head when its backlog is large (docs/sync.md, "Two lanes").
//!
//! ```text
//!  1 ........ applied   (hole: the backlog lane)   from ...... to   (live lane) ... head
//!  └── prefix ──────┘                              └─ live ──────┘
//! ```
//!
//! Invariants:
//! - `applied + 1 < from <= to` whenever there is a live lane: the two never touch; when an
//!   addition makes the prefix reach `from - 1`, they merge into one prefix at once.
//! - [`Held::admit`] accepts only a range disjoint from what is held and adjacent to it: one
//!   that continues the prefix below the live lane, one that continues the live lane, or —
//!   with no live lane — one above the prefix, which opens the lane. So whatever order the
//!   ranges come in, no sequence number is ever added twice, and two intervals suffice.
//!
//! The receiver keeps two of these (what it handed to its driver, and what the store made
//! durable) and the receiving store checks every apply against its own in the transaction
//! that writes the records, which is what makes exactly-once hold across crashes.

use serde::{Deserialize, Serialize};

/// The applied sequence numbers of a stream (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Held {
    /// Everything in `1..=applied` is applied.
    pub applied: u64,
    /// A live lane `(from, to)` applied above a hole, if any.
    pub live: Option<(u64, u64)>,
}

/// Where an admitted range goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// It continues the prefix (and may merge it with the live lane).
    Prefix,
    /// It continues the live lane.
    Live,
    /// It starts a live lane above the prefix.
    Opens,
}

impl Held {
    /// Only a prefix.
    pub fn prefix(applied: u64) -> Self {
        Self {
            applied,
            live: None,
        }
    }

    /// Rebuilds it from the store's three numbers (`live_from` 0: no live lane); `None` when
    /// they break the invariants.
    pub fn from_parts(applied: u64, live_from: u64, live_to: u64) -> Option<Self> {
        if live_from == 0 {
            return Some(Self::prefix(applied));
        }
        (applied + 1 < live_from && live_from <= live_to).then_some(Self {
            applied,
            live: Some((live_from, live_to)),
        })
    }

    /// Whether `seq` is held.
    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.applied || self.live.is_some_and(|(f, t)| f <= seq && seq <= t)
    }

    /// Whether all of `first..=last` is held (a duplicate).
    pub fn covers(&self, first: u64, last: u64) -> bool {
        last <= self.applied || self.live.is_some_and(|(f, t)| f <= first && last <= t)
    }

    /// The highest sequence number held.
    pub fn top(&self) -> u64 {
        self.live.map_or(self.applied, |(_, t)| t)
    }

    /// How many sequence numbers are held.
    pub fn count(&self) -> u64 {
        self.applied + self.live.map_or(0, |(f, t)| t - f + 1)
    }

    /// The first sequence number after the prefix that is not held, where the prefix's next
    /// range must start: `applied + 1`.
    pub fn next(&self) -> u64 {
        self.applied + 1
    }

    /// Where `first..=last` may be added, or `None` when it overlaps what is held or is not
    /// adjacent to it (`open`: whether it may start a live lane).
    pub fn admit(&self, first: u64, last: u64, open: bool) -> Option<Admit> {
        if first == 0 || last < first {
            return None;
        }
        match self.live {
            _ if first == self.applied + 1 && self.live.is_none_or(|(f, _)| last < f) => {
                Some(Admit::Prefix)
            }
            Some((_, t)) if first == t + 1 => Some(Admit::Live),
            None if open && first > self.applied + 1 => Some(Admit::Opens),
            _ => None,
        }
    }

    /// Adds a range [`admit`](Self::admit) accepted; returns `false` (and changes nothing)
    /// for one it would refuse.
    pub fn add(&mut self, first: u64, last: u64, open: bool) -> bool {
        match self.admit(first, last, open) {
            None => return false,
            Some(Admit::Prefix) => self.applied = last,
            Some(Admit::Live) => {
                if let Some((_, t)) = &mut self.live {
                    *t = last;
                }
            }
            Some(Admit::Opens) => self.live = Some((first, last)),
        }
        if let Some((f, t)) = self.live
            && self.applied + 1 == f
        {
            self.applied = t;
            self.live = None;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lanes_open_continue_and_merge() {
        let mut h = Held::prefix(10);
        assert!(!h.add(12, 12, false), "a hole without permission to open");
        assert!(h.add(100, 105, true));
        assert_eq!(h.live, Some((100, 105)));
        assert!(!h.add(11, 100, false), "overlaps the live lane");
        assert!(!h.add(200, 210, true), "a third interval");
        assert!(!h.add(104, 110, false), "overlaps");
        assert!(h.add(106, 110, false));
        assert!(h.add(11, 50, false));
        assert!(h.covers(100, 110) && h.covers(1, 50) && !h.covers(50, 100));
        assert_eq!(h.count(), 50 + 11);
        assert!(h.add(51, 99, false));
        assert_eq!(h, Held::prefix(110), "merged");
        assert_eq!(
            Held::from_parts(5, 6, 9),
            None,
            "touching lanes are one prefix"
        );
        assert_eq!(Held::from_parts(5, 0, 0), Some(Held::prefix(5)));
    }

    proptest! {
        /// Whatever ranges arrive, in whatever order, the held set is exactly the union of
        /// the admitted ones and none was admitted twice.
        #[test]
        fn admitted_ranges_are_disjoint_and_the_set_is_their_union(
            ranges in prop::collection::vec((1u64..60, 0u64..8, any::<bool>()), 0..60)
        ) {
            let mut h = Held::default();
            let mut truth = std::collections::BTreeSet::new();
            for (first, len, open) in ranges {
                let last = first + len;
                if h.add(first, last, open) {
                    for s in first..=last {
                        prop_assert!(truth.insert(s), "{s} added twice");
                    }
                }
                for s in 1..80 {
                    prop_assert_eq!(h.contains(s), truth.contains(&s));
                }
                if let Some((f, t)) = h.live {
                    prop_assert!(h.applied + 1 < f && f <= t);
                }
            }
        }
    }
}
