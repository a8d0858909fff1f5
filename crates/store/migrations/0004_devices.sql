-- Device convergence (docs/spec.md §5; docs/sync.md "Device convergence"). Times are µs.
--
-- The replicated record of every device this site knows of, live or deleted: JSON of
-- `proto::sync::DeviceRecord` (per-field last-writer-wins registers with their stamps, and
-- the tombstone). The `devices` and `config` tables hold the record's view, the device as an
-- operator sees it; a deleted device keeps its record here so that a late edit cannot bring
-- it back. A device without a record (created before this migration) is read as if created
-- at its `created_at` by this site.
CREATE TABLE device_records (
    connector TEXT NOT NULL REFERENCES connectors(id) ON DELETE CASCADE,
    identity  TEXT NOT NULL,
    record    TEXT NOT NULL,
    -- Outbox seq of this site's latest change of the device: the peer has it once its
    -- acknowledgement reaches this seq (`sync_out.acked`). NULL: nothing sent.
    out_seq   INTEGER,
    PRIMARY KEY (connector, identity)
) WITHOUT ROWID;

-- The site's hybrid logical clock (one row): the latest reading it issued or observed, so
-- that a restart, or a wall clock that stepped back, never reuses a stamp.
CREATE TABLE device_clock (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    wall_us INTEGER NOT NULL,
    counter INTEGER NOT NULL
);
