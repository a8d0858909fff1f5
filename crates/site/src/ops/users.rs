//! Users: signing in with a password (a login token, the same for the API and the web UI)
//! and signing out.

use super::{Error, Result};
use crate::auth;
use crate::clock::now_micros;
use crate::state::AppState;

const WRONG: Error = Error::Unauthorized("wrong username or password");

/// Checks a password and issues a login token.
pub async fn sign_in(state: &AppState, username: &str, password: &str) -> Result<String> {
    let hash = state.store.password_hash(username).await?.ok_or(WRONG)?;
    let password = password.to_owned();
    let ok = tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash))
        .await
        .map_err(|_| Error::Internal)?;
    if !ok {
        tracing::warn!(username, "failed sign-in");
        return Err(WRONG);
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
