-- An async import job's transaction records here that it applied the job, with the job's summary. The job's results
-- go to the bucket and its record to Firestore after the commit; when either failed, the redelivery applied the
-- document again and every IoC was sighted twice. A delivery that finds its job here finishes it from this row.
CREATE TABLE IF NOT EXISTS import_jobs_applied (
    job_id     text        PRIMARY KEY,
    result     jsonb       NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
