//! The receiving end of one sync stream: opens a session with `Resume`, accepts exactly the
//! batch or gap that starts right after what it has handed to the driver, recognises
//! duplicates, asks for a resync on a hole, and acknowledges what the driver made durable.
//!
//! ```text
//!  peer Sender                    Receiver                          driver
//!    |<-- Resume{s, applied} ---------|<-- link_up(now, s) ------------|
//!    |-- Resumed{s, head} ----------->|                                 |
//!    |-- Batch{s, first..last} ------>|-- Apply{first..last, records} ->|  one transaction:
//!    |                                |<-- on_applied(last) ------------|  records + cursor
//!    |<-- Ack{s, applied=last} -------|                                 |
//!    |-- Gap{s, span} --------------->|-- RecordGap{span} ------------->|  one transaction:
//!    |                                |<-- on_applied(span.last) -------|  gap + cursor
//!    |-- Batch{s, hole} ------------->|  (not applied)                  |
//!    |<-- Resume{s, applied} ---------|  once applies settle, rate-limited
//! ```
//!
//! Invariants:
//! - An `Apply`/`RecordGap` output always continues what was handed out before it, in its
//!   lane (the prefix, or the live lane, or it opens one): the driver's store can check it
//!   against what it holds in the transaction. The driver may apply the live lane's outputs
//!   ahead of the backlog's ([`ApplyQueue`](super::ApplyQueue)); within a lane, in order.
//! - A batch whose records were already handed out is never handed out again; a batch that
//!   does not start right after them is never handed out.
//! - Once a hole is seen nothing more is handed out until the resync's `Resume` is sent, so
//!   that it waits only for the applies already handed out (not for a backlog lane that
//!   keeps flowing, which held a refused live batch back until the sender's retransmit
//!   timeout) and the sender goes back to exactly what is handed out. (Within
//!   `resume_interval_us` of a `Resume`, what arrives may be the sender's answer to it, so
//!   then batches are handed out as usual.)
//! - `Resume` and `Ack` carry only the durable cursor (what the driver confirmed with
//!   [`Receiver::on_applied`]), never a position that a crash could take back.
//!
//! Deliberately absent: storage, sockets, clocks; the session id is chosen by the driver.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::codec;
use super::held::{Admit, Held};
use super::message::{self, Message};
use super::record::{LostSpan, Record};
use super::{ReconnectReason, SyncError};

/// Tuning of a [`Receiver`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReceiverConfig {
    /// How long to wait before repeating an unanswered `Resume`, and the least time between
    /// two resync requests. Default 2 s.
    pub resume_interval_us: u64,
    /// How long the link may stay up with the sender ahead and nothing arriving before the
    /// driver is asked to reconnect. Default 60 s.
    pub stall_timeout_us: u64,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            resume_interval_us: 2_000_000,
            stall_timeout_us: 60_000_000,
        }
    }
}

/// Records to apply, in one transaction that also sets the cursor to `last_seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct Apply {
    pub first_seq: u64,
    pub last_seq: u64,
    /// Whether this starts the live lane above a hole (the store's check accepts a range
    /// that is not adjacent to what is applied only then).
    pub opens: bool,
    /// In apply order: device changes and points in stream order between kinds, points of
    /// one series by timestamp.
    pub records: Vec<Record>,
}

/// A loss to record durably, in one transaction that also sets the cursor to `last_seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct GapRecord {
    /// One past the cursor: where the loss starts for this receiver.
    pub first_seq: u64,
    /// Where the cursor (or the live lane) moves.
    pub last_seq: u64,
    /// Whether this starts the live lane above a hole.
    pub opens: bool,
    /// What the sender's store recorded about the dropped span.
    pub span: LostSpan,
    /// Whether `span` covers exactly `first_seq..=last_seq`. Always true when the sending
    /// store honours the send lease; false would mean the counts include records this
    /// receiver had already applied.
    pub exact: bool,
}

/// What the driver must do for a [`Receiver`].
#[derive(Debug, Clone, PartialEq)]
pub enum ReceiverOutput {
    /// Send these bytes (an encoded [`Message`]) to the peer over the channel.
    Send(Vec<u8>),
    /// Apply, then call [`Receiver::on_applied`] with `last_seq`. The [`Admit`] says which
    /// lane it continues: a driver may apply the live lane's outputs ahead of the backlog's
    /// handed out before them, as [`ApplyQueue`](super::ApplyQueue) orders them.
    Apply(Apply, Admit),
    /// Record the gap, then call [`Receiver::on_applied`] with `last_seq` (its lane as for
    /// `Apply`).
    RecordGap(GapRecord, Admit),
    /// The link looks stuck or the peer sent garbage: drop it and connect again.
    Reconnect { reason: ReconnectReason },
}

/// Counters and gauges for the site's lag/backlog/ETA display and metrics. Rates are the
/// driver's: differences of these counters over its own clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReceiverStats {
    /// Durable cursor: highest contiguous sequence number applied.
    pub applied: u64,
    /// The durable live lane `(from, to)` above a hole, while the backlog drains.
    pub live: Option<(u64, u64)>,
    /// Highest contiguous sequence number handed to the driver (applied or being applied).
    pub handed: u64,
    /// The sender's outbox head as last reported.
    pub remote_head: u64,
    /// Records still to come: `remote_head` less what is durably held.
    pub lag_records: u64,
    /// Records of the backlog lane still to come (below the live lane), 0 without one.
    pub backlog_records: u64,
    /// Records applied on the live lane (counted in `records_applied` too).
    pub live_records_applied: u64,
    pub session_up: bool,
    pub records_applied: u64,
    pub batches_applied: u64,
    pub gaps_recorded: u64,
    pub points_lost: u64,
    pub bytes_received: u64,
    pub duplicates: u64,
    pub resyncs: u64,
    pub stale: u64,
    /// Batches and gaps not handed out because a hole was seen and its resync is still to
    /// come (the sender sends them again after it).
    pub held_back: u64,
}

/// One output handed to the driver, for [`Receiver::on_applied`] to check and count.
#[derive(Debug)]
struct Pending {
    first_seq: u64,
    last_seq: u64,
    admit: Admit,
    records: u64,
    points_lost: Option<u64>,
}

impl Link {
    /// Whether to hand out nothing more: a hole was seen and the resync's `Resume` can go as
    /// soon as what is pending settles. Not while a `Resume` sent within `interval` may still
    /// be on its way: the stale batches that cross it must not hold back the sender's answer.
    fn holding(&self, now: u64, interval: u64) -> bool {
        self.resync_wanted
            && self
                .last_resync_at
                .is_none_or(|at| now >= at.saturating_add(interval))
    }
}

#[derive(Debug)]
struct Link {
    session: u64,
    up_at: u64,
    resumed: bool,
    resume_sent_at: u64,
    /// A hole was seen; ask for a resync once applies settle and the rate limit allows.
    resync_wanted: bool,
    last_resync_at: Option<u64>,
}

/// The receiving end of one sync stream (see the module docs).
#[derive(Debug)]
pub struct Receiver {
    cfg: ReceiverConfig,
    /// What the store made durable.
    cursor: Held,
    /// What was handed to the driver (durable or being applied).
    handed: Held,
    /// Outputs handed to the driver and not yet confirmed, in order.
    pending: VecDeque<Pending>,
    remote_head: u64,
    progress_at: u64,
    link: Option<Link>,
    out: VecDeque<ReceiverOutput>,
    stats: ReceiverStats,
    decoder: codec::Decoder,
}

impl Receiver {
    /// Rebuilds the receiver from its durable cursor (a stream without a live lane).
    pub fn new(cfg: ReceiverConfig, applied: u64, now: u64) -> Self {
        Self::with_held(cfg, Held::prefix(applied), now)
    }

    /// Rebuilds the receiver from what its store durably holds.
    pub fn with_held(cfg: ReceiverConfig, held: Held, now: u64) -> Self {
        Self {
            cfg,
            cursor: held,
            handed: held,
            pending: VecDeque::new(),
            remote_head: held.top(),
            progress_at: now,
            link: None,
            out: VecDeque::new(),
            stats: ReceiverStats::default(),
            decoder: codec::Decoder::new(),
        }
    }

    pub fn poll_output(&mut self) -> Option<ReceiverOutput> {
        self.out.pop_front()
    }

    /// The channel is up: start session `session` (a fresh random or counter value from the
    /// driver, different from the previous one) by sending `Resume`.
    pub fn link_up(&mut self, now: u64, session: u64) {
        self.link = Some(Link {
            session,
            up_at: now,
            resumed: false,
            resume_sent_at: now,
            resync_wanted: false,
            last_resync_at: None,
        });
        self.progress_at = now;
        self.send(&resume(session, self.cursor));
    }

    pub fn link_down(&mut self, _now: u64) {
        self.link = None;
    }

    /// A message for the receiver (`Resumed`, `Batch`, `Gap`, `Live` or `LiveGap`) arrived
    /// from the peer.
    pub fn on_message(&mut self, now: u64, msg: Message) -> Result<(), SyncError> {
        // Where the live lane a message belongs to starts: only there may a lane open.
        let lane = match &msg {
            Message::Live { lane, .. } | Message::LiveGap { lane, .. } => Some(*lane),
            _ => None,
        };
        let Some(link) = &mut self.link else {
            self.stats.stale += 1;
            return Ok(());
        };
        if msg.session() != link.session {
            self.stats.stale += 1;
            return Ok(());
        }
        match msg {
            Message::Resumed { head, .. } => {
                if !link.resumed {
                    link.resumed = true;
                    self.progress_at = now;
                }
                self.remote_head = self.remote_head.max(head);
            }
            Message::Batch {
                first_seq,
                last_seq,
                head,
                payload,
                ..
            }
            | Message::Live {
                first_seq,
                last_seq,
                head,
                payload,
                ..
            } => {
                let open = lane == Some(first_seq);
                link.resumed = true;
                let holding = link.holding(now, self.cfg.resume_interval_us);
                self.remote_head = self.remote_head.max(head);
                self.stats.bytes_received += payload.len() as u64;
                // Only the first batch of a live lane may open one above the prefix (after
                // the device records it starts with); any batch continues whichever range
                // it is adjacent to.
                if self.handed.covers(first_seq, last_seq) {
                    self.duplicate();
                } else if holding {
                    self.stats.held_back += 1;
                } else if let Some(admit) = self.handed.admit(first_seq, last_seq, open) {
                    let records = match self.decoder.decode(&payload) {
                        Ok(r) if r.len() as u64 == last_seq - first_seq + 1 => r,
                        Ok(r) => {
                            return Err(self.malformed(format!(
                                "batch {first_seq}..={last_seq} holds {} records",
                                r.len()
                            )));
                        }
                        Err(e) => {
                            return Err(
                                self.malformed(format!("batch {first_seq}..={last_seq}: {e}"))
                            );
                        }
                    };
                    self.hand(now, first_seq, last_seq, admit, records.len() as u64, None);
                    self.out.push_back(ReceiverOutput::Apply(
                        Apply {
                            first_seq,
                            last_seq,
                            opens: admit == Admit::Opens,
                            records,
                        },
                        admit,
                    ));
                } else {
                    self.want_resync(now);
                }
            }
            Message::Gap { span, head, .. } | Message::LiveGap { span, head, .. } => {
                link.resumed = true;
                let holding = link.holding(now, self.cfg.resume_interval_us);
                self.remote_head = self.remote_head.max(head);
                if self.handed.covers(span.first_seq, span.last_seq) {
                    self.duplicate();
                } else if holding {
                    self.stats.held_back += 1;
                } else if let Some((first, admit)) = self.place_gap(
                    &span,
                    lane.is_some_and(|l| span.first_seq <= l && l <= span.last_seq),
                ) {
                    let exact = span.first_seq == first;
                    let last_seq = span.last_seq;
                    self.hand(now, first, last_seq, admit, 0, Some(span.points()));
                    self.out.push_back(ReceiverOutput::RecordGap(
                        GapRecord {
                            first_seq: first,
                            last_seq,
                            opens: admit == Admit::Opens,
                            span,
                            exact,
                        },
                        admit,
                    ));
                } else {
                    self.want_resync(now);
                }
            }
            other => return Err(SyncError::Misrouted(other.addressee())),
        }
        Ok(())
    }

    /// The driver committed the output ending at `last_seq` (records or gap, with the
    /// cursor, in one transaction). Outputs are confirmed in the order they were handed out
    /// within each lane; the live lane's may come before the backlog's handed out earlier
    /// (the order of [`ApplyQueue`](super::ApplyQueue)).
    pub fn on_applied(&mut self, now: u64, last_seq: u64) -> Result<(), SyncError> {
        let at = self.pending.iter().position(|p| p.last_seq == last_seq);
        if at.is_none() && self.cursor.contains(last_seq) {
            return Ok(());
        }
        let expected = self.pending.front().map(|p| p.last_seq);
        let Some(p) = at.and_then(|i| self.pending.remove(i)) else {
            self.pending.clear();
            self.handed = self.cursor;
            self.want_resync(now);
            return Err(SyncError::AppliedOutOfOrder { last_seq, expected });
        };
        if !self
            .cursor
            .add(p.first_seq, p.last_seq, p.admit == Admit::Opens)
        {
            // Handed out in an order the durable set does not admit: a bug; start over from
            // what the store holds.
            self.pending.clear();
            self.handed = self.cursor;
            self.want_resync(now);
            return Err(SyncError::AppliedOutOfOrder { last_seq, expected });
        }
        match p.points_lost {
            Some(lost) => {
                self.stats.gaps_recorded += 1;
                self.stats.points_lost += lost;
            }
            None => {
                self.stats.batches_applied += 1;
                self.stats.records_applied += p.records;
                if p.admit != Admit::Prefix {
                    self.stats.live_records_applied += p.records;
                }
            }
        }
        self.progress_at = now;
        if let Some(link) = &self.link {
            let session = link.session;
            self.send(&ack(session, self.cursor));
        }
        self.maybe_resync(now);
        Ok(())
    }

    /// The driver could not apply the oldest pending output (and drops the later ones):
    /// forget them and ask the sender to resend from the durable cursor.
    pub fn on_apply_failed(&mut self, now: u64) {
        self.pending.clear();
        self.handed = self.cursor;
        self.want_resync(now);
    }

    /// Timers: repeat an unanswered `Resume`, pending resyncs, stall detection.
    pub fn tick(&mut self, now: u64) {
        let Some(link) = &mut self.link else {
            return;
        };
        let interval = self.cfg.resume_interval_us;
        let stall = self.cfg.stall_timeout_us;
        if !link.resumed {
            if now >= link.up_at.saturating_add(stall) {
                let waited_us = now - link.up_at;
                self.link = None;
                self.out.push_back(ReceiverOutput::Reconnect {
                    reason: ReconnectReason::NoResumed { waited_us },
                });
                return;
            }
            if now >= link.resume_sent_at.saturating_add(interval) {
                link.resume_sent_at = now;
                let msg = resume(link.session, self.cursor);
                self.send(&msg);
            }
            return;
        }
        if self.pending.is_empty()
            && self.remote_head > self.cursor.count()
            && now >= self.progress_at.saturating_add(stall)
        {
            let reason = ReconnectReason::NoData {
                applied: self.cursor.applied,
                remote_head: self.remote_head,
                waited_us: now - self.progress_at,
            };
            self.link = None;
            self.out.push_back(ReceiverOutput::Reconnect { reason });
            return;
        }
        self.maybe_resync(now);
    }

    /// When the driver should call [`Receiver::tick`] next, if anything waits on time.
    pub fn next_timeout(&self) -> Option<u64> {
        let link = self.link.as_ref()?;
        let interval = self.cfg.resume_interval_us;
        if !link.resumed {
            return Some(link.resume_sent_at.saturating_add(interval));
        }
        // Only what `tick` acts on: a stall deadline while nothing is pending and the sender
        // is ahead (an idle, caught-up link has no deadline at all, or the driver would be
        // woken for nothing, forever, once it passed), and a wanted resync.
        let mut t = None;
        if self.pending.is_empty() && self.remote_head > self.cursor.count() {
            t = Some(self.progress_at.saturating_add(self.cfg.stall_timeout_us));
        }
        if link.resync_wanted && self.pending.is_empty() {
            let at = link
                .last_resync_at
                .map_or(0, |l| l.saturating_add(interval));
            t = Some(t.map_or(at, |t: u64| t.min(at)));
        }
        t
    }

    pub fn stats(&self) -> ReceiverStats {
        let mut st = self.stats;
        st.applied = self.cursor.applied;
        st.live = self.cursor.live;
        st.handed = self.handed.applied;
        st.remote_head = self.remote_head;
        st.lag_records = self.remote_head.saturating_sub(self.cursor.count());
        st.backlog_records = self
            .cursor
            .live
            .map_or(0, |(from, _)| from - 1 - self.cursor.applied);
        st.session_up = self.link.as_ref().is_some_and(|l| l.resumed);
        st
    }

    /// The durable cursor.
    pub fn applied(&self) -> u64 {
        self.cursor.applied
    }

    /// What the store durably holds: the cursor and the live lane.
    pub fn held(&self) -> Held {
        self.cursor
    }

    /// Where a lost span goes: exactly at one of the ends of what is held (`exact`), or, when
    /// part of it is already held, from the end it overlaps (the counts then include records
    /// applied here, reported as not exact); only the live lane's may open a lane.
    fn place_gap(&self, span: &LostSpan, open: bool) -> Option<(u64, Admit)> {
        let (first, last) = (span.first_seq, span.last_seq);
        if let Some(a) = self.handed.admit(first, last, open) {
            return Some((first, a));
        }
        let ends = [Some(self.handed.applied), self.handed.live.map(|(_, t)| t)];
        ends.into_iter().flatten().find_map(|end| {
            let at = end + 1;
            (first < at && at <= last)
                .then(|| self.handed.admit(at, last, false).map(|a| (at, a)))
                .flatten()
        })
    }

    fn hand(
        &mut self,
        now: u64,
        first_seq: u64,
        last_seq: u64,
        admit: Admit,
        records: u64,
        points_lost: Option<u64>,
    ) {
        self.handed.add(first_seq, last_seq, admit == Admit::Opens);
        self.pending.push_back(Pending {
            first_seq,
            last_seq,
            admit,
            records,
            points_lost,
        });
        self.progress_at = now;
        if let Some(l) = &mut self.link {
            l.resync_wanted = false;
        }
    }

    fn duplicate(&mut self) {
        self.stats.duplicates += 1;
        // Repeat the acknowledgement the sender may have missed, unless one is coming.
        if self.pending.is_empty()
            && let Some(link) = &self.link
        {
            let msg = ack(link.session, self.cursor);
            self.send(&msg);
        }
    }

    fn want_resync(&mut self, now: u64) {
        if let Some(l) = &mut self.link {
            l.resync_wanted = true;
        }
        self.maybe_resync(now);
    }

    fn maybe_resync(&mut self, now: u64) {
        let interval = self.cfg.resume_interval_us;
        let Some(link) = &mut self.link else {
            return;
        };
        if !link.resync_wanted
            || !self.pending.is_empty()
            || link
                .last_resync_at
                .is_some_and(|l| now < l.saturating_add(interval))
        {
            return;
        }
        link.resync_wanted = false;
        link.last_resync_at = Some(now);
        self.stats.resyncs += 1;
        let msg = resume(link.session, self.cursor);
        self.send(&msg);
    }

    fn malformed(&mut self, detail: String) -> SyncError {
        self.link = None;
        self.out.push_back(ReceiverOutput::Reconnect {
            reason: ReconnectReason::Malformed {
                detail: detail.clone(),
            },
        });
        SyncError::MalformedBatch(detail)
    }

    fn send(&mut self, msg: &Message) {
        // Control messages are small and always valid; encoding cannot fail.
        if let Ok(bytes) = message::encode(msg) {
            self.out.push_back(ReceiverOutput::Send(bytes));
        }
    }
}

/// `Resume` from what is held: `ResumeLanes` while there is a live lane.
fn resume(session: u64, held: Held) -> Message {
    match held.live {
        None => Message::Resume {
            session,
            applied: held.applied,
        },
        Some((live_from, live_to)) => Message::ResumeLanes {
            session,
            applied: held.applied,
            live_from,
            live_to,
        },
    }
}

/// `Ack` from what is held: `AckLanes` while there is a live lane.
fn ack(session: u64, held: Held) -> Message {
    match held.live {
        None => Message::Ack {
            session,
            applied: held.applied,
        },
        Some((live_from, live_to)) => Message::AckLanes {
            session,
            applied: held.applied,
            live_from,
            live_to,
        },
    }
}

impl ReceiverOutput {
    /// The records of an `Apply`, for drivers and tests that only count.
    pub fn records(&self) -> Option<&[Record]> {
        match self {
            ReceiverOutput::Apply(a, _) => Some(&a.records),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Identity, ResourceName, Value};
    use crate::sync::record::Point;

    fn batch(session: u64, first: u64, last: u64) -> Message {
        let records: Vec<Record> = (first..=last)
            .map(|i| {
                Record::Point(Point {
                    device: Identity::parse("d").unwrap(),
                    resource: ResourceName::parse("r").unwrap(),
                    t: i as i64,
                    value: Value::Integer(1),
                })
            })
            .collect();
        Message::Batch {
            session,
            first_seq: first,
            last_seq: last,
            head: 100,
            payload: codec::encode(&records).unwrap(),
        }
    }

    /// Outputs as short strings: `apply 1..=3`, `gap 4..=5`, `Ack 3`, `Resume 0`.
    fn outs(r: &mut Receiver) -> Vec<String> {
        std::iter::from_fn(|| r.poll_output())
            .map(|o| match o {
                ReceiverOutput::Send(b) => match message::decode(&b).unwrap() {
                    Message::Ack { applied, .. } => format!("Ack {applied}"),
                    Message::Resume { applied, .. } => format!("Resume {applied}"),
                    Message::AckLanes {
                        applied,
                        live_from,
                        live_to,
                        ..
                    } => format!("Ack {applied} {live_from}..={live_to}"),
                    Message::ResumeLanes {
                        applied,
                        live_from,
                        live_to,
                        ..
                    } => format!("Resume {applied} {live_from}..={live_to}"),
                    m => format!("{m:?}"),
                },
                ReceiverOutput::Apply(a, _) => format!("apply {}..={}", a.first_seq, a.last_seq),
                ReceiverOutput::RecordGap(g, _) => {
                    format!("gap {}..={}", g.first_seq, g.last_seq)
                }
                ReceiverOutput::Reconnect { reason } => format!("reconnect {reason}"),
            })
            .collect()
    }

    fn cfg() -> ReceiverConfig {
        ReceiverConfig {
            resume_interval_us: 100,
            stall_timeout_us: 10_000,
        }
    }

    #[test]
    fn applies_once_ignores_duplicates_and_resyncs_on_a_hole() {
        let mut r = Receiver::new(cfg(), 0, 0);
        r.link_up(0, 7);
        assert_eq!(outs(&mut r), ["Resume 0"]);
        r.on_message(1, batch(7, 1, 3)).unwrap();
        r.on_message(1, batch(7, 4, 5)).unwrap();
        assert_eq!(outs(&mut r), ["apply 1..=3", "apply 4..=5"]);
        r.on_message(2, batch(7, 1, 3)).unwrap();
        assert_eq!(
            outs(&mut r),
            Vec::<String>::new(),
            "duplicate, an ack is coming"
        );
        r.on_applied(3, 3).unwrap();
        assert_eq!(outs(&mut r), ["Ack 3"]);
        // A hole waits for pending applies, then asks to resume from the durable cursor.
        r.on_message(4, batch(7, 8, 9)).unwrap();
        assert_eq!(outs(&mut r), Vec::<String>::new());
        r.on_applied(5, 5).unwrap();
        assert_eq!(outs(&mut r), ["Ack 5", "Resume 5"]);
        r.on_message(6, batch(7, 8, 9)).unwrap();
        assert_eq!(outs(&mut r), Vec::<String>::new(), "rate-limited");
        r.on_message(6, batch(7, 2, 5)).unwrap();
        assert_eq!(outs(&mut r), ["Ack 5"], "duplicate re-acknowledged");
        r.tick(200);
        assert_eq!(outs(&mut r), ["Resume 5"]);
        r.on_message(201, batch(7, 4, 7)).unwrap();
        assert_eq!(outs(&mut r), Vec::<String>::new(), "overlap, rate-limited");
        r.tick(400);
        assert_eq!(outs(&mut r), ["Resume 5"]);
        let st = r.stats();
        assert_eq!((st.applied, st.handed, st.records_applied), (5, 5, 5));
    }

    fn live(session: u64, lane: u64, first: u64, last: u64) -> Message {
        let Message::Batch { head, payload, .. } = batch(session, first, last) else {
            unreachable!("batch() makes a Batch")
        };
        Message::Live {
            session,
            lane,
            first_seq: first,
            last_seq: last,
            head,
            payload,
        }
    }

    #[test]
    fn live_applies_may_be_confirmed_ahead_of_the_backlog_handed_out_before_them() {
        let mut r = Receiver::new(cfg(), 0, 0);
        r.link_up(0, 7);
        outs(&mut r);
        r.on_message(1, batch(7, 1, 10)).unwrap();
        r.on_message(1, live(7, 50, 50, 55)).unwrap();
        r.on_message(1, live(7, 50, 56, 60)).unwrap();
        r.on_message(1, batch(7, 11, 20)).unwrap();
        assert_eq!(
            outs(&mut r),
            [
                "apply 1..=10",
                "apply 50..=55",
                "apply 56..=60",
                "apply 11..=20"
            ]
        );
        // The live lane's first (in its order), then the backlog's.
        r.on_applied(2, 55).unwrap();
        r.on_applied(2, 60).unwrap();
        assert_eq!(outs(&mut r), ["Ack 0 50..=55", "Ack 0 50..=60"]);
        assert!(
            matches!(
                r.on_applied(3, 20),
                Err(SyncError::AppliedOutOfOrder { last_seq: 20, .. })
            ),
            "the backlog's own order still holds"
        );
    }

    #[test]
    fn a_hole_in_the_live_lane_is_resynced_once_what_is_pending_settles_though_the_backlog_flows() {
        let mut r = Receiver::new(cfg(), 0, 0);
        r.link_up(0, 7);
        outs(&mut r);
        r.on_message(1, batch(7, 1, 10)).unwrap();
        r.on_message(1, live(7, 50, 50, 55)).unwrap();
        // 56..=59 was lost: a hole in the live lane.
        r.on_message(1, live(7, 50, 60, 62)).unwrap();
        assert_eq!(outs(&mut r), ["apply 1..=10", "apply 50..=55"]);
        // The backlog keeps coming; handing it out would keep applies pending, and the
        // Resume with them (until the sender's retransmit timeout).
        r.on_message(2, batch(7, 11, 20)).unwrap();
        r.on_message(2, batch(7, 21, 30)).unwrap();
        assert_eq!(outs(&mut r), Vec::<String>::new(), "held back");
        assert_eq!(r.stats().held_back, 2);
        r.on_applied(3, 55).unwrap();
        r.on_applied(3, 10).unwrap();
        assert_eq!(
            outs(&mut r),
            ["Ack 0 50..=55", "Ack 10 50..=55", "Resume 10 50..=55"],
            "the Resume goes as soon as what was handed out is applied"
        );
        // The sender's answer: both lanes again from what is held.
        r.on_message(4, batch(7, 11, 20)).unwrap();
        r.on_message(4, live(7, 50, 56, 62)).unwrap();
        assert_eq!(outs(&mut r), ["apply 11..=20", "apply 56..=62"]);
        // A stale batch that crossed the Resume does not hold the answer back.
        r.on_message(4, batch(7, 31, 40)).unwrap();
        r.on_message(4, batch(7, 21, 30)).unwrap();
        assert_eq!(outs(&mut r), ["apply 21..=30"]);
        assert_eq!(r.stats().resyncs, 1);
    }

    #[test]
    fn gaps_move_the_cursor_and_stale_sessions_are_ignored() {
        let mut r = Receiver::new(cfg(), 10, 0);
        r.link_up(0, 1);
        outs(&mut r);
        r.on_message(1, batch(2, 11, 12)).unwrap();
        assert_eq!(outs(&mut r), Vec::<String>::new(), "other session");
        let span = LostSpan {
            first_seq: 11,
            last_seq: 20,
            resources: vec![],
            device_changes: 0,
        };
        r.on_message(
            1,
            Message::Gap {
                session: 1,
                span,
                head: 30,
            },
        )
        .unwrap();
        assert_eq!(outs(&mut r), ["gap 11..=20"]);
        r.on_applied(2, 20).unwrap();
        assert_eq!(outs(&mut r), ["Ack 20"]);
        assert_eq!(r.stats().lag_records, 10);
        assert!(matches!(
            r.on_applied(3, 25),
            Err(SyncError::AppliedOutOfOrder { last_seq: 25, .. })
        ));
    }

    #[test]
    fn garbage_and_silence_ask_for_a_reconnect() {
        let mut r = Receiver::new(cfg(), 0, 0);
        r.link_up(0, 1);
        outs(&mut r);
        r.tick(100);
        assert_eq!(outs(&mut r), ["Resume 0"], "unanswered Resume repeats");
        r.tick(10_000);
        assert!(outs(&mut r)[0].starts_with("reconnect the sender has not answered"));
        r.link_up(10_000, 2);
        outs(&mut r);
        let bad = Message::Batch {
            session: 2,
            first_seq: 1,
            last_seq: 1,
            head: 1,
            payload: vec![1, 2, 3],
        };
        assert!(matches!(
            r.on_message(10_001, bad),
            Err(SyncError::MalformedBatch(_))
        ));
        assert!(outs(&mut r)[0].starts_with("reconnect the peer sent a malformed batch"));
    }
}
