//! The site's domain operations: everything an operator, a device or the peer site can do to
//! connectors, resources, devices, their data and pairings, with typed inputs and one domain
//! error ([`Error`]). The three front ends call them and only translate: `api` from and to
//! HTTP and JSON (docs/api.md), `ui` from forms and to pages, `remote` from and to the peer
//! protocol (`proto::lookup`, `proto::pairing`). None of them calls another's handlers.
//!
//! ```text
//!   api (HTTP, JSON)     ui (forms, pages)     remote (peer messages, background tasks)
//!          └───────────────────┼───────────────────────┘
//!                              ▼
//!   ops::{connectors, resources, devices, data, export, pairing, peer, users, budget,
//!        alarms}
//!                              ▼
//!   state (store, link, metrics, remote::{registry, status, windows, peer})
//! ```
//!
//! Invariants:
//! - Every operation that may append to a connector's outbox (a device change, ingested
//!   points, a pairing, a re-send) wakes the connector's sync driver itself, after the
//!   store committed; a caller cannot forget it.
//! - A refused operation changed nothing, and says why in a sentence for humans; storage
//!   failures are logged here and reach callers only as [`Error::Internal`].
//! - Nothing here knows HTTP, HTML or JSON shapes of the API.

pub mod alarms;
pub mod backfill;
pub mod budget;
pub mod connectors;
pub mod data;
pub mod devices;
pub mod export;
pub mod pairing;
pub mod peer;
pub mod resources;
pub mod users;

use proto::model::{ConnectorId, Identity, ResourceName};
use store::StoreError;

pub use crate::error::Error;
use crate::link::LinkError;

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ConnectorNotFound(_)
            | StoreError::DeviceNotFound(_)
            | StoreError::ResourceNotFound(_)
            | StoreError::UserNotFound(_) => Error::NotFound(e.to_string()),
            StoreError::ResourceExists(_)
            | StoreError::ConnectorNameTaken(_)
            | StoreError::DeviceExists(_)
            | StoreError::UserExists(_)
            | StoreError::SyncState { .. }
            | StoreError::SyncCursor { .. } => Error::Conflict(e.to_string()),
            StoreError::DeviceLocked(_) => Error::Forbidden(e.to_string()),
            StoreError::NotSettable(_) | StoreError::Invalid(_) => Error::Invalid(e.to_string()),
            StoreError::Backend { .. } if e.is_storage_full() => {
                tracing::warn!(error = %e, "the disk is full; writes are refused until space frees");
                Error::StorageFull
            }
            StoreError::Backend { .. } | StoreError::Closed => {
                tracing::error!(error = %e, "storage error");
                Error::Internal
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a failed call over the hub link reaches an operator.
pub fn link_error(e: LinkError) -> Error {
    match e {
        LinkError::Disabled => {
            Error::PeerOffline("this site runs without a hub (start it with --hub)".into())
        }
        LinkError::UnknownSite { .. } => Error::NotFound(e.to_string()),
        LinkError::NotPaired { .. } => Error::Conflict(e.to_string()),
        LinkError::NotConnected(_)
        | LinkError::PeerOffline { .. }
        | LinkError::Timeout { .. }
        | LinkError::Failed { .. } => Error::PeerOffline(e.to_string()),
        LinkError::TooLarge { .. } | LinkError::BadAddress(_) => Error::Invalid(e.to_string()),
        LinkError::Config(_) => {
            tracing::error!(error = %e, "hub link misconfigured");
            Error::Internal
        }
    }
}

/// A connector id as an address names it; one that cannot be valid names nothing that
/// exists, so it is `not_found`.
pub fn connector_id(s: &str) -> Result<ConnectorId> {
    ConnectorId::parse(s).map_err(|_| Error::NotFound(format!("connector {s} does not exist")))
}

/// A device identity as an address names it (`not_found` when it cannot be valid).
pub fn identity(s: &str) -> Result<Identity> {
    Identity::parse(s)
        .map_err(|_| Error::NotFound(format!("device {s} does not exist in this connector")))
}

/// A resource name as an address names it (`not_found` when it cannot be valid).
pub fn resource_name(s: &str) -> Result<ResourceName> {
    ResourceName::parse(s)
        .map_err(|_| Error::NotFound(format!("resource {s} does not exist in this connector")))
}
