"""recover-stalled-flow-ingest-jobs: flow-ingest jobs that no delivery is running are published again and
finish, pushed to the real maintenance and flow-ingest functions, on PostgreSQL and the Firestore, Pub/Sub and
Cloud Storage emulators. A stall is made the way it happens (a delivery that stored a batch and whose
continuation message was lost, or that was killed holding its lease; a message never delivered), then aged by moving
`updated_at` back past the stall age."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flows_support import publish, trained_model
from helpers import FirestoreDownWithPubSub, create_user, pull_published, push_envelope

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"
UPLOADS = "threatflow-uploads"
JOB = "recover-stalled-flow-ingest-jobs"


@pytest.fixture
def env(function_client, backend_env):
    from google.cloud import pubsub_v1

    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.flows import ingest_jobs

    docs = FirestoreDocuments(PROJECT)
    for collection in (ingest_jobs.INGEST_JOBS, ingest_jobs.INGEST_LEASES):  # other tests' jobs share the emulator
        while stale := docs.query(collection, limit=500):
            for doc in stale:
                docs.delete(collection, doc["id"])
    publisher = pubsub_v1.PublisherClient()
    for name in ("ioc-enrichment-requested", "flow-ingest"):
        with contextlib.suppress(Exception):  # already made by an earlier test in this run
            publisher.create_topic(name=publisher.topic_path(PROJECT, name))
    subscriber = pubsub_v1.SubscriberClient()
    subscription = subscriber.subscription_path(PROJECT, f"flow-ingest-recovery-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=subscription, topic=publisher.topic_path(PROJECT, "flow-ingest"))

    def pull(job_ids: set[str], expected: int) -> list[Any]:
        """The flow-ingest messages for these jobs (acked), waiting for `expected` of them."""
        topic = publisher.topic_path(PROJECT, "flow-ingest")

        def mine(message: Any) -> bool:
            return message.attributes.get("job_id") in job_ids

        return pull_published(publisher, subscriber, topic=topic, subscription=subscription, expected=expected, keep=mine)

    yield {"docs": docs, "pull": pull, "maintenance": function_client("maintenance")}
    subscriber.delete_subscription(subscription=subscription)
    subscriber.close()


def _run_job(env: dict[str, Any], **params: Any) -> dict[str, Any]:
    """Push the schedule's message to the maintenance function; the recorded job result."""
    run_id = uuid.uuid4().hex
    data = {"schema_version": 1, **({"params": params} if params else {})}
    push = push_envelope(data, {"job": JOB, "run_id": run_id}, "maintenance-push")
    assert env["maintenance"].post("/", json=push).status_code == 200
    record = env["docs"].get("maintenance_runs", run_id)
    assert record is not None and record["state"] == "succeeded", record
    return dict(record["result"])


def _as_push(message: Any) -> dict[str, Any]:
    return {
        "message": {
            "data": base64.b64encode(message.data).decode(),
            "attributes": dict(message.attributes),
            "messageId": message.message_id,
            "publishTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        },
        "subscription": f"projects/{PROJECT}/subscriptions/flow-ingest-push",
    }


def _stalled_at() -> datetime:
    from threatflow.flows import ingest_jobs

    return datetime.now(UTC) - timedelta(seconds=ingest_jobs.STALL_SECONDS + 60)


def _job(docs: Any, *, state: str = "queued", age: datetime | None = None, **fields: Any) -> str:
    """A job document as POST /api/v1/flows/uploads leaves it, last written at `age`."""
    from threatflow.flows import ingest_jobs

    job_id = uuid.uuid4().hex
    at = age or datetime.now(UTC)
    docs.set(
        ingest_jobs.INGEST_JOBS,
        job_id,
        {"job_id": job_id, "state": state, "bucket": UPLOADS, "object": f"flows/{job_id}.csv", "rows_done": 0}
        | {"created_at": at, "updated_at": at, **fields},
    )
    return job_id


def _raw_csv(count: int, seed: int = 3) -> str:
    import flowgen

    return "\n".join(",".join(flowgen.raw_line(f)) for f in flowgen.generate(count, seed=seed)) + "\n"


def test_stalled_jobs_are_published_again_and_the_worker_finishes_them(env, function_client, backend_env, monkeypatch):
    """Two stalls: a job whose delivery stored a batch and handed over to continuation 1, whose message was then
    lost (dead-lettered, say) while a lease is left behind (now expired), and a job whose message was never delivered. The sweep publishes
    each job's live message (job_id attribute, its continuation number); the worker then runs both to the end."""
    from threatflow.adapters.storage import GcsBlobs
    from threatflow.flows import handlers, ingest_jobs

    publish(GcsBlobs(PROJECT), trained_model())
    monkeypatch.setattr(handlers, "BATCH_ROWS", 40)
    docs, pull = env["docs"], env["pull"]
    password = create_user(backend_env["DATABASE_URL"], "analyst-recovery", "analyst")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "analyst-recovery", "password": password}).get_json()
    flows = function_client("flows")
    jobs = []
    for seed, name in enumerate(("flows/recover-continued.csv", "flows/recover-queued.csv"), start=21):
        GcsBlobs(PROJECT).put(UPLOADS, name, _raw_csv(100, seed=seed).encode())  # two files: two sets of event keys
        response = flows.post("/api/v1/flows/uploads", json={"object": name}, headers={"Authorization": f"Bearer {token['access_token']}"})
        assert response.status_code == 202, response.get_data(as_text=True)
        jobs.append(response.get_json()["job_id"])
    continued, queued = jobs
    assert len(pull(set(jobs), expected=2)) == 2  # the uploads route's own messages, consumed here

    # The first delivery of `continued` spends its budget after a batch and hands over to continuation 1; that
    # message is taken away below (drained), as if it were lost. A dead delivery's lease is left behind.
    quick = function_client("flow-ingest", FLOW_INGEST_DELIVERY_SECONDS="0")
    assert quick.post("/", json={**_as_push(_message(continued, 0)), "deliveryAttempt": 1}).status_code == 200
    assert len(pull({continued}, expected=1)) == 1  # the continuation, "lost"
    job = docs.get(ingest_jobs.INGEST_JOBS, continued)
    assert job["state"] == "running" and job["rows_done"] == 40 and job["continuation"] == 1, job
    docs.set(ingest_jobs.INGEST_LEASES, continued, {"holder": "dead", "until": datetime.now(UTC) - timedelta(seconds=5)})
    for job_id in jobs:
        docs.set(ingest_jobs.INGEST_JOBS, job_id, {"updated_at": _stalled_at()}, merge=True)

    result = _run_job(env)
    assert (result["recovered"], result["failed"], result["leased"], result["more"]) == (2, 0, 0, False), result
    messages = {m.attributes["job_id"]: m for m in pull(set(jobs), expected=2)}
    assert set(messages) == set(jobs)
    assert {job_id: dict(m.attributes) for job_id, m in messages.items()} == {job_id: {"job_id": job_id} for job_id in jobs}
    data = {job_id: json.loads(m.data) for job_id, m in messages.items()}
    assert data[continued]["continuation"] == 1 and data[queued]["continuation"] == 0, data
    for job_id in jobs:
        job = docs.get(ingest_jobs.INGEST_JOBS, job_id)
        assert job["recoveries"] == 1 and job["updated_at"] > _stalled_at(), job

    assert _run_job(env)["recovered"] == 0  # recovered jobs are left alone for the stall age
    assert pull(set(jobs), expected=0) == []

    worker = function_client("flow-ingest", FLOW_INGEST_DELIVERY_SECONDS="420")
    for job_id in jobs:
        assert worker.post("/", json=_as_push(messages[job_id])).status_code == 200
        job = docs.get(ingest_jobs.INGEST_JOBS, job_id)
        assert job["state"] == "succeeded" and job["rows_done"] == 100 and job["stored"] == 100, job
    assert docs.get(ingest_jobs.INGEST_JOBS, continued)["deliveries"] == 2  # resumed at row 40, not from the start


def _message(job_id: str, continuation: int) -> Any:
    from types import SimpleNamespace

    from threatflow.flows import ingest_jobs

    data, attributes = ingest_jobs.job_message(job_id, continuation, None)
    return SimpleNamespace(data=data, attributes=attributes, message_id=uuid.uuid4().hex)


def test_a_job_with_a_live_lease_or_a_recent_write_is_untouched(env):
    from threatflow.flows import ingest_jobs

    docs = env["docs"]
    leased = _job(docs, state="running", age=_stalled_at(), rows_done=5000, continuation=2)
    docs.set(ingest_jobs.INGEST_LEASES, leased, {"holder": "alive", "until": datetime.now(UTC) + timedelta(seconds=300)})
    recent = _job(docs, state="running", age=datetime.now(UTC) - timedelta(seconds=60))
    fresh = _job(docs)
    finished = _job(docs, state="succeeded", age=_stalled_at())

    result = _run_job(env)
    assert (result["recovered"], result["failed"], result["leased"], result["more"]) == (0, 0, 1, False), result
    assert env["pull"]({leased, recent, fresh, finished}, expected=0) == []
    for job_id in (leased, recent, fresh, finished):
        assert "recoveries" not in docs.get(ingest_jobs.INGEST_JOBS, job_id)


def test_jobs_an_earlier_version_left_without_updated_at_are_recovered_by_their_creation_time(env):
    """Jobs queued (or run) by a version that wrote no `updated_at` are invisible to the updated_at query; the
    sweep finds them by created_at, recovers the stalled ones as any other (live lease, recent creation and
    finished jobs left alone), and the recovery writes their updated_at, so the next tick leaves them alone."""
    from threatflow.flows import ingest_jobs

    docs = env["docs"]

    def legacy(state: str, created: datetime, **fields: Any) -> str:
        job_id = uuid.uuid4().hex
        document = {"job_id": job_id, "state": state, "bucket": UPLOADS, "object": f"flows/{job_id}.csv", "rows_done": 0}
        docs.set(ingest_jobs.INGEST_JOBS, job_id, {**document, "created_at": created, **fields})  # no updated_at
        return job_id

    queued = legacy("queued", _stalled_at())
    running = legacy("running", _stalled_at() - timedelta(hours=1), rows_done=10000, continuation=2)
    leased = legacy("running", _stalled_at(), rows_done=5000, continuation=1)
    docs.set(ingest_jobs.INGEST_LEASES, leased, {"holder": "alive", "until": datetime.now(UTC) + timedelta(seconds=300)})
    recent = legacy("queued", datetime.now(UTC) - timedelta(seconds=60))
    finished = legacy("succeeded", _stalled_at())
    assert "updated_at" not in docs.get(ingest_jobs.INGEST_JOBS, queued)

    result = _run_job(env)
    assert (result["recovered"], result["failed"], result["leased"], result["more"]) == (2, 0, 1, False), result
    messages = {m.attributes["job_id"]: json.loads(m.data) for m in env["pull"]({queued, running, leased, recent, finished}, expected=2)}
    assert {job_id: data["continuation"] for job_id, data in messages.items()} == {queued: 0, running: 2}, messages
    for job_id in (queued, running):
        job = docs.get(ingest_jobs.INGEST_JOBS, job_id)
        assert job["recoveries"] == 1 and job["updated_at"] > _stalled_at(), job
    for job_id in (leased, recent, finished):
        assert "recoveries" not in docs.get(ingest_jobs.INGEST_JOBS, job_id)
    again = _run_job(env)
    assert (again["recovered"], again["leased"]) == (0, 1), again


def test_a_job_that_keeps_stalling_fails_after_the_recovery_cap(env):
    from threatflow.flows import ingest_jobs

    docs = env["docs"]
    cap = ingest_jobs.MAX_RECOVERIES
    job_id = _job(docs, state="running", age=_stalled_at(), rows_done=80, continuation=1, recoveries=cap, recovered_at_row=80)
    result = _run_job(env)
    assert (result["recovered"], result["failed"], result["failed_jobs"]) == (0, 1, [job_id]), result
    job = docs.get(ingest_jobs.INGEST_JOBS, job_id)
    assert job["state"] == "failed" and job["finished_at"], job
    assert (
        f"after {ingest_jobs.MAX_RECOVERIES} recoveries without progress (at row 80)" in job["error"]
        and "timeout or out of memory" in job["error"]
    )
    assert env["pull"]({job_id}, expected=0) == []
    assert _run_job(env)["failed"] == 0  # a failed job is not swept again


def test_the_cap_counts_recoveries_without_progress_and_gives_a_queued_job_a_day(env):
    """Rows stored since the last recovery start the count again, and a queued job under a day old is
    only waiting behind a backlog: both are published again at the cap. A queued job older than that is failed."""
    from threatflow.flows import ingest_jobs

    docs = env["docs"]
    cap = ingest_jobs.MAX_RECOVERIES
    progressed = _job(docs, state="running", age=_stalled_at(), rows_done=15000, continuation=3, recoveries=cap, recovered_at_row=5000)
    waiting = _job(docs, state="queued", age=_stalled_at(), recoveries=cap)
    abandoned = _job(docs, state="queued", age=_stalled_at(), recoveries=cap)
    docs.set(
        ingest_jobs.INGEST_JOBS,
        abandoned,
        {"created_at": datetime.now(UTC) - timedelta(seconds=ingest_jobs.QUEUED_PATIENCE_SECONDS + 60)},
        merge=True,
    )

    result = _run_job(env)
    assert (result["recovered"], result["failed"], result["failed_jobs"]) == (2, 1, [abandoned]), result
    assert {m.attributes["job_id"] for m in env["pull"]({progressed, waiting, abandoned}, expected=2)} == {progressed, waiting}
    job = docs.get(ingest_jobs.INGEST_JOBS, progressed)
    assert (job["state"], job["recoveries"], job["recovered_at_row"]) == ("running", 1, 15000), job
    assert docs.get(ingest_jobs.INGEST_JOBS, waiting)["recoveries"] == cap + 1
    assert docs.get(ingest_jobs.INGEST_JOBS, abandoned)["state"] == "failed"


def test_one_invocation_recovers_at_most_limit_jobs_oldest_first_and_says_more(env):
    from threatflow.flows import ingest_jobs

    docs = env["docs"]
    oldest = _stalled_at() - timedelta(minutes=10)
    jobs = [_job(docs, age=oldest + timedelta(seconds=i)) for i in range(5)]
    first = _run_job(env, limit=3)
    assert (first["recovered"], first["more"], first["limit"]) == (3, True, 3), first
    assert {m.attributes["job_id"] for m in env["pull"](set(jobs), expected=3)} == set(jobs[:3])
    second = _run_job(env, limit=3)
    assert (second["recovered"], second["more"]) == (2, False), second
    assert {m.attributes["job_id"] for m in env["pull"](set(jobs), expected=2)} == set(jobs[3:])
    assert all(docs.get(ingest_jobs.INGEST_JOBS, j)["recoveries"] == 1 for j in jobs)


def test_a_limit_out_of_range_fails_the_run(env):
    run_id = uuid.uuid4().hex
    data = {"schema_version": 1, "params": {"limit": 0}}
    push = push_envelope(data, {"job": JOB, "run_id": run_id}, "maintenance-push")
    env["maintenance"].post("/", json=push)
    record = env["docs"].get("maintenance_runs", run_id)
    assert record["state"] == "failed" and "params.limit must be an integer from 1" in record["error"], record


class _ResumedAfterLeaseCheck:
    """The real Firestore store, except that right after the sweep looks at job `job_id`'s lease (absent), a
    delivery takes the lease and starts the job (written to the emulator as the worker writes them): the
    interleaving the sweep's compare-and-set must survive."""

    def __init__(self, documents: Any, job_id: str) -> None:
        self._documents, self._job_id, self.resumed = documents, job_id, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._documents, name)

    def get(self, collection: str, doc_id: str) -> Any:
        from threatflow.flows import ingest_jobs

        found = self._documents.get(collection, doc_id)
        if collection == ingest_jobs.INGEST_LEASES and doc_id == self._job_id and not self.resumed:
            self.resumed = True
            now = datetime.now(UTC)
            self._documents.create(collection, doc_id, {"holder": "resumed", "until": now + timedelta(seconds=ingest_jobs.LEASE_SECONDS)})
            self._documents.set(
                ingest_jobs.INGEST_JOBS,
                doc_id,
                {"state": "running", "deliveries": 2, "delivery_started_at": now, "updated_at": now},
                merge=True,
            )
        return found


@pytest.mark.parametrize("capped", [False, True], ids=["to-publish-again", "to-fail"])
def test_a_job_a_delivery_resumes_between_the_sweeps_read_and_write_is_passed_by(env, capped):
    """Between the sweep's look at a stalled job (no lease) and its write, a redelivery takes the lease and
    starts the job: the sweep's compare-and-set refuses, so the job is neither published again (a second live
    message) nor failed under the running delivery, and it is counted `changed`."""
    from threatflow.adapters.pubsub import PubSubPublisher
    from threatflow.flows import ingest_jobs

    docs = env["docs"]
    cap = {"recoveries": ingest_jobs.MAX_RECOVERIES, "recovered_at_row": 40} if capped else {}
    job_id = _job(docs, state="running", age=_stalled_at(), rows_done=40, continuation=1, deliveries=1, **cap)
    racing = _ResumedAfterLeaseCheck(docs, job_id)

    result = ingest_jobs.recover_stalled(documents=racing, publisher=PubSubPublisher(PROJECT), now=lambda: datetime.now(UTC))

    job = docs.get(ingest_jobs.INGEST_JOBS, job_id)
    assert racing.resumed, "the interleaving did not happen"
    assert (job["state"], job["deliveries"], job.get("recoveries", 0)) == ("running", 2, cap.get("recoveries", 0)), job
    assert "error" not in job and "recovered_at" not in job, job
    assert env["pull"]({job_id}, expected=0) == []
    assert (result["recovered"], result["failed"], result["changed"]) == (0, 0, 1), result


def test_a_failed_publish_puts_the_recovery_back_and_the_next_tick_publishes(env):
    """The recovery is recorded before the publish; a publish that fails fails the sweep and undoes the record,
    so the job is still stalled (same updated_at, no recovery counted) and the next tick recovers it."""
    from threatflow.adapters.pubsub import PubSubPublisher
    from threatflow.flows import ingest_jobs
    from threatflow.platform.errors import DependencyError

    docs = env["docs"]
    stalled_at = _stalled_at()
    job_id = _job(docs, state="running", age=stalled_at, rows_done=40, continuation=1)

    class Unreachable:
        def publish(self, topic: str, data: bytes, attributes: Any = None) -> str:
            raise DependencyError("Pub/Sub is unreachable")

    with pytest.raises(DependencyError):
        ingest_jobs.recover_stalled(documents=docs, publisher=Unreachable(), now=lambda: datetime.now(UTC))
    job = docs.get(ingest_jobs.INGEST_JOBS, job_id)
    assert job.get("recoveries") is None and job["updated_at"] == stalled_at, job
    result = ingest_jobs.recover_stalled(documents=docs, publisher=PubSubPublisher(PROJECT), now=lambda: datetime.now(UTC))
    assert (result["recovered"], result["changed"]) == (1, 0), result
    assert [json.loads(m.data)["continuation"] for m in env["pull"]({job_id}, expected=1)] == [1]
    assert docs.get(ingest_jobs.INGEST_JOBS, job_id)["recoveries"] == 1


def test_a_failed_publish_is_the_error_raised_when_putting_the_recovery_back_fails_too(env, caplog):
    """The recovery is recorded, the publish fails, then putting the recovery back fails as well: the put-back's
    error was raised over the publish's (its `__context__`), so the job run failed saying Firestore failed, never
    that the job's message could not be published. The publish's error is raised; the failed put-back is logged
    at ERROR with the job id and the publish's error (the job keeps the recovery: the next tick after
    STALL_SECONDS publishes it again)."""
    from threatflow.flows import ingest_jobs
    from threatflow.platform.errors import DependencyError

    docs = FirestoreDownWithPubSub(env["docs"])
    job_id = _job(docs, state="running", age=_stalled_at(), rows_done=40, continuation=1)

    class Unreachable:
        def publish(self, topic: str, data: bytes, attributes: Any = None) -> str:
            docs.down = True
            raise DependencyError("Pub/Sub publish to 'flow-ingest' failed: unreachable")

    caplog.set_level(logging.WARNING, logger="threatflow.flows.ingest")
    with pytest.raises(DependencyError) as raised:
        ingest_jobs.recover_stalled(documents=docs, publisher=Unreachable(), now=lambda: datetime.now(UTC))
    assert "Pub/Sub publish" in str(raised.value) and "Firestore" not in str(raised.value), raised.value
    assert env["docs"].get(ingest_jobs.INGEST_JOBS, job_id)["recoveries"] == 1  # the put-back failed
    [logged] = [r for r in caplog.records if "Firestore" in r.getMessage()]
    assert logged.levelno == logging.ERROR and logged.exc_info is not None, logged.getMessage()
    fields = logged.__dict__["fields"]
    assert fields["job_id"] == job_id and "Pub/Sub publish" in fields["failure"], fields
