//! The JSON shapes of the API's answers (docs/api.md), in one place so that the API and the
//! UI's live parts render a connector or a device the same way, whether it is this site's or
//! the peer's.

use serde_json::{Map, Value as Json, json};
use store::{Connector, Device, Resource};

use crate::clock::rfc3339;
use crate::ops::devices::{AuditPage, ListQuery, Page};
use crate::ops::peer::{Drift, Resent};
use crate::state::AppState;

/// `RemoteSync` of docs/api.md.
pub fn remote_sync_json(state: &AppState, c: &Connector) -> Json {
    let mut rs = Map::new();
    rs.insert("role".into(), json!(c.role.as_str()));
    rs.insert("state".into(), json!(c.state.as_str()));
    if let Some(at) = c.pairing_expires_at {
        rs.insert("expires_at".into(), json!(rfc3339(at)));
    }
    if let Some(peer) = &c.peer {
        rs.insert(
            "peer".into(),
            json!({ "site": peer.site, "connector_id": peer.connector_id }),
        );
    }
    if let Some(at) = c.paired_at {
        rs.insert("paired_at".into(), json!(rfc3339(at)));
    }
    if c.state == proto::model::SyncState::Disabled
        && let Some(end) = state.pairings.ended(&c.id)
    {
        rs.insert(
            "last_window".into(),
            json!({
                "ended_at": rfc3339(end.at),
                "reason": end.why.as_str(),
                "failed_attempts": end.failed_attempts,
            }),
        );
    }
    if c.state == proto::model::SyncState::Paired {
        rs.insert("confirmed".into(), json!(c.pairing_confirmed));
        let s = state.remote.sync.status(&c.id).unwrap_or_default();
        let mut link = json!({
            "connected": state.remote.peer(&c.id).is_some_and(|p| p.is_up()),
            "lag_seconds": (s.lag_seconds * 1000.0).round() / 1000.0,
            "backlog_points": s.backlog_points,
            "backlog_bytes": s.outbox_bytes,
            "send_rate": s.send_rate.round(),
            "apply_rate": s.apply_rate.round(),
            "eta_seconds": s.eta_seconds.map(f64::ceil),
            "points_sent": s.points_sent,
            "points_applied": s.points_applied,
            "applied_seq": s.applied,
            "outbox_head": s.outbox_head,
            "acked_seq": s.acked,
            "expired_points": s.points_expired,
            "session_stalled": s.session_stalled,
            "session_down_seconds": s.session_down_seconds.map(f64::floor),
        });
        if let Some(at) = s.last_applied_at {
            link["last_applied_at"] = json!(rfc3339(at));
        }
        link["peer_apply_rate"] = json!(s.peer_apply_rate.round());
        // The peer's sync messages carry another protocol version: nothing syncs until both
        // sites run the same version of West.
        link["version_mismatch"] = match s.version_mismatch {
            None => Json::Null,
            Some((peer, local)) => json!({
                "peer_sync_version": peer,
                "sync_version": local,
                "problem": if peer < local {
                    "peer runs an older version"
                } else {
                    "peer runs a newer version"
                },
            }),
        };
        // The live lane and the backlog draining behind it (docs/sync.md, "Two lanes").
        link["lanes"] = match s.live_from {
            None => Json::Null,
            Some(from) => json!({
                "live": {"from_seq": from, "lag_points": s.live_lag_points},
                "backlog": {
                    "points": s.catchup_points,
                    "bytes": s.catchup_bytes,
                    "oldest_at": s.catchup_oldest_at.map(rfc3339),
                    "rate": s.catchup_rate.round(),
                    "eta_seconds": s.catchup_eta_seconds.map(f64::ceil),
                },
            }),
        };
        if let Some(at) = s.peer_applied_at {
            link["peer_applied_at"] = json!(rfc3339(at));
        }
        rs.insert("link".into(), link);
    }
    Json::Object(rs)
}

/// The rate history of a paired connector's link (docs/api.md, `GET …/remote-sync/history`):
/// the samples taken at or after `since` (µs), oldest first, and since when this site has
/// kept them (in memory: the history starts empty when the site starts).
pub fn sync_history_json(state: &AppState, c: &Connector, since: i64) -> Json {
    use crate::peers::status::{HISTORY_EVERY, HISTORY_LEN};
    let h = state.remote.sync.history(&c.id);
    let samples: Vec<Json> = h
        .as_ref()
        .map(|h| h.samples_since(since))
        .unwrap_or_default()
        .iter()
        .map(|s| {
            json!({
                "t": s.t,
                "send_rate": (s.send_rate * 10.0).round() / 10.0,
                "apply_rate": (s.apply_rate * 10.0).round() / 10.0,
                "backlog_points": s.backlog_points,
            })
        })
        .collect();
    let every = h.as_ref().map_or(HISTORY_EVERY, |h| h.every());
    let capacity = h.as_ref().map_or(HISTORY_LEN, |h| h.capacity());
    json!({
        "every_seconds": every.as_secs(),
        "max_samples": capacity,
        "kept_since": h.as_ref().map(|h| h.since()),
        "samples": samples,
    })
}

/// `Gap` of docs/api.md, with the reason and the Source's sequence range as extra fields.
pub fn gap_json(g: &store::GapRow) -> Json {
    json!({
        "resource": g.resource,
        "devices": g.devices,
        "points": g.points,
        "from": g.from_us,
        "until": g.until_us,
        "detected_at": rfc3339(g.detected_at),
        "reason": g.reason.as_str(),
        "seqs": g.seqs.map(|(a, b)| json!([a, b])),
    })
}

/// `Backfill` of docs/api.md: a backfill's range and progress.
pub fn backfill_json(b: &proto::lookup::BackfillView) -> Json {
    json!({
        "id": b.id.to_string(),
        "resource": b.resource,
        "since": b.since,
        "until": b.until,
        "devices": b.devices,
        "state": b.state.as_str(),
        "points_queued": b.queued,
        "points_applied": b.applied,
        "started_at": rfc3339(b.started_at),
        "finished_at": b.finished_at.map(rfc3339),
        "asked_by": if b.by_target { "target" } else { "source" },
    })
}

/// `Connector` of docs/api.md, with the list's counts as extra fields.
pub fn connector_json(state: &AppState, c: &Connector) -> Json {
    json!({
        "id": c.id,
        "name": c.name,
        "description": c.description,
        "created_at": rfc3339(c.created_at),
        "remote_sync": remote_sync_json(state, c),
        "device_count": c.device_count,
        "resource_count": c.resource_count,
    })
}

pub fn resource_json(r: &Resource) -> Json {
    json!({
        "name": r.name,
        "format": r.format,
        "unit": r.unit,
        "settable": r.settable,
        "remote_sync": r.remote_sync,
        "created_at": rfc3339(r.created_at),
    })
}

/// `Device` of docs/api.md.
pub fn device_json(d: &Device) -> Json {
    let config: Map<String, Json> = d
        .config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_json()))
        .collect();
    let values: Map<String, Json> = d
        .values
        .iter()
        .map(|(k, p)| (k.to_string(), json!({ "t": p.t, "v": p.v.to_json() })))
        .collect();
    json!({
        "identity": d.identity,
        "tags": d.tags,
        "permissions": d.permissions,
        "state": d.state,
        "config": config,
        "values": values,
        "created_at": rfc3339(d.created_at),
        "last_seen": d.last_seen(),
        "sync": { "pending": d.sync_pending },
    })
}

/// One page of a device list as `{"devices": [Device], "next"?, "prev"?, "total"?}`.
pub fn device_page_json(page: &Page, q: &ListQuery) -> Json {
    let mut out = json!({});
    if let Some(next) = &page.next {
        out["next"] = json!(q.cursor(next));
    }
    if let Some(prev) = &page.prev {
        out["prev"] = json!(q.cursor(prev));
    }
    out["devices"] = Json::Array(page.devices.iter().map(device_json).collect());
    if let Some(total) = page.total {
        out["total"] = json!(total);
    }
    out
}

/// The drift check: `{"in_sync", "devices": {"local", "remote"}, "differing", "truncated",
/// "changing"?, "differences": [{"identity", "local"?, "remote"?, "only"?, "fields"}]}`.
pub fn drift_json(d: &Drift) -> Json {
    let differences: Vec<Json> = d
        .differences
        .iter()
        .map(|x| {
            let mut entry = json!({ "identity": x.identity, "fields": x.fields });
            if let Some(l) = &x.local {
                entry["local"] = device_json(l);
            }
            if let Some(r) = &x.remote {
                entry["remote"] = device_json(r);
            }
            match (&x.local, &x.remote) {
                (Some(_), None) => entry["only"] = json!("local"),
                (None, Some(_)) => entry["only"] = json!("remote"),
                _ => {}
            }
            entry
        })
        .collect();
    let mut out = json!({
        "in_sync": d.in_sync,
        "devices": { "local": d.local_count, "remote": d.remote_count },
        "differing": d.differing,
        "truncated": d.truncated,
        "differences": differences,
    });
    if d.changing {
        out["changing"] = json!(true);
    }
    out
}

/// A re-send: `{"queued", "peer": {"queued"} | {"error"}}`.
pub fn resent_json(r: &Resent) -> Json {
    let peer = match &r.peer {
        Ok(n) => json!({ "queued": n }),
        Err(e) => json!({ "error": e }),
    };
    json!({ "queued": r.queued, "peer": peer })
}

/// Where points wait for missing resources (docs/api.md `GET …/remote-sync/waiting`).
pub fn waiting_json(site: &str, waiting: &[proto::lookup::WaitingView]) -> Json {
    json!({
        "site": site,
        "resources": waiting.iter().map(|w| json!({
            "resource": w.resource,
            "format": w.format.as_str(),
            "points": w.points,
            "devices": w.devices,
            "from": w.from,
            "until": w.until,
        })).collect::<Vec<_>>(),
    })
}

/// `Alarm` of docs/api.md.
pub fn alarm_json(a: &store::AlarmRow) -> Json {
    let unit = match a.kind {
        store::AlarmKind::Lag | store::AlarmKind::Unreachable => "seconds",
        store::AlarmKind::Backlog | store::AlarmKind::Gap => "points",
    };
    let mut out = json!({
        "id": a.id,
        "connector_id": a.connector,
        "kind": a.kind.as_str(),
        "state": if a.cleared_at.is_some() { "cleared" } else { "active" },
        "raised_at": rfc3339(a.raised_at),
        "value": a.value,
        "threshold": a.threshold,
        "unit": unit,
        "message": a.message,
    });
    if let Some(at) = a.cleared_at {
        out["cleared_at"] = json!(rfc3339(at));
    }
    out
}

/// `AlarmThresholds` of docs/api.md: the connector's thresholds and the site's defaults.
pub fn alarm_thresholds_json(s: &store::AlarmSettings) -> Json {
    let shape = |s: &store::AlarmSettings| {
        json!({
            "lag_seconds": s.lag_seconds,
            "backlog_points": s.backlog_points,
            "unreachable_seconds": s.unreachable_seconds,
            "gap_points": s.gap_points,
        })
    };
    let mut out = shape(s);
    out["defaults"] = shape(&crate::alarms::DEFAULTS);
    out
}
/// `AuditEntry` of docs/api.md.
pub fn audit_entry_json(e: &store::AuditEntry) -> Json {
    json!({
        "device": e.identity,
        "changed_at": rfc3339(e.at),
        "action": e.action.as_str(),
        "by": { "kind": e.by.kind(), "name": e.by.name() },
        "changes": e.changes,
    })
}

/// A page of the audit log: `{"entries": [AuditEntry], "next"?}`.
pub fn audit_page_json(page: &AuditPage) -> Json {
    let mut out =
        json!({ "entries": page.entries.iter().map(audit_entry_json).collect::<Vec<_>>() });
    if let Some(next) = &page.next {
        out["next"] = json!(next);
    }
    out
}

/// `User` of docs/api.md: never a password or its hash.
pub fn user_json(u: &store::UserRow) -> Json {
    json!({
        "username": u.username,
        "admin": crate::ops::users::is_admin(&u.username),
        "created_at": rfc3339(u.created_at),
    })
}
