//! The pairing messages as they cross the hub: a version byte, then a postcard-encoded
//! [`PairingMessage`].
//!
//! What it does not do: interpret the cryptographic fields (the state machines in the
//! parent module do), or frame messages on the hub link (`wire` carries these bytes as an
//! opaque payload). Only the Abort reason travels unauthenticated in a meaningful way; the
//! SPAKE2 and Noise fields protect themselves.
//!
//! Invariant: [`PairingMessage::decode`] accepts exactly the bytes [`PairingMessage::encode`]
//! produces (no trailing bytes, no other version) and never panics.

use serde::{Deserialize, Serialize};

use super::keys::ConnectorAddr;
use crate::envelope::{self, EnvelopeError};

/// Version of the pairing protocol; the first byte of every message.
pub const PAIRING_VERSION: u8 = 1;

/// Longest SPAKE2 or Noise field any version-1 message carries; bounds what a decoder
/// will look at.
const MAX_FIELD: usize = 128;

/// Names one pairing attempt, chosen at random by the Target. The Source's driver routes
/// later messages of the attempt by it; it is also bound into the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttemptId(pub [u8; 16]);

/// The flow of one attempt; see the parent module's diagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairingMessage {
    /// Target → Source: "pair `target` with `source`", with the Target's SPAKE2 message.
    Start {
        attempt: AttemptId,
        source: ConnectorAddr,
        target: ConnectorAddr,
        /// SPAKE2 side A message (33 bytes).
        spake: Vec<u8>,
    },
    /// Source → Target: the Source's SPAKE2 message and Noise message 1, which only a
    /// holder of the same code can decrypt.
    Challenge {
        attempt: AttemptId,
        /// SPAKE2 side B message (33 bytes).
        spake: Vec<u8>,
        /// Noise `XXpsk0` message 1: `psk, e` (48 bytes).
        noise: Vec<u8>,
    },
    /// Target → Source: Noise message 2, carrying the Target's static key encrypted under
    /// the code-derived key.
    Response {
        attempt: AttemptId,
        /// Noise `XXpsk0` message 2: `e, ee, s, es` (96 bytes).
        noise: Vec<u8>,
    },
    /// Source → Target: Noise message 3, carrying the Source's static key. Sent only after
    /// the Source has committed the pairing.
    Confirm {
        attempt: AttemptId,
        /// Noise `XXpsk0` message 3: `s, se` (64 bytes).
        noise: Vec<u8>,
    },
    /// Either side: this attempt is over. Not authenticated: a relay can forge it, which
    /// only ends an attempt it could have dropped anyway.
    Abort {
        attempt: AttemptId,
        reason: AbortReason,
    },
}

/// Why an attempt was abandoned, as told to the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortReason {
    WrongCode,
    Expired,
    TooManyAttempts,
    AlreadyPaired,
    Cancelled,
    /// The Source is not in pairing state (no window is open). Sent by the driver.
    NotPairing,
    /// A newer attempt replaced this one on the Source.
    Superseded,
    /// The Start was addressed to a different connector than the one that received it.
    WrongConnector,
    /// A message could not be decoded or did not fit the protocol state.
    ProtocolViolation,
}

/// Why bytes are not a pairing message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pairing message")]
    Empty,
    #[error("pairing protocol version {0} is not supported (this site speaks {PAIRING_VERSION})")]
    Version(u8),
    #[error("malformed pairing message: {0}")]
    Postcard(postcard::Error),
    #[error("{0} bytes after the end of a pairing message")]
    Trailing(usize),
    #[error("pairing message field of {0} bytes is longer than any valid one")]
    FieldTooLong(usize),
}

impl From<EnvelopeError> for DecodeError {
    fn from(e: EnvelopeError) -> Self {
        match e {
            EnvelopeError::Empty => DecodeError::Empty,
            EnvelopeError::Tag(v) => DecodeError::Version(v),
            EnvelopeError::Malformed(e) => DecodeError::Postcard(e),
            EnvelopeError::Trailing(n) => DecodeError::Trailing(n),
            // No limit is passed, so none can be exceeded.
            EnvelopeError::TooLarge { len, .. } => DecodeError::FieldTooLong(len),
        }
    }
}

impl PairingMessage {
    pub fn attempt(&self) -> AttemptId {
        match self {
            Self::Start { attempt, .. }
            | Self::Challenge { attempt, .. }
            | Self::Response { attempt, .. }
            | Self::Confirm { attempt, .. }
            | Self::Abort { attempt, .. } => *attempt,
        }
    }

    /// Short name for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Start { .. } => "Start",
            Self::Challenge { .. } => "Challenge",
            Self::Response { .. } => "Response",
            Self::Confirm { .. } => "Confirm",
            Self::Abort { .. } => "Abort",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail, and pairing messages have no size
        // limit of their own (the link's frame limit applies).
        envelope::encode(Some(PAIRING_VERSION), self, usize::MAX)
            .expect("pairing messages always serialise")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let msg: Self = envelope::decode(Some(PAIRING_VERSION), bytes, usize::MAX)?;
        msg.check_fields()?;
        Ok(msg)
    }

    fn check_fields(&self) -> Result<(), DecodeError> {
        let fields: [&[u8]; 2] = match self {
            Self::Start { spake, .. } => [spake, &[]],
            Self::Challenge { spake, noise, .. } => [spake, noise],
            Self::Response { noise, .. } | Self::Confirm { noise, .. } => [noise, &[]],
            Self::Abort { .. } => [&[], &[]],
        };
        match fields.iter().find(|f| f.len() > MAX_FIELD) {
            Some(f) => Err(DecodeError::FieldTooLong(f.len())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::ConnectorId;
    use proptest::prelude::*;

    pub(crate) fn addr_strategy() -> impl Strategy<Value = ConnectorAddr> {
        ("[a-z0-9-]{1,20}", "[a-z0-9]{14}").prop_map(|(site, id)| {
            ConnectorAddr::new(site, ConnectorId::parse(&id).expect("valid id")).expect("valid")
        })
    }

    fn reason_strategy() -> impl Strategy<Value = AbortReason> {
        prop_oneof![
            Just(AbortReason::WrongCode),
            Just(AbortReason::Expired),
            Just(AbortReason::TooManyAttempts),
            Just(AbortReason::AlreadyPaired),
            Just(AbortReason::Cancelled),
            Just(AbortReason::NotPairing),
            Just(AbortReason::Superseded),
            Just(AbortReason::WrongConnector),
            Just(AbortReason::ProtocolViolation),
        ]
    }

    pub(crate) fn message_strategy() -> impl Strategy<Value = PairingMessage> {
        let attempt = any::<[u8; 16]>().prop_map(AttemptId);
        let field = || proptest::collection::vec(any::<u8>(), 0..=MAX_FIELD);
        prop_oneof![
            (attempt.clone(), addr_strategy(), addr_strategy(), field()).prop_map(
                |(attempt, source, target, spake)| PairingMessage::Start {
                    attempt,
                    source,
                    target,
                    spake
                }
            ),
            (attempt.clone(), field(), field()).prop_map(|(attempt, spake, noise)| {
                PairingMessage::Challenge {
                    attempt,
                    spake,
                    noise,
                }
            }),
            (attempt.clone(), field())
                .prop_map(|(attempt, noise)| PairingMessage::Response { attempt, noise }),
            (attempt.clone(), field())
                .prop_map(|(attempt, noise)| PairingMessage::Confirm { attempt, noise }),
            (attempt, reason_strategy())
                .prop_map(|(attempt, reason)| PairingMessage::Abort { attempt, reason }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(msg in message_strategy()) {
            let bytes = msg.encode();
            prop_assert_eq!(bytes[0], PAIRING_VERSION);
            prop_assert_eq!(PairingMessage::decode(&bytes), Ok(msg));
        }

        #[test]
        fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = PairingMessage::decode(&bytes);
        }

        #[test]
        fn versioned_random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = vec![PAIRING_VERSION];
            bytes.extend_from_slice(&body);
            let _ = PairingMessage::decode(&bytes);
        }

        #[test]
        fn trailing_bytes_and_other_versions_are_refused(msg in message_strategy(), extra in 1u8..=255) {
            let mut bytes = msg.encode();
            bytes.push(extra);
            prop_assert_eq!(PairingMessage::decode(&bytes), Err(DecodeError::Trailing(1)));
            let mut bytes = msg.encode();
            bytes[0] = PAIRING_VERSION.wrapping_add(extra);
            prop_assert!(matches!(PairingMessage::decode(&bytes), Err(DecodeError::Version(_))));
        }
    }

    #[test]
    fn oversized_fields_are_refused() {
        let msg = PairingMessage::Response {
            attempt: AttemptId([0; 16]),
            noise: vec![0; MAX_FIELD + 1],
        };
        assert_eq!(
            PairingMessage::decode(&msg.encode()),
            Err(DecodeError::FieldTooLong(MAX_FIELD + 1))
        );
    }
}
