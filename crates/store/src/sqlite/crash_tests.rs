//! `kill -9` of a process while its writer is inside a fold of the point log (on a
//! standalone connector, and on a paired Source, whose points' log is the outbox's records,
//! one row per request), and while it is inside a sync apply: reopened, the store has every
//! acknowledged point, nothing twice, and nothing of the interrupted transaction; the
//! Source's outbox holds every acknowledged point once, under gap-free seqs.
//!
//! The test re-runs its own binary as the child (the ignored test [`crash_child`]), which
//! stops at a failpoint inside the transaction (it creates a marker file and waits there),
//! so the parent kills it exactly there instead of at a random instant.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use proto::model::{DeviceState, Format, Value};
use proto::sync::{Apply, Point as SyncPoint, Record};
use serde_json::json;

use super::fixtures::*;
use super::{SqliteConfig, SqliteStore};
use crate::*;

/// The child's data directory; its presence makes [`crash_child`] the child.
const CHILD_DIR: &str = "WEST_STORE_CRASH_DIR";
/// `fold:N` or `apply:N`: where the child stops, at the N-th pass.
const FAILPOINT: &str = "WEST_STORE_FAILPOINT";
/// Set: the child's connector is a paired Source and `n` is remote-synced.
const PAIRED: &str = "WEST_STORE_CRASH_PAIRED";
/// Points per batch, and how many of them rewrite the previous batch's timestamps.
const BATCH: i64 = 300;
const OVERLAP: i64 = 50;

static HITS: AtomicU32 = AtomicU32::new(0);

/// Called inside the writer's transaction at `name`: in the child whose failpoint it is (at
/// its N-th pass), announces itself with a marker file and waits to be killed.
pub(super) fn failpoint(name: &str) {
    let Ok(spec) = std::env::var(FAILPOINT) else {
        return;
    };
    let Some((at, n)) = spec.split_once(':') else {
        return;
    };
    if at != name {
        return;
    }
    let hit = HITS.fetch_add(1, Ordering::SeqCst) + 1;
    if n.parse::<u32>().ok() != Some(hit) {
        return;
    }
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let _ = std::fs::write(Path::new(&dir).join("stopped"), name);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

async fn open(dir: &Path) -> SqliteStore {
    let mut config = SqliteConfig::new(dir.join("site.db"));
    config.fold_points = 1_000;
    SqliteStore::open(config).unwrap()
}

async fn setup(store: &SqliteStore, paired: bool) {
    create_plant(store).await;
    store
        .create_resource(
            &cid(),
            NewResource {
                name: name("n"),
                format: Format::Integer,
                unit: None,
                settable: false,
                remote_sync: paired,
                created_at: 1,
            },
        )
        .await
        .unwrap();
    store
        .create_device(
            &cid(),
            NewDevice {
                identity: id("d"),
                tags: Default::default(),
                permissions: vec![],
                state: DeviceState::Provisioned,
                token: [9; 32],
                created_at: 1,
            },
            &admin(),
        )
        .await
        .unwrap();
    if paired {
        store.open_pairing(&cid(), "CODE", i64::MAX).await.unwrap();
        let peer = Peer {
            site: "b".into(),
            connector_id: proto::model::ConnectorId::parse("abcdefghijklmn").unwrap(),
        };
        store
            .complete_pairing(&cid(), peer, keys(), 1)
            .await
            .unwrap();
    }
}

/// Timestamps of batch `i`: it rewrites the last [`OVERLAP`] of batch `i - 1`.
fn batch_times(i: i64) -> std::ops::Range<i64> {
    (i * BATCH - OVERLAP).max(0)..i * BATCH + BATCH - OVERLAP
}

/// What batches `0..n` leave: each `t` holds the number of the last batch that wrote it.
fn expected(n: i64) -> BTreeMap<i64, i64> {
    let mut m = BTreeMap::new();
    for i in 0..n {
        for t in batch_times(i) {
            m.insert(t, i);
        }
    }
    m
}

fn apply_batch(i: i64) -> Inbound {
    let first = u64::try_from(i * BATCH).unwrap() + 1;
    Inbound::Records(Apply {
        opens: false,
        first_seq: first,
        last_seq: first + u64::try_from(BATCH).unwrap() - 1,
        records: batch_times(i)
            .map(|t| {
                Record::Point(SyncPoint {
                    device: id("d"),
                    resource: name("n"),
                    t,
                    value: Value::Integer(i),
                })
            })
            .collect(),
    })
}

/// The child: writes batches (ingest or apply, by its failpoint), printing the number of
/// each acknowledged one, until the failpoint stops it.
#[tokio::test]
#[ignore = "the child process of the kill -9 tests"]
async fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let apply = std::env::var(FAILPOINT).is_ok_and(|f| f.starts_with("apply"));
    let store = open(Path::new(&dir)).await;
    setup(&store, std::env::var(PAIRED).is_ok()).await;
    for i in 0.. {
        if apply {
            store
                .sync_apply(&cid(), vec![apply_batch(i)], 1)
                .await
                .unwrap();
        } else {
            let batch = batch_times(i)
                .map(|t| PointsIn {
                    identity: id("d"),
                    t,
                    values: vec![(name("n"), json!(i))],
                })
                .collect();
            store.ingest(&cid(), batch).await.unwrap();
        }
        println!("acked {i}");
    }
}

/// Runs the child until its failpoint, kills it there; returns the highest batch it
/// reported acknowledged.
fn run_child_until(dir: &Path, failpoint: &str, paired: bool) -> i64 {
    let mut command = Command::new(std::env::current_exe().unwrap());
    if paired {
        command.env(PAIRED, "1");
    }
    let mut child = command
        .args([
            "sqlite::crash_tests::crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir)
        .env(FAILPOINT, failpoint)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let marker = dir.join("stopped");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the child never reached {failpoint}"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the child ended ({status}) before reaching {failpoint}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    out.lines()
        .map_while(|l| l.ok())
        .filter_map(|l| l.strip_prefix("acked ").and_then(|n| n.parse().ok()))
        .max()
        .expect("the child acknowledged nothing before its failpoint")
}

async fn stored(store: &SqliteStore) -> BTreeMap<i64, i64> {
    let q = RangeQuery {
        since: 0,
        until: i64::MAX,
        after: None,
        limit: 1_000_000,
        order: Order::Asc,
    };
    let points = store.points(&cid(), &id("d"), &name("n"), q).await.unwrap();
    let n = points.len();
    let map: BTreeMap<i64, i64> = points
        .into_iter()
        .map(|p| match p.v {
            Value::Integer(v) => (p.t, v),
            other => panic!("unexpected value {other:?}"),
        })
        .collect();
    assert_eq!(map.len(), n, "a timestamp read twice");
    map
}

/// The batches the store holds: all of `0..=acked`, possibly the one after (committed, its
/// answer lost with the process), never part of one.
fn assert_batches(got: &BTreeMap<i64, i64>, acked: i64) -> i64 {
    for n in [acked + 1, acked + 2] {
        if *got == expected(n) {
            return n;
        }
    }
    panic!(
        "after {acked} acknowledged batches the store holds {} points, neither {} nor {}",
        got.len(),
        expected(acked + 1).len(),
        expected(acked + 2).len()
    );
}

#[tokio::test]
async fn kill9_inside_a_fold_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The third fold: blocks from the first two exist, the log is being folded again.
    let acked = run_child_until(dir.path(), "fold:3", false);
    let store = open(dir.path()).await;
    let n = assert_batches(&stored(&store).await, acked);
    // Folding what the interrupted fold could not changes nothing either.
    store.fold().await.unwrap();
    assert_eq!(stored(&store).await, expected(n));
}

#[tokio::test]
async fn kill9_inside_an_apply_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let acked = run_child_until(dir.path(), "apply:12", false);
    let store = open(dir.path()).await;
    let n = assert_batches(&stored(&store).await, acked);
    // The cursor matches what is stored: the next batch continues it, exactly once.
    let cursor = store.sync_state(&cid()).await.unwrap().applied;
    assert_eq!(cursor, u64::try_from(n * BATCH).unwrap());
    store
        .sync_apply(&cid(), vec![apply_batch(n)], 2)
        .await
        .unwrap();
    assert_eq!(stored(&store).await, expected(n + 1));
}

/// On a paired Source the points' log is the outbox (one row per request): killed inside
/// the install of a fold, which marks records folded, the store reopens with every
/// acknowledged batch in its series and in its outbox, each point once, under gap-free
/// seqs after the device's snapshot, and a fold of the rest changes nothing.
#[tokio::test]
async fn kill9_inside_a_fold_on_a_paired_source_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let acked = run_child_until(dir.path(), "fold:2", true);
    let store = open(dir.path()).await;
    let n = assert_batches(&stored(&store).await, acked);
    let snapshot = 1;
    let head = store.outbox_head(&cid()).await.unwrap();
    let points: usize = (0..n).map(|i| batch_times(i).count()).sum();
    assert_eq!(head, snapshot + points as u64);
    let OutboxChunk::Records(records) = store
        .outbox_read(&cid(), snapshot + 1, 1_000_000)
        .await
        .unwrap()
    else {
        panic!("nothing was lost");
    };
    let queued: Vec<(i64, Value)> = records
        .into_iter()
        .map(|r| match r {
            Record::Point(p) => (p.t, p.value),
            other => panic!("unexpected record {other:?}"),
        })
        .collect();
    let sent: Vec<(i64, Value)> = (0..n)
        .flat_map(|i| batch_times(i).map(move |t| (t, Value::Integer(i))))
        .collect();
    assert_eq!(queued, sent);
    store.fold().await.unwrap();
    assert_eq!(stored(&store).await, expected(n));
}
