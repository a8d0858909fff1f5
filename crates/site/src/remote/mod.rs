//! Everything this site does with other sites over the hub link, as a front end beside `api`
//! and `ui`: the built-in services other sites address (`_pairing`), the tasks of every
//! paired connector (its encrypted session, from `peers::peer`; its connector task; its sync
//! driver, `sync`), the answers to the peer's device lookups (`lookup`), and background
//! duties such as closing expired pairing windows and evaluating alarms (`alarms`).
//!
//! ```text
//!  link inbound ──▶ dispatch ──┬─ "_pairing"            ──▶ pairing::on_message (own task)
//!                              └─ a paired connector id ──▶ its PeerHandle (sender checked;
//!                                                           opened there, never waits)
//!  per paired connector: PeerHandle ──messages (lossy), session state (watch)──▶ connector
//!  task (answers pings, hands sync and lookup messages on) ──▶ sync driver ──▶ PeerHandle
//! ```
//!
//! No cycle of waits: the session never waits on the connector task (messages are
//! dropped and counted when it lags; Up and Down come from a watch, so none is lost), and
//! dispatch never waits on a session, so one stuck connector cannot stop the link's inbound
//! traffic. The supervisor task owns every task it starts; cancelling its token stops them
//! all. Sessions start at boot for every paired connector, and when a pairing completes.
//!
//! Like the other front ends it calls `ops` and knows nothing of HTTP. What it shares with
//! the rest of the site (session handles, sync status, pairing windows) lives below `state`
//! in `peers`, so that `ops` can use it without depending on this module.

pub mod alarms;
pub mod lookup;
pub mod pairing;
pub mod sync;

use std::time::Duration;

use proto::channel::PinnedPeer;
use proto::model::{ConnectorId, SyncState};
use proto::pairing::{ConnectorAddr, StaticKeypair};
use proto::service;
use proto::wire::Address;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::link::Delivery;
use crate::peers::peer::{self, PeerHandle, PeerMessage, SessionSpec, SessionState};
pub use crate::peers::registry::{Remote, Starts};
use crate::state::AppState;

/// Starts the services; they stop when `cancel` is cancelled.
pub fn spawn(
    state: AppState,
    inbound: Option<mpsc::Receiver<Delivery>>,
    starts: Starts,
    cancel: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    state.metrics.watch_link(state.link.clone());
    state.remote.sync.wake_from(state.store.as_ref());
    if let Some(inbound) = inbound {
        tasks.spawn(supervise(state.clone(), inbound, starts, cancel.clone()));
    }
    sync::spawn_site_tasks(&state, cancel.clone(), tasks);
    tasks.spawn(crate::ops::backfill::resume(state.clone()));
    tasks.spawn(alarms::run(state.clone(), cancel.clone()));
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = crate::ops::pairing::expire(&state).await {
                        tracing::warn!(error = %e, "could not expire pairing windows");
                    }
                }
            }
        }
    });
}

/// Dispatches inbound messages and owns every session and connector task.
async fn supervise(
    state: AppState,
    mut inbound: mpsc::Receiver<Delivery>,
    mut starts: Starts,
    cancel: CancellationToken,
) {
    let mut tasks = JoinSet::new();
    match state.store.list_connectors().await {
        Ok(all) => {
            // The hub forwards only between connectors whose sites both declare the pairing.
            state.link.set_pairings(
                all.iter()
                    .filter(|c| c.state == SyncState::Paired)
                    .filter_map(|c| Some((c.id.to_string(), c.peer.as_ref()?)))
                    .map(|(id, p)| (id, Address::new(p.site.as_str(), p.connector_id.as_str())))
                    .collect(),
            );
            for c in all.iter().filter(|c| c.state == SyncState::Paired) {
                start_connector(&state, &c.id, &cancel, &mut tasks).await;
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot list connectors to start their sessions"),
    }
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            Some(cid) = starts.0.recv() => start_connector(&state, &cid, &cancel, &mut tasks).await,
            msg = inbound.recv() => match msg {
                None => break,
                Some(msg) => dispatch(&state, msg, &mut tasks).await,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
}

async fn dispatch(state: &AppState, msg: Delivery, tasks: &mut JoinSet<()>) {
    if msg.connector == pairing::PAIRING_SERVICE {
        let state = state.clone();
        tasks.spawn(async move { pairing::on_message(&state, msg).await });
        return;
    }
    let handle = ConnectorId::parse(&msg.connector)
        .ok()
        .and_then(|cid| state.remote.peer(&cid));
    match handle {
        // Only the pinned peer's address, as the hub authenticated it, reaches a session.
        Some(h) if h.peer == msg.from => h.deliver(msg.payload),
        Some(h) => {
            tracing::warn!(from = %msg.from, expected = %h.peer, "session frame from a site that is not the peer; dropped");
        }
        None => {
            tracing::debug!(service = %msg.connector, from = %msg.from, "message for no service here");
            if let Some(reply) = msg.reply {
                let _ = reply
                    .fail(&format!("this site has no service {:?}", msg.connector))
                    .await;
            }
        }
    }
}

/// Starts the session and connector task of a paired connector (once).
async fn start_connector(
    state: &AppState,
    cid: &ConnectorId,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    if state.remote.peer(cid).is_some() {
        return;
    }
    let spec = match session_spec(state, cid).await {
        Ok(spec) => spec,
        Err(e) => {
            tracing::error!(connector = %cid, error = %e, "cannot start the peer session");
            return;
        }
    };
    // Declared before the session's first frame, which the link sends after it.
    state.link.add_pairing(
        cid.as_str(),
        Address::new(spec.peer.addr.site(), spec.peer.addr.connector().as_str()),
    );
    let (messages_tx, messages_rx) = mpsc::channel(1024);
    let cancel = cancel.child_token();
    state
        .remote
        .stops
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(cid.clone(), cancel.clone());
    let handle = peer::spawn(
        spec,
        state.link.clone(),
        messages_tx,
        cancel.child_token(),
        tasks,
    );
    state
        .remote
        .lock_peers()
        .insert(cid.clone(), handle.clone());
    let sync = sync::spawn(state, cid, handle.clone(), cancel.child_token(), tasks);
    tasks.spawn(connector_task(
        state.clone(),
        cid.clone(),
        handle,
        messages_rx,
        sync,
        cancel.child_token(),
    ));
}

async fn session_spec(state: &AppState, cid: &ConnectorId) -> anyhow::Result<SessionSpec> {
    let c = state.store.connector(cid).await?;
    let keys = state
        .store
        .connector_keys(cid)
        .await?
        .ok_or_else(|| anyhow::anyhow!("connector {cid} is paired but has no keys"))?;
    let peer = c
        .peer
        .ok_or_else(|| anyhow::anyhow!("connector {cid} is paired but has no peer"))?;
    let site = state
        .link
        .site_name()
        .ok_or_else(|| anyhow::anyhow!("this site runs without a hub"))?;
    Ok(SessionSpec {
        connector: cid.clone(),
        role: c.role,
        local: ConnectorAddr::new(site, cid.clone())?,
        keypair: StaticKeypair::from_private(keys.static_private),
        peer: PinnedPeer {
            addr: ConnectorAddr::new(peer.site, peer.connector_id)?,
            static_public: keys.peer_static_public,
        },
    })
}

/// Consumes one connector's session: forwards every Up and Down to the sync driver, in
/// order and none lost, answers pings, and hands sync and lookup messages to their services.
/// A message of an earlier session generation than the one up is stale and dropped.
async fn connector_task(
    state: AppState,
    cid: ConnectorId,
    handle: PeerHandle,
    mut messages: mpsc::Receiver<PeerMessage>,
    sync: Option<mpsc::Sender<sync::SyncEvent>>,
    cancel: CancellationToken,
) {
    let to_sync = |e: sync::SyncEvent| {
        let sync = sync.clone();
        async move {
            if let Some(tx) = sync {
                let _ = tx.send(e).await;
            }
        }
    };
    let mut sessions = handle.watch_state();
    let mut seen = SessionState::default();
    loop {
        let message = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            changed = sessions.changed() => {
                if changed.is_err() {
                    break;
                }
                None
            }
            m = messages.recv() => match m { Some(m) => Some(m), None => break },
        };
        // Catch up with the session state first: a message's session is announced before it.
        let now = *sessions.borrow_and_update();
        if now != seen {
            if seen.up && (!now.up || now.generation != seen.generation) {
                to_sync(sync::SyncEvent::Down).await;
            }
            if now.up && (!seen.up || now.generation != seen.generation) {
                confirm_pairing(&state, &cid).await;
                to_sync(sync::SyncEvent::Up).await;
            }
            seen = now;
        }
        let Some((generation, msg)) = message else {
            continue;
        };
        if !seen.up || generation != seen.generation {
            continue;
        }
        match msg.split_first() {
            Some((&service::SYNC, body)) => {
                to_sync(sync::SyncEvent::Message(body.to_vec())).await;
            }
            Some((tag, _)) if (service::LOOKUP_FIRST..=service::LOOKUP_LAST).contains(tag) => {
                lookup::on_message(&state, &cid, &handle, &msg).await;
            }
            Some((&service::PING, nonce)) => {
                let mut pong = vec![service::PONG];
                pong.extend_from_slice(nonce);
                let _ = handle.send(pong).await;
            }
            Some((&service::PONG, nonce)) => {
                if let Ok(bytes) = <[u8; 8]>::try_from(nonce) {
                    let nonce = u64::from_le_bytes(bytes);
                    if let Some(tx) = state.remote.lock_pings().remove(&nonce) {
                        let _ = tx.send(());
                    }
                }
            }
            _ => tracing::debug!(connector = %cid, "message for an unknown service"),
        }
    }
}

/// The first end-to-end session proves the peer holds the pairing: a Source's pairing is
/// confirmed, and can no longer be cancelled (docs/spec.md §4).
async fn confirm_pairing(state: &AppState, cid: &ConnectorId) {
    match state.store.confirm_pairing(cid).await {
        Ok(true) => {
            tracing::info!(connector = %cid, "the Target confirmed the pairing with its first session")
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!(connector = %cid, error = %e, "cannot record the pairing's confirmation")
        }
    }
}
