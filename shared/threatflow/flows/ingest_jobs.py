"""Flow-ingest jobs in Firestore, and the sweep that recovers the ones no delivery is running.

A job (`flow_ingest_jobs/<id>`, made by POST /api/v1/flows/uploads) is run by the flow-ingest
worker (flows/handlers.py) under a lease (`flow_ingest_leases/<id>`). Every write a delivery makes
sets `updated_at`: the job's creation, the start of each delivery, each stored batch, a continuation.

The job's live message is named by `continuation` (a number) and `continuation_token` (a random
token, absent on the upload's own message). A delivery publishes the next continuation first and
records it after, so a message numbered above the job's `continuation` is current (it was published
by the run that held the job, and its record was never written), and `superseded` tells the stale
ones: a lower number, or the same number with another token (two runs of one message that each
published a continuation: the recorded one wins).

Some ends leave a job `queued` or `running` with nothing left to run it: a delivery killed by the
function's timeout or out of memory on its last attempt (no code runs, the message is dead-lettered),
a continuation that cannot get the lease in its attempts. recover_stalled (the
recover-stalled-flow-ingest-jobs maintenance job) finds a job in `queued` or `running` whose
`updated_at` is older than STALL_SECONDS, or that has no `updated_at` (queued or run by a version
that did not write it) and was created before then, and whose lease is absent or expired, and
publishes its live message again, so the worker resumes from rows_done. A job recovered MAX_RECOVERIES times in a row
without progress fails with the reason: rows stored since the last recovery start the count again (a
long upload may meet several unrelated deaths), and a job still `queued` is given QUEUED_PATIENCE_SECONDS
from its creation first (behind a backlog at flow-ingest's instance limit its message is only waiting;
publishing it again is harmless, failing it is not).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from threatflow.platform import events
from threatflow.platform import logging as tf_logging
from threatflow.platform.ports import DocumentStore, Publisher

log = logging.getLogger("threatflow.flows.ingest")
INGEST_JOBS = "flow_ingest_jobs"
INGEST_LEASES = "flow_ingest_leases"
INGEST_TOPIC = "flow-ingest"  # continuations and recoveries go back to the topic the job came on
# flow-ingest's timeout_seconds in functions/topology.yaml (a unit test holds them equal).
FUNCTION_TIMEOUT_SECONDS = 540
LEASE_SECONDS = 600  # longer than the function's timeout: a live run never loses its lease
# flow-ingest-push's max_delivery_attempts in functions/topology.yaml (a unit test holds them equal).
MAX_DELIVERY_ATTEMPTS = 5
# No live delivery goes this long without writing `updated_at`: each writes it when it starts and
# holds its lease for LEASE_SECONDS; a job older than this with no live lease has nothing running it.
# (A retry's backoff can add up to 600 s before the next attempt: the message then published again
# is harmless, the lease and the continuation number keep one delivery running the job.)
STALL_SECONDS = LEASE_SECONDS + FUNCTION_TIMEOUT_SECONDS
MAX_RECOVERIES = 3
# A queued job is failed by the cap only once it is this old: Pub/Sub keeps an undelivered message for
# days, and an upload queued behind a backlog is waiting, not stalled.
QUEUED_PATIENCE_SECONDS = 24 * 3600
SWEEP_LIMIT = 200  # jobs looked at per maintenance invocation at most; the next tick takes the rest
SWEEP_MAX = 2000
FAILED_LISTED = 20


def job_message(job_id: str, continuation: int, token: str | None) -> tuple[bytes, dict[str, str]]:
    """The flow-ingest message that runs the job from continuation `continuation` (data, attributes)."""
    payload: dict[str, Any] = {"job_id": job_id, "continuation": continuation}
    if token is not None:
        payload["continuation_token"] = token
    return events.encode(payload), {"job_id": job_id}


def superseded(job: Mapping[str, Any], *, continuation: int, token: str | None) -> str | None:
    """Why the message (continuation, token) no longer runs `job`, or None when it may.

    A delivery that continues publishes the next message before it records its number, so a number
    above the job's is current (published, record lost) and the number alone cannot tell two messages
    apart when a run of an older one published the same number again: the recorded token does."""
    live = int(job.get("continuation") or 0)
    if continuation < live:
        return f"continuation {continuation} was superseded by continuation {live}"
    live_token = job.get("continuation_token")
    if continuation == live and live_token is not None and token != live_token:
        return f"continuation {continuation} was published twice; the job runs the one it recorded"
    return None


def fail(documents: DocumentStore, job_id: str, reason: str, *, now: datetime) -> None:
    documents.set(INGEST_JOBS, job_id, {"state": "failed", "error": reason, "finished_at": now, "updated_at": now}, merge=True)


def stalled_jobs(documents: DocumentStore, *, before: datetime, limit: int) -> list[dict[str, Any]]:
    """Queued or running jobs last written before `before`, oldest first. Firestore answers this
    only with the composite index (state, updated_at) of terraform/firestore.tf."""
    return documents.query(
        INGEST_JOBS, where=[("state", "in", ["queued", "running"]), ("updated_at", "<", before)], order_by="updated_at", limit=limit
    )


def unwritten_jobs(documents: DocumentStore, *, before: datetime, limit: int) -> list[dict[str, Any]]:
    """Queued or running jobs created before `before` that have no `updated_at` (made or last run by a
    version that did not write it, so stalled_jobs never finds them), oldest first. Their created_at
    is older than that of any job made since, so they lead this query's page. Firestore answers it
    only with the composite index (state, created_at) of terraform/firestore.tf."""
    page = documents.query(
        INGEST_JOBS, where=[("state", "in", ["queued", "running"]), ("created_at", "<", before)], order_by="created_at", limit=limit
    )
    return [job for job in page if job.get("updated_at") is None]


def lease_live(documents: DocumentStore, job_id: str, *, now: datetime) -> bool:
    until = (documents.get(INGEST_LEASES, job_id) or {}).get("until")
    return until is not None and until > now


def recover_stalled(
    *,
    documents: DocumentStore,
    publisher: Publisher,
    now: Callable[[], datetime],
    limit: int = SWEEP_LIMIT,
    max_recoveries: int = MAX_RECOVERIES,
) -> dict[str, Any]:
    """Publish the message of up to `limit` stalled jobs again (oldest first), or fail the ones
    recovered `max_recoveries` times already without storing a row since (queued ones only after
    QUEUED_PATIENCE_SECONDS). Idempotent: a recovered job's `updated_at` moves to now,
    so the next invocations leave it alone for STALL_SECONDS; a second message for a job that is in
    fact running is acked by the worker (lease, continuation number). A publish that fails fails the
    sweep (Pub/Sub retries it) before the job records the recovery."""
    started = now()
    cutoff = started - timedelta(seconds=STALL_SECONDS)
    unwritten = unwritten_jobs(documents, before=cutoff, limit=limit + 1)
    page = unwritten + stalled_jobs(documents, before=cutoff, limit=limit + 1)
    recovered = leased = 0
    failed: list[str] = []
    for job in page[:limit]:
        job_id = str(job["id"])
        if lease_live(documents, job_id, now=started):
            leased += 1  # a delivery holds it: not stalled, whatever updated_at says
            continue
        recoveries = int(job.get("recoveries") or 0)
        rows_done = int(job.get("rows_done") or 0)
        if rows_done > int(job.get("recovered_at_row") or 0):
            recoveries = 0  # it stored rows since its last recovery: it stalls, but it is not stuck
        created = job.get("created_at")
        waiting = (
            job.get("state") == "queued"
            and isinstance(created, datetime)
            and started - created < timedelta(seconds=QUEUED_PATIENCE_SECONDS)
        )
        if recoveries >= max_recoveries and not waiting:
            reason = (
                f"stalled: no delivery wrote the job for {STALL_SECONDS} s and none holds its lease,"
                f" after {recoveries} recoveries without progress"
                + (
                    f" (at row {rows_done}); a delivery killed by the {FUNCTION_TIMEOUT_SECONDS} s timeout or out"
                    " of memory runs no code: look at the flow-ingest logs, then queue the object again"
                    if job.get("state") == "running"
                    else "; no delivery got it running (killed while hashing the object, flow-ingest at its instance limit, or failing"
                    " before the job starts): look at the flow-ingest logs, then queue the object again"
                )
            )
            fail(documents, job_id, reason, now=now())
            failed.append(job_id)
            tf_logging.log(log, logging.WARNING, "stalled flow-ingest job failed", job_id=job_id, recoveries=recoveries)
            continue
        continuation = int(job.get("continuation") or 0)
        token = job.get("continuation_token")
        data, attributes = job_message(job_id, continuation, str(token) if token is not None else None)
        publisher.publish(INGEST_TOPIC, data, attributes)
        at = now()
        update = {"recoveries": recoveries + 1, "recovered_at": at, "recovered_at_row": rows_done, "updated_at": at}
        documents.set(INGEST_JOBS, job_id, update, merge=True)
        recovered += 1
        tf_logging.log(
            log,
            logging.INFO,
            "stalled flow-ingest job published again",
            job_id=job_id,
            state=str(job.get("state")),
            rows_done=int(job.get("rows_done") or 0),
            continuation=continuation,
            recoveries=recoveries + 1,
            unwritten=job.get("updated_at") is None,
        )
    return {
        "recovered": recovered,
        "failed": len(failed),
        "failed_jobs": failed[:FAILED_LISTED],
        "leased": leased,
        "more": len(page) > limit,
        "limit": limit,
        "cutoff": cutoff.isoformat(),
    }
