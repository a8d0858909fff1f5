//! A proxy that understands the hub link, for tests of what sites do when the hub passes
//! some frames and not others. It stands between a site and the hub as the hub would:
//!
//! ```text
//!  site ──wss (TLS with the hub's own certificate and key)──▶ LinkProxy ──wss──▶ hub
//!                         each WebSocket message decoded as a proto::wire frame;
//!                         while `drop_routed` is on, Route frames are dropped both ways
//! ```
//!
//! A site given the hub's certificate as `--hub-ca` trusts the proxy, which presents that
//! certificate (with the hub's key from its data directory) for the same address. Routed
//! frames carry everything sites say to each other — encrypted session handshakes, sync
//! batches and acknowledgements, lookups, end-to-end pings — and the end-to-end encryption
//! makes them indistinguishable from one another on the wire, so the proxy drops them all
//! by frame kind. Heartbeats (`Ping`/`Pong`), hello/welcome and claims pass, so the hub
//! link stays up while the session starves.
//!
//! Deliberately absent: delays, resets and partial frames (`FaultProxy` does those at the
//! TCP level). Loopback only.
//!
//! Invariants: every task belongs to the proxy and stops when it is dropped; frames are
//! passed in order, each direction on its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use launch::hub::tls_connect;
use proto::wire::{self, Frame};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::HubProc;

struct Control {
    hub: SocketAddr,
    ca: PathBuf,
    dropping: AtomicBool,
    dropped: AtomicU64,
}

/// A running link proxy. Dropping it stops it and closes every connection through it.
pub struct LinkProxy {
    addr: SocketAddr,
    ctl: Arc<Control>,
    _tasks: JoinSet<()>,
}

impl LinkProxy {
    /// Listens on a free loopback port and relays every link to `hub`, presenting the hub's
    /// own certificate.
    pub async fn start(hub: &HubProc) -> anyhow::Result<Self> {
        let certs = CertificateDer::pem_file_iter(&hub.ca)
            .with_context(|| format!("reading {}", hub.ca.display()))?
            .collect::<Result<Vec<_>, _>>()?;
        let key_path = hub.data_dir.join("hub-key.pem");
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the link proxy")?;
        let addr = listener.local_addr()?;
        let ctl = Arc::new(Control {
            hub: hub.addr,
            ca: hub.ca.clone(),
            dropping: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, acceptor, Arc::clone(&ctl)));
        Ok(Self {
            addr,
            ctl,
            _tasks: tasks,
        })
    }

    /// The URL a site dials instead of the hub's.
    pub fn url(&self) -> String {
        format!("wss://{}", self.addr)
    }

    /// While on, every routed frame is dropped, both ways; everything else passes.
    pub fn drop_routed(&self, on: bool) {
        self.ctl.dropping.store(on, Ordering::SeqCst);
    }

    /// Routed frames dropped so far.
    pub fn dropped(&self) -> u64 {
        self.ctl.dropped.load(Ordering::SeqCst)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    ctl: Arc<Control>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((site, _)) = accepted else { continue };
                let (acceptor, ctl) = (acceptor.clone(), Arc::clone(&ctl));
                // A link ending in an error is normal here: a site or the hub went away.
                conns.spawn(async move { let _ = relay(site, acceptor, &ctl).await; });
            }
        }
    }
}

async fn relay(
    site: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    ctl: &Control,
) -> anyhow::Result<()> {
    let site = acceptor.accept(site).await?;
    let site = tokio_tungstenite::accept_async(site).await?;
    let hub = tls_connect(ctl.hub, &ctl.ca).await?;
    let url = format!("wss://{}/link", ctl.hub);
    let (hub, _) = tokio_tungstenite::client_async(url.as_str(), hub).await?;
    let (mut site_tx, mut site_rx) = site.split();
    let (mut hub_tx, mut hub_rx) = hub.split();
    let up = async {
        while let Some(m) = site_rx.next().await {
            let m = m?;
            if passes(&m, ctl) {
                hub_tx.send(m).await?;
            }
        }
        anyhow::Ok(())
    };
    let down = async {
        while let Some(m) = hub_rx.next().await {
            let m = m?;
            if passes(&m, ctl) {
                site_tx.send(m).await?;
            }
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

/// Whether a message is passed on: all but routed frames while dropping.
fn passes(m: &Message, ctl: &Control) -> bool {
    let Message::Binary(bytes) = m else {
        return true;
    };
    if ctl.dropping.load(Ordering::SeqCst) && matches!(wire::decode(bytes), Ok(Frame::Route(_))) {
        ctl.dropped.fetch_add(1, Ordering::SeqCst);
        return false;
    }
    true
}
