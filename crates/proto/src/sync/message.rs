//! The sync messages one site sends the other inside the end-to-end channel, and their
//! encoding: a version byte, then the postcard encoding of [`Message`].
//!
//! ```text
//!  receiver                                   sender
//!    |-- Resume{session, applied} --------------->|   on link up, and to resync
//!    |<------------------- Resumed{session, head} |
//!    |<-- Batch{session, first..=last, head, payload}
//!    |<-- Gap{session, span, head} ----------------|  retention dropped span
//!    |-- Ack{session, applied} ------------------->|  after each durable apply
//! ```
//!
//! Invariants:
//! - The first byte is [`SYNC_VERSION`], bumped whenever [`Message`] changes, a variant
//!   added included (an older peer cannot read it): a peer of another version fails every
//!   message with [`MessageError::Version`], which names both versions, and the site says
//!   "peer runs an older version" rather than stalling on messages it cannot read.
//! - [`decode`] accepts exactly one message and nothing after it, never panics, and checks
//!   every field a receiver relies on (`1 <= first_seq <= last_seq`, payload size).
//! - `applied` in `Resume` and `Ack` is always the receiver's *durable* cursor, so a sender
//!   may trust it as a lower bound of what is applied, whatever session it came from.

use serde::{Deserialize, Serialize};

use super::held::Held;
use super::record::LostSpan;
use crate::envelope::{self, EnvelopeError};

/// Version byte in front of every sync message. 1: `Resume`, `Resumed`, `Batch`, `Ack`,
/// `Gap`; 2: the two lanes (`ResumeLanes`, `AckLanes`, `Live`, `LiveGap`).
pub const SYNC_VERSION: u8 = 2;
/// The largest encoded message: room for the channel's and the hub frame's overhead below
/// [`crate::wire::MAX_PAYLOAD_LEN`].
pub const MAX_MESSAGE_LEN: usize = 768 * 1024;

/// One sync message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Receiver → sender: start (or restart) a session and continue after `applied`.
    Resume { session: u64, applied: u64 },
    /// Sender → receiver: the session is accepted; `head` is the sender's outbox head.
    Resumed { session: u64, head: u64 },
    /// Sender → receiver: records `first_seq..=last_seq`, encoded by the batch codec.
    Batch {
        session: u64,
        first_seq: u64,
        last_seq: u64,
        /// The sender's outbox head when it sent this, so the receiver can show lag.
        head: u64,
        #[serde(with = "bytes_field")]
        payload: Vec<u8>,
    },
    /// Receiver → sender: every record up to `applied` is durably applied.
    Ack { session: u64, applied: u64 },
    /// Sender → receiver: the records of `span` are gone (retention); record the loss and
    /// move the cursor to `span.last_seq`.
    Gap {
        session: u64,
        span: LostSpan,
        head: u64,
    },
    /// Receiver → sender: `Resume` from a receiver that also holds the live lane
    /// `live_from..=live_to` above a hole (docs/sync.md, "Two lanes").
    ResumeLanes {
        session: u64,
        applied: u64,
        live_from: u64,
        live_to: u64,
    },
    /// Receiver → sender: `Ack` from a receiver that also holds a live lane.
    AckLanes {
        session: u64,
        applied: u64,
        live_from: u64,
        live_to: u64,
    },
    /// Sender → receiver: a batch of the live lane, which starts at `lane` (the sender's head
    /// when it opened it, where the current records of pending devices are) while the backlog
    /// drains behind it. A receiver opens its live lane only with the batch that starts it.
    Live {
        session: u64,
        lane: u64,
        first_seq: u64,
        last_seq: u64,
        head: u64,
        #[serde(with = "bytes_field")]
        payload: Vec<u8>,
    },
    /// Sender → receiver: a lost span met on the live lane that starts at `lane`.
    LiveGap {
        session: u64,
        lane: u64,
        span: LostSpan,
        head: u64,
    },
}

/// Which state machine of a site a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressee {
    Sender,
    Receiver,
}

impl Message {
    /// Where the driver hands this message: a site runs one [`super::Sender`] and one
    /// [`super::Receiver`] per pairing, and each message type goes to exactly one of them.
    pub fn addressee(&self) -> Addressee {
        match self {
            Message::Resume { .. }
            | Message::Ack { .. }
            | Message::ResumeLanes { .. }
            | Message::AckLanes { .. } => Addressee::Sender,
            Message::Resumed { .. }
            | Message::Batch { .. }
            | Message::Gap { .. }
            | Message::Live { .. }
            | Message::LiveGap { .. } => Addressee::Receiver,
        }
    }

    pub fn session(&self) -> u64 {
        match self {
            Message::Resume { session, .. }
            | Message::Resumed { session, .. }
            | Message::Batch { session, .. }
            | Message::Ack { session, .. }
            | Message::Gap { session, .. }
            | Message::ResumeLanes { session, .. }
            | Message::AckLanes { session, .. }
            | Message::Live { session, .. }
            | Message::LiveGap { session, .. } => *session,
        }
    }
}

/// Why a sync message could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("sync message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("sync message is empty")]
    Empty,
    #[error("sync protocol version {0} is not supported (this build speaks {SYNC_VERSION})")]
    Version(u8),
    #[error("sync message is not valid: {0}")]
    Malformed(String),
    #[error("sync message has {0} bytes after its end")]
    TrailingBytes(usize),
    #[error("sequence range {first}..={last} is not valid")]
    BadRange { first: u64, last: u64 },
    #[error(
        "applied 1..={applied} and a live lane {live_from}..={live_to} do not make two separate ranges"
    )]
    BadLanes {
        applied: u64,
        live_from: u64,
        live_to: u64,
    },
}

/// Encodes a message after checking what [`decode`] will check.
pub fn encode(msg: &Message) -> Result<Vec<u8>, MessageError> {
    validate(msg)?;
    envelope::encode(Some(SYNC_VERSION), msg, MAX_MESSAGE_LEN).map_err(MessageError::from)
}

/// Decodes one message: all of `bytes`, within the limits.
pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
    let msg: Message = envelope::decode(Some(SYNC_VERSION), bytes, MAX_MESSAGE_LEN)?;
    validate(&msg)?;
    Ok(msg)
}

impl From<EnvelopeError> for MessageError {
    fn from(e: EnvelopeError) -> Self {
        match e {
            EnvelopeError::TooLarge { len, max } => MessageError::TooLarge { len, max },
            EnvelopeError::Empty => MessageError::Empty,
            EnvelopeError::Tag(v) => MessageError::Version(v),
            EnvelopeError::Malformed(e) => MessageError::Malformed(e.to_string()),
            EnvelopeError::Trailing(n) => MessageError::TrailingBytes(n),
        }
    }
}

fn validate(msg: &Message) -> Result<(), MessageError> {
    let range = |first: u64, last: u64| {
        if first == 0 || first > last {
            Err(MessageError::BadRange { first, last })
        } else {
            Ok(())
        }
    };
    match msg {
        Message::Batch {
            first_seq,
            last_seq,
            ..
        } => range(*first_seq, *last_seq),
        Message::Live {
            lane,
            first_seq,
            last_seq,
            ..
        } => range(*first_seq, *last_seq).and(range(*lane, *first_seq)),
        Message::Gap { span, .. } => range(span.first_seq, span.last_seq),
        Message::LiveGap { lane, span, .. } => {
            range(span.first_seq, span.last_seq).and(range(*lane, span.last_seq))
        }
        Message::ResumeLanes {
            applied,
            live_from,
            live_to,
            ..
        }
        | Message::AckLanes {
            applied,
            live_from,
            live_to,
            ..
        } => match Held::from_parts(*applied, *live_from, *live_to) {
            Some(h) if h.live.is_some() => Ok(()),
            _ => Err(MessageError::BadLanes {
                applied: *applied,
                live_from: *live_from,
                live_to: *live_to,
            }),
        },
        Message::Resume { .. } | Message::Resumed { .. } | Message::Ack { .. } => Ok(()),
    }
}

/// Serde glue that writes a payload as one length-prefixed byte string rather than a
/// sequence of individually encoded bytes.
mod bytes_field {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::ser::Serializer;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ResourceName;
    use crate::sync::record::ResourceLoss;
    use proptest::prelude::*;

    fn arb_span() -> impl Strategy<Value = LostSpan> {
        (
            1u64..1 << 40,
            0u64..1000,
            prop::collection::vec(
                (
                    "[a-z]{1,8}",
                    any::<u64>(),
                    any::<u64>(),
                    any::<i64>(),
                    any::<i64>(),
                ),
                0..3,
            ),
            any::<u64>(),
        )
            .prop_map(|(first, len, res, device_changes)| LostSpan {
                first_seq: first,
                last_seq: first + len,
                resources: res
                    .into_iter()
                    .map(|(r, points, devices, from_us, until_us)| ResourceLoss {
                        resource: ResourceName::parse(&r).unwrap(),
                        points,
                        devices,
                        from_us,
                        until_us,
                    })
                    .collect(),
                device_changes,
            })
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u64>(), any::<u64>())
                .prop_map(|(session, applied)| Message::Resume { session, applied }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(session, head)| Message::Resumed { session, head }),
            (
                any::<u64>(),
                1u64..u64::MAX / 2,
                0u64..10_000,
                any::<u64>(),
                prop::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(session, first_seq, n, head, payload)| Message::Batch {
                    session,
                    first_seq,
                    last_seq: first_seq + n,
                    head,
                    payload
                }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(session, applied)| Message::Ack { session, applied }),
            (any::<u64>(), arb_span(), any::<u64>()).prop_map(|(session, span, head)| {
                Message::Gap {
                    session,
                    span,
                    head,
                }
            }),
            (
                any::<u64>(),
                0u64..1 << 40,
                2u64..1000,
                0u64..1000,
                any::<bool>()
            )
                .prop_map(|(session, applied, hole, len, ack)| {
                    let (live_from, live_to) = (applied + hole, applied + hole + len);
                    if ack {
                        Message::AckLanes {
                            session,
                            applied,
                            live_from,
                            live_to,
                        }
                    } else {
                        Message::ResumeLanes {
                            session,
                            applied,
                            live_from,
                            live_to,
                        }
                    }
                }),
            (
                any::<u64>(),
                1u64..u64::MAX / 2,
                0u64..10_000,
                any::<u64>(),
                prop::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(session, first_seq, n, head, payload)| Message::Live {
                    session,
                    lane: first_seq / 2 + 1,
                    first_seq,
                    last_seq: first_seq + n,
                    head,
                    payload
                }),
            (any::<u64>(), arb_span(), any::<u64>()).prop_map(|(session, span, head)| {
                Message::LiveGap {
                    session,
                    lane: span.first_seq,
                    span,
                    head,
                }
            }),
        ]
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert_eq!(decode(&[]), Err(MessageError::Empty));
        assert_eq!(decode(&[1, 0, 0, 0]), Err(MessageError::Version(1)));
        assert_eq!(
            MessageError::Version(1).to_string(),
            "sync protocol version 1 is not supported (this build speaks 2)"
        );
        assert!(matches!(
            decode(&[SYNC_VERSION, 99]),
            Err(MessageError::Malformed(_))
        ));
        let mut ok = encode(&Message::Ack {
            session: 1,
            applied: 2,
        })
        .unwrap();
        ok.push(0);
        assert_eq!(decode(&ok), Err(MessageError::TrailingBytes(1)));
        let bad = Message::Batch {
            session: 1,
            first_seq: 5,
            last_seq: 4,
            head: 5,
            payload: vec![],
        };
        assert_eq!(
            encode(&bad),
            Err(MessageError::BadRange { first: 5, last: 4 })
        );
        assert_eq!(
            decode(&[&[SYNC_VERSION][..], &postcard::to_allocvec(&bad).unwrap()].concat()),
            Err(MessageError::BadRange { first: 5, last: 4 })
        );
        assert_eq!(
            Message::Ack {
                session: 1,
                applied: 0
            }
            .addressee(),
            Addressee::Sender
        );
        // Lanes that touch are one prefix; a live lane must not be empty.
        for (applied, live_from, live_to) in [(5, 6, 9), (5, 8, 7), (5, 0, 0)] {
            let bad = Message::AckLanes {
                session: 1,
                applied,
                live_from,
                live_to,
            };
            assert_eq!(
                encode(&bad),
                Err(MessageError::BadLanes {
                    applied,
                    live_from,
                    live_to
                })
            );
            assert!(matches!(
                decode(&[&[SYNC_VERSION][..], &postcard::to_allocvec(&bad).unwrap()].concat()),
                Err(MessageError::BadLanes { .. })
            ));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn every_message_round_trips(msg in arb_message()) {
            let bytes = encode(&msg).unwrap();
            prop_assert_eq!(decode(&bytes).unwrap(), msg);
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
            let _ = decode(&bytes);
            let mut v = vec![SYNC_VERSION];
            v.extend_from_slice(&bytes);
            let _ = decode(&v);
        }
    }
}
