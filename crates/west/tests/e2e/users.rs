//! The users API (#16 item 8, docs/api.md "Users") against a real `west site` process: the
//! admin creates a user who signs in and reads; only the admin manages users; every kind of
//! bad input is refused with its code and a sentence naming the field, and changes nothing;
//! a password change or a removal ends the user's tokens at once; no password reaches the
//! site's log; and the users' forms and calls are origin-checked like every state change.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::Api;

use crate::security_site::{FORM, client, form, ui_session};
use crate::util;

const JANE_PW: &str = "jane-first-password";
const JANE_PW2: &str = "jane-second-password";
const JANE_PW3: &str = "jane-reset-by-admin";

/// The names of the site's users, every page followed.
async fn usernames(api: &Api) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = api
            .get_ok(&format!("/api/v1/users?limit=2{cursor}"))
            .await?;
        for u in page["users"].as_array().into_iter().flatten() {
            names.push(u["username"].as_str().unwrap_or_default().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return Ok(names),
        }
    }
}

async fn put(api: &Api, path: &str, body: Value) -> anyhow::Result<(StatusCode, Value)> {
    api.call(Method::PUT, path, Some(body)).await
}

/// Asserts a refusal: its status, its code and that its sentence starts with `starts`.
fn refused(got: (StatusCode, Value), status: StatusCode, code: &str, starts: &str) {
    let (s, body) = got;
    assert_eq!((s, body["error"].as_str()), (status, Some(code)), "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(starts),
        "{message:?} should start with {starts:?}"
    );
}

#[tokio::test]
async fn the_admin_manages_users_who_sign_in_and_lose_access_at_once() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let admin = site.admin().await?;

    let list = admin.get_ok("/api/v1/users").await?;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["users"][0]["username"], "admin");
    assert_eq!(list["users"][0]["admin"], true);

    // A new user signs in and reads what everyone reads.
    let (s, jane) = admin
        .post(
            "/api/v1/users",
            json!({"username": "jane", "password": JANE_PW}),
        )
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{jane}");
    assert_eq!(jane["username"], "jane");
    assert_eq!(jane["admin"], false);
    assert!(jane["created_at"].is_string(), "{jane}");
    assert!(jane.get("password").is_none() && jane.get("password_hash").is_none());
    let jane = Api::login(&site.url, "jane", JANE_PW).await?;
    admin
        .post_ok("/api/v1/connectors", json!({"name": "plant"}))
        .await?;
    let connectors = jane.get_ok("/api/v1/connectors").await?;
    assert_eq!(connectors[0]["name"], "plant", "{connectors}");

    // Only the admin manages users.
    refused(
        jane.get("/api/v1/users").await?,
        StatusCode::FORBIDDEN,
        "forbidden",
        "only admin may manage users",
    );
    refused(
        jane.post(
            "/api/v1/users",
            json!({"username": "mallory", "password": "mallory-password"}),
        )
        .await?,
        StatusCode::FORBIDDEN,
        "forbidden",
        "only admin",
    );
    refused(
        jane.delete("/api/v1/users/admin").await?,
        StatusCode::FORBIDDEN,
        "forbidden",
        "only admin",
    );
    refused(
        put(
            &jane,
            "/api/v1/users/admin/password",
            json!({"password": "taken-over-admin"}),
        )
        .await?,
        StatusCode::FORBIDDEN,
        "forbidden",
        "only admin may set another user's password",
    );

    // Every kind of bad input: refused with a sentence naming the field, nothing stored.
    let create = |body: Value| {
        let admin = admin.clone();
        async move { admin.post("/api/v1/users", body).await }
    };
    let cases: &[(Value, &str, &str)] = &[
        (
            json!({"username": "Jane2", "password": "long-enough-pw"}),
            "invalid_value",
            "username must be lowercase",
        ),
        (
            json!({"username": "", "password": "long-enough-pw"}),
            "invalid_value",
            "username must be lowercase",
        ),
        (
            json!({"username": "bob smith", "password": "long-enough-pw"}),
            "invalid_value",
            "username must be lowercase",
        ),
        (
            json!({"username": "x".repeat(65), "password": "long-enough-pw"}),
            "invalid_value",
            "username is 65 characters long",
        ),
        (
            json!({"username": "bob", "password": "short-pw"}),
            "invalid_value",
            "password must be at least 12 characters",
        ),
        (
            json!({"username": "bob", "password": "p".repeat(257)}),
            "invalid_value",
            "password must be at most 256",
        ),
        (
            json!({"username": "bob", "password": "line\nbreak-password"}),
            "invalid_value",
            "password may not contain control characters",
        ),
        (
            json!({"username": "bob"}),
            "invalid_value",
            "the body does not fit this call",
        ),
        (
            json!({"username": "bob", "password": "long-enough-pw", "admin": true}),
            "invalid_value",
            "the body does not fit this call",
        ),
        (
            json!({"username": "bob", "password": 123_456_789_012_i64}),
            "invalid_value",
            "the body does not fit this call",
        ),
    ];
    for (body, code, starts) in cases {
        refused(
            create(body.clone()).await?,
            StatusCode::BAD_REQUEST,
            code,
            starts,
        );
    }
    refused(
        admin
            .call_raw(
                Method::POST,
                "/api/v1/users",
                b"{\"username\": \"bob\"".to_vec(),
            )
            .await?,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "the body is not valid JSON",
    );
    refused(
        create(json!({"username": "jane", "password": "another-password"})).await?,
        StatusCode::CONFLICT,
        "conflict",
        "user jane already exists",
    );
    refused(
        admin.get("/api/v1/users?limit=0").await?,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        "limit must be a whole number from 1 to 1000",
    );
    refused(
        admin.get("/api/v1/users?cursor=not-a-cursor!").await?,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        "cursor is not one this site gave out",
    );
    assert_eq!(usernames(&admin).await?, ["admin", "jane"]);
    // The refused `short-pw` and friends never became anyone's password.
    let (s, _) = admin
        .post(
            "/api/v1/login",
            json!({"username": "bob", "password": "short-pw"}),
        )
        .await?;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Pages by name.
    for name in ["carol", "bob"] {
        admin
            .post_ok(
                "/api/v1/users",
                json!({"username": name, "password": format!("{name}-long-password")}),
            )
            .await?;
    }
    let first = admin.get_ok("/api/v1/users?limit=2").await?;
    assert_eq!(first["total"], 4);
    assert!(first["next"].is_string(), "{first}");
    assert_eq!(usernames(&admin).await?, ["admin", "bob", "carol", "jane"]);

    // Jane changes her own password: the current one is needed and checked; a refusal
    // changes nothing, her token goes on working.
    let own = "/api/v1/users/jane/password";
    refused(
        put(&jane, own, json!({"password": JANE_PW2})).await?,
        StatusCode::BAD_REQUEST,
        "invalid_value",
        "current_password is required",
    );
    refused(
        put(
            &jane,
            own,
            json!({"password": JANE_PW2, "current_password": "not-her-password"}),
        )
        .await?,
        StatusCode::FORBIDDEN,
        "forbidden",
        "current_password is not your current password",
    );
    refused(
        put(
            &jane,
            own,
            json!({"password": "short", "current_password": JANE_PW}),
        )
        .await?,
        StatusCode::BAD_REQUEST,
        "invalid_value",
        "password must be at least 12",
    );
    refused(
        put(
            &jane,
            "/api/v1/users/bob/password",
            json!({"password": JANE_PW2}),
        )
        .await?,
        StatusCode::FORBIDDEN,
        "forbidden",
        "only admin",
    );
    jane.get_ok("/api/v1/connectors").await?;
    let (s, changed) = put(
        &jane,
        own,
        json!({"password": JANE_PW2, "current_password": JANE_PW}),
    )
    .await?;
    assert_eq!(s, StatusCode::OK, "{changed}");
    let fresh = jane.with_token(changed["token"].as_str().unwrap_or_default());
    // The token she changed it with stopped working at once; the fresh one works.
    let (s, _) = jane.get("/api/v1/connectors").await?;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    fresh.get_ok("/api/v1/connectors").await?;
    assert!(Api::login(&site.url, "jane", JANE_PW).await.is_err());
    let jane = Api::login(&site.url, "jane", JANE_PW2).await?;

    // The admin resets it: every token of hers ends at once.
    let (s, body) = put(&admin, own, json!({"password": JANE_PW3})).await?;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    for api in [&jane, &fresh] {
        let (s, _) = api.get("/api/v1/connectors").await?;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    refused(
        put(
            &admin,
            "/api/v1/users/nobody/password",
            json!({"password": JANE_PW3}),
        )
        .await?,
        StatusCode::NOT_FOUND,
        "not_found",
        "user nobody does not exist",
    );
    let jane = Api::login(&site.url, "jane", JANE_PW3).await?;
    jane.get_ok("/api/v1/connectors").await?;

    // Removing her: her token stops working at the next request, and she cannot sign in.
    refused(
        admin.delete("/api/v1/users/admin").await?,
        StatusCode::CONFLICT,
        "conflict",
        "the admin user cannot be removed",
    );
    let (s, body) = admin.delete("/api/v1/users/jane").await?;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    refused(
        jane.get("/api/v1/connectors").await?,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the token is unknown",
    );
    assert!(Api::login(&site.url, "jane", JANE_PW3).await.is_err());
    refused(
        admin.delete("/api/v1/users/jane").await?,
        StatusCode::NOT_FOUND,
        "not_found",
        "user jane does not exist",
    );
    assert_eq!(usernames(&admin).await?, ["admin", "bob", "carol"]);

    // No password, accepted or refused, is in the log.
    let log = std::fs::read_to_string(&site.proc.log_path)?;
    for secret in [
        JANE_PW,
        JANE_PW2,
        JANE_PW3,
        "not-her-password",
        "short-pw",
        "carol-long-password",
    ] {
        assert!(!log.contains(secret), "{secret:?} is in the site's log");
    }
    assert!(log.contains("removed a user"), "the removal is logged");
    Ok(())
}

/// The users' state-changing routes are origin-checked like every other (docs/api.md,
/// "Browsers"): with only the session cookie, a form posted from another origin or without
/// its token, and an API call from another origin or not sent as JSON, are refused 403 and
/// change nothing. The site's own form with its token works.
#[tokio::test]
async fn cross_site_requests_cannot_create_remove_or_reset_users() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let admin = site.admin().await?;
    admin
        .post_ok(
            "/api/v1/users",
            json!({"username": "bob", "password": "bob-long-password"}),
        )
        .await?;
    let c = client(None)?;
    let cookie = ui_session(&c, &site).await?;
    let own = site.url.clone();
    let taken = [
        ("password", "taken-over-pw"),
        ("password2", "taken-over-pw"),
    ];
    let own_change = [
        ("current_password", site.opts.admin_password.as_str()),
        ("password", "taken-over-pw"),
        ("password2", "taken-over-pw"),
    ];
    let mallory = [
        ("username", "mallory"),
        ("password", "mallory-password"),
        ("password2", "mallory-password"),
    ];
    let forms: [(&str, &[(&str, &str)]); 4] = [
        ("/users", &mallory),
        ("/users/bob/delete", &[]),
        ("/users/bob/password", &taken),
        ("/account/password", &own_change),
    ];
    for (path, fields) in forms {
        for origin in ["https://evil.example", own.as_str()] {
            // From another origin; from this one but without the form's token.
            let r = c
                .post(format!("{own}{path}"))
                .header("cookie", &cookie)
                .header("origin", origin)
                .header("content-type", FORM)
                .body(form(fields))
                .send()
                .await?;
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path} from {origin}");
        }
    }
    let api = [
        (
            Method::POST,
            "/api/v1/users",
            Some("https://evil.example"),
            "application/json",
        ),
        (Method::POST, "/api/v1/users", None, "text/plain"),
        (
            Method::DELETE,
            "/api/v1/users/bob",
            Some("https://evil.example"),
            "application/json",
        ),
        (
            Method::DELETE,
            "/api/v1/users/bob",
            Some(own.as_str()),
            "text/plain",
        ),
        (
            Method::PUT,
            "/api/v1/users/bob/password",
            None,
            "text/plain",
        ),
    ];
    for (method, path, origin, kind) in api {
        let mut req = c
            .request(method.clone(), format!("{own}{path}"))
            .header("cookie", &cookie)
            .header("content-type", kind)
            .body(r#"{"username":"mallory","password":"taken-over-pw"}"#);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let r = req.send().await?;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{method} {path}");
        let body: Value = r.json().await?;
        assert_eq!(body["error"], "cross_site_request", "{method} {path}");
    }
    // Nothing changed: the same users, each with the same password.
    assert_eq!(usernames(&admin).await?, ["admin", "bob"]);
    Api::login(&site.url, "bob", "bob-long-password").await?;
    Api::login(&site.url, "admin", &site.opts.admin_password).await?;

    // The Users page's own form, with its token, from this origin, creates the user.
    let token = crate::security_site::form_token(&c, &cookie, &format!("{own}/users")).await?;
    let mut fields = mallory.to_vec();
    fields.push(("csrf", token.as_str()));
    let r = c
        .post(format!("{own}/users"))
        .header("cookie", &cookie)
        .header("origin", &own)
        .header("content-type", FORM)
        .body(form(&fields))
        .send()
        .await?;
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(usernames(&admin).await?, ["admin", "bob", "mallory"]);
    Ok(())
}
