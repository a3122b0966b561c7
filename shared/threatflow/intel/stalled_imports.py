"""The fail-stalled-import-jobs sweep: async import jobs that nothing will run again are failed, with the reason.

An import job (`import_jobs/<id>`, queued by POST /api/v1/iocs/import?async=true) is run by the ioc-import function
(importer.run_job) under a lease. Some ends leave it `queued` or `running` with no delivery to come: five deliveries
that each failed retryably (the database down: the message goes to the dead letter), a last delivery killed by the
function's timeout or out of memory (no code runs), a message lost. The user polling GET /import/{id} saw it queued
for ever. A job is stalled when no delivery has started it for STALL_SECONDS (a delivery starts within the function's
timeout plus the retry backoff of the one before) and none holds its lease, or when no delivery ever started it in
QUEUED_PATIENCE_SECONDS (behind a backlog its message is only waiting: failing it early is not harmless).

Failing is a compare-and-set on the version of the job the sweep read, after it looked at the lease: a delivery that
starts the job in between writes it, and the sweep passes it by (`changed`). A delivery that comes after the sweep
finds the job finished and leaves it (run_job is idempotent per job), and so does one that took the lease after the
sweep looked for it: its start is a compare-and-set on the job it read under the lease, refused once the sweep failed it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from threatflow.adapters.postgres import delete_in_batches, unit_of_work
from threatflow.intel import repository as intel_repository
from threatflow.intel.importer import IMPORT_JOBS, IMPORT_LEASES, JobState
from threatflow.platform import logging as tf_logging
from threatflow.platform.ports import DocumentStore

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger("threatflow.intel.stalled_imports")
# ioc-import's timeout (540 s) plus ioc-import-push's longest retry backoff (600 s), with room to spare.
STALL_SECONDS = 3600
QUEUED_PATIENCE_SECONDS = 86_400
SWEEP_LIMIT = 200  # jobs looked at per invocation at most; the next tick takes the rest
SWEEP_MAX = 2000

# import_jobs_applied (sql/0013) rows are read while a job is unfinished: by a delivery of its message, and by this sweep
# once the job stalls. A row is deleted (purge-runs) once neither can come. Pub/Sub keeps an unacked ioc-import message
# for 7 days (ioc-import-push sets no message_retention_seconds: the default), and a dead-lettered one 7 more days in
# ioc-import-dead-letter-hold, from where an operator may publish it again; every delivery is before that, and each
# start makes the job stalled again only STALL_SECONDS later (QUEUED_PATIENCE_SECONDS for one never started), when this
# sweep, every 30 minutes, finishes it from its row. The row was written at the commit, after the publish, so it is
# kept that long from its applied_at, and a day more for a sweep backlog. Deleted sooner, a late delivery applied the
# document again (every IoC sighted twice) and the sweep failed a job that was stored, telling its user to import again.
PUBSUB_RETENTION_SECONDS = 7 * 86_400
APPLIED_RETENTION = timedelta(seconds=2 * PUBSUB_RETENTION_SECONDS + max(STALL_SECONDS, QUEUED_PATIENCE_SECONDS), days=1)
PRUNE_LIMIT = 10_000  # rows one purge-runs invocation deletes at most (params.applied_limit); `more` says some remain
PRUNE_MAX = 1_000_000
PRUNE_BATCH = 1_000  # rows one transaction deletes: its locks and statement stay short whatever the backlog


def unfinished_jobs(documents: DocumentStore, *, field: str, before: datetime, limit: int) -> list[dict[str, Any]]:
    """Queued or running jobs whose `field` (started_at, or created_at) is before `before`, oldest first. Firestore
    answers these only with the composite indexes (state, started_at) and (state, created_at) of
    terraform/firestore.tf."""
    return documents.query(
        IMPORT_JOBS,
        where=[("state", "in", [JobState.QUEUED.value, JobState.RUNNING.value]), (field, "<", before)],
        order_by=field,
        limit=limit,
    )


def stall_reason(job: dict[str, Any], *, now: datetime) -> str | None:
    """Why nothing will run the job again, or None while a delivery may still come."""
    started, created = job.get("started_at"), job.get("created_at")
    attempts = int(job.get("attempts") or 0)
    if isinstance(started, datetime):
        if now - started < timedelta(seconds=STALL_SECONDS):
            return None
        deliveries = f"{attempts} {'delivery' if attempts == 1 else 'deliveries'}"
        last = job.get("last_error")
        how = (
            f"the last one failed with {str(last)[:500]}: its message went to the dead letter"
            if job.get("state") == JobState.QUEUED.value and last
            else "the last one was killed (the function's timeout or memory limit) or its message was lost"
        )
        return f"stalled: no delivery has run it for {STALL_SECONDS // 60} minutes after {deliveries}; {how}; import the document again"
    if isinstance(created, datetime) and now - created < timedelta(seconds=QUEUED_PATIENCE_SECONDS):
        return None
    return f"stalled: no delivery started it in {QUEUED_PATIENCE_SECONDS // 3600} hours (its message was lost); import the document again"


def fail_stalled(*, documents: DocumentStore, engine: Engine, now: Callable[[], datetime], limit: int = SWEEP_LIMIT) -> dict[str, Any]:
    """Fail up to `limit` unfinished jobs that nothing will run again (oldest first); `leased` counts those a delivery
    holds, `changed` those a delivery wrote since they were listed. A stalled job whose transaction applied it (its
    results or record failed after the commit, at every delivery) is finished from what it recorded (`finished`):
    failed, its user was told to import again what is stored."""
    started = now()
    # Two pages, each of jobs already past their stall age: no delivery started for STALL_SECONDS, then none started
    # in QUEUED_PATIENCE_SECONDS since created. One page of the oldest unfinished jobs created over STALL_SECONDS ago
    # was filled, at every tick, by jobs still waiting for their first delivery or retrying, and hid those behind.
    by_start = unfinished_jobs(documents, field="started_at", before=started - timedelta(seconds=STALL_SECONDS), limit=limit + 1)
    room = limit - min(len(by_start), limit)
    by_creation = unfinished_jobs(
        documents, field="created_at", before=started - timedelta(seconds=QUEUED_PATIENCE_SECONDS), limit=room + 1
    )
    looked = {str(job["id"]): job for job in [*by_start[:limit], *by_creation[:room]]}  # one in both pages is looked at once
    failed: list[str] = []
    leased = changed = finished = 0
    with unit_of_work(engine) as conn:
        applied = intel_repository.applied_imports(conn, list(looked))
    for listed in looked.values():
        job_id = str(listed["id"])
        read = documents.get_versioned(IMPORT_JOBS, job_id)
        if read is None or read.data.get("state") not in (JobState.QUEUED.value, JobState.RUNNING.value):
            changed += 1
            continue
        reason = stall_reason(read.data, now=started)
        if reason is None:  # a delivery ran it within the hour: started since it was listed, or a day-old job listed by its age
            changed += 1
            continue
        until = (documents.get(IMPORT_LEASES, job_id) or {}).get("until")
        if isinstance(until, datetime) and until > started:
            leased += 1  # a delivery holds it: running, whatever started_at says
            continue
        at = now()
        recorded = applied.get(job_id)
        if recorded is not None:
            done = {"state": JobState.SUCCEEDED.value, "finished_at": at, "error": None, **recorded}
            done["result"] = {**recorded["result"], "results_blob": None}  # the delivery that applied it wrote none
            if documents.update_if_unchanged(IMPORT_JOBS, job_id, done, version=read.version) is None:
                changed += 1
            else:
                finished += 1
                tf_logging.log(log, logging.WARNING, "stalled import job finished from its applied record", job_id=job_id)
            continue
        failure = {"state": JobState.FAILED.value, "error": reason, "finished_at": at}
        if documents.update_if_unchanged(IMPORT_JOBS, job_id, failure, version=read.version) is None:
            changed += 1
            continue
        failed.append(job_id)
        tf_logging.log(log, logging.WARNING, "stalled import job failed", job_id=job_id, reason=reason)
    return {
        "failed": len(failed),
        "failed_jobs": failed,
        "finished": finished,
        "leased": leased,
        "changed": changed,
        "more": len(by_start) > limit or len(by_creation) > room,
    }


def prune_applied(*, engine: Engine, now: datetime, limit: int = PRUNE_LIMIT, batch: int = PRUNE_BATCH) -> dict[str, Any]:
    """Delete at most `limit` import_jobs_applied rows applied before APPLIED_RETENTION, oldest first, `batch` rows a
    transaction; `more` says some remain for the next run. Idempotent: a second run deletes what the first left."""
    cutoff = now - APPLIED_RETENTION
    deleted, batches, more = delete_in_batches(
        engine,
        delete=lambda conn, n: intel_repository.prune_applied_imports(conn, before=cutoff, limit=n),
        remaining=lambda conn: intel_repository.applied_imports_before(conn, before=cutoff),
        limit=limit,
        batch=batch,
    )
    result = {"deleted": deleted, "batches": batches, "more": more, "cutoff": cutoff.isoformat(), "limit": limit}
    tf_logging.log(log, logging.INFO, "applied import records pruned", job="purge-runs", **result)
    return result
