//! Resource data synchronisation of one paired connector (docs/spec.md §6, §7): the driver that
//! feeds `proto::sync`'s [`Sender`] and [`Receiver`] from the store and the encrypted peer
//! session, and publishes their gauges for the API, the UI and `/metrics`.
//!
//! ```text
//!  ops (ingest, device change) ── commit ──▶ SyncDrivers::appended ── Notify ──┐
//!                                                                              ▼
//!  connector task ── SyncEvent::{Up, Down, Message} ──▶ driver task (one per paired connector)
//!      Sender   (Source: points and device changes; Target: device changes)
//!        woken ─▶ store.outbox_head_read: the head, and when everything was acknowledged
//!                 the records after it in the same read (the Sender's next Read takes them,
//!                 with the row the store wrote them in as the batch's payload, if it has it)
//!        Read ─▶ store.outbox_read ─▶ on_read          Lease ─▶ store.outbox_lease ─▶ on_lease
//!                                                      (persisted after the sends due)
//!        Acked ─▶ persisted at once when caught up, else ≤ 500 ms later (store.outbox_acked
//!                 drops delivered partitions)
//!      Receiver (Target: data stream; Source: device stream)
//!        Apply / RecordGap ─▶ applier task: queued items in one store.sync_apply, the
//!                             live lane's first (ApplyQueue)
//!                             (cursor CAS + points + gaps + cursor) ─▶ on_applied
//!      Send(bytes) ─▶ PeerHandle::send(SYNC ++ bytes) ─▶ sealed, hub, peer
//!      Reconnect{reason} ─▶ logged, PeerHandle::reset(reason)
//!
//!  site tasks (one each, for all pairings):
//!      retention: every 3 s store.sync_expiring (one read) ─▶ store.sync_expire for those
//!                 named (retention, disk budget, on the site's clock) ─▶ wakes the driver
//!      liveness:  every 10 s, sessions silent ≥ 30 s ─▶ one hub ping per peer site ─▶
//!                 offline or 2 misses: those sessions reset (they handshake again)
//! ```
//!
//! Invariants:
//! - The state machines get a monotonic clock (µs since the driver started); retention gets
//!   the site's wall clock ([`SyncSettings::clock`]), which a test-only flag can move.
//! - Applies reach the store in the order the Receiver handed them out; after any failed
//!   apply the Receiver is rebuilt from the store's durable cursor (and a new session), and
//!   completions of the failed generation are ignored, so the driver can never disagree
//!   with the store about what is applied.
//! - Ingest never waits for this task: it only wakes it.
//! - A message of another sync protocol version than this site's is never handed to the
//!   state machines: the mismatch is logged once, naming both versions, and shown in the
//!   status until a message of this site's version arrives.
//! - An idle pairing costs nothing: every timer of a driver is armed only while it has
//!   something to do (an acknowledgement to persist, gauges changed, a status that changes
//!   with time, a state machine's deadline), so a caught-up pairing with nothing written
//!   sleeps until an event (docs/sync.md, "Idle pairings"). Wake-ups and store calls are
//!   counted (`west_sync_driver_wakeups_total`, `west_sync_store_jobs_total`).
//!
//! The status publisher also feeds each connector's rate history (`status::RateHistory`):
//! one sample of the send and apply rates and the backlog every `status::HISTORY_EVERY`,
//! the last hour of them, in memory only, for the Remote-Sync tab's chart. On a Source the
//! apply rate (there and in `SyncStatus::peer_apply_rate`) is the Target's, read from its
//! acknowledgements.
//!
//! Deliberately absent: any SQL, and any knowledge of what a record holds: points and device
//! changes are both records, which the store appends and applies (docs/sync.md).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proto::model::{ConnectorId, Role};
use proto::sync::message::{MessageError, SYNC_VERSION};
use proto::sync::{
    Admit, ApplyQueue, Held, ReadChunk, Receiver, ReceiverConfig, ReceiverOutput, Sender,
    SenderConfig, SenderDurable, SenderOutput, message,
};
use store::{Clock, HeadRead, Inbound, OutboxChunk, Retention, Store};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use proto::service;

use crate::peers::peer::{self, PeerHandle};
use crate::peers::status::{Shared, SyncStatus};
use crate::state::AppState;

/// What the connector task hands the sync driver.
#[derive(Debug)]
pub enum SyncEvent {
    /// The encrypted session is up.
    Up,
    /// The encrypted session is down.
    Down,
    /// A sync message from the peer (the service byte stripped).
    Message(Vec<u8>),
}

/// Starts the sync driver of a paired connector; returns where to send its events.
pub fn spawn(
    state: &AppState,
    cid: &ConnectorId,
    handle: PeerHandle,
    cancel: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Option<mpsc::Sender<SyncEvent>> {
    let (tx, rx) = mpsc::channel(4096);
    let shared = state.remote.sync.register(cid);
    tasks.spawn(run(state.clone(), cid.clone(), handle, rx, shared, cancel));
    Some(tx)
}

/// How long an acknowledgement may wait before it is persisted (and delivered partitions
/// dropped) while more is in flight; the timer is armed only while one waits, and one that
/// covers the whole outbox is persisted at once.
const ACK_FLUSH: Duration = Duration::from_millis(500);
/// How often the site's retention pass looks for anything to expire (one store read for
/// all pairings; a write only for the connectors that have something).
const EXPIRY_EVERY: Duration = Duration::from_secs(3);
/// Least time between two refreshes of the durable gauges from the store; they are
/// refreshed only after something changed them.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Least time between two publications of the live gauges.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// How often a state machine's deadline that its tick did not move is retried.
const STALE_TICK: Duration = Duration::from_millis(50);
/// Bytes a sync message costs at the hub beyond its plaintext: the seal, the session
/// frame, the routed envelope with both addresses, the WebSocket header (an estimate; the
/// budget is honoured within a few per cent for messages of a few hundred bytes and more).
const MESSAGE_OVERHEAD: u64 = 80;
/// Seconds of budget a connector with a bandwidth budget may have in flight (the Sender's
/// window), well within its retransmit timeout; never less than [`MIN_WINDOW`].
const BUDGET_WINDOW_SECS: u64 = 2;
const MIN_WINDOW: u64 = 4096;
/// A batch holds at most 1/4 s of budget (never less than [`MIN_BATCH`]), and at most 1/4 s
/// of unused budget may be saved up for a burst: over any 30 s the bytes sent exceed the
/// budget by at most a burst and one message in debt (about 2 % at 8 KB/s), not 10 %.
const BUDGET_BATCH_PER_S: u64 = 4;
const MIN_BATCH: usize = 1024;
/// Seconds of unused budget that may be saved up for a burst.
const BUDGET_BURST_SECS: f64 = 0.25;

/// A token bucket in bytes that may go into debt by one message: a message goes when the
/// balance is not negative, and costs its size.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        Self {
            rate: rate as f64,
            tokens: 0.0,
            at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.rate * BUDGET_BURST_SECS);
        self.at = now;
    }

    /// Whether a message may go now.
    fn open(&mut self) -> bool {
        self.refill();
        self.tokens >= 0.0
    }

    fn charge(&mut self, bytes: usize) {
        self.tokens -= (bytes as u64 + MESSAGE_OVERHEAD) as f64;
    }

    /// When the balance is back to zero.
    fn ready_at(&self) -> Instant {
        let wait = if self.tokens >= 0.0 {
            0.0
        } else {
            -self.tokens / self.rate
        };
        self.at + Duration::from_secs_f64(wait)
    }
}

/// Most records the applier folds into one transaction: also the most a live batch waits
/// behind (the transaction under way), since the live lane's applies go first.
const MAX_APPLY_RECORDS: usize = 32_768;

/// An apply of one generation; a failure starts a new generation.
struct ApplyJob {
    generation: u64,
    item: Inbound,
    /// The lane the Receiver admitted it to: the live lane's go first (`ApplyQueue`).
    lane: Admit,
}

type Applied = (u64, Result<Vec<u64>, store::StoreError>);

struct SyncDriver {
    state: AppState,
    cid: ConnectorId,
    role: Role,
    handle: PeerHandle,
    shared: Arc<Shared>,
    started: Instant,
    sender: Sender,
    receiver: Receiver,
    /// Whether the peer session is up (the state machines were told `link_up`).
    up: bool,
    generation: Arc<AtomicU64>,
    apply_tx: mpsc::UnboundedSender<ApplyJob>,
    /// Highest acknowledgement not yet persisted.
    ack_pending: Option<u64>,
    /// `(remote head, when first seen)`: the Target's lag is the age of the oldest head
    /// sample its cursor has not reached.
    heads: VecDeque<(u64, Instant)>,
    /// `(when, points sent, points applied, peer's acknowledgement, prefix of the stream
    /// the Target holds)` samples for rates.
    samples: VecDeque<(Instant, u64, u64, u64, u64)>,
    /// The peer's acknowledgement when the driver started, and when (µs, system clock) it
    /// last moved forward: the Source's view of its Target's progress.
    acked_at_start: u64,
    peer_acked: u64,
    peer_applied_at: Option<i64>,
    durable: store::SyncDurable,
    /// The durable gauges changed since they were last read from the store.
    dirty: bool,
    /// The bandwidth budget in force (bytes/s), and its bucket.
    budget: Option<(u64, Bucket)>,
    /// The Sender's messages held back by the budget, in order: the live lane's, which go
    /// first, and the others.
    held_live: VecDeque<Vec<u8>>,
    held: VecDeque<Vec<u8>>,
    reconnects: u64,
    /// A send lease the Sender asked for, persisted once its other outputs are done.
    lease_due: Option<u64>,
    /// Records read with the head after a wake-up (`on_appended`), from the seq the Sender
    /// reads next when it is caught up: its next `Read` from there is answered with them.
    prefetched: Option<(u64, HeadRead)>,
    /// The most records the Sender reads at once (a batch).
    read_max: usize,
    /// The sync protocol version this site's messages carry: `SYNC_VERSION`, unless a test
    /// plays another (`SyncSettings::test_sync_version`).
    version: u8,
    /// The version the peer's messages carry while it is not `version`: they cannot be
    /// read, so nothing syncs; the status says so until a message of `version` arrives.
    peer_version: Option<u8>,
}

impl SyncDriver {
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Counts one store call (`west_sync_store_jobs_total`).
    fn store_job(&self) {
        self.state.metrics.sync_store_jobs.increment(1);
    }

    fn link_up(&mut self) {
        let now = self.now();
        self.up = true;
        self.sender.link_up(now);
        self.receiver.link_up(now, rand::random());
    }

    fn link_down(&mut self) {
        let now = self.now();
        self.up = false;
        // Sealed for a session that is gone; the Sender resends after the next Up.
        self.held.clear();
        self.held_live.clear();
        self.sender.link_down(now);
        self.receiver.link_down(now);
    }

    async fn send(&self, bytes: Vec<u8>) {
        let mut msg = Vec::with_capacity(bytes.len() + 1);
        msg.push(service::SYNC);
        msg.extend_from_slice(&bytes);
        if self.version != SYNC_VERSION
            && let Some(v) = msg.get_mut(1)
        {
            *v = self.version;
        }
        // Refused while the session is down: the state machines resend after the next Up.
        let _ = self.handle.send(msg).await;
    }

    /// Sends a message of the Sender within the budget: at once while the bucket is open
    /// and nothing waits before it, else after what is held. The live lane's messages wait
    /// only for the live lane's: live data takes the budget first.
    async fn send_data(&mut self, bytes: Vec<u8>, live: bool) {
        if let Some((_, bucket)) = &mut self.budget {
            let waiting = !self.held_live.is_empty() || (!live && !self.held.is_empty());
            if waiting || !bucket.open() {
                if live {
                    self.held_live.push_back(bytes);
                } else {
                    self.held.push_back(bytes);
                }
                return;
            }
            bucket.charge(bytes.len());
        }
        self.send(bytes).await;
    }

    /// Sends what the budget held back, as far as it allows now, the live lane's first.
    async fn release_held(&mut self) {
        while let Some((_, bucket)) = &mut self.budget {
            if (self.held_live.is_empty() && self.held.is_empty()) || !bucket.open() {
                return;
            }
            let Some(bytes) = self.held_live.pop_front().or_else(|| self.held.pop_front()) else {
                return;
            };
            bucket.charge(bytes.len());
            self.send(bytes).await;
        }
        // No budget (any more): everything held goes.
        while let Some(bytes) = self.held_live.pop_front().or_else(|| self.held.pop_front()) {
            self.send(bytes).await;
        }
    }

    /// Follows the budget set through the API: the bucket, and the Sender's window (a few
    /// seconds of budget, so nothing it sent waits here past its retransmit timeout).
    fn follow_budget(&mut self) {
        let want = match self.shared.budget.load(Ordering::Relaxed) {
            0 => None,
            b => Some(b),
        };
        if want == self.budget.as_ref().map(|(b, _)| *b) {
            return;
        }
        tracing::info!(connector = %self.cid, max_bytes_per_s = ?want, "bandwidth budget");
        self.budget = want.map(|b| (b, Bucket::new(b)));
        let now = self.now();
        self.sender.limit_window(
            now,
            want.map(|b| {
                let window = b.saturating_mul(BUDGET_WINDOW_SECS).max(MIN_WINDOW);
                let batch = usize::try_from(b / BUDGET_BATCH_PER_S)
                    .unwrap_or(usize::MAX)
                    .max(MIN_BATCH);
                (window, batch)
            }),
        );
    }

    async fn reconnect(&mut self, reason: String) {
        tracing::warn!(connector = %self.cid, %reason, "sync re-establishes the session");
        self.reconnects += 1;
        self.handle.reset(reason).await;
    }

    /// Does everything both state machines ask for, until neither asks anything; a send
    /// lease last, so that no batch waits for its commit.
    async fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(out) = self.sender.poll_output() {
                progressed = true;
                self.on_sender_output(out).await;
            }
            while let Some(out) = self.receiver.poll_output() {
                progressed = true;
                self.on_receiver_output(out).await;
            }
            if !progressed {
                // Used by the read it was for, or by none: never kept for a later one.
                self.prefetched = None;
                match self.lease_due.take() {
                    Some(upto) => self.persist_lease(upto).await,
                    None => return,
                }
            }
        }
    }

    async fn on_sender_output(&mut self, out: SenderOutput) {
        match out {
            SenderOutput::Send(bytes) => self.send_data(bytes, false).await,
            SenderOutput::SendLive(bytes) => self.send_data(bytes, true).await,
            SenderOutput::OpenLive { records } => loop {
                self.store_job();
                match self.state.store.outbox_open_live(&self.cid, records).await {
                    Ok((from, upto)) => {
                        tracing::info!(connector = %self.cid, from, backlog = from.saturating_sub(self.sender.acked() + 1),
                            "the backlog is long: new records go on a live lane ahead of it");
                        self.dirty = true;
                        let now = self.now();
                        self.sender.on_live_lease(now, from, upto);
                        self.on_appended().await;
                        break;
                    }
                    Err(e) => {
                        tracing::error!(connector = %self.cid, error = %e, "cannot open a live lane; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            },
            SenderOutput::LiveLease { from, upto } => loop {
                self.store_job();
                match self
                    .state
                    .store
                    .outbox_live_lease(&self.cid, from, upto)
                    .await
                {
                    Ok(()) => {
                        let now = self.now();
                        self.sender.on_live_lease(now, from, upto);
                        break;
                    }
                    Err(e) => {
                        tracing::error!(connector = %self.cid, error = %e, "cannot persist the live lease; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            },
            SenderOutput::Read { from, max_records } => {
                let (read, payload) = match self.prefetched.take() {
                    Some((at, read)) if at == from => match read.chunk {
                        // Consecutive from `from`: a prefix is what a smaller read gives;
                        // the records' own payload goes with all of them only.
                        OutboxChunk::Records(mut records) => {
                            let payload = read.payload.filter(|_| records.len() <= max_records);
                            records.truncate(max_records);
                            (Ok(OutboxChunk::Records(records)), payload)
                        }
                        lost @ OutboxChunk::Lost(_) => (Ok(lost), None),
                    },
                    _ => {
                        self.store_job();
                        let read = self
                            .state
                            .store
                            .outbox_read(&self.cid, from, max_records)
                            .await;
                        (read, None)
                    }
                };
                let chunk = match read {
                    Ok(OutboxChunk::Records(records)) => match payload {
                        Some(payload) => ReadChunk::Encoded {
                            from,
                            records,
                            payload,
                        },
                        None => ReadChunk::Records { from, records },
                    },
                    Ok(OutboxChunk::Lost(span)) => ReadChunk::Lost { from, span },
                    Err(e) => {
                        // Answered empty: the sender reads again on its next tick.
                        tracing::error!(connector = %self.cid, error = %e, "cannot read the outbox");
                        ReadChunk::Records {
                            from,
                            records: vec![],
                        }
                    }
                };
                let now = self.now();
                if let Err(e) = self.sender.on_read(now, chunk) {
                    tracing::error!(connector = %self.cid, error = %e, "outbox read refused");
                }
            }
            // Persisted once the outputs before it and after it are done (`drain`): the
            // lease runs half a lease ahead of what is read, so nothing waits for it, and a
            // batch read meanwhile leaves without waiting for a commit.
            SenderOutput::Lease { upto } => {
                self.lease_due = Some(self.lease_due.unwrap_or(0).max(upto));
            }
            SenderOutput::Acked { applied } => {
                self.ack_pending = Some(self.ack_pending.unwrap_or(0).max(applied));
            }
            SenderOutput::Reconnect { reason } => self.reconnect(reason.to_string()).await,
        }
    }

    /// Persists the send lease `upto` (retrying until it is durable), then tells the Sender.
    async fn persist_lease(&mut self, upto: u64) {
        loop {
            self.store_job();
            match self.state.store.outbox_lease(&self.cid, upto).await {
                Ok(()) => {
                    let now = self.now();
                    self.sender.on_lease(now, upto);
                    return;
                }
                Err(e) => {
                    tracing::error!(connector = %self.cid, error = %e, "cannot persist the send lease; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn on_receiver_output(&mut self, out: ReceiverOutput) {
        let generation = self.generation.load(Ordering::SeqCst);
        match out {
            ReceiverOutput::Send(bytes) => {
                // Acknowledgements are small and never wait, but they count.
                if let Some((_, bucket)) = &mut self.budget {
                    bucket.refill();
                    bucket.charge(bytes.len());
                }
                self.send(bytes).await
            }
            ReceiverOutput::Apply(a, lane) => {
                let _ = self.apply_tx.send(ApplyJob {
                    generation,
                    item: Inbound::Records(a),
                    lane,
                });
            }
            ReceiverOutput::RecordGap(g, lane) => {
                let _ = self.apply_tx.send(ApplyJob {
                    generation,
                    item: Inbound::Gap(g),
                    lane,
                });
            }
            ReceiverOutput::Reconnect { reason } => self.reconnect(reason.to_string()).await,
        }
    }

    /// Decodes a message of the peer: one of this site's version, else
    /// `MessageError::Version` with the peer's.
    fn decode(&self, bytes: &[u8]) -> Result<message::Message, MessageError> {
        match bytes.split_first() {
            Some((&v, rest)) if self.version != SYNC_VERSION => {
                if v != self.version {
                    return Err(MessageError::Version(v));
                }
                let mut relabelled = Vec::with_capacity(bytes.len());
                relabelled.push(SYNC_VERSION);
                relabelled.extend_from_slice(rest);
                message::decode(&relabelled)
            }
            _ => message::decode(bytes),
        }
    }

    /// Notes which sync protocol version the peer's message carries: a change is logged
    /// once (naming both versions) and shows in the status.
    fn peer_speaks(&mut self, version: u8) {
        let mismatch = (version != self.version).then_some(version);
        if mismatch == self.peer_version {
            return;
        }
        self.peer_version = mismatch;
        let local = self.version;
        if version == local {
            tracing::info!(connector = %self.cid, sync_version = local, "the peer now speaks this site's sync protocol version; sync resumes");
        } else {
            let runs = if version < local {
                "an older"
            } else {
                "a newer"
            };
            tracing::error!(connector = %self.cid, peer_sync_version = version, sync_version = local,
                "the peer runs {runs} version of West: its sync messages are version {version}, this site's {local}; nothing syncs until both sites run the same version (nothing is lost meanwhile)");
        }
    }

    fn on_message(&mut self, bytes: &[u8]) {
        let now = self.now();
        let decoded = self.decode(bytes);
        match &decoded {
            Ok(_) => self.peer_speaks(self.version),
            Err(MessageError::Version(v)) => {
                self.peer_speaks(*v);
                return;
            }
            Err(_) => {}
        }
        let result = decoded
            .map_err(proto::sync::SyncError::from)
            .and_then(|msg| match msg.addressee() {
                proto::sync::Addressee::Sender => self.sender.on_message(now, msg),
                proto::sync::Addressee::Receiver => self.receiver.on_message(now, msg),
            });
        if let Err(e) = result {
            tracing::warn!(connector = %self.cid, error = %e, "sync message refused");
        }
    }

    async fn on_applied(&mut self, (generation, result): Applied) {
        if generation != self.generation.load(Ordering::SeqCst) {
            return;
        }
        match result {
            Ok(lasts) => {
                self.dirty = true;
                for last in lasts {
                    let now = self.now();
                    if let Err(e) = self.receiver.on_applied(now, last) {
                        tracing::error!(connector = %self.cid, error = %e, "apply confirmed out of order");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(connector = %self.cid, error = %e, "sync apply failed; resuming from the stored cursor");
                self.generation.fetch_add(1, Ordering::SeqCst);
                self.store_job();
                let applied = match self.state.store.sync_state(&self.cid).await {
                    Ok(d) => Held {
                        applied: d.applied,
                        live: d.live,
                    },
                    Err(_) => self.receiver.held(),
                };
                let now = self.now();
                self.receiver = Receiver::with_held(ReceiverConfig::default(), applied, now);
                if self.up {
                    self.receiver.link_up(now, rand::random());
                }
            }
        }
    }

    /// The outbox grew: learns its head. A Sender that had everything acknowledged reads
    /// next right after its head, so the records from there come in the same store read
    /// (one round trip instead of two on the latency path; `prefetched`).
    async fn on_appended(&mut self) {
        self.dirty = true;
        self.store_job();
        let known = self.sender.stats(self.now()).head;
        if self.up && self.sender.acked() == known {
            let from = known + 1;
            match self
                .state
                .store
                .outbox_head_read(&self.cid, from, self.read_max)
                .await
            {
                Ok(read) => {
                    let (now, head) = (self.now(), read.head);
                    self.prefetched = Some((from, read));
                    self.sender.outbox_head(now, head);
                }
                Err(e) => {
                    tracing::error!(connector = %self.cid, error = %e, "cannot read the outbox head")
                }
            }
            return;
        }
        match self.state.store.outbox_head(&self.cid).await {
            Ok(head) => {
                let now = self.now();
                self.sender.outbox_head(now, head);
            }
            Err(e) => {
                tracing::error!(connector = %self.cid, error = %e, "cannot read the outbox head")
            }
        }
    }

    async fn flush_ack(&mut self) {
        let Some(applied) = self.ack_pending.take() else {
            return;
        };
        self.store_job();
        self.dirty = true;
        if let Err(e) = self.state.store.outbox_acked(&self.cid, applied).await {
            tracing::error!(connector = %self.cid, error = %e, "cannot persist an acknowledgement");
            self.ack_pending = Some(applied);
        }
    }

    /// Refreshes the durable gauges and publishes the status (and the metrics).
    async fn refresh(&mut self) {
        self.dirty = false;
        self.store_job();
        if let Ok(d) = self.state.store.sync_state(&self.cid).await {
            self.durable = d;
            // A safety net for a missed wake-up.
            let now = self.now();
            self.sender.outbox_head(now, d.head);
        }
        self.publish();
    }

    /// Publishes the status; returns whether it changes with time alone (a backlog ages,
    /// rates decay, a session stays down), so that another publication is due.
    fn publish(&mut self) -> bool {
        let now = self.now();
        let st = self.sender.stats(now);
        let rt = self.receiver.stats();
        let at = Instant::now();
        if self.heads.back().is_none_or(|(h, _)| rt.remote_head > *h) {
            self.heads.push_back((rt.remote_head, at));
        }
        while self.heads.front().is_some_and(|(h, _)| *h <= rt.applied) {
            self.heads.pop_front();
        }
        if st.acked > self.peer_acked {
            self.peer_acked = st.acked;
            self.peer_applied_at = Some(crate::clock::now_micros());
        }
        let prefix = match self.role {
            Role::Target => rt.applied,
            _ => st.acked,
        };
        self.samples
            .push_back((at, st.records_sent, rt.records_applied, st.acked, prefix));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, ..)| at.duration_since(*t) > Duration::from_secs(10))
        {
            self.samples.pop_front();
        }
        let rate = |pick: fn(&(Instant, u64, u64, u64, u64)) -> u64| match (
            self.samples.front(),
            self.samples.back(),
        ) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                pick(b).saturating_sub(pick(a)) as f64 / b.0.duration_since(a.0).as_secs_f64()
            }
            _ => 0.0,
        };
        let (send_rate, apply_rate, peer_apply_rate, catchup_rate) =
            (rate(|s| s.1), rate(|s| s.2), rate(|s| s.3), rate(|s| s.4));
        let now_us = crate::clock::now_micros();
        // The two lanes (docs/sync.md, "Two lanes"): the live lane, and the backlog lane
        // draining behind it, which the prefix of what the Target holds measures.
        let (live_from, live_lag_points, catchup_points, catchup_bytes, catchup_oldest_at) =
            match self.role {
                Role::Target => {
                    let oldest = self.heads.front().map(|(_, t)| {
                        now_us - i64::try_from(at.duration_since(*t).as_micros()).unwrap_or(0)
                    });
                    (
                        rt.live.map(|(from, _)| from),
                        rt.live
                            .map_or(0, |(_, to)| rt.remote_head.saturating_sub(to)),
                        rt.backlog_records,
                        None,
                        rt.live.and(oldest),
                    )
                }
                _ => {
                    let from = st.live_from;
                    let catchup = from.map_or(0, |f| (f - 1).saturating_sub(st.acked));
                    let unacked = st.head.saturating_sub(st.acked).max(1);
                    let bytes = u128::from(self.durable.outbox_bytes) * u128::from(catchup)
                        / u128::from(unacked);
                    (
                        from,
                        st.live_records,
                        catchup,
                        from.map(|_| u64::try_from(bytes).unwrap_or(u64::MAX)),
                        from.and(st.oldest_unacked_age_us)
                            .map(|age| now_us - i64::try_from(age).unwrap_or(0)),
                    )
                }
            };
        let session_down = self.handle.session_down_for();
        let (backlog, lag, rate) = match self.role {
            Role::Target => (
                rt.lag_records,
                self.heads
                    .front()
                    .map_or(0.0, |(_, t)| at.duration_since(*t).as_secs_f64()),
                apply_rate,
            ),
            _ => (
                st.backlog_records,
                st.oldest_unacked_age_us.unwrap_or(0) as f64 / 1e6,
                send_rate,
            ),
        };
        let status = SyncStatus {
            session_up: st.session_up || rt.session_up,
            backlog_points: backlog,
            lag_seconds: if backlog == 0 { 0.0 } else { lag },
            outbox_head: st.head,
            acked: st.acked,
            applied: rt.applied,
            last_applied_at: self.durable.last_applied_at,
            outbox_bytes: self.durable.outbox_bytes,
            outbox_partitions: self.durable.partitions,
            points_sent: st.records_sent,
            points_applied: rt.records_applied,
            bytes_sent: st.bytes_sent,
            bytes_received: rt.bytes_received,
            gaps_recorded: rt.gaps_recorded,
            points_lost: rt.points_lost,
            points_expired: self.shared.points_expired.load(Ordering::Relaxed),
            reconnects: self.reconnects,
            send_rate,
            apply_rate,
            peer_apply_rate,
            peer_applied_at: self.peer_applied_at,
            eta_seconds: (backlog > 0 && rate > 0.0).then(|| backlog as f64 / rate),
            live_from,
            live_lag_points,
            catchup_points,
            catchup_bytes,
            catchup_oldest_at,
            catchup_rate,
            catchup_eta_seconds: (catchup_points > 0 && catchup_rate > 0.0)
                .then(|| catchup_points as f64 / catchup_rate),
            session_down_seconds: session_down.map(|d| d.as_secs_f64()),
            session_stalled: session_down.is_some_and(|d| d >= peer::STALL_AFTER),
            messages_dropped: self.handle.dropped(),
            version_mismatch: self.peer_version.map(|v| (v, self.version)),
        };
        self.state.metrics.sync_status(&self.cid, &status);
        // A Source's chart shows what its Target applied (acknowledged); a Target's what it
        // applied itself.
        let applied = match self.role {
            Role::Target => rt.records_applied,
            _ => st.acked.saturating_sub(self.acked_at_start),
        };
        self.shared
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(
                at,
                crate::clock::now_micros(),
                st.records_sent,
                applied,
                backlog,
            );
        let busy = status.backlog_points > 0
            || status.session_down_seconds.is_some()
            || status.send_rate > 0.0
            || status.apply_rate > 0.0;
        *self.shared.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
        busy
    }
}

/// How long a session may be silent (nothing at all from the peer) before the site asks
/// whether the peer's site is still there.
const SILENCE: Duration = Duration::from_secs(30);
/// How often the site looks for silent sessions.
const LIVENESS_EVERY: Duration = Duration::from_secs(10);
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(5);
/// Unanswered liveness pings in a row that end the silent sessions with a site (one may
/// wait behind a busy hub). An answer of the hub that the site is offline ends them at once.
const LIVENESS_MISSES: u32 = 2;

/// Starts the site-wide duties of the sync drivers: one retention pass and one liveness
/// check for all pairings, so that an idle pairing arms no timer of its own.
pub fn spawn_site_tasks(state: &AppState, cancel: CancellationToken, tasks: &mut JoinSet<()>) {
    tasks.spawn(retention(state.clone(), cancel.clone()));
    tasks.spawn(liveness(state.clone(), cancel));
}

/// Every [`EXPIRY_EVERY`], one store read finds the connectors that have anything past
/// retention (or over the disk budget), and only those get a retention pass (a write).
/// With `--keep-points`, stored points past it are dropped too, in one pass (a write) each
/// time the cutoff enters another hour: the store drops whole hours.
async fn retention(state: AppState, cancel: CancellationToken) {
    const HOUR_US: i64 = 3_600_000_000;
    // The hour of the last stored-points cutoff passed to the store.
    let mut points_hour: Option<i64> = None;
    let mut tick = tokio::time::interval(EXPIRY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = &state.sync;
        let retention = Retention {
            now: s.clock.now(),
            keep_us: i64::try_from(s.retention.as_micros()).unwrap_or(i64::MAX),
            budget_bytes: s.disk_budget,
        };
        if let Some(keep) = s.keep_points {
            let keep = i64::try_from(keep.as_micros()).unwrap_or(i64::MAX);
            let before = retention.now.saturating_sub(keep);
            let hour = before.div_euclid(HOUR_US);
            if points_hour != Some(hour) {
                match state.store.points_expire(before).await {
                    Ok(r) => {
                        points_hour = Some(hour);
                        if r.points > 0 {
                            tracing::info!(
                                points = r.points,
                                partitions = r.partitions,
                                "dropped stored points older than --keep-points"
                            );
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "cannot drop expired stored points"),
                }
            }
        }
        let jobs = &state.metrics.sync_store_jobs;
        jobs.increment(1);
        let due = match state.store.sync_expiring(retention).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "cannot look for expired sync data");
                continue;
            }
        };
        for cid in due {
            jobs.increment(1);
            match state.store.sync_expire(&cid, retention).await {
                Ok(r) => {
                    if r.points_lost > 0 || r.pending_expired > 0 {
                        tracing::warn!(connector = %cid, lost = r.points_lost, pending_expired = r.pending_expired,
                            "retention dropped undelivered data; the Target is told exactly what");
                    }
                    state.remote.sync.expired(&cid, r.points_lost);
                }
                Err(e) => tracing::error!(connector = %cid, error = %e, "retention pass failed"),
            }
        }
    }
}

/// The site's liveness check of established sessions. Either side handshakes on start,
/// whenever its own hub link reconnects and after any failure, so the side that lost a
/// session always starts a new one; what no one notices is a peer site that went away
/// while its sessions were idle. Every [`LIVENESS_EVERY`] this looks at the sessions
/// silent for [`SILENCE`] (any traffic counts, so a busy session costs nothing) and pings
/// each of their peer *sites* once through the hub; a site that is offline, or misses
/// [`LIVENESS_MISSES`] pings in a row, has its silent sessions ended (they handshake
/// again). The cost is per peer site, not per pairing.
async fn liveness(state: AppState, cancel: CancellationToken) {
    let mut misses: HashMap<String, u32> = HashMap::new();
    let mut tick = tokio::time::interval(LIVENESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut silent: HashMap<String, Vec<(ConnectorId, PeerHandle)>> = HashMap::new();
        for (cid, h) in state.remote.lock_peers().iter() {
            if h.is_up() && h.silent_for() >= SILENCE {
                silent
                    .entry(h.peer.site.clone())
                    .or_default()
                    .push((cid.clone(), h.clone()));
            }
        }
        misses.retain(|site, _| silent.contains_key(site));
        for (site, sessions) in silent {
            let miss = misses.entry(site.clone()).or_default();
            let gone = match state.link.ping(&site, LIVENESS_TIMEOUT).await {
                Ok(_) => {
                    *miss = 0;
                    continue;
                }
                Err(crate::link::LinkError::PeerOffline { .. }) => true,
                Err(_) => {
                    *miss += 1;
                    *miss >= LIVENESS_MISSES
                }
            };
            if !gone {
                continue;
            }
            *miss = 0;
            tracing::warn!(peer_site = %site, sessions = sessions.len(), "the peer site stopped answering; its silent sessions start over");
            for (_, h) in sessions {
                // Traffic since the look above proves that session live.
                if h.silent_for() >= SILENCE {
                    h.reset("the peer's site did not answer liveness pings".into())
                        .await;
                }
            }
        }
    }
}

/// Applies queued items, as many as are waiting (up to [`MAX_APPLY_RECORDS`]) in one
/// transaction, the live lane's first: a live batch waits only for the transaction under
/// way, not for the backlog queued before it (`proto::sync::ApplyQueue`).
async fn applier(
    store: Arc<dyn Store>,
    clock: Clock,
    cid: ConnectorId,
    generation: Arc<AtomicU64>,
    mut jobs: mpsc::UnboundedReceiver<ApplyJob>,
    done: mpsc::UnboundedSender<Applied>,
) {
    fn push(queue: &mut ApplyQueue<ApplyJob>, job: ApplyJob) {
        let records = match &job.item {
            Inbound::Records(a) => a.records.len(),
            Inbound::Gap(_) => 1,
        };
        let lane = job.lane;
        queue.push(job, records, lane);
    }
    let mut queue = ApplyQueue::new();
    loop {
        if queue.is_empty() {
            match jobs.recv().await {
                Some(job) => push(&mut queue, job),
                None => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            push(&mut queue, job);
        }
        let current = generation.load(Ordering::SeqCst);
        let items: Vec<Inbound> = queue
            .take(MAX_APPLY_RECORDS)
            .into_iter()
            .filter(|job| job.generation == current)
            .map(|job| job.item)
            .collect();
        if items.is_empty() {
            continue;
        }
        let lasts: Vec<u64> = items
            .iter()
            .map(|i| match i {
                Inbound::Records(a) => a.last_seq,
                Inbound::Gap(g) => g.last_seq,
            })
            .collect();
        let result = store.sync_apply(&cid, items, clock.now()).await;
        if done.send((current, result.map(|_| lasts))).is_err() {
            return;
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn run(
    state: AppState,
    cid: ConnectorId,
    handle: PeerHandle,
    mut events: mpsc::Receiver<SyncEvent>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let (role, durable) = loop {
        let loaded = async {
            let c = state.store.connector(&cid).await?;
            let d = state.store.sync_state(&cid).await?;
            Ok::<_, store::StoreError>((c.role, d))
        }
        .await;
        match loaded {
            Ok(x) => break x,
            Err(e) => {
                tracing::error!(connector = %cid, error = %e, "cannot load the sync state; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    tracing::info!(connector = %cid, head = durable.head, acked = durable.acked, applied = durable.applied, "sync driver started");
    let mut local = JoinSet::new();
    let generation = Arc::new(AtomicU64::new(0));
    let (apply_tx, apply_rx) = mpsc::unbounded_channel();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    local.spawn(applier(
        Arc::clone(&state.store),
        state.sync.clock.clone(),
        cid.clone(),
        Arc::clone(&generation),
        apply_rx,
        done_tx,
    ));
    let started = Instant::now();
    let sender_config = SenderConfig::default();
    let read_max = sender_config.max_batch_records;
    let state_version = state.sync.test_sync_version.unwrap_or(SYNC_VERSION);
    let mut d = SyncDriver {
        sender: Sender::new(
            sender_config,
            SenderDurable {
                acked: durable.acked,
                head: durable.head,
                lease: durable.lease,
                live: durable.live_lease,
            },
            0,
        ),
        receiver: Receiver::with_held(
            ReceiverConfig::default(),
            Held {
                applied: durable.applied,
                live: durable.live,
            },
            0,
        ),
        state,
        cid,
        role,
        handle,
        shared,
        started,
        up: false,
        generation,
        apply_tx,
        ack_pending: None,
        heads: VecDeque::new(),
        samples: VecDeque::new(),
        acked_at_start: durable.acked,
        peer_acked: durable.acked,
        peer_applied_at: None,
        durable,
        dirty: true,
        budget: None,
        held: VecDeque::new(),
        held_live: VecDeque::new(),
        reconnects: 0,
        lease_due: None,
        prefetched: None,
        read_max,
        version: state_version,
        peer_version: None,
    };
    match d.state.store.sync_budget(&d.cid).await {
        Ok(b) => d.shared.budget.store(b.unwrap_or(0), Ordering::Relaxed),
        Err(e) => {
            tracing::error!(connector = %d.cid, error = %e, "cannot read the bandwidth budget")
        }
    }
    d.follow_budget();
    if d.handle.is_up() {
        d.link_up();
    }
    // Every timer is armed only while it has something to do: an idle, caught-up pairing
    // sleeps until an event (docs/sync.md, "Idle pairings").
    let wake = Arc::clone(&d.shared);
    let mut next_ack: Option<tokio::time::Instant> = None;
    let mut refreshed = tokio::time::Instant::now() - STATUS_EVERY;
    let mut published = Instant::now() - PUBLISH_EVERY;
    let mut unpublished = true;
    let mut busy = true;
    let mut stale_deadline: Option<tokio::time::Instant> = None;
    loop {
        d.follow_budget();
        d.drain().await;
        d.release_held().await;
        let now_t = tokio::time::Instant::now();
        if let Some(applied) = d.ack_pending {
            let head = d.sender.stats(d.now()).head;
            if applied >= head {
                // Caught up: nothing to coalesce with, so persist it now (and a status that
                // says everything is acknowledged is published after it is durable).
                next_ack = None;
                d.flush_ack().await;
            } else if next_ack.is_none() {
                next_ack = Some(now_t + ACK_FLUSH);
            }
        }
        if d.dirty && now_t >= refreshed + STATUS_EVERY {
            d.refresh().await;
            refreshed = tokio::time::Instant::now();
            published = Instant::now();
            unpublished = false;
            busy = true;
        }
        if unpublished && published.elapsed() >= PUBLISH_EVERY {
            busy = d.publish();
            published = Instant::now();
            unpublished = false;
        }
        let refresh_at = d.dirty.then_some(refreshed + STATUS_EVERY);
        let publish_at = if unpublished {
            Some(tokio::time::Instant::from_std(published + PUBLISH_EVERY))
        } else if busy {
            Some(tokio::time::Instant::from_std(published + STATUS_EVERY))
        } else {
            None
        };
        let mut machine = d
            .sender
            .next_timeout()
            .into_iter()
            .chain(d.receiver.next_timeout())
            .min()
            .map(|us| tokio::time::Instant::from_std(started + Duration::from_micros(us)));
        // A deadline that is still in the past after the tick it asked for would turn this
        // loop into a spin (seen once: the Receiver kept reporting its stall deadline on an
        // idle, caught-up link; fixed, and the simulation now asserts that no deadline
        // survives its tick). A safety net all the same: act on a passed deadline at once
        // the first time, then at most every STALE_TICK while it stays stuck.
        if let Some(m) = machine
            && m <= now_t
        {
            if stale_deadline == Some(m) {
                machine = Some(now_t + STALE_TICK);
            } else {
                stale_deadline = Some(m);
            }
        } else {
            stale_deadline = None;
        }
        let budget_at = match &d.budget {
            Some((_, bucket)) if !d.held.is_empty() || !d.held_live.is_empty() => {
                Some(tokio::time::Instant::from_std(bucket.ready_at()))
            }
            _ => None,
        };
        let deadline = [next_ack, refresh_at, publish_at, machine, budget_at]
            .into_iter()
            .flatten()
            .min();
        let idle = deadline.is_none();
        if idle {
            wake.idle.store(true, Ordering::Release);
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            Some(done) = done_rx.recv() => d.on_applied(done).await,
            event = events.recv() => match event {
                None => break,
                Some(SyncEvent::Up) => d.link_up(),
                Some(SyncEvent::Down) => d.link_down(),
                Some(SyncEvent::Message(bytes)) => d.on_message(&bytes),
            },
            () = wake.notify.notified() => d.on_appended().await,
            () = sleep_until(deadline) => {
                let now = d.now();
                d.sender.tick(now);
                d.receiver.tick(now);
                if next_ack.is_some_and(|t| tokio::time::Instant::now() >= t) {
                    next_ack = None;
                    d.flush_ack().await;
                }
            }
        }
        d.state.metrics.sync_driver_wakeups.increment(1);
        if idle {
            wake.idle.store(false, Ordering::Release);
            // The history's idle stretch, before this wake-up's counts go into it.
            wake.history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .fill_idle(Instant::now(), crate::clock::now_micros());
        }
        unpublished = true;
    }
    d.flush_ack().await;
    local.shutdown().await;
}
