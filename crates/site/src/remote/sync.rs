//! Resource data synchronisation of one paired connector (SPEC §6, §7): drives
//! `proto::sync`'s Sender and Receiver from the store and the encrypted peer session.
//!
//! Not built yet: [`spawn`] starts nothing and messages are dropped.

use proto::model::ConnectorId;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::peer::PeerHandle;
use crate::state::AppState;

/// What the connector task hands the sync driver.
#[derive(Debug)]
pub enum SyncEvent {
    /// The encrypted session is up.
    Up,
    /// The encrypted session is down.
    Down,
    /// A sync message from the peer (the service byte stripped).
    Message(Vec<u8>),
}

/// Starts the sync driver of a paired connector; returns where to send its events, or
/// `None` when the connector has nothing to sync.
pub fn spawn(
    _state: &AppState,
    _cid: &ConnectorId,
    _handle: PeerHandle,
    _cancel: CancellationToken,
    _tasks: &mut JoinSet<()>,
) -> Option<mpsc::Sender<SyncEvent>> {
    None
}
