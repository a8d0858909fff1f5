//! The Connectivity Hub: a relay both sites dial out to, so that two deployments behind
//! firewalls can talk (docs/spec.md §1–§2). One TLS port serves the WebSocket link of every site at
//! `/link` (frames of `proto::wire`), plus `/health` and `/metrics`.
//!
//! ```text
//!  site A ══wss══▶ ┌──────────── hub ─────────────┐ ◀══wss══ site B
//!                  │ TlsListener → axum → conn     │
//!                  │ registry (hub.db): who may,   │
//!                  │   and the claimed pairings    │
//!                  │ claims: paired connectors only│
//!                  │ routing: site → live conn     │
//!                  │ stats: frames/bytes per site  │
//!                  └───────────────────────────────┘
//! ```
//!
//! With [`HubConfig::cluster`] the hub is one node of a cluster on NATS (see [`cluster`]):
//! the registry and the claims live in a JetStream key-value bucket that every node
//! watches, and a frame for a site held by another node goes to it over NATS. `SIGTERM`
//! (the shutdown future) drains a node: its sites are told `hub_shutdown` and move to
//! another node; it exits once they are gone.
//!
//! The library never binds sockets or reads the environment: the binary hands [`serve`] a
//! bound listener, a [`HubConfig`] and a shutdown future (as `site::serve` does).
//!
//! Invariants:
//! - The hub never stores, decodes or alters payloads; it reads only the addresses of a
//!   routed frame and forwards the very bytes it received. It persists only its registry.
//! - Nothing is forwarded for a connection that has not been authenticated, nor a frame whose
//!   sender is not that connection's site, nor a frame between two connectors that have not
//!   both claimed each other (a built-in `_` service may be addressed by anyone, and answers
//!   only the requests it received). Every frame not forwarded is answered with the reason.
//! - A client gets [`HubConfig::header_timeout`] to send a request's headers; at most
//!   [`HubConfig::max_connections`] connections are open at once (`http`).
//! - Every task belongs to something that stops it: connection tasks to a `TaskTracker`
//!   awaited on shutdown, the accept loop, the registry watcher and a cluster node's tasks
//!   to `JoinSet`s (a claim write being retried ends with the hub's shutdown token).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod claims;
pub mod cluster;
mod conn;
mod directory;
pub mod registry;
pub mod routing;
pub mod stats;
pub mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use proto::wire::{self, Refusal, RefusalCode};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use claims::{ClaimLimiter, ClaimTable, PairedOnly};
pub use cluster::{Cluster, ClusterConfig, ClusterRegistry};
pub use registry::{Registry, RegistryError, SiteEntry};
pub use routing::{AllowAll, LocalRouting, RoutePolicy, Routing};
pub use tls::{TlsMaterial, TlsSource};

use crate::directory::Directory;
use crate::stats::Stats;
use crate::tls::{PeerAddr, TlsListener};

/// Bytes read from a site's socket at a time.
const READ_BUFFER: usize = 16 * 1024;

/// Everything the hub needs to start. Built by the binary from flags, environment and file.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Where `hub.db` and the self-signed certificate live. Created if missing.
    pub data_dir: PathBuf,
    /// Default: a self-signed certificate made on first start.
    pub tls: TlsSource,
    /// How often sites should ping (sent to them in the Welcome). Default: 2 s.
    pub heartbeat: Duration,
    /// A connection that sends nothing for this long is closed as dead. Default: 6 s, three
    /// heartbeats.
    pub silent_after: Duration,
    /// How long a new connection may take to say hello. Default: 10 s.
    pub hello_timeout: Duration,
    /// How long a TLS handshake may take. Default: 10 s.
    pub handshake_timeout: Duration,
    /// How often the registry is checked for sites removed by `west hub remove-site`.
    /// Default: 500 ms.
    pub registry_poll: Duration,
    /// Frames queued for one site before its senders wait. Default: 256.
    pub queue_frames: usize,
    /// How long a sender waits for room in a slow site's queue before the frame is answered
    /// with "peer offline". Default: 5 s.
    pub delivery_patience: Duration,
    /// Whether `/metrics` and the per-site part of `/health` answer clients that are not on
    /// loopback. Default: false (site names stay private to the hub's operator).
    pub status_public: bool,
    /// How long a client may take to send an HTTP request's headers (the WebSocket upgrade
    /// included). Default: 10 s.
    pub header_timeout: Duration,
    /// Connections open at once, sites' links included; more are closed on accept.
    /// Default: 10,000.
    pub max_connections: usize,
    /// Run as one node of a cluster on NATS (registry in a JetStream bucket, routing between
    /// nodes over NATS) instead of alone with `hub.db`. Default: alone.
    pub cluster: Option<ClusterConfig>,
}

impl HubConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            tls: TlsSource::SelfSigned { names: Vec::new() },
            heartbeat: Duration::from_secs(2),
            silent_after: Duration::from_secs(6),
            hello_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            registry_poll: Duration::from_millis(500),
            queue_frames: 256,
            delivery_patience: Duration::from_secs(5),
            status_public: false,
            header_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            cluster: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("creating data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("joining the cluster: {0}")]
    Cluster(RegistryError),
    #[error("reading the listener's address: {0}")]
    Listener(std::io::Error),
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// A hub that has opened its registry and loaded its certificate, ready to serve.
#[derive(Debug)]
pub struct Prepared {
    pub tls: TlsMaterial,
    /// `hub.db`; `None` for a node of a cluster (whose registry is on NATS).
    registry: Option<Arc<Registry>>,
    /// The claimed pairings as `hub.db` held them at start, enforced before any site
    /// reconnects (a cluster node loads them from the bucket before it serves sites).
    claims: ClaimTable,
    config: HubConfig,
}

/// Opens the registry (creating the data dir), loads the claimed pairings, and loads or
/// creates the certificate.
pub fn prepare(config: HubConfig) -> Result<Prepared, HubError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| HubError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let (registry, claims) = if config.cluster.is_some() {
        (None, ClaimTable::default())
    } else {
        let registry = Arc::new(Registry::open(&config.data_dir)?);
        let claims = ClaimTable::from_rows(registry.claims()?);
        (Some(registry), claims)
    };
    let tls = tls::load(&config.data_dir, &config.tls)?;
    Ok(Prepared {
        tls,
        registry,
        claims,
        config,
    })
}

/// State shared by every connection and HTTP handler.
pub(crate) struct Shared {
    config: HubConfig,
    /// `hub.db`, or the cluster's bucket.
    directory: Directory,
    /// This node's membership of a cluster, if it is one.
    cluster: Option<Arc<Cluster>>,
    routing: Arc<dyn Routing>,
    /// The claimed pairings (updated by each site's Claims) and the outstanding service
    /// requests: which routes are forwarded.
    claims: Arc<PairedOnly>,
    /// How fast each site's Claims are applied.
    claim_limiter: ClaimLimiter,
    stats: Stats,
    /// Cancelled when the hub shuts down: connections say goodbye and end.
    shutdown: CancellationToken,
    /// Every upgraded connection's task, awaited on shutdown.
    tracker: TaskTracker,
    next_conn_id: AtomicU64,
}

/// Opens, loads and serves until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: HubConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HubError> {
    serve(listener, prepare(config)?, shutdown).await
}

/// Serves sites on `listener` until `shutdown` completes; then tells every site the hub is
/// going away and waits (briefly) for their connections to end.
pub async fn serve(
    listener: TcpListener,
    prepared: Prepared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HubError> {
    let token = CancellationToken::new();
    let claims = Arc::new(PairedOnly {
        table: prepared.claims,
        answers: claims::ServiceAnswers::default(),
    });
    let (directory, cluster) = match (prepared.registry, &prepared.config.cluster) {
        (Some(registry), _) => {
            tracing::info!(pairings = claims.table.len(), "claimed pairings loaded");
            (Directory::Local(registry), None)
        }
        (None, Some(config)) => {
            let cluster = Cluster::connect(config.clone())
                .await
                .map_err(HubError::Cluster)?;
            (Directory::Cluster(Arc::clone(&cluster)), Some(cluster))
        }
        (None, None) => {
            return Err(HubError::Cluster(RegistryError::Cluster(
                "no registry and no cluster".into(),
            )));
        }
    };
    let shared = Arc::new(Shared {
        directory,
        cluster: cluster.clone(),
        routing: Arc::new(LocalRouting::default()),
        claims,
        claim_limiter: ClaimLimiter::default(),
        stats: Stats::default(),
        shutdown: token.clone(),
        tracker: TaskTracker::new(),
        next_conn_id: AtomicU64::new(1),
        config: prepared.config,
    });
    let addr = listener.local_addr().map_err(HubError::Listener)?;
    let tls_listener = TlsListener::new(
        listener,
        Arc::clone(&prepared.tls.config),
        shared.config.handshake_timeout,
        token.clone(),
    )
    .map_err(HubError::Listener)?;

    let mut background = JoinSet::new();
    match &cluster {
        Some(c) => {
            c.set_listen(addr.to_string());
            background.spawn(Arc::clone(c).run(Arc::clone(&shared)));
        }
        None => {
            background.spawn(watch_registry(Arc::clone(&shared)));
        }
    }

    let app = axum::Router::new()
        .route("/link", get(link))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(Arc::clone(&shared));
    tracing::info!(%addr, cert = %prepared.tls.cert_path.display(), "hub listening");
    let stop = token.clone();
    background.spawn(async move {
        shutdown.await;
        stop.cancel();
    });
    let limits = serve::HttpLimits {
        header_timeout: shared.config.header_timeout,
        max_connections: shared.config.max_connections,
    };
    // TLS is the listener's (with its cap on handshakes in progress): nothing to prepare.
    serve::serve(
        tls_listener,
        app,
        limits,
        token.clone(),
        |io, _| async move { Some(io) },
    )
    .await;

    token.cancel();
    for peer in shared.routing.attached() {
        peer.kick(Refusal::new(
            RefusalCode::Shutdown,
            "the hub is shutting down",
        ));
    }
    shared.tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), shared.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some site connections did not end within 5 s of shutdown");
    }
    if let Some(c) = &cluster {
        c.leave().await;
    }
    background.shutdown().await;
    tracing::info!("hub stopped");
    Ok(())
}

/// Cuts off connected sites whose credential was removed or replaced in `hub.db`, within
/// one poll of the change (a cluster node watches its bucket instead).
async fn watch_registry(hub: Arc<Shared>) {
    let Directory::Local(registry) = &hub.directory else {
        return;
    };
    let mut last = None;
    let mut tick = tokio::time::interval(hub.config.registry_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = hub.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (h, registry) = (Arc::clone(&hub), Arc::clone(registry));
        let seen = last;
        let check = tokio::task::spawn_blocking(move || -> Result<_, RegistryError> {
            let version = registry.changed()?;
            let mut stale = Vec::new();
            if seen != Some(version) {
                for peer in h.routing.attached() {
                    if registry.current_generation(&peer.site)? != Some(peer.generation) {
                        stale.push(peer);
                    }
                }
            }
            Ok((version, stale))
        })
        .await;
        let Ok(Ok((version, stale))) = check else {
            tracing::warn!("could not read the registry; will retry");
            continue;
        };
        last = Some(version);
        for peer in stale {
            tracing::warn!(site = %peer.site, remote = %peer.remote, "site was removed from the registry; cutting it off");
            peer.kick(Refusal::new(
                RefusalCode::Revoked,
                format!("site {} was removed from this hub", peer.site),
            ));
        }
    }
}

async fn link(
    ws: WebSocketUpgrade,
    ConnectInfo(PeerAddr(remote)): ConnectInfo<PeerAddr>,
    State(hub): State<Arc<Shared>>,
) -> Response {
    if hub.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down").into_response();
    }
    let tracker = hub.tracker.clone();
    ws.max_message_size(wire::MAX_FRAME_LEN)
        .max_frame_size(wire::MAX_FRAME_LEN)
        // The default 128 KiB is zero-filled per connection: with a thousand idle sites that
        // alone is most of the hub's memory. TLS records are at most 16 KiB anyway.
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| tracker.track_future(conn::serve(socket, remote, hub)))
}

fn may_see_detail(hub: &Shared, remote: std::net::SocketAddr) -> bool {
    hub.config.status_public || remote.ip().is_loopback()
}

async fn health(
    ConnectInfo(PeerAddr(remote)): ConnectInfo<PeerAddr>,
    State(hub): State<Arc<Shared>>,
) -> Json<serde_json::Value> {
    let attached = hub.routing.attached();
    let mut body = json!({
        "status": "ok",
        "protocol": { "min": wire::MIN_VERSION, "max": wire::MAX_VERSION },
        "sites_connected": attached.len(),
    });
    if may_see_detail(&hub, remote) {
        let list = hub.directory.list_sites().await.unwrap_or_default();
        body["sites"] = hub.stats.sites_json(&list, &attached);
        if let Some(c) = &hub.cluster {
            body["cluster"] = c.health_json();
        }
    }
    Json(body)
}

async fn metrics(
    ConnectInfo(PeerAddr(remote)): ConnectInfo<PeerAddr>,
    State(hub): State<Arc<Shared>>,
) -> Response {
    if !may_see_detail(&hub, remote) {
        return (
            StatusCode::FORBIDDEN,
            "metrics answer loopback clients only (west hub --metrics-public)",
        )
            .into_response();
    }
    let mut text = hub
        .stats
        .prometheus(&hub.routing.attached(), hub.claims.table.len());
    if let Some(c) = &hub.cluster {
        stats::cluster_prometheus(&mut text, c);
    }
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}
