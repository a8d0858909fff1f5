//! Devices: the registry of a connector (create, change, delete, new token, list in pages),
//! and what the drift check reads of it (views, the registry digest, per-device hashes) and
//! re-sends.
//!
//! Every write wakes the connector's sync driver: on a paired connector of either role a
//! device change is appended to the outbox in the same store job.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proto::lookup::{DeviceView, Digest, DigestBuilder, MAX_RESEND, bucket_of, device_hash};
use proto::model::{
    self, ConnectorId, DeviceSort, DeviceState, Identity, ListPlace, Permission, ResourceName,
    SeenFilter, Tags,
};
use store::{Actor, AuditEntry, AuditQuery, Device, DeviceQuery, StoreError};

use super::{Error, Result};
use crate::auth;
use crate::clock::now_micros;
use crate::state::AppState;

/// Default and largest page of the device list.
pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 1000;

/// Store page size when scanning a whole registry.
const SCAN_PAGE: usize = 1000;

/// A device to create.
pub struct NewDevice {
    pub identity: Identity,
    pub tags: Tags,
    pub permissions: Vec<Permission>,
    pub state: DeviceState,
}

/// A change of a device; `None` leaves a field as it is. A configuration entry of `None`
/// (JSON `null`) clears that resource's desired value.
#[derive(Default)]
pub struct DeviceChange {
    pub tags: Option<Tags>,
    pub permissions: Option<Vec<Permission>>,
    pub state: Option<DeviceState>,
    pub config: Option<BTreeMap<ResourceName, Option<serde_json::Value>>>,
}

/// Creates a device and its token (returned once, never stored in clear).
pub async fn create(
    state: &AppState,
    cid: &ConnectorId,
    new: NewDevice,
    by: &Actor,
) -> Result<(Device, String)> {
    model::check_tags(&new.tags)?;
    model::check_permissions(&new.permissions)?;
    let (token, hash) = auth::new_token();
    let new = store::NewDevice {
        identity: new.identity,
        tags: new.tags,
        permissions: new.permissions,
        state: new.state,
        token: hash,
        created_at: now_micros(),
    };
    let device = state.store.create_device(cid, new, by).await?;
    state.remote.sync.appended(cid);
    tracing::info!(connector = %cid, device = %device.identity, "created device");
    Ok((device, token))
}

/// Changes a device's tags, permissions, state or configuration.
pub async fn update(
    state: &AppState,
    cid: &ConnectorId,
    id: &Identity,
    change: DeviceChange,
    by: &Actor,
) -> Result<Device> {
    let patch = store::DevicePatch {
        tags: change.tags,
        permissions: change.permissions,
        state: change.state,
        config: change.config,
    };
    let device = state.store.update_device(cid, id, patch, by).await?;
    state.remote.sync.appended(cid);
    Ok(device)
}

/// Deletes a device with its data, on both sides of a pairing.
pub async fn delete(state: &AppState, cid: &ConnectorId, id: &Identity, by: &Actor) -> Result<()> {
    state.store.delete_device(cid, id, by).await?;
    state.remote.sync.appended(cid);
    tracing::info!(connector = %cid, device = %id, "deleted device");
    Ok(())
}

/// Issues a device a new token (returned once, stored hashed); the old one stops working.
/// Also how a device that reached this site by Remote-Sync (without a token here) gets one.
pub async fn new_token(
    state: &AppState,
    cid: &ConnectorId,
    id: &Identity,
    by: &Actor,
) -> Result<String> {
    let (token, hash) = auth::new_token();
    state.store.set_device_token(cid, id, hash, by).await?;
    tracing::info!(connector = %cid, device = %id, "issued a new device token");
    Ok(token)
}

pub async fn get(state: &AppState, cid: &ConnectorId, id: &Identity) -> Result<Device> {
    Ok(state.store.device(cid, id).await?)
}

/// Default and largest page of the audit log.
pub const AUDIT_PAGE: u32 = 50;
pub const MAX_AUDIT_PAGE: u32 = 500;

/// A page of the audit log, newest first, and the cursor of the next when more may follow.
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next: Option<String>,
}

/// One page of connector `cid`'s device audit log (of one device when `device` is given),
/// continuing after `cursor` (given out as `AuditPage::next`), at most `limit` (1 to
/// [`MAX_AUDIT_PAGE`]) entries.
pub async fn audit(
    state: &AppState,
    cid: &ConnectorId,
    device: Option<Identity>,
    cursor: Option<&str>,
    limit: u32,
) -> Result<AuditPage> {
    if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(Error::InvalidQuery(format!(
            "limit must be a whole number from 1 to {MAX_AUDIT_PAGE}, not \"{limit}\""
        )));
    }
    let before = cursor
        .map(|c| {
            c.parse::<u64>()
                .map_err(|_| Error::InvalidQuery("cursor is not one this site gave out".into()))
        })
        .transpose()?;
    let want = usize::try_from(limit).unwrap_or(usize::MAX);
    let query = AuditQuery {
        identity: device,
        before,
        // One more than asked, to know whether a next page exists.
        limit: want.saturating_add(1),
    };
    let mut entries = state.store.device_audit(cid, query).await?;
    let mut next = None;
    if entries.len() > want {
        entries.truncate(want);
        next = entries.last().map(|e| e.id.to_string());
    }
    Ok(AuditPage { entries, next })
}

/// One page of a device list: devices carrying every tag of `tags` and passing the other
/// filters given, sorted by `sort` (then identity), at most `limit` (1 to [`MAX_PAGE`]) of
/// them from `from` (a place a cursor names: after it, or going back, before it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListQuery {
    pub tags: Vec<(String, String)>,
    /// Only identities that start with this (a search as the operator types).
    pub prefix: Option<String>,
    pub state: Option<DeviceState>,
    pub seen: Option<SeenFilter>,
    pub sort: DeviceSort,
    pub descending: bool,
    pub from: Option<ListPlace>,
    pub limit: u32,
}

impl ListQuery {
    /// Refuses a page size outside 1 to [`MAX_PAGE`].
    pub fn check(self) -> Result<Self> {
        if (1..=MAX_PAGE).contains(&self.limit) {
            Ok(self)
        } else {
            Err(Error::InvalidQuery(format!(
                "limit must be a whole number from 1 to {MAX_PAGE}, not \"{}\"",
                self.limit
            )))
        }
    }

    /// Whether any filter is set (the search, state or last seen).
    pub fn filtered(&self) -> bool {
        !self.tags.is_empty()
            || self.prefix.is_some()
            || self.state.is_some()
            || self.seen.is_some()
    }

    /// The cursor of `place` in this list.
    pub fn cursor(&self, place: &ListPlace) -> String {
        cursor(place, self.sort, self.descending)
    }
}

/// An hour and a day, µs.
const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

/// The last-seen filter a word names, at `now`: `1h` (a point in the last hour), `24h` (in
/// the last 24 hours), `stale` (seen, but silent for over 24 hours) or `never`.
pub fn seen_filter(word: &str, now: i64) -> Result<SeenFilter> {
    match word {
        "1h" => Ok(SeenFilter::Since(now - HOUR_US)),
        "24h" => Ok(SeenFilter::Since(now - DAY_US)),
        "stale" => Ok(SeenFilter::Before(now - DAY_US)),
        "never" => Ok(SeenFilter::Never),
        other => Err(Error::InvalidQuery(format!(
            "seen must be 1h, 24h, stale or never, not {other:?}"
        ))),
    }
}

/// A page of devices, and where the pages before and after it start.
#[derive(Debug, Default)]
pub struct Page {
    pub devices: Vec<Device>,
    /// After the last device, when more follow.
    pub next: Option<ListPlace>,
    /// Before the first device, when this page was reached through a cursor (devices came
    /// before it then).
    pub prev: Option<ListPlace>,
    /// How many devices pass the filter, on every page (not known of an older peer's list).
    pub total: Option<u64>,
}

/// Mark of a cursor of this version (an identity never holds it; a cursor without it is
/// the identity an identity-ordered page continues after, as cursors were before sorting).
const CURSOR_MARK: char = '~';

/// The cursor this site gives out for a page starting at `place` of a list sorted so.
pub fn cursor(place: &ListPlace, sort: DeviceSort, descending: bool) -> String {
    let text = format!(
        "{CURSOR_MARK}{}.{}.{}.{}.{}",
        sort.as_str(),
        if descending { "d" } else { "a" },
        if place.back { "b" } else { "f" },
        place.key,
        place.identity
    );
    URL_SAFE_NO_PAD.encode(text)
}

/// The place a cursor given out by [`cursor`] names, in a list sorted so; a cursor of a
/// list sorted otherwise is refused.
pub fn parse_cursor(c: &str, sort: DeviceSort, descending: bool) -> Result<ListPlace> {
    let bad = || Error::InvalidQuery("cursor is not one this site gave out".into());
    let text = URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let Some(rest) = text.strip_prefix(CURSOR_MARK) else {
        let identity = Identity::parse(&text).map_err(|_| bad())?;
        if sort != DeviceSort::Identity || descending {
            return Err(other_sort());
        }
        return Ok(ListPlace {
            key: 0,
            identity,
            back: false,
        });
    };
    let mut parts = rest.splitn(5, '.');
    let (Some(s), Some(d), Some(b), Some(key), Some(identity)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad());
    };
    let cursor_sort = DeviceSort::parse(s).ok_or_else(bad)?;
    let cursor_desc = match d {
        "a" => false,
        "d" => true,
        _ => return Err(bad()),
    };
    let back = match b {
        "f" => false,
        "b" => true,
        _ => return Err(bad()),
    };
    let place = ListPlace {
        key: key.parse().map_err(|_| bad())?,
        identity: Identity::parse(identity).map_err(|_| bad())?,
        back,
    };
    if (cursor_sort, cursor_desc) != (sort, descending) {
        return Err(other_sort());
    }
    Ok(place)
}

fn other_sort() -> Error {
    Error::InvalidQuery(
        "cursor belongs to the list sorted another way; start again from the first page".into(),
    )
}

/// Where the page after (`back` false) or before a device starts, in a list sorted by `sort`.
pub fn place_of(d: &Device, sort: DeviceSort, back: bool) -> ListPlace {
    ListPlace {
        key: store::sort_key(d, sort),
        identity: d.identity.clone(),
        back,
    }
}

/// Cuts a page read with one device more than `want` (beyond the page's far end: after it,
/// or before it going back) to `want`, and says where the pages around it start.
pub fn finish_page(mut devices: Vec<Device>, want: usize, q: &ListQuery) -> Page {
    let back = q.from.as_ref().is_some_and(|p| p.back);
    let more = devices.len() > want;
    if more {
        if back {
            devices.remove(0);
        } else {
            devices.truncate(want);
        }
    }
    page_ends(devices, more, q)
}

/// A page of `q`'s list with where the pages around it start: `more` says that devices lie
/// beyond its far end (after it; going back, before it), and the near end has a page when
/// it was reached through a cursor.
pub fn page_ends(devices: Vec<Device>, more: bool, q: &ListQuery) -> Page {
    let back = q.from.as_ref().is_some_and(|p| p.back);
    let (more_after, more_before) = if back {
        (true, more)
    } else {
        (more, q.from.is_some())
    };
    // An empty page turns the place it was asked from around.
    let turned = |back| q.from.clone().map(|p| ListPlace { back, ..p });
    let next = more_after
        .then(|| match devices.last() {
            Some(d) => Some(place_of(d, q.sort, false)),
            None => turned(false),
        })
        .flatten();
    let prev = more_before
        .then(|| match devices.first() {
            Some(d) => Some(place_of(d, q.sort, true)),
            None => turned(true),
        })
        .flatten();
    Page {
        devices,
        next,
        prev,
        total: None,
    }
}

/// One page of a connector's devices, with the count of those that pass the filter.
pub async fn page(state: &AppState, cid: &ConnectorId, q: ListQuery) -> Result<Page> {
    let q = q.check()?;
    let want = usize::try_from(q.limit).unwrap_or(usize::MAX);
    let query = DeviceQuery {
        tags: q.tags.clone(),
        prefix: q.prefix.clone(),
        state: q.state,
        seen: q.seen,
        sort: q.sort,
        descending: q.descending,
        from: q.from.clone(),
        // One more than asked, to know whether a page follows beyond it.
        limit: want.saturating_add(1),
    };
    let total = state.store.count_devices(cid, query.clone()).await?;
    let devices = state.store.devices(cid, query).await?;
    Ok(Page {
        total: Some(total),
        ..finish_page(devices, want, &q)
    })
}

/// A device as this site shows it to its peer.
pub fn view(d: &Device) -> DeviceView {
    DeviceView {
        identity: d.identity.clone(),
        tags: d.tags.clone(),
        permissions: d.permissions.clone(),
        state: d.state,
        config: d.config.clone(),
        values: d
            .values
            .iter()
            .map(|(k, p)| (k.clone(), (p.t, p.v.clone())))
            .collect(),
        created_at: d.created_at,
        sync_pending: d.sync_pending,
    }
}

/// A device as the peer showed it.
pub fn from_view(v: DeviceView) -> Device {
    Device {
        identity: v.identity,
        tags: v.tags,
        permissions: v.permissions,
        state: v.state,
        config: v.config,
        values: v
            .values
            .into_iter()
            .map(|(k, (t, v))| (k, store::Point { t, v }))
            .collect(),
        created_at: v.created_at,
        sync_pending: v.sync_pending,
    }
}

/// Calls `each` for every device of connector `cid`, in identity order, a store page at a
/// time.
async fn scan(state: &AppState, cid: &ConnectorId, mut each: impl FnMut(&Device)) -> Result<()> {
    let mut after = None;
    loop {
        let page = state
            .store
            .devices(cid, DeviceQuery::after(after.take(), SCAN_PAGE))
            .await?;
        page.iter().for_each(&mut each);
        match page.last() {
            Some(last) if page.len() == SCAN_PAGE => after = Some(last.identity.clone()),
            _ => return Ok(()),
        }
    }
}

/// The digest of connector `cid`'s registry on this site.
pub async fn digest(state: &AppState, cid: &ConnectorId) -> Result<Digest> {
    let mut builder = DigestBuilder::default();
    scan(state, cid, |d| builder.add(&view(d))).await?;
    Ok(builder.finish())
}

/// Per-device hashes of the devices in `buckets`, by identity.
pub async fn hashes(
    state: &AppState,
    cid: &ConnectorId,
    buckets: &BTreeSet<u8>,
) -> Result<BTreeMap<Identity, [u8; 32]>> {
    let mut out = BTreeMap::new();
    scan(state, cid, |d| {
        if buckets.contains(&bucket_of(&d.identity)) {
            out.insert(d.identity.clone(), device_hash(&view(d)));
        }
    })
    .await?;
    Ok(out)
}

/// Those of `ids` that exist, in the order asked.
pub async fn fetch(state: &AppState, cid: &ConnectorId, ids: &[Identity]) -> Result<Vec<Device>> {
    let mut out = Vec::new();
    for id in ids {
        match state.store.device(cid, id).await {
            Ok(d) => out.push(d),
            // Deleted since the hashes were read: the asking side shows it missing.
            Err(StoreError::DeviceNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Queues this site's current record of each of `ids` on the durable sync stream; answers
/// how many exist here.
pub async fn resend(state: &AppState, cid: &ConnectorId, ids: Vec<Identity>) -> Result<u64> {
    if ids.len() > MAX_RESEND {
        return Err(Error::Invalid(format!(
            "at most {MAX_RESEND} devices at once"
        )));
    }
    let queued = state.store.resend_devices(cid, ids).await?;
    state.remote.sync.appended(cid);
    Ok(queued)
}

/// The identities a re-send names: at most [`MAX_RESEND`], each valid.
pub fn identities(ids: &[String]) -> Result<Vec<Identity>> {
    if ids.len() > MAX_RESEND {
        return Err(Error::Invalid(format!(
            "at most {MAX_RESEND} devices at once"
        )));
    }
    Ok(ids
        .iter()
        .map(|id| Identity::parse(id))
        .collect::<std::result::Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> Device {
        Device {
            identity: Identity::parse(id).unwrap(),
            tags: Tags::new(),
            permissions: Vec::new(),
            state: DeviceState::Provisioned,
            config: BTreeMap::new(),
            values: BTreeMap::new(),
            created_at: 0,
            sync_pending: false,
        }
    }

    fn place(id: &str, key: i64, back: bool) -> ListPlace {
        ListPlace {
            key,
            identity: Identity::parse(id).unwrap(),
            back,
        }
    }

    #[test]
    fn cursors_round_trip_in_their_own_order_only() {
        let p = place("00:AB.1-x", -1, true);
        let c = cursor(&p, DeviceSort::LastSeen, true);
        assert_eq!(parse_cursor(&c, DeviceSort::LastSeen, true).unwrap(), p);
        assert!(parse_cursor(&c, DeviceSort::LastSeen, false).is_err());
        assert!(parse_cursor(&c, DeviceSort::State, true).is_err());
        // A cursor given out before lists were sorted: the identity a page continues after.
        let old = URL_SAFE_NO_PAD.encode("00AB07");
        assert_eq!(
            parse_cursor(&old, DeviceSort::Identity, false).unwrap(),
            place("00AB07", 0, false)
        );
        assert!(parse_cursor(&old, DeviceSort::State, false).is_err());
        for junk in ["", "!!", &URL_SAFE_NO_PAD.encode("~state.a.f.x.d1")] {
            assert!(
                parse_cursor(junk, DeviceSort::State, false).is_err(),
                "{junk}"
            );
        }
    }

    #[test]
    fn a_page_knows_the_pages_around_it() {
        let ids = |p: &Page| {
            p.devices
                .iter()
                .map(|d| d.identity.to_string())
                .collect::<Vec<_>>()
        };
        let q = |from: Option<ListPlace>| ListQuery {
            from,
            limit: 2,
            ..ListQuery::default()
        };
        // The first page: more after it, nothing before.
        let first = finish_page(vec![device("a"), device("b"), device("c")], 2, &q(None));
        assert_eq!(ids(&first), ["a", "b"]);
        assert_eq!(first.next, Some(place("b", 0, false)));
        assert_eq!(first.prev, None);
        // The last page, reached forwards: a page before it, none after.
        let last = finish_page(vec![device("c")], 2, &q(Some(place("b", 0, false))));
        assert_eq!((last.next, last.prev), (None, Some(place("c", 0, true))));
        // Going back: the device read beyond the near end is dropped from the front.
        let back = finish_page(
            vec![device("a"), device("b"), device("c")],
            2,
            &q(Some(place("d", 0, true))),
        );
        assert_eq!(ids(&back), ["b", "c"]);
        assert_eq!(back.prev, Some(place("b", 0, true)));
        assert_eq!(back.next, Some(place("c", 0, false)));
        let start = finish_page(vec![device("a")], 2, &q(Some(place("b", 0, true))));
        assert_eq!((start.prev, start.next), (None, Some(place("a", 0, false))));
        // An empty page past the end still leads back.
        let empty = finish_page(vec![], 2, &q(Some(place("z", 0, false))));
        assert_eq!((empty.next, empty.prev), (None, Some(place("z", 0, true))));
    }

    #[test]
    fn seen_words_are_relative_to_now() {
        let now = 10 * DAY_US;
        assert_eq!(
            seen_filter("1h", now).unwrap(),
            SeenFilter::Since(now - HOUR_US)
        );
        assert_eq!(
            seen_filter("stale", now).unwrap(),
            SeenFilter::Before(now - DAY_US)
        );
        assert_eq!(seen_filter("never", now).unwrap(), SeenFilter::Never);
        assert!(seen_filter("1d", now).is_err());
    }
}
