"""Enrichment run deadlines close without a reader: the close-overdue-enrichment-runs job,
pushed to the real maintenance function, on real PostgreSQL and the Firestore emulator.

Runs are started the way enrich-dispatch starts them (runs.create_run + runs.start_run),
with a deadline already behind them; nothing ever reads them through GET /runs/{id}."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

import pytest
from helpers import (
    FirestoreDownWithPubSub,
    clear_enrichment_runs,
    enrichment_ioc,
    pull_published,
    push_envelope,
    push_envelope_of,
    start_enrichment_run,
    store_enrichment_answer,
)

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"
JOB = "close-overdue-enrichment-runs"


@pytest.fixture
def env(backend_env, function_client):
    from threatflow.runtime import Runtime

    runtime = Runtime.from_env()
    docs = runtime.documents
    clear_enrichment_runs(docs)
    yield {"runtime": runtime, "docs": docs, "maintenance": function_client("maintenance")}
    runtime.engine.dispose()


def _rows(runtime: Any, run_id: str) -> dict[str, dict[str, Any]]:
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.enrichment import repository

    with unit_of_work(runtime.engine) as conn:
        return {r["source"]: r for r in repository.run_results(conn, run_id)}


def _verdict(runtime: Any, ioc_id: int) -> dict[str, Any] | None:
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.enrichment import repository

    with unit_of_work(runtime.engine) as conn:
        return repository.get_verdict(conn, ioc_id)


def _run_job(env: dict[str, Any], **params: Any) -> dict[str, Any]:
    """Push the schedule's message to the maintenance function; the recorded job result."""
    run_id = uuid.uuid4().hex
    data = {"schema_version": 1, **({"params": params} if params else {})}
    push = push_envelope(data, {"job": JOB, "run_id": run_id}, "maintenance-push")
    assert env["maintenance"].post("/", json=push).status_code == 200
    record = env["docs"].get("maintenance_runs", run_id)
    assert record is not None and record["state"] == "succeeded", record
    return dict(record["result"])


def test_an_overdue_run_nobody_reads_is_closed_and_others_are_untouched(env):
    from threatflow.enrichment import runs

    runtime, docs = env["runtime"], env["docs"]
    overdue_ioc = enrichment_ioc(runtime, "185.220.101.7")
    overdue = start_enrichment_run(runtime, overdue_ioc, "185.220.101.7", expected=["abuseipdb", "virustotal"], deadline_in=-30)
    store_enrichment_answer(runtime, overdue, overdue_ioc, "virustotal")  # abuseipdb never answers
    pending_ioc = enrichment_ioc(runtime, "185.220.101.8")
    pending = start_enrichment_run(runtime, pending_ioc, "185.220.101.8", expected=["abuseipdb", "virustotal"], deadline_in=600)
    store_enrichment_answer(runtime, pending, pending_ioc, "virustotal")
    finished_ioc = enrichment_ioc(runtime, "185.220.101.9")
    finished = start_enrichment_run(runtime, finished_ioc, "185.220.101.9", expected=["virustotal"], deadline_in=-30)
    assert runs.close_run(
        docs, finished, version=docs.get_versioned(runs.RUNS, finished).version, verdict="harmless", score=5, closed_at=123.0
    )
    before = {run_id: docs.get(runs.RUNS, run_id) for run_id in (pending, finished)}

    result = _run_job(env)

    assert (result["closed"], result["already_closed"], result["failed"], result["more"]) == (1, 0, 0, False), result
    closed = docs.get(runs.RUNS, overdue)
    assert closed["status"] == "done" and closed["timed_out"] == ["abuseipdb"], closed
    assert closed["verdict"] == "malicious" and closed["closed_at"] >= closed["deadline_at"]
    rows = _rows(runtime, overdue)
    assert rows["abuseipdb"]["status"] == "timeout" and rows["virustotal"]["status"] == "ok"
    assert _verdict(runtime, overdue_ioc)["run_id"] == overdue  # downstream sees the closed run
    # Before its deadline, and already done: neither document nor rows change.
    assert {run_id: docs.get(runs.RUNS, run_id) for run_id in (pending, finished)} == before
    assert set(_rows(runtime, pending)) == {"virustotal"} and _rows(runtime, finished) == {}
    assert _verdict(runtime, pending_ioc) is None and _verdict(runtime, finished_ioc) is None

    # The next tick finds nothing to do and leaves the closed run as it was.
    again = _run_job(env)
    assert (again["closed"], again["already_closed"], again["more"]) == (0, 0, False), again
    assert docs.get(runs.RUNS, overdue) == closed


def test_one_invocation_closes_at_most_its_page_oldest_deadline_first(env):
    from threatflow.enrichment import runs

    runtime, docs = env["runtime"], env["docs"]
    ioc_id = enrichment_ioc(runtime, "45.95.147.20")
    started = [start_enrichment_run(runtime, ioc_id, "45.95.147.20", expected=["virustotal"], deadline_in=-500 + 10 * i) for i in range(5)]

    first = _run_job(env, limit=3)
    assert (first["closed"], first["more"], first["limit"]) == (3, True, 3), first
    assert [docs.get(runs.RUNS, r)["status"] for r in started] == ["done"] * 3 + ["running"] * 2

    second = _run_job(env, limit=3)
    assert (second["closed"], second["more"]) == (2, False), second
    assert all(docs.get(runs.RUNS, r)["status"] == "done" for r in started)


def test_a_limit_outside_the_bound_fails_the_run_without_closing_anything(env):
    from threatflow.enrichment import closing, runs

    runtime, docs = env["runtime"], env["docs"]
    run_id = start_enrichment_run(
        runtime, enrichment_ioc(runtime, "45.95.147.21"), "45.95.147.21", expected=["virustotal"], deadline_in=-30
    )
    job_run = uuid.uuid4().hex
    data = {"schema_version": 1, "params": {"limit": closing.SWEEP_MAX + 1}}
    push = push_envelope(data, {"job": JOB, "run_id": job_run}, "maintenance-push")
    assert env["maintenance"].post("/", json=push).status_code == 200  # a permanent error: acked, not retried
    assert "params.limit" in docs.get("maintenance_runs", job_run)["error"]
    assert docs.get(runs.RUNS, run_id)["status"] == "running"
    for params in ([500], "limit=5", 5):  # params that are not an object: acked as well, not an AttributeError's 500
        data = {"schema_version": 1, "params": params}
        push = push_envelope(data, {"job": JOB, "run_id": job_run}, "maintenance-push")
        response = env["maintenance"].post("/", json=push)
        assert response.status_code == 200, (params, response.status_code)
    assert docs.get(runs.RUNS, run_id)["status"] == "running"


def test_a_late_answer_racing_the_sweep_closes_the_run_once(env):
    """enrich-aggregate's finalize (a late answer) and the sweep at the same instant: one closes;
    the answer after the timeout row is dropped, and finalizing again changes nothing."""
    from threatflow.adapters.postgres import create_engine
    from threatflow.enrichment import closing, handlers, runs
    from threatflow.intel import enrichment as intel_enrichment
    from threatflow.platform.config import Settings

    runtime, docs = env["runtime"], env["docs"]
    ctx = handlers.context(runtime)
    # A connection per closer, as separate function instances have (a function's own pool holds two).
    engine = create_engine(Settings.from_env({"DATABASE_URL": runtime.settings.database_url, "DB_POOL_SIZE": "6"}))
    ioc_id = enrichment_ioc(runtime, "178.128.78.9")
    run_id = start_enrichment_run(runtime, ioc_id, "178.128.78.9", expected=["abuseipdb", "virustotal"], deadline_in=-1)
    store_enrichment_answer(runtime, run_id, ioc_id, "virustotal")
    deps = {
        "documents": docs,
        "engine": engine,
        "now": ctx.now,
        "reliability": ctx.reliability(),
        "apply_verdict": intel_enrichment.apply_verdict,
    }
    gate = threading.Barrier(6)
    closed: list[int] = []

    def finalize() -> None:
        gate.wait()
        closed.append(int(closing.close(run_id, **deps).closed))

    def sweep() -> None:
        gate.wait()
        closed.append(closing.close_overdue(**deps)["closed"])

    threads = [threading.Thread(target=finalize) for _ in range(4)] + [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    engine.dispose()
    assert sum(closed) == 1 and len(closed) == 6, closed
    done = docs.get(runs.RUNS, run_id)
    assert done["status"] == "done" and done["timed_out"] == ["abuseipdb"], done

    # abuseipdb answers after all, and enrich-aggregate finalizes again: the run stays as it closed.
    assert store_enrichment_answer(runtime, run_id, ioc_id, "abuseipdb", verdict="harmless", score=0) == 0
    assert handlers.finalize(ctx, run_id) == done
    assert _rows(runtime, run_id)["abuseipdb"]["status"] == "timeout"
    assert _verdict(runtime, ioc_id)["verdict"] == done["verdict"]


def test_a_run_whose_ioc_was_deleted_is_closed_not_retried_forever(env):
    from threatflow.enrichment import runs

    runtime, docs = env["runtime"], env["docs"]
    run_id = start_enrichment_run(runtime, 987_654_321, "203.0.113.9", expected=["virustotal"], deadline_in=-30)
    result = _run_job(env)
    assert (result["closed"], result["failed"]) == (1, 0), result
    run = docs.get(runs.RUNS, run_id)
    assert run["status"] == "done" and run["verdict"] == "unknown" and run["score"] is None, run


# -- runs never dispatched (still queued) -------------------------------------------------------------


@pytest.fixture
def requested():
    """A pull subscription on ioc-enrichment-requested: the requests the sweep publishes again."""
    import contextlib

    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    for name in ("ioc-enrichment-requested", "enrichment-tasks", "enrichment-completed"):
        with contextlib.suppress(Exception):  # already made by an earlier test in this run
            publisher.create_topic(name=publisher.topic_path(PROJECT, name))
    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(PROJECT, f"requested-test-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=path, topic=publisher.topic_path(PROJECT, "ioc-enrichment-requested"))

    def pull(expected: int) -> list[Any]:
        """The requests published (acked), waiting for `expected` of them."""
        topic = publisher.topic_path(PROJECT, "ioc-enrichment-requested")
        return pull_published(publisher, subscriber, topic=topic, subscription=path, expected=expected, keep=lambda m: True)

    yield pull
    subscriber.delete_subscription(subscription=path)
    subscriber.close()


def _queued(runtime: Any, ioc_id: int, value: str, *, age: float, with_request: bool = True, **fields: Any) -> str:
    """A run as POST /enrich records it before enrich-dispatch starts it (handlers.request), `age` seconds old."""
    from threatflow.enrichment import handlers, runs
    from threatflow.enrichment.tasks import EnrichRequest

    req = EnrichRequest(uuid.uuid4().hex, ioc_id, "ipv4", value, tlp="green", sources=("virustotal",))
    doc = {**handlers._run_document(req), "created_at": time.time() - age, **fields}
    if not with_request:
        del doc["request"]
    assert runs.create_run(runtime.documents, doc)  # always "queued"
    if "status" in fields:
        runtime.documents.set(runs.RUNS, req.run_id, {"status": fields["status"]}, merge=True)
    return req.run_id


def _stalled() -> float:
    from threatflow.enrichment import closing

    return closing.QUEUED_STALL_SECONDS + 60


def test_a_run_never_dispatched_is_dispatched_again_through_enrich_dispatch(env, requested, function_client):
    from threatflow.enrichment import runs

    runtime, docs = env["runtime"], env["docs"]
    ioc_id = enrichment_ioc(runtime, "45.95.147.30")
    stuck = _queued(runtime, ioc_id, "45.95.147.30", age=_stalled())
    recent = _queued(runtime, ioc_id, "45.95.147.30", age=60)  # its request may still be on its way
    running = start_enrichment_run(runtime, ioc_id, "45.95.147.30", expected=["virustotal"], deadline_in=600)

    result = _run_job(env)
    assert (result["closed"], result["more"]) == (0, False), result  # the overdue sweep: nothing due
    queued = result["queued"]
    assert (queued["redispatched"], queued["closed"], queued["more"]) == (1, 0, False), queued
    [message] = requested(expected=1)
    assert dict(message.attributes) == {"run_id": stuck}
    request = json.loads(message.data)
    assert request == {**docs.get(runs.RUNS, stuck)["request"], "schema_version": 1}
    assert request["sources"] == ["virustotal"] and request["tlp"] == "green"
    run = docs.get(runs.RUNS, stuck)
    assert run["status"] == "requeued" and run["redispatches"] == 1, run
    assert "redispatches" not in docs.get(runs.RUNS, recent) and docs.get(runs.RUNS, running)["status"] == "running"

    # The next tick leaves it alone while its new request is on its way.
    again = _run_job(env)["queued"]
    assert (again["redispatched"], again["closed"]) == (0, 0), again
    assert requested(expected=0) == []

    # Delivered to the real enrich-dispatch, the request starts the run with the sources it asked for.
    push = push_envelope_of(message, "ioc-enrichment-requested-push")
    assert function_client("enrich-dispatch").post("/", json=push).status_code == 200
    run = docs.get(runs.RUNS, stuck)
    assert run["dispatched"] is True and run["status"] in ("running", "done"), run
    assert set(run["expected"]) | set(run["skipped"]) == {"virustotal"}, run
    after = _run_job(env)["queued"]
    assert (after["redispatched"], after["closed"]) == (0, 0), after


def test_a_run_dispatched_again_to_the_cap_or_with_no_request_is_closed_as_never_dispatched(env, requested):
    from threatflow.enrichment import closing, runs

    runtime, docs = env["runtime"], env["docs"]
    ioc_id = enrichment_ioc(runtime, "45.95.147.31")
    capped = _queued(
        runtime,
        ioc_id,
        "45.95.147.31",
        age=3 * _stalled(),
        status="requeued",
        redispatches=closing.MAX_REDISPATCHES,
        redispatched_at=time.time() - _stalled(),
    )
    bare = _queued(runtime, ioc_id, "45.95.147.31", age=_stalled(), with_request=False)  # recorded before runs kept their request

    queued = _run_job(env)["queued"]
    assert (queued["redispatched"], queued["closed"]) == (0, 2), queued
    assert requested(expected=0) == []
    for run_id, words in ((capped, f"published again {closing.MAX_REDISPATCHES} times"), (bare, "stores no request")):
        run = docs.get(runs.RUNS, run_id)
        assert run["status"] == "done" and run["verdict"] == "unknown" and run["score"] is None, run
        assert run["reason"].startswith("never dispatched") and words in run["reason"], run
        assert _rows(runtime, run_id) == {}
    assert _verdict(runtime, ioc_id) is None  # nothing was looked up: the IoC's verdict is not touched
    assert _run_job(env)["queued"]["closed"] == 0


def test_one_invocation_dispatches_at_most_limit_queued_runs_oldest_first(env, requested):
    from threatflow.enrichment import runs

    runtime, docs = env["runtime"], env["docs"]
    ioc_id = enrichment_ioc(runtime, "45.95.147.32")
    stuck = [_queued(runtime, ioc_id, "45.95.147.32", age=_stalled() + 100 - i) for i in range(5)]

    first = _run_job(env, limit=3)["queued"]
    assert (first["redispatched"], first["more"], first["limit"]) == (3, True, 3), first
    assert {m.attributes["run_id"] for m in requested(expected=3)} == set(stuck[:3])
    second = _run_job(env, limit=3)["queued"]
    assert (second["redispatched"], second["more"]) == (2, False), second
    assert {m.attributes["run_id"] for m in requested(expected=2)} == set(stuck[3:])
    assert all(docs.get(runs.RUNS, r)["redispatches"] == 1 and docs.get(runs.RUNS, r)["status"] == "requeued" for r in stuck)
    assert _run_job(env, limit=3)["queued"]["redispatched"] == 0 and requested(expected=0) == []


def test_a_request_that_cannot_be_published_leaves_no_queued_run(env):
    """POST /enrich's request() records the run, then publishes; a failed publish deletes the run (the caller
    gets the error, never the run id), so every queued run the sweep finds had its request published."""
    import contextlib

    from google.cloud import pubsub_v1

    from threatflow.enrichment import handlers, runs
    from threatflow.enrichment.tasks import EnrichRequest
    from threatflow.platform.errors import DependencyError

    runtime, docs = env["runtime"], env["docs"]
    req = EnrichRequest(uuid.uuid4().hex, enrichment_ioc(runtime, "45.95.147.33"), "ipv4", "45.95.147.33")
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(PROJECT, "ioc-enrichment-requested")
    with contextlib.suppress(Exception):
        publisher.delete_topic(topic=topic)
    try:
        with pytest.raises(DependencyError):
            handlers.request(handlers.context(runtime), req)
    finally:
        publisher.create_topic(name=topic)
    assert docs.get(runs.RUNS, req.run_id) is None


def test_a_closer_waits_for_another_closer_s_lock_only_so_long_then_is_retried(backend_env):
    """The run's advisory lock is waited for at most lock_run's wait_ms: a holder that hangs turns
    the waiting delivery into a RetryableError (Pub/Sub retries it) instead of pinning it and its
    connection; once the holder lets go, the lock is taken, and the lock_timeout does not outlive it."""
    from threatflow.adapters.postgres import create_engine
    from threatflow.enrichment import repository
    from threatflow.platform.config import Settings
    from threatflow.platform.errors import RetryableError

    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"], "DB_POOL_SIZE": "2"}))
    run_id = uuid.uuid4().hex
    try:
        with engine.connect() as holder, engine.connect() as waiter:
            repository.lock_run(holder, run_id)
            holder.commit()
            began = time.monotonic()
            with pytest.raises(RetryableError, match="being closed by another delivery"):
                repository.lock_run(waiter, run_id, wait_ms=300)
            assert 0.25 < time.monotonic() - began < 5
            waiter.rollback()
            repository.unlock_run(holder, run_id)
            holder.commit()
            repository.lock_run(waiter, run_id, wait_ms=300)
            waiter.commit()
            assert waiter.exec_driver_sql("SHOW lock_timeout").scalar_one() == "0"
            repository.unlock_run(waiter, run_id)
            waiter.commit()
    finally:
        engine.dispose()


def test_a_run_whose_lock_is_held_does_not_stop_the_sweep_closing_the_others(env):
    """A closer's session that lingers with a run's lock (its instance lost, PostgreSQL not yet noticing):
    the sweep passes that run by at once, counted busy, and closes the others. Waiting LOCK_WAIT_MS and
    failing the invocation would retry it onto the same run, oldest deadline first, every tick."""
    from threatflow.enrichment import closing, handlers, repository, runs
    from threatflow.intel import enrichment as intel_enrichment

    runtime, docs = env["runtime"], env["docs"]
    ctx = handlers.context(runtime)
    stuck = start_enrichment_run(runtime, enrichment_ioc(runtime, "45.95.147.30"), "45.95.147.30", expected=["virustotal"], deadline_in=-60)
    other = start_enrichment_run(runtime, enrichment_ioc(runtime, "45.95.147.31"), "45.95.147.31", expected=["virustotal"], deadline_in=-30)
    deps = {"documents": docs, "engine": runtime.engine, "now": ctx.now, "reliability": ctx.reliability()}
    with runtime.engine.connect() as lingering:
        repository.lock_run(lingering, stuck)
        lingering.commit()
        began = time.monotonic()
        result = closing.close_overdue(**deps, apply_verdict=intel_enrichment.apply_verdict)
        took = time.monotonic() - began
        repository.unlock_run(lingering, stuck)
        lingering.commit()
    assert result["closed"] == 1 and result["busy"] == 1 and took < 5, (result, took)
    assert docs.get(runs.RUNS, other)["status"] == "done" and docs.get(runs.RUNS, stuck)["status"] == "running"
    assert closing.close_overdue(**deps, apply_verdict=intel_enrichment.apply_verdict)["closed"] == 1  # its next tick
    assert docs.get(runs.RUNS, stuck)["status"] == "done"


def test_a_reader_of_an_overdue_run_another_closer_holds_is_answered_at_once(env):
    """GET /runs/{id} closes an overdue run lazily; if another closer holds the run's lock, the reader gets the
    run as it stands (still running) at once, instead of waiting LOCK_WAIT_MS with a pooled connection and
    then a 503: a few readers of one run would hold a function instance's whole pool (1 + 1 overflow)."""
    from threatflow.enrichment import api, handlers, repository

    runtime = env["runtime"]
    run_id = start_enrichment_run(
        runtime, enrichment_ioc(runtime, "45.95.147.32"), "45.95.147.32", expected=["virustotal"], deadline_in=-30
    )
    with runtime.engine.connect() as holder:
        repository.lock_run(holder, run_id)
        holder.commit()
        began = time.monotonic()
        view = api.run_view(handlers.context(runtime), run_id)
        took = time.monotonic() - began
        repository.unlock_run(holder, run_id)
        holder.commit()
    assert view["status"] == "running" and took < 5, (view, took)
    assert api.run_view(handlers.context(runtime), run_id)["status"] == "done"  # the next read closes it


# -- a dispatcher writing a run while a sweep works on it (compare-and-set) ------------------------------


def _sweep_deps(runtime: Any, docs: Any, apply_verdict: Any) -> dict[str, Any]:
    from threatflow.enrichment import handlers

    ctx = handlers.context(runtime)
    return {"documents": docs, "engine": runtime.engine, "now": ctx.now, "reliability": ctx.reliability(), "apply_verdict": apply_verdict}


def _while_closing(run_id: str, write: Any) -> Any:
    """The real apply_verdict, with `write` (another writer of the run) done the first time it is called for
    `run_id`: it runs between the closer's read of the run under the lock and its commit and Firestore write."""
    from threatflow.intel import enrichment as intel_enrichment

    pending = [write]

    def apply_verdict(conn: Any, **kwargs: Any) -> None:
        if kwargs["run_id"] == run_id and pending:
            pending.pop()()
        intel_enrichment.apply_verdict(conn, **kwargs)

    return apply_verdict


def test_a_run_a_dispatcher_starts_again_while_the_sweep_closes_it_is_left_as_the_dispatcher_wrote_it(env):
    """A redelivered request (its first dispatch died before marking the run dispatched) starts an overdue run
    again, with a new deadline, while the sweep is closing it: the sweep passes it by, counted `changed`; it neither
    marks it done over the new start nor keeps the timeout rows and verdict it had computed."""
    from threatflow.enrichment import closing, runs

    runtime, docs = env["runtime"], env["docs"]
    ioc_id = enrichment_ioc(runtime, "45.95.147.40")
    run_id = start_enrichment_run(runtime, ioc_id, "45.95.147.40", expected=["abuseipdb", "virustotal"], deadline_in=-30)
    store_enrichment_answer(runtime, run_id, ioc_id, "virustotal")
    new_deadline = time.time() + 600

    def dispatcher_starts_it_again() -> None:
        runs.start_run(
            docs,
            run_id,
            version=runs.get_run_versioned(docs, run_id).version,
            expected=["abuseipdb", "virustotal"],
            skipped={},
            deadline_at=new_deadline,
        )

    result = closing.close_overdue(**_sweep_deps(runtime, docs, _while_closing(run_id, dispatcher_starts_it_again)))

    assert (result["closed"], result["changed"], result["already_closed"], result["failed"]) == (0, 1, 0, 0), result
    run = docs.get(runs.RUNS, run_id)
    assert run["status"] == "running" and run["deadline_at"] == new_deadline and "verdict" not in run, run
    assert set(_rows(runtime, run_id)) == {"virustotal"}  # the timeout row for abuseipdb was rolled back
    assert _verdict(runtime, ioc_id) is None


def test_a_harmless_write_while_closing_makes_the_closer_judge_the_run_again_and_close_it(env):
    """enrich-dispatch marking the run `dispatched` just after its tasks were published (their answers may come
    first) changes the run's version but not whether it is due: the closer reads it again and closes it."""
    from threatflow.enrichment import closing, runs

    runtime, docs = env["runtime"], env["docs"]
    ioc_id = enrichment_ioc(runtime, "45.95.147.41")
    run_id = start_enrichment_run(runtime, ioc_id, "45.95.147.41", expected=["abuseipdb", "virustotal"], deadline_in=-30)
    store_enrichment_answer(runtime, run_id, ioc_id, "virustotal")

    def dispatcher_marks_it_dispatched() -> None:
        docs.set(runs.RUNS, run_id, {"dispatched": True}, merge=True)

    result = closing.close_overdue(**_sweep_deps(runtime, docs, _while_closing(run_id, dispatcher_marks_it_dispatched)))

    assert (result["closed"], result["changed"]) == (1, 0), result
    run = docs.get(runs.RUNS, run_id)
    assert run["status"] == "done" and run["dispatched"] is True and run["timed_out"] == ["abuseipdb"], run
    assert _rows(runtime, run_id)["abuseipdb"]["status"] == "timeout" and _verdict(runtime, ioc_id)["run_id"] == run_id


class _DispatcherAfterRead:
    """The runtime's real Firestore store, except that right after the sweep reads run `run_id` (get_versioned),
    enrich-dispatch starts that run (runs.start_run, written to the emulator): the interleaving the sweep must survive."""

    def __init__(self, documents: Any, run_id: str) -> None:
        self._documents, self._run_id, self.started = documents, run_id, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._documents, name)

    def get_versioned(self, collection: str, doc_id: str) -> Any:
        from threatflow.enrichment import runs

        read = self._documents.get_versioned(collection, doc_id)
        if doc_id == self._run_id and not self.started:
            self.started = True
            runs.start_run(
                self._documents,
                doc_id,
                version=runs.get_run_versioned(self._documents, doc_id).version,
                expected=["virustotal"],
                skipped={},
                deadline_at=time.time() + 600,
            )
        return read


@pytest.mark.parametrize("capped", [False, True], ids=["to-dispatch-again", "to-close"])
def test_a_queued_run_the_dispatcher_starts_after_the_sweep_read_it_is_not_overwritten(env, requested, capped):
    """Between the sweep's read of a stalled queued run and its write (requeued, or done as never dispatched),
    enrich-dispatch starts it: the sweep's compare-and-set refuses, the run stays running, nothing is published."""
    from threatflow.enrichment import closing, runs

    runtime, docs = env["runtime"], env["docs"]
    ioc_id = enrichment_ioc(runtime, "45.95.147.42")
    fields = {"status": "requeued", "redispatches": closing.MAX_REDISPATCHES, "redispatched_at": time.time() - _stalled()} if capped else {}
    run_id = _queued(runtime, ioc_id, "45.95.147.42", age=3 * _stalled(), **fields)
    racing = _DispatcherAfterRead(docs, run_id)

    result = closing.sweep_queued(documents=racing, publisher=runtime.publisher)

    assert racing.started and (result["redispatched"], result["closed"], result["changed"]) == (0, 0, 1), result
    run = docs.get(runs.RUNS, run_id)
    assert run["status"] == "running" and run["expected"] == ["virustotal"] and run.get("reason") is None, run
    assert run.get("redispatches", 0) == (closing.MAX_REDISPATCHES if capped else 0), run
    assert requested(expected=0) == []


def test_a_failed_publish_does_not_undo_a_start_that_came_in_meanwhile(env):
    """The sweep marks a stalled run requeued, then publishing its request fails; it puts the run back as it was,
    unless enrich-dispatch (an older message) started it in between: that start stays."""
    from threatflow.enrichment import closing, runs
    from threatflow.platform.errors import DependencyError

    runtime, docs = env["runtime"], env["docs"]
    run_id = _queued(runtime, enrichment_ioc(runtime, "45.95.147.43"), "45.95.147.43", age=_stalled())

    class StartedThenUnreachable:
        def publish(self, topic: str, data: bytes, attributes: Any = None) -> str:
            runs.start_run(
                docs,
                run_id,
                version=runs.get_run_versioned(docs, run_id).version,
                expected=["virustotal"],
                skipped={},
                deadline_at=time.time() + 600,
            )
            raise DependencyError("Pub/Sub is unreachable")

    with pytest.raises(DependencyError):
        closing.sweep_queued(documents=docs, publisher=StartedThenUnreachable())
    run = docs.get(runs.RUNS, run_id)
    assert run["status"] == "running" and run["redispatches"] == 1, run  # not put back to queued

    class Unreachable:
        def publish(self, topic: str, data: bytes, attributes: Any = None) -> str:
            raise DependencyError("Pub/Sub is unreachable")

    other = _queued(runtime, enrichment_ioc(runtime, "45.95.147.44"), "45.95.147.44", age=_stalled())
    with pytest.raises(DependencyError):
        closing.sweep_queued(documents=docs, publisher=Unreachable())
    run = docs.get(runs.RUNS, other)
    assert run["status"] == "queued" and run["redispatches"] is None, run  # nobody else wrote it: put back


def test_a_failed_publish_is_the_error_raised_when_putting_the_run_back_fails_too(env, caplog):
    """The sweep marks a stalled run requeued, then publishing its request fails, then putting the run back fails
    as well: the put-back's error was raised over the publish's (its `__context__`), so the job run failed saying
    Firestore failed, never that the request could not be published. The publish's error is raised; the failed
    put-back is logged at ERROR with the run id and the publish's error (the run stays requeued: the next tick
    after QUEUED_STALL_SECONDS publishes it again)."""
    from threatflow.enrichment import closing, runs
    from threatflow.platform.errors import DependencyError

    runtime = env["runtime"]
    docs = FirestoreDownWithPubSub(env["docs"])
    run_id = _queued(runtime, enrichment_ioc(runtime, "45.95.147.45"), "45.95.147.45", age=_stalled())

    class Unreachable:
        def publish(self, topic: str, data: bytes, attributes: Any = None) -> str:
            docs.down = True
            raise DependencyError("Pub/Sub publish to 'ioc-enrichment-requested' failed: unreachable")

    caplog.set_level(logging.WARNING, logger="threatflow.enrichment")
    with pytest.raises(DependencyError) as raised:
        closing.sweep_queued(documents=docs, publisher=Unreachable())
    assert "Pub/Sub publish" in str(raised.value) and "Firestore" not in str(raised.value), raised.value
    run = env["docs"].get(runs.RUNS, run_id)
    assert run["status"] == "requeued" and run["redispatches"] == 1, run  # the put-back failed
    [logged] = [r for r in caplog.records if "Firestore" in r.getMessage()]
    assert logged.levelno == logging.ERROR and logged.exc_info is not None, logged.getMessage()
    fields = logged.__dict__["fields"]
    assert fields["run_id"] == run_id and "Pub/Sub publish" in fields["failure"], fields


# -- runs that can never be closed do not starve the others -------------------------------------------------


def test_runs_that_cannot_be_closed_do_not_fill_every_page(env):
    """More runs that fail to close (bad data) than a page holds, with the oldest deadlines: each page starts after
    the one before, so the runs behind them are closed within a round, and the failing ones are tried again
    in the next round."""
    from threatflow.enrichment import runs

    runtime, docs = env["runtime"], env["docs"]
    broken = []
    for i in range(3):
        run_id = uuid.uuid4().hex
        runs.create_run(
            docs, {"run_id": run_id, "ioc_id": "not-a-number", "type": "ipv4", "value": "203.0.113.50", "created_at": time.time()}
        )
        runs.start_run(
            docs,
            run_id,
            version=runs.get_run_versioned(docs, run_id).version,
            expected=["virustotal"],
            skipped={},
            deadline_at=time.time() - 900 + i,
        )
        broken.append(run_id)
    ioc_id = enrichment_ioc(runtime, "45.95.147.45")
    good = [start_enrichment_run(runtime, ioc_id, "45.95.147.45", expected=["virustotal"], deadline_in=-300 + i) for i in range(2)]

    ticks = [_run_job(env, limit=2) for _ in range(3)]

    assert [(t["closed"], t["failed"], t["more"]) for t in ticks] == [(0, 2, True), (1, 1, True), (1, 0, False)], ticks
    assert ticks[0]["failed_runs"] == broken[:2] and ticks[1]["failed_runs"] == broken[2:]
    assert all(docs.get(runs.RUNS, r)["status"] == "done" for r in good)
    again = _run_job(env, limit=2)  # a new round: the failing runs are tried again, oldest first
    assert (again["failed"], again["failed_runs"], again["after"]) == (2, broken[:2], None), again


def _await_lock_waiter(runtime: Any, *, besides: int) -> None:
    """Until a session other than `besides` waits for a lock (the sweep, blocked by the test's holder)."""
    from sqlalchemy import text

    sql = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> :p")
    for _ in range(800):
        with runtime.engine.connect() as conn:
            if conn.execute(sql, {"p": besides}).scalar():
                return
        time.sleep(0.025)
    raise AssertionError("the sweep never waited for the holder's lock")


def _deadlocked_sweep(env: dict[str, Any], *, twice: bool) -> tuple[dict[str, Any], list[str]]:
    """Two overdue runs, A (the older deadline) on one IoC and B on another. While the sweep closes A, a holder makes
    a real deadlock with it: the holder locks A's IoC (FOR NO KEY UPDATE, as an evidence writer), the sweep inserts A's
    timeout row and waits for that IoC, the holder inserts the same (run, source) row and waits for the sweep's.
    PostgreSQL aborts the sweep's transaction (40P01: its deadlock_timeout, 1 s, runs out first; the holder's is 30 s).
    `twice`: when the sweep closes A again, the holder's row holds it and the holder then waits for the run's advisory
    lock, which the sweep holds: a second deadlock. Returns the sweep's job result and [A, B]."""
    from sqlalchemy import text

    from threatflow.enrichment import repository

    runtime = env["runtime"]
    made = []
    for value, deadline_in in (("45.95.147.60", -60), ("45.95.147.61", -30)):
        ioc_id = enrichment_ioc(runtime, value)
        run_id = start_enrichment_run(runtime, ioc_id, value, expected=["abuseipdb", "virustotal"], deadline_in=deadline_in)
        store_enrichment_answer(runtime, run_id, ioc_id, "virustotal")  # evidence to store: the IoC's row is locked
        made.append((run_id, ioc_id))
    (first, first_ioc), (second, _) = made
    outcome: dict[str, Any] = {}

    def sweep() -> None:
        run_id = uuid.uuid4().hex
        push = push_envelope({"schema_version": 1}, {"job": JOB, "run_id": run_id}, "maintenance-push")
        outcome["status"] = env["maintenance"].post("/", json=push).status_code
        outcome["record"] = env["docs"].get("maintenance_runs", run_id)

    sweeper = threading.Thread(target=sweep)
    with runtime.engine.connect() as holder:
        holder.exec_driver_sql("SET deadlock_timeout = '30s'")
        pid = holder.execute(text("SELECT pg_backend_pid()")).scalar()
        holder.execute(text("SELECT 1 FROM iocs WHERE id = :i FOR NO KEY UPDATE"), {"i": first_ioc})
        sweeper.start()
        _await_lock_waiter(runtime, besides=pid)
        timeout_row = dict(
            run_id=first, ioc_id=first_ioc, source="abuseipdb", status="timeout", verdict="unknown", score=None,
            evidence={}, detail="held", cached=False, fetched_at="2026-01-01T00:00:00Z",
        )  # fmt: skip
        repository.insert_results(holder, [timeout_row])  # waits for the sweep's row until PostgreSQL aborts the sweep
        if twice:
            _await_lock_waiter(runtime, besides=pid)  # the sweep closing A again waits for the holder's row
            key = repository._lock_key(first)
            holder.execute(text("SELECT pg_advisory_lock(hashtextextended(:k, 0))"), {"k": key})  # the second deadlock
            holder.execute(text("SELECT pg_advisory_unlock(hashtextextended(:k, 0))"), {"k": key})
        holder.rollback()
        holder.exec_driver_sql("RESET deadlock_timeout")
        holder.commit()
    sweeper.join(120)
    assert outcome.get("status") == 200 and outcome["record"]["state"] == "succeeded", outcome
    return dict(outcome["record"]["result"]), [first, second]


def test_a_deadlock_closing_one_run_is_retried_and_does_not_abort_the_sweep(env):
    """PostgreSQL aborting one run's close for a deadlock (40P01) raised out of the sweep: the whole run failed and
    every run behind it waited for the next tick. The run is closed again once, and the sweep goes on."""
    from threatflow.enrichment import runs

    result, started = _deadlocked_sweep(env, twice=False)
    assert (result["closed"], result["raced"], result["busy"], result["failed"]) == (2, 1, 0, 0), result
    for run_id in started:
        closed = env["docs"].get(runs.RUNS, run_id)
        assert closed["status"] == "done" and closed["timed_out"] == ["abuseipdb"], closed
        assert _rows(env["runtime"], run_id)["abuseipdb"]["detail"] == "no answer before the run deadline"


def test_a_run_deadlocked_twice_is_counted_busy_and_the_sweep_closes_the_others(env):
    from threatflow.enrichment import runs

    result, (first, second) = _deadlocked_sweep(env, twice=True)
    assert (result["closed"], result["raced"], result["busy"], result["failed"]) == (1, 1, 1, 0), result
    assert env["docs"].get(runs.RUNS, first)["status"] == "running" and _rows(env["runtime"], first).keys() == {"virustotal"}
    assert env["docs"].get(runs.RUNS, second)["status"] == "done"
    again = _run_job(env)  # the next round closes it
    assert (again["closed"], again["raced"]) == (1, 0), again
    assert env["docs"].get(runs.RUNS, first)["status"] == "done"
