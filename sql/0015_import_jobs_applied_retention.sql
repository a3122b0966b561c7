-- purge-runs deletes the import_jobs_applied rows older than their retention (intel/stalled_imports.py
-- APPLIED_RETENTION), oldest first, a bounded batch at a time: found by applied_at alone, which the primary key
-- (job_id) cannot serve, so each batch would scan the whole table. Built in the migration's transaction (not
-- CONCURRENTLY): an import's commit waits while it builds, on a table of one row per async import.
CREATE INDEX IF NOT EXISTS import_jobs_applied_applied_at_idx ON import_jobs_applied (applied_at);
