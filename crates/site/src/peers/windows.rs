//! The Source's open pairing windows, in memory beside what the store keeps: the countdown
//! of each connector waiting to be paired, the key it will pin, and the attempts in flight.
//! `ops::pairing` opens and closes them; `remote::pairing` answers the Target's messages
//! against them.

use std::collections::HashMap;
use std::sync::Mutex;

use proto::model::ConnectorId;
use proto::pairing::{AttemptId, PairingResponder, PairingWindow, StaticKeypair};

/// The Source's open pairing windows, in memory beside what the store keeps.
#[derive(Default)]
pub struct Pairings {
    pub(crate) open: Mutex<HashMap<ConnectorId, SourceWindow>>,
}

/// One connector's countdown: the window, the key it will pin, and the attempts in flight.
pub(crate) struct SourceWindow {
    pub(crate) window: PairingWindow,
    pub(crate) keypair: StaticKeypair,
    pub(crate) attempts: HashMap<AttemptId, PairingResponder>,
}

impl Pairings {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectorId, SourceWindow>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}
