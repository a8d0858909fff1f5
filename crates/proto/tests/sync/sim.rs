//! Layer 2 of docs/style.md: a seeded simulation of one pairing, driving the real `proto::sync`
//! state machines through their public driver API, the way a site's sync driver will.
//!
//! Each site is its state machines plus an in-memory model of its durable store: the outbox
//! (records with seqs, append times, time-partitioned retention on the Source, lost spans),
//! `acked`, `lease` and the live lease, what is applied (a prefix and a live lane, checked
//! with [`Held`] as the SQLite store does), applied points, recorded gaps and the device
//! table. The Source opens a live lane whenever its unsent backlog passes a small,
//! per-seed threshold, so most seeds drain a backlog behind a live lane, through outages,
//! crashes and reordering, and many open several lanes one after another. Store work (reads, applies, persisting acks and leases) is queued and completes
//! later, as group commit does; applies go through [`ApplyQueue`] (the live lane's first,
//! as the site's applier takes them) and complete interleaved at random with the rest. The network drops, duplicates, delays and reorders
//! messages; the link goes down and up, and the two sites' sessions come up at different
//! moments (either first; what reaches a site before its own is up is lost), as the
//! encrypted session does when either side may initiate; the clock jumps past retention;
//! either site crashes
//! (its queue of store work and its state machines are lost, its store is kept).
//!
//! Checked after every step: no point applied twice; every series applied in timestamp
//! order within each lane; applies and gaps are adjacent to what is applied and disjoint
//! from it; every recorded gap is exact (compared with the ground truth of what the Source
//! appended and what retention dropped); when a point is applied, the Target's record of
//! its device already holds every change the Source made to that device before the point
//! (device changes go before the data that needs them, in either lane). Checked after quiescence (network healed, link up, no crash): every point is
//! applied exactly once or inside a recorded gap, every dropped point is, and both device
//! tables show the join of every edit ever made.
//!
//! `WEST_SIM_SEED=n` replays one seed (printing a trace); `WEST_SIM_SEEDS=n` runs more.
//! Deliberately absent: wall-clock time and threads; one seed is fully deterministic.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use west_proto::model::{DeviceState, Identity, ResourceName, Value};
use west_proto::sync::{
    self, Addressee, Admit, Apply, ApplyQueue, DeviceEdit, DeviceRecord, GapRecord, Held, Hlc,
    LostSpan, Point, ReadChunk, Receiver, ReceiverConfig, ReceiverOutput, Record, Sender,
    SenderConfig, SenderDurable, SenderOutput, Stamp, codec, message,
};

const SOURCE: usize = 0;
const TARGET: usize = 1;
const NAMES: [&str; 2] = ["site-a", "site-b"];
const DEVICES: [&str; 5] = ["dev-0", "dev-1", "dev-2", "dev-3", "dev-4"];
const RESOURCES: [&str; 3] = ["temp", "count", "label"];

/// Store work queued by a driver, completed later in order (group commit).
#[derive(Debug)]
enum Op {
    Read { from: u64, max: usize },
    Acked(u64),
    Lease(u64),
    OpenLive(u64),
    LiveLease { from: u64, upto: u64 },
    Apply(Apply),
    Gap(GapRecord),
}

/// The durable outbox of one stream.
#[derive(Debug, Default)]
struct Outbox {
    /// seq → (append time, record); trimmed up to `acked`, holes only where `lost` says.
    records: BTreeMap<u64, (u64, Record)>,
    head: u64,
    acked: u64,
    lease: u64,
    /// The live lease `(from, upto)`: retention keeps it too until acknowledged.
    live: Option<(u64, u64)>,
    lost: Vec<LostSpan>,
    /// The seq of each device's latest change in this outbox.
    out_seq: HashMap<Identity, u64>,
}

impl Outbox {
    fn append(&mut self, now: u64, r: Record) -> u64 {
        self.head += 1;
        self.records.insert(self.head, (now, r));
        self.head
    }

    fn read(&self, from: u64, max: usize) -> ReadChunk {
        if let Some(span) = self
            .lost
            .iter()
            .find(|s| s.first_seq <= from && from <= s.last_seq)
        {
            return ReadChunk::Lost {
                from,
                span: span.clone(),
            };
        }
        let mut records = Vec::new();
        let mut seq = from;
        while records.len() < max {
            match self.records.get(&seq) {
                Some((_, r)) => records.push(r.clone()),
                None => break,
            }
            seq += 1;
        }
        assert!(
            !records.is_empty() || from > self.head || from <= self.acked,
            "outbox has neither record nor lost span for {from} (acked {}, head {})",
            self.acked,
            self.head
        );
        ReadChunk::Records { from, records }
    }
}

#[derive(Debug)]
struct Site {
    /// Durable: this site's outgoing stream.
    outbox: Outbox,
    /// Durable: what is applied of the incoming stream (the store's cursor and live lane).
    cursor: Held,
    /// Durable: gaps recorded on the incoming stream.
    gaps: Vec<GapRecord>,
    /// Durable: the device table.
    devices: BTreeMap<Identity, DeviceRecord>,
    /// Durable: applied points (key → seq), and the last applied timestamp per series in
    /// each lane (`false`: the prefix, `true`: the live lane).
    applied: HashMap<(Identity, ResourceName, i64), u32>,
    series_last_t: HashMap<(Identity, ResourceName, bool), i64>,
    /// Volatile.
    hlc: Hlc,
    sender: Sender,
    receiver: Receiver,
    ops: VecDeque<Op>,
    /// The receiver's applies and gaps, live lane first as the site's applier takes them;
    /// they complete interleaved with `ops` (the applier is a task of its own).
    applies: ApplyQueue<Op>,
}

struct Params {
    sender: SenderConfig,
    receiver: ReceiverConfig,
    drop: f64,
    dup: f64,
    max_delay_us: u64,
    crash: f64,
    flap: f64,
    /// Deliver in order per direction (a healed network over TCP) instead of reordering.
    fifo: bool,
    retention_us: u64,
    partition_us: u64,
}

struct Net {
    /// Send order, to break ties between equal delivery times.
    id: u64,
    to: usize,
    at: u64,
    bytes: Vec<u8>,
}

/// Ground truth of the Source's data stream.
#[derive(Default)]
struct Truth {
    points: BTreeMap<u64, Point>,
    by_key: HashMap<(Identity, ResourceName, i64), u64>,
    lost: BTreeSet<u64>,
    /// Seqs of device changes in the Source's outbox.
    device_seqs: BTreeSet<u64>,
    /// The device changes of the Source's outbox by seq, and the seqs retention dropped.
    source_changes: BTreeMap<u64, DeviceRecord>,
    lost_changes: BTreeSet<u64>,
    /// Every device change ever made, on either side.
    changes: Vec<DeviceRecord>,
}

struct World {
    rng: StdRng,
    now: u64,
    p: Params,
    sites: [Site; 2],
    net: Vec<Net>,
    link_up: bool,
    /// Each site's own view of the session: the two do not come up at the same moment (the
    /// responder is up when it answers, the initiator when the answer arrives; either side
    /// may be either), and a message reaching a site whose session is not up yet is lost.
    session: [bool; 2],
    /// The site whose session comes up later, and when.
    pending_up: Option<(usize, u64)>,
    truth: Truth,
    trace: bool,
    next_t: HashMap<(Identity, ResourceName), i64>,
    reconnect_wanted: bool,
    sent: u64,
    counts: Counts,
}

fn new_site(p: &Params, now: u64) -> Site {
    Site {
        outbox: Outbox::default(),
        cursor: Held::default(),
        gaps: Vec::new(),
        devices: BTreeMap::new(),
        applied: HashMap::new(),
        series_last_t: HashMap::new(),
        hlc: Hlc::ZERO,
        sender: Sender::new(p.sender.clone(), SenderDurable::default(), now),
        receiver: Receiver::new(p.receiver.clone(), 0, now),
        ops: VecDeque::new(),
        applies: ApplyQueue::new(),
    }
}

impl World {
    fn new(seed: u64, trace: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let faulty = rng.random_bool(0.8);
        let live_after_records = if rng.random_bool(0.8) {
            rng.random_range(2..60)
        } else {
            u64::MAX
        };
        let p = Params {
            sender: SenderConfig {
                window_bytes: rng.random_range(300..20_000),
                max_batch_records: rng.random_range(1..40),
                max_batch_bytes: rng.random_range(100..4_000),
                linger_us: rng.random_range(0..5_000),
                retransmit_timeout_us: rng.random_range(100_000..2_000_000),
                stall_timeout_us: rng.random_range(3_000_000..20_000_000),
                lease_records: rng.random_range(4..200),
                window_records: rng.random_range(1..100),
                live_after_records,
            },
            receiver: ReceiverConfig {
                resume_interval_us: rng.random_range(50_000..1_000_000),
                stall_timeout_us: rng.random_range(3_000_000..20_000_000),
            },
            drop: if faulty {
                rng.random_range(0.0..0.15)
            } else {
                0.0
            },
            dup: if faulty {
                rng.random_range(0.0..0.1)
            } else {
                0.0
            },
            max_delay_us: rng.random_range(100..50_000),
            crash: if faulty {
                rng.random_range(0.0..0.01)
            } else {
                0.0
            },
            fifo: !faulty || rng.random_bool(0.3),
            flap: if faulty {
                rng.random_range(0.0..0.03)
            } else {
                0.0
            },
            retention_us: 60_000_000,
            partition_us: 10_000_000,
        };
        let now = 1_000_000_000;
        let sites = [new_site(&p, now), new_site(&p, now)];
        let mut w = World {
            rng,
            now,
            p,
            sites,
            net: Vec::new(),
            link_up: false,
            session: [false; 2],
            pending_up: None,
            truth: Truth::default(),
            trace,
            next_t: HashMap::new(),
            reconnect_wanted: false,
            sent: 0,
            counts: Counts::default(),
        };
        w.connect();
        w
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("[{:>12}] {}", self.now, what());
        }
    }

    // ---- link and crashes -------------------------------------------------------------

    fn connect(&mut self) {
        if self.link_up {
            return;
        }
        self.link_up = true;
        let first = self.rng.random_range(0..2);
        let later = self.now + self.rng.random_range(0..=2 * self.p.max_delay_us);
        self.log(|| format!("link up; {} first", NAMES[first]));
        self.pending_up = Some((1 - first, later));
        self.session_up(first);
    }

    fn session_up(&mut self, i: usize) {
        let session = self.rng.random::<u64>();
        let now = self.now;
        self.session[i] = true;
        self.log(|| format!("{} session up", NAMES[i]));
        self.sites[i].sender.link_up(now);
        self.sites[i].receiver.link_up(now, session);
        self.drain(i);
    }

    /// Brings up the session that comes up second, once its time has come.
    fn pending_sessions(&mut self) {
        if let Some((i, at)) = self.pending_up
            && at <= self.now
        {
            self.pending_up = None;
            self.session_up(i);
        }
    }

    fn disconnect(&mut self) {
        if !self.link_up {
            return;
        }
        self.link_up = false;
        self.pending_up = None;
        self.log(|| "link down".into());
        self.net.clear();
        let now = self.now;
        for (s, up) in self.sites.iter_mut().zip(&mut self.session) {
            if std::mem::take(up) {
                s.sender.link_down(now);
                s.receiver.link_down(now);
            }
        }
        for i in 0..2 {
            self.drain(i);
        }
    }

    fn crash(&mut self, i: usize) {
        self.log(|| format!("crash {}", NAMES[i]));
        self.counts.crashes += 1;
        self.disconnect();
        let now = self.now;
        let p = &self.p;
        let s = &mut self.sites[i];
        s.ops.clear();
        s.applies.clear();
        s.sender = Sender::new(
            p.sender.clone(),
            SenderDurable {
                acked: s.outbox.acked,
                head: s.outbox.head,
                lease: s.outbox.lease,
                live: s.outbox.live,
            },
            now,
        );
        s.receiver = Receiver::with_held(p.receiver.clone(), s.cursor, now);
        // The clock restarts from the largest stamp the store holds.
        s.hlc = s
            .devices
            .values()
            .filter_map(|d| d.max_stamp().map(|st| st.hlc))
            .max()
            .unwrap_or(Hlc::ZERO);
    }

    // ---- outputs, network, store work ----------------------------------------------------

    fn drain(&mut self, i: usize) {
        loop {
            let mut progressed = false;
            while let Some(o) = self.sites[i].sender.poll_output() {
                progressed = true;
                match o {
                    SenderOutput::Send(bytes) | SenderOutput::SendLive(bytes) => {
                        self.transmit(1 - i, bytes)
                    }
                    SenderOutput::OpenLive { records } => {
                        self.sites[i].ops.push_back(Op::OpenLive(records))
                    }
                    SenderOutput::LiveLease { from, upto } => {
                        self.sites[i].ops.push_back(Op::LiveLease { from, upto })
                    }
                    SenderOutput::Read { from, max_records } => {
                        self.sites[i].ops.push_back(Op::Read {
                            from,
                            max: max_records,
                        })
                    }
                    SenderOutput::Acked { applied } => {
                        self.sites[i].ops.push_back(Op::Acked(applied))
                    }
                    SenderOutput::Lease { upto } => self.sites[i].ops.push_back(Op::Lease(upto)),
                    SenderOutput::Reconnect { reason } => {
                        self.log(|| format!("{} sender: reconnect: {reason}", NAMES[i]));
                        self.reconnect_wanted = true;
                    }
                }
            }
            while let Some(o) = self.sites[i].receiver.poll_output() {
                progressed = true;
                match o {
                    ReceiverOutput::Send(bytes) => self.transmit(1 - i, bytes),
                    ReceiverOutput::Apply(a, lane) => {
                        let n = a.records.len();
                        self.sites[i].applies.push(Op::Apply(a), n, lane);
                    }
                    ReceiverOutput::RecordGap(g, lane) => {
                        self.sites[i].applies.push(Op::Gap(g), 1, lane)
                    }
                    ReceiverOutput::Reconnect { reason } => {
                        self.log(|| format!("{} receiver: reconnect: {reason}", NAMES[i]));
                        self.reconnect_wanted = true;
                    }
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn transmit(&mut self, to: usize, bytes: Vec<u8>) {
        if !self.link_up {
            return;
        }
        if self.rng.random_bool(self.p.drop) {
            self.counts.dropped += 1;
            return;
        }
        let copies = if self.rng.random_bool(self.p.dup) {
            self.counts.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut at = self.now + self.rng.random_range(0..=self.p.max_delay_us);
            if self.p.fifo {
                // An ordered transport (as TCP under the channel is): never overtake.
                at = at.max(
                    self.net
                        .iter()
                        .filter(|m| m.to == to)
                        .map(|m| m.at)
                        .max()
                        .unwrap_or(0),
                );
            }
            self.sent += 1;
            self.net.push(Net {
                id: self.sent,
                to,
                at,
                bytes: bytes.clone(),
            });
        }
    }

    fn deliver_due(&mut self) {
        let now = self.now;
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].at <= now {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|m| (m.at, m.id));
        for m in due {
            if !self.link_up {
                break;
            }
            if !self.session[m.to] {
                // Its session is not up yet: the message is a stale leftover there.
                self.counts.dropped += 1;
                continue;
            }
            let msg = message::decode(&m.bytes).expect("our own messages decode");
            self.log(|| format!("→ {}: {}", NAMES[m.to], describe(&msg)));
            let site = &mut self.sites[m.to];
            let r = match msg.addressee() {
                Addressee::Sender => site.sender.on_message(now, msg),
                Addressee::Receiver => site.receiver.on_message(now, msg),
            };
            r.expect("no protocol error between two correct peers");
            self.drain(m.to);
        }
    }

    /// Completes `n` pieces of store work: the oldest of `ops`, or the next apply (live lane
    /// first), whichever comes; both queues advance independently, as the site's store jobs
    /// and its applier task do.
    fn complete_ops(&mut self, i: usize, n: usize) {
        for _ in 0..n {
            let apply_next = match (
                self.sites[i].ops.is_empty(),
                self.sites[i].applies.is_empty(),
            ) {
                (true, true) => return,
                (false, false) => self.rng.random_bool(0.5),
                (ops_empty, _) => ops_empty,
            };
            let site = &mut self.sites[i];
            let op = if apply_next {
                site.applies.pop()
            } else {
                site.ops.pop_front()
            };
            let Some(op) = op else {
                return;
            };
            let now = self.now;
            self.log(|| format!("{} completes {}", NAMES[i], describe_op(&op)));
            match op {
                Op::Read { from, max } => {
                    let mut chunk = self.sites[i].outbox.read(from, max);
                    // Half the reads come with the records' payload, as a store that holds
                    // the row it wrote them in gives it.
                    if let ReadChunk::Records { from, records } = &chunk
                        && self.rng.random_bool(0.5)
                    {
                        chunk = ReadChunk::Encoded {
                            from: *from,
                            payload: codec::encode(records).expect("encodable records"),
                            records: records.clone(),
                        };
                    }
                    self.sites[i]
                        .sender
                        .on_read(now, chunk)
                        .expect("reads answer what was asked");
                }
                Op::Acked(a) => {
                    let ob = &mut self.sites[i].outbox;
                    assert!(a <= ob.head);
                    if a > ob.acked {
                        ob.acked = a;
                        let keep = ob.records.split_off(&(a + 1));
                        ob.records = keep;
                    }
                }
                Op::Lease(upto) => {
                    let ob = &mut self.sites[i].outbox;
                    ob.lease = ob.lease.max(upto);
                    self.sites[i].sender.on_lease(now, upto);
                }
                Op::OpenLive(records) => {
                    // One transaction: the current record of every device with a change
                    // not yet acknowledged goes first on the new lane, and the live lease
                    // starts with it.
                    let site = &mut self.sites[i];
                    let ob = &mut site.outbox;
                    let from = ob.head + 1;
                    if let Some((_, upto)) = ob.live.take() {
                        ob.lease = ob.lease.max(upto);
                    }
                    let pending: Vec<Identity> = ob
                        .out_seq
                        .iter()
                        .filter(|(_, seq)| **seq > ob.acked)
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in pending {
                        let snapshot = site.devices[&id].clone();
                        let seq = ob.append(now, Record::Device(Box::new(snapshot.clone())));
                        ob.out_seq.insert(id, seq);
                        if i == SOURCE {
                            self.truth.device_seqs.insert(seq);
                            self.truth.source_changes.insert(seq, snapshot);
                        }
                    }
                    let upto = from - 1 + records;
                    ob.live = Some((from, upto));
                    let head = ob.head;
                    self.counts.lanes_opened += 1;
                    if self.trace {
                        println!("[{now:>12}] {} opens a live lane at {from}", NAMES[i]);
                    }
                    site.sender.on_live_lease(now, from, upto);
                    site.sender.outbox_head(now, head);
                }
                Op::LiveLease { from, upto } => {
                    let ob = &mut self.sites[i].outbox;
                    match &mut ob.live {
                        Some((f, u)) if *f == from => *u = (*u).max(upto),
                        live => {
                            if let Some((_, u)) = *live {
                                ob.lease = ob.lease.max(u);
                            }
                            *live = Some((from, upto));
                        }
                    }
                    self.sites[i].sender.on_live_lease(now, from, upto);
                }
                Op::Apply(a) => {
                    self.apply(i, &a);
                    self.sites[i]
                        .receiver
                        .on_applied(now, a.last_seq)
                        .expect("applies confirmed in an order the receiver admits");
                }
                Op::Gap(g) => {
                    self.record_gap(i, &g);
                    self.sites[i]
                        .receiver
                        .on_applied(now, g.last_seq)
                        .expect("gaps confirmed in an order the receiver admits");
                }
            }
            self.drain(i);
        }
    }

    /// The receiving store's transaction: check the range against what is applied, apply,
    /// move the cursor (or the live lane).
    fn apply(&mut self, i: usize, a: &Apply) {
        let now = self.now;
        let site = &mut self.sites[i];
        let lane = site.cursor.admit(a.first_seq, a.last_seq, a.opens);
        assert!(
            lane.is_some(),
            "{} apply {}..={} is not adjacent to what is applied, or overlaps it ({:?})",
            NAMES[i],
            a.first_seq,
            a.last_seq,
            site.cursor
        );
        let live = lane != Some(Admit::Prefix);
        for r in &a.records {
            match r {
                Record::Point(p) => {
                    assert_eq!(i, TARGET, "points flow Source → Target only");
                    let key = (p.device.clone(), p.resource.clone(), p.t);
                    let seq = *self
                        .truth
                        .by_key
                        .get(&key)
                        .unwrap_or_else(|| panic!("applied point {key:?} never written"));
                    assert!(
                        (a.first_seq..=a.last_seq).contains(&seq),
                        "point seq {seq} outside its batch {}..={}",
                        a.first_seq,
                        a.last_seq
                    );
                    assert_eq!(self.truth.points[&seq], *p, "point {seq} altered");
                    assert!(!self.truth.lost.contains(&seq), "lost point {seq} applied");
                    let prev = site.applied.insert(key.clone(), seq as u32);
                    assert!(prev.is_none(), "point {key:?} (seq {seq}) applied twice");
                    let series = (p.device.clone(), p.resource.clone(), live);
                    if let Some(last) = site.series_last_t.get(&series) {
                        assert!(*last < p.t, "series {series:?} applied out of order");
                    }
                    site.series_last_t.insert(series, p.t);
                    // Its device already holds every change the Source made before it
                    // (retention may have dropped one: its snapshot follows later).
                    let before = self
                        .truth
                        .source_changes
                        .range(..seq)
                        .filter(|(s, d)| {
                            d.identity == p.device && !self.truth.lost_changes.contains(s)
                        })
                        .fold(None::<DeviceRecord>, |acc, (_, d)| {
                            Some(acc.map_or(d.clone(), |a| sync::merge(&a, d).expect("same")))
                        });
                    if let Some(before) = before {
                        let here = site.devices.get(&p.device);
                        assert!(
                            here.is_some_and(|h| sync::merge(h, &before).expect("same") == *h),
                            "point {seq} of {} applied before a change of its device",
                            p.device
                        );
                    }
                }
                Record::Device(d) => {
                    let merged = match site.devices.get(&d.identity) {
                        Some(cur) => sync::merge(cur, d).expect("same identity"),
                        None => (**d).clone(),
                    };
                    if let Some(st) = d.max_stamp() {
                        site.hlc.observe(st.hlc, now);
                    }
                    site.devices.insert(d.identity.clone(), merged);
                }
            }
        }
        let before = site.cursor;
        site.cursor.add(a.first_seq, a.last_seq, a.opens);
        merged(site, before);
    }

    fn record_gap(&mut self, i: usize, g: &GapRecord) {
        let site = &mut self.sites[i];
        assert!(
            site.cursor
                .admit(g.first_seq, g.last_seq, g.opens)
                .is_some(),
            "gap {}..={} is not adjacent to what is applied, or overlaps it ({:?})",
            g.first_seq,
            g.last_seq,
            site.cursor
        );
        assert!(g.exact, "gap {}..={} is not exact", g.first_seq, g.last_seq);
        // The summary must equal what truly was dropped in the span.
        let points: Vec<Record> = (g.first_seq..=g.last_seq)
            .filter_map(|seq| self.truth.points.get(&seq).map(|p| (seq, p)))
            .map(|(seq, p)| {
                assert!(self.truth.lost.contains(&seq), "gap covers undropped {seq}");
                Record::Point(p.clone())
            })
            .collect();
        let mut expected = LostSpan::summarize(g.first_seq, g.last_seq, &points);
        expected.device_changes = self
            .truth
            .device_seqs
            .range(g.first_seq..=g.last_seq)
            .count() as u64;
        assert_eq!(g.span, expected, "gap summary is not exact");
        site.gaps.push(g.clone());
        let before = site.cursor;
        site.cursor.add(g.first_seq, g.last_seq, g.opens);
        merged(site, before);
    }

    // ---- the Source's retention ------------------------------------------------------------

    /// Drops whole expired time partitions, except records in `(acked, lease]`, recording
    /// exact lost spans and re-appending the latest state of devices whose change is dropped.
    fn expire(&mut self) {
        let cutoff = self.now.saturating_sub(self.p.retention_us) / self.p.partition_us
            * self.p.partition_us;
        let now = self.now;
        let site = &mut self.sites[SOURCE];
        let ob = &mut site.outbox;
        let expired: Vec<u64> = ob
            .records
            .iter()
            .take_while(|(_, (at, _))| *at < cutoff)
            .map(|(seq, _)| *seq)
            .collect();
        let mut run: Vec<(u64, Record)> = Vec::new();
        let mut spans = Vec::new();
        let mut devices = BTreeSet::new();
        for seq in expired {
            let live_leased = ob.live.is_some_and(|(f, u)| f <= seq && seq <= u);
            if seq <= ob.acked || seq <= ob.lease || live_leased {
                if seq <= ob.acked {
                    ob.records.remove(&seq);
                }
                continue;
            }
            let (_, r) = ob.records.remove(&seq).expect("listed");
            if let Record::Device(d) = &r {
                devices.insert(d.identity.clone());
                self.truth.lost_changes.insert(seq);
            }
            if run.last().is_some_and(|(s, _)| *s + 1 != seq) {
                spans.push(std::mem::take(&mut run));
            }
            run.push((seq, r));
        }
        if !run.is_empty() {
            spans.push(run);
        }
        for run in spans {
            let first = run[0].0;
            let last = run[run.len() - 1].0;
            for (seq, r) in &run {
                if let Record::Point(_) = r {
                    self.truth.lost.insert(*seq);
                }
            }
            let span = LostSpan::summarize(first, last, run.iter().map(|(_, r)| r));
            if self.trace {
                println!("[{:>12}] retention drops {first}..={last}", now);
            }
            ob.lost.push(span);
        }
        for id in devices {
            let snapshot = site.devices[&id].clone();
            let seq = ob.append(now, Record::Device(Box::new(snapshot.clone())));
            ob.out_seq.insert(id, seq);
            self.truth.device_seqs.insert(seq);
            self.truth.source_changes.insert(seq, snapshot);
            self.counts.snapshots += 1;
        }
        let head = ob.head;
        site.sender.outbox_head(now, head);
        self.drain(SOURCE);
    }

    // ---- workload ------------------------------------------------------------------------

    fn ingest(&mut self) {
        let n = self.rng.random_range(1..12);
        let now = self.now;
        for _ in 0..n {
            let device =
                Identity::parse(DEVICES[self.rng.random_range(0..DEVICES.len())]).expect("valid");
            let ri = self.rng.random_range(0..RESOURCES.len());
            let resource = ResourceName::parse(RESOURCES[ri]).expect("valid");
            let series = (device.clone(), resource.clone());
            let t = self
                .next_t
                .get(&series)
                .map_or(now as i64, |l| (*l + 1).max(now as i64));
            self.next_t.insert(series, t);
            let value = match ri {
                0 => Value::Number(f64::from(self.rng.random_range(-500i32..3000)) / 100.0),
                1 => Value::Integer(self.rng.random_range(-5..1000)),
                _ => Value::String(format!("s{}", self.rng.random_range(0..10))),
            };
            let p = Point {
                device,
                resource,
                t,
                value,
            };
            let seq = self.sites[SOURCE]
                .outbox
                .append(now, Record::Point(p.clone()));
            self.truth
                .by_key
                .insert((p.device.clone(), p.resource.clone(), p.t), seq);
            self.truth.points.insert(seq, p);
        }
        let head = self.sites[SOURCE].outbox.head;
        self.sites[SOURCE].sender.outbox_head(now, head);
        self.drain(SOURCE);
    }

    fn edit_device(&mut self, i: usize) {
        let now = self.now;
        let id = Identity::parse(DEVICES[self.rng.random_range(0..DEVICES.len())]).expect("ok");
        let stamp = Stamp::new(self.sites[i].hlc.tick(now), NAMES[i]);
        let mut edit = DeviceEdit::default();
        if self.rng.random_bool(0.5) {
            edit.state = Some(if self.rng.random_bool(0.5) {
                DeviceState::Locked
            } else {
                DeviceState::Provisioned
            });
        }
        let key = ["room", "floor", "owner"][self.rng.random_range(0..3)];
        let v = self.rng.random_range(0..4);
        edit.tags
            .insert(key.into(), (v > 0).then(|| format!("v{v}")));
        let change = match self.rng.random_range(0..10) {
            0..=2 => DeviceRecord::create(id, stamp, edit),
            3 => DeviceRecord::delete(id, stamp),
            _ => DeviceRecord::edit(id, stamp, edit),
        };
        self.truth.changes.push(change.clone());
        let site = &mut self.sites[i];
        let merged = match site.devices.get(&change.identity) {
            Some(cur) => sync::merge(cur, &change).expect("same identity"),
            None => change.clone(),
        };
        site.devices.insert(change.identity.clone(), merged);
        let head = site
            .outbox
            .append(now, Record::Device(Box::new(change.clone())));
        site.outbox.out_seq.insert(change.identity.clone(), head);
        if i == SOURCE {
            self.truth.device_seqs.insert(head);
            self.truth.source_changes.insert(head, change);
        }
        site.sender.outbox_head(now, head);
        self.drain(i);
    }

    // ---- the loop ------------------------------------------------------------------------

    fn tick_all(&mut self) {
        let now = self.now;
        for i in 0..2 {
            self.sites[i].sender.tick(now);
            self.sites[i].receiver.tick(now);
            self.drain(i);
            // A deadline still due after the tick it asked for would make a driver spin.
            let s = &self.sites[i];
            for (who, t) in [
                ("sender", s.sender.next_timeout()),
                ("receiver", s.receiver.next_timeout()),
            ] {
                assert!(
                    t.is_none_or(|t| t > now),
                    "site {i}'s {who} asks to be ticked at {t:?}, not after the tick at {now}"
                );
            }
        }
        if self.reconnect_wanted {
            self.reconnect_wanted = false;
            self.counts.reconnects += 1;
            self.disconnect();
        }
    }

    fn chaos_step(&mut self) {
        let r: f64 = self.rng.random();
        self.now += match self.rng.random_range(0..100) {
            0..=79 => self.rng.random_range(0..3_000),
            80..=97 => self.rng.random_range(0..500_000),
            _ => self
                .rng
                .random_range(1_000_000..=3 * self.p.retention_us / 2),
        };
        if r < 0.35 {
            self.ingest();
        } else if r < 0.40 {
            let side = if self.rng.random_bool(0.5) {
                SOURCE
            } else {
                TARGET
            };
            self.edit_device(side);
        }
        if self.rng.random_bool(self.p.flap) {
            self.counts.link_flaps += 1;
            if self.link_up {
                self.disconnect();
            } else {
                self.connect();
            }
        } else if !self.link_up && self.rng.random_bool(0.05) {
            self.connect();
        }
        if self.rng.random_bool(self.p.crash) {
            let side = self.rng.random_range(0..2);
            self.crash(side);
        }
        self.expire();
        self.pending_sessions();
        self.deliver_due();
        for i in 0..2 {
            let n = self.rng.random_range(0..4);
            self.complete_ops(i, n);
        }
        self.tick_all();
    }

    fn done(&self) -> bool {
        let (s, t) = (&self.sites[SOURCE], &self.sites[TARGET]);
        t.cursor == Held::prefix(s.outbox.head)
            && s.cursor == Held::prefix(t.outbox.head)
            && s.ops.is_empty()
            && t.ops.is_empty()
            && s.applies.is_empty()
            && t.applies.is_empty()
            && s.outbox.acked == s.outbox.head
            && t.outbox.acked == t.outbox.head
    }

    /// Heals the network and runs until both streams are fully delivered and acknowledged.
    fn quiesce(&mut self) {
        self.p.drop = 0.0;
        self.p.dup = 0.0;
        self.p.fifo = true;
        let start = self.now;
        let mut steps = 0;
        while !self.done() {
            steps += 1;
            self.counts.quiesce_steps += 1;
            assert!(
                steps < 20_000,
                "no quiescence after {steps} steps ({} s simulated): target holds {:?} of {}, \
                 source holds {:?} of {}",
                (self.now - start) / 1_000_000,
                self.sites[TARGET].cursor,
                self.sites[SOURCE].outbox.head,
                self.sites[SOURCE].cursor,
                self.sites[TARGET].outbox.head,
            );
            self.connect();
            // Jump to the next event (a delivery or a timer), as a discrete-event
            // simulation does; small random steps keep some interleaving variety.
            let next_event = self
                .net
                .iter()
                .map(|m| m.at)
                .chain(self.pending_up.map(|(_, at)| at))
                .chain(self.sites.iter().flat_map(|s| {
                    [s.sender.next_timeout(), s.receiver.next_timeout()]
                        .into_iter()
                        .flatten()
                }))
                .min();
            self.now = match next_event {
                Some(at) if at > self.now => at.min(self.now + 1_000_000),
                _ => self.now + self.rng.random_range(0..2_000),
            };
            self.pending_sessions();
            self.deliver_due();
            for i in 0..2 {
                let n = self.sites[i].ops.len() + self.sites[i].applies.len();
                self.complete_ops(i, n);
            }
            self.tick_all();
        }
    }

    fn check_final(&self) {
        let t = &self.sites[TARGET];
        // Every point is applied exactly once or lost, and every loss is in a gap.
        let in_gap = |seq: u64| {
            t.gaps
                .iter()
                .any(|g| (g.first_seq..=g.last_seq).contains(&seq))
        };
        for (seq, p) in &self.truth.points {
            let key = (p.device.clone(), p.resource.clone(), p.t);
            let applied = t.applied.contains_key(&key);
            let lost = self.truth.lost.contains(seq);
            assert!(
                applied != lost,
                "point {seq}: applied {applied}, lost {lost}"
            );
            assert_eq!(
                lost,
                in_gap(*seq),
                "point {seq}: lost {lost} but gap says otherwise"
            );
        }
        assert_eq!(
            t.applied.len() + self.truth.lost.len(),
            self.truth.points.len()
        );
        // Devices: both sides show the join of every change ever made.
        for id in DEVICES {
            let id = Identity::parse(id).expect("valid");
            let truth = self
                .truth
                .changes
                .iter()
                .filter(|c| c.identity == id)
                .fold(DeviceRecord::empty(id.clone()), |acc, c| {
                    sync::merge(&acc, c).expect("same identity")
                });
            for (i, site) in self.sites.iter().enumerate() {
                let view = site.devices.get(&id).and_then(DeviceRecord::view);
                assert_eq!(
                    view,
                    truth.view(),
                    "{} device {id} did not converge",
                    NAMES[i]
                );
            }
        }
    }
}

/// After an addition to what a site applied: when the prefix swallowed the live lane, the
/// live lane's series order carries on in the prefix.
fn merged(site: &mut Site, before: Held) {
    if before.live.is_some() && site.cursor.live.is_none() {
        let live: Vec<_> = site
            .series_last_t
            .iter()
            .filter(|((_, _, l), _)| *l)
            .map(|((d, r, _), t)| ((d.clone(), r.clone()), *t))
            .collect();
        site.series_last_t.retain(|(_, _, l), _| !*l);
        for ((d, r), t) in live {
            site.series_last_t.insert((d, r, false), t);
        }
    }
}

fn describe(m: &sync::Message) -> String {
    match m {
        sync::Message::Batch {
            first_seq,
            last_seq,
            head,
            ..
        } => format!("Batch {first_seq}..={last_seq} head {head}"),
        sync::Message::Gap { span, .. } => {
            format!("Gap {}..={}", span.first_seq, span.last_seq)
        }
        sync::Message::Live {
            first_seq,
            last_seq,
            head,
            ..
        } => format!("Live {first_seq}..={last_seq} head {head}"),
        sync::Message::LiveGap { span, .. } => {
            format!("LiveGap {}..={}", span.first_seq, span.last_seq)
        }
        other => format!("{other:?}"),
    }
}

fn describe_op(op: &Op) -> String {
    match op {
        Op::Apply(a) => format!("apply {}..={}", a.first_seq, a.last_seq),
        Op::Gap(g) => format!("gap {}..={}", g.first_seq, g.last_seq),
        other => format!("{other:?}"),
    }
}

/// What the seeds did, for the summary line: evidence that each fault actually happened.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    seeds: u64,
    points: u64,
    lost: u64,
    gaps: u64,
    device_changes: u64,
    snapshots: u64,
    lanes_opened: u64,
    live_points: u64,
    crashes: u64,
    reconnects: u64,
    link_flaps: u64,
    dropped: u64,
    duplicated: u64,
    quiesce_steps: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.seeds += o.seeds;
        self.points += o.points;
        self.lost += o.lost;
        self.gaps += o.gaps;
        self.device_changes += o.device_changes;
        self.snapshots += o.snapshots;
        self.lanes_opened += o.lanes_opened;
        self.live_points += o.live_points;
        self.crashes += o.crashes;
        self.reconnects += o.reconnects;
        self.link_flaps += o.link_flaps;
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
        self.quiesce_steps += o.quiesce_steps;
    }
}

fn run_seed(seed: u64, trace: bool) -> Counts {
    let mut w = World::new(seed, trace);
    let steps = w.rng.random_range(100..400);
    for _ in 0..steps {
        w.chaos_step();
    }
    w.quiesce();
    w.check_final();
    w.counts.seeds = 1;
    w.counts.points = w.truth.points.len() as u64;
    w.counts.lost = w.truth.lost.len() as u64;
    w.counts.gaps = w.sites[TARGET].gaps.len() as u64;
    w.counts.device_changes = w.truth.changes.len() as u64;
    w.counts.live_points = w.sites[TARGET].receiver.stats().live_records_applied;
    w.counts
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be an integer, not {v:?}"))
    })
}

/// Runs every seed of `0..n` with `seed % 2 == half` (two tests use both cores), or only
/// `WEST_SIM_SEED` with a trace.
fn run_half(half: u64) {
    if let Some(seed) = env_u64("WEST_SIM_SEED") {
        if seed % 2 == half {
            run_seed(seed, true);
        }
        return;
    }
    let n = env_u64("WEST_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let started = std::time::Instant::now();
    let mut total = Counts::default();
    for seed in (half..n).step_by(2) {
        match std::panic::catch_unwind(|| run_seed(seed, false)) {
            Ok(c) => total.add(&c),
            Err(e) => {
                eprintln!("simulation failed for seed {seed}; replay with WEST_SIM_SEED={seed}");
                std::panic::resume_unwind(e);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sync simulation: {} seeds in {secs:.1} s ({:.0} seeds/s): {total:?}",
        total.seeds,
        total.seeds as f64 / secs,
    );
}

/// Seeds per `cargo test` run, split over two tests; `WEST_SIM_SEEDS` overrides.
const DEFAULT_SEEDS: u64 = 10_000;

#[test]
fn simulation_even_seeds() {
    run_half(0);
}

#[test]
fn simulation_odd_seeds() {
    run_half(1);
}
