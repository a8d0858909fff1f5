//! Who is calling: admin bootstrap, bearer and cookie tokens for users, and device tokens for
//! the device API.
//!
//! Tokens are 32 random bytes in base64url. The store only ever sees their SHA-256, so a copy
//! of the database lets nobody sign in.
//!
//! Passwords are hashed in [`crate::login`] (re-exported here), which sits below this module
//! and `state`; password checks go through [`crate::login::LoginGuard`].

use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proto::model::{ConnectorId, Identity};
use rand::RngCore;
use sha2::{Digest, Sha256};
use store::{Actor, TokenHash};

use crate::error::ApiError;
use crate::state::AppState;

/// Name of the web UI's session cookie of site `site`. Cookies are scoped by host, not by
/// port, so two sites on one host (quickstart, a laptop) need a name each, or signing in to
/// one would sign the browser out of the other.
pub fn session_cookie(site: &str) -> String {
    format!("west_session_{site}")
}
/// Lifetime of a login token: 30 days.
pub const TOKEN_LIFETIME_MICROS: i64 = 30 * 24 * 3600 * 1_000_000;
/// The user created on first start.
pub const ADMIN: &str = "admin";

pub use crate::login::{hash_password, verify_password};

/// A fresh random secret (token or generated password) and the hash the store keeps.
pub fn new_token() -> (String, TokenHash) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = token_hash(&token);
    (token, hash)
}

pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// A generated password: 20 characters that survive being read aloud and copied.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 20];
    rand::rng().fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// The bearer token of a request: `Authorization: Bearer …` or site `site`'s session cookie.
pub fn request_token(parts: &Parts, site: &str) -> Option<String> {
    let name = session_cookie(site);
    if let Some(v) = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return v.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    cookie(parts, &name).map(str::to_owned)
}

/// The value of cookie `name` of a request.
pub fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl AppState {
    /// The user a login token belongs to, if it is valid now.
    pub async fn user_for_token(&self, token: &str) -> Result<Option<String>, ApiError> {
        Ok(self
            .store
            .token_user(token_hash(token), crate::clock::now_micros())
            .await?)
    }
}

/// The client's address, when the server loop recorded it (`ConnectInfo`); `None` for a
/// router served some other way (tests).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// A signed-in user, from a login token.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    /// Whether the token came as `Authorization: Bearer` (a script, say) rather than in the
    /// web UI's session cookie: the audit log tells the two apart.
    pub bearer: bool,
}

impl User {
    /// The author of the changes this request makes, for the audit log.
    pub fn actor(&self) -> Actor {
        if self.bearer {
            Actor::Token(self.name.clone())
        } else {
            Actor::User(self.name.clone())
        }
    }
}

impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = request_token(parts, &state.site_name).ok_or(ApiError::unauthorized(
            "sign in first: POST /api/v1/login, then send Authorization: Bearer TOKEN",
        ))?;
        let bearer = parts.headers.contains_key(AUTHORIZATION);
        state
            .user_for_token(&token)
            .await?
            .map(|name| User { name, bearer })
            .ok_or(ApiError::unauthorized(
                "the token is unknown or has expired; sign in again",
            ))
    }
}

/// Who may write data: a user, or a device with its own token.
#[derive(Debug, Clone)]
pub enum Writer {
    User(String),
    Device(ConnectorId, Identity),
}

impl Writer {
    /// Whether this caller may write as `identity` of connector `cid`.
    pub fn may_write(&self, cid: &ConnectorId, identity: &Identity) -> bool {
        match self {
            Writer::User(_) => true,
            Writer::Device(c, i) => c == cid && i == identity,
        }
    }
}

impl FromRequestParts<AppState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = request_token(parts, &state.site_name).ok_or(ApiError::unauthorized(
            "send Authorization: Bearer with a user token or the device's own token",
        ))?;
        let hash = token_hash(&token);
        // A device's own token, verified before and not revoked since: no read. (A token
        // is a user's or a device's, never both: each is 32 fresh random bytes.)
        if let Some((cid, identity)) = state.store.known_device_token(&hash) {
            return Ok(Writer::Device(cid, identity));
        }
        if let Some(user) = state.user_for_token(&token).await? {
            return Ok(Writer::User(user));
        }
        match state.store.device_by_token(hash).await? {
            Some((cid, identity)) => Ok(Writer::Device(cid, identity)),
            None => Err(ApiError::unauthorized(
                "the token is unknown or has expired",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_themselves() {
        let hash = hash_password("correct horse").unwrap();
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("correct hors", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn tokens_are_distinct_and_hash_stably() {
        let (a, ha) = new_token();
        let (b, hb) = new_token();
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert_eq!(token_hash(&a), ha);
        assert_eq!(generate_password().len(), 20);
    }
}
