//! Bulk reads against a real site: the CSV export (`GET …/data/export`) streams a range of
//! 100,000 points in many chunks with exactly one row per point, keeps to `since`/`until`
//! and the device asked, quotes text as RFC 4180 says (and defuses spreadsheet formulas),
//! refuses each kind of bad query with its code, and holds at most two exports per user at
//! once; the chart's downsampling (`…/data?buckets=N`) folds the same range into N buckets
//! whose counts add up to every point, and answers a sparse range with its points.

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{Api, DEADLINE, eventually};

use crate::util;

/// Points written to `d1`, one a millisecond from `T0`.
const POINTS: i64 = 100_000;
const T0: i64 = 1_700_000_000_000_000;

/// A site with connector `plant`: numbers `temperature` of `d1` (`POINTS` of them) and
/// `d2` (10), and strings `note` of `d1`.
async fn setup() -> anyhow::Result<(testkit::SiteProc, Api, String)> {
    let site = util::site("site-a").await?;
    let api = site.admin().await?;
    let cid = util::thermometers(&api, &["d1".into(), "d2".into()]).await?;
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/resources"),
        json!({"name": "note", "format": "string"}),
    )
    .await?;
    for chunk in 0..POINTS / 5_000 {
        let body: Vec<Value> = (0..5_000)
            .map(|i| {
                let n = chunk * 5_000 + i;
                json!({"device": "d1", "t": T0 + n * 1_000, "values": {"temperature": (n % 100) as f64}})
            })
            .collect();
        api.post_ok(
            &format!("/api/v1/connectors/{cid}/data"),
            Value::Array(body),
        )
        .await?;
    }
    let few: Vec<Value> = (0..10)
        .map(|n| json!({"device": "d2", "t": T0 + n * 1_000, "values": {"temperature": -1.5}}))
        .collect();
    api.post_ok(&format!("/api/v1/connectors/{cid}/data"), Value::Array(few))
        .await?;
    let notes = [
        ("plain", 1),
        ("a, b", 2),
        ("say \"hi\"", 3),
        ("=HYPERLINK(1)", 4),
    ];
    let notes: Vec<Value> = notes
        .iter()
        .map(|(v, i)| json!({"device": "d1", "t": T0 + i, "values": {"note": v}}))
        .collect();
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/data"),
        Value::Array(notes),
    )
    .await?;
    Ok((site, api, cid))
}

/// Starts an export over a socket with a small receive buffer and reads only its status
/// line and headers: the site holds the export open, blocked on a client that reads no more.
async fn hold(base: &str, token: &str, path: &str) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut stream = socket.connect(addr.parse()?).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 512];
    let n = stream.read(&mut head).await?;
    let head = String::from_utf8_lossy(&head[..n]);
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    Ok(stream)
}

/// An export read to its end: its chunks and its lines.
async fn export(api: &Api, query: &str) -> anyhow::Result<(usize, Vec<String>)> {
    let mut resp = reqwest::Client::new()
        .get(format!("{}{query}", api.base))
        .bearer_auth(api.token.clone().unwrap_or_default())
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == StatusCode::OK,
        "{query}: {}",
        resp.status()
    );
    let kind = resp.headers()["content-type"].to_str()?.to_owned();
    anyhow::ensure!(kind == "text/csv; charset=utf-8", "{kind}");
    let (mut chunks, mut text) = (0, Vec::new());
    while let Some(chunk) = resp.chunk().await? {
        chunks += 1;
        text.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(text)?;
    Ok((chunks, text.lines().map(str::to_owned).collect()))
}

#[tokio::test]
async fn an_export_streams_every_point_of_a_large_range_once_and_refuses_bad_queries()
-> anyhow::Result<()> {
    let (_site, api, cid) = setup().await?;
    let base = format!("/api/v1/connectors/{cid}/data/export?resource=temperature");

    // One device, the whole range: a header and one row per point, in time order, sent in
    // many chunks rather than built whole.
    let (chunks, lines) = export(&api, &format!("{base}&device=d1")).await?;
    assert_eq!(lines[0], "device,resource,t,time,value");
    assert_eq!(lines.len() as i64, POINTS + 1);
    assert!(chunks >= 10, "{chunks} chunks");
    assert_eq!(
        lines[1],
        format!("d1,temperature,{T0},2023-11-14T22:13:20Z,0")
    );
    let last = T0 + (POINTS - 1) * 1_000;
    assert!(lines[POINTS as usize].starts_with(&format!("d1,temperature,{last},")));

    // `since` inclusive, `until` exclusive.
    let (since, until) = (T0 + 10_000 * 1_000, T0 + 12_500 * 1_000);
    let (_, part) = export(
        &api,
        &format!("{base}&device=d1&since={since}&until={until}"),
    )
    .await?;
    assert_eq!(part.len(), 2_500 + 1);
    assert!(part[1].contains(&format!(",{since},")));

    // Every device, one after the other in identity order.
    let (_, all) = export(&api, &base).await?;
    assert_eq!(all.len() as i64, POINTS + 10 + 1);
    assert!(
        all[all.len() - 10..]
            .iter()
            .all(|l| l.starts_with("d2,") && l.ends_with(",-1.5"))
    );

    // Text is quoted as RFC 4180 says; a formula is defused.
    let (_, notes) = export(
        &api,
        &format!("/api/v1/connectors/{cid}/data/export?resource=note&device=d1"),
    )
    .await?;
    let values: Vec<&str> = notes[1..]
        .iter()
        .map(|l| l.splitn(5, ',').nth(4).unwrap_or_default())
        .collect();
    assert_eq!(
        values,
        [
            "plain",
            "\"a, b\"",
            "\"say \"\"hi\"\"\"",
            "\"'=HYPERLINK(1)\""
        ]
    );

    // Each kind of bad query is refused before anything is sent.
    for (query, status, code) in [
        (
            format!("/api/v1/connectors/{cid}/data/export"),
            400,
            "invalid_query",
        ),
        (format!("{base}&since=5&until=5"), 400, "invalid_query"),
        (format!("{base}&since=soon"), 400, "invalid_query"),
        (format!("{base}&device=not%20one"), 400, "invalid_query"),
        (format!("{base}&device=d9"), 404, "not_found"),
        (
            format!("/api/v1/connectors/{cid}/data/export?resource=pressure"),
            404,
            "not_found",
        ),
        (
            "/api/v1/connectors/00000000000000/data/export?resource=temperature".to_owned(),
            404,
            "not_found",
        ),
    ] {
        let (s, body) = api.get(&query).await?;
        assert_eq!(
            (s.as_u16(), body["error"].as_str()),
            (status, Some(code)),
            "{query}: {body}"
        );
    }
    let (s, _) = Api::new(&api.base).get(&base).await?;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Two exports at once per user: a third is refused, told to come back, and gets its
    // turn once one ends. The two held here read their headers and then nothing, through
    // a small receive buffer, so the site stays blocked on them (back-pressure).
    let token = api.token.clone().unwrap_or_default();
    let first = hold(&api.base, &token, &base).await?;
    let second = hold(&api.base, &token, &base).await?;
    let (s, body) = api.get(&base).await?;
    assert_eq!(
        (s, body["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("busy")),
        "{body}"
    );
    drop((first, second));
    eventually("an export slot to come back", DEADLINE, || async {
        let (s, _) = api.get(&format!("{base}&device=d2")).await?;
        Ok((s == StatusCode::OK).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_dense_range_comes_as_buckets_and_a_sparse_one_as_its_points() -> anyhow::Result<()> {
    let (_site, api, cid) = setup().await?;
    let data = |device: &str| {
        format!("/api/v1/connectors/{cid}/devices/{device}/resources/temperature/data")
    };
    let until = T0 + POINTS * 1_000;
    let b = api
        .get_ok(&format!(
            "{}?since={T0}&until={until}&buckets=100",
            data("d1")
        ))
        .await?;
    let buckets = b["buckets"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        buckets.len(),
        100,
        "{}",
        b.to_string().chars().take(300).collect::<String>()
    );
    let total: u64 = buckets.iter().map(|x| x["n"].as_u64().unwrap_or(0)).sum();
    assert_eq!(total as i64, POINTS, "every point in one bucket");
    assert_eq!(
        (buckets[0]["min"].as_f64(), buckets[0]["max"].as_f64()),
        (Some(0.0), Some(99.0))
    );
    assert_eq!(buckets[0]["first"]["t"], json!(T0));
    assert_eq!(buckets[99]["last"]["t"], json!(until - 1_000));

    // A few points come as they are.
    let p = api
        .get_ok(&format!(
            "{}?since={T0}&until={until}&buckets=100",
            data("d2")
        ))
        .await?;
    assert_eq!(p["points"].as_array().map(Vec::len), Some(10), "{p}");

    // Buckets need a closed range and a count in bounds.
    for q in [
        format!("{}?since={T0}&buckets=100", data("d1")),
        format!("{}?since={T0}&until={until}&buckets=0", data("d1")),
        format!("{}?since={T0}&until={until}&buckets=5001", data("d1")),
    ] {
        let (s, body) = api.get(&q).await?;
        assert_eq!(
            (s, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_query")),
            "{q}"
        );
    }
    Ok(())
}
