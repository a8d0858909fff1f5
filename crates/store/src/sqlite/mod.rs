//! The embedded SQLite implementation of [`Store`].
//!
//! ```text
//!  async callers ──job──▶ mpsc ──▶ writer thread: BEGIN; SAVEPOINT/job…; COMMIT ──▶ replies
//!  async callers ──spawn_blocking──▶ pooled read connection (WAL: readers never block writer)
//!  writer ──after a commit──▶ checkpointer thread: passive WAL checkpoint, at most every
//!                             100 ms; asks the writer to restart a fully copied WAL ≥ 16 MiB
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
//! transaction, which is what SQLite needs to be fast (see docs/limits.md), at no cost in latency
//! when the queue is short.
//!
//! Checkpoints (copying the WAL into the database) run on their own thread, off the commit
//! path: SQLite's automatic checkpoint made the commit that crossed 1,000 pages copy them
//! all while its callers waited, and copied the same hot pages again almost every commit.
//!
//! Durability: WAL with `synchronous = NORMAL` survives `kill -9` of the process (the WAL is
//! in the OS page cache); `Synchronous::Full` also survives a power cut, at the price of an
//! fsync per commit.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use proto::model::{
    self, ConnectorId, DeviceState, Format, Identity, ResourceName, Role, SyncState, Value,
};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use crate::*;

#[cfg(test)]
mod crash_tests;
mod devices;
#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod model_tests;
mod series;
mod sync;
mod waiting;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_init.sql")),
    (2, include_str!("../../migrations/0002_pairing.sql")),
    (3, include_str!("../../migrations/0003_sync.sql")),
    (4, include_str!("../../migrations/0004_devices.sql")),
    (5, include_str!("../../migrations/0005_pairing_confirm.sql")),
    (6, include_str!("../../migrations/0006_point_log.sql")),
    (7, include_str!("../../migrations/0007_outbox_is_log.sql")),
    (8, include_str!("../../migrations/0008_point_batches.sql")),
];

/// Most jobs the writer folds into one transaction.
const MAX_JOBS_PER_COMMIT: usize = 256;
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
    /// Page cache of the write connection in MiB. Default: 64, enough to keep the hot pages
    /// of a few thousand series in memory between commits.
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
}

impl SqliteConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::Normal,
            cache_mib: 64,
            clock: Clock::system(),
            sync_partition_us: 600_000_000,
            site: "site".into(),
            fold_points: 65_536,
        }
    }
}

/// What a job leaves for the writer: whether to keep its savepoint, and how to answer its
/// caller once the commit is known.
struct Done {
    ok: bool,
    reply: Reply,
}

/// Answers a job's caller, given the commit's failure if the commit failed.
type Reply = Box<dyn FnOnce(Option<&CommitFailure>) + Send>;

/// Why a commit failed, kept so that every caller of the batch gets its own error with the
/// same SQLite code (a full disk must read as one to each of them).
struct CommitFailure {
    extended_code: std::ffi::c_int,
    message: String,
}

impl CommitFailure {
    fn new(e: &rusqlite::Error) -> Self {
        Self {
            extended_code: match e {
                rusqlite::Error::SqliteFailure(f, _) => f.extended_code,
                _ => rusqlite::ffi::SQLITE_ERROR,
            },
            message: e.to_string(),
        }
    }

    /// The failure of a job's own last step (writing its log row), for its caller alone.
    fn of_store(e: &StoreError) -> Self {
        let sql = match e {
            StoreError::Backend { source, .. } => source.downcast_ref::<rusqlite::Error>(),
            _ => None,
        };
        match sql {
            Some(sql) => Self::new(sql),
            None => Self {
                extended_code: rusqlite::ffi::SQLITE_ERROR,
                message: e.to_string(),
            },
        }
    }

    fn to_error(&self) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(self.extended_code),
            Some(self.message.clone()),
        )
    }
}

type Job = Box<dyn FnOnce(&Connection) -> Done + Send>;

/// A job running `f` in the writer's transaction, and where its answer arrives (after the
/// commit, with the commit's failure if it failed).
fn job<R, F>(f: F) -> (Job, oneshot::Receiver<Result<R>>)
where
    R: Send + 'static,
    F: FnOnce(&Connection) -> Result<R> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move |conn| {
        let result = f(conn);
        Done {
            ok: result.is_ok(),
            reply: Box::new(move |commit_error| {
                let answer = match commit_error {
                    None => result,
                    Some(failure) => Err(StoreError::Backend {
                        op: "committing",
                        source: Box::new(failure.to_error()),
                    }),
                };
                let _ = tx.send(answer);
            }),
        }
    });
    (job, rx)
}

/// A SQLite store: one writer thread and a small pool of read connections.
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    readers: Arc<Mutex<Vec<Connection>>>,
    config: SqliteConfig,
    /// The not-yet-folded points, indexed (see `series.rs`).
    tail: Arc<RwLock<series::Tail>>,
    live: tokio::sync::broadcast::Sender<Arc<LiveBatch>>,
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
        let conn = open_connection(&config, config.cache_mib)?;
        // Checkpoints run on their own thread (see `checkpointer`); the writer checkpoints
        // only if the WAL outgrows that thread (readers holding old snapshots, say).
        conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = {WAL_SAFETY_PAGES}; PRAGMA journal_size_limit = {};",
            WAL_RESTART_PAGES * 4096
        ))
        .map_err(backend("configuring the database"))?;
        migrate(&conn)?;
        // Nothing was sent since the last run ended, and nothing above the head ever was: a
        // lease that ran ahead of the head pins nothing that exists, so it is cut back to it
        // (docs/sync.md, rule 1), lest it keep the next appends past the retention.
        conn.execute("UPDATE sync_out SET lease = MIN(lease, head)", [])
            .map_err(backend("trimming send leases"))?;
        let tail = Arc::new(RwLock::new(open_tail(&conn, config.fold_points.max(1))?));
        let (tx, rx) = mpsc::channel::<Job>(1024);
        let (committed, commits) = std::sync::mpsc::sync_channel::<()>(1);
        let checkpoints = open_connection(&config, 1)?;
        let restart_due = Arc::new(AtomicBool::new(false));
        let due = Arc::clone(&restart_due);
        let (live, _) = tokio::sync::broadcast::channel(LIVE_CAPACITY);
        let (frozen, parts) = std::sync::mpsc::channel();
        let at = config.fold_points.max(1);
        let folding = Folding {
            tail: Arc::clone(&tail),
            at,
            bound: at.saturating_mul(HARD_BOUND_PARTS),
            compactor: frozen,
            live: live.clone(),
        };
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
            .spawn(move || checkpointer(checkpoints, commits, &due))
            .map_err(|e| StoreError::Backend {
                op: "starting the checkpoint thread",
                source: Box::new(e),
            })?;
        std::thread::Builder::new()
            .name("west-store-writer".into())
            .spawn(move || writer(conn, rx, committed, &restart_due, &folding))
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

fn open_connection(config: &SqliteConfig, cache_mib: u32) -> Result<Connection> {
    let conn = Connection::open(&config.path).map_err(backend("opening the database"))?;
    let sync = match config.synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {sync};
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -{};",
        u64::from(cache_mib) * 1024
    ))
    .map_err(backend("configuring the database"))?;
    // Outbox partitions are tables of their own: room for their statements besides the rest.
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// Applies every migration newer than the database, each in its own transaction.
fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .map_err(backend("creating the migration table"))?;
    let current: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(backend("reading the schema version"))?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let script = format!(
            "BEGIN; {sql}\nINSERT INTO schema_migrations VALUES ({version}, {}); COMMIT;",
            now_micros()
        );
        conn.execute_batch(&script).map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            StoreError::Backend {
                op: "migrating the schema",
                source: Box::new(e),
            }
        })?;
        tracing::info!(version, "applied schema migration");
    }
    Ok(())
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The writer thread: group commit of whatever is queued.
/// WAL pages beyond which the writer checkpoints itself, the checkpointer having fallen
/// behind (64 MiB).
const WAL_SAFETY_PAGES: u32 = 16_384;
/// WAL pages beyond which the checkpointer, once everything is copied, restarts the WAL
/// from its beginning (16 MiB): with commits arriving all the time a passive checkpoint is
/// never quite done when the writer looks, so the WAL would only grow.
const WAL_RESTART_PAGES: i64 = 4_096;
/// Least time between two checkpoints of the checkpointer.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Copies committed WAL pages into the database, off the commit path. SQLite's automatic
/// checkpoint runs inside the commit that crosses its threshold, so the writer (and every
/// caller waiting for that commit) paid for copying the whole WAL, and with a small WAL the
/// same hot pages were copied after almost every commit. Here a passive checkpoint (it
/// never blocks the writer or readers) runs at most every [`CHECKPOINT_EVERY`] after a
/// commit, on the other core, and a page written by many commits meanwhile is copied once.
/// Ends when the writer does.
/// When a pass has copied a WAL of [`WAL_RESTART_PAGES`] or more entirely, it asks the
/// writer (`restart_due`) to restart the WAL between two transactions: the writer holds the
/// write lock anyway, and only the pages committed since the pass remain to copy.
fn checkpointer(
    conn: Connection,
    commits: std::sync::mpsc::Receiver<()>,
    restart_due: &AtomicBool,
) {
    while commits.recv().is_ok() {
        match wal_checkpoint(&conn, "PASSIVE") {
            Ok((log, copied)) if log >= WAL_RESTART_PAGES && copied == log => {
                restart_due.store(true, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint failed; the writer's own checkpoints take over")
            }
        }
        std::thread::sleep(CHECKPOINT_EVERY);
    }
    let _ = wal_checkpoint(&conn, "PASSIVE");
}

/// Runs a checkpoint; returns (pages in the WAL, pages copied into the database).
fn wal_checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

/// What the writer needs to keep the point log folded: the tail, the compactor's queue,
/// the sizes that freeze a part and that force a fold on the commit path.
struct Folding {
    tail: Arc<RwLock<series::Tail>>,
    /// Points of the active part that freeze it for the compactor.
    at: usize,
    /// Points of the whole tail past which the writer folds everything itself
    /// ([`HARD_BOUND_PARTS`] × `at`).
    bound: usize,
    compactor: std::sync::mpsc::Sender<series::Frozen>,
    /// The live stream: committed points go out here.
    live: tokio::sync::broadcast::Sender<Arc<LiveBatch>>,
}

/// The tail may hold this many parts' worth of points (the active one and those frozen for
/// the compactor) before the writer folds it on the commit path: memory stays bounded when
/// the compactor falls behind, and ingest slows down (its callers wait) instead.
const HARD_BOUND_PARTS: usize = 3;

/// Opens the tail: the rows an older version left in `point_log` (a migrated `points`
/// table, say) are folded first, in slices of `fold_points`, each its own transaction; the
/// point batches and the outbox's unfolded records are replayed.
fn open_tail(conn: &Connection, fold_points: usize) -> Result<series::Tail> {
    while let Some(pos) = series::legacy_slice(conn, fold_points)? {
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(backend("folding the point log"))?;
        let folded = series::replay_legacy(conn, pos)
            .and_then(|part| series::fold(conn, &part, Some(pos)))
            .and_then(|_| {
                conn.execute_batch("COMMIT")
                    .map_err(backend("folding the point log"))
            });
        if let Err(e) = folded {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        tracing::info!(upto = pos, "folded a slice of the point log");
    }
    series::replay(conn)
}

/// Freezes the active part of the tail and hands it to the compactor. Runs in the writer
/// between transactions, so the log's extent is exactly what the tail holds. A failure
/// leaves the part active (the next commit tries again).
fn freeze(conn: &Connection, folding: &Folding) {
    let (upto, outbox) = match series::log_extent(conn) {
        Ok(extent) => extent,
        Err(e) => {
            tracing::warn!(error = %e, "cannot measure the point log; not folding yet");
            return;
        }
    };
    let Ok(mut tail) = folding.tail.write() else {
        return;
    };
    let frozen = tail.freeze(upto, outbox);
    drop(tail);
    // A compactor that is gone leaves the part frozen: the hard bound folds it.
    let _ = folding.compactor.send(frozen);
}

/// Folds the whole tail on the commit path, in one job of its own: the hard bound was
/// reached because the compactor fell behind (or fails).
fn fold_all(conn: &Connection, folding: &Folding) {
    let result = conn
        .execute_batch("BEGIN IMMEDIATE")
        .map_err(backend("folding the point log"))
        .and_then(|()| series::fold_now(conn))
        .and_then(|()| {
            conn.execute_batch("COMMIT")
                .map_err(backend("folding the point log"))
        });
    let ops = series::take_ops();
    match result {
        Ok(()) => {
            tracing::warn!(
                points = folding.bound,
                "the tail reached its bound before the compactor caught up; folded it on the commit path"
            );
            series::apply(&folding.tail, ops);
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            tracing::warn!(error = %e, "cannot fold the point log; it stays in the tail");
        }
    }
}

/// The compactor thread: encodes each frozen part of the tail into blocks off the commit
/// path, then has the writer install the result as one ordinary job (a few inserts and the
/// log rows' delete, in the next group commit). Parts are installed in the order they were
/// frozen; an install that fails is retried. Ends with the writer.
fn compactor(parts: std::sync::mpsc::Receiver<series::Frozen>, jobs: mpsc::WeakSender<Job>) {
    while let Ok(frozen) = parts.recv() {
        #[cfg(test)]
        while tests::COMPACTOR_PAUSED.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let encoded = match series::encode(&frozen.part) {
            Ok(e) => Arc::new(e),
            Err(e) => {
                // The hard bound then folds it on the commit path, which reports its own error.
                tracing::warn!(error = %e, "cannot encode a part of the point log");
                continue;
            }
        };
        let frozen = Arc::new(frozen);
        let mut pause = std::time::Duration::from_millis(50);
        loop {
            let Some(sender) = jobs.upgrade() else { return };
            let (f, e) = (Arc::clone(&frozen), Arc::clone(&encoded));
            let (job, answer) = job(move |conn| series::install(conn, &f, &e));
            if sender.blocking_send(job).is_err() {
                return;
            }
            drop(sender);
            match answer.blocking_recv() {
                Ok(Ok(installed)) => {
                    if installed {
                        tracing::debug!(points = encoded.points, "folded a part of the point log");
                    }
                    #[cfg(test)]
                    tests::COMPACTED.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot install a fold of the point log; retrying");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
                Err(_) => return,
            }
        }
    }
}

fn writer(
    conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    committed: std::sync::mpsc::SyncSender<()>,
    restart_due: &AtomicBool,
    folding: &Folding,
) {
    series::set_current_tail(Arc::clone(&folding.tail));
    let mut batch = Vec::with_capacity(MAX_JOBS_PER_COMMIT);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(batch.len());
        series::listen(folding.live.receiver_count() > 0);
        let begin = conn.execute_batch("BEGIN IMMEDIATE");
        if let Err(e) = begin {
            let message = e.to_string();
            tracing::error!(error = %message, "cannot begin a write transaction");
            // Answer every caller with the error; nothing of theirs ran.
            for job in batch.drain(..) {
                drop(job);
            }
            continue;
        }
        for job in batch.drain(..) {
            let savepoint = conn.execute_batch("SAVEPOINT job");
            let mark = series::mark();
            let mut done = job(&conn);
            // The job's points, one log row: its last write, inside its savepoint.
            if done.ok
                && let Err(e) = series::flush_log(&conn)
            {
                let failure = CommitFailure::of_store(&e);
                let reply = done.reply;
                done = Done {
                    ok: false,
                    reply: Box::new(move |_| reply(Some(&failure))),
                };
            }
            if !done.ok {
                series::rollback_to(mark);
            }
            if savepoint.is_ok() {
                let end = if done.ok {
                    "RELEASE job"
                } else {
                    "ROLLBACK TO job; RELEASE job"
                };
                if let Err(e) = conn.execute_batch(end) {
                    tracing::error!(error = %e, "cannot close a savepoint");
                }
            }
            replies.push(done.reply);
        }
        let commit = conn
            .execute_batch("COMMIT")
            .map_err(|e| CommitFailure::new(&e));
        let ops = series::take_ops();
        let live = series::take_live();
        if let Err(failure) = &commit {
            tracing::error!(error = %failure.message, "commit failed; rolling back");
            let _ = conn.execute_batch("ROLLBACK");
        } else {
            // Durable: readers may see it now, before its callers hear back.
            series::apply(&folding.tail, ops);
            for batch in live {
                let _ = folding.live.send(Arc::new(batch));
            }
        }
        let error = commit.as_ref().err();
        for reply in replies {
            reply(error);
        }
        let (active, total) = folding
            .tail
            .read()
            .map(|t| (t.active_len(), t.len()))
            .unwrap_or((0, 0));
        if total >= folding.bound {
            fold_all(&conn, folding);
        } else if active >= folding.at {
            freeze(&conn, folding);
        }
        if restart_due.swap(false, Ordering::Relaxed)
            && let Err(e) = wal_checkpoint(&conn, "RESTART")
        {
            tracing::warn!(error = %e, "cannot restart the WAL");
        }
        // Wakes the checkpointer unless it is already due to run.
        let _ = committed.try_send(());
    }
}

// ---------------------------------------------------------------------------------------
// Row mapping helpers.

fn value_to_sql(v: &Value) -> ToSqlOutput<'_> {
    match v {
        Value::Number(x) => ToSqlOutput::from(*x),
        Value::Integer(i) => ToSqlOutput::from(*i),
        Value::Boolean(b) => ToSqlOutput::from(i64::from(*b)),
        Value::String(s) | Value::Json(s) => ToSqlOutput::from(s.as_str()),
    }
}

fn value_from_sql(format: Format, v: ValueRef<'_>) -> Value {
    match (format, v) {
        (Format::Number, ValueRef::Real(x)) => Value::Number(x),
        (Format::Number, ValueRef::Integer(i)) => Value::Number(i as f64),
        (Format::Integer, ValueRef::Integer(i)) => Value::Integer(i),
        (Format::Boolean, ValueRef::Integer(i)) => Value::Boolean(i != 0),
        (Format::String, ValueRef::Text(t)) => Value::String(String::from_utf8_lossy(t).into()),
        (Format::Json, ValueRef::Text(t)) => Value::Json(String::from_utf8_lossy(t).into()),
        // A value stored under another format cannot happen through this store; show it
        // as JSON text rather than failing the whole read.
        (_, other) => Value::Json(match other {
            ValueRef::Null => "null".into(),
            ValueRef::Integer(i) => i.to_string(),
            ValueRef::Real(x) => x.to_string(),
            ValueRef::Text(t) | ValueRef::Blob(t) => {
                serde_json::Value::from(String::from_utf8_lossy(t)).to_string()
            }
        }),
    }
}

fn parse_col<T>(s: String, parse: impl FnOnce(&str) -> Option<T>, what: &'static str) -> Result<T> {
    parse(&s).ok_or_else(|| StoreError::Backend {
        op: what,
        source: format!("unexpected stored value {s:?}").into(),
    })
}

/// A stored device identity.
fn identity_col(s: String) -> Result<Identity> {
    parse_col(s, |s| Identity::parse(s).ok(), "reading an identity")
}

/// A stored resource name; `what` names the read in the error.
fn resource_col(s: String, what: &'static str) -> Result<ResourceName> {
    parse_col(s, |s| ResourceName::parse(s).ok(), what)
}

/// Every row of `stmt` run with `params`, mapped by `map`; `op` names the query in errors.
fn collect_rows<T, P: rusqlite::Params>(
    stmt: &mut rusqlite::Statement<'_>,
    params: P,
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    op: &'static str,
) -> Result<Vec<T>> {
    stmt.query_map(params, map)
        .map_err(backend(op))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend(op))
}

/// Like [`collect_rows`], on the cached statement of `sql`.
fn select_rows<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    op: &'static str,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend(op))?;
    collect_rows(&mut stmt, params, map, op)
}

/// An insert's error: `exists` where it broke a uniqueness constraint, else a backend
/// error of `op`.
fn unique_or(exists: StoreError, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| {
        if is_unique_violation(&e) {
            exists
        } else {
            backend(op)(e)
        }
    }
}

fn connector_exists(conn: &Connection, cid: &ConnectorId) -> Result<()> {
    let found = conn
        .prepare_cached("SELECT 1 FROM connectors WHERE id = ?1")
        .and_then(|mut s| s.exists([cid.as_str()]))
        .map_err(backend("looking up a connector"))?;
    if found {
        Ok(())
    } else {
        Err(StoreError::ConnectorNotFound(cid.clone()))
    }
}

/// A resource's row id, format and settable flag.
struct ResourceRow {
    id: i64,
    format: Format,
    settable: bool,
    /// Whether the resource's points go to the outbox (on a paired Source).
    remote_sync: bool,
}

fn resource_rows(
    conn: &Connection,
    cid: &ConnectorId,
) -> Result<HashMap<ResourceName, ResourceRow>> {
    let rows = select_rows(
        conn,
        "SELECT id, name, format, settable, remote_sync FROM resources WHERE connector = ?1",
        [cid.as_str()],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, bool>(4)?,
            ))
        },
        "listing resources",
    )?;
    let mut out = HashMap::new();
    for (id, name, format, settable, remote_sync) in rows {
        let name = resource_col(name, "reading a resource name")?;
        let format = parse_col(
            format,
            |s| Format::parse(s).ok(),
            "reading a resource format",
        )?;
        out.insert(
            name,
            ResourceRow {
                id,
                format,
                settable,
                remote_sync,
            },
        );
    }
    Ok(out)
}

fn device_id(conn: &Connection, cid: &ConnectorId, identity: &Identity) -> Result<i64> {
    conn.prepare_cached("SELECT id FROM devices WHERE connector = ?1 AND identity = ?2")
        .and_then(|mut s| {
            s.query_row([cid.as_str(), identity.as_str()], |r| r.get(0))
                .optional()
        })
        .map_err(backend("looking up a device"))?
        .ok_or_else(|| StoreError::DeviceNotFound(identity.clone()))
}

/// A device's row id, refused when the device is locked.
fn writable_device_id(conn: &Connection, cid: &ConnectorId, identity: &Identity) -> Result<i64> {
    let (id, state) = conn
        .prepare_cached("SELECT id, state FROM devices WHERE connector = ?1 AND identity = ?2")
        .and_then(|mut s| {
            s.query_row([cid.as_str(), identity.as_str()], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .optional()
        })
        .map_err(backend("looking up a device"))?
        .ok_or_else(|| StoreError::DeviceNotFound(identity.clone()))?;
    if state == DeviceState::Locked.as_str() {
        return Err(StoreError::DeviceLocked(identity.clone()));
    }
    Ok(id)
}

const CONNECTOR_COLUMNS: &str = "c.id, c.name, c.description, c.created_at, c.role, c.sync_state,
    c.pairing_expires_at, c.peer_site, c.peer_connector, c.paired_at,
    (SELECT COUNT(*) FROM devices d WHERE d.connector = c.id),
    (SELECT COUNT(*) FROM resources r WHERE r.connector = c.id), c.pairing_confirmed";

type ConnectorRow = (
    String,
    String,
    String,
    i64,
    String,
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    i64,
    i64,
    bool,
);

fn connector_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConnectorRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
    ))
}

fn connector_from(row: ConnectorRow) -> Result<Connector> {
    let (
        id,
        name,
        description,
        created_at,
        role,
        state,
        expires,
        peer_site,
        peer_cid,
        paired_at,
        devices,
        resources,
        confirmed,
    ) = row;
    let peer = match (peer_site, peer_cid) {
        (Some(site), Some(cid)) => Some(Peer {
            site,
            connector_id: parse_col(cid, |s| ConnectorId::parse(s).ok(), "reading a peer id")?,
        }),
        _ => None,
    };
    Ok(Connector {
        id: parse_col(id, |s| ConnectorId::parse(s).ok(), "reading a connector id")?,
        name,
        description,
        created_at,
        role: parse_col(role, Role::parse, "reading a role")?,
        state: parse_col(state, SyncState::parse, "reading a sync state")?,
        pairing_expires_at: expires,
        peer,
        paired_at,
        device_count: u64::try_from(devices).unwrap_or(0),
        resource_count: u64::try_from(resources).unwrap_or(0),
        pairing_confirmed: confirmed,
    })
}

fn get_connector(conn: &Connection, cid: &ConnectorId) -> Result<Connector> {
    let sql = format!("SELECT {CONNECTOR_COLUMNS} FROM connectors c WHERE c.id = ?1");
    let row = conn
        .prepare_cached(&sql)
        .and_then(|mut s| s.query_row([cid.as_str()], connector_row).optional())
        .map_err(backend("reading a connector"))?
        .ok_or_else(|| StoreError::ConnectorNotFound(cid.clone()))?;
    connector_from(row)
}

fn get_resource(conn: &Connection, cid: &ConnectorId, name: &ResourceName) -> Result<Resource> {
    let row = conn
        .prepare_cached(
            "SELECT format, unit, settable, remote_sync, created_at FROM resources
             WHERE connector = ?1 AND name = ?2",
        )
        .and_then(|mut s| {
            s.query_row([cid.as_str(), name.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .optional()
        })
        .map_err(backend("reading a resource"))?
        .ok_or_else(|| StoreError::ResourceNotFound(name.clone()))?;
    let (format, unit, settable, remote_sync, created_at) = row;
    Ok(Resource {
        name: name.clone(),
        format: parse_col(
            format,
            |s| Format::parse(s).ok(),
            "reading a resource format",
        )?,
        unit,
        settable,
        remote_sync,
        created_at,
    })
}

/// Reads one device with its configuration and latest values.
fn load_device(
    conn: &Connection,
    resources: &HashMap<i64, (ResourceName, Format)>,
    row: DeviceRow,
    tail: HashMap<i64, (i64, Value)>,
) -> Result<Device> {
    let (id, identity, tags, permissions, state, created_at) = row;
    let mut config = BTreeMap::new();
    let mut stmt = conn
        .prepare_cached("SELECT resource, v FROM config WHERE device = ?1")
        .map_err(backend("reading configuration"))?;
    let mut rows = stmt.query([id]).map_err(backend("reading configuration"))?;
    while let Some(r) = rows.next().map_err(backend("reading configuration"))? {
        let rid: i64 = r.get(0).map_err(backend("reading configuration"))?;
        if let Some((name, format)) = resources.get(&rid) {
            let v = r.get_ref(1).map_err(backend("reading configuration"))?;
            config.insert(name.clone(), value_from_sql(*format, v));
        }
    }
    let mut values = BTreeMap::new();
    let mut stmt = conn
        .prepare_cached("SELECT resource, t, v FROM latest WHERE device = ?1")
        .map_err(backend("reading latest values"))?;
    let mut rows = stmt.query([id]).map_err(backend("reading latest values"))?;
    while let Some(r) = rows.next().map_err(backend("reading latest values"))? {
        let rid: i64 = r.get(0).map_err(backend("reading latest values"))?;
        if let Some((name, format)) = resources.get(&rid) {
            let t: i64 = r.get(1).map_err(backend("reading latest values"))?;
            let v = r.get_ref(2).map_err(backend("reading latest values"))?;
            values.insert(
                name.clone(),
                Point {
                    t,
                    v: value_from_sql(*format, v),
                },
            );
        }
    }
    // The unfolded tail's newest point wins over the folded one unless it is older.
    for (rid, (t, v)) in tail {
        if let Some((name, _)) = resources.get(&rid)
            && values.get(name).is_none_or(|p: &Point| t >= p.t)
        {
            values.insert(name.clone(), Point { t, v });
        }
    }
    Ok(Device {
        identity: identity_col(identity)?,
        tags: serde_json::from_str(&tags).map_err(|e| StoreError::Backend {
            op: "reading tags",
            source: Box::new(e),
        })?,
        permissions: serde_json::from_str(&permissions).map_err(|e| StoreError::Backend {
            op: "reading permissions",
            source: Box::new(e),
        })?,
        state: parse_col(state, DeviceState::parse, "reading a device state")?,
        config,
        values,
        created_at,
        sync_pending: devices::pending(conn, id)?,
    })
}

type DeviceRow = (i64, String, String, String, String, i64);

const DEVICE_COLUMNS: &str = "id, identity, tags, permissions, state, created_at";

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn resources_by_id(
    conn: &Connection,
    cid: &ConnectorId,
) -> Result<HashMap<i64, (ResourceName, Format)>> {
    Ok(resource_rows(conn, cid)?
        .into_iter()
        .map(|(name, row)| (row.id, (name, row.format)))
        .collect())
}

/// Reads one device. With `tail` (locked by the caller before the read's first statement,
/// as `series.rs` requires), its latest values include the unfolded points; without, they
/// are the folded ones only (for callers that do not look at values).
fn get_device(
    conn: &Connection,
    cid: &ConnectorId,
    identity: &Identity,
    tail: Option<&series::Tail>,
) -> Result<Device> {
    let sql =
        format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE connector = ?1 AND identity = ?2");
    let row = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row([cid.as_str(), identity.as_str()], device_row)
                .optional()
        })
        .map_err(backend("reading a device"))?
        .ok_or_else(|| StoreError::DeviceNotFound(identity.clone()))?;
    let newest = tail.map(|t| t.newest(row.0)).unwrap_or_default();
    load_device(conn, &resources_by_id(conn, cid)?, row, newest)
}

/// The tail, read-locked.
fn lock_tail(tail: &RwLock<series::Tail>) -> Result<std::sync::RwLockReadGuard<'_, series::Tail>> {
    tail.read().map_err(|_| StoreError::Closed)
}

fn to_json_text<T: serde::Serialize>(v: &T, op: &'static str) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend {
        op,
        source: Box::new(e),
    })
}

/// Appends a set of points to the point log, and queues those of remote-synced resources in
/// the outbox of a paired Source (`now` stamps the outbox partition); the caller's savepoint
/// undoes everything if this fails. No per-series page is touched: `latest` and the blocks
/// are written when the log is folded.
fn ingest_points(
    conn: &Connection,
    cid: &ConnectorId,
    batch: &[PointsIn],
    now: i64,
    partition_us: i64,
) -> Result<usize> {
    connector_exists(conn, cid)?;
    let resources = resource_rows(conn, cid)?;
    let mut outbox = sync::appender(conn, cid, now, partition_us)?;
    let mut devices: HashMap<&Identity, i64> = HashMap::new();
    let mut stored = 0;
    for p in batch {
        model::check_timestamp(p.t)?;
        let device = match devices.get(&p.identity) {
            Some(id) => *id,
            None => {
                let id = writable_device_id(conn, cid, &p.identity)?;
                devices.insert(&p.identity, id);
                id
            }
        };
        for (name, raw) in &p.values {
            let res = resources
                .get(name)
                .ok_or_else(|| StoreError::ResourceNotFound(name.clone()))?;
            let value = res.format.check(name, raw)?;
            if res.remote_sync
                && let Some(outbox) = &mut outbox
                && outbox.points
            {
                // The outbox record is the point's log entry: stored once.
                outbox.push(conn, &p.identity, res.id, p.t, &value)?;
                series::put((device, res.id), (cid, &p.identity, name), p.t, value);
            } else {
                series::append(conn, (device, res.id), (cid, &p.identity, name), p.t, value)?;
            }
            stored += 1;
        }
    }
    if let Some(outbox) = outbox {
        outbox.finish(conn)?;
    }
    Ok(stored)
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation
    )
}

#[async_trait]
impl Store for SqliteStore {
    async fn user_count(&self) -> Result<u64> {
        self.read(|conn| {
            conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get::<_, i64>(0))
                .map(|n| u64::try_from(n).unwrap_or(0))
                .map_err(backend("counting users"))
        })
        .await
    }

    async fn create_user(&self, username: &str, password_hash: &str) -> Result<()> {
        let (username, hash) = (username.to_owned(), password_hash.to_owned());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO users (username, password_hash, created_at) VALUES (?1, ?2, ?3)",
                params![username, hash, now_micros()],
            )
            .map_err(unique_or(
                StoreError::UserExists(username.clone()),
                "creating a user",
            ))?;
            Ok(())
        })
        .await
    }

    async fn set_password(&self, username: &str, password_hash: &str) -> Result<()> {
        let (username, hash) = (username.to_owned(), password_hash.to_owned());
        self.write(move |conn| {
            conn.execute(
                "UPDATE users SET password_hash = ?2 WHERE username = ?1",
                params![username, hash],
            )
            .map_err(backend("setting a password"))?;
            conn.execute("DELETE FROM tokens WHERE username = ?1", [&username])
                .map_err(backend("revoking tokens"))?;
            Ok(())
        })
        .await
    }

    async fn password_hash(&self, username: &str) -> Result<Option<String>> {
        let username = username.to_owned();
        self.read(move |conn| {
            conn.query_row(
                "SELECT password_hash FROM users WHERE username = ?1",
                [&username],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend("reading a password hash"))
        })
        .await
    }

    async fn create_token(&self, token: TokenHash, username: &str, expires_at: i64) -> Result<()> {
        let username = username.to_owned();
        self.write(move |conn| {
            let now = now_micros();
            conn.execute("DELETE FROM tokens WHERE expires_at < ?1", [now])
                .map_err(backend("expiring tokens"))?;
            conn.execute(
                "INSERT INTO tokens (hash, username, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![&token[..], username, now, expires_at],
            )
            .map_err(backend("creating a token"))?;
            Ok(())
        })
        .await
    }

    async fn token_user(&self, token: TokenHash, now: i64) -> Result<Option<String>> {
        self.read(move |conn| {
            conn.prepare_cached("SELECT username FROM tokens WHERE hash = ?1 AND expires_at > ?2")
                .and_then(|mut s| {
                    s.query_row(params![&token[..], now], |r| r.get(0))
                        .optional()
                })
                .map_err(backend("checking a token"))
        })
        .await
    }

    async fn delete_token(&self, token: TokenHash) -> Result<()> {
        self.write(move |conn| {
            conn.execute("DELETE FROM tokens WHERE hash = ?1", [&token[..]])
                .map_err(backend("deleting a token"))?;
            Ok(())
        })
        .await
    }

    async fn create_connector(&self, new: NewConnector) -> Result<Connector> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO connectors (id, name, description, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![new.id.as_str(), new.name, new.description, new.created_at],
            )
            .map_err(backend("creating a connector"))?;
            get_connector(conn, &new.id)
        })
        .await
    }

    async fn list_connectors(&self) -> Result<Vec<Connector>> {
        self.read(|conn| {
            let sql = format!("SELECT {CONNECTOR_COLUMNS} FROM connectors c ORDER BY c.name, c.id");
            let mut stmt = conn
                .prepare_cached(&sql)
                .map_err(backend("listing connectors"))?;
            let rows = stmt
                .query_map([], connector_row)
                .map_err(backend("listing connectors"))?;
            rows.map(|r| connector_from(r.map_err(backend("listing connectors"))?))
                .collect()
        })
        .await
    }

    async fn connector(&self, id: &ConnectorId) -> Result<Connector> {
        let id = id.clone();
        self.read(move |conn| get_connector(conn, &id)).await
    }

    async fn delete_connector(&self, id: &ConnectorId) -> Result<()> {
        let id = id.clone();
        self.write(move |conn| {
            connector_exists(conn, &id)?;
            let devices = select_rows(
                conn,
                "SELECT id FROM devices WHERE connector = ?1",
                [id.as_str()],
                |r| r.get::<_, i64>(0),
                "deleting a connector",
            )?;
            for device in devices {
                series::delete_device(conn, device)?;
            }
            for sql in [
                "DELETE FROM latest WHERE device IN (SELECT id FROM devices WHERE connector = ?1)",
                "DELETE FROM connectors WHERE id = ?1",
            ] {
                conn.execute(sql, [id.as_str()])
                    .map_err(backend("deleting a connector"))?;
            }
            Ok(())
        })
        .await
    }

    async fn open_pairing(
        &self,
        cid: &ConnectorId,
        code: &str,
        expires_at: i64,
    ) -> Result<Connector> {
        let (cid, code) = (cid.clone(), code.to_owned());
        self.write(move |conn| {
            let c = get_connector(conn, &cid)?;
            match (c.role, c.state) {
                (_, SyncState::Paired) => {
                    return Err(StoreError::SyncState {
                        connector: cid,
                        reason: "it is already paired",
                    });
                }
                (Role::Target, _) => {
                    return Err(StoreError::SyncState {
                        connector: cid,
                        reason: "it is a Remote-Sync target",
                    });
                }
                _ => {}
            }
            conn.execute(
                "UPDATE connectors SET role = 'source', sync_state = 'pairing', pairing_code = ?2,
                     pairing_expires_at = ?3, pairing_failed_attempts = 0
                 WHERE id = ?1",
                params![cid.as_str(), code, expires_at],
            )
            .map_err(backend("opening a pairing window"))?;
            get_connector(conn, &cid)
        })
        .await
    }

    async fn pairing_window(&self, cid: &ConnectorId) -> Result<Option<PairingWindowRow>> {
        let cid = cid.clone();
        self.read(move |conn| {
            connector_exists(conn, &cid)?;
            let row = conn
                .query_row(
                    "SELECT pairing_code, pairing_expires_at, pairing_failed_attempts
                     FROM connectors WHERE id = ?1 AND sync_state = 'pairing'",
                    [cid.as_str()],
                    |r| {
                        Ok((
                            r.get::<_, Option<String>>(0)?,
                            r.get::<_, Option<i64>>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    },
                )
                .optional()
                .map_err(backend("reading a pairing window"))?;
            Ok(match row {
                Some((Some(code), Some(expires_at), failed)) => Some(PairingWindowRow {
                    code,
                    expires_at,
                    failed_attempts: u32::try_from(failed).unwrap_or(u32::MAX),
                }),
                _ => None,
            })
        })
        .await
    }

    async fn record_failed_attempt(&self, cid: &ConnectorId) -> Result<u32> {
        let cid = cid.clone();
        self.write(move |conn| {
            connector_exists(conn, &cid)?;
            let n: i64 = conn
                .query_row(
                    "UPDATE connectors SET pairing_failed_attempts = pairing_failed_attempts + 1
                     WHERE id = ?1 RETURNING pairing_failed_attempts",
                    [cid.as_str()],
                    |r| r.get(0),
                )
                .map_err(backend("counting a failed pairing attempt"))?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
        .await
    }

    async fn close_pairing(&self, cid: &ConnectorId) -> Result<Connector> {
        let cid = cid.clone();
        self.write(move |conn| {
            let c = get_connector(conn, &cid)?;
            if c.state == SyncState::Paired {
                return Err(StoreError::SyncState {
                    connector: cid,
                    reason: "it is paired, and a pairing cannot be undone",
                });
            }
            conn.execute(
                "UPDATE connectors SET role = 'none', sync_state = 'disabled', pairing_code = NULL,
                     pairing_expires_at = NULL, pairing_failed_attempts = 0
                 WHERE id = ?1 AND sync_state = 'pairing'",
                [cid.as_str()],
            )
            .map_err(backend("closing a pairing window"))?;
            get_connector(conn, &cid)
        })
        .await
    }

    async fn complete_pairing(
        &self,
        cid: &ConnectorId,
        peer: Peer,
        keys: ConnectorKeys,
        paired_at: i64,
    ) -> Result<Connector> {
        let cid = cid.clone();
        let (clock, partition_us) = (self.config.clock.clone(), self.config.sync_partition_us);
        self.write(move |conn| {
            let c = get_connector(conn, &cid)?;
            if c.state != SyncState::Pairing {
                return Err(StoreError::SyncState {
                    connector: cid,
                    reason: "it has no open pairing window",
                });
            }
            conn.execute(
                "UPDATE connectors SET role = 'source', sync_state = 'paired', pairing_code = NULL,
                     pairing_expires_at = NULL, pairing_failed_attempts = 0, pairing_confirmed = 0,
                     peer_site = ?2, peer_connector = ?3, paired_at = ?4,
                     static_private = ?5, static_public = ?6, peer_static_public = ?7
                 WHERE id = ?1",
                params![
                    cid.as_str(),
                    peer.site,
                    peer.connector_id.as_str(),
                    paired_at,
                    &keys.static_private[..],
                    &keys.static_public[..],
                    &keys.peer_static_public[..]
                ],
            )
            .map_err(backend("completing a pairing"))?;
            // The Target starts from the Source's registry: every device known here goes
            // out first, before any data that needs it.
            let ids = devices::all_identities(conn, &cid)?;
            devices::resend(conn, &cid, &ids, clock.now(), partition_us, false)?;
            get_connector(conn, &cid)
        })
        .await
    }

    async fn create_target_connector(
        &self,
        new: NewConnector,
        peer: Peer,
        keys: ConnectorKeys,
    ) -> Result<Connector> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO connectors (id, name, description, created_at, role, sync_state,
                     peer_site, peer_connector, paired_at, static_private, static_public,
                     peer_static_public)
                 VALUES (?1, ?2, ?3, ?4, 'target', 'paired', ?5, ?6, ?4, ?7, ?8, ?9)",
                params![
                    new.id.as_str(),
                    new.name,
                    new.description,
                    new.created_at,
                    peer.site,
                    peer.connector_id.as_str(),
                    &keys.static_private[..],
                    &keys.static_public[..],
                    &keys.peer_static_public[..]
                ],
            )
            .map_err(backend("creating a target connector"))?;
            get_connector(conn, &new.id)
        })
        .await
    }

    async fn connector_keys(&self, cid: &ConnectorId) -> Result<Option<ConnectorKeys>> {
        let cid = cid.clone();
        self.read(move |conn| {
            connector_exists(conn, &cid)?;
            let row = conn
                .query_row(
                    "SELECT static_private, static_public, peer_static_public FROM connectors
                     WHERE id = ?1",
                    [cid.as_str()],
                    |r| {
                        Ok((
                            r.get::<_, Option<Vec<u8>>>(0)?,
                            r.get::<_, Option<Vec<u8>>>(1)?,
                            r.get::<_, Option<Vec<u8>>>(2)?,
                        ))
                    },
                )
                .map_err(backend("reading connector keys"))?;
            let key = |v: Vec<u8>| <[u8; 32]>::try_from(v.as_slice()).ok();
            Ok(match row {
                (Some(a), Some(b), Some(c)) => match (key(a), key(b), key(c)) {
                    (Some(static_private), Some(static_public), Some(peer_static_public)) => {
                        Some(ConnectorKeys {
                            static_private,
                            static_public,
                            peer_static_public,
                        })
                    }
                    _ => None,
                },
                _ => None,
            })
        })
        .await
    }

    async fn create_resource(&self, cid: &ConnectorId, new: NewResource) -> Result<Resource> {
        let cid = cid.clone();
        self.write(move |conn| {
            connector_exists(conn, &cid)?;
            conn.execute(
                "INSERT INTO resources (connector, name, format, unit, settable, remote_sync, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    cid.as_str(),
                    new.name.as_str(),
                    new.format.as_str(),
                    new.unit,
                    new.settable,
                    new.remote_sync,
                    new.created_at
                ],
            )
            .map_err(unique_or(
                StoreError::ResourceExists(new.name.clone()),
                "creating a resource",
            ))?;
            // Points replicated before the resource existed are applied now.
            sync::adopt_pending(conn, &cid, &new.name, new.created_at)?;
            // So is configuration the peer set for it.
            if new.settable {
                devices::adopt_config(conn, &cid, &new.name, new.created_at)?;
            }
            get_resource(conn, &cid, &new.name)
        })
        .await
    }

    async fn resources(&self, cid: &ConnectorId) -> Result<Vec<Resource>> {
        let cid = cid.clone();
        self.read(move |conn| {
            connector_exists(conn, &cid)?;
            let names = select_rows(
                conn,
                "SELECT name FROM resources WHERE connector = ?1 ORDER BY name",
                [cid.as_str()],
                |r| r.get::<_, String>(0),
                "listing resources",
            )?;
            names
                .into_iter()
                .map(|n| get_resource(conn, &cid, &resource_col(n, "reading a resource name")?))
                .collect()
        })
        .await
    }

    async fn update_resource(
        &self,
        cid: &ConnectorId,
        name: &ResourceName,
        patch: ResourcePatch,
    ) -> Result<Resource> {
        let (cid, name) = (cid.clone(), name.clone());
        self.write(move |conn| {
            connector_exists(conn, &cid)?;
            let current = get_resource(conn, &cid, &name)?;
            let unit = patch.unit.unwrap_or(current.unit);
            let settable = patch.settable.unwrap_or(current.settable);
            let remote_sync = patch.remote_sync.unwrap_or(current.remote_sync);
            if remote_sync != current.remote_sync {
                // The series' unfolded points move from the outbox to the log or back:
                // fold them first, so that none is in both (series.rs).
                series::fold_unfolded_outbox(conn)?;
            }
            conn.execute(
                "UPDATE resources SET unit = ?3, settable = ?4, remote_sync = ?5
                 WHERE connector = ?1 AND name = ?2",
                params![cid.as_str(), name.as_str(), unit, settable, remote_sync],
            )
            .map_err(backend("updating a resource"))?;
            get_resource(conn, &cid, &name)
        })
        .await
    }

    async fn create_device(&self, cid: &ConnectorId, new: NewDevice) -> Result<Device> {
        let cid = cid.clone();
        let tail = Arc::clone(&self.tail);
        self.write_device(move |conn, ctx| {
            connector_exists(conn, &cid)?;
            model::check_tags(&new.tags)?;
            model::check_permissions(&new.permissions)?;
            // A tombstone, when the device existed once: the create must outrank its delete.
            let before = devices::record(conn, &cid, &new.identity)?;
            conn.execute(
                "INSERT INTO devices (connector, identity, tags, permissions, state, token_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    cid.as_str(),
                    new.identity.as_str(),
                    to_json_text(&new.tags, "writing tags")?,
                    to_json_text(&new.permissions, "writing permissions")?,
                    new.state.as_str(),
                    &new.token[..],
                    new.created_at
                ],
            )
            .map_err(unique_or(
                StoreError::DeviceExists(new.identity.clone()),
                "creating a device",
            ))?;
            let fields = proto::sync::DeviceEdit {
                state: Some(new.state),
                permissions: Some(new.permissions.clone()),
                tags: new.tags.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect(),
                config: BTreeMap::new(),
            };
            devices::local_change(
                conn,
                &cid,
                &new.identity,
                before,
                devices::LocalEdit::Create(fields),
                ctx,
            )?;
            get_device(conn, &cid, &new.identity, Some(&*lock_tail(&tail)?))
        })
        .await
    }

    async fn devices(&self, cid: &ConnectorId, query: DeviceQuery) -> Result<Vec<Device>> {
        let cid = cid.clone();
        let tail = Arc::clone(&self.tail);
        self.read(move |conn| {
            let held = lock_tail(&tail)?;
            connector_exists(conn, &cid)?;
            let mut sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE connector = ?1");
            let mut args: Vec<String> = vec![cid.as_str().to_owned()];
            if let Some(after) = &query.after {
                args.push(after.as_str().to_owned());
                sql.push_str(&format!(" AND identity > ?{}", args.len()));
            }
            for (k, v) in &query.tags {
                args.push(k.clone());
                args.push(v.clone());
                sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM json_each(devices.tags) j
                       WHERE j.key = ?{} AND j.value = ?{})",
                    args.len() - 1,
                    args.len()
                ));
            }
            sql.push_str(&format!(" ORDER BY identity LIMIT {}", query.limit));
            let resources = resources_by_id(conn, &cid)?;
            let mut stmt = conn.prepare(&sql).map_err(backend("listing devices"))?;
            let rows = collect_rows(
                &mut stmt,
                rusqlite::params_from_iter(args.iter()),
                device_row,
                "listing devices",
            )?;
            let newest: Vec<_> = rows.iter().map(|row| held.newest(row.0)).collect();
            drop(held);
            rows.into_iter()
                .zip(newest)
                .map(|(row, newest)| load_device(conn, &resources, row, newest))
                .collect()
        })
        .await
    }

    async fn device(&self, cid: &ConnectorId, identity: &Identity) -> Result<Device> {
        let (cid, identity) = (cid.clone(), identity.clone());
        let tail = Arc::clone(&self.tail);
        self.read(move |conn| {
            let held = lock_tail(&tail)?;
            connector_exists(conn, &cid)?;
            get_device(conn, &cid, &identity, Some(&held))
        })
        .await
    }

    async fn update_device(
        &self,
        cid: &ConnectorId,
        identity: &Identity,
        patch: DevicePatch,
    ) -> Result<Device> {
        let (cid, identity) = (cid.clone(), identity.clone());
        let tail = Arc::clone(&self.tail);
        self.write_device(move |conn, ctx| {
            connector_exists(conn, &cid)?;
            let id = device_id(conn, &cid, &identity)?;
            let before = devices::record(conn, &cid, &identity)?;
            let mut config_change = BTreeMap::new();
            if let Some(tags) = &patch.tags {
                model::check_tags(tags)?;
                conn.execute(
                    "UPDATE devices SET tags = ?2 WHERE id = ?1",
                    params![id, to_json_text(tags, "writing tags")?],
                )
                .map_err(backend("updating tags"))?;
            }
            if let Some(perms) = &patch.permissions {
                model::check_permissions(perms)?;
                conn.execute(
                    "UPDATE devices SET permissions = ?2 WHERE id = ?1",
                    params![id, to_json_text(perms, "writing permissions")?],
                )
                .map_err(backend("updating permissions"))?;
            }
            if let Some(state) = patch.state {
                conn.execute(
                    "UPDATE devices SET state = ?2 WHERE id = ?1",
                    params![id, state.as_str()],
                )
                .map_err(backend("updating the state"))?;
            }
            if let Some(config) = &patch.config {
                let resources = resource_rows(conn, &cid)?;
                for (name, raw) in config {
                    let res = resources
                        .get(name)
                        .ok_or_else(|| StoreError::ResourceNotFound(name.clone()))?;
                    if !res.settable {
                        return Err(StoreError::NotSettable(name.clone()));
                    }
                    match raw {
                        None => {
                            config_change.insert(name.clone(), None);
                            conn.execute(
                                "DELETE FROM config WHERE device = ?1 AND resource = ?2",
                                params![id, res.id],
                            )
                        }
                        Some(raw) => {
                            let value = res.format.check(name, raw)?;
                            let written = conn.execute(
                                "INSERT INTO config (device, resource, v) VALUES (?1, ?2, ?3)
                                 ON CONFLICT (device, resource) DO UPDATE SET v = excluded.v",
                                params![id, res.id, value_to_sql(&value)],
                            );
                            config_change.insert(name.clone(), Some(value));
                            written
                        }
                    }
                    .map_err(backend("updating configuration"))?;
                }
            }
            let edit = devices::EditFields {
                tags: patch.tags,
                permissions: patch.permissions,
                state: patch.state,
                config: config_change,
            };
            devices::local_change(
                conn,
                &cid,
                &identity,
                before,
                devices::LocalEdit::Edit(edit),
                ctx,
            )?;
            get_device(conn, &cid, &identity, Some(&*lock_tail(&tail)?))
        })
        .await
    }

    async fn delete_device(&self, cid: &ConnectorId, identity: &Identity) -> Result<()> {
        let (cid, identity) = (cid.clone(), identity.clone());
        self.write_device(move |conn, ctx| {
            connector_exists(conn, &cid)?;
            let id = device_id(conn, &cid, &identity)?;
            let before = devices::record(conn, &cid, &identity)?;
            devices::delete_rows(conn, id)?;
            devices::local_change(
                conn,
                &cid,
                &identity,
                before,
                devices::LocalEdit::Delete,
                ctx,
            )
        })
        .await
    }

    async fn set_device_token(
        &self,
        cid: &ConnectorId,
        identity: &Identity,
        token: TokenHash,
    ) -> Result<()> {
        let (cid, identity) = (cid.clone(), identity.clone());
        self.write(move |conn| {
            connector_exists(conn, &cid)?;
            let n = conn
                .execute(
                    "UPDATE devices SET token_hash = ?3 WHERE connector = ?1 AND identity = ?2",
                    params![cid.as_str(), identity.as_str(), &token[..]],
                )
                .map_err(backend("replacing a device token"))?;
            if n == 0 {
                return Err(StoreError::DeviceNotFound(identity));
            }
            Ok(())
        })
        .await
    }

    async fn device_by_token(&self, token: TokenHash) -> Result<Option<(ConnectorId, Identity)>> {
        self.read(move |conn| {
            let row = conn
                .prepare_cached("SELECT connector, identity FROM devices WHERE token_hash = ?1")
                .and_then(|mut s| {
                    s.query_row([&token[..]], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })
                    .optional()
                })
                .map_err(backend("checking a device token"))?;
            row.map(|(c, i)| {
                Ok((
                    parse_col(c, |s| ConnectorId::parse(s).ok(), "reading a connector id")?,
                    identity_col(i)?,
                ))
            })
            .transpose()
        })
        .await
    }

    async fn ingest(&self, cid: &ConnectorId, points: Vec<PointsIn>) -> Result<usize> {
        let cid = cid.clone();
        let (clock, partition_us) = (self.config.clock.clone(), self.config.sync_partition_us);
        self.write(move |conn| ingest_points(conn, &cid, &points, clock.now(), partition_us))
            .await
    }

    async fn points(
        &self,
        cid: &ConnectorId,
        identity: &Identity,
        resource: &ResourceName,
        query: RangeQuery,
    ) -> Result<Vec<Point>> {
        let (cid, identity, resource) = (cid.clone(), identity.clone(), resource.clone());
        let tail = Arc::clone(&self.tail);
        self.read(move |conn| {
            let held = lock_tail(&tail)?;
            connector_exists(conn, &cid)?;
            let device = device_id(conn, &cid, &identity)?;
            let resources = resource_rows(conn, &cid)?;
            let res = resources
                .get(&resource)
                .ok_or_else(|| StoreError::ResourceNotFound(resource.clone()))?;
            let (since, until) = match (query.order, query.after) {
                (Order::Asc, Some(after)) => {
                    (query.since.max(after.saturating_add(1)), query.until)
                }
                (Order::Desc, Some(after)) => (query.since, query.until.min(after)),
                (_, None) => (query.since, query.until),
            };
            let part = series::tail_part(
                &held,
                device,
                res.id,
                (since, until),
                query.order,
                query.limit,
            );
            drop(held);
            series::read(
                conn,
                (device, res.id),
                (since, until),
                query.order,
                query.limit,
                part,
            )
        })
        .await
    }

    fn live(&self) -> tokio::sync::broadcast::Receiver<Arc<LiveBatch>> {
        self.live.subscribe()
    }

    async fn sync_state(&self, cid: &ConnectorId) -> Result<SyncDurable> {
        let cid = cid.clone();
        self.read(move |conn| sync::state(conn, &cid)).await
    }

    async fn outbox_head(&self, cid: &ConnectorId) -> Result<u64> {
        let cid = cid.clone();
        self.read(move |conn| sync::head(conn, &cid)).await
    }

    async fn outbox_read(&self, cid: &ConnectorId, from: u64, max: usize) -> Result<OutboxChunk> {
        let cid = cid.clone();
        self.read(move |conn| sync::read(conn, &cid, from, max))
            .await
    }

    async fn outbox_lease(&self, cid: &ConnectorId, upto: u64) -> Result<()> {
        let cid = cid.clone();
        self.write(move |conn| sync::set_lease(conn, &cid, upto))
            .await
    }

    async fn outbox_acked(&self, cid: &ConnectorId, applied: u64) -> Result<()> {
        let cid = cid.clone();
        self.write(move |conn| sync::acked(conn, &cid, applied))
            .await
    }

    async fn sync_expire(&self, cid: &ConnectorId, retention: Retention) -> Result<ExpiryReport> {
        let cid = cid.clone();
        let partition_us = self.config.sync_partition_us;
        self.write(move |conn| sync::expire(conn, &cid, retention, partition_us))
            .await
    }

    async fn sync_apply(&self, cid: &ConnectorId, items: Vec<Inbound>, now: i64) -> Result<u64> {
        let cid = cid.clone();
        self.write(move |conn| sync::apply(conn, &cid, items, now))
            .await
    }

    async fn confirm_pairing(&self, cid: &ConnectorId) -> Result<bool> {
        let cid = cid.clone();
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE connectors SET pairing_confirmed = 1
                     WHERE id = ?1 AND sync_state = 'paired' AND pairing_confirmed = 0",
                    [cid.as_str()],
                )
                .map_err(backend("confirming a pairing"))?;
            Ok(n > 0)
        })
        .await
    }

    async fn cancel_unconfirmed_pairing(&self, cid: &ConnectorId) -> Result<Connector> {
        let cid = cid.clone();
        self.write(move |conn| {
            let c = get_connector(conn, &cid)?;
            if c.state != SyncState::Paired || c.role != Role::Source || c.pairing_confirmed {
                return Err(StoreError::SyncState {
                    connector: cid,
                    reason: "only a Source pairing its Target never confirmed can be cancelled",
                });
            }
            sync::forget(conn, &cid)?;
            conn.execute(
                "UPDATE connectors SET role = 'none', sync_state = 'disabled', peer_site = NULL,
                     peer_connector = NULL, paired_at = NULL, static_private = NULL,
                     static_public = NULL, peer_static_public = NULL, pairing_confirmed = 1
                 WHERE id = ?1",
                [cid.as_str()],
            )
            .map_err(backend("cancelling a pairing"))?;
            get_connector(conn, &cid)
        })
        .await
    }

    async fn resend_devices(&self, cid: &ConnectorId, identities: Vec<Identity>) -> Result<u64> {
        let cid = cid.clone();
        self.write_device(move |conn, ctx| {
            connector_exists(conn, &cid)?;
            devices::resend(conn, &cid, &identities, ctx.now, ctx.partition_us, true)
        })
        .await
    }

    async fn sync_gaps(&self, cid: &ConnectorId) -> Result<Vec<GapRow>> {
        let cid = cid.clone();
        self.read(move |conn| sync::gaps(conn, &cid)).await
    }

    async fn sync_waiting(&self, cid: &ConnectorId) -> Result<Vec<WaitingResource>> {
        let cid = cid.clone();
        self.read(move |conn| waiting::waiting(conn, &cid)).await
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::create_plant;
    use super::*;
    use serde_json::json;

    fn cid() -> ConnectorId {
        ConnectorId::parse("09iolmnn8090ol").unwrap()
    }

    /// Holds the compactor before it encodes a part (each test runs in its own process).
    pub(super) static COMPACTOR_PAUSED: AtomicBool = AtomicBool::new(false);
    /// Parts the compactor is done with (installed, or skipped as folded already).
    pub(super) static COMPACTED: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);

    async fn fixture() -> (tempfile::TempDir, SqliteStore) {
        fixture_folding_at(SqliteConfig::new("").fold_points).await
    }

    async fn fixture_folding_at(fold_points: usize) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SqliteConfig::new(dir.path().join("site.db"));
        config.fold_points = fold_points;
        let store = SqliteStore::open(config).unwrap();
        create_plant(&store).await;
        for (name, format, settable) in [
            ("temp", Format::Number, false),
            ("mode", Format::String, true),
        ] {
            store
                .create_resource(
                    &cid(),
                    NewResource {
                        name: ResourceName::parse(name).unwrap(),
                        format,
                        unit: None,
                        settable,
                        remote_sync: false,
                        created_at: 1,
                    },
                )
                .await
                .unwrap();
        }
        store
            .create_device(
                &cid(),
                NewDevice {
                    identity: Identity::parse("dev1").unwrap(),
                    tags: [("zone".to_string(), "north".to_string())].into(),
                    permissions: vec![],
                    state: DeviceState::Provisioned,
                    token: [7; 32],
                    created_at: 1,
                },
            )
            .await
            .unwrap();
        (dir, store)
    }

    fn points(t: i64, temp: serde_json::Value) -> PointsIn {
        PointsIn {
            identity: Identity::parse("dev1").unwrap(),
            t,
            values: vec![(ResourceName::parse("temp").unwrap(), temp)],
        }
    }

    fn all() -> RangeQuery {
        RangeQuery {
            since: 0,
            until: i64::MAX,
            after: None,
            limit: 1000,
            order: Order::Asc,
        }
    }

    #[tokio::test]
    async fn ingest_and_read_back() {
        let (_dir, store) = fixture().await;
        let n = store
            .ingest(&cid(), vec![points(10, json!(1.5)), points(20, json!(2.5))])
            .await
            .unwrap();
        assert_eq!(n, 2);
        let dev = Identity::parse("dev1").unwrap();
        let temp = ResourceName::parse("temp").unwrap();
        let got = store.points(&cid(), &dev, &temp, all()).await.unwrap();
        assert_eq!(
            got,
            vec![
                Point {
                    t: 10,
                    v: Value::Number(1.5)
                },
                Point {
                    t: 20,
                    v: Value::Number(2.5)
                }
            ]
        );
        let device = store.device(&cid(), &dev).await.unwrap();
        assert_eq!(
            device.values[&temp],
            Point {
                t: 20,
                v: Value::Number(2.5)
            }
        );
    }

    #[tokio::test]
    async fn a_bad_value_stores_nothing_of_its_request() {
        let (_dir, store) = fixture().await;
        let err = store
            .ingest(
                &cid(),
                vec![points(10, json!(1.5)), points(20, json!("hot"))],
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
        let dev = Identity::parse("dev1").unwrap();
        let temp = ResourceName::parse("temp").unwrap();
        assert!(
            store
                .points(&cid(), &dev, &temp, all())
                .await
                .unwrap()
                .is_empty()
        );
        // A good request right after is not affected by the refused one.
        store
            .ingest(&cid(), vec![points(30, json!(3))])
            .await
            .unwrap();
        assert_eq!(
            store
                .points(&cid(), &dev, &temp, all())
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn concurrent_requests_share_commits_but_not_failures() {
        let (_dir, store) = fixture().await;
        let store = Arc::new(store);
        let mut tasks = Vec::new();
        for i in 0..100 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let v = if i % 10 == 0 { json!("bad") } else { json!(i) };
                store.ingest(&cid(), vec![points(i, v)]).await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 90);
        let dev = Identity::parse("dev1").unwrap();
        let temp = ResourceName::parse("temp").unwrap();
        let got = store.points(&cid(), &dev, &temp, all()).await.unwrap();
        assert_eq!(got.len(), 90);
        assert!(got.iter().all(|p| p.t % 10 != 0));
    }

    #[tokio::test]
    async fn pages_in_both_orders() {
        let (_dir, store) = fixture().await;
        let batch = (0..10).map(|t| points(t, json!(t))).collect();
        store.ingest(&cid(), batch).await.unwrap();
        let dev = Identity::parse("dev1").unwrap();
        let temp = ResourceName::parse("temp").unwrap();
        for order in [Order::Asc, Order::Desc] {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let q = RangeQuery {
                    after,
                    limit: 3,
                    order,
                    ..all()
                };
                let page = store.points(&cid(), &dev, &temp, q).await.unwrap();
                if page.is_empty() {
                    break;
                }
                after = page.last().map(|p| p.t);
                seen.extend(page.into_iter().map(|p| p.t));
            }
            let mut expected: Vec<i64> = (0..10).collect();
            if order == Order::Desc {
                expected.reverse();
            }
            assert_eq!(seen, expected, "{order:?}");
        }
    }

    #[tokio::test]
    async fn device_filters_and_config() {
        let (_dir, store) = fixture().await;
        let q = |k: &str, v: &str| DeviceQuery {
            tags: vec![(k.into(), v.into())],
            after: None,
            limit: 10,
        };
        assert_eq!(
            store
                .devices(&cid(), q("zone", "north"))
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store
                .devices(&cid(), q("zone", "south"))
                .await
                .unwrap()
                .len(),
            0
        );
        let dev = Identity::parse("dev1").unwrap();
        let mode = ResourceName::parse("mode").unwrap();
        let patch = DevicePatch {
            config: Some([(mode.clone(), Some(json!("eco")))].into()),
            ..Default::default()
        };
        let d = store.update_device(&cid(), &dev, patch).await.unwrap();
        assert_eq!(d.config[&mode], Value::String("eco".into()));
        let temp = ResourceName::parse("temp").unwrap();
        let patch = DevicePatch {
            config: Some([(temp.clone(), Some(json!(1)))].into()),
            ..Default::default()
        };
        let err = store.update_device(&cid(), &dev, patch).await.unwrap_err();
        assert!(matches!(err, StoreError::NotSettable(_)), "{err}");
    }

    #[tokio::test]
    async fn pairing_lifecycle() {
        let (_dir, store) = fixture().await;
        let c = store
            .open_pairing(&cid(), "ABCD-EFGH-JK", 100)
            .await
            .unwrap();
        assert_eq!((c.role, c.state), (Role::Source, SyncState::Pairing));
        let w = store.pairing_window(&cid()).await.unwrap().unwrap();
        assert_eq!(
            (w.code.as_str(), w.expires_at, w.failed_attempts),
            ("ABCD-EFGH-JK", 100, 0)
        );
        assert_eq!(store.record_failed_attempt(&cid()).await.unwrap(), 1);
        let c = store.close_pairing(&cid()).await.unwrap();
        assert_eq!((c.role, c.state), (Role::None, SyncState::Disabled));
        assert!(store.pairing_window(&cid()).await.unwrap().is_none());

        // A fresh window, then completion pins the keys and forgets the code.
        store
            .open_pairing(&cid(), "ZZZZ-ZZZZ-ZZ", 200)
            .await
            .unwrap();
        assert_eq!(
            store
                .pairing_window(&cid())
                .await
                .unwrap()
                .unwrap()
                .failed_attempts,
            0
        );
        let keys = ConnectorKeys {
            static_private: [1; 32],
            static_public: [2; 32],
            peer_static_public: [3; 32],
        };
        let peer = Peer {
            site: "site-b".into(),
            connector_id: ConnectorId::parse("abcdefghijklmn").unwrap(),
        };
        let c = store
            .complete_pairing(&cid(), peer.clone(), keys.clone(), 150)
            .await
            .unwrap();
        assert_eq!(
            (c.state, c.peer.as_ref(), c.paired_at),
            (SyncState::Paired, Some(&peer), Some(150))
        );
        assert_eq!(
            store.connector_keys(&cid()).await.unwrap(),
            Some(keys.clone())
        );
        assert!(store.pairing_window(&cid()).await.unwrap().is_none());
        // Paired is final: no new window, no closing.
        assert!(matches!(
            store.open_pairing(&cid(), "X", 1).await,
            Err(StoreError::SyncState { .. })
        ));
        assert!(matches!(
            store.close_pairing(&cid()).await,
            Err(StoreError::SyncState { .. })
        ));

        // Unconfirmed until the Target's first session: it may still be cancelled, which
        // forgets the peer, the keys and whatever was queued for it.
        assert!(!c.pairing_confirmed);
        assert!(
            store.outbox_head(&cid()).await.unwrap() > 0,
            "the registry is queued"
        );
        let c = store.cancel_unconfirmed_pairing(&cid()).await.unwrap();
        assert_eq!(
            (c.role, c.state, c.peer),
            (Role::None, SyncState::Disabled, None)
        );
        assert_eq!(store.connector_keys(&cid()).await.unwrap(), None);
        assert_eq!(store.outbox_head(&cid()).await.unwrap(), 0);
        assert_eq!(store.sync_state(&cid()).await.unwrap().partitions, 0);
        // Paired again and confirmed: final.
        store.open_pairing(&cid(), "YYYY", 300).await.unwrap();
        store
            .complete_pairing(&cid(), peer, keys, 350)
            .await
            .unwrap();
        assert!(store.confirm_pairing(&cid()).await.unwrap());
        assert!(!store.confirm_pairing(&cid()).await.unwrap(), "once");
        assert!(store.connector(&cid()).await.unwrap().pairing_confirmed);
        assert!(matches!(
            store.cancel_unconfirmed_pairing(&cid()).await,
            Err(StoreError::SyncState { .. })
        ));
    }

    #[tokio::test]
    async fn a_data_dir_of_the_points_table_is_migrated_and_folded_on_open() {
        let (dir, store) = fixture().await;
        drop(store);
        // The layout before migration 6: points in a (device, resource, t) B-tree.
        let path = dir.path().join("site.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TABLE point_log; DROP TABLE point_blocks; DROP TABLE series_buckets;
             DROP TABLE point_batches;
             ALTER TABLE sync_out DROP COLUMN folded;
             DELETE FROM schema_migrations WHERE version >= 6;
             CREATE TABLE points (device INTEGER NOT NULL, resource INTEGER NOT NULL,
                 t INTEGER NOT NULL, v, PRIMARY KEY (device, resource, t)) WITHOUT ROWID;",
        )
        .unwrap();
        let (device, resource): (i64, i64) = conn
            .query_row(
                "SELECT d.id, r.id FROM devices d, resources r WHERE r.name = 'temp'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        for t in 0..25 {
            conn.execute(
                "INSERT INTO points VALUES (?1, ?2, ?3, ?4)",
                params![device, resource, t * 1_000_000, t as f64 / 2.0],
            )
            .unwrap();
        }
        drop(conn);
        let mut config = SqliteConfig::new(&path);
        config.fold_points = 10;
        let store = SqliteStore::open(config).unwrap();
        // Folded in slices of 10 on open, the last one of 5 too: nothing writes that table.
        assert_eq!(store.tail_len(), 0);
        let dev = Identity::parse("dev1").unwrap();
        let temp = ResourceName::parse("temp").unwrap();
        let got = store.points(&cid(), &dev, &temp, all()).await.unwrap();
        let expected: Vec<Point> = (0..25)
            .map(|t| Point {
                t: t * 1_000_000,
                v: Value::Number(t as f64 / 2.0),
            })
            .collect();
        assert_eq!(got, expected);
        // A write to an old timestamp replaces the migrated value, folded or not.
        store
            .ingest(&cid(), vec![points(3_000_000, json!(99))])
            .await
            .unwrap();
        store.fold().await.unwrap();
        let got = store.points(&cid(), &dev, &temp, all()).await.unwrap();
        assert_eq!(got[3].v, Value::Number(99.0));
        assert_eq!(got.len(), 25);
    }

    /// Bytes this process wrote to disk (`/proc/self/io` `write_bytes`).
    fn write_bytes() -> u64 {
        std::fs::read_to_string("/proc/self/io")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// A measurement, not a check: disk bytes written per point while 1,000 devices send
    /// 200 points each in requests of 1,000 points (50 in flight), on a paired Source whose
    /// resource is remote-synced (the outbox is the log). Run with `cargo nextest run -p
    /// west-store --run-ignored only disk_bytes --no-capture` (on a disk, not tmpfs).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn disk_bytes_per_point() {
        disk_bytes(true).await;
    }

    /// The same on a standalone connector: the points go to the point log (as on a Target).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn disk_bytes_per_point_standalone() {
        disk_bytes(false).await;
    }

    async fn disk_bytes(paired: bool) {
        let dir =
            tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")).unwrap();
        let store =
            Arc::new(SqliteStore::open(SqliteConfig::new(dir.path().join("site.db"))).unwrap());
        create_plant(&store).await;
        store
            .create_resource(
                &cid(),
                NewResource {
                    name: ResourceName::parse("temp").unwrap(),
                    format: Format::Number,
                    unit: None,
                    settable: false,
                    remote_sync: paired,
                    created_at: 1,
                },
            )
            .await
            .unwrap();
        for d in 0..1000u64 {
            let mut token = [0u8; 32];
            token[..8].copy_from_slice(&d.to_le_bytes());
            store
                .create_device(
                    &cid(),
                    NewDevice {
                        identity: Identity::parse(&format!("dev{d}")).unwrap(),
                        tags: Default::default(),
                        permissions: vec![],
                        state: DeviceState::Provisioned,
                        token,
                        created_at: 1,
                    },
                )
                .await
                .unwrap();
        }
        if paired {
            store.open_pairing(&cid(), "CODE", i64::MAX).await.unwrap();
            let peer = Peer {
                site: "b".into(),
                connector_id: ConnectorId::parse("abcdefghijklmn").unwrap(),
            };
            let keys = ConnectorKeys {
                static_private: [1; 32],
                static_public: [2; 32],
                peer_static_public: [3; 32],
            };
            store.complete_pairing(&cid(), peer, keys, 1).await.unwrap();
        }
        let before = write_bytes();
        let started = std::time::Instant::now();
        let rounds = 200;
        let mut tasks = tokio::task::JoinSet::new();
        let sem = Arc::new(tokio::sync::Semaphore::new(50));
        for round in 0..rounds {
            let batch: Vec<PointsIn> = (0..1000u64)
                .map(|d| PointsIn {
                    identity: Identity::parse(&format!("dev{d}")).unwrap(),
                    t: 1_700_000_000_000_000 + round * 1_000_000 + d as i64,
                    values: vec![(
                        ResourceName::parse("temp").unwrap(),
                        json!(20.0 + (round % 50) as f64 / 10.0),
                    )],
                })
                .collect();
            let permit = Arc::clone(&sem).acquire_owned().await.unwrap();
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                store.ingest(&cid(), batch).await.unwrap();
                drop(permit);
            });
        }
        while tasks.join_next().await.is_some() {}
        let points = (rounds * 1000) as f64;
        let written = write_bytes() - before;
        println!(
            "disk_bytes_per_point ({}): {:.1} B/point ({} bytes, {} points, {:.0} points/s)",
            if paired {
                "paired Source, outbox"
            } else {
                "standalone, point log"
            },
            written as f64 / points,
            written,
            points,
            points / started.elapsed().as_secs_f64()
        );
    }

    #[tokio::test]
    async fn the_live_stream_carries_committed_points_once_and_nothing_refused() {
        let (_dir, store) = fixture().await;
        let mut live = store.live();
        store
            .ingest(&cid(), vec![points(10, json!(1.5)), points(5, json!(2.5))])
            .await
            .unwrap();
        assert!(
            store
                .ingest(&cid(), vec![points(30, json!(3)), points(40, json!("hot"))])
                .await
                .is_err()
        );
        store
            .ingest(&cid(), vec![points(20, json!(4))])
            .await
            .unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let batch = live.recv().await.unwrap();
            assert_eq!(batch.connector, cid());
            seen.extend(
                batch
                    .points
                    .iter()
                    .map(|p| (p.device.to_string(), p.t, p.v.clone())),
            );
        }
        assert_eq!(
            seen,
            vec![
                ("dev1".to_string(), 10, Value::Number(1.5)),
                ("dev1".to_string(), 5, Value::Number(2.5)),
                ("dev1".to_string(), 20, Value::Number(4.0)),
            ]
        );
        assert!(live.try_recv().is_err(), "nothing else");
    }

    #[tokio::test]
    async fn reopening_keeps_everything() {
        let (dir, store) = fixture().await;
        store
            .ingest(&cid(), vec![points(5, json!(1))])
            .await
            .unwrap();
        drop(store);
        let store = SqliteStore::open(SqliteConfig::new(dir.path().join("site.db"))).unwrap();
        assert_eq!(store.list_connectors().await.unwrap().len(), 1);
        let dev = Identity::parse("dev1").unwrap();
        let temp = ResourceName::parse("temp").unwrap();
        assert_eq!(
            store
                .points(&cid(), &dev, &temp, all())
                .await
                .unwrap()
                .len(),
            1
        );
    }

    /// Ingest of one `t` per point at `times`, all of value `v`.
    async fn ingest_at(store: &SqliteStore, times: std::ops::Range<i64>, v: f64) {
        let batch = times.map(|t| points(t, json!(v))).collect();
        store.ingest(&cid(), batch).await.unwrap();
    }

    /// Polls `done` until it holds (a deadline against a hang, not a timing assertion).
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "gave up waiting for {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    async fn values(store: &SqliteStore) -> Vec<(i64, f64)> {
        let dev = Identity::parse("dev1").unwrap();
        let temp = ResourceName::parse("temp").unwrap();
        store
            .points(&cid(), &dev, &temp, all())
            .await
            .unwrap()
            .into_iter()
            .map(|p| match p.v {
                Value::Number(x) => (p.t, x),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    /// A fold runs beside the commits: with the compactor held in the middle of folding two
    /// parts of the tail, ingest is still acknowledged and reads see every point, the newest
    /// value of a rewritten `t` included; released, it installs both parts and nothing changes.
    #[tokio::test]
    async fn ingest_is_acknowledged_while_a_fold_is_held() {
        let (_dir, store) = fixture_folding_at(10).await;
        COMPACTOR_PAUSED.store(true, Ordering::SeqCst);
        ingest_at(&store, 0..10, 1.0).await;
        ingest_at(&store, 10..20, 2.0).await;
        // Both parts are frozen, neither folded; a rewrite of t = 5 goes to the active part.
        ingest_at(&store, 5..6, 3.0).await;
        let mut want: Vec<(i64, f64)> = (0..20)
            .map(|t| (t, if t < 10 { 1.0 } else { 2.0 }))
            .collect();
        want[5].1 = 3.0;
        assert_eq!(store.tail_len(), 21);
        assert_eq!(values(&store).await, want);
        assert_eq!(
            store
                .device(&cid(), &Identity::parse("dev1").unwrap())
                .await
                .unwrap()
                .values[&ResourceName::parse("temp").unwrap()],
            Point {
                t: 19,
                v: Value::Number(2.0)
            }
        );
        COMPACTOR_PAUSED.store(false, Ordering::SeqCst);
        until("both parts folded", || store.tail_len() == 1).await;
        assert_eq!(values(&store).await, want);
        store.fold().await.unwrap();
        assert_eq!(store.tail_len(), 0);
        assert_eq!(values(&store).await, want);
    }

    /// A compactor that falls behind does not let the tail grow without bound: the writer
    /// folds it itself, and the parts the compactor folds afterwards are not installed over
    /// the newer values.
    #[tokio::test]
    async fn a_held_compactor_bounds_the_tail_and_its_late_folds_change_nothing() {
        let (_dir, store) = fixture_folding_at(10).await;
        COMPACTOR_PAUSED.store(true, Ordering::SeqCst);
        ingest_at(&store, 0..10, 1.0).await;
        ingest_at(&store, 0..10, 2.0).await;
        // The third part reaches the bound (3 × 10 points): folded on the commit path.
        ingest_at(&store, 0..10, 3.0).await;
        until("the bound to fold the tail", || store.tail_len() == 0).await;
        let want: Vec<(i64, f64)> = (0..10).map(|t| (t, 3.0)).collect();
        assert_eq!(values(&store).await, want);
        COMPACTOR_PAUSED.store(false, Ordering::SeqCst);
        until("the compactor to be done with both parts", || {
            COMPACTED.load(Ordering::SeqCst) == 2
        })
        .await;
        assert_eq!(values(&store).await, want);
        let dir = store.path().to_owned();
        drop(store);
        let store = SqliteStore::open(SqliteConfig::new(dir)).unwrap();
        assert_eq!(values(&store).await, want);
    }
}
