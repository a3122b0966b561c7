"""fail-stalled-import-jobs: async import jobs that nothing will run again are failed with the reason, pushed to the
real maintenance function on the Firestore emulator. A job whose message went to the dead letter (five deliveries
that each failed retryably) or whose last delivery was killed (timeout, out of memory: no code runs) stayed `queued`
or `running` for ever, and GET /api/v1/iocs/import/{id} said so to the user polling it."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from helpers import push_envelope, run_maintenance_job

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"
JOB = "fail-stalled-import-jobs"


@pytest.fixture
def env(function_client, backend_env):
    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.intel import importer

    docs = FirestoreDocuments(PROJECT)
    for collection in (importer.IMPORT_JOBS, importer.IMPORT_LEASES):  # other tests' jobs share the emulator
        while stale := docs.query(collection, limit=500):
            for doc in stale:
                docs.delete(collection, doc["id"])
    return {"docs": docs, "maintenance": function_client("maintenance")}


def _run_job(env: dict[str, Any], **params: Any) -> dict[str, Any]:
    """Push the schedule's message to the maintenance function; the recorded job result."""
    status, record = run_maintenance_job(env["maintenance"], JOB, params)
    assert status == 200
    assert record is not None and record["state"] == "succeeded", record
    return dict(record["result"])


def _job(docs: Any, *, created: datetime, **fields: Any) -> str:
    """An import job as POST /import?async=true queued it and run_job left it."""
    from threatflow.intel import importer

    job_id = uuid.uuid4().hex
    queued = {"job_id": job_id, "state": "queued", "format": "json", "blob": f"imports/{job_id}.json", "requested_by": "analyst1"}
    docs.set(importer.IMPORT_JOBS, job_id, {**queued, "created_at": created, "attempts": 0, **fields})
    return job_id


def _ago(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


def test_a_dead_lettered_or_killed_job_is_failed_with_its_last_error(env):
    from threatflow.intel import importer

    docs = env["docs"]
    dead_lettered = _job(
        docs, created=_ago(hours=3), started_at=_ago(hours=2), attempts=5, last_error="DependencyError: PostgreSQL is unreachable"
    )
    killed = _job(docs, created=_ago(hours=3), state="running", started_at=_ago(hours=2), attempts=1)
    docs.set(importer.IMPORT_LEASES, killed, {"holder": "dead", "until": _ago(hours=1)})  # expired with its holder

    result = _run_job(env)
    assert (result["failed"], result["leased"], result["more"]) == (2, 0, False), result
    first = docs.get(importer.IMPORT_JOBS, dead_lettered)
    assert first["state"] == "failed" and first["finished_at"] is not None, first
    assert "5 deliveries" in first["error"] and "DependencyError: PostgreSQL is unreachable" in first["error"], first["error"]
    assert "import the document again" in first["error"]
    second = docs.get(importer.IMPORT_JOBS, killed)
    assert second["state"] == "failed" and "1 delivery" in second["error"] and "killed" in second["error"], second["error"]
    assert _run_job(env)["failed"] == 0  # done once: failed jobs are not looked at again


def test_a_job_with_a_live_lease_a_recent_delivery_or_still_waiting_for_its_first_is_untouched(env):
    from threatflow.intel import importer

    docs = env["docs"]
    leased = _job(docs, created=_ago(hours=3), state="running", started_at=_ago(hours=2), attempts=2)
    docs.set(importer.IMPORT_LEASES, leased, {"holder": "alive", "until": datetime.now(UTC) + timedelta(seconds=300)})
    retrying = _job(docs, created=_ago(hours=3), started_at=_ago(minutes=15), attempts=3, last_error="DependencyError: x")
    waiting = _job(docs, created=_ago(hours=3))  # never delivered yet: behind a backlog, its message is only waiting
    fresh = _job(docs, created=_ago(minutes=1))
    finished = _job(docs, created=_ago(hours=3), state="succeeded", started_at=_ago(hours=2), attempts=1)

    result = _run_job(env)
    assert (result["failed"], result["leased"], result["changed"]) == (0, 1, 0), result  # only the leased one is due
    for job_id in (leased, retrying, waiting, fresh):
        assert docs.get(importer.IMPORT_JOBS, job_id)["state"] in ("queued", "running")
    assert docs.get(importer.IMPORT_JOBS, finished)["state"] == "succeeded"


def test_a_job_no_delivery_started_in_a_day_is_failed(env):
    from threatflow.intel import importer

    job_id = _job(env["docs"], created=_ago(hours=25))
    assert _run_job(env)["failed"] == 1
    job = env["docs"].get(importer.IMPORT_JOBS, job_id)
    assert job["state"] == "failed" and "no delivery started it" in job["error"], job


def test_one_invocation_looks_at_most_at_limit_jobs_oldest_first_and_says_more(env):
    from threatflow.intel import importer

    docs = env["docs"]
    jobs = [_job(docs, created=_ago(hours=5) + timedelta(seconds=i), started_at=_ago(hours=2), attempts=5) for i in range(5)]
    first = _run_job(env, limit=3)
    assert (first["failed"], first["more"]) == (3, True), first
    assert [docs.get(importer.IMPORT_JOBS, j)["state"] for j in jobs] == ["failed"] * 3 + ["queued"] * 2
    second = _run_job(env, limit=3)
    assert (second["failed"], second["more"]) == (2, False), second


def test_a_limit_out_of_range_fails_the_run(env):
    _, record = run_maintenance_job(env["maintenance"], JOB, {"limit": 0})
    assert record["state"] == "failed" and "params.limit must be an integer from 1" in record["error"], record


def test_a_delivery_of_a_failed_jobs_message_is_acked_and_runs_nothing(env, function_client):
    """The sweep failed it; a late redelivery (a backlog, a message thought dead) finds the job finished and leaves it."""
    from threatflow.intel import importer

    job_id = _job(env["docs"], created=_ago(hours=3), started_at=_ago(hours=2), attempts=5, last_error="DependencyError: x")
    assert _run_job(env)["failed"] == 1
    failed = env["docs"].get(importer.IMPORT_JOBS, job_id)
    response = function_client("ioc-import").post("/", json=push_envelope({"job_id": job_id}, {"job_id": job_id}, "ioc-import-push"))
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert env["docs"].get(importer.IMPORT_JOBS, job_id) == failed


class _Hooked:
    """The real document store, with `before(method, args)` called before each call is passed on: how the test lands
    one party's write between another's read and write, on one thread."""

    def __init__(self, docs: Any, before: Any) -> None:
        self._docs, self._before = docs, before

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._docs, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self._before(name, args)
            return method(*args, **kwargs)

        return call


def test_a_delivery_that_read_the_job_before_the_sweep_failed_it_does_not_run_it(env, backend_env):
    """The sweep reads the job and finds no lease; a delivery (a late one: a replayed dead letter, a backlog) then
    takes the lease and reads the job, still queued; the sweep fails it (its compare-and-set: nothing wrote the job
    since its read); the delivery then wrote `running` over `failed` and ran the import the user had been told to
    make again (GET /import said failed: "import the document again"). The delivery's start is a compare-and-set on
    the job it read under the lease, so it finds the job failed and leaves it."""
    from helpers import create_user

    from threatflow.intel import importer, stalled_imports
    from threatflow.runtime import Runtime

    docs = env["docs"]
    create_user(backend_env["DATABASE_URL"], "analyst1", "analyst")
    job_id = _job(docs, created=_ago(hours=3), started_at=_ago(hours=2), attempts=5, last_error="DependencyError: x")
    runtime = Runtime.from_env()
    document = {"format": "json", "content": [{"value": "198.18.40.1"}]}
    content = json.dumps(document).encode()
    runtime.blobs.put(runtime.settings.bucket_uploads, importer.blob_name(job_id), content, content_type="application/json")
    sweep_write: list[Any] = []

    def delivery_before(name: str, args: Any) -> None:
        # the delivery is about to write its start: it has taken the lease and read the job. The sweep's write lands.
        starting = name in ("set", "update_if_unchanged") and args[0] == importer.IMPORT_JOBS and args[2].get("state") == "running"
        if starting and sweep_write:
            collection, doc_id, data, version = sweep_write.pop()
            assert docs.update_if_unchanged(collection, doc_id, data, version=version) is not None  # nothing wrote the job

    def deliver() -> Any:
        return importer.run_job(
            job_id,
            engine=runtime.engine,
            documents=_Hooked(docs, delivery_before),
            blobs=runtime.blobs,
            bucket=runtime.settings.bucket_uploads,
            clock=runtime.clock,
            catalog=lambda: None,
            warninglists=lambda: None,
            policies=dict,
        )

    class Sweep:  # the sweep's store: its compare-and-set is held until the delivery has read the job
        def __getattr__(self, name: str) -> Any:
            return getattr(docs, name)

        def update_if_unchanged(self, collection: str, doc_id: str, data: Any, *, version: str) -> str | None:
            sweep_write.append((collection, doc_id, data, version))
            with contextlib.suppress(Exception):  # whatever the delivery does: the job it leaves is what counts here
                deliver()
            return "written" if not sweep_write else docs.update_if_unchanged(collection, doc_id, data, version=version)

    result = stalled_imports.fail_stalled(documents=Sweep(), engine=runtime.engine, now=lambda: datetime.now(UTC))
    assert result["failed"] == 1, result
    job = docs.get(importer.IMPORT_JOBS, job_id)
    assert job["state"] == "failed" and job["error"].startswith("stalled:"), job
    assert job["attempts"] == 5, "the delivery started the job the sweep had failed"
    with runtime.engine.connect() as conn:
        from sqlalchemy import text

        assert conn.execute(text("SELECT count(*) FROM iocs WHERE value = '198.18.40.1'")).scalar() == 0
    runtime.engine.dispose()


def test_jobs_still_waiting_or_retrying_at_the_head_of_the_page_do_not_hide_a_stalled_one(env):
    """The sweep read the oldest `limit` unfinished jobs created over an hour ago and judged only those: jobs that
    are not stalled (never started and under a day old: behind a backlog; retrying: a delivery within the hour) filled
    the page at every tick, and a dead-lettered job created after them stayed queued until they had run or turned a
    day old."""
    from threatflow.intel import importer

    docs = env["docs"]
    for _ in range(2):
        _job(docs, created=_ago(hours=5))  # waiting for its first delivery
    _job(docs, created=_ago(hours=5), started_at=_ago(minutes=10), attempts=2, last_error="DependencyError: x")  # retrying
    stalled = _job(docs, created=_ago(hours=4), started_at=_ago(hours=2), attempts=5, last_error="DependencyError: x")

    result = _run_job(env, limit=3)
    assert result["failed"] == 1, result
    assert docs.get(importer.IMPORT_JOBS, stalled)["state"] == "failed"


def test_a_stalled_job_its_transaction_applied_is_finished_not_failed(env, backend_env):
    """A job whose import committed but whose record was never written after (every redelivery failed there):
    failed as stalled, the user was told to import the document again, which was stored already. The sweep finishes
    it from what its transaction recorded."""
    import json

    from helpers import SqlDb

    from threatflow.intel import importer

    docs = env["docs"]
    job_id = _job(docs, created=_ago(hours=3), state="running", started_at=_ago(hours=2), attempts=5)
    applied = {"result": {"iocs": {"summary": {"created": 3}}, "results_blob": None}, "progress": {"stage": "done", "iocs": 3}}
    db = SqlDb(backend_env["DATABASE_URL"])
    try:
        db.execute("INSERT INTO import_jobs_applied (job_id, result) VALUES (%s, CAST(%s AS jsonb))", job_id, json.dumps(applied))
    finally:
        db.close()
    result = _run_job(env)
    assert (result["failed"], result["finished"]) == (0, 1), result
    job = docs.get(importer.IMPORT_JOBS, job_id)
    assert job["state"] == "succeeded" and job["result"] == applied["result"] and job["error"] is None, job
