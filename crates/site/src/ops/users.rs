//! Users: signing in with a password (a login token, the same for the API and the web UI),
//! signing out, and the site's users as the admin manages them (docs/api.md "Users"): a
//! page of the list, creating one, removing one, setting a password.
//!
//! Rules:
//! - Only `admin` lists, creates and removes users and sets another user's password; every
//!   user may change their own, giving the current one. The admin cannot be removed, and
//!   nobody removes themself.
//! - A user's name is 1 to 64 lowercase letters, digits and `.`, `_`, `-`, `@`, starting
//!   with a letter or digit (so `Admin` cannot pass for `admin`); a new password is 12 to
//!   256 characters without control characters. `--admin-password` on first start is not
//!   held to it (it predates it, and refusing would stop an existing setup's restart).
//! - Every password check and every new hash runs on the [`LoginGuard`]'s checker threads,
//!   within its queue; a wrong current password counts as a failed sign-in of that user
//!   and address, so this is no side door around the sign-in backoff.
//! - Setting a password or removing a user revokes every login token of the user in the same
//!   store step: nothing signed in with the old password works once the call returns.
//! - Passwords are never logged, never echoed in a refusal, and leave only as argon2 hashes.
//!
//! [`LoginGuard`]: crate::login::LoginGuard

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use store::UserRow;

use super::{Error, Result};
use crate::auth;
use crate::clock::now_micros;
use crate::login::Refused;
use crate::state::AppState;

const WRONG: Error = Error::Unauthorized("wrong username or password");

/// The shortest password a user may be given.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The longest password (argon2 reads all of it).
pub const MAX_PASSWORD_CHARS: usize = 256;
/// The longest user name.
pub const MAX_USERNAME_CHARS: usize = 64;
/// The largest page of the users list.
pub const MAX_PAGE: usize = 1000;

/// Whether `user` is the site's administrator, the only one who manages users.
pub fn is_admin(user: &str) -> bool {
    user == auth::ADMIN
}

/// Refuses anyone but the admin, in the words every users call uses.
pub fn require_admin(caller: &str) -> Result<()> {
    if is_admin(caller) {
        Ok(())
    } else {
        Err(Error::Forbidden(format!(
            "only {} may manage users; you are signed in as {caller}",
            auth::ADMIN
        )))
    }
}

/// Refuses a name that cannot be a user's.
pub fn check_username(name: &str) -> Result<()> {
    let n = name.chars().count();
    if n > MAX_USERNAME_CHARS {
        return Err(Error::Invalid(format!(
            "username is {n} characters long; at most {MAX_USERNAME_CHARS} are allowed"
        )));
    }
    let allowed = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '@')
    };
    let starts_well = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !starts_well || !name.chars().all(allowed) {
        return Err(Error::Invalid(format!(
            "username must be lowercase letters, digits and . _ - @, starting with a letter \
             or digit, not {name:?}"
        )));
    }
    Ok(())
}

/// Refuses a new password that is too short, too long or holds control characters. `field`
/// names it in the refusal; the password itself never appears in it.
pub fn check_password(field: &str, password: &str) -> Result<()> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_CHARS {
        return Err(Error::Invalid(format!(
            "{field} must be at least {MIN_PASSWORD_CHARS} characters long"
        )));
    }
    if n > MAX_PASSWORD_CHARS {
        return Err(Error::Invalid(format!(
            "{field} must be at most {MAX_PASSWORD_CHARS} characters long"
        )));
    }
    if password.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{field} may not contain control characters (tabs, line breaks, …)"
        )));
    }
    Ok(())
}

/// Checks `password` for `username` from `client` through the guard; `Ok(false)` for a wrong
/// one (counted as a failure of that user and address).
async fn check(
    state: &AppState,
    client: Option<IpAddr>,
    username: &str,
    password: &str,
) -> Result<bool> {
    let hash = state.store.password_hash(username).await?;
    match state.login.check(client, username, password, hash).await {
        Ok(ok) => Ok(ok),
        Err(Refused::BackingOff(wait)) => {
            tracing::warn!(username, client = ?client, ?wait, "password check refused: backing off after repeated failures");
            Err(Error::TooManyAttempts(wait))
        }
        Err(Refused::Busy) => {
            tracing::warn!(username, client = ?client, "password check refused: too many in progress");
            Err(Error::Busy)
        }
    }
}

/// An argon2 hash of a new password, computed on the guard's checker threads.
async fn hash(state: &AppState, password: &str) -> Result<String> {
    match state.login.hash(password).await {
        Ok(Ok(hash)) => Ok(hash),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "hashing a password failed");
            Err(Error::Internal)
        }
        Err(_) => Err(Error::Busy),
    }
}

/// A fresh login token for `username`.
async fn issue_token(state: &AppState, username: &str) -> Result<String> {
    let (token, hash) = auth::new_token();
    state
        .store
        .create_token(hash, username, now_micros() + auth::TOKEN_LIFETIME_MICROS)
        .await?;
    Ok(token)
}

/// Checks a password from `client` (within the limits of [`auth::LoginGuard`]: bounded
/// concurrent checks, backoff per address and per user, an unknown user costing what a
/// wrong password costs) and issues a login token.
pub async fn sign_in(
    state: &AppState,
    client: Option<IpAddr>,
    username: &str,
    password: &str,
) -> Result<String> {
    if !check(state, client, username, password).await? {
        tracing::warn!(username, client = ?client, "failed sign-in");
        return Err(WRONG);
    }
    issue_token(state, username).await
}

/// Revokes a login token.
pub async fn sign_out(state: &AppState, token: &str) -> Result<()> {
    Ok(state.store.delete_token(auth::token_hash(token)).await?)
}

/// A page of the site's users, by name, for the admin: up to `limit` after `after`, and the
/// name to continue after when more remain.
pub async fn list(
    state: &AppState,
    caller: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<UserRow>, Option<String>)> {
    require_admin(caller)?;
    let limit = limit.clamp(1, MAX_PAGE);
    let mut rows = state.store.list_users(after, limit + 1).await?;
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|u| u.username.clone())
    } else {
        None
    };
    Ok((rows, next))
}

/// The opaque cursor of a page that ended at user `last`.
pub fn cursor(last: &str) -> String {
    URL_SAFE_NO_PAD.encode(last)
}

/// The name a cursor given out by [`cursor`] continues after.
pub fn parse_cursor(c: &str) -> Result<String> {
    URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|name| check_username(name).is_ok())
        .ok_or_else(|| Error::InvalidQuery("cursor is not one this site gave out".into()))
}

/// How many users the site has.
pub async fn count(state: &AppState) -> Result<u64> {
    Ok(state.store.user_count().await?)
}

/// Creates user `username` with `password`, for the admin. Everything is checked before the
/// password is hashed; a name that is taken is a conflict.
pub async fn create(
    state: &AppState,
    caller: &str,
    username: &str,
    password: &str,
) -> Result<UserRow> {
    require_admin(caller)?;
    check_username(username)?;
    check_password("password", password)?;
    if state.store.password_hash(username).await?.is_some() {
        return Err(Error::Conflict(format!("user {username} already exists")));
    }
    let hash = hash(state, password).await?;
    let user = state.store.create_user(username, &hash).await?;
    tracing::info!(user = username, by = caller, "created a user");
    Ok(user)
}

/// Removes user `username` and ends its sessions at once, for the admin; never the admin,
/// nor the caller.
pub async fn remove(state: &AppState, caller: &str, username: &str) -> Result<()> {
    require_admin(caller)?;
    if is_admin(username) {
        return Err(Error::Conflict(format!(
            "the {} user cannot be removed",
            auth::ADMIN
        )));
    }
    if username == caller {
        return Err(Error::Conflict("you cannot remove yourself".into()));
    }
    state.store.delete_user(username).await?;
    tracing::info!(
        user = username,
        by = caller,
        "removed a user and revoked its tokens"
    );
    Ok(())
}

/// Sets `username`'s password to `new` and revokes every token of the user. The admin may
/// do it for anyone; a user for themself only, giving `current` (checked like a sign-in from
/// `client`). Changing one's own password answers a fresh token, as the caller's own was
/// revoked with the others.
pub async fn set_password(
    state: &AppState,
    caller: &str,
    client: Option<IpAddr>,
    username: &str,
    new: &str,
    current: Option<&str>,
) -> Result<Option<String>> {
    let own = username == caller;
    if !own && !is_admin(caller) {
        return Err(Error::Forbidden(format!(
            "only {} may set another user's password; you may change your own",
            auth::ADMIN
        )));
    }
    check_password("password", new)?;
    if own {
        let Some(current) = current.filter(|c| !c.is_empty()) else {
            return Err(Error::Invalid(
                "current_password is required to change your own password".into(),
            ));
        };
        if !check(state, client, username, current).await? {
            tracing::warn!(username, client = ?client, "password change refused: wrong current password");
            return Err(Error::Forbidden(
                "current_password is not your current password; nothing was changed".into(),
            ));
        }
    } else if state.store.password_hash(username).await?.is_none() {
        return Err(Error::NotFound(format!("user {username} does not exist")));
    }
    let hash = hash(state, new).await?;
    state.store.set_password(username, &hash).await?;
    tracing::info!(
        user = username,
        by = caller,
        "password set; every token of the user revoked"
    );
    if own {
        Ok(Some(issue_token(state, username).await?))
    } else {
        Ok(None)
    }
}

/// The site's first users by name (at most `limit`), for a form that suggests principals.
pub async fn names(state: &AppState, limit: usize) -> Result<Vec<String>> {
    Ok(state
        .store
        .list_users(None, limit)
        .await?
        .into_iter()
        .map(|u| u.username)
        .collect())
}

/// Which of `principals` (a device's grants) name no user of this site: a group, a user of
/// the peer site, or a typo.
pub async fn not_users(state: &AppState, principals: &[String]) -> Result<Vec<String>> {
    let found = state.store.existing_users(principals).await?;
    Ok(principals
        .iter()
        .filter(|p| !found.contains(p))
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_words_of_bounded_length() {
        for ok in ["bob", "ops.team", "a", "j_doe-2", "eve@plant", "7up"] {
            assert!(check_username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Admin",
            "bob smith",
            "-bob",
            ".x",
            "bøb",
            "tab\tname",
            &"x".repeat(65),
        ] {
            let e = check_username(bad).unwrap_err();
            assert_eq!(e.code(), "invalid_value");
            assert!(e.to_string().starts_with("username"), "{e}");
        }
    }

    #[test]
    fn passwords_have_a_minimum_and_never_appear_in_a_refusal() {
        assert!(check_password("password", "correct-horse").is_ok());
        for bad in ["short-pw", &"x".repeat(257), "new\npassword!!"] {
            let e = check_password("password", bad).unwrap_err();
            assert!(e.to_string().starts_with("password"), "{e}");
            assert!(!e.to_string().contains(bad), "{e}");
        }
        // Characters, not bytes: twelve of them however they encode.
        assert!(check_password("password", "ééééééééééé").is_err());
        assert!(check_password("password", "éééééééééééé").is_ok());
    }
}
