//! The site's HTTP server: the loop it shares with the hub (crate `serve`: a deadline for a
//! request's headers and a cap on concurrent connections, issue 13 #7), and TLS when the
//! operator gives a certificate (`--tls-cert/--tls-key`, issue 13 #6).
//!
//! ```text
//!  TcpListener.accept ──▶ permit? ── no ──▶ close (serve)
//!                          │ yes: the permit travels with the socket until it closes
//!                          ▼
//!                        TLS handshake (when configured; 10 s deadline; here)
//!                          ▼
//!                        hyper http1 (header_read_timeout) ──▶ router (serve)
//! ```
//!
//! Deliberately absent: HTTP/2, and per-address connection accounting (sign-in attempts are
//! limited per address by `auth::LoginGuard`).
//!
//! Invariants: every connection holds one permit for its whole life, its TLS handshake
//! included; after `shutdown` no connection is accepted, open ones are asked to finish and
//! are awaited for at most 5 s.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The server's limits.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// Connections open at once; more are closed on accept.
    pub max_connections: usize,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The TLS configuration of PEM files `cert` (a chain) and `key`.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", cert.display());
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not fit together")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` (over TLS when `tls` is set) until `shutdown` is cancelled:
/// the loop shared with the hub (`serve`), with the TLS handshake, under its deadline, as
/// each connection's preparation.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: axum::Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let shared = serve::HttpLimits {
        header_timeout: limits.header_timeout,
        max_connections: limits.max_connections,
    };
    match tls {
        None => {
            serve::serve(
                listener,
                app,
                shared,
                shutdown,
                |tcp: TcpStream, _| async move {
                    let _ = tcp.set_nodelay(true);
                    Some(tcp)
                },
            )
            .await;
        }
        Some(acceptor) => {
            let prepare = move |tcp: TcpStream, addr: SocketAddr| {
                let acceptor = acceptor.clone();
                async move {
                    let _ = tcp.set_nodelay(true);
                    match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => Some(tls),
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "TLS handshake failed");
                            None
                        }
                        Err(_) => {
                            tracing::debug!(%addr, "TLS handshake timed out");
                            None
                        }
                    }
                }
            };
            serve::serve(listener, app, shared, shutdown, prepare).await;
        }
    }
}
