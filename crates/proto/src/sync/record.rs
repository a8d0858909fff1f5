//! What a sync stream carries: [`Record`]s (a data point or a device change), each at one
//! sequence number of its stream, and the [`LostSpan`] that stands for records retention
//! dropped before they were delivered.
//!
//! Sequence numbers are assigned by the sending site's store (the outbox), gap-free and
//! strictly increasing from 1, in the same transaction as the local write. This module only
//! describes the records; it neither numbers nor stores them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::device::DeviceRecord;
use crate::model::{Identity, ResourceName, Value};

/// One data point of one series (device, resource).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub device: Identity,
    pub resource: ResourceName,
    /// µs since the epoch, as written on the Source.
    pub t: i64,
    pub value: Value,
}

/// One entry of a sync stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// A data point (Source → Target only).
    Point(Point),
    /// A device change: the fields it sets, stamped (both directions). Boxed: a change is
    /// rare and about three times the size of a point, and every record of a batch, a
    /// receiver's window and an apply would otherwise take its size.
    Device(Box<DeviceRecord>),
}

impl Record {
    /// A cheap estimate of the record's size before compression, used to cut batches.
    pub fn estimated_size(&self) -> usize {
        match self {
            Record::Point(p) => super::codec::PointView::estimated_size(p),
            Record::Device(d) => {
                64 + d.tags.keys().map(|k| k.len() + 48).sum::<usize>()
                    + d.config.len() * 48
                    + d.permissions.as_ref().map_or(0, |p| p.value.len() * 32)
            }
        }
    }
}

/// What retention lost of one resource inside a [`LostSpan`]. Exact: counted by the store
/// from the records it dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLoss {
    pub resource: ResourceName,
    /// Number of points dropped.
    pub points: u64,
    /// Number of distinct devices among them (exact within this span; the union over
    /// several spans is not their sum).
    pub devices: u64,
    /// Smallest timestamp among them, µs.
    pub from_us: i64,
    /// Largest timestamp among them, µs.
    pub until_us: i64,
}

/// A contiguous run of sequence numbers the sender no longer has because retention dropped
/// them before they were acknowledged, with an exact summary of what they held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostSpan {
    pub first_seq: u64,
    pub last_seq: u64,
    /// Per resource, in resource-name order.
    pub resources: Vec<ResourceLoss>,
    /// Device changes among the dropped records. They are not lost: the store re-appended
    /// the latest state of each such device at the head of the outbox when it dropped them.
    pub device_changes: u64,
}

impl LostSpan {
    /// Summarises the records of `first_seq..=last_seq` that are being dropped. A store calls
    /// this in the transaction that drops them (or keeps equivalent counters per partition).
    pub fn summarize<'a>(
        first_seq: u64,
        last_seq: u64,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Self {
        struct Acc<'a> {
            points: u64,
            devices: BTreeSet<&'a Identity>,
            from: i64,
            until: i64,
        }
        let mut per: BTreeMap<&ResourceName, Acc<'_>> = BTreeMap::new();
        let mut device_changes = 0;
        for r in records {
            match r {
                Record::Point(p) => {
                    let a = per.entry(&p.resource).or_insert(Acc {
                        points: 0,
                        devices: BTreeSet::new(),
                        from: i64::MAX,
                        until: i64::MIN,
                    });
                    a.points += 1;
                    a.devices.insert(&p.device);
                    a.from = a.from.min(p.t);
                    a.until = a.until.max(p.t);
                }
                Record::Device(_) => device_changes += 1,
            }
        }
        Self {
            first_seq,
            last_seq,
            resources: per
                .into_iter()
                .map(|(r, a)| ResourceLoss {
                    resource: r.clone(),
                    points: a.points,
                    devices: a.devices.len() as u64,
                    from_us: a.from,
                    until_us: a.until,
                })
                .collect(),
            device_changes,
        }
    }

    /// Total points lost in the span.
    pub fn points(&self) -> u64 {
        self.resources.iter().map(|r| r.points).sum()
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// A Target holds a window of decoded records (65,536) and an apply's copy of them; a
    /// device change inline would make every point take its size (264 bytes, three times a
    /// point's 88).
    #[test]
    fn a_record_takes_no_more_room_than_a_point() {
        assert_eq!(std::mem::size_of::<Record>(), std::mem::size_of::<Point>());
    }
}
