//! The [`Store`] trait implemented on [`SqliteStore`]: each method is one job of the
//! writer (writes) or one pooled read, calling the SQL of the other modules.
//!
//! Invariants: the trait's (`lib.rs`): an `Err` changed nothing (the job's savepoint rolled
//! back), an `Ok` of a write is durable; reads of points and latest values lock the tail
//! before their first statement (`series.rs`).
//!
//! Deliberately absent: SQL beyond the simple registry statements (points are in
//! `series.rs`, sync in `sync.rs`, device records in `devices.rs`).

use std::borrow::Cow;

use super::*;

/// Appends a set of points to the point log, and queues those of remote-synced resources in
/// the outbox of a paired Source (`now` stamps the outbox partition); the caller's savepoint
/// undoes everything if this fails. No per-series page is touched: `latest` and the blocks
/// are written when the log is folded.
pub(super) fn ingest_points(
    conn: &Connection,
    cid: &ConnectorId,
    batch: &[PointsIn],
    now: i64,
    partition_us: i64,
) -> Result<usize> {
    connector_exists(conn, cid)?;
    let resources = resource_rows(conn, cid)?;
    let mut outbox = sync::appender(conn, cid, now, partition_us)?;
    // The rows of the request's devices from the writer's cache at once (a request for a
    // thousand devices found each one's entry cold); the others looked up one by one.
    let known = device_ids::rows_of(conn, cid, batch.iter().map(|p| &p.identity))?;
    let mut devices: foldhash::HashMap<&Identity, i64> = foldhash::HashMap::default();
    let mut stored = 0;
    for (i, p) in batch.iter().enumerate() {
        model::check_timestamp(p.t)?;
        let device = match (known.get(i).copied().flatten(), devices.get(&p.identity)) {
            (Some(row), _) if row.locked => {
                return Err(StoreError::DeviceLocked(p.identity.clone()));
            }
            (Some(row), _) => row.id,
            (None, Some(id)) => *id,
            (None, None) => {
                let id = writable_device_id(conn, cid, &p.identity)?;
                devices.insert(&p.identity, id);
                id
            }
        };
        for (name, raw) in &p.values {
            let res = resources
                .get(name)
                .ok_or_else(|| StoreError::ResourceNotFound(name.clone()))?;
            let value = res.format.check(name, raw)?;
            if res.remote_sync
                && let Some(outbox) = &mut outbox
                && outbox.points
            {
                // The outbox record is the point's log entry: stored once.
                outbox.push(conn, &p.identity, name, p.t, &value)?;
                series::put(
                    (device, res.id),
                    (cid, Cow::Borrowed(&p.identity), Cow::Borrowed(name)),
                    p.t,
                    value,
                );
            } else {
                series::append(
                    conn,
                    (device, res.id),
                    (cid, Cow::Borrowed(&p.identity), Cow::Borrowed(name)),
                    p.t,
                    value,
                )?;
            }
            stored += 1;
        }
    }
    if let Some(outbox) = outbox {
        outbox.finish(conn)?;
    }
    Ok(stored)
}

#[async_trait]
impl Store for SqliteStore {
    async fn user_count(&self) -> Result<u64> {
        self.read(|conn| {
            conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get::<_, i64>(0))
                .map(|n| u64::try_from(n).unwrap_or(0))
                .map_err(backend("counting users"))
        })
        .await
    }

    async fn create_user(&self, username: &str, password_hash: &str) -> Result<UserRow> {
        let (username, hash) = (username.to_owned(), password_hash.to_owned());
        self.write(move |conn| {
            let created_at = now_micros();
            conn.execute(
                "INSERT INTO users (username, password_hash, created_at) VALUES (?1, ?2, ?3)",
                params![username, hash, created_at],
            )
            .map_err(unique_or(
                StoreError::UserExists(username.clone()),
                "creating a user",
            ))?;
            Ok(UserRow {
                username,
                created_at,
            })
        })
        .await
    }

    async fn set_password(&self, username: &str, password_hash: &str) -> Result<()> {
        let (username, hash) = (username.to_owned(), password_hash.to_owned());
        self.write(move |conn| {
            let changed = conn
                .execute(
                    "UPDATE users SET password_hash = ?2 WHERE username = ?1",
                    params![username, hash],
                )
                .map_err(backend("setting a password"))?;
            if changed == 0 {
                return Err(StoreError::UserNotFound(username));
            }
            conn.execute("DELETE FROM tokens WHERE username = ?1", [&username])
                .map_err(backend("revoking tokens"))?;
            Ok(())
        })
        .await
    }

    async fn list_users(&self, after: Option<&str>, limit: usize) -> Result<Vec<UserRow>> {
        let after = after.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT username, created_at FROM users
                     WHERE ?1 IS NULL OR username > ?1 ORDER BY username LIMIT ?2",
                )
                .map_err(backend("listing users"))?;
            stmt.query_map(params![after, limit], |r| {
                Ok(UserRow {
                    username: r.get(0)?,
                    created_at: r.get(1)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(backend("listing users"))
        })
        .await
    }

    async fn existing_users(&self, names: &[String]) -> Result<Vec<String>> {
        let names = names.to_vec();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT 1 FROM users WHERE username = ?1")
                .map_err(backend("looking up users"))?;
            let mut found = Vec::new();
            for name in names {
                if stmt.exists([&name]).map_err(backend("looking up users"))? {
                    found.push(name);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn delete_user(&self, username: &str) -> Result<()> {
        let username = username.to_owned();
        self.write(move |conn| {
            conn.execute("DELETE FROM tokens WHERE username = ?1", [&username])
                .map_err(backend("revoking tokens"))?;
            let removed = conn
                .execute("DELETE FROM users WHERE username = ?1", [&username])
                .map_err(backend("removing a user"))?;
            if removed == 0 {
                return Err(StoreError::UserNotFound(username));
            }
            Ok(())
        })
        .await
    }

    async fn password_hash(&self, username: &str) -> Result<Option<String>> {
        let username = username.to_owned();
        self.read(move |conn| {
            conn.query_row(
                "SELECT password_hash FROM users WHERE username = ?1",
                [&username],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend("reading a password hash"))
        })
        .await
    }

    async fn create_token(&self, token: TokenHash, username: &str, expires_at: i64) -> Result<()> {
        let username = username.to_owned();
        self.write(move |conn| {
            let now = now_micros();
            conn.execute("DELETE FROM tokens WHERE expires_at < ?1", [now])
                .map_err(backend("expiring tokens"))?;
            conn.execute(
                "INSERT INTO tokens (hash, username, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![&token[..], username, now, expires_at],
            )
            .map_err(backend("creating a token"))?;
            Ok(())
        })
        .await
    }

    async fn token_user(&self, token: TokenHash, now: i64) -> Result<Option<String>> {
        self.read(move |conn| {
            conn.prepare_cached("SELECT username FROM tokens WHERE hash = ?1 AND expires_at > ?2")
                .and_then(|mut s| {
                    s.query_row(params![&token[..], now], |r| r.get(0))
                        .optional()
                })
                .map_err(backend("checking a token"))
        })
        .await
    }

    async fn delete_token(&self, token: TokenHash) -> Result<()> {
        self.write(move |conn| {
            conn.execute("DELETE FROM tokens WHERE hash = ?1", [&token[..]])
                .map_err(backend("deleting a token"))?;
            Ok(())
        })
        .await
    }

    async fn create_connector(&self, new: NewConnector) -> Result<Connector> {
        self.write(move |conn| {
            connector_name_free(conn, &new.name, None)?;
            conn.execute(
                "INSERT INTO connectors (id, name, description, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![new.id.as_str(), new.name, new.description, new.created_at],
            )
            .map_err(backend("creating a connector"))?;
            get_connector(conn, &new.id)
        })
        .await
    }

    async fn list_connectors(&self) -> Result<Vec<Connector>> {
        self.read(|conn| {
            let sql = format!("SELECT {CONNECTOR_COLUMNS} FROM connectors c ORDER BY c.name, c.id");
            let mut stmt = conn
                .prepare_cached(&sql)
                .map_err(backend("listing connectors"))?;
            let rows = stmt
                .query_map([], connector_row)
                .map_err(backend("listing connectors"))?;
            rows.map(|r| connector_from(r.map_err(backend("listing connectors"))?))
                .collect()
        })
        .await
    }

    async fn connector(&self, id: &ConnectorId) -> Result<Connector> {
        let id = id.clone();
        self.read(move |conn| get_connector(conn, &id)).await
    }

    async fn delete_connector(&self, id: &ConnectorId) -> Result<()> {
        let id = id.clone();
        self.write(move |conn| {
            connector_exists(conn, &id)?;
            let devices = select_rows(
                conn,
                "SELECT id FROM devices WHERE connector = ?1",
                [id.as_str()],
                |r| r.get::<_, i64>(0),
                "deleting a connector",
            )?;
            for device in devices {
                series::delete_device(conn, device)?;
            }
            for sql in [
                "DELETE FROM latest WHERE device IN (SELECT id FROM devices WHERE connector = ?1)",
                "DELETE FROM connectors WHERE id = ?1",
            ] {
                conn.execute(sql, [id.as_str()])
                    .map_err(backend("deleting a connector"))?;
            }
            Ok(())
        })
        .await
    }

    async fn update_connector(&self, id: &ConnectorId, patch: ConnectorPatch) -> Result<Connector> {
        let id = id.clone();
        self.write(move |conn| {
            connector_exists(conn, &id)?;
            if let Some(name) = &patch.name {
                connector_name_free(conn, name, Some(&id))?;
            }
            conn.execute(
                "UPDATE connectors SET name = COALESCE(?2, name),
                     description = COALESCE(?3, description)
                 WHERE id = ?1",
                params![id.as_str(), patch.name, patch.description],
            )
            .map_err(backend("updating a connector"))?;
            get_connector(conn, &id)
        })
        .await
    }

    async fn open_pairing(
        &self,
        cid: &ConnectorId,
        code: &str,
        expires_at: i64,
    ) -> Result<Connector> {
        let (cid, code) = (cid.clone(), code.to_owned());
        self.write(move |conn| {
            let c = get_connector(conn, &cid)?;
            match (c.role, c.state) {
                (_, SyncState::Paired) => {
                    return Err(StoreError::SyncState {
                        connector: cid,
                        reason: "it is already paired",
                    });
                }
                (Role::Target, _) => {
                    return Err(StoreError::SyncState {
                        connector: cid,
                        reason: "it is a Remote-Sync target",
                    });
                }
                _ => {}
            }
            conn.execute(
                "UPDATE connectors SET role = 'source', sync_state = 'pairing', pairing_code = ?2,
                     pairing_expires_at = ?3, pairing_failed_attempts = 0
                 WHERE id = ?1",
                params![cid.as_str(), code, expires_at],
            )
            .map_err(backend("opening a pairing window"))?;
            get_connector(conn, &cid)
        })
        .await
    }

    async fn pairing_window(&self, cid: &ConnectorId) -> Result<Option<PairingWindowRow>> {
        let cid = cid.clone();
        self.read(move |conn| {
            connector_exists(conn, &cid)?;
            let row = conn
                .query_row(
                    "SELECT pairing_code, pairing_expires_at, pairing_failed_attempts
                     FROM connectors WHERE id = ?1 AND sync_state = 'pairing'",
                    [cid.as_str()],
                    |r| {
                        Ok((
                            r.get::<_, Option<String>>(0)?,
                            r.get::<_, Option<i64>>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    },
                )
                .optional()
                .map_err(backend("reading a pairing window"))?;
            Ok(match row {
                Some((Some(code), Some(expires_at), failed)) => Some(PairingWindowRow {
                    code,
                    expires_at,
                    failed_attempts: u32::try_from(failed).unwrap_or(u32::MAX),
                }),
                _ => None,
            })
        })
        .await
    }

    async fn record_failed_attempt(&self, cid: &ConnectorId) -> Result<u32> {
        let cid = cid.clone();
        self.write(move |conn| {
            connector_exists(conn, &cid)?;
            let n: i64 = conn
                .query_row(
                    "UPDATE connectors SET pairing_failed_attempts = pairing_failed_attempts + 1
                     WHERE id = ?1 RETURNING pairing_failed_attempts",
                    [cid.as_str()],
                    |r| r.get(0),
                )
                .map_err(backend("counting a failed pairing attempt"))?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
        .await
    }

    async fn close_pairing(&self, cid: &ConnectorId) -> Result<Connector> {
        let cid = cid.clone();
        self.write(move |conn| {
            let c = get_connector(conn, &cid)?;
            if c.state == SyncState::Paired {
                return Err(StoreError::SyncState {
                    connector: cid,
                    reason: "it is paired, and a pairing cannot be undone",
                });
            }
            conn.execute(
                "UPDATE connectors SET role = 'none', sync_state = 'disabled', pairing_code = NULL,
                     pairing_expires_at = NULL, pairing_failed_attempts = 0
                 WHERE id = ?1 AND sync_state = 'pairing'",
                [cid.as_str()],
            )
            .map_err(backend("closing a pairing window"))?;
            get_connector(conn, &cid)
        })
        .await
    }

    async fn complete_pairing(
        &self,
        cid: &ConnectorId,
        peer: Peer,
        keys: ConnectorKeys,
        paired_at: i64,
    ) -> Result<Connector> {
        let cid = cid.clone();
        let (clock, partition_us) = (self.config.clock.clone(), self.config.sync_partition_us);
        self.write(move |conn| {
            let c = get_connector(conn, &cid)?;
            if c.state != SyncState::Pairing {
                return Err(StoreError::SyncState {
                    connector: cid,
                    reason: "it has no open pairing window",
                });
            }
            conn.execute(
                "UPDATE connectors SET role = 'source', sync_state = 'paired', pairing_code = NULL,
                     pairing_expires_at = NULL, pairing_failed_attempts = 0, pairing_confirmed = 0,
                     peer_site = ?2, peer_connector = ?3, paired_at = ?4,
                     static_private = ?5, static_public = ?6, peer_static_public = ?7
                 WHERE id = ?1",
                params![
                    cid.as_str(),
                    peer.site,
                    peer.connector_id.as_str(),
                    paired_at,
                    &keys.static_private[..],
                    &keys.static_public[..],
                    &keys.peer_static_public[..]
                ],
            )
            .map_err(backend("completing a pairing"))?;
            // The Target starts from the Source's registry: every device known here goes
            // out first, before any data that needs it.
            let ids = devices::all_identities(conn, &cid)?;
            devices::resend(conn, &cid, &ids, clock.now(), partition_us, false)?;
            get_connector(conn, &cid)
        })
        .await
    }

    async fn create_target_connector(
        &self,
        new: NewConnector,
        peer: Peer,
        keys: ConnectorKeys,
    ) -> Result<Connector> {
        self.write(move |conn| {
            connector_name_free(conn, &new.name, None)?;
            conn.execute(
                "INSERT INTO connectors (id, name, description, created_at, role, sync_state,
                     peer_site, peer_connector, paired_at, static_private, static_public,
                     peer_static_public)
                 VALUES (?1, ?2, ?3, ?4, 'target', 'paired', ?5, ?6, ?4, ?7, ?8, ?9)",
                params![
                    new.id.as_str(),
                    new.name,
                    new.description,
                    new.created_at,
                    peer.site,
                    peer.connector_id.as_str(),
                    &keys.static_private[..],
                    &keys.static_public[..],
                    &keys.peer_static_public[..]
                ],
            )
            .map_err(backend("creating a target connector"))?;
            get_connector(conn, &new.id)
        })
        .await
    }

    async fn connector_keys(&self, cid: &ConnectorId) -> Result<Option<ConnectorKeys>> {
        let cid = cid.clone();
        self.read(move |conn| {
            connector_exists(conn, &cid)?;
            let row = conn
                .query_row(
                    "SELECT static_private, static_public, peer_static_public FROM connectors
                     WHERE id = ?1",
                    [cid.as_str()],
                    |r| {
                        Ok((
                            r.get::<_, Option<Vec<u8>>>(0)?,
                            r.get::<_, Option<Vec<u8>>>(1)?,
                            r.get::<_, Option<Vec<u8>>>(2)?,
                        ))
                    },
                )
                .map_err(backend("reading connector keys"))?;
            let key = |v: Vec<u8>| <[u8; 32]>::try_from(v.as_slice()).ok();
            Ok(match row {
                (Some(a), Some(b), Some(c)) => match (key(a), key(b), key(c)) {
                    (Some(static_private), Some(static_public), Some(peer_static_public)) => {
                        Some(ConnectorKeys {
                            static_private,
                            static_public,
                            peer_static_public,
                        })
                    }
                    _ => None,
                },
                _ => None,
            })
        })
        .await
    }

    async fn create_resource(&self, cid: &ConnectorId, new: NewResource) -> Result<Resource> {
        let cid = cid.clone();
        self.write(move |conn| {
            connector_exists(conn, &cid)?;
            conn.execute(
                "INSERT INTO resources (connector, name, format, unit, settable, remote_sync, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    cid.as_str(),
                    new.name.as_str(),
                    new.format.as_str(),
                    new.unit,
                    new.settable,
                    new.remote_sync,
                    new.created_at
                ],
            )
            .map_err(unique_or(
                StoreError::ResourceExists(new.name.clone()),
                "creating a resource",
            ))?;
            // Points replicated before the resource existed are applied now.
            sync::adopt_pending(conn, &cid, &new.name, new.created_at)?;
            // So is configuration the peer set for it.
            if new.settable {
                devices::adopt_config(conn, &cid, &new.name, new.created_at)?;
            }
            get_resource(conn, &cid, &new.name)
        })
        .await
    }

    async fn resources(&self, cid: &ConnectorId) -> Result<Vec<Resource>> {
        let cid = cid.clone();
        self.read(move |conn| {
            connector_exists(conn, &cid)?;
            let names = select_rows(
                conn,
                "SELECT name FROM resources WHERE connector = ?1 ORDER BY name",
                [cid.as_str()],
                |r| r.get::<_, String>(0),
                "listing resources",
            )?;
            names
                .into_iter()
                .map(|n| get_resource(conn, &cid, &resource_col(n, "reading a resource name")?))
                .collect()
        })
        .await
    }

    async fn update_resource(
        &self,
        cid: &ConnectorId,
        name: &ResourceName,
        patch: ResourcePatch,
    ) -> Result<Resource> {
        let (cid, name) = (cid.clone(), name.clone());
        self.write(move |conn| {
            connector_exists(conn, &cid)?;
            let current = get_resource(conn, &cid, &name)?;
            let unit = patch.unit.unwrap_or(current.unit);
            let settable = patch.settable.unwrap_or(current.settable);
            let remote_sync = patch.remote_sync.unwrap_or(current.remote_sync);
            if remote_sync != current.remote_sync {
                // The series' unfolded points move from the outbox to the log or back:
                // fold them first, so that none is in both (series.rs).
                series::fold_unfolded_outbox(conn)?;
            }
            conn.execute(
                "UPDATE resources SET unit = ?3, settable = ?4, remote_sync = ?5
                 WHERE connector = ?1 AND name = ?2",
                params![cid.as_str(), name.as_str(), unit, settable, remote_sync],
            )
            .map_err(backend("updating a resource"))?;
            get_resource(conn, &cid, &name)
        })
        .await
    }

    async fn delete_resource(&self, cid: &ConnectorId, name: &ResourceName) -> Result<()> {
        let (cid, name) = (cid.clone(), name.clone());
        self.write(move |conn| {
            connector_exists(conn, &cid)?;
            let id = resource_rows(conn, &cid)?
                .get(&name)
                .ok_or_else(|| StoreError::ResourceNotFound(name.clone()))?
                .id;
            series::delete_resource(conn, id)?;
            // `config` rows go with the resource (ON DELETE CASCADE).
            for sql in [
                "DELETE FROM latest WHERE resource = ?1",
                "DELETE FROM resources WHERE id = ?1",
            ] {
                conn.prepare_cached(sql)
                    .and_then(|mut s| s.execute([id]))
                    .map_err(backend("deleting a resource"))?;
            }
            Ok(())
        })
        .await
    }

    async fn resource_usage(
        &self,
        cid: &ConnectorId,
        name: &ResourceName,
    ) -> Result<ResourceUsage> {
        let (cid, name) = (cid.clone(), name.clone());
        let tail = Arc::clone(&self.tail);
        self.read(move |conn| {
            let held = lock_tail(&tail)?;
            connector_exists(conn, &cid)?;
            let id = resource_rows(conn, &cid)?
                .get(&name)
                .ok_or_else(|| StoreError::ResourceNotFound(name.clone()))?
                .id;
            let times = held.times(id);
            drop(held);
            series::usage(conn, id, times)
        })
        .await
    }

    async fn create_device(&self, cid: &ConnectorId, new: NewDevice, by: &Actor) -> Result<Device> {
        let (cid, by) = (cid.clone(), by.clone());
        let tail = Arc::clone(&self.tail);
        self.write_device(move |conn, ctx| {
            connector_exists(conn, &cid)?;
            model::check_tags(&new.tags)?;
            model::check_permissions(&new.permissions)?;
            // A tombstone, when the device existed once: the create must outrank its delete.
            let before = devices::record(conn, &cid, &new.identity)?;
            conn.execute(
                "INSERT INTO devices (connector, identity, tags, permissions, state, token_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    cid.as_str(),
                    new.identity.as_str(),
                    to_json_text(&new.tags, "writing tags")?,
                    to_json_text(&new.permissions, "writing permissions")?,
                    new.state.as_str(),
                    &new.token[..],
                    new.created_at
                ],
            )
            .map_err(unique_or(
                StoreError::DeviceExists(new.identity.clone()),
                "creating a device",
            ))?;
            let fields = proto::sync::DeviceEdit {
                state: Some(new.state),
                permissions: Some(new.permissions.clone()),
                tags: new.tags.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect(),
                config: BTreeMap::new(),
            };
            devices::local_change(
                conn,
                &cid,
                &new.identity,
                before,
                devices::LocalEdit::Create(fields),
                &by,
                ctx,
            )?;
            get_device(conn, &cid, &new.identity, Some(&*lock_tail(&tail)?))
        })
        .await
    }

    async fn devices(&self, cid: &ConnectorId, query: DeviceQuery) -> Result<Vec<Device>> {
        let cid = cid.clone();
        let tail = Arc::clone(&self.tail);
        self.read(move |conn| {
            let held = lock_tail(&tail)?;
            connector_exists(conn, &cid)?;
            let resources = resources_by_id(conn, &cid)?;
            let seen = device_list::needs_last_seen(&query)
                .then(|| held.newest_times(|r| resources.contains_key(&r)));
            let rows = device_list::page(conn, &cid, &query, seen.as_ref())?;
            let newest: Vec<_> = rows.iter().map(|row| held.newest(row.0)).collect();
            drop(held);
            rows.into_iter()
                .zip(newest)
                .map(|(row, newest)| load_device(conn, &resources, row, newest))
                .collect()
        })
        .await
    }

    async fn device(&self, cid: &ConnectorId, identity: &Identity) -> Result<Device> {
        let (cid, identity) = (cid.clone(), identity.clone());
        let tail = Arc::clone(&self.tail);
        self.read(move |conn| {
            let held = lock_tail(&tail)?;
            connector_exists(conn, &cid)?;
            get_device(conn, &cid, &identity, Some(&held))
        })
        .await
    }

    async fn update_device(
        &self,
        cid: &ConnectorId,
        identity: &Identity,
        patch: DevicePatch,
        by: &Actor,
    ) -> Result<Device> {
        let (cid, identity, by) = (cid.clone(), identity.clone(), by.clone());
        let tail = Arc::clone(&self.tail);
        self.write_device(move |conn, ctx| {
            connector_exists(conn, &cid)?;
            let id = device_id(conn, &cid, &identity)?;
            let before = devices::record(conn, &cid, &identity)?;
            let mut config_change = BTreeMap::new();
            if let Some(tags) = &patch.tags {
                model::check_tags(tags)?;
                conn.execute(
                    "UPDATE devices SET tags = ?2 WHERE id = ?1",
                    params![id, to_json_text(tags, "writing tags")?],
                )
                .map_err(backend("updating tags"))?;
            }
            if let Some(perms) = &patch.permissions {
                model::check_permissions(perms)?;
                conn.execute(
                    "UPDATE devices SET permissions = ?2 WHERE id = ?1",
                    params![id, to_json_text(perms, "writing permissions")?],
                )
                .map_err(backend("updating permissions"))?;
            }
            if let Some(state) = patch.state {
                conn.execute(
                    "UPDATE devices SET state = ?2 WHERE id = ?1",
                    params![id, state.as_str()],
                )
                .map_err(backend("updating the state"))?;
            }
            if let Some(config) = &patch.config {
                let resources = resource_rows(conn, &cid)?;
                for (name, raw) in config {
                    let res = resources
                        .get(name)
                        .ok_or_else(|| StoreError::ResourceNotFound(name.clone()))?;
                    if !res.settable {
                        return Err(StoreError::NotSettable(name.clone()));
                    }
                    match raw {
                        None => {
                            config_change.insert(name.clone(), None);
                            conn.execute(
                                "DELETE FROM config WHERE device = ?1 AND resource = ?2",
                                params![id, res.id],
                            )
                        }
                        Some(raw) => {
                            let value = res.format.check(name, raw)?;
                            let written = conn.execute(
                                "INSERT INTO config (device, resource, v) VALUES (?1, ?2, ?3)
                                 ON CONFLICT (device, resource) DO UPDATE SET v = excluded.v",
                                params![id, res.id, value_to_sql(&value)],
                            );
                            config_change.insert(name.clone(), Some(value));
                            written
                        }
                    }
                    .map_err(backend("updating configuration"))?;
                }
            }
            let edit = devices::EditFields {
                tags: patch.tags,
                permissions: patch.permissions,
                state: patch.state,
                config: config_change,
            };
            devices::local_change(
                conn,
                &cid,
                &identity,
                before,
                devices::LocalEdit::Edit(edit),
                &by,
                ctx,
            )?;
            get_device(conn, &cid, &identity, Some(&*lock_tail(&tail)?))
        })
        .await
    }

    async fn delete_device(
        &self,
        cid: &ConnectorId,
        identity: &Identity,
        by: &Actor,
    ) -> Result<()> {
        let (cid, identity, by) = (cid.clone(), identity.clone(), by.clone());
        self.write_device(move |conn, ctx| {
            connector_exists(conn, &cid)?;
            let id = device_id(conn, &cid, &identity)?;
            let before = devices::record(conn, &cid, &identity)?;
            devices::delete_rows(conn, id)?;
            devices::local_change(
                conn,
                &cid,
                &identity,
                before,
                devices::LocalEdit::Delete,
                &by,
                ctx,
            )
        })
        .await
    }

    async fn set_device_token(
        &self,
        cid: &ConnectorId,
        identity: &Identity,
        token: TokenHash,
        by: &Actor,
    ) -> Result<()> {
        let (cid, identity, by) = (cid.clone(), identity.clone(), by.clone());
        self.write_device(move |conn, ctx| {
            connector_exists(conn, &cid)?;
            let n = conn
                .execute(
                    "UPDATE devices SET token_hash = ?3 WHERE connector = ?1 AND identity = ?2",
                    params![cid.as_str(), identity.as_str(), &token[..]],
                )
                .map_err(backend("replacing a device token"))?;
            if n == 0 {
                return Err(StoreError::DeviceNotFound(identity));
            }
            audit::insert(conn, &cid, &identity, ctx.now, &by, AuditAction::Token, &[])
        })
        .await
    }

    fn known_device_token(&self, token: &TokenHash) -> Option<(ConnectorId, Identity)> {
        self.tokens.get(token)
    }

    async fn device_by_token(&self, token: TokenHash) -> Result<Option<(ConnectorId, Identity)>> {
        if let Some(device) = self.tokens.get(&token) {
            return Ok(Some(device));
        }
        // Before the read's snapshot begins: a revocation committed meanwhile moves it.
        let epoch = self.tokens.epoch();
        let device = self
            .read(move |conn| {
                let row = conn
                    .prepare_cached("SELECT connector, identity FROM devices WHERE token_hash = ?1")
                    .and_then(|mut s| {
                        s.query_row([&token[..]], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                        })
                        .optional()
                    })
                    .map_err(backend("checking a device token"))?;
                row.map(|(c, i)| {
                    Ok((
                        parse_col(c, |s| ConnectorId::parse(s).ok(), "reading a connector id")?,
                        identity_col(i)?,
                    ))
                })
                .transpose()
            })
            .await?;
        if let Some(device) = &device {
            self.tokens.keep(epoch, token, device.clone());
        }
        Ok(device)
    }

    async fn ingest(&self, cid: &ConnectorId, points: Vec<PointsIn>) -> Result<usize> {
        let cid = cid.clone();
        let (clock, partition_us) = (self.config.clock.clone(), self.config.sync_partition_us);
        self.write(move |conn| ingest_points(conn, &cid, &points, clock.now(), partition_us))
            .await
    }

    async fn points(
        &self,
        cid: &ConnectorId,
        identity: &Identity,
        resource: &ResourceName,
        query: RangeQuery,
    ) -> Result<Vec<Point>> {
        let (cid, identity, resource) = (cid.clone(), identity.clone(), resource.clone());
        let tail = Arc::clone(&self.tail);
        self.read(move |conn| {
            let held = lock_tail(&tail)?;
            connector_exists(conn, &cid)?;
            let device = device_id(conn, &cid, &identity)?;
            let resources = resource_rows(conn, &cid)?;
            let res = resources
                .get(&resource)
                .ok_or_else(|| StoreError::ResourceNotFound(resource.clone()))?;
            let (since, until) = match (query.order, query.after) {
                (Order::Asc, Some(after)) => {
                    (query.since.max(after.saturating_add(1)), query.until)
                }
                (Order::Desc, Some(after)) => (query.since, query.until.min(after)),
                (_, None) => (query.since, query.until),
            };
            let part = series::tail_part(
                &held,
                device,
                res.id,
                (since, until),
                query.order,
                query.limit,
            );
            drop(held);
            series::read(
                conn,
                (device, res.id),
                (since, until),
                query.order,
                query.limit,
                part,
            )
        })
        .await
    }

    fn live(&self) -> tokio::sync::broadcast::Receiver<Arc<LiveBatch>> {
        self.live.subscribe()
    }

    async fn sync_state(&self, cid: &ConnectorId) -> Result<SyncDurable> {
        let cid = cid.clone();
        self.read(move |conn| sync::state(conn, &cid)).await
    }

    async fn outbox_head(&self, cid: &ConnectorId) -> Result<u64> {
        let cid = cid.clone();
        self.read(move |conn| sync::head(conn, &cid)).await
    }

    async fn outbox_read(&self, cid: &ConnectorId, from: u64, max: usize) -> Result<OutboxChunk> {
        let cid = cid.clone();
        self.read(move |conn| sync::read(conn, &cid, (from, u64::MAX), max))
            .await
    }

    fn wake_on_append(&self, wake: Arc<dyn Fn(&ConnectorId) + Send + Sync>) -> bool {
        self.recent.set_waker(wake)
    }

    async fn outbox_head_read(&self, cid: &ConnectorId, from: u64, max: usize) -> Result<HeadRead> {
        // Usually the records the commit that woke the driver has just appended.
        if let Some((head, records, payload)) = self.recent.take(cid, from, max) {
            return Ok(HeadRead {
                head,
                chunk: OutboxChunk::Records(records),
                payload,
            });
        }
        let cid = cid.clone();
        self.read(move |conn| {
            let head = sync::head(conn, &cid)?;
            let chunk = if from <= head {
                sync::read(conn, &cid, (from, u64::MAX), max)?
            } else {
                OutboxChunk::Records(Vec::new())
            };
            Ok(HeadRead {
                head,
                chunk,
                payload: None,
            })
        })
        .await
    }

    async fn outbox_range(
        &self,
        cid: &ConnectorId,
        from: u64,
        until: u64,
        max: usize,
    ) -> Result<OutboxChunk> {
        let cid = cid.clone();
        self.read(move |conn| sync::read(conn, &cid, (from, until), max))
            .await
    }

    async fn outbox_lease(&self, cid: &ConnectorId, upto: u64) -> Result<()> {
        let cid = cid.clone();
        self.write(move |conn| sync::set_lease(conn, &cid, upto))
            .await
    }

    async fn outbox_open_live(&self, cid: &ConnectorId, records: u64) -> Result<(u64, u64)> {
        let cid = cid.clone();
        self.write_device(move |conn, ctx| {
            sync::open_live(conn, &cid, records, ctx.now, ctx.partition_us)
        })
        .await
    }

    async fn outbox_live_lease(&self, cid: &ConnectorId, from: u64, upto: u64) -> Result<()> {
        let cid = cid.clone();
        self.write(move |conn| sync::set_live_lease(conn, &cid, from, upto))
            .await
    }

    async fn outbox_acked(&self, cid: &ConnectorId, applied: u64) -> Result<()> {
        let cid = cid.clone();
        self.write(move |conn| sync::acked(conn, &cid, applied))
            .await
    }

    async fn points_expire(&self, before: i64) -> Result<PointsExpiry> {
        self.write(move |conn| series::expire_blocks(conn, before))
            .await
    }

    async fn sync_expire(&self, cid: &ConnectorId, retention: Retention) -> Result<ExpiryReport> {
        let cid = cid.clone();
        let partition_us = self.config.sync_partition_us;
        self.write(move |conn| sync::expire(conn, &cid, retention, partition_us))
            .await
    }

    async fn sync_budget(&self, cid: &ConnectorId) -> Result<Option<u64>> {
        let cid = cid.clone();
        self.read(move |conn| sync_site::budget(conn, &cid)).await
    }

    async fn set_sync_budget(&self, cid: &ConnectorId, max_bytes_per_s: Option<u64>) -> Result<()> {
        let cid = cid.clone();
        self.write(move |conn| sync_site::set_budget(conn, &cid, max_bytes_per_s))
            .await
    }

    async fn alarm_settings(&self) -> Result<Vec<(ConnectorId, AlarmSettings)>> {
        self.read(alarms::settings).await
    }

    async fn set_alarm_settings(&self, cid: &ConnectorId, settings: AlarmSettings) -> Result<()> {
        let cid = cid.clone();
        self.write(move |conn| alarms::set_settings(conn, &cid, settings))
            .await
    }

    async fn raise_alarm(&self, alarm: NewAlarm) -> Result<AlarmRow> {
        self.write(move |conn| alarms::raise(conn, &alarm)).await
    }

    async fn clear_alarm(&self, id: i64, at: i64, keep: usize) -> Result<Option<AlarmRow>> {
        self.write(move |conn| alarms::clear(conn, id, at, keep))
            .await
    }

    async fn alarms(&self, query: AlarmQuery) -> Result<Vec<AlarmRow>> {
        self.read(move |conn| alarms::list(conn, &query)).await
    }

    async fn sync_expiring(&self, retention: Retention) -> Result<Vec<ConnectorId>> {
        let partition_us = self.config.sync_partition_us;
        self.read(move |conn| sync_site::expiring(conn, retention, partition_us))
            .await
    }

    async fn sync_apply(&self, cid: &ConnectorId, items: Vec<Inbound>, now: i64) -> Result<u64> {
        let cid = cid.clone();
        self.write(move |conn| sync::apply(conn, &cid, items, now))
            .await
    }

    async fn confirm_pairing(&self, cid: &ConnectorId) -> Result<bool> {
        let cid = cid.clone();
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE connectors SET pairing_confirmed = 1
                     WHERE id = ?1 AND sync_state = 'paired' AND pairing_confirmed = 0",
                    [cid.as_str()],
                )
                .map_err(backend("confirming a pairing"))?;
            Ok(n > 0)
        })
        .await
    }

    async fn cancel_unconfirmed_pairing(&self, cid: &ConnectorId) -> Result<Connector> {
        let cid = cid.clone();
        self.write(move |conn| {
            let c = get_connector(conn, &cid)?;
            if c.state != SyncState::Paired || c.role != Role::Source || c.pairing_confirmed {
                return Err(StoreError::SyncState {
                    connector: cid,
                    reason: "only a Source pairing its Target never confirmed can be cancelled",
                });
            }
            sync::forget(conn, &cid)?;
            conn.execute(
                "UPDATE connectors SET role = 'none', sync_state = 'disabled', peer_site = NULL,
                     peer_connector = NULL, paired_at = NULL, static_private = NULL,
                     static_public = NULL, peer_static_public = NULL, pairing_confirmed = 1
                 WHERE id = ?1",
                [cid.as_str()],
            )
            .map_err(backend("cancelling a pairing"))?;
            get_connector(conn, &cid)
        })
        .await
    }

    async fn resend_devices(&self, cid: &ConnectorId, identities: Vec<Identity>) -> Result<u64> {
        let cid = cid.clone();
        self.write_device(move |conn, ctx| {
            connector_exists(conn, &cid)?;
            devices::resend(conn, &cid, &identities, ctx.now, ctx.partition_us, true)
        })
        .await
    }

    async fn sync_requeue(&self, cid: &ConnectorId, req: Requeue) -> Result<Requeued> {
        let cid = cid.clone();
        let (clock, partition_us) = (self.config.clock.clone(), self.config.sync_partition_us);
        self.write(move |conn| sync_site::requeue(conn, &cid, &req, clock.now(), partition_us))
            .await
    }

    async fn save_backfill(
        &self,
        cid: &ConnectorId,
        view: proto::lookup::BackfillView,
        devices: Option<Vec<Identity>>,
    ) -> Result<()> {
        let cid = cid.clone();
        self.write(move |conn| backfill::save(conn, &cid, &view, devices.as_deref()))
            .await
    }

    async fn end_backfill(
        &self,
        cid: &ConnectorId,
        id: u64,
        state: proto::lookup::BackfillState,
        at: i64,
    ) -> Result<()> {
        let cid = cid.clone();
        self.write(move |conn| backfill::end(conn, &cid, id, state, at))
            .await
    }

    async fn backfills(&self) -> Result<Vec<StoredBackfill>> {
        self.read(backfill::all).await
    }

    async fn sync_gaps(&self, cid: &ConnectorId) -> Result<Vec<GapRow>> {
        let cid = cid.clone();
        self.read(move |conn| sync::gaps(conn, &cid)).await
    }

    async fn count_devices(&self, cid: &ConnectorId, query: DeviceQuery) -> Result<u64> {
        let cid = cid.clone();
        let tail = Arc::clone(&self.tail);
        self.read(move |conn| {
            let held = lock_tail(&tail)?;
            connector_exists(conn, &cid)?;
            let seen = match query.seen {
                Some(_) => {
                    let resources = resources_by_id(conn, &cid)?;
                    Some(held.newest_times(|r| resources.contains_key(&r)))
                }
                None => None,
            };
            device_list::count(conn, &cid, &query, seen.as_ref())
        })
        .await
    }

    async fn device_audit(&self, cid: &ConnectorId, query: AuditQuery) -> Result<Vec<AuditEntry>> {
        let cid = cid.clone();
        self.read(move |conn| {
            connector_exists(conn, &cid)?;
            audit::page(conn, &cid, &query)
        })
        .await
    }

    async fn sync_waiting(&self, cid: &ConnectorId) -> Result<Vec<WaitingResource>> {
        let cid = cid.clone();
        self.read(move |conn| waiting::waiting(conn, &cid)).await
    }
}
