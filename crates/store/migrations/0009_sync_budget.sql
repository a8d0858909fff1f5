-- A bandwidth budget per connector (docs/sync.md, "Bandwidth budget"): the most bytes per
-- second its sync sends to the hub. No row: no budget.
CREATE TABLE IF NOT EXISTS sync_budgets (
    connector       TEXT PRIMARY KEY REFERENCES connectors(id) ON DELETE CASCADE,
    max_bytes_per_s INTEGER NOT NULL CHECK (max_bytes_per_s > 0)
) WITHOUT ROWID;
