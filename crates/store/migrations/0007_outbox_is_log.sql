-- The outbox is the point log of remote-synced points (docs/sync.md "Storage"): on a paired
-- Source such a point is written once, as its outbox record, not also into `point_log`.
-- `folded` is the highest seq whose points are folded into blocks: records above it are
-- part of the in-memory tail, replayed from the outbox on open, and their partition is not
-- dropped (acknowledged or expired) before a fold. Existing records are in `point_log` or
-- in blocks already.
ALTER TABLE sync_out ADD COLUMN folded INTEGER NOT NULL DEFAULT 0;
UPDATE sync_out SET folded = head;
