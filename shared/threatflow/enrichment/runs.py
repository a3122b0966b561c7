"""Enrichment runs and batches in Firestore: what was expected, what answered, the verdict.

A run document: run_id, ioc_id, type, value, status (queued | requeued | running |
done; requeued: its request was published again, closing.sweep_queued), request (the
ioc-enrichment-requested message that dispatches it), expected (source
names), skipped ({source: reason}), created_at and deadline_at (epoch seconds), then
verdict, score, timed_out and closed_at once closed (closing.py), and a reason when it
was closed without being dispatched. Results themselves are rows in PostgreSQL (one
per run and source).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from threatflow.platform.ports import DocumentStore

RUNS = "enrichment_runs"
DEAD_LETTERS = "enrichment_dead_letters"


def create_run(docs: DocumentStore, run: Mapping[str, Any]) -> bool:
    return docs.create(RUNS, str(run["run_id"]), {**run, "status": "queued"})


def delete_run(docs: DocumentStore, run_id: str) -> None:
    docs.delete(RUNS, run_id)


def get_run(docs: DocumentStore, run_id: str) -> dict[str, Any] | None:
    return docs.get(RUNS, run_id)


def start_run(docs: DocumentStore, run_id: str, *, expected: Sequence[str], skipped: Mapping[str, str], deadline_at: float) -> None:
    docs.set(
        RUNS,
        run_id,
        # reason: a run closed as never dispatched that a late request (a replayed dead letter) starts after all
        {"status": "running", "expected": list(expected), "skipped": dict(skipped), "deadline_at": deadline_at, "reason": None},
        merge=True,
    )


def overdue_runs(docs: DocumentStore, *, before: float, limit: int) -> list[dict[str, Any]]:
    """Running runs whose deadline_at is before `before`, oldest deadline first. Firestore answers
    this only with the composite index (status, deadline_at) of terraform/firestore.tf."""
    return docs.query(RUNS, where=[("status", "==", "running"), ("deadline_at", "<", before)], order_by="deadline_at", limit=limit)


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
    verdict: str,
    score: int | None,
    closed_at: float,
    timed_out: Sequence[str] = (),
    reason: str | None = None,
) -> None:
    done: dict[str, Any] = {"status": "done", "verdict": verdict, "score": score, "closed_at": closed_at, "timed_out": list(timed_out)}
    if reason is not None:
        done["reason"] = reason
    docs.set(RUNS, run_id, done, merge=True)
