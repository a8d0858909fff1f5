//! The answering side of device lookups (`proto::lookup`, docs/wire.md "Device lookup"):
//! requests from the paired peer are answered from this site's registry through
//! `ops::devices`, and answers to this site's own lookups are handed to the caller waiting
//! in `registry::Pending`. The asking side (and the drift check built on it) is `ops::peer`.
//!
//! ```text
//!  ops::peer::ask ──Request{id, op}──▶ session ──▶ peer: on_message ─▶ answer(op) via ops
//!     ▲ (Pending: id → oneshot, 5 s timeout → peer_offline)                │
//!     └──────────── on_message: Pending::answer ◀── Response{id, answer} ◀─┘
//! ```
//!
//! Requests are served inline on the connector task: they are short reads of the store.
//! Every answer fits in one session message ([`MAX_ANSWER`]): a device page that would not
//! is shortened at its far end (its `next`, or `more`, then continues from the last device
//! kept, so paging stays exact), any other answer becomes a `too_large` refusal.

use std::collections::BTreeSet;

use proto::lookup::{
    Answer, ListQuery, MAX_ANSWER, MAX_FETCH, MAX_HASH_ENTRIES, Op, Request, Response,
};
use proto::model::ConnectorId;
use proto::service;

use crate::ops::{self, devices};
use crate::peers::peer::PeerHandle;
use crate::state::AppState;

/// Handles a lookup message from the peer (the service byte included).
pub async fn on_message(state: &AppState, cid: &ConnectorId, handle: &PeerHandle, msg: &[u8]) {
    match msg.first() {
        Some(&service::LOOKUP_REQUEST) => {
            let req = match Request::decode(msg) {
                Ok(req) => req,
                Err(e) => {
                    tracing::debug!(connector = %cid, error = %e, "undecodable lookup request dropped");
                    return;
                }
            };
            // A page going back keeps the devices nearest its place if it must shrink.
            let back = matches!(&req.op, Op::Find(f) if f.from.as_ref().is_some_and(|p| p.back));
            let answer = match answer(state, cid, req.op).await {
                Ok(answer) => answer,
                Err(e) => refused(&e),
            };
            let reply = fit(Response { id: req.id, answer }, back);
            if let Err(e) = handle.send(reply).await {
                tracing::debug!(connector = %cid, error = %e, "lookup answer not sent");
            }
        }
        Some(&service::LOOKUP_RESPONSE) => match Response::decode(msg) {
            Ok(resp) => state.remote.lookups.answer(cid, resp),
            Err(e) => {
                tracing::debug!(connector = %cid, error = %e, "undecodable lookup answer dropped");
            }
        },
        _ => tracing::debug!(connector = %cid, "lookup message of an unknown kind dropped"),
    }
}

fn refused(e: &ops::Error) -> Answer {
    Answer::Refused {
        code: e.code().to_owned(),
        message: e.to_string(),
    }
}

/// Answers one request from this site's store, as connector `cid`.
async fn answer(state: &AppState, cid: &ConnectorId, op: Op) -> ops::Result<Answer> {
    Ok(match op {
        Op::List(ListQuery { tags, after, limit }) => {
            let q = devices::ListQuery {
                tags,
                from: after.map(|identity| proto::model::ListPlace {
                    key: 0,
                    identity,
                    back: false,
                }),
                limit,
                ..devices::ListQuery::default()
            };
            let page = devices::page(state, cid, q).await?;
            Answer::Page {
                devices: page.devices.iter().map(devices::view).collect(),
                next: page.next.map(|p| p.identity),
            }
        }
        Op::Device(id) => Answer::Device(devices::view(&devices::get(state, cid, &id).await?)),
        Op::Digest => Answer::Digest(devices::digest(state, cid).await?),
        Op::Hashes(buckets) => {
            let wanted: BTreeSet<u8> = buckets.into_iter().collect();
            let hashes = devices::hashes(state, cid, &wanted).await?;
            if hashes.len() > MAX_HASH_ENTRIES {
                return Err(ops::Error::Invalid(format!(
                    "{} devices in the asked buckets; ask for fewer buckets at once",
                    hashes.len()
                )));
            }
            Answer::Hashes(hashes.into_iter().collect())
        }
        Op::Devices(ids) => {
            if ids.len() > MAX_FETCH {
                return Err(ops::Error::Invalid(format!(
                    "at most {MAX_FETCH} devices at once"
                )));
            }
            let found = devices::fetch(state, cid, &ids).await?;
            Answer::Devices(found.iter().map(devices::view).collect())
        }
        Op::Resend(ids) => {
            let queued = devices::resend(state, cid, ids).await?;
            tracing::info!(connector = %cid, devices = queued, "re-sending devices the peer asked for");
            Answer::Queued(queued)
        }
        Op::Waiting => Answer::Waiting(ops::peer::waiting_here(state, cid).await?),
        Op::Backfill(ask) => {
            Answer::Backfill(Some(ops::backfill::asked_by_peer(state, cid, ask).await?))
        }
        Op::BackfillStatus => Answer::Backfill(ops::backfill::local(state, cid).await),
        Op::BackfillCancel => Answer::Backfill(Some(ops::backfill::cancel_here(state, cid).await?)),
        Op::Find(f) => {
            let back = f.from.as_ref().is_some_and(|p| p.back);
            let q = devices::ListQuery {
                tags: f.tags,
                prefix: f.prefix.filter(|p| !p.is_empty()),
                state: f.state,
                seen: f.seen,
                sort: f.sort,
                descending: f.descending,
                from: f.from,
                limit: f.limit,
            };
            let page = devices::page(state, cid, q).await?;
            Answer::Found {
                devices: page.devices.iter().map(devices::view).collect(),
                more: if back {
                    page.prev.is_some()
                } else {
                    page.next.is_some()
                },
                total: page.total.unwrap_or(0),
            }
        }
    })
}

/// The encoded answer, made to fit in one session message (`back`: the answer is a page
/// going back, whose far end is its first device).
fn fit(mut resp: Response, back: bool) -> Vec<u8> {
    // Room for the session's framing around the answer.
    let budget = MAX_ANSWER - 256;
    let mut bytes = resp.encode();
    while bytes.len() > budget {
        match &mut resp.answer {
            Answer::Page { devices, next } if devices.len() > 1 => {
                devices.truncate(devices.len() / 2);
                *next = devices.last().map(|d| d.identity.clone());
            }
            Answer::Found { devices, more, .. } if devices.len() > 1 => {
                let keep = devices.len() / 2;
                if back {
                    devices.drain(..devices.len() - keep);
                } else {
                    devices.truncate(keep);
                }
                *more = true;
            }
            _ => break,
        }
        bytes = resp.encode();
    }
    if bytes.len() > MAX_ANSWER {
        bytes = Response {
            id: resp.id,
            answer: Answer::Refused {
                code: "too_large".into(),
                message: "the answer is too large for one message".into(),
            },
        }
        .encode();
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::lookup::DeviceView;
    use proto::model::{DeviceState, Identity};

    fn view(i: usize, blob: &str) -> DeviceView {
        DeviceView {
            identity: Identity::parse(&format!("d{i:05}")).unwrap(),
            tags: [("blob".to_owned(), blob.to_owned())].into(),
            permissions: Vec::new(),
            state: DeviceState::Provisioned,
            config: Default::default(),
            values: Default::default(),
            created_at: 0,
            sync_pending: false,
        }
    }

    #[test]
    fn oversized_pages_shrink_and_keep_paging_exact() {
        let big = "x".repeat(1000);
        let devices: Vec<DeviceView> = (0..2000).map(|i| view(i, &big)).collect();
        let bytes = fit(
            Response {
                id: 1,
                answer: Answer::Page {
                    devices,
                    next: None,
                },
            },
            false,
        );
        assert!(bytes.len() <= MAX_ANSWER);
        let Answer::Page { devices, next } = Response::decode(&bytes).unwrap().answer else {
            panic!("not a page");
        };
        assert!(devices.len() < 2000 && !devices.is_empty());
        assert_eq!(next.as_ref(), Some(&devices.last().unwrap().identity));
        // A page that fits is left alone.
        let small = Response {
            id: 2,
            answer: Answer::Page {
                devices: vec![view(1, "a")],
                next: None,
            },
        };
        assert_eq!(fit(small.clone(), false), small.encode());
    }

    #[test]
    fn an_oversized_found_page_keeps_the_devices_nearest_its_place() {
        let big = "x".repeat(1000);
        let devices: Vec<DeviceView> = (0..2000).map(|i| view(i, &big)).collect();
        for back in [false, true] {
            let bytes = fit(
                Response {
                    id: 1,
                    answer: Answer::Found {
                        devices: devices.clone(),
                        more: false,
                        total: 5000,
                    },
                },
                back,
            );
            assert!(bytes.len() <= MAX_ANSWER);
            let Answer::Found {
                devices: kept,
                more,
                total,
            } = Response::decode(&bytes).unwrap().answer
            else {
                panic!("not a page");
            };
            assert!(more && total == 5000 && kept.len() < 2000 && !kept.is_empty());
            // Forwards the page keeps its start; going back its end, next to its place.
            let expected = if back {
                &devices[2000 - kept.len()..]
            } else {
                &devices[..kept.len()]
            };
            assert_eq!(kept, expected, "back {back}");
        }
    }

    #[test]
    fn an_answer_that_cannot_shrink_is_refused_as_too_large() {
        let big = "x".repeat(MAX_ANSWER);
        let bytes = fit(
            Response {
                id: 3,
                answer: Answer::Device(view(1, &big)),
            },
            false,
        );
        let resp = Response::decode(&bytes).unwrap();
        assert!(matches!(resp.answer, Answer::Refused { ref code, .. } if code == "too_large"));
    }
}
