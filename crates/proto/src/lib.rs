//! West Remote Sync protocol crate: the domain model every other crate speaks, and (as the
//! product grows) the wire format and the sans-IO sync state machines.
//!
//! Invariant: this crate does no I/O, reads no clock and draws no randomness. Time and
//! random values are passed in by the caller, so that everything here can be driven by a
//! seeded simulation.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod channel;
mod envelope;
pub mod lookup;
pub mod model;
pub mod pairing;
pub mod service;
pub mod sync;
pub mod wire;
