//! Live lookup of the peer's devices (SPEC §5), and the drift check that compares the two
//! device registries: requests and answers over the end-to-end encrypted peer session.
//!
//! ```text
//!  API handler ──request(op)──▶ 0x20 {"id", "op", …} ──session──▶ peer: on_message
//!       ▲  (pending: id → oneshot,                                  answer(op) from its
//!       │   5 s timeout → peer_offline)                             store, as the local API
//!       └──────────── 0x21 {"id", "ok": …} | {"id", "error": {"code","message"}} ◀──┘
//! ```
//!
//! A message is the service byte ([`REQUEST`] or [`RESPONSE`], inside the lookup range of
//! `remote::service`) followed by JSON. The operations:
//!
//! - `list {query: [[k, v]…]}` — the peer's `GET …/devices?…` answer, the very same shape
//!   (`{"devices": [Device], "next"?}`), via `api::devices::device_query`/`device_page`.
//! - `device {identity}` — one `Device`, or `not_found`.
//! - `digest` — `{"count", "buckets": [hex; 256]}`: per-bucket hashes of the registry.
//! - `hashes {buckets}` — `{"devices": [[identity, hex]…]}`: the per-device hashes of those
//!   buckets, so that only differing devices are fetched.
//! - `devices {identities}` — `{"devices": [Device]}` for at most [`MAX_FETCH`] identities.
//! - `resend {identities}` — `{"queued": N}`: the peer queues its current record of each of
//!   those devices (at most [`MAX_RESEND`]) on the durable sync stream, so that after a
//!   re-send from both sides each holds the merge of both (see [`resend`]).
//!
//! A device's hash covers what an operator manages and both sites must agree on: identity,
//! tags, permissions (as a set), state and configuration. Not its latest values (those come
//! with resource data sync) nor its creation time (each site's own). A device's bucket is the
//! first byte of SHA-256 of its identity; a bucket's hash is SHA-256 over its devices' hashes
//! in identity order.
//!
//! Deliberately absent: anything durable. A lookup that gets no answer in [`TIMEOUT`] is
//! `peer_offline`; nothing is retried or queued (propagating device changes is the sync
//! layer's job). The answering side serves requests inline on the connector task: they are
//! short reads of the store.
//!
//! Invariants: every pending request is removed from the map when its caller stops waiting
//! (answer, timeout or cancellation); an answer is accepted only on the session of the
//! connector that asked; every answer fits in one session message ([`MAX_ANSWER`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use proto::model::{ConnectorId, SyncState};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use sha2::{Digest as _, Sha256};
use store::{Connector, DeviceQuery};
use tokio::sync::oneshot;

use super::peer::PeerHandle;
use crate::api::devices::{device_page, device_query};
use crate::api::{QueryPairs, device_json, identity};
use crate::error::ApiError;
use crate::state::AppState;

/// Service byte of a request (first of the lookup range of `remote::service`).
pub const REQUEST: u8 = super::service::LOOKUP_FIRST;
/// Service byte of an answer.
pub const RESPONSE: u8 = super::service::LOOKUP_FIRST + 1;

/// How long a lookup waits for the peer's answer before saying the peer is offline.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Largest encoded answer: well inside one sealed session message and one link frame.
pub const MAX_ANSWER: usize = 768 * 1024;

/// Most per-device hashes one `hashes` answer carries (≈ 90 bytes each).
pub const MAX_HASH_ENTRIES: usize = 6000;

/// Most devices one `devices` request asks for.
pub const MAX_FETCH: usize = 20;

/// Most devices one re-send names.
pub const MAX_RESEND: usize = 1000;

/// Most differing devices the drift check lists (the total is reported beside them).
pub const MAX_LISTED: usize = 100;

/// Number of buckets of the registry digest.
pub const BUCKETS: usize = 256;

/// Store page size when scanning a whole registry.
const SCAN_PAGE: usize = 1000;

/// What a lookup asks the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    List { query: Vec<(String, String)> },
    Device { identity: String },
    Digest,
    Hashes { buckets: Vec<u8> },
    Devices { identities: Vec<String> },
    Resend { identities: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Request {
    id: u64,
    #[serde(flatten)]
    op: Op,
}

/// How the peer answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Ok(Json),
    Error { code: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Response {
    id: u64,
    #[serde(flatten)]
    outcome: Outcome,
}

fn encode<T: Serialize>(tag: u8, msg: &T) -> Vec<u8> {
    let mut out = vec![tag];
    // Serializing these plain structs to a Vec cannot fail; an empty body would be refused
    // by the peer as undecodable, never misread.
    let _ = serde_json::to_writer(&mut out, msg);
    out
}

/// Lookups of this site waiting for their answer, by request id.
#[derive(Default)]
pub struct Pending {
    /// The connector whose session must carry the answer, and where to hand it.
    waiting: Mutex<HashMap<u64, (ConnectorId, oneshot::Sender<Outcome>)>>,
}

impl Pending {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, (ConnectorId, oneshot::Sender<Outcome>)>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes a pending request when its caller stops waiting, however it stops.
struct Waiting<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

/// The peer's site name, for messages; refuses a connector that has no peer.
fn peer_site(c: &Connector) -> Result<&str, ApiError> {
    match (&c.peer, c.state) {
        (Some(p), SyncState::Paired) => Ok(p.site.as_str()),
        _ => Err(ApiError::Conflict(format!(
            "connector {} is not paired, so it has no remote site to look up",
            c.id
        ))),
    }
}

/// Asks the peer of connector `c` and waits for its answer: `conflict` when `c` is not
/// paired, `peer_offline` when the session is down or no answer comes within [`TIMEOUT`],
/// and the peer's own refusal (`not_found`, `invalid_query`, …) otherwise.
pub async fn request(state: &AppState, c: &Connector, op: Op) -> Result<Json, ApiError> {
    let site = peer_site(c)?;
    let offline = |why: &str| {
        ApiError::PeerOffline(format!(
            "{site} is unreachable: {why}; its devices cannot be looked up now."
        ))
    };
    let handle = state
        .remote
        .peer(&c.id)
        .filter(PeerHandle::is_up)
        .ok_or_else(|| offline("the encrypted session with it is not up"))?;
    let id = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
    let (tx, rx) = oneshot::channel();
    let pending = &state.remote.lookups;
    pending.lock().insert(id, (c.id.clone(), tx));
    let _waiting = Waiting { pending, id };
    handle
        .send(encode(REQUEST, &Request { id, op }))
        .await
        .map_err(|e| offline(&e.to_string()))?;
    match tokio::time::timeout(TIMEOUT, rx).await {
        Ok(Ok(Outcome::Ok(answer))) => Ok(answer),
        Ok(Ok(Outcome::Error { code, message })) => Err(remote_error(site, &code, message)),
        Ok(Err(_)) => Err(offline("the session ended before it answered")),
        Err(_) => Err(offline(&format!(
            "it did not answer within {} s",
            TIMEOUT.as_secs()
        ))),
    }
}

/// The peer's refusal as this site's API error.
fn remote_error(site: &str, code: &str, message: String) -> ApiError {
    match code {
        "not_found" => ApiError::NotFound(format!("{message} (on {site})")),
        "invalid_query" => ApiError::InvalidQuery(message),
        "invalid_value" => ApiError::InvalidValue(message),
        _ => ApiError::PeerOffline(format!("remote site {site} could not answer: {message}")),
    }
}

/// Handles a lookup message from the peer (the service byte included).
pub async fn on_message(state: &AppState, cid: &ConnectorId, handle: &PeerHandle, msg: &[u8]) {
    match msg.split_first() {
        Some((&REQUEST, body)) => {
            let Ok(req) = serde_json::from_slice::<Request>(body) else {
                tracing::debug!(connector = %cid, "undecodable lookup request dropped");
                return;
            };
            let outcome = match answer(state, cid, req.op).await {
                Ok(json) => Outcome::Ok(json),
                Err(e) => Outcome::Error {
                    code: e.code().to_owned(),
                    message: e.to_string(),
                },
            };
            let mut reply = encode(
                RESPONSE,
                &Response {
                    id: req.id,
                    outcome,
                },
            );
            if reply.len() > MAX_ANSWER {
                reply = encode(
                    RESPONSE,
                    &Response {
                        id: req.id,
                        outcome: Outcome::Error {
                            code: "too_large".into(),
                            message: "the answer is too large for one message".into(),
                        },
                    },
                );
            }
            if let Err(e) = handle.send(reply).await {
                tracing::debug!(connector = %cid, error = %e, "lookup answer not sent");
            }
        }
        Some((&RESPONSE, body)) => {
            let Ok(resp) = serde_json::from_slice::<Response>(body) else {
                tracing::debug!(connector = %cid, "undecodable lookup answer dropped");
                return;
            };
            let mut waiting = state.remote.lookups.lock();
            // An answer counts only on the session it was asked on.
            if waiting.get(&resp.id).is_some_and(|(c, _)| c == cid)
                && let Some((_, tx)) = waiting.remove(&resp.id)
            {
                let _ = tx.send(resp.outcome);
            }
        }
        _ => tracing::debug!(connector = %cid, "lookup message of an unknown kind dropped"),
    }
}

/// Answers one request from this site's store, as connector `cid`.
async fn answer(state: &AppState, cid: &ConnectorId, op: Op) -> Result<Json, ApiError> {
    match op {
        Op::List { query } => {
            let query = device_query(&QueryPairs(query))?;
            Ok(fit_page(device_page(state, cid, query).await?))
        }
        Op::Device { identity: id } => {
            let d = state.store.device(cid, &identity(&id)?).await?;
            Ok(device_json(&d))
        }
        Op::Digest => {
            let d = digest(state, cid).await?;
            Ok(json!({
                "count": d.count,
                "buckets": d.buckets.iter().map(hex::encode).collect::<Vec<_>>(),
            }))
        }
        Op::Hashes { buckets } => {
            let wanted: BTreeSet<u8> = buckets.into_iter().collect();
            let hashes = device_hashes(state, cid, &wanted).await?;
            if hashes.len() > MAX_HASH_ENTRIES {
                return Err(ApiError::InvalidValue(format!(
                    "{} devices in the asked buckets; ask for fewer buckets at once",
                    hashes.len()
                )));
            }
            let list: Vec<Json> = hashes
                .iter()
                .map(|(id, h)| json!([id, hex::encode(h)]))
                .collect();
            Ok(json!({ "devices": list }))
        }
        Op::Devices { identities } => {
            if identities.len() > MAX_FETCH {
                return Err(ApiError::InvalidValue(format!(
                    "at most {MAX_FETCH} devices at once"
                )));
            }
            let mut out = Vec::new();
            for id in identities {
                match state.store.device(cid, &identity(&id)?).await {
                    Ok(d) => out.push(device_json(&d)),
                    // Deleted since the hashes were read: the asking side shows it missing.
                    Err(store::StoreError::DeviceNotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(json!({ "devices": out }))
        }
        Op::Resend { identities } => {
            let ids = resend_ids(&identities)?;
            let queued = state.store.resend_devices(cid, ids).await?;
            state.remote.sync.appended(cid);
            tracing::info!(connector = %cid, devices = queued, "re-sending devices the peer asked for");
            Ok(json!({ "queued": queued }))
        }
    }
}

fn resend_ids(identities: &[String]) -> Result<Vec<proto::model::Identity>, ApiError> {
    if identities.len() > MAX_RESEND {
        return Err(ApiError::InvalidValue(format!(
            "at most {MAX_RESEND} devices at once"
        )));
    }
    identities
        .iter()
        .map(|id| proto::model::Identity::parse(id).map_err(ApiError::from))
        .collect()
}

/// Re-sends devices the drift check found different, in both directions: this site queues
/// its record of each on the durable sync stream, and asks the peer to queue its own. Device
/// records merge as a join, so once both arrive both sides hold the same device, whichever
/// side had the newer fields. Answers `{"queued", "peer": {"queued"} | {"error"}}`: this
/// site's part is durable even when the peer cannot be asked (it then sends its side when it
/// next changes the device, or on the next re-send).
pub async fn resend(
    state: &AppState,
    c: &Connector,
    identities: Vec<String>,
) -> Result<Json, ApiError> {
    if c.state != SyncState::Paired {
        return Err(ApiError::Conflict(
            "this connector is not paired, so there is no peer to re-send to".into(),
        ));
    }
    let ids = resend_ids(&identities)?;
    let queued = state.store.resend_devices(&c.id, ids).await?;
    state.remote.sync.appended(&c.id);
    tracing::info!(connector = %c.id, devices = queued, "re-sending devices to the peer");
    let peer = match request(state, c, Op::Resend { identities }).await {
        Ok(answer) => json!({ "queued": answer["queued"] }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    Ok(json!({ "queued": queued, "peer": peer }))
}

/// Shortens a device page until it fits in one answer; `next` then continues after the last
/// device kept, so paging stays exact.
fn fit_page(mut page: Json) -> Json {
    let size = |p: &Json| serde_json::to_vec(p).map_or(usize::MAX, |v| v.len());
    // Room for the envelope around the page.
    let budget = MAX_ANSWER - 256;
    while size(&page) > budget {
        let Some(devices) = page["devices"].as_array_mut() else {
            break;
        };
        if devices.len() <= 1 {
            break;
        }
        devices.truncate(devices.len() / 2);
        let last = devices
            .last()
            .and_then(|d| d["identity"].as_str())
            .map(|id| {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
            });
        if let Some(next) = last {
            page["next"] = json!(next);
        }
    }
    page
}

/// What the hash of a device covers, in a canonical encoding.
fn device_hash(d: &store::Device) -> [u8; 32] {
    let mut permissions = d.permissions.clone();
    permissions.sort();
    let config: Vec<(String, Json)> = d
        .config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_json()))
        .collect();
    let canonical = json!([
        d.identity,
        d.tags.iter().collect::<Vec<_>>(),
        permissions,
        d.state,
        config,
    ]);
    Sha256::digest(canonical.to_string().as_bytes()).into()
}

/// The bucket of a device.
pub fn bucket_of(identity: &str) -> u8 {
    Sha256::digest(identity.as_bytes())[0]
}

/// Per-bucket hashes of a connector's registry.
pub struct RegistryDigest {
    pub count: u64,
    pub buckets: Vec<[u8; 32]>,
}

/// Calls `each` for every device of connector `cid`, in identity order, a store page at a
/// time.
async fn scan(
    state: &AppState,
    cid: &ConnectorId,
    mut each: impl FnMut(&store::Device),
) -> Result<(), ApiError> {
    let mut after = None;
    loop {
        let page = state
            .store
            .devices(
                cid,
                DeviceQuery {
                    tags: Vec::new(),
                    after: after.take(),
                    limit: SCAN_PAGE,
                },
            )
            .await?;
        page.iter().for_each(&mut each);
        match page.last() {
            Some(last) if page.len() == SCAN_PAGE => after = Some(last.identity.clone()),
            _ => return Ok(()),
        }
    }
}

/// The digest of connector `cid`'s registry on this site.
pub async fn digest(state: &AppState, cid: &ConnectorId) -> Result<RegistryDigest, ApiError> {
    let mut hashers: Vec<Sha256> = (0..BUCKETS).map(|_| Sha256::new()).collect();
    let mut count = 0;
    scan(state, cid, |d| {
        count += 1;
        if let Some(h) = hashers.get_mut(usize::from(bucket_of(d.identity.as_str()))) {
            h.update(device_hash(d));
        }
    })
    .await?;
    Ok(RegistryDigest {
        count,
        buckets: hashers.into_iter().map(|h| h.finalize().into()).collect(),
    })
}

/// Per-device hashes of the devices in `buckets`, by identity.
async fn device_hashes(
    state: &AppState,
    cid: &ConnectorId,
    buckets: &BTreeSet<u8>,
) -> Result<BTreeMap<String, [u8; 32]>, ApiError> {
    let mut out = BTreeMap::new();
    scan(state, cid, |d| {
        if buckets.contains(&bucket_of(d.identity.as_str())) {
            out.insert(d.identity.to_string(), device_hash(d));
        }
    })
    .await?;
    Ok(out)
}

/// The fields of two `Device` answers that differ, among those the digest covers.
pub fn differing_fields(local: &Json, remote: &Json) -> Vec<&'static str> {
    let perms = |d: &Json| {
        let mut p = d["permissions"].as_array().cloned().unwrap_or_default();
        p.sort_by_key(|x| x.to_string());
        p
    };
    let mut out = Vec::new();
    for field in ["state", "tags", "permissions", "config"] {
        let same = if field == "permissions" {
            perms(local) == perms(remote)
        } else {
            local[field] == remote[field]
        };
        if !same {
            out.push(field);
        }
    }
    out
}

/// The drift check of connector `c`: compares this site's registry with the peer's, bucket
/// hashes first, then per-device hashes of the differing buckets, and fetches only the
/// devices that differ. Answers `{"in_sync", "devices": {"local", "remote"}, "differing",
/// "truncated", "differences": [{"identity", "local"?, "remote"?, "only"?, "fields"}]}`.
///
/// Devices that changed between the hashes and the fetch (a change in flight landing) make
/// the comparison start over, at most [`DIFF_ATTEMPTS`] times; if the registries never hold
/// still that long, the answer says `"changing": true` and is not `in_sync`, rather than
/// calling a moving pair in sync with counts from before.
pub async fn diff(state: &AppState, c: &Connector) -> Result<Json, ApiError> {
    let mut attempt = 1;
    loop {
        let (mut out, skipped) = diff_once(state, c).await?;
        if skipped == 0 {
            return Ok(out);
        }
        if attempt == DIFF_ATTEMPTS {
            out["in_sync"] = json!(false);
            out["changing"] = json!(true);
            return Ok(out);
        }
        attempt += 1;
    }
}

/// How often [`diff`] starts over when devices change under it.
pub const DIFF_ATTEMPTS: u32 = 3;

/// One comparison, and how many listed devices turned out equal when fetched.
async fn diff_once(state: &AppState, c: &Connector) -> Result<(Json, usize), ApiError> {
    let theirs = request(state, c, Op::Digest).await?;
    let ours = digest(state, &c.id).await?;
    let remote_count = theirs["count"].as_u64().unwrap_or(0);
    let remote_buckets: Vec<&str> = theirs["buckets"]
        .as_array()
        .map(|b| b.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    if remote_buckets.len() != BUCKETS {
        return Err(ApiError::PeerOffline(
            "the remote site answered the drift check in a form this site does not know".into(),
        ));
    }
    let differing: Vec<u8> = (0..=u8::MAX)
        .filter(|b| {
            let i = usize::from(*b);
            remote_buckets[i] != hex::encode(ours.buckets[i])
        })
        .collect();
    let mut out = json!({
        "in_sync": differing.is_empty(),
        "devices": { "local": ours.count, "remote": remote_count },
        "differing": 0,
        "truncated": false,
        "differences": [],
    });
    if differing.is_empty() {
        return Ok((out, 0));
    }

    // Per-device hashes of the differing buckets: ours in one scan, theirs in as many
    // requests as keep each answer under MAX_HASH_ENTRIES.
    let wanted: BTreeSet<u8> = differing.iter().copied().collect();
    let local = device_hashes(state, &c.id, &wanted).await?;
    let largest = ours.count.max(remote_count).max(1);
    let per_request = usize::try_from(
        (BUCKETS as u64 * (MAX_HASH_ENTRIES as u64 / 2) / largest).clamp(1, BUCKETS as u64),
    )
    .unwrap_or(1);
    let mut remote: BTreeMap<String, String> = BTreeMap::new();
    for chunk in differing.chunks(per_request) {
        let answer = request(
            state,
            c,
            Op::Hashes {
                buckets: chunk.to_vec(),
            },
        )
        .await?;
        for entry in answer["devices"].as_array().into_iter().flatten() {
            if let (Some(id), Some(h)) = (entry[0].as_str(), entry[1].as_str()) {
                remote.insert(id.to_owned(), h.to_owned());
            }
        }
    }
    let mut ids: BTreeSet<&String> = BTreeSet::new();
    for (id, h) in &local {
        if remote.get(id) != Some(&hex::encode(h)) {
            ids.insert(id);
        }
    }
    ids.extend(remote.keys().filter(|id| !local.contains_key(*id)));
    let total = ids.len();
    let listed: Vec<&String> = ids.into_iter().take(MAX_LISTED).collect();

    // The devices themselves, from both sides.
    let mut remote_devices: BTreeMap<String, Json> = BTreeMap::new();
    let present: Vec<String> = listed
        .iter()
        .filter(|id| remote.contains_key(**id))
        .map(|id| (*id).clone())
        .collect();
    for batch in present.chunks(MAX_FETCH) {
        let answer = request(
            state,
            c,
            Op::Devices {
                identities: batch.to_vec(),
            },
        )
        .await?;
        for d in answer["devices"].as_array().into_iter().flatten() {
            if let Some(id) = d["identity"].as_str() {
                remote_devices.insert(id.to_owned(), d.clone());
            }
        }
    }
    let mut differences = Vec::new();
    let mut skipped = 0;
    for id in listed {
        let local_device = match state.store.device(&c.id, &identity(id)?).await {
            Ok(d) => Some(device_json(&d)),
            Err(store::StoreError::DeviceNotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let remote_device = remote_devices.remove(id.as_str());
        let mut entry = json!({ "identity": id });
        match (local_device, remote_device) {
            (Some(l), Some(r)) => {
                let fields = differing_fields(&l, &r);
                if fields.is_empty() {
                    // Changed between the hashes and the fetch.
                    skipped += 1;
                    continue;
                }
                entry["fields"] = json!(fields);
                entry["local"] = l;
                entry["remote"] = r;
            }
            (Some(l), None) => {
                entry["only"] = json!("local");
                entry["fields"] = json!([]);
                entry["local"] = l;
            }
            (None, Some(r)) => {
                entry["only"] = json!("remote");
                entry["fields"] = json!([]);
                entry["remote"] = r;
            }
            (None, None) => {
                skipped += 1;
                continue;
            }
        }
        differences.push(entry);
    }
    out["in_sync"] = json!(differences.is_empty() && total <= MAX_LISTED);
    out["differing"] = json!(total);
    out["truncated"] = json!(total > MAX_LISTED);
    out["differences"] = Json::Array(differences);
    Ok((out, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_request(op: Op, expected: &str) {
        let req = Request { id: 7, op };
        let bytes = encode(REQUEST, &req);
        assert_eq!(bytes[0], REQUEST);
        assert_eq!(std::str::from_utf8(&bytes[1..]).unwrap(), expected);
        let back: Request = serde_json::from_slice(&bytes[1..]).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn requests_encode_as_documented() {
        roundtrip_request(
            Op::List {
                query: vec![("tag".into(), "site:north".into())],
            },
            r#"{"id":7,"op":"list","query":[["tag","site:north"]]}"#,
        );
        roundtrip_request(
            Op::Device {
                identity: "00AB01".into(),
            },
            r#"{"id":7,"op":"device","identity":"00AB01"}"#,
        );
        roundtrip_request(Op::Digest, r#"{"id":7,"op":"digest"}"#);
        roundtrip_request(
            Op::Hashes {
                buckets: vec![0, 255],
            },
            r#"{"id":7,"op":"hashes","buckets":[0,255]}"#,
        );
        roundtrip_request(
            Op::Devices {
                identities: vec!["a".into()],
            },
            r#"{"id":7,"op":"devices","identities":["a"]}"#,
        );
    }

    #[test]
    fn answers_encode_as_documented() {
        let check = |outcome: Outcome, expected: &str| {
            let resp = Response { id: 9, outcome };
            let bytes = encode(RESPONSE, &resp);
            assert_eq!(bytes[0], RESPONSE);
            assert_eq!(std::str::from_utf8(&bytes[1..]).unwrap(), expected);
            let back: Response = serde_json::from_slice(&bytes[1..]).unwrap();
            assert_eq!(back, resp);
        };
        check(
            Outcome::Ok(json!({"devices": []})),
            r#"{"id":9,"ok":{"devices":[]}}"#,
        );
        check(
            Outcome::Error {
                code: "not_found".into(),
                message: "no".into(),
            },
            r#"{"id":9,"error":{"code":"not_found","message":"no"}}"#,
        );
        assert!(serde_json::from_slice::<Response>(b"{\"id\":1}").is_err());
        assert!(serde_json::from_slice::<Request>(b"{\"id\":1,\"op\":\"drop\"}").is_err());
    }

    #[test]
    fn the_service_bytes_are_in_the_lookup_range() {
        use super::super::service::{LOOKUP_FIRST, LOOKUP_LAST};
        for tag in [REQUEST, RESPONSE] {
            assert!((LOOKUP_FIRST..=LOOKUP_LAST).contains(&tag));
        }
    }

    fn device(
        id: &str,
        tags: &[(&str, &str)],
        perms: &[(&str, proto::model::Access)],
    ) -> store::Device {
        store::Device {
            identity: proto::model::Identity::parse(id).unwrap(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            permissions: perms
                .iter()
                .map(|(p, a)| proto::model::Permission {
                    principal: (*p).to_owned(),
                    access: *a,
                })
                .collect(),
            state: proto::model::DeviceState::Provisioned,
            config: BTreeMap::new(),
            values: BTreeMap::new(),
            created_at: 0,
            sync_pending: false,
        }
    }

    #[test]
    fn device_hashes_cover_managed_fields_only() {
        use proto::model::Access::{Read, Write};
        let a = device("d1", &[("site", "north")], &[("ops", Read), ("eng", Write)]);
        // Permission order, values and creation time do not count.
        let mut same = device("d1", &[("site", "north")], &[("eng", Write), ("ops", Read)]);
        same.created_at = 99;
        same.values.insert(
            proto::model::ResourceName::parse("t").unwrap(),
            store::Point {
                t: 1,
                v: proto::model::Value::Integer(1),
            },
        );
        assert_eq!(device_hash(&a), device_hash(&same));
        // Tags, permissions, state and identity do.
        let check_differs = |d: store::Device| assert_ne!(device_hash(&a), device_hash(&d));
        check_differs(device(
            "d1",
            &[("site", "south")],
            &[("ops", Read), ("eng", Write)],
        ));
        check_differs(device("d1", &[("site", "north")], &[("ops", Read)]));
        check_differs(device(
            "d2",
            &[("site", "north")],
            &[("ops", Read), ("eng", Write)],
        ));
        let mut locked = a.clone();
        locked.state = proto::model::DeviceState::Locked;
        check_differs(locked);
        let mut configured = a.clone();
        configured.config.insert(
            proto::model::ResourceName::parse("setpoint").unwrap(),
            proto::model::Value::Number(21.5),
        );
        check_differs(configured);
    }

    #[test]
    fn differing_fields_are_named() {
        let l = json!({"state": "provisioned", "tags": {"a": "1"}, "config": {},
                       "permissions": [{"principal": "x", "access": "read"}, {"principal": "y", "access": "read"}]});
        let mut r = l.clone();
        assert!(differing_fields(&l, &r).is_empty());
        r["permissions"] =
            json!([{"principal": "y", "access": "read"}, {"principal": "x", "access": "read"}]);
        assert!(
            differing_fields(&l, &r).is_empty(),
            "order of grants does not count"
        );
        r["tags"]["a"] = json!("2");
        r["state"] = json!("locked");
        assert_eq!(differing_fields(&l, &r), vec!["state", "tags"]);
    }

    #[test]
    fn oversized_pages_shrink_and_keep_paging_exact() {
        let big = "x".repeat(1000);
        let devices: Vec<Json> = (0..2000)
            .map(|i| json!({"identity": format!("d{i:05}"), "tags": {"blob": big}}))
            .collect();
        let page = fit_page(json!({"devices": devices}));
        let kept = page["devices"].as_array().unwrap();
        assert!(kept.len() < 2000 && !kept.is_empty());
        assert!(serde_json::to_vec(&page).unwrap().len() <= MAX_ANSWER);
        let last = kept.last().unwrap()["identity"].as_str().unwrap();
        use base64::Engine;
        let next = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(page["next"].as_str().unwrap())
            .unwrap();
        assert_eq!(next, last.as_bytes());
        // A page that fits is left alone.
        let small = json!({"devices": [{"identity": "a"}]});
        assert_eq!(fit_page(small.clone()), small);
    }
}
