//! The SQL of device convergence (docs/spec.md §5; docs/sync.md "Device convergence"): each device's
//! replicated record, the site's hybrid logical clock, and the projection of a merged record
//! onto the `devices` and `config` rows an operator reads. Schema:
//! `migrations/0004_devices.sql`.
//!
//! ```text
//!  local edit ──▶ rows written as asked ──▶ change stamped by the HLC ──▶ merged into the
//!                 record, appended to the outbox of a paired connector (out_seq = its seq)
//!  received change ──▶ merge with the record, HLC observes it ──▶ project: upsert the rows
//!                      of a live device, delete those of a deleted one (with its points)
//! ```
//!
//! Invariants:
//! - A device's rows are always the view of its record (`DeviceRecord::view`), except the
//!   configuration of resources this connector does not have, which only the record keeps.
//! - Every local change is stamped above every stamp its device's record holds and above
//!   every stamp the site has issued or observed (`device_clock`), all in the transaction of
//!   the edit, so the edit wins locally and a restart never reuses a stamp.
//! - A device without a stored record (created before device sync existed, or by data that
//!   arrived before its record) reads as created at the zero stamp with its current fields:
//!   every real change dominates it.

use proto::model::{ConnectorId, DeviceState, Identity, Permission, ResourceName, Tags, Value};
use proto::sync::{DeviceEdit, DeviceRecord, Hlc, Stamp, merge};
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    audit, backend, get_device, identity_col, resource_rows, select_rows, sync, value_to_sql,
};
use crate::{Actor, Result, StoreError};

/// `resource` of a row of the former outbox layout (a row per seq, before migration 10)
/// that holds a device change (resource ids start at 1); read when converting it.
pub(super) const DEVICE_CHANGE: i64 = 0;

fn json_err(op: &'static str) -> impl FnOnce(serde_json::Error) -> StoreError {
    move |e| StoreError::Backend {
        op,
        source: Box::new(e),
    }
}

pub(super) fn encode(record: &DeviceRecord) -> Result<String> {
    serde_json::to_string(record).map_err(json_err("encoding a device record"))
}

pub(super) fn decode(text: &str) -> Result<DeviceRecord> {
    serde_json::from_str(text).map_err(json_err("decoding a device record"))
}

/// The stamp of records synthesised for devices that have none.
fn zero_stamp() -> Stamp {
    Stamp::new(Hlc::ZERO, "")
}

/// The stored record of a device, if it has one.
fn stored_record(
    conn: &Connection,
    cid: &ConnectorId,
    identity: &Identity,
) -> Result<Option<DeviceRecord>> {
    let stored: Option<String> = conn
        .prepare_cached("SELECT record FROM device_records WHERE connector = ?1 AND identity = ?2")
        .and_then(|mut s| {
            s.query_row([cid.as_str(), identity.as_str()], |r| r.get(0))
                .optional()
        })
        .map_err(backend("reading a device record"))?;
    stored.map(|text| decode(&text)).transpose()
}

/// The record of a device, or `None` when this connector never knew it.
pub(super) fn record(
    conn: &Connection,
    cid: &ConnectorId,
    identity: &Identity,
) -> Result<Option<DeviceRecord>> {
    if let Some(r) = stored_record(conn, cid, identity)? {
        return Ok(Some(r));
    }
    match get_device(conn, cid, identity, None) {
        Ok(d) => Ok(Some(DeviceRecord::create(
            identity.clone(),
            zero_stamp(),
            DeviceEdit {
                state: Some(d.state),
                permissions: Some(d.permissions),
                tags: d.tags.into_iter().map(|(k, v)| (k, Some(v))).collect(),
                config: d.config.into_iter().map(|(k, v)| (k, Some(v))).collect(),
            },
        ))),
        Err(StoreError::DeviceNotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Stores a device's merged record; `out_seq`, when given, is the outbox seq of the change
/// just appended for it.
fn save(
    conn: &Connection,
    cid: &ConnectorId,
    record: &DeviceRecord,
    out_seq: Option<u64>,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO device_records (connector, identity, record, out_seq) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (connector, identity) DO UPDATE SET record = excluded.record,
             out_seq = COALESCE(excluded.out_seq, device_records.out_seq)",
    )
    .and_then(|mut s| {
        s.execute(params![
            cid.as_str(),
            record.identity.as_str(),
            encode(record).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
            out_seq.map(|s| i64::try_from(s).unwrap_or(i64::MAX))
        ])
    })
    .map_err(backend("writing a device record"))?;
    Ok(())
}

fn clock(conn: &Connection) -> Result<Hlc> {
    Ok(conn
        .prepare_cached("SELECT wall_us, counter FROM device_clock WHERE id = 1")
        .and_then(|mut s| {
            s.query_row([], |r| {
                Ok(Hlc::new(
                    u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                    u32::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                ))
            })
            .optional()
        })
        .map_err(backend("reading the device clock"))?
        .unwrap_or(Hlc::ZERO))
}

fn set_clock(conn: &Connection, hlc: Hlc) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO device_clock (id, wall_us, counter) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET wall_us = excluded.wall_us, counter = excluded.counter",
    )
    .and_then(|mut s| {
        s.execute(params![
            i64::try_from(hlc.wall_us).unwrap_or(i64::MAX),
            hlc.counter
        ])
    })
    .map_err(backend("advancing the device clock"))?;
    Ok(())
}

/// The stamp of a local edit: above the site's clock and above everything in `before`.
fn next_stamp(
    conn: &Connection,
    site: &str,
    now: i64,
    before: Option<&DeviceRecord>,
) -> Result<Stamp> {
    let mut hlc = clock(conn)?;
    let now = u64::try_from(now).unwrap_or(0);
    let reading = match before.and_then(DeviceRecord::max_stamp) {
        Some(s) => hlc.observe(s.hlc, now),
        None => hlc.tick(now),
    };
    set_clock(conn, hlc)?;
    Ok(Stamp::new(reading, site))
}

/// What a local edit changes, to be stamped: built by the `Store` methods from the request.
pub(super) enum LocalEdit {
    Create(DeviceEdit),
    Edit(EditFields),
    Delete,
}

/// The fields of an update as asked: tags and permissions replace the whole map or list.
pub(super) struct EditFields {
    pub tags: Option<Tags>,
    pub permissions: Option<Vec<Permission>>,
    pub state: Option<DeviceState>,
    pub config: std::collections::BTreeMap<ResourceName, Option<Value>>,
}

/// Records a local edit whose rows the caller has written (or is about to delete): stamps
/// the change, merges it into the device's record (`before`, read before the rows changed),
/// queues it for the peer of a paired connector and writes its audit entry, made `by`.
pub(super) fn local_change(
    conn: &Connection,
    cid: &ConnectorId,
    identity: &Identity,
    before: Option<DeviceRecord>,
    edit: LocalEdit,
    by: &Actor,
    ctx: &Ctx<'_>,
) -> Result<()> {
    let stamp = next_stamp(conn, ctx.site, ctx.now, before.as_ref())?;
    let change = match edit {
        LocalEdit::Create(fields) => DeviceRecord::create(identity.clone(), stamp, fields),
        LocalEdit::Delete => DeviceRecord::delete(identity.clone(), stamp),
        LocalEdit::Edit(f) => {
            let visible = before.as_ref().and_then(DeviceRecord::view);
            let mut tags = std::collections::BTreeMap::new();
            if let Some(new) = f.tags {
                if let Some(v) = &visible {
                    for k in v.tags.keys().filter(|k| !new.contains_key(*k)) {
                        tags.insert(k.clone(), None);
                    }
                }
                tags.extend(new.into_iter().map(|(k, v)| (k, Some(v))));
            }
            DeviceRecord::edit(
                identity.clone(),
                stamp,
                DeviceEdit {
                    state: f.state,
                    permissions: f.permissions,
                    tags,
                    config: f.config,
                },
            )
        }
    };
    if change == DeviceRecord::empty(identity.clone()) {
        // A patch without fields: nothing to tell the peer.
        return Ok(());
    }
    let merged = match &before {
        Some(b) => merged(b, &change)?,
        None => change.clone(),
    };
    let seq = sync::append_device(conn, cid, ctx.now, ctx.partition_us, &change)?;
    save(conn, cid, &merged, seq)?;
    audit::record_change(
        conn,
        cid,
        identity,
        ctx.now,
        by,
        before.as_ref().and_then(DeviceRecord::view).as_ref(),
        merged.view().as_ref(),
    )
}

/// What device changes need besides the connection: this site's name, the time, and the
/// outbox partition length.
pub(super) struct Ctx<'a> {
    pub site: &'a str,
    pub now: i64,
    pub partition_us: i64,
}

/// Queues the current record of each device for the peer again (a snapshot: harmless to
/// merge twice). Used when pairing completes, when retention dropped undelivered changes,
/// and when an operator re-sends devices the drift check found different. Returns how many
/// devices were queued; unknown identities are skipped.
///
/// With `repair`, the device's rows are also rewritten from its record first, undoing any
/// change made to them behind the record's back (the operator's re-send after a drift).
pub(super) fn resend(
    conn: &Connection,
    cid: &ConnectorId,
    identities: &[Identity],
    now: i64,
    partition_us: i64,
    repair: bool,
) -> Result<u64> {
    // One appender for all of them: pairing queues a whole registry this way.
    let mut out = sync::appender(conn, cid, now, partition_us)?;
    let mut n = 0;
    for identity in identities {
        let Some(rec) = record(conn, cid, identity)? else {
            continue;
        };
        if repair {
            project(conn, cid, &rec, now)?;
        }
        let seq = out
            .as_mut()
            .map(|o| o.push_device(conn, &rec))
            .transpose()?;
        save(conn, cid, &rec, seq)?;
        n += 1;
    }
    if let Some(out) = out {
        out.finish(conn)?;
    }
    Ok(n)
}

/// Every device identity of a connector that has rows or a record.
pub(super) fn all_identities(conn: &Connection, cid: &ConnectorId) -> Result<Vec<Identity>> {
    let rows = select_rows(
        conn,
        "SELECT identity FROM devices WHERE connector = ?1
         UNION SELECT identity FROM device_records WHERE connector = ?1
         ORDER BY 1",
        [cid.as_str()],
        |r| r.get::<_, String>(0),
        "listing devices",
    )?;
    rows.into_iter().map(identity_col).collect()
}

/// The merge of two records of one device (their identities are the store's to match).
fn merged(a: &DeviceRecord, b: &DeviceRecord) -> Result<DeviceRecord> {
    merge(a, b).map_err(|e| StoreError::Backend {
        op: "merging a device change",
        source: Box::new(e),
    })
}

/// Applies a device change received from the peer: merge, observe its stamps, project, and
/// write its audit entry (by the peer site).
pub(super) fn apply_remote(
    conn: &Connection,
    cid: &ConnectorId,
    remote: &DeviceRecord,
    now: i64,
) -> Result<()> {
    let before = record(conn, cid, &remote.identity)?
        .unwrap_or_else(|| DeviceRecord::empty(remote.identity.clone()));
    let merged = merged(&before, remote)?;
    if let Some(s) = remote.max_stamp() {
        let mut hlc = clock(conn)?;
        hlc.observe(s.hlc, u64::try_from(now).unwrap_or(0));
        set_clock(conn, hlc)?;
    }
    save(conn, cid, &merged, None)?;
    project(conn, cid, &merged, now)?;
    audit::record_change(
        conn,
        cid,
        &remote.identity,
        now,
        &Actor::Peer(peer_site(conn, cid)?),
        before.view().as_ref(),
        merged.view().as_ref(),
    )
}

/// The name of the peer site of a paired connector (the author, for the audit log, of what
/// arrives from it).
fn peer_site(conn: &Connection, cid: &ConnectorId) -> Result<String> {
    conn.prepare_cached("SELECT peer_site FROM connectors WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([cid.as_str()], |r| r.get::<_, Option<String>>(0))
                .optional()
        })
        .map_err(backend("reading the peer's name"))
        .map(|site| site.flatten().unwrap_or_default())
}

/// Makes the rows of a device its record's view (a device it creates was added `now`).
fn project(conn: &Connection, cid: &ConnectorId, record: &DeviceRecord, now: i64) -> Result<()> {
    let id: Option<i64> = conn
        .prepare_cached("SELECT id FROM devices WHERE connector = ?1 AND identity = ?2")
        .and_then(|mut s| {
            s.query_row([cid.as_str(), record.identity.as_str()], |r| r.get(0))
                .optional()
        })
        .map_err(backend("looking up a device"))?;
    let Some(view) = record.view() else {
        if let Some(id) = id {
            delete_rows(conn, id)?;
        }
        return Ok(());
    };
    let tags = serde_json::to_string(&view.tags).map_err(json_err("writing tags"))?;
    let permissions =
        serde_json::to_string(&view.permissions).map_err(json_err("writing permissions"))?;
    let id = match id {
        Some(id) => {
            conn.prepare_cached(
                "UPDATE devices SET tags = ?2, permissions = ?3, state = ?4 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, tags, permissions, view.state.as_str()]))
            .map_err(backend("updating a replicated device"))?;
            id
        }
        None => {
            conn.prepare_cached(
                "INSERT INTO devices (connector, identity, tags, permissions, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    cid.as_str(),
                    view.identity.as_str(),
                    tags,
                    permissions,
                    view.state.as_str(),
                    now
                ])
            })
            .map_err(backend("creating a replicated device"))?;
            conn.last_insert_rowid()
        }
    };
    conn.prepare_cached("DELETE FROM config WHERE device = ?1")
        .and_then(|mut s| s.execute([id]))
        .map_err(backend("updating configuration"))?;
    let resources = resource_rows(conn, cid)?;
    for (name, value) in view.config {
        let Some(r) = resources.get(&name).filter(|r| r.settable) else {
            continue;
        };
        let Some(value) = sync::fit(r.format, &name, value) else {
            continue;
        };
        conn.prepare_cached("INSERT INTO config (device, resource, v) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![id, r.id, value_to_sql(&value)]))
            .map_err(backend("updating configuration"))?;
    }
    Ok(())
}

/// Shows the configuration for resource `name`, just created, that device records hold
/// (set by the peer before this connector had the resource).
pub(super) fn adopt_config(
    conn: &Connection,
    cid: &ConnectorId,
    name: &ResourceName,
    now: i64,
) -> Result<()> {
    let records = select_rows(
        conn,
        "SELECT record FROM device_records WHERE connector = ?1",
        [cid.as_str()],
        |r| r.get::<_, String>(0),
        "reading device records",
    )?;
    for text in records {
        let record = decode(&text)?;
        if record.view().is_some_and(|v| v.config.contains_key(name)) {
            project(conn, cid, &record, now)?;
        }
    }
    Ok(())
}

/// Deletes a device's rows, its points and latest values (configuration cascades).
pub(super) fn delete_rows(conn: &Connection, id: i64) -> Result<()> {
    super::series::delete_device(conn, id)?;
    for sql in [
        "DELETE FROM latest WHERE device = ?1",
        "DELETE FROM devices WHERE id = ?1",
    ] {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([id]))
            .map_err(backend("deleting a device"))?;
    }
    Ok(())
}

/// Whether the device's record says it was deleted (data for it is then dropped).
pub(super) fn is_deleted(
    conn: &Connection,
    cid: &ConnectorId,
    identity: &Identity,
) -> Result<bool> {
    Ok(stored_record(conn, cid, identity)?.is_some_and(|r| !r.is_live()))
}

/// Whether this site's latest change of a device is not yet acknowledged by the peer.
pub(super) fn pending(conn: &Connection, device_row: i64) -> Result<bool> {
    conn.prepare_cached(
        "SELECT r.out_seq > COALESCE((SELECT o.acked FROM sync_out o WHERE o.connector = d.connector), 0)
         FROM devices d JOIN device_records r ON r.connector = d.connector AND r.identity = d.identity
         WHERE d.id = ?1 AND r.out_seq IS NOT NULL",
    )
    .and_then(|mut s| s.query_row([device_row], |r| r.get::<_, bool>(0)).optional())
    .map_err(backend("reading a device's sync state"))
    .map(|p| p.unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    use proto::model::{Access, DeviceState, Format, Permission, Tags, Value};
    use proto::sync::{Apply, DeviceEdit, DeviceRecord, Hlc, Record, Stamp};
    use serde_json::json;

    use super::super::audit;
    use super::super::fixtures::*;
    use crate::*;

    const PART: i64 = 1_000_000;

    struct Site {
        _dir: tempfile::TempDir,
        store: SqliteStore,
        now: Arc<AtomicI64>,
    }

    impl Site {
        fn open(name: &str) -> Site {
            let dir = tempfile::tempdir().unwrap();
            let now = Arc::new(AtomicI64::new(1_000_000));
            let mut cfg = SqliteConfig::new(dir.path().join("site.db"));
            let clock = Arc::clone(&now);
            cfg.clock = Clock::new(move || clock.load(Ordering::SeqCst));
            cfg.sync_partition_us = PART;
            cfg.site = name.into();
            let store = SqliteStore::open(cfg).unwrap();
            Site {
                _dir: dir,
                store,
                now,
            }
        }

        fn at(&self, us: i64) -> &SqliteStore {
            self.now.store(us, Ordering::SeqCst);
            &self.store
        }

        async fn device(&self, identity: &str) -> Option<Device> {
            match self.store.device(&cid(), &id(identity)).await {
                Ok(d) => Some(d),
                Err(StoreError::DeviceNotFound(_)) => None,
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn new_device(identity: &str, tags: &[(&str, &str)]) -> NewDevice {
        NewDevice {
            identity: id(identity),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            permissions: vec![],
            state: DeviceState::Provisioned,
            token: [identity.len() as u8; 32],
            created_at: 1,
        }
    }

    fn tags(pairs: &[(&str, &str)]) -> DevicePatch {
        DevicePatch {
            tags: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// A Source `site-a` with a settable resource and device `dev1`, paired with a Target
    /// `site-b` that has the same resource.
    async fn pair() -> (Site, Site) {
        let (a, b) = (Site::open("site-a"), Site::open("site-b"));
        let conn = NewConnector {
            id: cid(),
            name: "plant".into(),
            description: String::new(),
            created_at: 1,
        };
        a.store.create_connector(conn.clone()).await.unwrap();
        let source = Peer {
            site: "site-a".into(),
            connector_id: cid(),
        };
        b.store
            .create_target_connector(conn, source, keys())
            .await
            .unwrap();
        for s in [&a, &b] {
            s.store
                .create_resource(
                    &cid(),
                    NewResource {
                        name: ResourceName::parse("setpoint").unwrap(),
                        format: Format::Number,
                        unit: None,
                        settable: true,
                        remote_sync: true,
                        created_at: 1,
                    },
                )
                .await
                .unwrap();
        }
        a.store
            .create_device(&cid(), new_device("dev1", &[("floor", "1")]), &admin())
            .await
            .unwrap();
        a.store
            .open_pairing(&cid(), "CODE", i64::MAX)
            .await
            .unwrap();
        let peer = Peer {
            site: "site-b".into(),
            connector_id: cid(),
        };
        a.store
            .complete_pairing(&cid(), peer, keys(), 2)
            .await
            .unwrap();
        (a, b)
    }

    /// Delivers everything `from` has queued beyond `to`'s cursor, in one batch, as the
    /// sync engine would, and acknowledges it; returns the records delivered.
    async fn deliver(from: &Site, to: &Site) -> Vec<Record> {
        let applied = to.store.sync_state(&cid()).await.unwrap().applied;
        let head = from.store.outbox_head(&cid()).await.unwrap();
        if head <= applied {
            return vec![];
        }
        let OutboxChunk::Records(records) = from
            .store
            .outbox_read(&cid(), applied + 1, 1_000)
            .await
            .unwrap()
        else {
            panic!("lost records");
        };
        assert_eq!(records.len() as u64, head - applied);
        let item = Inbound::Records(Apply {
            opens: false,
            first_seq: applied + 1,
            last_seq: head,
            records: records.clone(),
        });
        let now = to.now.load(Ordering::SeqCst);
        to.store.sync_apply(&cid(), vec![item], now).await.unwrap();
        from.store.outbox_acked(&cid(), head).await.unwrap();
        records
    }

    /// What both sides must agree on.
    fn managed(
        d: &Device,
    ) -> (
        Tags,
        Vec<Permission>,
        DeviceState,
        BTreeMap<ResourceName, Value>,
    ) {
        let mut perms = d.permissions.clone();
        perms.sort_by(|a, b| a.principal.cmp(&b.principal));
        (d.tags.clone(), perms, d.state, d.config.clone())
    }

    #[tokio::test]
    async fn pairing_sends_the_registry_and_edits_flow_both_ways() {
        let (a, b) = pair().await;
        deliver(&a, &b).await;
        let on_b = b.device("dev1").await.expect("dev1 reached the Target");
        assert_eq!(on_b.tags.get("floor").map(String::as_str), Some("1"));

        // An edit on the Target is pending until the Source applied it.
        let patch = DevicePatch {
            config: Some(
                [(ResourceName::parse("setpoint").unwrap(), Some(json!(21.5)))]
                    .into_iter()
                    .collect(),
            ),
            ..tags(&[("floor", "2"), ("room", "12")])
        };
        let d = b
            .at(2_000_000)
            .update_device(&cid(), &id("dev1"), patch, &admin())
            .await
            .unwrap();
        assert!(d.sync_pending);
        deliver(&b, &a).await;
        assert!(!b.device("dev1").await.unwrap().sync_pending);
        let on_a = a.device("dev1").await.unwrap();
        assert_eq!(managed(&on_a), managed(&b.device("dev1").await.unwrap()));
        assert_eq!(
            on_a.config.values().next(),
            Some(&Value::Number(21.5)),
            "configuration travels too"
        );
        // A patch that changes nothing queues nothing.
        let head = b.store.outbox_head(&cid()).await.unwrap();
        b.store
            .update_device(&cid(), &id("dev1"), DevicePatch::default(), &admin())
            .await
            .unwrap();
        assert_eq!(b.store.outbox_head(&cid()).await.unwrap(), head);
        // Devices created on either side after pairing reach the other.
        b.at(2_100_000)
            .create_device(&cid(), new_device("dev2", &[("made", "b")]), &admin())
            .await
            .unwrap();
        deliver(&b, &a).await;
        assert_eq!(a.device("dev2").await.unwrap().tags["made"], "b");
    }

    #[tokio::test]
    async fn configuration_for_a_resource_created_later_shows_once_it_exists() {
        let (a, b) = pair().await;
        deliver(&a, &b).await;
        let later = NewResource {
            name: ResourceName::parse("fan").unwrap(),
            format: Format::Integer,
            unit: None,
            settable: true,
            remote_sync: false,
            created_at: 3,
        };
        a.store
            .create_resource(&cid(), later.clone())
            .await
            .unwrap();
        let patch = DevicePatch {
            config: Some([(later.name.clone(), Some(json!(3)))].into_iter().collect()),
            ..Default::default()
        };
        a.at(3_000_000)
            .update_device(&cid(), &id("dev1"), patch, &admin())
            .await
            .unwrap();
        deliver(&a, &b).await;
        assert!(
            !b.device("dev1")
                .await
                .unwrap()
                .config
                .contains_key(&later.name)
        );
        b.store
            .create_resource(&cid(), later.clone())
            .await
            .unwrap();
        assert_eq!(
            b.device("dev1").await.unwrap().config.get(&later.name),
            Some(&Value::Integer(3))
        );
    }

    #[tokio::test]
    async fn concurrent_edits_converge_per_field() {
        let (a, b) = pair().await;
        deliver(&a, &b).await;
        // During an outage: both edit dev1; the Target later, with a skewed clock.
        a.at(3_000_000)
            .update_device(
                &cid(),
                &id("dev1"),
                tags(&[("floor", "3"), ("by", "a")]),
                &admin(),
            )
            .await
            .unwrap();
        let perms = vec![Permission {
            principal: "ops".into(),
            access: Access::Manage,
        }];
        b.at(3_500_000)
            .update_device(
                &cid(),
                &id("dev1"),
                DevicePatch {
                    permissions: Some(perms.clone()),
                    state: Some(DeviceState::Locked),
                    ..tags(&[("floor", "4")])
                },
                &admin(),
            )
            .await
            .unwrap();
        // Delivered in either order, repeatedly: the same device on both sides.
        let from_b = deliver(&b, &a).await;
        deliver(&a, &b).await;
        let item = Inbound::Records(Apply {
            opens: false,
            first_seq: 1,
            last_seq: from_b.len() as u64,
            records: from_b,
        });
        assert!(
            matches!(
                a.store.sync_apply(&cid(), vec![item], 4_000_000).await,
                Err(StoreError::SyncCursor { .. })
            ),
            "a replay is refused and changes nothing"
        );
        let (da, db) = (
            a.device("dev1").await.unwrap(),
            b.device("dev1").await.unwrap(),
        );
        assert_eq!(managed(&da), managed(&db));
        // Per field: the Target's later `floor`; `by`, which the Target never saw, stays;
        // the Target's permissions and state.
        let expected: Tags = [("by", "a"), ("floor", "4")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(da.tags, expected);
        assert_eq!(da.permissions, perms);
        assert_eq!(da.state, DeviceState::Locked);
    }

    #[tokio::test]
    async fn a_delete_wins_over_concurrent_edits_until_recreated() {
        let (a, b) = pair().await;
        deliver(&a, &b).await;
        a.at(5_000_000)
            .delete_device(&cid(), &id("dev1"), &admin())
            .await
            .unwrap();
        // The Target edits later by its clock, without having seen the delete.
        b.at(6_000_000)
            .update_device(&cid(), &id("dev1"), tags(&[("late", "edit")]), &admin())
            .await
            .unwrap();
        deliver(&a, &b).await;
        deliver(&b, &a).await;
        assert!(a.device("dev1").await.is_none());
        assert!(b.device("dev1").await.is_none());

        // Data for the deleted device still in flight is dropped, not resurrected.
        let point = Record::Point(proto::sync::Point {
            device: id("dev1"),
            resource: ResourceName::parse("setpoint").unwrap(),
            t: 7,
            value: Value::Number(1.0),
        });
        let applied = b.store.sync_state(&cid()).await.unwrap().applied;
        let item = Inbound::Records(Apply {
            opens: false,
            first_seq: applied + 1,
            last_seq: applied + 1,
            records: vec![point],
        });
        b.store
            .sync_apply(&cid(), vec![item], 7_000_000)
            .await
            .unwrap();
        assert!(b.device("dev1").await.is_none());

        // Re-created on the Target: back on both sides, without the old fields.
        b.at(8_000_000)
            .create_device(&cid(), new_device("dev1", &[("new", "life")]), &admin())
            .await
            .unwrap();
        b.store.outbox_acked(&cid(), 0).await.unwrap();
        deliver(&b, &a).await;
        let da = a.device("dev1").await.expect("re-created on the Source");
        assert_eq!(da.tags, [("new".to_string(), "life".to_string())].into());
        assert_eq!(managed(&da), managed(&b.device("dev1").await.unwrap()));
    }

    #[tokio::test]
    async fn a_device_change_this_site_cannot_accept_is_skipped_and_the_stream_goes_on() {
        let (a, b) = pair().await;
        deliver(&a, &b).await;
        let applied = b.store.sync_state(&cid()).await.unwrap().applied;
        // A tag key the domain refuses (a peer of another version, say), then a good edit.
        let stamp = Stamp::new(Hlc::new(9_000_000, 0), "site-a");
        let bad = DeviceRecord::edit(
            id("dev1"),
            stamp.clone(),
            DeviceEdit {
                tags: [("bad key!".to_string(), Some("x".to_string()))].into(),
                ..Default::default()
            },
        );
        let good = DeviceRecord::edit(
            id("dev1"),
            stamp,
            DeviceEdit {
                tags: [("floor".to_string(), Some("7".to_string()))].into(),
                ..Default::default()
            },
        );
        let item = Inbound::Records(Apply {
            opens: false,
            first_seq: applied + 1,
            last_seq: applied + 2,
            records: vec![
                Record::Device(Box::new(bad)),
                Record::Device(Box::new(good)),
            ],
        });
        let cursor = b
            .store
            .sync_apply(&cid(), vec![item], 9_000_000)
            .await
            .unwrap();
        assert_eq!(cursor, applied + 2, "the stream moves past it");
        let d = b.device("dev1").await.unwrap();
        assert_eq!(d.tags.get("floor").map(String::as_str), Some("7"));
        assert!(
            !d.tags.contains_key("bad key!"),
            "nothing of the refused change"
        );
    }

    /// A page of `site`'s audit log (of one device when `identity` is given).
    async fn audit(
        site: &Site,
        identity: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> Vec<AuditEntry> {
        let query = AuditQuery {
            identity: identity.map(id),
            before,
            limit,
        };
        site.store.device_audit(&cid(), query).await.unwrap()
    }

    #[tokio::test]
    async fn the_audit_log_says_who_changed_what_on_each_side() {
        let (a, b) = pair().await;
        deliver(&a, &b).await;
        let on_b = audit(&b, Some("dev1"), None, 10).await;
        assert_eq!(on_b.len(), 1, "{on_b:?}");
        assert_eq!(on_b[0].action, AuditAction::Created);
        assert_eq!(on_b[0].by, Actor::Peer("site-a".into()));

        // An edit through the Target's API reaches the Source as the peer's.
        let ops = Actor::Token("ops".into());
        b.at(2_000_000)
            .update_device(&cid(), &id("dev1"), tags(&[("floor", "2")]), &ops)
            .await
            .unwrap();
        a.now.store(2_500_000, Ordering::SeqCst);
        deliver(&b, &a).await;
        let on_a = audit(&a, Some("dev1"), None, 10).await;
        let floor = vec![FieldChange {
            field: "tags.floor".into(),
            from: Some(json!("1")),
            to: Some(json!("2")),
        }];
        assert_eq!(on_a.len(), 2, "{on_a:?}");
        assert_eq!(
            (on_a[0].action, &on_a[0].by, on_a[0].at, &on_a[0].changes),
            (
                AuditAction::Changed,
                &Actor::Peer("site-b".into()),
                2_500_000,
                &floor
            ),
            "newest first: the peer's edit, stamped when the Source stored it"
        );
        assert_eq!(
            (on_a[1].action, &on_a[1].by),
            (AuditAction::Created, &admin())
        );
        let on_b = audit(&b, Some("dev1"), None, 10).await;
        assert_eq!((&on_b[0].by, &on_b[0].changes), (&ops, &floor));

        // What changes nothing visible leaves no entry; a new token and a delete do.
        b.store
            .update_device(&cid(), &id("dev1"), tags(&[("floor", "2")]), &admin())
            .await
            .unwrap();
        b.store
            .set_device_token(&cid(), &id("dev1"), [9; 32], &admin())
            .await
            .unwrap();
        a.at(3_000_000)
            .delete_device(&cid(), &id("dev1"), &admin())
            .await
            .unwrap();
        deliver(&a, &b).await;
        let on_b = audit(&b, None, None, 10).await;
        let actions: Vec<_> = on_b.iter().map(|e| e.action).collect();
        assert_eq!(
            actions,
            [
                AuditAction::Deleted,
                AuditAction::Token,
                AuditAction::Changed,
                AuditAction::Created
            ]
        );
    }

    #[tokio::test]
    async fn device_changes_go_out_on_the_live_stream_once_committed() {
        let a = Site::open("site-a");
        create_plant(&a.store).await;
        let mut live = a.store.live();
        a.store
            .create_device(&cid(), new_device("dev1", &[]), &admin())
            .await
            .unwrap();
        // A refused change sends nothing.
        let bad = DevicePatch {
            config: Some([(name("nope"), Some(json!(1)))].into()),
            ..tags(&[("floor", "9")])
        };
        a.store
            .update_device(&cid(), &id("dev1"), bad, &admin())
            .await
            .unwrap_err();
        a.store
            .update_device(&cid(), &id("dev1"), tags(&[("floor", "2")]), &admin())
            .await
            .unwrap();
        let mut seen = Vec::new();
        while let Ok(batch) = live.try_recv() {
            assert_eq!(batch.connector, cid());
            assert!(batch.points.is_empty());
            seen.extend(batch.devices.iter().map(|e| (e.action, e.changes.len())));
        }
        assert_eq!(
            seen,
            [(AuditAction::Created, 1), (AuditAction::Changed, 1)],
            "the creation (its state), then the good edit only"
        );
    }

    #[tokio::test]
    async fn the_audit_log_keeps_the_newest_entries_of_each_device_and_pages() {
        let a = Site::open("site-a");
        create_plant(&a.store).await;
        // Distinct lengths: the fixture derives tokens from them.
        for d in ["dev1", "pump-2"] {
            a.store
                .create_device(&cid(), new_device(d, &[]), &admin())
                .await
                .unwrap();
        }
        let per_device = audit::PER_DEVICE;
        for i in 0..per_device + 5 {
            a.at(2_000_000 + i)
                .update_device(
                    &cid(),
                    &id("dev1"),
                    tags(&[("n", &i.to_string())]),
                    &admin(),
                )
                .await
                .unwrap();
        }
        let dev1 = audit(&a, Some("dev1"), None, 1000).await;
        assert_eq!(dev1.len() as i64, per_device, "only the newest are kept");
        assert_eq!(
            dev1[0].changes[0].to,
            Some(json!((per_device + 4).to_string()))
        );
        assert!(dev1.iter().all(|e| e.action == AuditAction::Changed));
        // Another device's entries are not counted against it.
        let dev2 = audit(&a, Some("pump-2"), None, 10).await;
        assert_eq!(dev2.len(), 1);

        // The connector's log in pages of 30, newest first, each entry once.
        let (mut seen, mut before) = (Vec::new(), None);
        loop {
            let page = audit(&a, None, before, 30).await;
            let Some(last) = page.last() else { break };
            before = Some(last.id);
            seen.extend(page.iter().map(|e| e.id));
        }
        assert_eq!(seen.len() as i64, per_device + 1);
        assert!(seen.windows(2).all(|w| w[0] > w[1]), "{seen:?}");

        // Past the age bound, an insert drops every older entry, of any device.
        a.at(2_000_000 + per_device + 5 + audit::MAX_AGE_US)
            .update_device(&cid(), &id("pump-2"), tags(&[("late", "yes")]), &admin())
            .await
            .unwrap();
        let all = audit(&a, None, None, 1000).await;
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].identity, id("pump-2"));
    }

    #[tokio::test]
    async fn expired_device_changes_are_sent_again_as_snapshots() {
        let (a, b) = pair().await;
        a.at(PART)
            .update_device(&cid(), &id("dev1"), tags(&[("floor", "9")]), &admin())
            .await
            .unwrap();
        // Nothing delivered; both the pairing snapshot and the edit expire.
        let report = a
            .at(10 * PART)
            .sync_expire(
                &cid(),
                Retention {
                    now: 10 * PART,
                    keep_us: PART,
                    budget_bytes: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(report.partitions_dropped, 1, "{report:?}");
        let OutboxChunk::Lost(span) = a.store.outbox_read(&cid(), 1, 10).await.unwrap() else {
            panic!("the expired records should be a lost span");
        };
        assert_eq!((span.device_changes, span.points()), (2, 0));
        // The device's latest record follows the span and brings the Target up to date.
        let head = a.store.outbox_head(&cid()).await.unwrap();
        assert_eq!(head, 3);
        let OutboxChunk::Records(records) = a.store.outbox_read(&cid(), 3, 10).await.unwrap()
        else {
            panic!("the snapshot should be readable");
        };
        let gap = proto::sync::GapRecord {
            opens: false,
            first_seq: 1,
            last_seq: 2,
            span,
            exact: true,
        };
        let item = Inbound::Records(Apply {
            opens: false,
            first_seq: 3,
            last_seq: 3,
            records,
        });
        b.store
            .sync_apply(&cid(), vec![Inbound::Gap(gap), item], 11 * PART)
            .await
            .unwrap();
        assert_eq!(b.device("dev1").await.unwrap().tags["floor"], "9");
    }

    /// A batch of device records and points together: each point lands on its own device's
    /// row, after the records before it (an apply looks a batch's device rows up together
    /// only for a batch of points alone, `device_ids::rows_of`).
    #[tokio::test]
    async fn points_after_a_device_record_in_one_batch_land_on_their_own_devices() {
        let (a, b) = pair().await;
        a.store
            .create_device(&cid(), new_device("north", &[]), &admin())
            .await
            .unwrap();
        deliver(&a, &b).await;
        let (connector, setpoint) = (cid(), ResourceName::parse("setpoint").unwrap());
        let ingest = |points: &[(&str, i64, f64)]| {
            let points = points
                .iter()
                .map(|(dev, t, v)| PointsIn {
                    identity: id(dev),
                    t: *t,
                    values: vec![(setpoint.clone(), json!(v))],
                })
                .collect();
            a.store.ingest(&connector, points)
        };
        // The Target's apply of these puts both rows in its writer's cache.
        ingest(&[("dev1", 1, 1.0), ("north", 1, 2.0)])
            .await
            .unwrap();
        deliver(&a, &b).await;
        a.store
            .create_device(&cid(), new_device("gate-3", &[]), &admin())
            .await
            .unwrap();
        ingest(&[("dev1", 2, 10.0), ("north", 2, 20.0)])
            .await
            .unwrap();
        let records = deliver(&a, &b).await;
        assert!(matches!(records.first(), Some(Record::Device(_))));
        assert_eq!(records.len(), 3);
        let n = |v: f64| Value::Number(v);
        assert_eq!(
            series(&b.store, "dev1", "setpoint").await,
            [(1, n(1.0)), (2, n(10.0))]
        );
        assert_eq!(
            series(&b.store, "north", "setpoint").await,
            [(1, n(2.0)), (2, n(20.0))]
        );
    }
}
