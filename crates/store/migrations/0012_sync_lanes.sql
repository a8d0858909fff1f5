-- Two lanes (docs/sync.md, "Two lanes"): after an outage the Source opens a live lane at its
-- head while the backlog drains behind it.
--
-- Sending side: the live lease. The live lane starts at `live_from` (0: none was ever
-- opened) and the sender reads nothing of it above `live_lease`; retention keeps
-- `[live_from, live_lease]` as it keeps `(acked, lease]`, until acknowledged. A new lane
-- first folds the previous live lease into `lease`.
ALTER TABLE sync_out ADD COLUMN live_from INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sync_out ADD COLUMN live_lease INTEGER NOT NULL DEFAULT 0;

-- Receiving side: the live lane applied above the hole the backlog fills, `live_from..=
-- live_to` (0: none), moved with `applied` in the transaction that applies a batch. When
-- `applied` reaches `live_from - 1` the two merge: `applied = live_to`, `live_from = 0`.
ALTER TABLE sync_in ADD COLUMN live_from INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sync_in ADD COLUMN live_to INTEGER NOT NULL DEFAULT 0;
