//! The site's live view of its peers, which `AppState` holds: one session handle per paired
//! connector, the tokens that stop a connector's tasks, the queue that asks the supervisor to
//! start a newly paired connector, the end-to-end pings and device lookups waiting for their
//! answer, and the sync drivers' wake-ups and status.
//!
//! Plain shared data and the session handles, below `state` and `ops`; the tasks that fill
//! it (the supervisor, the connector tasks, the sync drivers) are `remote`'s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::lookup::{Answer, Response};
use proto::model::ConnectorId;
use proto::service;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::peer::{self, PeerHandle};

/// The site's view of its peers: one session handle per paired connector.
pub struct Remote {
    pub(crate) peers: Mutex<HashMap<ConnectorId, PeerHandle>>,
    /// Stops a connector's session, sync driver and connector task.
    pub(crate) stops: Mutex<HashMap<ConnectorId, CancellationToken>>,
    /// Asks the supervisor to start a connector's session (after a pairing completes).
    start: mpsc::UnboundedSender<ConnectorId>,
    /// End-to-end pings waiting for their pong, by nonce.
    pings: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    /// Device lookups waiting for the peer's answer.
    pub lookups: Pending,
    /// The sync drivers' wake-ups and status, by connector.
    pub sync: super::status::SyncDrivers,
    /// Each connector's latest backfill (docs/sync.md, "Backfill").
    pub backfills: super::backfill::Backfills,
}

/// The supervisor's end of [`Remote::start`]; handed to [`spawn`].
pub struct Starts(pub(crate) mpsc::UnboundedReceiver<ConnectorId>);

impl Remote {
    pub fn new() -> (Self, Starts) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                peers: Mutex::new(HashMap::new()),
                stops: Mutex::new(HashMap::new()),
                start: tx,
                pings: Mutex::new(HashMap::new()),
                lookups: Pending::default(),
                sync: super::status::SyncDrivers::default(),
                backfills: super::backfill::Backfills::default(),
            },
            Starts(rx),
        )
    }

    /// Starts the session of a connector that has just been paired.
    pub fn start(&self, cid: &ConnectorId) {
        let _ = self.start.send(cid.clone());
    }

    /// Stops everything running for a connector whose pairing was cancelled.
    pub fn stop(&self, cid: &ConnectorId) {
        let token = self
            .stops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(cid);
        if let Some(token) = token {
            token.cancel();
        }
        self.lock_peers().remove(cid);
        self.sync.unregister(cid);
    }

    /// The session handle of a paired connector, if its session task runs.
    pub fn peer(&self, cid: &ConnectorId) -> Option<PeerHandle> {
        self.lock_peers().get(cid).cloned()
    }

    pub(crate) fn lock_peers(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectorId, PeerHandle>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock_pings(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<()>>> {
        self.pings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A round trip through the connector's end-to-end session: proof that the peer holds
    /// the pinned key and answers.
    pub async fn ping(
        &self,
        cid: &ConnectorId,
        timeout: Duration,
    ) -> Result<Duration, peer::PeerError> {
        let handle = self.peer(cid).ok_or(peer::PeerError::NotUp)?;
        let nonce = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
        let (tx, rx) = oneshot::channel();
        self.lock_pings().insert(nonce, tx);
        let started = Instant::now();
        let mut msg = vec![service::PING];
        msg.extend_from_slice(&nonce.to_le_bytes());
        let sent = handle.send(msg).await;
        let answer = match sent {
            Ok(()) => tokio::time::timeout(timeout, rx).await,
            Err(e) => {
                self.lock_pings().remove(&nonce);
                return Err(e);
            }
        };
        self.lock_pings().remove(&nonce);
        match answer {
            Ok(Ok(())) => Ok(started.elapsed()),
            _ => Err(peer::PeerError::NotUp),
        }
    }
}

/// Device lookups of this site waiting for the peer's answer, by request id.
#[derive(Default)]
pub struct Pending {
    /// The connector whose session must carry the answer, and where to hand it.
    waiting: Mutex<HashMap<u64, (ConnectorId, oneshot::Sender<Answer>)>>,
}

/// A registered lookup; dropping it (answer, timeout or cancellation) forgets it.
pub struct Waiting<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

impl Pending {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, (ConnectorId, oneshot::Sender<Answer>)>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers request `id`, asked on connector `cid`'s session.
    pub fn wait(&self, id: u64, cid: &ConnectorId) -> (Waiting<'_>, oneshot::Receiver<Answer>) {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, (cid.clone(), tx));
        (Waiting { pending: self, id }, rx)
    }

    /// Hands an answer that arrived on connector `cid`'s session to its caller; an answer
    /// counts only on the session it was asked on.
    pub fn answer(&self, cid: &ConnectorId, resp: Response) {
        let mut waiting = self.lock();
        if waiting.get(&resp.id).is_some_and(|(c, _)| c == cid)
            && let Some((_, tx)) = waiting.remove(&resp.id)
        {
            let _ = tx.send(resp.answer);
        }
    }
}
