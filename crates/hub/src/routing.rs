//! Where a routed frame goes: the table of this process's live site connections, behind the
//! [`Routing`] trait. A site held by another node of a cluster has no route here; `conn`
//! then hands the frame to [`crate::cluster`], which forwards it through NATS.
//!
//! Deliberately absent: payload inspection, queuing for offline sites (the hub answers
//! "peer offline" at once; durable retry is the sites' job) and any persistence.
//!
//! Invariants: at most one live connection per site name; attaching a newer one returns the
//! older so that the caller closes it; detaching only removes the route if it still belongs
//! to the connection asking.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use proto::wire::{Address, Refusal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Identifies one connection for the life of the hub process.
pub type ConnId = u64;

/// A way to cut a connection off with a reason, from any task.
#[derive(Debug, Default)]
pub struct Kick {
    token: CancellationToken,
    reason: Mutex<Option<Refusal>>,
}

impl Kick {
    /// Closes the connection, telling the site why. The first reason wins.
    pub fn kick(&self, refusal: Refusal) {
        if let Ok(mut r) = self.reason.lock()
            && r.is_none()
        {
            *r = Some(refusal);
        }
        self.token.cancel();
    }

    /// Stops the connection's tasks without a word to the site (it is already gone).
    pub fn stop(&self) {
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<Refusal> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }

    pub async fn kicked(&self) {
        self.token.cancelled().await;
    }

    pub fn is_kicked(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// The frames could not be handed to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("the peer's connection closed")]
    Gone,
    #[error("the peer did not take the frame within {0:?}")]
    Stalled(Duration),
}

/// A live route to one site.
#[derive(Debug, Clone)]
pub struct SiteHandle {
    pub id: ConnId,
    /// The authenticated site name.
    pub site: Arc<str>,
    /// The registry generation of the credential the connection presented; a connection
    /// whose generation is no longer current is cut off.
    pub generation: i64,
    /// Where the connection comes from, for the log.
    pub remote: SocketAddr,
    /// Frames (already encoded) on their way to the site's socket.
    frames: mpsc::Sender<Bytes>,
    kick: Arc<Kick>,
}

impl SiteHandle {
    pub fn new(
        id: ConnId,
        site: Arc<str>,
        generation: i64,
        remote: SocketAddr,
        frames: mpsc::Sender<Bytes>,
        kick: Arc<Kick>,
    ) -> Self {
        Self {
            id,
            site,
            generation,
            remote,
            frames,
            kick,
        }
    }

    /// Queues a frame for the site, waiting at most `patience` for room in its queue (a
    /// slow site slows its senders rather than filling the hub's memory).
    pub async fn deliver(&self, frame: Bytes, patience: Duration) -> Result<(), DeliveryError> {
        match self.frames.send_timeout(frame, patience).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(DeliveryError::Gone),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(DeliveryError::Stalled(patience)),
        }
    }

    pub fn kick(&self, refusal: Refusal) {
        self.kick.kick(refusal);
    }
}

/// The table of routes. Implementations must be cheap to call on every frame.
pub trait Routing: Send + Sync + 'static {
    /// Makes `peer` the route to its site and returns the connection it replaces.
    fn attach(&self, peer: SiteHandle) -> Option<SiteHandle>;
    /// Removes the route to `site` if it still is connection `id`; says whether it was.
    fn detach(&self, site: &str, id: ConnId) -> bool;
    /// The route to `site`, if it is connected.
    fn lookup(&self, site: &str) -> Option<SiteHandle>;
    /// Every live route.
    fn attached(&self) -> Vec<SiteHandle>;
}

/// The routes of this hub process alone.
#[derive(Debug, Default)]
pub struct LocalRouting {
    table: RwLock<HashMap<Arc<str>, SiteHandle>>,
}

impl Routing for LocalRouting {
    fn attach(&self, peer: SiteHandle) -> Option<SiteHandle> {
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        t.insert(Arc::clone(&peer.site), peer)
    }

    fn detach(&self, site: &str, id: ConnId) -> bool {
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        if t.get(site).is_some_and(|p| p.id == id) {
            t.remove(site);
            true
        } else {
            false
        }
    }

    fn lookup(&self, site: &str) -> Option<SiteHandle> {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        t.get(site).cloned()
    }

    fn attached(&self) -> Vec<SiteHandle> {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        t.values().cloned().collect()
    }
}

/// Which (site, connector) pairs may talk. The hub runs [`crate::PairedOnly`]: built-in
/// services, and connectors that have both claimed each other.
pub trait RoutePolicy: Send + Sync + 'static {
    fn allows(&self, from: &Address, to: &Address) -> bool;
}

/// Every authenticated site may address every other (for tests and benchmarks of routing
/// alone).
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl RoutePolicy for AllowAll {
    fn allows(&self, _from: &Address, _to: &Address) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: ConnId, site: &str) -> (SiteHandle, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(1);
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        (
            SiteHandle::new(id, site.into(), 1, addr, tx, Arc::default()),
            rx,
        )
    }

    #[test]
    fn newer_connection_replaces_older_and_old_detach_is_ignored() {
        let r = LocalRouting::default();
        let (a1, _rx1) = peer(1, "a");
        let (a2, _rx2) = peer(2, "a");
        assert!(r.attach(a1).is_none());
        assert_eq!(r.attach(a2).map(|p| p.id), Some(1));
        assert!(
            !r.detach("a", 1),
            "the older connection must not remove the newer route"
        );
        assert_eq!(r.lookup("a").map(|p| p.id), Some(2));
        assert!(r.detach("a", 2));
        assert!(r.lookup("a").is_none());
    }

    #[tokio::test]
    async fn delivery_waits_then_reports_a_stalled_or_gone_peer() {
        let (a, mut rx) = peer(1, "a");
        let d = Duration::from_millis(20);
        assert_eq!(a.deliver(Bytes::from_static(b"1"), d).await, Ok(()));
        assert_eq!(
            a.deliver(Bytes::from_static(b"2"), d).await,
            Err(DeliveryError::Stalled(d))
        );
        assert_eq!(rx.recv().await, Some(Bytes::from_static(b"1")));
        drop(rx);
        assert_eq!(
            a.deliver(Bytes::from_static(b"3"), d).await,
            Err(DeliveryError::Gone)
        );
    }

    #[test]
    fn first_kick_reason_wins() {
        let k = Kick::default();
        assert!(!k.is_kicked());
        k.kick(Refusal::new(proto::wire::RefusalCode::Superseded, "one"));
        k.kick(Refusal::new(proto::wire::RefusalCode::Shutdown, "two"));
        assert!(k.is_kicked());
        assert_eq!(k.reason().map(|r| r.message), Some("one".into()));
    }
}
