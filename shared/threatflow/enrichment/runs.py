"""Enrichment runs and batches in Firestore: what was expected, what answered, the verdict.

A run document: run_id, ioc_id, type, value, status (queued | running | done),
expected (source names), skipped ({source: reason}), created_at and deadline_at
(epoch seconds), then verdict, score, timed_out and closed_at once closed
(closing.py). Results themselves are rows in PostgreSQL (one per run and source).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from threatflow.platform.ports import DocumentStore

RUNS = "enrichment_runs"
DEAD_LETTERS = "enrichment_dead_letters"


def create_run(docs: DocumentStore, run: Mapping[str, Any]) -> bool:
    return docs.create(RUNS, str(run["run_id"]), {**run, "status": "queued"})


def get_run(docs: DocumentStore, run_id: str) -> dict[str, Any] | None:
    return docs.get(RUNS, run_id)


def start_run(docs: DocumentStore, run_id: str, *, expected: Sequence[str], skipped: Mapping[str, str], deadline_at: float) -> None:
    docs.set(
        RUNS, run_id, {"status": "running", "expected": list(expected), "skipped": dict(skipped), "deadline_at": deadline_at}, merge=True
    )


def overdue_runs(docs: DocumentStore, *, before: float, limit: int) -> list[dict[str, Any]]:
    """Running runs whose deadline_at is before `before`, oldest deadline first. Firestore answers
    this only with the composite index (status, deadline_at) of terraform/firestore.tf."""
    return docs.query(RUNS, where=[("status", "==", "running"), ("deadline_at", "<", before)], order_by="deadline_at", limit=limit)


def close_run(
    docs: DocumentStore, run_id: str, *, verdict: str, score: int | None, closed_at: float, timed_out: Sequence[str] = ()
) -> None:
    docs.set(
        RUNS,
        run_id,
        {"status": "done", "verdict": verdict, "score": score, "closed_at": closed_at, "timed_out": list(timed_out)},
        merge=True,
    )
