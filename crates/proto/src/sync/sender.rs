//! The sending end of one sync stream: reads the outbox through its driver, cuts batches,
//! keeps a window of unacknowledged bytes in flight, goes back to the first unacknowledged
//! record on timeout or resync, reports retention losses as [`Message::Gap`], and asks for a
//! reconnect when the peer stops making progress.
//!
//! ```text
//!  driver                      Sender                          peer Receiver
//!    |-- outbox_head(h) ---------->|                                  |
//!    |                             |<------------ Resume{s, applied} -|
//!    |<-- Lease{upto} -------------|  (driver persists, on_lease)     |
//!    |<-- Read{from, max} ---------|                                  |
//!    |-- on_read(Records|Lost) --->|-- Batch / Gap{s, first..last} -->|
//!    |                             |<--------------- Ack{s, applied} -|
//!    |<-- Acked{applied} ----------|  (driver persists, trims outbox) |
//!    |-- tick(now) --------------->|  go-back-N, linger, stall        |
//! ```
//!
//! Invariants:
//! - Records go out in sequence order, each batch starting right after the previous one of
//!   the same session; after a timeout or `Resume` the next batch starts at `acked + 1`.
//! - Nothing beyond the durable send lease is read or sent, so that the store can exempt
//!   `(acked, lease]` from retention and every loss it reports is exact (see `docs/sync.md`).
//! - At most `window_bytes` of encoded messages and `window_records` records are
//!   unacknowledged, except that one batch may always be in flight, so that a batch larger
//!   than the window still goes.
//! - `acked` only grows, and only from what the receiver reported as durably applied.
//!
//! Deliberately absent: storage, sockets, clocks. Every method takes `now` (µs).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::codec;
use super::message::{self, Message};
use super::record::{LostSpan, Record};
use super::{ReconnectReason, SyncError};

/// Tuning of a [`Sender`]. Every default suits a site on an ordinary Internet link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SenderConfig {
    /// Most bytes of encoded, unacknowledged messages in flight. Default 1 MiB.
    pub window_bytes: u64,
    /// Most records in flight, unacknowledged. Compressed points are so small (about two
    /// bytes each) that the byte window alone lets half a million through, which the
    /// receiver holds decoded until they are applied. Default 65,536.
    pub window_records: u64,
    /// Most records in one batch. Default 4,096.
    pub max_batch_records: usize,
    /// Most estimated bytes (before compression) in one batch. Default 256 KiB.
    pub max_batch_bytes: usize,
    /// How long a partial batch waits for more records once the outbox is drained, while
    /// an earlier batch is still unacknowledged (with nothing in flight it goes at once, as
    /// Nagle's algorithm does: low latency when idle, full batches under load).
    /// Default 10 ms.
    pub linger_us: u64,
    /// How long the oldest unacknowledged batch waits before going back to it. Default 10 s.
    pub retransmit_timeout_us: u64,
    /// How long the link may stay up with a backlog and no acknowledged progress (or no
    /// `Resume` at all) before the driver is asked to reconnect. Default 60 s.
    pub stall_timeout_us: u64,
    /// How far past the next record a send lease reaches, in records. Default 65,536.
    pub lease_records: u64,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            window_bytes: 1024 * 1024,
            window_records: 65_536,
            max_batch_records: 4096,
            max_batch_bytes: 256 * 1024,
            linger_us: 10_000,
            retransmit_timeout_us: 10_000_000,
            stall_timeout_us: 60_000_000,
            lease_records: 65_536,
        }
    }
}

/// What the driver restores a [`Sender`] from after a start or crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderDurable {
    /// The last persisted `Acked` (a lower bound of the receiver's cursor is enough).
    pub acked: u64,
    /// The highest sequence number in the outbox (0 when it has never held a record).
    pub head: u64,
    /// The last persisted send lease.
    pub lease: u64,
}

/// What the driver must do for a [`Sender`].
#[derive(Debug, Clone, PartialEq)]
pub enum SenderOutput {
    /// Send these bytes (an encoded [`Message`]) to the peer over the channel.
    Send(Vec<u8>),
    /// Read the outbox from `from` (at most `max_records`) and answer with
    /// [`Sender::on_read`].
    Read { from: u64, max_records: usize },
    /// The receiver has durably applied everything up to `applied`: persist it (lazily is
    /// fine, it is a lower bound) and delete delivered records up to it.
    Acked { applied: u64 },
    /// Persist the send lease `upto`, then call [`Sender::on_lease`]. Until the store
    /// forgets it, retention must keep records in `(acked, upto]`.
    Lease { upto: u64 },
    /// The link looks stuck: drop it and connect again (then call `link_down`/`link_up`).
    Reconnect { reason: ReconnectReason },
}

/// The driver's answer to [`SenderOutput::Read`].
#[derive(Debug, Clone, PartialEq)]
pub enum ReadChunk {
    /// Consecutive records starting at `from` (fewer than asked is fine).
    Records { from: u64, records: Vec<Record> },
    /// `from` lies in a span retention dropped; the span as the store recorded it.
    Lost { from: u64, span: LostSpan },
}

/// Counters and gauges for the site's lag/backlog/ETA display and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderStats {
    pub head: u64,
    pub acked: u64,
    /// Records appended and not yet acknowledged.
    pub backlog_records: u64,
    /// Age of the oldest unacknowledged record, µs (from `outbox_head` times).
    pub oldest_unacked_age_us: Option<u64>,
    pub in_flight_bytes: u64,
    pub in_flight_batches: usize,
    pub session_up: bool,
    pub bytes_sent: u64,
    pub batches_sent: u64,
    pub records_sent: u64,
    pub gaps_sent: u64,
    /// Times the sender went back to the first unacknowledged record.
    pub go_backs: u64,
}

#[derive(Debug, Clone)]
struct Flight {
    first: u64,
    last: u64,
    bytes: u64,
    sent_at: u64,
    records: u64,
    gap: bool,
}

#[derive(Debug)]
struct Session {
    id: u64,
    /// The next sequence number to read.
    next: u64,
    flights: VecDeque<Flight>,
    in_flight_bytes: u64,
    in_flight_records: u64,
    /// Encoded, but waiting for the window to open.
    ready: Option<(Flight, Vec<u8>)>,
    /// Records read and not yet encoded, starting at `staged_first`.
    staged: Vec<Record>,
    staged_first: u64,
    staged_bytes: usize,
    /// When the first staged record was read: the linger clock.
    staged_since: u64,
    /// A lost span that follows the staged records.
    staged_gap: Option<LostSpan>,
    /// `from` of the outstanding read.
    read_pending: Option<u64>,
    /// When the driver answered a read with nothing: read again on `outbox_head`, or
    /// [`DRY_READ_RETRY_US`] later.
    read_dry_at: Option<u64>,
}

/// How long after a read that came back empty (the store could not read what its head
/// promised) the sender reads again, unless an append wakes it first.
pub const DRY_READ_RETRY_US: u64 = 100_000;

impl Session {
    fn new(id: u64, next: u64) -> Self {
        Self {
            id,
            next,
            flights: VecDeque::new(),
            in_flight_bytes: 0,
            in_flight_records: 0,
            ready: None,
            staged: Vec::new(),
            staged_first: next,
            staged_bytes: 0,
            staged_since: 0,
            staged_gap: None,
            read_pending: None,
            read_dry_at: None,
        }
    }

    /// Forgets everything in flight and continues at `from` (go-back-N).
    fn restart_at(&mut self, from: u64) {
        *self = Session::new(self.id, from);
    }
}

/// The sending end of one sync stream (see the module docs).
#[derive(Debug)]
pub struct Sender {
    /// The limits in force: `configured`, or lower under [`Sender::limit_window`].
    cfg: SenderConfig,
    configured: SenderConfig,
    acked: u64,
    head: u64,
    lease: u64,
    lease_requested: u64,
    link_up_at: Option<u64>,
    /// Last time the stream made progress (or had nothing to do), for stall detection.
    progress_at: u64,
    session: Option<Session>,
    /// `(head, time)` samples for the age of the oldest unacknowledged record.
    head_times: VecDeque<(u64, u64)>,
    out: VecDeque<SenderOutput>,
    stats: SenderStats,
    encoder: codec::Encoder,
}

impl Sender {
    /// Rebuilds the sender from what the store kept.
    pub fn new(cfg: SenderConfig, durable: SenderDurable, now: u64) -> Self {
        let head = durable.head.max(durable.acked);
        let mut head_times = VecDeque::new();
        if head > durable.acked {
            head_times.push_back((head, now));
        }
        Self {
            configured: cfg.clone(),
            cfg,
            acked: durable.acked,
            head,
            lease: durable.lease,
            lease_requested: durable.lease,
            link_up_at: None,
            progress_at: now,
            session: None,
            head_times,
            out: VecDeque::new(),
            stats: SenderStats::default(),
            encoder: codec::Encoder::new(),
        }
    }

    /// Limits the bytes in flight to `window` and the estimated bytes of a batch to `batch`
    /// (`None`: the configured limits again). A driver that paces its sends to a bandwidth
    /// budget sets the window to a few seconds of the budget, so that what is in flight always
    /// leaves well within the retransmit timeout, and the batch to a fraction of a second of
    /// it, so that one message never holds the budget for long. One batch may always be in
    /// flight.
    pub fn limit_window(&mut self, now: u64, limits: Option<(u64, usize)>) {
        let base = &self.configured;
        self.cfg.window_bytes =
            limits.map_or(base.window_bytes, |(w, _)| w.clamp(1, base.window_bytes));
        self.cfg.max_batch_bytes = limits.map_or(base.max_batch_bytes, |(_, b)| {
            b.clamp(1, base.max_batch_bytes)
        });
        self.pump(now);
    }

    /// The next thing the driver must do, if any. Call until `None` after every input.
    pub fn poll_output(&mut self) -> Option<SenderOutput> {
        self.out.pop_front()
    }

    /// The channel to the peer is up; wait for its `Resume`.
    pub fn link_up(&mut self, now: u64) {
        self.link_up_at = Some(now);
        self.session = None;
    }

    /// The channel is gone: everything in flight is forgotten (go-back-N on the next session).
    pub fn link_down(&mut self, _now: u64) {
        self.link_up_at = None;
        self.session = None;
    }

    /// The outbox now reaches `head` (called after every committed append).
    pub fn outbox_head(&mut self, now: u64, head: u64) {
        if head <= self.head {
            return;
        }
        if self.head <= self.acked {
            self.progress_at = now;
        }
        self.head = head;
        self.head_times.push_back((head, now));
        if self.head_times.len() > 1024 {
            // Keep every other sample: the age stays a close upper bound.
            let kept: VecDeque<_> = self.head_times.iter().copied().step_by(2).collect();
            self.head_times = kept;
        }
        if let Some(s) = &mut self.session {
            s.read_dry_at = None;
        }
        self.pump(now);
    }

    /// A message for the sender (`Resume` or `Ack`) arrived from the peer.
    pub fn on_message(&mut self, now: u64, msg: Message) -> Result<(), SyncError> {
        match msg {
            Message::Resume { session, applied } => {
                if applied > self.head {
                    return Err(SyncError::PeerAhead {
                        applied,
                        head: self.head,
                    });
                }
                self.advance_acked(now, applied);
                if self.link_up_at.is_none() {
                    self.link_up_at = Some(now);
                }
                let from = self.acked + 1;
                match &mut self.session {
                    Some(s) if s.id == session => {
                        self.stats.go_backs += 1;
                        s.restart_at(from);
                    }
                    _ => self.session = Some(Session::new(session, from)),
                }
                self.progress_at = now;
                self.send(&Message::Resumed {
                    session,
                    head: self.head,
                })?;
                self.pump(now);
                Ok(())
            }
            Message::Ack { applied, .. } => {
                if applied > self.head {
                    return Err(SyncError::PeerAhead {
                        applied,
                        head: self.head,
                    });
                }
                self.advance_acked(now, applied);
                self.pump(now);
                Ok(())
            }
            other => Err(SyncError::Misrouted(other.addressee())),
        }
    }

    /// The driver persisted the lease `upto`.
    pub fn on_lease(&mut self, now: u64, upto: u64) {
        self.lease = self.lease.max(upto);
        self.pump(now);
    }

    /// The driver's answer to [`SenderOutput::Read`]. Answers to reads the sender no longer
    /// waits for (after a go-back) are ignored.
    pub fn on_read(&mut self, now: u64, chunk: ReadChunk) -> Result<(), SyncError> {
        let Some(s) = &mut self.session else {
            return Ok(());
        };
        let from = match &chunk {
            ReadChunk::Records { from, .. } | ReadChunk::Lost { from, .. } => *from,
        };
        if s.read_pending != Some(from) {
            return Ok(());
        }
        s.read_pending = None;
        match chunk {
            ReadChunk::Records { mut records, .. } => {
                let max = self.head.min(self.lease).saturating_sub(from - 1);
                records.truncate(usize::try_from(max).unwrap_or(usize::MAX));
                if records.is_empty() {
                    s.read_dry_at = Some(now);
                    return Ok(());
                }
                if s.staged.is_empty() {
                    s.staged_first = from;
                    s.staged_since = now;
                }
                s.next = from + records.len() as u64;
                s.staged_bytes += records.iter().map(Record::estimated_size).sum::<usize>();
                s.staged.extend(records);
            }
            ReadChunk::Lost { span, .. } => {
                if span.first_seq > from || span.last_seq < from {
                    return Err(SyncError::BadLostSpan {
                        from,
                        first: span.first_seq,
                        last: span.last_seq,
                    });
                }
                s.next = span.last_seq + 1;
                s.staged_gap = Some(span);
            }
        }
        self.pump(now);
        Ok(())
    }

    /// Timers: retransmission (go-back-N), linger, stall detection.
    pub fn tick(&mut self, now: u64) {
        let rto = self.cfg.retransmit_timeout_us;
        let acked = self.acked;
        if let Some(s) = &mut self.session {
            if s.read_dry_at
                .is_some_and(|at| now >= at.saturating_add(DRY_READ_RETRY_US))
            {
                s.read_dry_at = None;
            }
            if s.flights
                .front()
                .is_some_and(|f| now >= f.sent_at.saturating_add(rto))
            {
                self.stats.go_backs += 1;
                s.restart_at(acked + 1);
            }
        }
        if let Some(up) = self.link_up_at {
            let stall = self.cfg.stall_timeout_us;
            let reason = match &self.session {
                None if now >= up.saturating_add(stall) => Some(ReconnectReason::NoResume {
                    waited_us: now - up,
                }),
                Some(_)
                    if self.head > self.acked && now >= self.progress_at.saturating_add(stall) =>
                {
                    Some(ReconnectReason::NoProgress {
                        acked: self.acked,
                        head: self.head,
                        waited_us: now - self.progress_at,
                    })
                }
                _ => None,
            };
            if let Some(reason) = reason {
                self.link_up_at = None;
                self.session = None;
                self.out.push_back(SenderOutput::Reconnect { reason });
                return;
            }
        }
        self.pump(now);
    }

    /// When the driver should call [`Sender::tick`] next, if anything is waiting on time.
    pub fn next_timeout(&self) -> Option<u64> {
        let mut t: Option<u64> = None;
        let mut at = |x: u64| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(s) = &self.session {
            if let Some(f) = s.flights.front() {
                at(f.sent_at.saturating_add(self.cfg.retransmit_timeout_us));
            }
            // Linger matters only for a partial batch not already blocked by the window, once
            // everything readable is staged (until then, the pending read's answer pumps).
            if !s.staged.is_empty()
                && !s.flights.is_empty()
                && s.ready.is_none()
                && s.staged_gap.is_none()
                && s.next > self.head.min(self.lease)
                && s.staged.len() < self.cfg.max_batch_records
                && s.staged_bytes < self.cfg.max_batch_bytes
            {
                at(s.staged_since.saturating_add(self.cfg.linger_us));
            }
            if let Some(dry) = s.read_dry_at {
                at(dry.saturating_add(DRY_READ_RETRY_US));
            }
            if self.head > self.acked {
                at(self.progress_at.saturating_add(self.cfg.stall_timeout_us));
            }
        } else if let Some(up) = self.link_up_at {
            at(up.saturating_add(self.cfg.stall_timeout_us));
        }
        t
    }

    pub fn stats(&self, now: u64) -> SenderStats {
        let mut st = self.stats;
        st.head = self.head;
        st.acked = self.acked;
        st.backlog_records = self.head - self.acked;
        st.oldest_unacked_age_us = self
            .head_times
            .iter()
            .find(|(h, _)| *h > self.acked)
            .map(|(_, at)| now.saturating_sub(*at));
        if let Some(s) = &self.session {
            st.in_flight_bytes = s.in_flight_bytes;
            st.in_flight_batches = s.flights.len();
            st.session_up = true;
        }
        st
    }

    /// The receiver's durable cursor as far as the sender knows.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    fn advance_acked(&mut self, now: u64, applied: u64) {
        if applied <= self.acked {
            return;
        }
        self.acked = applied;
        self.progress_at = now;
        while self.head_times.front().is_some_and(|(h, _)| *h <= applied) {
            self.head_times.pop_front();
        }
        self.out.push_back(SenderOutput::Acked { applied });
        let Some(s) = &mut self.session else {
            return;
        };
        while s.flights.front().is_some_and(|f| f.last <= applied) {
            if let Some(f) = s.flights.pop_front() {
                s.in_flight_bytes -= f.bytes;
                s.in_flight_records -= f.records;
            }
        }
        // The receiver is further than the front of what is in flight (an acknowledgement
        // of an earlier round): anything overlapping would be refused, so continue after it.
        let front = s
            .flights
            .front()
            .map(|f| f.first)
            .or(s.ready.as_ref().map(|(f, _)| f.first))
            .unwrap_or(s.staged_first);
        if applied >= front {
            s.restart_at(applied + 1);
        }
    }

    fn send(&mut self, msg: &Message) -> Result<usize, SyncError> {
        let bytes = message::encode(msg)?;
        let n = bytes.len();
        self.stats.bytes_sent += n as u64;
        self.out.push_back(SenderOutput::Send(bytes));
        Ok(n)
    }

    /// Moves records along: encode due batches, send what the window allows, read more,
    /// extend the lease.
    fn pump(&mut self, now: u64) {
        let cfg = &self.cfg;
        let readable = self.head.min(self.lease);
        let head = self.head;
        let Some(s) = &mut self.session else {
            return;
        };
        loop {
            if let Some((f, _)) = &s.ready {
                let fits = s.in_flight_bytes + f.bytes <= cfg.window_bytes
                    && s.in_flight_records + f.records <= cfg.window_records;
                if s.flights.is_empty() || fits {
                    if let Some((mut f, bytes)) = s.ready.take() {
                        f.sent_at = now;
                        s.in_flight_bytes += f.bytes;
                        s.in_flight_records += f.records;
                        self.stats.bytes_sent += f.bytes;
                        if f.gap {
                            self.stats.gaps_sent += 1;
                        } else {
                            self.stats.batches_sent += 1;
                            self.stats.records_sent += f.records;
                        }
                        s.flights.push_back(f);
                        self.out.push_back(SenderOutput::Send(bytes));
                    }
                    continue;
                }
                break;
            }
            if !s.staged.is_empty() {
                let full = s.staged.len() >= cfg.max_batch_records
                    || s.staged_bytes >= cfg.max_batch_bytes;
                let drained = s.staged_gap.is_some() || s.next > readable;
                let lingered =
                    s.flights.is_empty() || now >= s.staged_since.saturating_add(cfg.linger_us);
                if !(full || s.staged_gap.is_some() || (drained && lingered)) {
                    break;
                }
                match encode_batch(&mut self.encoder, s, head, cfg.max_batch_bytes) {
                    Ok(()) => continue,
                    Err(e) => {
                        // Only a bug gets here (records are validated on ingest): stop the
                        // session rather than skip records; the driver sees the reason.
                        self.out.push_back(SenderOutput::Reconnect {
                            reason: ReconnectReason::Unencodable {
                                seq: s.staged_first,
                                error: e.to_string(),
                            },
                        });
                        self.session = None;
                        self.link_up_at = None;
                        return;
                    }
                }
            }
            if let Some(span) = s.staged_gap.take() {
                let msg = Message::Gap {
                    session: s.id,
                    span: span.clone(),
                    head,
                };
                match message::encode(&msg) {
                    Ok(bytes) => {
                        let f = Flight {
                            first: span.first_seq,
                            last: span.last_seq,
                            bytes: bytes.len() as u64,
                            sent_at: now,
                            records: 0,
                            gap: true,
                        };
                        s.staged_first = span.last_seq + 1;
                        s.ready = Some((f, bytes));
                        continue;
                    }
                    Err(e) => {
                        self.out.push_back(SenderOutput::Reconnect {
                            reason: ReconnectReason::Unencodable {
                                seq: span.first_seq,
                                error: e.to_string(),
                            },
                        });
                        self.session = None;
                        self.link_up_at = None;
                        return;
                    }
                }
            }
            break;
        }
        // Read ahead only what fits in one batch, and only while the window has room.
        if s.read_pending.is_none()
            && s.read_dry_at.is_none()
            && s.staged_gap.is_none()
            && s.ready.is_none()
            && s.next <= readable
            && s.staged.len() < cfg.max_batch_records
            && s.staged_bytes < cfg.max_batch_bytes
        {
            let room = (cfg.max_batch_records - s.staged.len()) as u64;
            let max = room.min(readable - s.next + 1);
            s.read_pending = Some(s.next);
            if s.staged.is_empty() {
                s.staged_first = s.next;
            }
            self.out.push_back(SenderOutput::Read {
                from: s.next,
                max_records: usize::try_from(max).unwrap_or(usize::MAX),
            });
        }
        // Keep the lease half a lease ahead of the read position.
        let want = s.next.saturating_sub(1) + cfg.lease_records;
        if self.lease_requested <= self.lease
            && self.head > self.lease
            && self.lease < s.next.saturating_sub(1) + cfg.lease_records / 2
        {
            self.lease_requested = want;
            self.out.push_back(SenderOutput::Lease { upto: want });
        }
    }
}

/// Encodes the staged records as one batch and makes it `ready`: the longest prefix whose
/// estimated size stays within `max_bytes` (at least one record; a read may stage more than
/// a batch holds, and a paced sender relies on the cut), halved until it fits a message.
fn encode_batch(
    enc: &mut codec::Encoder,
    s: &mut Session,
    head: u64,
    max_bytes: usize,
) -> Result<(), SyncError> {
    let mut n = 0;
    let mut bytes = 0;
    for r in &s.staged {
        bytes += r.estimated_size();
        if n > 0 && bytes > max_bytes {
            break;
        }
        n += 1;
    }
    loop {
        let first = s.staged_first;
        let last = first + n as u64 - 1;
        let payload = enc.encode(&s.staged[..n])?;
        let msg = Message::Batch {
            session: s.id,
            first_seq: first,
            last_seq: last,
            head,
            payload,
        };
        match message::encode(&msg) {
            Ok(bytes) => {
                let f = Flight {
                    first,
                    last,
                    bytes: bytes.len() as u64,
                    sent_at: 0,
                    records: n as u64,
                    gap: false,
                };
                let rest = s.staged.split_off(n);
                s.staged = rest;
                s.staged_first = last + 1;
                s.staged_bytes = s.staged.iter().map(Record::estimated_size).sum();
                s.ready = Some((f, bytes));
                return Ok(());
            }
            Err(message::MessageError::TooLarge { .. }) if n > 1 => n /= 2,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Identity, ResourceName, Value};
    use crate::sync::record::{Point, ResourceLoss};

    fn cfg() -> SenderConfig {
        SenderConfig {
            window_bytes: 1 << 20,
            window_records: 1 << 20,
            max_batch_records: 3,
            max_batch_bytes: 1 << 20,
            linger_us: 10,
            retransmit_timeout_us: 1_000,
            stall_timeout_us: 10_000,
            lease_records: 100,
        }
    }

    fn rec(i: u64) -> Record {
        Record::Point(Point {
            device: Identity::parse("d").unwrap(),
            resource: ResourceName::parse("r").unwrap(),
            t: i as i64,
            value: Value::Integer(i as i64),
        })
    }

    /// Drains outputs, answering reads from an outbox of `head` records and leases at once;
    /// returns the messages sent.
    fn run(s: &mut Sender, now: u64, lost: Option<&LostSpan>) -> Vec<Message> {
        let mut sent = Vec::new();
        while let Some(o) = s.poll_output() {
            match o {
                SenderOutput::Send(b) => sent.push(message::decode(&b).unwrap()),
                SenderOutput::Read { from, max_records } => {
                    let chunk = match lost.filter(|l| l.first_seq <= from && from <= l.last_seq) {
                        Some(l) => ReadChunk::Lost {
                            from,
                            span: l.clone(),
                        },
                        None => {
                            let end = lost
                                .map(|l| l.first_seq)
                                .filter(|f| *f > from)
                                .unwrap_or(u64::MAX)
                                .min(from + max_records as u64);
                            ReadChunk::Records {
                                from,
                                records: (from..end).map(rec).collect(),
                            }
                        }
                    };
                    s.on_read(now, chunk).unwrap();
                }
                SenderOutput::Lease { upto } => s.on_lease(now, upto),
                SenderOutput::Acked { .. } | SenderOutput::Reconnect { .. } => {}
            }
        }
        sent
    }

    fn ranges(msgs: &[Message]) -> Vec<(u64, u64)> {
        msgs.iter()
            .filter_map(|m| match m {
                Message::Batch {
                    first_seq,
                    last_seq,
                    ..
                } => Some((*first_seq, *last_seq)),
                Message::Gap { span, .. } => Some((span.first_seq, span.last_seq)),
                _ => None,
            })
            .collect()
    }

    fn started(head: u64, acked: u64) -> Sender {
        let mut s = Sender::new(
            cfg(),
            SenderDurable {
                acked,
                head,
                lease: 0,
            },
            0,
        );
        s.link_up(0);
        s.on_message(
            0,
            Message::Resume {
                session: 9,
                applied: acked,
            },
        )
        .unwrap();
        s
    }

    #[test]
    fn with_nothing_in_flight_a_partial_batch_goes_at_once() {
        let mut s = started(2, 0);
        assert_eq!(ranges(&run(&mut s, 0, None)), vec![(1, 2)]);
    }

    #[test]
    fn full_batches_go_at_once_and_the_tail_after_the_linger() {
        let mut s = started(5, 0);
        let sent = run(&mut s, 0, None);
        assert!(matches!(
            sent[0],
            Message::Resumed {
                session: 9,
                head: 5
            }
        ));
        assert_eq!(ranges(&sent), vec![(1, 3)]);
        s.tick(5);
        assert_eq!(ranges(&run(&mut s, 5, None)), vec![]);
        s.tick(10);
        assert_eq!(ranges(&run(&mut s, 10, None)), vec![(4, 5)]);
    }

    #[test]
    fn a_limited_window_holds_batches_until_acknowledged_and_lifting_it_releases_them() {
        let mut s = started(9, 0);
        // A budget's window of 1 byte: one batch in flight at a time.
        s.limit_window(0, Some((1, 1 << 20)));
        let sent = run(&mut s, 0, None);
        assert_eq!(ranges(&sent), vec![(1, 3)]);
        s.on_message(
            1,
            Message::Ack {
                session: 9,
                applied: 3,
            },
        )
        .unwrap();
        assert_eq!(ranges(&run(&mut s, 1, None)), vec![(4, 6)]);
        // Lifted: the configured window again, everything readable goes.
        s.limit_window(2, None);
        assert_eq!(ranges(&run(&mut s, 2, None)), vec![(7, 9)]);
        assert_eq!(s.cfg, s.configured);
    }

    #[test]
    fn a_batch_holds_no_more_estimated_bytes_than_its_limit_whatever_a_read_staged() {
        let mut s = started(6, 0);
        // Two records' worth (18 estimated bytes each), though a read stages three.
        s.limit_window(0, Some((1 << 20, 2 * rec(1).estimated_size())));
        assert_eq!(ranges(&run(&mut s, 0, None)), vec![(1, 2), (3, 4), (5, 6)]);
        // One record larger than the limit still goes, alone.
        let mut s = started(2, 0);
        s.limit_window(0, Some((1 << 20, 1)));
        assert_eq!(ranges(&run(&mut s, 0, None)), vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn the_window_holds_batches_until_acknowledged() {
        // Batches of 3 records; a window of 1 byte, or of 5 records, holds one of them.
        let bytes: fn(&mut SenderConfig) = |c| c.window_bytes = 1;
        let records: fn(&mut SenderConfig) = |c| c.window_records = 5;
        for narrow in [bytes, records] {
            let mut s = started(9, 0);
            narrow(&mut s.cfg);
            assert_eq!(ranges(&run(&mut s, 0, None)), vec![(1, 3)]);
            assert_eq!(s.stats(0).in_flight_batches, 1);
            s.on_message(
                1,
                Message::Ack {
                    session: 9,
                    applied: 3,
                },
            )
            .unwrap();
            assert_eq!(ranges(&run(&mut s, 1, None)), vec![(4, 6)]);
            assert_eq!(s.acked(), 3);
        }
    }

    #[test]
    fn timeout_and_resume_go_back_to_the_first_unacknowledged() {
        let mut s = started(6, 0);
        assert_eq!(ranges(&run(&mut s, 0, None)), vec![(1, 3), (4, 6)]);
        s.on_message(
            1,
            Message::Ack {
                session: 9,
                applied: 3,
            },
        )
        .unwrap();
        run(&mut s, 1, None);
        s.tick(1_000);
        assert_eq!(ranges(&run(&mut s, 1_000, None)), vec![(4, 6)]);
        s.on_message(
            1_001,
            Message::Resume {
                session: 9,
                applied: 3,
            },
        )
        .unwrap();
        assert_eq!(ranges(&run(&mut s, 1_001, None)), vec![(4, 6)]);
        assert_eq!(s.stats(1_001).go_backs, 2);
    }

    #[test]
    fn a_lost_span_is_sent_as_a_gap_then_sending_continues() {
        let lost = LostSpan {
            first_seq: 3,
            last_seq: 7,
            resources: vec![ResourceLoss {
                resource: ResourceName::parse("r").unwrap(),
                points: 5,
                devices: 1,
                from_us: 3,
                until_us: 7,
            }],
            device_changes: 0,
        };
        let mut s = started(9, 0);
        let sent = run(&mut s, 0, Some(&lost));
        assert_eq!(ranges(&sent), vec![(1, 2), (3, 7)]);
        assert!(matches!(&sent[2], Message::Gap { span, .. } if *span == lost));
        s.tick(10);
        assert_eq!(ranges(&run(&mut s, 10, Some(&lost))), vec![(8, 9)]);
    }

    #[test]
    fn nothing_is_read_beyond_the_lease() {
        let mut s = Sender::new(cfg(), SenderDurable::default(), 0);
        s.link_up(0);
        s.on_message(
            0,
            Message::Resume {
                session: 1,
                applied: 0,
            },
        )
        .unwrap();
        s.outbox_head(0, 50);
        let mut reads = Vec::new();
        while let Some(o) = s.poll_output() {
            if let SenderOutput::Read { .. } = o {
                reads.push(o);
            }
        }
        assert!(reads.is_empty(), "read before the lease was persisted");
        s.on_lease(0, 2);
        assert_eq!(
            s.poll_output(),
            Some(SenderOutput::Read {
                from: 1,
                max_records: 2
            })
        );
    }

    #[test]
    fn a_stalled_link_asks_for_a_reconnect() {
        let mut s = started(3, 0);
        run(&mut s, 0, None);
        s.tick(999);
        run(&mut s, 999, None);
        s.on_message(
            1_500,
            Message::Resume {
                session: 9,
                applied: 0,
            },
        )
        .unwrap();
        run(&mut s, 1_500, None);
        s.tick(20_000);
        let reconnect = std::iter::from_fn(|| s.poll_output())
            .find(|o| matches!(o, SenderOutput::Reconnect { .. }));
        assert!(matches!(
            reconnect,
            Some(SenderOutput::Reconnect {
                reason: ReconnectReason::NoProgress {
                    acked: 0,
                    head: 3,
                    ..
                }
            })
        ));
        let mut fresh = Sender::new(cfg(), SenderDurable::default(), 0);
        fresh.link_up(0);
        fresh.tick(10_000);
        assert!(matches!(
            fresh.poll_output(),
            Some(SenderOutput::Reconnect {
                reason: ReconnectReason::NoResume { .. }
            })
        ));
    }

    #[test]
    fn acknowledgements_beyond_the_head_are_refused() {
        let mut s = started(3, 0);
        assert_eq!(
            s.on_message(
                0,
                Message::Ack {
                    session: 9,
                    applied: 4
                }
            ),
            Err(SyncError::PeerAhead {
                applied: 4,
                head: 3
            })
        );
        assert_eq!(s.acked(), 0);
    }
}
