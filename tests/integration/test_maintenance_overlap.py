"""Two deliveries of one maintenance run at once (Pub/Sub delivers at least once) run its job once; a delivery
whose holder died takes the run over once the holder's lease has lapsed. Firestore emulator, runs.execute."""

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"


@pytest.fixture
def documents(firestore_emulator, monkeypatch):
    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.jobs import runs

    for key, value in firestore_emulator.env.items():
        monkeypatch.setenv(key, value)
    # A lease short enough for a test, in the proportions of the real one (runs.LEASE).
    monkeypatch.setattr(runs, "LEASE", SimpleNamespace(seconds=3.0, renew_every=0.5, poll_every=0.2, longest=60.0), raising=False)
    return FirestoreDocuments(PROJECT)


class _Job:
    """A maintenance job that counts its runs and, when told to, holds its first run until released."""

    def __init__(self, *, hold: bool) -> None:
        self.runs = 0
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, ctx):
        self.runs += 1
        if self.runs == 1:
            self.started.set()
            assert self.release.wait(30), "the test never released the job"
        return {"ran": self.runs}


def _execute(documents, run_id, **kwargs):
    from threatflow.jobs import runs
    from threatflow.platform.ports import SystemClock

    return runs.execute(
        job="test-overlap",
        run_id=run_id,
        params={},
        engine=None,
        documents=documents,
        blobs=None,
        clock=SystemClock(),
        settings=None,
        **kwargs,
    )


def test_a_second_delivery_of_a_running_run_does_not_run_its_job_again(documents, monkeypatch):
    from threatflow.jobs import runs

    job = _Job(hold=True)
    monkeypatch.setitem(runs.JOBS, "test-overlap", job)
    monkeypatch.setitem(runs.JOB_PARAMS, "test-overlap", dict)  # a job takes the params it declares: none
    run_id = uuid.uuid4().hex
    first: dict = {}
    holder = threading.Thread(target=lambda: first.update(_execute(documents, run_id)))
    holder.start()
    try:
        assert job.started.wait(30)
        # The duplicate arrives while the first delivery works (and renews its lease): it answers without running.
        second = _execute(documents, run_id)
        assert job.runs == 1
        assert second["state"] == "running" and second.get("duplicate_delivery") is True
    finally:
        job.release.set()
        holder.join(30)
    record = documents.get(runs.RUNS, run_id)
    assert record["state"] == "succeeded" and record["attempts"] == 1 and record["result"] == {"ran": 1}
    assert first["state"] == "succeeded"


def test_a_delivery_takes_over_a_run_whose_holder_stopped_renewing_its_lease(documents, monkeypatch):
    from threatflow.jobs import runs

    job = _Job(hold=False)
    monkeypatch.setitem(runs.JOBS, "test-overlap", job)
    monkeypatch.setitem(runs.JOB_PARAMS, "test-overlap", dict)  # a job takes the params it declares: none
    run_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    # What a delivery killed (timeout, out of memory) a moment ago leaves: running, its lease not yet lapsed.
    documents.set(
        runs.RUNS,
        run_id,
        {
            "run_id": run_id,
            "job": "test-overlap",
            "state": "running",
            "started_at": now,
            "attempts": 1,
            "holder": "dead",
            "lease_until": now + timedelta(seconds=2),
        },
    )
    began = time.monotonic()
    result = _execute(documents, run_id)
    waited = time.monotonic() - began
    assert job.runs == 1 and result["state"] == "succeeded"
    assert waited >= 1.5, f"took the run over after {waited:.2f} s, before the dead holder's lease lapsed"
    record = documents.get(runs.RUNS, run_id)
    assert record["state"] == "succeeded" and record["attempts"] == 2 and record["holder"] != "dead"


def test_a_run_left_running_without_a_lease_is_taken_over_at_once(documents, monkeypatch):
    """A record from before leases (or any without one) is run again as before, not waited on."""
    from threatflow.jobs import runs

    job = _Job(hold=False)
    monkeypatch.setitem(runs.JOBS, "test-overlap", job)
    monkeypatch.setitem(runs.JOB_PARAMS, "test-overlap", dict)  # a job takes the params it declares: none
    run_id = uuid.uuid4().hex
    documents.set(
        runs.RUNS,
        run_id,
        {"run_id": run_id, "job": "test-overlap", "state": "running", "started_at": datetime.now(UTC), "attempts": 3},
    )
    began = time.monotonic()
    assert _execute(documents, run_id)["state"] == "succeeded"
    assert time.monotonic() - began < 1.5 and job.runs == 1
    assert documents.get(runs.RUNS, run_id)["attempts"] == 4


def test_a_failed_run_is_run_again_by_its_redelivery(documents, monkeypatch):
    from threatflow.jobs import runs

    calls = []

    def flaky(ctx):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("transient")
        return {"ok": True}

    monkeypatch.setitem(runs.JOBS, "test-overlap", flaky)
    monkeypatch.setitem(runs.JOB_PARAMS, "test-overlap", dict)  # a job takes the params it declares: none
    run_id = uuid.uuid4().hex
    with pytest.raises(RuntimeError):
        _execute(documents, run_id)
    assert documents.get(runs.RUNS, run_id)["state"] == "failed"
    assert _execute(documents, run_id)["state"] == "succeeded"
    record = documents.get(runs.RUNS, run_id)
    assert len(calls) == 2 and record["attempts"] == 2 and record["error"] is None and record["result"] == {"ok": True}


def test_a_delivery_past_the_functions_timeout_stops_renewing_its_lease(documents, monkeypatch):
    """A delivery lasts at most the function's timeout; past it Pub/Sub has its answer (a 504: redeliver) but Cloud
    Run does not stop the code, so a hung job's daemon thread renewed the lease for as long as the instance lived and
    every redelivery answered duplicate_delivery (acked) while the job never finished. The renewal stops at
    RunLease.longest; the lease then lapses and a redelivery takes the run over."""
    from threatflow.jobs import runs

    monkeypatch.setattr(runs, "LEASE", SimpleNamespace(seconds=1.0, renew_every=0.2, poll_every=0.1, longest=2.0), raising=False)
    job = _Job(hold=True)
    monkeypatch.setitem(runs.JOBS, "test-overlap", job)
    monkeypatch.setitem(runs.JOB_PARAMS, "test-overlap", dict)  # a job takes the params it declares: none
    run_id = uuid.uuid4().hex
    holder = threading.Thread(target=lambda: _execute(documents, run_id))
    holder.start()
    try:
        assert job.started.wait(30)
        time.sleep(4.0)  # past `longest` and then past the lease
        redelivery = _execute(documents, run_id)
        assert redelivery.get("duplicate_delivery") is not True and redelivery["state"] == "succeeded", redelivery
        assert job.runs == 2
    finally:
        job.release.set()
        holder.join(30)


def test_a_delivery_whose_run_was_taken_over_does_not_record_its_outcome(documents, monkeypatch):
    """A holder that stalled past its lease loses the run to another delivery, but its job cannot be cancelled: when
    it then failed it wrote `failed` over the new holder's running run, and the next delivery ran the job a third
    time alongside the new holder. Only the run's holder records its outcome."""
    from threatflow.jobs import runs

    calls = []
    started, release = threading.Event(), threading.Event()

    def failing(ctx):
        calls.append(1)
        started.set()
        assert release.wait(30)
        raise RuntimeError("stalled and failed")

    monkeypatch.setitem(runs.JOBS, "test-overlap", failing)
    monkeypatch.setitem(runs.JOB_PARAMS, "test-overlap", dict)  # a job takes the params it declares: none
    run_id = uuid.uuid4().hex
    raised = []

    def first():
        try:
            _execute(documents, run_id)
        except RuntimeError as exc:
            raised.append(exc)

    holder = threading.Thread(target=first)
    holder.start()
    assert started.wait(30)
    # What a takeover by another delivery writes (the compare-and-set in runs.execute), its lease live.
    now = datetime.now(UTC)
    documents.set(
        runs.RUNS, run_id, {"holder": "other", "attempts": 2, "started_at": now, "lease_until": now + timedelta(minutes=5)}, merge=True
    )
    release.set()
    holder.join(30)
    assert raised, "the stalled delivery's job failure must still be raised to its caller"
    record = documents.get(runs.RUNS, run_id)
    assert record["state"] == "running" and record["holder"] == "other" and record.get("error") is None, record
    assert len(calls) == 1
