//! The hub link wire format: versioned binary frames between a site and the Connectivity Hub.
//! `docs/wire.md` is the written schema; this module is its one implementation.
//!
//! One WebSocket binary message carries exactly one [`Frame`], encoded with postcard (serde,
//! varint integers, length-prefixed strings and byte strings). The message flow:
//!
//! ```text
//!  site A                         hub                           site B
//!    |-- Hello{versions,name,cred} -->|                               |
//!    |<-- Welcome{version,heartbeat} -|   (or Refused{code}, close)   |
//!    |-- Route{A/c1 -> B/c2, Request #7, payload} -->|-- same bytes -->|
//!    |<-- same bytes ----------------|<-- Route{B/c2 -> A/c1, Response #7}
//!    |-- Route{A/c1 -> C/c3, Request #8} -->|                          |
//!    |<-- PeerOffline{C/c3, #8} -----|   (C is not connected)          |
//!    |-- Ping(n) -->|<-- Pong(n) ----|   (every heartbeat, both ways)  |
//!
//!  version 2 adds:
//!    |-- Claims{[(c1, B/c2)]} ------>|   (after Welcome and on every change; replaces A's)
//!    |-- Route{A/c1 -> D/c4} ------->|   (A/c1 and D/c4 have not both claimed each other)
//!    |<-- Undelivered{D/c4, NotPaired} (and Offline, UnknownSite in place of PeerOffline)
//! ```
//!
//! Invariants:
//! - Variants 0–2 of [`Frame`] (`Hello`, `Welcome`, `Refused`) and their fields are frozen for
//!   every protocol version, so that any two versions can negotiate and tell each other
//!   apart. Later versions add variants after the last one; they never reorder or change one.
//! - No frame longer than [`MAX_FRAME_LEN`] is produced by [`encode`] or accepted by
//!   [`decode`]; names and reasons have their own limits, checked on both sides.
//! - Payloads are opaque bytes: this module neither reads nor changes them (between paired
//!   connectors they are messages of the end-to-end session, `channel`, which the hub
//!   cannot read).
//!
//! Deliberately absent: I/O, clocks and randomness (this crate is sans-IO); the ids of
//! requests and ping nonces are chosen by the caller.

use serde::{Deserialize, Serialize};

use crate::envelope::{self, EnvelopeError};

/// The first four bytes a [`Hello`] carries, so that a hub can tell a West site from anything
/// else that connects.
pub const MAGIC: [u8; 4] = *b"WEST";
/// The oldest protocol version this build speaks.
pub const MIN_VERSION: u16 = 1;
/// The newest protocol version this build speaks.
pub const MAX_VERSION: u16 = 2;
/// The first version with [`Frame::Claims`] and [`Frame::Undelivered`]: pairings declared
/// to the hub, and undeliverable answers with a reason.
pub const CLAIMS_VERSION: u16 = 2;
/// The largest encoded frame, in bytes: 1 MiB.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;
/// The largest payload of a routed message: the frame limit less room for the header.
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN - 1024;
/// The longest site or connector name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// The longest credential, in bytes.
pub const MAX_CREDENTIAL_LEN: usize = 256;
/// The longest human-readable message of a refusal, in bytes.
pub const MAX_MESSAGE_LEN: usize = 512;
/// The most pairings one [`Claims`] frame may declare (about 600 KiB at the longest names).
pub const MAX_CLAIMS: usize = 4096;

/// One message on the link, in either direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Site → hub, the first frame of a connection. Frozen.
    Hello(Hello),
    /// Hub → site, the answer to an accepted [`Hello`]. Frozen.
    Welcome(Welcome),
    /// Hub → site, the last frame before the hub closes the connection. Frozen.
    Refused(Refusal),
    /// A message from one (site, connector) to another, relayed by the hub unchanged.
    Route(Routed),
    /// Hub → site: the addressed site is not connected; nothing was delivered.
    PeerOffline(Undeliverable),
    /// A heartbeat; the receiver answers with a [`Frame::Pong`] of the same nonce.
    Ping(u64),
    /// The answer to a [`Frame::Ping`].
    Pong(u64),
    /// Site → hub, version 2: every pairing of the site's connectors, replacing the ones it
    /// declared before. The hub forwards connector-to-connector traffic only between two
    /// connectors that have both claimed each other.
    Claims(Claims),
    /// Hub → site, version 2: nothing was delivered, and why. Replaces
    /// [`Frame::PeerOffline`] on connections of version 2 and later.
    Undelivered(Undelivered),
}

impl Frame {
    /// The first protocol version in which this frame exists. A frame of a later version
    /// than the connection's is a protocol violation.
    pub fn since_version(&self) -> u16 {
        match self {
            Frame::Hello(_)
            | Frame::Welcome(_)
            | Frame::Refused(_)
            | Frame::Route(_)
            | Frame::PeerOffline(_)
            | Frame::Ping(_)
            | Frame::Pong(_) => 1,
            Frame::Claims(_) | Frame::Undelivered(_) => CLAIMS_VERSION,
        }
    }
}

/// The opening frame: who the site is, how it proves it, which versions it speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: [u8; 4],
    /// The oldest version the site speaks.
    pub min_version: u16,
    /// The newest version the site speaks.
    pub max_version: u16,
    /// The site's name, as registered on the hub.
    pub site: String,
    /// The credential `west hub add-site` printed for this site. Travels only inside TLS.
    pub credential: String,
}

/// The hub accepted the site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version both sides speak from now on.
    pub version: u16,
    /// The site's name as the hub will stamp it on the site's messages.
    pub site: String,
    /// How often the site should send a ping, in milliseconds; the hub closes a connection
    /// that stays silent for a few of these.
    pub heartbeat_ms: u32,
    /// The largest frame the hub accepts, in bytes.
    pub max_frame_len: u32,
}

/// Why the hub closes a connection: a stable snake_case code and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// One of the `code` values of [`RefusalCode`], kept as a string so that a newer hub's
    /// codes still decode on an older site.
    pub code: String,
    /// A sentence an operator can act on.
    pub message: String,
}

/// The refusal codes this version knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalCode {
    /// No site of that name is registered.
    UnknownSite,
    /// The credential does not belong to that site.
    WrongCredential,
    /// The site was removed from the hub.
    Revoked,
    /// No protocol version is common to both sides.
    UnsupportedVersion,
    /// A newer connection with the same site name replaced this one.
    Superseded,
    /// A frame could not be decoded, or came out of order.
    Malformed,
    /// A frame exceeded [`MAX_FRAME_LEN`].
    TooLarge,
    /// A routed frame claimed to come from another site.
    Forged,
    /// The peer stayed silent past the heartbeat deadline.
    Silent,
    /// The hub is shutting down.
    Shutdown,
}

impl RefusalCode {
    pub const ALL: [RefusalCode; 10] = [
        RefusalCode::UnknownSite,
        RefusalCode::WrongCredential,
        RefusalCode::Revoked,
        RefusalCode::UnsupportedVersion,
        RefusalCode::Superseded,
        RefusalCode::Malformed,
        RefusalCode::TooLarge,
        RefusalCode::Forged,
        RefusalCode::Silent,
        RefusalCode::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::UnknownSite => "unknown_site",
            RefusalCode::WrongCredential => "wrong_credential",
            RefusalCode::Revoked => "revoked",
            RefusalCode::UnsupportedVersion => "unsupported_version",
            RefusalCode::Superseded => "superseded",
            RefusalCode::Malformed => "malformed_frame",
            RefusalCode::TooLarge => "frame_too_large",
            RefusalCode::Forged => "forged_sender",
            RefusalCode::Silent => "silent",
            RefusalCode::Shutdown => "hub_shutdown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether the refusal concerns the site's identity: retrying with the same credential
    /// cannot succeed until an operator acts.
    pub fn is_credential_problem(self) -> bool {
        matches!(
            self,
            RefusalCode::UnknownSite | RefusalCode::WrongCredential | RefusalCode::Revoked
        )
    }
}

impl Refusal {
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        truncate_utf8(&mut message, MAX_MESSAGE_LEN);
        Self {
            code: code.as_str().into(),
            message,
        }
    }

    /// The code, if this version knows it.
    pub fn known_code(&self) -> Option<RefusalCode> {
        RefusalCode::parse(&self.code)
    }
}

/// One end of a routed message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Address {
    /// The site's name on the hub.
    pub site: String,
    /// The connector (or built-in service, whose names start with `_`) on that site.
    pub connector: String,
}

impl Address {
    pub fn new(site: impl Into<String>, connector: impl Into<String>) -> Self {
        Self {
            site: site.into(),
            connector: connector.into(),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.site, self.connector)
    }
}

/// What a routed message is, so that the receiver knows whether to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Expects exactly one `Response` or `Failure` with the same id.
    Request,
    /// The answer to the `Request` with the same id.
    Response,
    /// The receiver could not answer the `Request` with the same id; the payload is a UTF-8
    /// sentence saying why.
    Failure,
    /// One-way; the id is the sender's to use (e.g. a sequence number).
    Message,
}

/// A message between two (site, connector) ends. The hub reads only the addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routed {
    /// The sender. The hub refuses a frame whose `from.site` is not the sending
    /// connection's authenticated site name.
    pub from: Address,
    /// The receiver.
    pub to: Address,
    pub kind: Kind,
    /// Correlates a `Response`/`Failure` with its `Request`; chosen by the requester.
    pub id: u64,
    /// Opaque to the hub.
    #[serde(with = "payload_bytes")]
    pub payload: Vec<u8>,
}

/// The hub could not deliver a routed message because its site is not connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undeliverable {
    /// Where the message was going.
    pub to: Address,
    /// The sending connector, so that the site can hand the answer back to it.
    pub from_connector: String,
    pub kind: Kind,
    /// The id of the undelivered message.
    pub id: u64,
}

/// The pairings a site declares for its own connectors; the hub stamps the site's
/// authenticated name on them, so no site can claim for another's connectors.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Claims {
    /// At most [`MAX_CLAIMS`]; neither end may be a built-in service (`_…`).
    pub pairings: Vec<Pairing>,
}

/// One connector of the claiming site and the peer it is paired with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pairing {
    /// A connector of the claiming site.
    pub connector: String,
    /// The connector on another site it is paired with.
    pub peer: Address,
}

impl Pairing {
    pub fn new(connector: impl Into<String>, peer: Address) -> Self {
        Self {
            connector: connector.into(),
            peer,
        }
    }
}

/// Whether a connector name is a built-in service of the link (`_echo`, `_pairing`, …):
/// traffic to or from one needs no pairing.
pub fn is_service(connector: &str) -> bool {
    connector.starts_with('_')
}

/// Why the hub delivered nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UndeliveredReason {
    /// The site is registered but not connected (or too slow to take the frame).
    Offline,
    /// No site of that name is registered on the hub.
    UnknownSite,
    /// The two connectors have not both declared the pairing in their [`Claims`].
    NotPaired,
}

impl UndeliveredReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UndeliveredReason::Offline => "offline",
            UndeliveredReason::UnknownSite => "unknown_site",
            UndeliveredReason::NotPaired => "not_paired",
        }
    }
}

/// The hub could not deliver a routed message, with the reason (version 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undelivered {
    /// Where the message was going.
    pub to: Address,
    /// The sending connector, so that the site can hand the answer back to it.
    pub from_connector: String,
    pub kind: Kind,
    /// The id of the undelivered message.
    pub id: u64,
    pub reason: UndeliveredReason,
}

impl Undelivered {
    /// The version 1 answer for the same message, which cannot say why.
    pub fn to_v1(&self) -> Undeliverable {
        Undeliverable {
            to: self.to.clone(),
            from_connector: self.from_connector.clone(),
            kind: self.kind,
            id: self.id,
        }
    }
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame is not valid: {0}")]
    Malformed(String),
    #[error("frame has {0} bytes after its end")]
    TrailingBytes(usize),
    #[error("hello does not start with the West magic")]
    BadMagic,
    #[error("{what} {value:?} is not a valid name (1 to {MAX_NAME_LEN} of a-z A-Z 0-9 . _ -)")]
    BadName { what: &'static str, value: String },
    #[error("{what} is {len} bytes long, over the limit of {max}")]
    FieldTooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("a claims frame declares {len} pairings, over the limit of {max}")]
    TooManyClaims { len: usize, max: usize },
    #[error("a pairing claim names a built-in service, which needs no pairing: {0}")]
    ServiceClaimed(String),
}

impl WireError {
    /// The refusal the hub sends for a frame that failed to decode.
    pub fn refusal(&self) -> Refusal {
        match self {
            WireError::TooLarge { .. } => Refusal::new(RefusalCode::TooLarge, self.to_string()),
            _ => Refusal::new(RefusalCode::Malformed, self.to_string()),
        }
    }
}

/// Encodes a frame after checking every limit a receiver will check.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, WireError> {
    validate(frame)?;
    envelope::encode(None, frame, MAX_FRAME_LEN).map_err(WireError::from)
}

/// Decodes one frame: the whole of `bytes`, no more, no less, and only within the limits.
pub fn decode(bytes: &[u8]) -> Result<Frame, WireError> {
    let frame: Frame = envelope::decode(None, bytes, MAX_FRAME_LEN)?;
    validate(&frame)?;
    Ok(frame)
}

impl From<EnvelopeError> for WireError {
    fn from(e: EnvelopeError) -> Self {
        match e {
            EnvelopeError::TooLarge { len, max } => WireError::TooLarge { len, max },
            EnvelopeError::Trailing(n) => WireError::TrailingBytes(n),
            EnvelopeError::Malformed(e) => WireError::Malformed(e.to_string()),
            // Frames have no leading byte of their own.
            EnvelopeError::Empty | EnvelopeError::Tag(_) => {
                WireError::Malformed("unexpected leading byte".into())
            }
        }
    }
}

/// The version two sides speak, given the range of each; `None` when they share none.
pub fn negotiate(theirs: (u16, u16), ours: (u16, u16)) -> Option<u16> {
    let low = theirs.0.max(ours.0);
    let high = theirs.1.min(ours.1);
    (low <= high).then_some(high)
}

/// A site or connector name: 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `.`, `_`
/// and `-`.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_name(what: &'static str, value: &str) -> Result<(), WireError> {
    if is_valid_name(value) {
        Ok(())
    } else {
        let mut value = value.to_owned();
        truncate_utf8(&mut value, MAX_NAME_LEN + 8);
        Err(WireError::BadName { what, value })
    }
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        Err(WireError::FieldTooLong { what, len, max })
    } else {
        Ok(())
    }
}

fn check_address(what: &'static str, a: &Address) -> Result<(), WireError> {
    check_name(what, &a.site)?;
    check_name(what, &a.connector)
}

fn validate(frame: &Frame) -> Result<(), WireError> {
    match frame {
        Frame::Hello(h) => {
            if h.magic != MAGIC {
                return Err(WireError::BadMagic);
            }
            check_name("site name", &h.site)?;
            check_len("credential", h.credential.len(), MAX_CREDENTIAL_LEN)
        }
        Frame::Welcome(w) => check_name("site name", &w.site),
        Frame::Refused(r) => {
            check_len("refusal code", r.code.len(), MAX_NAME_LEN)?;
            check_len("refusal message", r.message.len(), MAX_MESSAGE_LEN)
        }
        Frame::Route(r) => {
            check_address("sender", &r.from)?;
            check_address("receiver", &r.to)?;
            check_len("payload", r.payload.len(), MAX_PAYLOAD_LEN)
        }
        Frame::PeerOffline(u) => {
            check_address("receiver", &u.to)?;
            check_name("connector", &u.from_connector)
        }
        Frame::Ping(_) | Frame::Pong(_) => Ok(()),
        Frame::Claims(c) => {
            if c.pairings.len() > MAX_CLAIMS {
                return Err(WireError::TooManyClaims {
                    len: c.pairings.len(),
                    max: MAX_CLAIMS,
                });
            }
            for p in &c.pairings {
                check_name("claimed connector", &p.connector)?;
                check_address("claimed peer", &p.peer)?;
                if is_service(&p.connector) || is_service(&p.peer.connector) {
                    return Err(WireError::ServiceClaimed(format!(
                        "{} <-> {}",
                        p.connector, p.peer
                    )));
                }
            }
            Ok(())
        }
        Frame::Undelivered(u) => {
            check_address("receiver", &u.to)?;
            check_name("connector", &u.from_connector)
        }
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Serde glue that writes a payload as one length-prefixed byte string (a single copy)
/// rather than as a sequence of individually encoded bytes.
mod payload_bytes {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::ser::Serializer;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
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
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element::<u8>()? {
                if out.len() >= super::MAX_PAYLOAD_LEN {
                    return Err(A::Error::custom("payload too long"));
                }
                out.push(b);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello() -> Frame {
        Frame::Hello(Hello {
            magic: MAGIC,
            min_version: 1,
            max_version: 1,
            site: "site-a".into(),
            credential: "secret".into(),
        })
    }

    fn route(payload: Vec<u8>) -> Frame {
        Frame::Route(Routed {
            from: Address::new("site-a", "_echo"),
            to: Address::new("site-b", "09iolmnn8090ol"),
            kind: Kind::Request,
            id: 7,
            payload,
        })
    }

    #[test]
    fn hello_encoding_is_frozen() {
        // Variant 0, magic, versions 1..=1, two length-prefixed strings: any version of any
        // side must produce exactly these bytes.
        let bytes = encode(&hello()).expect("encodes");
        let mut expected = vec![0u8];
        expected.extend_from_slice(b"WEST");
        expected.extend_from_slice(&[1, 1, 6]);
        expected.extend_from_slice(b"site-a");
        expected.push(6);
        expected.extend_from_slice(b"secret");
        assert_eq!(bytes, expected);
    }

    #[test]
    fn refused_and_welcome_keep_their_variant_numbers() {
        let w = encode(&Frame::Welcome(Welcome {
            version: 1,
            site: "a".into(),
            heartbeat_ms: 1000,
            max_frame_len: 5,
        }))
        .expect("encodes");
        assert_eq!(w[0], 1);
        let r = encode(&Frame::Refused(Refusal::new(RefusalCode::Revoked, "gone"))).expect("ok");
        assert_eq!(r[0], 2);
        assert_eq!(&r[1..9], b"\x07revoked");
    }

    #[test]
    fn payload_is_one_byte_string() {
        let bytes = encode(&route(vec![0xAB; 300])).expect("encodes");
        // The payload sits at the end, whole, behind its varint length (300 = 0xAC 0x02).
        let (head, tail) = bytes.split_at(bytes.len() - 300);
        assert_eq!(tail, &[0xAB; 300][..]);
        assert!(head.ends_with(&[0xAC, 0x02]));
        assert_eq!(decode(&bytes), Ok(route(vec![0xAB; 300])));
    }

    fn check_decode(bytes: &[u8], expected: Result<(), &str>) {
        match (decode(bytes), expected) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{e} lacks {want}"),
            (got, want) => panic!("decode({bytes:?}) = {got:?}, wanted {want:?}"),
        }
    }

    #[test]
    fn decoding_refuses_what_it_must() {
        let ok = encode(&route(vec![1, 2, 3])).expect("encodes");
        check_decode(&ok, Ok(()));
        check_decode(&[], Err("not valid"));
        check_decode(&ok[..ok.len() - 1], Err("not valid"));
        let mut trailing = ok.clone();
        trailing.push(0);
        check_decode(&trailing, Err("after its end"));
        check_decode(&[42], Err("not valid"));
        check_decode(&vec![3u8; MAX_FRAME_LEN + 1], Err("exceeds the limit"));
        let mut bad_magic = encode(&hello()).expect("encodes");
        bad_magic[1] = b'X';
        check_decode(&bad_magic, Err("magic"));
        let bad_name = postcard::to_allocvec(&Frame::Route(Routed {
            from: Address::new("site a", "c"),
            to: Address::new("b", "c"),
            kind: Kind::Message,
            id: 0,
            payload: vec![],
        }))
        .expect("postcard encodes anything");
        check_decode(&bad_name, Err("not a valid name"));
    }

    #[test]
    fn encoding_refuses_oversized_payloads() {
        assert!(matches!(
            encode(&route(vec![0; MAX_PAYLOAD_LEN + 1])),
            Err(WireError::FieldTooLong { .. })
        ));
        assert!(encode(&route(vec![0; MAX_PAYLOAD_LEN])).is_ok());
    }

    #[test]
    fn version_2_frames_come_after_every_version_1_variant() {
        let claims = Frame::Claims(Claims {
            pairings: vec![Pairing::new("c1", Address::new("b", "c2"))],
        });
        let bytes = encode(&claims).expect("encodes");
        // Variant 7, one pairing: "c1", then the peer's site "b" and connector "c2".
        assert_eq!(bytes, b"\x07\x01\x02c1\x01b\x02c2");
        let undelivered = Frame::Undelivered(Undelivered {
            to: Address::new("b", "c2"),
            from_connector: "c1".into(),
            kind: Kind::Request,
            id: 9,
            reason: UndeliveredReason::NotPaired,
        });
        let bytes = encode(&undelivered).expect("encodes");
        assert_eq!(bytes, b"\x08\x01b\x02c2\x02c1\x00\x09\x02");
        assert_eq!(claims.since_version(), CLAIMS_VERSION);
        assert_eq!(undelivered.since_version(), CLAIMS_VERSION);
        assert_eq!(hello().since_version(), 1);
        assert_eq!(route(vec![]).since_version(), 1);
        const { assert!(CLAIMS_VERSION <= MAX_VERSION && MIN_VERSION == 1) };
    }

    #[test]
    fn claims_refuse_services_and_excess() {
        let claim = |c: &str, peer: &str| {
            Frame::Claims(Claims {
                pairings: vec![Pairing::new(c, Address::new("b", peer))],
            })
        };
        assert!(encode(&claim("c1", "c2")).is_ok());
        for (c, peer) in [("_echo", "c2"), ("c1", "_pairing")] {
            let bytes = postcard::to_allocvec(&claim(c, peer)).expect("postcard encodes");
            check_decode(&bytes, Err("built-in service"));
            assert!(matches!(
                encode(&claim(c, peer)),
                Err(WireError::ServiceClaimed(_))
            ));
        }
        let bad = postcard::to_allocvec(&claim("c 1", "c2")).expect("postcard encodes");
        check_decode(&bad, Err("not a valid name"));
        let many = Frame::Claims(Claims {
            pairings: vec![Pairing::new("c1", Address::new("b", "c2")); MAX_CLAIMS + 1],
        });
        assert!(matches!(
            encode(&many),
            Err(WireError::TooManyClaims { .. })
        ));
        let bytes = postcard::to_allocvec(&many).expect("postcard encodes");
        check_decode(&bytes, Err("over the limit"));
    }

    #[test]
    fn undelivered_has_a_version_1_form() {
        let u = Undelivered {
            to: Address::new("b", "c2"),
            from_connector: "c1".into(),
            kind: Kind::Message,
            id: 3,
            reason: UndeliveredReason::UnknownSite,
        };
        assert_eq!(
            u.to_v1(),
            Undeliverable {
                to: Address::new("b", "c2"),
                from_connector: "c1".into(),
                kind: Kind::Message,
                id: 3,
            }
        );
        assert_eq!(UndeliveredReason::NotPaired.as_str(), "not_paired");
        assert!(is_service("_echo") && !is_service("09iolmnn8090ol"));
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate((1, 1), (1, 1)), Some(1));
        assert_eq!(negotiate((1, 3), (2, 5)), Some(3));
        assert_eq!(negotiate((2, 2), (1, 1)), None);
        assert_eq!(negotiate((1, 1), (2, 3)), None);
    }

    #[test]
    fn refusal_codes_round_trip() {
        for c in RefusalCode::ALL {
            assert_eq!(RefusalCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(
            Refusal::new(RefusalCode::Forged, "x").known_code(),
            Some(RefusalCode::Forged)
        );
        let long = Refusal::new(RefusalCode::Malformed, "é".repeat(MAX_MESSAGE_LEN));
        assert!(long.message.len() <= MAX_MESSAGE_LEN);
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._-]{1,64}"
    }

    fn address() -> impl Strategy<Value = Address> {
        (name(), name()).prop_map(|(site, connector)| Address { site, connector })
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Request),
            Just(Kind::Response),
            Just(Kind::Failure),
            Just(Kind::Message)
        ]
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<u16>(), any::<u16>(), name(), "\\PC{0,64}").prop_map(|(a, b, site, c)| {
                Frame::Hello(Hello {
                    magic: MAGIC,
                    min_version: a,
                    max_version: b,
                    site,
                    credential: c,
                })
            }),
            (any::<u16>(), name(), any::<u32>(), any::<u32>()).prop_map(|(v, site, h, m)| {
                Frame::Welcome(Welcome {
                    version: v,
                    site,
                    heartbeat_ms: h,
                    max_frame_len: m,
                })
            }),
            ("[a-z_]{0,64}", "\\PC{0,100}")
                .prop_map(|(code, message)| { Frame::Refused(Refusal { code, message }) }),
            (
                address(),
                address(),
                kind(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..2048)
            )
                .prop_map(|(from, to, kind, id, payload)| {
                    Frame::Route(Routed {
                        from,
                        to,
                        kind,
                        id,
                        payload,
                    })
                }),
            (address(), name(), kind(), any::<u64>()).prop_map(|(to, c, kind, id)| {
                Frame::PeerOffline(Undeliverable {
                    to,
                    from_connector: c,
                    kind,
                    id,
                })
            }),
            any::<u64>().prop_map(Frame::Ping),
            any::<u64>().prop_map(Frame::Pong),
            proptest::collection::vec(pairing(), 0..8)
                .prop_map(|pairings| Frame::Claims(Claims { pairings })),
            (address(), name(), kind(), any::<u64>(), reason()).prop_map(
                |(to, c, kind, id, reason)| {
                    Frame::Undelivered(Undelivered {
                        to,
                        from_connector: c,
                        kind,
                        id,
                        reason,
                    })
                }
            ),
        ]
    }

    /// A connector name that is not a built-in service.
    fn connector() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9.-][a-zA-Z0-9._-]{0,63}"
    }

    fn pairing() -> impl Strategy<Value = Pairing> {
        (connector(), name(), connector()).prop_map(|(c, site, peer)| Pairing {
            connector: c,
            peer: Address::new(site, peer),
        })
    }

    fn reason() -> impl Strategy<Value = UndeliveredReason> {
        prop_oneof![
            Just(UndeliveredReason::Offline),
            Just(UndeliveredReason::UnknownSite),
            Just(UndeliveredReason::NotPaired),
        ]
    }

    proptest! {
        #[test]
        fn every_frame_round_trips(f in frame()) {
            let bytes = encode(&f).expect("valid frames encode");
            prop_assert!(bytes.len() <= MAX_FRAME_LEN);
            prop_assert_eq!(decode(&bytes), Ok(f));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(f) = decode(&bytes) {
                // Whatever decodes encodes back to a frame that decodes the same.
                let again = encode(&f).expect("a decoded frame is valid");
                prop_assert_eq!(decode(&again), Ok(f));
            }
        }

        #[test]
        fn truncated_frames_are_refused(f in frame(), cut in 1usize..64) {
            let bytes = encode(&f).expect("valid frames encode");
            let keep = bytes.len().saturating_sub(cut);
            prop_assert!(decode(&bytes[..keep]).is_err());
        }
    }
}
