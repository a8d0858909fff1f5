//! Long-term X25519 identities of connectors, their addresses, and the one place where
//! Noise handshakes are built.
//!
//! What it does not do: persist keys (the site stores [`StaticKeypair::private_bytes`] and
//! the pinned peer key), or draw randomness of its own. snow's default resolver would draw
//! ephemeral keys from the operating system; [`noise_builder`] instead installs a resolver
//! whose only random source is a seed taken from the caller's RNG, expanded with
//! HMAC-BLAKE2s. The seed is handed out once, so two handshakes never share a stream.
//!
//! Invariants: a [`StaticKeypair`]'s public key is always the X25519 image of its private
//! key; private key material never appears in `Debug` output.

use std::cell::Cell;
use std::fmt;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

use crate::model::ConnectorId;

/// Length of an X25519 key, public or private.
pub const KEY_LEN: usize = 32;
/// Longest site name an address may carry, in bytes.
pub const MAX_SITE_NAME: usize = 128;

/// Why a key or an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("site name must be 1 to {MAX_SITE_NAME} bytes, got {0}")]
    SiteName(usize),
    #[error("the peer's public key is a low-order point, which no honest peer sends")]
    LowOrderKey,
}

/// Where a connector lives: its site's name on the hub and its id on that site. Both
/// SPAKE2 identities and every Noise prologue are built from these, so a relay that
/// rewrites an address breaks the handshake instead of redirecting it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawAddr", into = "RawAddr")]
pub struct ConnectorAddr {
    site: String,
    connector: ConnectorId,
}

#[derive(Serialize, Deserialize)]
struct RawAddr {
    site: String,
    connector: ConnectorId,
}

impl ConnectorAddr {
    pub fn new(site: impl Into<String>, connector: ConnectorId) -> Result<Self, KeyError> {
        let site = site.into();
        if (1..=MAX_SITE_NAME).contains(&site.len()) {
            Ok(Self { site, connector })
        } else {
            Err(KeyError::SiteName(site.len()))
        }
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    pub fn connector(&self) -> &ConnectorId {
        &self.connector
    }

    /// The canonical byte form used inside handshakes: each field length-prefixed, so no
    /// two addresses share an encoding.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.site.len() + 1 + 14);
        push_len_prefixed(&mut out, self.site.as_bytes());
        push_len_prefixed(&mut out, self.connector.as_str().as_bytes());
        out
    }
}

impl TryFrom<RawAddr> for ConnectorAddr {
    type Error = KeyError;
    fn try_from(raw: RawAddr) -> Result<Self, KeyError> {
        Self::new(raw.site, raw.connector)
    }
}

impl From<ConnectorAddr> for RawAddr {
    fn from(addr: ConnectorAddr) -> Self {
        Self {
            site: addr.site,
            connector: addr.connector,
        }
    }
}

impl fmt::Display for ConnectorAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.site, self.connector)
    }
}

/// Appends `bytes` with a two-byte big-endian length, for transcripts and prologues.
/// Callers only pass short fields (names, ids, protocol messages), all far below 64 KiB.
pub(crate) fn push_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A connector's long-term X25519 identity. Generated once when the connector starts
/// pairing, persisted by the site, and pinned by the peer at the end of pairing; every
/// later session authenticates with it.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticKeypair {
    /// The secret half; the only thing a site must persist to restore the identity.
    private: [u8; KEY_LEN],
    /// Derived from `private`, cached because every handshake and every UI fingerprint
    /// needs it.
    public: [u8; KEY_LEN],
}

impl StaticKeypair {
    /// Draws a fresh identity from the caller's RNG.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut private = [0u8; KEY_LEN];
        rng.fill_bytes(&mut private);
        Self::from_private(private)
    }

    /// Restores an identity from its persisted private key.
    pub fn from_private(private: [u8; KEY_LEN]) -> Self {
        let mut dh = x25519();
        dh.set(&private);
        let mut public = [0u8; KEY_LEN];
        public.copy_from_slice(dh.pubkey());
        Self { private, public }
    }

    pub fn public(&self) -> &[u8; KEY_LEN] {
        &self.public
    }

    /// The secret bytes to persist. Store them where only the site process can read them.
    pub fn private_bytes(&self) -> &[u8; KEY_LEN] {
        &self.private
    }

    /// Refuses a peer key for which X25519 with our key yields zero (a low-order point):
    /// such a key would make every session key independent of our secret.
    pub(crate) fn check_peer(&self, peer_public: &[u8; KEY_LEN]) -> Result<(), KeyError> {
        let mut dh = x25519();
        dh.set(&self.private);
        let mut shared = [0u8; KEY_LEN];
        // The default resolver's X25519 never fails for a 32-byte input.
        dh.dh(peer_public, &mut shared)
            .map_err(|_| KeyError::LowOrderKey)?;
        if shared == [0u8; KEY_LEN] {
            Err(KeyError::LowOrderKey)
        } else {
            Ok(())
        }
    }
}

impl fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &Fingerprint(&self.public))
            .finish_non_exhaustive()
    }
}

/// Shows a key as hex, for logs and the UI.
pub struct Fingerprint<'a>(pub &'a [u8; KEY_LEN]);

impl fmt::Display for Fingerprint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn x25519() -> Box<dyn Dh> {
    DefaultResolver
        .resolve_dh(&DHChoice::Curve25519)
        .expect("snow's default resolver always provides Curve25519")
}

/// Draws the seed of one handshake's randomness from the caller's RNG.
pub(crate) fn draw_seed(rng: &mut (impl RngCore + CryptoRng)) -> [u8; KEY_LEN] {
    let mut seed = [0u8; KEY_LEN];
    rng.fill_bytes(&mut seed);
    seed
}

/// A snow builder for `params` whose ephemeral keys come from `seed` (drawn with
/// [`draw_seed`]) and nowhere else. Use each seed for one handshake only.
pub(crate) fn noise_builder(params: NoiseParams, seed: [u8; KEY_LEN]) -> snow::Builder<'static> {
    snow::Builder::with_resolver(
        params,
        Box::new(SeededResolver {
            seed: Cell::new(Some(seed)),
        }),
    )
}

/// snow's crypto primitives from the default resolver, with randomness from a seed.
struct SeededResolver {
    /// Taken by the first `resolve_rng`; later calls get `None` (snow reports an error)
    /// rather than a second copy of the same stream.
    seed: Cell<Option<[u8; KEY_LEN]>>,
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        let key = self.seed.take()?;
        let prf = DefaultResolver.resolve_hash(&HashChoice::Blake2s)?;
        Some(Box::new(SeededRandom {
            key,
            counter: 0,
            prf,
        }))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// HMAC-BLAKE2s in counter mode over a 32-byte seed from the caller's CSPRNG.
struct SeededRandom {
    key: [u8; KEY_LEN],
    counter: u64,
    prf: Box<dyn Hash>,
}

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        for chunk in dest.chunks_mut(KEY_LEN) {
            let mut block = [0u8; KEY_LEN];
            self.prf
                .hmac(&self.key, &self.counter.to_le_bytes(), &mut block);
            self.counter = self.counter.checked_add(1).ok_or(snow::Error::Rng)?;
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairing::test_rng::TestRng;

    #[test]
    fn keypair_restores_from_private_bytes() {
        let mut rng = TestRng::new(1);
        let kp = StaticKeypair::generate(&mut rng);
        assert_eq!(StaticKeypair::from_private(*kp.private_bytes()), kp);
        assert_ne!(kp.public(), &[0u8; KEY_LEN]);
        let other = StaticKeypair::generate(&mut rng);
        assert_ne!(kp.public(), other.public());
    }

    #[test]
    fn debug_hides_the_private_key() {
        let kp = StaticKeypair::from_private([7u8; KEY_LEN]);
        let shown = format!("{kp:?}");
        assert!(!shown.contains("0707070707"), "{shown}");
        assert!(shown.contains(&Fingerprint(kp.public()).to_string()));
    }

    #[test]
    fn low_order_peer_keys_are_refused() {
        let kp = StaticKeypair::from_private([9u8; KEY_LEN]);
        assert_eq!(kp.check_peer(&[0u8; KEY_LEN]), Err(KeyError::LowOrderKey));
        let mut one = [0u8; KEY_LEN];
        one[0] = 1;
        assert_eq!(kp.check_peer(&one), Err(KeyError::LowOrderKey));
        let peer = StaticKeypair::from_private([3u8; KEY_LEN]);
        assert_eq!(kp.check_peer(peer.public()), Ok(()));
    }

    #[test]
    fn seeded_resolver_hands_out_its_stream_once() {
        let resolver = SeededResolver {
            seed: Cell::new(Some([1u8; KEY_LEN])),
        };
        let mut rng = resolver.resolve_rng().expect("first call gets the stream");
        assert!(resolver.resolve_rng().is_none());
        let mut a = [0u8; 40];
        rng.try_fill_bytes(&mut a).expect("fill");
        let mut b = [0u8; 40];
        rng.try_fill_bytes(&mut b).expect("fill");
        assert_ne!(a, b, "the stream must advance");
    }

    #[test]
    fn addresses_encode_unambiguously() {
        let c = ConnectorId::parse("abcdefghijklmn").expect("valid id");
        let a = ConnectorAddr::new("ab", c.clone()).expect("valid");
        let b = ConnectorAddr::new("a", c.clone()).expect("valid");
        assert_ne!(a.to_bytes(), b.to_bytes());
        assert_eq!(
            ConnectorAddr::new("", c.clone()),
            Err(KeyError::SiteName(0))
        );
        assert!(ConnectorAddr::new("x".repeat(MAX_SITE_NAME + 1), c).is_err());
    }
}
