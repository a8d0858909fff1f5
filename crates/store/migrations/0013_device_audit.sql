-- The device audit log (docs/api.md, "Audit log"): who changed which device of a
-- connector, when, and how. Written in the transaction of the change it records, on the
-- site where the change was stored: a local user's edit (`user` in the web UI, `token` with
-- an API token, `actor` the user's name), or a change received from the peer site (`peer`,
-- `actor` the peer site's name). Times are µs on this site's clock.
--
-- Bounded (`sqlite/audit.rs`): the newest 100 entries of each device, none older than 90
-- days. A deleted device's entries stay (they say who deleted it) until those bounds drop
-- them; a deleted connector's go with it.
CREATE TABLE IF NOT EXISTS device_audit (
    -- Increasing: the order of the entries on this site, and the cursor of a page.
    id         INTEGER PRIMARY KEY,
    connector  TEXT NOT NULL REFERENCES connectors(id) ON DELETE CASCADE,
    identity   TEXT NOT NULL,
    at         INTEGER NOT NULL,
    actor_kind TEXT NOT NULL CHECK (actor_kind IN ('user', 'token', 'peer')),
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL CHECK (action IN ('created', 'changed', 'deleted', 'token')),
    -- JSON list of {"field", "from", "to"} (store::FieldChange).
    changes    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS device_audit_device ON device_audit (connector, identity, id);
CREATE INDEX IF NOT EXISTS device_audit_connector ON device_audit (connector, id);
CREATE INDEX IF NOT EXISTS device_audit_at ON device_audit (at);
