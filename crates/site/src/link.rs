//! The site's end of the hub link: one long-lived WebSocket-over-TLS connection to the
//! Connectivity Hub, kept up for as long as the site runs.
//!
//! ```text
//!              ┌───────────── driver task (owned by LinkTask) ─────────────┐
//!  Link ─out──▶│ connect: TCP → TLS (rustls, --hub-ca) → WebSocket → Hello │──wss──▶ hub
//!  (requests,  │ ◀─ Welcome: Connected │ Refused: Refused{reason}           │
//!   messages,  │ writer: Claims first (v2), queued frames, Ping every       │
//!   pairings)  │         heartbeat, Claims again whenever they change       │
//!              │ reader: Response/Failure/Undelivered → pending requests    │
//!              │         Request to `_echo` → answered here                 │
//!              │         other Request/Message → Delivery receiver           │
//!              │ silence > dead_after, error, close → Reconnecting{backoff} │
//!              └────────────────────────────────────────────────────────────┘
//! ```
//!
//! The hub may be several nodes of a cluster (`--hub wss://h1,wss://h2`): the link dials the
//! first, and after a lost connection (or a node's `hub_shutdown`, at once) another one, in
//! random order; [`Link::hub_node`] names the one it is connected to.
//!
//! Deliberately absent: durability (a frame queued while the link is down is not kept, a
//! request fails at once with [`LinkError::NotConnected`]; the sync layer stores and
//! resends), payload encryption (the end-to-end session of each pairing, `peers::peer`,
//! seals what it sends here), and any HTTP.
//!
//! Invariants: every task belongs to the [`LinkTask`]; dropping it stops them. Every request
//! ends exactly once: with its answer, a failure, an undeliverable answer of the hub (peer
//! offline, unknown site, not paired), a timeout, or `NotConnected` when the connection it
//! went out on is lost. Every connection that comes up gets the next *epoch*
//! ([`Link::watch_connection`]), so a watcher sees every reconnection however brief; a
//! caller waiting for room in the outbound queue stops waiting as soon as the connection it
//! meant is not up ([`Link::reserve`]), and a frame meant for one connection is never sent
//! on a later one. The pairings set by [`Link::set_pairings`] are declared to the hub
//! before any other frame of every connection (protocol version 2 and later), and again
//! whenever they change. A response is accepted only from
//! the site the request was sent to (the hub stamps the sender's site).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::Uri;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use proto::wire::{
    self, Address, Claims, Frame, Hello, Kind, Pairing, Refusal, RefusalCode, Routed, Undelivered,
    UndeliveredReason,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

/// The built-in service every site answers: it sends a request's payload straight back.
pub const ECHO: &str = "_echo";
/// The connector name the link itself uses as sender (pings, probes).
pub const LINK: &str = "_link";

/// How to reach the hub.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `wss://host:port` of the hub, or of the nodes of a hub cluster, comma-separated: the
    /// link connects to one of them and, when that connection is lost, to another, trying
    /// them in a random order.
    pub url: String,
    /// The credential `west hub add-site` printed for this site.
    pub credential: Credential,
    /// PEM file of the certificate (or CA) the hub presents; `None` trusts nothing extra.
    pub ca_pem: Option<PathBuf>,
}

/// Where the site's credential comes from.
#[derive(Clone)]
pub enum Credential {
    /// Given once (flag, environment or configuration file).
    Value(String),
    /// Read from this file before every connection attempt, so that an operator who
    /// corrects it (after the hub refused the old one) needs no restart: the link notices
    /// the change within a second while refused, or at once on [`Link::retry_now`].
    File(PathBuf),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Value(_) => f.write_str("Credential::Value(<secret>)"),
            Self::File(path) => f.debug_tuple("Credential::File").field(path).finish(),
        }
    }
}

impl Credential {
    /// The credential now; for a file, its first line without surrounding white space.
    pub fn read(&self) -> Result<String, String> {
        match self {
            Self::Value(v) => Ok(v.clone()),
            Self::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading the credential file {}: {e}", path.display()))?;
                let value = text.lines().next().unwrap_or("").trim().to_owned();
                if value.is_empty() {
                    return Err(format!("the credential file {} is empty", path.display()));
                }
                Ok(value)
            }
        }
    }
}

/// The link's timing. `Default` is what production uses.
#[derive(Debug, Clone)]
pub struct LinkTuning {
    /// How often to ping the hub; the hub's Welcome may ask for more often. Default: 2 s.
    pub heartbeat: Duration,
    /// A connection that brings nothing for this long is dropped as dead. Default: 6 s.
    pub dead_after: Duration,
    /// Longest time for TCP, TLS, WebSocket and Hello together. Default: 10 s.
    pub connect_timeout: Duration,
    /// First pause before reconnecting. Default: 250 ms.
    pub backoff_min: Duration,
    /// Longest pause before reconnecting, and the pause after a refusal. Default: 30 s.
    pub backoff_max: Duration,
    /// Incoming requests and messages waiting for the site. Default: 1024.
    pub inbound_capacity: usize,
    /// Frames waiting to be written to the hub. Default: 1024.
    pub outbound_capacity: usize,
}

impl Default for LinkTuning {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(2),
            dead_after: Duration::from_secs(6),
            connect_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            inbound_capacity: 1024,
            outbound_capacity: 1024,
        }
    }
}

/// The state of the link as the header of every page and `/health` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LinkState {
    /// No hub configured: the site runs standalone.
    Disabled,
    Connecting,
    Connected,
    Reconnecting {
        next_try_in_ms: u64,
    },
    Refused {
        reason: String,
    },
}

impl LinkState {
    pub fn connected(&self) -> bool {
        matches!(self, LinkState::Connected)
    }

    /// The words of the header's hub indicator.
    pub fn describe(&self) -> String {
        match self {
            LinkState::Disabled => "Hub: not configured".into(),
            LinkState::Connecting => "Hub: connecting".into(),
            LinkState::Connected => "Hub: connected".into(),
            LinkState::Reconnecting { next_try_in_ms } => {
                format!("Hub: reconnecting in {} s", next_try_in_ms.div_ceil(1000))
            }
            LinkState::Refused { reason } => format!("Hub: refused — {reason}"),
        }
    }
}

/// Why a call over the link failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("this site runs without a hub")]
    Disabled,
    #[error("the site is not connected to the hub ({0})")]
    NotConnected(String),
    #[error("site {site} is offline: it is registered on the hub but not connected")]
    PeerOffline { site: String },
    #[error("site {site} is not registered on the hub")]
    UnknownSite { site: String },
    #[error("the hub refused traffic from {from} to {to}: the two connectors are not paired")]
    NotPaired { from: String, to: String },
    #[error("no answer from {to} within {after:?}")]
    Timeout { to: String, after: Duration },
    #[error("{from} could not answer: {reason}")]
    Failed { from: String, reason: String },
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("{0}")]
    BadAddress(String),
    #[error("hub link configuration: {0}")]
    Config(String),
}

/// A request or one-way message from another site, for the site's services (pairing, device
/// lookup, sync) to handle.
#[derive(Debug)]
pub struct Delivery {
    /// The sender; its site is the one the hub authenticated.
    pub from: Address,
    /// The connector (or service) on this site it is addressed to.
    pub connector: String,
    /// The sender's id: the correlation id of a request, or the sender's own number of a
    /// one-way message.
    pub id: u64,
    pub payload: Vec<u8>,
    /// `Some` for a request: answer it once. Dropping it answers with a failure.
    pub reply: Option<Reply>,
}

/// The way back to a requester. Exactly one answer leaves for each request.
#[derive(Debug)]
pub struct Reply {
    out: mpsc::Sender<Bytes>,
    /// This site's end (the addressed connector).
    me: Address,
    requester: Address,
    id: u64,
    answered: bool,
}

impl Reply {
    /// Answers with `payload`.
    pub async fn respond(mut self, payload: Vec<u8>) -> Result<(), LinkError> {
        self.answered = true;
        let frame = self.frame(Kind::Response, payload)?;
        self.out
            .send(frame)
            .await
            .map_err(|_| LinkError::NotConnected("the link has stopped".into()))
    }

    /// Answers with a failure; `reason` reaches the requester as [`LinkError::Failed`].
    pub async fn fail(mut self, reason: &str) -> Result<(), LinkError> {
        self.answered = true;
        let frame = self.frame(Kind::Failure, reason.as_bytes().to_vec())?;
        self.out
            .send(frame)
            .await
            .map_err(|_| LinkError::NotConnected("the link has stopped".into()))
    }

    fn frame(&self, kind: Kind, payload: Vec<u8>) -> Result<Bytes, LinkError> {
        encode_route(Routed {
            from: self.me.clone(),
            to: self.requester.clone(),
            kind,
            id: self.id,
            payload,
        })
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if !self.answered
            && let Ok(frame) = self.frame(
                Kind::Failure,
                b"the site dropped the request without answering".to_vec(),
            )
        {
            let _ = self.out.try_send(frame);
        }
    }
}

/// What the driver tells the state watchers; `Link::state` turns it into a [`LinkState`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Connecting,
    Connected,
    Reconnecting { at: Instant },
    Refused { reason: String },
}

/// Which connection to the hub is up, if any: [`Link::watch_connection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Connection {
    /// Grows by one each time a connection comes up (0: none has yet); a frame meant for
    /// one connection is never sent on a later one.
    pub epoch: u64,
    pub connected: bool,
}

/// Room for one frame in the outbound queue, taken for one connection
/// ([`Link::reserve`]): sending it fails if that connection has ended meanwhile. Sending
/// never waits.
pub struct Slot<'a> {
    shared: &'a Shared,
    permit: mpsc::Permit<'a, Bytes>,
    epoch: u64,
}

impl Slot<'_> {
    /// Sends a one-way message from `from_connector` on this site to `to`, if the connection
    /// the slot was taken for is still up.
    pub fn send(
        self,
        from_connector: &str,
        to: Address,
        id: u64,
        payload: Vec<u8>,
    ) -> Result<(), LinkError> {
        self.shared.check_epoch(self.epoch)?;
        let frame = encode_route(Routed {
            from: Address::new(self.shared.site.clone(), from_connector),
            to,
            kind: Kind::Message,
            id,
            payload,
        })?;
        self.permit.send(frame);
        Ok(())
    }
}

/// The request waiting for its answer.
struct Pending {
    /// The site the request went to: the only one whose answer counts.
    site: String,
    tx: oneshot::Sender<Result<Vec<u8>, LinkError>>,
}

struct Shared {
    site: String,
    phase: watch::Sender<Phase>,
    /// Which connection is up: the epoch grows by one each time a connection comes up, so a
    /// watcher sees every reconnection, however brief.
    conn: watch::Sender<Connection>,
    out: mpsc::Sender<Bytes>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    /// Round trip of the last heartbeat to the hub, in µs (0 before the first).
    hub_rtt_us: AtomicU64,
    /// The URL of the hub (node) the link is connected to, or last was.
    node: Mutex<Option<String>>,
    /// This site's paired connectors, sorted and without duplicates: the writer declares
    /// them to the hub after every Welcome and whenever they change.
    claims: watch::Sender<Vec<Pairing>>,
    /// Cuts a pause between two connection attempts short ([`Link::retry_now`]).
    retry: tokio::sync::Notify,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends every request in flight: the connection they went out on is gone.
    fn fail_pending(&self, why: &str) {
        let drained: Vec<Pending> = self.pending().drain().map(|(_, p)| p).collect();
        for p in drained {
            let _ = p.tx.send(Err(LinkError::NotConnected(why.to_owned())));
        }
    }

    fn set_phase(&self, phase: Phase) {
        let connected = phase == Phase::Connected;
        self.phase.send_replace(phase);
        self.conn.send_if_modified(|c| {
            let changed = c.connected != connected;
            if connected && !c.connected {
                c.epoch += 1;
            }
            c.connected = connected;
            changed
        });
    }

    /// Fails unless connection `epoch` is the one up now.
    fn check_epoch(&self, epoch: u64) -> Result<(), LinkError> {
        let c = *self.conn.borrow();
        if c.connected && c.epoch == epoch {
            Ok(())
        } else {
            Err(LinkError::NotConnected(
                "the connection to the hub was lost".into(),
            ))
        }
    }
}

/// A cheap, clonable handle on the link.
#[derive(Clone)]
pub struct Link {
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("state", &self.state())
            .finish()
    }
}

/// Owns the link's tasks: [`LinkTask::shutdown`] (or dropping it) stops them.
pub struct LinkTask {
    tasks: JoinSet<()>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for LinkTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkTask").finish_non_exhaustive()
    }
}

impl LinkTask {
    /// Closes the connection and waits for the tasks to end.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for LinkTask {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Link {
    /// A link for a site without a hub.
    pub fn disabled() -> Self {
        Self { shared: None }
    }

    /// Starts the link of site `site_name`: it connects, and reconnects whenever the
    /// connection is lost, until the returned [`LinkTask`] is shut down or dropped. Requests
    /// and messages from other sites arrive on the returned receiver; dropping the receiver
    /// answers every request with a failure.
    ///
    /// Fails without a task when the configuration cannot work (URL, name, CA file).
    pub fn spawn(
        config: LinkConfig,
        site_name: &str,
        tuning: LinkTuning,
    ) -> Result<(Link, LinkTask, mpsc::Receiver<Delivery>), LinkError> {
        if !wire::is_valid_name(site_name) {
            return Err(LinkError::Config(format!(
                "site name {site_name:?} cannot be used on a hub: use 1 to 64 of a-z A-Z 0-9 . _ -"
            )));
        }
        let hubs = HubUrl::parse_list(&config.url)?;
        let tls = tls_config(config.ca_pem.as_deref())?;
        let (out_tx, out_rx) = mpsc::channel(tuning.outbound_capacity.max(1));
        let (in_tx, in_rx) = mpsc::channel(tuning.inbound_capacity.max(1));
        let (phase, _) = watch::channel(Phase::Connecting);
        let (conn, _) = watch::channel(Connection::default());
        let (claims, claims_rx) = watch::channel(Vec::new());
        let shared = Arc::new(Shared {
            conn,
            claims,
            site: site_name.to_owned(),
            phase,
            out: out_tx,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            hub_rtt_us: AtomicU64::new(0),
            retry: tokio::sync::Notify::new(),
            node: Mutex::new(None),
        });
        let cancel = CancellationToken::new();
        let driver = Driver {
            shared: Arc::clone(&shared),
            order: Order::new(hubs.len()),
            hubs,
            tls,
            credential: config.credential,
            last_credential: None,
            tuning,
            out_rx,
            inbound: in_tx,
            cancel: cancel.clone(),
            epoch: Instant::now(),
            claims: claims_rx,
        };
        let mut tasks = JoinSet::new();
        tasks.spawn(driver.run());
        Ok((
            Link {
                shared: Some(shared),
            },
            LinkTask { tasks, cancel },
            in_rx,
        ))
    }

    pub fn state(&self) -> LinkState {
        let Some(shared) = &self.shared else {
            return LinkState::Disabled;
        };
        match &*shared.phase.borrow() {
            Phase::Connecting => LinkState::Connecting,
            Phase::Connected => LinkState::Connected,
            Phase::Reconnecting { at } => LinkState::Reconnecting {
                next_try_in_ms: u64::try_from(
                    at.saturating_duration_since(Instant::now()).as_millis(),
                )
                .unwrap_or(u64::MAX),
            },
            Phase::Refused { reason } => LinkState::Refused {
                reason: reason.clone(),
            },
        }
    }

    /// This site's name on the hub, `None` without a hub.
    pub fn site_name(&self) -> Option<&str> {
        self.shared.as_deref().map(|s| s.site.as_str())
    }

    /// The URL of the hub node the link is connected to (or last was), `None` before the
    /// first connection and without a hub.
    pub fn hub_node(&self) -> Option<String> {
        let shared = self.shared.as_ref()?;
        shared
            .node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Round trip of the last heartbeat to the hub, if one has come back.
    pub fn hub_rtt(&self) -> Option<Duration> {
        let us = self.shared.as_ref()?.hub_rtt_us.load(Ordering::Relaxed);
        (us > 0).then(|| Duration::from_micros(us))
    }

    /// Declares this site's pairings, (local connector, peer address), to the hub: they
    /// replace the ones declared before, and are declared again on every reconnection. The
    /// hub forwards traffic between two connectors only when both sites declared the pairing.
    /// Nothing is sent when the set is unchanged; a link without a hub ignores it.
    pub fn set_pairings(&self, pairings: Vec<(String, Address)>) {
        let Some(shared) = &self.shared else { return };
        let mut wanted: Vec<Pairing> = pairings
            .into_iter()
            .map(|(connector, peer)| Pairing::new(connector, peer))
            .collect();
        wanted.sort();
        wanted.dedup();
        shared.claims.send_if_modified(|current| {
            let changed = *current != wanted;
            if changed {
                *current = wanted;
            }
            changed
        });
    }

    /// Adds one pairing to those [`set_pairings`](Self::set_pairings) declared.
    pub fn add_pairing(&self, connector: &str, peer: Address) {
        let Some(shared) = &self.shared else { return };
        let pairing = Pairing::new(connector, peer);
        shared
            .claims
            .send_if_modified(|current| match current.binary_search(&pairing) {
                Ok(_) => false,
                Err(at) => {
                    current.insert(at, pairing);
                    true
                }
            });
    }

    /// Withdraws every pairing of `connector` from those declared (a cancelled pairing).
    pub fn remove_pairing(&self, connector: &str) {
        let Some(shared) = &self.shared else { return };
        shared.claims.send_if_modified(|current| {
            let before = current.len();
            current.retain(|p| p.connector != connector);
            current.len() != before
        });
    }

    /// The pairings this site declares to the hub.
    pub fn pairings(&self) -> Vec<(String, Address)> {
        self.shared.as_ref().map_or_else(Vec::new, |s| {
            s.claims
                .borrow()
                .iter()
                .map(|p| (p.connector.clone(), p.peer.clone()))
                .collect()
        })
    }

    /// Ends the pause before the next connection attempt (an operator corrected the
    /// credential and sent SIGHUP, say). Does nothing while connected.
    pub fn retry_now(&self) {
        if let Some(shared) = &self.shared {
            shared.retry.notify_one();
        }
    }

    /// Waits until the link is connected, for at most `within`; says whether it is.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        let mut rx = shared.phase.subscribe();
        tokio::time::timeout(within, rx.wait_for(|p| *p == Phase::Connected))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The connection up now, if any (epoch 0 and not connected without a hub).
    pub fn connection(&self) -> Connection {
        self.shared
            .as_ref()
            .map_or_else(Connection::default, |s| *s.conn.borrow())
    }

    /// Watches the connection: every reconnection shows as a new epoch, even one shorter
    /// than any poll. `None` without a hub.
    pub fn watch_connection(&self) -> Option<watch::Receiver<Connection>> {
        self.shared.as_ref().map(|s| s.conn.subscribe())
    }

    /// Waits for room in the outbound queue for a frame on connection `epoch`; fails at once
    /// (rather than wait) as soon as that connection is not up, so no caller ever waits
    /// through an outage for a queue that only the next connection drains.
    pub async fn reserve(&self, epoch: u64) -> Result<Slot<'_>, LinkError> {
        let shared = self.shared.as_deref().ok_or(LinkError::Disabled)?;
        shared.check_epoch(epoch)?;
        let mut conn = shared.conn.subscribe();
        tokio::select! {
            biased;
            _ = conn.wait_for(|c| c.epoch != epoch || !c.connected) => {
                Err(LinkError::NotConnected("the connection to the hub was lost".into()))
            }
            permit = shared.out.reserve() => permit
                .map(|permit| Slot { shared, permit, epoch })
                .map_err(|_| LinkError::NotConnected("the link has stopped".into())),
        }
    }

    /// Like [`reserve`](Self::reserve), without waiting: fails when the queue is full.
    pub fn try_reserve(&self, epoch: u64) -> Result<Slot<'_>, LinkError> {
        let shared = self.shared.as_deref().ok_or(LinkError::Disabled)?;
        shared.check_epoch(epoch)?;
        shared
            .out
            .try_reserve()
            .map(|permit| Slot {
                shared,
                permit,
                epoch,
            })
            .map_err(|_| LinkError::NotConnected("the outbound queue to the hub is full".into()))
    }

    fn connected_shared(&self) -> Result<&Arc<Shared>, LinkError> {
        let shared = self.shared.as_ref().ok_or(LinkError::Disabled)?;
        let state = self.state();
        if !state.connected() {
            return Err(LinkError::NotConnected(state.describe()));
        }
        Ok(shared)
    }

    /// Sends `payload` from `from_connector` on this site to `to` and waits at most
    /// `timeout` for the answer.
    pub async fn request(
        &self,
        from_connector: &str,
        to: Address,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, LinkError> {
        let shared = self.connected_shared()?;
        let epoch = shared.conn.borrow().epoch;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_route(Routed {
            from: Address::new(shared.site.clone(), from_connector),
            to: to.clone(),
            kind: Kind::Request,
            id,
            payload,
        })?;
        let (tx, rx) = oneshot::channel();
        shared.pending().insert(
            id,
            Pending {
                site: to.site.clone(),
                tx,
            },
        );
        // Removes the entry however this call ends (answer, timeout, or the caller giving up).
        let _guard = PendingGuard { shared, id };
        let slot = tokio::time::timeout(timeout, self.reserve(epoch))
            .await
            .map_err(|_| LinkError::Timeout {
                to: to.to_string(),
                after: timeout,
            })??;
        slot.shared.check_epoch(slot.epoch)?;
        slot.permit.send(frame);
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(LinkError::NotConnected("the link has stopped".into())),
            Err(_) => Err(LinkError::Timeout {
                to: to.to_string(),
                after: timeout,
            }),
        }
    }

    /// Sends a one-way message; `Ok` means it left this site, not that it arrived. Waits
    /// for room in the outbound queue only while the connection it was called on is up.
    pub async fn send(
        &self,
        from_connector: &str,
        to: Address,
        id: u64,
        payload: Vec<u8>,
    ) -> Result<(), LinkError> {
        let epoch = self.connected_shared()?.conn.borrow().epoch;
        self.reserve(epoch)
            .await?
            .send(from_connector, to, id, payload)
    }

    /// A round trip to `site`'s built-in echo service, through the hub: proves that both
    /// sites are connected and the hub relays between them.
    pub async fn ping(&self, site: &str, timeout: Duration) -> Result<Duration, LinkError> {
        let start = Instant::now();
        let nonce = start.elapsed().as_nanos().to_le_bytes().to_vec();
        let answer = self
            .request(LINK, Address::new(site, ECHO), nonce.clone(), timeout)
            .await?;
        if answer != nonce {
            return Err(LinkError::Failed {
                from: site.to_owned(),
                reason: "the echo came back changed".into(),
            });
        }
        Ok(start.elapsed())
    }
}

struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.pending().remove(&self.id);
    }
}

fn encode_route(r: Routed) -> Result<Bytes, LinkError> {
    if r.payload.len() > wire::MAX_PAYLOAD_LEN {
        return Err(LinkError::TooLarge {
            len: r.payload.len(),
            max: wire::MAX_PAYLOAD_LEN,
        });
    }
    wire::encode(&Frame::Route(r))
        .map(Bytes::from)
        .map_err(|e| LinkError::BadAddress(e.to_string()))
}

/// The hub's address, checked once at spawn.
#[derive(Debug, Clone)]
struct HubUrl {
    host: String,
    port: u16,
    /// `wss://host:port/path` for the WebSocket handshake.
    url: String,
}

impl HubUrl {
    /// A comma-separated list of hub URLs (the nodes of a cluster), at least one.
    fn parse_list(urls: &str) -> Result<Vec<Self>, LinkError> {
        let list = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(Self::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if list.is_empty() {
            return Err(LinkError::Config("no hub URL given".into()));
        }
        Ok(list)
    }

    fn parse(url: &str) -> Result<Self, LinkError> {
        let bad = |why: &str| LinkError::Config(format!("hub URL {url:?} {why}"));
        let uri: Uri = url.parse().map_err(|_| bad("is not a URL"))?;
        if uri.scheme_str() != Some("wss") {
            return Err(bad("must start with wss:// (the link always uses TLS)"));
        }
        let host = uri.host().ok_or_else(|| bad("has no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let path = match uri.path() {
            "" | "/" => "/link",
            p => p,
        };
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        Ok(Self {
            url: format!("wss://{authority}{path}"),
            host,
            port,
        })
    }
}

/// The hub's trust: the public web roots, or with `--hub-ca` that certificate alone (a pin:
/// a publicly trusted certificate for the hub's name is then not enough, issue 13 #8).
fn tls_config(ca_pem: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, LinkError> {
    tls_config_over(webpki_roots::TLS_SERVER_ROOTS.to_vec(), ca_pem)
}

/// [`tls_config`] with `public` standing for the public web roots (a test stands in a
/// "public" CA of its own, to show that the pin refuses it).
fn tls_config_over(
    public: Vec<rustls::pki_types::TrustAnchor<'static>>,
    ca_pem: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, LinkError> {
    let mut roots = rustls::RootCertStore::empty();
    if ca_pem.is_none() {
        roots.extend(public);
    }
    if let Some(path) = ca_pem {
        let bad = |e: &dyn std::fmt::Display| {
            LinkError::Config(format!("reading --hub-ca {}: {e}", path.display()))
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        if certs.is_empty() {
            return Err(bad(&"the file holds no certificate"));
        }
        for c in certs {
            roots.add(c).map_err(|e| bad(&e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LinkError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The order in which the hub URLs are tried: the first URL first (so that an operator can
/// spread sites over the nodes by the order of their lists), then the others in a random
/// order, one step after every connection that ends; then all again, drawn anew.
#[derive(Debug)]
struct Order {
    perm: Vec<usize>,
    at: usize,
}

impl Order {
    fn new(n: usize) -> Self {
        use rand::seq::SliceRandom;
        let mut perm: Vec<usize> = (0..n.max(1)).collect();
        perm[1..].shuffle(&mut rand::rng());
        Self { perm, at: 0 }
    }

    fn shuffle(&mut self) {
        use rand::seq::SliceRandom;
        self.perm.shuffle(&mut rand::rng());
        self.at = 0;
    }

    fn current(&self) -> usize {
        self.perm[self.at]
    }

    /// Moves on to another URL (never the same one twice in a row when there are several).
    fn advance(&mut self) {
        let was = self.current();
        self.at += 1;
        if self.at == self.perm.len() {
            self.shuffle();
            if self.perm.len() > 1 && self.current() == was {
                self.perm.swap(0, 1);
            }
        }
    }
}

/// How one connection ended.
enum Outcome {
    /// Never got as far as a Welcome.
    Failed(String),
    /// The hub said no.
    Refused(Refusal),
    /// Was up, then ended.
    Lost(String),
    /// The credential could not be read (its file is missing or empty).
    NoCredential(String),
    /// The site is shutting down.
    Cancelled,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// The task that keeps the link up.
struct Driver {
    shared: Arc<Shared>,
    /// The hub, or the nodes of a hub cluster; `order` says which one is dialled next.
    hubs: Vec<HubUrl>,
    order: Order,
    tls: Arc<rustls::ClientConfig>,
    credential: Credential,
    /// The credential of the last connection attempt, to notice a corrected one.
    last_credential: Option<String>,
    tuning: LinkTuning,
    out_rx: mpsc::Receiver<Bytes>,
    inbound: mpsc::Sender<Delivery>,
    cancel: CancellationToken,
    /// Origin of heartbeat nonces (µs since it), to measure round trips without a clock in
    /// the frames.
    epoch: Instant,
    /// The pairings to declare; changes wake the writer.
    claims: watch::Receiver<Vec<Pairing>>,
}

impl Driver {
    fn hub(&self) -> &HubUrl {
        &self.hubs[self.order.current()]
    }

    async fn run(mut self) {
        let mut failures: u32 = 0;
        let mut refused = false;
        tracing::info!(url = %self.hub().url, site = %self.shared.site, "hub link: connecting");
        loop {
            let url = self.hub().url.clone();
            let outcome = self.connect_and_serve().await;
            self.shared
                .fail_pending("the connection to the hub was lost");
            let mut pause = None;
            match outcome {
                Outcome::Cancelled => break,
                Outcome::Lost(why) => {
                    failures = 0;
                    refused = false;
                    tracing::warn!(%url, "hub link: lost: {why}");
                }
                Outcome::Failed(why) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%url, attempt = failures, "hub link: could not connect: {why}");
                }
                Outcome::Refused(r) => {
                    let code = r.known_code();
                    let reason = format!("{} ({})", r.message, r.code);
                    tracing::error!(%url, code = r.code, "hub link: refused by the hub: {}", r.message);
                    if code == Some(RefusalCode::Superseded) {
                        // Another process runs under this site's name; fighting it would
                        // flap both. Stay down until an operator restarts this site.
                        self.shared.set_phase(Phase::Refused { reason });
                        tracing::error!(
                            "hub link: another process connected as site {}; not reconnecting",
                            self.shared.site
                        );
                        self.cancel.cancelled().await;
                        break;
                    }
                    if code == Some(RefusalCode::Shutdown) && self.hubs.len() > 1 {
                        // A node of a cluster going away (or unable to read the registry):
                        // another node takes the site at once.
                        failures = 0;
                        pause = Some(Duration::ZERO);
                    } else if code.is_none_or(RefusalCode::is_credential_problem)
                        || code == Some(RefusalCode::UnsupportedVersion)
                    {
                        // The site keeps serving its own devices; it shows the refusal
                        // and tries again slowly, or as soon as the credential changes.
                        refused = true;
                        self.shared.set_phase(Phase::Refused { reason });
                        pause = Some(self.tuning.backoff_max);
                    } else {
                        failures = failures.saturating_add(1);
                    }
                }
                Outcome::NoCredential(why) => {
                    refused = true;
                    tracing::error!(%url, "hub link: {why}");
                    self.shared.set_phase(Phase::Refused { reason: why });
                    pause = Some(self.tuning.backoff_max);
                }
            }
            let pause = pause.unwrap_or_else(|| {
                backoff(
                    failures,
                    self.tuning.backoff_min,
                    self.tuning.backoff_max,
                    rand::random::<f64>(),
                )
            });
            // The next attempt goes to another node of a cluster (a single hub: the same).
            self.order.advance();
            if !refused {
                self.shared.set_phase(Phase::Reconnecting {
                    at: Instant::now() + pause,
                });
                tracing::info!(url = %self.hub().url, "hub link: reconnecting in {pause:?}");
            }
            tokio::select! {
                () = self.cancel.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
                () = self.shared.retry.notified() => {
                    tracing::info!(%url, "hub link: trying again now, as asked");
                }
                () = self.credential_changed(), if refused => {
                    tracing::info!(%url, "hub link: the credential changed; trying again now");
                }
            }
            if !refused {
                self.shared.set_phase(Phase::Connecting);
            }
        }
        self.shared.fail_pending("the link has stopped");
        tracing::info!(site = %self.shared.site, "hub link: stopped");
    }

    /// Completes once the credential differs from the one last tried: for a credential
    /// file, checked every second; a credential given once never changes.
    async fn credential_changed(&self) {
        if !matches!(self.credential, Credential::File(_)) {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.credential.read().ok();
            if now.is_some() && now != self.last_credential {
                return;
            }
        }
    }

    /// One connection: dial, say hello, then serve until it ends.
    async fn connect_and_serve(&mut self) -> Outcome {
        let credential = match self.credential.read() {
            Ok(c) => c,
            Err(why) => return Outcome::NoCredential(why),
        };
        self.last_credential = Some(credential.clone());
        let connect = tokio::time::timeout(self.tuning.connect_timeout, self.connect(credential));
        let result = tokio::select! {
            () = self.cancel.cancelled() => return Outcome::Cancelled,
            r = connect => r,
        };
        let (ws, heartbeat, version) = match result {
            Err(_) => {
                return Outcome::Failed(format!(
                    "no welcome within {:?}",
                    self.tuning.connect_timeout
                ));
            }
            Ok(Err(outcome)) => return outcome,
            Ok(Ok(up)) => up,
        };
        // Frames queued for an earlier connection belong to requests that have already
        // failed; the new connection starts clean.
        while self.out_rx.try_recv().is_ok() {}
        *self.shared.node.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.hub().url.clone());
        self.shared.set_phase(Phase::Connected);
        tracing::info!(url = %self.hub().url, site = %self.shared.site, "hub link: connected");
        self.serve(ws, heartbeat, version).await
    }

    /// Dials and says hello: the connection, the heartbeat and the protocol version.
    async fn connect(&self, credential: String) -> Result<(Ws, Duration, u16), Outcome> {
        let failed =
            |what: &str, e: &dyn std::fmt::Display| Outcome::Failed(format!("{what}: {e}"));
        let target = self.hub();
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| failed("TCP connect", &e))?;
        let _ = tcp.set_nodelay(true);
        let name =
            ServerName::try_from(target.host.clone()).map_err(|e| failed("hub host name", &e))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| failed("TLS", &e))?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(wire::MAX_FRAME_LEN))
            .max_frame_size(Some(wire::MAX_FRAME_LEN));
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(target.url.as_str(), tls, Some(config))
                .await
                .map_err(|e| failed("WebSocket handshake", &e))?;
        let hello = Frame::Hello(Hello {
            magic: wire::MAGIC,
            min_version: wire::MIN_VERSION,
            max_version: wire::MAX_VERSION,
            site: self.shared.site.clone(),
            credential,
        });
        let bytes = wire::encode(&hello).map_err(|e| failed("encoding hello", &e))?;
        ws.send(Message::Binary(Bytes::from(bytes)))
            .await
            .map_err(|e| failed("sending hello", &e))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    return match wire::decode(&b) {
                        Ok(Frame::Welcome(w)) => {
                            let asked = Duration::from_millis(u64::from(w.heartbeat_ms.max(100)));
                            tracing::debug!(version = w.version, "hub link: welcome");
                            Ok((ws, asked.min(self.tuning.heartbeat), w.version))
                        }
                        Ok(Frame::Refused(r)) => Err(Outcome::Refused(r)),
                        Ok(_) => Err(Outcome::Failed(
                            "the hub did not answer with a welcome".into(),
                        )),
                        Err(e) => Err(failed("decoding the welcome", &e)),
                    };
                }
                Some(Ok(Message::Close(_))) | None => {
                    return Err(Outcome::Failed("the hub closed the connection".into()));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(failed("reading the welcome", &e)),
            }
        }
    }

    async fn serve(&mut self, ws: Ws, heartbeat: Duration, version: u16) -> Outcome {
        let (mut sink, mut stream) = ws.split();
        let shared = Arc::clone(&self.shared);
        let dead_after = self.tuning.dead_after.max(heartbeat * 2);
        let epoch = self.epoch;
        let inbound = self.inbound.clone();
        let reader = async {
            loop {
                let msg = match tokio::time::timeout(dead_after, stream.next()).await {
                    Err(_) => {
                        return Outcome::Lost(format!(
                            "nothing from the hub for {dead_after:?}; the connection is dead"
                        ));
                    }
                    Ok(None) => return Outcome::Lost("the hub closed the connection".into()),
                    Ok(Some(Err(e))) => return Outcome::Lost(format!("reading: {e}")),
                    Ok(Some(Ok(m))) => m,
                };
                let bytes = match msg {
                    Message::Binary(b) => b,
                    Message::Close(_) => {
                        return Outcome::Lost("the hub closed the connection".into());
                    }
                    _ => continue,
                };
                let frame = match wire::decode(&bytes) {
                    Ok(f) => f,
                    Err(e) => return Outcome::Lost(format!("the hub sent a bad frame: {e}")),
                };
                match frame {
                    Frame::Route(r) => handle_route(&shared, &inbound, r).await,
                    Frame::PeerOffline(u) => handle_undelivered(
                        &shared,
                        Undelivered {
                            to: u.to,
                            from_connector: u.from_connector,
                            kind: u.kind,
                            id: u.id,
                            // Version 1 cannot say why; it meant "not connected".
                            reason: UndeliveredReason::Offline,
                        },
                    ),
                    Frame::Undelivered(u) => handle_undelivered(&shared, u),
                    Frame::Ping(n) => {
                        if let Ok(b) = wire::encode(&Frame::Pong(n)) {
                            let _ = shared.out.send(Bytes::from(b)).await;
                        }
                    }
                    Frame::Pong(n) => {
                        let now = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                        shared
                            .hub_rtt_us
                            .store(now.saturating_sub(n).max(1), Ordering::Relaxed);
                    }
                    Frame::Refused(r) => return Outcome::Refused(r),
                    Frame::Hello(_) | Frame::Welcome(_) | Frame::Claims(_) => {
                        return Outcome::Lost("the hub sent an unexpected frame".into());
                    }
                }
            }
        };
        let out_rx = &mut self.out_rx;
        // A hub of version 1 knows no Claims frame (and enforces no pairing).
        let declare = version >= wire::CLAIMS_VERSION;
        let claims_rx = &mut self.claims;
        // Every connection starts with the current claims, before any routed frame.
        claims_rx.mark_changed();
        // The current claims, if they changed since last sent. Checked again before each
        // queued frame: a pairing added before a frame was queued then leaves before it.
        let mut pending_claims = move || -> Option<Bytes> {
            if !declare || !claims_rx.has_changed().unwrap_or(false) {
                return None;
            }
            let pairings = claims_rx.borrow_and_update().clone();
            match wire::encode(&Frame::Claims(Claims { pairings })) {
                Ok(b) => Some(Bytes::from(b)),
                Err(e) => {
                    tracing::error!(error = %e, "hub link: cannot declare the pairings");
                    None
                }
            }
        };
        let mut claims_changed = self.shared.claims.subscribe();
        let writer = async {
            let mut tick = tokio::time::interval(heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let mut batch = Vec::with_capacity(8);
                batch.extend(pending_claims());
                let first = tokio::select! {
                    biased;
                    // Only a wake-up: `pending_claims` below reads what changed.
                    _ = claims_changed.changed(), if declare => None,
                    _ = tick.tick() => {
                        let n = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                        wire::encode(&Frame::Ping(n)).ok().map(Bytes::from)
                    }
                    f = out_rx.recv() => match f {
                        Some(f) => Some(f),
                        None => return Outcome::Cancelled,
                    },
                };
                batch.extend(pending_claims());
                batch.extend(first);
                while batch.len() < 64 {
                    match out_rx.try_recv() {
                        Ok(b) => {
                            batch.extend(pending_claims());
                            batch.push(b);
                        }
                        Err(_) => break,
                    }
                }
                for b in batch {
                    if let Err(e) = sink.feed(Message::Binary(b)).await {
                        return Outcome::Lost(format!("writing: {e}"));
                    }
                }
                if let Err(e) = sink.flush().await {
                    return Outcome::Lost(format!("writing: {e}"));
                }
            }
        };
        let outcome = tokio::select! {
            () = self.cancel.cancelled() => Outcome::Cancelled,
            o = reader => o,
            o = writer => o,
        };
        if matches!(outcome, Outcome::Cancelled) {
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
        }
        outcome
    }
}

async fn handle_route(shared: &Shared, inbound: &mpsc::Sender<Delivery>, r: Routed) {
    match r.kind {
        Kind::Response | Kind::Failure => {
            let mut pending = shared.pending();
            // Only the site the request went to may answer it.
            if pending.get(&r.id).is_some_and(|p| p.site == r.from.site)
                && let Some(p) = pending.remove(&r.id)
            {
                let answer = if r.kind == Kind::Response {
                    Ok(r.payload)
                } else {
                    Err(LinkError::Failed {
                        from: r.from.to_string(),
                        reason: String::from_utf8_lossy(&r.payload).into_owned(),
                    })
                };
                let _ = p.tx.send(answer);
            }
        }
        Kind::Request if r.to.connector == ECHO => {
            let answer = Routed {
                from: r.to,
                to: r.from,
                kind: Kind::Response,
                id: r.id,
                payload: r.payload,
            };
            if let Ok(frame) = encode_route(answer) {
                let _ = shared.out.send(frame).await;
            }
        }
        Kind::Request | Kind::Message => {
            let reply = (r.kind == Kind::Request).then(|| Reply {
                out: shared.out.clone(),
                me: r.to.clone(),
                requester: r.from.clone(),
                id: r.id,
                answered: false,
            });
            let item = Delivery {
                from: r.from,
                connector: r.to.connector,
                id: r.id,
                payload: r.payload,
                reply,
            };
            if let Err(e) = inbound.try_send(item) {
                let (item, why) = match e {
                    mpsc::error::TrySendError::Full(i) => (i, "the site is too busy to answer"),
                    mpsc::error::TrySendError::Closed(i) => (i, "the site has no service for it"),
                };
                tracing::warn!(from = %item.from, connector = item.connector, "hub link: inbound dropped: {why}");
                if let Some(reply) = item.reply {
                    let _ = reply.fail(why).await;
                }
            }
        }
    }
}

/// The hub delivered nothing: a request ends with the reason; a message is only logged (the
/// sync layer resends from its durable state).
fn handle_undelivered(shared: &Shared, u: Undelivered) {
    let error = link_error_for(&shared.site, &u);
    if u.kind == Kind::Request
        && let Some(p) = shared.pending().remove(&u.id)
    {
        let _ = p.tx.send(Err(error));
    } else if u.reason == UndeliveredReason::NotPaired {
        tracing::warn!(to = %u.to, from = u.from_connector, "hub link: {error}");
    } else {
        tracing::debug!(to = %u.to, reason = u.reason.as_str(), "hub link: message not delivered: {error}");
    }
}

/// What an undeliverable answer of the hub means to the caller.
fn link_error_for(site: &str, u: &Undelivered) -> LinkError {
    match u.reason {
        UndeliveredReason::Offline => LinkError::PeerOffline {
            site: u.to.site.clone(),
        },
        UndeliveredReason::UnknownSite => LinkError::UnknownSite {
            site: u.to.site.clone(),
        },
        UndeliveredReason::NotPaired => LinkError::NotPaired {
            from: Address::new(site, u.from_connector.as_str()).to_string(),
            to: u.to.to_string(),
        },
    }
}

/// The pause before reconnection attempt `failures` (0 = right after losing a working
/// connection): exponential from `min`, capped at `max`, with jitter (`jitter` in [0, 1)
/// picks a point in the upper half) so that many sites do not return in step.
pub fn backoff(failures: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = min.saturating_mul(1u32 << failures.min(20));
    let ceiling = exp.min(max);
    ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA of the test's own: its certificate (DER and PEM) and an issuer to sign with.
    fn ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert, rcgen::Issuer::new(params, key))
    }

    /// Whether a client with `config` completes a TLS handshake with a server presenting a
    /// certificate for `localhost` signed by `issuer`, over a real loopback connection.
    async fn handshake(
        config: Arc<rustls::ClientConfig>,
        issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    ) -> bool {
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let serving = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor.accept(tcp).await.is_ok()
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let client = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await;
        let _ = serving.await;
        client.is_ok()
    }

    #[tokio::test]
    async fn with_hub_ca_a_hub_certificate_from_a_publicly_trusted_ca_is_refused() {
        // Issue 13 #8. `public` stands for a CA of the web roots; the operator pinned `own`.
        let (public_cert, public) = ca("public root");
        let (own_cert, own) = ca("the hub's own CA");
        let mut anchors = rustls::RootCertStore::empty();
        anchors.add(public_cert.der().clone()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("hub-ca.pem");
        std::fs::write(&pin, own_cert.pem()).unwrap();

        let unpinned = tls_config_over(anchors.roots.clone(), None).unwrap();
        assert!(
            handshake(unpinned, &public).await,
            "without --hub-ca the public CA is trusted (else this test proves nothing)"
        );
        let pinned = tls_config_over(anchors.roots.clone(), Some(&pin)).unwrap();
        assert!(
            !handshake(pinned.clone(), &public).await,
            "with --hub-ca a certificate of a public CA is refused"
        );
        assert!(
            handshake(pinned, &own).await,
            "with --hub-ca the pinned CA's certificate is taken"
        );
    }

    #[test]
    fn the_order_starts_with_the_first_hub_and_visits_every_hub_before_repeating() {
        for n in 1..5 {
            let mut o = Order::new(n);
            assert_eq!(o.current(), 0, "the first URL first");
            let mut last = None;
            for _ in 0..20 {
                let mut round = std::collections::BTreeSet::new();
                for _ in 0..n {
                    let c = o.current();
                    if n > 1 {
                        assert_ne!(Some(c), last, "the same hub twice in a row");
                    }
                    round.insert(c);
                    last = Some(c);
                    o.advance();
                }
                assert_eq!(round.len(), n, "every hub once per round");
            }
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let (min, max) = (Duration::from_millis(250), Duration::from_secs(30));
        assert_eq!(backoff(0, min, max, 1.0), min);
        assert_eq!(backoff(0, min, max, 0.0), min / 2);
        assert_eq!(backoff(3, min, max, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(20, min, max, 1.0), max);
        assert_eq!(backoff(u32::MAX, min, max, 0.0), max / 2);
    }

    #[test]
    fn describe_every_state() {
        let check = |s: LinkState, want: &str| assert_eq!(s.describe(), want);
        check(LinkState::Disabled, "Hub: not configured");
        check(LinkState::Connected, "Hub: connected");
        check(
            LinkState::Reconnecting {
                next_try_in_ms: 1500,
            },
            "Hub: reconnecting in 2 s",
        );
        check(
            LinkState::Refused {
                reason: "site x was removed".into(),
            },
            "Hub: refused — site x was removed",
        );
        assert!(LinkState::Connected.connected());
        assert!(!LinkState::Connecting.connected());
    }

    #[test]
    fn hub_urls() {
        let t = HubUrl::parse("wss://127.0.0.1:7443").expect("parses");
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 7443));
        assert_eq!(t.url, "wss://127.0.0.1:7443/link");
        let t = HubUrl::parse("wss://hub.example.com/west/link").expect("parses");
        assert_eq!((t.host.as_str(), t.port), ("hub.example.com", 443));
        assert_eq!(t.url, "wss://hub.example.com/west/link");
        let t = HubUrl::parse("wss://[::1]:9").expect("parses");
        assert_eq!(t.host, "::1");
        assert!(HubUrl::parse("ws://127.0.0.1:1").is_err());
        let list = HubUrl::parse_list("wss://h1:1, wss://h2:2,").expect("parses");
        assert_eq!(list.iter().map(|t| t.port).collect::<Vec<_>>(), vec![1, 2]);
        assert!(HubUrl::parse_list(" , ").is_err());
        assert!(HubUrl::parse_list("wss://h1:1,ws://h2:2").is_err());
        assert!(HubUrl::parse("not a url").is_err());
    }

    #[test]
    fn every_undeliverable_reason_reaches_the_caller() {
        let u = |reason| Undelivered {
            to: Address::new("site-b", "c2"),
            from_connector: "c1".into(),
            kind: Kind::Request,
            id: 1,
            reason,
        };
        let check = |reason, want: LinkError, text: &str| {
            let got = link_error_for("site-a", &u(reason));
            assert_eq!(got, want);
            assert!(got.to_string().contains(text), "{got}");
        };
        check(
            UndeliveredReason::Offline,
            LinkError::PeerOffline {
                site: "site-b".into(),
            },
            "site site-b is offline",
        );
        check(
            UndeliveredReason::UnknownSite,
            LinkError::UnknownSite {
                site: "site-b".into(),
            },
            "site site-b is not registered on the hub",
        );
        check(
            UndeliveredReason::NotPaired,
            LinkError::NotPaired {
                from: "site-a/c1".into(),
                to: "site-b/c2".into(),
            },
            "not paired",
        );
    }

    #[tokio::test]
    async fn pairings_are_kept_sorted_once_each_and_changes_wake_the_writer() {
        let cfg = LinkConfig {
            url: "wss://127.0.0.1:9".into(),
            credential: Credential::Value("c".into()),
            ca_pem: None,
        };
        let (link, task, _inbound) =
            Link::spawn(cfg, "site-a", LinkTuning::default()).expect("spawns");
        let shared = link.shared.clone().expect("a hub link");
        let mut rx = shared.claims.subscribe();
        let b = |c: &str| Address::new("site-b", c);
        link.set_pairings(vec![("c3".into(), b("t3")), ("c1".into(), b("t1"))]);
        assert!(rx.has_changed().expect("open"));
        rx.mark_unchanged();
        link.add_pairing("c2", b("t2"));
        link.add_pairing("c2", b("t2"));
        assert_eq!(
            link.pairings(),
            vec![
                ("c1".to_owned(), b("t1")),
                ("c2".to_owned(), b("t2")),
                ("c3".to_owned(), b("t3"))
            ]
        );
        rx.mark_unchanged();
        // The same set again, in another order, wakes nobody.
        link.set_pairings(vec![
            ("c3".into(), b("t3")),
            ("c2".into(), b("t2")),
            ("c1".into(), b("t1")),
        ]);
        link.add_pairing("c1", b("t1"));
        assert!(!rx.has_changed().expect("open"));
        link.set_pairings(Vec::new());
        assert!(rx.has_changed().expect("open"));
        assert!(link.pairings().is_empty());
        task.shutdown().await;
        // A link without a hub declares nothing.
        let off = Link::disabled();
        off.add_pairing("c1", b("t1"));
        assert!(off.pairings().is_empty());
    }

    #[tokio::test]
    async fn disabled_link_refuses_calls() {
        let link = Link::disabled();
        assert_eq!(link.state(), LinkState::Disabled);
        assert_eq!(
            link.ping("b", Duration::from_secs(1)).await,
            Err(LinkError::Disabled)
        );
    }

    #[tokio::test]
    async fn spawned_link_refuses_calls_until_connected_and_stops() {
        let cfg = LinkConfig {
            // Nothing listens on port 9 of loopback: the link keeps retrying.
            url: "wss://127.0.0.1:9".into(),
            credential: Credential::Value("c".into()),
            ca_pem: None,
        };
        let (link, task, _inbound) =
            Link::spawn(cfg, "site-a", LinkTuning::default()).expect("spawns");
        assert!(matches!(
            link.ping("b", Duration::from_secs(1)).await,
            Err(LinkError::NotConnected(_))
        ));
        task.shutdown().await;
        assert!(!link.state().connected());
    }

    #[test]
    fn bad_configuration_fails_at_spawn() {
        let cfg = |url: &str| LinkConfig {
            url: url.into(),
            credential: Credential::Value("c".into()),
            ca_pem: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            assert!(Link::spawn(cfg("http://x"), "a", LinkTuning::default()).is_err());
            assert!(Link::spawn(cfg("wss://x:1"), "a b", LinkTuning::default()).is_err());
            let mut bad_ca = cfg("wss://x:1");
            bad_ca.ca_pem = Some("/nonexistent/ca.pem".into());
            assert!(Link::spawn(bad_ca, "a", LinkTuning::default()).is_err());
        });
    }
}
