//! The outbox records of the latest commits, kept in memory for the sync driver's read
//! after its wake-up (`Store::outbox_head_read`): on the latency path of every point, that
//! read took a trip to the read pool, a fresh zstd context and the decoding of the row the
//! writer had just encoded from these very records (docs/benchmarks.md, "Latency, session
//! 7").
//!
//! ```text
//!  job: Appender::finish ── row written ──▶ `appended(cid, first, records)` (thread-local)
//!       a partition dropped, a lost span written, the outbox forgotten ──▶ `dropped(cid)`
//!  writer: job refused ──▶ its appends forgotten (`rollback_to`)
//!          COMMIT ──▶ `end`: Recent gets the appends (contiguous runs extend), loses every
//!                     connector marked dropped; a failed COMMIT gives it nothing; then
//!                     the waker (`Store::wake_on_append`) hears of each connector appended
//!                     to, before the commit's callers hear back
//!  driver: outbox_head_read(cid, from) ──▶ `Recent::take`: records from `from` and the
//!          head they end at, if held from there (taken out), else the read pool as before;
//!          with them the row they were written in when it holds exactly them: the
//!          sender sends it as the batch's payload instead of encoding them again
//! ```
//!
//! Invariants:
//! - An entry holds committed records, in seq order, exactly as a read of the outbox gives
//!   them (the appender writes its rows in that order, `outbox.rs`), ending at the head its
//!   commit left: a later commit that appends to the connector replaces or extends it
//!   before its own callers hear back, so a driver woken by that append finds it.
//! - A connector whose stored records a transaction may have dropped or declared lost has
//!   no entry after that transaction's commit (its appends in it are not kept either): what
//!   an entry gives was never dropped as of the commit that left it.
//! - An entry's row, when it has one, is the `data` of the one outbox row that holds
//!   exactly its records, in their order: a run extended by a later commit has none.
//! - At most [`MAX_RECENT`] records over all connectors, none in a run longer than a row
//!   ([`MAX_ROW_SEQS`]): a connector whose driver does not take them costs bounded memory.
//!
//! Deliberately absent: any I/O, and any answer it is not sure of: anything not held from
//! `from` on goes to the database.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use proto::model::ConnectorId;
use proto::sync::Record;

use super::outbox::MAX_ROW_SEQS;

/// Most records kept over all connectors.
pub(super) const MAX_RECENT: usize = 2 * MAX_ROW_SEQS;

/// What a commit that appended to a connector's outbox calls (`Store::wake_on_append`).
pub(crate) type Waker = Arc<dyn Fn(&ConnectorId) + Send + Sync>;

/// Records of recent commits per connector.
#[derive(Default)]
pub(crate) struct Recent {
    inner: Mutex<Held>,
    /// Set once, by the site that runs the sync drivers.
    waker: OnceLock<Waker>,
}

#[derive(Default)]
struct Held {
    by_connector: HashMap<ConnectorId, Run>,
    records: usize,
}

/// Consecutive records appended to one connector's outbox, from seq `first` on.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Run {
    pub(super) first: u64,
    pub(super) records: Vec<Record>,
    /// The data of the one outbox row that holds exactly `records` (the wire codec's
    /// payload of them), if one does.
    pub(super) row: Option<Vec<u8>>,
}

impl Held {
    fn remove(&mut self, cid: &ConnectorId) {
        if let Some(run) = self.by_connector.remove(cid) {
            self.records -= run.records.len();
        }
    }
}

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The head the records held for `cid` end at.
    #[cfg(test)]
    pub(crate) fn head(&self, cid: &ConnectorId) -> Option<u64> {
        let held = self.lock();
        let run = held.by_connector.get(cid)?;
        Some(run.first + run.records.len() as u64 - 1)
    }

    /// Whom a commit that appended to an outbox wakes; false if someone already is.
    pub(crate) fn set_waker(&self, waker: Waker) -> bool {
        self.waker.set(waker).is_ok()
    }

    /// Takes the records from seq `from` on (at most `max`), with the head they end at, when
    /// they are held from there, and their row's data when they are all of its records;
    /// the entry is gone afterwards either way it was used.
    pub(crate) fn take(
        &self,
        cid: &ConnectorId,
        from: u64,
        max: usize,
    ) -> Option<(u64, Vec<Record>, Option<Vec<u8>>)> {
        let mut held = self.lock();
        let run = held.by_connector.get(cid)?;
        let head = run.first + run.records.len() as u64 - 1;
        if from < run.first || from > head || max == 0 {
            return None;
        }
        let skip = usize::try_from(from - run.first).unwrap_or(usize::MAX);
        let Run {
            mut records, row, ..
        } = held.by_connector.remove(cid)?;
        held.records -= records.len();
        drop(held);
        let whole = skip == 0 && records.len() <= max;
        records.drain(..skip);
        records.truncate(max);
        Some((head, records, row.filter(|_| whole)))
    }

    /// A committed transaction's appends and drops (`end`).
    fn commit(&self, appended: Vec<(ConnectorId, Run)>, dropped: &[ConnectorId]) {
        if appended.is_empty() && dropped.is_empty() {
            return;
        }
        let Some(wake) = self.waker.get() else {
            return self.keep(appended, dropped);
        };
        let mut woken: Vec<ConnectorId> = Vec::new();
        for (cid, _) in &appended {
            if !woken.contains(cid) {
                woken.push(cid.clone());
            }
        }
        self.keep(appended, dropped);
        for cid in &woken {
            wake(cid);
        }
    }

    fn keep(&self, appended: Vec<(ConnectorId, Run)>, dropped: &[ConnectorId]) {
        let mut held = self.lock();
        for cid in dropped {
            held.remove(cid);
        }
        for (cid, run) in appended {
            if dropped.contains(&cid) {
                continue;
            }
            let n = run.records.len();
            if n == 0 || n > MAX_ROW_SEQS {
                // A run too long to keep: what is held no longer ends at the head.
                held.remove(&cid);
                continue;
            }
            let extends = held.by_connector.get(&cid).is_some_and(|r| {
                r.first + r.records.len() as u64 == run.first && r.records.len() + n <= MAX_ROW_SEQS
            });
            if extends {
                held.records += n;
                if let Some(r) = held.by_connector.get_mut(&cid) {
                    r.records.extend(run.records);
                    // In two rows now: no one row holds exactly the run.
                    r.row = None;
                }
                continue;
            }
            held.remove(&cid);
            if held.records + n > MAX_RECENT {
                held.by_connector.clear();
                held.records = 0;
            }
            held.records += n;
            held.by_connector.insert(cid, run);
        }
    }
}

/// What the open transaction appended and dropped, on the writer thread.
#[derive(Default)]
struct Pending {
    appended: Vec<(ConnectorId, Run)>,
    dropped: Vec<ConnectorId>,
}

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
}

/// Notes the records a job has just written to `cid`'s outbox from seq `first` on (in seq
/// order), `row` the data of the one row it wrote them in, if it wrote one. A run too long
/// to keep still marks the connector's entry as outdated.
pub(super) fn appended(cid: &ConnectorId, first: u64, records: Vec<Record>, row: Option<Vec<u8>>) {
    let run = if records.len() > MAX_ROW_SEQS {
        Run {
            first,
            records: Vec::new(),
            row: None,
        }
    } else {
        Run {
            first,
            records,
            row,
        }
    };
    PENDING.with_borrow_mut(|p| p.appended.push((cid.clone(), run)));
}

/// Notes that the open transaction drops stored records of `cid`, or declares some lost.
/// Kept even if the job's savepoint rolls back: forgetting an entry is always safe.
pub(super) fn dropped(cid: &ConnectorId) {
    PENDING.with_borrow_mut(|p| {
        if !p.dropped.contains(cid) {
            p.dropped.push(cid.clone());
        }
    });
}

/// Where the current job's appends start (to forget them if its savepoint rolls back).
pub(super) fn mark() -> usize {
    PENDING.with_borrow(|p| p.appended.len())
}

/// Forgets the appends of a job whose savepoint rolled back.
pub(super) fn rollback_to(mark: usize) {
    PENDING.with_borrow_mut(|p| p.appended.truncate(mark));
}

/// Ends the transaction: its appends and drops reach `recent` if it committed.
pub(super) fn end(recent: &Arc<Recent>, committed: bool) {
    let pending = PENDING.with_borrow_mut(std::mem::take);
    if committed {
        recent.commit(pending.appended, &pending.dropped);
    }
}

#[cfg(test)]
mod tests {
    use proto::model::{Identity, ResourceName, Value};
    use proto::sync::Point;

    use super::*;

    fn cid(s: &str) -> ConnectorId {
        ConnectorId::parse(s).expect("connector id")
    }

    fn points(ts: std::ops::Range<i64>) -> Vec<Record> {
        ts.map(|t| {
            Record::Point(Point {
                device: Identity::parse("d1").expect("identity"),
                resource: ResourceName::parse("temp").expect("resource"),
                t,
                value: Value::Integer(t),
            })
        })
        .collect()
    }

    fn run(cid: ConnectorId, first: u64, records: Vec<Record>) -> (ConnectorId, Run) {
        let row = Some(proto::sync::codec::encode(&records).expect("encodes"));
        (
            cid,
            Run {
                first,
                records,
                row,
            },
        )
    }

    fn ts(records: &[Record]) -> Vec<i64> {
        records
            .iter()
            .map(|r| match r {
                Record::Point(p) => p.t,
                Record::Device(_) => -1,
            })
            .collect()
    }

    #[test]
    fn runs_extend_and_are_taken_once_from_inside_them() {
        let (a, recent) = (cid("aaaaaaaaaaaaaa"), Recent::default());
        recent.commit(vec![run(a.clone(), 1, points(0..3))], &[]);
        recent.commit(vec![run(a.clone(), 4, points(3..5))], &[]);
        assert_eq!(recent.take(&a, 6, 10), None, "beyond the head");
        let (head, got, _) = recent.take(&a, 2, 2).expect("held");
        assert_eq!((head, ts(&got)), (5, vec![1, 2]));
        assert_eq!(recent.take(&a, 2, 2), None, "taken out");
    }

    #[test]
    fn a_row_goes_with_exactly_its_records_only() {
        let (a, recent) = (cid("aaaaaaaaaaaaaa"), Recent::default());
        let row = run(a.clone(), 1, points(0..3)).1.row;
        recent.commit(vec![run(a.clone(), 1, points(0..3))], &[]);
        let (head, got, whole) = recent.take(&a, 1, 3).expect("held");
        assert_eq!((head, ts(&got), whole), (3, vec![0, 1, 2], row));
        // Not all of them: from inside the run, or cut short.
        recent.commit(vec![run(a.clone(), 1, points(0..3))], &[]);
        assert_eq!(recent.take(&a, 2, 10).expect("held").2, None);
        recent.commit(vec![run(a.clone(), 1, points(0..3))], &[]);
        assert_eq!(recent.take(&a, 1, 2).expect("held").2, None);
        // Two commits' records: two rows.
        recent.commit(vec![run(a.clone(), 1, points(0..3))], &[]);
        recent.commit(vec![run(a.clone(), 4, points(3..5))], &[]);
        let (head, got, whole) = recent.take(&a, 1, 10).expect("held");
        assert_eq!((head, got.len(), whole), (5, 5, None));
    }

    #[test]
    fn a_gap_replaces_and_a_drop_or_a_refused_job_keeps_nothing() {
        let (a, b, recent) = (
            cid("aaaaaaaaaaaaaa"),
            cid("bbbbbbbbbbbbbb"),
            Arc::new(Recent::default()),
        );
        recent.commit(vec![run(a.clone(), 1, points(0..3))], &[]);
        recent.commit(vec![run(a.clone(), 10, points(9..11))], &[]);
        assert_eq!(recent.take(&a, 1, 10), None, "replaced by the later run");
        assert_eq!(ts(&recent.take(&a, 10, 10).expect("held").1), vec![9, 10]);

        // One transaction: a job appends to `a` and `b`, another drops `a`'s records.
        appended(&a, 1, points(0..2), None);
        appended(&b, 1, points(0..2), None);
        dropped(&a);
        end(&recent, true);
        assert_eq!(recent.take(&a, 1, 10), None);
        assert!(recent.take(&b, 1, 10).is_some());

        // A refused job's appends, and a transaction that did not commit, leave nothing.
        let mark = mark();
        appended(&a, 3, points(2..4), None);
        rollback_to(mark);
        end(&recent, true);
        appended(&b, 3, points(2..4), None);
        end(&recent, false);
        assert_eq!(recent.take(&a, 3, 10), None);
        assert_eq!(recent.take(&b, 3, 10), None);
    }

    #[test]
    fn memory_stays_bounded() {
        let recent = Recent::default();
        let too_long = MAX_ROW_SEQS as i64 + 1;
        recent.commit(
            vec![run(cid("aaaaaaaaaaaaaa"), 1, points(0..too_long))],
            &[],
        );
        assert_eq!(recent.lock().records, 0);
        for (i, c) in ["cccccccccccccc", "dddddddddddddd", "eeeeeeeeeeeeee"]
            .into_iter()
            .enumerate()
        {
            let n = MAX_ROW_SEQS as i64;
            recent.commit(vec![run(cid(c), 1, points(0..n))], &[]);
            assert!(recent.lock().records <= MAX_RECENT, "after {i}");
        }
    }
}
