//! One site's connection to the hub, after the WebSocket upgrade.
//!
//! ```text
//!  site ── Hello ──▶ check version, then credential (registry) ── Refused ──▶ close
//!                    (unknown, removed and wrong credential: one answer; the log tells which)
//!                    │ accepted: attach route (the older connection of that name is closed)
//!  site ◀─ Welcome ──┘
//!  reader: Route ─▶ from.site == this site? ─▶ policy (claims.rs: a service only answers)
//!                                               ─▶ lookup(to.site) ─▶ peer's queue
//!                                               │         └ none / stalled ─▶ Undelivered back
//!                                               └ not paired ─▶ Undelivered{NotPaired} back
//!          (Undelivered carries Offline / UnknownSite / NotPaired; version 1 gets PeerOffline)
//!          cluster node: no route here ─▶ NATS west.hub.site.<to> (answer comes later)
//!  inbox (cluster node): frames other nodes forward to this site ─▶ its queue, answered
//!          (a service's answer is checked there, where the request was recorded)
//!          Claims (v2) ─▶ rate limit (per site) ─▶ registry (hub.db or the cluster's
//!          bucket) ─▶ claim table (a site sending Claims faster than the limit waits; its
//!          frames stay in order)
//!          Ping ─▶ Pong back; silence past the deadline, bad or oversized frame ─▶ Refused, close
//!  writer: own queue ─▶ socket (batched); a kick (superseded, removed, shutdown) ─▶ Refused, close
//! ```
//!
//! Deliberately absent: decoding or storing payloads (a routed frame is forwarded as the very
//! bytes that arrived), and any retry: an undeliverable frame is answered at once.
//!
//! Invariants: no frame is forwarded before the connection's Hello was accepted; no frame is
//! forwarded whose sender is not the connection's authenticated site; a connection that sends
//! one bad frame is closed and nothing of that frame is forwarded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use proto::wire::{
    self, Address, Frame, Kind, Pairing, Refusal, RefusalCode, Routed, Undelivered,
    UndeliveredReason, Welcome,
};
use tokio::sync::{Semaphore, mpsc};

use crate::Shared;
use crate::registry::Verdict;
use crate::routing::{Kick, SiteHandle};
use crate::stats::SiteCounters;

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

/// Frames written to the socket before one flush.
const WRITE_BATCH: usize = 64;

/// How a connection ended, for the log.
enum Exit {
    /// The site closed the connection (or it broke).
    Closed(String),
    /// The hub closed it, telling the site why.
    Refused(Refusal),
}

/// Serves one upgraded connection until it ends.
pub(crate) async fn serve(socket: WebSocket, remote: SocketAddr, hub: Arc<Shared>) {
    let (mut sink, mut stream) = socket.split();
    let hello = tokio::select! {
        biased;
        () = hub.shutdown.cancelled() => return,
        r = tokio::time::timeout(hub.config.hello_timeout, next_frame(&mut stream)) => r,
    };
    let hello = match hello {
        Err(_) => {
            tracing::info!(%remote, "no hello in time; closing");
            return refuse(
                &mut sink,
                Refusal::new(RefusalCode::Malformed, "no hello in time"),
            )
            .await;
        }
        Ok(Err(refusal)) => {
            tracing::info!(%remote, code = refusal.code, "bad first frame: {}", refusal.message);
            hub.stats.refused(&refusal.code);
            return refuse(&mut sink, refusal).await;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some((Frame::Hello(h), _)))) => h,
        Ok(Ok(Some((other, _)))) => {
            let refusal = Refusal::new(
                RefusalCode::Malformed,
                format!(
                    "the first frame must be a hello, not {}",
                    frame_name(&other)
                ),
            );
            tracing::warn!(%remote, "refused a connection: {}", refusal.message);
            hub.stats.refused(&refusal.code);
            return refuse(&mut sink, refusal).await;
        }
    };

    let site = hello.site.clone();
    let Some(version) = wire::negotiate(
        (hello.min_version, hello.max_version),
        (wire::MIN_VERSION, wire::MAX_VERSION),
    ) else {
        let refusal = Refusal::new(
            RefusalCode::UnsupportedVersion,
            format!(
                "the hub speaks protocol versions {}..={}, the site {}..={}",
                wire::MIN_VERSION,
                wire::MAX_VERSION,
                hello.min_version,
                hello.max_version
            ),
        );
        tracing::warn!(site, %remote, "refused a site: {}", refusal.message);
        hub.stats.refused(&refusal.code);
        return refuse(&mut sink, refusal).await;
    };

    let verdict = hub.directory.verify(&site, &hello.credential).await;
    let generation = match verdict {
        Ok(Verdict::Accepted { generation }) => generation,
        Ok(v) => {
            // The log and the metrics tell the three apart; the unauthenticated client gets
            // one answer, so that it cannot learn which site names exist (issue 13 #10).
            let (code, why) = match v {
                Verdict::UnknownSite => (
                    RefusalCode::UnknownSite,
                    format!("site {site} is not registered on this hub (west hub add-site {site})"),
                ),
                Verdict::Removed => (
                    RefusalCode::Revoked,
                    format!("site {site} was removed from this hub"),
                ),
                _ => (
                    RefusalCode::WrongCredential,
                    format!("the credential is not the current one of site {site}"),
                ),
            };
            tracing::warn!(site, %remote, code = code.as_str(), "refused a site: {why}");
            hub.stats.refused(code.as_str());
            return refuse(&mut sink, credential_refusal(&site)).await;
        }
        Err(e) => {
            tracing::error!(site, %remote, error = %e, "could not check a credential");
            // `hub_shutdown`: the site tries again (another node of a cluster, if it has a list).
            return refuse(
                &mut sink,
                Refusal::new(RefusalCode::Shutdown, "the hub could not read its registry"),
            )
            .await;
        }
    };

    let counters = hub.stats.site(&site);
    let id = hub.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel::<Bytes>(hub.config.queue_frames);
    let kick = Arc::new(Kick::default());
    let me = SiteHandle::new(
        id,
        Arc::from(site.as_str()),
        generation,
        remote,
        tx.clone(),
        Arc::clone(&kick),
    );
    let welcome = Frame::Welcome(Welcome {
        version,
        site: site.clone(),
        heartbeat_ms: u32::try_from(hub.config.heartbeat.as_millis()).unwrap_or(u32::MAX),
        max_frame_len: wire::MAX_FRAME_LEN as u32,
    });
    if send_frame(&mut sink, &welcome).await.is_err() {
        return;
    }
    if let Some(older) = hub.routing.attach(me.clone()) {
        tracing::warn!(
            site,
            %remote,
            older = %older.remote,
            "site connected again; closing its older connection"
        );
        older.kick(Refusal::new(
            RefusalCode::Superseded,
            format!("a newer connection of site {site} from {remote} replaced this one"),
        ));
    }
    // Shutdown may have begun between the check above and the attach: honour it.
    if hub.shutdown.is_cancelled() {
        kick.kick(shutdown_refusal());
    }
    // In a cluster: frames other nodes forward to this site, and the record that this node
    // holds it (which closes an older connection on another node).
    let inbox = match &hub.cluster {
        Some(c) => {
            let inbox = c.inbox(&site).await;
            c.announce(&me).await;
            inbox
        }
        None => None,
    };
    // So may a `remove-site` that the registry watcher checked before this route existed.
    let current = hub.directory.current_generation(&site).await;
    if !matches!(current, Ok(Some(g)) if g == generation) {
        kick.kick(Refusal::new(
            RefusalCode::Revoked,
            format!("site {site} was removed from this hub"),
        ));
    }
    counters.connects.fetch_add(1, Ordering::Relaxed);
    tracing::info!(site, %remote, version, conn = id, "site connected");

    let exit = {
        let out = Outbound {
            own: tx.clone(),
            version,
            counters: Arc::clone(&counters),
            window: Arc::new(Semaphore::new(crate::cluster::FORWARD_WINDOW)),
        };
        let reader = read_loop(&mut stream, &site, &out, &hub, &kick);
        let writer = write_loop(&mut sink, rx, &kick, &counters);
        let forwarded = async {
            if let (Some(c), Some(inbox)) = (&hub.cluster, inbox) {
                c.serve_inbox(
                    inbox,
                    me,
                    &hub.claims,
                    hub.config.delivery_patience,
                    &counters,
                )
                .await;
            }
            std::future::pending::<Exit>().await
        };
        tokio::pin!(writer);
        tokio::select! {
            exit = forwarded => exit,
            exit = reader => {
                if let Exit::Refused(r) = &exit {
                    kick.kick(r.clone());
                } else {
                    kick.stop();
                }
                // Let the writer send the refusal and close; a dead socket gets no more time.
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
                exit
            }
            () = &mut writer => match kick.reason() {
                Some(r) => Exit::Refused(r),
                None => Exit::Closed("the socket broke while writing".into()),
            },
        }
    };
    hub.routing.detach(&site, id);
    if let Some(c) = &hub.cluster {
        c.release(&site, id).await;
    }
    counters.disconnects.fetch_add(1, Ordering::Relaxed);
    match exit {
        Exit::Closed(why) => tracing::info!(site, %remote, conn = id, "site disconnected: {why}"),
        Exit::Refused(r) => {
            if r.code != RefusalCode::Superseded.as_str()
                && r.code != RefusalCode::Shutdown.as_str()
            {
                hub.stats.refused(&r.code);
            }
            tracing::warn!(site, %remote, conn = id, code = r.code, "closed a site's connection: {}", r.message);
        }
    }
}

/// The one answer to a hello whose site is unknown, removed, or whose credential is wrong.
pub(crate) fn credential_refusal(site: &str) -> Refusal {
    Refusal::new(
        RefusalCode::WrongCredential,
        format!(
            "this hub does not accept site {site} with that credential (the site is not \
             registered, was removed, or the credential is not its current one; the hub's \
             log says which)"
        ),
    )
}

fn shutdown_refusal() -> Refusal {
    Refusal::new(RefusalCode::Shutdown, "the hub is shutting down")
}

/// The way back to a connection's site, for answers that arrive later.
struct Outbound {
    own: mpsc::Sender<Bytes>,
    version: u16,
    counters: Arc<SiteCounters>,
    /// Frames in flight to other nodes of a cluster.
    window: Arc<Semaphore>,
}

/// Reads frames until the connection ends or must be closed.
async fn read_loop(
    stream: &mut Stream,
    site: &str,
    out: &Outbound,
    hub: &Arc<Shared>,
    kick: &Kick,
) -> Exit {
    let (own, version, counters) = (&out.own, out.version, &*out.counters);
    loop {
        let next = tokio::select! {
            biased;
            () = kick.kicked() => return Exit::Refused(kick.reason().unwrap_or_else(shutdown_refusal)),
            () = hub.shutdown.cancelled() => return Exit::Refused(shutdown_refusal()),
            r = tokio::time::timeout(hub.config.silent_after, stream.next()) => r,
        };
        let bytes = match next {
            Err(_) => {
                return Exit::Refused(Refusal::new(
                    RefusalCode::Silent,
                    format!("nothing received for {:?}", hub.config.silent_after),
                ));
            }
            Ok(None) => return Exit::Closed("the site closed the connection".into()),
            Ok(Some(Err(e))) => match ws_error(&e) {
                Some(refusal) => return Exit::Refused(refusal),
                None => return Exit::Closed(format!("the connection broke: {e}")),
            },
            Ok(Some(Ok(Message::Binary(bytes)))) => bytes,
            Ok(Some(Ok(Message::Close(_)))) => {
                return Exit::Closed("the site closed the connection".into());
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Text(_)))) => {
                return Exit::Refused(Refusal::new(
                    RefusalCode::Malformed,
                    "text messages are not part of the protocol",
                ));
            }
        };
        counters.received(bytes.len());
        let frame = match wire::decode(&bytes) {
            Ok(f) => f,
            Err(e) => return Exit::Refused(e.refusal()),
        };
        if frame.since_version() > version {
            return Exit::Refused(Refusal::new(
                RefusalCode::Malformed,
                format!(
                    "a {} frame does not exist in protocol version {version}",
                    frame_name(&frame)
                ),
            ));
        }
        match frame {
            Frame::Route(r) => {
                if r.from.site != site {
                    return Exit::Refused(Refusal::new(
                        RefusalCode::Forged,
                        format!(
                            "a frame claimed to come from site {} on the connection of site {site}",
                            r.from.site
                        ),
                    ));
                }
                if let Some(reason) = route(hub, &r, bytes, out).await {
                    let answer = undelivered(r, reason, version);
                    match reason {
                        UndeliveredReason::Offline => &counters.peer_offline,
                        UndeliveredReason::UnknownSite => &counters.unknown_site,
                        UndeliveredReason::NotPaired => &counters.not_paired,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                    if !queue(own, &answer).await {
                        return Exit::Closed("own queue closed".into());
                    }
                }
            }
            Frame::Claims(c) => {
                let wait = hub.claim_limiter.charge(site, c.pairings.len());
                if !wait.is_zero() {
                    tracing::warn!(
                        site,
                        pairings = c.pairings.len(),
                        ?wait,
                        "claims rate-limited: the site sends Claims faster than the hub applies them"
                    );
                    tokio::select! {
                        () = kick.kicked() => return Exit::Refused(kick.reason().unwrap_or_else(shutdown_refusal)),
                        () = hub.shutdown.cancelled() => return Exit::Refused(shutdown_refusal()),
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                claim(hub, site, c.pairings).await;
            }
            Frame::Ping(n) => {
                if !queue(own, &Frame::Pong(n)).await {
                    return Exit::Closed("own queue closed".into());
                }
            }
            Frame::Pong(_) => {}
            other => {
                return Exit::Refused(Refusal::new(
                    RefusalCode::Malformed,
                    format!("a site may not send a {} frame", frame_name(&other)),
                ));
            }
        }
    }
}

/// Forwards a routed frame (the very `bytes` that arrived) if the policy allows it and its
/// site takes it; otherwise says why nothing was delivered.
async fn route(
    hub: &Shared,
    r: &Routed,
    bytes: Bytes,
    out: &Outbound,
) -> Option<UndeliveredReason> {
    let remote = hub.cluster.is_some() && hub.routing.lookup(&r.to.site).is_none();
    // A service's answer to a site held by another node is checked there, where the
    // request was recorded (see `Cluster::serve_inbox`).
    let answer = wire::is_service(&r.from.connector) && !wire::is_service(&r.to.connector);
    let mut allowed = (remote && answer) || hub.claims.admits(r);
    // In a cluster, the other site's claims may not have reached this node yet: read them.
    if !allowed
        && remote
        && let Some(c) = &hub.cluster
        && c.refresh_claims(hub, &r.to.site).await
    {
        allowed = hub.claims.admits(r);
    }
    if !allowed {
        tracing::info!(from = %r.from, to = %r.to, kind = ?r.kind, "route refused: the connectors are not paired (or a service answered nothing it was asked)");
        return Some(UndeliveredReason::NotPaired);
    }
    if let Some(peer) = hub.routing.lookup(&r.to.site) {
        // Recorded before the hand-over: the answer may come back before `deliver` returns.
        if !hub.claims.expect_answer(r) {
            tracing::warn!(from = %r.from, to = %r.to, "route refused: too many unanswered service requests from this site");
            return Some(UndeliveredReason::Offline);
        }
        return match peer.deliver(bytes, hub.config.delivery_patience).await {
            Ok(()) => None,
            Err(e) => {
                hub.claims.undelivered(r);
                tracing::warn!(from = %r.from, to = %r.to, error = %e, "frame not delivered");
                hub.stats
                    .site(&r.to.site)
                    .stalled
                    .fetch_add(1, Ordering::Relaxed);
                Some(UndeliveredReason::Offline)
            }
        };
    }
    // Not held here: in a cluster, whichever node holds it (answered later, or at once by
    // NATS when no node does).
    if let Some(cluster) = &hub.cluster {
        if !hub.claims.expect_answer(r) {
            tracing::warn!(from = %r.from, to = %r.to, "route refused: too many unanswered service requests from this site");
            return Some(UndeliveredReason::Offline);
        }
        return cluster
            .forward(
                r,
                bytes,
                answer,
                &hub.claims,
                out.version,
                &out.own,
                &out.counters,
                &out.window,
                hub.config.delivery_patience,
            )
            .await;
    }
    // Only on this (rare) path does the registry say whether the site exists at all.
    match hub.directory.current_generation(&r.to.site).await {
        Ok(Some(_)) => Some(UndeliveredReason::Offline),
        Ok(None) => Some(UndeliveredReason::UnknownSite),
        Err(e) => {
            tracing::warn!(to = %r.to, error = %e, "could not look a site up; answering offline");
            Some(UndeliveredReason::Offline)
        }
    }
}

/// The answer to an undelivered frame in the connection's protocol version.
fn undelivered(r: Routed, reason: UndeliveredReason, version: u16) -> Frame {
    undelivered_frame(r.to, r.from.connector, r.kind, r.id, reason, version)
}

/// The answer to an undelivered frame, from its addresses, in the protocol `version`.
pub(crate) fn undelivered_frame(
    to: Address,
    from_connector: String,
    kind: Kind,
    id: u64,
    reason: UndeliveredReason,
    version: u16,
) -> Frame {
    let u = Undelivered {
        to,
        from_connector,
        kind,
        id,
        reason,
    };
    if version >= wire::CLAIMS_VERSION {
        Frame::Undelivered(u)
    } else {
        Frame::PeerOffline(u.to_v1())
    }
}

/// Records `site`'s claimed pairings: in `hub.db` first, so that a restarted hub enforces
/// them, then in the table the routing check reads. An unchanged set writes nothing.
async fn claim(hub: &Arc<Shared>, site: &str, pairings: Vec<Pairing>) {
    if hub.claims.table.is_current(site, &pairings) {
        tracing::debug!(site, pairings = pairings.len(), "claims unchanged");
        return;
    }
    if let Err(e) = hub.directory.replace_claims(site, pairings.clone()).await {
        if hub.cluster.is_some() {
            // The other nodes learn claims only from the bucket: keep trying (NATS may be
            // electing a new leader) for as long as these are the site's latest claims.
            tracing::warn!(site, error = %e, "could not store claimed pairings yet; retrying");
            tokio::spawn(store_claims_later(
                Arc::clone(hub),
                site.to_owned(),
                pairings.clone(),
            ));
        } else {
            tracing::error!(site, error = %e, "could not store claimed pairings; enforcing them until the hub restarts");
        }
    }
    hub.claims.table.replace(site, &pairings);
    tracing::info!(site, pairings = pairings.len(), "pairings claimed");
}

/// Retries storing a site's claims in the cluster's bucket until it works, the site claims
/// something else, or the hub stops.
async fn store_claims_later(hub: Arc<Shared>, site: String, pairings: Vec<Pairing>) {
    loop {
        tokio::select! {
            () = hub.shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if !hub.claims.table.is_current(&site, &pairings) {
            return;
        }
        match hub.directory.replace_claims(&site, pairings.clone()).await {
            Ok(()) => {
                tracing::info!(
                    site,
                    pairings = pairings.len(),
                    "pairings claimed (stored late)"
                );
                return;
            }
            Err(e) => tracing::debug!(site, error = %e, "claims still not stored"),
        }
    }
}

/// Writes queued frames until kicked (then sends the reason and closes) or the queue ends.
async fn write_loop(
    sink: &mut Sink,
    mut rx: mpsc::Receiver<Bytes>,
    kick: &Kick,
    counters: &SiteCounters,
) {
    loop {
        let first = tokio::select! {
            biased;
            () = kick.kicked() => {
                if let Some(r) = kick.reason() {
                    refuse(sink, r).await;
                }
                return;
            }
            f = rx.recv() => f,
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(b) => batch.push(b),
                Err(_) => break,
            }
        }
        for b in batch {
            let len = b.len();
            if sink.feed(Message::Binary(b)).await.is_err() {
                return;
            }
            counters.sent(len);
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// The next frame of a connection that has not said hello yet.
async fn next_frame(stream: &mut Stream) -> Result<Option<(Frame, Bytes)>, Refusal> {
    loop {
        match stream.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(Message::Binary(b))) => {
                return wire::decode(&b)
                    .map(|f| Some((f, b)))
                    .map_err(|e| e.refusal());
            }
            Some(Ok(Message::Text(_))) => {
                return Err(Refusal::new(
                    RefusalCode::Malformed,
                    "text messages are not part of the protocol",
                ));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return ws_error(&e).map_or(Ok(None), Err),
        }
    }
}

/// A WebSocket error that is the peer's fault (a message over the size limit).
fn ws_error(e: &axum::Error) -> Option<Refusal> {
    let text = e.to_string();
    (text.contains("Space limit exceeded") || text.contains("too long")).then(|| {
        Refusal::new(
            RefusalCode::TooLarge,
            format!("a frame exceeded {} bytes", wire::MAX_FRAME_LEN),
        )
    })
}

async fn queue(own: &mpsc::Sender<Bytes>, frame: &Frame) -> bool {
    match wire::encode(frame) {
        Ok(bytes) => own.send(Bytes::from(bytes)).await.is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "could not encode a frame of the hub's own");
            true
        }
    }
}

async fn send_frame(sink: &mut Sink, frame: &Frame) -> Result<(), ()> {
    let bytes = wire::encode(frame).map_err(|e| {
        tracing::error!(error = %e, "could not encode a frame of the hub's own");
    })?;
    sink.send(Message::Binary(Bytes::from(bytes)))
        .await
        .map_err(|_| ())
}

/// Sends the reason and closes; errors are moot, the connection ends either way.
async fn refuse(sink: &mut Sink, refusal: Refusal) {
    let _ = send_frame(sink, &Frame::Refused(refusal)).await;
    let _ = sink.send(Message::Close(None)).await;
    let _ = sink.close().await;
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello(_) => "hello",
        Frame::Welcome(_) => "welcome",
        Frame::Refused(_) => "refused",
        Frame::Route(_) => "route",
        Frame::PeerOffline(_) => "peer-offline",
        Frame::Ping(_) => "ping",
        Frame::Pong(_) => "pong",
        Frame::Claims(_) => "claims",
        Frame::Undelivered(_) => "undelivered",
    }
}
