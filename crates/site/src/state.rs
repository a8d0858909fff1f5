//! The state every handler and task shares: the store, the site's identity, its metrics, the
//! hub link and the live view of its peers. Cheap to clone (one `Arc`).
//!
//! Only data lives here: what changes it is `ops` (and the `remote` tasks for the peers).

use std::sync::Arc;

use store::Store;

use crate::alarms::Alarms;
use crate::link::Link;
use crate::metrics::SiteMetrics;
use crate::peers::registry::Remote;
use crate::peers::status::SyncSettings;
use crate::peers::windows::Pairings;

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

pub struct Inner {
    /// Everything the site persists.
    pub store: Arc<dyn Store>,
    /// This site's name, as the hub and the peer know it.
    pub site_name: String,
    /// Counters and histograms behind `/metrics`.
    pub metrics: SiteMetrics,
    /// The connection to the hub (disabled when the site runs standalone).
    pub link: Link,
    /// Whether `/metrics` answers without a token.
    pub metrics_public: bool,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// How long a pairing code stays valid.
    pub pairing_window: std::time::Duration,
    /// The Source's open pairing windows (countdowns and attempts in flight).
    pub pairings: Pairings,
    /// Encrypted sessions of paired connectors with their peers, and their sync drivers.
    pub remote: Remote,
    /// Retention, disk budget and clock of resource data synchronisation.
    pub sync: SyncSettings,
    /// Bounds concurrent password checks and slows repeated failures.
    pub login: crate::login::LoginGuard,
    /// Each connector's alarm thresholds and the count of active alarms, kept by the
    /// site's alarm evaluator (`remote::alarms`).
    pub alarms: Alarms,
    /// Whether the HTTP listener speaks TLS (cookies are then `Secure`, origins `https`).
    pub tls: bool,
    /// CSV exports streaming now: at most [`EXPORTS_PER_USER`] a user, [`EXPORTS_PER_SITE`]
    /// in all, each reading one store page at a time.
    pub exports: crate::slots::Slots,
}

/// CSV exports one user may run at once.
pub const EXPORTS_PER_USER: usize = 2;
/// CSV exports the site runs at once.
pub const EXPORTS_PER_SITE: usize = 8;

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }
}
