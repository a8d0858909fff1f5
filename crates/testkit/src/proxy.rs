//! A fault-injecting TCP proxy for tests: put it between a site and the hub, then delay,
//! blackhole or reset the connections that pass through it.
//!
//! ```text
//!  site ──TCP──▶ FaultProxy (127.0.0.1:0) ──TCP──▶ hub
//!                 ├ delay: every chunk waits `delay` before it is passed on (order kept)
//!                 ├ blackhole: nothing is passed on (held, as a dead route would) until lifted
//!                 └ reset: every open connection is closed with a TCP RST
//! ```
//!
//! Deliberately absent: any understanding of what passes (TLS stays end to end), and packet
//! loss (TCP would hide it anyway). Loopback only.
//!
//! Invariants: every task belongs to the proxy and stops when it is dropped; connections are
//! closed with RST (SO_LINGER 0) so that a reset is abrupt, as a middlebox's would be.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

struct Control {
    upstream: SocketAddr,
    delay_us: AtomicU64,
    blackhole: watch::Sender<bool>,
    /// Bumped by every reset; connections opened before it end.
    resets: watch::Sender<u64>,
    accepted: AtomicU64,
    open: AtomicU64,
}

/// A running proxy. Dropping it stops it and closes every connection through it.
pub struct FaultProxy {
    addr: SocketAddr,
    ctl: Arc<Control>,
    _tasks: JoinSet<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let ctl = Arc::new(Control {
            upstream,
            delay_us: AtomicU64::new(0),
            blackhole: watch::channel(false).0,
            resets: watch::channel(0).0,
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, Arc::clone(&ctl)));
        Ok(Self {
            addr,
            ctl,
            _tasks: tasks,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Holds every chunk for `delay` before passing it on (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.ctl.delay_us.store(us, Ordering::SeqCst);
    }

    /// While on, nothing passes in either direction (new connections are accepted and stall
    /// too); what was held flows again when it is lifted.
    pub fn blackhole(&self, on: bool) {
        self.ctl.blackhole.send_replace(on);
    }

    /// Closes every open connection with a TCP reset.
    pub fn reset_all(&self) {
        self.ctl.resets.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.ctl.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.ctl.open.load(Ordering::SeqCst)
    }
}

async fn accept_loop(listener: TcpListener, ctl: Arc<Control>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                ctl.accepted.fetch_add(1, Ordering::SeqCst);
                conns.spawn(connection(client, Arc::clone(&ctl)));
            }
        }
    }
}

async fn connection(client: TcpStream, ctl: Arc<Control>) {
    let mut resets = ctl.resets.subscribe();
    resets.mark_unchanged();
    let Ok(upstream) = TcpStream::connect(ctl.upstream).await else {
        let _ = client.set_zero_linger();
        return;
    };
    for s in [&client, &upstream] {
        let _ = s.set_zero_linger();
        let _ = s.set_nodelay(true);
    }
    ctl.open.fetch_add(1, Ordering::SeqCst);
    let (mut client, mut upstream) = (client, upstream);
    // Borrowed halves: dropping them sends no FIN, so dropping the sockets below resets.
    let (cr, cw) = client.split();
    let (ur, uw) = upstream.split();
    tokio::select! {
        _ = resets.changed() => {}
        () = async { tokio::join!(pump(cr, uw, &ctl), pump(ur, cw, &ctl)); } => {}
    }
    ctl.open.fetch_sub(1, Ordering::SeqCst);
    // Dropping the sockets here closes them; with SO_LINGER 0 that is a reset.
    drop((client, upstream));
}

/// Copies one direction, applying the current delay and blackhole to every chunk.
async fn pump(mut from: ReadHalf<'_>, mut to: WriteHalf<'_>, ctl: &Control) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let delay = Duration::from_micros(ctl.delay_us.load(Ordering::SeqCst));
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let write = async move {
        let mut blackhole = ctl.blackhole.subscribe();
        while let Some((due, chunk)) = rx.recv().await {
            if blackhole.wait_for(|on| !*on).await.is_err() {
                return;
            }
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DEADLINE, eventually};

    /// An upstream that echoes every byte back.
    async fn echo_server() -> anyhow::Result<(SocketAddr, JoinSet<()>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                conns.spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Ok((addr, tasks))
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await?;
        Ok(got)
    }

    #[tokio::test]
    async fn passes_bytes_and_delays_them() -> anyhow::Result<()> {
        let (up, _echo) = echo_server().await?;
        let proxy = FaultProxy::start(up).await?;
        let mut s = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut s, b"hello").await?, b"hello");
        proxy.set_delay(Duration::from_millis(100));
        let start = std::time::Instant::now();
        assert_eq!(round_trip(&mut s, b"again").await?, b"again");
        // Both directions were held: a lower bound the delay itself guarantees.
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert_eq!(proxy.accepted(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn blackhole_holds_bytes_until_lifted() -> anyhow::Result<()> {
        let (up, _echo) = echo_server().await?;
        let proxy = FaultProxy::start(up).await?;
        let mut s = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut s, b"1").await?, b"1");
        proxy.blackhole(true);
        s.write_all(b"2").await?;
        let mut one = [0u8; 1];
        let held = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut one)).await;
        assert!(held.is_err(), "a byte passed through the blackhole");
        proxy.blackhole(false);
        tokio::time::timeout(DEADLINE, s.read_exact(&mut one)).await??;
        assert_eq!(&one, b"2");
        Ok(())
    }

    #[tokio::test]
    async fn reset_closes_open_connections_abruptly() -> anyhow::Result<()> {
        let (up, _echo) = echo_server().await?;
        let proxy = FaultProxy::start(up).await?;
        let mut s = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut s, b"x").await?, b"x");
        proxy.reset_all();
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(DEADLINE, s.read(&mut buf)).await?;
        assert!(
            matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "expected a reset, got {r:?}"
        );
        eventually(
            "the proxy to count no open connection",
            DEADLINE,
            || async { Ok((proxy.open() == 0).then_some(())) },
        )
        .await?;
        // New connections work after a reset.
        let mut s = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut s, b"y").await?, b"y");
        Ok(())
    }
}
