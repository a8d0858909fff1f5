//! Device convergence (docs/spec.md §5): a device's replicated record, the per-field
//! last-writer-wins [`merge`], and the view an operator sees.
//!
//! A [`DeviceRecord`] is both the state a site stores and the change it sends: a change is
//! simply a record that carries only the fields it touches. Every field is a [`Lww`] register
//! stamped with a [`Stamp`] (HLC reading, then site name), and the record keeps the stamp of
//! the latest create and of the latest delete. Merging takes, field by field, the value with
//! the greatest stamp, so merge is a join: commutative, associative and idempotent. Both sites
//! therefore reach the same record once each has merged the other's changes, whatever the
//! order, and however often a change is delivered.
//!
//! Deletes: a device is live when its latest create is newer than its latest delete. An edit
//! never resurrects a device, so a delete wins over every concurrent edit of the same device;
//! only a later create (a greater stamp) brings it back, and then only fields written at or
//! after that create are visible, so a re-created device starts clean. The tombstone
//! (`deleted`) is kept in the record for ever: it is one stamp per deleted device.
//!
//! Granularity: `state` and `permissions` are one register each; `tags` and `config` are one
//! register per key, so concurrent edits of different tags both survive. Removing a tag or a
//! configuration value writes `None` into its register.
//!
//! Deliberately absent: storage and clocks. The caller stamps edits with its own
//! [`crate::sync::Hlc`], and calls `Hlc::observe(record.max_stamp())` when it merges a remote
//! change, so that its next edit is ordered after what it has seen.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::hlc::Stamp;
use crate::model::{
    DeviceState, Format, Identity, ModelError, Permission, ResourceName, Tags, Value,
    check_permissions, check_tags,
};

/// Why two device records cannot be merged, or a received one is not acceptable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot merge the records of two devices ({left} and {right})")]
    IdentityMismatch { left: Identity, right: Identity },
    #[error("device {identity} carries an invalid field: {source}")]
    Invalid {
        identity: Identity,
        source: crate::model::ModelError,
    },
    #[error(
        "device {identity} carries a stamp {ahead_us} µs ahead of this site's clock (at most \
         {MAX_DRIFT_US} µs accepted)"
    )]
    StampAhead { identity: Identity, ahead_us: u64 },
}

/// How far ahead of the local clock a received stamp may be. Beyond it the change is
/// refused: observing a stamp at `i64::MAX` would saturate the hybrid clock for ever
/// (issue 13 #11). One hour tolerates badly set clocks; a change refused for it shows in
/// the drift check.
pub const MAX_DRIFT_US: u64 = 3_600_000_000;

/// A last-writer-wins register: a value and the stamp of the write that set it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lww<T> {
    pub stamp: Stamp,
    pub value: T,
}

impl<T: Serialize + Clone> Lww<T> {
    pub fn new(stamp: Stamp, value: T) -> Self {
        Self { stamp, value }
    }

    /// The winner of two writes: the greater stamp; for equal stamps (a site that reused a
    /// clock reading) the greater encoded value, so that the choice is still deterministic.
    fn join(a: &Lww<T>, b: &Lww<T>) -> Lww<T> {
        let order = a.stamp.cmp(&b.stamp).then_with(|| {
            let ea = postcard::to_allocvec(&a.value).unwrap_or_default();
            let eb = postcard::to_allocvec(&b.value).unwrap_or_default();
            ea.cmp(&eb)
        });
        if order == Ordering::Less {
            b.clone()
        } else {
            a.clone()
        }
    }
}

/// The replicated record of one device, or a change to it (a record with fewer fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub identity: Identity,
    /// The latest create; the device is live while this is newer than `deleted`.
    pub created: Option<Stamp>,
    /// The latest delete (the tombstone). Kept so that a late edit cannot resurrect.
    pub deleted: Option<Stamp>,
    pub state: Option<Lww<DeviceState>>,
    pub permissions: Option<Lww<Vec<Permission>>>,
    /// One register per tag key; `None` is a removed tag.
    pub tags: BTreeMap<String, Lww<Option<String>>>,
    /// One register per settable resource: the device's desired value; `None` is unset.
    pub config: BTreeMap<ResourceName, Lww<Option<Value>>>,
}

/// What an operator sees of a live device after merging.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceView {
    pub identity: Identity,
    pub state: DeviceState,
    pub permissions: Vec<Permission>,
    pub tags: Tags,
    pub config: BTreeMap<ResourceName, Value>,
}

/// The fields of an edit; `None` or empty leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceEdit {
    pub state: Option<DeviceState>,
    pub permissions: Option<Vec<Permission>>,
    /// Tags to set (`Some`) or remove (`None`).
    pub tags: BTreeMap<String, Option<String>>,
    /// Configuration values to set (`Some`) or unset (`None`).
    pub config: BTreeMap<ResourceName, Option<Value>>,
}

impl DeviceRecord {
    /// A record that knows nothing about the device yet: the identity element of [`merge`].
    pub fn empty(identity: Identity) -> Self {
        Self {
            identity,
            created: None,
            deleted: None,
            state: None,
            permissions: None,
            tags: BTreeMap::new(),
            config: BTreeMap::new(),
        }
    }

    /// The change that creates (or re-creates) a device with these fields.
    pub fn create(identity: Identity, stamp: Stamp, fields: DeviceEdit) -> Self {
        let mut r = Self::edit(identity, stamp.clone(), fields);
        r.state
            .get_or_insert_with(|| Lww::new(stamp.clone(), DeviceState::default()));
        r.permissions
            .get_or_insert_with(|| Lww::new(stamp.clone(), Vec::new()));
        r.created = Some(stamp);
        r
    }

    /// The change that edits some fields of a device.
    pub fn edit(identity: Identity, stamp: Stamp, fields: DeviceEdit) -> Self {
        let mut r = Self::empty(identity);
        r.state = fields.state.map(|v| Lww::new(stamp.clone(), v));
        r.permissions = fields.permissions.map(|v| Lww::new(stamp.clone(), v));
        r.tags = fields
            .tags
            .into_iter()
            .map(|(k, v)| (k, Lww::new(stamp.clone(), v)))
            .collect();
        r.config = fields
            .config
            .into_iter()
            .map(|(k, v)| (k, Lww::new(stamp.clone(), v)))
            .collect();
        r
    }

    /// The change that deletes a device (its tombstone).
    pub fn delete(identity: Identity, stamp: Stamp) -> Self {
        let mut r = Self::empty(identity);
        r.deleted = Some(stamp);
        r
    }

    /// Whether the device exists: its latest create is newer than its latest delete.
    pub fn is_live(&self) -> bool {
        match (&self.created, &self.deleted) {
            (Some(c), Some(d)) => c > d,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// The device as an operator sees it, or `None` when it does not exist. Only fields
    /// written at or after the latest create are visible.
    pub fn view(&self) -> Option<DeviceView> {
        if !self.is_live() {
            return None;
        }
        let created = self.created.as_ref()?;
        let visible = |s: &Stamp| s >= created;
        Some(DeviceView {
            identity: self.identity.clone(),
            state: self
                .state
                .as_ref()
                .filter(|r| visible(&r.stamp))
                .map(|r| r.value)
                .unwrap_or_default(),
            permissions: self
                .permissions
                .as_ref()
                .filter(|r| visible(&r.stamp))
                .map(|r| r.value.clone())
                .unwrap_or_default(),
            tags: self
                .tags
                .iter()
                .filter(|(_, r)| visible(&r.stamp))
                .filter_map(|(k, r)| r.value.clone().map(|v| (k.clone(), v)))
                .collect(),
            config: self
                .config
                .iter()
                .filter(|(_, r)| visible(&r.stamp))
                .filter_map(|(k, r)| r.value.clone().map(|v| (k.clone(), v)))
                .collect(),
        })
    }

    /// The greatest stamp in the record, for `Hlc::observe` after a merge.
    pub fn max_stamp(&self) -> Option<&Stamp> {
        let fields = self
            .state
            .iter()
            .map(|r| &r.stamp)
            .chain(self.permissions.iter().map(|r| &r.stamp))
            .chain(self.tags.values().map(|r| &r.stamp))
            .chain(self.config.values().map(|r| &r.stamp));
        self.created
            .iter()
            .chain(self.deleted.iter())
            .chain(fields)
            .max()
    }

    /// [`Self::check`], and that no stamp is more than [`MAX_DRIFT_US`] ahead of `now_us`.
    pub fn check_received(&self, now_us: u64) -> Result<(), DeviceError> {
        self.check()?;
        match self.max_stamp() {
            Some(s) if s.hlc.wall_us > now_us.saturating_add(MAX_DRIFT_US) => {
                Err(DeviceError::StampAhead {
                    identity: self.identity.clone(),
                    ahead_us: s.hlc.wall_us - now_us,
                })
            }
            _ => Ok(()),
        }
    }

    /// Checks a received record against the domain's limits (tag keys and values, grants,
    /// finite numbers in configured values).
    pub fn check(&self) -> Result<(), DeviceError> {
        let invalid = |source| DeviceError::Invalid {
            identity: self.identity.clone(),
            source,
        };
        let tags: Tags = self
            .tags
            .iter()
            .map(|(k, r)| (k.clone(), r.value.clone().unwrap_or_default()))
            .collect();
        check_tags(&tags).map_err(invalid)?;
        if let Some(p) = &self.permissions {
            check_permissions(&p.value).map_err(invalid)?;
        }
        // A configured value passed its format's check on its own site, which takes only
        // finite numbers; the codec's decoder promises no other.
        for (resource, r) in &self.config {
            if let Some(Value::Number(x)) = &r.value
                && !x.is_finite()
            {
                return Err(invalid(ModelError::Value {
                    resource: resource.to_string(),
                    format: Format::Number,
                    reason: "expected a finite number",
                }));
            }
        }
        Ok(())
    }
}

/// Merges two records of the same device: per field, the write with the greatest stamp.
///
/// A join: `merge(a, b) == merge(b, a)`, `merge(a, merge(b, c)) == merge(merge(a, b), c)`,
/// `merge(a, a) == a`, and [`DeviceRecord::empty`] is its identity.
pub fn merge(local: &DeviceRecord, remote: &DeviceRecord) -> Result<DeviceRecord, DeviceError> {
    if local.identity != remote.identity {
        return Err(DeviceError::IdentityMismatch {
            left: local.identity.clone(),
            right: remote.identity.clone(),
        });
    }
    Ok(DeviceRecord {
        identity: local.identity.clone(),
        created: local.created.clone().max(remote.created.clone()),
        deleted: local.deleted.clone().max(remote.deleted.clone()),
        state: join_opt(&local.state, &remote.state),
        permissions: join_opt(&local.permissions, &remote.permissions),
        tags: join_maps(&local.tags, &remote.tags),
        config: join_maps(&local.config, &remote.config),
    })
}

fn join_opt<T: Serialize + Clone>(a: &Option<Lww<T>>, b: &Option<Lww<T>>) -> Option<Lww<T>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Lww::join(a, b)),
        (a, b) => a.clone().or_else(|| b.clone()),
    }
}

fn join_maps<K: Ord + Clone, T: Serialize + Clone>(
    a: &BTreeMap<K, Lww<T>>,
    b: &BTreeMap<K, Lww<T>>,
) -> BTreeMap<K, Lww<T>> {
    let mut out = a.clone();
    for (k, rb) in b {
        let joined = match out.get(k) {
            Some(ra) => Lww::join(ra, rb),
            None => rb.clone(),
        };
        out.insert(k.clone(), joined);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::Access;
    use crate::sync::hlc::Hlc;
    use proptest::prelude::*;

    fn id() -> Identity {
        Identity::parse("dev-1").unwrap()
    }

    fn st(wall: u64, site: &str) -> Stamp {
        Stamp::new(Hlc::new(wall, 0), site)
    }

    fn tags(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    fn apply(changes: &[DeviceRecord]) -> DeviceRecord {
        changes
            .iter()
            .fold(DeviceRecord::empty(id()), |acc, c| merge(&acc, c).unwrap())
    }

    #[test]
    fn a_received_stamp_far_ahead_of_the_clock_is_refused() {
        let now = 1_700_000_000_000_000;
        let ok = DeviceRecord::create(id(), st(now + MAX_DRIFT_US, "a"), DeviceEdit::default());
        assert_eq!(ok.check_received(now), Ok(()));
        let ahead = DeviceRecord::create(id(), st(i64::MAX as u64, "a"), DeviceEdit::default());
        assert!(matches!(
            ahead.check_received(now),
            Err(DeviceError::StampAhead { .. })
        ));
        assert_eq!(DeviceRecord::empty(id()).check_received(now), Ok(()));
    }

    /// A non-finite number in a configured value is refused, as the format's check would
    /// have refused it where it was set (the sync_codec fuzz target found one that passed).
    #[test]
    fn a_configured_value_that_is_not_a_finite_number_is_refused() {
        let set = |v: f64| {
            let edit = DeviceEdit {
                config: [(ResourceName::parse("t").unwrap(), Some(Value::Number(v)))].into(),
                ..DeviceEdit::default()
            };
            DeviceRecord::create(id(), st(1, "a"), edit)
        };
        assert_eq!(set(1.5).check(), Ok(()));
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(
                matches!(set(x).check(), Err(DeviceError::Invalid { .. })),
                "{x}"
            );
        }
    }

    #[test]
    fn later_edit_wins_and_ties_go_to_the_greater_site_name() {
        let create = DeviceRecord::create(id(), st(1, "a"), DeviceEdit::default());
        let ea = DeviceRecord::edit(
            id(),
            st(5, "a"),
            DeviceEdit {
                tags: tags(&[("room", Some("1"))]),
                ..Default::default()
            },
        );
        let eb = DeviceRecord::edit(
            id(),
            st(5, "b"),
            DeviceEdit {
                tags: tags(&[("room", Some("2"))]),
                ..Default::default()
            },
        );
        let v = apply(&[create, ea, eb]).view().unwrap();
        assert_eq!(v.tags.get("room").map(String::as_str), Some("2"));
    }

    #[test]
    fn delete_wins_over_a_concurrent_edit_until_recreated() {
        let create = DeviceRecord::create(id(), st(1, "a"), DeviceEdit::default());
        let delete = DeviceRecord::delete(id(), st(10, "a"));
        let late_edit = DeviceRecord::edit(
            id(),
            st(20, "b"),
            DeviceEdit {
                state: Some(DeviceState::Locked),
                ..Default::default()
            },
        );
        let merged = apply(&[create.clone(), delete.clone(), late_edit.clone()]);
        assert_eq!(merged.view(), None, "an edit never resurrects a device");
        let recreate = DeviceRecord::create(
            id(),
            st(30, "b"),
            DeviceEdit {
                tags: tags(&[("k", Some("v"))]),
                ..Default::default()
            },
        );
        let v = apply(&[create, delete, late_edit, recreate])
            .view()
            .unwrap();
        assert_eq!(v.state, DeviceState::Provisioned, "older fields are hidden");
        assert_eq!(v.tags.len(), 1);
    }

    #[test]
    fn merge_refuses_two_devices() {
        let other = DeviceRecord::empty(Identity::parse("dev-2").unwrap());
        assert!(matches!(
            merge(&DeviceRecord::empty(id()), &other),
            Err(DeviceError::IdentityMismatch { .. })
        ));
    }

    /// A random change of device `dev-1`, stamped by one of two sites.
    pub(crate) fn arb_change() -> impl Strategy<Value = DeviceRecord> {
        let stamp = (0u64..6, 0u32..2, prop::bool::ANY)
            .prop_map(|(w, c, b)| Stamp::new(Hlc::new(w, c), if b { "site-a" } else { "site-b" }));
        let edit = (
            prop::option::of(prop::bool::ANY),
            prop::option::of(0usize..3),
            prop::collection::btree_map("[ab]", prop::option::of("[xy]"), 0..3),
            prop::collection::btree_map(
                prop::sample::select(vec!["c1", "c2"]),
                prop::option::of(-3i64..3),
                0..2,
            ),
        )
            .prop_map(|(state, perms, tags, config)| DeviceEdit {
                state: state.map(|l| {
                    if l {
                        DeviceState::Locked
                    } else {
                        DeviceState::Provisioned
                    }
                }),
                permissions: perms.map(|n| {
                    (0..n)
                        .map(|i| Permission {
                            principal: format!("p{i}"),
                            access: Access::Read,
                        })
                        .collect()
                }),
                tags,
                config: config
                    .into_iter()
                    .map(|(k, v)| (ResourceName::parse(k).unwrap(), v.map(Value::Integer)))
                    .collect(),
            });
        (0u8..4, stamp, edit).prop_map(|(kind, stamp, edit)| match kind {
            0 => DeviceRecord::create(id(), stamp, edit),
            1 => DeviceRecord::delete(id(), stamp),
            _ => DeviceRecord::edit(id(), stamp, edit),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn merge_is_a_join(a in arb_change(), b in arb_change(), c in arb_change()) {
            let ab = merge(&a, &b).unwrap();
            prop_assert_eq!(&ab, &merge(&b, &a).unwrap());
            prop_assert_eq!(
                merge(&ab, &c).unwrap(),
                merge(&a, &merge(&b, &c).unwrap()).unwrap()
            );
            prop_assert_eq!(&merge(&a, &a).unwrap(), &a);
            prop_assert_eq!(&merge(&a, &DeviceRecord::empty(id())).unwrap(), &a);
        }

        /// Two sites edit one device; each change reaches the other side in a random order,
        /// some more than once. Both sides end equal, and equal to the join of all changes.
        #[test]
        fn sites_converge_under_any_delivery(
            changes in prop::collection::vec((prop::bool::ANY, arb_change()), 1..12),
            order in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let (mut a, mut b) = (DeviceRecord::empty(id()), DeviceRecord::empty(id()));
            let mut to_a = Vec::new();
            let mut to_b = Vec::new();
            for (on_a, ch) in &changes {
                if *on_a {
                    a = merge(&a, ch).unwrap();
                    to_b.push(ch.clone());
                } else {
                    b = merge(&b, ch).unwrap();
                    to_a.push(ch.clone());
                }
            }
            // Random duplicated deliveries first, then everything once in reverse order.
            for ix in &order {
                if !to_a.is_empty() { a = merge(&a, ix.get(&to_a)).unwrap(); }
                if !to_b.is_empty() { b = merge(&b, ix.get(&to_b)).unwrap(); }
            }
            for ch in to_a.iter().rev() { a = merge(&a, ch).unwrap(); }
            for ch in to_b.iter().rev() { b = merge(&b, ch).unwrap(); }
            let all: Vec<_> = changes.iter().map(|(_, c)| c.clone()).collect();
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.view(), apply(&all).view());
        }
    }
}
