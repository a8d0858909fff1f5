//! A model-based property test of the time series path: random sequences of ingest (with
//! repeated timestamps, refused requests and several devices), reads (ranges, both orders,
//! paging), latest values, folds (asked for, and forced by a small `fold_points`), device
//! deletion and reopening, each compared with a `BTreeMap` that keeps the last write of every
//! `(device, t)`. On a paired Source too, where a remote-synced point's only copy is its
//! outbox record until folded: with acknowledgements, retention expiring partitions, and
//! Remote-Sync toggled on the resource.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use proptest::prelude::*;
use proto::model::{DeviceState, Format, Value};
use serde_json::json;

use super::fixtures::*;
use super::series::BUCKET_US;
use super::{SqliteConfig, SqliteStore};
use crate::*;

const DEVICES: [&str; 3] = ["d0", "d1", "d2"];
/// Timestamps are `slot · STEP`: 48 slots over 6 buckets, so that writes repeat timestamps,
/// and blocks of one series land in several buckets.
const SLOTS: i64 = 48;
const STEP: i64 = BUCKET_US / 8;

#[derive(Debug, Clone)]
enum Op {
    /// Points of one device; `bad` adds a value of the wrong format (the request is refused).
    Ingest {
        device: usize,
        points: Vec<(i64, i64)>,
        bad: bool,
    },
    Read {
        device: usize,
        since: i64,
        until: i64,
        desc: bool,
        limit: usize,
    },
    Fold,
    Reopen,
    /// Deletes the device (with its points) and creates it again.
    Recreate {
        device: usize,
    },
    /// The clock moves to the next outbox partition.
    Tick,
    /// The peer acknowledges everything (fully delivered partitions are dropped).
    Ack,
    /// Retention drops every partition that ended (as lost spans when undelivered).
    Expire,
    /// Remote-Sync of the resource is switched.
    Toggle,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..DEVICES.len(), prop::collection::vec((0..SLOTS, -5i64..5), 1..12), prop::bool::weighted(0.1))
            .prop_map(|(device, points, bad)| Op::Ingest { device, points, bad }),
        4 => (0..DEVICES.len(), 0..SLOTS + 1, 0..SLOTS + 1, any::<bool>(), 1usize..7)
            .prop_map(|(device, a, b, desc, limit)| Op::Read {
                device,
                since: a.min(b) * STEP,
                until: a.max(b) * STEP + 1,
                desc,
                limit,
            }),
        1 => Just(Op::Fold),
        2 => Just(Op::Reopen),
        1 => (0..DEVICES.len()).prop_map(|device| Op::Recreate { device }),
        2 => Just(Op::Tick),
        2 => Just(Op::Ack),
        1 => Just(Op::Expire),
        1 => Just(Op::Toggle),
    ]
}

/// Length of an outbox partition on the test's clock.
const PART: i64 = 1_000;

async fn open(dir: &std::path::Path, fold_points: usize, now: &Arc<AtomicI64>) -> SqliteStore {
    let mut config = SqliteConfig::new(dir.join("site.db"));
    config.fold_points = fold_points;
    config.sync_partition_us = PART;
    let clock = Arc::clone(now);
    config.clock = Clock::new(move || clock.load(Ordering::SeqCst));
    SqliteStore::open(config).unwrap()
}

async fn create_device(store: &SqliteStore, device: &str) {
    store
        .create_device(
            &cid(),
            NewDevice {
                identity: id(device),
                tags: Default::default(),
                permissions: vec![],
                state: DeviceState::Provisioned,
                token: [device.as_bytes()[1]; 32],
                created_at: 1,
            },
        )
        .await
        .unwrap();
}

/// Every page of a read, as the API pages it (`after` = the last `t` of the previous page).
async fn read_pages(store: &SqliteStore, device: &str, q: RangeQuery) -> Vec<Vec<(i64, i64)>> {
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page: Vec<(i64, i64)> = store
            .points(&cid(), &id(device), &name("n"), RangeQuery { after, ..q })
            .await
            .unwrap()
            .into_iter()
            .map(|p| match p.v {
                Value::Integer(v) => (p.t, v),
                other => panic!("unexpected value {other:?}"),
            })
            .collect();
        if page.is_empty() {
            return pages;
        }
        after = page.last().map(|p| p.0);
        pages.push(page);
    }
}

async fn run(ops: Vec<Op>, fold_points: usize, paired: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(PART));
    let mut store = open(dir.path(), fold_points, &now).await;
    create_plant(&store).await;
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
    for d in DEVICES {
        create_device(&store, d).await;
    }
    let mut remote_sync = paired;
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
    // (device, t) → value: the last write wins.
    let mut model: BTreeMap<(usize, i64), i64> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Ingest {
                device,
                points,
                bad,
            } => {
                let mut batch: Vec<PointsIn> = points
                    .iter()
                    .map(|(slot, v)| PointsIn {
                        identity: id(DEVICES[device]),
                        t: slot * STEP,
                        values: vec![(name("n"), json!(v))],
                    })
                    .collect();
                if bad {
                    batch.push(PointsIn {
                        identity: id(DEVICES[device]),
                        t: 0,
                        values: vec![(name("n"), json!("not a number"))],
                    });
                }
                let result = store.ingest(&cid(), batch).await;
                prop_assert_eq!(result.is_ok(), !bad, "{:?}", result);
                if !bad {
                    for (slot, v) in points {
                        model.insert((device, slot * STEP), v);
                    }
                }
            }
            Op::Read {
                device,
                since,
                until,
                desc,
                limit,
            } => {
                let order = if desc { Order::Desc } else { Order::Asc };
                let q = RangeQuery {
                    since,
                    until,
                    after: None,
                    limit,
                    order,
                };
                let mut expected: Vec<(i64, i64)> = model
                    .range((device, since)..(device, until))
                    .map(|((_, t), v)| (*t, *v))
                    .collect();
                if desc {
                    expected.reverse();
                }
                let pages = read_pages(&store, DEVICES[device], q).await;
                prop_assert!(pages.iter().all(|p| p.len() <= limit));
                let got: Vec<(i64, i64)> = pages.into_iter().flatten().collect();
                prop_assert_eq!(got, expected, "{:?}", q);
                // The latest value: the newest point, last write of its t.
                let newest = model
                    .range((device, 0)..(device, i64::MAX))
                    .next_back()
                    .map(|((_, t), v)| Point {
                        t: *t,
                        v: Value::Integer(*v),
                    });
                let dev = store.device(&cid(), &id(DEVICES[device])).await.unwrap();
                prop_assert_eq!(dev.values.get(&name("n")), newest.as_ref());
            }
            Op::Fold => {
                store.fold().await.unwrap();
                prop_assert_eq!(store.tail_len(), 0);
            }
            Op::Reopen => {
                drop(store);
                store = open(dir.path(), fold_points, &now).await;
            }
            Op::Tick => {
                now.fetch_add(PART, Ordering::SeqCst);
            }
            Op::Ack => {
                let head = store.outbox_head(&cid()).await.unwrap();
                store.outbox_acked(&cid(), head).await.unwrap();
            }
            Op::Expire => {
                let at = now.fetch_add(2 * PART, Ordering::SeqCst) + 2 * PART;
                store
                    .sync_expire(
                        &cid(),
                        Retention {
                            now: at,
                            keep_us: PART,
                            budget_bytes: None,
                        },
                    )
                    .await
                    .unwrap();
            }
            Op::Toggle => {
                remote_sync = !remote_sync;
                let patch = ResourcePatch {
                    remote_sync: Some(remote_sync),
                    ..Default::default()
                };
                store
                    .update_resource(&cid(), &name("n"), patch)
                    .await
                    .unwrap();
            }
            Op::Recreate { device } => {
                store
                    .delete_device(&cid(), &id(DEVICES[device]))
                    .await
                    .unwrap();
                create_device(&store, DEVICES[device]).await;
                model.retain(|(d, _), _| *d != device);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_store_reads_what_a_last_write_wins_model_holds(
        ops in prop::collection::vec(op(), 1..40),
        fold_points in prop_oneof![Just(4usize), Just(16), Just(1_000)],
        paired in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops, fold_points, paired))?;
    }
}

/// The outbox is the log: an acknowledged partition whose points are not folded yet must
/// be folded before it is dropped, or a restart loses them.
#[tokio::test]
async fn acknowledged_records_are_folded_before_their_partition_is_dropped() {
    let ingest = |device, slot| Op::Ingest {
        device,
        points: vec![(slot, 1), (slot + 1, 2)],
        bad: false,
    };
    let read = Op::Read {
        device: 0,
        since: 0,
        until: SLOTS * STEP,
        desc: false,
        limit: 3,
    };
    let ops = vec![
        ingest(0, 0),
        Op::Tick,
        ingest(0, 4),
        Op::Ack,
        Op::Reopen,
        read.clone(),
        Op::Toggle,
        ingest(0, 8),
        Op::Expire,
        Op::Reopen,
        read,
    ];
    run(ops, 1_000, true).await.unwrap();
}
