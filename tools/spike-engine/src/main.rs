//! The storage-engine spike of issue 11: the store's time-series write path, run against
//! SQLite (as `crates/store` runs it) and against fjall (an embedded LSM-tree), with the same
//! bytes going into both.
//!
//! The workload is the benchmark's (`west bench`): `--points` points over `--devices`
//! devices, one a second per device, one `number` resource, in requests of 1,000 points.
//!
//! ```text
//!  request ─▶ codec-encoded (the wire codec, zstd) ─▶ one log row at the next position
//!             every --group requests: one commit (durable against kill -9: SQLite's WAL with
//!             synchronous=NORMAL, fjall's journal flushed to the OS; --sync-full: fsync)
//!  every 65,536 points: fold ─▶ one block per series and hour (≤ 1,024 points, the codec),
//!             `latest` per series, the folded log rows deleted, in one commit
//! ```
//!
//! Each engine runs in a child process of its own (so that its peak RSS is its own); the
//! parent prints one row per engine: points/s, seconds spent inside the engine's calls,
//! bytes written to disk per point (`write_bytes` of `/proc/self/io`, as `west bench`
//! reads it), stored bytes per point (the data directory at the end) and peak RSS (VmHWM).
//! Before it reports, a child checks that every point is in a block or in the unfolded tail
//! and that the log holds exactly the unfolded requests.
//!
//! Deliberately absent: reads, the outbox, the registry. What differs between the engines
//! on this path is how a commit of a small log row and a fold reach the disk; encoding is
//! the same code for both (and counted in points/s, not in the engine's seconds). Block
//! generations are kept in memory for both (the store asks SQLite for them).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use proto::model::{Identity, ResourceName, Value};
use proto::sync::{Point, Record, codec};

const T0: i64 = 1_700_000_000_000_000;
const PER_REQUEST: u64 = 1_000;
/// Points of the tail that trigger a fold (the store's `fold_points`).
const FOLD_POINTS: usize = 65_536;
/// A block's time bucket (the store's `BUCKET_US`).
const BUCKET_US: i64 = 3_600_000_000;
/// Most points in one block (the store's `MAX_BLOCK_POINTS`).
const MAX_BLOCK_POINTS: usize = 1024;
/// The page cache of SQLite's write connection and fjall's block cache, MiB.
const CACHE_MIB: u64 = 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum EngineKind {
    Sqlite,
    Fjall,
}

impl EngineKind {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Fjall => "fjall",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "sqlite" => Ok(Self::Sqlite),
            "fjall" => Ok(Self::Fjall),
            _ => bail!("unknown engine {s:?}: sqlite or fjall"),
        }
    }
}

struct Args {
    points: u64,
    devices: u64,
    /// Requests per commit: 1 is a lone client, 4 the benchmark's four clients under group
    /// commit.
    group: u64,
    sync_full: bool,
    /// Set in a child: the engine to run and its directory.
    engine: Option<(EngineKind, PathBuf)>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        points: 2_000_000,
        devices: 1_000,
        group: 1,
        sync_full: false,
        engine: None,
    };
    let mut it = std::env::args().skip(1);
    let mut engine = None;
    let mut dir = None;
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--points" => args.points = value()?.parse().context("--points")?,
            "--devices" => args.devices = value()?.parse().context("--devices")?,
            "--group" => args.group = value()?.parse().context("--group")?,
            "--sync-full" => args.sync_full = true,
            "--engine" => engine = Some(EngineKind::parse(&value()?)?),
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--help" | "-h" => {
                println!(
                    "spike-engine [--points N (2000000)] [--devices N (1000)] \
                     [--group REQUESTS_PER_COMMIT (1)] [--sync-full]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other:?} (try --help)"),
        }
    }
    ensure!(
        args.points > 0 && args.devices > 0 && args.group > 0,
        "counts must be positive"
    );
    args.engine = match (engine, dir) {
        (Some(e), Some(d)) => Some((e, d)),
        (None, None) => None,
        _ => bail!("--engine and --dir go together (the parent passes them)"),
    };
    Ok(args)
}

/// One block of a fold: the store's `point_blocks` row.
struct Block {
    bucket: i64,
    device: i64,
    resource: i64,
    generation: i64,
    t_min: i64,
    t_max: i64,
    n: i64,
    data: Vec<u8>,
}

/// What one fold writes besides deleting the folded log rows.
struct Fold {
    blocks: Vec<Block>,
    latest: Vec<(i64, i64, i64, f64)>,
}

/// The write path of the store over one engine.
trait Engine {
    /// Appends a log row at `pos`; durable at the next [`Engine::commit`].
    fn append(&mut self, pos: u64, data: Vec<u8>) -> anyhow::Result<()>;
    /// Makes everything appended durable, as the store's commit does.
    fn commit(&mut self) -> anyhow::Result<()>;
    /// Writes a fold and deletes the log rows `first..=last` in one durable commit.
    fn fold(&mut self, fold: Fold, first: u64, last: u64) -> anyhow::Result<()>;
    /// Points in blocks, and log rows (for the check before reporting).
    fn counts(&mut self) -> anyhow::Result<(u64, u64)>;
}

struct Sqlite {
    conn: rusqlite::Connection,
    in_tx: bool,
    restart_due: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

/// WAL pages past which a fully copied WAL is restarted (the store's `WAL_RESTART_PAGES`).
const WAL_RESTART_PAGES: i64 = 4_096;

impl Sqlite {
    fn open(dir: &Path, sync_full: bool) -> anyhow::Result<Self> {
        let path = dir.join("spike.db");
        let connect = |cache_mib: u64| -> anyhow::Result<rusqlite::Connection> {
            let conn = rusqlite::Connection::open(&path).context("opening SQLite")?;
            conn.execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; PRAGMA temp_store = MEMORY;
                 PRAGMA cache_size = -{};",
                if sync_full { "FULL" } else { "NORMAL" },
                cache_mib * 1024
            ))?;
            Ok(conn)
        };
        let conn = connect(CACHE_MIB)?;
        // As the store: checkpoints on their own thread, passive, at most every 100 ms.
        conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = 16384; PRAGMA journal_size_limit = {};
             CREATE TABLE point_batches (pos INTEGER PRIMARY KEY, data BLOB NOT NULL);
             CREATE TABLE point_blocks (
                 bucket INTEGER NOT NULL, device INTEGER NOT NULL, resource INTEGER NOT NULL,
                 gen INTEGER NOT NULL, t_min INTEGER NOT NULL, t_max INTEGER NOT NULL,
                 n INTEGER NOT NULL, data BLOB NOT NULL,
                 PRIMARY KEY (bucket, device, resource, gen)) WITHOUT ROWID;
             CREATE TABLE series_buckets (
                 device INTEGER NOT NULL, resource INTEGER NOT NULL, bucket INTEGER NOT NULL,
                 PRIMARY KEY (device, resource, bucket)) WITHOUT ROWID;
             CREATE TABLE latest (
                 device INTEGER NOT NULL, resource INTEGER NOT NULL, t INTEGER NOT NULL, v,
                 PRIMARY KEY (device, resource)) WITHOUT ROWID;",
            WAL_RESTART_PAGES * 4096
        ))
        .context("creating the schema")?;
        let checkpoints = connect(1)?;
        let restart_due = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let checkpointer = std::thread::spawn({
            let (restart_due, stop) = (Arc::clone(&restart_due), Arc::clone(&stop));
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let pages = checkpoints.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    });
                    if let Ok((log, copied)) = pages
                        && log >= WAL_RESTART_PAGES
                        && copied == log
                    {
                        restart_due.store(true, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Ok(Self {
            conn,
            in_tx: false,
            restart_due,
            stop,
            checkpointer: Some(checkpointer),
        })
    }

    fn begin(&mut self) -> anyhow::Result<()> {
        if !self.in_tx {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.in_tx = true;
        }
        Ok(())
    }
}

impl Engine for Sqlite {
    fn append(&mut self, pos: u64, data: Vec<u8>) -> anyhow::Result<()> {
        self.begin()?;
        self.conn
            .prepare_cached("INSERT INTO point_batches (pos, data) VALUES (?1, ?2)")?
            .execute(rusqlite::params![pos as i64, data])?;
        Ok(())
    }

    fn commit(&mut self) -> anyhow::Result<()> {
        if self.in_tx {
            self.conn.execute_batch("COMMIT")?;
            self.in_tx = false;
        }
        if self.restart_due.swap(false, Ordering::Relaxed) {
            self.conn
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))?;
        }
        Ok(())
    }

    fn fold(&mut self, fold: Fold, first: u64, last: u64) -> anyhow::Result<()> {
        self.begin()?;
        {
            let mut insert = self.conn.prepare_cached(
                "INSERT INTO point_blocks (bucket, device, resource, gen, t_min, t_max, n, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut bucket_row = self.conn.prepare_cached(
                "INSERT OR IGNORE INTO series_buckets (device, resource, bucket) VALUES (?1, ?2, ?3)",
            )?;
            for b in &fold.blocks {
                insert.execute(rusqlite::params![
                    b.bucket,
                    b.device,
                    b.resource,
                    b.generation,
                    b.t_min,
                    b.t_max,
                    b.n,
                    b.data
                ])?;
                bucket_row.execute(rusqlite::params![b.device, b.resource, b.bucket])?;
            }
            let mut latest = self.conn.prepare_cached(
                "INSERT INTO latest (device, resource, t, v) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (device, resource) DO UPDATE SET t = excluded.t, v = excluded.v
                 WHERE excluded.t >= latest.t",
            )?;
            for (d, r, t, v) in &fold.latest {
                latest.execute(rusqlite::params![d, r, t, v])?;
            }
            self.conn
                .prepare_cached("DELETE FROM point_batches WHERE pos BETWEEN ?1 AND ?2")?
                .execute(rusqlite::params![first as i64, last as i64])?;
        }
        self.commit()
    }

    fn counts(&mut self) -> anyhow::Result<(u64, u64)> {
        let blocks: i64 =
            self.conn
                .query_row("SELECT COALESCE(SUM(n), 0) FROM point_blocks", [], |r| {
                    r.get(0)
                })?;
        let rows: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM point_batches", [], |r| r.get(0))?;
        Ok((blocks as u64, rows as u64))
    }
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
    }
}

struct Fjall {
    db: fjall::Database,
    log: fjall::Keyspace,
    blocks: fjall::Keyspace,
    latest: fjall::Keyspace,
    batch: Option<fjall::OwnedWriteBatch>,
    mode: fjall::PersistMode,
}

impl Fjall {
    fn open(dir: &Path, sync_full: bool) -> anyhow::Result<Self> {
        let db = fjall::Database::builder(dir)
            .cache_size(CACHE_MIB * 1024 * 1024)
            .open()
            .context("opening fjall")?;
        let ks = |name: &str| {
            db.keyspace(name, fjall::KeyspaceCreateOptions::default)
                .with_context(|| format!("opening keyspace {name}"))
        };
        Ok(Self {
            log: ks("point_batches")?,
            blocks: ks("point_blocks")?,
            latest: ks("latest")?,
            batch: None,
            // Buffer: written to the OS, which survives kill -9 as SQLite's NORMAL does.
            mode: if sync_full {
                fjall::PersistMode::SyncAll
            } else {
                fjall::PersistMode::Buffer
            },
            db,
        })
    }

    fn batch(&mut self) -> &mut fjall::OwnedWriteBatch {
        self.batch.get_or_insert_with(|| self.db.batch())
    }
}

/// Big-endian keys sort as the numbers do (every number here is positive).
fn key(parts: &[i64]) -> Vec<u8> {
    parts.iter().flat_map(|p| p.to_be_bytes()).collect()
}

impl Engine for Fjall {
    fn append(&mut self, pos: u64, data: Vec<u8>) -> anyhow::Result<()> {
        let log = self.log.clone();
        self.batch().insert(&log, key(&[pos as i64]), data);
        Ok(())
    }

    fn commit(&mut self) -> anyhow::Result<()> {
        if let Some(batch) = self.batch.take() {
            batch.durability(Some(self.mode)).commit()?;
        }
        Ok(())
    }

    fn fold(&mut self, fold: Fold, first: u64, last: u64) -> anyhow::Result<()> {
        let (log, blocks, latest) = (self.log.clone(), self.blocks.clone(), self.latest.clone());
        let batch = self.batch();
        for b in fold.blocks {
            let mut value = key(&[b.t_min, b.t_max, b.n]);
            value.extend_from_slice(&b.data);
            batch.insert(
                &blocks,
                key(&[b.bucket, b.device, b.resource, b.generation]),
                value,
            );
        }
        for (d, r, t, v) in fold.latest {
            let mut value = key(&[t]);
            value.extend_from_slice(&v.to_le_bytes());
            batch.insert(&latest, key(&[d, r]), value);
        }
        for pos in first..=last {
            batch.remove(&log, key(&[pos as i64]));
        }
        self.commit()
    }

    fn counts(&mut self) -> anyhow::Result<(u64, u64)> {
        let mut points = 0u64;
        for item in self.blocks.iter() {
            let value = item.value()?;
            let n: [u8; 8] = value
                .get(16..24)
                .and_then(|b| b.try_into().ok())
                .context("a block value without its count")?;
            points += i64::from_be_bytes(n) as u64;
        }
        Ok((points, self.log.len()? as u64))
    }
}

/// The same value the benchmark writes (`bench::ingest::sensor_value`).
fn sensor_value(d: u64, i: u64) -> f64 {
    let phase = d as f64 * 0.37;
    let v = 20.0 + 5.0 * ((i as f64) / 600.0 + phase).sin() + ((i * 7 + d * 13) % 11) as f64 * 0.01;
    (v * 100.0).round() / 100.0
}

/// The unfolded points: per device, by time (one resource).
#[derive(Default)]
struct Tail {
    series: HashMap<i64, BTreeMap<i64, f64>>,
    points: usize,
    /// Log positions the tail holds.
    first: Option<u64>,
    last: u64,
}

/// Encodes the tail as the store's compactor does: per series and hour, ≤ 1,024 points a
/// block, placeholder names (the block's key names the series).
fn encode_fold(
    tail: &Tail,
    encoder: &mut codec::Encoder,
    generations: &mut HashMap<(i64, i64), i64>,
) -> anyhow::Result<Fold> {
    let (nobody, nothing) = (Identity::parse("_")?, ResourceName::parse("_")?);
    let mut devices: Vec<_> = tail.series.iter().collect();
    devices.sort_by_key(|(d, _)| **d);
    let mut fold = Fold {
        blocks: Vec::new(),
        latest: Vec::new(),
    };
    let resource = 1;
    for (&device, points) in devices {
        let mut iter = points.iter().peekable();
        while let Some(&(&t0, _)) = iter.peek() {
            let bucket = t0.div_euclid(BUCKET_US);
            let mut records = Vec::new();
            while let Some(&(&t, &v)) = iter.peek() {
                if t.div_euclid(BUCKET_US) != bucket || records.len() >= MAX_BLOCK_POINTS {
                    break;
                }
                records.push(Record::Point(Point {
                    device: nobody.clone(),
                    resource: nothing.clone(),
                    t,
                    value: Value::Number(v),
                }));
                iter.next();
            }
            let (t_min, t_max) = match (records.first(), records.last()) {
                (Some(Record::Point(a)), Some(Record::Point(b))) => (a.t, b.t),
                _ => continue,
            };
            let generation = generations.entry((bucket, device)).or_insert(0);
            *generation += 1;
            fold.blocks.push(Block {
                bucket,
                device,
                resource,
                generation: *generation,
                t_min,
                t_max,
                n: records.len() as i64,
                data: encoder.encode(&records)?,
            });
        }
        if let Some((t, v)) = points.last_key_value() {
            fold.latest.push((device, resource, *t, *v));
        }
    }
    Ok(fold)
}

/// What a child reports, one line of `key=value` pairs on stdout.
struct Outcome {
    secs: f64,
    engine_secs: f64,
    disk_written: u64,
    stored: u64,
    peak_rss_kib: u64,
}

fn run_engine(args: &Args, kind: EngineKind, dir: &Path) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(dir)?;
    let mut engine: Box<dyn Engine> = match kind {
        EngineKind::Sqlite => Box::new(Sqlite::open(dir, args.sync_full)?),
        EngineKind::Fjall => Box::new(Fjall::open(dir, args.sync_full)?),
    };
    let names: Vec<Identity> = (0..args.devices)
        .map(|d| Identity::parse(&format!("sensor-{d:05}")))
        .collect::<Result<_, _>>()?;
    let resource = ResourceName::parse("temperature")?;
    let mut encoder = codec::Encoder::new();
    let mut generations = HashMap::new();
    let mut tail = Tail::default();
    let mut in_engine = Duration::ZERO;
    let mut timed = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<()> {
        let at = Instant::now();
        f()?;
        in_engine += at.elapsed();
        Ok(())
    };
    let written_before = disk_written()?;
    let started = Instant::now();
    let requests = args.points.div_ceil(PER_REQUEST);
    for pos in 1..=requests {
        let first = (pos - 1) * PER_REQUEST;
        let n = PER_REQUEST.min(args.points - first);
        let mut records = Vec::with_capacity(n as usize);
        for p in first..first + n {
            let (d, step) = (p % args.devices, p / args.devices);
            let t = T0 + step as i64 * 1_000_000;
            let v = sensor_value(d, step);
            records.push(Record::Point(Point {
                device: names[d as usize].clone(),
                resource: resource.clone(),
                t,
                value: Value::Number(v),
            }));
            if tail
                .series
                .entry(d as i64)
                .or_default()
                .insert(t, v)
                .is_none()
            {
                tail.points += 1;
            }
        }
        let mut data = Some(encoder.encode(&records)?);
        timed(&mut || engine.append(pos, data.take().context("one append")?))?;
        tail.first.get_or_insert(pos);
        tail.last = pos;
        if pos % args.group == 0 || pos == requests {
            timed(&mut || engine.commit())?;
        }
        if tail.points >= FOLD_POINTS {
            timed(&mut || engine.commit())?;
            let fold = encode_fold(&tail, &mut encoder, &mut generations)?;
            let (a, b) = (tail.first.unwrap_or(pos), tail.last);
            let mut fold = Some(fold);
            timed(&mut || engine.fold(fold.take().context("one fold")?, a, b))?;
            tail = Tail::default();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let disk = disk_written()? - written_before;
    let stored = dir_size(dir)?;
    let (folded, rows) = engine.counts()?;
    ensure!(
        folded + tail.points as u64 == args.points,
        "{}: {folded} points in blocks and {} in the tail, not {}",
        kind.name(),
        tail.points,
        args.points
    );
    let unfolded = tail.first.map_or(0, |f| tail.last - f + 1);
    ensure!(
        rows == unfolded,
        "{}: {rows} log rows, but {unfolded} requests are unfolded",
        kind.name()
    );
    Ok(Outcome {
        secs,
        engine_secs: in_engine.as_secs_f64(),
        disk_written: disk,
        stored,
        peak_rss_kib: peak_rss_kib()?,
    })
}

/// `write_bytes` of `/proc/self/io`: bytes this process caused to be written to storage.
fn disk_written() -> anyhow::Result<u64> {
    let io = std::fs::read_to_string("/proc/self/io").context("reading /proc/self/io")?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no write_bytes in /proc/self/io")
}

/// VmHWM of `/proc/self/status`, KiB.
fn peak_rss_kib() -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")
}

fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let Some((kind, dir)) = &args.engine {
        let o = run_engine(&args, *kind, dir)?;
        println!(
            "secs={} engine_secs={} disk_written={} stored={} peak_rss_kib={}",
            o.secs, o.engine_secs, o.disk_written, o.stored, o.peak_rss_kib
        );
        return Ok(());
    }
    let scratch = std::env::temp_dir().join(format!("spike-engine-{}", std::process::id()));
    let exe = std::env::current_exe()?;
    println!(
        "{} points, {} devices, {} request(s) a commit, {}",
        args.points,
        args.devices,
        args.group,
        if args.sync_full {
            "fsync every commit"
        } else {
            "no fsync (kill -9 safe)"
        }
    );
    println!(
        "| engine | points/s | s in engine | disk written B/point | stored B/point | peak RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for kind in [EngineKind::Sqlite, EngineKind::Fjall] {
        let dir = scratch.join(kind.name());
        let mut cmd = Command::new(&exe);
        cmd.args(["--points", &args.points.to_string()])
            .args(["--devices", &args.devices.to_string()])
            .args(["--group", &args.group.to_string()])
            .args(["--engine", kind.name()])
            .arg("--dir")
            .arg(&dir);
        if args.sync_full {
            cmd.arg("--sync-full");
        }
        let out = cmd.output().context("running a child")?;
        let _ = std::fs::remove_dir_all(&dir);
        ensure!(
            out.status.success(),
            "{} failed: {}",
            kind.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| -> anyhow::Result<f64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {name} in {line:?}"))
        };
        let points = args.points as f64;
        println!(
            "| {} | {:.0} | {:.2} | {:.1} | {:.2} | {:.1} |",
            kind.name(),
            points / field("secs")?,
            field("engine_secs")?,
            field("disk_written")? / points,
            field("stored")? / points,
            field("peak_rss_kib")? / 1024.0
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
