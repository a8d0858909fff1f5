-- Alarms (docs/api.md, "Alarms"): each connector's thresholds, and the alarms the site's
-- evaluator raised and cleared.
--
-- A connector without a row in alarm_settings has the default thresholds; in a row, NULL
-- turns that alarm off.
CREATE TABLE IF NOT EXISTS alarm_settings (
    connector           TEXT PRIMARY KEY REFERENCES connectors(id) ON DELETE CASCADE,
    lag_seconds         INTEGER CHECK (lag_seconds > 0),
    backlog_points      INTEGER CHECK (backlog_points > 0),
    unreachable_seconds INTEGER CHECK (unreachable_seconds > 0),
    gap_points          INTEGER CHECK (gap_points > 0)
) WITHOUT ROWID;

-- Active alarms have no cleared_at; at most one active alarm per connector and kind. The
-- cleared ones are history, of bounded length (the oldest go first).
CREATE TABLE IF NOT EXISTS alarms (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    connector  TEXT NOT NULL REFERENCES connectors(id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    raised_at  INTEGER NOT NULL,
    cleared_at INTEGER,
    value      REAL NOT NULL,
    threshold  INTEGER NOT NULL,
    message    TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS alarms_active ON alarms (connector, kind) WHERE cleared_at IS NULL;
CREATE INDEX IF NOT EXISTS alarms_by_connector ON alarms (connector, id);
CREATE INDEX IF NOT EXISTS alarms_cleared ON alarms (cleared_at) WHERE cleared_at IS NOT NULL;
