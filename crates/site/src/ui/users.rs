//! The users pages (docs/ui.md, "Users"): the admin's Users page (the site's users a page at
//! a time, create one, remove one after a confirmation, reset a password) and every user's
//! Account page (change my password). Everything goes through `ops::users`, so the UI
//! refuses what the API refuses, with the same sentence; a refusal re-renders the form with
//! the offending field focused and marked. Password fields are never filled back in.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::http::header::SET_COOKIE;
use axum::response::Response;
use serde::Deserialize;

use super::error_page::{OrPage, UiResult, status_of};
use super::frame::{Crumb, Frame};
use super::session::{Ctx, flash_error_redirect, flash_redirect};
use super::view::{When, sentence};
use crate::api::extract::QueryPairs;
use crate::auth::{self, ClientAddr};
use crate::ops::{self, users};
use crate::state::AppState;

/// Users on one page of the list.
const PAGE: usize = 50;

/// One user as a row of the list.
pub struct UserView {
    pub name: String,
    pub admin: bool,
    /// The signed-in user (who cannot remove themself).
    pub you: bool,
    pub created: When,
}

/// The field a refusal is about, to focus and mark it: `username`, `password`,
/// `password2` or `current_password`; empty when it is about none.
fn error_field(e: &ops::Error) -> &'static str {
    let m = e.to_string();
    match e {
        ops::Error::TooManyAttempts(_) => "current_password",
        _ if m.starts_with("the two new passwords") => "password2",
        _ if m.starts_with("username") || m.starts_with("user ") => "username",
        _ if m.starts_with("current_password") => "current_password",
        _ if m.starts_with("password") => "password",
        _ => "",
    }
}

/// What a refusal says on a form: the API's sentence, with the body's field names in words.
fn form_sentence(e: &ops::Error) -> String {
    sentence(
        &e.to_string()
            .replace("current_password", "the current password")
            .replace("password must", "the new password must")
            .replace("password may", "the new password may"),
    )
}

/// The refusal of two new passwords that differ.
fn mismatch() -> ops::Error {
    ops::Error::Invalid("the two new passwords differ; type the same one twice".into())
}

/// Whether the two new passwords of a form agree.
fn repeated(password: &str, again: &str) -> Result<(), ops::Error> {
    if password == again {
        Ok(())
    } else {
        Err(mismatch())
    }
}

fn users_crumbs() -> Vec<Crumb> {
    vec![Crumb::link("Connectors", "/"), Crumb::here("Users")]
}

#[derive(Template)]
#[template(path = "users.html")]
struct ListPage {
    frame: Frame,
    rows: Vec<UserView>,
    total: u64,
    /// The next page's address, when there may be one.
    next: Option<String>,
    /// Whether this page continues an earlier one (then it offers the first page).
    paged: bool,
    /// The create form's name as typed, after a refusal.
    username: String,
    error: Option<String>,
    error_field: &'static str,
}

async fn list_page(
    ctx: &Ctx,
    state: &AppState,
    cursor: Option<&str>,
    username: String,
    error: Option<&ops::Error>,
) -> UiResult {
    let after = cursor.map(users::parse_cursor).transpose().or_page(ctx)?;
    let (rows, next) = users::list(state, &ctx.user, after.as_deref(), PAGE)
        .await
        .or_page(ctx)?;
    let total = users::count(state).await.or_page(ctx)?;
    let mut resp = ctx.page(&ListPage {
        frame: ctx.frame("Users", users_crumbs()),
        rows: rows
            .iter()
            .map(|u| UserView {
                name: u.username.clone(),
                admin: users::is_admin(&u.username),
                you: u.username == ctx.user,
                created: When::at(u.created_at),
            })
            .collect(),
        total,
        next: next.map(|n| format!("/users?cursor={}", users::cursor(&n))),
        paged: after.is_some(),
        username,
        error: error.map(form_sentence),
        error_field: error.map_or("", error_field),
    });
    if let Some(e) = error {
        *resp.status_mut() = status_of(e);
    }
    Ok(resp)
}

/// `GET /users[?cursor=]`: the admin's list; anyone else gets the refusal's page (403).
pub async fn list(ctx: Ctx, State(state): State<AppState>, q: QueryPairs) -> UiResult {
    list_page(&ctx, &state, q.get("cursor"), String::new(), None).await
}

#[derive(Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    password2: String,
}

/// `POST /users`: creates a user; a refusal shows the form again with its field focused.
pub async fn create(
    ctx: Ctx,
    State(state): State<AppState>,
    Form(form): Form<CreateForm>,
) -> UiResult {
    let username = form.username.trim().to_owned();
    let done = match repeated(&form.password, &form.password2) {
        Ok(()) => users::create(&state, &ctx.user, &username, &form.password).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(u) => Ok(flash_redirect(
            "/users",
            &format!(
                "User {} created; they can sign in now and change their password on their Account page.",
                u.username
            ),
        )),
        Err(e) => list_page(&ctx, &state, None, username, Some(&e)).await,
    }
}

/// `POST /users/{name}/delete`: removes a user (the page asked for a confirmation first).
pub async fn remove(ctx: Ctx, State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match users::remove(&state, &ctx.user, &name).await {
        Ok(()) => flash_redirect(
            "/users",
            &format!("User {name} removed; their sessions ended."),
        ),
        Err(e) => flash_error_redirect("/users", &format!("Nothing was changed: {e}")),
    }
}

#[derive(Template)]
#[template(path = "user_password.html")]
struct PasswordPage {
    frame: Frame,
    /// Whose password the form sets.
    name: String,
    /// The signed-in user's own (then the current password is asked), or another's (a reset
    /// by the admin).
    own: bool,
    /// Where the form posts.
    action: String,
    /// Where Cancel goes.
    back: &'static str,
    error: Option<String>,
    error_field: &'static str,
}

fn password_page(ctx: &Ctx, name: &str, error: Option<&ops::Error>) -> Response {
    let own = name == ctx.user;
    let (title, crumbs, action, back) = if own {
        (
            "Account".to_owned(),
            vec![Crumb::link("Connectors", "/"), Crumb::here("Account")],
            "/account/password".to_owned(),
            "/",
        )
    } else {
        let mut crumbs = users_crumbs();
        if let Some(last) = crumbs.last_mut() {
            last.href = Some("/users".into());
        }
        crumbs.push(Crumb::here(format!("Reset the password of {name}")));
        (
            format!("Reset the password of {name}"),
            crumbs,
            format!("/users/{name}/password"),
            "/users",
        )
    };
    let mut resp = ctx.page(&PasswordPage {
        frame: ctx.frame(title, crumbs),
        name: name.to_owned(),
        own,
        action,
        back,
        error: error.map(form_sentence),
        error_field: error.map_or("", error_field),
    });
    if let Some(e) = error {
        *resp.status_mut() = status_of(e);
    }
    resp
}

/// `GET /account`: the signed-in user's Change password form.
pub async fn account(ctx: Ctx) -> Response {
    let name = ctx.user.clone();
    password_page(&ctx, &name, None)
}

/// `GET /users/{name}/password`: the admin's Reset password form of a user.
pub async fn reset_page(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> UiResult {
    users::require_admin(&ctx.user).or_page(&ctx)?;
    if state
        .store
        .password_hash(&name)
        .await
        .or_page(&ctx)?
        .is_none()
    {
        return Err(ops::Error::NotFound(format!("user {name} does not exist"))).or_page(&ctx);
    }
    Ok(password_page(&ctx, &name, None))
}

#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    password2: String,
}

/// `POST /users/{name}/password`: the admin resets a user's password (their sessions end).
pub async fn reset(
    ctx: Ctx,
    State(state): State<AppState>,
    client: ClientAddr,
    Path(name): Path<String>,
    Form(form): Form<PasswordForm>,
) -> Response {
    set(&ctx, &state, client, &name, &form).await
}

/// `POST /account/password`: the signed-in user changes their own password; their other
/// sessions end and this browser is signed in again with a fresh session.
pub async fn change_own(
    ctx: Ctx,
    State(state): State<AppState>,
    client: ClientAddr,
    Form(form): Form<PasswordForm>,
) -> Response {
    let name = ctx.user.clone();
    set(&ctx, &state, client, &name, &form).await
}

async fn set(
    ctx: &Ctx,
    state: &AppState,
    client: ClientAddr,
    name: &str,
    form: &PasswordForm,
) -> Response {
    let own = name == ctx.user;
    let done = match repeated(&form.password, &form.password2) {
        Ok(()) => {
            users::set_password(
                state,
                &ctx.user,
                client.0,
                name,
                &form.password,
                own.then_some(form.current_password.as_str()),
            )
            .await
        }
        Err(e) => Err(e),
    };
    match done {
        Ok(Some(token)) => {
            let mut resp = flash_redirect(
                "/account",
                "Your password was changed; every other session of yours was signed out.",
            );
            let cookie = format!(
                "{}={token}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
                auth::session_cookie(&state.site_name),
                auth::TOKEN_LIFETIME_MICROS / 1_000_000,
                if state.tls { "; Secure" } else { "" },
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().append(SET_COOKIE, v);
            }
            resp
        }
        Ok(None) => flash_redirect(
            "/users",
            &format!("Password of {name} reset; their sessions ended. Tell them the new one."),
        ),
        Err(e) => password_page(ctx, name, Some(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_its_field_in_words_and_focuses_it() {
        let short = users::check_password("password", "short").unwrap_err();
        assert_eq!(error_field(&short), "password");
        assert_eq!(
            form_sentence(&short),
            "The new password must be at least 12 characters long."
        );
        let name = users::check_username("Bob").unwrap_err();
        assert_eq!(error_field(&name), "username");
        assert!(form_sentence(&name).starts_with("Username must be"));
        let current = ops::Error::Forbidden(
            "current_password is not your current password; nothing was changed".into(),
        );
        assert_eq!(error_field(&current), "current_password");
        assert!(form_sentence(&current).starts_with("The current password is not"));
        assert_eq!(error_field(&mismatch()), "password2");
        let taken = ops::Error::Conflict("user bob already exists".into());
        assert_eq!(error_field(&taken), "username");
    }
}
