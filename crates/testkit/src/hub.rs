//! A raw client of the hub's wire protocol for tests: [`RawClient`] speaks `proto::wire`
//! frames directly, so that tests can do what no honest site does: skip the hello, forge a
//! sender, send garbage or oversized frames, claim pairings nobody agreed to, or speak an
//! older protocol version.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use launch::hub::tls_connect;
use proto::wire::{self, Address, Claims, Frame, Hello, Pairing};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::{DEADLINE, HubProc};

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A client of the hub that sends whatever frames the test wants.
pub struct RawClient {
    ws: Ws,
}

impl RawClient {
    /// Connects (TLS + WebSocket on `/link`) without saying hello.
    pub async fn connect(hub: &HubProc) -> anyhow::Result<Self> {
        let tls = tls_connect(hub.addr, &hub.ca).await?;
        let url = format!("{}/link", hub.url);
        let (ws, _) = tokio_tungstenite::client_async(url.as_str(), tls)
            .await
            .context("WebSocket handshake with the hub")?;
        Ok(Self { ws })
    }

    /// Connects and says hello as `site`; returns the hub's answer (Welcome or Refused).
    pub async fn hello(
        hub: &HubProc,
        site: &str,
        credential: &str,
    ) -> anyhow::Result<(Self, Frame)> {
        Self::hello_versions(
            hub,
            site,
            credential,
            (wire::MIN_VERSION, wire::MAX_VERSION),
        )
        .await
    }

    /// Like [`hello`](Self::hello), offering only the protocol versions `min..=max` (an
    /// older site).
    pub async fn hello_versions(
        hub: &HubProc,
        site: &str,
        credential: &str,
        (min, max): (u16, u16),
    ) -> anyhow::Result<(Self, Frame)> {
        let mut c = Self::connect(hub).await?;
        c.send(&Frame::Hello(Hello {
            magic: wire::MAGIC,
            min_version: min,
            max_version: max,
            site: site.into(),
            credential: credential.into(),
        }))
        .await?;
        let answer = c
            .recv()
            .await?
            .context("the hub closed without answering the hello")?;
        Ok((c, answer))
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &Frame) -> anyhow::Result<()> {
        let bytes = wire::encode(frame)?;
        self.send_raw(bytes).await
    }

    /// Declares `pairings` (this site's connector, peer) and waits until the hub has recorded
    /// them: the hub handles a connection's frames in order, so the Pong of a Ping sent right
    /// behind the Claims proves it. Fails if any other frame arrives meanwhile.
    pub async fn claim(&mut self, pairings: &[(&str, Address)]) -> anyhow::Result<()> {
        let pairings = pairings
            .iter()
            .map(|(c, peer)| Pairing::new(*c, peer.clone()))
            .collect();
        self.send(&Frame::Claims(Claims { pairings })).await?;
        let nonce = 0x0c1a_1a5e;
        self.send(&Frame::Ping(nonce)).await?;
        let answer = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Binary(b))) => match wire::decode(&b)? {
                        Frame::Pong(n) if n == nonce => return Ok(()),
                        Frame::Pong(_) => continue,
                        other => bail!("while claiming, the hub sent {other:?}"),
                    },
                    Some(Ok(_)) => continue,
                    other => bail!("the hub closed while claiming: {other:?}"),
                }
            }
        };
        tokio::time::timeout(DEADLINE, answer)
            .await
            .context("no pong after the claims")?
    }

    /// Sends arbitrary bytes as one binary message.
    pub async fn send_raw(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.ws
            .send(Message::Binary(Bytes::from(bytes)))
            .await
            .context("sending to the hub")
    }

    /// The next frame, skipping the hub's pings' answers; `None` when the hub closed.
    pub async fn recv(&mut self) -> anyhow::Result<Option<Frame>> {
        self.recv_within(DEADLINE).await
    }

    /// Like [`recv`](Self::recv) with a custom deadline; fails when it passes.
    pub async fn recv_within(&mut self, within: Duration) -> anyhow::Result<Option<Frame>> {
        let next = async {
            loop {
                match self.ws.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(None),
                    Some(Ok(Message::Binary(b))) => match wire::decode(&b)? {
                        Frame::Pong(_) => continue,
                        f => return Ok(Some(f)),
                    },
                    Some(Ok(_)) => continue,
                    // A reset or abrupt close after the hub's last frame counts as closed.
                    Some(Err(_)) => return Ok(None),
                }
            }
        };
        tokio::time::timeout(within, next)
            .await
            .context("no frame from the hub in time")?
    }
}
