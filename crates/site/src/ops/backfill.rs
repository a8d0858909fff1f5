//! Backfill on request (docs/sync.md, "Backfill"): a paired Source sends a resource's points
//! of a time range again, because its Target lost them or Remote-Sync was turned on late.
//!
//! ```text
//!  Source operator ─▶ start ─┐                         Target operator ─▶ start
//!                            ▼                                              │ Op::Backfill
//!  checks ─▶ Backfills::begin ─▶ task: slice ─▶ Store::sync_requeue ◀── remote::lookup
//!                                   ▲   │ (outbox: new seqs, current values)
//!                                   └───┘ wake the sync driver; pause while the
//!                                         unacknowledged backlog is over MAX_BACKLOG
//! ```
//!
//! The Source queues what it holds in slices of at most [`SLICE_POINTS`] points, one store
//! job each, from a background task: a huge range is never read into memory at once, and
//! ingest waits at most one slice. The queued records travel the normal exactly-once path;
//! the Target applies them like any point (a repeated `(device, resource, t)` replaces), so
//! a backfill duplicates nothing. One backfill per connector at a time.
//!
//! What the Source *holds*: the history within its retention window (`--retention`, the
//! same window it keeps undelivered data for): `since` may not be older than
//! `now - retention` (`range_not_held`, 410).
//!
//! A restart does not end a backfill: the store keeps each connector's latest one, and a
//! Source's slice advances its cursor in the slice's own commit, so [`resume`] goes on
//! exactly after the last slice that was queued (a `kill -9` mid-slice queues that slice
//! again, whole, or not at all). A Target keeps the backfill it asked for and asks its
//! Source for the progress again.

use std::time::Duration;

use proto::lookup::{Answer, BackfillAsk, BackfillState, BackfillView, MAX_BACKFILL_DEVICES, Op};
use proto::model::{ConnectorId, Identity, ResourceName, Role, SyncState};
use store::{Connector, Requeue};

use super::{Error, Result};
use crate::clock::rfc3339;
use crate::state::AppState;

/// Most points one slice queues (one store job).
pub const SLICE_POINTS: usize = 4096;
/// Most devices one slice looks at.
pub const SLICE_DEVICES: usize = 512;
/// While the outbox holds more unacknowledged records than this, the backfill waits: it
/// never fills the disk faster than the Target drains it.
pub const MAX_BACKLOG: u64 = 262_144;
/// How often a paused backfill looks at the backlog again.
const PAUSE: Duration = Duration::from_millis(100);

/// A backfill as an operator asks for it, names not checked yet.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    pub resource: String,
    /// µs; `None`: from the oldest point the Source holds.
    pub since: Option<i64>,
    /// µs; `None`: until the Source's present.
    pub until: Option<i64>,
    pub devices: Option<Vec<String>>,
}

/// Starts a backfill of connector `cid`. On a Source it starts here; on a Target it is
/// asked of the Source through the paired session (`peer_offline` when it cannot be).
/// Answers the backfill's progress.
pub async fn start(state: &AppState, cid: &ConnectorId, ask: Ask) -> Result<BackfillView> {
    let c = paired(state, cid).await?;
    let resource =
        ResourceName::parse(&ask.resource).map_err(|e| Error::Invalid(format!("resource: {e}")))?;
    if let (Some(since), Some(until)) = (ask.since, ask.until)
        && since >= until
    {
        return Err(Error::Invalid(format!(
            "since ({since}) must be before until ({until})"
        )));
    }
    let devices = devices(ask.devices.as_deref())?;
    let ask = BackfillAsk {
        resource,
        since: ask.since,
        until: ask.until,
        devices,
    };
    match c.role {
        Role::Source => begin(state, &c, ask, false).await,
        _ => {
            let view = match super::peer::ask(state, &c, Op::Backfill(ask)).await? {
                Answer::Backfill(Some(v)) => v,
                _ => return Err(super::peer::unexpected(&c)),
            };
            tracing::info!(connector = %cid, id = view.id, "the Source started the backfill asked for");
            state.remote.backfills.reported(cid, view.clone());
            // Kept so that after a restart this site still asks its Source how it goes.
            if let Err(e) = state.store.save_backfill(cid, view.clone(), None).await {
                tracing::warn!(connector = %cid, error = %e, "could not keep the backfill asked for");
            }
            Ok(view)
        }
    }
}

/// The connector's latest backfill, if any: on a Source its own progress; on a Target the
/// last progress its Source reported of the backfill this site asked for, asked again live
/// while it goes on (the last report stays when the Source cannot be asked). A Target that
/// asked for none does not ask its Source at all.
pub async fn status(state: &AppState, c: &Connector) -> Result<Option<BackfillView>> {
    if c.state != SyncState::Paired {
        return Ok(None);
    }
    if c.role == Role::Source {
        return Ok(local(state, &c.id).await);
    }
    let last = state.remote.backfills.view(&c.id, 0);
    // Ask only while the reported one may still change.
    if last
        .as_ref()
        .is_some_and(|v| matches!(v.state, BackfillState::Queuing | BackfillState::Sending))
        && let Ok(Answer::Backfill(Some(v))) = super::peer::ask(state, c, Op::BackfillStatus).await
    {
        state.remote.backfills.reported(&c.id, v.clone());
        return Ok(Some(v));
    }
    Ok(last)
}

/// Cancels the connector's running backfill (on a Target: asks the Source to); what it
/// queued already still goes. `conflict` when none is queuing.
pub async fn cancel(state: &AppState, cid: &ConnectorId) -> Result<BackfillView> {
    let c = paired(state, cid).await?;
    if c.role == Role::Target {
        let view = match super::peer::ask(state, &c, Op::BackfillCancel).await? {
            Answer::Backfill(Some(v)) => v,
            _ => return Err(super::peer::unexpected(&c)),
        };
        state.remote.backfills.reported(cid, view.clone());
        return Ok(view);
    }
    cancel_here(state, cid).await
}

/// The peer (a Target) asks this Source for a backfill.
pub async fn asked_by_peer(
    state: &AppState,
    cid: &ConnectorId,
    ask: BackfillAsk,
) -> Result<BackfillView> {
    let c = paired(state, cid).await?;
    if c.role != Role::Source {
        return Err(Error::Conflict(format!(
            "connector {cid} is not a Source, so it has no data to send again"
        )));
    }
    if let Some(d) = &ask.devices
        && d.len() > MAX_BACKFILL_DEVICES
    {
        return Err(Error::Invalid(format!(
            "at most {MAX_BACKFILL_DEVICES} devices at once"
        )));
    }
    begin(state, &c, ask, true).await
}

/// The progress of this site's own backfill of `cid` (a Source's), if it has one.
pub async fn local(state: &AppState, cid: &ConnectorId) -> Option<BackfillView> {
    let acked = match state.remote.sync.status(cid) {
        Some(s) => s.acked,
        None => state.store.sync_state(cid).await.map_or(0, |d| d.acked),
    };
    state.remote.backfills.view(cid, acked)
}

/// Cancels this Source's running backfill of `cid`.
pub async fn cancel_here(state: &AppState, cid: &ConnectorId) -> Result<BackfillView> {
    let id = state.remote.backfills.cancel(cid).ok_or_else(|| {
        Error::Conflict(format!("connector {cid} has no backfill running to cancel"))
    })?;
    let now = state.sync.clock.now();
    let _ = state
        .remote
        .backfills
        .finish(cid, id, BackfillState::Cancelled, now);
    ended(state, cid, id, BackfillState::Cancelled, now).await;
    tracing::info!(connector = %cid, id, "backfill cancelled");
    local(state, cid)
        .await
        .ok_or_else(|| Error::Conflict(format!("connector {cid} has no backfill")))
}

async fn paired(state: &AppState, cid: &ConnectorId) -> Result<Connector> {
    let c = state.store.connector(cid).await?;
    if c.state != SyncState::Paired {
        return Err(Error::Conflict(format!(
            "connector {cid} is not paired, so there is no Target to send data to again"
        )));
    }
    Ok(c)
}

/// The devices named, checked, sorted and without repeats.
fn devices(named: Option<&[String]>) -> Result<Option<Vec<Identity>>> {
    let Some(named) = named else {
        return Ok(None);
    };
    if named.len() > MAX_BACKFILL_DEVICES {
        return Err(Error::Invalid(format!(
            "at most {MAX_BACKFILL_DEVICES} devices at once, not {}; leave devices out for every device",
            named.len()
        )));
    }
    if named.is_empty() {
        return Err(Error::Invalid(
            "devices is empty; leave it out for every device".into(),
        ));
    }
    let mut ids = named
        .iter()
        .map(|d| Identity::parse(d).map_err(|e| Error::Invalid(format!("devices: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    ids.sort();
    ids.dedup();
    Ok(Some(ids))
}

/// Checks a backfill against this Source's state and starts its task.
async fn begin(
    state: &AppState,
    c: &Connector,
    ask: BackfillAsk,
    by_target: bool,
) -> Result<BackfillView> {
    let cid = &c.id;
    let resource = state
        .store
        .resources(cid)
        .await?
        .into_iter()
        .find(|r| r.name == ask.resource)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "resource {} does not exist in connector {cid}",
                ask.resource
            ))
        })?;
    if !resource.remote_sync {
        return Err(Error::Conflict(format!(
            "resource {} does not have Remote-Sync on, so its points are not sent; turn it on first",
            resource.name
        )));
    }
    let now = state.sync.clock.now();
    let keep = i64::try_from(state.sync.retention.as_micros()).unwrap_or(i64::MAX);
    let horizon = now.saturating_sub(keep);
    let since = ask.since.unwrap_or(horizon);
    let until = ask.until.unwrap_or(now);
    if since >= until {
        return Err(Error::Invalid(format!(
            "since ({since}) must be before until ({until})"
        )));
    }
    if since < horizon {
        return Err(Error::RangeNotHeld(format!(
            "this Source holds history from {} on (its retention is {} days); ask from then on",
            rfc3339(horizon),
            state.sync.retention.as_secs() / 86_400
        )));
    }
    if let Some(ids) = &ask.devices {
        for id in ids {
            state.store.device(cid, id).await.map_err(|e| match e {
                store::StoreError::DeviceNotFound(_) => {
                    Error::NotFound(format!("device {id} does not exist in connector {cid}"))
                }
                e => e.into(),
            })?;
        }
    }
    let view = BackfillView {
        id: rand_core::RngCore::next_u64(&mut rand_core::OsRng),
        resource: ask.resource.clone(),
        since,
        until,
        devices: ask.devices.as_ref().map(|d| d.len() as u32),
        state: BackfillState::Queuing,
        queued: 0,
        applied: 0,
        started_at: now,
        finished_at: None,
        by_target,
    };
    let cancel = state.remote.backfills.begin(cid, view.clone()).map_err(|running| {
        Error::Conflict(format!(
            "a backfill of resource {} is already running on connector {cid} ({} points queued); \
             wait for it or cancel it",
            running.resource, running.queued
        ))
    })?;
    if let Err(e) = state
        .store
        .save_backfill(cid, view.clone(), ask.devices.clone())
        .await
    {
        let now = state.sync.clock.now();
        let _ = state
            .remote
            .backfills
            .finish(cid, view.id, BackfillState::Failed, now);
        return Err(e.into());
    }
    tracing::info!(
        connector = %cid, id = view.id, resource = %view.resource, since, until,
        by_target, "backfill started"
    );
    let req = slices(&view, ask.devices, None);
    tokio::spawn(run(state.clone(), cid.clone(), view.id, req, cancel));
    Ok(view)
}

/// The slices of backfill `view`, from `from` on.
fn slices(
    view: &BackfillView,
    devices: Option<Vec<Identity>>,
    from: Option<store::RequeueCursor>,
) -> Requeue {
    Requeue {
        resource: view.resource.clone(),
        since: view.since,
        until: view.until,
        devices,
        from,
        max_points: SLICE_POINTS,
        max_devices: SLICE_DEVICES,
        backfill: Some(view.id),
    }
}

/// Puts back the backfills the store kept, when the site starts: a Source's that was
/// queuing goes on after its last slice; a Target's is asked of its Source again.
pub async fn resume(state: AppState) {
    let kept = match state.store.backfills().await {
        Ok(kept) => kept,
        Err(e) => {
            tracing::error!(error = %e, "could not read the backfills to go on with them");
            return;
        }
    };
    for b in kept {
        let cid = &b.connector;
        let Ok(c) = state.store.connector(cid).await else {
            continue;
        };
        if c.state != SyncState::Paired {
            continue;
        }
        if c.role != Role::Source {
            state.remote.backfills.reported(cid, b.view);
            continue;
        }
        let id = b.view.id;
        let queuing = b.view.state.is_running();
        let req = slices(&b.view, b.devices, b.next);
        let cancel = state.remote.backfills.restore(cid, b.view, b.slices);
        if queuing {
            tracing::info!(connector = %cid, id, "backfill goes on after the restart");
            tokio::spawn(run(state.clone(), cid.clone(), id, req, cancel));
        }
    }
}

/// Records in the store that backfill `id` stopped queuing; a failure is logged (the
/// backfill would go on after a restart, which duplicates nothing on the Target).
async fn ended(state: &AppState, cid: &ConnectorId, id: u64, outcome: BackfillState, at: i64) {
    if let Err(e) = state.store.end_backfill(cid, id, outcome, at).await {
        tracing::warn!(connector = %cid, id, error = %e, "could not record the end of a backfill");
    }
}

/// Queues the backfill slice by slice until the range is done, it is cancelled, or the
/// store fails.
async fn run(
    state: AppState,
    cid: ConnectorId,
    id: u64,
    mut req: Requeue,
    cancel: tokio_util::sync::CancellationToken,
) {
    let end = loop {
        if cancel.is_cancelled() || !state.remote.backfills.is_running(&cid, id) {
            return;
        }
        match state.store.sync_state(&cid).await {
            Ok(d) if d.head.saturating_sub(d.acked) > MAX_BACKLOG => {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(PAUSE) => continue,
                }
            }
            Ok(_) => {}
            Err(e) => break Err(e),
        }
        match state.store.sync_requeue(&cid, req.clone()).await {
            Ok(done) => {
                state
                    .remote
                    .backfills
                    .sliced(&cid, id, done.first_seq, done.points);
                if done.points > 0 {
                    state.remote.sync.appended(&cid);
                }
                match done.next {
                    Some(next) => req.from = Some(next),
                    None => break Ok(()),
                }
            }
            Err(e) => break Err(e),
        }
    };
    let now = state.sync.clock.now();
    let outcome = match end {
        Ok(()) => BackfillState::Sending,
        Err(e) => {
            tracing::error!(connector = %cid, id, error = %e, "backfill failed");
            BackfillState::Failed
        }
    };
    // A cancel that came during the last slice has recorded its own end.
    if state.remote.backfills.finish(&cid, id, outcome, now) {
        ended(&state, &cid, id, outcome, now).await;
    }
    tracing::info!(connector = %cid, id, state = outcome.as_str(), "backfill stopped queuing");
}
