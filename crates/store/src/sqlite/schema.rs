//! Opening connections and migrating the schema: the SQL files of `crates/store/migrations`
//! applied in order, each in its own transaction, recorded in `schema_migrations`.
//!
//! Invariants: a migration applies entirely or not at all; a database newer than this
//! build's last migration is opened as it is (nothing is applied backwards).
//!
//! Deliberately absent: down-migrations, and any migration written in Rust (a migration is
//! SQL that a reviewer reads in one file).

use super::*;

pub(super) const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_init.sql")),
    (2, include_str!("../../migrations/0002_pairing.sql")),
    (3, include_str!("../../migrations/0003_sync.sql")),
    (4, include_str!("../../migrations/0004_devices.sql")),
    (5, include_str!("../../migrations/0005_pairing_confirm.sql")),
    (6, include_str!("../../migrations/0006_point_log.sql")),
    (7, include_str!("../../migrations/0007_outbox_is_log.sql")),
    (8, include_str!("../../migrations/0008_point_batches.sql")),
    (9, include_str!("../../migrations/0009_sync_budget.sql")),
    (10, include_str!("../../migrations/0010_outbox_records.sql")),
    (11, include_str!("../../migrations/0011_alarms.sql")),
    (12, include_str!("../../migrations/0012_sync_lanes.sql")),
    (13, include_str!("../../migrations/0013_device_audit.sql")),
    (
        14,
        include_str!("../../migrations/0014_bucket_retention.sql"),
    ),
    (15, include_str!("../../migrations/0015_backfills.sql")),
];

/// A connection to the database with the store's settings (WAL, the synchronous level,
/// foreign keys, a busy timeout) and a page cache of `cache_mib`.
pub(super) fn open_connection(config: &SqliteConfig, cache_mib: u32) -> Result<Connection> {
    let conn = Connection::open(&config.path).map_err(backend("opening the database"))?;
    let sync = match config.synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {sync};
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -{};",
        u64::from(cache_mib) * 1024
    ))
    .map_err(backend("configuring the database"))?;
    // Outbox partitions are tables of their own: room for their statements besides the rest.
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// Applies every migration newer than the database, each in its own transaction.
pub(super) fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .map_err(backend("creating the migration table"))?;
    let current: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(backend("reading the schema version"))?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let script = format!(
            "BEGIN; {sql}\nINSERT INTO schema_migrations VALUES ({version}, {}); COMMIT;",
            now_micros()
        );
        conn.execute_batch(&script).map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            StoreError::Backend {
                op: "migrating the schema",
                source: Box::new(e),
            }
        })?;
        tracing::info!(version, "applied schema migration");
    }
    Ok(())
}
