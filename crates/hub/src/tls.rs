//! TLS for the hub's one port: the certificate (given, or self-signed on first start and kept
//! in the data dir), the rustls server configuration (ring only), and a listener that runs
//! TLS handshakes concurrently before handing finished connections to axum.
//!
//! Deliberately absent: client certificates (sites prove who they are with their credential
//! inside TLS, in the first frame) and plain-text serving.
//!
//! Invariants: a slow or silent client cannot hold up other handshakes (each runs in its own
//! task with a deadline); every task here belongs to the listener's `JoinSet` and stops when
//! the listener is dropped or shutdown is signalled.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// The self-signed certificate's file in the data dir; sites trust it with `--hub-ca`.
pub const CERT_FILE: &str = "hub-cert.pem";
/// Its private key, beside it (mode 0600).
pub const KEY_FILE: &str = "hub-key.pem";

/// Where the hub's certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// Made on first start in the data dir and reused afterwards. `names` are added to
    /// `localhost`, `127.0.0.1` and `::1` as subject alternative names.
    SelfSigned { names: Vec<String> },
    /// PEM files the operator provides (a chain and its key).
    Files { cert: PathBuf, key: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {detail}")]
    Read { path: PathBuf, detail: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("generating the self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("setting up TLS: {0}")]
    Config(#[from] rustls::Error),
}

/// The server side of TLS, ready to accept.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub config: Arc<ServerConfig>,
    /// The certificate file sites should trust.
    pub cert_path: PathBuf,
    /// Whether this start created the self-signed certificate.
    pub generated: bool,
}

/// Loads the certificate, creating the self-signed one if the source asks for it and it is
/// missing.
pub fn load(data_dir: &Path, source: &TlsSource) -> Result<TlsMaterial, TlsError> {
    let (cert_path, key_path, generated) = match source {
        TlsSource::Files { cert, key } => (cert.clone(), key.clone(), false),
        TlsSource::SelfSigned { names } => {
            let cert = data_dir.join(CERT_FILE);
            let key = data_dir.join(KEY_FILE);
            let generated = if cert.exists() && key.exists() {
                false
            } else {
                generate(&cert, &key, names)?;
                true
            };
            (cert, key, generated)
        }
    };
    let read = |path: &Path| {
        let p = path.to_owned();
        move |e: rustls::pki_types::pem::Error| TlsError::Read {
            path: p,
            detail: e.to_string(),
        }
    };
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .map_err(read(&cert_path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read(&cert_path))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert_path });
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(read(&key_path))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        config: Arc::new(config),
        cert_path,
        generated,
    })
}

fn generate(cert_path: &Path, key_path: &Path, names: &[String]) -> Result<(), TlsError> {
    let mut all: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    all.extend(
        names
            .iter()
            .filter(|n| !all.contains(n))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let mut params = rcgen::CertificateParams::new(all)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "West Connectivity Hub");
    // Valid for a long time: the operator replaces it by passing --tls-cert/--tls-key.
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_private(key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, cert.pem()).map_err(|source| TlsError::Write {
        path: cert_path.to_owned(),
        source,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(bytes).map_err(err)
}

/// TLS handshakes in progress at once; connections beyond are closed (each handshake also
/// has a deadline).
const MAX_HANDSHAKES: usize = 1024;

/// The remote address of a connection, as handlers see it through `ConnectInfo`.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// A listener of finished TLS connections, for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    /// Owns the accept loop (and through it every pending handshake).
    _tasks: JoinSet<()>,
}

impl TlsListener {
    /// Starts accepting on `listener`; handshakes that take longer than `handshake_timeout`
    /// are dropped.
    pub fn new(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        handshake_timeout: Duration,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(
            listener,
            TlsAcceptor::from(config),
            handshake_timeout,
            tx,
            shutdown,
        ));
        Ok(Self {
            ready,
            local,
            _tasks: tasks,
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    shutdown: CancellationToken,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly, keep serving.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if handshakes.len() >= MAX_HANDSHAKES {
                    tracing::warn!(%addr, "too many TLS handshakes in progress; closing");
                    continue;
                }
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let ready = ready.clone();
                handshakes.spawn(async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = ready.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::info!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = PeerAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some((io, addr)) => (io, PeerAddr(addr)),
            // The accept loop stopped (shutdown): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(PeerAddr(self.local))
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        *stream.remote_addr()
    }
}
