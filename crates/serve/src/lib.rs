//! The HTTP server loop of the site and of the hub, with the limits `axum::serve` lacks
//! (issue 13 #7): a deadline for a request's headers (a client trickling a partial header
//! is closed) and a cap on concurrent connections (those over it are closed at once).
//!
//! ```text
//!  listener.accept ──▶ permit? ── no ──▶ close (logged once a second at most)
//!                        │ yes: the permit travels with the socket until it closes, through
//!                        ▼      a WebSocket upgrade too
//!                      prepare (the caller's: a TLS handshake with its deadline, or nothing)
//!                        ▼
//!                      hyper http1 (header_read_timeout) ──▶ router (ConnectInfo set)
//! ```
//!
//! Deliberately absent: HTTP/2 (sites and browsers speak HTTP/1.1), per-address accounting
//! (the site limits sign-ins per address itself; the hub's clients are authenticated
//! sites), and TLS itself: each caller brings its own (the hub in its listener, the site in
//! `prepare`).
//!
//! Invariants: every connection holds one permit for its whole life, its preparation
//! included; after `shutdown` no connection is accepted, open ones are asked to finish and
//! are awaited for at most 5 s.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

/// The server's limits.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// Connections open at once (WebSockets included); more are closed on accept.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` is cancelled. Each accepted connection that
/// gets a permit is first handed to `prepare` (in its own task), which returns the stream to
/// speak HTTP on, or `None` to close it (a failed TLS handshake, say).
pub async fn serve<L, P, F, S>(
    mut listener: L,
    app: axum::Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
    prepare: P,
) where
    L: axum::serve::Listener,
    L::Addr: Clone + Send + Sync + 'static,
    P: Fn(L::Io, L::Addr) -> F + Clone + Send + 'static,
    F: Future<Output = Option<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    let mut refused: u64 = 0;
    let mut last_warning: Option<Instant> = None;
    loop {
        let (io, addr) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            refused += 1;
            if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_warning = Some(Instant::now());
                tracing::warn!(
                    limit = limits.max_connections,
                    refused,
                    "connection limit reached; closing new connections"
                );
            }
            drop(io);
            continue;
        };
        let (app, stop, prepare) = (app.clone(), shutdown.clone(), prepare.clone());
        tracker.spawn(async move {
            if let Some(io) = prepare(io, addr.clone()).await {
                serve_conn(io, permit, addr, app, limits, stop).await;
            }
        });
    }
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP requests did not finish within 5 s of shutdown");
    }
}

async fn serve_conn<I, A>(
    io: I,
    permit: OwnedSemaphorePermit,
    addr: A,
    app: axum::Router,
    limits: HttpLimits,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Clone + Send + Sync + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(ConnectInfo(addr.clone()));
        app.clone().call(req)
    });
    let io = TokioIo::new(Counted {
        io,
        _permit: permit,
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
            return;
        }
        () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// A connection's socket with its permit, released when the socket closes (also after a
/// WebSocket upgrade, which takes the socket over).
struct Counted<I> {
    io: I,
    _permit: OwnedSemaphorePermit,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
