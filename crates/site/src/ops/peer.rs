//! What an operator asks of the peer site, live, through the hub: the peer's devices
//! (docs/spec.md, "Remote lookup"), the drift check between the two device registries, the
//! re-send of the devices it found different, where points wait for a missing resource, and
//! a ping of any site on the hub.
//!
//! A lookup is one `proto::lookup` request over the connector's end-to-end session; the
//! answer is awaited in `peers::registry::Pending` (the peer's side is `remote::lookup`).
//! Deliberately absent: anything durable. A lookup that gets no answer in [`TIMEOUT`] is
//! `peer_offline`; nothing is retried or queued (propagating device changes is the sync
//! layer's job).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proto::lookup::{
    Answer, BUCKETS, FindQuery, MAX_FETCH, MAX_HASH_ENTRIES, Op, Request, WaitingView,
};
use proto::model::{Identity, SyncState};
use store::{Connector, Device};

use super::devices::{self, Page};
use super::{Error, Result, link_error};
use crate::peers::peer::PeerHandle;
use crate::state::AppState;

/// How long a lookup waits for the peer's answer before saying the peer is offline.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// How long a hub ping waits for the echo.
pub const HUB_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Most differing devices the drift check lists (the total is reported beside them).
pub const MAX_LISTED: usize = 100;

/// How often [`diff`] starts over when devices change under it.
pub const DIFF_ATTEMPTS: u32 = 3;

/// The peer's site name, for messages; refuses a connector that has no peer.
fn peer_site(c: &Connector) -> Result<&str> {
    match (&c.peer, c.state) {
        (Some(p), SyncState::Paired) => Ok(p.site.as_str()),
        _ => Err(Error::Conflict(format!(
            "connector {} is not paired, so it has no remote site to look up",
            c.id
        ))),
    }
}

/// Asks the peer of connector `c` and waits for its answer: `conflict` when `c` is not
/// paired, `peer_offline` when the session is down or no answer comes within [`TIMEOUT`],
/// and the peer's own refusal (`not_found`, `invalid_query`, …) otherwise.
pub(super) async fn ask(state: &AppState, c: &Connector, op: Op) -> Result<Answer> {
    let site = peer_site(c)?;
    let offline = |why: &str| {
        Error::PeerOffline(format!(
            "{site} is unreachable: {why}; it cannot be asked now."
        ))
    };
    let handle = state
        .remote
        .peer(&c.id)
        .filter(PeerHandle::is_up)
        .ok_or_else(|| offline("the encrypted session with it is not up"))?;
    let id = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
    let (_waiting, rx) = state.remote.lookups.wait(id, &c.id);
    handle
        .send(Request { id, op }.encode())
        .await
        .map_err(|e| offline(&e.to_string()))?;
    match tokio::time::timeout(TIMEOUT, rx).await {
        Ok(Ok(Answer::Refused { code, message })) => Err(remote_error(site, &code, message)),
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err(offline("the session ended before it answered")),
        Err(_) => Err(
            match state
                .remote
                .sync
                .status(&c.id)
                .and_then(|s| s.version_mismatch)
            {
                // An older peer drops a request it cannot read: say why it is silent.
                Some((peer, local)) => Error::PeerOffline(format!(
                    "{site} did not answer: it runs another version of West (sync protocol {peer}, \
                 this site {local}), which may not know this request; run the same version on \
                 both sites."
                )),
                None => offline(&format!("it did not answer within {} s", TIMEOUT.as_secs())),
            },
        ),
    }
}

/// The peer's refusal as this site's error.
fn remote_error(site: &str, code: &str, message: String) -> Error {
    match code {
        "not_found" => Error::NotFound(format!("{message} (on {site})")),
        "invalid_query" => Error::InvalidQuery(message),
        "invalid_value" => Error::Invalid(message),
        "conflict" => Error::Conflict(format!("{message} (on {site})")),
        "range_not_held" => Error::RangeNotHeld(format!("{message} (on {site})")),
        _ => Error::PeerOffline(format!("remote site {site} could not answer: {message}")),
    }
}

/// An answer of a kind the request does not call for.
pub(super) fn unexpected(c: &Connector) -> Error {
    Error::PeerOffline(format!(
        "remote site {} answered in a form this site does not know",
        c.peer.as_ref().map_or("", |p| p.site.as_str())
    ))
}

/// One page of the peer's device list, searched, filtered, sorted and paged as this site's
/// own (`Find`; a peer too old to know it drops the request, and the lookup reports
/// `peer_offline`).
pub async fn list(state: &AppState, c: &Connector, q: devices::ListQuery) -> Result<Page> {
    let q = q.check()?;
    let find = FindQuery {
        tags: q.tags.clone(),
        prefix: q.prefix.clone(),
        state: q.state,
        seen: q.seen,
        sort: q.sort,
        descending: q.descending,
        from: q.from.clone(),
        limit: q.limit,
    };
    match ask(state, c, Op::Find(find)).await? {
        Answer::Found {
            devices,
            more,
            total,
        } => {
            let devices = devices.into_iter().map(devices::from_view).collect();
            Ok(Page {
                total: Some(total),
                ..devices::page_ends(devices, more, &q)
            })
        }
        _ => Err(unexpected(c)),
    }
}

/// One device as the peer has it.
pub async fn device(state: &AppState, c: &Connector, id: &Identity) -> Result<Device> {
    match ask(state, c, Op::Device(id.clone())).await? {
        Answer::Device(d) => Ok(devices::from_view(d)),
        _ => Err(unexpected(c)),
    }
}

/// What the drift check found.
#[derive(Debug, Default)]
pub struct Drift {
    pub in_sync: bool,
    /// The registries kept changing under the comparison ([`DIFF_ATTEMPTS`] times).
    pub changing: bool,
    pub local_count: u64,
    pub remote_count: u64,
    /// How many devices differ; at most [`MAX_LISTED`] of them are in `differences`.
    pub differing: usize,
    pub truncated: bool,
    pub differences: Vec<Difference>,
}

/// One device that differs: this site's record and the peer's (`None` where it does not
/// exist), and the fields that differ when both exist.
#[derive(Debug)]
pub struct Difference {
    pub identity: Identity,
    pub local: Option<Device>,
    pub remote: Option<Device>,
    pub fields: Vec<&'static str>,
}

/// The fields two records of a device differ in, among those the digest covers.
pub fn differing_fields(local: &Device, remote: &Device) -> Vec<&'static str> {
    let sorted = |d: &Device| {
        let mut p = d.permissions.clone();
        p.sort();
        p
    };
    let config = |d: &Device| -> BTreeMap<String, serde_json::Value> {
        d.config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_json()))
            .collect()
    };
    let mut out = Vec::new();
    if local.state != remote.state {
        out.push("state");
    }
    if local.tags != remote.tags {
        out.push("tags");
    }
    if sorted(local) != sorted(remote) {
        out.push("permissions");
    }
    if config(local) != config(remote) {
        out.push("config");
    }
    out
}

/// The drift check of connector `c`: compares this site's registry with the peer's, bucket
/// hashes first, then per-device hashes of the differing buckets, and fetches only the
/// devices that differ.
///
/// Devices that changed between the hashes and the fetch (a change in flight landing) make
/// the comparison start over, at most [`DIFF_ATTEMPTS`] times; if the registries never hold
/// still that long, the answer says `changing` and is not `in_sync`, rather than calling a
/// moving pair in sync with counts from before.
pub async fn diff(state: &AppState, c: &Connector) -> Result<Drift> {
    let mut attempt = 1;
    loop {
        let (mut out, skipped) = diff_once(state, c).await?;
        if skipped == 0 {
            return Ok(out);
        }
        if attempt == DIFF_ATTEMPTS {
            out.in_sync = false;
            out.changing = true;
            return Ok(out);
        }
        attempt += 1;
    }
}

/// One comparison, and how many listed devices turned out equal when fetched.
async fn diff_once(state: &AppState, c: &Connector) -> Result<(Drift, usize)> {
    let theirs = match ask(state, c, Op::Digest).await? {
        Answer::Digest(d) if d.buckets.len() == BUCKETS => d,
        _ => {
            return Err(Error::PeerOffline(
                "the remote site answered the drift check in a form this site does not know".into(),
            ));
        }
    };
    let ours = devices::digest(state, &c.id).await?;
    let differing = ours.differing(&theirs);
    let mut out = Drift {
        in_sync: differing.is_empty(),
        local_count: ours.count,
        remote_count: theirs.count,
        ..Drift::default()
    };
    if differing.is_empty() {
        return Ok((out, 0));
    }

    // Per-device hashes of the differing buckets: ours in one scan, theirs in as many
    // requests as keep each answer under MAX_HASH_ENTRIES.
    let wanted: BTreeSet<u8> = differing.iter().copied().collect();
    let local = devices::hashes(state, &c.id, &wanted).await?;
    let largest = ours.count.max(theirs.count).max(1);
    let per_request = usize::try_from(
        (BUCKETS as u64 * (MAX_HASH_ENTRIES as u64 / 2) / largest).clamp(1, BUCKETS as u64),
    )
    .unwrap_or(1);
    let mut remote: BTreeMap<Identity, [u8; 32]> = BTreeMap::new();
    for chunk in differing.chunks(per_request) {
        match ask(state, c, Op::Hashes(chunk.to_vec())).await? {
            Answer::Hashes(list) => remote.extend(list),
            _ => return Err(unexpected(c)),
        }
    }
    let mut ids: BTreeSet<&Identity> = BTreeSet::new();
    for (id, h) in &local {
        if remote.get(id) != Some(h) {
            ids.insert(id);
        }
    }
    ids.extend(remote.keys().filter(|id| !local.contains_key(*id)));
    let total = ids.len();
    let listed: Vec<&Identity> = ids.into_iter().take(MAX_LISTED).collect();

    // The devices themselves, from both sides.
    let mut remote_devices: BTreeMap<Identity, Device> = BTreeMap::new();
    let present: Vec<Identity> = listed
        .iter()
        .filter(|id| remote.contains_key(**id))
        .map(|id| (*id).clone())
        .collect();
    for batch in present.chunks(MAX_FETCH) {
        match ask(state, c, Op::Devices(batch.to_vec())).await? {
            Answer::Devices(found) => {
                for d in found {
                    remote_devices.insert(d.identity.clone(), devices::from_view(d));
                }
            }
            _ => return Err(unexpected(c)),
        }
    }
    let mut skipped = 0;
    for id in listed {
        let local_device = match state.store.device(&c.id, id).await {
            Ok(d) => Some(d),
            Err(store::StoreError::DeviceNotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let remote_device = remote_devices.remove(id);
        let fields = match (&local_device, &remote_device) {
            (Some(l), Some(r)) => {
                let fields = differing_fields(l, r);
                if fields.is_empty() {
                    // Changed between the hashes and the fetch.
                    skipped += 1;
                    continue;
                }
                fields
            }
            (None, None) => {
                skipped += 1;
                continue;
            }
            _ => Vec::new(),
        };
        out.differences.push(Difference {
            identity: id.clone(),
            local: local_device,
            remote: remote_device,
            fields,
        });
    }
    out.in_sync = out.differences.is_empty() && total <= MAX_LISTED;
    out.differing = total;
    out.truncated = total > MAX_LISTED;
    Ok((out, skipped))
}

/// What a re-send queued: on this site, and on the peer (or why it could not be asked).
#[derive(Debug)]
pub struct Resent {
    pub queued: u64,
    pub peer: std::result::Result<u64, String>,
}

/// Re-sends devices the drift check found different, in both directions: this site queues
/// its record of each on the durable sync stream, and asks the peer to queue its own. Device
/// records merge as a join, so once both arrive both sides hold the same device, whichever
/// side had the newer fields. This site's part is durable even when the peer cannot be asked
/// (it then sends its side when it next changes the device, or on the next re-send).
///
/// The identities are as the operator named them: at most `MAX_RESEND`, each valid, checked
/// after the pairing.
pub async fn resend(state: &AppState, c: &Connector, identities: &[String]) -> Result<Resent> {
    if c.state != SyncState::Paired {
        return Err(Error::Conflict(
            "this connector is not paired, so there is no peer to re-send to".into(),
        ));
    }
    let ids = devices::identities(identities)?;
    let queued = devices::resend(state, &c.id, ids.clone()).await?;
    tracing::info!(connector = %c.id, devices = queued, "re-sending devices to the peer");
    let peer = match ask(state, c, Op::Resend(ids)).await {
        Ok(Answer::Queued(n)) => Ok(n),
        Ok(_) => Err(unexpected(c).to_string()),
        Err(e) => Err(e.to_string()),
    };
    Ok(Resent { queued, peer })
}

/// Where points wait for resources that do not exist on the receiving side: the site they
/// wait on and, per resource, how many (docs/api.md `GET …/remote-sync/waiting`). Points
/// travel from the Source to the Target, so they wait on the Target: a Target answers from
/// its own store, a Source asks its Target (`peer_offline` when it cannot).
pub async fn waiting(state: &AppState, c: &Connector) -> Result<(String, Vec<WaitingView>)> {
    let site = peer_site(c)?.to_owned();
    if c.role == proto::model::Role::Target {
        return Ok((state.site_name.clone(), waiting_here(state, &c.id).await?));
    }
    match ask(state, c, Op::Waiting).await? {
        Answer::Waiting(w) => Ok((site, w)),
        _ => Err(unexpected(c)),
    }
}

/// The points this site keeps for resources it does not have, per resource.
pub async fn waiting_here(
    state: &AppState,
    cid: &proto::model::ConnectorId,
) -> Result<Vec<WaitingView>> {
    Ok(state
        .store
        .sync_waiting(cid)
        .await?
        .into_iter()
        .map(|w| WaitingView {
            resource: w.resource,
            format: w.format,
            points: w.points,
            devices: w.devices,
            from: w.from_us,
            until: w.until_us,
        })
        .collect())
}

/// A request through the hub to the built-in echo service of site `site`: proof that both
/// sites are connected and the hub relays between them.
pub async fn ping_site(state: &AppState, site: &str) -> Result<Duration> {
    if !proto::wire::is_valid_name(site) {
        return Err(Error::Invalid(format!("{site:?} is not a valid site name")));
    }
    state
        .link
        .ping(site, HUB_PING_TIMEOUT)
        .await
        .map_err(link_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::model::{Access, DeviceState, Permission};

    fn device(perms: &[(&str, Access)]) -> Device {
        Device {
            identity: Identity::parse("d1").unwrap(),
            tags: [("a".to_owned(), "1".to_owned())].into(),
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
    fn differing_fields_are_named() {
        let l = device(&[("x", Access::Read), ("y", Access::Read)]);
        let mut r = device(&[("y", Access::Read), ("x", Access::Read)]);
        assert!(
            differing_fields(&l, &r).is_empty(),
            "order of grants does not count"
        );
        r.tags.insert("a".into(), "2".into());
        r.state = DeviceState::Locked;
        assert_eq!(differing_fields(&l, &r), vec!["state", "tags"]);
    }
}
