//! The sending end of one sync stream: reads the outbox through its driver, cuts batches,
//! keeps a window of unacknowledged bytes in flight, goes back to the first unacknowledged
//! record on timeout or resync, reports retention losses as [`Message::Gap`], and asks for a
//! reconnect when the peer stops making progress. When its unsent backlog grows past
//! [`SenderConfig::live_after_records`] it opens a *live lane* at the head, so that new
//! records overtake the backlog, which drains behind them (docs/sync.md, "Two lanes").
//!
//! ```text
//!  driver                      Sender                          peer Receiver
//!    |-- outbox_head(h) ---------->|                                  |
//!    |                             |<------------ Resume{s, applied} -|
//!    |<-- Lease{upto} -------------|  (driver persists, on_lease)     |
//!    |<-- Read{from, max} ---------|                                  |
//!    |-- on_read(Records|Lost) --->|-- Batch / Gap{s, first..last} -->|  backlog lane
//!    |<-- OpenLive{records} -------|  (store: device snapshots, live lease; on_live_lease)
//!    |                             |-- Live / LiveGap{s, ..} -------->|  live lane, first
//!    |                             |<--- Ack{s, applied} / AckLanes --|
//!    |<-- Acked{applied} ----------|  (driver persists, trims outbox) |
//!    |-- tick(now) --------------->|  go-back-N per lane, linger, stall
//! ```
//!
//! Invariants:
//! - Each lane sends in sequence order, each batch starting right after the previous one
//!   of its lane in the session; after a timeout or `Resume` a lane starts again right after
//!   what the receiver reported holding. The backlog lane stops below the live lane.
//! - The lanes are defined by what the receiver holds ([`Held`]): the backlog lane is the
//!   hole `(applied, live_from)`, the live lane continues after `live_to`; the sender chooses
//!   only where a new live lane starts (its head, when the receiver holds no lane), and moves
//!   a lane the receiver has not reported holding to its head once the lane's own unsent
//!   part is as long as the backlog that opens one (an outage the session had not noticed
//!   yet would otherwise put the rest of the outage's backlog on the live lane).
//! - Nothing is read or sent outside the durable leases — `(.., lease]` and the live lease
//!   `[from, upto]` — so that the store can exempt them from retention and every loss it
//!   reports is exact (see `docs/sync.md`).
//! - Per lane, at most `window_bytes` of encoded messages and `window_records` records are
//!   unacknowledged, except that one batch may always be in flight, so that a batch larger
//!   than the window still goes. The live lane's messages come out before the backlog's.
//! - `acked` only grows, and only from what the receiver reported as durably applied.
//!
//! Deliberately absent: storage, sockets, clocks. Every method takes `now` (µs).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::codec;
use super::held::Held;
use super::message::{self, Message};
use super::record::{LostSpan, Record};
use super::{ReconnectReason, SyncError};

/// Tuning of a [`Sender`]. Every default suits a site on an ordinary Internet link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SenderConfig {
    /// Most bytes of encoded, unacknowledged messages in flight, per lane. Default 1 MiB.
    pub window_bytes: u64,
    /// Most records in flight, unacknowledged, per lane. Compressed points are so small
    /// (about two bytes each) that the byte window alone lets half a million through, which
    /// the receiver holds decoded until they are applied. Default 65,536.
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
    /// Unsent records beyond which a session opens a live lane at the head, so that new
    /// records do not wait behind them: one full window, about a second of sending on an
    /// ordinary link and a quarter of a second on a LAN. Default 65,536.
    pub live_after_records: u64,
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
            live_after_records: 65_536,
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
    /// The last persisted live lease `(from, upto)`, if a live lane was ever opened.
    pub live: Option<(u64, u64)>,
}

/// What the driver must do for a [`Sender`].
#[derive(Debug, Clone, PartialEq)]
pub enum SenderOutput {
    /// Send these bytes (an encoded [`Message`]) to the peer over the channel.
    Send(Vec<u8>),
    /// Send these bytes (a message of the live lane) to the peer, ahead of any `Send` that
    /// still waits (for a bandwidth budget, say).
    SendLive(Vec<u8>),
    /// Read the outbox from `from` (at most `max_records`) and answer with
    /// [`Sender::on_read`].
    Read { from: u64, max_records: usize },
    /// The receiver has durably applied everything up to `applied`: persist it (lazily is
    /// fine, it is a lower bound) and delete delivered records up to it.
    Acked { applied: u64 },
    /// Persist the send lease `upto`, then call [`Sender::on_lease`]. Until the store
    /// forgets it, retention must keep records in `(acked, upto]`.
    Lease { upto: u64 },
    /// Open a live lane at the head, in one transaction: re-append the current record of
    /// every device with a change not yet acknowledged (so that devices still go before
    /// the data that needs them), and persist the live lease from the first of them
    /// through `records` more; then call [`Sender::on_live_lease`] and
    /// [`Sender::outbox_head`].
    OpenLive { records: u64 },
    /// Persist the live lease `[from, upto]` (a live lease of another `from` first folds
    /// into the send lease), then call [`Sender::on_live_lease`]. Retention must keep the
    /// records of both leases until acknowledged.
    LiveLease { from: u64, upto: u64 },
    /// The link looks stuck: drop it and connect again (then call `link_down`/`link_up`).
    Reconnect { reason: ReconnectReason },
}

/// The driver's answer to [`SenderOutput::Read`].
#[derive(Debug, Clone, PartialEq)]
pub enum ReadChunk {
    /// Consecutive records starting at `from` (fewer than asked is fine).
    Records { from: u64, records: Vec<Record> },
    /// As `Records`, with `payload`: exactly these records as [`codec::encode`] gives them
    /// (so that [`codec::decode`] of it gives them back, in this order), which a store may
    /// already hold (the row it wrote them in). A batch of exactly these records sends it
    /// as it is instead of encoding them again.
    Encoded {
        from: u64,
        records: Vec<Record>,
        payload: Vec<u8>,
    },
    /// `from` lies in a span retention dropped; the span as the store recorded it.
    Lost { from: u64, span: LostSpan },
}

/// Counters and gauges for the site's lag/backlog/ETA display and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderStats {
    pub head: u64,
    pub acked: u64,
    /// Records appended and not yet acknowledged (both lanes).
    pub backlog_records: u64,
    /// Age of the oldest unacknowledged record, µs (from `outbox_head` times).
    pub oldest_unacked_age_us: Option<u64>,
    /// Where the live lane starts while the backlog drains behind it.
    pub live_from: Option<u64>,
    /// Records of the live lane not yet acknowledged (0 without a live lane).
    pub live_records: u64,
    /// Live lane records sent (counted in `records_sent` too).
    pub live_records_sent: u64,
    /// Live lanes opened.
    pub lanes_opened: u64,
    /// Live lanes moved to the head before the receiver held any of them.
    pub lanes_moved: u64,
    pub in_flight_bytes: u64,
    pub in_flight_batches: usize,
    pub session_up: bool,
    pub bytes_sent: u64,
    pub batches_sent: u64,
    pub records_sent: u64,
    pub gaps_sent: u64,
    /// Times the sender went back to the first unacknowledged record of a lane.
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

/// One lane of a session: the records it reads, stages, encodes and has in flight.
#[derive(Debug)]
struct Lane {
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
    /// The payload of exactly the staged records, when one read staged them all and came
    /// with it ([`ReadChunk::Encoded`]).
    staged_payload: Option<Vec<u8>>,
    /// `from` of the outstanding read.
    read_pending: Option<u64>,
    /// When the driver answered a read with nothing: read again on `outbox_head`, or
    /// [`DRY_READ_RETRY_US`] later.
    read_dry_at: Option<u64>,
}

#[derive(Debug)]
struct Session {
    id: u64,
    /// The backlog lane, or the only one.
    main: Lane,
    /// The live lane, while there is one.
    live: Option<Lane>,
}

/// How long after a read that came back empty (the store could not read what its head
/// promised) the sender reads again, unless an append wakes it first.
pub const DRY_READ_RETRY_US: u64 = 100_000;

impl Lane {
    fn new(next: u64) -> Self {
        Self {
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
            staged_payload: None,
            read_pending: None,
            read_dry_at: None,
        }
    }

    /// Drops the flights the receiver holds (`done`), and continues after `held` when the
    /// receiver is past the front of what is in flight (an acknowledgement of an earlier
    /// round: anything overlapping would be refused).
    fn acknowledge(&mut self, done: impl Fn(&Flight) -> bool, held: Option<u64>) {
        while self.flights.front().is_some_and(&done) {
            if let Some(f) = self.flights.pop_front() {
                self.in_flight_bytes -= f.bytes;
                self.in_flight_records -= f.records;
            }
        }
        let front = self
            .flights
            .front()
            .map(|f| f.first)
            .or(self.ready.as_ref().map(|(f, _)| f.first))
            .unwrap_or(self.staged_first);
        if let Some(held) = held
            && held >= front
        {
            *self = Lane::new(held + 1);
        }
    }
}

impl Session {
    fn lanes_mut(&mut self) -> impl Iterator<Item = &mut Lane> {
        std::iter::once(&mut self.main).chain(self.live.as_mut())
    }
}

/// The sending end of one sync stream (see the module docs).
#[derive(Debug)]
pub struct Sender {
    /// The limits in force: `configured`, or lower under [`Sender::limit_window`].
    cfg: SenderConfig,
    configured: SenderConfig,
    acked: u64,
    /// The receiver's live lane as it last reported it.
    peer_live: Option<(u64, u64)>,
    head: u64,
    lease: u64,
    lease_requested: u64,
    /// The durable live lease `(from, upto)` of the open live lane; `None` once the lanes
    /// merged (its `upto` is then folded into `lease`).
    live: Option<(u64, u64)>,
    /// A `LiveLease` or `OpenLive` waits for its answer.
    live_requested: bool,
    open_requested: bool,
    /// The head once the open lane's first records (the device snapshots an open appends)
    /// were in the outbox: only what is appended after it counts towards moving the lane,
    /// or a lane opened with more snapshots than the threshold would move for ever.
    lane_base: u64,
    /// An open was answered: the next `outbox_head` sets `lane_base`.
    lane_base_due: bool,
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

/// What a lane needs of the sender while it is pumped.
struct Pump<'a> {
    cfg: &'a SenderConfig,
    now: u64,
    session: u64,
    head: u64,
    /// The highest sequence number this lane may read now.
    readable: u64,
    /// Where the live lane starts, for its messages; `None` for the backlog lane.
    lane: Option<u64>,
    out: &'a mut VecDeque<SenderOutput>,
    stats: &'a mut SenderStats,
    encoder: &'a mut codec::Encoder,
}

impl Sender {
    /// Rebuilds the sender from what the store kept.
    pub fn new(cfg: SenderConfig, durable: SenderDurable, now: u64) -> Self {
        let head = durable.head.max(durable.acked);
        let mut head_times = VecDeque::new();
        if head > durable.acked {
            head_times.push_back((head, now));
        }
        let mut s = Self {
            configured: cfg.clone(),
            cfg,
            acked: durable.acked,
            peer_live: None,
            head,
            lease: durable.lease,
            lease_requested: durable.lease,
            live: durable.live,
            live_requested: false,
            open_requested: false,
            lane_base: head,
            lane_base_due: false,
            link_up_at: None,
            progress_at: now,
            session: None,
            head_times,
            out: VecDeque::new(),
            stats: SenderStats::default(),
            encoder: codec::Encoder::new(),
        };
        s.merge_if_caught_up();
        s
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
        if std::mem::take(&mut self.lane_base_due) {
            self.lane_base = self.lane_base.max(head);
        }
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
            for lane in s.lanes_mut() {
                lane.read_dry_at = None;
            }
        }
        self.pump(now);
    }

    /// A message for the sender (`Resume`, `Ack`, `ResumeLanes` or `AckLanes`) arrived from
    /// the peer.
    pub fn on_message(&mut self, now: u64, msg: Message) -> Result<(), SyncError> {
        let (session, held, resume) = match msg {
            Message::Resume { session, applied } => (session, Held::prefix(applied), true),
            Message::Ack { session, applied } => (session, Held::prefix(applied), false),
            Message::ResumeLanes {
                session,
                applied,
                live_from,
                live_to,
            } => (session, lanes(applied, live_from, live_to), true),
            Message::AckLanes {
                session,
                applied,
                live_from,
                live_to,
            } => (session, lanes(applied, live_from, live_to), false),
            other => return Err(SyncError::Misrouted(other.addressee())),
        };
        if held.top() > self.head {
            return Err(SyncError::PeerAhead {
                applied: held.top(),
                head: self.head,
            });
        }
        self.on_held(now, held);
        if resume {
            if self.link_up_at.is_none() {
                self.link_up_at = Some(now);
            }
            match &mut self.session {
                Some(s) if s.id == session => {
                    self.stats.go_backs += 1;
                    s.main = Lane::new(self.acked + 1);
                    s.live = None;
                }
                _ => {
                    self.session = Some(Session {
                        id: session,
                        main: Lane::new(self.acked + 1),
                        live: None,
                    })
                }
            }
            self.progress_at = now;
            self.send(&Message::Resumed {
                session,
                head: self.head,
            })?;
        }
        self.pump(now);
        Ok(())
    }

    /// The driver persisted the lease `upto`.
    pub fn on_lease(&mut self, now: u64, upto: u64) {
        self.lease = self.lease.max(upto);
        self.pump(now);
    }

    /// The driver persisted the live lease `[from, upto]` (answering `OpenLive` or
    /// `LiveLease`).
    pub fn on_live_lease(&mut self, now: u64, from: u64, upto: u64) {
        // An open that moved the lane: what the old one read and sent is the backlog's now.
        if self.open_requested
            && self.live.is_some_and(|(f, _)| f != from)
            && let Some(s) = &mut self.session
        {
            s.live = None;
        }
        if self.open_requested {
            self.lane_base_due = true;
        }
        self.open_requested = false;
        self.live_requested = false;
        match &mut self.live {
            Some((f, u)) if *f == from => *u = (*u).max(upto),
            _ => {
                if self.live.is_none() && self.peer_live.is_none() {
                    self.stats.lanes_opened += 1;
                }
                // The store folded a previous live lease into the send lease.
                if let Some((_, u)) = self.live {
                    self.lease = self.lease.max(u);
                }
                self.live = Some((from, upto));
            }
        }
        self.merge_if_caught_up();
        self.pump(now);
    }

    /// The driver's answer to [`SenderOutput::Read`]. Answers to reads the sender no longer
    /// waits for (after a go-back) are ignored.
    pub fn on_read(&mut self, now: u64, chunk: ReadChunk) -> Result<(), SyncError> {
        let from = match &chunk {
            ReadChunk::Records { from, .. }
            | ReadChunk::Encoded { from, .. }
            | ReadChunk::Lost { from, .. } => *from,
        };
        let live_end = self.head.min(self.leased_until(from));
        let main_end = self.main_end().min(self.leased_until(from));
        let Some(s) = &mut self.session else {
            return Ok(());
        };
        let (lane, end) = match &mut s.live {
            Some(l) if l.read_pending == Some(from) => (l, live_end),
            _ if s.main.read_pending == Some(from) => (&mut s.main, main_end),
            _ => return Ok(()),
        };
        lane.read_pending = None;
        let (records, payload) = match chunk {
            ReadChunk::Records { records, .. } => (Some(records), None),
            ReadChunk::Encoded {
                records, payload, ..
            } => (Some(records), Some(payload)),
            ReadChunk::Lost { span, .. } => {
                if span.first_seq > from || span.last_seq < from {
                    return Err(SyncError::BadLostSpan {
                        from,
                        first: span.first_seq,
                        last: span.last_seq,
                    });
                }
                lane.next = span.last_seq + 1;
                lane.staged_gap = Some(span);
                (None, None)
            }
        };
        if let Some(mut records) = records {
            let max = usize::try_from(end.saturating_sub(from - 1)).unwrap_or(usize::MAX);
            // A payload holds all of the records read, or it is of no use.
            let payload = payload.filter(|_| records.len() <= max);
            records.truncate(max);
            if records.is_empty() {
                lane.read_dry_at = Some(now);
                return Ok(());
            }
            if lane.staged.is_empty() {
                lane.staged_first = from;
                lane.staged_since = now;
                lane.staged_payload = payload;
            } else {
                lane.staged_payload = None;
            }
            lane.next = from + records.len() as u64;
            lane.staged_bytes += records.iter().map(Record::estimated_size).sum::<usize>();
            lane.staged.extend(records);
        }
        self.pump(now);
        Ok(())
    }

    /// Timers: retransmission (go-back-N per lane), linger, stall detection.
    pub fn tick(&mut self, now: u64) {
        let rto = self.cfg.retransmit_timeout_us;
        let (main_from, live_from) = (self.acked + 1, self.live_next());
        if let Some(s) = &mut self.session {
            for (lane, from) in [(Some(&mut s.main), main_from), (s.live.as_mut(), live_from)] {
                let Some(lane) = lane else { continue };
                if lane
                    .read_dry_at
                    .is_some_and(|at| now >= at.saturating_add(DRY_READ_RETRY_US))
                {
                    lane.read_dry_at = None;
                }
                if lane
                    .flights
                    .front()
                    .is_some_and(|f| now >= f.sent_at.saturating_add(rto))
                {
                    self.stats.go_backs += 1;
                    *lane = Lane::new(from);
                }
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
            let ends = [
                (
                    Some(&s.main),
                    self.main_end().min(self.leased_until(s.main.next)),
                ),
                (
                    s.live.as_ref(),
                    self.head
                        .min(self.leased_until(s.live.as_ref().map_or(0, |l| l.next))),
                ),
            ];
            for (lane, readable) in ends {
                let Some(l) = lane else { continue };
                if let Some(f) = l.flights.front() {
                    at(f.sent_at.saturating_add(self.cfg.retransmit_timeout_us));
                }
                // Linger matters only for a partial batch not already blocked by the window,
                // once everything readable is staged (until then, the pending read's answer
                // pumps).
                if !l.staged.is_empty()
                    && !l.flights.is_empty()
                    && l.ready.is_none()
                    && l.staged_gap.is_none()
                    && l.next > readable
                    && l.staged.len() < self.cfg.max_batch_records
                    && l.staged_bytes < self.cfg.max_batch_bytes
                {
                    at(l.staged_since.saturating_add(self.cfg.linger_us));
                }
                if let Some(dry) = l.read_dry_at {
                    at(dry.saturating_add(DRY_READ_RETRY_US));
                }
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
        let peer_live = self.peer_live.map_or(0, |(f, t)| t - f + 1);
        st.backlog_records = self.head - self.acked - peer_live;
        st.oldest_unacked_age_us = self
            .head_times
            .iter()
            .find(|(h, _)| *h > self.acked)
            .map(|(_, at)| now.saturating_sub(*at));
        st.live_from = self.lane_start();
        if st.live_from.is_some() {
            st.live_records = self.head.saturating_sub(self.live_next() - 1);
        }
        if let Some(s) = &self.session {
            st.in_flight_bytes = s.main.in_flight_bytes;
            st.in_flight_batches = s.main.flights.len();
            if let Some(l) = &s.live {
                st.in_flight_bytes += l.in_flight_bytes;
                st.in_flight_batches += l.flights.len();
            }
            st.session_up = true;
        }
        st
    }

    /// The receiver's durable cursor as far as the sender knows.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Where the live lane starts, while there is one: where the receiver's starts, or
    /// where this sender opened one the receiver has not seen yet.
    fn lane_start(&self) -> Option<u64> {
        match (self.live, self.peer_live) {
            (_, Some((from, _))) => Some(from),
            (Some((from, _)), None) if self.acked + 1 < from => Some(from),
            _ => None,
        }
    }

    /// The last record of the backlog lane (of the only lane without a live one).
    fn main_end(&self) -> u64 {
        self.lane_start()
            .map_or(self.head, |f| (f - 1).min(self.head))
    }

    /// Where the live lane continues after a go-back: after what the receiver holds of it.
    fn live_next(&self) -> u64 {
        match (self.peer_live, self.live) {
            (Some((_, to)), _) => to + 1,
            (None, Some((from, _))) => from,
            (None, None) => self.acked + 1,
        }
    }

    /// The last sequence number of the leased run that holds `from` (`from - 1` when none
    /// does): the send lease `..=lease` and the live lease `from..=upto`.
    fn leased_until(&self, from: u64) -> u64 {
        let lease = self.lease.max(self.acked);
        match self.live {
            Some((f, u)) if from <= lease && f <= lease + 1 => lease.max(u),
            _ if from <= lease => lease,
            Some((f, u)) if f <= from && from <= u => u,
            _ => from.saturating_sub(1),
        }
    }

    /// Once the receiver's prefix reaches the live lane, the lanes are one again: the live
    /// lease folds into the send lease (as the store's pin does) and the live lane's state
    /// becomes the only lane's.
    fn merge_if_caught_up(&mut self) {
        if self.lane_start().is_some() {
            return;
        }
        if let Some((_, upto)) = self.live.take() {
            self.lease = self.lease.max(upto);
            self.lease_requested = self.lease_requested.max(upto);
        }
        if let Some(s) = &mut self.session
            && let Some(live) = s.live.take()
        {
            s.main = live;
            let acked = self.acked;
            s.main.acknowledge(|f| f.last <= acked, Some(acked));
        }
    }

    /// What the receiver reported holding (durably): acknowledges what it covers.
    fn on_held(&mut self, now: u64, held: Held) {
        let known = Held {
            applied: self.acked,
            live: self.peer_live,
        };
        // What a receiver holds only grows, so a report holding fewer is an older one.
        if held.count() < known.count() {
            return;
        }
        if held.applied > self.acked {
            self.acked = held.applied;
            while self
                .head_times
                .front()
                .is_some_and(|(h, _)| *h <= held.applied)
            {
                self.head_times.pop_front();
            }
            self.out.push_back(SenderOutput::Acked {
                applied: held.applied,
            });
        }
        if held != known {
            self.progress_at = now;
        }
        self.peer_live = held.live;
        let acked = self.acked;
        let live_to = held.live.map(|(_, t)| t);
        let live_from = held.live.map(|(f, _)| f);
        if let Some(s) = &mut self.session {
            s.main.acknowledge(|f| f.last <= acked, Some(acked));
            if let Some(l) = &mut s.live {
                // Flights below the receiver's live lane are the backlog lane's now.
                l.acknowledge(
                    |f| f.last <= acked || live_to.is_some_and(|t| f.last <= t),
                    live_to,
                );
                if let Some(from) = live_from {
                    l.acknowledge(|f| f.last < from, None);
                }
            }
        }
        self.merge_if_caught_up();
    }

    fn send(&mut self, msg: &Message) -> Result<usize, SyncError> {
        let bytes = message::encode(msg)?;
        let n = bytes.len();
        self.stats.bytes_sent += n as u64;
        self.out.push_back(SenderOutput::Send(bytes));
        Ok(n)
    }

    /// Moves records along: open or merge lanes, encode due batches (the live lane's
    /// first), send what the windows allow, read more, extend the leases.
    fn pump(&mut self, now: u64) {
        self.merge_if_caught_up();
        let Some(session) = &self.session else {
            return;
        };
        let (id, main_next) = (session.id, session.main.next);
        let lane_start = self.lane_start();
        // Open a live lane when the unsent backlog is long and the receiver holds none. Move
        // one the receiver has not reported holding to the head when its own unsent part is
        // as long: a lane opened early in an outage that the session had not noticed yet
        // would otherwise carry the rest of the outage's backlog ahead of the newest records.
        let unsent_from = match lane_start {
            None => Some(main_next),
            Some(_) if self.peer_live.is_none() && !self.lane_base_due => Some(
                session
                    .live
                    .as_ref()
                    .map_or(self.live_next(), |l| l.next)
                    .max(self.lane_base + 1),
            ),
            Some(_) => None,
        };
        // One request for the live lease at a time (an answer does not say which it answers).
        if let Some(from) = unsent_from
            && !self.open_requested
            && !self.live_requested
            && self.head.saturating_sub(from - 1) > self.cfg.live_after_records
        {
            if lane_start.is_some() {
                self.stats.lanes_moved += 1;
            }
            self.open_requested = true;
            self.out.push_back(SenderOutput::OpenLive {
                records: self.cfg.lease_records,
            });
        }
        let live_next = self.live_next();
        let lane_from = self.live.map_or(lane_start, |(f, _)| Some(f));
        let main_end = self.main_end();
        let readable = [
            main_end.min(self.leased_until(main_next)),
            self.head
                .min(self.leased_until(live_next.max(session.live.as_ref().map_or(0, |l| l.next)))),
        ];
        let Some(s) = &mut self.session else {
            return;
        };
        if lane_start.is_some() && s.live.is_none() {
            s.live = Some(Lane::new(live_next));
        }
        // The live lane first: its messages come out before the backlog's.
        for live in [true, false] {
            let lane = if live {
                s.live.as_mut()
            } else {
                Some(&mut s.main)
            };
            let Some(lane) = lane else { continue };
            let mut p = Pump {
                cfg: &self.cfg,
                now,
                session: id,
                head: self.head,
                readable: readable[usize::from(live)],
                lane: if live { lane_from } else { None },
                out: &mut self.out,
                stats: &mut self.stats,
                encoder: &mut self.encoder,
            };
            if !p.lane(lane) {
                self.session = None;
                self.link_up_at = None;
                return;
            }
        }
        // Keep each lease half a lease ahead of its lane's read position.
        let half = self.cfg.lease_records / 2;
        let main_next = s.main.next;
        if self.lease_requested <= self.lease
            && main_end > self.lease
            && self.lease < main_next.saturating_sub(1) + half
        {
            let want = main_next.saturating_sub(1) + self.cfg.lease_records;
            self.lease_requested = want;
            self.out.push_back(SenderOutput::Lease { upto: want });
        }
        if let (Some(lane), Some(start)) = (&s.live, lane_start) {
            // A live lease that starts above the lane (none, or one an open that came too
            // late made) is replaced by one from the lane's start.
            let (from, upto) = match self.live {
                Some((f, u)) if f <= start => (f, u),
                _ => (start, start - 1),
            };
            if !self.live_requested
                && !self.open_requested
                && self.head > upto
                && upto < lane.next.saturating_sub(1) + half
            {
                self.live_requested = true;
                self.out.push_back(SenderOutput::LiveLease {
                    from,
                    upto: lane.next.saturating_sub(1) + self.cfg.lease_records,
                });
            }
        }
    }
}

/// A receiver's report with a live lane (checked when the message was decoded).
fn lanes(applied: u64, live_from: u64, live_to: u64) -> Held {
    Held::from_parts(applied, live_from, live_to).unwrap_or(Held::prefix(applied))
}

impl Pump<'_> {
    /// Moves one lane along; `false` when the session must end (a record that cannot be
    /// encoded: only a bug gets there, and skipping it would lose it).
    fn lane(&mut self, s: &mut Lane) -> bool {
        let (cfg, now, readable) = (self.cfg, self.now, self.readable);
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
                            if self.lane.is_some() {
                                self.stats.live_records_sent += f.records;
                            }
                        }
                        s.flights.push_back(f);
                        self.out.push_back(if self.lane.is_some() {
                            SenderOutput::SendLive(bytes)
                        } else {
                            SenderOutput::Send(bytes)
                        });
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
                let (session, head, lane) = (self.session, self.head, self.lane);
                if let Err(e) =
                    encode_batch(self.encoder, s, session, head, lane, cfg.max_batch_bytes)
                {
                    self.out.push_back(SenderOutput::Reconnect {
                        reason: ReconnectReason::Unencodable {
                            seq: s.staged_first,
                            error: e.to_string(),
                        },
                    });
                    return false;
                }
                continue;
            }
            if let Some(span) = s.staged_gap.take() {
                let (session, head) = (self.session, self.head);
                let msg = if let Some(lane) = self.lane {
                    Message::LiveGap {
                        session,
                        lane,
                        span: span.clone(),
                        head,
                    }
                } else {
                    Message::Gap {
                        session,
                        span: span.clone(),
                        head,
                    }
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
                        return false;
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
        true
    }
}

/// Encodes the staged records as one batch and makes it `ready`: the longest prefix whose
/// estimated size stays within `max_bytes` (at least one record; a read may stage more than
/// a batch holds, and a paced sender relies on the cut), halved until it fits a message.
fn encode_batch(
    enc: &mut codec::Encoder,
    s: &mut Lane,
    session: u64,
    head: u64,
    lane: Option<u64>,
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
        // The store's own encoding of exactly these records, if it gave one.
        let payload = match s.staged_payload.take() {
            Some(payload) if n == s.staged.len() => payload,
            _ => enc.encode(&s.staged[..n])?,
        };
        let msg = if let Some(lane) = lane {
            Message::Live {
                session,
                lane,
                first_seq: first,
                last_seq: last,
                head,
                payload,
            }
        } else {
            Message::Batch {
                session,
                first_seq: first,
                last_seq: last,
                head,
                payload,
            }
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
            live_after_records: 1_000,
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
                SenderOutput::SendLive(b) => sent.push(message::decode(&b).unwrap()),
                SenderOutput::OpenLive { .. } | SenderOutput::LiveLease { .. } => {}
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
        started_with(cfg(), head, acked)
    }

    fn started_with(cfg: SenderConfig, head: u64, acked: u64) -> Sender {
        let mut s = Sender::new(
            cfg,
            SenderDurable {
                acked,
                head,
                lease: 0,
                live: None,
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

    /// Answers every read with its records and `payload` as theirs; returns the payloads of
    /// the batches sent.
    fn payloads_sent(s: &mut Sender, payload: &[u8]) -> Vec<Vec<u8>> {
        let mut sent = Vec::new();
        while let Some(o) = s.poll_output() {
            match o {
                SenderOutput::Read { from, max_records } => {
                    let chunk = ReadChunk::Encoded {
                        from,
                        records: (from..from + max_records as u64).map(rec).collect(),
                        payload: payload.to_vec(),
                    };
                    s.on_read(0, chunk).unwrap();
                }
                SenderOutput::Lease { upto } => s.on_lease(0, upto),
                SenderOutput::Send(b) => {
                    if let Message::Batch { payload, .. } = message::decode(&b).unwrap() {
                        sent.push(payload);
                    }
                }
                _ => {}
            }
        }
        sent
    }

    #[test]
    fn a_reads_payload_is_sent_as_it_is_for_a_batch_of_exactly_its_records() {
        // Not the records' own payload, so that the batch shows which one went.
        let marker = codec::encode(&[rec(7), rec(8)]).unwrap();
        let mut s = started(2, 0);
        assert_eq!(payloads_sent(&mut s, &marker), vec![marker.clone()]);
        // Batches cut smaller than the read are encoded from its records.
        let cut = SenderConfig {
            max_batch_bytes: 1,
            ..cfg()
        };
        let sent = payloads_sent(&mut started_with(cut, 2, 0), &marker);
        let decoded: Vec<Vec<Record>> = sent.iter().map(|p| codec::decode(p).unwrap()).collect();
        assert_eq!(decoded, vec![vec![rec(1)], vec![rec(2)]]);
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

    /// Drains outputs up to the first `OpenLive`; returns whether one came.
    fn opens(s: &mut Sender) -> bool {
        std::iter::from_fn(|| s.poll_output()).any(|o| matches!(o, SenderOutput::OpenLive { .. }))
    }

    fn live_lanes(msgs: &[Message]) -> Vec<(u64, u64)> {
        msgs.iter()
            .filter_map(|m| match m {
                Message::Live {
                    lane, first_seq, ..
                } => Some((*lane, *first_seq)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_lane_the_receiver_never_reported_moves_to_the_head_when_its_own_backlog_grows() {
        // An outage the session has not noticed yet: the lane opens, nothing is acknowledged,
        // and the outage's backlog keeps growing on the lane.
        let mut s = started(2_000, 0);
        assert!(opens(&mut s), "a backlog of 2,000 opens a lane");
        s.on_live_lease(0, 2_001, 2_100);
        s.outbox_head(0, 2_000);
        run(&mut s, 0, None);
        s.outbox_head(1, 3_000);
        assert!(
            !opens(&mut s),
            "1,000 unsent on the lane is not more than the threshold"
        );
        s.outbox_head(1, 3_500);
        assert!(opens(&mut s), "1,500 are: the lane moves to the head");
        s.on_live_lease(1, 3_501, 3_600);
        s.outbox_head(1, 3_600);
        let sent = run(&mut s, 1, None);
        let live = live_lanes(&sent);
        assert_eq!(live.first(), Some(&(3_501, 3_501)), "{live:?}");
        assert!(live.iter().all(|(lane, _)| *lane == 3_501), "{live:?}");
        let st = s.stats(1);
        assert_eq!(
            (st.live_from, st.lanes_opened, st.lanes_moved),
            (Some(3_501), 1, 1)
        );
        // Once the receiver reports holding the lane, it stays where it is.
        s.on_message(
            2,
            Message::AckLanes {
                session: 9,
                applied: 0,
                live_from: 3_501,
                live_to: 3_503,
            },
        )
        .unwrap();
        s.outbox_head(2, 10_000);
        assert!(!opens(&mut s), "the receiver holds this lane");
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
