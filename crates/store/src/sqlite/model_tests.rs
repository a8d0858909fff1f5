//! A model-based property test of the time series path: random sequences of ingest (with
//! repeated timestamps, refused requests and several devices), reads (ranges, both orders,
//! paging), latest values, folds (asked for, and forced by a small `fold_points`), device
//! deletion, reopening and retention of stored points (whole hours of blocks dropped, the
//! unfolded tail kept), each compared with a `BTreeMap` that keeps the last write of every
//! `(device, t)`. On a paired Source too, where a remote-synced point's only copy is its
//! outbox record until folded: with leases, partial acknowledgements, retention expiring
//! partitions, and Remote-Sync toggled on the resource; there a second model, of the outbox
//! (a map from seq to record, its time partitions, the lease and the lost spans), checks
//! every read of a seq range (from any seq, inside a stored row too), the head, and each
//! retention pass's exact lost spans.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use proptest::prelude::*;
use proto::model::{DeviceState, Format, Value};
use proto::sync::{LostSpan, Record, ResourceLoss};
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
    /// The peer acknowledges a part of what is unacknowledged (`share`/255 of it; fully
    /// delivered partitions are dropped).
    Ack {
        share: u8,
    },
    /// The sender takes a lease up to `share`/255 of the unacknowledged records.
    Lease {
        share: u8,
    },
    /// The sender reads `[from, from + len)`, `from` at `share`/255 of the way from the
    /// acknowledgement to past the head, at most `max` records.
    OutboxRead {
        share: u8,
        len: u64,
        max: usize,
    },
    /// Retention drops every partition that ended (as lost spans when undelivered).
    Expire,
    /// Remote-Sync of the resource is switched.
    Toggle,
    /// Retention of stored points drops the hours that end at or before `slot · STEP`.
    DropBefore {
        slot: i64,
    },
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
        2 => any::<u8>().prop_map(|share| Op::Ack { share }),
        1 => any::<u8>().prop_map(|share| Op::Lease { share }),
        3 => (any::<u8>(), 0u64..30, 1usize..12)
            .prop_map(|(share, len, max)| Op::OutboxRead { share, len, max }),
        1 => Just(Op::Expire),
        1 => Just(Op::Toggle),
        1 => (0..SLOTS + 1).prop_map(|slot| Op::DropBefore { slot }),
    ]
}

/// Length of an outbox partition on the test's clock.
const PART: i64 = 1_000;

async fn open(dir: &std::path::Path, fold_points: usize, now: &Arc<AtomicI64>) -> SqliteStore {
    let mut config = SqliteConfig::new(dir.join("site.db"));
    config.fold_points = fold_points;
    config.sync_partition_us = PART;
    // Rows of five records: the requests here are small, and must span rows.
    config.row_seqs = 5;
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
            &admin(),
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

/// A record of the outbox as the model knows it.
#[derive(Debug, Clone, PartialEq)]
enum Rec {
    Point { device: usize, t: i64, v: i64 },
    Device { device: usize },
}

fn rec_of(record: &Record) -> Rec {
    let device = |identity: &proto::model::Identity| {
        DEVICES
            .iter()
            .position(|d| *d == identity.as_str())
            .expect("a device of the test")
    };
    match record {
        Record::Point(p) => match p.value {
            Value::Integer(v) => Rec::Point {
                device: device(&p.device),
                t: p.t,
                v,
            },
            ref other => panic!("unexpected value {other:?}"),
        },
        Record::Device(d) => Rec::Device {
            device: device(&d.identity),
        },
    }
}

/// The outbox of the paired Source: what the sender may read above the acknowledgement,
/// and what retention would drop, at the granularity of a seq.
#[derive(Default)]
struct Outbox {
    head: u64,
    acked: u64,
    lease: u64,
    last_part: i64,
    /// `(part, first seq, last seq)` of the partitions not dropped, in seq order.
    parts: Vec<(i64, u64, u64)>,
    /// Every record not dropped (those up to `acked` may have been: they are never read).
    records: BTreeMap<u64, Rec>,
    /// Lost spans not acknowledged yet.
    lost: Vec<LostSpan>,
}

impl Outbox {
    /// One job's records, under the next seqs, in the partition of `now` (never older than
    /// the last one).
    fn append(&mut self, now: i64, records: Vec<Rec>) {
        if records.is_empty() {
            return;
        }
        let part = (now / PART).max(self.last_part);
        let first = self.head + 1;
        for r in records {
            self.head += 1;
            self.records.insert(self.head, r);
        }
        match self.parts.last_mut() {
            Some(p) if p.0 == part => p.2 = self.head,
            _ => self.parts.push((part, first, self.head)),
        }
        self.last_part = part;
    }

    fn ack(&mut self, upto: u64) {
        self.acked = self.acked.max(upto);
        let (acked, last_part) = (self.acked, self.last_part);
        self.parts.retain(|p| !(p.2 <= acked && p.0 < last_part));
        self.lost.retain(|s| s.last_seq > acked);
    }

    /// A retention pass at `now` keeping one partition length: returns the points lost and
    /// the devices whose undelivered changes were dropped (the store queues them again).
    fn expire(&mut self, now: i64) -> (u64, Vec<usize>) {
        let cutoff = now - PART;
        let pin = self.acked.max(self.lease);
        let mut kept = Vec::new();
        let mut runs: Vec<Vec<(i64, u64, u64)>> = Vec::new();
        let mut parts = std::mem::take(&mut self.parts).into_iter();
        for p in parts.by_ref() {
            if (p.0 + 1) * PART > cutoff {
                kept.push(p);
                break;
            }
            if p.2 <= self.acked {
                continue;
            }
            if p.1 <= pin {
                kept.push(p);
                continue;
            }
            match runs.last_mut() {
                Some(run) if run.len() < 256 && run.last().is_some_and(|l| l.2 + 1 == p.1) => {
                    run.push(p)
                }
                _ => runs.push(vec![p]),
            }
        }
        kept.extend(parts);
        self.parts = kept;
        let mut points = 0;
        let mut changed = std::collections::BTreeSet::new();
        for run in runs {
            let (first, last) = (run[0].1, run[run.len() - 1].2);
            let (mut n, mut devices, mut from, mut until) =
                (0, std::collections::BTreeSet::new(), i64::MAX, i64::MIN);
            let mut device_changes = 0;
            for seq in first..=last {
                match self.records.remove(&seq) {
                    Some(Rec::Point { device, t, .. }) => {
                        n += 1;
                        devices.insert(device);
                        from = from.min(t);
                        until = until.max(t);
                    }
                    Some(Rec::Device { device }) => {
                        device_changes += 1;
                        changed.insert(device);
                    }
                    None => panic!("the model lost seq {seq}"),
                }
            }
            points += n;
            self.lost.push(LostSpan {
                first_seq: first,
                last_seq: last,
                resources: if n == 0 {
                    vec![]
                } else {
                    vec![ResourceLoss {
                        resource: name("n"),
                        points: n,
                        devices: devices.len() as u64,
                        from_us: from,
                        until_us: until,
                    }]
                },
                device_changes,
            });
        }
        (points, changed.into_iter().collect())
    }

    /// What a read of `[from, until)`, at most `max` records, must answer.
    fn read(&self, from: u64, until: u64, max: usize) -> Result<Vec<Rec>, LostSpan> {
        if let Some(span) = self
            .lost
            .iter()
            .find(|s| s.first_seq <= from && from <= s.last_seq)
        {
            return Err(span.clone());
        }
        Ok((from..until)
            .map_while(|seq| self.records.get(&seq).cloned())
            .take(max)
            .collect())
    }
}

/// The records one accepted ingest of a device appends: in the order the store keeps
/// within a row (the codec's: per series by time, stably).
fn ingest_records(device: usize, points: &[(i64, i64)]) -> Vec<Rec> {
    let mut records: Vec<(i64, i64)> = points.iter().map(|(slot, v)| (slot * STEP, *v)).collect();
    records.sort_by_key(|(t, _)| *t);
    records
        .into_iter()
        .map(|(t, v)| Rec::Point { device, t, v })
        .collect()
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
    // The outbox: pairing queued every device first, in identity order.
    let mut outbox = Outbox::default();
    if paired {
        let snapshots = (0..DEVICES.len()).map(|device| Rec::Device { device });
        outbox.append(now.load(Ordering::SeqCst), snapshots.collect());
    }
    // (device, t) → value: the last write wins.
    let mut model: BTreeMap<(usize, i64), i64> = BTreeMap::new();
    // The same, of every write since the device was created, retention or not: a series'
    // latest value outlives its history.
    let mut written: BTreeMap<(usize, i64), i64> = BTreeMap::new();
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
                    if paired && remote_sync {
                        let records = ingest_records(device, &points);
                        outbox.append(now.load(Ordering::SeqCst), records);
                    }
                    for (slot, v) in points {
                        model.insert((device, slot * STEP), v);
                        written.insert((device, slot * STEP), v);
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
                let newest = written
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
                store.close().await.unwrap();
                store = open(dir.path(), fold_points, &now).await;
                // Nothing above the head was sent: the lease is cut back to it.
                outbox.lease = outbox.lease.min(outbox.head);
            }
            Op::Tick => {
                now.fetch_add(PART, Ordering::SeqCst);
            }
            Op::Ack { share } => {
                let head = store.outbox_head(&cid()).await.unwrap();
                prop_assert_eq!(head, outbox.head);
                let upto = outbox.acked + (head - outbox.acked) * u64::from(share) / 255;
                store.outbox_acked(&cid(), upto).await.unwrap();
                outbox.ack(upto);
            }
            Op::Lease { share } => {
                let upto = outbox.acked + (outbox.head - outbox.acked) * u64::from(share) / 255;
                store.outbox_lease(&cid(), upto).await.unwrap();
                outbox.lease = outbox.lease.max(upto);
            }
            Op::OutboxRead { share, len, max } => {
                // The sender reads above the acknowledgement, up to past the head.
                let from =
                    outbox.acked + 1 + (outbox.head + 1 - outbox.acked) * u64::from(share) / 255;
                let until = from + len;
                let got = match store.outbox_range(&cid(), from, until, max).await.unwrap() {
                    OutboxChunk::Records(records) => Ok(records.iter().map(rec_of).collect()),
                    OutboxChunk::Lost(span) => Err(span),
                };
                prop_assert_eq!(
                    got,
                    outbox.read(from, until, max),
                    "[{}, {}) max {}",
                    from,
                    until,
                    max
                );
                let all = match store.outbox_read(&cid(), from, max).await.unwrap() {
                    OutboxChunk::Records(records) => Ok(records.iter().map(rec_of).collect()),
                    OutboxChunk::Lost(span) => Err(span),
                };
                prop_assert_eq!(
                    all,
                    outbox.read(from, u64::MAX, max),
                    "from {} max {}",
                    from,
                    max
                );
            }
            Op::Expire => {
                let at = now.fetch_add(2 * PART, Ordering::SeqCst) + 2 * PART;
                let report = store
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
                let (lost, changed) = outbox.expire(at);
                prop_assert_eq!(report.points_lost, lost);
                // Device changes are never lost: their current records go out again.
                let again = changed.into_iter().map(|device| Rec::Device { device });
                outbox.append(at, again.collect());
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
            Op::DropBefore { slot } => {
                let before = slot * STEP;
                let (report, unfolded) = store.points_expire_seeing_tail(before).await.unwrap();
                // Whole hours only: those that end at or before `before`.
                let kept_from = before.div_euclid(BUCKET_US) * BUCKET_US;
                let unfolded: std::collections::BTreeSet<(usize, i64)> = unfolded
                    .into_iter()
                    .map(|(identity, t)| {
                        let d = DEVICES.iter().position(|d| *d == identity).unwrap();
                        (d, t)
                    })
                    .collect();
                let dropped = model
                    .keys()
                    .filter(|(d, t)| *t < kept_from && !unfolded.contains(&(*d, *t)))
                    .count();
                // Each dropped point of the model was in a block (a point rewritten after
                // its fold has one copy per block generation).
                prop_assert!(
                    report.points >= dropped as u64,
                    "{:?} < {}",
                    report,
                    dropped
                );
                model.retain(|(d, t), _| *t >= kept_from || unfolded.contains(&(*d, *t)));
            }
            Op::Recreate { device } => {
                store
                    .delete_device(&cid(), &id(DEVICES[device]), &admin())
                    .await
                    .unwrap();
                create_device(&store, DEVICES[device]).await;
                model.retain(|(d, _), _| *d != device);
                written.retain(|(d, _), _| *d != device);
                if paired {
                    // The delete and the create, each a change of the device.
                    let at = now.load(Ordering::SeqCst);
                    outbox.append(at, vec![Rec::Device { device }]);
                    outbox.append(at, vec![Rec::Device { device }]);
                }
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
        Op::Ack { share: 255 },
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
