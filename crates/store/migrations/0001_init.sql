-- The first schema of a site. Times are microseconds since the Unix epoch.
--
-- Points are keyed by (device, resource, t) so that a range read of one device's resource
-- is one B-tree range; a write of the same (device, resource, t) twice replaces the value,
-- which makes a retried ingest request idempotent. `v` has no declared type on purpose:
-- SQLite then stores each value exactly as bound (REAL, INTEGER or TEXT) with no affinity
-- conversion, and the resource's format says how to read it back.

CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE tokens (
    hash       BLOB PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE connectors (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    description        TEXT NOT NULL DEFAULT '',
    created_at         INTEGER NOT NULL,
    role               TEXT NOT NULL DEFAULT 'none',
    sync_state         TEXT NOT NULL DEFAULT 'disabled',
    pairing_expires_at INTEGER,
    peer_site          TEXT,
    peer_connector     TEXT,
    paired_at          INTEGER
);

CREATE TABLE resources (
    id          INTEGER PRIMARY KEY,
    connector   TEXT NOT NULL REFERENCES connectors(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    format      TEXT NOT NULL,
    unit        TEXT,
    settable    INTEGER NOT NULL DEFAULT 0,
    remote_sync INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    UNIQUE (connector, name)
);

CREATE TABLE devices (
    id          INTEGER PRIMARY KEY,
    connector   TEXT NOT NULL REFERENCES connectors(id) ON DELETE CASCADE,
    identity    TEXT NOT NULL,
    tags        TEXT NOT NULL DEFAULT '{}',
    permissions TEXT NOT NULL DEFAULT '[]',
    state       TEXT NOT NULL DEFAULT 'provisioned',
    token_hash  BLOB UNIQUE,
    created_at  INTEGER NOT NULL,
    UNIQUE (connector, identity)
);

-- Desired values of settable resources (a device's configuration).
CREATE TABLE config (
    device   INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    resource INTEGER NOT NULL REFERENCES resources(id) ON DELETE CASCADE,
    v,
    PRIMARY KEY (device, resource)
) WITHOUT ROWID;

-- The newest point of each (device, resource), kept beside the series so that a device
-- page never scans history.
CREATE TABLE latest (
    device   INTEGER NOT NULL,
    resource INTEGER NOT NULL,
    t        INTEGER NOT NULL,
    v,
    PRIMARY KEY (device, resource)
) WITHOUT ROWID;

CREATE TABLE points (
    device   INTEGER NOT NULL,
    resource INTEGER NOT NULL,
    t        INTEGER NOT NULL,
    v,
    PRIMARY KEY (device, resource, t)
) WITHOUT ROWID;
