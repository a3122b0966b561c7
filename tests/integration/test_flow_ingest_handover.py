"""The flow-ingest hand-over (a delivery out of time continuing in a new message) under crashes, duplicates and late
messages: the worker's handler on PostgreSQL and the Firestore, Pub/Sub and Cloud Storage emulators.

A crash is an instance that stops at one call of its real adapters: that call and every later one raise `Killed`
(a BaseException, so no handler code catches it), as if the process were gone: its message is not acked, its
lease is not released by it. What Pub/Sub then delivers (the unacked message again, and whatever reached the
topic) is delivered by a healthy instance, in the orders the interleavings allow. No recovery sweep runs."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flows_support import publish, trained_model

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"
UPLOADS = "threatflow-uploads"
ROWS, BATCH = 100, 40  # three deliveries with a 0 s budget: rows 0-39, 40-79, 80-99


class Killed(BaseException):
    """The instance is gone."""


class Instance:
    """The adapters of one function instance, real, until it dies at the first call `dies_at` picks."""

    def __init__(self, dies_at: Callable[[str, tuple[Any, ...]], bool]) -> None:
        self.dies_at = dies_at
        self.dead = False

    def wrap(self, real: Any) -> Any:
        instance = self

        class Adapter:
            def __getattr__(self, name: str) -> Any:
                attribute = getattr(real, name)
                if not callable(attribute):
                    return attribute

                def call(*args: Any, **kwargs: Any) -> Any:
                    if instance.dead or instance.dies_at(name, args):
                        instance.dead = True
                        raise Killed(name)
                    return attribute(*args, **kwargs)

                return call

        return Adapter()


def _is_publish(name: str, _args: tuple[Any, ...]) -> bool:
    return name == "publish"


def _is_handover_record(name: str, args: tuple[Any, ...]) -> bool:
    return name == "set" and "continued_at" in args[2]


class Failing(Exception):
    """A store call that fails while the instance lives on."""


@pytest.fixture
def worker(backend_env, monkeypatch) -> Iterator[Any]:
    from google.cloud import pubsub_v1

    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.adapters.pubsub import PubSubPublisher
    from threatflow.adapters.storage import GcsBlobs
    from threatflow.flows import handlers, ingest
    from threatflow.flows.ingest_jobs import INGEST_JOBS
    from threatflow.platform.config import Settings
    from threatflow.runtime import Runtime

    ingest.forget_partitions()
    publish(GcsBlobs(PROJECT), trained_model())
    monkeypatch.setattr(handlers, "BATCH_ROWS", BATCH)
    monkeypatch.setenv("FLOW_INGEST_DELIVERY_SECONDS", "0")
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(PROJECT, "flow-ingest")
    with contextlib.suppress(Exception):  # already made by an earlier test in this run
        publisher.create_topic(name=topic)
    with contextlib.suppress(Exception):
        publisher.create_topic(name=publisher.topic_path(PROJECT, "ioc-enrichment-requested"))
    subscriber = pubsub_v1.SubscriberClient()
    subscription = subscriber.subscription_path(PROJECT, f"flow-ingest-handover-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=subscription, topic=topic)
    documents = FirestoreDocuments(PROJECT)

    class Worker:
        docs = documents

        def upload(self) -> str:
            """A job as POST /api/v1/flows/uploads makes it, on a file of ROWS flows of its own."""
            import flowgen

            job_id = uuid.uuid4().hex
            name = f"flows/handover-{job_id}.csv"
            seed = int(job_id[:6], 16)
            raw = "\n".join(",".join(flowgen.raw_line(f)) for f in flowgen.generate(ROWS, seed=seed)) + "\n"
            GcsBlobs(PROJECT).put(UPLOADS, name, raw.encode())
            now = datetime.now(UTC)
            documents.set(
                INGEST_JOBS,
                job_id,
                {"job_id": job_id, "state": "queued", "bucket": UPLOADS, "object": name, "rows_done": 0, "stored": 0}
                | {"duplicates": 0, "invalid": 0, "created_at": now, "updated_at": now},
            )
            return job_id

        def handler(self, instance: Instance | None = None) -> Callable[[Any], dict[str, Any]]:
            """The worker's handler on an instance of its own (a new Runtime); `instance` may kill it."""
            clients: dict[str, Any] = {}
            if instance is not None:
                clients = {"documents": instance.wrap(FirestoreDocuments(PROJECT)), "publisher": instance.wrap(PubSubPublisher(PROJECT))}
            return handlers.build_handler(Runtime(Settings.from_env(), clients=clients))

        def continuations(self, job_id: str, expected: int) -> list[Any]:
            """The messages that reached the topic for this job (acked on the test's subscription)."""
            found: list[Any] = []
            for _ in range(6 if expected else 1):
                response = subscriber.pull(subscription=subscription, max_messages=20, timeout=5)
                if response.received_messages:
                    subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
                mine = [m.message for m in response.received_messages if m.message.attributes["job_id"] == job_id]
                found += [_message(json.loads(m.data)) for m in mine]
                if len(found) >= expected:
                    break
            return found

        def job(self, job_id: str) -> dict[str, Any]:
            return dict(documents.get(INGEST_JOBS, job_id) or {})

    yield Worker()
    subscriber.delete_subscription(subscription=subscription)
    subscriber.close()
    ingest.forget_partitions()


def _message(data: dict[str, Any], attempt: int = 1) -> Any:
    from threatflow.platform.events import Message

    return Message(
        message_id=uuid.uuid4().hex,
        attributes={"job_id": data["job_id"]},
        data={"schema_version": 1, **data},
        published_at=datetime.now(UTC),
        delivery_attempt=attempt,
    )


def _upload_message(job_id: str) -> Any:
    return _message({"job_id": job_id})


def _deliver(handler: Callable[[Any], dict[str, Any]], message: Any) -> float:
    """Deliver; it must be answered (acked) without waiting for a lease. The seconds it took."""
    began = time.monotonic()
    handler(message)
    return time.monotonic() - began


def _stored_once(backend_env: dict[str, str], job: dict[str, Any]) -> None:
    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    assert job["state"] == "succeeded" and job["rows_done"] == ROWS and job["stored"] == ROWS and job["duplicates"] == 0, job
    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    with engine.connect() as conn:
        count = conn.exec_driver_sql("SELECT count(*) FROM flow_events WHERE source = %s", (job["source"],)).scalar_one()
    engine.dispose()
    assert count == ROWS


@pytest.mark.parametrize("dies", ["at the publish", "after the publish, before the record"])
def test_an_instance_dying_in_the_handover_leaves_a_message_that_resumes_the_job_at_once(worker, backend_env, dies):
    """Dead at the publish: nothing reached the topic, so the unacked message comes back and must still be current.
    Dead after it: the continuation, delivered at once, must run though its number was never recorded and the
    lease of the dead instance must not stand in its way; the unacked message, back later, is acked as superseded."""
    from threatflow.flows import handlers

    job_id = worker.upload()
    original = _upload_message(job_id)
    instance = Instance(_is_publish if dies == "at the publish" else _is_handover_record)
    with pytest.raises(Killed):
        worker.handler(instance)(original)
    job = worker.job(job_id)
    assert job["rows_done"] == BATCH and job["deliveries"] == 1, job
    healthy = worker.handler()

    published = worker.continuations(job_id, expected=1 if dies != "at the publish" else 0)
    if dies == "at the publish":
        assert published == []
        assert _deliver(healthy, original) < handlers.LEASE_WAIT_SECONDS  # Pub/Sub redelivers it: current, runs rows 40-79
    else:
        [continuation] = published
        assert continuation.data["continuation"] == 1 and continuation.data["continuation_token"]
        assert worker.job(job_id).get("continuation", 0) == 0  # never recorded
        assert _deliver(healthy, continuation) < handlers.LEASE_WAIT_SECONDS  # runs rows 40-79
        assert _deliver(healthy, original) < handlers.LEASE_WAIT_SECONDS  # back after its backoff: superseded
    following = 1 if dies == "at the publish" else 2  # the number the second run hands over to
    job = worker.job(job_id)
    assert job["rows_done"] == 2 * BATCH and job["deliveries"] == 2 and job["continuation"] == following, job
    [last] = worker.continuations(job_id, expected=1)
    assert last.data["continuation"] == following and last.data["continuation_token"] == job["continuation_token"]
    _deliver(healthy, last)
    _stored_once(backend_env, worker.job(job_id))
    assert worker.job(job_id)["deliveries"] == 3
    assert worker.continuations(job_id, expected=0) == []


def test_when_the_unacked_message_runs_before_the_unrecorded_continuation_the_later_copy_loses(worker, backend_env):
    """Dead after the publish, and Pub/Sub brings the unacked message back first: it is current (nothing was
    recorded), runs and publishes continuation 1 again with a new token, and records it. The first copy of
    continuation 1 then arrives: same number, other token: acked without work, and no run happens twice."""
    job_id = worker.upload()
    original = _upload_message(job_id)
    with pytest.raises(Killed):
        worker.handler(Instance(_is_handover_record))(original)
    [orphan] = worker.continuations(job_id, expected=1)
    healthy = worker.handler()
    healthy(original)
    [recorded] = worker.continuations(job_id, expected=1)
    assert recorded.data["continuation"] == orphan.data["continuation"] == 1
    assert recorded.data["continuation_token"] != orphan.data["continuation_token"]
    job = worker.job(job_id)
    assert (job["rows_done"], job["deliveries"], job["continuation_token"]) == (2 * BATCH, 2, recorded.data["continuation_token"]), job

    healthy(orphan)
    assert worker.job(job_id)["deliveries"] == 2 and worker.continuations(job_id, expected=0) == []
    healthy(recorded)
    _stored_once(backend_env, worker.job(job_id))
    for late in (orphan, recorded, original):  # duplicates and late arrivals after the end: acked, nothing runs
        healthy(late)
    assert worker.job(job_id)["deliveries"] == 3


def test_a_handover_record_that_fails_acks_the_message_and_the_continuation_runs(worker, backend_env):
    """The instance lives but Firestore refuses the record: the continuation is on the topic, so this message is
    acked (no redelivery, no second run); the continuation runs, and a copy of this message is then superseded."""

    class FailOnce:
        failed = False

        def __call__(self, name: str, args: tuple[Any, ...]) -> bool:
            if _is_handover_record(name, args) and not self.failed:
                self.failed = True
                raise Failing("deadline exceeded")
            return False

    job_id = worker.upload()
    original = _upload_message(job_id)
    flaky = worker.handler(Instance(FailOnce()))
    flaky(original)  # acked
    job = worker.job(job_id)
    assert job["rows_done"] == BATCH and job.get("continuation", 0) == 0, job
    [continuation] = worker.continuations(job_id, expected=1)
    healthy = worker.handler()
    healthy(continuation)
    healthy(original)  # its ack lost after all: superseded
    assert worker.job(job_id)["deliveries"] == 2
    [last] = worker.continuations(job_id, expected=1)
    healthy(last)
    _stored_once(backend_env, worker.job(job_id))


def test_a_superseded_message_is_acked_without_waiting_for_a_lease_another_delivery_holds(worker):
    """A lower number, or the same number with another token, is known stale from the job alone: it is acked at
    once even while a live delivery holds the lease. The live message itself still waits and is retried."""
    from threatflow.flows import handlers
    from threatflow.flows.ingest_jobs import INGEST_JOBS, INGEST_LEASES
    from threatflow.platform.errors import RetryableError

    job_id = worker.upload()
    live_token = uuid.uuid4().hex
    worker.docs.set(INGEST_JOBS, job_id, {"state": "running", "continuation": 2, "continuation_token": live_token}, merge=True)
    worker.docs.set(INGEST_LEASES, job_id, {"holder": "alive", "until": datetime.now(UTC) + timedelta(seconds=300)})
    handler = worker.handler()
    for stale in (
        {"job_id": job_id},
        {"job_id": job_id, "continuation": 1, "continuation_token": uuid.uuid4().hex},
        {"job_id": job_id, "continuation": 2, "continuation_token": uuid.uuid4().hex},
        {"job_id": job_id, "continuation": 2},
    ):
        assert _deliver(handler, _message(stale, attempt=5)) < 1.0, stale
    job = worker.job(job_id)
    assert job["state"] == "running" and "deliveries" not in job and "error" not in job, job
    with pytest.raises(RetryableError):
        handler(_message({"job_id": job_id, "continuation": 2, "continuation_token": live_token}))
    assert worker.job(job_id)["state"] == "running"
    assert handlers.LEASE_WAIT_SECONDS >= 1.0


def test_continuation_tokens_that_are_not_ones_are_refused(worker):
    from threatflow.platform.errors import ValidationError

    job_id = worker.upload()
    handler = worker.handler()
    for forged in (1, "x" * 32, "A" * 32, "0" * 31, ["0" * 32]):
        with pytest.raises(ValidationError, match="continuation_token"):
            handler(_message({"job_id": job_id, "continuation": 1, "continuation_token": forged}))
    assert worker.job(job_id)["state"] == "queued"
