//! The hub as one node of a cluster on NATS (`west hub --cluster nats://…`): the registry in a
//! JetStream key-value bucket, and frames for sites held by other nodes carried over core NATS.
//!
//! ```text
//!  site A ══▶ node 1 ── Route{A/c → B/d}: B not held here ──▶ publish west.hub.site.B
//!                │        (reply west.hub.reply.<node1>.<n>)          │
//!                │                                                     ▼ node 2 (subscribed
//!                │ ◀── "" delivered / "offline" / no responders ──── west.hub.site.B while it
//!                │      (at once when no node holds B)                 holds B) ══▶ site B
//!                ▼
//!  KV bucket west_hub (replicated as the NATS cluster allows), watched by every node:
//!    site.<name>    credential hash, generation     → a removed site is cut off on its node
//!    claims.<name>  the pairings the site claimed   → every node's claim table
//!    conn.<name>    which node and connection holds the site; its revision is the epoch:
//!                   a node whose connection is older than the record's closes it (superseded)
//!    node.<name>    each node's heartbeat (every 2 s) → "nodes seen" on /health and /metrics
//! ```
//!
//! Deliberately absent: payload inspection (a forwarded frame is the very bytes the site sent;
//! only the origin node decodes its addresses), queuing for offline sites, and any
//! authentication between nodes: whoever may publish on the NATS subjects `west.hub.>` and
//! write the bucket is a hub node, so NATS must be reachable by the hub nodes alone (its own
//! credentials and TLS, given in the `--cluster` URL through `WEST_CLUSTER`).
//!
//! Invariants: a frame forwarded to another node is answered exactly once, by that node's
//! reply, by NATS's "no responders", or as offline when no answer came within the delivery
//! patience; a node that cannot reach NATS refuses new connections (with `hub_shutdown`, so
//! that sites try another node) and keeps retrying, while the sites it holds stay connected.
//! Site and node names become subject tokens and keys with `.` written as `=2E` (`=` is not
//! allowed in names, so the mapping is reversible).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use async_nats::{Client, ConnectOptions, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use proto::wire::{self, Kind, Pairing, Refusal, RefusalCode, Routed, UndeliveredReason};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::Shared;
use crate::claims::PairedOnly;
use crate::registry::{
    RegistryError, SiteEntry, Verdict, constant_time_eq, credential_hash, new_credential,
    now_micros,
};
use crate::routing::{ConnId, DeliveryError, SiteHandle};
use crate::stats::SiteCounters;

/// The key-value bucket of the cluster's registry.
pub const BUCKET: &str = "west_hub";
/// How often a node writes its heartbeat record.
const NODE_BEAT: Duration = Duration::from_secs(2);
/// A node whose heartbeat is older than this is no longer counted as seen.
const NODE_GONE: Duration = Duration::from_secs(6);
/// Frames one site may have in flight to other nodes before its reader waits.
pub(crate) const FORWARD_WINDOW: usize = 1024;

/// How a hub joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs, comma-separated (`nats://h1:4222,nats://h2:4222`).
    pub servers: String,
    /// This node's name, unique in the cluster (1 to 64 of a-z A-Z 0-9 . _ -).
    pub node: String,
    /// Replicas of the registry bucket when this node creates it. `None`: 3 if the NATS
    /// cluster allows, else 1.
    pub replicas: Option<usize>,
}

/// A site or node name as a subject token or key part.
fn token(name: &str) -> String {
    name.replace('.', "=2E")
}

fn untoken(token: &str) -> String {
    token.replace("=2E", ".")
}

fn site_subject(site: &str) -> String {
    format!("west.hub.site.{}", token(site))
}

fn nats_error(what: &str) -> impl FnOnce(&dyn std::fmt::Display) -> RegistryError + '_ {
    move |e| RegistryError::Cluster(format!("{what}: {e}"))
}

/// Connects a client for a short command (`west hub add-site --cluster …`): fails when NATS
/// cannot be reached instead of retrying.
pub async fn connect_once(servers: &str) -> Result<Client, RegistryError> {
    ConnectOptions::new()
        .name("west hub (registry command)")
        .connection_timeout(Duration::from_secs(5))
        .connect(parse_servers(servers)?)
        .await
        .map_err(|e| RegistryError::Cluster(format!("connecting to NATS at {servers}: {e}")))
}

fn parse_servers(servers: &str) -> Result<Vec<async_nats::ServerAddr>, RegistryError> {
    let list: Vec<_> = servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| RegistryError::Cluster(format!("NATS URL {s:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    if list.is_empty() {
        return Err(RegistryError::Cluster("no NATS URL given".into()));
    }
    Ok(list)
}

/// A site's record in the bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SiteRecord {
    /// SHA-256 of the current credential; `None` once removed.
    hash: Option<String>,
    generation: i64,
    created_at: i64,
    removed_at: Option<i64>,
}

impl SiteRecord {
    fn current(&self) -> Option<i64> {
        self.hash.as_ref().map(|_| self.generation)
    }
}

/// Which connection holds a site.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ConnRecord {
    node: String,
    conn: ConnId,
    remote: String,
    at: i64,
}

/// A node's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NodeRecord {
    node: String,
    listen: String,
    sites: usize,
    /// µs since the Unix epoch, by the node's clock.
    at: i64,
}

/// The registry in the cluster's bucket: what `add-site`, `remove-site` and `list-sites`
/// change from any machine, and what every node checks credentials against.
#[derive(Debug, Clone)]
pub struct ClusterRegistry {
    kv: kv::Store,
}

impl ClusterRegistry {
    /// Opens the bucket, creating it (3 replicas if the NATS cluster allows, else 1, unless
    /// `replicas` says) when no node has yet.
    pub async fn open(client: &Client, replicas: Option<usize>) -> Result<Self, RegistryError> {
        let js = jetstream::new(client.clone());
        if let Ok(kv) = js.get_key_value(BUCKET).await {
            return Ok(Self { kv });
        }
        let tries: Vec<usize> = match replicas {
            Some(r) => vec![r.max(1)],
            None => vec![3, 1],
        };
        let mut last = String::new();
        for r in tries {
            // The stream `create_key_value` would make, made directly: that call first reads
            // the account's limits, whose answer from nats-server 2.9 this client cannot parse.
            let config = jetstream::stream::Config {
                name: format!("KV_{BUCKET}"),
                description: Some("west hub registry: sites, claims, connections, nodes".into()),
                subjects: vec![format!("$KV.{BUCKET}.>")],
                max_messages_per_subject: 1,
                storage: jetstream::stream::StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                num_replicas: r,
                discard: jetstream::stream::DiscardPolicy::New,
                ..Default::default()
            };
            match js.create_stream(config).await {
                Ok(_) => {
                    tracing::info!(replicas = r, "cluster: created the registry bucket");
                    if let Ok(kv) = js.get_key_value(BUCKET).await {
                        return Ok(Self { kv });
                    }
                }
                Err(e) => {
                    last = format!("creating the bucket with {r} replicas: {e}");
                    // Fewer replicas only when NATS says it cannot have more (a single server,
                    // or fewer servers than replicas); a cluster still electing its leader
                    // is retried by the caller.
                    let text = e.to_string();
                    if !(text.contains("non-clustered") || text.contains("insufficient resources"))
                    {
                        break;
                    }
                }
            }
        }
        // Another node may have created it in the meantime.
        js.get_key_value(BUCKET)
            .await
            .map(|kv| Self { kv })
            .map_err(|e| RegistryError::Cluster(format!("{last}; opening it: {e}")))
    }

    /// How many copies of the bucket the NATS cluster keeps (as when it was opened).
    pub fn replicas(&self) -> usize {
        self.kv.stream.cached_info().config.num_replicas
    }

    async fn site(&self, name: &str) -> Result<Option<(SiteRecord, u64)>, RegistryError> {
        let entry = self
            .kv
            .entry(format!("site.{}", token(name)))
            .await
            .map_err(|e| nats_error("reading a site")(&e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let rec = serde_json::from_slice(&e.value)
                    .map_err(|e| nats_error("decoding a site record")(&e))?;
                Ok(Some((rec, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Registers `name` (again, if it was removed) and returns its new credential.
    pub async fn add_site(&self, name: &str) -> Result<String, RegistryError> {
        if !wire::is_valid_name(name) {
            return Err(RegistryError::BadName(name.into()));
        }
        let credential = new_credential()?;
        let key = format!("site.{}", token(name));
        let hash = Some(credential_hash(&credential));
        let encode = |r: &SiteRecord| serde_json::to_vec(r).map(Bytes::from);
        let written = match self.site(name).await? {
            Some((rec, _)) if rec.hash.is_some() => return Err(RegistryError::Exists(name.into())),
            Some((rec, revision)) => {
                let next = SiteRecord {
                    hash,
                    generation: rec.generation + 1,
                    created_at: rec.created_at,
                    removed_at: None,
                };
                let value = encode(&next).map_err(|e| nats_error("encoding")(&e))?;
                self.kv
                    .update(&key, value, revision)
                    .await
                    .map_err(|e| conflict_or(name, "re-adding a site", &e, e.kind()))
            }
            None => {
                let rec = SiteRecord {
                    hash,
                    generation: 1,
                    created_at: now_micros(),
                    removed_at: None,
                };
                let value = encode(&rec).map_err(|e| nats_error("encoding")(&e))?;
                self.kv.create(&key, value).await.map_err(|e| {
                    if e.kind() == kv::CreateErrorKind::AlreadyExists {
                        RegistryError::Conflict(name.into())
                    } else {
                        nats_error("adding a site")(&e)
                    }
                })
            }
        };
        written.map(|_| credential)
    }

    /// Removes `name`: its credential stops working, and the node holding it cuts it off.
    pub async fn remove_site(&self, name: &str) -> Result<(), RegistryError> {
        let Some((rec, revision)) = self.site(name).await? else {
            return Err(RegistryError::NotFound(name.into()));
        };
        if rec.hash.is_none() {
            return Err(RegistryError::NotFound(name.into()));
        }
        let next = SiteRecord {
            hash: None,
            removed_at: Some(now_micros()),
            ..rec
        };
        let value = serde_json::to_vec(&next).map_err(|e| nats_error("encoding")(&e))?;
        self.kv
            .update(format!("site.{}", token(name)), value.into(), revision)
            .await
            .map(drop)
            .map_err(|e| conflict_or(name, "removing a site", &e, e.kind()))
    }

    /// Every site ever registered, by name.
    pub async fn list_sites(&self) -> Result<Vec<SiteEntry>, RegistryError> {
        // The stream's subject list, not `keys()`: that needs a consumer, which a NATS
        // cluster cannot create while it elects a new leader.
        let prefix = format!("$KV.{BUCKET}.site.");
        let mut subjects = self
            .kv
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|e| nats_error("listing sites")(&e))?;
        let mut names = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(|e| nats_error("listing sites")(&e))?;
            if let Some(t) = subject.strip_prefix(&prefix) {
                names.push(untoken(t));
            }
        }
        let mut out = Vec::new();
        for name in names {
            if let Some((rec, _)) = self.site(&name).await? {
                out.push(entry(name, &rec));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Checks a site's credential.
    pub async fn verify(&self, name: &str, credential: &str) -> Result<Verdict, RegistryError> {
        Ok(match self.site(name).await? {
            None => Verdict::UnknownSite,
            Some((SiteRecord { hash: None, .. }, _)) => Verdict::Removed,
            Some((
                SiteRecord {
                    hash: Some(hash),
                    generation,
                    ..
                },
                _,
            )) => {
                if constant_time_eq(hash.as_bytes(), credential_hash(credential).as_bytes()) {
                    Verdict::Accepted { generation }
                } else {
                    Verdict::WrongCredential
                }
            }
        })
    }

    /// The generation of `name`'s current credential, `None` when it has none.
    pub async fn current_generation(&self, name: &str) -> Result<Option<i64>, RegistryError> {
        Ok(self.site(name).await?.and_then(|(r, _)| r.current()))
    }

    /// The pairings `site` has claimed.
    pub async fn claims_of(&self, site: &str) -> Result<Vec<Pairing>, RegistryError> {
        let value = self
            .kv
            .get(format!("claims.{}", token(site)))
            .await
            .map_err(|e| nats_error("reading claims")(&e))?;
        match value {
            Some(v) => serde_json::from_slice(&v).map_err(|e| nats_error("decoding claims")(&e)),
            None => Ok(Vec::new()),
        }
    }

    /// Replaces every pairing `site` has claimed.
    pub async fn replace_claims(
        &self,
        site: &str,
        pairings: &[Pairing],
    ) -> Result<(), RegistryError> {
        let key = format!("claims.{}", token(site));
        if pairings.is_empty() {
            return self
                .kv
                .delete(key)
                .await
                .map_err(|e| nats_error("clearing claims")(&e));
        }
        let value = serde_json::to_vec(pairings).map_err(|e| nats_error("encoding")(&e))?;
        self.kv
            .put(key, value.into())
            .await
            .map(drop)
            .map_err(|e| nats_error("storing claims")(&e))
    }
}

fn conflict_or(
    name: &str,
    what: &str,
    e: &dyn std::fmt::Display,
    kind: kv::UpdateErrorKind,
) -> RegistryError {
    if kind == kv::UpdateErrorKind::WrongLastRevision {
        RegistryError::Conflict(name.into())
    } else {
        RegistryError::Cluster(format!("{what}: {e}"))
    }
}

fn entry(name: String, rec: &SiteRecord) -> SiteEntry {
    SiteEntry {
        name,
        active: rec.hash.is_some(),
        generation: rec.generation,
        created_at: rec.created_at,
        removed_at: rec.removed_at,
    }
}

/// The NATS header that asks the receiving node to check a service's answer against the
/// requests it recorded (its site sent them).
const CHECK_ANSWER: &str = "West-Check-Answer";

/// A frame sent to another node, waiting for its answer.
struct Forward {
    to: proto::wire::Address,
    from: proto::wire::Address,
    /// To forget an expected service answer if the request was not delivered.
    claims: Arc<PairedOnly>,
    kind: Kind,
    id: u64,
    version: u16,
    own: mpsc::Sender<Bytes>,
    counters: Arc<SiteCounters>,
    deadline: Instant,
    _permit: OwnedSemaphorePermit,
}

/// What this node knows of the cluster, kept current by the bucket's watcher.
#[derive(Default)]
struct View {
    sites: BTreeMap<String, SiteRecord>,
    /// The latest connection record of each site, with its revision (the epoch).
    holders: HashMap<String, (ConnRecord, u64)>,
    /// The connection this node announced for each site it holds, with the record's revision.
    mine: HashMap<String, (ConnId, u64)>,
    nodes: BTreeMap<String, NodeRecord>,
}

/// One node's membership of the cluster.
pub struct Cluster {
    config: ClusterConfig,
    client: Client,
    registry: OnceLock<ClusterRegistry>,
    ready: tokio::sync::watch::Sender<bool>,
    reply_prefix: String,
    next_forward: AtomicU64,
    forwards: Mutex<HashMap<u64, Forward>>,
    view: Mutex<View>,
    /// The address sites dial, for the node record.
    listen: Mutex<String>,
    /// When the watcher last saw this node's own heartbeat: a watch that stops seeing it
    /// has stalled (its consumer was on a NATS server that went away) and is started again.
    own_beat_seen: Mutex<Instant>,
    rewatch: tokio::sync::Notify,
    /// When each site's claims were last read directly from the bucket (see
    /// [`Self::refresh_claims`]).
    claims_read: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.config.node)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts connecting to NATS (in the background: an unreachable NATS is logged once and
    /// retried for as long as the node runs).
    pub async fn connect(config: ClusterConfig) -> Result<Arc<Self>, RegistryError> {
        if !wire::is_valid_name(&config.node) {
            return Err(RegistryError::BadName(config.node.clone()));
        }
        let servers = parse_servers(&config.servers)?;
        // Whether NATS was reachable at the last change, so that an outage is logged once.
        let up = Arc::new(AtomicBool::new(true));
        let shown = config.servers.clone();
        let client = ConnectOptions::new()
            .name(format!("west hub {}", config.node))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(250 * attempts.clamp(1, 8) as u64)
            })
            .event_callback(move |event| {
                let up = Arc::clone(&up);
                let shown = shown.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            if !up.swap(true, Ordering::SeqCst) {
                                tracing::info!(nats = %shown, "cluster: NATS reachable again");
                            }
                        }
                        async_nats::Event::Disconnected => {
                            if up.swap(false, Ordering::SeqCst) {
                                tracing::warn!(nats = %shown, "cluster: NATS unreachable; retrying (sites on other nodes are unaffected)");
                            }
                        }
                        other => tracing::debug!(nats = %shown, "cluster: NATS event: {other}"),
                    }
                }
            })
            .connect(servers)
            .await
            .map_err(|e| RegistryError::Cluster(format!("connecting to NATS: {e}")))?;
        let (ready, _) = tokio::sync::watch::channel(false);
        Ok(Arc::new(Self {
            reply_prefix: format!("west.hub.reply.{}", token(&config.node)),
            config,
            client,
            registry: OnceLock::new(),
            ready,
            next_forward: AtomicU64::new(1),
            forwards: Mutex::new(HashMap::new()),
            view: Mutex::new(View::default()),
            listen: Mutex::new(String::new()),
            own_beat_seen: Mutex::new(Instant::now()),
            rewatch: tokio::sync::Notify::new(),
            claims_read: Mutex::new(HashMap::new()),
        }))
    }

    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// Completes once the registry bucket is open and this node serves sites.
    pub async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    pub(crate) fn set_listen(&self, listen: String) {
        *self.listen.lock().unwrap_or_else(|p| p.into_inner()) = listen;
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forwards(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Forward>> {
        self.forwards.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The registry, once the bucket is open and NATS reachable.
    pub(crate) fn registry(&self) -> Result<&ClusterRegistry, RegistryError> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(RegistryError::Cluster("NATS is unreachable".into()));
        }
        self.registry
            .get()
            .ok_or_else(|| RegistryError::Cluster("the registry bucket is not open yet".into()))
    }

    pub(crate) fn nats_state(&self) -> &'static str {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => "connected",
            async_nats::connection::State::Disconnected => "disconnected",
            async_nats::connection::State::Pending => "connecting",
        }
    }

    /// The registered sites as this node last saw them (for `/health`).
    pub(crate) fn sites(&self) -> Vec<SiteEntry> {
        self.view()
            .sites
            .iter()
            .map(|(n, r)| entry(n.clone(), r))
            .collect()
    }

    /// The nodes whose heartbeat is recent, this one included.
    pub(crate) fn nodes_seen(&self) -> Vec<NodeRecord> {
        let now = now_micros();
        let gone = i64::try_from(NODE_GONE.as_micros()).unwrap_or(i64::MAX);
        self.view()
            .nodes
            .values()
            .filter(|n| now.saturating_sub(n.at) < gone)
            .cloned()
            .collect()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.forwards().len()
    }

    /// `/health`'s `cluster` object.
    pub(crate) fn health_json(&self) -> serde_json::Value {
        let nodes: Vec<serde_json::Value> = self
            .nodes_seen()
            .into_iter()
            .map(|n| serde_json::json!({ "node": n.node, "listen": n.listen, "sites": n.sites }))
            .collect();
        serde_json::json!({
            "node": self.config.node,
            "nats": self.nats_state(),
            "registry": if self.registry.get().is_some() { "ready" } else { "waiting" },
            "registry_replicas": self.registry.get().map(ClusterRegistry::replicas),
            "nodes_seen": nodes,
        })
    }

    /// Says that this node now holds `peer`'s site, closing an older connection another node
    /// may still hold; closes `peer` itself if a newer connection was announced meanwhile.
    pub(crate) async fn announce(&self, peer: &SiteHandle) {
        let Ok(registry) = self.registry() else {
            return;
        };
        let record = ConnRecord {
            node: self.config.node.clone(),
            conn: peer.id,
            remote: peer.remote.to_string(),
            at: now_micros(),
        };
        let Ok(value) = serde_json::to_vec(&record) else {
            return;
        };
        match registry
            .kv
            .put(format!("conn.{}", token(&peer.site)), value.into())
            .await
        {
            Ok(revision) => {
                let mut view = self.view();
                view.mine.insert(peer.site.to_string(), (peer.id, revision));
                let newer = view.holders.get(&*peer.site).is_some_and(|(r, rev)| {
                    *rev > revision && !(r.node == self.config.node && r.conn == peer.id)
                });
                if newer {
                    peer.kick(superseded(&peer.site));
                }
            }
            Err(e) => {
                tracing::warn!(site = %peer.site, error = %e, "cluster: could not announce a connection")
            }
        }
    }

    /// Withdraws this node's record of connection `id` of `site`, if it is still the latest.
    pub(crate) async fn release(&self, site: &str, id: ConnId) {
        let revision = {
            let mut view = self.view();
            match view.mine.get(site) {
                Some((conn, rev)) if *conn == id => {
                    let rev = *rev;
                    view.mine.remove(site);
                    rev
                }
                _ => return,
            }
        };
        if let Ok(registry) = self.registry() {
            let _ = registry
                .kv
                .delete_expect_revision(format!("conn.{}", token(site)), Some(revision))
                .await;
        }
    }

    /// Reads the claims of `site` (held by another node) straight from the bucket into the
    /// claim table, at most once per site and half second: a frame refused as not paired may
    /// only mean that the watcher has not delivered a claim yet (or stalled with a lost NATS
    /// server). Says whether they were read.
    pub(crate) async fn refresh_claims(&self, hub: &Shared, site: &str) -> bool {
        let Ok(registry) = self.registry() else {
            return false;
        };
        {
            let mut last = self.claims_read.lock().unwrap_or_else(|p| p.into_inner());
            if last
                .get(site)
                .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
            {
                return false;
            }
            if last.len() > 10_000 {
                last.clear();
            }
            last.insert(site.to_owned(), Instant::now());
        }
        match registry.claims_of(site).await {
            Ok(pairings) => {
                hub.claims.table.replace(site, &pairings);
                true
            }
            Err(_) => false,
        }
    }

    /// Subscribes to the frames other nodes forward to `site`.
    pub(crate) async fn inbox(&self, site: &str) -> Option<async_nats::Subscriber> {
        match self.client.subscribe(site_subject(site)).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(site, error = %e, "cluster: could not subscribe to a site's frames");
                None
            }
        }
    }

    /// Hands frames forwarded by other nodes to `peer`, answering each; runs until the
    /// connection ends (then dropping the subscription ends the route). A service's answer
    /// is delivered only if `peer` sent the request it answers (recorded in `claims`).
    pub(crate) async fn serve_inbox(
        &self,
        mut sub: async_nats::Subscriber,
        peer: SiteHandle,
        claims: &PairedOnly,
        patience: Duration,
        stalled: &SiteCounters,
    ) {
        while let Some(m) = sub.next().await {
            let check = m
                .headers
                .as_ref()
                .is_some_and(|h| h.get(CHECK_ANSWER).is_some());
            if check {
                let admitted = match wire::decode(&m.payload) {
                    Ok(proto::wire::Frame::Route(r)) => {
                        r.to.site == *peer.site && claims.admits(&r)
                    }
                    _ => false,
                };
                if !admitted {
                    if let Some(reply) = m.reply {
                        let _ = self
                            .client
                            .publish(reply, Bytes::from_static(b"not_paired"))
                            .await;
                    }
                    continue;
                }
            }
            let answer = match peer.deliver(m.payload, patience).await {
                Ok(()) => Some(Bytes::new()),
                // A connection being replaced: the node holding the newer one answers (or,
                // if none does, the sender gives up after its patience).
                Err(DeliveryError::Gone) => None,
                Err(DeliveryError::Stalled(_)) => {
                    stalled.stalled.fetch_add(1, Ordering::Relaxed);
                    Some(Bytes::from_static(b"offline"))
                }
            };
            if let (Some(reply), Some(answer)) = (m.reply, answer) {
                let _ = self.client.publish(reply, answer).await;
            }
        }
    }

    /// Sends a routed frame (the very bytes received) to whichever node holds `r.to.site`;
    /// its answer comes back later (see [`Self::serve_replies`]). Waits only for room in the
    /// sender's window. `Some` when it could not even leave.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn forward(
        &self,
        r: &Routed,
        bytes: Bytes,
        service_answer: bool,
        claims: &Arc<PairedOnly>,
        version: u16,
        own: &mpsc::Sender<Bytes>,
        counters: &Arc<SiteCounters>,
        window: &Arc<Semaphore>,
        patience: Duration,
    ) -> Option<UndeliveredReason> {
        if self.registry().is_err() {
            return Some(UndeliveredReason::Offline);
        }
        let Ok(permit) = Arc::clone(window).acquire_owned().await else {
            return Some(UndeliveredReason::Offline);
        };
        let n = self.next_forward.fetch_add(1, Ordering::Relaxed);
        self.forwards().insert(
            n,
            Forward {
                to: r.to.clone(),
                from: r.from.clone(),
                claims: Arc::clone(claims),
                kind: r.kind,
                id: r.id,
                version,
                own: own.clone(),
                counters: Arc::clone(counters),
                deadline: Instant::now() + patience + Duration::from_secs(1),
                _permit: permit,
            },
        );
        let reply = format!("{}.{n}", self.reply_prefix);
        let sent = if service_answer {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(CHECK_ANSWER, "1");
            self.client
                .publish_with_reply_and_headers(site_subject(&r.to.site), reply, headers, bytes)
                .await
        } else {
            self.client
                .publish_with_reply(site_subject(&r.to.site), reply, bytes)
                .await
        };
        if let Err(e) = sent {
            tracing::warn!(to = %r.to, error = %e, "cluster: could not forward a frame");
            self.forwards().remove(&n);
            return Some(UndeliveredReason::Offline);
        }
        None
    }

    /// Answers the sites whose forwarded frames could not be delivered.
    fn undelivered(&self, f: Forward, reason: UndeliveredReason) {
        match reason {
            UndeliveredReason::Offline => &f.counters.peer_offline,
            UndeliveredReason::UnknownSite => &f.counters.unknown_site,
            UndeliveredReason::NotPaired => &f.counters.not_paired,
        }
        .fetch_add(1, Ordering::Relaxed);
        f.claims.undelivered(&Routed {
            from: f.from.clone(),
            to: f.to.clone(),
            kind: f.kind,
            id: f.id,
            payload: Vec::new(),
        });
        let frame =
            crate::conn::undelivered_frame(f.to, f.from.connector, f.kind, f.id, reason, f.version);
        if let Ok(bytes) = wire::encode(&frame) {
            // The sender's own queue; if it is full the site is gone or far behind, and the
            // sync layer resends anyway.
            let _ = f.own.try_send(Bytes::from(bytes));
        }
    }

    /// Reads the answers of other nodes (and NATS's "no responders") to forwarded frames.
    async fn serve_replies(&self, mut sub: async_nats::Subscriber) {
        while let Some(m) = sub.next().await {
            let Some(n) = m
                .subject
                .rsplit('.')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let Some(f) = self.forwards().remove(&n) else {
                continue;
            };
            if m.status == Some(StatusCode::NO_RESPONDERS) {
                let known = self
                    .view()
                    .sites
                    .get(&f.to.site)
                    .is_some_and(|s| s.hash.is_some());
                let reason = if known {
                    UndeliveredReason::Offline
                } else {
                    UndeliveredReason::UnknownSite
                };
                self.undelivered(f, reason);
            } else if &m.payload[..] == b"not_paired" {
                self.undelivered(f, UndeliveredReason::NotPaired);
            } else if !m.payload.is_empty() {
                self.undelivered(f, UndeliveredReason::Offline);
            }
        }
    }

    /// Answers as offline the forwarded frames nobody answered in time.
    async fn sweep(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let now = Instant::now();
            let expired: Vec<Forward> = {
                let mut f = self.forwards();
                let ids: Vec<u64> = f
                    .iter()
                    .filter(|(_, v)| v.deadline < now)
                    .map(|(k, _)| *k)
                    .collect();
                ids.into_iter().filter_map(|k| f.remove(&k)).collect()
            };
            for f in expired {
                self.undelivered(f, UndeliveredReason::Offline);
            }
        }
    }

    /// Writes this node's heartbeat.
    async fn beat(&self, hub: &Shared) {
        let mut tick = tokio::time::interval(NODE_BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Ok(registry) = self.registry() else {
                continue;
            };
            let record = NodeRecord {
                node: self.config.node.clone(),
                listen: self
                    .listen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                sites: hub.routing.attached().len(),
                at: now_micros(),
            };
            if let Ok(value) = serde_json::to_vec(&record) {
                let key = format!("node.{}", token(&self.config.node));
                match registry.kv.put(key, value.into()).await {
                    Ok(_) => {
                        let mut seen = self.own_beat_seen.lock().unwrap_or_else(|p| p.into_inner());
                        if seen.elapsed() > NODE_BEAT * 3 {
                            *seen = Instant::now();
                            self.rewatch.notify_one();
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "cluster: heartbeat not written"),
                }
            }
        }
    }

    /// Applies one change of the bucket to this node.
    fn apply(&self, hub: &Shared, e: kv::Entry) {
        let Some((kind, t)) = e.key.split_once('.') else {
            return;
        };
        let name = untoken(t);
        let put = e.operation == kv::Operation::Put;
        match kind {
            "site" => {
                let rec: Option<SiteRecord> = if put {
                    serde_json::from_slice(&e.value).ok()
                } else {
                    None
                };
                let current = rec.as_ref().and_then(SiteRecord::current);
                {
                    let mut view = self.view();
                    match rec {
                        Some(r) => view.sites.insert(name.clone(), r),
                        None => view.sites.remove(&name),
                    };
                }
                if let Some(peer) = hub.routing.lookup(&name)
                    && current != Some(peer.generation)
                {
                    tracing::warn!(site = %name, remote = %peer.remote, "site was removed from the registry; cutting it off");
                    peer.kick(Refusal::new(
                        RefusalCode::Revoked,
                        format!("site {name} was removed from this hub"),
                    ));
                }
            }
            // The connection of a site held here is the authority on its claims (a write
            // of them may still be being retried).
            "claims" if hub.routing.lookup(&name).is_some() => {}
            "claims" => {
                let pairings: Vec<Pairing> = if put {
                    serde_json::from_slice(&e.value).unwrap_or_default()
                } else {
                    Vec::new()
                };
                hub.claims.table.replace(&name, &pairings);
            }
            "conn" => {
                let mut view = self.view();
                if !put {
                    if view
                        .holders
                        .get(&name)
                        .is_some_and(|(_, r)| *r < e.revision)
                    {
                        view.holders.remove(&name);
                    }
                    return;
                }
                let Ok(rec) = serde_json::from_slice::<ConnRecord>(&e.value) else {
                    return;
                };
                let newer = view.mine.get(&name).and_then(|(conn, rev)| {
                    let other = !(rec.node == self.config.node && rec.conn == *conn);
                    (other && *rev < e.revision).then_some(*conn)
                });
                view.holders.insert(name.clone(), (rec.clone(), e.revision));
                drop(view);
                if let Some(conn) = newer
                    && let Some(peer) = hub.routing.lookup(&name)
                    && peer.id == conn
                {
                    tracing::warn!(site = %name, node = %rec.node, remote = %rec.remote, "site connected to another node; closing its connection here");
                    peer.kick(superseded(&name));
                }
            }
            "node" => {
                if name == self.config.node {
                    *self.own_beat_seen.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                }
                let mut view = self.view();
                match serde_json::from_slice::<NodeRecord>(&e.value) {
                    Ok(n) if put => {
                        view.nodes.insert(name, n);
                    }
                    _ => {
                        view.nodes.remove(&name);
                    }
                }
            }
            _ => {}
        }
    }

    /// Opens the bucket (retrying while NATS is unreachable), then keeps this node's view
    /// current, answers forwarded frames and writes heartbeats until the task is dropped.
    pub(crate) async fn run(self: Arc<Self>, hub: Arc<Shared>) {
        let mut logged = false;
        let registry = loop {
            match ClusterRegistry::open(&self.client, self.config.replicas).await {
                Ok(r) => break r,
                Err(e) => {
                    if logged {
                        tracing::debug!(error = %e, "cluster: registry still unavailable");
                    } else {
                        tracing::warn!(nats = %self.config.servers, error = %e, "cluster: cannot open the registry yet; retrying");
                        logged = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let replies = loop {
            match self
                .client
                .subscribe(format!("{}.*", self.reply_prefix))
                .await
            {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: cannot subscribe to answers; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let kv = registry.kv.clone();
        let _ = self.registry.set(registry);
        let watcher = async {
            loop {
                // A consumer cannot be made while NATS elects a leader: ask again soon.
                let watch =
                    tokio::time::timeout(Duration::from_secs(3), kv.watch_with_history(">"))
                        .await
                        .unwrap_or_else(|_| Err(kv::WatchError::new(kv::WatchErrorKind::TimedOut)));
                match watch {
                    Ok(mut w) => {
                        let mut current = false;
                        loop {
                            let e = tokio::select! {
                                e = w.next() => e,
                                () = self.rewatch.notified() => {
                                    tracing::warn!("cluster: the registry watch stalled; watching again");
                                    break;
                                }
                            };
                            let Some(e) = e else { break };
                            match e {
                                Ok(e) => {
                                    let seen = e.seen_current || e.delta == 0;
                                    self.apply(&hub, e);
                                    if seen && !current {
                                        current = true;
                                        self.ready.send_replace(true);
                                        tracing::info!(node = %self.config.node, "cluster: registry loaded; serving sites");
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "cluster: registry watch failed");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "cluster: cannot watch the registry"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        tokio::join!(
            watcher,
            self.serve_replies(replies),
            self.sweep(),
            self.beat(&hub)
        );
    }

    /// Leaves the cluster: withdraws this node's heartbeat and flushes what is queued.
    pub(crate) async fn leave(&self) {
        if let Ok(registry) = self.registry() {
            let _ = registry
                .kv
                .delete(format!("node.{}", token(&self.config.node)))
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
    }
}

fn superseded(site: &str) -> Refusal {
    Refusal::new(
        RefusalCode::Superseded,
        format!("a newer connection of site {site} (on another hub node) replaced this one"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_tokens_and_back() {
        for name in ["site-a", "a.b.c", "x_y", "..", "A9"] {
            let t = token(name);
            assert!(!t.contains('.'), "{t}");
            assert_eq!(untoken(&t), name);
        }
        assert_eq!(site_subject("plant.1"), "west.hub.site.plant=2E1");
    }

    #[test]
    fn server_lists_parse_or_say_why_not() {
        assert_eq!(
            parse_servers("nats://127.0.0.1:4222, nats://h2:4223")
                .map(|v| v.len())
                .ok(),
            Some(2)
        );
        assert!(parse_servers(" , ").is_err());
    }
}
