//! Where a running hub reads its registry: `hub.db` on this machine (the single hub, the
//! default) or the cluster's key-value bucket on NATS (`--cluster`). Connections and HTTP
//! handlers ask this, never a backend directly.
//!
//! An enum rather than a trait object: there are exactly two backends, one blocking (SQLite,
//! run on the blocking pool) and one async (NATS), and async methods on a `dyn` trait would
//! need a boxed future per call on the per-connection path.
//!
//! Invariants: the answers mean the same for both backends (a removed site is `Removed`, a
//! name never registered `UnknownSite`); an error is never taken for a verdict.

use std::sync::Arc;

use proto::wire::Pairing;

use crate::cluster::Cluster;
use crate::registry::{Registry, RegistryError, SiteEntry, Verdict};

pub(crate) enum Directory {
    Local(Arc<Registry>),
    Cluster(Arc<Cluster>),
}

/// Runs a call of the SQLite registry on the blocking pool.
async fn blocking<T: Send + 'static>(
    registry: &Arc<Registry>,
    f: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    let registry = Arc::clone(registry);
    tokio::task::spawn_blocking(move || f(&registry))
        .await
        .map_err(|e| RegistryError::Cluster(format!("a registry call panicked: {e}")))?
}

impl Directory {
    pub(crate) async fn verify(
        &self,
        name: &str,
        credential: &str,
    ) -> Result<Verdict, RegistryError> {
        match self {
            Directory::Local(r) => {
                let (name, credential) = (name.to_owned(), credential.to_owned());
                blocking(r, move |r| r.verify(&name, &credential)).await
            }
            Directory::Cluster(c) => c.registry()?.verify(name, credential).await,
        }
    }

    pub(crate) async fn current_generation(
        &self,
        name: &str,
    ) -> Result<Option<i64>, RegistryError> {
        match self {
            Directory::Local(r) => {
                let name = name.to_owned();
                blocking(r, move |r| r.current_generation(&name)).await
            }
            Directory::Cluster(c) => c.registry()?.current_generation(name).await,
        }
    }

    pub(crate) async fn replace_claims(
        &self,
        site: &str,
        pairings: Vec<Pairing>,
    ) -> Result<(), RegistryError> {
        match self {
            Directory::Local(r) => {
                let site = site.to_owned();
                blocking(r, move |r| r.replace_claims(&site, &pairings)).await
            }
            Directory::Cluster(c) => c.registry()?.replace_claims(site, &pairings).await,
        }
    }

    /// Every registered site; in a cluster, as this node's view of the bucket holds them.
    pub(crate) async fn list_sites(&self) -> Result<Vec<SiteEntry>, RegistryError> {
        match self {
            Directory::Local(r) => blocking(r, Registry::list_sites).await,
            Directory::Cluster(c) => Ok(c.sites()),
        }
    }
}
