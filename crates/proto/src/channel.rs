//! The end-to-end channel between two paired connectors: a Noise `KK` handshake on the
//! static keys pinned at pairing, then authenticated encryption of every message, so the
//! hub relays ciphertext it can neither read nor alter, replay, reorder or drop unnoticed.
//!
//! ```text
//!  initiator (either side)                    hub                          responder
//!  Session::initiator ── Init{id, e, es, ss} ───────────▶ Session::responder
//!                                                           (fails unless the sender
//!                                                            holds the pinned peer key)
//!  on_handshake ◀────────── Response{id, e, ee, se} ────── established
//!  (fails unless the sender holds the pinned peer key)
//!  seal ───────────────────────── Data ───────────────────▶ open   (and the other way)
//! ```
//!
//! Who initiates: either side (KK is symmetric once both static keys are pinned; the
//! prologue binds who was initiator and who responder). A driver starts a handshake on
//! start, after every reconnect and after every error, so a new handshake (a fresh
//! ephemeral on each side, hence fresh keys) means a message from an earlier session never
//! opens in a later one. A responder that receives an Init while it has a session replaces
//! it, unless the Init is the one that session was made from ([`handshake_id`] tells). When
//! both sides' Inits cross, the side whose [`ConnectorAddr`] sorts lower wins: it ignores
//! the other's Init and sends its own again; the other answers it (see `site::peers::peer`).
//!
//! Frames. The first byte says what a frame is (version 1 in the high nibble), so a driver
//! can route it with [`FrameKind::of`] without other context:
//! - `0x11` Init and `0x12` Response: an 8-byte handshake id chosen by the initiator and
//!   echoed by the responder, then the 48-byte Noise message; 57 bytes each.
//! - `0x13` Data: the message in Noise transport messages ("chunks") of at most 65,535
//!   bytes. Every chunk but the last is full; the last is shorter, empty if need be, so a
//!   relay that cuts a frame at a chunk boundary is caught. Overhead: 1 byte per frame and
//!   16 per chunk, i.e. 17 bytes for any message up to 65,519 bytes; at most
//!   [`MAX_PLAINTEXT_LEN`] bytes per message.
//!
//! Replay protection: Noise transport nonces are implicit counters, one per direction,
//! and the hub delivers in order over one stream; a replayed, reordered, dropped-then-late,
//! truncated, extended, forged or altered frame fails to authenticate. The first such
//! failure poisons the session: the caller tears it down and handshakes again.
//! Two errors are not failures but stale leftovers of an earlier session, and leave the
//! session as it was: [`ChannelError::NotEstablished`] (data before the Response) and
//! [`ChannelError::StaleHandshake`] (the Response to an older Init); see
//! [`ChannelError::is_stale`].
//!
//! What it does not do: I/O, timers, compression (compress before sealing), rekeying
//! within a session (sessions are short-lived next to 2^64 messages), or deciding when to
//! reconnect. The responder's session is established on receipt of the Init, but the
//! initiator has not proven it is live (an Init can be replayed) until the first `open`
//! succeeds; [`Session::peer_confirmed`] says so.

use rand_core::{CryptoRng, RngCore};
use snow::{HandshakeState, TransportState};

use crate::pairing::{
    ConnectorAddr, KEY_LEN, KeyError, Paired, StaticKeypair, draw_seed, noise_builder,
    push_len_prefixed,
};

/// The Noise protocol of sessions.
const SESSION_NOISE: &str = "Noise_KK_25519_ChaChaPoly_BLAKE2s";
/// Domain separation for the prologue.
const SESSION_LABEL: &[u8] = b"west-remote-sync channel v1";
/// Channel protocol version, the high nibble of every frame's first byte.
pub const CHANNEL_VERSION: u8 = 1;
const INIT: u8 = CHANNEL_VERSION << 4 | 1;
const RESPONSE: u8 = CHANNEL_VERSION << 4 | 2;
const DATA: u8 = CHANNEL_VERSION << 4 | 3;

/// Noise's largest message.
const MAX_CHUNK: usize = 65_535;
/// Authentication tag of every Noise message.
const TAG_LEN: usize = 16;
/// Most plaintext in one chunk.
const MAX_CHUNK_PLAINTEXT: usize = MAX_CHUNK - TAG_LEN;
/// KK messages with empty payloads: an ephemeral key and a tag.
const HANDSHAKE_NOISE_LEN: usize = KEY_LEN + TAG_LEN;
const HANDSHAKE_ID_LEN: usize = 8;
/// Length of an Init or Response frame.
pub const HANDSHAKE_FRAME_LEN: usize = 1 + HANDSHAKE_ID_LEN + HANDSHAKE_NOISE_LEN;
/// Largest message [`Session::seal`] accepts: 1 MiB less 2 KiB, so that a sealed message
/// fits a hub frame's payload.
pub const MAX_PLAINTEXT_LEN: usize = 1024 * 1024 - 2048;

/// Bytes a sealed message of `plaintext_len` bytes occupies.
pub const fn sealed_len(plaintext_len: usize) -> usize {
    1 + plaintext_len + TAG_LEN * (plaintext_len / MAX_CHUNK_PLAINTEXT + 1)
}

/// The handshake id of an Init or Response frame (which handshake it belongs to), if the
/// frame is one; nothing is verified.
pub fn handshake_id(frame: &[u8]) -> Option<[u8; HANDSHAKE_ID_LEN]> {
    let kind = FrameKind::of(frame).ok()?;
    if kind == FrameKind::Data || frame.len() != HANDSHAKE_FRAME_LEN {
        return None;
    }
    frame[1..1 + HANDSHAKE_ID_LEN].try_into().ok()
}

/// What a frame is, read from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// From the initiator: start a new session ([`Session::responder`]).
    HandshakeInit,
    /// From the responder: finish the initiator's handshake ([`Session::on_handshake`]).
    HandshakeResponse,
    /// A sealed message ([`Session::open`]).
    Data,
}

impl FrameKind {
    pub fn of(frame: &[u8]) -> Result<Self, ChannelError> {
        match frame.first() {
            None => Err(ChannelError::Empty),
            Some(&INIT) => Ok(Self::HandshakeInit),
            Some(&RESPONSE) => Ok(Self::HandshakeResponse),
            Some(&DATA) => Ok(Self::Data),
            Some(&other) => Err(ChannelError::UnknownFrame(other)),
        }
    }
}

/// Why a channel operation failed. Every variant except the stale ones
/// ([`ChannelError::is_stale`]) means: tear the session down and handshake again.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ChannelError {
    #[error("empty channel frame")]
    Empty,
    #[error(
        "channel frame type {0:#04x} is unknown (this site speaks channel version {CHANNEL_VERSION})"
    )]
    UnknownFrame(u8),
    #[error("expected a {expected:?} frame, got {got:?}")]
    UnexpectedFrame { expected: FrameKind, got: FrameKind },
    #[error("handshake frame of {0} bytes, expected {HANDSHAKE_FRAME_LEN}")]
    HandshakeLength(usize),
    #[error("the peer did not prove the pinned key, or the relay altered the handshake: {reason}")]
    HandshakeFailed { reason: &'static str },
    #[error("a handshake response for an earlier handshake (stale, ignore it)")]
    StaleHandshake,
    #[error("data before the handshake completed (stale, ignore it)")]
    NotEstablished,
    #[error(
        "a message failed authentication: replayed, reordered, dropped, forged or altered on the way"
    )]
    Decrypt,
    #[error("a message ends early: the relay cut it")]
    Truncated,
    #[error("message of {0} bytes exceeds the channel limit")]
    TooLarge(usize),
    #[error("the session failed earlier and must be re-established")]
    Poisoned,
    #[error("the pinned peer key is unusable: {0}")]
    PinnedKey(KeyError),
    #[error("Noise failure: {0}")]
    Noise(snow::Error),
}

impl ChannelError {
    /// A leftover of an earlier session: drop the frame and keep the session.
    pub fn is_stale(&self) -> bool {
        matches!(self, Self::StaleHandshake | Self::NotEstablished)
    }
}

/// The peer as pinned at pairing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedPeer {
    pub addr: ConnectorAddr,
    pub static_public: [u8; KEY_LEN],
}

impl From<Paired> for PinnedPeer {
    fn from(p: Paired) -> Self {
        Self {
            addr: p.peer,
            static_public: p.peer_static_public,
        }
    }
}

/// One end-to-end session between two paired connectors.
#[derive(Debug)]
pub struct Session {
    state: State,
    /// Chosen by the initiator; tells the current Response from stale ones.
    handshake_id: [u8; HANDSHAKE_ID_LEN],
    /// Whether the peer has shown it is live in this session, not a replayed Init.
    peer_confirmed: bool,
}

#[derive(Debug)]
enum State {
    AwaitingResponse(Box<HandshakeState>),
    Established(Box<TransportState>),
    Poisoned,
}

impl Session {
    /// Starts a session as initiator: returns it (not yet established) and the Init frame.
    pub fn initiator(
        local_addr: &ConnectorAddr,
        local_static: &StaticKeypair,
        peer: &PinnedPeer,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Self, Vec<u8>), ChannelError> {
        local_static
            .check_peer(&peer.static_public)
            .map_err(ChannelError::PinnedKey)?;
        let mut handshake_id = [0u8; HANDSHAKE_ID_LEN];
        rng.fill_bytes(&mut handshake_id);
        let prologue = prologue(handshake_id, local_addr, &peer.addr);
        let mut handshake = noise_builder(session_params(), draw_seed(rng))
            .local_private_key(local_static.private_bytes())
            .and_then(|b| b.remote_public_key(&peer.static_public))
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_initiator())
            .map_err(ChannelError::Noise)?;
        let frame = handshake_frame(INIT, handshake_id, &mut handshake)?;
        let session = Self {
            state: State::AwaitingResponse(Box::new(handshake)),
            handshake_id,
            peer_confirmed: false,
        };
        Ok((session, frame))
    }

    /// Answers the peer's Init as responder: returns the established session and the
    /// Response frame. Fails unless the Init was made with the pinned peer's key for this
    /// pair of addresses.
    pub fn responder(
        local_addr: &ConnectorAddr,
        local_static: &StaticKeypair,
        peer: &PinnedPeer,
        init: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Self, Vec<u8>), ChannelError> {
        local_static
            .check_peer(&peer.static_public)
            .map_err(ChannelError::PinnedKey)?;
        let (handshake_id, noise) = parse_handshake(init, FrameKind::HandshakeInit)?;
        let prologue = prologue(handshake_id, &peer.addr, local_addr);
        let mut handshake = noise_builder(session_params(), draw_seed(rng))
            .local_private_key(local_static.private_bytes())
            .and_then(|b| b.remote_public_key(&peer.static_public))
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_responder())
            .map_err(ChannelError::Noise)?;
        let mut payload = [0u8; HANDSHAKE_NOISE_LEN];
        handshake
            .read_message(noise, &mut payload)
            .map_err(|_| ChannelError::HandshakeFailed {
                reason: "the Init does not verify",
            })?;
        let frame = handshake_frame(RESPONSE, handshake_id, &mut handshake)?;
        let transport = handshake
            .into_transport_mode()
            .map_err(ChannelError::Noise)?;
        let session = Self {
            state: State::Established(Box::new(transport)),
            handshake_id,
            peer_confirmed: false,
        };
        Ok((session, frame))
    }

    /// The initiator takes the responder's Response. A Response to an older Init is
    /// [`ChannelError::StaleHandshake`] and changes nothing; any other failure poisons.
    pub fn on_handshake(&mut self, response: &[u8]) -> Result<(), ChannelError> {
        let mut handshake = match std::mem::replace(&mut self.state, State::Poisoned) {
            State::AwaitingResponse(handshake) => handshake,
            State::Established(transport) => {
                // Only a replay of the Response that established this session can be
                // anything but stale here.
                let (id, _) = parse_handshake(response, FrameKind::HandshakeResponse)?;
                if id == self.handshake_id {
                    return Err(ChannelError::UnexpectedFrame {
                        expected: FrameKind::Data,
                        got: FrameKind::HandshakeResponse,
                    });
                }
                self.state = State::Established(transport);
                return Err(ChannelError::StaleHandshake);
            }
            State::Poisoned => return Err(ChannelError::Poisoned),
        };
        let (handshake_id, noise) = parse_handshake(response, FrameKind::HandshakeResponse)?;
        if handshake_id != self.handshake_id {
            self.state = State::AwaitingResponse(handshake);
            return Err(ChannelError::StaleHandshake);
        }
        let mut payload = [0u8; HANDSHAKE_NOISE_LEN];
        handshake
            .read_message(noise, &mut payload)
            .map_err(|_| ChannelError::HandshakeFailed {
                reason: "the Response does not verify",
            })?;
        let transport = handshake
            .into_transport_mode()
            .map_err(ChannelError::Noise)?;
        self.state = State::Established(Box::new(transport));
        self.peer_confirmed = true;
        Ok(())
    }

    /// The id of the handshake this session comes from (chosen by its initiator).
    pub fn handshake_id(&self) -> [u8; HANDSHAKE_ID_LEN] {
        self.handshake_id
    }

    /// Whether `seal` and `open` can be used.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established(_))
    }

    /// Whether the peer has proven it takes part in this very session (the initiator
    /// after the Response, the responder after its first successful `open`).
    pub fn peer_confirmed(&self) -> bool {
        self.peer_confirmed
    }

    /// Encrypts one message into a Data frame of [`sealed_len`] bytes.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, ChannelError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(ChannelError::TooLarge(plaintext.len()));
        }
        let transport = self.transport()?;
        let mut frame = vec![0u8; sealed_len(plaintext.len())];
        frame[0] = DATA;
        let mut at = 1;
        // Full chunks, then one short chunk (empty when the length divides evenly).
        let full = plaintext.len() / MAX_CHUNK_PLAINTEXT;
        let pieces = plaintext
            .chunks(MAX_CHUNK_PLAINTEXT)
            .take(full)
            .chain(std::iter::once(&plaintext[full * MAX_CHUNK_PLAINTEXT..]));
        for piece in pieces {
            let end = at + piece.len() + TAG_LEN;
            let result = transport.write_message(piece, &mut frame[at..end]);
            match result {
                Ok(n) if n == piece.len() + TAG_LEN => at = end,
                Ok(_) => {
                    self.state = State::Poisoned;
                    return Err(ChannelError::Noise(snow::Error::Input));
                }
                Err(e) => {
                    self.state = State::Poisoned;
                    return Err(ChannelError::Noise(e));
                }
            }
        }
        debug_assert_eq!(at, frame.len());
        Ok(frame)
    }

    /// Authenticates and decrypts one Data frame. Any failure but
    /// [`ChannelError::NotEstablished`] poisons the session.
    pub fn open(&mut self, frame: &[u8]) -> Result<Vec<u8>, ChannelError> {
        if let State::AwaitingResponse(_) = self.state {
            return Err(ChannelError::NotEstablished);
        }
        let result = self.open_established(frame);
        match &result {
            Ok(_) => self.peer_confirmed = true,
            Err(_) => self.state = State::Poisoned,
        }
        result
    }

    fn open_established(&mut self, frame: &[u8]) -> Result<Vec<u8>, ChannelError> {
        let transport = self.transport()?;
        let kind = FrameKind::of(frame)?;
        if kind != FrameKind::Data {
            return Err(ChannelError::UnexpectedFrame {
                expected: FrameKind::Data,
                got: kind,
            });
        }
        if frame.len() > sealed_len(MAX_PLAINTEXT_LEN) {
            return Err(ChannelError::TooLarge(frame.len()));
        }
        let mut rest = &frame[1..];
        let mut plaintext = vec![0u8; rest.len()];
        let mut at = 0;
        loop {
            let last = rest.len() < MAX_CHUNK;
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_CHUNK));
            if chunk.len() < TAG_LEN {
                return Err(ChannelError::Truncated);
            }
            let n = transport
                .read_message(chunk, &mut plaintext[at..])
                .map_err(|_| ChannelError::Decrypt)?;
            at += n;
            rest = tail;
            if last {
                break;
            }
            if rest.is_empty() {
                return Err(ChannelError::Truncated);
            }
        }
        plaintext.truncate(at);
        Ok(plaintext)
    }

    fn transport(&mut self) -> Result<&mut TransportState, ChannelError> {
        match &mut self.state {
            State::Established(t) => Ok(t),
            State::AwaitingResponse(_) => Err(ChannelError::NotEstablished),
            State::Poisoned => Err(ChannelError::Poisoned),
        }
    }
}

fn session_params() -> snow::params::NoiseParams {
    SESSION_NOISE
        .parse()
        .expect("the session Noise pattern is a valid constant")
}

/// Binds the handshake id and both addresses, in role order, into the transcript.
fn prologue(
    handshake_id: [u8; HANDSHAKE_ID_LEN],
    initiator: &ConnectorAddr,
    responder: &ConnectorAddr,
) -> Vec<u8> {
    let mut p = Vec::with_capacity(128);
    push_len_prefixed(&mut p, SESSION_LABEL);
    push_len_prefixed(&mut p, &handshake_id);
    push_len_prefixed(&mut p, &initiator.to_bytes());
    push_len_prefixed(&mut p, &responder.to_bytes());
    p
}

fn handshake_frame(
    kind: u8,
    handshake_id: [u8; HANDSHAKE_ID_LEN],
    handshake: &mut HandshakeState,
) -> Result<Vec<u8>, ChannelError> {
    let mut frame = vec![0u8; HANDSHAKE_FRAME_LEN];
    frame[0] = kind;
    frame[1..1 + HANDSHAKE_ID_LEN].copy_from_slice(&handshake_id);
    let n = handshake
        .write_message(&[], &mut frame[1 + HANDSHAKE_ID_LEN..])
        .map_err(ChannelError::Noise)?;
    if n != HANDSHAKE_NOISE_LEN {
        return Err(ChannelError::Noise(snow::Error::Input));
    }
    Ok(frame)
}

fn parse_handshake(
    frame: &[u8],
    expected: FrameKind,
) -> Result<([u8; HANDSHAKE_ID_LEN], &[u8]), ChannelError> {
    let got = FrameKind::of(frame)?;
    if got != expected {
        return Err(ChannelError::UnexpectedFrame { expected, got });
    }
    if frame.len() != HANDSHAKE_FRAME_LEN {
        return Err(ChannelError::HandshakeLength(frame.len()));
    }
    let (id, noise) = frame[1..].split_at(HANDSHAKE_ID_LEN);
    let id = id
        .try_into()
        .map_err(|_| ChannelError::HandshakeLength(frame.len()))?;
    Ok((id, noise))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ConnectorId;
    use crate::pairing::test_rng::TestRng;
    use proptest::prelude::*;

    struct Pair {
        target: ConnectorAddr,
        source: ConnectorAddr,
        target_key: StaticKeypair,
        source_key: StaticKeypair,
    }

    fn addr(site: &str, id: &str) -> ConnectorAddr {
        ConnectorAddr::new(site, ConnectorId::parse(id).expect("valid id")).expect("valid addr")
    }

    fn pair(seed: u64) -> Pair {
        let mut rng = TestRng::new(seed);
        Pair {
            target: addr("site-b", "targetconn0001"),
            source: addr("site-a", "sourceconn0001"),
            target_key: StaticKeypair::generate(&mut rng),
            source_key: StaticKeypair::generate(&mut rng),
        }
    }

    impl Pair {
        /// What the Target pinned about the Source, and the other way round.
        fn source_pin(&self) -> PinnedPeer {
            PinnedPeer {
                addr: self.source.clone(),
                static_public: *self.source_key.public(),
            }
        }

        fn target_pin(&self) -> PinnedPeer {
            PinnedPeer {
                addr: self.target.clone(),
                static_public: *self.target_key.public(),
            }
        }

        /// A full handshake: (Target's session, Source's session).
        fn connect(&self, seed: u64) -> (Session, Session) {
            let mut rng = TestRng::new(seed);
            let (mut t, init) =
                Session::initiator(&self.target, &self.target_key, &self.source_pin(), &mut rng)
                    .expect("initiator");
            assert!(!t.is_established());
            let (s, response) = Session::responder(
                &self.source,
                &self.source_key,
                &self.target_pin(),
                &init,
                &mut rng,
            )
            .expect("responder");
            t.on_handshake(&response).expect("response verifies");
            assert!(t.is_established() && s.is_established());
            (t, s)
        }
    }

    #[test]
    fn the_source_may_initiate_too_and_frames_name_their_handshake() {
        let p = pair(11);
        let mut rng = TestRng::new(12);
        // The Source as initiator: the same KK, roles swapped.
        let (mut s, init) = Session::initiator(&p.source, &p.source_key, &p.target_pin(), &mut rng)
            .expect("initiator");
        let (mut t, response) =
            Session::responder(&p.target, &p.target_key, &p.source_pin(), &init, &mut rng)
                .expect("responder");
        assert_eq!(handshake_id(&init), Some(s.handshake_id()));
        assert_eq!(handshake_id(&response), Some(t.handshake_id()));
        s.on_handshake(&response).expect("response verifies");
        let sealed = s.seal(b"from the Source").expect("seals");
        assert_eq!(handshake_id(&sealed), None);
        assert_eq!(t.open(&sealed).expect("opens"), b"from the Source");
        assert_eq!(handshake_id(&[]), None);
    }

    const SIZES: [usize; 9] = [
        0,
        1,
        100,
        MAX_CHUNK_PLAINTEXT - 1,
        MAX_CHUNK_PLAINTEXT,
        MAX_CHUNK_PLAINTEXT + 1,
        2 * MAX_CHUNK_PLAINTEXT,
        300_000,
        MAX_PLAINTEXT_LEN,
    ];

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn messages_round_trip_both_ways_at_every_size() {
        let p = pair(1);
        let (mut t, mut s) = p.connect(2);
        assert!(t.peer_confirmed());
        assert!(!s.peer_confirmed());
        for len in SIZES {
            let msg = payload(len);
            let frame = t.seal(&msg).expect("seal");
            assert_eq!(frame.len(), sealed_len(len), "len {len}");
            assert_eq!(FrameKind::of(&frame), Ok(FrameKind::Data));
            assert_eq!(s.open(&frame).expect("open"), msg, "len {len}");
            let frame = s.seal(&msg).expect("seal");
            assert_eq!(t.open(&frame).expect("open"), msg, "len {len}");
        }
        assert!(s.peer_confirmed());
    }

    #[test]
    fn overhead_is_seventeen_bytes_up_to_a_chunk() {
        assert_eq!(sealed_len(0), 17);
        assert_eq!(sealed_len(28_000), 28_017);
        assert_eq!(sealed_len(MAX_CHUNK_PLAINTEXT - 1), MAX_CHUNK);
        assert_eq!(HANDSHAKE_FRAME_LEN, 57);
        assert!(sealed_len(MAX_PLAINTEXT_LEN) <= crate::wire::MAX_PAYLOAD_LEN);
        let p = pair(1);
        let (mut t, _) = p.connect(2);
        assert_eq!(
            t.seal(&vec![0; MAX_PLAINTEXT_LEN + 1]),
            Err(ChannelError::TooLarge(MAX_PLAINTEXT_LEN + 1))
        );
    }

    #[test]
    fn a_replayed_message_is_refused_and_poisons_the_session() {
        let p = pair(1);
        let (mut t, mut s) = p.connect(2);
        let frame = t.seal(b"point batch 1").expect("seal");
        assert!(s.open(&frame).is_ok());
        assert_eq!(s.open(&frame), Err(ChannelError::Decrypt));
        // Poisoned: even the next genuine message is refused.
        let next = t.seal(b"point batch 2").expect("seal");
        assert_eq!(s.open(&next), Err(ChannelError::Poisoned));
        assert_eq!(s.seal(b"x"), Err(ChannelError::Poisoned));
    }

    #[test]
    fn reordered_and_late_messages_are_refused() {
        let p = pair(1);
        let (mut t, mut s) = p.connect(2);
        let a = t.seal(b"a").expect("seal");
        let b = t.seal(b"b").expect("seal");
        assert_eq!(s.open(&b), Err(ChannelError::Decrypt));
        assert_eq!(s.open(&a), Err(ChannelError::Poisoned));

        let (mut t, mut s) = p.connect(3);
        let a2 = t.seal(b"a").expect("seal");
        let b2 = t.seal(b"b").expect("seal");
        let c2 = t.seal(b"c").expect("seal");
        assert!(s.open(&a2).is_ok());
        // b2 dropped, delivered after c2.
        assert_eq!(s.open(&c2), Err(ChannelError::Decrypt));
        assert_eq!(s.open(&b2), Err(ChannelError::Poisoned));
    }

    #[test]
    fn a_message_from_an_earlier_session_does_not_open_in_a_later_one() {
        let p = pair(1);
        let (mut t1, _) = p.connect(2);
        let old = t1.seal(b"first session").expect("seal");
        let (_, mut s2) = p.connect(3);
        assert_eq!(s2.open(&old), Err(ChannelError::Decrypt));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let p = pair(1);
        let msg = payload(40);
        let (mut t, _) = p.connect(2);
        let frame = t.seal(&msg).expect("seal");
        for pos in 0..frame.len() {
            for bit in 0..8 {
                let (mut t, mut s) = p.connect(2);
                let mut frame = t.seal(&msg).expect("seal");
                frame[pos] ^= 1 << bit;
                assert!(s.open(&frame).is_err(), "byte {pos} bit {bit}");
                assert!(!s.is_established(), "poisoned after byte {pos} bit {bit}");
            }
        }
        // Flips in each chunk of a long message.
        let long = payload(3 * MAX_CHUNK_PLAINTEXT + 10);
        for pos in [1, 1000, MAX_CHUNK, MAX_CHUNK + 1, 3 * MAX_CHUNK + 5] {
            let (mut t, mut s) = p.connect(2);
            let mut frame = t.seal(&long).expect("seal");
            frame[pos] ^= 0x40;
            assert_eq!(s.open(&frame), Err(ChannelError::Decrypt), "byte {pos}");
        }
    }

    #[test]
    fn truncated_or_extended_messages_are_refused() {
        let p = pair(1);
        for len in [0, 5, MAX_CHUNK_PLAINTEXT, 2 * MAX_CHUNK_PLAINTEXT + 7] {
            let (mut t, _) = p.connect(2);
            let full = t.seal(&payload(len)).expect("seal");
            let cuts = [
                1,
                2,
                TAG_LEN,
                full.len() - 1,
                // At a chunk boundary: leaves only full chunks.
                (full.len() - 1) % MAX_CHUNK,
            ];
            for cut in cuts {
                if cut == 0 || cut >= full.len() {
                    continue;
                }
                let (mut t, mut s) = p.connect(2);
                let frame = t.seal(&payload(len)).expect("seal");
                let short = &frame[..frame.len() - cut];
                assert!(s.open(short).is_err(), "len {len} cut {cut}");
            }
            let (mut t, mut s) = p.connect(2);
            let mut frame = t.seal(&payload(len)).expect("seal");
            frame.push(0);
            assert!(s.open(&frame).is_err(), "len {len} extended");
        }
        // Exactly the chunk-boundary case, by name.
        let (mut t, mut s) = p.connect(2);
        let frame = t.seal(&payload(MAX_CHUNK_PLAINTEXT + 3)).expect("seal");
        assert_eq!(
            s.open(&frame[..1 + MAX_CHUNK]),
            Err(ChannelError::Truncated)
        );
    }

    #[test]
    fn a_third_party_with_another_key_cannot_complete_the_handshake() {
        let p = pair(1);
        let mallory = StaticKeypair::generate(&mut TestRng::new(66));
        let mut rng = TestRng::new(67);
        // Mallory initiates as the Target, with her own key.
        let (_, init) =
            Session::initiator(&p.target, &mallory, &p.source_pin(), &mut rng).expect("init");
        let refused =
            Session::responder(&p.source, &p.source_key, &p.target_pin(), &init, &mut rng);
        assert!(matches!(refused, Err(ChannelError::HandshakeFailed { .. })));
        // Mallory answers the real Target as the Source: she cannot read the Init...
        let (mut t, init) =
            Session::initiator(&p.target, &p.target_key, &p.source_pin(), &mut rng).expect("init");
        let refused = Session::responder(&p.source, &mallory, &p.target_pin(), &init, &mut rng);
        assert!(matches!(refused, Err(ChannelError::HandshakeFailed { .. })));
        // ...and a Response made with her key (taken from a run in which the Target had
        // pinned her key, relabelled with this handshake's id) does not verify either.
        let mallory_pin = PinnedPeer {
            addr: p.source.clone(),
            static_public: *mallory.public(),
        };
        let (_, init_m) =
            Session::initiator(&p.target, &p.target_key, &mallory_pin, &mut rng).expect("init");
        let (_, mut response_m) =
            Session::responder(&p.source, &mallory, &p.target_pin(), &init_m, &mut rng)
                .expect("a genuine run with her key");
        response_m[1..1 + HANDSHAKE_ID_LEN].copy_from_slice(&init[1..1 + HANDSHAKE_ID_LEN]);
        assert!(matches!(
            t.on_handshake(&response_m),
            Err(ChannelError::HandshakeFailed { .. })
        ));
        assert!(!t.is_established());
    }

    #[test]
    fn sessions_are_bound_to_both_addresses() {
        let p = pair(1);
        let mut rng = TestRng::new(2);
        let (_, init) =
            Session::initiator(&p.target, &p.target_key, &p.source_pin(), &mut rng).expect("init");
        let elsewhere = addr("site-a", "sourceconn0002");
        let refused =
            Session::responder(&elsewhere, &p.source_key, &p.target_pin(), &init, &mut rng);
        assert!(matches!(refused, Err(ChannelError::HandshakeFailed { .. })));
    }

    #[test]
    fn every_handshake_byte_is_checked() {
        let p = pair(1);
        let mut rng = TestRng::new(2);
        let (_, init) =
            Session::initiator(&p.target, &p.target_key, &p.source_pin(), &mut rng).expect("init");
        for pos in 0..init.len() {
            let mut bad = init.clone();
            bad[pos] ^= 0x04;
            let r = Session::responder(&p.source, &p.source_key, &p.target_pin(), &bad, &mut rng);
            assert!(r.is_err(), "Init byte {pos}");
        }
        for pos in 0..HANDSHAKE_FRAME_LEN {
            let mut rng = TestRng::new(3);
            let (mut t, init) =
                Session::initiator(&p.target, &p.target_key, &p.source_pin(), &mut rng)
                    .expect("init");
            let (_, mut response) =
                Session::responder(&p.source, &p.source_key, &p.target_pin(), &init, &mut rng)
                    .expect("responder");
            response[pos] ^= 0x04;
            assert!(t.on_handshake(&response).is_err(), "Response byte {pos}");
            assert!(!t.is_established(), "Response byte {pos}");
        }
    }

    #[test]
    fn stale_frames_are_ignored_while_a_new_handshake_runs() {
        let p = pair(1);
        let (mut old_t, mut old_s) = p.connect(2);
        let stale_data = old_s.seal(b"old session").expect("seal");
        let _ = old_t.open(&stale_data);
        // The Target reconnects and sends Init 1, times out, sends Init 2.
        let mut rng = TestRng::new(3);
        let (_, init1) =
            Session::initiator(&p.target, &p.target_key, &p.source_pin(), &mut rng).expect("init");
        let (mut t, init2) =
            Session::initiator(&p.target, &p.target_key, &p.source_pin(), &mut rng).expect("init");
        let (_, response1) =
            Session::responder(&p.source, &p.source_key, &p.target_pin(), &init1, &mut rng)
                .expect("responder");
        let (mut s, response2) =
            Session::responder(&p.source, &p.source_key, &p.target_pin(), &init2, &mut rng)
                .expect("responder");
        let stale = old_s.seal(b"still old").expect("seal");
        let e = t.open(&stale).expect_err("not established");
        assert!(e.is_stale());
        let e = t.on_handshake(&response1).expect_err("answers Init 1");
        assert!(e.is_stale());
        t.on_handshake(&response2).expect("answers Init 2");
        let e = t.on_handshake(&response1).expect_err("still stale");
        assert!(e.is_stale());
        let frame = t.seal(b"new session").expect("seal");
        assert_eq!(s.open(&frame).expect("open"), b"new session");
        // A replay of the Response that established the session is not stale.
        let e = t.on_handshake(&response2).expect_err("replayed");
        assert!(!e.is_stale());
    }

    #[test]
    fn unusable_pinned_keys_are_refused() {
        let p = pair(1);
        let bad = PinnedPeer {
            addr: p.source.clone(),
            static_public: [0; KEY_LEN],
        };
        let r = Session::initiator(&p.target, &p.target_key, &bad, &mut TestRng::new(1));
        assert!(matches!(
            r,
            Err(ChannelError::PinnedKey(KeyError::LowOrderKey))
        ));
    }

    #[test]
    fn pairing_output_pins_into_a_working_channel() {
        let p = pair(1);
        let paired = Paired {
            peer: p.source.clone(),
            peer_static_public: *p.source_key.public(),
            handshake_hash: [0; 32],
        };
        assert_eq!(PinnedPeer::from(paired), p.source_pin());
    }

    proptest! {
        #[test]
        fn any_message_round_trips(len in 0usize..200_000, seed: u64) {
            let p = pair(seed);
            let (mut t, mut s) = p.connect(seed);
            let msg = payload(len);
            let frame = t.seal(&msg).expect("seal");
            prop_assert_eq!(frame.len(), sealed_len(len));
            prop_assert_eq!(s.open(&frame).expect("open"), msg);
        }

        #[test]
        fn random_bytes_never_panic_or_open(bytes in proptest::collection::vec(any::<u8>(), 0..400), first in 0u8..4) {
            let p = pair(1);
            let mut bytes = bytes;
            if let Some(b) = bytes.first_mut() {
                *b = [INIT, RESPONSE, DATA, 0][usize::from(first)];
            }
            let _ = FrameKind::of(&bytes);
            let (mut t, mut s) = p.connect(2);
            prop_assert!(s.open(&bytes).is_err());
            let mut rng = TestRng::new(3);
            prop_assert!(Session::responder(&p.source, &p.source_key, &p.target_pin(), &bytes, &mut rng).is_err());
            let (mut fresh, _) = Session::initiator(&p.target, &p.target_key, &p.source_pin(), &mut rng).expect("init");
            prop_assert!(fresh.on_handshake(&bytes).is_err());
            let _ = t.open(&bytes);
        }
    }
}
