//! The site's end of the hub link: one long-lived connection to the Connectivity Hub.
//!
//! Not built yet: this placeholder keeps the interface the rest of the site uses, so that the
//! hub issue can fill it in without touching its callers.

use serde::Serialize;
use std::path::PathBuf;

/// How to reach the hub.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `wss://host:port` of the hub.
    pub url: String,
    /// The one-time credential `west hub add-site` printed for this site.
    pub credential: String,
    /// PEM file of the certificate (or CA) the hub presents; `None` trusts nothing extra.
    pub ca_pem: Option<PathBuf>,
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

/// A cheap, clonable handle on the link.
#[derive(Debug, Clone)]
pub struct Link {
    state: LinkState,
}

impl Link {
    /// A link for a site without a hub.
    pub fn disabled() -> Self {
        Self {
            state: LinkState::Disabled,
        }
    }

    pub fn state(&self) -> LinkState {
        self.state.clone()
    }
}
