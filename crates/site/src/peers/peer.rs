//! The end-to-end encrypted session of one paired connector with its peer, over one-way hub
//! link messages between the two connectors' addresses. The cryptography is
//! `proto::channel` (Noise KK on the keys pinned at pairing); this module runs it.
//!
//! ```text
//!  consumer ──PeerHandle::send──▶ seal (under the session lock) ──▶ Link::reserve ──▶ hub
//!  dispatch ──PeerHandle::deliver──▶ open (under the lock) ──try_send──▶ messages (lossy)
//!  session state (generation, up) ──watch──▶ consumer: Up and Down are never lost
//!  session task: link epochs (watch) and handshake timers only; it never waits on anyone
//!
//!  either side, on start, on every new link epoch, after any failure (backoff):
//!          Init ─────────────────────────────▶ responder: replaces any session, Response, Up
//!          Response ◀────────────────────────
//!          Up; no Response in time → Init again (backoff 250 ms … 10 s)
//!  crossing Inits: the side whose address sorts lower wins; it ignores the other's Init
//!  and sends its own again (in case the first was lost), the other answers it.
//! ```
//!
//! Invariants:
//! - Nothing here waits on the consumer or on another task: messages go to the consumer
//!   with `try_send` and are dropped (and counted) when it lags; Up and Down go through a
//!   watch of the session's generation, so the consumer sees every session change. The
//!   only wait is for room in the link's outbound queue, and it ends as soon as the link
//!   connection it was meant for ends.
//! - A session belongs to one link connection (epoch): a new epoch ends it, however brief
//!   the outage, and both sides handshake again; a frame sealed for one connection never
//!   leaves on another.
//! - While the link is up and no session is, a handshake is always under way or scheduled
//!   (self-healing); how long that has lasted is reported ([`PeerHandle::session_down_for`]).
//! - An established, idle session arms no timer. When a frame last came from the peer is
//!   kept ([`PeerHandle::silent_for`]) for the site's liveness check (`remote::sync`), which
//!   asks about silent sessions' peer sites only.
//! - Only frames whose hub-authenticated sender is the pinned peer address reach the session
//!   (checked in `remote::dispatch`); a frame that fails to open tears the session down
//!   (Down) and a new handshake starts; nothing is persisted. Delivery is not guaranteed: a
//!   message sent while the session is down is refused, and the sync layer above resends
//!   from its durable state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proto::channel::{self, ChannelError, FrameKind, PinnedPeer, Session};
use proto::model::{ConnectorId, Role};
use proto::pairing::{ConnectorAddr, StaticKeypair};
use proto::wire::Address;
use rand_core::OsRng;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::link::{Connection, Link};

/// Which session is established, if any: the consumer's view. `generation` grows by one with
/// every session that comes up, so a Down and Up in quick succession are never merged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionState {
    pub generation: u64,
    pub up: bool,
}

/// A message from the peer, decrypted and authenticated, with the generation of the session
/// it came in: one from an earlier generation is stale.
pub type PeerMessage = (u64, Vec<u8>);

/// Why a message could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("the encrypted session with the peer is not up")]
    NotUp,
    #[error("the session task has stopped")]
    Stopped,
}

/// How long a handshake waits for the peer's Response before trying again.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// A session down this long while the hub link is up is reported as stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(30);

/// A cheap handle on one connector's session.
#[derive(Clone)]
pub struct PeerHandle {
    shared: Arc<Shared>,
    state: watch::Receiver<SessionState>,
    /// The peer's address on the hub.
    pub peer: Address,
}

struct Shared {
    connector: ConnectorId,
    peer: Address,
    link: Link,
    core: Mutex<Core>,
    state: watch::Sender<SessionState>,
    messages: mpsc::Sender<PeerMessage>,
    /// Wakes the session task when its timers may have changed.
    wake: Notify,
    /// Messages dropped because the consumer lagged.
    dropped: AtomicU64,
    /// When the session task started: the origin of `heard`.
    origin: Instant,
    /// When a frame last came from the peer, ms since `origin`.
    heard: AtomicU64,
}

impl PeerHandle {
    /// Seals and sends `plaintext` to the peer, if the session is up. Waits for room in the
    /// link's queue, but never past the end of the link connection the session belongs to.
    pub async fn send(&self, plaintext: Vec<u8>) -> Result<(), PeerError> {
        let epoch = {
            let core = self.shared.lock();
            if !core.is_up() {
                return Err(PeerError::NotUp);
            }
            core.epoch
        };
        let slot = self
            .shared
            .link
            .reserve(epoch)
            .await
            .map_err(|_| PeerError::NotUp)?;
        let mut core = self.shared.lock();
        if !core.is_up() || core.epoch != epoch {
            return Err(PeerError::NotUp);
        }
        match core.seal(&plaintext) {
            Ok(frame) => slot
                .send(self.shared.connector.as_str(), self.peer.clone(), 0, frame)
                .map_err(|_| PeerError::NotUp),
            Err(e) => {
                self.shared.fail(&mut core, &e, Instant::now());
                Err(PeerError::NotUp)
            }
        }
    }

    /// Whether the session is established now.
    pub fn is_up(&self) -> bool {
        self.state.borrow().up
    }

    /// Watches the session: generation and whether it is up.
    pub fn watch_state(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    /// How long the hub link has been up without a session, if it is in that state now.
    pub fn session_down_for(&self) -> Option<Duration> {
        let core = self.shared.lock();
        core.down_since
            .filter(|_| !core.is_up())
            .map(|since| since.elapsed())
    }

    /// How long since anything last came from the peer (since the start, if nothing has).
    /// The site's liveness check asks only about sessions silent this long.
    pub fn silent_for(&self) -> Duration {
        let heard = Duration::from_millis(self.shared.heard.load(Ordering::Relaxed));
        self.shared.origin.elapsed().saturating_sub(heard)
    }

    /// Messages from the peer dropped because their consumer lagged, since the start.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Asks for a fresh session (the sync layer saw no progress, say).
    pub async fn reset(&self, reason: String) {
        let mut core = self.shared.lock();
        let now = Instant::now();
        if let Some(down) = core.reset(&reason, now) {
            self.shared.publish(&core, Some(down));
        }
        drop(core);
        self.shared.wake.notify_one();
    }

    /// Hands a frame from the peer's address to the session. Never waits.
    pub(crate) fn deliver(&self, frame: Vec<u8>) {
        self.shared.on_frame(&frame, Instant::now());
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the session state after a change; `down` is the reason a session ended.
    fn publish(&self, core: &Core, down: Option<String>) {
        if let Some(reason) = down {
            tracing::info!(connector = %self.connector, peer = %self.peer, %reason, "encrypted session down");
        }
        let now = SessionState {
            generation: core.generation,
            up: core.is_up(),
        };
        self.state.send_if_modified(|s| {
            let changed = *s != now;
            *s = now;
            changed
        });
    }

    fn fail(&self, core: &mut Core, e: &ChannelError, now: Instant) {
        tracing::warn!(connector = %self.connector, peer = %self.peer, error = %e, "session failed; starting over");
        let down = core.fail(&e.to_string(), now);
        self.publish(core, down);
        self.wake.notify_one();
    }

    /// Sends a handshake frame without waiting; one that finds the queue full is lost, and
    /// the handshake's timeout tries again.
    fn send_now(&self, epoch: u64, frame: Vec<u8>) {
        let sent = self
            .link
            .try_reserve(epoch)
            .and_then(|slot| slot.send(self.connector.as_str(), self.peer.clone(), 0, frame));
        if let Err(e) = sent {
            tracing::debug!(connector = %self.connector, error = %e, "session frame not sent");
        }
    }

    fn on_frame(&self, frame: &[u8], now: Instant) {
        let ms = u64::try_from(now.saturating_duration_since(self.origin).as_millis());
        self.heard.store(ms.unwrap_or(u64::MAX), Ordering::Relaxed);
        let mut core = self.lock();
        let conn = self.link.connection();
        let mut down = core.observe_link(conn, now);
        let outcome = core.on_frame(frame, now);
        match outcome {
            Ok(Step::Nothing) => {}
            Ok(Step::Send(reply)) => self.send_now(core.epoch, reply),
            Ok(Step::Responded { response, replaced }) => {
                down = down.or(replaced);
                self.send_now(core.epoch, response);
                tracing::info!(connector = %self.connector, peer = %self.peer, "encrypted session up (responder)");
            }
            Ok(Step::Established) => {
                tracing::info!(connector = %self.connector, peer = %self.peer, "encrypted session up");
            }
            Ok(Step::Message(plaintext)) => {
                let generation = core.generation;
                if self.messages.try_send((generation, plaintext)).is_err() {
                    let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        tracing::warn!(connector = %self.connector, dropped = n, "session messages dropped: their consumer lags (the sync layer resends)");
                    }
                }
            }
            Err(e) if e.is_stale() => {}
            Err(Refusal::Handshake(e)) => {
                tracing::warn!(connector = %self.connector, peer = %self.peer, error = %e, "refused a session handshake");
            }
            Err(Refusal::Channel(e)) => {
                self.publish(&core, down);
                return self.fail(&mut core, &e, now);
            }
        }
        self.publish(&core, down);
        drop(core);
        self.wake.notify_one();
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

/// Starts the session task; it runs until `cancel`. Messages from the peer go to `messages`
/// (lossy); Up and Down to [`PeerHandle::watch_state`].
pub fn spawn(
    spec: SessionSpec,
    link: Link,
    messages: mpsc::Sender<PeerMessage>,
    cancel: CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> PeerHandle {
    let (state_tx, state_rx) = watch::channel(SessionState::default());
    let peer = Address::new(spec.peer.addr.site(), spec.peer.addr.connector().as_str());
    let shared = Arc::new(Shared {
        connector: spec.connector.clone(),
        peer: peer.clone(),
        link,
        core: Mutex::new(Core::new(spec)),
        state: state_tx,
        messages,
        wake: Notify::new(),
        dropped: AtomicU64::new(0),
        origin: Instant::now(),
        heard: AtomicU64::new(0),
    });
    tasks.spawn(run(Arc::clone(&shared), cancel));
    PeerHandle {
        shared,
        state: state_rx,
        peer,
    }
}

/// The session task: follows the link's connection epochs and runs the handshake timers.
async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let Some(mut conn) = shared.link.watch_connection() else {
        return;
    };
    loop {
        let deadline = {
            let mut core = shared.lock();
            let now = Instant::now();
            let down = core.observe_link(*conn.borrow_and_update(), now);
            shared.publish(&core, down);
            core.deadline()
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            changed = conn.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = shared.wake.notified() => {}
            () = sleep_until(deadline) => initiate(&shared).await,
        }
    }
    let mut core = shared.lock();
    let down = core.reset("the site is stopping", Instant::now());
    shared.publish(&core, down);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs a due timer: gives up on an unanswered handshake, or starts one.
async fn initiate(shared: &Shared) {
    let (epoch, init) = {
        let mut core = shared.lock();
        let now = Instant::now();
        match core.on_timer(now) {
            Timer::Nothing => return,
            Timer::TimedOut => {
                tracing::warn!(connector = %shared.connector, peer = %shared.peer, failures = core.failures, "no handshake response; trying again");
                return;
            }
            Timer::Init(Ok(frame)) => (core.epoch, frame),
            Timer::Init(Err(e)) => {
                tracing::error!(connector = %shared.connector, error = %e, "cannot start a session handshake");
                return;
            }
        }
    };
    // The wait for room ends with the connection; the handshake times out if it is lost.
    let Ok(slot) = shared.link.reserve(epoch).await else {
        return;
    };
    let core = shared.lock();
    // Still the handshake this Init starts (a crossing Init may have been answered since).
    if core.pending_init.as_ref().is_some_and(|p| p.frame == init)
        && core.epoch == epoch
        && let Err(e) = slot.send(shared.connector.as_str(), shared.peer.clone(), 0, init)
    {
        tracing::debug!(connector = %shared.connector, error = %e, "handshake not sent");
    }
}

/// What [`Core::on_frame`] asks its driver to do.
#[derive(Debug)]
enum Step {
    Nothing,
    /// Send this handshake frame (our Init again, to a crossing Init).
    Send(Vec<u8>),
    /// We answered an Init: send the Response; the session is up (a new generation).
    /// `replaced` says why an earlier session ended, if one was up.
    Responded {
        response: Vec<u8>,
        replaced: Option<String>,
    },
    /// Our handshake completed: the session is up (a new generation).
    Established,
    /// A message for the consumer.
    Message(Vec<u8>),
}

#[derive(Debug)]
enum Refusal {
    /// An Init that does not verify: ignored, the session stays as it was.
    Handshake(ChannelError),
    /// The session is broken: tear it down and handshake again.
    Channel(ChannelError),
}

impl Refusal {
    fn is_stale(&self) -> bool {
        matches!(self, Refusal::Channel(e) if e.is_stale())
    }
}

/// What [`Core::on_timer`] did.
#[derive(Debug)]
enum Timer {
    Nothing,
    TimedOut,
    Init(Result<Vec<u8>, ChannelError>),
}

struct PendingInit {
    frame: Vec<u8>,
    sent: Instant,
}

/// The session's state machine, without I/O: the caller sends what it returns. Time is
/// passed in.
struct Core {
    spec: SessionSpec,
    /// Whether this side wins crossing Inits: its address sorts lower.
    wins_ties: bool,
    session: Option<Session>,
    /// Whether `session` is established (and not yet torn down: a session that just failed
    /// to open a frame is still up until [`reset`](Self::reset) says it is down).
    up: bool,
    /// Our Init while it waits for its Response.
    pending_init: Option<PendingInit>,
    /// The link connection the session (or handshake) belongs to, as last observed.
    epoch: u64,
    link_up: bool,
    generation: u64,
    /// When to start the next handshake, while there is no session.
    next_init: Instant,
    /// Unanswered handshakes in a row, for the backoff.
    failures: u32,
    /// Since when the link has been up without a session.
    down_since: Option<Instant>,
}

impl Core {
    fn new(spec: SessionSpec) -> Self {
        let wins_ties = spec.local < spec.peer.addr;
        Self {
            spec,
            wins_ties,
            session: None,
            up: false,
            pending_init: None,
            epoch: 0,
            link_up: false,
            generation: 0,
            next_init: Instant::now(),
            failures: 0,
            down_since: None,
        }
    }

    fn is_up(&self) -> bool {
        self.up
    }

    /// Takes in the link's connection; a new epoch or a lost link ends the session. Returns
    /// why a session that was up ended, if one did.
    fn observe_link(&mut self, conn: Connection, now: Instant) -> Option<String> {
        if conn.epoch == self.epoch && conn.connected == self.link_up {
            return None;
        }
        let down = if conn.connected {
            self.reset("the hub link reconnected", now)
        } else {
            self.reset("the hub link is down", now)
        };
        self.epoch = conn.epoch;
        self.link_up = conn.connected;
        // A new connection: handshake at once, whatever failed before.
        self.failures = 0;
        self.next_init = now;
        self.down_since = conn.connected.then_some(now);
        down
    }

    /// Ends the session (if any) and schedules a new handshake at once; returns why, if a
    /// session was up.
    fn reset(&mut self, reason: &str, now: Instant) -> Option<String> {
        let was_up = self.up;
        self.up = false;
        self.session = None;
        self.pending_init = None;
        self.next_init = now;
        if was_up && self.link_up {
            self.down_since = Some(now);
        }
        was_up.then(|| reason.to_owned())
    }

    /// Ends a session that failed. The first failure handshakes again at once (a frame lost
    /// on the way, say); more in a row back off, so a peer that keeps failing is not
    /// answered at the speed of the network.
    fn fail(&mut self, reason: &str, now: Instant) -> Option<String> {
        let down = self.reset(reason, now);
        if self.failures > 0 {
            self.next_init =
                now + crate::link::backoff(self.failures - 1, RETRY_MIN, RETRY_MAX, rand::random());
        }
        self.failures = self.failures.saturating_add(1);
        down
    }

    /// A session is up: a new generation. `proven`: the peer has shown it is live in it
    /// (our Init's Response), which ends the failure streak; a responder waits for the
    /// first message for that.
    fn established(&mut self, proven: bool) {
        self.up = true;
        self.generation += 1;
        if proven {
            self.failures = 0;
        }
        self.pending_init = None;
        self.down_since = None;
    }

    /// When the session task must next call [`on_timer`](Self::on_timer).
    fn deadline(&self) -> Option<Instant> {
        if !self.link_up || self.is_up() {
            return None;
        }
        match &self.pending_init {
            Some(p) => Some(p.sent + HANDSHAKE_TIMEOUT),
            None => Some(self.next_init),
        }
    }

    fn on_timer(&mut self, now: Instant) -> Timer {
        let Some(deadline) = self.deadline() else {
            return Timer::Nothing;
        };
        if now < deadline {
            return Timer::Nothing;
        }
        if self.pending_init.take().is_some() {
            self.session = None;
            self.failures = self.failures.saturating_add(1);
            self.next_init =
                now + crate::link::backoff(self.failures, RETRY_MIN, RETRY_MAX, rand::random());
            return Timer::TimedOut;
        }
        let started = Session::initiator(
            &self.spec.local,
            &self.spec.keypair,
            &self.spec.peer,
            &mut OsRng,
        );
        Timer::Init(started.map(|(session, frame)| {
            self.pending_init = Some(PendingInit {
                frame: frame.clone(),
                sent: now,
            });
            self.session = Some(session);
            frame
        }))
    }

    fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, ChannelError> {
        match self.session.as_mut() {
            Some(s) => s.seal(plaintext),
            None => Err(ChannelError::NotEstablished),
        }
    }

    fn on_frame(&mut self, frame: &[u8], now: Instant) -> Result<Step, Refusal> {
        match FrameKind::of(frame).map_err(Refusal::Channel)? {
            FrameKind::HandshakeInit => self.on_init(frame, now),
            FrameKind::HandshakeResponse => {
                let (Some(session), Some(_)) = (self.session.as_mut(), &self.pending_init) else {
                    // No handshake of ours waits: a Response to one we gave up.
                    return Ok(Step::Nothing);
                };
                session.on_handshake(frame).map_err(Refusal::Channel)?;
                self.established(true);
                Ok(Step::Established)
            }
            FrameKind::Data => {
                let Some(session) = self.session.as_mut() else {
                    return Ok(Step::Nothing);
                };
                let plaintext = session.open(frame).map_err(Refusal::Channel)?;
                self.failures = 0;
                Ok(Step::Message(plaintext))
            }
        }
    }

    fn on_init(&mut self, frame: &[u8], _now: Instant) -> Result<Step, Refusal> {
        if !self.link_up {
            // No way to answer; the peer tries again.
            return Ok(Step::Nothing);
        }
        let id = channel::handshake_id(frame);
        // The Init this session was made from, again (our tie-break's resend, or a replay).
        if id.is_some() && self.session.as_ref().map(Session::handshake_id) == id {
            return Ok(Step::Nothing);
        }
        if self.wins_ties
            && let Some(p) = &self.pending_init
        {
            // Crossing Inits: ours wins. Send it again, in case the first never arrived
            // (the peer was offline then); the peer answers it and ignores the copy.
            return Ok(Step::Send(p.frame.clone()));
        }
        let (session, response) = Session::responder(
            &self.spec.local,
            &self.spec.keypair,
            &self.spec.peer,
            frame,
            &mut OsRng,
        )
        .map_err(Refusal::Handshake)?;
        let replaced = self
            .is_up()
            .then(|| "the peer started a new session".to_owned());
        self.session = Some(session);
        self.established(false);
        Ok(Step::Responded { response, replaced })
    }
}

#[cfg(test)]
mod tests {
    //! The session state machine driven through reconnect orderings: two [`Core`]s joined by
    //! queues that the test delivers, loses or reorders at will.

    use super::*;
    use proto::pairing::StaticKeypair;

    fn addr(site: &str, id: &str) -> ConnectorAddr {
        ConnectorAddr::new(site, ConnectorId::parse(id).expect("valid id")).expect("valid addr")
    }

    /// (Source core at site-a, Target core at site-b); site-a sorts lower and wins ties.
    fn pair() -> (Core, Core) {
        let ka = StaticKeypair::generate(&mut OsRng);
        let kb = StaticKeypair::generate(&mut OsRng);
        let (a, b) = (
            addr("site-a", "sourceconn0001"),
            addr("site-b", "targetconn0001"),
        );
        let spec = |role,
                    local: &ConnectorAddr,
                    key: &StaticKeypair,
                    peer: &ConnectorAddr,
                    pk: &[u8; 32]| {
            SessionSpec {
                connector: local.connector().clone(),
                role,
                local: local.clone(),
                keypair: StaticKeypair::from_private(*key.private_bytes()),
                peer: PinnedPeer {
                    addr: peer.clone(),
                    static_public: *pk,
                },
            }
        };
        let sa = spec(Role::Source, &a, &ka, &b, kb.public());
        let sb = spec(Role::Target, &b, &kb, &a, ka.public());
        let (ca, cb) = (Core::new(sa), Core::new(sb));
        assert!(ca.wins_ties && !cb.wins_ties);
        (ca, cb)
    }

    fn up(epoch: u64) -> Connection {
        Connection {
            epoch,
            connected: true,
        }
    }

    fn init(c: &mut Core, now: Instant) -> Vec<u8> {
        match c.on_timer(now) {
            Timer::Init(Ok(f)) => f,
            other => panic!("expected an Init, got {other:?}"),
        }
    }

    /// Delivers `frame` to `c`; returns the frame it answers with, if any.
    fn deliver(c: &mut Core, frame: &[u8], now: Instant) -> Option<Vec<u8>> {
        match c.on_frame(frame, now).expect("accepted") {
            Step::Send(f) => Some(f),
            Step::Responded { response, .. } => Some(response),
            _ => None,
        }
    }

    fn same_session(a: &mut Core, b: &mut Core, now: Instant) {
        assert!(a.is_up() && b.is_up(), "both up");
        let sealed = a.seal(b"ping").expect("seals");
        assert!(matches!(b.on_frame(&sealed, now), Ok(Step::Message(m)) if m == b"ping"));
        let sealed = b.seal(b"pong").expect("seals");
        assert!(matches!(a.on_frame(&sealed, now), Ok(Step::Message(m)) if m == b"pong"));
    }

    #[test]
    fn either_side_starts_a_session_as_soon_as_its_link_is_up() {
        for source_first in [true, false] {
            let (mut a, mut b) = pair();
            let now = Instant::now();
            a.observe_link(up(1), now);
            b.observe_link(up(1), now);
            let (first, second) = if source_first {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            let i = init(first, now);
            let r = deliver(second, &i, now).expect("a Response");
            assert!(deliver(first, &r, now).is_none());
            same_session(&mut a, &mut b, now);
        }
    }

    #[test]
    fn crossing_inits_end_in_one_session_whatever_the_order() {
        // Both links come up together (a hub restart): both send an Init.
        let (mut a, mut b) = pair();
        let now = Instant::now();
        a.observe_link(up(1), now);
        b.observe_link(up(1), now);
        let ia = init(&mut a, now);
        let ib = init(&mut b, now);
        // a wins: it answers b's Init with its own Init again; b answers a's, then ignores
        // the copy.
        let again = deliver(&mut a, &ib, now).expect("a's Init again");
        assert_eq!(again, ia);
        let r = deliver(&mut b, &ia, now).expect("b answers a");
        assert!(
            deliver(&mut b, &again, now).is_none(),
            "the copy is ignored"
        );
        assert!(deliver(&mut a, &r, now).is_none());
        same_session(&mut a, &mut b, now);
        assert_eq!((a.generation, b.generation), (1, 1));
    }

    #[test]
    fn a_lost_init_of_the_winner_is_repaired_by_the_losers_init() {
        // a's Init went out while b was offline, so it was lost; then b comes up and sends
        // its own. No one waits for a handshake timeout.
        let (mut a, mut b) = pair();
        let now = Instant::now();
        a.observe_link(up(1), now);
        let _lost = init(&mut a, now);
        b.observe_link(up(1), now);
        let ib = init(&mut b, now);
        let again = deliver(&mut a, &ib, now).expect("a's Init again");
        let r = deliver(&mut b, &again, now).expect("b answers");
        deliver(&mut a, &r, now);
        same_session(&mut a, &mut b, now);
    }

    #[test]
    fn a_restarted_peer_replaces_the_old_session_at_once() {
        for restart_source in [true, false] {
            let (mut a, mut b) = pair();
            let now = Instant::now();
            a.observe_link(up(1), now);
            b.observe_link(up(1), now);
            let i = init(&mut b, now);
            let r = deliver(&mut a, &i, now).expect("Response");
            deliver(&mut b, &r, now);
            same_session(&mut a, &mut b, now);
            // One side restarts (a fresh state machine), and handshakes as soon as its link
            // is up; the other side's link never noticed anything.
            let (old, mut fresh) = if restart_source {
                (&mut b, Core::new(clone_spec(&a.spec)))
            } else {
                (&mut a, Core::new(clone_spec(&b.spec)))
            };
            fresh.observe_link(up(7), now);
            let before = old.generation;
            let i = init(&mut fresh, now);
            let r = deliver(old, &i, now).expect("Response");
            deliver(&mut fresh, &r, now);
            assert_eq!(old.generation, before + 1, "a new generation: Down then Up");
            same_session(old, &mut fresh, now);
        }
    }

    #[test]
    fn a_new_link_epoch_ends_the_session_however_brief_the_outage() {
        let (mut a, mut b) = pair();
        let now = Instant::now();
        a.observe_link(up(1), now);
        b.observe_link(up(1), now);
        let i = init(&mut a, now);
        let r = deliver(&mut b, &i, now).expect("Response");
        deliver(&mut a, &r, now);
        // b's link flapped between two looks: only the epoch tells.
        assert!(b.observe_link(up(2), now).is_some(), "Down reported");
        assert!(!b.is_up());
        assert_eq!(b.deadline(), Some(now), "a handshake at once");
        let i = init(&mut b, now);
        let r = deliver(&mut a, &i, now).expect("a answers, replacing");
        deliver(&mut b, &r, now);
        same_session(&mut a, &mut b, now);
        assert_eq!((a.generation, b.generation), (2, 2));
    }

    #[test]
    fn an_unanswered_handshake_is_retried_with_backoff_while_the_link_is_up() {
        let (mut a, _b) = pair();
        let t0 = Instant::now();
        a.observe_link(up(1), t0);
        let _ = init(&mut a, t0);
        let mut t = t0;
        for n in 1..=4u32 {
            t = a.deadline().expect("a timer while down");
            assert!(matches!(a.on_timer(t), Timer::TimedOut));
            assert_eq!(a.failures, n);
            let next = a.deadline().expect("a retry is scheduled");
            assert!(next > t);
            let _ = init(&mut a, next);
        }
        // It says for how long the link has been up without a session.
        assert_eq!(a.down_since, Some(t0));
        assert!(t - t0 > HANDSHAKE_TIMEOUT * 4);
        // A link that goes down stops the timers and the stall clock.
        a.observe_link(
            Connection {
                epoch: 1,
                connected: false,
            },
            t,
        );
        assert_eq!((a.deadline(), a.down_since), (None, None));
    }

    #[test]
    fn a_frame_that_fails_to_open_ends_the_session_and_both_handshake_again() {
        let (mut a, mut b) = pair();
        let now = Instant::now();
        a.observe_link(up(1), now);
        b.observe_link(up(1), now);
        let i = init(&mut a, now);
        let r = deliver(&mut b, &i, now).expect("Response");
        deliver(&mut a, &r, now);
        let _lost = a.seal(b"lost on the way").expect("seals");
        let next = a.seal(b"next").expect("seals");
        assert!(matches!(b.on_frame(&next, now), Err(Refusal::Channel(_))));
        assert!(b.fail("decrypt", now).is_some(), "Down reported");
        assert_eq!(
            b.deadline(),
            Some(now),
            "the first failure handshakes again at once"
        );
        let i = init(&mut b, now);
        let r = deliver(&mut a, &i, now).expect("a answers");
        deliver(&mut b, &r, now);
        same_session(&mut a, &mut b, now);
    }

    fn clone_spec(s: &SessionSpec) -> SessionSpec {
        SessionSpec {
            connector: s.connector.clone(),
            role: s.role,
            local: s.local.clone(),
            keypair: StaticKeypair::from_private(*s.keypair.private_bytes()),
            peer: s.peer.clone(),
        }
    }
}
