//! Pairing a Source connector with a Target connector (docs/spec.md, "Pairing"), the
//! Source's answers: this site's `_pairing` service, which answers the Target's pairing
//! messages against the open windows (`peers::windows`). The cryptography is
//! `proto::pairing`; the operator's side (opening and cancelling windows, the Target's
//! creation of a connector with a code) is `ops::pairing`.
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

use proto::model::{ConnectorId, SyncState};
use proto::pairing::{
    AbortReason, PairingCode, PairingError, PairingMessage, PairingResponder, PairingWindow,
    StaticKeypair, WindowClosed,
};
use proto::wire::Address;
use rand_core::OsRng;
use store::{ConnectorKeys, Peer};

use crate::clock::now_micros;
use crate::link::Delivery;
use crate::peers::windows::SourceWindow;
use crate::state::AppState;

/// The built-in service that answers pairing messages on every site.
pub const PAIRING_SERVICE: &str = proto::service::PAIRING;

fn now_us() -> u64 {
    u64::try_from(now_micros()).unwrap_or(0)
}

/// Answers one pairing message addressed to this site's `_pairing` service (Source side).
pub async fn on_message(state: &AppState, inbound: Delivery) {
    let Some(reply) = inbound.reply else {
        // Pairing messages are requests, but for the Target's Abort of an attempt (after a
        // wrong code), which it sends one-way: that failure counts against the window. Any
        // other one-way message is noise.
        if matches!(
            PairingMessage::decode(&inbound.payload),
            Ok(PairingMessage::Abort { .. })
        ) {
            let _ = answer(state, &inbound.from, &inbound.payload).await;
        }
        return;
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
            if !persist_attempts(state, &cid, used).await {
                // Unrecorded, the attempt would come back after a restart: answer nothing
                // that lets the Target test its code (issue 13 #12).
                if let Some(w) = state.pairings.lock().get_mut(&cid) {
                    w.attempts.remove(&attempt);
                }
                return Err(format!(
                    "the source site could not record the pairing attempt; try again \
                     (connector {cid})"
                ));
            }
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
            // The Target gave up on this attempt (its key confirmation failed: a wrong
            // code). The failure counts against the window, which five of them close; just
            // dropping the attempt left a window whose tries were all used counting down.
            let failed = {
                let mut open = state.pairings.lock();
                open.iter_mut().find_map(|(cid, w)| {
                    w.attempts.remove(&attempt).map(|responder| {
                        let result = responder.on_message(&mut w.window, now_us(), bytes);
                        (cid.clone(), result.err(), w.window.attempts_used())
                    })
                })
            };
            if let Some((cid, Some(f), used)) = failed {
                tracing::info!(connector = %cid, error = %f.error, "pairing attempt abandoned by the target");
                persist_attempts(state, &cid, used).await;
                close_if_exhausted(state, &cid, &f.error).await;
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

/// Stores how many attempts the window has answered, so a restart grants none back; false
/// when that could not be stored (the caller then answers nothing that tests a code).
async fn persist_attempts(state: &AppState, cid: &ConnectorId, used: u8) -> bool {
    let stored = match state.store.pairing_window(cid).await {
        Ok(Some(row)) => row.failed_attempts,
        Ok(None) => return true,
        Err(e) => {
            tracing::error!(connector = %cid, error = %e, "could not read a pairing window's attempts");
            return false;
        }
    };
    for _ in stored..u32::from(used) {
        if let Err(e) = state.store.record_failed_attempt(cid).await {
            tracing::error!(connector = %cid, error = %e, "could not count a pairing attempt");
            return false;
        }
    }
    true
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
        state.pairings.set_ended(
            cid,
            Some(crate::peers::windows::WindowEnded {
                at: crate::clock::now_micros(),
                why: crate::peers::windows::WindowEnd::TooManyAttempts,
                failed_attempts: u32::from(proto::pairing::MAX_ATTEMPTS),
            }),
        );
        if let Err(e) = state.store.close_pairing(cid).await {
            tracing::error!(connector = %cid, error = %e, "could not close a pairing window");
        }
        tracing::warn!(connector = %cid, "pairing window closed after too many wrong codes");
    }
}
