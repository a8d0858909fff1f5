//! The hub's registry in `hub.db` (SQLite, WAL): which sites may connect, the SHA-256 of
//! each one's credential, and the pairings each site has claimed for its connectors. `west hub add-site` and `remove-site` write it from another process
//! while the hub runs; the hub notices through [`Registry::changed`] and acts at once. A node
//! of a cluster uses [`crate::cluster::ClusterRegistry`] (on NATS) instead.
//!
//! Deliberately absent: the credentials themselves (only their hashes are stored; a
//! credential is shown once, by [`Registry::add_site`]) and any payload data.
//!
//! Invariants: a removed site keeps its row (with `removed_at` set and no hash) so that its
//! refusal can say "removed" rather than "unknown"; every issued credential bumps the row's
//! `generation`, which is how a connection learns that its credential was replaced.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use proto::wire::{Address, Pairing};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_sites.sql")),
    (2, include_str!("../migrations/0002_claims.sql")),
];

/// The registry file inside the hub's data dir.
pub const DB_FILE: &str = "hub.db";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("opening the registry {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{op} in the registry: {source}")]
    Sql {
        op: &'static str,
        source: rusqlite::Error,
    },
    #[error("{0:?} is not a valid site name (1 to 64 of a-z A-Z 0-9 . _ -)")]
    BadName(String),
    #[error("site {0} is already registered; remove it first to issue a new credential")]
    Exists(String),
    #[error("site {0} is not registered")]
    NotFound(String),
    #[error("drawing a random credential: {0}")]
    Random(String),
    /// The cluster's registry (a JetStream key-value bucket) could not be read or written.
    #[error("cluster registry: {0}")]
    Cluster(String),
    #[error("site {0} changed while this was being written; try again")]
    Conflict(String),
}

/// One row of the registry, as `list-sites` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SiteEntry {
    pub name: String,
    pub active: bool,
    pub generation: i64,
    /// µs since the Unix epoch.
    pub created_at: i64,
    pub removed_at: Option<i64>,
}

/// What the registry says about a site that presents a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted; the connection remembers the generation.
    Accepted {
        generation: i64,
    },
    UnknownSite,
    Removed,
    WrongCredential,
}

/// The registry. Cheap to share behind an `Arc`; every call is one short SQLite statement.
pub struct Registry {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("path", &self.path)
            .finish()
    }
}

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> RegistryError {
    move |source| RegistryError::Sql { op, source }
}

impl Registry {
    /// Opens (creating if needed) `hub.db` in `data_dir` and runs pending migrations. The
    /// directory must exist.
    pub fn open(data_dir: &Path) -> Result<Self, RegistryError> {
        let path = data_dir.join(DB_FILE);
        let open = |source| RegistryError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open)?;
        migrate(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path,
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves a connection that is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `name` (again, if it was removed) and returns its new credential, which is
    /// stored only as a hash.
    pub fn add_site(&self, name: &str) -> Result<String, RegistryError> {
        if !proto::wire::is_valid_name(name) {
            return Err(RegistryError::BadName(name.into()));
        }
        let credential = new_credential()?;
        let hash = credential_hash(&credential);
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sql("starting a transaction"))?;
        let existing: Option<(Option<String>, i64)> = tx
            .query_row(
                "SELECT credential_hash, generation FROM sites WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql("reading a site"))?;
        match existing {
            Some((Some(_), _)) => return Err(RegistryError::Exists(name.into())),
            Some((None, generation)) => {
                tx.execute(
                    "UPDATE sites SET credential_hash = ?2, generation = ?3, removed_at = NULL
                     WHERE name = ?1",
                    params![name, hash, generation + 1],
                )
                .map_err(sql("re-adding a site"))?;
            }
            None => {
                tx.execute(
                    "INSERT INTO sites (name, credential_hash, generation, created_at)
                     VALUES (?1, ?2, 1, ?3)",
                    params![name, hash, now_micros()],
                )
                .map_err(sql("adding a site"))?;
            }
        }
        tx.commit().map_err(sql("committing"))?;
        Ok(credential)
    }

    /// Removes `name`: its credential stops working, and a hub that runs cuts it off.
    pub fn remove_site(&self, name: &str) -> Result<(), RegistryError> {
        let n = self
            .conn()
            .execute(
                "UPDATE sites SET credential_hash = NULL, removed_at = ?2
                 WHERE name = ?1 AND credential_hash IS NOT NULL",
                params![name, now_micros()],
            )
            .map_err(sql("removing a site"))?;
        if n == 0 {
            return Err(RegistryError::NotFound(name.into()));
        }
        Ok(())
    }

    /// Every site ever registered, by name.
    pub fn list_sites(&self) -> Result<Vec<SiteEntry>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT name, credential_hash IS NOT NULL, generation, created_at, removed_at
                 FROM sites ORDER BY name",
            )
            .map_err(sql("listing sites"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(SiteEntry {
                    name: r.get(0)?,
                    active: r.get(1)?,
                    generation: r.get(2)?,
                    created_at: r.get(3)?,
                    removed_at: r.get(4)?,
                })
            })
            .map_err(sql("listing sites"))?;
        rows.collect::<Result<_, _>>().map_err(sql("listing sites"))
    }

    /// Checks a site's credential.
    pub fn verify(&self, name: &str, credential: &str) -> Result<Verdict, RegistryError> {
        let row: Option<(Option<String>, i64)> = self
            .conn()
            .query_row(
                "SELECT credential_hash, generation FROM sites WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql("checking a credential"))?;
        Ok(match row {
            None => Verdict::UnknownSite,
            Some((None, _)) => Verdict::Removed,
            Some((Some(hash), generation)) => {
                if constant_time_eq(hash.as_bytes(), credential_hash(credential).as_bytes()) {
                    Verdict::Accepted { generation }
                } else {
                    Verdict::WrongCredential
                }
            }
        })
    }

    /// The generation of `name`'s current credential, `None` when it has none.
    pub fn current_generation(&self, name: &str) -> Result<Option<i64>, RegistryError> {
        self.conn()
            .query_row(
                "SELECT generation FROM sites WHERE name = ?1 AND credential_hash IS NOT NULL",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("reading a generation"))
    }

    /// Replaces every pairing `site` has claimed with `pairings`, in one transaction.
    pub fn replace_claims(&self, site: &str, pairings: &[Pairing]) -> Result<(), RegistryError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sql("starting a transaction"))?;
        tx.execute("DELETE FROM claims WHERE site = ?1", [site])
            .map_err(sql("clearing a site's claims"))?;
        {
            let mut insert = tx
                .prepare(
                    "INSERT OR IGNORE INTO claims
                     (site, connector, peer_site, peer_connector, claimed_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(sql("storing claims"))?;
            let now = now_micros();
            for p in pairings {
                insert
                    .execute(params![
                        site,
                        p.connector,
                        p.peer.site,
                        p.peer.connector,
                        now
                    ])
                    .map_err(sql("storing claims"))?;
            }
        }
        tx.commit().map_err(sql("committing claims"))
    }

    /// Every claimed pairing, as (claiming site, pairing), ordered.
    pub fn claims(&self) -> Result<Vec<(String, Pairing)>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT site, connector, peer_site, peer_connector FROM claims
                 ORDER BY site, connector, peer_site, peer_connector",
            )
            .map_err(sql("reading claims"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Pairing::new(
                        r.get::<_, String>(1)?,
                        Address::new(r.get::<_, String>(2)?, r.get::<_, String>(3)?),
                    ),
                ))
            })
            .map_err(sql("reading claims"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql("reading claims"))
    }

    /// A number that changes whenever another process commits to the registry (SQLite's
    /// `data_version`); cheap enough to poll.
    pub fn changed(&self) -> Result<i64, RegistryError> {
        self.conn()
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(sql("reading data_version"))
    }
}

/// Applies every migration newer than the registry, each in its own transaction: one that
/// fails is rolled back whole (the registry stays at the version before it) and the error
/// names its version.
fn migrate(conn: &Connection) -> Result<(), RegistryError> {
    migrate_with(conn, MIGRATIONS)
}

fn migrate_with(conn: &Connection, migrations: &[(i64, &str)]) -> Result<(), RegistryError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .map_err(sql("creating the migration table"))?;
    let current: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(sql("reading the schema version"))?;
    for (version, text) in migrations.iter().filter(|(v, _)| *v > current) {
        let script = format!(
            "BEGIN; {text}\nINSERT INTO schema_migrations VALUES ({version}, {}); COMMIT;",
            now_micros()
        );
        if let Err(e) = conn.execute_batch(&script) {
            // execute_batch stops at the failing statement, inside the transaction.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            tracing::error!(version, error = %e, "a registry migration failed; rolled back");
            return Err(RegistryError::Sql {
                op: "migrating the schema",
                source: e,
            });
        }
    }
    Ok(())
}

/// `west_` and 32 random bytes in base64url: safe on a command line (the prefix keeps a
/// credential from starting with `-` and being taken for a flag) and easy to recognise.
pub(crate) fn new_credential() -> Result<String, RegistryError> {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    if bytes.iter().all(|b| *b == 0) {
        return Err(RegistryError::Random("the generator returned zeros".into()));
    }
    Ok(format!(
        "west_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Credentials are 256 random bits, so a fast hash is enough: no password to stretch.
pub(crate) fn credential_hash(credential: &str) -> String {
    hex::encode(Sha256::digest(credential.as_bytes()))
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Microseconds since the Unix epoch. The site's and the store's is `store::now_micros`;
/// the hub does not depend on the store, so it reads the clock here, the same way.
pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_migration_is_rolled_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("opens");
        let good = (1, "CREATE TABLE a (x INTEGER);");
        let bad = (
            2,
            "CREATE TABLE b (x INTEGER); INSERT INTO a VALUES (1); NOT SQL;",
        );
        migrate_with(&conn, &[good]).expect("the first migration applies");
        let Err(RegistryError::Sql { op, .. }) = migrate_with(&conn, &[good, bad]) else {
            panic!("a broken migration is refused");
        };
        assert_eq!(op, "migrating the schema");
        assert!(conn.is_autocommit(), "no transaction left open");
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).expect("counts") };
        assert_eq!(
            count("SELECT COUNT(*) FROM sqlite_master WHERE name = 'b'"),
            0,
            "the failed migration's table is gone"
        );
        assert_eq!(count("SELECT COUNT(*) FROM a"), 0, "its insert is gone");
        assert_eq!(count("SELECT MAX(version) FROM schema_migrations"), 1);
        // Fixed, it applies on the next open.
        let fixed = (2, "CREATE TABLE b (x INTEGER);");
        migrate_with(&conn, &[good, fixed]).expect("the fixed migration applies");
        assert_eq!(count("SELECT MAX(version) FROM schema_migrations"), 2);
    }

    #[test]
    fn add_verify_remove_and_add_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(dir.path()).expect("opens");
        let cred = reg.add_site("site-a").expect("adds");
        assert_eq!(cred.len(), 48);
        assert!(cred.starts_with("west_"));
        assert_eq!(
            reg.verify("site-a", &cred).expect("verifies"),
            Verdict::Accepted { generation: 1 }
        );
        assert_eq!(
            reg.verify("site-a", "guess").expect("verifies"),
            Verdict::WrongCredential
        );
        assert_eq!(
            reg.verify("site-b", &cred).expect("verifies"),
            Verdict::UnknownSite
        );
        assert!(matches!(
            reg.add_site("site-a"),
            Err(RegistryError::Exists(_))
        ));
        assert!(matches!(
            reg.add_site("a b"),
            Err(RegistryError::BadName(_))
        ));

        reg.remove_site("site-a").expect("removes");
        assert_eq!(
            reg.verify("site-a", &cred).expect("verifies"),
            Verdict::Removed
        );
        assert_eq!(reg.current_generation("site-a").expect("reads"), None);
        assert!(matches!(
            reg.remove_site("site-a"),
            Err(RegistryError::NotFound(_))
        ));

        let again = reg.add_site("site-a").expect("adds again");
        assert_ne!(again, cred);
        assert_eq!(
            reg.verify("site-a", &again).expect("verifies"),
            Verdict::Accepted { generation: 2 }
        );
        assert_eq!(reg.current_generation("site-a").expect("reads"), Some(2));
        let list = reg.list_sites().expect("lists");
        assert_eq!(list.len(), 1);
        assert!(list[0].active);
    }

    #[test]
    fn claims_are_replaced_per_site_and_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(dir.path()).expect("opens");
        let p = |c: &str, site: &str, peer: &str| Pairing::new(c, Address::new(site, peer));
        reg.replace_claims("a", &[p("c1", "b", "c2"), p("c3", "b", "c4")])
            .expect("stores");
        reg.replace_claims("b", &[p("c2", "a", "c1")])
            .expect("stores");
        reg.replace_claims("a", &[p("c3", "b", "c4"), p("c3", "b", "c4")])
            .expect("replaces, duplicates once");
        drop(reg);
        let reopened = Registry::open(dir.path()).expect("reopens");
        assert_eq!(
            reopened.claims().expect("reads"),
            vec![
                ("a".to_owned(), p("c3", "b", "c4")),
                ("b".to_owned(), p("c2", "a", "c1")),
            ]
        );
        reopened.replace_claims("b", &[]).expect("clears");
        assert_eq!(reopened.claims().expect("reads").len(), 1);
    }

    #[test]
    fn another_process_writing_is_noticed_and_persists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = Registry::open(dir.path()).expect("opens");
        let before = hub.changed().expect("reads");
        let cli = Registry::open(dir.path()).expect("opens a second time");
        let cred = cli.add_site("site-b").expect("adds");
        assert_ne!(hub.changed().expect("reads"), before);
        drop(cli);
        drop(hub);
        let reopened = Registry::open(dir.path()).expect("reopens");
        assert!(matches!(
            reopened.verify("site-b", &cred).expect("verifies"),
            Verdict::Accepted { .. }
        ));
    }
}
