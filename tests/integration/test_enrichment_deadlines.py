"""Enrichment run deadlines close without a reader: the close-overdue-enrichment-runs job,
pushed to the real maintenance function, on real PostgreSQL and the Firestore emulator.

Runs are started the way enrich-dispatch starts them (runs.create_run + runs.start_run),
with a deadline already behind them; nothing ever reads them through GET /runs/{id}."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"
JOB = "close-overdue-enrichment-runs"


@pytest.fixture
def env(backend_env, function_client):
    from threatflow.enrichment import runs
    from threatflow.runtime import Runtime

    runtime = Runtime.from_env()
    docs = runtime.documents
    while stale := docs.query(runs.RUNS, limit=500):  # other tests' runs share the emulator
        for doc in stale:
            docs.delete(runs.RUNS, doc["id"])
    yield {"runtime": runtime, "docs": docs, "maintenance": function_client("maintenance")}
    runtime.engine.dispose()


def _ioc(runtime: Any, value: str) -> int:
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.intel import enrichment as intel_enrichment

    policies = runtime.decay_policies().get()
    with unit_of_work(runtime.engine) as conn:
        ioc = intel_enrichment.resolve_ioc(conn, value, None, where="value", now=datetime.now(UTC), warninglists=None, policies=policies)
    return int(ioc["id"])


def _start(runtime: Any, ioc_id: int, value: str, *, expected: list[str], deadline_in: float) -> str:
    """A run as enrich-dispatch leaves it: running, expected sources, a deadline."""
    from threatflow.enrichment import runs

    run_id = uuid.uuid4().hex
    runs.create_run(runtime.documents, {"run_id": run_id, "ioc_id": ioc_id, "type": "ipv4", "value": value, "created_at": time.time()})
    runs.start_run(runtime.documents, run_id, expected=expected, skipped={}, deadline_at=time.time() + deadline_in)
    return run_id


def _answer(runtime: Any, run_id: str, ioc_id: int, source: str, *, verdict: str = "malicious", score: int = 95) -> int:
    """A source's answer stored the way enrich-<source> stores it; returns the rows inserted."""
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.enrichment import repository

    row = {
        "run_id": run_id,
        "ioc_id": ioc_id,
        "source": source,
        "status": "ok",
        "verdict": verdict,
        "score": score,
        "evidence": {"tags": ["botnet"]},
        "detail": "",
        "cached": False,
        "fetched_at": datetime.now(UTC).isoformat(),
    }
    with unit_of_work(runtime.engine) as conn:
        return repository.insert_results(conn, [row])


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
    push = {
        "message": {
            "data": base64.b64encode(json.dumps(data).encode()).decode(),
            "attributes": {"job": JOB, "run_id": run_id},
            "messageId": uuid.uuid4().hex,
            "publishTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        },
        "subscription": f"projects/{PROJECT}/subscriptions/maintenance-push",
    }
    assert env["maintenance"].post("/", json=push).status_code == 200
    record = env["docs"].get("maintenance_runs", run_id)
    assert record is not None and record["state"] == "succeeded", record
    return dict(record["result"])


def test_an_overdue_run_nobody_reads_is_closed_and_others_are_untouched(env):
    from threatflow.enrichment import runs

    runtime, docs = env["runtime"], env["docs"]
    overdue_ioc = _ioc(runtime, "185.220.101.7")
    overdue = _start(runtime, overdue_ioc, "185.220.101.7", expected=["abuseipdb", "virustotal"], deadline_in=-30)
    _answer(runtime, overdue, overdue_ioc, "virustotal")  # abuseipdb never answers
    pending_ioc = _ioc(runtime, "185.220.101.8")
    pending = _start(runtime, pending_ioc, "185.220.101.8", expected=["abuseipdb", "virustotal"], deadline_in=600)
    _answer(runtime, pending, pending_ioc, "virustotal")
    finished_ioc = _ioc(runtime, "185.220.101.9")
    finished = _start(runtime, finished_ioc, "185.220.101.9", expected=["virustotal"], deadline_in=-30)
    runs.close_run(docs, finished, verdict="harmless", score=5, closed_at=123.0)
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
    ioc_id = _ioc(runtime, "45.95.147.20")
    started = [_start(runtime, ioc_id, "45.95.147.20", expected=["virustotal"], deadline_in=-500 + 10 * i) for i in range(5)]

    first = _run_job(env, limit=3)
    assert (first["closed"], first["more"], first["limit"]) == (3, True, 3), first
    assert [docs.get(runs.RUNS, r)["status"] for r in started] == ["done"] * 3 + ["running"] * 2

    second = _run_job(env, limit=3)
    assert (second["closed"], second["more"]) == (2, False), second
    assert all(docs.get(runs.RUNS, r)["status"] == "done" for r in started)


def test_a_limit_outside_the_bound_fails_the_run_without_closing_anything(env):
    from threatflow.enrichment import closing, runs

    runtime, docs = env["runtime"], env["docs"]
    run_id = _start(runtime, _ioc(runtime, "45.95.147.21"), "45.95.147.21", expected=["virustotal"], deadline_in=-30)
    job_run = uuid.uuid4().hex
    data = {"schema_version": 1, "params": {"limit": closing.SWEEP_MAX + 1}}
    push = {
        "message": {
            "data": base64.b64encode(json.dumps(data).encode()).decode(),
            "attributes": {"job": JOB, "run_id": job_run},
            "messageId": uuid.uuid4().hex,
            "publishTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        },
        "subscription": f"projects/{PROJECT}/subscriptions/maintenance-push",
    }
    assert env["maintenance"].post("/", json=push).status_code == 200  # a permanent error: acked, not retried
    assert "params.limit" in docs.get("maintenance_runs", job_run)["error"]
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
    ioc_id = _ioc(runtime, "178.128.78.9")
    run_id = _start(runtime, ioc_id, "178.128.78.9", expected=["abuseipdb", "virustotal"], deadline_in=-1)
    _answer(runtime, run_id, ioc_id, "virustotal")
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
    assert _answer(runtime, run_id, ioc_id, "abuseipdb", verdict="harmless", score=0) == 0
    assert handlers.finalize(ctx, run_id) == done
    assert _rows(runtime, run_id)["abuseipdb"]["status"] == "timeout"
    assert _verdict(runtime, ioc_id)["verdict"] == done["verdict"]


def test_a_run_whose_ioc_was_deleted_is_closed_not_retried_forever(env):
    from threatflow.enrichment import runs

    runtime, docs = env["runtime"], env["docs"]
    run_id = _start(runtime, 987_654_321, "203.0.113.9", expected=["virustotal"], deadline_in=-30)
    result = _run_job(env)
    assert (result["closed"], result["failed"]) == (1, 0), result
    run = docs.get(runs.RUNS, run_id)
    assert run["status"] == "done" and run["verdict"] == "unknown" and run["score"] is None, run
