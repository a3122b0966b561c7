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

from threatflow.adapters.postgres import unit_of_work
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
