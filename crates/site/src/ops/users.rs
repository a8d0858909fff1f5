//! Users: signing in with a password (a login token, the same for the API and the web UI)
//! and signing out.

use super::{Error, Result};
use crate::auth;
use crate::clock::now_micros;
use crate::state::AppState;

const WRONG: Error = Error::Unauthorized("wrong username or password");

/// Checks a password from `client` (within the limits of [`auth::LoginGuard`]: bounded
/// concurrent checks, backoff per address and per user, an unknown user costing what a
/// wrong password costs) and issues a login token.
pub async fn sign_in(
    state: &AppState,
    client: Option<std::net::IpAddr>,
    username: &str,
    password: &str,
) -> Result<String> {
    let hash = state.store.password_hash(username).await?;
    match state.login.check(client, username, password, hash).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(username, client = ?client, "failed sign-in");
            return Err(WRONG);
        }
        Err(crate::login::Refused::BackingOff(wait)) => {
            tracing::warn!(username, client = ?client, ?wait, "sign-in refused: backing off after repeated failures");
            return Err(Error::TooManyAttempts(wait));
        }
        Err(crate::login::Refused::Busy) => {
            tracing::warn!(username, client = ?client, "sign-in refused: too many in progress");
            return Err(Error::Busy);
        }
    }
    let (token, hash) = auth::new_token();
    state
        .store
        .create_token(hash, username, now_micros() + auth::TOKEN_LIFETIME_MICROS)
        .await?;
    Ok(token)
}

/// Revokes a login token.
pub async fn sign_out(state: &AppState, token: &str) -> Result<()> {
    Ok(state.store.delete_token(auth::token_hash(token)).await?)
}
