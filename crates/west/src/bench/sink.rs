//! The far end of the third NATS baseline: a consumer on site-b's mirror that writes every
//! point into a per-series SQLite store and acknowledges each message after its commit, as a
//! NATS user who wants the points queryable on the Target would have to write one.
//!
//! The schema is the one we would recommend to such a user (the layout of our own store
//! before issue 11): a `series` table naming each (device, resource), and one
//! `(series, t, v)` row per point in a B-tree keyed by series then time, without row ids, so
//! that a range of one series is one contiguous read and a repeated timestamp replaces the
//! earlier value. A one-row `cursor` table holds the highest stream sequence applied, in the
//! same transaction as the points, so that a redelivered message (after a restart, before
//! its ack reached site-b) is skipped: exactly once, as our Target's apply.
//!
//! WAL journal and `synchronous=NORMAL`, as our sites by default; the messages that are
//! ready at once (up to 256) go into one transaction, like our Target's apply of queued
//! batches. "Applied" is the cursor after a commit: every point of the messages up to it is
//! queryable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use rusqlite::{Connection, params};
use tokio_util::task::AbortOnDropHandle;

/// The durable consumer's name on site-b's mirror.
const CONSUMER: &str = "store";
/// The resource every point of the workload belongs to.
const RESOURCE: &str = "temperature";

/// Commit times of the messages applied while recording: (stream sequence, instant).
type Commits = Arc<Mutex<Option<Vec<(u64, Instant)>>>>;

/// One running consumer; dropping it stops it (the SQLite file stays).
pub struct Sink {
    applied: Arc<AtomicU64>,
    record: Commits,
    /// Why the consumer stopped, once it has.
    failed: Arc<Mutex<Option<String>>>,
    task: AbortOnDropHandle<anyhow::Result<()>>,
}

impl Sink {
    /// Opens (or creates) the store at `db` and starts consuming `stream` on site-b.
    pub async fn start(js: &jetstream::Context, stream: &str, db: &Path) -> anyhow::Result<Self> {
        let store = Store::open(db)?;
        let applied = Arc::new(AtomicU64::new(store.cursor()?));
        let stream = js
            .get_stream(stream)
            .await
            .context("opening site-b's mirror for the store's consumer")?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(CONSUMER.into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            )
            .await
            .context("creating the store's consumer on site-b's mirror")?;
        let record = Arc::new(Mutex::new(None));
        let failed = Arc::new(Mutex::new(None));
        let task = tokio::spawn({
            let (applied, record, failed) = (
                Arc::clone(&applied),
                Arc::clone(&record),
                Arc::clone(&failed),
            );
            async move {
                let result = consume(consumer, store, applied, record).await;
                if let Err(e) = &result {
                    *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{e:#}"));
                }
                result
            }
        });
        Ok(Self {
            applied,
            record,
            failed,
            task: AbortOnDropHandle::new(task),
        })
    }

    /// The highest stream sequence whose points are committed.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Fails with the consumer's error once it has stopped.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.task.is_finished() {
            let why = self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            bail!(
                "the store's consumer on site-b stopped: {}",
                why.unwrap_or_else(|| "its stream of messages ended".into())
            );
        }
        Ok(())
    }

    /// Starts recording the commit time of every message applied from now on.
    pub fn record(&self) {
        *self.record.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    }

    /// What was recorded since [`record`](Self::record), and stops recording.
    pub fn recorded(&self) -> Vec<(u64, Instant)> {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default()
    }
}

async fn consume(
    consumer: consumer::PullConsumer,
    store: Store,
    applied: Arc<AtomicU64>,
    record: Commits,
) -> anyhow::Result<()> {
    let store = Arc::new(Mutex::new(store));
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1_000)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .context("pulling from site-b's mirror")?
        .ready_chunks(256);
    while let Some(chunk) = messages.next().await {
        let mut batch = Vec::with_capacity(chunk.len());
        for m in chunk {
            match m {
                Ok(m) => batch.push(m),
                // Missed heartbeats and the like: the pull stream goes on.
                Err(e) => tracing::debug!("the store's consumer: {e}"),
            }
        }
        let mut items = Vec::with_capacity(batch.len());
        for m in &batch {
            let seq = m
                .info()
                .map_err(|e| anyhow::anyhow!("a mirror message without stream info: {e}"))?
                .stream_sequence;
            items.push((seq, m.subject.to_string(), m.payload.clone()));
        }
        let store = Arc::clone(&store);
        let top = tokio::task::spawn_blocking(move || {
            store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .apply(&items)
        })
        .await
        .context("the store's writer panicked")??;
        let at = Instant::now();
        for m in &batch {
            m.ack()
                .await
                .map_err(|e| anyhow::anyhow!("acking on site-b: {e}"))?;
        }
        applied.fetch_max(top, Ordering::AcqRel);
        if let Some(seen) = record.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            seen.extend(
                batch
                    .iter()
                    .filter_map(|m| Some((m.info().ok()?.stream_sequence, at))),
            );
        }
    }
    Ok(())
}

/// The SQLite file and the series ids seen so far.
struct Store {
    conn: Connection,
    series: HashMap<String, i64>,
}

impl Store {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS series (
                 id INTEGER PRIMARY KEY,
                 device TEXT NOT NULL,
                 resource TEXT NOT NULL,
                 UNIQUE (device, resource));
             CREATE TABLE IF NOT EXISTS points (
                 series INTEGER NOT NULL REFERENCES series (id),
                 t INTEGER NOT NULL,
                 v REAL NOT NULL,
                 PRIMARY KEY (series, t)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS cursor (one INTEGER PRIMARY KEY CHECK (one = 1), seq INTEGER NOT NULL);
             INSERT OR IGNORE INTO cursor VALUES (1, 0);",
        )
        .context("creating the store's schema")?;
        Ok(Self {
            conn,
            series: HashMap::new(),
        })
    }

    fn cursor(&self) -> anyhow::Result<u64> {
        let seq: i64 = self
            .conn
            .query_row("SELECT seq FROM cursor", [], |r| r.get(0))?;
        Ok(u64::try_from(seq).unwrap_or(0))
    }

    /// Writes the points of the messages past the cursor in one transaction; the new cursor.
    fn apply(&mut self, items: &[(u64, String, bytes::Bytes)]) -> anyhow::Result<u64> {
        let tx = self.conn.transaction()?;
        let cursor: i64 = tx.query_row("SELECT seq FROM cursor", [], |r| r.get(0))?;
        let mut top = u64::try_from(cursor).unwrap_or(0);
        {
            let mut insert =
                tx.prepare_cached("INSERT OR REPLACE INTO points (series, t, v) VALUES (?, ?, ?)")?;
            for (seq, subject, payload) in items {
                if *seq <= top {
                    continue;
                }
                top = *seq;
                for (device, t, v) in decode(subject, payload)? {
                    let id = match self.series.get(&device) {
                        Some(id) => *id,
                        None => {
                            tx.execute(
                                "INSERT OR IGNORE INTO series (device, resource) VALUES (?, ?)",
                                params![device, RESOURCE],
                            )?;
                            let id: i64 = tx.query_row(
                                "SELECT id FROM series WHERE device = ? AND resource = ?",
                                params![device, RESOURCE],
                                |r| r.get(0),
                            )?;
                            self.series.insert(device, id);
                            id
                        }
                    };
                    insert.execute(params![id, t, v])?;
                }
            }
        }
        tx.execute(
            "UPDATE cursor SET seq = ?",
            [i64::try_from(top).unwrap_or(i64::MAX)],
        )?;
        tx.commit()?;
        Ok(top)
    }
}

/// The points of one message: a JSON array of `[device, t, v]` on the batch subject, or one
/// 16-byte point on `west.<device>`.
pub fn decode(subject: &str, payload: &[u8]) -> anyhow::Result<Vec<(String, i64, f64)>> {
    if subject == super::nats::BATCH_SUBJECT {
        return serde_json::from_slice(payload).with_context(|| format!("a batch on {subject}"));
    }
    let device = subject
        .strip_prefix("west.")
        .with_context(|| format!("a point on {subject}"))?;
    anyhow::ensure!(
        payload.len() == 16,
        "a {}-byte point on {subject}",
        payload.len()
    );
    let t = i64::from_le_bytes(payload[..8].try_into()?);
    let v = f64::from_le_bytes(payload[8..].try_into()?);
    Ok(vec![(device.to_owned(), t, v)])
}

/// Points queryable in the store at `db`, counted once at the end.
pub fn count(db: &Path) -> anyhow::Result<u64> {
    let conn = Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    let n: i64 = conn.query_row("SELECT count(*) FROM points", [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Where the store of site-b lives in the baseline's temp dir.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("site-b-store").join("points.db")
}
