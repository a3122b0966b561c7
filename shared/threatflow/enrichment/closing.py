"""Closing an enrichment run: the one implementation, whoever closes it.

    enrich-aggregate (a source answered)        handlers.finalize -> close
    GET /runs/{run_id} after the deadline       handlers.finalize -> close
    close-overdue-enrichment-runs (maintenance) close_overdue     -> close, page by page
                                                sweep_queued      -> runs never dispatched

A run closes when every expected source has a result row, or when its deadline
has passed: the sources still missing get a `timeout` row, the rows are merged
into the IoC's verdict (`apply_verdict`, cross-domain, is passed in by the
caller) and the run document turns `done`.

Two closers at once (a late answer's enrich-aggregate and the sweep, or a
redelivery) are serialised by a PostgreSQL advisory lock on the run id, held
from before the run is re-read until after it is marked done in Firestore; the
second closer then finds it done and changes nothing. Result rows are written
once per (run, source), so a late answer after the timeout row is dropped. If
the Firestore write fails after the commit, the run stays running and the next
close redoes the same idempotent writes.

The lock does not hold off enrich-dispatch, which may start a run again (a second
delivery of its request) while a closer works on it. So a closer's writes are
compare-and-sets on the version of the run it read under the lock: a run written
meanwhile has this attempt's rows rolled back (checked just before the commit) or
its done refused (in the instant after it; its timeout rows are then deleted, the
verdict it applied stays until the run closes again), and is judged again as it now is,
at most CLOSE_ATTEMPTS times; sweep_queued's writes are compare-and-sets as well.
A sweep passes such a run by and counts it `changed`.

A run that enrich-dispatch never started stays `queued`, with no deadline: its
request was dead-lettered after every attempt failed, or waits in a backlog.
sweep_queued publishes the run's own request (stored on the run) again, through the
same dispatch path (the run turns `requeued`), at most MAX_REDISPATCHES times,
then closes it `done` with verdict unknown and a reason. Publishing it again is safe: dispatch_request skips a
run already dispatched, and result rows are written once per (run, source), so a
request delivered twice at once costs at most a second lookup per source.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from threatflow.adapters.postgres import lost_race, unavailable, unit_of_work
from threatflow.enrichment import repository, runs, verdict
from threatflow.enrichment.tasks import TOPIC_REQUESTED
from threatflow.platform import events
from threatflow.platform import logging as tf_logging
from threatflow.platform.errors import RetryableError
from threatflow.platform.ports import DocumentStore, Publisher, Versioned

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("threatflow.enrichment")
DEADLINE_DETAIL = "no answer before the run deadline"
SWEEP_LIMIT = 500  # runs closed per maintenance invocation at most; the next tick takes the rest
SWEEP_MAX = 5000
FAILED_LISTED = 20
# The sweep does not wait for a run another closer holds (that closer finishes it, or the next tick
# does): a lock that lingers with a lost session must not stall the page, oldest deadline first.
SWEEP_LOCK_WAIT_MS = 50
# ioc-enrichment-requested-push (functions/topology.yaml): 5 attempts, 60 s ack deadline, at most 60 s
# backoff: a request is dispatched or dead-lettered within about 10 minutes of its publish. A run queued
# three times as long has no live message; a backlog of that age gets a second message, which is harmless.
QUEUED_STALL_SECONDS = 1800
MAX_REDISPATCHES = 2
# A closer re-reads a run written under it (a dispatcher's write) and judges it again, this many times in all.
CLOSE_ATTEMPTS = 3


class ApplyVerdict(Protocol):
    """intel.enrichment.apply_verdict: the merged verdict onto the IoC, evidence and threat links."""

    def __call__(
        self, conn: Connection, *, ioc_id: int, run_id: str, merged: verdict.Merged, results: Sequence[Mapping[str, Any]]
    ) -> None: ...


@dataclass(frozen=True)
class Closed:
    run: dict[str, Any] | None  # the run document as it is now
    closed: bool  # this call closed it (False: not due yet, or closed already)
    changed: bool = False  # not closed: someone else wrote the run while this call was closing it


def reliability() -> dict[str, float]:
    """Each source's weight in the merge."""
    from threatflow.enrichment.sources import REGISTRY

    return {name: float(src.reliability) for name, src in REGISTRY.items()}


def _open(run: Mapping[str, Any] | None) -> bool:
    return run is not None and run.get("status") == "running"


def _missing(run: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted(set(run.get("expected") or ()) - {r["source"] for r in results})


def _due(run: Mapping[str, Any], missing: Sequence[str]) -> bool:
    return not missing or time.time() >= float(run.get("deadline_at") or 0)


def close(
    run_id: str,
    *,
    documents: DocumentStore,
    engine: Engine,
    now: Callable[[], datetime],
    reliability: Mapping[str, float],
    apply_verdict: ApplyVerdict,
    lock_wait_ms: int = repository.LOCK_WAIT_MS,
) -> Closed:
    """Close the run if every expected source answered or its deadline passed. Idempotent.
    RunBeingClosed if another closer holds the run past `lock_wait_ms`."""
    run = runs.get_run(documents, run_id)
    if run is None or not _open(run):
        return Closed(run, False)
    with unit_of_work(engine) as conn:
        if not _due(run, _missing(run, repository.run_results(conn, run_id))):
            return Closed(run, False)  # the common case of a non-last answer: no lock taken
    with _run_lock(engine, run_id, wait_ms=lock_wait_ms) as conn:  # one transaction per attempt; rolled back unless committed
        changed = False
        for _ in range(CLOSE_ATTEMPTS):
            read = runs.get_run_versioned(documents, run_id)  # under the lock: another closer may have finished meanwhile
            if read is None or not _open(read.data):
                return Closed(read.data if read else None, False, changed=changed)
            outcome = _close_locked(conn, run_id, read, documents=documents, now=now, reliability=reliability, apply_verdict=apply_verdict)
            if outcome is None:  # written meanwhile: judged again on what it is now
                changed = True
                tf_logging.log(log, logging.WARNING, "enrichment run written while being closed: read again", run_id=run_id)
                continue
            if not outcome:
                return Closed(read.data, False, changed=changed)
            break
        else:
            return Closed(runs.get_run(documents, run_id), False, changed=True)
    return Closed(runs.get_run(documents, run_id), True)


def _close_locked(
    conn: Connection,
    run_id: str,
    read: Versioned,
    *,
    documents: DocumentStore,
    now: Callable[[], datetime],
    reliability: Mapping[str, float],
    apply_verdict: ApplyVerdict,
) -> bool | None:
    """One attempt, under the run's lock, on the run as `read`: True closed, False not due, None when the
    run was written by someone else since `read` (a dispatcher starting it again): its rows rolled back,
    or, in the instant between the commit and the Firestore write, that write refused and its timeout
    rows deleted (the verdict it applied stays until the run closes again)."""
    run = read.data
    results = repository.run_results(conn, run_id)
    missing = _missing(run, results)
    if not _due(run, missing):
        return False
    ioc_id = int(run["ioc_id"])
    at = now()
    merged = verdict.Merged("unknown", None, [])
    if repository.ioc_exists(conn, ioc_id):
        if missing:
            repository.insert_results(conn, [_timeout_row(run_id, ioc_id, s, at) for s in missing])
            results = repository.run_results(conn, run_id)
        merged = verdict.merge(results, reliability=reliability, now=at)
        apply_verdict(conn, ioc_id=ioc_id, run_id=run_id, merged=merged, results=results)
    else:  # the IoC was deleted: nothing to write it onto, but the run must not stay open
        tf_logging.log(log, logging.WARNING, "closing a run whose IoC is gone", run_id=run_id, ioc_id=ioc_id)
    current = runs.get_run_versioned(documents, run_id)
    if current is None or current.version != read.version:
        conn.rollback()  # nothing of this attempt is kept: the run is not what it was judged on
        return None
    conn.commit()  # before the Firestore write: a run marked done always has its rows and verdict
    # Derived from the stored rows, not from `missing`: the same answer whoever closed.
    timed_out = sorted(r["source"] for r in results if r["status"] == "timeout" and r["detail"] == DEADLINE_DETAIL)
    done = runs.close_run(
        documents, run_id, version=read.version, verdict=merged.verdict, score=merged.score, closed_at=time.time(), timed_out=timed_out
    )
    if done:
        return True
    # Written in the instant since the commit (a dispatcher starting it again): this attempt's timeout rows
    # would stand in for the answers the new start waits for (the run due at once, those answers dropped),
    # so they go, still under the lock. The verdict stays on the IoC until the run closes again.
    if missing and repository.delete_timeout_rows(conn, run_id, sources=missing, detail=DEADLINE_DETAIL):
        conn.commit()
    return None


@contextmanager
def _run_lock(engine: Engine, run_id: str, *, wait_ms: int) -> Iterator[Connection]:
    """A connection holding the run's advisory lock until the block ends, commit and Firestore write included."""
    with engine.connect() as conn:
        repository.lock_run(conn, run_id, wait_ms=wait_ms)
        conn.commit()
        try:
            yield conn
        finally:
            try:
                conn.rollback()
                repository.unlock_run(conn, run_id)
                conn.commit()
            except Exception:
                conn.invalidate()  # it may still hold the lock: closed, not returned to the pool


def _timeout_row(run_id: str, ioc_id: int, source: str, at: datetime) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "ioc_id": ioc_id,
        "source": source,
        "status": "timeout",
        "verdict": "unknown",
        "score": None,
        "evidence": {},
        "detail": DEADLINE_DETAIL,
        "cached": False,
        "fetched_at": at.isoformat(),
    }


def close_overdue(
    *,
    documents: DocumentStore,
    engine: Engine,
    now: Callable[[], datetime],
    reliability: Mapping[str, float],
    apply_verdict: ApplyVerdict,
    limit: int = SWEEP_LIMIT,
) -> dict[str, Any]:
    """Close up to `limit` running runs whose deadline has passed, in deadline order, so that a run
    nobody reads still reaches its IoC's verdict. A run that cannot be closed (a bug, bad data) is
    logged and listed, and the sweep goes on; a backing service down fails the sweep. A run whose close
    PostgreSQL aborted for a deadlock or serialization failure is closed again once (`raced`), then counted `busy`.

    Each page starts after the last deadline of the page before (runs.overdue_cursor) and a page that
    reaches the end sends the next tick back to the oldest: runs passed by (failed, busy, changed)
    are tried again once per round, and however many of them there are, they cannot fill every page
    and starve the runs behind them. A run sharing the exact deadline of a page's last run, beyond
    that page, waits for the next round."""
    cutoff = time.time()
    after = runs.overdue_cursor(documents)
    page = runs.overdue_runs(documents, before=cutoff, after=after, limit=limit + 1)
    closed = already = busy = changed = 0
    failed: list[str] = []
    raced: list[str] = []
    for doc in page[:limit]:
        run_id = str(doc["id"])
        try:
            outcome = _close_swept(
                run_id,
                raced=raced,
                documents=documents,
                engine=engine,
                now=now,
                reliability=reliability,
                apply_verdict=apply_verdict,
            )
        except repository.RunBeingClosed:
            busy += 1  # another closer is at it (or its lost session still holds the lock): next round
            continue
        except Exception as exc:
            if isinstance(exc, RetryableError):
                raise
            down = unavailable(exc)
            if down is not None:
                raise down from exc
            tf_logging.log(log, logging.ERROR, f"overdue run not closed: {exc.__class__.__name__}: {exc}", run_id=run_id)
            failed.append(run_id)
            continue
        if outcome.closed:
            closed += 1
        elif outcome.changed:
            changed += 1  # a dispatcher started it again while it was being closed: left as that dispatcher wrote it
        else:
            already += 1  # a late answer or a reader closed it since the query
    more = len(page) > limit
    if more or after is not None:
        runs.set_overdue_cursor(documents, float(page[limit - 1]["deadline_at"]) if more else None, at=cutoff)
    return {
        "closed": closed,
        "already_closed": already,
        "busy": busy,
        "raced": len(raced),
        "changed": changed,
        "failed": len(failed),
        "failed_runs": failed[:FAILED_LISTED],
        "more": more,
        "after": after,
        "limit": limit,
        "cutoff": cutoff,
    }


def _close_swept(
    run_id: str,
    *,
    raced: list[str],
    documents: DocumentStore,
    engine: Engine,
    now: Callable[[], datetime],
    reliability: Mapping[str, float],
    apply_verdict: ApplyVerdict,
) -> Closed:
    """close() for the sweep, run once more when PostgreSQL aborted its transaction for racing another writer of the
    run's rows or its IoC (a deadlock, a serialization failure: nothing of it was kept, and the same work succeeds when
    run again); the run is added to `raced`. A second such abort raises RunBeingClosed: the sweep counts the run busy
    and its next round takes it. Raised, the abort failed the whole sweep (a 503) and every run behind it waited."""
    for attempt in (1, 2):
        try:
            return close(
                run_id,
                documents=documents,
                engine=engine,
                now=now,
                reliability=reliability,
                apply_verdict=apply_verdict,
                lock_wait_ms=SWEEP_LOCK_WAIT_MS,
            )
        except Exception as exc:
            if not lost_race(exc):
                raise
            tf_logging.log(log, logging.WARNING, f"overdue run lost a race closing it (attempt {attempt})", run_id=run_id)
            if attempt == 1:
                raced.append(run_id)
                continue
            raise repository.RunBeingClosed(f"enrichment run {run_id} lost a race twice while being closed; next round") from exc
    raise AssertionError("unreachable")


def sweep_queued(*, documents: DocumentStore, publisher: Publisher, limit: int = SWEEP_LIMIT) -> dict[str, Any]:
    """Up to `limit` runs not started QUEUED_STALL_SECONDS after their creation (or after their request was
    last published again), oldest first: each is dispatched again (its stored request, published on
    ioc-enrichment-requested; the run turns `requeued`) unless it was MAX_REDISPATCHES times already or
    stores no request, and is then closed as never dispatched. Idempotent: a requeued run leaves both
    queries for QUEUED_STALL_SECONDS, so neither a second tick nor a redelivery publishes it twice."""
    stalled_before = time.time() - QUEUED_STALL_SECONDS
    page = runs.queued_runs(documents, before=stalled_before, limit=limit + 1)
    page += runs.requeued_runs(documents, before=stalled_before, limit=limit + 1)
    page.sort(key=lambda doc: float(doc.get("redispatched_at") or doc.get("created_at") or 0))
    redispatched = closed = changed = 0
    for doc in page[:limit]:
        run_id = str(doc["id"])
        # Read again, with its version: the dispatcher may have started it since the query. One starting it after
        # this read makes the compare-and-set writes below refuse: the run is passed by (counted `changed`), never
        # overwritten back to requeued or done.
        read = runs.get_run_versioned(documents, run_id)
        if read is None or read.data.get("status") not in ("queued", "requeued"):
            continue
        current = read.data
        request, count = current.get("request"), int(current.get("redispatches") or 0)
        if isinstance(request, Mapping) and count < MAX_REDISPATCHES:
            # Recorded before the publish, so a dispatch of the new message always comes after it.
            requeued = {"status": "requeued", "redispatches": count + 1, "redispatched_at": time.time()}
            version = runs.update_run_if_unchanged(documents, run_id, requeued, version=read.version)
            if version is None:
                changed += 1
                tf_logging.log(log, logging.INFO, "queued enrichment run changed meanwhile: not dispatched again", run_id=run_id)
                continue
            attributes = {"run_id": run_id, **({"batch_id": str(current["batch_id"])} if current.get("batch_id") else {})}
            try:
                publisher.publish(TOPIC_REQUESTED, events.encode({**request, "run_id": run_id}), attributes)
            except Exception as exc:
                # Undone only if nobody wrote it since (a dispatcher that started it keeps its start). A put-back
                # that fails too is logged and the publish's error is still the one raised; the run stays requeued
                # and the next tick past QUEUED_STALL_SECONDS publishes it again.
                restore = {k: current.get(k) for k in ("status", "redispatches", "redispatched_at")}
                tf_logging.cleanup_after(
                    exc,
                    functools.partial(runs.update_run_if_unchanged, documents, run_id, restore, version=version),
                    logger=log,
                    what="putting back a queued enrichment run whose request was not published again",
                    run_id=run_id,
                )
                raise
            redispatched += 1
            tf_logging.log(log, logging.INFO, "queued enrichment run dispatched again", run_id=run_id, redispatches=count + 1)
            continue
        reason = (
            f"never dispatched: not started after its request was published again {count} times, {QUEUED_STALL_SECONDS} s apart"
            if isinstance(request, Mapping)
            else "never dispatched: not started, and the run stores no request to publish again"
        )
        # No result row and no verdict are written: nothing was looked up, so the IoC keeps what it had.
        # A request dispatched after all (an admin's replay of its dead letter) starts the run again.
        if not runs.close_run(documents, run_id, version=read.version, verdict="unknown", score=None, closed_at=time.time(), reason=reason):
            changed += 1
            tf_logging.log(log, logging.INFO, "queued enrichment run changed meanwhile: not closed", run_id=run_id)
            continue
        closed += 1
        tf_logging.log(log, logging.WARNING, "queued enrichment run closed: never dispatched", run_id=run_id)
    return {
        "redispatched": redispatched,
        "closed": closed,
        "changed": changed,
        "more": len(page) > limit,
        "limit": limit,
        "cutoff": stalled_before,
    }
