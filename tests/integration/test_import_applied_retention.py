"""Retention of import_jobs_applied (sql/0013): the row an async import job's transaction writes when it commits, so a
redelivery or the stalled-job sweep finishes the job from it instead of applying the document again. Nothing deleted
those rows: one per async import, for ever. The daily purge-runs maintenance job deletes the rows older than
stalled_imports.APPLIED_RETENTION, when no delivery of the job can come any more and the sweep has long finished it,
at most params.applied_limit per invocation in short transactions. Real PostgreSQL and the maintenance function."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from helpers import SqlDb, run_maintenance_job

pytestmark = pytest.mark.integration

JOB = "purge-runs"


class Db(SqlDb):
    def applied(self, job_id, *, days_ago):
        at = datetime.now(UTC) - timedelta(days=days_ago)
        self.execute(
            "INSERT INTO import_jobs_applied (job_id, result, applied_at) VALUES (%s, CAST(%s AS jsonb), %s)",
            job_id,
            json.dumps({"result": {"iocs": {"summary": {}}}, "progress": {"stage": "done"}}),
            at,
        )

    def kept(self):
        with self._engine.connect() as conn:
            return [r[0] for r in conn.exec_driver_sql("SELECT job_id FROM import_jobs_applied ORDER BY applied_at, job_id")]


def test_applied_rows_past_the_retention_are_deleted_oldest_first_within_the_limit(db, function_client):
    from threatflow.intel import stalled_imports

    days = stalled_imports.APPLIED_RETENTION.days
    for n, age in enumerate((days + 30, days + 20, days + 10, days + 2, days + 1)):
        db.applied(f"old-{n}", days_ago=age)
    db.applied("inside-retention", days_ago=days - 1)
    db.applied("just-applied", days_ago=0)
    maintenance = function_client("maintenance")

    status, run = run_maintenance_job(maintenance, JOB, {"applied_limit": 3})
    assert status == 200 and run["state"] == "succeeded", run
    pruned = run["result"]["import_jobs_applied"]
    assert (pruned["deleted"], pruned["more"], pruned["limit"]) == (3, True, 3), pruned
    assert db.kept() == ["old-3", "old-4", "inside-retention", "just-applied"]  # the 3 oldest went first

    again = run_maintenance_job(maintenance, JOB, {"applied_limit": 3})[1]
    assert again["state"] == "succeeded", again
    assert (again["result"]["import_jobs_applied"]["deleted"], again["result"]["import_jobs_applied"]["more"]) == (2, False), again
    assert db.kept() == ["inside-retention", "just-applied"]

    idle = run_maintenance_job(maintenance, JOB)[1]  # the schedule's default limit; nothing more is old
    assert idle["state"] == "succeeded" and idle["result"]["import_jobs_applied"]["deleted"] == 0, idle
    assert db.kept() == ["inside-retention", "just-applied"]


def test_a_prune_deletes_in_transactions_of_a_batch_each(db, backend_env):
    from threatflow.adapters.postgres import create_engine
    from threatflow.intel import stalled_imports
    from threatflow.platform.config import Settings

    for n in range(5):
        db.applied(f"batch-{n}", days_ago=stalled_imports.APPLIED_RETENTION.days + 1 + n)
    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    try:
        first = stalled_imports.prune_applied(engine=engine, now=datetime.now(UTC), limit=4, batch=3)
        rest = stalled_imports.prune_applied(engine=engine, now=datetime.now(UTC), limit=4, batch=3)
    finally:
        engine.dispose()
    assert (first["deleted"], first["batches"], first["more"]) == (4, 2, True), first
    assert (rest["deleted"], rest["batches"], rest["more"]) == (1, 1, False), rest
    assert db.kept() == []


@pytest.mark.parametrize("bad", [0, -1, "10", 10_000_001, True])
def test_a_bad_applied_limit_fails_the_run_for_good(function_client, bad):
    status, run = run_maintenance_job(function_client("maintenance"), JOB, {"applied_limit": bad})
    assert status == 200 and run is not None and run["state"] == "failed" and "params.applied_limit" in run["error"], run


def test_the_retention_outlasts_every_delivery_and_the_sweep():
    """A row may go only once no delivery of its job can come (ioc-import-push keeps an unacked message for Pub/Sub's
    default 7 days, the manifest setting none; a dead letter is held 7 days more, from where it may be published
    again) and the stalled-job sweep has had its horizon after the last one to finish the job from the row."""
    from threatflow.intel import stalled_imports
    from threatflow.platform.manifest import load_manifest

    subscriptions = load_manifest().subscriptions
    pubsub_default = 7 * 86_400
    delivered_until = subscriptions["ioc-import-push"].message_retention_seconds or pubsub_default
    held_until = subscriptions["ioc-import-dead-letter-hold"].message_retention_seconds or pubsub_default
    sweep = max(stalled_imports.STALL_SECONDS, stalled_imports.QUEUED_PATIENCE_SECONDS)
    assert timedelta(seconds=delivered_until + held_until + sweep) <= stalled_imports.APPLIED_RETENTION
