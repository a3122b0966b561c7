"""enrich-dispatch's start against a close landing between its read of the run and its write, on real
PostgreSQL, the Firestore and Pub/Sub emulators. The races are staged by thin wrappers around the runtime's
real Firestore store (a closer runs, for real, right after the dispatcher's read) and its real publisher (which
records what the dispatcher published)."""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from helpers import clear_enrichment_runs

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"
VALUE = "45.95.147.70"


@pytest.fixture
def runtime(backend_env):
    from google.cloud import pubsub_v1

    from threatflow.runtime import Runtime

    runtime = Runtime.from_env()
    clear_enrichment_runs(runtime.documents)
    publisher = pubsub_v1.PublisherClient()
    for topic in ("enrichment-tasks", "enrichment-completed", "ioc-enrichment-requested"):
        with contextlib.suppress(Exception):  # already made by an earlier test in this run
            publisher.create_topic(name=publisher.topic_path(PROJECT, topic))
    yield runtime
    runtime.engine.dispose()


class _Recording:
    """The real publisher; remembers each (topic, attributes) it published."""

    def __init__(self, publisher: Any) -> None:
        self._publisher, self.published = publisher, []

    def publish(self, topic: str, data: bytes, attributes: Any = None) -> str:
        message_id = str(self._publisher.publish(topic, data, attributes))
        self.published.append((topic, dict(attributes or {})))
        return message_id


class _ClosedAfterTheRead:
    """The runtime's real Firestore store, except that right after the dispatcher's first read of run `run_id`
    (get_versioned, or get as the dispatcher read it before its start was a compare-and-set), `close` runs:
    a closer finishing the run, writing to the emulator, in the gap between that read and the start."""

    def __init__(self, documents: Any, run_id: str, close: Any) -> None:
        self._documents, self._run_id, self._close, self.closed = documents, run_id, close, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._documents, name)

    def _after(self, collection: str, doc_id: str, read: Any) -> Any:
        from threatflow.enrichment import runs

        if collection == runs.RUNS and doc_id == self._run_id and not self.closed:
            self.closed = True
            self._close()
        return read

    def get(self, collection: str, doc_id: str) -> Any:
        return self._after(collection, doc_id, self._documents.get(collection, doc_id))

    def get_versioned(self, collection: str, doc_id: str) -> Any:
        return self._after(collection, doc_id, self._documents.get_versioned(collection, doc_id))


def _dispatcher(runtime: Any, documents: Any) -> tuple[Any, _Recording]:
    """enrich-dispatch's context on the real services, with `documents` as its Firestore store."""
    from threatflow.enrichment import handlers
    from threatflow.runtime import Runtime

    publisher = _Recording(runtime.publisher)
    racing = Runtime(runtime.settings, clients={"documents": documents, "publisher": publisher, "engine": runtime.engine})
    return handlers.Enrichment(racing), publisher


def _ioc(runtime: Any) -> int:
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.intel import enrichment as intel_enrichment

    policies = runtime.decay_policies().get()
    with unit_of_work(runtime.engine) as conn:
        ioc = intel_enrichment.resolve_ioc(
            conn, VALUE, None, where="value", now=datetime.now(UTC), warninglists=None, policies=policies, clearance="red"
        )
    return int(ioc["id"])


def _answer(runtime: Any, run_id: str, ioc_id: int, source: str) -> None:
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.enrichment import repository

    row = {
        "run_id": run_id,
        "ioc_id": ioc_id,
        "source": source,
        "status": "ok",
        "verdict": "malicious",
        "score": 95,
        "evidence": {"tags": ["botnet"]},
        "detail": "",
        "cached": False,
        "fetched_at": datetime.now(UTC).isoformat(),
    }
    with unit_of_work(runtime.engine) as conn:
        repository.insert_results(conn, [row])


def _request(ioc_id: int, **fields: Any) -> Any:
    from threatflow.enrichment.tasks import EnrichRequest

    return EnrichRequest(uuid.uuid4().hex, ioc_id, "ipv4", VALUE, tlp="green", **fields)


def _closers(runtime: Any) -> dict[str, Any]:
    from threatflow.enrichment import closing, handlers
    from threatflow.intel import enrichment as intel_enrichment

    ctx = handlers.context(runtime)
    deps = {
        "documents": runtime.documents,
        "engine": runtime.engine,
        "now": ctx.now,
        "reliability": ctx.reliability(),
        "apply_verdict": intel_enrichment.apply_verdict,
    }
    return {
        "enrich-aggregate": lambda run_id: closing.close(run_id, **deps).closed,
        "overdue sweep": lambda run_id: closing.close_overdue(**deps)["closed"] == 1,
    }


@pytest.mark.parametrize("closer", ["enrich-aggregate", "overdue sweep"])
def test_a_close_landing_between_the_dispatcher_s_read_and_its_start_leaves_the_run_closed(runtime, closer):
    """A redelivered request (the first dispatch published its tasks and died before marking the run dispatched)
    reads the run running; before its start is written, enrich-aggregate (every source answered) or the overdue
    sweep (deadline passed) closes the run with its verdict. The start, once a blind write, reopened the run and
    asked its sources again; it is now a compare-and-set that refuses, and the run read again is closed with its
    verdict, which the rules treat as a redelivery: nothing is written or published."""
    from threatflow.enrichment import handlers, runs

    ioc_id = _ioc(runtime)
    req = _request(ioc_id, sources=("virustotal",))
    deadline_in = 600 if closer == "enrich-aggregate" else -30
    assert runs.create_run(runtime.documents, handlers._run_document(req))
    first = runs.get_run_versioned(runtime.documents, req.run_id)
    assert runs.start_run(
        runtime.documents, req.run_id, version=first.version, expected=["virustotal"], skipped={}, deadline_at=time.time() + deadline_in
    )
    if closer == "enrich-aggregate":
        _answer(runtime, req.run_id, ioc_id, "virustotal")
    close = _closers(runtime)[closer]
    closes: list[tuple[bool, dict[str, Any]]] = []
    racing = _ClosedAfterTheRead(
        runtime.documents, req.run_id, lambda: closes.append((close(req.run_id), runtime.documents.get(runs.RUNS, req.run_id)))
    )
    ctx, publisher = _dispatcher(runtime, racing)

    handlers.dispatch_request(ctx, req)

    [(did_close, as_closed)] = closes
    assert did_close and as_closed["status"] == "done" and as_closed.get("reason") is None, as_closed
    assert as_closed["verdict"] == ("malicious" if closer == "enrich-aggregate" else "unknown"), as_closed
    assert runtime.documents.get(runs.RUNS, req.run_id) == as_closed  # the redelivery wrote nothing
    assert publisher.published == []  # and asked no source again


def test_a_run_closed_as_never_dispatched_meanwhile_is_started_by_the_late_request(runtime):
    """The queued sweep gives up on a run (its request published again to the cap) just after the dispatcher read
    it queued: the start refuses on the version, the run read again is closed as never dispatched, and a late
    request starts such a run, as the rules say, this time on the version the sweep wrote."""
    from threatflow.enrichment import closing, handlers, runs

    req = _request(_ioc(runtime), sources=("virustotal",))
    stalled = time.time() - closing.QUEUED_STALL_SECONDS - 60
    document = {**handlers._run_document(req), "created_at": stalled}
    assert runs.create_run(runtime.documents, document)
    capped = {"status": "requeued", "redispatches": closing.MAX_REDISPATCHES, "redispatched_at": stalled}
    runtime.documents.set(runs.RUNS, req.run_id, capped, merge=True)
    swept: list[dict[str, Any]] = []
    racing = _ClosedAfterTheRead(
        runtime.documents, req.run_id, lambda: swept.append(closing.sweep_queued(documents=runtime.documents, publisher=runtime.publisher))
    )
    ctx, publisher = _dispatcher(runtime, racing)

    handlers.dispatch_request(ctx, req)

    assert [s["closed"] for s in swept] == [1], swept
    run = runtime.documents.get(runs.RUNS, req.run_id)
    assert run["status"] in ("running", "done") and run["reason"] is None and run["dispatched"] is True, run
    assert set(run["expected"]) | set(run["skipped"]) == {"virustotal"}, run
    tasks = [attributes for topic, attributes in publisher.published if topic == "enrichment-tasks"]
    assert tasks == [{"source": name, "run_id": req.run_id} for name in run["expected"]], (tasks, run)


def test_a_run_written_under_every_start_is_retried_through_pub_sub_not_overwritten(runtime):
    """A writer landing after each of the dispatcher's reads (here: a field of its own, each time) makes every
    start refuse: after START_ATTEMPTS the request fails as retryable (Pub/Sub delivers it again), the run is
    still queued and no task is published."""
    from threatflow.enrichment import handlers, runs
    from threatflow.platform.errors import RetryableError

    req = _request(_ioc(runtime), sources=("virustotal",))
    assert runs.create_run(runtime.documents, handlers._run_document(req))

    class WrittenAfterEveryRead(_ClosedAfterTheRead):
        def _after(self, collection: str, doc_id: str, read: Any) -> Any:
            if collection == runs.RUNS and doc_id == req.run_id:
                self.closed = True
                self._documents.set(runs.RUNS, doc_id, {"touched": time.time()}, merge=True)
            return read

    ctx, publisher = _dispatcher(runtime, WrittenAfterEveryRead(runtime.documents, req.run_id, None))

    with pytest.raises(RetryableError):
        handlers.dispatch_request(ctx, req)

    run = runtime.documents.get(runs.RUNS, req.run_id)
    assert run["status"] == "queued" and "expected" not in run and "dispatched" not in run, run
    assert publisher.published == []


def test_a_run_recorded_between_the_dispatcher_s_read_and_its_create_is_not_overwritten(runtime):
    """The dispatcher finds no run (auto-enrichment records none before dispatch) and another delivery of the same
    request creates and starts it before this one writes: the create refuses (the old code's create-if-absent did
    too, then its blind start overwrote the other's start and published every task again), the run read again is
    started and dispatched, and this delivery leaves it as the other wrote it."""
    from threatflow.enrichment import handlers, runs

    req = _request(_ioc(runtime), sources=("virustotal",))
    other: list[dict[str, Any]] = []

    def another_delivery_dispatches_it() -> None:
        docs = runtime.documents
        deadline = time.time() + 600
        assert runs.create_started_run(docs, handlers._run_document(req), expected=["virustotal"], skipped={}, deadline_at=deadline)
        docs.set(runs.RUNS, req.run_id, {"dispatched": True}, merge=True)
        other.append(docs.get(runs.RUNS, req.run_id))

    racing = _ClosedAfterTheRead(runtime.documents, req.run_id, another_delivery_dispatches_it)
    ctx, publisher = _dispatcher(runtime, racing)

    handlers.dispatch_request(ctx, req)

    assert racing.closed and runtime.documents.get(runs.RUNS, req.run_id) == other[0]
    assert publisher.published == []
