//! The state every handler shares: the store, the site's identity, its metrics and the hub
//! link. Cheap to clone (one `Arc`).

use std::sync::Arc;

use store::Store;

use crate::auth;
use crate::error::ApiError;
use crate::link::Link;
use crate::metrics::SiteMetrics;

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
    pub pairings: crate::remote::pairing::Pairings,
    /// Encrypted sessions of paired connectors with their peers.
    pub remote: crate::remote::Remote,
    /// Retention, disk budget and clock of resource data synchronisation.
    pub sync: crate::remote::sync::SyncSettings,
}

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

    /// The user a login token belongs to, if it is valid now.
    pub async fn user_for_token(&self, token: &str) -> Result<Option<String>, ApiError> {
        Ok(self
            .store
            .token_user(auth::token_hash(token), now_micros())
            .await?)
    }
}

/// Microseconds since the Unix epoch, from the system clock.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An RFC 3339 rendering of a µs timestamp, for the `_at` fields of API.md.
pub fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
