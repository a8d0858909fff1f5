//! The order in which a receiving driver applies what its [`Receiver`](super::Receiver) handed
//! out: the live lane's outputs ahead of the backlog's (docs/sync.md, "Two lanes"), so that a
//! live batch waits for the transaction under way, not for every backlog batch queued before
//! it.
//!
//! ```text
//!  Receiver ─ Apply/RecordGap(lane) ─▶ push ─▶ live:    L1 L2 ...      ─┐
//!                                              backlog: B1 B2 B3 ...   ─┴─▶ pop/take ─▶ store
//!                                                                           (live first)
//! ```
//!
//! Why any order it gives is one the store admits (`Held`, checked in the apply's
//! transaction): each lane keeps its own order, and the lanes meet in only two places.
//! - A backlog output that fills the hole *merges* the lanes; outputs handed out after it
//!   continue the merged prefix. Every live output handed out before it was queued before
//!   it, and live outputs go first, so they are all applied by then: the store merges the
//!   same lane the receiver did.
//! - An output that *opens* a lane needs the store to hold none, that is the previous lane
//!   merged, which a backlog output handed out before it may do. So it waits for every
//!   output handed out before it. A lane opens rarely (once per outage), so this costs
//!   little; and a correct sender opens one only after the receiver acknowledged the
//!   previous one's merge, so the wait never binds then: it keeps this order admissible
//!   whatever the sender does.
//!
//! The simulation (`tests/sync/sim.rs`) applies through this queue, interleaved at random
//! with the other store work, and fails when the backlog goes first or when the receiver
//! insists on the order it handed out.
//!
//! Deliberately absent: what the items are (the driver's jobs), and any I/O.

use std::collections::VecDeque;

use super::held::Admit;

/// Outputs of a receiver waiting to be applied, live lane first (see the module docs).
#[derive(Debug)]
pub struct ApplyQueue<T> {
    live: VecDeque<Queued<T>>,
    backlog: VecDeque<Queued<T>>,
    /// The order in which the receiver handed them out, for the opening output's wait.
    next: u64,
    /// Records queued, for the driver's gauges and its transaction size.
    records: usize,
}

#[derive(Debug)]
struct Queued<T> {
    order: u64,
    item: T,
    records: usize,
    opens: bool,
}

impl<T> Default for ApplyQueue<T> {
    fn default() -> Self {
        Self {
            live: VecDeque::new(),
            backlog: VecDeque::new(),
            next: 0,
            records: 0,
        }
    }
}

impl<T> ApplyQueue<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues an output in the order the receiver handed it out, with the lane it was
    /// admitted to (`ReceiverOutput::Apply`'s and `RecordGap`'s) and how many records it
    /// holds.
    pub fn push(&mut self, item: T, records: usize, lane: Admit) {
        let q = Queued {
            order: self.next,
            item,
            records,
            opens: lane == Admit::Opens,
        };
        self.next += 1;
        self.records += records;
        match lane {
            Admit::Prefix => self.backlog.push_back(q),
            Admit::Live | Admit::Opens => self.live.push_back(q),
        }
    }

    /// The next output to apply: the live lane's first, unless it opens a lane and backlog
    /// outputs handed out before it wait.
    pub fn pop(&mut self) -> Option<T> {
        let live_first = self
            .live
            .front()
            .is_some_and(|l| !l.opens || self.backlog.front().is_none_or(|b| b.order > l.order));
        let q = if live_first {
            self.live.pop_front()
        } else {
            self.backlog.pop_front()
        }?;
        self.records -= q.records;
        Some(q.item)
    }

    /// Outputs for one transaction, in the order to apply them: at least one (when any
    /// waits), then more while fewer than `max_records` records are taken.
    pub fn take(&mut self, max_records: usize) -> Vec<T> {
        let mut taken = Vec::new();
        let mut records = 0;
        while taken.is_empty() || records < max_records {
            let before = self.records;
            let Some(item) = self.pop() else { break };
            records += before - self.records;
            taken.push(item);
        }
        taken
    }

    /// Records of the queued outputs.
    pub fn records(&self) -> usize {
        self.records
    }

    pub fn len(&self) -> usize {
        self.live.len() + self.backlog.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.backlog.is_empty()
    }

    /// Forgets everything queued (the driver starts over from the store after a failure).
    pub fn clear(&mut self) {
        self.live.clear();
        self.backlog.clear();
        self.records = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(items: &[(&'static str, Admit)]) -> ApplyQueue<&'static str> {
        let mut q = ApplyQueue::new();
        for (name, lane) in items {
            q.push(*name, 10, *lane);
        }
        q
    }

    fn order(mut q: ApplyQueue<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn live_outputs_overtake_the_backlog_and_each_lane_keeps_its_order() {
        let q = queue(&[
            ("b1", Admit::Prefix),
            ("b2", Admit::Prefix),
            ("l1", Admit::Live),
            ("b3", Admit::Prefix),
            ("l2", Admit::Live),
        ]);
        assert_eq!(order(q), ["l1", "l2", "b1", "b2", "b3"]);
    }

    #[test]
    fn an_opening_output_waits_for_the_backlog_handed_out_before_it() {
        // b2 may merge the previous lane: the new one opens only after it.
        let q = queue(&[
            ("b1", Admit::Prefix),
            ("b2", Admit::Prefix),
            ("open", Admit::Opens),
            ("b3", Admit::Prefix),
            ("l1", Admit::Live),
        ]);
        assert_eq!(order(q), ["b1", "b2", "open", "l1", "b3"]);
    }

    #[test]
    fn a_transaction_takes_live_first_up_to_the_record_limit() {
        let mut q = queue(&[
            ("b1", Admit::Prefix),
            ("l1", Admit::Live),
            ("b2", Admit::Prefix),
        ]);
        assert_eq!(q.records(), 30);
        assert_eq!(q.take(15), ["l1", "b1"]);
        assert_eq!(q.take(1), ["b2"], "at least one, whatever the limit");
        assert!(q.take(100).is_empty() && q.is_empty() && q.records() == 0);
    }
}
