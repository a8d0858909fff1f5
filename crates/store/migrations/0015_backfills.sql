-- The latest backfill of each connector (docs/sync.md, "Backfill"), so that a restart
-- neither forgets nor ends it: a Source's goes on from `next_device`/`next_t` where its
-- last slice stopped; a Target keeps the one it asked for and asks its Source again.
-- `view` is the backfill as `proto::lookup::BackfillView` JSON (its range, who asked, when
-- it started); `state`, `queued` and `finished_at` change and are columns.
CREATE TABLE IF NOT EXISTS backfills (
    connector   TEXT PRIMARY KEY REFERENCES connectors(id) ON DELETE CASCADE,
    id          INTEGER NOT NULL,
    view        TEXT NOT NULL,
    -- Identities named (JSON array), NULL: every device.
    devices     TEXT,
    state       TEXT NOT NULL,
    queued      INTEGER NOT NULL DEFAULT 0,
    finished_at INTEGER,
    -- Where the next slice starts; NULL before the first.
    next_device TEXT,
    next_t      INTEGER
) WITHOUT ROWID;

-- The seq runs of a Source's backfill slices that its Target has not wholly acknowledged
-- yet: its progress (points applied) after a restart. A slice's records are consecutive.
CREATE TABLE IF NOT EXISTS backfill_slices (
    connector TEXT NOT NULL REFERENCES connectors(id) ON DELETE CASCADE,
    first_seq INTEGER NOT NULL,
    points    INTEGER NOT NULL,
    PRIMARY KEY (connector, first_seq)
) WITHOUT ROWID;
