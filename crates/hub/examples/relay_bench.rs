//! Measures a running `west hub`: how many frames per second (and MB/s) it relays from one
//! site to another, and how many sites it holds idle. Not a test: it asserts nothing, it
//! prints numbers.
//!
//! The two "sites" are clients in this process that speak the site link's wire protocol
//! (hello, routed messages, pings), so that the hub, not a site's HTTP API, is what is
//! measured. Sites are registered directly in the hub's registry, which works while the hub
//! runs.
//!
//! ```text
//! west hub --listen 127.0.0.1:7443 --data-dir /tmp/hub &
//! cargo run --release -p west-hub --example relay_bench -- relay \
//!     --url wss://127.0.0.1:7443 --data-dir /tmp/hub --size 64 --seconds 10
//! cargo run --release -p west-hub --example relay_bench -- idle \
//!     --url wss://127.0.0.1:7443 --data-dir /tmp/hub --sites 1000 --hub-pid PID
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use proto::wire::{self, Address, Claims, Frame, Hello, Kind, Pairing, Routed};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use west_hub as hub;

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

struct Opts {
    mode: String,
    url: String,
    data_dir: PathBuf,
    size: usize,
    seconds: u64,
    sites: usize,
    hub_pid: Option<u32>,
}

fn parse() -> anyhow::Result<Opts> {
    let mut args = std::env::args().skip(1);
    let mode = args
        .next()
        .context("usage: relay_bench relay|idle --url … --data-dir …")?;
    let mut o = Opts {
        mode,
        url: "wss://127.0.0.1:7443".into(),
        data_dir: PathBuf::from("west-data/hub"),
        size: 64,
        seconds: 10,
        sites: 1000,
        hub_pid: None,
    };
    while let Some(flag) = args.next() {
        let v = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => o.url = v,
            "--data-dir" => o.data_dir = v.into(),
            "--size" => o.size = v.parse()?,
            "--seconds" => o.seconds = v.parse()?,
            "--sites" => o.sites = v.parse()?,
            "--hub-pid" => o.hub_pid = Some(v.parse()?),
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(o)
}

fn tls(ca: &std::path::Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    ))
}

async fn connect(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    site: &str,
    cred: &str,
) -> anyhow::Result<Ws> {
    let addr = url.trim_start_matches("wss://");
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(ServerName::try_from(host)?, tcp)
        .await?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("{url}/link"), stream).await?;
    let hello = Frame::Hello(Hello {
        magic: wire::MAGIC,
        min_version: wire::MIN_VERSION,
        max_version: wire::MAX_VERSION,
        site: site.into(),
        credential: cred.into(),
    });
    ws.send(Message::Binary(Bytes::from(wire::encode(&hello)?)))
        .await?;
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => match wire::decode(&b)? {
            Frame::Welcome(_) => Ok(ws),
            other => bail!("{site}: hub answered {other:?}"),
        },
        other => bail!("{site}: no welcome: {other:?}"),
    }
}

/// Declares one pairing and waits until the hub has recorded it: the hub handles a
/// connection's frames in order, so the Pong of a Ping sent behind the Claims proves it.
async fn claim(ws: &mut Ws, connector: &str, peer: Address) -> anyhow::Result<()> {
    let claims = Frame::Claims(Claims {
        pairings: vec![Pairing::new(connector, peer)],
    });
    ws.send(Message::Binary(Bytes::from(wire::encode(&claims)?)))
        .await?;
    ws.send(Message::Binary(Bytes::from(wire::encode(&Frame::Ping(7))?)))
        .await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                if wire::decode(&b)? == Frame::Pong(7) {
                    return Ok(());
                }
            }
            Some(Ok(_)) => continue,
            other => bail!("no pong after the claims: {other:?}"),
        }
    }
}

/// Registers `name` (removing an earlier registration of the same name first).
fn register(registry: &hub::Registry, name: &str) -> anyhow::Result<String> {
    let _ = registry.remove_site(name);
    Ok(registry.add_site(name)?)
}

async fn relay(o: &Opts) -> anyhow::Result<()> {
    let registry = hub::Registry::open(&o.data_dir)?;
    let tls = tls(&o.data_dir.join("hub-cert.pem"))?;
    let cred_a = register(&registry, "bench-a")?;
    let cred_b = register(&registry, "bench-b")?;
    let mut a = connect(&o.url, &tls, "bench-a", &cred_a).await?;
    let mut b = connect(&o.url, &tls, "bench-b", &cred_b).await?;
    // The hub forwards only between connectors that both claim the pairing.
    claim(&mut a, "c1", Address::new("bench-b", "c2")).await?;
    claim(&mut b, "c2", Address::new("bench-a", "c1")).await?;
    let frame = Bytes::from(wire::encode(&Frame::Route(Routed {
        from: Address::new("bench-a", "c1"),
        to: Address::new("bench-b", "c2"),
        kind: Kind::Message,
        id: 0,
        payload: vec![0x5a; o.size],
    }))?);
    let wire_len = frame.len();
    let received = Arc::new(AtomicU64::new(0));
    let (mut a_tx, mut a_rx) = a.split();
    let (mut b_tx, mut b_rx) = b.split();
    let stop = Instant::now() + Duration::from_secs(o.seconds);

    // Each side answers the hub's pings (none come unasked) and keeps its own alive.
    let sender = async {
        let mut sent = 0u64;
        let mut last_ping = Instant::now();
        while Instant::now() < stop {
            for _ in 0..64 {
                a_tx.feed(Message::Binary(frame.clone())).await?;
            }
            a_tx.flush().await?;
            sent += 64;
            if last_ping.elapsed() > Duration::from_secs(1) {
                a_tx.send(Message::Binary(Bytes::from(wire::encode(&Frame::Ping(1))?)))
                    .await?;
                last_ping = Instant::now();
            }
        }
        anyhow::Ok(sent)
    };
    let drain_a = async {
        while let Some(Ok(_)) = a_rx.next().await {}
        anyhow::Ok(())
    };
    let receiver = async {
        let mut last_ping = Instant::now();
        let started = Instant::now();
        let mut window_start = None;
        let mut window_end = Instant::now();
        let mut window_count = 0u64;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), b_rx.next()).await;
            let Ok(Some(Ok(Message::Binary(b)))) = next else {
                break;
            };
            if b.len() == wire_len {
                received.fetch_add(1, Ordering::Relaxed);
                // Count after a one-second warm-up so connection setup is not measured.
                if started.elapsed() > Duration::from_secs(1) {
                    window_start.get_or_insert_with(Instant::now);
                    window_end = Instant::now();
                    window_count += 1;
                }
            }
            if last_ping.elapsed() > Duration::from_secs(1) {
                b_tx.send(Message::Binary(Bytes::from(wire::encode(&Frame::Ping(2))?)))
                    .await?;
                last_ping = Instant::now();
            }
        }
        let secs = window_start.map_or(0.0, |s| (window_end - s).as_secs_f64());
        anyhow::Ok((window_count, secs.max(0.001)))
    };
    let (sent, (count, secs)) = tokio::select! {
        r = async { tokio::try_join!(sender, receiver) } => r?,
        r = drain_a => { r?; bail!("site a's connection ended") }
    };
    let fps = count as f64 / secs;
    println!(
        "frame payload {} B ({} B on the wire): sent {sent}, relayed {}, {:.0} frames/s, {:.1} MB/s payload, {:.1} MB/s wire",
        o.size,
        wire_len,
        received.load(Ordering::Relaxed),
        fps,
        fps * o.size as f64 / 1e6,
        fps * wire_len as f64 / 1e6
    );
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn idle(o: &Opts) -> anyhow::Result<()> {
    let registry = hub::Registry::open(&o.data_dir)?;
    let tls = tls(&o.data_dir.join("hub-cert.pem"))?;
    if let Some(pid) = o.hub_pid {
        println!("hub RSS before: {} KiB", rss_kib(pid).unwrap_or(0));
    }
    let mut creds = Vec::with_capacity(o.sites);
    for i in 0..o.sites {
        creds.push(register(&registry, &format!("idle-{i:04}"))?);
    }
    let mut conns = Vec::with_capacity(o.sites);
    for (i, cred) in creds.iter().enumerate() {
        conns.push(connect(&o.url, &tls, &format!("idle-{i:04}"), cred).await?);
    }
    println!("{} sites connected", conns.len());
    // Keep every connection alive (ping every second, read the pongs) while measuring.
    let mut tasks = tokio::task::JoinSet::new();
    for mut ws in conns {
        tasks.spawn(async move {
            let ping = Bytes::from(wire::encode(&Frame::Ping(0)).unwrap_or_default());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if ws.send(Message::Binary(ping.clone())).await.is_err() { return; }
                    }
                    m = ws.next() => if !matches!(m, Some(Ok(_))) { return; },
                }
            }
        });
    }
    for _ in 0..o.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(pid) = o.hub_pid {
            println!(
                "hub RSS with {} idle sites: {} KiB ({} connections alive)",
                o.sites,
                rss_kib(pid).unwrap_or(0),
                tasks.len()
            );
        }
    }
    tasks.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = parse()?;
    match o.mode.as_str() {
        "relay" => relay(&o).await,
        "idle" => idle(&o).await,
        m => bail!("unknown mode {m}; use relay or idle"),
    }
}
