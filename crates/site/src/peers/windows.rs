//! The Source's open pairing windows, in memory beside what the store keeps: the countdown
//! of each connector waiting to be paired, the key it will pin, and the attempts in flight.
//! `ops::pairing` opens and closes them; `remote::pairing` answers the Target's messages
//! against them. How the last window of a connector ended (expired, five wrong codes,
//! cancelled) is kept too, for the Source's Remote-Sync tab.

use std::collections::HashMap;
use std::sync::Mutex;

use proto::model::ConnectorId;
use proto::pairing::{AttemptId, PairingResponder, PairingWindow, StaticKeypair};

/// The Source's open pairing windows, in memory beside what the store keeps.
#[derive(Default)]
pub struct Pairings {
    pub(crate) open: Mutex<HashMap<ConnectorId, SourceWindow>>,
    /// How the last window of each connector ended without a pairing.
    ended: Mutex<HashMap<ConnectorId, WindowEnded>>,
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

/// Why a connector's last pairing window closed without a pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowEnd {
    Expired,
    TooManyAttempts,
    Cancelled,
}

impl WindowEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::TooManyAttempts => "too_many_attempts",
            Self::Cancelled => "cancelled",
        }
    }
}

/// How a connector's last pairing window ended, for the Source's operator: when (µs), why,
/// and how many wrong codes it had answered. In memory: forgotten when the site restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowEnded {
    pub at: i64,
    pub why: WindowEnd,
    pub failed_attempts: u32,
}

impl Pairings {
    /// How the last window of `cid` ended, if one ended without a pairing since the start.
    pub fn ended(&self, cid: &ConnectorId) -> Option<WindowEnded> {
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        ended.get(cid).copied()
    }

    /// Records (or, with `None`, forgets) how the last window of `cid` ended.
    pub fn set_ended(&self, cid: &ConnectorId, end: Option<WindowEnded>) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        match end {
            Some(e) => ended.insert(cid.clone(), e),
            None => ended.remove(cid),
        };
    }
}
