//! Pairing a Source connector with a Target connector (docs/spec.md, "Pairing"), the
//! operator's side of it: the Source's countdown (open, cancel, expire) and the Target's
//! creation of a connector with a pairing code, which runs `proto::pairing`'s initiator over
//! the hub link. The Source's answers to the Target's messages are `remote::pairing`.
//!
//! Nothing is created on the Target unless the whole exchange succeeded.

use std::collections::HashMap;
use std::time::Duration;

use proto::model::{ConnectorId, SyncState};
use proto::pairing::{
    AbortReason, ConnectorAddr, InitiatorStep, PairingCode, PairingError, PairingInitiator,
    PairingWindow, StaticKeypair, WindowClosed,
};
use proto::wire::Address;
use rand_core::OsRng;
use store::{Connector, ConnectorKeys, NewConnector, Peer};

use super::connectors::PairWith;
use super::{Error, Result};
use crate::clock::now_micros;
use crate::link::LinkError;
use crate::peers::windows::{SourceWindow, WindowEnd, WindowEnded};
use crate::state::AppState;

/// How long the Target waits for each answer of the Source.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

fn now_us() -> u64 {
    u64::try_from(now_micros()).unwrap_or(0)
}

/// Opens a Source's pairing window: a countdown with a fresh one-time code.
pub async fn enable(state: &AppState, cid: &ConnectorId) -> Result<Connector> {
    if state.link.site_name().is_none() {
        return Err(Error::Conflict(
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
    state.pairings.set_ended(cid, None);
    tracing::info!(connector = %cid, expires_at = %crate::clock::rfc3339(expires_at), "pairing window opened");
    Ok(c)
}

/// Cancels a Source's countdown, or a pairing its Target has not confirmed yet (a confirmed
/// pairing is final).
pub async fn disable(state: &AppState, cid: &ConnectorId) -> Result<Connector> {
    let c = state.store.connector(cid).await?;
    if c.state == SyncState::Paired && c.pairing_confirmed {
        return Err(Error::Conflict(format!(
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
    let failed_attempts = attempts_used(state, cid).await;
    state.pairings.lock().remove(cid);
    let c = state.store.close_pairing(cid).await?;
    state
        .pairings
        .set_ended(cid, Some(ended(WindowEnd::Cancelled, failed_attempts)));
    tracing::info!(connector = %cid, "pairing window cancelled");
    Ok(c)
}

fn ended(why: WindowEnd, failed_attempts: u32) -> WindowEnded {
    WindowEnded {
        at: now_micros(),
        why,
        failed_attempts,
    }
}

/// How many wrong codes the open window of `cid` has answered (0 when none is open).
pub async fn attempts_used(state: &AppState, cid: &ConnectorId) -> u32 {
    match state.store.pairing_window(cid).await {
        Ok(Some(row)) => row.failed_attempts,
        Ok(None) => 0,
        Err(e) => {
            tracing::error!(connector = %cid, error = %e, "could not read a pairing window");
            0
        }
    }
}

/// The length of the pairing window in words: "10 minutes", "90 seconds", "1 hour".
pub fn window_words(window: Duration) -> String {
    let secs = window.as_secs();
    let (n, unit) = if secs >= 3600 && secs.is_multiple_of(3600) {
        (secs / 3600, "hour")
    } else if secs >= 60 && secs.is_multiple_of(60) {
        (secs / 60, "minute")
    } else {
        (secs, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// Closes every countdown that has run out; run about once a second.
pub async fn expire(state: &AppState) -> Result<()> {
    let now = now_micros();
    for c in state.store.list_connectors().await? {
        if c.state == SyncState::Pairing && c.pairing_expires_at.is_some_and(|at| at <= now) {
            let failed_attempts = attempts_used(state, &c.id).await;
            state.pairings.lock().remove(&c.id);
            state.store.close_pairing(&c.id).await?;
            state
                .pairings
                .set_ended(&c.id, Some(ended(WindowEnd::Expired, failed_attempts)));
            tracing::info!(connector = %c.id, "pairing window expired");
        }
    }
    Ok(())
}

/// Creates a Target connector by pairing it with its Source through the hub; creates nothing
/// unless pairing completes.
pub(super) async fn pair_as_target(
    state: &AppState,
    name: String,
    description: String,
    req: PairWith,
) -> Result<Connector> {
    let my_site = state.link.site_name().ok_or_else(|| {
        Error::PeerOffline(format!(
            "this site runs without a hub, so it cannot reach site {:?} to pair",
            req.remote_site
        ))
    })?;
    let code = PairingCode::parse(&req.pairing_code)
        .map_err(|e| Error::PairingCodeWrong(format!("the pairing code is not valid: {e}")))?;
    let remote_cid = ConnectorId::parse(req.remote_connector_id.trim())?;
    let remote_site = req.remote_site.trim().to_owned();
    if remote_site == my_site {
        return Err(Error::Invalid(
            "the remote site is this site; pair with a connector on another site".into(),
        ));
    }
    if !proto::wire::is_valid_name(&remote_site) {
        return Err(Error::Invalid(format!(
            "{remote_site:?} is not a valid site name"
        )));
    }
    let mut id = [0u8; proto::model::CONNECTOR_ID_LEN];
    rand_core::RngCore::fill_bytes(&mut OsRng, &mut id);
    let cid = ConnectorId::from_random(id);
    let local =
        ConnectorAddr::new(my_site, cid.clone()).map_err(|e| Error::Invalid(e.to_string()))?;
    let remote = ConnectorAddr::new(remote_site.clone(), remote_cid.clone())
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let keypair = StaticKeypair::generate(&mut OsRng);
    let keys = (*keypair.private_bytes(), *keypair.public());
    let (mut initiator, start) = PairingInitiator::start(local, keypair, remote, &code, &mut OsRng);
    let to = Address::new(remote_site.clone(), proto::service::PAIRING);
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
        name,
        description,
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
    // The store queued nothing yet for a new Target; starting its session starts its driver.
    state.remote.start(&cid);
    tracing::info!(connector = %cid, "paired as target");
    Ok(c)
}

fn link_failure(e: LinkError, site: &str, cid: &ConnectorId) -> Error {
    match e {
        LinkError::Failed { reason, .. } => Error::NotFound(reason),
        LinkError::UnknownSite { .. } => Error::NotFound(format!(
            "site {site:?} is not registered on the hub; check the remote site name"
        )),
        LinkError::PeerOffline { .. } => Error::PeerOffline(format!(
            "site {site:?} is offline (registered on the hub but not connected); check that it is running"
        )),
        LinkError::Timeout { .. } => Error::PeerOffline(format!(
            "site {site:?} did not answer in time while pairing with connector {cid}"
        )),
        other => super::link_error(other),
    }
}

fn pairing_failure(e: &PairingError, site: &str, cid: &ConnectorId) -> Error {
    let wrong_code = || {
        Error::PairingCodeWrong(
            "the pairing code is wrong; check it on the source site (the source allows five tries)"
                .into(),
        )
    };
    let not_waiting = || {
        Error::PairingExpired(format!(
            "connector {cid} on site {site} is not waiting for a pairing: the countdown expired or was cancelled; click ENABLE REMOTE-SYNC on the source again"
        ))
    };
    let exhausted = || {
        Error::PairingExpired(
            "too many wrong pairing codes were tried; click ENABLE REMOTE-SYNC on the source again"
                .into(),
        )
    };
    let already = || {
        Error::Conflict(format!(
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
        | PairingError::PeerAborted(AbortReason::WrongConnector) => Error::NotFound(format!(
            "site {site} has no connector {cid} waiting for a pairing"
        )),
        other => {
            tracing::warn!(error = %other, "pairing failed");
            Error::PeerOffline(format!(
                "pairing with site {site} failed: {other}; nothing was created, try again"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_said_in_the_unit_it_was_given() {
        assert_eq!(window_words(Duration::from_secs(600)), "10 minutes");
        assert_eq!(window_words(Duration::from_secs(90)), "90 seconds");
        assert_eq!(window_words(Duration::from_secs(60)), "1 minute");
        assert_eq!(window_words(Duration::from_secs(7200)), "2 hours");
        assert_eq!(window_words(Duration::from_secs(1)), "1 second");
    }
}
