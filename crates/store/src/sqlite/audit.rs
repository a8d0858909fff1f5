//! The device audit log (schema: `migrations/0013_device_audit.sql`): one entry for each
//! change of a device this site stored, with who made it, written in the change's own
//! transaction.
//!
//! ```text
//!  local edit (devices::local_change)  ─┐ the device's view before and after ──▶ diff ──▶
//!  peer's change (devices::apply_remote)┘   one entry (or none: nothing visible changed)
//!  new device token (set_device_token) ──▶ one `token` entry
//! ```
//!
//! What an entry says is the difference of the device's view (`DeviceRecord::view`, the
//! device as an operator sees it) before and after the change, so local and replicated
//! changes read alike, and a change that made no visible difference (a patch to the values
//! a device already has, or a peer's edit that lost to a newer one here) leaves no entry.
//!
//! Every entry also goes out on the store's live stream (`Store::live`, in the batch of its
//! connector after the commit), which is how an open device page hears of a change.
//!
//! Bounds, kept by every insert: the newest [`PER_DEVICE`] entries of a device, none older
//! than [`MAX_AGE_US`]. Both deletes walk an index, so an insert costs a few index seeks
//! whatever the log holds.

use std::cell::RefCell;

use proto::model::{ConnectorId, Identity};
use proto::sync::DeviceView;
use rusqlite::{Connection, params};
use serde_json::{Value as Json, json};

use super::{backend, identity_col, select_rows, to_json_text};
use crate::{
    Actor, AuditAction, AuditEntry, AuditQuery, FieldChange, LiveBatch, Result, StoreError,
};

/// Entries kept per device: the newest this many.
pub(super) const PER_DEVICE: i64 = 100;
/// Entries older than this (µs, 90 days) are dropped.
pub(super) const MAX_AGE_US: i64 = 90 * 24 * 3600 * 1_000_000;

/// What the change from `before` to `after` (each `None` when the device does not exist)
/// did, or `None` when it made no visible difference.
pub(super) fn diff(
    before: Option<&DeviceView>,
    after: Option<&DeviceView>,
) -> Option<(AuditAction, Vec<FieldChange>)> {
    match (before, after) {
        (None, None) => None,
        (Some(_), None) => Some((AuditAction::Deleted, Vec::new())),
        (None, Some(after)) => Some((AuditAction::Created, fields_changed(None, after))),
        (Some(before), Some(after)) => {
            let changes = fields_changed(Some(before), after);
            (!changes.is_empty()).then_some((AuditAction::Changed, changes))
        }
    }
}

/// The fields of a view, flattened: `state`, `tags.K`, `permissions.P`, `config.R`.
fn flatten(v: &DeviceView) -> std::collections::BTreeMap<String, Json> {
    let mut out = std::collections::BTreeMap::new();
    out.insert("state".to_owned(), json!(v.state.as_str()));
    for (k, value) in &v.tags {
        out.insert(format!("tags.{k}"), json!(value));
    }
    for p in &v.permissions {
        out.insert(format!("permissions.{}", p.principal), json!(p.access));
    }
    for (name, value) in &v.config {
        out.insert(format!("config.{name}"), value.to_json());
    }
    out
}

/// Every field that differs between `before` (nothing, for a device just created) and
/// `after`, in field order.
fn fields_changed(before: Option<&DeviceView>, after: &DeviceView) -> Vec<FieldChange> {
    let old = before.map(flatten).unwrap_or_default();
    let new = flatten(after);
    let mut fields: Vec<&String> = old.keys().chain(new.keys()).collect();
    fields.sort();
    fields.dedup();
    fields
        .into_iter()
        .filter_map(|f| {
            let (from, to) = (old.get(f), new.get(f));
            (from != to).then(|| FieldChange {
                field: f.clone(),
                from: from.cloned(),
                to: to.cloned(),
            })
        })
        .collect()
}

/// Writes one entry in the caller's transaction and drops what the bounds no longer keep.
pub(super) fn insert(
    conn: &Connection,
    cid: &ConnectorId,
    identity: &Identity,
    at: i64,
    by: &Actor,
    action: AuditAction,
    changes: &[FieldChange],
) -> Result<()> {
    let op = "writing the audit log";
    conn.prepare_cached(
        "INSERT INTO device_audit (connector, identity, at, actor_kind, actor, action, changes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            cid.as_str(),
            identity.as_str(),
            at,
            by.kind(),
            by.name(),
            action.as_str(),
            to_json_text(&changes, op)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
        ])
    })
    .map_err(backend(op))?;
    if super::series::listening() {
        let entry = AuditEntry {
            id: u64::try_from(conn.last_insert_rowid()).unwrap_or(0),
            identity: identity.clone(),
            at,
            by: by.clone(),
            action,
            changes: changes.to_vec(),
        };
        LIVE.with_borrow_mut(|l| l.push((cid.clone(), entry)));
    }
    conn.prepare_cached(
        "DELETE FROM device_audit WHERE connector = ?1 AND identity = ?2 AND id <= (
             SELECT id FROM device_audit WHERE connector = ?1 AND identity = ?2
             ORDER BY id DESC LIMIT 1 OFFSET ?3)",
    )
    .and_then(|mut s| s.execute(params![cid.as_str(), identity.as_str(), PER_DEVICE]))
    .map_err(backend("trimming the audit log"))?;
    conn.prepare_cached("DELETE FROM device_audit WHERE at < ?1")
        .and_then(|mut s| s.execute([at.saturating_sub(MAX_AGE_US)]))
        .map_err(backend("trimming the audit log"))?;
    Ok(())
}

thread_local! {
    /// The entries of the writer's open transaction for the live stream, while anyone
    /// listens (`series::listening`): the writer sends them after the commit, drops those of
    /// a job whose savepoint rolled back.
    static LIVE: RefCell<Vec<(ConnectorId, AuditEntry)>> = const { RefCell::new(Vec::new()) };
}

/// Where the current job's entries start (to drop them if its savepoint rolls back).
pub(super) fn mark() -> usize {
    LIVE.with_borrow(Vec::len)
}

/// Drops the entries of a job whose savepoint rolled back.
pub(super) fn rollback_to(mark: usize) {
    LIVE.with_borrow_mut(|l| l.truncate(mark));
}

/// The entries of the transaction just ended (emptied whether it committed or not), one
/// batch per run of a connector.
pub(super) fn take_live() -> Vec<LiveBatch> {
    let entries = LIVE.with_borrow_mut(std::mem::take);
    let mut out: Vec<LiveBatch> = Vec::new();
    for (connector, entry) in entries {
        match out.last_mut() {
            Some(b) if b.connector == connector => b.devices.push(entry),
            _ => out.push(LiveBatch {
                connector,
                points: Vec::new(),
                devices: vec![entry],
            }),
        }
    }
    out
}

/// Records the change of a device from `before` to `after`, if it made a visible one.
pub(super) fn record_change(
    conn: &Connection,
    cid: &ConnectorId,
    identity: &Identity,
    at: i64,
    by: &Actor,
    before: Option<&DeviceView>,
    after: Option<&DeviceView>,
) -> Result<()> {
    match diff(before, after) {
        Some((action, changes)) => insert(conn, cid, identity, at, by, action, &changes),
        None => Ok(()),
    }
}

/// One page of the log, newest first.
pub(super) fn page(
    conn: &Connection,
    cid: &ConnectorId,
    q: &AuditQuery,
) -> Result<Vec<AuditEntry>> {
    let before = q
        .before
        .map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let map = |r: &rusqlite::Row<'_>| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
        ))
    };
    const COLUMNS: &str = "id, identity, at, actor_kind, actor, action, changes";
    let rows = match &q.identity {
        Some(identity) => select_rows(
            conn,
            &format!(
                "SELECT {COLUMNS} FROM device_audit WHERE connector = ?1 AND identity = ?2
                 AND id < ?3 ORDER BY id DESC LIMIT ?4"
            ),
            params![cid.as_str(), identity.as_str(), before, limit],
            map,
            "reading the audit log",
        )?,
        None => select_rows(
            conn,
            &format!(
                "SELECT {COLUMNS} FROM device_audit WHERE connector = ?1
                 AND id < ?2 ORDER BY id DESC LIMIT ?3"
            ),
            params![cid.as_str(), before, limit],
            map,
            "reading the audit log",
        )?,
    };
    rows.into_iter()
        .map(|(id, identity, at, kind, actor, action, changes)| {
            let bad = |what: &str| StoreError::Backend {
                op: "reading the audit log",
                source: format!("{what} of entry {id} is not one this store writes").into(),
            };
            Ok(AuditEntry {
                id: u64::try_from(id).unwrap_or(0),
                identity: identity_col(identity)?,
                at,
                by: Actor::from_parts(&kind, actor).ok_or_else(|| bad("the actor"))?,
                action: AuditAction::parse(&action).ok_or_else(|| bad("the action"))?,
                changes: serde_json::from_str(&changes).map_err(|_| bad("the changes"))?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proto::model::{Access, DeviceState, Permission, ResourceName, Value};

    use super::*;

    fn view(tags: &[(&str, &str)], perms: &[(&str, Access)], setpoint: Option<f64>) -> DeviceView {
        DeviceView {
            identity: Identity::parse("dev1").unwrap(),
            state: DeviceState::Provisioned,
            permissions: perms
                .iter()
                .map(|(p, a)| Permission {
                    principal: (*p).into(),
                    access: *a,
                })
                .collect(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            config: setpoint
                .map(|v| (ResourceName::parse("setpoint").unwrap(), Value::Number(v)))
                .into_iter()
                .collect(),
        }
    }

    fn change(field: &str, from: Option<Json>, to: Option<Json>) -> FieldChange {
        FieldChange {
            field: field.into(),
            from,
            to,
        }
    }

    #[test]
    fn a_diff_names_each_field_that_changed_and_nothing_else() {
        let a = view(
            &[("floor", "1"), ("room", "2")],
            &[("ops", Access::Read)],
            None,
        );
        let b = view(
            &[("floor", "2"), ("room", "2")],
            &[("ops", Access::Manage)],
            Some(21.5),
        );
        let (action, changes) = diff(Some(&a), Some(&b)).unwrap();
        assert_eq!(action, AuditAction::Changed);
        assert_eq!(
            changes,
            vec![
                change("config.setpoint", None, Some(json!(21.5))),
                change(
                    "permissions.ops",
                    Some(json!("read")),
                    Some(json!("manage"))
                ),
                change("tags.floor", Some(json!("1")), Some(json!("2"))),
            ]
        );
        assert_eq!(
            diff(Some(&a), Some(&a)),
            None,
            "no visible change, no entry"
        );
        assert_eq!(diff(None, None), None);
        assert_eq!(diff(Some(&a), None), Some((AuditAction::Deleted, vec![])));
        let (action, created) = diff(None, Some(&a)).unwrap();
        assert_eq!(action, AuditAction::Created);
        assert_eq!(
            created.iter().map(|c| c.field.as_str()).collect::<Vec<_>>(),
            ["permissions.ops", "state", "tags.floor", "tags.room"]
        );
        assert!(created.iter().all(|c| c.from.is_none()));
    }
}
