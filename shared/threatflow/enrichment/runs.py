"""Enrichment runs and batches in Firestore: what was expected, what answered, the verdict.

A run document: run_id, ioc_id, type, value, status (queued | requeued | running |
done; requeued: its request was published again, closing.sweep_queued), request (the
ioc-enrichment-requested message that dispatches it), expected (source
names), skipped ({source: reason}), created_at and deadline_at (epoch seconds), then
verdict, score, timed_out and closed_at once closed (closing.py), and a reason when it
was closed without being dispatched. Results themselves are rows in PostgreSQL (one
per run and source).

Every writer of a run's status changes it only if nobody wrote it since: the sweeps' and
closers' writes (closing.py) and enrich-dispatch's start (start_run) are compare-and-sets on
the version read with the run (get_run_versioned); a run the dispatcher found absent is
created started (create_started_run), which fails if it was recorded meanwhile; unless its request says the run was
recorded before it was published (EnrichRequest.recorded): that run was deleted as its publish failed, and the
request is dropped.
SWEEPS/OVERDUE_CURSOR holds where the overdue sweep's next page starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from threatflow.platform.ports import DocumentStore, Versioned

RUNS = "enrichment_runs"
DEAD_LETTERS = "enrichment_dead_letters"  # pending ones only
DEAD_LETTERS_REPLAYED = "enrichment_dead_letters_replayed"
SWEEPS = "enrichment_sweeps"
OVERDUE_CURSOR = "overdue"


def create_run(docs: DocumentStore, run: Mapping[str, Any]) -> bool:
    return docs.create(RUNS, str(run["run_id"]), {**run, "status": "queued"})


def create_runs(docs: DocumentStore, new_runs: Sequence[Mapping[str, Any]]) -> None:
    """Record many new runs queued (a batch's, before its requests are published: nobody else knows their ids
    yet, so a plain write cannot overwrite a started run), in batched writes of at most 500."""
    docs.set_many(RUNS, {str(run["run_id"]): {**run, "status": "queued"} for run in new_runs})


def delete_queued_run(docs: DocumentStore, run_id: str) -> bool:
    """Delete the run only if it is still queued (a compare-and-delete): a run enrich-dispatch started is kept."""
    return docs.delete_if(RUNS, run_id, field="status", value="queued")


def delete_queued_runs(docs: DocumentStore, run_ids: Sequence[str]) -> list[str]:
    """Delete the runs still queued (batches of compare-and-deletes: a run enrich-dispatch starts meanwhile is kept;
    a batched read then delete deleted one it started between, under its tasks); the ids of those kept."""
    deleted = set(docs.delete_many_if(RUNS, run_ids, field="status", value="queued"))
    remaining = [run_id for run_id in run_ids if run_id not in deleted]
    return [run_id for run_id, run in get_runs(docs, remaining).items() if run is not None] if remaining else []


def get_run(docs: DocumentStore, run_id: str) -> dict[str, Any] | None:
    return docs.get(RUNS, run_id)


def get_runs(docs: DocumentStore, run_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """Many runs by id in batched reads (a batch's progress), None for a run with no record."""
    return docs.get_many(RUNS, run_ids)


def get_run_versioned(docs: DocumentStore, run_id: str) -> Versioned | None:
    """The run with the version its compare-and-set writes (close_run, update_run_if_unchanged) name."""
    return docs.get_versioned(RUNS, run_id)


def update_run_if_unchanged(docs: DocumentStore, run_id: str, fields: Mapping[str, Any], *, version: str) -> str | None:
    """Write `fields` onto the run only if it is still at `version`: its new version, else None."""
    return docs.update_if_unchanged(RUNS, run_id, fields, version=version)


def _started(expected: Sequence[str], skipped: Mapping[str, str], deadline_at: float) -> dict[str, Any]:
    # reason: a run closed as never dispatched that a late request (a replayed dead letter) starts after all
    return {"status": "running", "expected": list(expected), "skipped": dict(skipped), "deadline_at": deadline_at, "reason": None}


def start_run(
    docs: DocumentStore, run_id: str, *, version: str, expected: Sequence[str], skipped: Mapping[str, str], deadline_at: float
) -> bool:
    """Start the run as read at `version` (get_run_versioned): a compare-and-set, so a close (the sweeps',
    enrich-aggregate's) or another start landing since that read is never overwritten. False, and nothing
    written, when the run was written or deleted since: the caller reads it again and decides again."""
    return update_run_if_unchanged(docs, run_id, _started(expected, skipped, deadline_at), version=version) is not None


def create_started_run(
    docs: DocumentStore, run: Mapping[str, Any], *, expected: Sequence[str], skipped: Mapping[str, str], deadline_at: float
) -> bool:
    """A run nobody recorded (auto-enrichment on ingest publishes no run first), created already started.
    False, and nothing written, when it exists: recorded since the caller found none."""
    return docs.create(RUNS, str(run["run_id"]), {**run, **_started(expected, skipped, deadline_at)})


def overdue_runs(docs: DocumentStore, *, before: float, after: float | None = None, limit: int) -> list[dict[str, Any]]:
    """Running runs whose deadline_at is before `before` (and after `after`, a page cursor), oldest deadline
    first. Firestore answers this only with the composite index (status, deadline_at) of terraform/firestore.tf."""
    where: list[tuple[str, str, Any]] = [("status", "==", "running"), ("deadline_at", "<", before)]
    if after is not None:
        where.append(("deadline_at", ">", after))
    return docs.query(RUNS, where=where, order_by="deadline_at", limit=limit)


def overdue_cursor(docs: DocumentStore) -> float | None:
    """The deadline_at after which the overdue sweep's next page starts; None: from the oldest (also for a
    cursor that is not a finite number: NaN in a range filter is a ValueError in the Firestore client)."""
    cursor = docs.get(SWEEPS, OVERDUE_CURSOR) or {}
    after = cursor.get("after")
    return float(after) if isinstance(after, int | float) and not isinstance(after, bool) and math.isfinite(after) else None


def set_overdue_cursor(docs: DocumentStore, after: float | None, *, at: float) -> None:
    docs.set(SWEEPS, OVERDUE_CURSOR, {"after": after, "at": at})


def queued_runs(docs: DocumentStore, *, before: float, limit: int) -> list[dict[str, Any]]:
    """Queued (never dispatched) runs created before `before`, oldest first. Firestore answers this
    only with the composite index (status, created_at) of terraform/firestore.tf."""
    return docs.query(RUNS, where=[("status", "==", "queued"), ("created_at", "<", before)], order_by="created_at", limit=limit)


def requeued_runs(docs: DocumentStore, *, before: float, limit: int) -> list[dict[str, Any]]:
    """Runs whose request was published again before `before` and that are still not started, oldest
    first. Firestore answers this only with the composite index (status, redispatched_at)."""
    return docs.query(RUNS, where=[("status", "==", "requeued"), ("redispatched_at", "<", before)], order_by="redispatched_at", limit=limit)


def close_run(
    docs: DocumentStore,
    run_id: str,
    *,
    version: str,
    verdict: str,
    score: int | None,
    closed_at: float,
    timed_out: Sequence[str] = (),
    reason: str | None = None,
) -> bool:
    """Mark the run done, only if it is still at `version` (the one its closer read): False, and nothing
    written, when it changed since (a dispatcher started it meanwhile) or is gone."""
    done: dict[str, Any] = {"status": "done", "verdict": verdict, "score": score, "closed_at": closed_at, "timed_out": list(timed_out)}
    if reason is not None:
        done["reason"] = reason
    return update_run_if_unchanged(docs, run_id, done, version=version) is not None
