//! The end-to-end encrypted session of one paired connector with its peer, over one-way hub
//! link messages between the two connectors' addresses. The cryptography is
//! `proto::channel` (Noise KK on the keys pinned at pairing); this module runs it.
//!
//! ```text
//!  consumer ──send(plaintext)──▶ PeerHandle ──▶ session task ──seal──▶ link.send ──▶ hub
//!  consumer ◀──PeerEvent (Up, Down, Message)── session task ◀──open── inbound (dispatch)
//!
//!  Target: link up → Init ─────────────▶ Source: responder, Response, Up
//!          Response ◀───────────────────        (replaces any older session)
//!          Up; no Response in time, or any non-stale error → Down, Init again (backoff)
//! ```
//!
//! Invariants: only frames whose hub-authenticated sender is the pinned peer address reach
//! the session (checked in `remote::dispatch`); a frame that fails to open tears the
//! session down (Down) and, on the Target, starts a new handshake; nothing is persisted.
//! Delivery is not guaranteed: a message sent while the session is down is refused, and
//! the sync layer above resends from its durable state.

use std::time::Duration;

use proto::channel::{ChannelError, FrameKind, PinnedPeer, Session};
use proto::model::{ConnectorId, Role};
use proto::pairing::{ConnectorAddr, StaticKeypair};
use proto::wire::Address;
use rand_core::OsRng;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::link::Link;

/// What a session tells its consumer.
#[derive(Debug)]
pub enum PeerEvent {
    /// A fresh session is established: both sides hold new keys.
    Up,
    /// The session ended; messages are refused until the next `Up`.
    Down { reason: String },
    /// A message from the peer, decrypted and authenticated.
    Message(Vec<u8>),
}

/// Why a message could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("the encrypted session with the peer is not up")]
    NotUp,
    #[error("the session task has stopped")]
    Stopped,
}

enum Cmd {
    /// A frame that arrived from the peer's address.
    Frame(Vec<u8>),
    /// A plaintext to seal and send.
    Send(Vec<u8>),
    /// Tear the session down and handshake again.
    Reset(String),
}

/// A cheap handle on one connector's session.
#[derive(Clone)]
pub struct PeerHandle {
    cmd: mpsc::Sender<Cmd>,
    up: watch::Receiver<bool>,
    /// The peer's address on the hub.
    pub peer: Address,
}

impl PeerHandle {
    /// Seals and sends `plaintext` to the peer, if the session is up.
    pub async fn send(&self, plaintext: Vec<u8>) -> Result<(), PeerError> {
        if !*self.up.borrow() {
            return Err(PeerError::NotUp);
        }
        self.cmd
            .send(Cmd::Send(plaintext))
            .await
            .map_err(|_| PeerError::Stopped)
    }

    /// Whether the session is established now.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Asks for a fresh session (the sync layer saw no progress, say).
    pub async fn reset(&self, reason: String) {
        let _ = self.cmd.send(Cmd::Reset(reason)).await;
    }

    /// Hands a frame from the peer's address to the session.
    pub(crate) async fn deliver(&self, frame: Vec<u8>) {
        let _ = self.cmd.send(Cmd::Frame(frame)).await;
    }
}

/// What a session needs to run.
pub struct SessionSpec {
    pub connector: ConnectorId,
    pub role: Role,
    pub local: ConnectorAddr,
    pub keypair: StaticKeypair,
    pub peer: PinnedPeer,
}

/// How long the Target waits for the Source's handshake response before trying again.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Starts the session task; it runs until `cancel`.
pub fn spawn(
    spec: SessionSpec,
    link: Link,
    events: mpsc::Sender<PeerEvent>,
    cancel: CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> PeerHandle {
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (up_tx, up_rx) = watch::channel(false);
    let peer = Address::new(spec.peer.addr.site(), spec.peer.addr.connector().as_str());
    let task = SessionTask {
        spec,
        link,
        events,
        up: up_tx,
        peer: peer.clone(),
        session: None,
        handshake_sent: None,
        failures: 0,
    };
    tasks.spawn(task.run(cmd_rx, cancel));
    PeerHandle {
        cmd: cmd_tx,
        up: up_rx,
        peer,
    }
}

struct SessionTask {
    spec: SessionSpec,
    link: Link,
    events: mpsc::Sender<PeerEvent>,
    up: watch::Sender<bool>,
    peer: Address,
    session: Option<Session>,
    /// When the Target sent its last Init, while waiting for the Response.
    handshake_sent: Option<tokio::time::Instant>,
    /// Consecutive failed handshakes, for the backoff.
    failures: u32,
}

impl SessionTask {
    async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>, cancel: CancellationToken) {
        let mut link_poll = tokio::time::interval(Duration::from_millis(250));
        let mut link_was_up = self.link.state().connected();
        let mut retry_at = tokio::time::Instant::now();
        loop {
            let initiator = self.spec.role == Role::Target;
            let wants_handshake =
                initiator && self.session.is_none() && self.link.state().connected();
            let deadline = match (wants_handshake, self.handshake_sent) {
                (true, Some(sent)) => sent + HANDSHAKE_TIMEOUT,
                (true, None) => retry_at,
                (false, _) => tokio::time::Instant::now() + Duration::from_secs(3600),
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                _ = link_poll.tick() => {
                    let up = self.link.state().connected();
                    if up != link_was_up {
                        link_was_up = up;
                        if !up {
                            self.down("the hub link is down").await;
                        }
                        retry_at = tokio::time::Instant::now();
                    }
                }
                cmd = cmds.recv() => match cmd {
                    None => break,
                    Some(Cmd::Frame(frame)) => self.on_frame(frame).await,
                    Some(Cmd::Send(plaintext)) => self.send(plaintext).await,
                    Some(Cmd::Reset(reason)) => {
                        self.down(&reason).await;
                        retry_at = tokio::time::Instant::now();
                    }
                },
                () = tokio::time::sleep_until(deadline), if wants_handshake => {
                    if self.handshake_sent.is_some() {
                        self.failures += 1;
                        tracing::warn!(connector = %self.spec.connector, peer = %self.peer, "no handshake response; trying again");
                        self.handshake_sent = None;
                        retry_at = tokio::time::Instant::now() + crate::link::backoff(self.failures, RETRY_MIN, RETRY_MAX, 0.2);
                    } else {
                        self.initiate().await;
                    }
                }
            }
        }
        let _ = self.up.send(false);
    }

    async fn initiate(&mut self) {
        match Session::initiator(
            &self.spec.local,
            &self.spec.keypair,
            &self.spec.peer,
            &mut OsRng,
        ) {
            Ok((session, init)) => {
                self.session = Some(session);
                self.handshake_sent = Some(tokio::time::Instant::now());
                self.transmit(init).await;
                // Not up until the Response arrives; keep `session` for `on_handshake`.
            }
            Err(e) => {
                tracing::error!(connector = %self.spec.connector, error = %e, "cannot start a session handshake")
            }
        }
    }

    async fn on_frame(&mut self, frame: Vec<u8>) {
        let kind = match FrameKind::of(&frame) {
            Ok(k) => k,
            Err(e) => return self.fail(e).await,
        };
        match (kind, self.spec.role) {
            (FrameKind::HandshakeInit, Role::Source) => {
                match Session::responder(
                    &self.spec.local,
                    &self.spec.keypair,
                    &self.spec.peer,
                    &frame,
                    &mut OsRng,
                ) {
                    Ok((session, response)) => {
                        let was_up = self.session.take().is_some();
                        if was_up {
                            let _ = self
                                .events
                                .send(PeerEvent::Down {
                                    reason: "the peer started a new session".into(),
                                })
                                .await;
                        }
                        self.session = Some(session);
                        self.transmit(response).await;
                        self.established().await;
                    }
                    Err(e) => {
                        tracing::warn!(connector = %self.spec.connector, error = %e, "refused a session handshake")
                    }
                }
            }
            (FrameKind::HandshakeResponse, Role::Target) => {
                let Some(session) = self.session.as_mut() else {
                    return;
                };
                match session.on_handshake(&frame) {
                    Ok(()) => {
                        self.handshake_sent = None;
                        self.failures = 0;
                        self.established().await;
                    }
                    Err(e) if e.is_stale() => {}
                    Err(e) => self.fail(e).await,
                }
            }
            (FrameKind::Data, _) => {
                let Some(session) = self.session.as_mut() else {
                    return;
                };
                match session.open(&frame) {
                    Ok(plaintext) => {
                        let _ = self.events.send(PeerEvent::Message(plaintext)).await;
                    }
                    Err(e) if e.is_stale() => {}
                    Err(e) => self.fail(e).await,
                }
            }
            (kind, role) => {
                tracing::warn!(connector = %self.spec.connector, ?kind, ?role, "unexpected session frame");
            }
        }
    }

    async fn send(&mut self, plaintext: Vec<u8>) {
        let sealed = match self.session.as_mut() {
            Some(s) if s.is_established() => s.seal(&plaintext),
            _ => return,
        };
        match sealed {
            Ok(frame) => self.transmit(frame).await,
            Err(e) => self.fail(e).await,
        }
    }

    async fn transmit(&self, frame: Vec<u8>) {
        if let Err(e) = self
            .link
            .send(self.spec.connector.as_str(), self.peer.clone(), 0, frame)
            .await
        {
            tracing::debug!(connector = %self.spec.connector, error = %e, "session frame not sent");
        }
    }

    async fn established(&mut self) {
        let _ = self.up.send(true);
        tracing::info!(connector = %self.spec.connector, peer = %self.peer, "encrypted session up");
        let _ = self.events.send(PeerEvent::Up).await;
    }

    async fn fail(&mut self, e: ChannelError) {
        tracing::warn!(connector = %self.spec.connector, peer = %self.peer, error = %e, "session failed; starting over");
        self.down(&e.to_string()).await;
    }

    async fn down(&mut self, reason: &str) {
        self.handshake_sent = None;
        let was = self.session.take().is_some_and(|s| s.is_established());
        let _ = self.up.send(false);
        if was {
            tracing::info!(connector = %self.spec.connector, peer = %self.peer, reason, "encrypted session down");
            let _ = self
                .events
                .send(PeerEvent::Down {
                    reason: reason.to_owned(),
                })
                .await;
        }
    }
}
