//! Users in the web UI (#16 item 8, docs/ui.md "Users and Account") in headless Chromium
//! against a real site: the admin's header links to Users; creating a user with a short or
//! mistyped password is refused with a sentence that focuses the field and keeps the name,
//! then succeeds; a reset and a removal (after a confirmation) take effect at once; a grant
//! suggests the site's users and marks a principal that is not one; every user changes
//! their own password on the Account page and stays signed in; a user who is not the admin
//! sees no Users link and is refused the page. At a phone's 390 px no users page scrolls
//! sideways.
//!
//! Screenshots land in `target/ui-screenshots/9x-*.png` for a person to look at; the test
//! asserts on the DOM and the API only. Nothing sleeps: every wait polls with a deadline.

use anyhow::ensure;
use fantoccini::Locator;
use reqwest::StatusCode;
use serde_json::json;
use testkit::Api;
use testkit::browser::Browser;

use crate::ui::{click, fill, shot, sign_in, wait_text};
use crate::util;

/// The id of the element that has the focus.
async fn focused(b: &Browser) -> anyhow::Result<String> {
    let id = b
        .client
        .execute(
            "return document.activeElement && document.activeElement.id;",
            vec![],
        )
        .await?;
    Ok(id.as_str().unwrap_or_default().to_owned())
}

/// Turns the browser's own checks of form `css` off, so that the site's refusal shows.
async fn no_validate(b: &Browser, css: &str) -> anyhow::Result<()> {
    b.wait_for(css).await?;
    b.client
        .execute(
            "document.querySelector(arguments[0]).noValidate = true;",
            vec![json!(css)],
        )
        .await?;
    Ok(())
}

async fn value(b: &Browser, css: &str) -> anyhow::Result<String> {
    Ok(b.wait_for(css)
        .await?
        .prop("value")
        .await?
        .unwrap_or_default())
}

async fn user_count(admin: &Api) -> anyhow::Result<u64> {
    Ok(admin.get_ok("/api/v1/users").await?["total"]
        .as_u64()
        .unwrap_or_default())
}

#[tokio::test]
async fn the_admin_manages_users_and_everyone_changes_their_password() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let base = &site.url;
    let admin = site.admin().await?;
    let cid = util::thermometers(&admin, &["dev-1".to_owned()]).await?;
    admin
        .post_ok(
            "/api/v1/users",
            json!({"username": "bob", "password": "bob-long-password"}),
        )
        .await?;
    let b = Browser::start().await?;
    sign_in(&b, base, &site.opts.admin_password).await?;

    // The header links the admin to Users.
    click(&b, "#users-link").await?;
    wait_text(&b, "#users", "admin").await?;
    wait_text(&b, "tr[data-user='bob']", "bob").await?;
    shot(&b, "90-users").await?;

    // A short password: the sentence, the field focused, the name kept, nothing created.
    no_validate(&b, "#user-form").await?;
    fill(&b, "#username", "jane").await?;
    fill(&b, "#password", "short").await?;
    fill(&b, "#password2", "short").await?;
    click(&b, "#create-user").await?;
    let e = wait_text(&b, "#form-error", "12 characters").await?;
    ensure!(
        e == "The new password must be at least 12 characters long.",
        "{e}"
    );
    ensure!(focused(&b).await? == "password");
    ensure!(value(&b, "#username").await? == "jane");
    ensure!(
        value(&b, "#password").await?.is_empty(),
        "no password is filled back in"
    );
    shot(&b, "91-user-refused").await?;
    ensure!(user_count(&admin).await? == 2);

    // A name that cannot be one, then two passwords that differ.
    no_validate(&b, "#user-form").await?;
    fill(&b, "#username", "Jane").await?;
    fill(&b, "#password", "jane-first-password").await?;
    fill(&b, "#password2", "jane-first-password").await?;
    click(&b, "#create-user").await?;
    wait_text(&b, "#form-error", "Username must be lowercase").await?;
    ensure!(focused(&b).await? == "username");
    no_validate(&b, "#user-form").await?;
    fill(&b, "#username", "jane").await?;
    fill(&b, "#password", "jane-first-password").await?;
    fill(&b, "#password2", "jane-first-pasword").await?;
    click(&b, "#create-user").await?;
    wait_text(&b, "#form-error", "The two new passwords differ").await?;
    ensure!(focused(&b).await? == "password2");
    ensure!(user_count(&admin).await? == 2);

    fill(&b, "#password", "jane-first-password").await?;
    fill(&b, "#password2", "jane-first-password").await?;
    click(&b, "#create-user").await?;
    wait_text(&b, "#flash", "User jane created").await?;
    wait_text(&b, "tr[data-user='jane']", "jane").await?;
    let jane = Api::login(base, "jane", "jane-first-password").await?;

    // The admin resets her password: her token ends at once, the new password works.
    click(&b, "#reset-jane").await?;
    wait_text(&b, "h1", "Reset the password of jane").await?;
    fill(&b, "#password", "jane-reset-password").await?;
    fill(&b, "#password2", "jane-reset-password").await?;
    click(&b, "#save-password").await?;
    wait_text(&b, "#flash", "Password of jane reset").await?;
    let (s, _) = jane.get("/api/v1/connectors").await?;
    ensure!(s == StatusCode::UNAUTHORIZED, "{s}");
    let jane = Api::login(base, "jane", "jane-reset-password").await?;

    // Removing asks first; then she is gone and her token with her.
    click(&b, "#remove-jane").await?;
    wait_text(&b, "#confirm-text", "Remove user jane?").await?;
    shot(&b, "92-user-remove-confirm").await?;
    click(&b, "#confirm-ok").await?;
    wait_text(&b, "#flash", "User jane removed").await?;
    ensure!(
        b.client
            .find_all(Locator::Css("tr[data-user='jane']"))
            .await?
            .is_empty()
    );
    let (s, _) = jane.get("/api/v1/connectors").await?;
    ensure!(s == StatusCode::UNAUTHORIZED, "{s}");

    // A grant suggests the site's users; a principal that is none is kept but marked.
    b.goto(&format!("{base}/connectors/{cid}/devices/dev-1"))
        .await?;
    b.wait_for("#grant-form").await?;
    let suggested = b
        .client
        .execute(
            "return [...document.querySelectorAll('#site-users option')].map(o => o.value);",
            vec![],
        )
        .await?;
    ensure!(suggested == json!(["admin", "bob"]), "{suggested}");
    fill(&b, "#grant-form input[name='principal']", "bob").await?;
    click(&b, "#grant-form button").await?;
    let notice = wait_text(&b, "#flash", "Granted read access to bob.").await?;
    ensure!(!notice.contains("not a user"), "{notice}");
    fill(&b, "#grant-form input[name='principal']", "ops-team").await?;
    click(&b, "#grant-form button").await?;
    let notice = wait_text(&b, "#flash", "Granted read access to ops-team.").await?;
    ensure!(
        notice.contains("ops-team is not a user on this site"),
        "{notice}"
    );
    let marked = wait_text(&b, "#permissions tr.grant-unknown", "ops-team").await?;
    ensure!(marked.contains("not a user on this site"), "{marked}");
    let rows = b
        .client
        .find_all(Locator::Css("#permissions tr.grant-unknown"))
        .await?;
    ensure!(rows.len() == 1, "only ops-team is marked");
    shot(&b, "93-grant-marked").await?;
    let d = admin
        .get_ok(&format!("/api/v1/connectors/{cid}/devices/dev-1"))
        .await?;
    ensure!(
        d["permissions"]
            == json!([{"principal": "bob", "access": "read"},
                      {"principal": "ops-team", "access": "read"}]),
        "{d}"
    );

    // The admin's own password, on the Account page: a wrong current one is refused and
    // focused; the right one changes it, and this browser stays signed in.
    click(&b, "#account-link").await?;
    wait_text(&b, "h1", "Account").await?;
    fill(&b, "#current_password", "not-the-password").await?;
    fill(&b, "#password", "admin-new-password").await?;
    fill(&b, "#password2", "admin-new-password").await?;
    click(&b, "#save-password").await?;
    wait_text(
        &b,
        "#form-error",
        "The current password is not your current password",
    )
    .await?;
    ensure!(focused(&b).await? == "current_password");
    fill(&b, "#current_password", &site.opts.admin_password).await?;
    fill(&b, "#password", "admin-new-password").await?;
    fill(&b, "#password2", "admin-new-password").await?;
    click(&b, "#save-password").await?;
    wait_text(&b, "#flash", "Your password was changed").await?;
    shot(&b, "94-account-changed").await?;
    let (s, _) = admin.get("/api/v1/users").await?;
    ensure!(
        s == StatusCode::UNAUTHORIZED,
        "the admin's other token ended: {s}"
    );
    b.goto(&format!("{base}/users")).await?;
    wait_text(&b, "#users", "bob").await?;

    // At a phone's 390 px the pages fall into one column and do not scroll sideways.
    let chrome = b
        .client
        .execute("return window.outerWidth - window.innerWidth;", vec![])
        .await?
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    b.client.set_window_size(390 + chrome, 844).await?;
    for (i, path) in ["/users", "/users/bob/password", "/account"]
        .iter()
        .enumerate()
    {
        b.goto(&format!("{base}{path}")).await?;
        b.wait_for("#account-link").await?;
        let over = b
            .client
            .execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
                vec![],
            )
            .await?
            .as_i64()
            .unwrap_or(i64::MAX);
        shot(&b, &format!("95-phone-{i}")).await?;
        ensure!(over <= 0, "{path} scrolls sideways by {over} px");
    }

    // Bob is no admin: no Users link, and the page refuses him.
    click(&b, "header form[action='/logout'] button").await?;
    fill(&b, "#username", "bob").await?;
    fill(&b, "#password", "bob-long-password").await?;
    click(&b, "#sign-in").await?;
    wait_text(&b, "#account-link", "bob").await?;
    ensure!(
        b.client
            .find_all(Locator::Css("#users-link"))
            .await?
            .is_empty()
    );
    b.goto(&format!("{base}/users")).await?;
    wait_text(&b, "#error-message", "Only admin may manage users").await?;
    Ok(())
}
