//! Row mapping: values, ids and names between SQLite rows and the store's types, and the
//! small lookups every part of the store shares (a connector, its resources, a device).
//!
//! Invariants: a stored value is read back as the variant of its resource's format (one
//! that cannot be is shown as JSON text, never a failed read); a stored id or name that no
//! longer parses is a `Backend` error naming the read, never a panic.
//!
//! Deliberately absent: any write of the time series (`series.rs`) or of sync state
//! (`sync.rs`, `devices.rs`).

use super::*;

pub(super) fn value_to_sql(v: &Value) -> ToSqlOutput<'_> {
    match v {
        Value::Number(x) => ToSqlOutput::from(*x),
        Value::Integer(i) => ToSqlOutput::from(*i),
        Value::Boolean(b) => ToSqlOutput::from(i64::from(*b)),
        Value::String(s) | Value::Json(s) => ToSqlOutput::from(s.as_str()),
    }
}

pub(super) fn value_from_sql(format: Format, v: ValueRef<'_>) -> Value {
    match (format, v) {
        (Format::Number, ValueRef::Real(x)) => Value::Number(x),
        (Format::Number, ValueRef::Integer(i)) => Value::Number(i as f64),
        (Format::Integer, ValueRef::Integer(i)) => Value::Integer(i),
        (Format::Boolean, ValueRef::Integer(i)) => Value::Boolean(i != 0),
        (Format::String, ValueRef::Text(t)) => Value::String(String::from_utf8_lossy(t).into()),
        (Format::Json, ValueRef::Text(t)) => Value::Json(String::from_utf8_lossy(t).into()),
        // A value stored under another format cannot happen through this store; show it
        // as JSON text rather than failing the whole read.
        (_, other) => Value::Json(match other {
            ValueRef::Null => "null".into(),
            ValueRef::Integer(i) => i.to_string(),
            ValueRef::Real(x) => x.to_string(),
            ValueRef::Text(t) | ValueRef::Blob(t) => {
                serde_json::Value::from(String::from_utf8_lossy(t)).to_string()
            }
        }),
    }
}

pub(super) fn parse_col<T>(
    s: String,
    parse: impl FnOnce(&str) -> Option<T>,
    what: &'static str,
) -> Result<T> {
    parse(&s).ok_or_else(|| StoreError::Backend {
        op: what,
        source: format!("unexpected stored value {s:?}").into(),
    })
}

/// A stored device identity.
pub(super) fn identity_col(s: String) -> Result<Identity> {
    parse_col(s, |s| Identity::parse(s).ok(), "reading an identity")
}

/// A stored resource name; `what` names the read in the error.
pub(super) fn resource_col(s: String, what: &'static str) -> Result<ResourceName> {
    parse_col(s, |s| ResourceName::parse(s).ok(), what)
}

/// Every row of `stmt` run with `params`, mapped by `map`; `op` names the query in errors.
pub(super) fn collect_rows<T, P: rusqlite::Params>(
    stmt: &mut rusqlite::Statement<'_>,
    params: P,
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    op: &'static str,
) -> Result<Vec<T>> {
    stmt.query_map(params, map)
        .map_err(backend(op))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend(op))
}

/// Like [`collect_rows`], on the cached statement of `sql`.
pub(super) fn select_rows<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    op: &'static str,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend(op))?;
    collect_rows(&mut stmt, params, map, op)
}

/// An insert's error: `exists` where it broke a uniqueness constraint, else a backend
/// error of `op`.
pub(super) fn unique_or(
    exists: StoreError,
    op: &'static str,
) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| {
        if is_unique_violation(&e) {
            exists
        } else {
            backend(op)(e)
        }
    }
}

pub(super) fn connector_exists(conn: &Connection, cid: &ConnectorId) -> Result<()> {
    let found = conn
        .prepare_cached("SELECT 1 FROM connectors WHERE id = ?1")
        .and_then(|mut s| s.exists([cid.as_str()]))
        .map_err(backend("looking up a connector"))?;
    if found {
        Ok(())
    } else {
        Err(StoreError::ConnectorNotFound(cid.clone()))
    }
}

/// Refuses a connector name that another connector of this site has (`except`: the
/// connector being renamed), compared without regard to ASCII case.
pub(super) fn connector_name_free(
    conn: &Connection,
    name: &str,
    except: Option<&ConnectorId>,
) -> Result<()> {
    let taken = conn
        .prepare_cached("SELECT 1 FROM connectors WHERE lower(name) = lower(?1) AND id != ?2")
        .and_then(|mut s| s.exists([name, except.map_or("", ConnectorId::as_str)]))
        .map_err(backend("looking up a connector name"))?;
    if taken {
        Err(StoreError::ConnectorNameTaken(name.to_owned()))
    } else {
        Ok(())
    }
}

/// A resource's row id, format and settable flag.
pub(super) struct ResourceRow {
    pub(super) id: i64,
    pub(super) format: Format,
    pub(super) settable: bool,
    /// Whether the resource's points go to the outbox (on a paired Source).
    pub(super) remote_sync: bool,
}

pub(super) fn resource_rows(
    conn: &Connection,
    cid: &ConnectorId,
) -> Result<HashMap<ResourceName, ResourceRow>> {
    let rows = select_rows(
        conn,
        "SELECT id, name, format, settable, remote_sync FROM resources WHERE connector = ?1",
        [cid.as_str()],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, bool>(4)?,
            ))
        },
        "listing resources",
    )?;
    let mut out = HashMap::new();
    for (id, name, format, settable, remote_sync) in rows {
        let name = resource_col(name, "reading a resource name")?;
        let format = parse_col(
            format,
            |s| Format::parse(s).ok(),
            "reading a resource format",
        )?;
        out.insert(
            name,
            ResourceRow {
                id,
                format,
                settable,
                remote_sync,
            },
        );
    }
    Ok(out)
}

pub(super) fn device_id(conn: &Connection, cid: &ConnectorId, identity: &Identity) -> Result<i64> {
    conn.prepare_cached("SELECT id FROM devices WHERE connector = ?1 AND identity = ?2")
        .and_then(|mut s| {
            s.query_row([cid.as_str(), identity.as_str()], |r| r.get(0))
                .optional()
        })
        .map_err(backend("looking up a device"))?
        .ok_or_else(|| StoreError::DeviceNotFound(identity.clone()))
}

/// A device's row id, refused when the device is locked (from the writer's cache of rows,
/// `device_ids.rs`, when it runs on the writer).
pub(super) fn writable_device_id(
    conn: &Connection,
    cid: &ConnectorId,
    identity: &Identity,
) -> Result<i64> {
    let row = device_ids::lookup(conn, cid, identity)?
        .ok_or_else(|| StoreError::DeviceNotFound(identity.clone()))?;
    if row.locked {
        return Err(StoreError::DeviceLocked(identity.clone()));
    }
    Ok(row.id)
}

pub(super) const CONNECTOR_COLUMNS: &str =
    "c.id, c.name, c.description, c.created_at, c.role, c.sync_state,
    c.pairing_expires_at, c.peer_site, c.peer_connector, c.paired_at,
    (SELECT COUNT(*) FROM devices d WHERE d.connector = c.id),
    (SELECT COUNT(*) FROM resources r WHERE r.connector = c.id), c.pairing_confirmed";

pub(super) type ConnectorRow = (
    String,
    String,
    String,
    i64,
    String,
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    i64,
    i64,
    bool,
);

pub(super) fn connector_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConnectorRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
    ))
}

pub(super) fn connector_from(row: ConnectorRow) -> Result<Connector> {
    let (
        id,
        name,
        description,
        created_at,
        role,
        state,
        expires,
        peer_site,
        peer_cid,
        paired_at,
        devices,
        resources,
        confirmed,
    ) = row;
    let peer = match (peer_site, peer_cid) {
        (Some(site), Some(cid)) => Some(Peer {
            site,
            connector_id: parse_col(cid, |s| ConnectorId::parse(s).ok(), "reading a peer id")?,
        }),
        _ => None,
    };
    Ok(Connector {
        id: parse_col(id, |s| ConnectorId::parse(s).ok(), "reading a connector id")?,
        name,
        description,
        created_at,
        role: parse_col(role, Role::parse, "reading a role")?,
        state: parse_col(state, SyncState::parse, "reading a sync state")?,
        pairing_expires_at: expires,
        peer,
        paired_at,
        device_count: u64::try_from(devices).unwrap_or(0),
        resource_count: u64::try_from(resources).unwrap_or(0),
        pairing_confirmed: confirmed,
    })
}

pub(super) fn get_connector(conn: &Connection, cid: &ConnectorId) -> Result<Connector> {
    let sql = format!("SELECT {CONNECTOR_COLUMNS} FROM connectors c WHERE c.id = ?1");
    let row = conn
        .prepare_cached(&sql)
        .and_then(|mut s| s.query_row([cid.as_str()], connector_row).optional())
        .map_err(backend("reading a connector"))?
        .ok_or_else(|| StoreError::ConnectorNotFound(cid.clone()))?;
    connector_from(row)
}

pub(super) fn get_resource(
    conn: &Connection,
    cid: &ConnectorId,
    name: &ResourceName,
) -> Result<Resource> {
    let row = conn
        .prepare_cached(
            "SELECT format, unit, settable, remote_sync, created_at FROM resources
             WHERE connector = ?1 AND name = ?2",
        )
        .and_then(|mut s| {
            s.query_row([cid.as_str(), name.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .optional()
        })
        .map_err(backend("reading a resource"))?
        .ok_or_else(|| StoreError::ResourceNotFound(name.clone()))?;
    let (format, unit, settable, remote_sync, created_at) = row;
    Ok(Resource {
        name: name.clone(),
        format: parse_col(
            format,
            |s| Format::parse(s).ok(),
            "reading a resource format",
        )?,
        unit,
        settable,
        remote_sync,
        created_at,
    })
}

/// Reads one device with its configuration and latest values.
pub(super) fn load_device(
    conn: &Connection,
    resources: &HashMap<i64, (ResourceName, Format)>,
    row: DeviceRow,
    tail: HashMap<i64, (i64, Value)>,
) -> Result<Device> {
    let (id, identity, tags, permissions, state, created_at) = row;
    let mut config = BTreeMap::new();
    let mut stmt = conn
        .prepare_cached("SELECT resource, v FROM config WHERE device = ?1")
        .map_err(backend("reading configuration"))?;
    let mut rows = stmt.query([id]).map_err(backend("reading configuration"))?;
    while let Some(r) = rows.next().map_err(backend("reading configuration"))? {
        let rid: i64 = r.get(0).map_err(backend("reading configuration"))?;
        if let Some((name, format)) = resources.get(&rid) {
            let v = r.get_ref(1).map_err(backend("reading configuration"))?;
            config.insert(name.clone(), value_from_sql(*format, v));
        }
    }
    let mut values = BTreeMap::new();
    let mut stmt = conn
        .prepare_cached("SELECT resource, t, v FROM latest WHERE device = ?1")
        .map_err(backend("reading latest values"))?;
    let mut rows = stmt.query([id]).map_err(backend("reading latest values"))?;
    while let Some(r) = rows.next().map_err(backend("reading latest values"))? {
        let rid: i64 = r.get(0).map_err(backend("reading latest values"))?;
        if let Some((name, format)) = resources.get(&rid) {
            let t: i64 = r.get(1).map_err(backend("reading latest values"))?;
            let v = r.get_ref(2).map_err(backend("reading latest values"))?;
            values.insert(
                name.clone(),
                Point {
                    t,
                    v: value_from_sql(*format, v),
                },
            );
        }
    }
    // The unfolded tail's newest point wins over the folded one unless it is older.
    for (rid, (t, v)) in tail {
        if let Some((name, _)) = resources.get(&rid)
            && values.get(name).is_none_or(|p: &Point| t >= p.t)
        {
            values.insert(name.clone(), Point { t, v });
        }
    }
    Ok(Device {
        identity: identity_col(identity)?,
        tags: serde_json::from_str(&tags).map_err(|e| StoreError::Backend {
            op: "reading tags",
            source: Box::new(e),
        })?,
        permissions: serde_json::from_str(&permissions).map_err(|e| StoreError::Backend {
            op: "reading permissions",
            source: Box::new(e),
        })?,
        state: parse_col(state, DeviceState::parse, "reading a device state")?,
        config,
        values,
        created_at,
        sync_pending: devices::pending(conn, id)?,
    })
}

pub(super) type DeviceRow = (i64, String, String, String, String, i64);

pub(super) const DEVICE_COLUMNS: &str = "id, identity, tags, permissions, state, created_at";

pub(super) fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

pub(super) fn resources_by_id(
    conn: &Connection,
    cid: &ConnectorId,
) -> Result<HashMap<i64, (ResourceName, Format)>> {
    Ok(resource_rows(conn, cid)?
        .into_iter()
        .map(|(name, row)| (row.id, (name, row.format)))
        .collect())
}

/// Reads one device. With `tail` (locked by the caller before the read's first statement,
/// as `series.rs` requires), its latest values include the unfolded points; without, they
/// are the folded ones only (for callers that do not look at values).
pub(super) fn get_device(
    conn: &Connection,
    cid: &ConnectorId,
    identity: &Identity,
    tail: Option<&series::Tail>,
) -> Result<Device> {
    let sql =
        format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE connector = ?1 AND identity = ?2");
    let row = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row([cid.as_str(), identity.as_str()], device_row)
                .optional()
        })
        .map_err(backend("reading a device"))?
        .ok_or_else(|| StoreError::DeviceNotFound(identity.clone()))?;
    let newest = tail.map(|t| t.newest(row.0)).unwrap_or_default();
    load_device(conn, &resources_by_id(conn, cid)?, row, newest)
}

/// The tail, read-locked.
pub(super) fn lock_tail(
    tail: &RwLock<series::Tail>,
) -> Result<std::sync::RwLockReadGuard<'_, series::Tail>> {
    tail.read().map_err(|_| StoreError::Closed)
}

pub(super) fn to_json_text<T: serde::Serialize>(v: &T, op: &'static str) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend {
        op,
        source: Box::new(e),
    })
}

pub(super) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation
    )
}
