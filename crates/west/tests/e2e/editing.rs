//! Editing through the API (#16 item 8, docs/api.md "Connectors" and "Resources"), against
//! real sites and a real hub:
//!
//! - a paired connector is renamed and re-described; the pairing (by id) carries on and the
//!   peer's view of it does not change; each kind of bad input is refused with its own error
//!   and changes nothing, and a name another connector has is refused on create too;
//! - deleting a resource deletes its points on this site and nothing else: other resources'
//!   data, devices and their audit stay, a resource created again under the same name starts
//!   empty (also after a restart), and bad input changes nothing;
//! - deleting a remote-synced resource on a paired Source stops its sync: what was queued
//!   while the hub was down is still delivered, nothing written after is, and the Target
//!   keeps what it received; a Target that deletes a resource keeps the points its Source
//!   sends later waiting for it, and creating it again applies exactly those;
//! - the new form posts and calls refuse a request from another origin or without the form
//!   token (the session cookie alone changes nothing), and work from the site itself.
//!
//! Nothing sleeps: every wait polls with a deadline.

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{Api, DEADLINE, eventually};

use crate::util;

/// Every point of `resource` of a device, oldest first (the first page of up to 1,000).
async fn points(api: &Api, cid: &str, device: &str, resource: &str) -> anyhow::Result<Vec<Value>> {
    let page = api
        .get_ok(&format!(
            "/api/v1/connectors/{cid}/devices/{device}/resources/{resource}/data?since=0&limit=1000"
        ))
        .await?;
    Ok(page["points"].as_array().cloned().unwrap_or_default())
}

/// Waits until `resource` of a device holds exactly `n` points; returns them.
async fn wait_points(
    api: &Api,
    cid: &str,
    device: &str,
    resource: &str,
    n: usize,
) -> anyhow::Result<Vec<Value>> {
    eventually(
        &format!("{n} points of {resource} on {device}"),
        DEADLINE,
        || async {
            let (status, page) = api
                .get(&format!(
                    "/api/v1/connectors/{cid}/devices/{device}/resources/{resource}/data?since=0&limit=1000"
                ))
                .await?;
            let got = page["points"].as_array().cloned().unwrap_or_default();
            Ok((status == StatusCode::OK && got.len() == n).then_some(got))
        },
    )
    .await
}

/// Writes one point of each of `values` for `device` at time `t` (µs).
async fn write(api: &Api, cid: &str, device: &str, t: i64, values: Value) -> anyhow::Result<()> {
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/devices/{device}/data"),
        json!({"t": t, "values": values}),
    )
    .await?;
    Ok(())
}

/// Asserts an error answer: its status and code, and that its sentence mentions `word`.
fn refused(answer: (StatusCode, Value), status: StatusCode, code: &str, word: &str) {
    let (s, body) = answer;
    assert_eq!(s, status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(word), "{word:?} in {message:?}");
}

#[tokio::test]
async fn a_paired_connector_is_renamed_and_redescribed_and_bad_input_changes_nothing()
-> anyhow::Result<()> {
    let (_hub, sites, cid, tid) = util::paired_sites().await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    let path = format!("/api/v1/connectors/{cid}");
    let peer_view = |c: Value| json!([c["name"], c["description"], c["remote_sync"]["peer"]]);
    let peer_before = peer_view(b.get_ok(&format!("/api/v1/connectors/{tid}")).await?);
    // What a refused change must leave as it was.
    let named = |c: Value| json!([c["name"], c["description"]]);

    let c = a
        .patch_ok(
            &path,
            json!({"name": "  plant-north ", "description": "Boilers of the north plant"}),
        )
        .await?;
    assert_eq!(c["name"], "plant-north", "trimmed: {c}");
    assert_eq!(c["description"], "Boilers of the north plant");
    assert_eq!(c["remote_sync"]["state"], "paired");
    // One field alone leaves the other.
    let c = a.patch_ok(&path, json!({"description": ""})).await?;
    assert_eq!(
        (c["name"].as_str(), c["description"].as_str()),
        (Some("plant-north"), Some(""))
    );
    let c = named(
        a.patch_ok(&path, json!({"description": "Boilers of the north plant"}))
            .await?,
    );
    let listed = a.get_ok("/api/v1/connectors").await?;
    assert!(
        listed.as_array().is_some_and(|l| l
            .iter()
            .any(|x| x["id"] == cid.as_str() && x["name"] == "plant-north")),
        "{listed}"
    );

    // The pairing is by id: the peer's view is as before, and data still flows.
    let peer_after = peer_view(b.get_ok(&format!("/api/v1/connectors/{tid}")).await?);
    assert_eq!(peer_after, peer_before);
    assert_eq!(peer_after[2]["connector_id"], cid.as_str(), "{peer_after}");
    for (api, r) in [(&a, &cid), (&b, &tid)] {
        api.post_ok(
            &format!("/api/v1/connectors/{r}/resources"),
            json!({"name": "temperature", "format": "number", "remote_sync": true}),
        )
        .await?;
    }
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/devices"),
        json!({"identity": "dev1"}),
    )
    .await?;
    write(&a, &cid, "dev1", 1_000_000, json!({"temperature": 21.5})).await?;
    wait_points(&b, &tid, "dev1", "temperature", 1).await?;

    // Each kind of bad input: its own refusal, and the connector stays as it is.
    a.post_ok("/api/v1/connectors", json!({"name": "spare"}))
        .await?;
    let long = "x".repeat(129);
    let cases: Vec<(Value, StatusCode, &str, &str)> = vec![
        (
            json!({"name": ""}),
            StatusCode::BAD_REQUEST,
            "invalid_value",
            "name",
        ),
        (
            json!({"name": "   "}),
            StatusCode::BAD_REQUEST,
            "invalid_value",
            "name",
        ),
        (
            json!({"name": long}),
            StatusCode::BAD_REQUEST,
            "invalid_value",
            "name",
        ),
        (
            json!({"name": "ok", "description": "d".repeat(1025)}),
            StatusCode::BAD_REQUEST,
            "invalid_value",
            "description",
        ),
        (
            json!({"name": "SPARE"}),
            StatusCode::CONFLICT,
            "conflict",
            "SPARE",
        ),
        (
            json!({"nmae": "typo"}),
            StatusCode::BAD_REQUEST,
            "invalid_value",
            "nmae",
        ),
        (
            json!({"name": 5}),
            StatusCode::BAD_REQUEST,
            "invalid_value",
            "fit this call",
        ),
        (
            json!(["name"]),
            StatusCode::BAD_REQUEST,
            "invalid_value",
            "fit this call",
        ),
    ];
    for (body, status, code, word) in cases {
        refused(a.patch(&path, body.clone()).await?, status, code, word);
        assert_eq!(named(a.get_ok(&path).await?), c, "after {body}");
    }
    refused(
        a.call_raw(reqwest::Method::PATCH, &path, b"{\"name\": ".to_vec())
            .await?,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "not valid JSON",
    );
    refused(
        a.patch("/api/v1/connectors/zzzzzzzzzzzzzz", json!({"name": "x"}))
            .await?,
        StatusCode::NOT_FOUND,
        "not_found",
        "zzzzzzzzzzzzzz",
    );
    let anonymous = Api::new(&sites[0].url);
    let (s, _) = anonymous.patch(&path, json!({"name": "stolen"})).await?;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(named(a.get_ok(&path).await?), c);

    // Renaming to its own name (in another case) is no conflict; creating a taken one is.
    let same = a.patch_ok(&path, json!({"name": "Plant-North"})).await?;
    assert_eq!(same["name"], "Plant-North");
    refused(
        a.post("/api/v1/connectors", json!({"name": "plant-NORTH"}))
            .await?,
        StatusCode::CONFLICT,
        "conflict",
        "plant-NORTH",
    );
    let count = a.get_ok("/api/v1/connectors").await?;
    assert_eq!(count.as_array().map(Vec::len), Some(2), "{count}");
    Ok(())
}

#[tokio::test]
async fn deleting_a_resource_deletes_its_points_here_and_nothing_else() -> anyhow::Result<()> {
    let mut site = util::site("site-a").await?;
    let api = site.admin().await?;
    let c = api
        .post_ok("/api/v1/connectors", json!({"name": "plant"}))
        .await?;
    let cid = c["id"].as_str().unwrap_or_default().to_owned();
    for (name, settable) in [("temperature", true), ("humidity", false)] {
        api.post_ok(
            &format!("/api/v1/connectors/{cid}/resources"),
            json!({"name": name, "format": "number", "settable": settable}),
        )
        .await?;
    }
    for d in ["dev1", "dev2"] {
        api.post_ok(
            &format!("/api/v1/connectors/{cid}/devices"),
            json!({"identity": d, "tags": {"rack": "4"}}),
        )
        .await?;
    }
    api.patch_ok(
        &format!("/api/v1/connectors/{cid}/devices/dev1"),
        json!({"config": {"temperature": 20.0}}),
    )
    .await?;
    // dev1 writes 40 points of each, dev2 10 of temperature only; a repeated timestamp
    // replaces (the count is of distinct points).
    for i in 0..40 {
        write(
            &api,
            &cid,
            "dev1",
            1_000_000 + i * 60_000_000,
            json!({"temperature": i, "humidity": 50 + i}),
        )
        .await?;
    }
    write(&api, &cid, "dev1", 1_000_000, json!({"temperature": -1})).await?;
    for i in 0..10 {
        write(
            &api,
            &cid,
            "dev2",
            2_000_000 + i * 60_000_000,
            json!({"temperature": i}),
        )
        .await?;
    }
    let usage_path = format!("/api/v1/connectors/{cid}/resources/temperature/usage");
    let usage = api.get_ok(&usage_path).await?;
    assert_eq!(usage, json!({"points": 50, "devices": 2}));
    let humidity = points(&api, &cid, "dev1", "humidity").await?;
    assert_eq!(humidity.len(), 40);
    let audit_path = format!("/api/v1/connectors/{cid}/audit");
    let audit = api.get_ok(&audit_path).await?;

    // Bad input first: each refused, nothing deleted.
    let resource = format!("/api/v1/connectors/{cid}/resources/temperature");
    refused(
        api.delete(&format!("/api/v1/connectors/{cid}/resources/pressure"))
            .await?,
        StatusCode::NOT_FOUND,
        "not_found",
        "pressure",
    );
    refused(
        api.delete(&format!(
            "/api/v1/connectors/{cid}/resources/Not%20A%20Name"
        ))
        .await?,
        StatusCode::NOT_FOUND,
        "not_found",
        "Not A Name",
    );
    refused(
        api.delete("/api/v1/connectors/zzzzzzzzzzzzzz/resources/temperature")
            .await?,
        StatusCode::NOT_FOUND,
        "not_found",
        "zzzzzzzzzzzzzz",
    );
    let (s, _) = Api::new(&site.url).delete(&resource).await?;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(api.get_ok(&usage_path).await?, usage);

    let (s, body) = api.delete(&resource).await?;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let (s, _) = api.get(&resource).await?;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .get(&format!(
            "/api/v1/connectors/{cid}/devices/dev1/resources/temperature/data"
        ))
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A second delete finds nothing.
    refused(
        api.delete(&resource).await?,
        StatusCode::NOT_FOUND,
        "not_found",
        "temperature",
    );

    // Everything else stays: the other resource's points, the devices and their audit.
    let check_rest = |api: Api, cid: String, humidity: Vec<Value>, audit: Value| async move {
        assert_eq!(points(&api, &cid, "dev1", "humidity").await?, humidity);
        let dev1 = api
            .get_ok(&format!("/api/v1/connectors/{cid}/devices/dev1"))
            .await?;
        assert_eq!(dev1["tags"], json!({"rack": "4"}), "{dev1}");
        assert!(dev1["values"].get("temperature").is_none(), "{dev1}");
        assert!(dev1["config"].get("temperature").is_none(), "{dev1}");
        assert_eq!(
            dev1["values"]["humidity"]["v"].as_f64(),
            Some(89.0),
            "{dev1}"
        );
        assert_eq!(
            api.get_ok(&format!("/api/v1/connectors/{cid}/audit"))
                .await?,
            audit
        );
        anyhow::Ok(())
    };
    check_rest(api.clone(), cid.clone(), humidity.clone(), audit.clone()).await?;

    // Writing to it is refused as a whole, so the request's other values are not stored.
    let (s, body) = api
        .post(
            &format!("/api/v1/connectors/{cid}/devices/dev1/data"),
            json!({"t": 9_000_000_000i64, "values": {"humidity": 1, "temperature": 2}}),
        )
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    check_rest(api.clone(), cid.clone(), humidity.clone(), audit.clone()).await?;

    // The same name again starts empty, also once the site was killed and restarted
    // (nothing of the old resource comes back under the new one).
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/resources"),
        json!({"name": "temperature", "format": "number"}),
    )
    .await?;
    assert_eq!(
        api.get_ok(&usage_path).await?,
        json!({"points": 0, "devices": 0})
    );
    write(&api, &cid, "dev2", 5_000_000, json!({"temperature": 7})).await?;
    site.kill9().await?;
    site.restart().await?;
    let api = site.admin().await?;
    assert_eq!(
        api.get_ok(&usage_path).await?,
        json!({"points": 1, "devices": 1})
    );
    assert!(points(&api, &cid, "dev1", "temperature").await?.is_empty());
    assert_eq!(points(&api, &cid, "dev2", "temperature").await?.len(), 1);
    check_rest(api, cid, humidity, audit).await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_synced_resource_delivers_what_was_queued_and_sends_nothing_after()
-> anyhow::Result<()> {
    let (mut hub, sites, cid, tid) = util::paired_sites().await?;
    let (a, b) = (sites[0].admin().await?, sites[1].admin().await?);
    for (api, id) in [(&a, &cid), (&b, &tid)] {
        for name in ["temperature", "humidity"] {
            api.post_ok(
                &format!("/api/v1/connectors/{id}/resources"),
                json!({"name": name, "format": "number", "remote_sync": true}),
            )
            .await?;
        }
    }
    a.post_ok(
        &format!("/api/v1/connectors/{cid}/devices"),
        json!({"identity": "dev1"}),
    )
    .await?;
    for i in 0..5 {
        write(
            &a,
            &cid,
            "dev1",
            1_000_000 + i,
            json!({"temperature": i, "humidity": i}),
        )
        .await?;
    }
    wait_points(&b, &tid, "dev1", "temperature", 5).await?;

    // The hub goes away: three more points of each wait in the Source's queue.
    hub.kill9().await?;
    for i in 5..8 {
        write(
            &a,
            &cid,
            "dev1",
            1_000_000 + i,
            json!({"temperature": i, "humidity": i}),
        )
        .await?;
    }
    let (s, body) = a
        .delete(&format!("/api/v1/connectors/{cid}/resources/temperature"))
        .await?;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let (s, _) = a
        .post(
            &format!("/api/v1/connectors/{cid}/devices/dev1/data"),
            json!({"t": 2_000_000, "values": {"temperature": 99}}),
        )
        .await?;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "a deleted resource takes no points"
    );

    // Back: what was queued before the delete arrives, exactly once.
    hub.restart().await?;
    let got = wait_points(&b, &tid, "dev1", "temperature", 8).await?;
    let values: Vec<f64> = got.iter().filter_map(|p| p["v"].as_f64()).collect();
    assert_eq!(values, (0..8).map(f64::from).collect::<Vec<_>>());
    // A later point of the other resource passes every earlier record of the stream: by
    // then nothing of temperature followed, and the Target kept what it received.
    write(&a, &cid, "dev1", 3_000_000, json!({"humidity": 100})).await?;
    wait_points(&b, &tid, "dev1", "humidity", 9).await?;
    assert_eq!(points(&b, &tid, "dev1", "temperature").await?.len(), 8);

    // The Target deletes humidity: what its Source sends for it from now on waits there,
    // on both sites' view, and creating it again applies exactly that.
    let (s, _) = b
        .delete(&format!("/api/v1/connectors/{tid}/resources/humidity"))
        .await?;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for i in 0..6 {
        write(
            &a,
            &cid,
            "dev1",
            4_000_000 + i,
            json!({"humidity": 200 + i}),
        )
        .await?;
    }
    for (api, id) in [(&b, &tid), (&a, &cid)] {
        let w = eventually("six points waiting for humidity", DEADLINE, || async {
            let (s, w) = api
                .get(&format!("/api/v1/connectors/{id}/remote-sync/waiting"))
                .await?;
            let n = w["resources"]
                .as_array()
                .and_then(|r| r.iter().find(|x| x["resource"] == "humidity"))
                .map(|x| x["points"].clone());
            Ok((s == StatusCode::OK && n == Some(json!(6))).then_some(w))
        })
        .await?;
        assert_eq!(w["site"], "site-b", "{w}");
    }
    b.post_ok(
        &format!("/api/v1/connectors/{tid}/resources"),
        json!({"name": "humidity", "format": "number"}),
    )
    .await?;
    let got = points(&b, &tid, "dev1", "humidity").await?;
    let values: Vec<f64> = got.iter().filter_map(|p| p["v"].as_f64()).collect();
    assert_eq!(values, (200..206).map(f64::from).collect::<Vec<_>>());
    // The Source still has all of its own.
    assert_eq!(points(&a, &cid, "dev1", "humidity").await?.len(), 15);
    Ok(())
}

/// Signs in through the login form; returns a client that follows no redirect and the
/// session cookie (`name=value`).
async fn ui_session(site: &testkit::SiteProc) -> anyhow::Result<(reqwest::Client, String)> {
    let c = crate::security_site::client(None)?;
    let cookie = crate::security_site::ui_session(&c, site).await?;
    Ok((c, cookie))
}

#[tokio::test]
async fn the_editing_forms_and_calls_refuse_cross_site_requests() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let api = site.admin().await?;
    let c = api
        .post_ok("/api/v1/connectors", json!({"name": "plant"}))
        .await?;
    let cid = c["id"].as_str().unwrap_or_default().to_owned();
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/resources"),
        json!({"name": "temperature", "format": "number"}),
    )
    .await?;
    let (client, cookie) = ui_session(&site).await?;
    let own = site.url.clone();
    let token = crate::security_site::form_token(
        &client,
        &cookie,
        &format!("{own}/connectors/{cid}/settings"),
    )
    .await?;
    let rename = format!("{own}/connectors/{cid}/settings");
    let delete = format!("{own}/connectors/{cid}/resources/temperature/delete");
    let unchanged = || async {
        let c = api.get_ok(&format!("/api/v1/connectors/{cid}")).await?;
        assert_eq!(c["name"], "plant", "{c}");
        let (s, _) = api
            .get(&format!("/api/v1/connectors/{cid}/resources/temperature"))
            .await?;
        assert_eq!(s, StatusCode::OK, "the resource is still there");
        anyhow::Ok(())
    };

    // The forms from another origin, or without the form token, or from nowhere said.
    for (origin, with_token) in [
        (Some("https://evil.example"), true),
        (Some(own.as_str()), false),
        (None, true),
    ] {
        for url in [&rename, &delete] {
            let mut fields = vec![("name", "evil")];
            if with_token {
                fields.push(("csrf", token.as_str()));
            }
            let mut req = client
                .post(url.as_str())
                .header("cookie", &cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(crate::security_site::form(&fields));
            if let Some(o) = origin {
                req = req.header("origin", o);
            }
            let status = req.send().await?.status();
            assert_eq!(status, StatusCode::FORBIDDEN, "{url} from {origin:?}");
        }
    }
    // The calls with the session cookie from another origin.
    let api_connector = format!("{own}/api/v1/connectors/{cid}");
    let api_resource = format!("{own}/api/v1/connectors/{cid}/resources/temperature");
    for req in [
        client.patch(&api_connector).json(&json!({"name": "evil"})),
        client.delete(&api_resource),
    ] {
        let r = req
            .header("cookie", &cookie)
            .header("origin", "https://evil.example")
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let body: Value = r.json().await?;
        assert_eq!(body["error"], "cross_site_request", "{body}");
    }
    unchanged().await?;

    // The site's own forms, with the token, from its own origin, work.
    let r = client
        .post(&rename)
        .header("cookie", &cookie)
        .header("origin", &own)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(crate::security_site::form(&[
            ("name", "plant-north"),
            ("description", ""),
            ("csrf", token.as_str()),
        ]))
        .send()
        .await?;
    assert!(r.status().is_redirection(), "{}", r.status());
    let r = client
        .post(&delete)
        .header("cookie", &cookie)
        .header("origin", &own)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(crate::security_site::form(&[("csrf", token.as_str())]))
        .send()
        .await?;
    assert!(r.status().is_redirection(), "{}", r.status());
    let c = api.get_ok(&format!("/api/v1/connectors/{cid}")).await?;
    assert_eq!(c["name"], "plant-north", "{c}");
    let (s, _) = api
        .get(&format!("/api/v1/connectors/{cid}/resources/temperature"))
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND);
    Ok(())
}
