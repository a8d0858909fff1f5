-- Resource data synchronisation (docs/spec.md §6, §7; docs/sync.md "Storage"). Times are µs.
--
-- Sending side. Every paired Source connector has an outbox: records numbered by a gap-free
-- `seq` assigned in the ingest transaction. The records themselves live in one table per
-- time partition, named `sync_out_<connector>_<part>` (created on first append, listed in
-- `sync_partitions`), where `part` = append time / partition length. Expiry and trimming
-- drop whole tables; rows are never deleted one by one.
CREATE TABLE sync_out (
    connector TEXT PRIMARY KEY REFERENCES connectors(id) ON DELETE CASCADE,
    -- Highest seq ever appended (0: none yet).
    head      INTEGER NOT NULL DEFAULT 0,
    -- Highest seq the peer has durably applied, as far as this site knows.
    acked     INTEGER NOT NULL DEFAULT 0,
    -- The sender never reads beyond it; retention never drops (acked, lease].
    lease     INTEGER NOT NULL DEFAULT 0,
    -- Highest partition ever appended to: new appends never go to an older one, so that
    -- partitions stay in seq order even when the clock steps back.
    last_part INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE sync_partitions (
    connector TEXT NOT NULL,
    part      INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    -- Estimated size of its records, for the disk budget.
    bytes     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (connector, part)
) WITHOUT ROWID;

-- Runs of undelivered records retention dropped, with their exact summary (JSON of
-- `proto::sync::LostSpan`), kept until the peer acknowledges past them.
CREATE TABLE sync_lost (
    connector TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    span      TEXT NOT NULL,
    lost_at   INTEGER NOT NULL,
    PRIMARY KEY (connector, first_seq)
) WITHOUT ROWID;

-- Receiving side: the applied cursor, moved in the transaction that applies a batch or
-- records a gap.
CREATE TABLE sync_in (
    connector       TEXT PRIMARY KEY REFERENCES connectors(id) ON DELETE CASCADE,
    applied         INTEGER NOT NULL DEFAULT 0,
    last_applied_at INTEGER
);

-- Points received for a resource the Target connector does not have (yet): applied when a
-- resource of that name is created, expired (and reported as a gap) after the retention.
-- `v` is typed by `format`, the Source's format of the value.
CREATE TABLE sync_pending (
    connector   TEXT NOT NULL,
    resource    TEXT NOT NULL,
    device      TEXT NOT NULL,
    t           INTEGER NOT NULL,
    format      TEXT NOT NULL,
    v,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (connector, resource, device, t)
) WITHOUT ROWID;
CREATE INDEX sync_pending_age ON sync_pending (connector, received_at);

-- Data that will never arrive, and why: one row per resource of each loss.
CREATE TABLE sync_gaps (
    id          INTEGER PRIMARY KEY,
    connector   TEXT NOT NULL REFERENCES connectors(id) ON DELETE CASCADE,
    resource    TEXT NOT NULL,
    devices     INTEGER NOT NULL,
    points      INTEGER NOT NULL,
    from_us     INTEGER NOT NULL,
    until_us    INTEGER NOT NULL,
    detected_at INTEGER NOT NULL,
    -- The stream range of a retention loss on the Source; NULL for losses on this side.
    first_seq   INTEGER,
    last_seq    INTEGER,
    -- `retention` (the Source dropped it), `pending_expired` (no such resource here within
    -- the retention), `format` (the value does not fit this site's resource format).
    reason      TEXT NOT NULL
);
CREATE INDEX sync_gaps_connector ON sync_gaps (connector, id);
