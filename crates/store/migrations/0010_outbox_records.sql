-- The outbox stores one row per request (docs/sync.md "Storage"): a partition table
-- `sync_out_<connector>_<part>` now holds rows `(first_seq INTEGER PRIMARY KEY, last_seq,
-- copy, data)`, `data` the wire codec's encoding of the records `first_seq..=last_seq`
-- (`copy` = 1: re-queued points stored elsewhere, not part of the point log). A seq is
-- still one point or one device change.
--
-- The partitions written before this version hold one row per seq. They are listed here,
-- and the store rewrites each in the new layout on open (in Rust: a partition's table name
-- is data), one transaction per partition, deleting its row here in the same transaction.
CREATE TABLE IF NOT EXISTS sync_out_legacy (
    connector TEXT NOT NULL,
    part      INTEGER NOT NULL,
    PRIMARY KEY (connector, part)
) WITHOUT ROWID;
INSERT OR IGNORE INTO sync_out_legacy (connector, part) SELECT connector, part FROM sync_partitions;
