//! Device tokens verified once, kept in memory: a device that posts one reading a request
//! presented its token to a read of the `devices` table every time (a blocking-pool thread,
//! a pooled or freshly opened connection, a transaction), which cost more CPU than storing
//! the reading (docs/benchmarks.md, "Device-shaped load, session 7").
//!
//! ```text
//!  device_by_token(hash) ── cached? ──▶ (connector, identity), no I/O
//!                          miss: epoch, then SELECT … WHERE token_hash = ?  ──▶ kept
//!                                unless the epoch moved meanwhile
//!  writer: a DELETE of a device row, an UPDATE of its token_hash, connector or identity
//!          (cascades from a deleted connector included) ── temp trigger ──▶
//!          west_device_token_changed() ──▶ after that transaction's COMMIT (or
//!          ROLLBACK), before any of its callers hears back: all forgotten, epoch + 1
//!  writer: another connection committed (`PRAGMA data_version` moved at BEGIN) ──▶
//!          all forgotten, epoch + 1
//! ```
//!
//! Invariants:
//! - An entry maps the SHA-256 of a token to the device row that held it when a read saw
//!   it, and no transaction of the writer that revoked it (a new token, the device or its
//!   connector deleted, by the API, the UI or the peer's sync) has answered its caller
//!   while the entry was still there: a revocation takes effect before it is acknowledged,
//!   as it did when every request read the table.
//! - A read that began before such a commit cannot put its stale answer back: it takes the
//!   epoch before its snapshot begins and its answer is kept only if the epoch is still
//!   the same (checked under the lock the writer clears with).
//! - At most [`MAX_ENTRIES`] entries: past that the cache starts over.
//!
//! Deliberately absent: negative entries (an unknown token is looked up each time, as
//! before), and user login tokens (they expire and are few per site; their check stays a
//! read). A commit by another process is seen at the writer's next transaction, not at
//! once: nothing of West writes a site's database but the site itself.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Mutex;

use proto::model::{ConnectorId, Identity};
use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;

use crate::TokenHash;

/// Most tokens kept (about 150 bytes each with their names).
pub(super) const MAX_ENTRIES: usize = 65_536;

/// The device tokens verified so far, shared by the readers and the writer.
#[derive(Default)]
pub(super) struct DeviceTokens {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    devices: HashMap<TokenHash, (ConnectorId, Identity)>,
    /// Moves on every revocation, so that a read that began before it keeps nothing.
    epoch: u64,
}

impl DeviceTokens {
    /// The device a token was verified for, if it still holds it.
    pub(super) fn get(&self, token: &TokenHash) -> Option<(ConnectorId, Identity)> {
        self.inner.lock().ok()?.devices.get(token).cloned()
    }

    /// The epoch to give [`DeviceTokens::keep`]: taken before the read's snapshot begins.
    pub(super) fn epoch(&self) -> u64 {
        self.inner.lock().map(|i| i.epoch).unwrap_or(u64::MAX)
    }

    /// Keeps what a read that began at `epoch` found, unless a revocation came since.
    pub(super) fn keep(&self, epoch: u64, token: TokenHash, device: (ConnectorId, Identity)) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.epoch != epoch {
            return;
        }
        if inner.devices.len() >= MAX_ENTRIES {
            inner.devices.clear();
        }
        inner.devices.insert(token, device);
    }

    /// Forgets every token (a revocation, or a commit the writer did not see).
    pub(super) fn forget_all(&self) {
        // A poisoned lock cannot be cleared, but nothing reads through it either.
        if let Ok(mut inner) = self.inner.lock() {
            inner.devices.clear();
            inner.epoch += 1;
        }
    }

    /// Tokens kept (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.inner.lock().map(|i| i.devices.len()).unwrap_or(0)
    }
}

thread_local! {
    /// Whether the writer's open transaction changed a device row's token or removed it.
    static CHANGED: Cell<bool> = const { Cell::new(false) };
    /// `PRAGMA data_version` at the writer's last transaction.
    static DATA_VERSION: Cell<Option<i64>> = const { Cell::new(None) };
    /// Whether the writer's connection carries the triggers.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

const SQL_FUNCTION: &str = "west_device_token_changed";
/// Temporary: they exist on the writer's connection alone, no migration needed.
const TRIGGERS: &str = "
    CREATE TEMP TRIGGER IF NOT EXISTS west_device_tokens_deleted AFTER DELETE ON main.devices
    BEGIN SELECT west_device_token_changed(); END;
    CREATE TEMP TRIGGER IF NOT EXISTS west_device_tokens_updated
    AFTER UPDATE OF token_hash, connector, identity ON main.devices
    BEGIN SELECT west_device_token_changed(); END;";

/// Installs the triggers on the writer's connection. Without them (a failure) the writer
/// forgets every token after each transaction, which is only slower.
pub(super) fn start(conn: &Connection) {
    let installed = conn
        .create_scalar_function(
            SQL_FUNCTION,
            0,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DIRECTONLY,
            |_| {
                CHANGED.set(true);
                Ok(rusqlite::types::Null)
            },
        )
        .and_then(|()| conn.execute_batch(TRIGGERS));
    match installed {
        Ok(()) => ACTIVE.set(true),
        Err(e) => {
            tracing::warn!(error = %e, "no trigger for device tokens: each commit forgets them all")
        }
    }
}

/// At the writer's BEGIN: forgets every token if another connection committed since the
/// writer's last transaction (its rows may have changed behind the triggers' back).
pub(super) fn begun(conn: &Connection, tokens: &DeviceTokens) {
    let version = conn
        .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
        .ok();
    if version.is_none() || DATA_VERSION.get() != version {
        tokens.forget_all();
    }
    DATA_VERSION.set(version);
}

/// At the end of the writer's transaction (committed or not), before its callers hear
/// back: forgets every token if it touched one.
pub(super) fn ended(tokens: &DeviceTokens) {
    if CHANGED.replace(false) || !ACTIVE.get() {
        tokens.forget_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str) -> (ConnectorId, Identity) {
        (
            ConnectorId::parse("c0000000000001").expect("connector id"),
            Identity::parse(name).expect("identity"),
        )
    }

    #[test]
    fn a_read_that_began_before_a_revocation_keeps_nothing() {
        let tokens = DeviceTokens::default();
        let before = tokens.epoch();
        tokens.forget_all();
        tokens.keep(before, [1; 32], device("a"));
        assert_eq!(tokens.get(&[1; 32]), None);
        tokens.keep(tokens.epoch(), [1; 32], device("a"));
        assert_eq!(tokens.get(&[1; 32]), Some(device("a")));
        tokens.forget_all();
        assert_eq!(tokens.get(&[1; 32]), None);
    }

    #[test]
    fn the_cache_starts_over_past_its_bound() {
        let tokens = DeviceTokens::default();
        let epoch = tokens.epoch();
        for i in 0..=MAX_ENTRIES {
            let mut hash = [0; 32];
            hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
            tokens.keep(epoch, hash, device("a"));
        }
        assert_eq!(tokens.len(), 1);
    }
}
