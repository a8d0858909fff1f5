//! The read scenario: a real `west site` child process, one connector with a `number`
//! resource and `--devices` devices, and the two reads a user's screen makes most:
//!
//! 1. A day of one series: `--points` points (86,400: one a second for a day) of one device,
//!    read in order through the data API in pages of `--page` points (following `next`
//!    until it is absent); the time of the whole read, best and median of `--repeat` reads.
//! 2. The latest values of every device: the device list (which carries each device's
//!    latest values) in pages of 1,000 (the largest it gives); the same statistics.
//! 3. The web UI's pages an operator opens most, whole, signed in: the connector list, the
//!    Devices tab (first page; sorted by last seen; the stale devices sorted by state) and
//!    a device page; the same statistics. On loopback this is the site's time to answer
//!    (the "server time") plus a fraction of a millisecond.
//!
//! The series is device `day`'s, beside the `--devices` others; its points are written first
//! in bulk requests of 10,000 points, and then one point for every other device, so that each
//! has a latest value. Every read is checked: all points, in
//! order; every device with its latest value. Nothing here asserts a speed.

use std::time::Instant;

use anyhow::{Context, ensure};
use clap::Args;
use launch::{Api, SiteOpts, SiteProc};
use serde_json::{Value, json};

use super::Report;
use super::ingest::sensor_value;

#[derive(Args, Clone)]
pub struct ReadArgs {
    /// Points of the series read (one a second: 86,400 is a day).
    #[arg(long, default_value_t = 86_400)]
    points: u64,
    /// Devices whose latest values are read.
    #[arg(long, default_value_t = 1_000)]
    pub devices: u64,
    /// Points a page when reading the series (the data API gives at most 10,000).
    #[arg(long, default_value_t = 10_000)]
    page: u64,
    /// Times each read is repeated.
    #[arg(long, default_value_t = 5)]
    repeat: u64,
}

const T0: i64 = 1_700_000_000_000_000;
/// Points a request when writing the series.
const PER_REQUEST: u64 = 10_000;

fn device_name(d: u64) -> String {
    format!("sensor-{d:05}")
}

pub async fn run(args: ReadArgs) -> anyhow::Result<Report> {
    ensure!(
        args.points > 0 && args.devices > 0 && args.page > 0 && args.repeat > 0,
        "counts must be positive"
    );
    let bin = std::env::current_exe().context("finding the west binary")?;
    let site_name = "bench-site".to_owned();
    let site = SiteProc::start(&bin, SiteOpts::new(&site_name)).await?;
    let api = site.admin().await?;
    let c = api
        .post_ok("/api/v1/connectors", json!({"name": "plant"}))
        .await?;
    let cid = c["id"].as_str().context("connector id")?.to_owned();
    api.post_ok(
        &format!("/api/v1/connectors/{cid}/resources"),
        json!({"name": "temperature", "format": "number", "unit": "°C"}),
    )
    .await?;
    let series = "day".to_owned();
    for identity in (0..args.devices).map(device_name).chain([series.clone()]) {
        api.post_ok(
            &format!("/api/v1/connectors/{cid}/devices"),
            json!({"identity": identity}),
        )
        .await?;
    }
    let data = format!("/api/v1/connectors/{cid}/data");
    let mut step = 0;
    while step < args.points {
        let n = PER_REQUEST.min(args.points - step);
        let body: Vec<Value> = (step..step + n)
            .map(|i| {
                json!({"device": series, "t": t(i), "values": {"temperature": sensor_value(0, i)}})
            })
            .collect();
        api.post_ok(&data, Value::Array(body)).await?;
        step += n;
    }
    let latest: Vec<Value> = (0..args.devices)
        .map(|d| {
            json!({"device": device_name(d), "t": t(args.points + d),
                   "values": {"temperature": sensor_value(d, args.points)}})
        })
        .collect();
    api.post_ok(&data, Value::Array(latest)).await?;

    let mut day = Vec::new();
    let mut pages = 0;
    for _ in 0..args.repeat {
        let started = Instant::now();
        pages = read_series(&api, &cid, &series, &args).await?;
        day.push(started.elapsed().as_secs_f64());
    }
    let mut list = Vec::new();
    for _ in 0..args.repeat {
        let started = Instant::now();
        read_latest(&api, &cid, args.devices + 1).await?;
        list.push(started.elapsed().as_secs_f64());
    }

    // The web UI's pages a person opens most, timed the same way.
    let ui = UiClient::new(&api, &site_name)?;
    let device = device_name(0);
    let ui_pages = [
        ("connector list", "/".to_owned(), "plant"),
        (
            "device list",
            format!("/connectors/{cid}/devices"),
            "id=\"devices\"",
        ),
        (
            "device list by last seen",
            format!("/connectors/{cid}/devices?sort=last_seen"),
            "id=\"devices\"",
        ),
        (
            "device list of stale devices",
            format!("/connectors/{cid}/devices?seen=stale&sort=state"),
            "id=\"device-total\"",
        ),
        (
            "device page",
            format!("/connectors/{cid}/devices/{device}"),
            device.as_str(),
        ),
    ];
    let mut ui_times = Vec::new();
    for (name, path, marker) in &ui_pages {
        let mut times = Vec::new();
        for _ in 0..args.repeat {
            let started = Instant::now();
            ui.page(path, marker).await?;
            times.push(started.elapsed().as_secs_f64());
        }
        ui_times.push((*name, times));
    }

    let mut report = Report::default();
    let (best, median) = best_and_median(&mut day);
    report.add("read series median", median * 1000.0, "ms");
    report.add("read series best", best * 1000.0, "ms");
    report.add("read series", args.points as f64 / median, "points/s");
    report.add("read series pages", pages as f64, "pages");
    let (best, median) = best_and_median(&mut list);
    report.add("latest values median", median * 1000.0, "ms");
    report.add("latest values best", best * 1000.0, "ms");
    report.add("latest values", args.devices as f64 / median, "devices/s");
    for (name, mut times) in ui_times {
        let (best, median) = best_and_median(&mut times);
        report.add(format!("page {name} median"), median * 1000.0, "ms");
        report.add(format!("page {name} best"), best * 1000.0, "ms");
    }
    Ok(report)
}

/// A signed-in browser's requests for whole pages: the session cookie holds a login token,
/// the same kind as the API's bearer token.
struct UiClient {
    client: reqwest::Client,
    base: String,
    cookie: String,
}

impl UiClient {
    fn new(api: &Api, site: &str) -> anyhow::Result<Self> {
        let token = api
            .token
            .as_deref()
            .context("the bench's client is signed in")?;
        Ok(Self {
            client: reqwest::Client::new(),
            base: api.base.clone(),
            cookie: format!("west_session_{site}={token}"),
        })
    }

    /// Fetches a page whole, checking that it is the page (it holds `marker`), not the
    /// sign-in page or an error.
    async fn page(&self, path: &str, marker: &str) -> anyhow::Result<()> {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .header(reqwest::header::COOKIE, &self.cookie)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = resp.status();
        let html = resp.text().await.with_context(|| format!("GET {path}"))?;
        ensure!(
            status == reqwest::StatusCode::OK && html.contains(marker),
            "GET {path}: {status}, not the page"
        );
        Ok(())
    }
}

fn t(step: u64) -> i64 {
    T0 + i64::try_from(step).unwrap_or(0) * 1_000_000
}

/// Reads the whole series in pages, checking that every point comes once, in order; the
/// number of pages.
async fn read_series(api: &Api, cid: &str, device: &str, args: &ReadArgs) -> anyhow::Result<u64> {
    let base = format!(
        "/api/v1/connectors/{cid}/devices/{device}/resources/temperature/data?limit={}",
        args.page
    );
    let (mut next, mut pages, mut seen) = (None::<String>, 0, 0u64);
    loop {
        let path = match &next {
            Some(c) => format!("{base}&cursor={c}"),
            None => base.clone(),
        };
        let page = api.get_ok(&path).await?;
        pages += 1;
        for p in page["points"].as_array().context("a page without points")? {
            ensure!(
                p["t"].as_i64() == Some(t(seen)),
                "point {seen} of the series is {p}"
            );
            seen += 1;
        }
        match page["next"].as_str() {
            Some(c) => next = Some(c.to_owned()),
            None => break,
        }
    }
    ensure!(
        seen == args.points,
        "read {seen} points of the series, not {}",
        args.points
    );
    Ok(pages)
}

/// Reads the device list in pages of 1,000, checking that every device has its latest value.
async fn read_latest(api: &Api, cid: &str, devices: u64) -> anyhow::Result<()> {
    let base = format!("/api/v1/connectors/{cid}/devices?limit=1000");
    let (mut next, mut seen) = (None::<String>, 0u64);
    loop {
        let path = match &next {
            Some(c) => format!("{base}&cursor={c}"),
            None => base.clone(),
        };
        let page = api.get_ok(&path).await?;
        for d in page["devices"]
            .as_array()
            .context("a page without devices")?
        {
            ensure!(
                d["values"]["temperature"]["v"].is_number(),
                "a device without its latest value: {d}"
            );
            seen += 1;
        }
        match page["next"].as_str() {
            Some(c) => next = Some(c.to_owned()),
            None => break,
        }
    }
    ensure!(seen == devices, "listed {seen} devices, not {devices}");
    Ok(())
}

/// The best and the median of some durations (sorts them).
fn best_and_median(secs: &mut [f64]) -> (f64, f64) {
    secs.sort_by(f64::total_cmp);
    (
        secs.first().copied().unwrap_or(0.0),
        secs.get(secs.len() / 2).copied().unwrap_or(0.0),
    )
}
