-- The prune-sightings maintenance job deletes the sightings seen before its cutoff, oldest first, a
-- bounded batch at a time: it finds them by seen_at alone, which ioc_sightings_ioc_idx (ioc_id first)
-- cannot serve, so each batch would scan the whole table. Built in the migration's transaction (not
-- CONCURRENTLY): writes to ioc_sightings wait while it builds.
CREATE INDEX IF NOT EXISTS ioc_sightings_seen_at_idx ON ioc_sightings (seen_at);
