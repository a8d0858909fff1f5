//! One West Connectivity deployment ("site"): the REST API of docs/api.md, the web UI of docs/ui.md,
//! the device API, and (as the product grows) the sync driver that feeds `proto`'s state
//! machines from the store and the hub link.
//!
//! The library never binds sockets, reads the environment or prints: the binary hands
//! [`serve`] a bound listener, a [`SiteConfig`] and a shutdown future, and prints what
//! [`prepare`] returns (the generated admin password).
//!
//! Only `api` and `ui` know HTTP; only `store` knows SQL.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod alarms;
pub mod api;
pub mod auth;
pub mod clock;
pub mod error;
pub mod guard;
pub mod http;
pub mod link;
pub mod login;
pub mod metrics;
pub mod ops;
pub mod peers;
pub mod remote;
pub mod slots;
pub mod state;
pub mod ui;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use store::{SqliteConfig, SqliteStore, Store, Synchronous};
use tokio::net::TcpListener;

pub use link::{Credential, LinkConfig};
pub use state::AppState;

/// Everything a site needs to start. Built by the binary from flags, environment and file.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    /// The site's name, unique on its hub. Default: `site`.
    pub name: String,
    /// Where the database lives (`site.db`). Created if missing.
    pub data_dir: PathBuf,
    /// Password of `admin` on first start; generated (and returned by [`prepare`]) if `None`.
    pub admin_password: Option<String>,
    /// The hub to join; `None` runs standalone.
    pub hub: Option<LinkConfig>,
    /// Whether `/metrics` answers without a token. Default: false.
    pub metrics_public: bool,
    /// Largest accepted request body in bytes. Default: 8 MiB (about 100,000 points).
    pub body_limit: usize,
    /// Durability of each commit. Default: `Normal` (survives a crash of the process).
    pub synchronous: Synchronous,
    /// How long a pairing code stays valid. Default: 10 minutes.
    pub pairing_window: std::time::Duration,
    /// Retention, disk budget and clock of resource data synchronisation (default: 30 days,
    /// no budget, the system clock).
    pub sync: peers::status::SyncSettings,
    /// PEM certificate chain and key of the HTTP listener; `None` serves plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Header deadline and connection cap of the HTTP listener.
    pub http_limits: http::HttpLimits,
    /// Where to post alarms as they are raised and cleared. Default: nowhere.
    pub alarm_webhook: Option<alarms::webhook::WebhookConfig>,
}

impl SiteConfig {
    pub fn new(name: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            data_dir: data_dir.into(),
            admin_password: None,
            hub: None,
            metrics_public: false,
            body_limit: 8 * 1024 * 1024,
            synchronous: Synchronous::Normal,
            pairing_window: std::time::Duration::from_secs(600),
            sync: peers::status::SyncSettings::default(),
            tls: None,
            http_limits: http::HttpLimits::default(),
            alarm_webhook: None,
        }
    }
}

/// A site that has opened its store and is ready to serve.
pub struct Prepared {
    pub state: AppState,
    /// The admin password generated on first start, to be shown to the operator once.
    pub generated_admin_password: Option<String>,
    /// The hub link's tasks (`None` without a hub); [`serve`] stops them on shutdown.
    pub link_task: Option<link::LinkTask>,
    /// Requests and messages from other sites. Whoever serves them (pairing, device lookup,
    /// sync) takes this before [`serve`]; left here, requests are answered with a failure.
    pub inbound: Option<tokio::sync::mpsc::Receiver<link::Delivery>>,
    /// Requests to start a paired connector's session, for the remote supervisor.
    pub starts: remote::Starts,
    /// The HTTP listener's TLS, when configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub http_limits: http::HttpLimits,
}

/// Opens the store, runs migrations and creates the admin user on first start.
pub async fn prepare(config: &SiteConfig) -> anyhow::Result<Prepared> {
    let tls = match &config.tls {
        Some((cert, key)) => Some(http::tls_acceptor(cert, key)?),
        None => None,
    };
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let mut db = SqliteConfig::new(config.data_dir.join("site.db"));
    db.synchronous = config.synchronous;
    db.clock = config.sync.clock.clone();
    db.site = config.name.clone();
    let store = SqliteStore::open(db)
        .with_context(|| format!("opening the database in {}", config.data_dir.display()))?;
    let store: Arc<dyn Store> = Arc::new(store);

    let mut generated = None;
    if store.user_count().await? == 0 {
        let password = match &config.admin_password {
            Some(p) => p.clone(),
            None => {
                let p = auth::generate_password();
                generated = Some(p.clone());
                p
            }
        };
        let hash = auth::hash_password(&password)?;
        store.create_user(auth::ADMIN, &hash).await?;
        tracing::info!(user = auth::ADMIN, "created the admin user");
    }

    let (link, link_task, inbound) = match &config.hub {
        Some(hub) => {
            let (link, task, inbound) =
                link::Link::spawn(hub.clone(), &config.name, link::LinkTuning::default())
                    .context("starting the hub link")?;
            (link, Some(task), Some(inbound))
        }
        None => (link::Link::disabled(), None, None),
    };
    let webhook = match &config.alarm_webhook {
        Some(w) => Some(alarms::webhook::channel(w).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let (remote, starts) = remote::Remote::new();
    let state = AppState::new(state::Inner {
        store,
        site_name: config.name.clone(),
        metrics: metrics::SiteMetrics::new(),
        link,
        metrics_public: config.metrics_public,
        body_limit: config.body_limit,
        pairing_window: config.pairing_window,
        pairings: peers::windows::Pairings::default(),
        remote,
        sync: config.sync.clone(),
        login: login::LoginGuard::default(),
        alarms: alarms::Alarms::new(webhook),
        tls: config.tls.is_some(),
        exports: slots::Slots::new(state::EXPORTS_PER_USER, state::EXPORTS_PER_SITE),
    });
    Ok(Prepared {
        state,
        generated_admin_password: generated,
        link_task,
        inbound,
        starts,
        tls,
        http_limits: config.http_limits,
    })
}

/// Serves the site on `listener` until `shutdown` completes. A hub that refuses this site
/// does not stop it: its devices keep writing, the refusal shows in the UI header,
/// `/health` and `/metrics`, and the link tries again (docs/api.md, "Hub link").
pub async fn serve(
    listener: TcpListener,
    prepared: Prepared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut services = tokio::task::JoinSet::new();
    remote::spawn(
        prepared.state.clone(),
        prepared.inbound,
        prepared.starts,
        cancel.clone(),
        &mut services,
    );
    let app = router(prepared.state);
    let addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    tracing::info!(%addr, tls = prepared.tls.is_some(), "site listening");
    let stop = tokio_util::sync::CancellationToken::new();
    let trigger = stop.clone();
    services.spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    http::serve(listener, prepared.tls, app, prepared.http_limits, stop).await;
    cancel.cancel();
    while services.join_next().await.is_some() {}
    if let Some(task) = prepared.link_task {
        task.shutdown().await;
    }
    Ok(())
}

/// The whole HTTP surface: API, UI, health and metrics, behind the cross-site checks and
/// security headers of [`guard`].
pub fn router(state: AppState) -> axum::Router {
    api::routes(state.clone())
        .merge(ui::routes(state.clone()))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::csrf,
        ))
        .layer(axum::middleware::from_fn(guard::headers))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}
