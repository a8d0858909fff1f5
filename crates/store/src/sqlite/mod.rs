//! The embedded SQLite implementation of [`Store`].
//!
//! ```text
//!  async callers ──job──▶ mpsc ──▶ writer thread: BEGIN; SAVEPOINT/job…; COMMIT ──▶ replies
//!  async callers ──spawn_blocking──▶ pooled read connection (WAL: readers never block writer)
//!  writer ──after a commit──▶ checkpointer thread: passive WAL checkpoint once the WAL
//!                             holds 1,024 pages, at most every 100 ms; asks the writer to
//!                             restart a fully copied WAL ≥ 16 MiB (then cut to 4 MiB)
//!  writer ──after a commit──▶ the outbox records it appended, in memory (`recent.rs`), for
//!                             the sync driver's read; then wakes that driver
//!                             (`Store::wake_on_append`)
//!  writer ──after a commit──▶ the committed points into the in-memory tail, then replies;
//!                             active part ≥ fold_points: freeze it ──▶ compactor thread:
//!                             encode blocks ──install job──▶ mpsc (a job like any other)
//!                             tail ≥ 3 × fold_points: fold it all here (back-pressure)
//! ```
//!
//! Points are appended to a log and folded into per-series blocks, so that a commit writes
//! about the bytes of its points rather than a page per series (`series.rs`). A fold never
//! makes a commit wait: the compactor encodes off the commit path and its result is
//! installed as one small job; only a tail past its hard bound (the compactor behind) is
//! folded by the writer itself, so that memory stays bounded and ingest slows down instead.
//!
//! All writes go through one thread that owns the only write connection. It takes every job
//! waiting in its queue and runs them in one transaction (group commit), each job inside its
//! own savepoint so that a refused request rolls back alone; a job's caller hears back only
//! after the commit. Under load this turns many small ingest requests into one large
//! transaction, which is what SQLite needs to be fast (see docs/limits.md). When the last
//! commit was shared by several callers and jobs keep coming (a fleet of devices, each
//! posting one reading a request), the writer lingers for them, a millisecond at a time and
//! at most 10 ms (`engine::Gather`): a commit writes about the same pages for one job as for
//! a hundred. A lone request, or a commit of one job after another, does not wait.
//!
//! Checkpoints (copying the WAL into the database) run on their own thread, off the commit
//! path: SQLite's automatic checkpoint made the commit that crossed 1,000 pages copy them
//! all while its callers waited, and copied the same hot pages again almost every commit.
//!
//! Durability: WAL with `synchronous = NORMAL` survives `kill -9` of the process (the WAL is
//! in the OS page cache); `Synchronous::Full` also survives a power cut, at the price of an
//! fsync per commit.
//!
//! Files: this one holds the configuration, [`SqliteStore`] and its two doors (`write`: a
//! job for the writer; `read`: a pooled connection); `engine.rs` the writer, checkpointer
//! and compactor threads; `schema.rs` connections and migrations; `rows.rs` row mapping
//! and the shared lookups; `store_impl.rs` the [`Store`] trait, method by method;
//! `series.rs` the time series (log, tail, blocks); `sync.rs` resource data sync;
//! `outbox.rs` the outbox's stored records (a row per request); `recent.rs` the records the
//! latest commits appended, kept in memory for the sync driver;
//! `devices.rs` device records and their convergence; `device_ids.rs` the writer's cache of
//! device row ids across transactions; `device_tokens.rs` device tokens verified once, kept
//! in memory until the writer sees them revoked; `audit.rs` the device audit log;
//! `waiting.rs` points waiting for a missing resource.
//!
//! Invariants: only the writer thread writes (and the migrations at open, before it
//! starts); a write's caller hears back after its transaction committed, or with an error
//! and nothing of it kept; every read runs in one snapshot (`BEGIN` … `COMMIT` on a pooled
//! connection).
//!
//! Deliberately absent: SQL outside this directory (the rest of the workspace sees the
//! [`Store`] trait only), and any lock a caller could hold across an `await`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use proto::model::{
    self, ConnectorId, DeviceState, Format, Identity, ResourceName, Role, SyncState, Value,
};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use crate::*;
use engine::*;
use rows::*;
use schema::*;

mod alarms;
mod audit;
mod backfill;
#[cfg(test)]
mod crash_tests;
mod device_ids;
mod device_list;
mod device_tokens;
mod devices;
mod engine;
#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod model_tests;
mod outbox;
mod recent;
mod rows;
mod schema;
mod series;
mod store_impl;
mod sync;
mod sync_site;
#[cfg(test)]
mod tests;
mod waiting;

/// Read connections kept open between reads.
const READ_POOL: usize = 4;

/// How hard SQLite works to make a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Survives a crash of the process; the last commits may be lost on a power cut.
    #[default]
    Normal,
    /// Survives a power cut too: one fsync per commit.
    Full,
}

/// Where and how to open the database.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file; created with its directory's permission if missing.
    pub path: PathBuf,
    /// Default: `Normal`.
    pub synchronous: Synchronous,
    /// Page cache of the write connection in MiB. Default: 16. A commit touches the tail
    /// of the point log or of an outbox partition and a few registry pages, not a page per
    /// series, so a larger cache mostly grows the site's memory: 64 → 16 MiB took the
    /// store's disk-bytes test from 74.7 to 53.9 MB peak RSS over a million points, no
    /// slower.
    pub cache_mib: u32,
    /// The wall clock outbox appends are stamped with. Default: the system clock.
    pub clock: Clock,
    /// Length of one outbox time partition, µs: retention drops whole partitions. Default:
    /// 10 minutes (4,320 partitions at most in 30 days of outage).
    pub sync_partition_us: i64,
    /// This site's name: the tie-break of device change stamps (docs/spec.md §5). Default: `site`.
    pub site: String,
    /// Points the active part of the in-memory tail holds before it is frozen and folded
    /// into blocks by the compactor (`series.rs`); with the hard bound (three times this) it
    /// bounds memory and the replay on open. Default: 65,536.
    pub fold_points: usize,
    /// Most seqs in one outbox row, for a test (`outbox::row_seqs`). Default: `MAX_ROW_SEQS`.
    #[cfg(test)]
    pub(crate) row_seqs: usize,
}

impl SqliteConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::Normal,
            cache_mib: 16,
            clock: Clock::system(),
            sync_partition_us: 600_000_000,
            site: "site".into(),
            fold_points: 65_536,
            #[cfg(test)]
            row_seqs: outbox::MAX_ROW_SEQS,
        }
    }
}

/// A SQLite store: one writer thread and a small pool of read connections.
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    readers: Arc<Mutex<Vec<Connection>>>,
    config: SqliteConfig,
    /// The not-yet-folded points, indexed (see `series.rs`).
    tail: Arc<RwLock<series::Tail>>,
    live: tokio::sync::broadcast::Sender<Arc<LiveBatch>>,
    /// The outbox records of the latest commits (`recent.rs`).
    recent: Arc<recent::Recent>,
    /// The writer thread, joined by [`SqliteStore::close`].
    writer: std::thread::JoinHandle<()>,
    /// Device tokens verified once, forgotten by the writer when one is revoked.
    tokens: Arc<device_tokens::DeviceTokens>,
}

fn backend(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| StoreError::Backend {
        op,
        source: Box::new(e),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database and runs pending migrations.
    pub fn open(config: SqliteConfig) -> Result<Self> {
        #[cfg(test)]
        outbox::TEST_ROW_SEQS.set(config.row_seqs);
        #[cfg(test)]
        let row_seqs = config.row_seqs;
        let conn = open_connection(&config, config.cache_mib)?;
        // Checkpoints run on their own thread (see `checkpointer`); the writer checkpoints
        // only if the WAL outgrows that thread (readers holding old snapshots, say). A WAL
        // started over is cut back to the checkpointer's threshold (4 MiB), not to the size
        // that restarts it (16 MiB): the file no longer stays at its largest for good, which
        // was 3.9 of the 6 bytes a point a Target stored after `west bench sync` (4.5 now).
        conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = {WAL_SAFETY_PAGES}; PRAGMA journal_size_limit = {};",
            CHECKPOINT_PAGES * 4096
        ))
        .map_err(backend("configuring the database"))?;
        migrate(&conn)?;
        // Nothing was sent since the last run ended, and nothing above the head ever was: a
        // lease that ran ahead of the head pins nothing that exists, so it is cut back to it
        // (docs/sync.md, rule 1), lest it keep the next appends past the retention.
        conn.execute(
            "UPDATE sync_out SET lease = MIN(lease, head), live_lease = MIN(live_lease, head)",
            [],
        )
        .map_err(backend("trimming send leases"))?;
        // Outbox partitions of a version that stored a row per seq (migration 10).
        outbox::convert_legacy(&conn)?;
        let tail = Arc::new(RwLock::new(open_tail(&conn, config.fold_points.max(1))?));
        let (tx, rx) = mpsc::channel::<Job>(1024);
        let (committed, commits) = std::sync::mpsc::sync_channel::<()>(1);
        let checkpoints = open_connection(&config, 1)?;
        let restart_due = Arc::new(AtomicBool::new(false));
        let due = Arc::clone(&restart_due);
        let wal_pages = Arc::new(AtomicI64::new(0));
        let pages = Arc::clone(&wal_pages);
        let (live, _) = tokio::sync::broadcast::channel(LIVE_CAPACITY);
        let (frozen, parts) = std::sync::mpsc::channel();
        let at = config.fold_points.max(1);
        let recent = Arc::new(recent::Recent::default());
        let folding = Folding {
            tail: Arc::clone(&tail),
            at,
            bound: at.saturating_mul(HARD_BOUND_PARTS),
            compactor: frozen,
            live: live.clone(),
            recent: Arc::clone(&recent),
        };
        let tokens = Arc::new(device_tokens::DeviceTokens::default());
        let writer_tokens = Arc::clone(&tokens);
        let weak = tx.downgrade();
        std::thread::Builder::new()
            .name("west-store-compactor".into())
            .spawn(move || compactor(parts, weak))
            .map_err(|e| StoreError::Backend {
                op: "starting the compactor thread",
                source: Box::new(e),
            })?;
        std::thread::Builder::new()
            .name("west-store-checkpointer".into())
            .spawn(move || checkpointer(checkpoints, commits, &due, &pages))
            .map_err(|e| StoreError::Backend {
                op: "starting the checkpoint thread",
                source: Box::new(e),
            })?;
        let writer = std::thread::Builder::new()
            .name("west-store-writer".into())
            .spawn(move || {
                #[cfg(test)]
                outbox::TEST_ROW_SEQS.set(row_seqs);
                writer(
                    conn,
                    rx,
                    committed,
                    (&restart_due, wal_pages),
                    &folding,
                    &writer_tokens,
                )
            })
            .map_err(|e| StoreError::Backend {
                op: "starting the writer thread",
                source: Box::new(e),
            })?;
        Ok(Self {
            jobs: tx,
            readers: Arc::new(Mutex::new(Vec::new())),
            config,
            tail,
            live,
            recent,
            writer,
            tokens,
        })
    }

    /// Closes the store and returns once its writer has finished: the jobs already queued
    /// (a compactor's install among them) have committed or failed, and nothing of this
    /// store writes afterwards. A store opened next on the same file in this process must
    /// wait for this: dropping the handle alone lets the old writer commit a queued install
    /// later, over what the new store wrote (a fold of points the new store deleted, say).
    pub async fn close(self) -> Result<()> {
        let Self { jobs, writer, .. } = self;
        drop(jobs);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .ok()
            .and_then(|joined| joined.ok())
            .ok_or_else(|| StoreError::Backend {
                op: "closing the store",
                source: "the writer thread panicked".into(),
            })
    }

    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Folds every point of the log into blocks now, instead of once the tail holds
    /// [`SqliteConfig::fold_points`]; returns once the fold has run. For tests and tools:
    /// nothing needs it to stay correct.
    pub async fn fold(&self) -> Result<()> {
        self.write(series::fold_now).await
    }

    /// Points in the in-memory tail (not folded yet).
    #[cfg(test)]
    fn tail_len(&self) -> usize {
        self.tail.read().map(|t| t.len()).unwrap_or(0)
    }

    /// A retention pass of stored points ([`Store::points_expire`]) and, as it found them in
    /// the same job, the points of the tail it leaves alone: `(device identity, t)`.
    #[cfg(test)]
    async fn points_expire_seeing_tail(
        &self,
        before: i64,
    ) -> Result<(PointsExpiry, Vec<(String, i64)>)> {
        self.write(move |conn| {
            let mut unfolded = Vec::new();
            for (device, _, t) in series::unfolded_at_commit() {
                let identity: String = conn
                    .query_row(
                        "SELECT identity FROM devices WHERE id = ?1",
                        [device],
                        |r| r.get(0),
                    )
                    .map_err(backend("naming a device"))?;
                unfolded.push((identity, t));
            }
            Ok((series::expire_blocks(conn, before)?, unfolded))
        })
        .await
    }

    /// Runs a local device edit in the writer's transaction with what stamping it needs.
    async fn write_device<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, &devices::Ctx<'_>) -> Result<R> + Send + 'static,
    {
        let (clock, partition_us, site) = (
            self.config.clock.clone(),
            self.config.sync_partition_us,
            self.config.site.clone(),
        );
        self.write(move |conn| {
            let ctx = devices::Ctx {
                site: &site,
                now: clock.now(),
                partition_us,
            };
            f(conn, &ctx)
        })
        .await
    }

    /// Runs `f` in the writer's current transaction and answers after the commit.
    async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let (job, answer) = job(f);
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a pooled read connection on the blocking thread pool.
    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().map_err(|_| StoreError::Closed)?.pop();
            let conn = match pooled {
                Some(c) => c,
                None => open_connection(&config, 8)?,
            };
            // One snapshot for the whole read (the tail protocol of `series.rs` needs it).
            let result = match conn.execute_batch("BEGIN") {
                Ok(()) => {
                    let result = f(&conn);
                    let _ = conn.execute_batch("COMMIT");
                    result
                }
                Err(e) => Err(backend("starting a read")(e)),
            };
            if let Ok(mut pool) = readers.lock()
                && pool.len() < READ_POOL
            {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Backend {
            op: "running a read",
            source: Box::new(e),
        })?
    }
}
