-- One log row per request instead of one per point (issue 11): an ingest, an apply or an
-- adoption of pending points appends its points to `point_batches` as one blob (the sync
-- wire codec's columns, zstd; device and resource are their row ids in decimal), so a
-- 1,000-point commit writes a few KB at the log's tail instead of 1,000 rows. The
-- in-memory tail is rebuilt from it (and the outbox) on open, and a fold deletes the rows
-- it covers by position.
--
-- `point_log` holds what an older version left unfolded: the store folds it on open, in
-- slices, and nothing writes it any more.
CREATE TABLE point_batches (
    pos  INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
