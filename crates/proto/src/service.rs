//! The first byte of every plaintext on the end-to-end session of two paired connectors:
//! which service the rest of the message is for. Both sites dispatch on it, so it is part of
//! the peer protocol (docs/wire.md, "Session services").
//!
//! | byte        | service                                                        |
//! |-------------|----------------------------------------------------------------|
//! | `0x00`      | ping: 8 bytes of nonce, answered by a pong with the same nonce  |
//! | `0x01`      | pong                                                           |
//! | `0x10`      | sync: a `sync::message` of either stream                       |
//! | `0x20`      | device lookup request (`lookup::Request`)                      |
//! | `0x21`      | device lookup answer (`lookup::Response`)                      |
//! | `0x22–0x2f` | reserved for device lookup                                     |
//!
//! A byte no service claims is dropped by the receiver (logged at debug level), so a newer
//! site may add services without breaking an older peer.

/// An end-to-end ping: the peer answers [`PONG`] with the same nonce.
pub const PING: u8 = 0x00;
/// The answer to a [`PING`].
pub const PONG: u8 = 0x01;
/// `sync::message` messages (the Sender and Receiver of both streams).
pub const SYNC: u8 = 0x10;
/// First byte of the device lookup range.
pub const LOOKUP_FIRST: u8 = 0x20;
/// Last byte of the device lookup range.
pub const LOOKUP_LAST: u8 = 0x2f;
/// A device lookup request.
pub const LOOKUP_REQUEST: u8 = LOOKUP_FIRST;
/// A device lookup answer.
pub const LOOKUP_RESPONSE: u8 = LOOKUP_FIRST + 1;

/// The built-in hub address every site answers pairing messages on (`proto::pairing`):
/// sent to connector `_pairing` of the Source's site, outside any session.
pub const PAIRING: &str = "_pairing";
