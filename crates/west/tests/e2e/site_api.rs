//! The site's REST API of docs/api.md against a real `west site` process: the happy path from
//! connector to read-back, every refusal with its stable code (and nothing stored), and
//! durability of acknowledged data across `kill -9`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::Api;

use crate::util;

/// Creates a connector with a `number` resource `temp`, a settable `string` resource `mode`,
/// and device `dev-1`; returns the connector id and the device token.
async fn plant(api: &Api) -> anyhow::Result<(String, String)> {
    let c = api
        .post_ok(
            "/api/v1/connectors",
            json!({"name": "plant", "description": "north hall"}),
        )
        .await?;
    let cid = c["id"].as_str().unwrap().to_owned();
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/resources"),
        json!({"name": "temp", "format": "number", "unit": "°C"}),
    )
    .await?;
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/resources"),
        json!({"name": "mode", "format": "string", "settable": true}),
    )
    .await?;
    let d = api
        .post_ok(
            &format!("/api/v1/connectors/{cid}/devices"),
            json!({"identity": "dev-1", "tags": {"zone": "north"},
                   "permissions": [{"principal": "ops", "access": "manage"}]}),
        )
        .await?;
    let token = d["token"].as_str().unwrap().to_owned();
    Ok((cid, token))
}

async fn series(api: &Api, cid: &str, device: &str, resource: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = api
            .get_ok(&format!(
                "/api/v1/connectors/{cid}/devices/{device}/resources/{resource}/data?limit=1000{cursor}"
            ))
            .await?;
        out.extend(page["points"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return Ok(out),
        }
    }
}

#[tokio::test]
async fn health_answers_without_a_token_and_the_api_needs_one() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let anon = Api::new(&site.url);
    let health = anon.get_ok("/health").await?;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["site"], "site-a");
    assert_eq!(health["hub"]["connected"], false);

    let (status, body) = anon.get("/api/v1/connectors").await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "unauthorized");
    let (status, body) = anon.get("/metrics").await?;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::UNAUTHORIZED, &json!("unauthorized"))
    );

    let (status, body) = anon
        .post(
            "/api/v1/login",
            json!({"username": "admin", "password": "wrong"}),
        )
        .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "unauthorized");
    assert!(body["message"].as_str().unwrap().contains("wrong"));

    let api = site.admin().await?;
    api.post_ok("/api/v1/logout", json!({})).await?;
    let (status, _) = api.get("/api/v1/connectors").await?;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a signed-out token must stop working"
    );
    Ok(())
}

#[tokio::test]
async fn connector_to_read_back() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let api = site.admin().await?;
    let (cid, device_token) = plant(&api).await?;
    assert_eq!(cid.len(), 14);

    let list = api.get_ok("/api/v1/connectors").await?;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "plant");
    assert_eq!(list[0]["remote_sync"]["role"], "none");
    assert_eq!(list[0]["remote_sync"]["state"], "disabled");
    assert_eq!(list[0]["device_count"], 1);
    assert_eq!(list[0]["resource_count"], 2);

    // A device writes with its own token: one point, then a list with explicit times.
    let dev = api.with_token(&device_token);
    let base = format!("/api/v1/connectors/{cid}/devices/dev-1");
    let ans = dev
        .post_ok(&format!("{base}/data"), json!({"values": {"temp": 20.5}}))
        .await?;
    assert_eq!(ans["accepted"], 1);
    let ans = dev
        .post_ok(
            &format!("{base}/data"),
            json!([{"t": 1_000_000, "values": {"temp": 19.0}},
                   {"t": 2_000_000, "values": {"temp": 19.5, "mode": "eco"}}]),
        )
        .await?;
    assert_eq!(ans["accepted"], 3);

    let points = series(&api, &cid, "dev-1", "temp").await?;
    assert_eq!(points.len(), 3);
    assert_eq!(points[0], json!({"t": 1_000_000, "v": 19.0}));
    assert_eq!(points[1], json!({"t": 2_000_000, "v": 19.5}));
    assert_eq!(points[2]["v"], 20.5);

    // Newest first, in pages of one.
    let page = api
        .get_ok(&format!("{base}/resources/temp/data?order=desc&limit=1"))
        .await?;
    assert_eq!(page["points"][0]["v"], 20.5);
    let next = page["next"].as_str().unwrap();
    let page = api
        .get_ok(&format!(
            "{base}/resources/temp/data?order=desc&limit=1&cursor={next}"
        ))
        .await?;
    assert_eq!(page["points"][0]["v"], 19.5);
    let page = api
        .get_ok(&format!(
            "{base}/resources/temp/data?since=1500000&until=2500000"
        ))
        .await?;
    assert_eq!(page["points"], json!([{"t": 2_000_000, "v": 19.5}]));

    // The device shows its latest values, tags, permissions, and configuration.
    let d = api
        .patch(
            &base,
            json!({"config": {"mode": "boost"}, "tags": {"zone": "south"}}),
        )
        .await?;
    assert_eq!(d.0, StatusCode::OK, "{}", d.1);
    let d = api.get_ok(&base).await?;
    assert_eq!(d["values"]["temp"]["v"], 20.5);
    assert_eq!(d["values"]["mode"], json!({"t": 2_000_000, "v": "eco"}));
    assert_eq!(d["config"]["mode"], "boost");
    assert_eq!(d["tags"], json!({"zone": "south"}));
    assert_eq!(
        d["permissions"],
        json!([{"principal": "ops", "access": "manage"}])
    );
    assert_eq!(d["state"], "provisioned");
    assert_eq!(d["sync"]["pending"], false);

    // Bulk ingest for a gateway, across devices.
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/devices"),
        json!({"identity": "dev-2"}),
    )
    .await?;
    let ans = api
        .post_ok(
            &format!("/api/v1/connectors/{cid}/data"),
            json!([{"device": "dev-1", "t": 3_000_000, "values": {"temp": 21}},
                   {"device": "dev-2", "t": 3_000_000, "values": {"temp": 22}}]),
        )
        .await?;
    assert_eq!(ans["accepted"], 2);
    assert_eq!(
        series(&api, &cid, "dev-2", "temp").await?,
        vec![json!({"t": 3_000_000, "v": 22.0})]
    );

    // Resource settings round trip.
    let (status, r) = api
        .patch(
            &format!("/api/v1/connectors/{cid}/resources/temp"),
            json!({"remote_sync": true, "unit": null}),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["remote_sync"], true);
    assert_eq!(r["unit"], Value::Null);
    Ok(())
}

#[tokio::test]
async fn device_list_filters_by_tag_and_pages() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let api = site.admin().await?;
    let c = api
        .post_ok("/api/v1/connectors", json!({"name": "fleet"}))
        .await?;
    let cid = c["id"].as_str().unwrap();
    for i in 0..25 {
        let zone = if i % 2 == 0 { "even" } else { "odd" };
        api.post_ok(
            &format!("/api/v1/connectors/{cid}/devices"),
            json!({"identity": format!("d{i:03}"), "tags": {"zone": zone, "fw": "1.2"}}),
        )
        .await?;
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = api
            .get_ok(&format!(
                "/api/v1/connectors/{cid}/devices?tag=zone:even&tag=fw:1.2&limit=5{cursor}"
            ))
            .await?;
        for d in page["devices"].as_array().unwrap() {
            assert_eq!(d["tags"]["zone"], "even");
            seen.push(d["identity"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(n) => cursor = format!("&cursor={n}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).step_by(2).map(|i| format!("d{i:03}")).collect();
    assert_eq!(seen, expected);
    let none = api
        .get_ok(&format!("/api/v1/connectors/{cid}/devices?tag=zone:mars"))
        .await?;
    assert_eq!(none["devices"], json!([]));
    assert!(none.get("next").is_none());
    Ok(())
}

/// Asserts a refusal: status, stable code, and a message for humans.
fn refused(answer: (StatusCode, Value), status: StatusCode, code: &str) {
    let (s, body) = answer;
    assert_eq!(s, status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| m.len() > 10),
        "a refusal explains itself: {body}"
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_its_code_and_stores_nothing() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let api = site.admin().await?;
    let (cid, device_token) = plant(&api).await?;
    let data = format!("/api/v1/connectors/{cid}/devices/dev-1/data");
    let bulk = format!("/api/v1/connectors/{cid}/data");

    refused(
        api.call_raw(Method::POST, &data, b"{\"values\": {\"temp\": 1".to_vec())
            .await?,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
    refused(
        api.call_raw(Method::POST, "/api/v1/connectors", b"not json".to_vec())
            .await?,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
    // One bad value refuses the whole request: the good point before it is not stored.
    refused(
        api.post(
            &data,
            json!([{"t": 1, "values": {"temp": 1.0}}, {"t": 2, "values": {"temp": "hot"}}]),
        )
        .await?,
        StatusCode::BAD_REQUEST,
        "invalid_value",
    );
    refused(
        api.post(
            &bulk,
            json!([{"device": "dev-1", "t": 3, "values": {"temp": 1}},
                               {"device": "ghost", "t": 3, "values": {"temp": 1}}]),
        )
        .await?,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        api.post(&data, json!({"t": 4, "values": {"pressure": 1}}))
            .await?,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        api.post(&data, json!({"t": -5, "values": {"temp": 1}}))
            .await?,
        StatusCode::BAD_REQUEST,
        "invalid_value",
    );
    refused(
        api.post(&data, json!({"t": 5, "value": {"temp": 1}}))
            .await?,
        StatusCode::BAD_REQUEST,
        "invalid_value",
    );
    // Over the 8 MiB body limit.
    let huge = format!(
        "[{}]",
        vec![r#"{"t":1,"values":{"temp":1.5}}"#; 300_000].join(",")
    );
    refused(
        api.call_raw(Method::POST, &data, huge.into_bytes()).await?,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    // A device token may not write for another device.
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/devices"),
        json!({"identity": "dev-2"}),
    )
    .await?;
    refused(
        api.with_token(&device_token)
            .post(
                &format!("/api/v1/connectors/{cid}/devices/dev-2/data"),
                json!({"t": 6, "values": {"temp": 1}}),
            )
            .await?,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    // A locked device's data is refused.
    let (s, _) = api
        .patch(
            &format!("/api/v1/connectors/{cid}/devices/dev-2"),
            json!({"state": "locked"}),
        )
        .await?;
    assert_eq!(s, StatusCode::OK);
    refused(
        api.post(
            &bulk,
            json!([{"device": "dev-2", "t": 7, "values": {"temp": 1}}]),
        )
        .await?,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert!(
        series(&api, &cid, "dev-1", "temp").await?.is_empty(),
        "nothing refused was stored"
    );
    assert!(
        series(&api, &cid, "dev-2", "temp").await?.is_empty(),
        "nothing refused was stored"
    );

    // Registry refusals.
    refused(
        api.post("/api/v1/connectors", json!({"name": ""})).await?,
        StatusCode::BAD_REQUEST,
        "invalid_value",
    );
    let res = format!("/api/v1/connectors/{cid}/resources");
    refused(
        api.post(&res, json!({"name": "temp", "format": "number"}))
            .await?,
        StatusCode::CONFLICT,
        "conflict",
    );
    refused(
        api.post(&res, json!({"name": "Bad Name", "format": "number"}))
            .await?,
        StatusCode::BAD_REQUEST,
        "invalid_value",
    );
    refused(
        api.post(&res, json!({"name": "speed", "format": "float"}))
            .await?,
        StatusCode::BAD_REQUEST,
        "invalid_value",
    );
    let devices = format!("/api/v1/connectors/{cid}/devices");
    refused(
        api.post(&devices, json!({"identity": "dev-1"})).await?,
        StatusCode::CONFLICT,
        "conflict",
    );
    refused(
        api.post(&devices, json!({"identity": "has space"})).await?,
        StatusCode::BAD_REQUEST,
        "invalid_value",
    );
    refused(
        api.post(
            &devices,
            json!({"identity": "d9", "permissions": [{"principal": "ops", "access": "root"}]}),
        )
        .await?,
        StatusCode::BAD_REQUEST,
        "invalid_value",
    );
    refused(
        api.patch(&format!("{devices}/dev-1"), json!({"config": {"temp": 5}}))
            .await?,
        StatusCode::BAD_REQUEST,
        "invalid_value",
    );
    refused(
        api.patch(&format!("{devices}/dev-1"), json!({"config": {"mode": 5}}))
            .await?,
        StatusCode::BAD_REQUEST,
        "invalid_value",
    );
    refused(
        api.get(&format!("{devices}?limit=0")).await?,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    );
    refused(
        api.get("/api/v1/connectors/zzzzzzzzzzzzzz").await?,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        api.post(
            "/api/v1/connectors",
            json!({"name": "t", "remote_sync_target":
                   {"remote_site": "site-b", "remote_connector_id": "abcdefghijklmn", "pairing_code": "X"}}),
        )
        .await?,
        StatusCode::SERVICE_UNAVAILABLE,
        "peer_offline",
    );
    // None of the refused registry calls created anything.
    let list = api.get_ok("/api/v1/connectors").await?;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["resource_count"], 2);
    assert_eq!(list[0]["device_count"], 2);
    let d = api.get_ok(&format!("{devices}/dev-1")).await?;
    assert_eq!(d["config"], json!({}));
    Ok(())
}

#[tokio::test]
async fn acknowledged_data_survives_kill_9() -> anyhow::Result<()> {
    let mut site = util::site("site-a").await?;
    let api = site.admin().await?;
    let (cid, _) = plant(&api).await?;
    let bulk = format!("/api/v1/connectors/{cid}/data");
    // Writers keep sending while the process is killed: every acknowledged batch must be
    // there afterwards, whatever happened to the one in flight.
    let writer = {
        let api = api.clone();
        let bulk = bulk.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for batch in 0..10_000i64 {
                let body: Vec<Value> = (0..100)
                    .map(
                        |i| json!({"device": "dev-1", "t": batch * 100 + i, "values": {"temp": i}}),
                    )
                    .collect();
                match api.post(&bulk, Value::Array(body)).await {
                    Ok((s, _)) if s.is_success() => acked.push(batch),
                    _ => break,
                }
            }
            acked
        })
    };
    testkit::eventually("some batches acknowledged", testkit::DEADLINE, || async {
        let n = series(&api, &cid, "dev-1", "temp").await?.len();
        Ok((n >= 2_000).then_some(()))
    })
    .await?;
    site.kill9().await?;
    let acked = writer.await?;
    assert!(!acked.is_empty());
    site.restart().await?;
    let api = site.admin().await?;
    let stored = series(&api, &cid, "dev-1", "temp").await?;
    let stored: std::collections::BTreeSet<i64> =
        stored.iter().map(|p| p["t"].as_i64().unwrap()).collect();
    for batch in &acked {
        for i in 0..100 {
            assert!(
                stored.contains(&(batch * 100 + i)),
                "acknowledged point t={} lost",
                batch * 100 + i
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn deleting_a_connector_removes_it() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let api = site.admin().await?;
    let (cid, token) = plant(&api).await?;
    let (s, _) = api.delete(&format!("/api/v1/connectors/{cid}")).await?;
    assert_eq!(s, StatusCode::NO_CONTENT);
    refused(
        api.get(&format!("/api/v1/connectors/{cid}")).await?,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Its devices' tokens are gone with it.
    let (s, _) = api
        .with_token(&token)
        .post(
            &format!("/api/v1/connectors/{cid}/devices/dev-1/data"),
            json!({"values": {"temp": 1}}),
        )
        .await?;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn metrics_count_ingested_points() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let api = site.admin().await?;
    let (cid, _) = plant(&api).await?;
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/devices/dev-1/data"),
        json!([{"t": 1, "values": {"temp": 1}}, {"t": 2, "values": {"temp": 2}}]),
    )
    .await?;
    let resp = reqwest::Client::new()
        .get(format!("{}/metrics", site.url))
        .bearer_auth(api.token.as_deref().unwrap())
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await?;
    assert!(text.contains("west_ingest_points_total 2"), "{text}");
    assert!(text.contains("west_ingest_seconds"), "{text}");
    Ok(())
}

#[tokio::test]
async fn a_new_device_token_replaces_the_old_one_at_once() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let api = site.admin().await?;
    let (cid, old) = plant(&api).await?;
    let data = format!("/api/v1/connectors/{cid}/devices/dev-1/data");
    let write = |token: String, t: i64| {
        let (api, data) = (api.with_token(&token), data.clone());
        async move {
            api.post(&data, json!({"t": t, "values": {"temp": 1.5}}))
                .await
        }
    };
    assert_eq!(write(old.clone(), 1).await?.0, StatusCode::OK);

    let answer = api
        .post_ok(
            &format!("/api/v1/connectors/{cid}/devices/dev-1/token"),
            json!({}),
        )
        .await?;
    assert_eq!(answer["identity"], "dev-1");
    let new = answer["token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    refused(
        write(old, 2).await?,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_eq!(write(new, 3).await?.0, StatusCode::OK);
    assert_eq!(
        series(&api, &cid, "dev-1", "temp").await?.len(),
        2,
        "the refused write stored nothing"
    );

    refused(
        api.post(
            &format!("/api/v1/connectors/{cid}/devices/ghost/token"),
            json!({}),
        )
        .await?,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    Ok(())
}

/// A notice after a form (the one-shot `west_flash` cookie) is shown by the page the
/// browser goes to, not taken by a page's background refresh of itself that races the
/// redirect (web/static/app.js sends those with `X-West-Refresh`). Without this, the
/// device page's refresh swallowed "Tag floor set" now and then (ui::operator_creates_…
/// timed out waiting for it under load).
#[tokio::test]
async fn a_background_refresh_leaves_the_notice_for_the_next_page() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let c = crate::security_site::client(None)?;
    let session = crate::security_site::ui_session(&c, &site).await?;
    let cookies = format!("{session}; west_flash=Tag%20floor%20set");
    let get = |refresh: bool| {
        let mut r = c.get(format!("{}/", site.url)).header("cookie", &cookies);
        if refresh {
            r = r.header("x-west-refresh", "1");
        }
        r.send()
    };
    let clears = |r: &reqwest::Response| {
        r.headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.starts_with("west_flash="))
    };
    let r = get(true).await?;
    assert_eq!(r.status(), 200);
    assert!(!clears(&r), "the refresh cleared the notice");
    assert!(!r.text().await?.contains("Tag floor set"));
    let r = get(false).await?;
    assert_eq!(r.status(), 200);
    assert!(clears(&r), "the page shows the notice once");
    assert!(r.text().await?.contains("Tag floor set"));
    Ok(())
}
