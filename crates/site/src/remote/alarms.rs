//! The site's alarm evaluator: one task for all paired connectors that looks at each one's
//! sync status and session every [`LOOK_EVERY`], decides with `alarms::eval` which alarms
//! to raise and clear, and makes each decision durable (the store's alarm history), visible
//! (`west_alarm_active`, the UI header's count) and heard (the log, and the webhook when
//! the site has one: its deliverer runs beside the evaluator, in the same task).
//!
//! Invariants:
//! - One timer per site, whatever the number of pairings; a look reads memory only (the
//!   drivers' published status, the sessions' state, the thresholds `ops::alarms` keeps in
//!   `state.alarms`). The store is written only when an alarm is raised or cleared, so an
//!   idle, healthy site writes nothing (docs/sync.md, "Idle pairings").
//! - An alarm is active here exactly when the store holds it active: a decision whose write
//!   fails is not applied, and the next look decides again.
//! - The alarms active when the site stopped are active when it starts, and clear by the
//!   same rules (a gap alarm an hour after it was raised, unless more is lost).
//! - An alarm of a connector that is no longer paired (its pairing cancelled, the connector
//!   deleted) is cleared.
//! - Every paired connector has `west_alarm_active` for each kind from the first look at
//!   it, 0 while not raised, so that a rule on it never reads a missing series.
//! - The webhook hears of a decision only once it is durable, and never holds up a look.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use proto::model::{ConnectorId, SyncState};
use store::{AlarmKind, AlarmQuery, AlarmRow, NewAlarm};
use tokio_util::sync::CancellationToken;

use crate::alarms::HISTORY_KEEP;
use crate::alarms::eval::{Change, GAP_HOLD, Observation, Watch};
use crate::state::AppState;

/// How often the evaluator looks at every paired connector.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Runs the evaluator, and the webhook's deliverer if the site has one, until `cancel`.
pub async fn run(state: AppState, cancel: CancellationToken) {
    let deliver = {
        let (state, cancel) = (state.clone(), cancel.clone());
        async move {
            if let Some(d) = state.alarms.take_deliverer() {
                let m = &state.metrics;
                d.run(
                    m.alarm_webhook_delivered.clone(),
                    m.alarm_webhook_undelivered.clone(),
                    cancel,
                )
                .await;
            }
        }
    };
    tokio::join!(evaluate(state, cancel), deliver);
}

async fn evaluate(state: AppState, cancel: CancellationToken) {
    let mut ev = Evaluator::default();
    // Until the store answers, nothing is decided: a decision could not be made durable.
    loop {
        match ev.load(&state).await {
            Ok(()) => break,
            Err(e) => tracing::error!(error = %e, "cannot read the alarms; trying again"),
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        ev.look(&state, Instant::now()).await;
    }
}

#[derive(Default)]
struct Evaluator {
    /// The active alarms, as the store holds them.
    active: HashMap<(ConnectorId, AlarmKind), AlarmRow>,
    watches: HashMap<ConnectorId, Watch>,
}

impl Evaluator {
    /// Reads the thresholds and the active alarms from the store.
    async fn load(&mut self, state: &AppState) -> store::Result<()> {
        state.alarms.load(state.store.alarm_settings().await?);
        let mut before = None;
        loop {
            let page = state
                .store
                .alarms(AlarmQuery {
                    connector: None,
                    active: Some(true),
                    before,
                    limit: 500,
                })
                .await?;
            let Some(last) = page.last() else { break };
            before = Some(last.id);
            for a in page {
                self.active.insert((a.connector.clone(), a.kind), a);
            }
        }
        let (now, wall) = (Instant::now(), crate::clock::now_micros());
        for ((cid, kind), a) in &self.active {
            state.metrics.alarm_active(cid, kind.as_str(), true);
            if *kind == AlarmKind::Gap {
                let ago = Duration::from_micros(u64::try_from(wall - a.raised_at).unwrap_or(0));
                let at = now.checked_sub(ago.min(GAP_HOLD)).unwrap_or(now);
                self.watches.insert(cid.clone(), Watch::with_loss_at(at));
            }
        }
        state.alarms.set_active(self.active.len() as u64);
        Ok(())
    }

    /// Looks at every paired connector once.
    async fn look(&mut self, state: &AppState, now: Instant) {
        let running: HashSet<ConnectorId> = state.remote.sync.connectors().into_iter().collect();
        self.watches.retain(|cid, _| running.contains(cid));
        for cid in &running {
            let Some(status) = state.remote.sync.status(cid) else {
                continue;
            };
            let peer = state.remote.peer(cid);
            let obs = Observation {
                peer_site: peer
                    .as_ref()
                    .map_or_else(|| "peer".to_owned(), |p| p.peer.site.clone()),
                connected: peer.is_some_and(|p| p.is_up()),
                lag_seconds: status.lag_seconds,
                backlog_points: status.backlog_points,
                points_lost: status.points_lost.saturating_add(status.points_expired),
            };
            let th = state.alarms.thresholds(cid);
            if !self.watches.contains_key(cid) {
                for kind in AlarmKind::ALL {
                    let on = self.active.contains_key(&(cid.clone(), kind));
                    state.metrics.alarm_active(cid, kind.as_str(), on);
                }
            }
            let changes =
                self.watches
                    .entry(cid.clone())
                    .or_default()
                    .evaluate(now, &obs, &th, |k| {
                        self.active.contains_key(&(cid.clone(), k))
                    });
            for change in changes {
                self.apply(state, cid, change).await;
            }
        }
        // Alarms of connectors without a running driver: cleared once the store says the
        // connector is no longer paired (a driver that has not started yet keeps them).
        let orphans: HashSet<ConnectorId> = self
            .active
            .keys()
            .filter(|(cid, _)| !running.contains(cid))
            .map(|(cid, _)| cid.clone())
            .collect();
        for cid in orphans {
            let paired = match state.store.connector(&cid).await {
                Ok(c) => c.state == SyncState::Paired,
                Err(store::StoreError::ConnectorNotFound(_)) => false,
                Err(e) => {
                    tracing::error!(connector = %cid, error = %e, "cannot read a connector with alarms");
                    continue;
                }
            };
            if !paired {
                for kind in AlarmKind::ALL {
                    if self.active.contains_key(&(cid.clone(), kind)) {
                        self.apply(state, &cid, Change::Clear { kind }).await;
                    }
                }
            }
        }
        state.alarms.set_active(self.active.len() as u64);
    }

    /// Makes one decision durable, then visible.
    async fn apply(&mut self, state: &AppState, cid: &ConnectorId, change: Change) {
        let wall = crate::clock::now_micros();
        match change {
            Change::Raise {
                kind,
                value,
                threshold,
                message,
            } => {
                let new = NewAlarm {
                    connector: cid.clone(),
                    kind,
                    raised_at: wall,
                    value,
                    threshold,
                    message,
                };
                match state.store.raise_alarm(new).await {
                    Ok(a) => {
                        tracing::warn!(connector = %cid, kind = kind.as_str(), value, threshold,
                            "alarm raised: {}", a.message);
                        state.metrics.alarm_active(cid, kind.as_str(), true);
                        announce(state, "raised", &a);
                        self.active.insert((cid.clone(), kind), a);
                    }
                    Err(e) => {
                        tracing::error!(connector = %cid, kind = kind.as_str(), error = %e, "cannot record a raised alarm");
                    }
                }
            }
            Change::Clear { kind } => {
                let Some(id) = self.active.get(&(cid.clone(), kind)).map(|a| a.id) else {
                    return;
                };
                match state.store.clear_alarm(id, wall, HISTORY_KEEP).await {
                    Ok(cleared) => {
                        tracing::info!(connector = %cid, kind = kind.as_str(), "alarm cleared");
                        state.metrics.alarm_active(cid, kind.as_str(), false);
                        if let Some(mut a) = self.active.remove(&(cid.clone(), kind)) {
                            // Gone with its connector: the webhook still hears it cleared.
                            a.cleared_at = Some(wall);
                            announce(state, "cleared", &cleared.unwrap_or(a));
                        }
                    }
                    Err(e) => {
                        tracing::error!(connector = %cid, kind = kind.as_str(), error = %e, "cannot record a cleared alarm");
                    }
                }
            }
        }
    }
}

/// Tells the webhook, if the site has one, that alarm `a` was `event` ("raised" or
/// "cleared"): `{"event", "site", "alarm": Alarm}` (docs/api.md).
fn announce(state: &AppState, event: &str, a: &AlarmRow) {
    let body = serde_json::json!({
        "event": event,
        "site": state.site_name,
        "alarm": crate::api::render::alarm_json(a),
    });
    if state.alarms.notify(body.to_string()) == Some(false) {
        tracing::warn!(connector = %a.connector, kind = a.kind.as_str(), event,
            "the alarm webhook's queue is full; this event is not sent");
        state.metrics.alarm_webhook_undelivered.increment(1);
    }
}
