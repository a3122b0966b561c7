"""Flow-ingest jobs in Firestore, and the sweep that recovers the ones no delivery is running.

A job (`flow_ingest_jobs/<id>`, made by POST /api/v1/flows/uploads) is run by the flow-ingest
worker (flows/handlers.py) under a lease (`flow_ingest_leases/<id>`). Every write a delivery makes
sets `updated_at`: the job's creation, the start of each delivery, each stored batch, a continuation.

The job's live message is named by `continuation` (a number) and `continuation_token` (a random
token, absent on the upload's own message). A delivery publishes the next continuation first and
records it after, so a message numbered above the job's `continuation` is current (it was published
by the run that held the job, and its record was never written), and `superseded` tells the stale
ones: a lower number, or the same number with another token (two runs of one message that each
published a continuation: the one recorded first wins). The recorded number never goes down: the
hand-over record (record_continuation) and a delivery's start are compare-and-sets on the version
of the job they read, so a record landing late, after the continuation it names has handed over
again, is not written.

Some ends leave a job `queued` or `running` with nothing left to run it: a delivery killed by the
function's timeout or out of memory on its last attempt (no code runs, the message is dead-lettered),
a continuation that cannot get the lease in its attempts. recover_stalled (the
recover-stalled-flow-ingest-jobs maintenance job) finds a job in `queued` or `running` whose
`updated_at` is older than STALL_SECONDS, or that has no `updated_at` (queued or run by a version
that did not write it) and was created before then, and whose lease is absent or expired, and
publishes its live message again, so the worker resumes from rows_done. Its writes are compare-and-sets
on the version of the job it read (after the lease): a delivery that resumes the job in between makes
them refuse, and the job is passed by (counted `changed`), neither published again nor failed. A job recovered MAX_RECOVERIES times in a row
without progress fails with the reason: rows stored since the last recovery start the count again (a
long upload may meet several unrelated deaths), and a job still `queued` is given QUEUED_PATIENCE_SECONDS
from its creation first (behind a backlog at flow-ingest's instance limit its message is only waiting;
publishing it again is harmless, failing it is not).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from threatflow.platform import events
from threatflow.platform import logging as tf_logging
from threatflow.platform.errors import RetryableError
from threatflow.platform.ports import DocumentStore, Publisher

log = logging.getLogger("threatflow.flows.ingest")
INGEST_JOBS = "flow_ingest_jobs"
INGEST_LEASES = "flow_ingest_leases"
INGEST_TOPIC = "flow-ingest"  # continuations and recoveries go back to the topic the job came on
# flow-ingest's timeout_seconds in functions/topology.yaml (a unit test holds them equal).
FUNCTION_TIMEOUT_SECONDS = 540
# A delivery renews its lease (handlers.Lease.keep) once a quarter of it has passed, before it stores a
# batch and while it hashes the object, so a live run keeps it; one that died leaves it at most this long
# before a redelivery takes the job over.
LEASE_SECONDS = 120
# flow-ingest-push's max_delivery_attempts in functions/topology.yaml (a unit test holds them equal).
MAX_DELIVERY_ATTEMPTS = 5
# No live delivery goes this long without writing `updated_at` or renewing its lease: each writes it when
# it starts and after every batch, and renews its lease as it goes (it dies with the function's timeout at
# the latest); a job older than this with no live lease has nothing running it.
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
# Compare-and-set attempts of one job write before it gives up (each refusal is another delivery's write).
WRITE_ATTEMPTS = 5


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


def record_continuation(documents: DocumentStore, job_id: str, record: Mapping[str, Any]) -> bool:
    """Write the hand-over `record` (continuation, continuation_token, ...) unless the job already records
    a number as high, or is finished: True when written. A compare-and-set on the version read, tried again
    when another write came in between, so the recorded number never goes down (a record landing after the
    continuation it names has handed over again is dropped) and of two copies of one number the first
    recorded wins. RetryableError after WRITE_ATTEMPTS refusals."""
    following = int(record["continuation"])
    for _ in range(WRITE_ATTEMPTS):
        read = documents.get_versioned(INGEST_JOBS, job_id)
        if read is None or read.data.get("state") in ("succeeded", "failed") or int(read.data.get("continuation") or 0) >= following:
            return False
        if documents.update_if_unchanged(INGEST_JOBS, job_id, record, version=read.version) is not None:
            return True
    raise RetryableError(f"flow ingest job {job_id} kept changing: continuation {following} not recorded after {WRITE_ATTEMPTS} attempts")


def stalled(job: Mapping[str, Any], *, cutoff: datetime) -> bool:
    """Whether `job`, as read, is one recover_stalled looks at: queued or running, last written before `cutoff`
    (or never written and created before it)."""
    if job.get("state") not in ("queued", "running"):
        return False
    written = job.get("updated_at")
    if written is None:
        written = job.get("created_at")
    return isinstance(written, datetime) and written < cutoff


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
    fact running is acked by the worker (lease, continuation number).

    Each job is read again with its version, then its lease is looked at, and the recovery (or the
    failure) is a compare-and-set on that version: a delivery that resumed the job since the read
    (its start writes the job) makes it refuse, and the job is counted `changed`, not published again
    nor failed. The recovery is recorded before the publish, so a delivery of the new message always
    comes after the record; a publish that fails puts the job back as it was (unless a delivery wrote
    it since) and fails the sweep (Pub/Sub retries it)."""
    started = now()
    cutoff = started - timedelta(seconds=STALL_SECONDS)
    unwritten = unwritten_jobs(documents, before=cutoff, limit=limit + 1)
    page = unwritten + stalled_jobs(documents, before=cutoff, limit=limit + 1)
    recovered = leased = changed = 0
    failed: list[str] = []
    for listed in page[:limit]:
        job_id = str(listed["id"])
        read = documents.get_versioned(INGEST_JOBS, job_id)
        if read is None or not stalled(read.data, cutoff=cutoff):
            changed += 1  # a delivery wrote it (or it finished) since the query
            continue
        job = read.data
        # Looked at after the read: a delivery that takes the lease from here on writes the job when it
        # starts, which the compare-and-set below sees.
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
            at = now()
            failure = {"state": "failed", "error": reason, "finished_at": at, "updated_at": at}
            if documents.update_if_unchanged(INGEST_JOBS, job_id, failure, version=read.version) is None:
                changed += 1
                tf_logging.log(log, logging.INFO, "stalled flow-ingest job changed meanwhile: not failed", job_id=job_id)
                continue
            failed.append(job_id)
            tf_logging.log(log, logging.WARNING, "stalled flow-ingest job failed", job_id=job_id, recoveries=recoveries)
            continue
        at = now()
        update = {"recoveries": recoveries + 1, "recovered_at": at, "recovered_at_row": rows_done, "updated_at": at}
        version = documents.update_if_unchanged(INGEST_JOBS, job_id, update, version=read.version)
        if version is None:
            changed += 1
            tf_logging.log(log, logging.INFO, "stalled flow-ingest job changed meanwhile: not published again", job_id=job_id)
            continue
        continuation = int(job.get("continuation") or 0)
        token = job.get("continuation_token")
        data, attributes = job_message(job_id, continuation, str(token) if token is not None else None)
        try:
            publisher.publish(INGEST_TOPIC, data, attributes)
        except Exception as exc:
            # Undone only if nobody wrote it since, so the next tick finds it stalled again. A put-back that fails
            # too is logged and the publish's error is still the one raised (the job keeps the recovery; the tick
            # after STALL_SECONDS publishes it again).
            restore = {key: job.get(key) for key in update}
            tf_logging.cleanup_after(
                exc,
                functools.partial(documents.update_if_unchanged, INGEST_JOBS, job_id, restore, version=version),
                logger=log,
                what="putting back a stalled flow-ingest job whose message was not published again",
                job_id=job_id,
            )
            raise
        recovered += 1
        tf_logging.log(
            log,
            logging.INFO,
            "stalled flow-ingest job published again",
            job_id=job_id,
            state=str(job.get("state")),
            rows_done=rows_done,
            continuation=continuation,
            recoveries=recoveries + 1,
            unwritten=job.get("updated_at") is None,
        )
    return {
        "recovered": recovered,
        "failed": len(failed),
        "failed_jobs": failed[:FAILED_LISTED],
        "leased": leased,
        "changed": changed,
        "more": len(page) > limit,
        "limit": limit,
        "cutoff": cutoff.isoformat(),
    }
