//! Device lookup between the two sites of a pairing: the requests and answers that cross the
//! connectors' end-to-end session, and the device hash and registry digest of the drift
//! check, which both sites must compute identically (docs/wire.md, "Device lookup").
//!
//! A message is one service byte ([`service::LOOKUP_REQUEST`] or
//! [`service::LOOKUP_RESPONSE`]) followed by a postcard-encoded [`Request`] or [`Response`],
//! and nothing after it. The messages carry typed views ([`DeviceView`]), never the public
//! API's JSON: a change of an API shape cannot change this protocol, and a site decodes only
//! values that pass the domain model's checks (identities, names, values).
//!
//! The operations ([`Op`]):
//!
//! - `List` — one page of the peer's device list in identity order ([`Answer::Page`]);
//!   `next` is the last identity of the page when more follow. Kept for older peers.
//! - `Find` — one page of the peer's device list as its own list shows it ([`FindQuery`]:
//!   search by identity prefix and tags, state and last-seen filters, a sort, keyset paging
//!   both ways), with how many devices the filters keep ([`Answer::Found`]).
//! - `Device` — one device ([`Answer::Device`]), or `not_found`.
//! - `Digest` — [`Digest`]: the number of devices and one hash per [`BUCKETS`] bucket.
//! - `Hashes` — the per-device hashes of the devices in the asked buckets ([`Answer::Hashes`]),
//!   so that only differing devices are fetched.
//! - `Devices` — those devices that exist ([`Answer::Devices`]), at most [`MAX_FETCH`].
//! - `Resend` — the peer queues its record of those devices (at most [`MAX_RESEND`]) on the
//!   durable sync stream and answers how many ([`Answer::Queued`]).
//! - `Waiting` — the points the peer keeps for resources it does not have yet, per
//!   resource ([`Answer::Waiting`]): a Target shows them to the Source's operator too.
//! - `Backfill` — a Target asks its Source to send a resource's points of a time range
//!   again ([`BackfillAsk`], at most [`MAX_BACKFILL_DEVICES`] devices named); the Source
//!   starts it and answers its progress ([`Answer::Backfill`]), or refuses (`conflict`
//!   while one runs or the resource has no Remote-Sync, `range_not_held`, `not_found`, …).
//! - `BackfillStatus` / `BackfillCancel` — the progress of the connector's latest backfill
//!   ([`Answer::Backfill`], `None` when there is none), after cancelling it for the latter.
//!
//! Any request may be answered [`Answer::Refused`] with a stable code (`not_found`,
//! `invalid_query`, `invalid_value`, `too_large`, …) and a sentence for humans.
//!
//! A device's hash covers what an operator manages and both sites must agree on: identity,
//! tags, permissions (as a set), state and configuration; not its latest values (those come
//! with resource data sync) nor its creation time (each site's own). A device's bucket is the
//! first byte of SHA-256 of its identity; a bucket's hash is SHA-256 over its devices' hashes
//! in identity order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::envelope::{self, EnvelopeError};
use crate::model::{
    DeviceSort, DeviceState, Format, Identity, ListPlace, Permission, ResourceName, SeenFilter,
    Tags, Value,
};
use crate::service;

/// Number of buckets of the registry digest.
pub const BUCKETS: usize = 256;
/// Most devices one `Devices` request asks for.
pub const MAX_FETCH: usize = 20;
/// Most devices one `Resend` names.
pub const MAX_RESEND: usize = 1000;
/// Most devices one `Backfill` names.
pub const MAX_BACKFILL_DEVICES: usize = 1000;
/// Most per-device hashes one `Hashes` answer carries.
pub const MAX_HASH_ENTRIES: usize = 6000;
/// Largest encoded answer: well inside one sealed session message and one link frame.
pub const MAX_ANSWER: usize = 768 * 1024;

/// A question to the peer; `id` pairs it with its [`Response`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub op: Op,
}

/// What a lookup asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    List(ListQuery),
    Device(Identity),
    Digest,
    Hashes(Vec<u8>),
    Devices(Vec<Identity>),
    Resend(Vec<Identity>),
    Waiting,
    Backfill(BackfillAsk),
    BackfillStatus,
    BackfillCancel,
    Find(FindQuery),
}

/// A backfill a Target asks of its Source: `resource`'s points with `since <= t < until`
/// (µs; `None`: from the oldest the Source holds, until its present), of `devices` only
/// when given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillAsk {
    pub resource: ResourceName,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub devices: Option<Vec<Identity>>,
}

/// Where a backfill stands, as its Source tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackfillState {
    /// Queuing the range's points, slice by slice.
    Queuing,
    /// Everything is queued; the Target has not applied all of it yet.
    Sending,
    /// The Target applied every queued point.
    Done,
    /// Stopped on request; what was queued before still goes.
    Cancelled,
    /// Stopped by a failure of the Source (its log says why); what was queued still goes.
    Failed,
}

impl BackfillState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillState::Queuing => "queuing",
            BackfillState::Sending => "sending",
            BackfillState::Done => "done",
            BackfillState::Cancelled => "cancelled",
            BackfillState::Failed => "failed",
        }
    }

    /// Whether it still queues points.
    pub fn is_running(self) -> bool {
        self == BackfillState::Queuing
    }
}

/// The progress of a backfill: its range and what of it was queued and applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillView {
    /// Chosen by the Source; names this backfill in its connector.
    pub id: u64,
    pub resource: ResourceName,
    pub since: i64,
    pub until: i64,
    /// How many devices were named (`None`: every device).
    pub devices: Option<u32>,
    pub state: BackfillState,
    /// Points queued so far, and how many of them the Target applied.
    pub queued: u64,
    pub applied: u64,
    /// When it started and stopped queuing (µs).
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// Whether the Target asked for it (else the Source's operator did).
    pub by_target: bool,
}

/// One page of a device list: devices carrying every tag of `tags`, whose identity sorts
/// after `after`, at most `limit` of them, in identity order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    pub tags: Vec<(String, String)>,
    pub after: Option<Identity>,
    pub limit: u32,
}

/// One page of a device list, as the answering site's own list (and API) would show it:
/// devices carrying every tag, whose identity starts with `prefix`, in `state`, last seen as
/// `seen` says (each when given), sorted by `sort` then identity (`descending` reverses
/// both), at most `limit` from `from` (after it, or going back, before it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindQuery {
    pub tags: Vec<(String, String)>,
    pub prefix: Option<String>,
    pub state: Option<DeviceState>,
    pub seen: Option<SeenFilter>,
    pub sort: DeviceSort,
    pub descending: bool,
    pub from: Option<ListPlace>,
    pub limit: u32,
}

/// The answer to the [`Request`] with the same `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    pub answer: Answer,
}

/// How the peer answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    Page {
        devices: Vec<DeviceView>,
        /// The last identity of this page, when more devices follow.
        next: Option<Identity>,
    },
    Device(DeviceView),
    Digest(Digest),
    Hashes(Vec<(Identity, [u8; 32])>),
    Devices(Vec<DeviceView>),
    Queued(u64),
    Waiting(Vec<WaitingView>),
    Backfill(Option<BackfillView>),
    Refused {
        code: String,
        message: String,
    },
    /// A page of a `Find`, in list order; `more`: devices lie beyond its far end (after
    /// it, or, for a page going back, before it); `total`: how many the filters keep.
    Found {
        devices: Vec<DeviceView>,
        more: bool,
        total: u64,
    },
}

/// Points one site keeps for a resource it does not have: they are applied once it is
/// created there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingView {
    pub resource: ResourceName,
    pub format: Format,
    pub points: u64,
    pub devices: u64,
    /// Times of the oldest and newest point (µs).
    pub from: i64,
    pub until: i64,
}

/// A device as one site shows it to the other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceView {
    pub identity: Identity,
    pub tags: Tags,
    pub permissions: Vec<Permission>,
    pub state: DeviceState,
    /// Desired values of settable resources.
    pub config: BTreeMap<ResourceName, Value>,
    /// The newest point of each resource: its time (µs) and value.
    pub values: BTreeMap<ResourceName, (i64, Value)>,
    /// When the device was created on the answering site (µs).
    pub created_at: i64,
    /// Whether the answering site's latest change of the device has not reached its peer.
    pub sync_pending: bool,
}

/// Per-bucket hashes of a registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub count: u64,
    pub buckets: Vec<[u8; 32]>,
}

/// Why bytes are not a lookup message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("lookup message is empty")]
    Empty,
    #[error("byte {0:#04x} is not the service byte of this lookup message")]
    Service(u8),
    #[error("lookup message is not valid: {0}")]
    Malformed(String),
    #[error("lookup message has {0} bytes after its end")]
    Trailing(usize),
}

fn encode<T: Serialize>(tag: u8, msg: &T) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail; an empty body would be refused by the
    // peer as malformed, never misread. The size of an answer is `remote::lookup`'s to keep.
    envelope::encode(Some(tag), msg, usize::MAX).unwrap_or_else(|_| vec![tag])
}

fn decode<'a, T: Deserialize<'a>>(tag: u8, bytes: &'a [u8]) -> Result<T, LookupError> {
    envelope::decode(Some(tag), bytes, usize::MAX).map_err(|e| match e {
        EnvelopeError::Empty => LookupError::Empty,
        EnvelopeError::Tag(b) => LookupError::Service(b),
        EnvelopeError::Trailing(n) => LookupError::Trailing(n),
        EnvelopeError::Malformed(e) => LookupError::Malformed(e.to_string()),
        EnvelopeError::TooLarge { len, .. } => LookupError::Malformed(format!("{len} bytes")),
    })
}

impl Request {
    /// The service byte and the request.
    pub fn encode(&self) -> Vec<u8> {
        encode(service::LOOKUP_REQUEST, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, LookupError> {
        decode(service::LOOKUP_REQUEST, bytes)
    }
}

impl Response {
    /// The service byte and the answer.
    pub fn encode(&self) -> Vec<u8> {
        encode(service::LOOKUP_RESPONSE, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, LookupError> {
        decode(service::LOOKUP_RESPONSE, bytes)
    }
}

/// The bucket of a device in the registry digest.
pub fn bucket_of(identity: &Identity) -> u8 {
    Sha256::digest(identity.as_str().as_bytes())[0]
}

/// The hash of what both sites must agree on about a device: identity, tags, permissions
/// (as a set), state and configuration, in a canonical encoding.
pub fn device_hash(d: &DeviceView) -> [u8; 32] {
    let mut permissions = d.permissions.clone();
    permissions.sort();
    let config: Vec<(String, serde_json::Value)> = d
        .config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_json()))
        .collect();
    let canonical = serde_json::json!([
        d.identity,
        d.tags.iter().collect::<Vec<_>>(),
        permissions,
        d.state,
        config,
    ]);
    Sha256::digest(canonical.to_string().as_bytes()).into()
}

/// Builds a registry's [`Digest`] from its devices, fed in identity order.
pub struct DigestBuilder {
    hashers: Vec<Sha256>,
    count: u64,
}

impl Default for DigestBuilder {
    fn default() -> Self {
        Self {
            hashers: (0..BUCKETS).map(|_| Sha256::new()).collect(),
            count: 0,
        }
    }
}

impl DigestBuilder {
    /// Adds the next device (identities must come in ascending order).
    pub fn add(&mut self, d: &DeviceView) {
        self.count += 1;
        if let Some(h) = self.hashers.get_mut(usize::from(bucket_of(&d.identity))) {
            h.update(device_hash(d));
        }
    }

    pub fn finish(self) -> Digest {
        Digest {
            count: self.count,
            buckets: self
                .hashers
                .into_iter()
                .map(|h| h.finalize().into())
                .collect(),
        }
    }
}

impl Digest {
    /// The buckets whose hashes differ between two digests (all of them when the other
    /// digest does not have [`BUCKETS`] buckets).
    pub fn differing(&self, other: &Digest) -> Vec<u8> {
        (0..=u8::MAX)
            .filter(|b| {
                let i = usize::from(*b);
                self.buckets.get(i).is_none() || self.buckets.get(i) != other.buckets.get(i)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Access;

    fn device(id: &str, tags: &[(&str, &str)], perms: &[(&str, Access)]) -> DeviceView {
        DeviceView {
            identity: Identity::parse(id).unwrap(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            permissions: perms
                .iter()
                .map(|(p, a)| Permission {
                    principal: (*p).to_owned(),
                    access: *a,
                })
                .collect(),
            state: DeviceState::Provisioned,
            config: BTreeMap::new(),
            values: BTreeMap::new(),
            created_at: 0,
            sync_pending: false,
        }
    }

    #[test]
    fn device_hashes_cover_managed_fields_only() {
        use Access::{Read, Write};
        let a = device("d1", &[("site", "north")], &[("ops", Read), ("eng", Write)]);
        // Permission order, values, creation time and the pending mark do not count.
        let mut same = device("d1", &[("site", "north")], &[("eng", Write), ("ops", Read)]);
        same.created_at = 99;
        same.sync_pending = true;
        same.values
            .insert(ResourceName::parse("t").unwrap(), (1, Value::Integer(1)));
        assert_eq!(device_hash(&a), device_hash(&same));
        // Tags, permissions, state, configuration and identity do.
        let differs = |d: DeviceView| assert_ne!(device_hash(&a), device_hash(&d));
        differs(device(
            "d1",
            &[("site", "south")],
            &[("ops", Read), ("eng", Write)],
        ));
        differs(device("d1", &[("site", "north")], &[("ops", Read)]));
        differs(device(
            "d2",
            &[("site", "north")],
            &[("ops", Read), ("eng", Write)],
        ));
        let mut locked = a.clone();
        locked.state = DeviceState::Locked;
        differs(locked);
        let mut configured = a.clone();
        configured.config.insert(
            ResourceName::parse("setpoint").unwrap(),
            Value::Number(21.5),
        );
        differs(configured);
    }

    #[test]
    fn the_hash_is_the_documented_canonical_encoding() {
        // docs/wire.md gives this text; a change here changes the drift check between
        // sites of different versions.
        let d = device("d1", &[("site", "north")], &[("ops", Access::Read)]);
        let text =
            r#"["d1",[["site","north"]],[{"access":"read","principal":"ops"}],"provisioned",[]]"#;
        let expected: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        assert_eq!(device_hash(&d), expected);
    }

    #[test]
    fn digests_differ_exactly_in_the_buckets_of_differing_devices() {
        let devices: Vec<DeviceView> = (0..50)
            .map(|i| device(&format!("d{i:03}"), &[], &[]))
            .collect();
        let digest = |ds: &[DeviceView]| {
            let mut b = DigestBuilder::default();
            ds.iter().for_each(|d| b.add(d));
            b.finish()
        };
        let ours = digest(&devices);
        assert_eq!(ours.count, 50);
        assert!(ours.differing(&digest(&devices)).is_empty());
        let mut changed = devices.clone();
        changed[7].state = DeviceState::Locked;
        assert_eq!(
            ours.differing(&digest(&changed)),
            vec![bucket_of(&devices[7].identity)]
        );
        let short = Digest {
            count: 0,
            buckets: Vec::new(),
        };
        assert_eq!(short.differing(&ours).len(), BUCKETS);
    }

    #[test]
    fn a_message_of_the_other_kind_or_with_trailing_bytes_is_refused() {
        let req = Request {
            id: 1,
            op: Op::Digest,
        };
        let bytes = req.encode();
        assert_eq!(bytes[0], service::LOOKUP_REQUEST);
        assert_eq!(Request::decode(&bytes), Ok(req));
        assert_eq!(
            Response::decode(&bytes),
            Err(LookupError::Service(service::LOOKUP_REQUEST))
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Request::decode(&long), Err(LookupError::Trailing(1)));
        assert_eq!(Request::decode(&[]), Err(LookupError::Empty));
        assert!(matches!(
            Request::decode(&[service::LOOKUP_REQUEST, 0xff]),
            Err(LookupError::Malformed(_))
        ));
    }

    mod round_trips {
        use super::*;
        use proptest::prelude::*;

        fn identity() -> impl Strategy<Value = Identity> {
            "[A-Za-z0-9._:-]{1,24}".prop_map(|s| Identity::parse(&s).unwrap())
        }

        fn name() -> impl Strategy<Value = ResourceName> {
            "[a-z0-9_]{1,16}".prop_map(|s| ResourceName::parse(&s).unwrap())
        }

        fn value() -> impl Strategy<Value = Value> {
            prop_oneof![
                (-1e12f64..1e12).prop_map(Value::Number),
                any::<i64>().prop_map(Value::Integer),
                ".{0,12}".prop_map(Value::String),
                any::<bool>().prop_map(Value::Boolean),
                "[0-9]{1,6}".prop_map(Value::Json),
            ]
        }

        fn view() -> impl Strategy<Value = DeviceView> {
            (
                identity(),
                proptest::collection::btree_map(".{1,8}", ".{0,8}", 0..4),
                proptest::collection::vec(
                    (
                        ".{1,8}",
                        prop_oneof![
                            Just(Access::Read),
                            Just(Access::Write),
                            Just(Access::Manage)
                        ],
                    ),
                    0..4,
                ),
                any::<bool>(),
                proptest::collection::btree_map(name(), value(), 0..3),
                proptest::collection::btree_map(name(), (any::<i64>(), value()), 0..3),
                any::<i64>(),
                any::<bool>(),
            )
                .prop_map(
                    |(identity, tags, perms, locked, config, values, created_at, sync_pending)| {
                        DeviceView {
                            identity,
                            tags,
                            permissions: perms
                                .into_iter()
                                .map(|(principal, access)| Permission { principal, access })
                                .collect(),
                            state: if locked {
                                DeviceState::Locked
                            } else {
                                DeviceState::Provisioned
                            },
                            config,
                            values,
                            created_at,
                            sync_pending,
                        }
                    },
                )
        }

        fn op() -> impl Strategy<Value = Op> {
            let ids = || proptest::collection::vec(identity(), 0..5);
            prop_oneof![
                (
                    proptest::collection::vec((".{1,8}", ".{0,8}"), 0..3),
                    proptest::option::of(identity()),
                    any::<u32>(),
                )
                    .prop_map(|(tags, after, limit)| Op::List(ListQuery {
                        tags,
                        after,
                        limit
                    })),
                identity().prop_map(Op::Device),
                Just(Op::Digest),
                proptest::collection::vec(any::<u8>(), 0..8).prop_map(Op::Hashes),
                ids().prop_map(Op::Devices),
                ids().prop_map(Op::Resend),
                Just(Op::Waiting),
                (
                    name(),
                    proptest::option::of(any::<i64>()),
                    proptest::option::of(any::<i64>()),
                    proptest::option::of(ids()),
                )
                    .prop_map(|(resource, since, until, devices)| Op::Backfill(
                        BackfillAsk {
                            resource,
                            since,
                            until,
                            devices
                        }
                    )),
                Just(Op::BackfillStatus),
                Just(Op::BackfillCancel),
                find().prop_map(Op::Find),
            ]
        }

        fn find() -> impl Strategy<Value = FindQuery> {
            let seen = prop_oneof![
                any::<i64>().prop_map(SeenFilter::Since),
                any::<i64>().prop_map(SeenFilter::Before),
                Just(SeenFilter::Never),
            ];
            let place =
                (any::<i64>(), identity(), any::<bool>()).prop_map(|(key, identity, back)| {
                    ListPlace {
                        key,
                        identity,
                        back,
                    }
                });
            (
                proptest::collection::vec((".{1,8}", ".{0,8}"), 0..3),
                proptest::option::of(".{0,8}"),
                proptest::option::of(prop_oneof![
                    Just(DeviceState::Provisioned),
                    Just(DeviceState::Locked)
                ]),
                proptest::option::of(seen),
                (0..DeviceSort::ALL.len(), any::<bool>()),
                proptest::option::of(place),
                any::<u32>(),
            )
                .prop_map(
                    |(tags, prefix, state, seen, (sort, descending), from, limit)| FindQuery {
                        tags,
                        prefix,
                        state,
                        seen,
                        sort: DeviceSort::ALL[sort],
                        descending,
                        from,
                        limit,
                    },
                )
        }

        fn backfill() -> impl Strategy<Value = BackfillView> {
            let state = prop_oneof![
                Just(BackfillState::Queuing),
                Just(BackfillState::Sending),
                Just(BackfillState::Done),
                Just(BackfillState::Cancelled),
                Just(BackfillState::Failed),
            ];
            (
                (any::<u64>(), name(), any::<i64>(), any::<i64>()),
                (proptest::option::of(any::<u32>()), state),
                (any::<u64>(), any::<u64>(), any::<i64>()),
                (proptest::option::of(any::<i64>()), any::<bool>()),
            )
                .prop_map(
                    |(
                        (id, resource, since, until),
                        (devices, state),
                        (queued, applied, started_at),
                        (finished_at, by_target),
                    )| BackfillView {
                        id,
                        resource,
                        since,
                        until,
                        devices,
                        state,
                        queued,
                        applied,
                        started_at,
                        finished_at,
                        by_target,
                    },
                )
        }

        fn answer() -> impl Strategy<Value = Answer> {
            prop_oneof![
                (
                    proptest::collection::vec(view(), 0..3),
                    proptest::option::of(identity())
                )
                    .prop_map(|(devices, next)| Answer::Page { devices, next }),
                view().prop_map(Answer::Device),
                (
                    any::<u64>(),
                    proptest::collection::vec(any::<[u8; 32]>(), 0..3)
                )
                    .prop_map(|(count, buckets)| Answer::Digest(Digest { count, buckets })),
                proptest::collection::vec((identity(), any::<[u8; 32]>()), 0..3)
                    .prop_map(Answer::Hashes),
                proptest::collection::vec(view(), 0..3).prop_map(Answer::Devices),
                any::<u64>().prop_map(Answer::Queued),
                proptest::collection::vec(
                    (
                        "[a-z][a-z0-9_]{0,10}",
                        0..5usize,
                        any::<u64>(),
                        any::<u64>(),
                        any::<i64>(),
                        any::<i64>()
                    ),
                    0..3
                )
                .prop_map(|rows| Answer::Waiting(
                    rows.into_iter()
                        .map(|(r, f, points, devices, from, until)| WaitingView {
                            resource: ResourceName::parse(&r).expect("a valid name"),
                            format: Format::ALL[f],
                            points,
                            devices,
                            from,
                            until,
                        })
                        .collect()
                )),
                proptest::option::of(backfill()).prop_map(Answer::Backfill),
                ("[a-z_]{1,12}", ".{0,20}")
                    .prop_map(|(code, message)| Answer::Refused { code, message }),
                (
                    proptest::collection::vec(view(), 0..3),
                    any::<bool>(),
                    any::<u64>()
                )
                    .prop_map(|(devices, more, total)| Answer::Found {
                        devices,
                        more,
                        total
                    }),
            ]
        }

        proptest! {
            #[test]
            fn every_request_round_trips(id in any::<u64>(), op in op()) {
                let req = Request { id, op };
                prop_assert_eq!(Request::decode(&req.encode()), Ok(req));
            }

            #[test]
            fn every_answer_round_trips(id in any::<u64>(), answer in answer()) {
                let resp = Response { id, answer };
                let bytes = resp.encode();
                prop_assert_eq!(bytes[0], service::LOOKUP_RESPONSE);
                prop_assert_eq!(Response::decode(&bytes), Ok(resp));
            }

            #[test]
            fn random_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = Request::decode(&bytes);
                let _ = Response::decode(&bytes);
            }

            #[test]
            fn a_view_hashes_the_same_after_the_trip(v in view()) {
                let resp = Response { id: 1, answer: Answer::Device(v.clone()) };
                let Ok(Response { answer: Answer::Device(back), .. }) = Response::decode(&resp.encode()) else {
                    return Err(TestCaseError::fail("not a device"));
                };
                prop_assert_eq!(device_hash(&back), device_hash(&v));
                prop_assert_eq!(bucket_of(&back.identity), bucket_of(&v.identity));
            }
        }
    }
}
