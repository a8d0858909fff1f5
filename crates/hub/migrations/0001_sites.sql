-- The hub's registry: the sites allowed to connect and the hash of each one's credential.
-- Never payload data. Pairings arrive with the pairing issue.
CREATE TABLE sites (
    name            TEXT PRIMARY KEY,
    -- SHA-256 (hex) of the current credential; NULL once the site has been removed.
    credential_hash TEXT,
    -- Bumped every time a credential is issued, so that a live connection can tell whether
    -- it still holds the current one.
    generation      INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    removed_at      INTEGER
) WITHOUT ROWID;
