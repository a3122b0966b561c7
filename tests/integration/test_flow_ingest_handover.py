"""The flow-ingest hand-over (a delivery out of time continuing in a new message) under crashes, duplicates and late
messages: the worker's handler on PostgreSQL and the Firestore, Pub/Sub and Cloud Storage emulators.

A crash is an instance that stops at one call of its real adapters: that call and every later one raise `Killed`
(a BaseException, so no handler code catches it), as if the process were gone: its message is not acked, its
lease is not released by it. What Pub/Sub then delivers (the unacked message again, and whatever reached the
topic) is delivered by a healthy instance, in the orders the interleavings allow. No recovery sweep runs."""

from __future__ import annotations

import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flows_support import publish, sql_row, trained_model
from helpers import create_user, pull_published

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


def _is_publish(name: str, args: tuple[Any, ...]) -> bool:
    """The hand-over's publish on flow-ingest, not the bridge's enrichment request a batch may publish
    first (whether it does depends on the hour's enrichment budget other tests spent)."""
    return name == "publish" and bool(args) and args[0] == "flow-ingest"


def _before_success(answers: list[str]) -> int:
    """How many of a copy's answers come before the trailing "succeeded" ones (once the live delivery's job
    has succeeded, its copies are acked as finished)."""
    return len(answers) - len(list(itertools.takewhile(lambda a: a == "succeeded", reversed(answers))))


def _is_handover_record(name: str, args: tuple[Any, ...]) -> bool:
    return name in ("set", "update_if_unchanged") and "continued_at" in args[2]


class Failing(Exception):
    """A store call that fails while the instance lives on."""


@pytest.fixture
def worker(backend_env, monkeypatch) -> Iterator[Any]:
    from google.cloud import pubsub_v1

    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.adapters.pubsub import PubSubPublisher
    from threatflow.adapters.storage import GcsBlobs
    from threatflow.flows import handlers
    from threatflow.flows.ingest_jobs import INGEST_JOBS
    from threatflow.platform.config import Settings
    from threatflow.runtime import Runtime

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
    # The analyst a job is queued by: the worker acts for that account as it is when it runs (auth.requester).
    create_user(backend_env["DATABASE_URL"], "handover-analyst", "analyst")
    requester_id, requester_version = sql_row(
        backend_env["DATABASE_URL"], "SELECT id, security_version FROM users WHERE username = 'handover-analyst'"
    )

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
                | {"duplicates": 0, "invalid": 0, "created_at": now, "updated_at": now}
                | {"requested_by": "handover-analyst", "requested_by_id": requester_id, "requester_version": requester_version},
            )
            return job_id

        def handler(self, instance: Instance | None = None, documents: Any = None) -> Callable[[Any], dict[str, Any]]:
            """The worker's handler on an instance of its own (a new Runtime); `instance` may kill it, and
            `documents` (a wrapper of a real store) replaces its document store."""
            clients: dict[str, Any] = {}
            if instance is not None:
                clients = {"documents": instance.wrap(FirestoreDocuments(PROJECT)), "publisher": instance.wrap(PubSubPublisher(PROJECT))}
            if documents is not None:
                clients["documents"] = documents
            return handlers.build_handler(Runtime(Settings.from_env(), clients=clients))

        def continuations(self, job_id: str, expected: int) -> list[Any]:
            """The messages that reached the topic for this job (acked on the test's subscription)."""
            mine = pull_published(
                publisher,
                subscriber,
                topic=topic,
                subscription=subscription,
                expected=expected,
                keep=lambda m: m.attributes.get("job_id") == job_id,
                attempts=6,
                max_messages=20,
            )
            return [_message(json.loads(m.data)) for m in mine]

        def job(self, job_id: str) -> dict[str, Any]:
            return dict(documents.get(INGEST_JOBS, job_id) or {})

    yield Worker()
    subscriber.delete_subscription(subscription=subscription)
    subscriber.close()


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


class _Store:
    """The real Firestore store, with `before(name, args)` run ahead of every call (the hook an interleaving needs)."""

    def __init__(self, before: Callable[[str, tuple[Any, ...]], None]) -> None:
        from threatflow.adapters.firestore import FirestoreDocuments

        self._real, self._before = FirestoreDocuments(PROJECT), before

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._real, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self._before(name, args)
            return attribute(*args, **kwargs)

        return call


def _is_progress(name: str, args: tuple[Any, ...], rows_done: int) -> bool:
    return name == "set" and args[0] == "flow_ingest_jobs" and args[2].get("rows_done") == rows_done and "state" not in args[2]


def _events(backend_env: dict[str, str], source: str) -> int:
    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    with engine.connect() as conn:
        count = conn.exec_driver_sql("SELECT count(*) FROM flow_events WHERE source = %s", (source,)).scalar_one()
    engine.dispose()
    return int(count)


def test_a_handover_record_landing_after_the_continuation_handed_over_again_does_not_take_the_job_back(worker, backend_env):
    """The first delivery publishes continuation 1; before its record lands, continuation 1 runs and hands over to
    continuation 2 (recorded). The late record of 1 must not be written over it: the job stays at 2, and a copy of
    continuation 1 delivered afterwards is acked as superseded instead of running the job again."""
    job_id = worker.upload()
    late: dict[str, Any] = {}
    healthy = worker.handler()

    def continuation_runs_first(name: str, args: tuple[Any, ...]) -> None:
        if name in ("set", "update_if_unchanged") and "continued_at" in args[2] and args[2]["continuation"] == 1 and not late:
            [late["message"]] = worker.continuations(job_id, expected=1)
            healthy(late["message"])  # rows 40-79, then the hand-over to 2, recorded
            late["job"] = worker.job(job_id)

    slow = worker.handler(documents=_Store(continuation_runs_first))
    slow(_upload_message(job_id))
    assert late["job"]["continuation"] == 2 and late["job"]["rows_done"] == 2 * BATCH, late
    job = worker.job(job_id)
    assert (job["continuation"], job["continuation_token"]) == (2, late["job"]["continuation_token"]), job

    _deliver(healthy, late["message"])  # a copy of continuation 1: superseded, nothing runs
    assert worker.job(job_id)["deliveries"] == 2
    [last] = worker.continuations(job_id, expected=1)
    assert last.data["continuation"] == 2 and last.data["continuation_token"] == job["continuation_token"]
    healthy(last)
    _stored_once(backend_env, worker.job(job_id))
    assert worker.job(job_id)["deliveries"] == 3 and worker.continuations(job_id, expected=0) == []


def _slow_batches(seconds: float, then: Callable[[str, tuple[Any, ...]], None] = lambda name, args: None) -> Any:
    """A store whose progress writes (one per batch) each take `seconds` more: a delivery that outlives its lease."""

    def before(name: str, args: tuple[Any, ...]) -> None:
        then(name, args)
        if name == "set" and args[0] == "flow_ingest_jobs" and "rows_done" in args[2] and "state" not in args[2]:
            time.sleep(seconds)

    return _Store(before)


def test_a_live_delivery_renews_its_lease_so_copies_of_its_message_never_run_beside_it(worker, backend_env, monkeypatch):
    """A 3 s lease and a delivery that runs ~5 s (1.5 s per batch): copies of its message delivered meanwhile find
    the lease held every time (renewed before each batch), so the job is run once, by one delivery."""
    import threading

    from threatflow.flows import handlers
    from threatflow.platform.errors import RetryableError

    monkeypatch.setattr(handlers, "LEASE_SECONDS", 3)
    monkeypatch.setattr(handlers, "LEASE_WAIT_SECONDS", 0.3)
    monkeypatch.setenv("FLOW_INGEST_DELIVERY_SECONDS", "420")
    job_id = worker.upload()
    message = _upload_message(job_id)
    live = threading.Thread(target=worker.handler(documents=_slow_batches(1.5)), args=(message,))
    began = time.monotonic()
    live.start()
    copies, answers = worker.handler(), []
    while live.is_alive():
        time.sleep(0.7)
        try:
            answers.append(copies(message)["state"])
        except RetryableError:
            answers.append("lease held")
    live.join()
    assert time.monotonic() - began > handlers.LEASE_SECONDS + 1  # the run outlived its lease
    held = _before_success(answers)
    assert held >= 2 and set(answers[:held]) == {"lease held"}, answers  # "succeeded" only once the job has
    job = worker.job(job_id)
    assert job["deliveries"] == 1, job
    _stored_once(backend_env, job)


def test_a_delivery_that_dies_mid_run_leaves_its_job_to_a_redelivery_within_the_lease(worker, backend_env, monkeypatch):
    """The delivery outlives its 3 s lease (renewed), stores a second batch and dies before recording it. Its
    message, redelivered at once, waits for the lease only as long as the last renewal left (never the 600 s a
    lease used to be), takes the job over and finishes it; the batch stored twice is counted as duplicates."""
    from threatflow.flows import handlers

    monkeypatch.setattr(handlers, "LEASE_SECONDS", 3)
    monkeypatch.setenv("FLOW_INGEST_DELIVERY_SECONDS", "420")
    job_id = worker.upload()
    message = _upload_message(job_id)
    died: list[float] = []

    def dies_at_second_record(name: str, args: tuple[Any, ...]) -> None:
        if died or _is_progress(name, args, 2 * BATCH):  # this call and every later one: the instance is gone
            died.append(time.monotonic())
            raise Killed(name)  # the rows 40-79 are stored, their record never written; the lease stays behind

    with pytest.raises(Killed):
        worker.handler(documents=_slow_batches(3.5, then=dies_at_second_record))(message)
    taken: list[float] = []

    def note_takeover(name: str, args: tuple[Any, ...]) -> None:
        if name in ("set", "update_if_unchanged") and args[0] == "flow_ingest_jobs" and args[2].get("state") == "running" and not taken:
            taken.append(time.monotonic())  # the redelivery starts the job: it holds the lease

    worker.handler(documents=_Store(note_takeover))(message)
    waited = taken[0] - died[0]
    # The dead delivery renewed its lease before storing its second batch (~3.5 s into its run), so the lease
    # outlived it: without renewal it would have expired before the death and been taken over at once.
    assert 1.0 < waited < handlers.LEASE_SECONDS + 1.0, waited
    job = worker.job(job_id)
    assert (job["state"], job["deliveries"], job["rows_done"]) == ("succeeded", 2, ROWS), job
    assert (job["stored"], job["duplicates"]) == (ROWS - BATCH, BATCH), job
    assert _events(backend_env, job["source"]) == ROWS


@pytest.mark.parametrize("taker", ["holds it", "released it"])
def test_a_delivery_whose_lease_was_taken_over_stores_nothing_more(worker, backend_env, monkeypatch, taker):
    """After its first batch the delivery stalls past its 1 s lease, and another delivery takes the lease over.
    At its next renewal (before storing the next batch) it stops: taken over, it is acked (ConflictError; the holder
    runs the job); released meanwhile, it is retried (RetryableError) and does not fail the job, even on the last
    attempt. Either way it stores no more rows and writes no more progress."""
    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.flows import handlers
    from threatflow.flows.ingest_jobs import INGEST_LEASES
    from threatflow.platform.errors import ConflictError, RetryableError

    monkeypatch.setattr(handlers, "LEASE_SECONDS", 1)
    monkeypatch.setenv("FLOW_INGEST_DELIVERY_SECONDS", "420")
    job_id = worker.upload()
    real = FirestoreDocuments(PROJECT)
    holding, taken = contextlib.ExitStack(), []

    def taken_over_after_first_batch(name: str, args: tuple[Any, ...]) -> None:
        if _is_progress(name, args, BATCH) and not taken:
            time.sleep(1.2)  # the lease expires unrenewed
            taken.append(holding.enter_context(handlers.lease(real, job_id, now=datetime.now(UTC), wait_seconds=2)))
            if taker == "released it":
                holding.close()

    stalling = worker.handler(documents=_Store(taken_over_after_first_batch))
    expected = ConflictError if taker == "holds it" else RetryableError
    with pytest.raises(expected, match=r"took over|taken over"):
        stalling(_message({"job_id": job_id}, attempt=5))
    job = worker.job(job_id)
    assert (job["state"], job["rows_done"], job["stored"], job["deliveries"]) == ("running", BATCH, BATCH, 1), job
    assert _events(backend_env, job["source"]) == BATCH
    lease = real.get(INGEST_LEASES, job_id)
    assert (lease is not None) == (taker == "holds it"), lease  # the stopped delivery released nobody's lease
    holding.close()
    worker.handler()(_upload_message(job_id))  # the job's message, run by whoever holds the job next
    _stored_once(backend_env, worker.job(job_id))


def test_a_record_landing_between_a_deliverys_read_and_its_start_supersedes_it_instead_of_being_overwritten(worker, backend_env):
    """Continuation 1 reads the job under its lease; before it writes its start, a later hand-over record lands
    (continuation 2: a copy of 1 ran and handed over). The start is a compare-and-set on the job as read, so it is
    refused, the job read again, and this message, now superseded, is acked without running: the job stays at 2."""
    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.flows.ingest_jobs import INGEST_JOBS

    job_id = worker.upload()
    worker.handler()(_upload_message(job_id))  # rows 0-39, hand-over to continuation 1, recorded
    [first] = worker.continuations(job_id, expected=1)
    later = uuid.uuid4().hex
    real = FirestoreDocuments(PROJECT)
    landed: list[bool] = []

    def record_lands_before_the_start(name: str, args: tuple[Any, ...]) -> None:
        if name in ("set", "update_if_unchanged") and args[0] == INGEST_JOBS and args[2].get("state") == "running" and not landed:
            landed.append(True)
            real.set(INGEST_JOBS, job_id, {"continuation": 2, "continuation_token": later}, merge=True)

    worker.handler(documents=_Store(record_lands_before_the_start))(first)
    job = worker.job(job_id)
    assert landed and (job["continuation"], job["continuation_token"], job["deliveries"], job["rows_done"]) == (2, later, 1, BATCH), job


def test_the_hash_pass_renews_the_lease(worker, backend_env, monkeypatch):
    """A first delivery hashing an object slowly (~5 s of reads, a 2 s lease) keeps its lease through the pass:
    a copy of its message delivered meanwhile finds it held."""
    import threading

    from threatflow.adapters.storage import GcsBlobs
    from threatflow.flows import handlers
    from threatflow.platform.config import Settings
    from threatflow.platform.errors import RetryableError
    from threatflow.runtime import Runtime

    monkeypatch.setattr(handlers, "LEASE_SECONDS", 2)
    monkeypatch.setattr(handlers, "LEASE_WAIT_SECONDS", 0.2)
    monkeypatch.setattr(handlers, "HASH_CHUNK_BYTES", 1024)
    monkeypatch.setenv("FLOW_INGEST_DELIVERY_SECONDS", "420")
    real = GcsBlobs(PROJECT)
    opened: list[str] = []

    class SlowFirstRead:
        """The real store; the first object opened (the hash pass) is read at 1 KiB per 0.2 s."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        @contextlib.contextmanager
        def open_read(self, bucket: str, name: str, *, generation: int | None = None) -> Iterator[Any]:
            opened.append(name)
            with real.open_read(bucket, name, generation=generation) as stream:
                if len(opened) > 1:
                    yield stream
                    return

                class Slow:
                    def read(self, size: int = -1) -> bytes:
                        time.sleep(0.2)
                        return bytes(stream.read(size))

                yield Slow()

    job_id = worker.upload()
    message = _upload_message(job_id)
    slow = handlers.build_handler(Runtime(Settings.from_env(), clients={"blobs": SlowFirstRead()}))
    live = threading.Thread(target=slow, args=(message,))
    began = time.monotonic()
    live.start()
    copies, answers = worker.handler(), []
    while live.is_alive():
        time.sleep(0.4)
        try:
            answers.append(copies(message)["state"])
        except RetryableError:
            answers.append("lease held")
    live.join()
    assert time.monotonic() - began > 2 * handlers.LEASE_SECONDS and len(opened) == 2, opened
    # While the live delivery runs, every copy finds the lease held; once its job has succeeded (the thread may
    # still be finishing), copies are acked as finished: "lease held" then, at the end only, "succeeded".
    held = _before_success(answers)
    assert held >= 2 and set(answers[:held]) == {"lease held"}, answers
    job = worker.job(job_id)
    assert job["deliveries"] == 1, job
    _stored_once(backend_env, job)


def test_a_delivery_whose_store_outlasts_its_lease_leaves_the_progress_to_the_new_holder(worker, backend_env, monkeypatch):
    """The second batch's store (PostgreSQL) takes longer than the 1 s lease, and another delivery takes the lease
    over meanwhile. The batch is stored (its rows are duplicates to the new holder, never stored twice), but the
    delivery checks its lease before writing the progress and stops: rows_done stays at the first batch."""
    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.adapters.postgres import create_engine
    from threatflow.flows import handlers
    from threatflow.flows.ingest_jobs import INGEST_JOBS
    from threatflow.platform.config import Settings
    from threatflow.platform.errors import ConflictError
    from threatflow.runtime import Runtime

    monkeypatch.setattr(handlers, "LEASE_SECONDS", 1)
    monkeypatch.setenv("FLOW_INGEST_DELIVERY_SECONDS", "420")
    job_id = worker.upload()
    real_docs, real_engine = FirestoreDocuments(PROJECT), create_engine(Settings.from_env())
    holding, taken = contextlib.ExitStack(), []

    class TakenOverDuringTheSecondStore:
        """The real engine; the transaction that stores the second batch starts only after another delivery has
        taken over the lease, expired meanwhile."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real_engine, name)

        def begin(self) -> Any:
            if not taken and (real_docs.get(INGEST_JOBS, job_id) or {}).get("rows_done") == BATCH:
                time.sleep(1.2)
                taken.append(holding.enter_context(handlers.lease(real_docs, job_id, now=datetime.now(UTC), wait_seconds=2)))
            return real_engine.begin()

    slow = handlers.build_handler(Runtime(Settings.from_env(), clients={"engine": TakenOverDuringTheSecondStore()}))
    with pytest.raises(ConflictError, match="took over"):
        slow(_upload_message(job_id))
    job = worker.job(job_id)
    assert taken and (job["state"], job["rows_done"], job["stored"], job["deliveries"]) == ("running", BATCH, BATCH, 1), job
    assert _events(backend_env, job["source"]) == 2 * BATCH  # the second batch was stored before the lease was checked
    holding.close()
    worker.handler()(_upload_message(job_id))
    job = worker.job(job_id)
    assert (job["state"], job["rows_done"], job["stored"], job["duplicates"]) == ("succeeded", ROWS, ROWS - BATCH, BATCH), job
    assert _events(backend_env, job["source"]) == ROWS
    real_engine.dispose()
