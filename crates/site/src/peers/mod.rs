//! The site's live connections to its peers, as shared data and handles: what `state`
//! holds and `ops` uses, below both, filled and driven by the tasks of `remote`.
//!
//! - `peer` — one paired connector's end-to-end session: its task and the handle that
//!   sends through it (Noise KK on the keys pinned at pairing).
//! - `registry` — `Remote`: every paired connector's session handle, the end-to-end pings
//!   and device lookups waiting for their answer, and the queue that asks the supervisor to
//!   start a newly paired connector.
//! - `status` — each sync driver's wake-up (`SyncDrivers::appended`), status and rate
//!   history, and the sync settings.
//! - `windows` — the Source's open pairing windows.
//! - `backfill` — each connector's backfill: progress, slices, cancellation.
//!
//! Deliberately absent: any use of `state`, `ops` or `remote` (this module is below them),
//! and anything durable (that is the store's).

pub mod backfill;
pub mod peer;
pub mod registry;
pub mod status;
pub mod windows;
