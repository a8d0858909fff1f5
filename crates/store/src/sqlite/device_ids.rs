//! The writer's cache of device row ids, across transactions: an ingest or an apply of a
//! request for 1,000 devices looked up each device's row with its own `SELECT`, on the
//! latency path of every point (docs/benchmarks.md, "Where a point's latency goes").
//!
//! ```text
//!  job ── lookup(cid, identity) ──▶ cache hit: (row id, locked)
//!                                   miss: SELECT id, state FROM devices ─▶ remembered
//!  job ── remember(cid, identity, id) after it INSERTs a device row
//!  any DELETE of a device row, any UPDATE of its connector, identity or state (cascades
//!  from a deleted connector included) ── temp trigger ──▶ west_device_row_changed() ──▶
//!  forgotten at once
//!  writer: job refused ──▶ what it remembered is forgotten (`rollback_to`)
//!          COMMIT failed ──▶ what the transaction remembered is forgotten (`end`)
//!  another connection committed (`PRAGMA data_version` moved) ──▶ all forgotten
//! ```
//!
//! Invariants:
//! - An entry names a row that exists in the writer's view of the database, with its
//!   current state: a row id is reused only after its row was deleted (`INTEGER PRIMARY
//!   KEY` takes the largest id plus one), and every delete on the writer's connection runs
//!   the trigger, which forgets the entry in the same statement, before any later lookup;
//!   an entry remembered by a job or a transaction that did not commit is forgotten with
//!   it; and a commit of any other connection (another process, a test's second
//!   connection) empties the cache before the writer's next lookup.
//! - The cache lives on the writer thread only ([`start`]); on any other thread (the
//!   opening thread, a test's own connection) every lookup is the `SELECT`, and nothing is
//!   kept.
//! - At most [`MAX_ENTRIES`] entries: past that the cache starts over (memory stays
//!   bounded for any fleet; a fleet larger than that looks its devices up as before).
//!
//! Deliberately absent: negative entries (a missing or deleted device is looked up each
//! time: rare, and its record decides what happens), and any use by reads (the pool's
//! connections see other snapshots).

use std::cell::{Cell, RefCell};

use proto::model::{ConnectorId, DeviceState, Identity};
use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, OptionalExtension};

use super::backend;
use crate::Result;

/// Most entries kept, over all connectors (about 64 bytes each with their names).
pub(super) const MAX_ENTRIES: usize = 16_384;

/// A device's row as the writer needs it for points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DeviceRow {
    pub(super) id: i64,
    /// A locked device takes no data through the API (`DeviceState::Locked`).
    pub(super) locked: bool,
}

/// Identity bytes a cache key holds inline (`sensor-00042` and most names are shorter).
const INLINE: usize = 24;

/// An identity as a cache key: its bytes, inline up to [`INLINE`], looked up by `&[u8]`.
type IdentityKey = smallvec::SmallVec<[u8; INLINE]>;

#[derive(Default)]
struct Cache {
    /// Connector → identity → row.
    /// foldhash: two lookups a point of every ingest and apply, where SipHash was a tenth
    /// of a Target writer's time. An identity of up to [`INLINE`] bytes is kept in the
    /// table itself: a `String` key cost a second cache miss a lookup (its heap bytes,
    /// compared), and a Target's apply looks up a thousand devices a request.
    rows: foldhash::HashMap<String, foldhash::HashMap<IdentityKey, DeviceRow>>,
    len: usize,
    /// What the open transaction remembered, in order (`rollback_to` and `end` forget it
    /// unless it committed).
    remembered: Vec<(String, String)>,
    /// `PRAGMA data_version` when the cache was last known current.
    data_version: Option<i64>,
    /// Whether this transaction compared `data_version` already.
    checked: bool,
}

impl Cache {
    fn get(&self, cid: &str, identity: &str) -> Option<DeviceRow> {
        self.rows.get(cid)?.get(identity.as_bytes()).copied()
    }

    fn insert(&mut self, cid: &str, identity: &str, row: DeviceRow) {
        if self.len >= MAX_ENTRIES {
            self.rows.clear();
            self.len = 0;
        }
        let previous = self
            .rows
            .entry(cid.to_owned())
            .or_default()
            .insert(IdentityKey::from_slice(identity.as_bytes()), row);
        if previous.is_none() {
            self.len += 1;
        }
        self.remembered.push((cid.to_owned(), identity.to_owned()));
    }

    fn forget(&mut self, cid: &str, identity: &str) {
        if let Some(devices) = self.rows.get_mut(cid)
            && devices.remove(identity.as_bytes()).is_some()
        {
            self.len -= 1;
            if devices.is_empty() {
                self.rows.remove(cid);
            }
        }
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.len = 0;
        self.remembered.clear();
    }
}

thread_local! {
    /// Set on the writer thread once its connection carries the trigger ([`start`]).
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// The function the triggers call, and the triggers (temporary: they exist on the writer's
/// connection alone, no migration, and no other connection needs the function).
const SQL_FUNCTION: &str = "west_device_row_changed";
const TRIGGERS: &str = "
    CREATE TEMP TRIGGER IF NOT EXISTS west_device_ids_deleted AFTER DELETE ON main.devices
    BEGIN SELECT west_device_row_changed(OLD.connector, OLD.identity); END;
    CREATE TEMP TRIGGER IF NOT EXISTS west_device_ids_updated
    AFTER UPDATE OF connector, identity, state ON main.devices
    BEGIN SELECT west_device_row_changed(OLD.connector, OLD.identity); END;";

/// Turns the cache on for the writer thread that owns `conn` (the trigger and its function
/// on that connection). On failure the writer runs without a cache (every lookup is the
/// `SELECT`), which is only slower.
pub(super) fn start(conn: &Connection) {
    let installed = conn
        .create_scalar_function(
            SQL_FUNCTION,
            2,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DIRECTONLY,
            |ctx| {
                let cid = ctx.get_raw(0).as_str().unwrap_or_default();
                let identity = ctx.get_raw(1).as_str().unwrap_or_default();
                CACHE.with_borrow_mut(|c| c.forget(cid, identity));
                Ok(rusqlite::types::Null)
            },
        )
        .and_then(|()| conn.execute_batch(TRIGGERS));
    match installed {
        Ok(()) => ACTIVE.set(true),
        Err(e) => {
            tracing::warn!(error = %e, "no device id cache: each write looks its devices up")
        }
    }
}

/// The row of a device of `cid`, if it exists.
pub(super) fn lookup(
    conn: &Connection,
    cid: &ConnectorId,
    identity: &Identity,
) -> Result<Option<DeviceRow>> {
    let active = ACTIVE.get();
    if active {
        check_version(conn)?;
        if let Some(row) = CACHE.with_borrow(|c| c.get(cid.as_str(), identity.as_str())) {
            return Ok(Some(row));
        }
    }
    let row = conn
        .prepare_cached("SELECT id, state FROM devices WHERE connector = ?1 AND identity = ?2")
        .and_then(|mut s| {
            s.query_row([cid.as_str(), identity.as_str()], |r| {
                Ok(DeviceRow {
                    id: r.get(0)?,
                    locked: r.get_ref(1)?.as_str()? == DeviceState::Locked.as_str(),
                })
            })
            .optional()
        })
        .map_err(backend("looking up a device"))?;
    if active && let Some(row) = row {
        CACHE.with_borrow_mut(|c| c.insert(cid.as_str(), identity.as_str(), row));
    }
    Ok(row)
}

/// The cached rows of `identities`, in order, `None` where the cache has none (look those
/// up one by one); empty when the cache is off. Looked up together, in a loop that does
/// nothing else: a Target's apply of a thousand devices found each entry's cache line
/// cold (the batches come 100 ms apart), and its per-point loop took those misses one
/// after another. Here the processor overlaps them.
pub(super) fn rows_of<'a>(
    conn: &Connection,
    cid: &ConnectorId,
    identities: impl Iterator<Item = &'a Identity>,
) -> Result<Vec<Option<DeviceRow>>> {
    if !ACTIVE.get() {
        return Ok(Vec::new());
    }
    check_version(conn)?;
    Ok(CACHE.with_borrow(|c| match c.rows.get(cid.as_str()) {
        Some(devices) => identities
            .map(|i| devices.get(i.as_str().as_bytes()).copied())
            .collect(),
        None => Vec::new(),
    }))
}

/// Remembers the row a job has just inserted for a device (not locked).
pub(super) fn remember(cid: &ConnectorId, identity: &Identity, id: i64) {
    if ACTIVE.get() {
        let row = DeviceRow { id, locked: false };
        CACHE.with_borrow_mut(|c| c.insert(cid.as_str(), identity.as_str(), row));
    }
}

/// Empties the cache when another connection committed since the writer last looked.
fn check_version(conn: &Connection) -> Result<()> {
    if CACHE.with_borrow(|c| c.checked) {
        return Ok(());
    }
    let version: i64 = conn
        .query_row("PRAGMA data_version", [], |r| r.get(0))
        .map_err(backend("reading the data version"))?;
    CACHE.with_borrow_mut(|c| {
        if c.data_version != Some(version) {
            c.clear();
            c.data_version = Some(version);
        }
        c.checked = true;
    });
    Ok(())
}

/// Where the current job's entries start (to forget them if its savepoint rolls back).
pub(super) fn mark() -> usize {
    CACHE.with_borrow(|c| c.remembered.len())
}

/// Forgets what a job whose savepoint rolled back remembered.
pub(super) fn rollback_to(mark: usize) {
    CACHE.with_borrow_mut(|c| {
        for (cid, identity) in c.remembered.split_off(mark.min(c.remembered.len())) {
            c.forget(&cid, &identity);
        }
    });
}

/// Ends the writer's transaction: what it remembered stays if it committed, else it is
/// forgotten.
pub(super) fn end(committed: bool) {
    CACHE.with_borrow_mut(|c| {
        if !committed {
            for (cid, identity) in std::mem::take(&mut c.remembered) {
                c.forget(&cid, &identity);
            }
        }
        c.remembered.clear();
        c.checked = false;
    });
}

/// Entries cached on this thread (tests).
#[cfg(test)]
pub(super) fn cached() -> usize {
    CACHE.with_borrow(|c| c.len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> (ConnectorId, Identity) {
        (
            ConnectorId::parse("c0000000000001").expect("connector id"),
            Identity::parse(s).expect("identity"),
        )
    }

    #[test]
    fn a_refused_job_or_a_failed_commit_forgets_what_it_remembered() {
        ACTIVE.set(true);
        let (cid, a) = key("a");
        let (_, b) = key("b");
        remember(&cid, &a, 1);
        end(true);
        let job = mark();
        remember(&cid, &b, 2);
        rollback_to(job);
        assert_eq!(
            CACHE
                .with_borrow(|c| c.get(cid.as_str(), "a"))
                .map(|r| r.id),
            Some(1)
        );
        assert_eq!(CACHE.with_borrow(|c| c.get(cid.as_str(), "b")), None);
        remember(&cid, &b, 2);
        end(false);
        assert_eq!(CACHE.with_borrow(|c| c.get(cid.as_str(), "b")), None);
        assert_eq!(cached(), 1);
        ACTIVE.set(false);
    }

    #[test]
    fn the_cache_starts_over_past_its_bound() {
        ACTIVE.set(true);
        let (cid, _) = key("x");
        for i in 0..=MAX_ENTRIES {
            remember(
                &cid,
                &Identity::parse(&format!("d{i}")).expect("identity"),
                i as i64,
            );
        }
        end(true);
        assert_eq!(cached(), 1);
        ACTIVE.set(false);
    }
}
