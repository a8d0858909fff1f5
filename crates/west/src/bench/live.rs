//! When points become visible on a site, as its live stream says:
//! `GET /api/v1/connectors/{cid}/data/live` (Server-Sent Events, one `points` event per
//! durable commit, `{"points":[{"device","resource","t","v"}, …]}`). The latency phase
//! subscribes on the Target, as the NATS baseline subscribes to its mirror, instead of
//! polling the data API.
//!
//! Only the points registered with [`Live::want`] before they are written are remembered,
//! with the instant their event arrived, so memory stays bounded. A site without the stream
//! (404) gives no `Live`, and the caller polls; a `lagged` event, or the stream ending,
//! marks it broken, and the caller polls for what it has not seen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use tokio_util::task::AbortOnDropHandle;

/// Wanted points, and when each was seen.
type Seen = Arc<Mutex<HashMap<(String, i64), Option<Instant>>>>;

pub struct Live {
    seen: Seen,
    broken: Arc<AtomicBool>,
    _task: AbortOnDropHandle<()>,
}

impl Live {
    /// Subscribes to connector `cid`'s live stream on the site at `base`; `None` when the
    /// site has none.
    pub async fn subscribe(
        base: &str,
        token: Option<&str>,
        cid: &str,
    ) -> anyhow::Result<Option<Self>> {
        let url = format!("{base}/api/v1/connectors/{cid}/data/live");
        let mut req = reqwest::Client::new().get(&url);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let mut resp = req.send().await.with_context(|| format!("GET {url}"))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        anyhow::ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
        let seen: Seen = Arc::default();
        let broken = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (seen, broken) = (Arc::clone(&seen), Arc::clone(&broken));
            async move {
                let mut buf: Vec<u8> = Vec::new();
                // Where the search for the end of an event goes on: an event of 1,000 points
                // arrives in several chunks, and searching it all again at each one delayed
                // the reading of the last (and so the instant measured) by the client's work.
                let mut scanned = 0;
                while let Ok(Some(chunk)) = resp.chunk().await {
                    let at = Instant::now();
                    buf.extend_from_slice(&chunk);
                    while let Some(end) = event_end(&buf, scanned) {
                        let block: Vec<u8> = buf.drain(..end).collect();
                        scanned = 0;
                        if !on_event(&String::from_utf8_lossy(&block), at, &seen) {
                            broken.store(true, Ordering::Release);
                        }
                    }
                    scanned = buf.len().saturating_sub(1);
                }
                broken.store(true, Ordering::Release);
            }
        });
        Ok(Some(Self {
            seen,
            broken,
            _task: AbortOnDropHandle::new(task),
        }))
    }

    /// Remembers when point (`device`, `t`) arrives; call it before writing the point.
    pub fn want(&self, device: &str, t: i64) {
        self.lock().insert((device.to_owned(), t), None);
    }

    /// When the wanted point (`device`, `t`) arrived, if it has; forgets it then.
    pub fn take(&self, device: &str, t: i64) -> Option<Instant> {
        let mut seen = self.lock();
        let key = (device.to_owned(), t);
        let at = (*seen.get(&key)?)?;
        seen.remove(&key);
        Some(at)
    }

    /// Whether the stream may have missed points (it lagged, or ended).
    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i64), Option<Instant>>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The end (after its blank line) of the first event in `buf`, searching from `from` on.
fn event_end(buf: &[u8], from: usize) -> Option<usize> {
    let from = from.min(buf.len());
    buf[from..]
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| from + i + 2)
}

/// Handles one SSE block; false when it says points were missed (`lagged`).
fn on_event(block: &str, at: Instant, seen: &Seen) -> bool {
    let mut event = "message";
    let mut data = String::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    match event {
        "lagged" => false,
        "points" => {
            let Ok(body) = serde_json::from_str::<serde_json::Value>(&data) else {
                return true;
            };
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            for p in body["points"].as_array().into_iter().flatten() {
                if let (Some(device), Some(t)) = (p["device"].as_str(), p["t"].as_i64())
                    && let Some(slot) = seen.get_mut(&(device.to_owned(), t))
                {
                    slot.get_or_insert(at);
                }
            }
            true
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_end_is_found_across_chunks_without_searching_again() {
        let buf = b"event: points\ndata: {}\n\nevent: x";
        assert_eq!(event_end(buf, 0), Some(24));
        // The blank line split over two chunks: the search resumes one byte back.
        assert_eq!(event_end(b"data: {}\n\n", 8), Some(10));
        assert_eq!(event_end(b"data: {}\n", 8), None);
        assert_eq!(event_end(b"", 5), None);
    }

    #[test]
    fn a_points_event_marks_only_wanted_points_and_lagged_breaks() {
        let seen: Seen = Arc::default();
        seen.lock()
            .expect("lock")
            .insert(("d1".to_owned(), 5), None);
        let at = Instant::now();
        let block = "event: points\ndata: {\"points\":[{\"device\":\"d1\",\"resource\":\"r\",\"t\":5,\"v\":1},{\"device\":\"d2\",\"resource\":\"r\",\"t\":5,\"v\":1}]}\n\n";
        assert!(on_event(block, at, &seen));
        assert!(on_event(":\n\n", at, &seen));
        let map = seen.lock().expect("lock");
        assert_eq!(map.get(&("d1".to_owned(), 5)), Some(&Some(at)));
        assert!(!map.contains_key(&("d2".to_owned(), 5)));
        drop(map);
        assert!(!on_event(
            "event: lagged\ndata: {\"missed\":3}\n\n",
            at,
            &seen
        ));
    }
}
