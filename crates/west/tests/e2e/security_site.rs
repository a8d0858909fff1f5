//! The site's findings of the security review (issue 13), each reproduced as the probe that
//! found it and now seen refused: a flood of wrong sign-ins, cross-site requests riding the
//! session cookie, an open redirect after sign-in, missing headers, slow clients, and
//! malformed JSON taken for a wrong value. docs/security.md lists them.
//!
//! Nothing here asserts how fast something happens; waits poll with a deadline.

use std::net::IpAddr;

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{StatusCode, redirect};
use serde_json::{Value, json};
use testkit::{Api, DEADLINE, SiteProc, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util;

pub(crate) const FORM: &str = "application/x-www-form-urlencoded";

/// An urlencoded form body.
pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A client that does not follow redirects, sending from `from` (any 127.x address reaches
/// the site on loopback, so that tests can play several clients).
pub(crate) fn client(from: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().redirect(redirect::Policy::none());
    if let Some(ip) = from {
        b = b.local_address(ip.parse::<IpAddr>()?);
    }
    Ok(b.build()?)
}

async fn api_login(
    c: &reqwest::Client,
    site: &SiteProc,
    user: &str,
    password: &str,
) -> anyhow::Result<(StatusCode, HeaderMap, Value)> {
    let r = c
        .post(format!("{}/api/v1/login", site.url))
        .json(&json!({ "username": user, "password": password }))
        .send()
        .await?;
    let (status, headers) = (r.status(), r.headers().clone());
    Ok((status, headers, r.json().await.unwrap_or(Value::Null)))
}

#[tokio::test]
async fn wrong_sign_ins_are_bounded_and_backed_off_per_address_and_per_user() -> anyhow::Result<()>
{
    let site = util::site("site-a").await?;
    let admin = site.admin().await?;
    let password = site.opts.admin_password.clone();

    // The probe: 200 wrong sign-ins at once. Each is answered (wrong, busy or backing off),
    // none succeeds, and an authenticated call is served meanwhile.
    let flood = client(Some("127.0.0.2"))?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (c, site_url) = (flood.clone(), site.url.clone());
        tasks.spawn(async move {
            let r = c
                .post(format!("{site_url}/api/v1/login"))
                .json(&json!({ "username": format!("user{}", i % 7), "password": "guess" }))
                .send()
                .await?;
            let retry = r.headers().get("retry-after").is_some();
            anyhow::Ok((r.status(), retry))
        });
    }
    admin.get_ok("/api/v1/connectors").await?;
    let mut seen = std::collections::BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        let (status, retry) = r??;
        assert!(
            matches!(status.as_u16(), 401 | 429 | 503),
            "a wrong sign-in answered {status}"
        );
        if status != StatusCode::UNAUTHORIZED {
            assert!(retry, "{status} without Retry-After");
        }
        *seen.entry(status.as_u16()).or_insert(0) += 1;
    }
    // A short queue, then backing off: most were turned away without an argon2 check.
    assert!(
        seen.get(&401).copied().unwrap_or(0) < 100,
        "most guesses were checked: {seen:?}"
    );

    // That address now waits, whatever it tries, even the right password.
    let (status, headers, body) = api_login(&flood, &site, "admin", &password).await?;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::TOO_MANY_REQUESTS, &json!("too_many_attempts"))
    );
    assert!(headers.get("retry-after").is_some());

    // Per user: six wrong passwords for admin from one address pause admin from any other.
    let guesser = client(Some("127.0.0.3"))?;
    for _ in 0..6 {
        let (status, _, _) = api_login(&guesser, &site, "admin", "guess").await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let other = client(Some("127.0.0.4"))?;
    let (status, _, _) = api_login(&other, &site, "admin", &password).await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // That other address is not itself paused, and an unknown user gets the very answer a
    // wrong password gets.
    let (s1, _, b1) = api_login(&other, &site, "nobody", "guess").await?;
    let (s2, _, b2) = api_login(&client(Some("127.0.0.5"))?, &site, "ops", "guess").await?;
    assert_eq!((s1, &b1), (StatusCode::UNAUTHORIZED, &b2));
    assert_eq!(s2, StatusCode::UNAUTHORIZED);
    // Tokens issued before keep working.
    admin.get_ok("/api/v1/connectors").await?;
    Ok(())
}

/// Signs in through the login form and returns the session cookie (`name=value`).
pub(crate) async fn ui_session(c: &reqwest::Client, site: &SiteProc) -> anyhow::Result<String> {
    let r = c
        .post(format!("{}/login", site.url))
        .header("content-type", FORM)
        .body(form(&[
            ("username", "admin"),
            ("password", site.opts.admin_password.as_str()),
        ]))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_redirection(), "login answered {}", r.status());
    let cookie = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("west_session_"))
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))?;
    assert!(cookie.contains("Max-Age=2592000"), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    Ok(cookie.split(';').next().unwrap_or_default().to_owned())
}

/// The form token (`csrf`) of the first form on the page at `url`, fetched with the session
/// `cookie`.
pub(crate) async fn form_token(
    c: &reqwest::Client,
    cookie: &str,
    url: &str,
) -> anyhow::Result<String> {
    let page = c
        .get(url)
        .header("cookie", cookie)
        .send()
        .await?
        .text()
        .await?;
    Ok(page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .ok_or_else(|| anyhow::anyhow!("no form token in the page at {url}"))?
        .to_owned())
}

async fn connector_count(admin: &Api) -> anyhow::Result<usize> {
    let list = admin.get_ok("/api/v1/connectors").await?;
    Ok(list["connectors"]
        .as_array()
        .or(list.as_array())
        .map_or(0, Vec::len))
}

#[tokio::test]
async fn cross_site_requests_cannot_change_anything_with_the_session_cookie() -> anyhow::Result<()>
{
    let site = util::site("site-a").await?;
    let admin = site.admin().await?;
    let c = client(None)?;
    let cookie = ui_session(&c, &site).await?;
    let own = site.url.clone();

    // The probes: a form post from another origin, and a text/plain "JSON" post to the API
    // with only the cookie.
    let r = c
        .post(format!("{own}/connectors/new"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .header("content-type", FORM)
        .body(form(&[("name", "evil")]))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let cid = admin
        .post_ok("/api/v1/connectors", json!({ "name": "plant" }))
        .await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let r = c
        .post(format!("{own}/api/v1/connectors/{cid}/devices"))
        .header("cookie", &cookie)
        .header("content-type", "text/plain")
        .body(r#"{"identity":"evil-1"}"#)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await?;
    assert_eq!(body["error"], "cross_site_request");
    // Same origin but no form token; a browser saying cross-site; no origin at all.
    for (origin, fetch_site) in [
        (Some(own.as_str()), None),
        (None, Some("cross-site")),
        (None, None),
    ] {
        let mut req = c
            .post(format!("{own}/connectors/new"))
            .header("cookie", &cookie)
            .header("content-type", FORM)
            .body(form(&[("name", "evil")]));
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if let Some(s) = fetch_site {
            req = req.header("sec-fetch-site", s);
        }
        assert_eq!(req.send().await?.status(), StatusCode::FORBIDDEN);
    }
    // Nothing was created.
    assert_eq!(connector_count(&admin).await?, 1);
    let (status, _) = admin
        .get(&format!("/api/v1/connectors/{cid}/devices/evil-1"))
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The site's own form, with its token, from its own origin, works.
    let token = form_token(&c, &cookie, &format!("{own}/connectors/new")).await?;
    let r = c
        .post(format!("{own}/connectors/new"))
        .header("cookie", &cookie)
        .header("origin", &own)
        .header("content-type", FORM)
        .body(form(&[("name", "honest"), ("csrf", token.as_str())]))
        .send()
        .await?;
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(connector_count(&admin).await?, 2);
    // So does the API with the cookie as JSON from its own origin, and with a bearer token.
    let r = c
        .post(format!("{own}/api/v1/connectors/{cid}/devices"))
        .header("cookie", &cookie)
        .header("origin", &own)
        .json(&json!({ "identity": "dev-1" }))
        .send()
        .await?;
    assert!(r.status().is_success(), "{}", r.status());
    admin
        .post_ok(
            &format!("/api/v1/connectors/{cid}/devices"),
            json!({ "identity": "dev-2" }),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn after_sign_in_the_site_redirects_only_to_its_own_paths() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let c = client(None)?;
    for next in [
        "/\t/evil.example",
        "/\n/evil.example",
        "//evil.example",
        "https://evil.example/",
        "/\\evil.example",
    ] {
        let r = c
            .post(format!("{}/login", site.url))
            .header("content-type", FORM)
            .body(form(&[
                ("username", "admin"),
                ("password", site.opts.admin_password.as_str()),
                ("next", next),
            ]))
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "next={next:?}");
        assert_eq!(
            r.headers().get(LOCATION).and_then(|v| v.to_str().ok()),
            Some("/"),
            "next={next:?}"
        );
    }
    // The login page puts the same sanitised target in its form.
    let page = c
        .get(format!("{}/login?next=/%09/evil.example", site.url))
        .send()
        .await?
        .text()
        .await?;
    assert!(!page.contains("evil.example"), "{page}");
    Ok(())
}

#[tokio::test]
async fn pages_and_answers_carry_the_security_headers() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let admin = site.admin().await?;
    let c = client(None)?;
    let r = c.get(format!("{}/login", site.url)).send().await?;
    let h = r.headers();
    let csp = h
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'self'"),
        "{csp}"
    );
    assert_eq!(
        h.get("x-frame-options").map(|v| v.as_bytes()),
        Some(&b"DENY"[..])
    );
    assert_eq!(
        h.get("x-content-type-options").map(|v| v.as_bytes()),
        Some(&b"nosniff"[..])
    );
    assert!(h.get("referrer-policy").is_some());
    // Answers that show a token are never cached.
    let r = c
        .post(format!("{}/api/v1/login", site.url))
        .json(&json!({ "username": "admin", "password": site.opts.admin_password }))
        .send()
        .await?;
    assert_eq!(
        r.headers().get("cache-control").map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );
    let cid = admin
        .post_ok("/api/v1/connectors", json!({ "name": "plant" }))
        .await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let cookie = ui_session(&c, &site).await?;
    let token = form_token(
        &c,
        &cookie,
        &format!("{}/connectors/{cid}/devices/new", site.url),
    )
    .await?;
    let r = c
        .post(format!("{}/connectors/{cid}/devices/new", site.url))
        .header("cookie", &cookie)
        .header("origin", &site.url)
        .header("content-type", FORM)
        .body(form(&[("identity", "dev-1"), ("csrf", token.as_str())]))
        .send()
        .await?;
    assert_eq!(
        r.headers().get("cache-control").map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );
    // Static assets may be cached.
    let r = c.get(format!("{}/static/app.js", site.url)).send().await?;
    assert_ne!(
        r.headers().get("cache-control").map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );
    Ok(())
}

#[tokio::test]
async fn clients_that_trickle_headers_are_closed_and_connections_are_capped() -> anyhow::Result<()>
{
    let mut opts = testkit::SiteOpts::new("site-a");
    opts.extra = vec!["--max-connections".into(), "2".into()];
    let site = SiteProc::start(util::bin(), opts).await?;
    let anon = Api::new(&site.url);
    let addr = site.url.trim_start_matches("http://").to_owned();

    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await?;
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: site\r\nX-Slow: ")
            .await?;
        slow.push(tcp);
    }
    eventually(
        "the site to refuse a third connection",
        DEADLINE,
        || async { Ok(anon.get("/health").await.is_err().then_some(())) },
    )
    .await?;
    for mut tcp in slow {
        let closed = tokio::time::timeout(DEADLINE, async {
            let mut buf = [0u8; 256];
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a half-sent request kept its connection open"
        );
    }
    eventually("the site to answer again", DEADLINE, || async {
        Ok(anon.get("/health").await.ok())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_body_that_is_not_json_is_invalid_json_whatever_shape_the_call_expects()
-> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let admin = site.admin().await?;
    let cid = admin
        .post_ok("/api/v1/connectors", json!({ "name": "plant" }))
        .await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for (path, body) in [
        (format!("/api/v1/connectors/{cid}/data"), "{not json"),
        (format!("/api/v1/connectors/{cid}/data"), "[{\"device\": "),
        ("/api/v1/connectors".to_owned(), "[1, 2"),
    ] {
        let (status, answer) = admin
            .call_raw(reqwest::Method::POST, &path, body.as_bytes().to_vec())
            .await?;
        assert_eq!(
            (status, &answer["error"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_json")),
            "{path} {body:?}: {answer}"
        );
    }
    // Well-formed JSON of the wrong shape stays a wrong value.
    let (status, answer) = admin
        .call_raw(
            reqwest::Method::POST,
            &format!("/api/v1/connectors/{cid}/data"),
            b"{\"device\": 1}".to_vec(),
        )
        .await?;
    assert_eq!(
        (status, &answer["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_value"))
    );
    Ok(())
}

#[tokio::test]
async fn with_a_certificate_the_site_speaks_only_tls_and_its_cookie_is_secure() -> anyhow::Result<()>
{
    // Any certificate for 127.0.0.1 will do: borrow the one a hub makes for itself.
    let hub = testkit::HubProc::start(util::bin()).await?;
    let (cert, key) = (hub.ca.clone(), hub.data_dir.join("hub-key.pem"));
    let dir = tempfile::tempdir()?;
    let args: Vec<String> = [
        "site",
        "--name",
        "site-t",
        "--data-dir",
        &dir.path().join("site-t").display().to_string(),
        "--http",
        "127.0.0.1:0",
        "--tls-cert",
        &cert.display().to_string(),
        "--tls-key",
        &key.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut proc = testkit::WestProc::spawn(
        util::bin(),
        &args,
        &[("WEST_ADMIN_PASSWORD".into(), "correct-horse-battery".into())],
        &dir.path().join("site.log"),
    )?;
    let line = proc.wait_line("listening on https://").await?;
    let addr: std::net::SocketAddr = line
        .rsplit("https://")
        .next()
        .unwrap_or_default()
        .trim()
        .parse()?;

    // Plain HTTP gets no answer.
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut raw)).await;
    assert!(!String::from_utf8_lossy(&raw).contains("200 OK"));

    // Over TLS, signing in through the form sets a Secure cookie.
    let mut tls = launch::hub::tls_connect(addr, &cert).await?;
    let body = form(&[("username", "admin"), ("password", "correct-horse-battery")]);
    let req = format!(
        "POST /login HTTP/1.1\r\nHost: {addr}\r\nOrigin: https://{addr}\r\n\
         Content-Type: {FORM}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 303"), "{text}");
    let cookie = text
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: west_session_")
        })
        .unwrap_or_default();
    assert!(cookie.contains("; Secure"), "{text}");
    Ok(())
}
