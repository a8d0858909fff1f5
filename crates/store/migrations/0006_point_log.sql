-- Time series as an append-only log and per-series compressed blocks (docs/sync.md
-- "Storage", ARCHITECTURE.md "Data path of a point"). Times are µs.
--
-- `points` was keyed by (device, resource, t): every request dirtied a B-tree page per
-- series it touched, about 8 KB written to disk per point. Now a commit appends its points
-- to `point_log` (keyed by an increasing position: only tail pages change); the store keeps
-- the not-yet-folded log indexed in memory (rebuilt from this table on open), and the
-- writer folds it, once it is large enough, into `point_blocks` in one transaction.
CREATE TABLE point_log (
    pos      INTEGER PRIMARY KEY,
    device   INTEGER NOT NULL,
    resource INTEGER NOT NULL,
    t        INTEGER NOT NULL,
    v
);

-- One block per series, time bucket (1 hour) and fold: the series' points of that bucket
-- the fold saw, one value per `t`, encoded with the sync wire codec (delta-of-delta
-- timestamps, decimal-delta or XOR values, zstd). A later `gen` wins on a repeated `t`.
-- Keyed time first, so that a fold writes its blocks side by side (O(bytes), not a page per
-- series) and time-based retention could drop a contiguous key range.
CREATE TABLE point_blocks (
    bucket   INTEGER NOT NULL,
    device   INTEGER NOT NULL,
    resource INTEGER NOT NULL,
    gen      INTEGER NOT NULL,
    t_min    INTEGER NOT NULL,
    t_max    INTEGER NOT NULL,
    n        INTEGER NOT NULL,
    data     BLOB NOT NULL,
    PRIMARY KEY (bucket, device, resource, gen)
) WITHOUT ROWID;

-- Which buckets hold blocks of a series: a read of one series finds its blocks without
-- scanning others (written once per series and bucket).
CREATE TABLE series_buckets (
    device   INTEGER NOT NULL,
    resource INTEGER NOT NULL,
    bucket   INTEGER NOT NULL,
    PRIMARY KEY (device, resource, bucket)
) WITHOUT ROWID;

-- Existing points become the log, in series order; opening the store folds it into blocks
-- in bounded slices before it serves anything. `latest` keeps its meaning (the newest
-- folded point of each series; the in-memory tail has the rest).
INSERT INTO point_log (device, resource, t, v)
    SELECT device, resource, t, v FROM points ORDER BY device, resource, t;
DROP TABLE points;
