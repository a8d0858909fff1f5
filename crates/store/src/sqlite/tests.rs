//! Unit tests of the SQLite store, mostly through the `Store` trait (the model proptest and
//! the kill -9 tests have their own modules).

use super::fixtures::{admin, create_plant};
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
            &admin(),
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

/// Every sort of the device list, paged forwards and backwards in small pages, gives each
/// device once in the order of `sort_key` then identity; last seen counts folded and unfolded
/// points (whichever is newer), and every filter's count is what its pages hold.
#[tokio::test]
async fn device_lists_sort_page_both_ways_and_count_their_filters() {
    let (_dir, store) = fixture().await;
    let dev = |i: usize| Identity::parse(&format!("s{i:02}")).unwrap();
    for i in 0..13 {
        store
            .create_device(
                &cid(),
                NewDevice {
                    identity: dev(i),
                    tags: [("even".to_string(), (i % 2 == 0).to_string())].into(),
                    permissions: vec![],
                    state: DeviceState::Provisioned,
                    token: [u8::try_from(i).unwrap() + 40; 32],
                    created_at: 1,
                },
                &admin(),
            )
            .await
            .unwrap();
    }
    let point = |i: usize, t: i64| PointsIn {
        identity: dev(i),
        t,
        values: vec![(ResourceName::parse("temp").unwrap(), json!(1.0))],
    };
    // Folded: s00–s07 at scattered times (two alike, so that identity breaks the tie).
    let folded: Vec<PointsIn> = (0..8)
        .map(|i| point(i, 1_000 * ((i as i64 * 5) % 7 + 1)))
        .collect();
    store.ingest(&cid(), folded).await.unwrap();
    store.fold().await.unwrap();
    // Unfolded, in the tail: s02 newer than its folded point, s04 older (the folded one
    // stays its last seen), s08 and s09 only here. s10–s12 and dev1 are never seen.
    let tail = vec![
        point(2, 9_000),
        point(4, 10),
        point(8, 500),
        point(9, 3_000),
    ];
    store.ingest(&cid(), tail).await.unwrap();
    assert!(store.tail_len() > 0);
    // Every third device locked (a locked device's data is refused, so only now).
    for i in (0..13).step_by(3) {
        let patch = DevicePatch {
            state: Some(DeviceState::Locked),
            ..DevicePatch::default()
        };
        store
            .update_device(&cid(), &dev(i), patch, &admin())
            .await
            .unwrap();
    }

    let everyone = store
        .devices(&cid(), DeviceQuery::after(None, 100))
        .await
        .unwrap();
    assert_eq!(everyone.len(), 14);
    let seen = |id: &str| {
        everyone
            .iter()
            .find(|d| d.identity.as_str() == id)
            .and_then(Device::last_seen)
    };
    assert_eq!(seen("s02"), Some(9_000));
    assert_eq!(seen("s04"), Some(7_000));
    assert_eq!(seen("s08"), Some(500));
    assert_eq!(seen("s11"), None);

    let ids = |ds: &[Device]| {
        ds.iter()
            .map(|d| d.identity.to_string())
            .collect::<Vec<_>>()
    };
    for sort in DeviceSort::ALL {
        for descending in [false, true] {
            let mut expected = everyone.clone();
            expected.sort_by_key(|d| (sort_key(d, sort), d.identity.clone()));
            if descending {
                expected.reverse();
            }
            let expected = ids(&expected);
            let query = |from: Option<ListPlace>| DeviceQuery {
                sort,
                descending,
                from,
                limit: 4,
                ..DeviceQuery::default()
            };
            let place = |d: &Device, back: bool| ListPlace {
                key: sort_key(d, sort),
                identity: d.identity.clone(),
                back,
            };
            // Forwards, page after page.
            let mut forwards = Vec::new();
            let mut from = None;
            loop {
                let page = store.devices(&cid(), query(from)).await.unwrap();
                forwards.extend(ids(&page));
                match page.last() {
                    Some(last) if page.len() == 4 => from = Some(place(last, false)),
                    _ => break,
                }
            }
            assert_eq!(forwards, expected, "{sort:?} descending {descending}");
            // Backwards from the end, each page still in list order.
            let last = everyone
                .iter()
                .find(|d| d.identity.as_str() == expected[expected.len() - 1])
                .unwrap();
            let mut backwards: Vec<String> = Vec::new();
            let mut from = Some(place(last, true));
            while let Some(f) = from.take() {
                let page = store.devices(&cid(), query(Some(f))).await.unwrap();
                let mut ids = ids(&page);
                ids.extend(backwards);
                backwards = ids;
                if page.len() == 4 {
                    from = Some(place(&page[0], true));
                }
            }
            assert_eq!(
                backwards,
                expected[..expected.len() - 1],
                "{sort:?} descending {descending}, backwards"
            );
        }
    }

    // Filters: what a filter keeps, listed and counted alike.
    async fn check(store: &SqliteStore, query: DeviceQuery, expected: &[&str]) {
        let listed = store
            .devices(
                &cid(),
                DeviceQuery {
                    limit: 100,
                    ..query.clone()
                },
            )
            .await
            .unwrap();
        let listed: Vec<String> = listed.iter().map(|d| d.identity.to_string()).collect();
        assert_eq!(listed, expected, "{query:?}");
        let counted = store.count_devices(&cid(), query.clone()).await.unwrap();
        assert_eq!(counted, expected.len() as u64, "{query:?}");
    }
    let filter = |state: Option<DeviceState>, seen: Option<SeenFilter>| DeviceQuery {
        state,
        seen,
        ..DeviceQuery::default()
    };
    check(
        &store,
        filter(None, Some(SeenFilter::Since(7_000))),
        &["s02", "s04"],
    )
    .await;
    check(
        &store,
        filter(None, Some(SeenFilter::Before(2_000))),
        &["s00", "s07", "s08"],
    )
    .await;
    check(
        &store,
        filter(None, Some(SeenFilter::Never)),
        &["dev1", "s10", "s11", "s12"],
    )
    .await;
    check(
        &store,
        filter(Some(DeviceState::Locked), Some(SeenFilter::Never)),
        &["s12"],
    )
    .await;
    check(
        &store,
        filter(Some(DeviceState::Locked), None),
        &["s00", "s03", "s06", "s09", "s12"],
    )
    .await;
    check(
        &store,
        DeviceQuery {
            tags: vec![("even".into(), "true".into())],
            prefix: Some("s0".into()),
            seen: Some(SeenFilter::Since(1)),
            ..DeviceQuery::default()
        },
        &["s00", "s02", "s04", "s06", "s08"],
    )
    .await;
}

#[tokio::test]
async fn device_filters_and_config() {
    let (_dir, store) = fixture().await;
    let q = |k: &str, v: &str| DeviceQuery {
        tags: vec![(k.into(), v.into())],
        limit: 10,
        ..DeviceQuery::default()
    };
    for (i, id) in ["dev10", "dev2", "de", "ab1"].into_iter().enumerate() {
        store
            .create_device(
                &cid(),
                NewDevice {
                    identity: Identity::parse(id).unwrap(),
                    tags: Default::default(),
                    permissions: vec![],
                    state: DeviceState::Provisioned,
                    token: [u8::try_from(i).unwrap() + 10; 32],
                    created_at: 1,
                },
                &admin(),
            )
            .await
            .unwrap();
    }
    // A prefix keeps the identities that start with it, in order, and counts them.
    let by_prefix = |p: &str| DeviceQuery {
        tags: vec![],
        prefix: Some(p.into()),
        limit: 10,
        ..DeviceQuery::default()
    };
    let ids = |ds: Vec<Device>| {
        ds.iter()
            .map(|d| d.identity.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store.devices(&cid(), by_prefix("dev1")).await.unwrap()),
        ["dev1", "dev10"]
    );
    assert_eq!(
        ids(store.devices(&cid(), by_prefix("de")).await.unwrap()),
        ["de", "dev1", "dev10", "dev2"]
    );
    assert_eq!(
        store.count_devices(&cid(), by_prefix("de")).await.unwrap(),
        4
    );
    assert_eq!(
        store.count_devices(&cid(), by_prefix("x")).await.unwrap(),
        0
    );
    assert_eq!(store.count_devices(&cid(), by_prefix("")).await.unwrap(), 5);
    assert_eq!(
        store
            .count_devices(&cid(), q("zone", "north"))
            .await
            .unwrap(),
        1
    );
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
    let d = store
        .update_device(&cid(), &dev, patch, &admin())
        .await
        .unwrap();
    assert_eq!(d.config[&mode], Value::String("eco".into()));
    let temp = ResourceName::parse("temp").unwrap();
    let patch = DevicePatch {
        config: Some([(temp.clone(), Some(json!(1)))].into()),
        ..Default::default()
    };
    let err = store
        .update_device(&cid(), &dev, patch, &admin())
        .await
        .unwrap_err();
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
    store.close().await.unwrap();
    // The layout before migration 6: points in a (device, resource, t) B-tree.
    let path = dir.path().join("site.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE point_log; DROP TABLE point_blocks; DROP TABLE series_buckets;
         DROP TABLE point_batches;
         ALTER TABLE sync_out DROP COLUMN folded;
         ALTER TABLE sync_out DROP COLUMN live_from; ALTER TABLE sync_out DROP COLUMN live_lease;
         ALTER TABLE sync_in DROP COLUMN live_from; ALTER TABLE sync_in DROP COLUMN live_to;
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

/// Log rows of the batch layout (written before the plain one) replay beside plain rows,
/// in their order: the later write of a timestamp wins across the two.
#[tokio::test]
async fn log_rows_of_either_layout_replay_in_order_and_a_broken_one_is_named() {
    let (dir, store) = fixture().await;
    store
        .ingest(&cid(), vec![points(1, json!(1.0)), points(2, json!(2.0))])
        .await
        .unwrap();
    store.close().await.unwrap();
    let path = dir.path().join("site.db");
    let conn = Connection::open(&path).unwrap();
    let (device, resource): (i64, i64) = conn
        .query_row(
            "SELECT d.id, r.id FROM devices d, resources r WHERE r.name = 'temp'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let old = |t: i64, v: f64| {
        proto::sync::Record::Point(proto::sync::Point {
            device: Identity::parse(&device.to_string()).unwrap(),
            resource: ResourceName::parse(&resource.to_string()).unwrap(),
            t,
            value: Value::Number(v),
        })
    };
    let row = proto::sync::codec::encode(&[old(2, 20.0), old(3, 3.0)]).unwrap();
    conn.execute("INSERT INTO point_batches (data) VALUES (?1)", [row])
        .unwrap();
    drop(conn);
    let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
    let dev = Identity::parse("dev1").unwrap();
    let temp = ResourceName::parse("temp").unwrap();
    let got: Vec<(i64, Value)> = store
        .points(&cid(), &dev, &temp, all())
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.t, p.v))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, Value::Number(1.0)),
            (2, Value::Number(20.0)),
            (3, Value::Number(3.0))
        ]
    );
    store.close().await.unwrap();
    // A row that does not decode: the store does not open, and says which table.
    let conn = Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO point_batches (data) VALUES (?1)",
        [vec![proto::sync::codec::PLAIN_MARK, 5]],
    )
    .unwrap();
    drop(conn);
    let e = SqliteStore::open(SqliteConfig::new(&path))
        .err()
        .expect("a broken log row");
    assert!(e.to_string().contains("reading the point log"), "{e}");
}

/// Bytes this process wrote to disk (`/proc/self/io` `write_bytes`).
/// The test process's peak resident set (`VmHWM` of /proc/self/status).
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .to_owned()
}

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
    let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")).unwrap();
    let store = Arc::new(SqliteStore::open(SqliteConfig::new(dir.path().join("site.db"))).unwrap());
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
                &admin(),
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
    // More with WEST_STORE_DISK_ROUNDS (a longer run fills the page caches).
    let rounds: i64 = std::env::var("WEST_STORE_DISK_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
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
    let outbox = store.sync_state(&cid()).await.unwrap().outbox_bytes;
    println!(
        "disk_bytes_per_point ({}): {:.1} B/point ({} bytes, {} points, {:.0} points/s, peak RSS {}, outbox {:.1} B/point)",
        if paired {
            "paired Source, outbox"
        } else {
            "standalone, point log"
        },
        written as f64 / points,
        written,
        points,
        points / started.elapsed().as_secs_f64(),
        peak_rss(),
        outbox as f64 / points,
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
    store.close().await.unwrap();
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
    store.close().await.unwrap();
    let store = SqliteStore::open(SqliteConfig::new(dir)).unwrap();
    assert_eq!(values(&store).await, want);
}

/// Another process holding the database's write lock past the busy timeout: the writes
/// waiting for it are refused with the lock error (not "the store is shut down"), store
/// nothing, and the store writes again once the lock is released.
#[tokio::test]
async fn a_database_locked_by_another_process_refuses_writes_with_that_error() {
    let (dir, store) = fixture().await;
    let other = Connection::open(dir.path().join("site.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = store
        .ingest(&cid(), vec![points(5, json!(1))])
        .await
        .unwrap_err();
    let StoreError::Backend { op, source } = &err else {
        panic!("expected the lock error, got {err}");
    };
    assert_eq!(*op, "beginning a write transaction");
    let sql = source.downcast_ref::<rusqlite::Error>().unwrap();
    assert_eq!(
        sql.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy),
        "{err}"
    );
    assert!(err.to_string().contains("database is locked"), "{err}");
    other.execute_batch("ROLLBACK").unwrap();
    store
        .ingest(&cid(), vec![points(6, json!(2))])
        .await
        .unwrap();
    assert_eq!(values(&store).await, vec![(6, 2.0)]);
}

/// Retention of stored points drops whole hours of folded blocks with two range deletes on
/// the bucket (the plan says so: no look at each series), keeps the hour that `before` falls
/// in, the unfolded tail (even of an expired hour, until a pass after its fold) and the
/// series' latest value.
#[tokio::test]
async fn retention_drops_whole_hours_of_blocks_by_range_and_keeps_the_tail() {
    const HOUR: i64 = series::BUCKET_US;
    let (dir, store) = fixture().await;
    // Three hours of one series, 10 points each, folded.
    for hour in 0..3 {
        ingest_at(&store, hour * HOUR..hour * HOUR + 10, hour as f64).await;
    }
    store.fold().await.unwrap();
    // One more point of the first hour, not folded yet.
    ingest_at(&store, 20..21, 9.0).await;

    let before = 2 * HOUR + HOUR / 2;
    let expiry = store.points_expire(before).await.unwrap();
    assert_eq!(
        expiry,
        PointsExpiry {
            partitions: 2,
            points: 20
        }
    );
    let mut expected: Vec<(i64, f64)> = vec![(20, 9.0)];
    expected.extend((2 * HOUR..2 * HOUR + 10).map(|t| (t, 2.0)));
    assert_eq!(values(&store).await, expected);
    let dev = store
        .device(&cid(), &Identity::parse("dev1").unwrap())
        .await;
    let latest = &dev.unwrap().values[&ResourceName::parse("temp").unwrap()];
    assert_eq!(latest.t, 2 * HOUR + 9);

    // Folded now, the tail's point of the first hour goes with the next pass.
    store.fold().await.unwrap();
    let expiry = store.points_expire(before).await.unwrap();
    assert_eq!(
        expiry,
        PointsExpiry {
            partitions: 1,
            points: 1
        }
    );
    assert_eq!(values(&store).await, expected[1..]);
    assert_eq!(
        store.points_expire(before).await.unwrap(),
        PointsExpiry::default()
    );

    // Both deletes are range deletes on the bucket.
    let conn = Connection::open(dir.path().join("site.db")).unwrap();
    for (sql, uses) in [
        (
            "DELETE FROM point_blocks WHERE bucket < 5 RETURNING n",
            "PRIMARY KEY (bucket<?)",
        ),
        (
            "DELETE FROM series_buckets WHERE bucket < 5",
            "series_buckets_by_bucket (bucket<?)",
        ),
    ] {
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map([], |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains(uses)),
            "{sql}: {plan:?}"
        );
    }
}

/// Deleting a resource deletes its points wherever they are (folded blocks, the tail, a
/// rewritten `t`'s older block) and its devices' configuration of it, nothing of the other
/// resource; a resource created again under the name (very likely the same row id) starts
/// empty, also after reopening.
#[tokio::test]
async fn deleting_a_resource_deletes_its_points_and_nothing_else() {
    let (dir, store) = fixture_folding_at(16).await;
    let (dev, temp, mode) = (
        Identity::parse("dev1").unwrap(),
        ResourceName::parse("temp").unwrap(),
        ResourceName::parse("mode").unwrap(),
    );
    // 40 points of each, folded in parts of 16 and the rest in the tail; one `t` written
    // again after its fold.
    for t in 0..40 {
        let p = PointsIn {
            identity: dev.clone(),
            t: t * 1_000_000,
            values: vec![
                (temp.clone(), json!(t)),
                (mode.clone(), json!(format!("m{t}"))),
            ],
        };
        store.ingest(&cid(), vec![p]).await.unwrap();
    }
    ingest_at(&store, 0..1, 99.0).await;
    let patch = DevicePatch {
        config: Some([(mode.clone(), Some(json!("auto")))].into()),
        ..Default::default()
    };
    store
        .update_device(&cid(), &dev, patch, &admin())
        .await
        .unwrap();
    let usage = store.resource_usage(&cid(), &temp).await.unwrap();
    assert_eq!(
        usage,
        ResourceUsage {
            points: 40,
            devices: 1
        }
    );
    let modes = store.points(&cid(), &dev, &mode, all()).await.unwrap();
    assert_eq!(modes.len(), 40);

    store.delete_resource(&cid(), &mode).await.unwrap();
    assert!(matches!(
        store.points(&cid(), &dev, &mode, all()).await,
        Err(StoreError::ResourceNotFound(_))
    ));
    assert!(matches!(
        store.delete_resource(&cid(), &mode).await,
        Err(StoreError::ResourceNotFound(_))
    ));
    let d = store.device(&cid(), &dev).await.unwrap();
    assert!(
        d.config.is_empty() && !d.values.contains_key(&mode),
        "{d:?}"
    );
    assert_eq!(values(&store).await.len(), 40, "temp is untouched");
    assert_eq!(values(&store).await[0], (0, 99.0));

    let again = NewResource {
        name: mode.clone(),
        format: Format::String,
        unit: None,
        settable: false,
        remote_sync: false,
        created_at: 2,
    };
    store.create_resource(&cid(), again).await.unwrap();
    assert!(
        store
            .points(&cid(), &dev, &mode, all())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.resource_usage(&cid(), &mode).await.unwrap(),
        ResourceUsage::default()
    );
    store.close().await.unwrap();
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("site.db"))).unwrap();
    assert!(
        store
            .points(&cid(), &dev, &mode, all())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(values(&store).await.len(), 40);
    let d = store.device(&cid(), &dev).await.unwrap();
    assert!(!d.values.contains_key(&mode), "{d:?}");
}

/// On a paired Source the outbox keeps what it queued of a deleted resource (still sent),
/// but none of it comes back as points of a resource created again under the name.
#[tokio::test]
async fn a_deleted_synced_resource_stays_queued_and_is_not_replayed() {
    use super::fixtures::{id, name, source_plant};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("site.db"))).unwrap();
    source_plant(&store, true).await;
    let head = store.outbox_head(&cid()).await.unwrap();
    let batch = (0..5)
        .map(|t| PointsIn {
            identity: id("dev1"),
            t,
            values: vec![(name("temp"), json!(t))],
        })
        .collect();
    store.ingest(&cid(), batch).await.unwrap();
    assert_eq!(store.outbox_head(&cid()).await.unwrap(), head + 5);
    store.delete_resource(&cid(), &name("temp")).await.unwrap();
    assert_eq!(store.outbox_head(&cid()).await.unwrap(), head + 5);
    let OutboxChunk::Records(queued) = store.outbox_read(&cid(), head + 1, 100).await.unwrap()
    else {
        panic!("records expected");
    };
    assert_eq!(queued.len(), 5, "still queued for the Target");
    let again = NewResource {
        name: name("temp"),
        format: Format::Number,
        unit: None,
        settable: false,
        remote_sync: true,
        created_at: 2,
    };
    store.create_resource(&cid(), again).await.unwrap();
    store.close().await.unwrap();
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("site.db"))).unwrap();
    let read = store
        .points(&cid(), &id("dev1"), &name("temp"), all())
        .await
        .unwrap();
    assert!(read.is_empty(), "{read:?}");
}

/// Users: a page at a time by name, a removed user's tokens stop working in the same step,
/// a new password revokes every token, and an unknown user is `UserNotFound` with nothing
/// changed.
#[tokio::test]
async fn users_page_by_name_and_removing_one_revokes_its_tokens() {
    let (_dir, store) = fixture().await;
    for name in ["carol", "alice", "bob"] {
        store.create_user(name, "hash").await.unwrap();
    }
    assert!(matches!(
        store.create_user("bob", "other").await,
        Err(StoreError::UserExists(n)) if n == "bob"
    ));
    let names = |rows: Vec<UserRow>| rows.into_iter().map(|u| u.username).collect::<Vec<_>>();
    assert_eq!(
        names(store.list_users(None, 2).await.unwrap()),
        ["alice", "bob"]
    );
    assert_eq!(
        names(store.list_users(Some("bob"), 2).await.unwrap()),
        ["carol"]
    );
    let asked = ["nobody".to_owned(), "carol".to_owned(), "alice".to_owned()];
    assert_eq!(
        store.existing_users(&asked).await.unwrap(),
        ["carol", "alice"]
    );

    let far = now_micros() + 3_600_000_000;
    store.create_token([1; 32], "bob", far).await.unwrap();
    store.create_token([2; 32], "carol", far).await.unwrap();
    store.create_token([3; 32], "carol", far).await.unwrap();
    store.delete_user("bob").await.unwrap();
    assert_eq!(store.token_user([1; 32], now_micros()).await.unwrap(), None);
    assert_eq!(store.password_hash("bob").await.unwrap(), None);
    assert!(matches!(
        store.delete_user("bob").await,
        Err(StoreError::UserNotFound(n)) if n == "bob"
    ));

    store.set_password("carol", "new hash").await.unwrap();
    assert_eq!(store.token_user([2; 32], now_micros()).await.unwrap(), None);
    assert_eq!(store.token_user([3; 32], now_micros()).await.unwrap(), None);
    assert_eq!(
        store.password_hash("carol").await.unwrap().as_deref(),
        Some("new hash")
    );
    assert!(matches!(
        store.set_password("bob", "x").await,
        Err(StoreError::UserNotFound(_))
    ));
    assert_eq!(store.password_hash("bob").await.unwrap(), None);
    assert_eq!(store.user_count().await.unwrap(), 2);
}

/// A device token, once verified, is answered from memory; a new token, a deleted device or
/// connector, or another connection's change takes it back before anyone hears of it.
#[tokio::test]
async fn a_verified_device_token_is_revoked_at_once() {
    let (dir, store) = fixture().await;
    let dev = Identity::parse("dev1").unwrap();
    let known = Some((cid(), dev.clone()));
    assert_eq!(store.known_device_token(&[7; 32]), None, "not verified yet");
    assert_eq!(store.device_by_token([7; 32]).await.unwrap(), known);
    assert_eq!(store.known_device_token(&[7; 32]), known, "kept");

    store
        .set_device_token(&cid(), &dev, [8; 32], &admin())
        .await
        .unwrap();
    assert_eq!(store.known_device_token(&[7; 32]), None);
    assert_eq!(store.device_by_token([7; 32]).await.unwrap(), None);
    assert_eq!(store.device_by_token([8; 32]).await.unwrap(), known);

    // Another connection (another process) changes the row: seen at the writer's next
    // transaction, whatever it writes.
    let other = Connection::open(dir.path().join("site.db")).unwrap();
    other
        .execute("UPDATE devices SET token_hash = ?1", [&[9u8; 32][..]])
        .unwrap();
    store
        .ingest(&cid(), vec![points(1, json!(1))])
        .await
        .unwrap();
    assert_eq!(store.known_device_token(&[8; 32]), None);
    assert_eq!(store.device_by_token([9; 32]).await.unwrap(), known);

    store.delete_device(&cid(), &dev, &admin()).await.unwrap();
    assert_eq!(store.known_device_token(&[9; 32]), None);
    assert_eq!(store.device_by_token([9; 32]).await.unwrap(), None);

    // Deleting the connector deletes its devices (a cascade): their tokens go too.
    store
        .create_device(
            &cid(),
            NewDevice {
                identity: Identity::parse("dev2").unwrap(),
                tags: Default::default(),
                permissions: vec![],
                state: DeviceState::Provisioned,
                token: [10; 32],
                created_at: 1,
            },
            &admin(),
        )
        .await
        .unwrap();
    assert!(store.device_by_token([10; 32]).await.unwrap().is_some());
    assert!(store.known_device_token(&[10; 32]).is_some());
    store.delete_connector(&cid()).await.unwrap();
    assert_eq!(store.known_device_token(&[10; 32]), None);
    assert_eq!(store.device_by_token([10; 32]).await.unwrap(), None);
}

/// The writer lingers for more jobs only after a commit shared by several callers, only
/// while jobs keep arriving, and never past a full transaction.
#[test]
fn the_writer_lingers_only_under_sustained_load() {
    let noop = || job(|_| Ok(())).0;
    let (tx, mut rx) = mpsc::channel::<Job>(1024);
    let mut gather = Gather::default();

    // Idle, or after commits of one job each (a lone caller, the Target's applier): what
    // is queued, at once.
    for history in [None, Some(1)] {
        if let Some(jobs) = history {
            gather.committed(jobs, std::time::Duration::ZERO);
        }
        tx.try_send(noop()).unwrap();
        let mut batch = vec![noop()];
        gather.fill(&mut rx, &mut batch, |_| panic!("lingered"));
        assert_eq!(batch.len(), 2);
    }

    // Bulk jobs (each costing more than LINGER_JOB_COST) never make the next one wait.
    gather.committed(4, LINGER_JOB_COST * 4);
    tx.try_send(noop()).unwrap();
    let mut batch = vec![noop()];
    gather.fill(&mut rx, &mut batch, |_| panic!("lingered after bulk jobs"));
    assert_eq!(batch.len(), 2);

    // After a shared commit of cheap jobs: it waits while each look brings a job, and
    // commits at the first look that brings none.
    gather.committed(2, std::time::Duration::from_micros(50));
    let mut looks = 0;
    let mut batch = vec![noop()];
    gather.fill(&mut rx, &mut batch, |slice| {
        assert_eq!(slice, LINGER_SLICE);
        looks += 1;
        if looks <= 5 {
            tx.try_send(noop()).unwrap();
        }
    });
    assert_eq!((looks, batch.len()), (6, 6));

    // Jobs arriving without end: one transaction takes at most its bound.
    let mut batch = vec![noop()];
    gather.fill(&mut rx, &mut batch, |_| {
        for _ in 0..100 {
            let _ = tx.try_send(noop());
        }
    });
    assert_eq!(batch.len(), MAX_JOBS_PER_COMMIT);
}
