//! Pairing of a Source and a Target connector through the hub: SPAKE2 on the one-time code,
//! then a Noise handshake keyed by the SPAKE2 result that exchanges and pins both
//! connectors' long-term X25519 keys.
//!
//! ```text
//!  Target (PairingInitiator)                hub               Source (PairingResponder)
//!  operator typed site, connector, code            operator's PairingWindow shows the code
//!  SPAKE2 side A
//!  Start{attempt, source, target, A} ─────────────────────▶ window.attempt (counts 1 of 5)
//!                                                           SPAKE2 side B → K
//!                                                           Noise XXpsk0 initiator, psk = K
//!        ◀──────────────────────────── Challenge{attempt, B, noise1 = psk,e}
//!  SPAKE2 → K; read noise1:
//!    fails → WrongCode (Abort{WrongCode} ─▶ Source counts the failure)
//!  Noise XXpsk0 responder
//!  Response{attempt, noise2 = e,ee,s,es} ─────────────────▶ read noise2:
//!                                                             fails → WrongCode, counted
//!                                                           window.complete; caller persists
//!                                                           Paired{Target's static} first
//!        ◀──────────────────────────── Confirm{attempt, noise3 = s,se}
//!  read noise3 → Paired{Source's static}
//! ```
//!
//! Why it is safe against the hub: the code never leaves either site; SPAKE2 lets a party
//! that does not know it test exactly one guess per run, and each run costs one of the
//! Source's five attempts. Every Noise message after the first key mixes the SPAKE2 key
//! (`psk0`), so each side proves knowledge of the code before it sends its static key,
//! and both statics travel encrypted. The prologue binds the attempt id, both addresses
//! and both SPAKE2 messages, so a relay that rewrites, replays or splices any field makes
//! the handshake fail instead of producing a pairing with a key other than the peer's.
//! Only `Abort` is unauthenticated; forging one merely ends an attempt.
//!
//! Roles: the Target is the SPAKE2 A side and the Noise responder; the Source is the
//! SPAKE2 B side and the Noise initiator (it holds the SPAKE2 key first).
//!
//! What it does not do: I/O, timers (the driver abandons an attempt that goes quiet),
//! persistence (the driver stores [`Paired`] and its own [`StaticKeypair`]), or the
//! hub-level refusals that need no cryptography (unknown site, site offline).
//!
//! Invariants: neither state machine returns [`Paired`] unless the peer proved knowledge
//! of the code in this attempt; the Source's window is marked paired before the Confirm
//! that lets the Target finish is produced.

mod code;
mod keys;
mod message;
mod window;

pub use code::{CODE_ENTROPY_BITS, CODE_LEN, CodeError, PairingCode};
pub use keys::{ConnectorAddr, Fingerprint, KEY_LEN, KeyError, MAX_SITE_NAME, StaticKeypair};
pub use message::{AbortReason, AttemptId, DecodeError, PAIRING_VERSION, PairingMessage};
pub use window::{DEFAULT_WINDOW_US, MAX_ATTEMPTS, PairingWindow, WindowClosed, WindowStatus};

pub(crate) use keys::{draw_seed, noise_builder, push_len_prefixed};

use rand_core::{CryptoRng, RngCore};
use snow::HandshakeState;
use spake2::{Ed25519Group, Identity, Password, Spake2};

use window::Attempt;

/// The Noise protocol of pairing. `psk0`: the SPAKE2 key is mixed in before anything is
/// encrypted, so the first payload already proves knowledge of the code.
const PAIRING_NOISE: &str = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s";
/// Domain separation for the prologue.
const PAIRING_LABEL: &[u8] = b"west-remote-sync pairing v1";
/// Longest Noise message of pairing (message 2: 32 + 48 + 16).
const MAX_NOISE_MSG: usize = 96;

/// Why a pairing attempt failed. `Display` is a sentence for the operator.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum PairingError {
    #[error("wrong pairing code (or the relay altered the exchange)")]
    WrongCode,
    #[error(transparent)]
    Closed(#[from] WindowClosed),
    #[error(
        "the source connector is not waiting for a pairing; click ENABLE REMOTE-SYNC on the source"
    )]
    NotPairing,
    #[error("a newer pairing attempt replaced this one; try again")]
    Superseded,
    #[error("the pairing request was meant for {addressed}, not for this connector {local}")]
    WrongConnector {
        addressed: ConnectorAddr,
        local: ConnectorAddr,
    },
    #[error("the peer ended the pairing attempt ({0:?})")]
    PeerAborted(AbortReason),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("expected a pairing {expected} message, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("the message belongs to another pairing attempt")]
    OtherAttempt,
    #[error("the peer's SPAKE2 message was rejected: {0}")]
    Spake(spake2::Error),
    #[error("the source's confirmation did not verify; the relay altered the exchange")]
    Tampered,
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("pairing handshake failed: {0}")]
    Noise(snow::Error),
    #[error("this pairing attempt has already ended")]
    Finished,
}

impl PairingError {
    /// What to tell the peer when this error ends an attempt.
    fn abort_reason(&self) -> AbortReason {
        match self {
            Self::WrongCode => AbortReason::WrongCode,
            Self::Closed(WindowClosed::Expired) => AbortReason::Expired,
            Self::Closed(WindowClosed::TooManyAttempts) => AbortReason::TooManyAttempts,
            Self::Closed(WindowClosed::AlreadyPaired) => AbortReason::AlreadyPaired,
            Self::Closed(WindowClosed::Cancelled) => AbortReason::Cancelled,
            Self::NotPairing => AbortReason::NotPairing,
            Self::Superseded => AbortReason::Superseded,
            Self::WrongConnector { .. } => AbortReason::WrongConnector,
            Self::PeerAborted(_)
            | Self::Decode(_)
            | Self::Unexpected { .. }
            | Self::OtherAttempt
            | Self::Spake(_)
            | Self::Tampered
            | Self::Key(_)
            | Self::Noise(_)
            | Self::Finished => AbortReason::ProtocolViolation,
        }
    }
}

impl From<AbortReason> for PairingError {
    /// How a peer's Abort reads to this side's operator.
    fn from(reason: AbortReason) -> Self {
        match reason {
            AbortReason::WrongCode => Self::WrongCode,
            AbortReason::Expired => Self::Closed(WindowClosed::Expired),
            AbortReason::TooManyAttempts => Self::Closed(WindowClosed::TooManyAttempts),
            AbortReason::AlreadyPaired => Self::Closed(WindowClosed::AlreadyPaired),
            AbortReason::Cancelled => Self::Closed(WindowClosed::Cancelled),
            AbortReason::NotPairing => Self::NotPairing,
            AbortReason::Superseded => Self::Superseded,
            AbortReason::WrongConnector | AbortReason::ProtocolViolation => {
                Self::PeerAborted(reason)
            }
        }
    }
}

/// A failed step: the reason, and the Abort to send so the peer learns the outcome.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct PairingFailure {
    pub error: PairingError,
    /// An encoded [`PairingMessage::Abort`] for the peer, when there is one to send.
    pub reply: Option<Vec<u8>>,
}

impl PairingFailure {
    fn silent(error: PairingError) -> Self {
        Self { error, reply: None }
    }

    fn abort(attempt: AttemptId, error: PairingError) -> Self {
        let reason = error.abort_reason();
        Self {
            error,
            reply: Some(PairingMessage::Abort { attempt, reason }.encode()),
        }
    }
}

/// A completed pairing: what each side persists about its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paired {
    /// The peer connector this side is now paired with.
    pub peer: ConnectorAddr,
    /// The peer's long-term X25519 key, to pin: every later session must prove it.
    pub peer_static_public: [u8; KEY_LEN],
    /// The Noise handshake hash, equal on both sides; a fingerprint for logs and audits.
    pub handshake_hash: [u8; 32],
}

/// What the Target does after a message from the Source.
#[derive(Debug)]
pub enum InitiatorStep {
    /// Send these bytes to the Source and wait for its next message.
    Send(Vec<u8>),
    /// Pairing is complete: persist it.
    Paired(Paired),
}

/// The Target's side of one pairing attempt.
pub struct PairingInitiator {
    /// Routes the Source's answers and is bound into the handshake.
    attempt: AttemptId,
    /// This Target connector: SPAKE2 identity A.
    local: ConnectorAddr,
    /// The Source connector the operator named: SPAKE2 identity B.
    remote: ConnectorAddr,
    /// Sent encrypted in Noise message 2 and pinned by the Source.
    local_static: StaticKeypair,
    /// Our SPAKE2 message, for the prologue.
    spake_msg: Vec<u8>,
    /// Randomness for the Noise ephemeral, drawn at start so later steps need no RNG.
    noise_seed: [u8; KEY_LEN],
    state: InitiatorState,
}

#[derive(Debug)]
enum InitiatorState {
    AwaitingChallenge(Box<Spake2<Ed25519Group>>),
    AwaitingConfirm(Box<HandshakeState>),
    Ended,
}

impl std::fmt::Debug for PairingInitiator {
    /// Leaves out the Noise seed, which would let a log reader recompute our ephemeral key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairingInitiator")
            .field("attempt", &self.attempt)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl PairingInitiator {
    /// Starts an attempt to pair `local` (a Target connector, identified by
    /// `local_static`) with the Source `remote` using the code its operator typed. Returns
    /// the machine and the Start message for the Source.
    pub fn start(
        local: ConnectorAddr,
        local_static: StaticKeypair,
        remote: ConnectorAddr,
        code: &PairingCode,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> (Self, Vec<u8>) {
        let mut attempt = [0u8; 16];
        rng.fill_bytes(&mut attempt);
        let attempt = AttemptId(attempt);
        let (spake, spake_msg) = Spake2::<Ed25519Group>::start_a_with_rng(
            &Password::new(code.as_str()),
            &Identity::new(&local.to_bytes()),
            &Identity::new(&remote.to_bytes()),
            &mut *rng,
        );
        let noise_seed = draw_seed(rng);
        let start = PairingMessage::Start {
            attempt,
            source: remote.clone(),
            target: local.clone(),
            spake: spake_msg.clone(),
        }
        .encode();
        let machine = Self {
            attempt,
            local,
            remote,
            local_static,
            spake_msg,
            noise_seed,
            state: InitiatorState::AwaitingChallenge(Box::new(spake)),
        };
        (machine, start)
    }

    pub fn attempt(&self) -> AttemptId {
        self.attempt
    }

    /// Takes the Source's next message. After an error the attempt is over: every later
    /// call fails with [`PairingError::Finished`].
    pub fn on_message(&mut self, bytes: &[u8]) -> Result<InitiatorStep, PairingFailure> {
        let state = std::mem::replace(&mut self.state, InitiatorState::Ended);
        if let InitiatorState::Ended = state {
            return Err(PairingFailure::silent(PairingError::Finished));
        }
        let msg = match PairingMessage::decode(bytes) {
            Ok(msg) => msg,
            Err(e) => return Err(PairingFailure::abort(self.attempt, e.into())),
        };
        if msg.attempt() != self.attempt {
            return Err(PairingFailure::abort(
                self.attempt,
                PairingError::OtherAttempt,
            ));
        }
        match (state, msg) {
            (_, PairingMessage::Abort { reason, .. }) => Err(PairingFailure::silent(reason.into())),
            (
                InitiatorState::AwaitingChallenge(spake),
                PairingMessage::Challenge {
                    spake: b, noise, ..
                },
            ) => {
                let mut handshake = self
                    .answer_challenge(*spake, &b, &noise)
                    .map_err(|e| PairingFailure::abort(self.attempt, e))?;
                let mut out = [0u8; MAX_NOISE_MSG];
                let n = handshake
                    .write_message(&[], &mut out)
                    .map_err(|e| PairingFailure::abort(self.attempt, PairingError::Noise(e)))?;
                self.state = InitiatorState::AwaitingConfirm(handshake);
                Ok(InitiatorStep::Send(
                    PairingMessage::Response {
                        attempt: self.attempt,
                        noise: out[..n].to_vec(),
                    }
                    .encode(),
                ))
            }
            (
                InitiatorState::AwaitingConfirm(mut handshake),
                PairingMessage::Confirm { noise, .. },
            ) => {
                let mut payload = [0u8; MAX_NOISE_MSG];
                handshake
                    .read_message(&noise, &mut payload)
                    .map_err(|_| PairingFailure::silent(PairingError::Tampered))?;
                let paired = finish(&handshake, &self.local_static, &self.remote)
                    .map_err(PairingFailure::silent)?;
                Ok(InitiatorStep::Paired(paired))
            }
            (state, msg) => {
                let expected = match state {
                    InitiatorState::AwaitingChallenge(_) => "Challenge",
                    _ => "Confirm",
                };
                Err(PairingFailure::abort(
                    self.attempt,
                    PairingError::Unexpected {
                        expected,
                        got: msg.kind(),
                    },
                ))
            }
        }
    }

    /// Finishes SPAKE2 and reads Noise message 1: the point where a wrong code shows.
    fn answer_challenge(
        &self,
        spake: Spake2<Ed25519Group>,
        source_spake: &[u8],
        noise: &[u8],
    ) -> Result<Box<HandshakeState>, PairingError> {
        let psk = spake_key(spake.finish(source_spake))?;
        let prologue = prologue(
            self.attempt,
            &self.remote,
            &self.local,
            &self.spake_msg,
            source_spake,
        );
        let mut handshake = noise_builder(pairing_params(), self.noise_seed)
            .local_private_key(self.local_static.private_bytes())
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.psk(0, &psk))
            .and_then(|b| b.build_responder())
            .map_err(PairingError::Noise)?;
        let mut payload = [0u8; MAX_NOISE_MSG];
        handshake
            .read_message(noise, &mut payload)
            .map_err(|_| PairingError::WrongCode)?;
        Ok(Box::new(handshake))
    }
}

/// The Source's side of one pairing attempt, from the Target's Start to its Response.
#[derive(Debug)]
pub struct PairingResponder {
    attempt_id: AttemptId,
    /// The window's admission of this attempt, returned to it on success or failure.
    attempt: Attempt,
    /// The Target connector that claims to know the code.
    peer: ConnectorAddr,
    /// Our static key, checked against the Target's for low order.
    local_static: StaticKeypair,
    /// Noise after message 1, waiting for message 2.
    handshake: Box<HandshakeState>,
}

impl PairingResponder {
    /// Answers a Target's Start. Counts one attempt of `window` unless the Start is refused
    /// before any secret-dependent answer (malformed, wrong connector, window closed).
    /// On success returns the machine and the Challenge to send back.
    pub fn accept(
        window: &mut PairingWindow,
        now_us: u64,
        local: &ConnectorAddr,
        local_static: &StaticKeypair,
        start: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Self, Vec<u8>), PairingFailure> {
        let msg = PairingMessage::decode(start).map_err(|e| PairingFailure::silent(e.into()))?;
        let PairingMessage::Start {
            attempt: attempt_id,
            source,
            target,
            spake,
        } = msg
        else {
            return Err(PairingFailure::abort(
                msg.attempt(),
                PairingError::Unexpected {
                    expected: "Start",
                    got: msg.kind(),
                },
            ));
        };
        if &source != local {
            return Err(PairingFailure::abort(
                attempt_id,
                PairingError::WrongConnector {
                    addressed: source,
                    local: local.clone(),
                },
            ));
        }
        let attempt = window
            .attempt(now_us)
            .map_err(|why| PairingFailure::abort(attempt_id, why.into()))?;
        let (ours, our_msg) = Spake2::<Ed25519Group>::start_b_with_rng(
            &Password::new(attempt.code.as_str()),
            &Identity::new(&target.to_bytes()),
            &Identity::new(&local.to_bytes()),
            &mut *rng,
        );
        let challenge = spake_key(ours.finish(&spake)).and_then(|psk| {
            let prologue = prologue(attempt_id, local, &target, &spake, &our_msg);
            let mut handshake = noise_builder(pairing_params(), draw_seed(rng))
                .local_private_key(local_static.private_bytes())
                .and_then(|b| b.prologue(&prologue))
                .and_then(|b| b.psk(0, &psk))
                .and_then(|b| b.build_initiator())
                .map_err(PairingError::Noise)?;
            let mut out = [0u8; MAX_NOISE_MSG];
            let n = handshake
                .write_message(&[], &mut out)
                .map_err(PairingError::Noise)?;
            Ok((handshake, out[..n].to_vec()))
        });
        let (handshake, noise) = match challenge {
            Ok(ok) => ok,
            Err(e) => {
                window.fail(&attempt);
                return Err(PairingFailure::abort(attempt_id, e));
            }
        };
        let reply = PairingMessage::Challenge {
            attempt: attempt_id,
            spake: our_msg,
            noise,
        }
        .encode();
        let machine = Self {
            attempt_id,
            attempt,
            peer: target,
            local_static: local_static.clone(),
            handshake: Box::new(handshake),
        };
        Ok((machine, reply))
    }

    pub fn attempt(&self) -> AttemptId {
        self.attempt_id
    }

    /// The Target connector this attempt claims to come from.
    pub fn peer(&self) -> &ConnectorAddr {
        &self.peer
    }

    /// Takes the Target's Response (or Abort). On success the window is already marked
    /// paired: persist [`Paired`], then send the returned Confirm. Every failure is
    /// counted against the window.
    pub fn on_message(
        mut self,
        window: &mut PairingWindow,
        now_us: u64,
        bytes: &[u8],
    ) -> Result<(Paired, Vec<u8>), PairingFailure> {
        let result = self.read_response(window, now_us, bytes);
        if result.is_err() {
            window.fail(&self.attempt);
        }
        result
    }

    fn read_response(
        &mut self,
        window: &mut PairingWindow,
        now_us: u64,
        bytes: &[u8],
    ) -> Result<(Paired, Vec<u8>), PairingFailure> {
        let id = self.attempt_id;
        let msg = PairingMessage::decode(bytes).map_err(|e| PairingFailure::abort(id, e.into()))?;
        if msg.attempt() != id {
            return Err(PairingFailure::abort(id, PairingError::OtherAttempt));
        }
        let noise = match msg {
            PairingMessage::Response { noise, .. } => noise,
            PairingMessage::Abort { reason, .. } => {
                return Err(PairingFailure::silent(reason.into()));
            }
            other => {
                return Err(PairingFailure::abort(
                    id,
                    PairingError::Unexpected {
                        expected: "Response",
                        got: other.kind(),
                    },
                ));
            }
        };
        let mut payload = [0u8; MAX_NOISE_MSG];
        self.handshake
            .read_message(&noise, &mut payload)
            .map_err(|_| PairingFailure::abort(id, PairingError::WrongCode))?;
        let mut out = [0u8; MAX_NOISE_MSG];
        let n = self
            .handshake
            .write_message(&[], &mut out)
            .map_err(|e| PairingFailure::abort(id, PairingError::Noise(e)))?;
        let paired = finish(&self.handshake, &self.local_static, &self.peer)
            .map_err(|e| PairingFailure::abort(id, e))?;
        window
            .complete(&self.attempt, now_us)
            .map_err(|e| PairingFailure::abort(id, e))?;
        let confirm = PairingMessage::Confirm {
            attempt: id,
            noise: out[..n].to_vec(),
        }
        .encode();
        Ok((paired, confirm))
    }
}

fn pairing_params() -> snow::params::NoiseParams {
    PAIRING_NOISE
        .parse()
        .expect("the pairing Noise pattern is a valid constant")
}

fn spake_key(key: Result<Vec<u8>, spake2::Error>) -> Result<[u8; 32], PairingError> {
    let key = key.map_err(PairingError::Spake)?;
    key.as_slice()
        .try_into()
        .map_err(|_| PairingError::Spake(spake2::Error::WrongLength))
}

/// Everything both sides must agree on besides the code, hashed into the Noise transcript.
fn prologue(
    attempt: AttemptId,
    source: &ConnectorAddr,
    target: &ConnectorAddr,
    spake_a: &[u8],
    spake_b: &[u8],
) -> Vec<u8> {
    let mut p = Vec::with_capacity(256);
    push_len_prefixed(&mut p, PAIRING_LABEL);
    push_len_prefixed(&mut p, &attempt.0);
    push_len_prefixed(&mut p, &source.to_bytes());
    push_len_prefixed(&mut p, &target.to_bytes());
    push_len_prefixed(&mut p, spake_a);
    push_len_prefixed(&mut p, spake_b);
    p
}

/// The pairing result once the Noise handshake has completed on this side.
fn finish(
    handshake: &HandshakeState,
    local_static: &StaticKeypair,
    peer: &ConnectorAddr,
) -> Result<Paired, PairingError> {
    let peer_static_public: [u8; KEY_LEN] = handshake
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or(PairingError::Tampered)?;
    local_static.check_peer(&peer_static_public)?;
    let handshake_hash = handshake
        .get_handshake_hash()
        .try_into()
        .map_err(|_| PairingError::Tampered)?;
    Ok(Paired {
        peer: peer.clone(),
        peer_static_public,
        handshake_hash,
    })
}

/// A seeded, deterministic RNG for tests: fast and reproducible, not secure.
#[cfg(test)]
pub(crate) mod test_rng {
    use rand_core::{CryptoRng, RngCore};

    /// SplitMix64.
    #[derive(Debug, Clone)]
    pub(crate) struct TestRng(u64);

    impl TestRng {
        pub(crate) fn new(seed: u64) -> Self {
            Self(seed)
        }
    }

    impl RngCore for TestRng {
        fn next_u32(&mut self) -> u32 {
            (self.next_u64() >> 32) as u32
        }

        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for chunk in dest.chunks_mut(8) {
                let v = self.next_u64().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }

        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    /// Test only: SplitMix64 is not a CSPRNG, but the protocols need only the trait.
    impl CryptoRng for TestRng {}
}

#[cfg(test)]
mod tests {
    use super::test_rng::TestRng;
    use super::*;
    use crate::model::ConnectorId;

    const NOW: u64 = 1_000_000;

    struct Fixture {
        source: ConnectorAddr,
        target: ConnectorAddr,
        source_key: StaticKeypair,
        target_key: StaticKeypair,
    }

    fn addr(site: &str, id: &str) -> ConnectorAddr {
        ConnectorAddr::new(site, ConnectorId::parse(id).expect("valid id")).expect("valid addr")
    }

    fn fixture(seed: u64) -> Fixture {
        let mut rng = TestRng::new(seed);
        Fixture {
            source: addr("site-a", "sourceconn0001"),
            target: addr("site-b", "targetconn0001"),
            source_key: StaticKeypair::generate(&mut rng),
            target_key: StaticKeypair::generate(&mut rng),
        }
    }

    impl Fixture {
        /// The Target's Start toward this Source, with the code as typed.
        fn start(&self, typed: &PairingCode, rng: &mut TestRng) -> (PairingInitiator, Vec<u8>) {
            PairingInitiator::start(
                self.target.clone(),
                self.target_key.clone(),
                self.source.clone(),
                typed,
                rng,
            )
        }

        /// This Source's answer, in `w` at `now`, to `start` (or to whatever came instead).
        fn accept(
            &self,
            w: &mut PairingWindow,
            now: u64,
            start: &[u8],
            rng: &mut TestRng,
        ) -> Result<(PairingResponder, Vec<u8>), PairingFailure> {
            PairingResponder::accept(w, now, &self.source, &self.source_key, start, rng)
        }
    }

    fn window(seed: u64) -> PairingWindow {
        PairingWindow::open(
            PairingCode::generate(&mut TestRng::new(seed)),
            NOW,
            DEFAULT_WINDOW_US,
        )
    }

    /// The connectors of `fixture(seed)`, the Source's open `window(seed + 1)` and its code.
    fn setup(seed: u64) -> (Fixture, PairingWindow, PairingCode) {
        let w = window(seed + 1);
        let code = w.code().clone();
        (fixture(seed), w, code)
    }

    /// How each side's attempt ended; `None` while it still waits for a message.
    #[derive(Debug, Default)]
    struct Outcome {
        target: Option<Result<Paired, PairingError>>,
        source: Option<Result<Paired, PairingError>>,
        /// Every message as sent, before the relay touched it.
        sent: Vec<Vec<u8>>,
    }

    /// Runs one attempt through a relay that sees message `i` (counted over both
    /// directions) and returns what it delivers, or `None` to drop it and stop.
    fn run(
        fx: &Fixture,
        w: &mut PairingWindow,
        typed: &PairingCode,
        now: u64,
        seed: u64,
        relay: &mut dyn FnMut(usize, Vec<u8>) -> Option<Vec<u8>>,
    ) -> Outcome {
        let mut rng = TestRng::new(seed);
        let (mut initiator, start) = fx.start(typed, &mut rng);
        let mut out = Outcome::default();
        let mut responder: Option<PairingResponder> = None;
        let (mut to_source, mut to_target) = (Some(start), None);
        for i in 0.. {
            let (bytes, for_source) = match (to_source.take(), to_target.take()) {
                (Some(b), _) => (b, true),
                (None, Some(b)) => (b, false),
                (None, None) => break,
            };
            out.sent.push(bytes.clone());
            let Some(bytes) = relay(i, bytes) else { break };
            if for_source {
                let result = match responder.take() {
                    None if out.source.is_none() => match fx.accept(w, now, &bytes, &mut rng) {
                        Ok((r, challenge)) => {
                            responder = Some(r);
                            to_target = Some(challenge);
                            continue;
                        }
                        Err(f) => Err(f),
                    },
                    None => continue,
                    Some(r) => r.on_message(w, now, &bytes),
                };
                match result {
                    Ok((paired, confirm)) => {
                        out.source = Some(Ok(paired));
                        to_target = Some(confirm);
                    }
                    Err(f) => {
                        out.source = Some(Err(f.error));
                        to_target = f.reply;
                    }
                }
            } else if out.target.is_none() {
                match initiator.on_message(&bytes) {
                    Ok(InitiatorStep::Send(b)) => to_source = Some(b),
                    Ok(InitiatorStep::Paired(p)) => out.target = Some(Ok(p)),
                    Err(f) => {
                        out.target = Some(Err(f.error));
                        to_source = f.reply;
                    }
                }
            }
        }
        out
    }

    fn honest(i: usize, b: Vec<u8>) -> Option<Vec<u8>> {
        let _ = i;
        Some(b)
    }

    /// The property every tampered run must keep: whoever ends paired holds the real
    /// peer's address and key.
    fn assert_no_wrong_pairing(fx: &Fixture, out: &Outcome, context: &str) {
        if let Some(Ok(p)) = &out.target {
            assert_eq!(p.peer, fx.source, "{context}");
            assert_eq!(&p.peer_static_public, fx.source_key.public(), "{context}");
        }
        if let Some(Ok(p)) = &out.source {
            assert_eq!(p.peer, fx.target, "{context}");
            assert_eq!(&p.peer_static_public, fx.target_key.public(), "{context}");
        }
        if let (Some(Ok(t)), Some(Ok(s))) = (&out.target, &out.source) {
            assert_eq!(t.handshake_hash, s.handshake_hash, "{context}");
        }
    }

    fn paired(r: &Option<Result<Paired, PairingError>>) -> bool {
        matches!(r, Some(Ok(_)))
    }

    /// What tampering with message `k` may lead to: no wrong pairing, no paired Target, and a
    /// paired Source only when `k` is the Confirm, which the Source sends once paired.
    fn assert_tampering_fails(fx: &Fixture, out: &Outcome, k: usize, context: &str) {
        assert_no_wrong_pairing(fx, out, context);
        assert!(!paired(&out.target), "{context}");
        if k < 3 {
            assert!(!paired(&out.source), "{context}");
        }
    }

    /// Runs the attempt of `window(window_seed)` and `seed` with message `k` tampered with.
    fn run_tampered(
        fx: &Fixture,
        window_seed: u64,
        seed: u64,
        k: usize,
        tamper: impl Fn(&mut Vec<u8>),
    ) -> Outcome {
        let mut w = window(window_seed);
        let code = w.code().clone();
        run(fx, &mut w, &code, NOW, seed, &mut |i, mut b| {
            if i == k {
                tamper(&mut b);
            }
            Some(b)
        })
    }

    #[test]
    fn right_code_pairs_and_pins_both_keys() {
        let (fx, mut w, code) = setup(1);
        let out = run(&fx, &mut w, &code, NOW, 3, &mut honest);
        let t = out.target.expect("target finished").expect("paired");
        let s = out.source.expect("source finished").expect("paired");
        assert_eq!(t.peer, fx.source);
        assert_eq!(&t.peer_static_public, fx.source_key.public());
        assert_eq!(s.peer, fx.target);
        assert_eq!(&s.peer_static_public, fx.target_key.public());
        assert_eq!(t.handshake_hash, s.handshake_hash);
        assert_eq!(w.status(NOW), WindowStatus::Paired);
        assert_eq!(out.sent.len(), 4, "Start, Challenge, Response, Confirm");
    }

    #[test]
    fn typed_code_with_dashes_and_lower_case_pairs() {
        let (fx, mut w, _) = setup(1);
        let typed = PairingCode::parse(&w.code().to_string().to_lowercase()).expect("valid");
        let out = run(&fx, &mut w, &typed, NOW, 3, &mut honest);
        assert!(paired(&out.target) && paired(&out.source), "{out:?}");
    }

    #[test]
    fn wrong_code_fails_on_both_sides_and_counts_one_attempt() {
        let (fx, mut w, _) = setup(1);
        let wrong = PairingCode::generate(&mut TestRng::new(99));
        assert_ne!(&wrong, w.code());
        let out = run(&fx, &mut w, &wrong, NOW, 3, &mut honest);
        assert_eq!(out.target, Some(Err(PairingError::WrongCode)));
        assert_eq!(out.source, Some(Err(PairingError::WrongCode)));
        assert_eq!(
            w.status(NOW),
            WindowStatus::Open {
                expires_at_us: NOW + DEFAULT_WINDOW_US,
                attempts_left: MAX_ATTEMPTS - 1
            }
        );
        // The Target's own Abort told the Source; the Target's statics never travelled.
        assert_eq!(out.sent.len(), 3, "Start, Challenge, Abort");
        assert!(matches!(
            PairingMessage::decode(&out.sent[2]),
            Ok(PairingMessage::Abort {
                reason: AbortReason::WrongCode,
                ..
            })
        ));
    }

    #[test]
    fn five_wrong_codes_close_the_window() {
        let fx = fixture(1);
        let mut w = window(2);
        for i in 0..MAX_ATTEMPTS {
            let wrong = PairingCode::generate(&mut TestRng::new(100 + u64::from(i)));
            let out = run(&fx, &mut w, &wrong, NOW, u64::from(i), &mut honest);
            assert_eq!(out.target, Some(Err(PairingError::WrongCode)));
        }
        assert_eq!(
            w.status(NOW),
            WindowStatus::Closed(WindowClosed::TooManyAttempts)
        );
        let code = w.code().clone();
        let out = run(&fx, &mut w, &code, NOW, 50, &mut honest);
        let closed = PairingError::Closed(WindowClosed::TooManyAttempts);
        assert_eq!(out.target, Some(Err(closed)));
        assert!(!paired(&out.source));
    }

    #[test]
    fn expired_window_refuses() {
        let (fx, mut w, code) = setup(1);
        let later = NOW + DEFAULT_WINDOW_US;
        let out = run(&fx, &mut w, &code, later, 3, &mut honest);
        let expired = PairingError::Closed(WindowClosed::Expired);
        assert_eq!(out.target, Some(Err(expired)));
        assert_eq!(
            out.target
                .as_ref()
                .and_then(|r| r.as_ref().err())
                .map(ToString::to_string),
            Some(
                "the pairing countdown expired; click ENABLE REMOTE-SYNC on the source again"
                    .to_owned()
            )
        );
        assert!(!paired(&out.source));
    }

    #[test]
    fn an_attempt_that_outlives_the_countdown_fails() {
        let (fx, mut w, code) = setup(1);
        let mut rng = TestRng::new(3);
        let (mut init, start) = fx.start(&code, &mut rng);
        let (resp, challenge) = fx.accept(&mut w, NOW, &start, &mut rng).expect("accepted");
        let InitiatorStep::Send(response) = init.on_message(&challenge).expect("right code") else {
            panic!("expected a Response");
        };
        let late = NOW + DEFAULT_WINDOW_US;
        let f = resp
            .on_message(&mut w, late, &response)
            .expect_err("window expired");
        assert_eq!(f.error, PairingError::Closed(WindowClosed::Expired));
        let abort = f.reply.expect("the Target is told");
        let f = init.on_message(&abort).expect_err("aborted");
        assert_eq!(f.error, PairingError::Closed(WindowClosed::Expired));
    }

    #[test]
    fn a_paired_source_refuses_further_attempts() {
        let (fx, mut w, code) = setup(1);
        let first = run(&fx, &mut w, &code, NOW, 3, &mut honest);
        assert!(paired(&first.source));
        let again = run(&fx, &mut w, &code, NOW, 4, &mut honest);
        let already = PairingError::Closed(WindowClosed::AlreadyPaired);
        assert_eq!(again.target, Some(Err(already)));
    }

    #[test]
    fn a_start_for_another_connector_is_refused_without_counting() {
        let mut fx = fixture(1);
        let mut w = window(2);
        let code = w.code().clone();
        let real_source = fx.source.clone();
        fx.source = addr("site-a", "otherconnector");
        let mut rng = TestRng::new(3);
        let (_, start) = fx.start(&code, &mut rng);
        let f =
            PairingResponder::accept(&mut w, NOW, &real_source, &fx.source_key, &start, &mut rng)
                .expect_err("addressed elsewhere");
        assert!(matches!(f.error, PairingError::WrongConnector { .. }));
        assert!(matches!(
            w.status(NOW),
            WindowStatus::Open { attempts_left, .. } if attempts_left == MAX_ATTEMPTS
        ));
    }

    #[test]
    fn the_machines_refuse_out_of_order_and_finished_use() {
        let (fx, mut w, code) = setup(1);
        let mut rng = TestRng::new(3);
        let (mut init, start) = fx.start(&code, &mut rng);
        // A Start echoed back to the Target.
        let f = init.on_message(&start).expect_err("not a Challenge");
        assert_eq!(
            f.error,
            PairingError::Unexpected {
                expected: "Challenge",
                got: "Start"
            }
        );
        assert_eq!(
            init.on_message(&start).expect_err("ended").error,
            PairingError::Finished
        );
        // A Challenge sent to a Source as if it were a Start.
        let (mut init, start) = fx.start(&code, &mut rng);
        let (resp, challenge) = fx.accept(&mut w, NOW, &start, &mut rng).expect("accepted");
        let f = fx
            .accept(&mut w, NOW, &challenge, &mut rng)
            .expect_err("not a Start");
        assert!(matches!(f.error, PairingError::Unexpected { .. }));
        // The Source's own Challenge looped back to it.
        let f = resp
            .on_message(&mut w, NOW, &challenge)
            .expect_err("not a Response");
        assert!(matches!(f.error, PairingError::Unexpected { .. }));
        assert!(matches!(
            w.status(NOW),
            WindowStatus::Open { attempts_left, .. } if attempts_left == MAX_ATTEMPTS - 1
        ));
        // The Source dropped that attempt; the Target, unaware, would still answer.
        let step = init.on_message(&challenge).expect("the code is right");
        assert!(matches!(step, InitiatorStep::Send(_)));
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let fx = fixture(1);
        let code = window(2).code().clone();
        let mut rng = TestRng::new(3);
        let (init, _) = fx.start(&code, &mut rng);
        let shown = format!("{init:?}");
        let seed = format!("{:?}", &init.noise_seed[..4]);
        let seed = seed.trim_start_matches('[').trim_end_matches(']');
        assert!(!shown.contains("noise_seed"), "{shown}");
        assert!(!shown.contains(seed), "{shown}");
        assert!(!shown.contains(code.as_str()), "{shown}");
    }

    #[test]
    fn message_sizes_are_small() {
        let (fx, mut w, code) = setup(1);
        let out = run(&fx, &mut w, &code, NOW, 3, &mut honest);
        let sizes: Vec<usize> = out.sent.iter().map(Vec::len).collect();
        // Start carries both addresses (6-char site names here) and SPAKE2 A (33);
        // Challenge SPAKE2 B and Noise 1 (48); Response Noise 2 (96); Confirm Noise 3 (64).
        assert_eq!(sizes, vec![96, 101, 115, 83]);
    }

    /// Flips bits at every position of every message of an honest run.
    #[test]
    fn a_relay_that_flips_any_byte_never_causes_a_wrong_pairing() {
        let fx = fixture(7);
        let code = window(8).code().clone();
        let honest_run = run(&fx, &mut window(8), &code, NOW, 9, &mut honest);
        for (k, msg) in honest_run.sent.iter().enumerate() {
            for pos in 0..msg.len() {
                for mask in [0x01u8, 0x80, 0xff] {
                    let out = run_tampered(&fx, 8, 9, k, |b| b[pos] ^= mask);
                    let context = format!("message {k} byte {pos} mask {mask:#x}: {out:?}");
                    assert_tampering_fails(&fx, &out, k, &context);
                }
            }
        }
    }

    #[test]
    fn a_relay_that_truncates_or_extends_messages_never_causes_a_wrong_pairing() {
        let fx = fixture(7);
        for k in 0..4 {
            for cut in [0usize, 1, 2, 20, 40] {
                let out = run_tampered(&fx, 8, 9, k, |b| {
                    b.truncate(b.len().saturating_sub(cut + 1))
                });
                assert_no_wrong_pairing(&fx, &out, &format!("cut {k}/{cut}"));
                assert!(!paired(&out.target));
                let out = run_tampered(&fx, 8, 9, k, |b| b.extend_from_slice(&[0; 3]));
                assert_no_wrong_pairing(&fx, &out, &format!("extend {k}"));
                assert!(!paired(&out.target));
            }
        }
    }

    fn with_attempt(bytes: &[u8], attempt: AttemptId) -> Vec<u8> {
        let mut msg = PairingMessage::decode(bytes).expect("an honest message");
        match &mut msg {
            PairingMessage::Start { attempt: a, .. }
            | PairingMessage::Challenge { attempt: a, .. }
            | PairingMessage::Response { attempt: a, .. }
            | PairingMessage::Confirm { attempt: a, .. }
            | PairingMessage::Abort { attempt: a, .. } => *a = attempt,
        }
        msg.encode()
    }

    /// Runs the attempt of `w` and `seed` with message `k` replaced by `substitute`, as it is
    /// or (`rewrite`) with its attempt id rewritten to the current attempt's.
    fn run_substituted(
        fx: &Fixture,
        w: &mut PairingWindow,
        seed: u64,
        k: usize,
        substitute: &[u8],
        rewrite: bool,
    ) -> Outcome {
        let code = w.code().clone();
        let mut current_attempt = None;
        run(fx, w, &code, NOW, seed, &mut |i, b| {
            if i == 0 {
                current_attempt = PairingMessage::decode(&b).ok().map(|m| m.attempt());
            }
            if i != k {
                return Some(b);
            }
            let attempt = current_attempt.expect("seen the Start");
            Some(if rewrite {
                with_attempt(substitute, attempt)
            } else {
                substitute.to_vec()
            })
        })
    }

    /// Replays messages of an earlier attempt (same connectors, same code, same window)
    /// into a later one, as they are and with the attempt id rewritten to fit.
    #[test]
    fn a_relay_that_replays_an_old_attempt_never_causes_a_wrong_pairing() {
        let fx = fixture(11);
        for k in 0..4 {
            for rewrite in [false, true] {
                let mut w = window(12);
                let code = w.code().clone();
                // The first attempt is cut off after its Response: the Source never answers.
                let old = run(&fx, &mut w, &code, NOW, 13, &mut |i, b| {
                    (i < 3).then_some(b)
                });
                let out = run_substituted(&fx, &mut w, 14, k, &old.sent[k], rewrite);
                let context = format!("replay of message {k}, rewrite {rewrite}: {out:?}");
                assert_tampering_fails(&fx, &out, k, &context);
            }
        }
    }

    /// Splices messages of a concurrent pairing between two other connectors (other code,
    /// other keys) into this one.
    #[test]
    fn a_relay_that_splices_another_pairing_never_causes_a_wrong_pairing() {
        let fx = fixture(21);
        let mut other = fixture(22);
        other.source = addr("site-c", "sourceconn0002");
        other.target = addr("site-d", "targetconn0002");
        let other_code = window(23).code().clone();
        let other_run = run(&other, &mut window(23), &other_code, NOW, 24, &mut honest);
        assert!(paired(&other_run.target));
        for k in 0..4 {
            for rewrite in [false, true] {
                let spliced = &other_run.sent[k];
                let out = run_substituted(&fx, &mut window(25), 26, k, spliced, rewrite);
                let context = format!("splice of message {k}, rewrite {rewrite}: {out:?}");
                assert_tampering_fails(&fx, &out, k, &context);
            }
        }
    }

    /// A relay that knows no code and plays the Source to the Target (or the Target to the
    /// Source) with a guess learns only "wrong", and each try costs a Source attempt.
    #[test]
    fn a_relay_posing_as_either_side_with_a_guess_gets_nowhere() {
        let (fx, mut w, code) = setup(31);
        let mallory_key = StaticKeypair::generate(&mut TestRng::new(33));
        let guess = PairingCode::generate(&mut TestRng::new(34));
        // Posing as the Source, in its own window with the guessed code.
        let mut fake_window = PairingWindow::open(guess.clone(), NOW, DEFAULT_WINDOW_US);
        let mut rng = TestRng::new(35);
        let (mut init, start) = fx.start(&code, &mut rng);
        let fake_source = Fixture {
            source_key: mallory_key.clone(),
            ..fixture(31)
        };
        let (_, challenge) = fake_source
            .accept(&mut fake_window, NOW, &start, &mut rng)
            .expect("the fake source answers");
        let f = init.on_message(&challenge).expect_err("wrong guess");
        assert_eq!(f.error, PairingError::WrongCode);
        // Posing as the Target with the guess against the real Source.
        let fake_target = Fixture {
            target_key: mallory_key,
            ..fixture(31)
        };
        let out = run(&fake_target, &mut w, &guess, NOW, 36, &mut honest);
        assert_eq!(out.source, Some(Err(PairingError::WrongCode)));
        assert!(matches!(
            w.status(NOW),
            WindowStatus::Open { attempts_left, .. } if attempts_left == MAX_ATTEMPTS - 1
        ));
    }

    #[test]
    fn a_forged_abort_only_ends_the_attempt() {
        let (fx, mut w, code) = setup(41);
        let out = run(&fx, &mut w, &code, NOW, 43, &mut |i, b| {
            if i == 1 {
                let attempt = PairingMessage::decode(&b).ok()?.attempt();
                let reason = AbortReason::Expired;
                Some(PairingMessage::Abort { attempt, reason }.encode())
            } else {
                Some(b)
            }
        });
        let expired = PairingError::Closed(WindowClosed::Expired);
        assert_eq!(out.target, Some(Err(expired)));
        assert!(!paired(&out.source));
    }

    #[test]
    fn a_dropped_confirm_leaves_the_source_paired_and_the_target_waiting() {
        let (fx, mut w, code) = setup(51);
        let out = run(&fx, &mut w, &code, NOW, 53, &mut |i, b| {
            (i < 3).then_some(b)
        });
        assert!(paired(&out.source));
        assert!(out.target.is_none());
        assert_no_wrong_pairing(&fx, &out, "dropped confirm");
    }
}
