//! The write engine of the SQLite store: one writer thread owning the only write
//! connection, the checkpointer thread and the compactor thread (module header of `mod.rs`
//! has the picture).
//!
//! Invariants:
//! - Every write runs as a [`Job`] inside the writer's current transaction, in its own
//!   savepoint; its caller hears back only after the COMMIT (or with the commit's failure),
//!   and a refused job rolls back alone, its tail changes and log row with it.
//! - A transaction waits for more jobs ([`Gather`]) only right after a commit that several
//!   callers shared, only while jobs keep arriving, and at most [`LINGER_MAX`].
//! - A device token the transaction revoked is forgotten by the readers' cache before any
//!   of its callers hears back (`device_tokens.rs`).
//! - After a COMMIT the writer applies the transaction's tail changes and sends its live
//!   points before any caller hears back: a caller that heard back can read its writes. The
//!   live points go out first, under the tail's write lock, so that a subscriber renders
//!   them while the tail takes them, and still reads them if it asks.
//! - Nothing on the commit path folds, except past the tail's hard bound
//!   ([`HARD_BOUND_PARTS`]): the compactor encodes, and its install is an ordinary job.
//! - Checkpoints run on the checkpointer's own connection, passive; the writer only
//!   restarts a WAL the checkpointer found fully copied.
//!
//! Deliberately absent: a second write connection (SQLite has one writer; a job waits in
//! the queue instead of on a lock), and any SQL of the domain (that is in the other
//! modules; jobs bring it).

use super::*;

/// Most jobs the writer folds into one transaction.
pub(super) const MAX_JOBS_PER_COMMIT: usize = 256;

/// What a job leaves for the writer: whether to keep its savepoint, and how to answer its
/// caller once the commit is known.
pub(super) struct Done {
    pub(super) ok: bool,
    pub(super) reply: Reply,
}

/// Answers a job's caller, given the commit's failure if the commit failed.
pub(super) type Reply = Box<dyn FnOnce(Option<&CommitFailure>) + Send>;

/// Why a transaction failed (its BEGIN or its COMMIT), kept so that every caller of the
/// batch gets its own error with the same SQLite code (a full disk must read as one to each
/// of them, a database locked by another process as that).
pub(super) struct CommitFailure {
    /// What the writer was doing, for the error's `op`.
    pub(super) op: &'static str,
    pub(super) extended_code: std::ffi::c_int,
    pub(super) message: String,
}

impl CommitFailure {
    fn new(op: &'static str, e: &rusqlite::Error) -> Self {
        Self {
            op,
            extended_code: match e {
                rusqlite::Error::SqliteFailure(f, _) => f.extended_code,
                _ => rusqlite::ffi::SQLITE_ERROR,
            },
            message: e.to_string(),
        }
    }

    /// The failure of a job's own last step (writing its log row), for its caller alone.
    fn of_store(e: &StoreError) -> Self {
        let (op, sql) = match e {
            StoreError::Backend { op, source } => (*op, source.downcast_ref::<rusqlite::Error>()),
            _ => ("committing", None),
        };
        match sql {
            Some(sql) => Self::new(op, sql),
            None => Self {
                op,
                extended_code: rusqlite::ffi::SQLITE_ERROR,
                message: e.to_string(),
            },
        }
    }

    fn to_error(&self) -> StoreError {
        StoreError::Backend {
            op: self.op,
            source: Box::new(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(self.extended_code),
                Some(self.message.clone()),
            )),
        }
    }
}

/// A write for the writer thread: given the connection inside the open transaction, or
/// the failure that kept the transaction from beginning (then it does not run, and its
/// caller hears that failure).
pub(super) type Job =
    Box<dyn FnOnce(std::result::Result<&Connection, &CommitFailure>) -> Done + Send>;

/// A job running `f` in the writer's transaction, and where its answer arrives (after the
/// commit, with the commit's failure if it failed; at once with the failure to begin the
/// transaction if that failed).
pub(super) fn job<R, F>(f: F) -> (Job, oneshot::Receiver<Result<R>>)
where
    R: Send + 'static,
    F: FnOnce(&Connection) -> Result<R> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move |conn| {
        let result = match conn {
            Ok(conn) => f(conn),
            Err(failure) => Err(failure.to_error()),
        };
        Done {
            ok: result.is_ok(),
            reply: Box::new(move |commit_error| {
                let answer = match commit_error {
                    None => result,
                    Some(failure) => Err(failure.to_error()),
                };
                let _ = tx.send(answer);
            }),
        }
    });
    (job, rx)
}

/// WAL pages beyond which the writer checkpoints itself, the checkpointer having fallen
/// behind (64 MiB).
pub(super) const WAL_SAFETY_PAGES: u32 = 16_384;
/// WAL pages beyond which the checkpointer, once everything is copied, restarts the WAL
/// from its beginning (16 MiB): with commits arriving all the time a passive checkpoint is
/// never quite done when the writer looks, so the WAL would only grow.
pub(super) const WAL_RESTART_PAGES: i64 = 4_096;
/// Least time between two checkpoints of the checkpointer.
pub(super) const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// WAL pages (4 MiB) below which the checkpointer lets the WAL grow. A commit that finds
/// the whole WAL copied starts it over from its beginning, and SQLite syncs the new WAL
/// header then (`synchronous = NORMAL` syncs nothing else on a commit): checkpointing
/// after every commit, as when this was zero, put an fsync on the commit path of every
/// transaction of a site that commits less often than [`CHECKPOINT_EVERY`], a few
/// milliseconds of a point's latency on a busy disk (docs/benchmarks.md, "Latency,
/// session 7"). Now one commit in this many pages written pays it.
pub(super) const CHECKPOINT_PAGES: i64 = 1_024;

/// Copies committed WAL pages into the database, off the commit path. SQLite's automatic
/// checkpoint runs inside the commit that crosses its threshold, so the writer (and every
/// caller waiting for that commit) paid for copying the whole WAL, and with a small WAL the
/// same hot pages were copied after almost every commit. Here a passive checkpoint (it
/// never blocks the writer or readers) runs at most every [`CHECKPOINT_EVERY`] after a
/// commit that left at least [`CHECKPOINT_PAGES`] in the WAL (`wal_pages`, which the
/// writer's WAL hook keeps), on the other core, and a page written by many commits
/// meanwhile is copied once. Ends when the writer does.
/// When a pass has copied a WAL of [`WAL_RESTART_PAGES`] or more entirely, it asks the
/// writer (`restart_due`) to restart the WAL between two transactions: the writer holds the
/// write lock anyway, and only the pages committed since the pass remain to copy.
pub(super) fn checkpointer(
    conn: Connection,
    commits: std::sync::mpsc::Receiver<()>,
    restart_due: &AtomicBool,
    wal_pages: &AtomicI64,
) {
    while commits.recv().is_ok() {
        if wal_pages.load(Ordering::Relaxed) < CHECKPOINT_PAGES {
            continue;
        }
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
pub(super) fn wal_checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

/// What the writer needs to keep the point log folded: the tail, the compactor's queue,
/// the sizes that freeze a part and that force a fold on the commit path.
pub(super) struct Folding {
    pub(super) tail: Arc<RwLock<series::Tail>>,
    /// Points of the active part that freeze it for the compactor.
    pub(super) at: usize,
    /// Points of the whole tail past which the writer folds everything itself
    /// ([`HARD_BOUND_PARTS`] × `at`).
    pub(super) bound: usize,
    pub(super) compactor: std::sync::mpsc::Sender<series::Frozen>,
    /// The live stream: committed points go out here.
    pub(super) live: tokio::sync::broadcast::Sender<Arc<LiveBatch>>,
    /// The outbox records of the latest commits, for the sync driver's next read.
    pub(super) recent: Arc<recent::Recent>,
}

/// The tail may hold this many parts' worth of points (the active one and those frozen for
/// the compactor) before the writer folds it on the commit path: memory stays bounded when
/// the compactor falls behind, and ingest slows down (its callers wait) instead.
pub(super) const HARD_BOUND_PARTS: usize = 3;

/// Opens the tail: the rows an older version left in `point_log` (a migrated `points`
/// table, say) are folded first, in slices of `fold_points`, each its own transaction; the
/// point batches and the outbox's unfolded records are replayed.
pub(super) fn open_tail(conn: &Connection, fold_points: usize) -> Result<series::Tail> {
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
pub(super) fn freeze(conn: &Connection, folding: &Folding) {
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
pub(super) fn fold_all(conn: &Connection, folding: &Folding) {
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
            series::apply(&folding.tail, ops, || {});
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            tracing::warn!(error = %e, "cannot fold the point log; it stays in the tail");
        }
    }
}

/// How long the compactor lets a frozen part wait before it encodes it. The commit that
/// fills a part freezes it, and that commit's points are then on their way to the peer and
/// to the live stream; encoding a part of 65,536 points takes 4 to 9 ms of a core, and
/// started at once it took that core from them: in `west bench sync` the request that
/// froze a part was, run after run, among the three slowest of 200 (its p99). The hard
/// bound ([`HARD_BOUND_PARTS`]) leaves a busy writer two more parts of room meanwhile.
pub(super) const COMPACT_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// The compactor thread: encodes each frozen part of the tail into blocks off the commit
/// path, then has the writer install the result as one ordinary job (a few inserts and the
/// log rows' delete, in the next group commit). Parts are installed in the order they were
/// frozen; an install that fails is retried. Ends with the writer.
pub(super) fn compactor(
    parts: std::sync::mpsc::Receiver<series::Frozen>,
    jobs: mpsc::WeakSender<Job>,
) {
    while let Ok(frozen) = parts.recv() {
        std::thread::sleep(COMPACT_AFTER);
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

/// Has every commit of the writer's connection publish the pages its WAL holds (for the
/// checkpointer), and checkpoint there itself past [`WAL_SAFETY_PAGES`] (the checkpointer
/// fallen behind), which is what `PRAGMA wal_autocheckpoint` did before this hook replaced
/// it. Should the hook fail to install, the pages read as many: the checkpointer then runs
/// after every commit, as before the hook.
fn watch_wal(conn: &mut Connection, wal_pages: Arc<AtomicI64>) {
    let pages = Arc::clone(&wal_pages);
    let hook = conn.wal_hook(Some(
        move |wal: &mut rusqlite::hooks::Wal, n: std::ffi::c_int| {
            pages.store(i64::from(n), Ordering::Relaxed);
            if i64::from(n) >= i64::from(WAL_SAFETY_PAGES) {
                wal.checkpoint()?;
            }
            Ok(())
        },
    ));
    if let Err(e) = hook {
        tracing::warn!(error = %e, "no WAL hook: the checkpointer runs after every commit");
        wal_pages.store(i64::MAX, Ordering::Relaxed);
    }
}

/// The writer thread: group commit of whatever is queued (see the module header).
pub(super) fn writer(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    committed: std::sync::mpsc::SyncSender<()>,
    (restart_due, wal_pages): (&AtomicBool, Arc<AtomicI64>),
    folding: &Folding,
    tokens: &super::device_tokens::DeviceTokens,
) {
    series::set_current_tail(Arc::clone(&folding.tail));
    device_ids::start(&conn);
    watch_wal(&mut conn, wal_pages);
    super::device_tokens::start(&conn);
    let mut batch = Vec::with_capacity(MAX_JOBS_PER_COMMIT);
    let mut gather = Gather::default();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        gather.fill(&mut rx, &mut batch, std::thread::sleep);
        let jobs = batch.len();
        let began = std::time::Instant::now();
        let mut replies = Vec::with_capacity(batch.len());
        series::listen(folding.live.receiver_count() > 0);
        let begin = conn.execute_batch("BEGIN IMMEDIATE");
        if let Err(e) = begin {
            // Another process holding the database's lock past the busy timeout, say:
            // every caller hears why, and nothing of theirs ran.
            let failure = CommitFailure::new("beginning a write transaction", &e);
            tracing::error!(error = %failure.message, "cannot begin a write transaction");
            for job in batch.drain(..) {
                (job(Err(&failure)).reply)(None);
            }
            continue;
        }
        super::device_tokens::begun(&conn, tokens);
        for job in batch.drain(..) {
            let savepoint = conn.execute_batch("SAVEPOINT job");
            let mark = series::mark();
            let audit_mark = super::audit::mark();
            let ids_mark = device_ids::mark();
            let recent_mark = recent::mark();
            let mut done = job(Ok(&conn));
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
                super::audit::rollback_to(audit_mark);
                device_ids::rollback_to(ids_mark);
                recent::rollback_to(recent_mark);
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
            .map_err(|e| CommitFailure::new("committing", &e));
        device_ids::end(commit.is_ok());
        recent::end(&folding.recent, commit.is_ok());
        let ops = series::take_ops();
        let mut live = series::take_live();
        live.extend(super::audit::take_live());
        if let Err(failure) = &commit {
            tracing::error!(error = %failure.message, "commit failed; rolling back");
            let _ = conn.execute_batch("ROLLBACK");
        }
        // A revoked device token stops working before the revocation is acknowledged.
        super::device_tokens::ended(tokens);
        if commit.is_ok() {
            // Durable: readers may see it now, before its callers hear back. The live
            // points go out first, under the tail's write lock: a subscriber renders them
            // while the tail takes them, and a read it makes then waits for the lock.
            series::apply(&folding.tail, ops, || {
                for batch in live {
                    let _ = folding.live.send(Arc::new(batch));
                }
            });
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
        gather.committed(jobs, began.elapsed());
    }
}

/// How long the writer may hold a transaction open for more jobs under sustained load.
pub(super) const LINGER_MAX: std::time::Duration = std::time::Duration::from_millis(10);
/// One look of the lingering writer: it commits once a look brings no new job.
pub(super) const LINGER_SLICE: std::time::Duration = std::time::Duration::from_millis(1);
/// A commit that ended longer ago than this says the load is not sustained: no lingering.
pub(super) const LINGER_AFTER: std::time::Duration = std::time::Duration::from_millis(5);
/// Lingering pays only for cheap jobs (a reading a request, tens of µs each), whose commit's
/// own pages outweigh them; a transaction whose jobs took more than this each on average
/// (bulk requests of a thousand points) does not make the next one wait: a look of
/// [`LINGER_SLICE`] would cost such writers more than the commit it saves (`west bench scale`
/// lost 10–20 % of its rate to it).
pub(super) const LINGER_JOB_COST: std::time::Duration = std::time::Duration::from_micros(200);

/// How the writer gathers a transaction's jobs. It takes every job waiting; under
/// sustained load from independent callers (the last commit held more than one job and
/// ended moments ago) it also lingers while jobs keep arriving, [`LINGER_SLICE`] at a time,
/// for at most [`LINGER_MAX`]: a commit costs about the same pages (the tails of the
/// tables it appends to, the outbox head) for one job as for a hundred, so many one-point
/// requests that each got their own commit wrote a few KB per point. A lone request, or a
/// caller that waits for each answer alone (the Target's applier), never waits for it, and
/// neither do jobs that cost more than [`LINGER_JOB_COST`] each (bulk writes).
#[derive(Default)]
pub(super) struct Gather {
    /// When the last transaction of more than one job ended.
    shared: Option<std::time::Instant>,
}

impl Gather {
    /// Adds to `batch` the jobs waiting in `rx` and, under sustained load, those that
    /// arrive while it lingers; `wait` sleeps (a test passes its own).
    pub(super) fn fill(
        &mut self,
        rx: &mut mpsc::Receiver<Job>,
        batch: &mut Vec<Job>,
        mut wait: impl FnMut(std::time::Duration),
    ) {
        let drain = |rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>| {
            let before = batch.len();
            while batch.len() < MAX_JOBS_PER_COMMIT {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch.len() > before
        };
        drain(rx, batch);
        let sustained = self.shared.is_some_and(|at| at.elapsed() < LINGER_AFTER);
        if !sustained {
            return;
        }
        let started = std::time::Instant::now();
        while batch.len() < MAX_JOBS_PER_COMMIT && started.elapsed() < LINGER_MAX {
            wait(LINGER_SLICE);
            if !drain(rx, batch) {
                break;
            }
        }
    }

    /// Notes that a transaction of `jobs` jobs ended, `took` after it began.
    pub(super) fn committed(&mut self, jobs: usize, took: std::time::Duration) {
        let cheap = took < LINGER_JOB_COST.saturating_mul(u32::try_from(jobs).unwrap_or(u32::MAX));
        if jobs > 1 && cheap {
            self.shared = Some(std::time::Instant::now());
        }
    }
}
