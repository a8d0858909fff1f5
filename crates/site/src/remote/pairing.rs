//! Pairing a Source connector with a Target connector (SPEC §4), as this site does it: the
//! Source's countdown and its answers to pairing messages, and the Target's side of creating
//! a connector with a pairing code. The cryptography is `proto::pairing`; this module
//! persists, routes and maps failures to API.md's error codes.
//!
//! ```text
//!  Target site (create connector)             hub            Source site (window open)
//!   PairingInitiator::start ── Start ──────request──▶ _pairing ─▶ PairingResponder::accept
//!                           ◀─ Challenge ──response─          ◀─ (attempt counted, persisted)
//!   on_message ─────────────── Response ───request──▶ _pairing ─▶ on_message: Paired
//!                                                               store.complete_pairing, then
//!   on_message: Paired      ◀─ Confirm ────response─          ◀─ reply Confirm
//!   store.create_target_connector
//! ```
//!
//! Invariants: the Source persists the pairing before it sends Confirm, and persists the
//! number of answered attempts before it answers, so no restart grants a sixth guess. The
//! Source believes a Start only from the site the hub authenticated: the Target address in
//! the message must name the sending site. Nothing is created on the Target unless the
//! whole exchange succeeded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use proto::model::{ConnectorId, SyncState};
use proto::pairing::{
    AbortReason, AttemptId, ConnectorAddr, InitiatorStep, PairingCode, PairingError,
    PairingInitiator, PairingMessage, PairingResponder, PairingWindow, StaticKeypair, WindowClosed,
};
use proto::wire::Address;
use rand_core::OsRng;
use store::{Connector, ConnectorKeys, NewConnector, Peer};

use crate::error::ApiError;
use crate::link::{Inbound, LinkError};
use crate::state::{AppState, now_micros};

/// The built-in service that answers pairing messages on every site.
pub const PAIRING_SERVICE: &str = "_pairing";
/// How long the Target waits for each answer of the Source.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The Source's open pairing windows, in memory beside what the store keeps.
#[derive(Default)]
pub struct Pairings {
    open: Mutex<HashMap<ConnectorId, SourceWindow>>,
}

/// One connector's countdown: the window, the key it will pin, and the attempts in flight.
struct SourceWindow {
    window: PairingWindow,
    keypair: StaticKeypair,
    attempts: HashMap<AttemptId, PairingResponder>,
}

fn now_us() -> u64 {
    u64::try_from(now_micros()).unwrap_or(0)
}

/// `POST …/remote-sync/enable`: opens a countdown with a fresh code.
pub async fn enable(state: &AppState, cid: &ConnectorId) -> Result<Connector, ApiError> {
    if state.link.site_name().is_none() {
        return Err(ApiError::Conflict(
            "this site runs without a hub; start it with --hub to pair connectors".into(),
        ));
    }
    let code = PairingCode::generate(&mut OsRng);
    let window_us = u64::try_from(state.pairing_window.as_micros()).unwrap_or(u64::MAX);
    let window = PairingWindow::open(code.clone(), now_us(), window_us);
    let expires_at = i64::try_from(window.expires_at_us()).unwrap_or(i64::MAX);
    let c = state
        .store
        .open_pairing(cid, &code.to_string(), expires_at)
        .await?;
    let entry = SourceWindow {
        window,
        keypair: StaticKeypair::generate(&mut OsRng),
        attempts: HashMap::new(),
    };
    state.pairings.lock().insert(cid.clone(), entry);
    tracing::info!(connector = %cid, expires_at = %crate::state::rfc3339(expires_at), "pairing window opened");
    Ok(c)
}

/// `POST …/remote-sync/disable`: cancels a countdown.
pub async fn disable(state: &AppState, cid: &ConnectorId) -> Result<Connector, ApiError> {
    let c = state.store.connector(cid).await?;
    if c.state == SyncState::Paired && c.pairing_confirmed {
        return Err(ApiError::Conflict(format!(
            "connector {cid} is paired; a pairing cannot be undone"
        )));
    }
    if c.state == SyncState::Paired {
        // The Target never opened a session: its Confirm may have been lost, leaving it
        // without a connector. The operator may cancel, and pair again.
        state.remote.stop(cid);
        let c = state.store.cancel_unconfirmed_pairing(cid).await?;
        state.link.remove_pairing(cid.as_str());
        tracing::warn!(connector = %cid, "cancelled a pairing its Target never confirmed");
        return Ok(c);
    }
    state.pairings.lock().remove(cid);
    let c = state.store.close_pairing(cid).await?;
    tracing::info!(connector = %cid, "pairing window cancelled");
    Ok(c)
}

/// Closes every countdown that has run out; run about once a second.
pub async fn expire(state: &AppState) -> Result<(), ApiError> {
    let now = now_micros();
    for c in state.store.list_connectors().await? {
        if c.state == SyncState::Pairing && c.pairing_expires_at.is_some_and(|at| at <= now) {
            state.pairings.lock().remove(&c.id);
            state.store.close_pairing(&c.id).await?;
            tracing::info!(connector = %c.id, "pairing window expired");
        }
    }
    Ok(())
}

impl Pairings {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectorId, SourceWindow>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Answers one pairing message addressed to this site's `_pairing` service (Source side).
pub async fn on_message(state: &AppState, inbound: Inbound) {
    let Some(reply) = inbound.reply else {
        return; // Pairing messages are requests; a one-way one is noise.
    };
    let sent = match answer(state, &inbound.from, &inbound.payload).await {
        Ok(bytes) => reply.respond(bytes).await,
        Err(reason) => reply.fail(&reason).await,
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not answer a pairing message");
    }
}

/// The Source's answer to one pairing message: bytes to send back, or a failure sentence
/// (for a connector that does not exist).
async fn answer(state: &AppState, from: &Address, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let msg =
        PairingMessage::decode(bytes).map_err(|e| format!("malformed pairing message: {e}"))?;
    let attempt = msg.attempt();
    let abort = |reason| PairingMessage::Abort { attempt, reason }.encode();
    match msg {
        PairingMessage::Start { source, target, .. } => {
            if target.site() != from.site {
                tracing::warn!(claimed = target.site(), sender = %from.site, "pairing start naming another site than its sender");
                return Ok(abort(AbortReason::ProtocolViolation));
            }
            if Some(source.site()) != state.link.site_name() {
                return Ok(abort(AbortReason::WrongConnector));
            }
            let cid = source.connector().clone();
            let connector = match state.store.connector(&cid).await {
                Ok(c) => c,
                Err(store::StoreError::ConnectorNotFound(_)) => {
                    return Err(format!(
                        "connector {cid} does not exist on site {}",
                        source.site()
                    ));
                }
                Err(e) => return Err(format!("the source site could not answer: {e}")),
            };
            match connector.state {
                SyncState::Paired => return Ok(abort(AbortReason::AlreadyPaired)),
                SyncState::Disabled => return Ok(abort(AbortReason::NotPairing)),
                SyncState::Pairing => {}
            }
            restore_window(state, &cid).await?;
            let (result, used) = {
                let mut open = state.pairings.lock();
                let Some(w) = open.get_mut(&cid) else {
                    return Ok(abort(AbortReason::NotPairing));
                };
                let result = PairingResponder::accept(
                    &mut w.window,
                    now_us(),
                    &source,
                    &w.keypair,
                    bytes,
                    &mut OsRng,
                );
                let result = match result {
                    Ok((responder, challenge)) => {
                        w.attempts.insert(attempt, responder);
                        Ok(challenge)
                    }
                    Err(f) => Err(f),
                };
                (result, w.window.attempts_used())
            };
            persist_attempts(state, &cid, used).await;
            match result {
                Ok(challenge) => Ok(challenge),
                Err(f) => {
                    tracing::info!(connector = %cid, error = %f.error, "pairing start refused");
                    close_if_exhausted(state, &cid, &f.error).await;
                    Ok(f.reply
                        .unwrap_or_else(|| abort(AbortReason::ProtocolViolation)))
                }
            }
        }
        PairingMessage::Response { .. } => {
            // Find the connector whose window holds this attempt.
            let found = {
                let mut open = state.pairings.lock();
                open.iter_mut().find_map(|(cid, w)| {
                    w.attempts.remove(&attempt).map(|responder| {
                        let peer = responder.peer().clone();
                        let result = responder.on_message(&mut w.window, now_us(), bytes);
                        let keys = (*w.keypair.private_bytes(), *w.keypair.public());
                        (cid.clone(), peer, result, keys, w.window.attempts_used())
                    })
                })
            };
            let Some((cid, peer, result, (private, public), used)) = found else {
                return Ok(abort(AbortReason::NotPairing));
            };
            match result {
                Ok((paired, confirm)) => {
                    let peer_cid = paired.peer.connector().clone();
                    let keys = ConnectorKeys {
                        static_private: private,
                        static_public: public,
                        peer_static_public: paired.peer_static_public,
                    };
                    let peer = Peer {
                        site: paired.peer.site().to_owned(),
                        connector_id: peer_cid,
                    };
                    // Persist first: a Confirm must never leave for a pairing we could lose.
                    match state
                        .store
                        .complete_pairing(&cid, peer.clone(), keys, now_micros())
                        .await
                    {
                        Ok(_) => {
                            state.pairings.lock().remove(&cid);
                            // Claim the pairing at the hub before the Confirm leaves, so
                            // that the Target's first session message is never refused.
                            state.link.add_pairing(
                                cid.as_str(),
                                Address::new(peer.site.clone(), peer.connector_id.as_str()),
                            );
                            state.remote.start(&cid);
                            tracing::info!(connector = %cid, peer_site = %peer.site, peer_connector = %peer.connector_id, "paired as source");
                            Ok(confirm)
                        }
                        Err(e) => {
                            tracing::error!(connector = %cid, error = %e, "could not store a pairing");
                            Ok(abort(AbortReason::ProtocolViolation))
                        }
                    }
                }
                Err(f) => {
                    tracing::info!(connector = %cid, target = %peer.site(), error = %f.error, "pairing attempt failed");
                    persist_attempts(state, &cid, used).await;
                    close_if_exhausted(state, &cid, &f.error).await;
                    Ok(f.reply
                        .unwrap_or_else(|| abort(AbortReason::ProtocolViolation)))
                }
            }
        }
        PairingMessage::Abort { .. } => {
            for w in state.pairings.lock().values_mut() {
                w.attempts.remove(&attempt);
            }
            Ok(Vec::new())
        }
        PairingMessage::Challenge { .. } | PairingMessage::Confirm { .. } => {
            Ok(abort(AbortReason::ProtocolViolation))
        }
    }
}

/// Loads the window of a connector in state `pairing` from the store after a restart.
async fn restore_window(state: &AppState, cid: &ConnectorId) -> Result<(), String> {
    if state.pairings.lock().contains_key(cid) {
        return Ok(());
    }
    let row = state
        .store
        .pairing_window(cid)
        .await
        .map_err(|e| format!("the source site could not answer: {e}"))?;
    let Some(row) = row else { return Ok(()) };
    let Ok(code) = PairingCode::parse(&row.code) else {
        return Ok(());
    };
    let expires = u64::try_from(row.expires_at).unwrap_or(0);
    let used = u8::try_from(row.failed_attempts).unwrap_or(u8::MAX);
    state
        .pairings
        .lock()
        .entry(cid.clone())
        .or_insert_with(|| SourceWindow {
            window: PairingWindow::restore(code, expires, used),
            keypair: StaticKeypair::generate(&mut OsRng),
            attempts: HashMap::new(),
        });
    Ok(())
}

/// Stores how many attempts the window has answered, so a restart grants none back.
async fn persist_attempts(state: &AppState, cid: &ConnectorId, used: u8) {
    let stored = match state.store.pairing_window(cid).await {
        Ok(Some(row)) => row.failed_attempts,
        _ => return,
    };
    for _ in stored..u32::from(used) {
        if let Err(e) = state.store.record_failed_attempt(cid).await {
            tracing::error!(connector = %cid, error = %e, "could not count a pairing attempt");
            return;
        }
    }
}

/// Five wrong codes close the window: the connector goes back to standalone.
async fn close_if_exhausted(state: &AppState, cid: &ConnectorId, error: &PairingError) {
    let exhausted = matches!(error, PairingError::Closed(WindowClosed::TooManyAttempts))
        || state.pairings.lock().get(cid).is_some_and(|w| {
            matches!(
                w.window.status(now_us()),
                proto::pairing::WindowStatus::Closed(WindowClosed::TooManyAttempts)
            )
        });
    if exhausted {
        state.pairings.lock().remove(cid);
        if let Err(e) = state.store.close_pairing(cid).await {
            tracing::error!(connector = %cid, error = %e, "could not close a pairing window");
        }
        tracing::warn!(connector = %cid, "pairing window closed after too many wrong codes");
    }
}

/// What the Target operator entered to pair a new connector.
pub struct TargetRequest {
    pub name: String,
    pub description: String,
    pub remote_site: String,
    pub remote_connector_id: String,
    pub pairing_code: String,
}

/// Creates a Target connector by pairing it with its Source through the hub; creates nothing
/// unless pairing completes.
pub async fn create_target(state: &AppState, req: TargetRequest) -> Result<Connector, ApiError> {
    let my_site = state.link.site_name().ok_or_else(|| {
        ApiError::PeerOffline(format!(
            "this site runs without a hub, so it cannot reach site {:?} to pair",
            req.remote_site
        ))
    })?;
    let code = PairingCode::parse(&req.pairing_code)
        .map_err(|e| ApiError::PairingCodeWrong(format!("the pairing code is not valid: {e}")))?;
    let remote_cid = ConnectorId::parse(req.remote_connector_id.trim())?;
    let remote_site = req.remote_site.trim().to_owned();
    if remote_site == my_site {
        return Err(ApiError::InvalidValue(
            "the remote site is this site; pair with a connector on another site".into(),
        ));
    }
    if !proto::wire::is_valid_name(&remote_site) {
        return Err(ApiError::InvalidValue(format!(
            "{remote_site:?} is not a valid site name"
        )));
    }
    let mut id = [0u8; proto::model::CONNECTOR_ID_LEN];
    rand_core::RngCore::fill_bytes(&mut OsRng, &mut id);
    let cid = ConnectorId::from_random(id);
    let local = ConnectorAddr::new(my_site, cid.clone())
        .map_err(|e| ApiError::InvalidValue(e.to_string()))?;
    let remote = ConnectorAddr::new(remote_site.clone(), remote_cid.clone())
        .map_err(|e| ApiError::InvalidValue(e.to_string()))?;
    let keypair = StaticKeypair::generate(&mut OsRng);
    let keys = (*keypair.private_bytes(), *keypair.public());
    let (mut initiator, start) = PairingInitiator::start(local, keypair, remote, &code, &mut OsRng);
    let to = Address::new(remote_site.clone(), PAIRING_SERVICE);
    tracing::info!(connector = %cid, remote_site, remote_connector = %remote_cid, "pairing as target");

    let mut outgoing = start;
    let paired = loop {
        let answer = state
            .link
            .request(cid.as_str(), to.clone(), outgoing, STEP_TIMEOUT)
            .await
            .map_err(|e| link_failure(e, &remote_site, &remote_cid))?;
        match initiator.on_message(&answer) {
            Ok(InitiatorStep::Send(next)) => outgoing = next,
            Ok(InitiatorStep::Paired(p)) => break p,
            Err(f) => {
                if let Some(abort) = f.reply {
                    let _ = state.link.send(cid.as_str(), to.clone(), 0, abort).await;
                }
                return Err(pairing_failure(&f.error, &remote_site, &remote_cid));
            }
        }
    };
    let new = NewConnector {
        id: cid.clone(),
        name: req.name,
        description: req.description,
        created_at: now_micros(),
    };
    let peer = Peer {
        site: remote_site,
        connector_id: remote_cid,
    };
    let keys = ConnectorKeys {
        static_private: keys.0,
        static_public: keys.1,
        peer_static_public: paired.peer_static_public,
    };
    let c = state.store.create_target_connector(new, peer, keys).await?;
    state.remote.start(&cid);
    tracing::info!(connector = %cid, "paired as target");
    Ok(c)
}

fn link_failure(e: LinkError, site: &str, cid: &ConnectorId) -> ApiError {
    match e {
        LinkError::Failed { reason, .. } => ApiError::NotFound(reason),
        LinkError::UnknownSite { .. } => ApiError::NotFound(format!(
            "site {site:?} is not registered on the hub; check the remote site name"
        )),
        LinkError::PeerOffline { .. } => ApiError::PeerOffline(format!(
            "site {site:?} is offline (registered on the hub but not connected); check that it is running"
        )),
        LinkError::Timeout { .. } => ApiError::PeerOffline(format!(
            "site {site:?} did not answer in time while pairing with connector {cid}"
        )),
        other => crate::api::hub::link_error(other),
    }
}

fn pairing_failure(e: &PairingError, site: &str, cid: &ConnectorId) -> ApiError {
    let wrong_code = || {
        ApiError::PairingCodeWrong(
            "the pairing code is wrong; check it on the source site (the source allows five tries)"
                .into(),
        )
    };
    let not_waiting = || {
        ApiError::PairingExpired(format!(
            "connector {cid} on site {site} is not waiting for a pairing: the countdown expired or was cancelled; click ENABLE REMOTE-SYNC on the source again"
        ))
    };
    let exhausted = || {
        ApiError::PairingExpired(
            "too many wrong pairing codes were tried; click ENABLE REMOTE-SYNC on the source again"
                .into(),
        )
    };
    let already = || {
        ApiError::Conflict(format!(
            "connector {cid} on site {site} is already paired with another target"
        ))
    };
    match e {
        PairingError::WrongCode | PairingError::PeerAborted(AbortReason::WrongCode) => wrong_code(),
        PairingError::NotPairing
        | PairingError::Closed(WindowClosed::Expired | WindowClosed::Cancelled)
        | PairingError::PeerAborted(
            AbortReason::Expired | AbortReason::Cancelled | AbortReason::NotPairing,
        ) => not_waiting(),
        PairingError::Closed(WindowClosed::TooManyAttempts)
        | PairingError::PeerAborted(AbortReason::TooManyAttempts) => exhausted(),
        PairingError::Closed(WindowClosed::AlreadyPaired)
        | PairingError::PeerAborted(AbortReason::AlreadyPaired) => already(),
        PairingError::WrongConnector { .. }
        | PairingError::PeerAborted(AbortReason::WrongConnector) => ApiError::NotFound(format!(
            "site {site} has no connector {cid} waiting for a pairing"
        )),
        other => {
            tracing::warn!(error = %other, "pairing failed");
            ApiError::PeerOffline(format!(
                "pairing with site {site} failed: {other}; nothing was created, try again"
            ))
        }
    }
}
