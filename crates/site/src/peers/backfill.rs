//! The backfills of this site's connectors (docs/sync.md, "Backfill"), as shared data: on a
//! Source, the one that queues (its progress, the seqs of its slices, its cancel token) or
//! the last one; on a Target, the last progress its Source reported for the backfill this
//! site asked for. One per connector: a second is refused while one queues.
//!
//! The store keeps each connector's latest one (`Store::save_backfill`, its cursor and
//! slices advanced in each slice's commit), and a starting site puts them back here with
//! [`Backfills::restore`] (`ops::backfill::resume`): a Source's goes on queuing exactly after
//! its last slice, and its progress counts on.

use std::collections::HashMap;
use std::sync::Mutex;

use proto::lookup::{BackfillState, BackfillView};
use proto::model::ConnectorId;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Backfills {
    inner: Mutex<HashMap<ConnectorId, Entry>>,
}

struct Entry {
    view: BackfillView,
    /// Whether this site queues it (a Source), or `view` is the peer's report (a Target).
    here: bool,
    /// `(first seq, points)` of each slice not wholly acknowledged yet; each slice's
    /// records have consecutive seqs.
    slices: Vec<(u64, u64)>,
    /// Points of the slices dropped from `slices` (wholly acknowledged).
    acked_points: u64,
    cancel: CancellationToken,
}

impl Backfills {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectorId, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking a backfill this site queues; the progress of the one still queuing
    /// when there is one (nothing changes then).
    pub fn begin(
        &self,
        cid: &ConnectorId,
        view: BackfillView,
    ) -> Result<CancellationToken, BackfillView> {
        let mut all = self.lock();
        if let Some(e) = all.get(cid)
            && e.here
            && e.view.state.is_running()
        {
            return Err(e.view.clone());
        }
        let cancel = CancellationToken::new();
        all.insert(
            cid.clone(),
            Entry {
                view,
                here: true,
                slices: Vec::new(),
                acked_points: 0,
                cancel: cancel.clone(),
            },
        );
        Ok(cancel)
    }

    /// Puts back a backfill this site queued before it restarted, with the seq runs of its
    /// slices the peer had not wholly acknowledged (`view.queued` counts every slice).
    pub fn restore(
        &self,
        cid: &ConnectorId,
        view: BackfillView,
        slices: Vec<(u64, u64)>,
    ) -> CancellationToken {
        let cancel = CancellationToken::new();
        let unacked: u64 = slices.iter().map(|&(_, points)| points).sum();
        self.lock().insert(
            cid.clone(),
            Entry {
                acked_points: view.queued.saturating_sub(unacked),
                view,
                here: true,
                slices,
                cancel: cancel.clone(),
            },
        );
        cancel
    }

    /// Counts a queued slice of backfill `id`: `points` records from `first_seq` on.
    pub fn sliced(&self, cid: &ConnectorId, id: u64, first_seq: u64, points: u64) {
        if let Some(e) = self.lock().get_mut(cid)
            && e.view.id == id
            && points > 0
        {
            e.view.queued += points;
            e.slices.push((first_seq, points));
        }
    }

    /// Backfill `id` stopped queuing: everything queued (`Sending`), cancelled or failed.
    /// Whether this changed it (it was still queuing).
    pub fn finish(&self, cid: &ConnectorId, id: u64, state: BackfillState, at: i64) -> bool {
        if let Some(e) = self.lock().get_mut(cid)
            && e.view.id == id
            && e.view.state.is_running()
        {
            e.view.state = state;
            e.view.finished_at = Some(at);
            return true;
        }
        false
    }

    /// Cancels the backfill this site queues, if one is queuing; returns its id.
    pub fn cancel(&self, cid: &ConnectorId) -> Option<u64> {
        let all = self.lock();
        let e = all
            .get(cid)
            .filter(|e| e.here && e.view.state.is_running())?;
        e.cancel.cancel();
        Some(e.view.id)
    }

    /// The progress of the backfill the peer queues for this site, as it reported it.
    pub fn reported(&self, cid: &ConnectorId, view: BackfillView) {
        let mut all = self.lock();
        if let Some(e) = all.get(cid)
            && e.here
            && e.view.state.is_running()
        {
            // This site's own backfill (a role cannot change, but never mix the two).
            return;
        }
        all.insert(
            cid.clone(),
            Entry {
                view,
                here: false,
                slices: Vec::new(),
                acked_points: 0,
                cancel: CancellationToken::new(),
            },
        );
    }

    /// The connector's latest backfill, if it has one. On a Source, `applied` is counted
    /// against `acked`, the highest seq the peer acknowledged, and a backfill that queued
    /// everything is `Done` once all of it is.
    pub fn view(&self, cid: &ConnectorId, acked: u64) -> Option<BackfillView> {
        let mut all = self.lock();
        let e = all.get_mut(cid)?;
        if !e.here {
            return Some(e.view.clone());
        }
        let mut partial = 0;
        let mut kept = Vec::with_capacity(e.slices.len());
        for &(first, points) in &e.slices {
            let last = first + points - 1;
            if last <= acked {
                e.acked_points += points;
            } else {
                if first <= acked {
                    partial += acked - first + 1;
                }
                kept.push((first, points));
            }
        }
        e.slices = kept;
        e.view.applied = e.acked_points + partial;
        if e.view.state == BackfillState::Sending && e.view.applied >= e.view.queued {
            e.view.state = BackfillState::Done;
        }
        Some(e.view.clone())
    }

    /// Whether this site queues a backfill of `cid` with this id, still running.
    pub fn is_running(&self, cid: &ConnectorId, id: u64) -> bool {
        self.lock()
            .get(cid)
            .is_some_and(|e| e.view.id == id && e.view.state.is_running())
    }

    /// Forgets the connector's backfill (its pairing ended), cancelling it.
    pub fn forget(&self, cid: &ConnectorId) {
        if let Some(e) = self.lock().remove(cid) {
            e.cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::model::ResourceName;

    fn view(id: u64) -> BackfillView {
        BackfillView {
            id,
            resource: ResourceName::parse("temp").unwrap(),
            since: 0,
            until: 10,
            devices: None,
            state: BackfillState::Queuing,
            queued: 0,
            applied: 0,
            started_at: 1,
            finished_at: None,
            by_target: false,
        }
    }

    #[test]
    fn applied_counts_the_acknowledged_seqs_of_the_slices_and_done_follows() {
        let b = Backfills::default();
        let cid = ConnectorId::parse("abcdefghijklmn").unwrap();
        b.begin(&cid, view(1)).unwrap();
        // One at a time.
        assert_eq!(b.begin(&cid, view(2)).unwrap_err().id, 1);
        // Slices 10..=13 and 20..=21; seqs 14..=19 are the site's other records.
        b.sliced(&cid, 1, 10, 4);
        b.sliced(&cid, 1, 20, 2);
        assert_eq!(b.view(&cid, 9).unwrap().applied, 0);
        assert_eq!(b.view(&cid, 12).unwrap().applied, 3);
        assert_eq!(b.view(&cid, 19).unwrap().applied, 4);
        b.finish(&cid, 1, BackfillState::Sending, 5);
        let v = b.view(&cid, 20).unwrap();
        assert_eq!(
            (v.queued, v.applied, v.state),
            (6, 5, BackfillState::Sending)
        );
        let v = b.view(&cid, 21).unwrap();
        assert_eq!((v.applied, v.state), (6, BackfillState::Done));
        // A finished one does not block the next.
        assert!(b.begin(&cid, view(2)).is_ok());
        assert_eq!(b.cancel(&cid), Some(2));
    }

    #[test]
    fn a_restored_backfill_counts_on_from_its_unacknowledged_slices() {
        let b = Backfills::default();
        let cid = ConnectorId::parse("abcdefghijklmn").unwrap();
        // 10 points queued before the restart; of them, slices 30..=33 and 40..=41 were
        // not wholly acknowledged (seq 30 was).
        let mut v = view(3);
        v.queued = 10;
        b.restore(&cid, v, vec![(30, 4), (40, 2)]);
        assert_eq!(b.view(&cid, 30).unwrap().applied, 5);
        assert!(b.is_running(&cid, 3));
        // It queues on, and one at a time still holds.
        b.sliced(&cid, 3, 50, 5);
        assert_eq!(b.begin(&cid, view(4)).unwrap_err().id, 3);
        b.finish(&cid, 3, BackfillState::Sending, 9);
        let v = b.view(&cid, 54).unwrap();
        assert_eq!(
            (v.queued, v.applied, v.state),
            (15, 15, BackfillState::Done)
        );
    }
}
