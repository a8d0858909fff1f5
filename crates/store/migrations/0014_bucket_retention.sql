-- Retention of stored points by time partition (docs/sync.md "Storage"): `point_blocks` is
-- keyed bucket first, so dropping every hour before a cutoff is one range delete there;
-- this index makes it one range delete of `series_buckets` too, instead of a scan of every
-- series' bucket list.
CREATE INDEX series_buckets_by_bucket ON series_buckets (bucket);
