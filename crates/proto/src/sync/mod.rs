//! The sans-IO sync engine of a pairing: one ordered, durable, acknowledged stream per
//! direction, the batch codec, and device convergence. `docs/sync.md` explains the design.
//!
//! A pairing has two streams. Source → Target carries data points of every resource with
//! Remote-Sync on *and* device changes; Target → Source carries device changes only. Each
//! stream is a [`Sender`] on the writing site and a [`Receiver`] on the other, so each site
//! runs one of each per pairing. Device changes share the data stream, so a device always
//! arrives before the data that follows it, and a replay never applies a change twice.
//!
//! ```text
//!  Source site                                               Target site
//!  store ─ outbox(seq) ─▶ Sender ══ Batch/Gap/Resumed ══▶ Receiver ─▶ store: apply + cursor
//!                                ◀═══════ Resume/Ack ═══
//!  store: apply + cursor ◀─ Receiver ◀══ Batch/Resumed ══ Sender ◀─ outbox(seq) ─ store
//!                                 ═══ Resume/Ack ══════▶          (device changes only)
//!
//!  receiver                                   sender
//!    |-- Resume{session, applied} -------------->|  link up: continue after `applied`
//!    |<------------------ Resumed{session, head} |
//!    |<-- Batch{session, first..=last, payload} -|  ≤ window bytes unacknowledged
//!    |-- Ack{session, applied = last} ---------->|  after the durable apply
//!    |<-- Gap{session, span} --------------------|  retention dropped `span`
//!    |-- Resume{session, applied} -------------->|  hole seen: go back (rate-limited)
//! ```
//!
//! # Invariants
//!
//! - Every record of a stream has a sequence number assigned by the sending store in the
//!   transaction that writes it: gap-free, strictly increasing from 1 (the *outbox*).
//! - The receiving store keeps an *applied cursor*, updated in the same transaction that
//!   applies a batch or records a gap; the cursor only grows. `Resume` and `Ack` carry only
//!   that durable cursor, so the sender may delete what they cover.
//! - A batch is applied only if it starts at `handed + 1` (one past what the receiver has
//!   already handed to its driver); one that ends at or before it is a duplicate and is
//!   dropped; anything else is a hole and triggers a resync. Hence exactly-once in effect.
//! - Nothing is ever lost silently: a sender that no longer has `acked + 1` sends a `Gap`
//!   with the store's exact summary, and the receiver records it with the cursor move.
//! - No I/O, clock or randomness here: `now` (µs) and session ids are passed in.
//!
//! # How a driver uses it
//!
//! Every method takes `now`. After *every* call, drain `poll_output()` until `None` and do
//! what each output says, in order; then call `tick(now)` no later than `next_timeout()`.
//! Decode arriving bytes with [`message::decode`] and hand the [`Message`] to the sender or
//! the receiver according to [`Message::addressee`].
//!
//! Sending side ([`Sender`]):
//! 1. Start (or restart after a crash): `Sender::new(cfg, SenderDurable { acked, head,
//!    lease }, now)` from the store.
//! 2. Outbox append committed: `outbox_head(now, head)`.
//! 3. Channel up / down: `link_up(now)` / `link_down(now)`.
//! 4. `Read { from, max_records }`: read the outbox and answer `on_read(now,
//!    ReadChunk::Records { from, records })` (consecutive from `from`, may be fewer), or
//!    `ReadChunk::Encoded { from, records, payload }` when the store holds the payload of
//!    exactly these records (a batch of all of them sends it as it is), or
//!    `ReadChunk::Lost { from, span }` when retention dropped `from`.
//! 5. `Lease { upto }`: persist it, then `on_lease(now, upto)`.
//! 6. `Acked { applied }`: persist it (lazily is fine) and delete delivered records.
//! 7. `Send(bytes)`: send them on the channel. `Reconnect { reason }`: log the reason, drop
//!    the channel and connect again.
//!
//! Receiving side ([`Receiver`]):
//! 1. Start: `Receiver::new(cfg, applied_cursor, now)` from the store.
//! 2. Channel up: `link_up(now, session)` with a fresh session id; down: `link_down(now)`.
//! 3. `Apply(Apply { first_seq, last_seq, records }, lane)`: in one transaction, check the
//!    range continues what the store holds ([`Held::admit`]), apply the records in the given
//!    order (device changes are [`merge`]d, points written), move the cursor (or the live
//!    lane) to `last_seq`; then `on_applied(now, last_seq)`. Apply in the order
//!    [`ApplyQueue`] gives (live lane first; handed-out order within a lane). On failure
//!    `on_apply_failed(now)` and drop later applies.
//! 4. `RecordGap(GapRecord { .. }, lane)`: likewise, recording the gap instead of records.
//! 5. `Send` and `Reconnect` as on the sending side.
//!
//! The store's side of the bargain (what must be durable, and retention) is in
//! `docs/sync.md`: in short, the outbox with seqs, `acked`, `lease` and the lost spans on the
//! sending side; the cursor, applied data and gaps on the receiving side; never drop a record
//! in `(acked, lease]`; re-append the latest state of a device whose change is dropped.

pub mod apply_queue;
pub mod codec;
pub mod device;
pub mod held;
pub mod hlc;
pub mod message;
pub mod receiver;
pub mod record;
pub mod sender;

pub use apply_queue::ApplyQueue;
pub use device::{DeviceEdit, DeviceError, DeviceRecord, DeviceView, Lww, merge};
pub use held::{Admit, Held};
pub use hlc::{Hlc, Stamp};
pub use message::{Addressee, Message};
pub use receiver::{Apply, GapRecord, Receiver, ReceiverConfig, ReceiverOutput, ReceiverStats};
pub use record::{LostSpan, Point, Record, ResourceLoss};
pub use sender::{ReadChunk, Sender, SenderConfig, SenderDurable, SenderOutput, SenderStats};

/// Why a state machine asks its driver to drop the channel and connect again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconnectReason {
    #[error("the link has been up for {waited_us} µs and the receiver never sent Resume")]
    NoResume { waited_us: u64 },
    #[error("no acknowledged progress for {waited_us} µs with records {acked}..{head} pending")]
    NoProgress {
        acked: u64,
        head: u64,
        waited_us: u64,
    },
    #[error("the sender has not answered Resume for {waited_us} µs")]
    NoResumed { waited_us: u64 },
    #[error("nothing arrived for {waited_us} µs at {applied} with the sender at {remote_head}")]
    NoData {
        applied: u64,
        remote_head: u64,
        waited_us: u64,
    },
    #[error("the peer sent a malformed batch: {detail}")]
    Malformed { detail: String },
    #[error("record {seq} could not be encoded: {error}")]
    Unencodable { seq: u64, error: String },
}

/// A driver or peer broke the protocol; the state machine stayed consistent and ignored
/// the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("message for the {0:?} handed to the other state machine")]
    Misrouted(Addressee),
    #[error("peer reports {applied} applied but the outbox ends at {head}")]
    PeerAhead { applied: u64, head: u64 },
    #[error("read from {from} answered with lost span {first}..={last}, which does not hold it")]
    BadLostSpan { from: u64, first: u64, last: u64 },
    #[error("driver confirmed an apply ending at {last_seq}, expected {expected:?}")]
    AppliedOutOfOrder {
        last_seq: u64,
        expected: Option<u64>,
    },
    #[error("malformed batch: {0}")]
    MalformedBatch(String),
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    #[error(transparent)]
    Message(#[from] message::MessageError),
}
