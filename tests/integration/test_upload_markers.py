"""POST /api/v1/flows/uploads: one job per object generation under concurrent requests, and markers that expire.

The flows router runs on the real services of the run (Firestore, Storage and Pub/Sub emulators, PostgreSQL,
Redis). Concurrent requests are threads; the worst interleaving is staged by a thin wrapper around the real
Firestore store that holds each request, right after its first call on the marker, until every request has
made its own (the instant a read-then-write lets all of them through), and the real publisher is wrapped to
count what was published."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from helpers import create_user

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"
UPLOADS = "threatflow-uploads"
REQUESTS = 6


class _LinedUp:
    """The real Firestore store. Once armed, each thread's first call on a marker (get, create) is made, then
    the thread waits until `parties` threads have made theirs."""

    def __init__(self, documents: Any) -> None:
        self._documents = documents
        self._barrier: threading.Barrier | None = None
        self._local = threading.local()

    def arm(self, parties: int) -> None:
        self._barrier = threading.Barrier(parties, timeout=30)

    def __getattr__(self, name: str) -> Any:
        if name == "delete" and self.deletes_fail:
            return self._failing_delete
        return getattr(self._documents, name)

    deletes_fail = False

    def _failing_delete(self, collection: str, doc_id: str) -> None:
        from threatflow.platform.errors import DependencyError

        raise DependencyError(f"Firestore delete of {collection}/{doc_id} failed: unreachable")

    def _first(self, collection: str, result: Any) -> Any:
        from threatflow.flows import upload_markers

        if self._barrier is not None and collection == upload_markers.ACTIVE_UPLOADS and not getattr(self._local, "waited", False):
            self._local.waited = True
            self._barrier.wait()
        return result

    def get(self, collection: str, doc_id: str) -> Any:
        return self._first(collection, self._documents.get(collection, doc_id))

    def create(self, collection: str, doc_id: str, data: Any) -> bool:
        return bool(self._first(collection, self._documents.create(collection, doc_id, data)))


class _Publisher:
    """The real publisher, counting flow-ingest messages; `fail` makes the next publish fail as Pub/Sub down."""

    def __init__(self, publisher: Any) -> None:
        self._publisher, self.jobs, self.fail = publisher, [], False
        self._lock = threading.Lock()

    def publish(self, topic: str, data: bytes, attributes: Any = None) -> str:
        from threatflow.platform.errors import DependencyError

        if self.fail:
            self.fail = False
            raise DependencyError("Pub/Sub is unreachable")
        message_id = str(self._publisher.publish(topic, data, attributes))
        with self._lock:
            self.jobs.append(dict(attributes or {}).get("job_id"))
        return message_id


@pytest.fixture
def uploads(function_client, backend_env):
    from flows_support import publish, trained_model
    from google.cloud import pubsub_v1
    from werkzeug.test import Client
    from werkzeug.wrappers import Request

    from threatflow.adapters.storage import GcsBlobs
    from threatflow.flows.api import build_router
    from threatflow.platform.config import Settings
    from threatflow.runtime import Runtime

    publisher = pubsub_v1.PublisherClient()
    with contextlib.suppress(Exception):  # already made by an earlier test in this run
        publisher.create_topic(name=publisher.topic_path(PROJECT, "flow-ingest"))
    # An upload is queued only while a model is served (a 503 otherwise): these tests passed only when an earlier
    # test in the same worker had published one.
    publish(GcsBlobs(PROJECT), trained_model())
    password = create_user(backend_env["DATABASE_URL"], "analystu", "analyst")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "analystu", "password": password}).get_json()
    real = Runtime.from_env()
    documents = _LinedUp(real.documents)
    counted = _Publisher(real.publisher)
    runtime = Runtime(Settings.from_env(require=("JWT_SECRET",)), clients={"documents": documents, "publisher": counted})
    app = Request.application(build_router(runtime).handle)
    headers = {"Authorization": f"Bearer {token['access_token']}"}

    class Uploads:
        docs = real.documents
        lined_up = documents
        published = counted

        @staticmethod
        def put(name: str) -> int:
            from threatflow.adapters.storage import GcsBlobs

            blobs = GcsBlobs(PROJECT)
            blobs.put(UPLOADS, name, b"srcip,sport\n")
            return blobs.stat(UPLOADS, name).generation

        @staticmethod
        def post(name: str) -> tuple[int, dict[str, Any]]:
            response = Client(app).post("/api/v1/flows/uploads", json={"object": name}, headers=headers)
            return response.status_code, response.get_json()

        def post_at_once(self, name: str) -> list[tuple[int, dict[str, Any]]]:
            answers: list[tuple[int, dict[str, Any]]] = []
            start = threading.Barrier(REQUESTS, timeout=30)

            def one() -> None:
                start.wait()
                answers.append(self.post(name))

            threads = [threading.Thread(target=one) for _ in range(REQUESTS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert len(answers) == REQUESTS, answers
            return answers

        def jobs_of(self, name: str) -> list[dict[str, Any]]:
            return self.docs.query("flow_ingest_jobs", where=[("object", "==", name)], limit=50)

        def marker(self, name: str, generation: int) -> tuple[str, dict[str, Any] | None]:
            from threatflow.flows import upload_markers

            active_id = upload_markers.marker_id(UPLOADS, name, generation)
            return active_id, self.docs.get(upload_markers.ACTIVE_UPLOADS, active_id)

    yield Uploads()
    real.engine.dispose()


def _one_job(answers: list[tuple[int, dict[str, Any]]]) -> str:
    """Every answer a 202 naming the same job, exactly one of them the request that queued it."""
    assert {status for status, _ in answers} == {202}, answers
    job_ids = {body["job_id"] for _, body in answers}
    assert len(job_ids) == 1, f"{len(job_ids)} jobs for one object generation: {answers}"
    queued = [body for _, body in answers if not body.get("deduplicated")]
    assert len(queued) == 1, answers
    return job_ids.pop()


@pytest.mark.parametrize("staged", [True, False], ids=["lined-up-at-the-marker", "threads-only"])
def test_requests_for_one_object_at_the_same_instant_queue_one_job(uploads, staged):
    """Two posts of one object at the same instant made two jobs (a read of the marker, then a write): the marker
    is now created if absent, and only its creator queues a job and publishes it; the others answer that job."""
    from threatflow.flows import upload_markers

    name = f"flows/at-once-{uuid.uuid4().hex[:8]}.csv"
    generation = uploads.put(name)
    if staged:
        uploads.lined_up.arm(REQUESTS)

    job_id = _one_job(uploads.post_at_once(name))

    assert [job["id"] for job in uploads.jobs_of(name)] == [job_id]
    assert uploads.published.jobs == [job_id]
    _, marker = uploads.marker(name, generation)
    assert marker is not None and marker["job_id"] == job_id, marker
    lifetime = marker[upload_markers.EXPIRES_AT] - marker["claimed_at"]
    assert lifetime == timedelta(seconds=upload_markers.MARKER_SECONDS), marker


def test_a_marker_of_a_finished_job_is_taken_over_by_one_request_of_many(uploads):
    """The object is queued again after its job finished: every request finds the marker naming a job that is
    not active; each rewrites it only by compare-and-set on the version it read, so one queues a job."""
    name = f"flows/again-{uuid.uuid4().hex[:8]}.csv"
    uploads.put(name)
    status, first = uploads.post(name)
    assert status == 202 and not first.get("deduplicated"), first
    uploads.docs.set("flow_ingest_jobs", first["job_id"], {"state": "succeeded"}, merge=True)  # as the worker ends it
    uploads.lined_up.arm(REQUESTS)  # every request's create fails, then they all read the same marker

    rerun = _one_job(uploads.post_at_once(name))

    assert rerun != first["job_id"]
    assert sorted(job["id"] for job in uploads.jobs_of(name)) == sorted([first["job_id"], rerun])
    assert uploads.published.jobs == [first["job_id"], rerun]


def test_an_expired_marker_is_not_trusted_before_the_ttl_deletes_it(uploads):
    """Firestore's TTL deletes a marker lazily, up to about a day after expires_at: a marker past it still names
    a queued job here, and the route queues a new job instead of answering that one, with a new expiry."""
    from threatflow.flows import upload_markers

    name = f"flows/expired-{uuid.uuid4().hex[:8]}.csv"
    generation = uploads.put(name)
    _, first = uploads.post(name)
    active_id, marker = uploads.marker(name, generation)
    assert marker is not None
    expired = marker["claimed_at"] - timedelta(seconds=1)
    uploads.docs.set(upload_markers.ACTIVE_UPLOADS, active_id, {upload_markers.EXPIRES_AT: expired}, merge=True)
    assert uploads.docs.get("flow_ingest_jobs", first["job_id"])["state"] == "queued"

    status, again = uploads.post(name)

    assert status == 202 and not again.get("deduplicated") and again["job_id"] != first["job_id"], again
    _, marker = uploads.marker(name, generation)
    assert marker["job_id"] == again["job_id"] and marker[upload_markers.EXPIRES_AT] > expired + timedelta(days=1), marker
    status, third = uploads.post(name)  # the new marker is trusted
    assert (status, third["job_id"], third["deduplicated"]) == (202, again["job_id"], True), third


def test_a_marker_whose_job_vanished_is_taken_over_after_the_claim_s_grace_and_answered_within_it(uploads):
    """A marker naming a job that does not exist: its winner died between claiming it and writing the job (or is
    still between the two). Within CLAIM_GRACE_SECONDS of the claim the request answers that job; after it the
    marker is taken over and a job queued."""
    from threatflow.flows import upload_markers

    name = f"flows/vanished-{uuid.uuid4().hex[:8]}.csv"
    generation = uploads.put(name)
    active_id = upload_markers.marker_id(UPLOADS, name, generation)
    now = datetime.now(UTC)
    ghost = uuid.uuid4().hex
    marker = {"job_id": ghost, "bucket": UPLOADS, "object": name, "generation": generation, "claimed_at": now, "requested_by": "analystu"}
    uploads.docs.set(upload_markers.ACTIVE_UPLOADS, active_id, {**marker, upload_markers.EXPIRES_AT: now + timedelta(days=2)})

    status, young = uploads.post(name)
    assert (status, young["job_id"], young["state"], young["deduplicated"]) == (202, ghost, "queued", True), young
    # Another user's claim, its job not written yet: a 409 naming no job, as for another user's running job.
    uploads.docs.set(upload_markers.ACTIVE_UPLOADS, active_id, {"requested_by": "someone-else"}, merge=True)
    status, hidden = uploads.post(name)
    assert status == 409 and ghost not in json.dumps(hidden), hidden
    uploads.docs.set(upload_markers.ACTIVE_UPLOADS, active_id, {"requested_by": "analystu"}, merge=True)

    old = now - timedelta(seconds=upload_markers.CLAIM_GRACE_SECONDS + 1)
    uploads.docs.set(upload_markers.ACTIVE_UPLOADS, active_id, {"claimed_at": old}, merge=True)
    status, taken = uploads.post(name)
    assert status == 202 and not taken.get("deduplicated") and taken["job_id"] != ghost, taken
    assert uploads.marker(name, generation)[1]["job_id"] == taken["job_id"]
    assert uploads.published.jobs == [taken["job_id"]]


def test_a_job_that_cannot_be_published_releases_its_marker(uploads):
    name = f"flows/unpublished-{uuid.uuid4().hex[:8]}.csv"
    generation = uploads.put(name)
    uploads.published.fail = True

    status, _ = uploads.post(name)

    assert status == 503
    assert uploads.marker(name, generation)[1] is None and uploads.jobs_of(name) == []
    status, queued = uploads.post(name)  # queued at once, not answered with the job that never was
    assert status == 202 and not queued.get("deduplicated") and [j["id"] for j in uploads.jobs_of(name)] == [queued["job_id"]]


def test_a_failed_publish_is_the_error_answered_when_deleting_its_job_fails_too(uploads, caplog):
    """The job's publish failed, then deleting the job failed as well: the delete's error was raised over the
    publish's, so the caller and the logs were told Firestore failed, never that the job could not be published.
    The publish's error is answered; the failed cleanup is logged, naming the job left queued."""
    name = f"flows/unpublished-undeleted-{uuid.uuid4().hex[:8]}.csv"
    uploads.put(name)
    uploads.published.fail = True
    uploads.lined_up.deletes_fail = True
    caplog.set_level(logging.WARNING, logger="threatflow.flows")
    try:
        status, answer = uploads.post(name)
    finally:
        uploads.lined_up.deletes_fail = False
    assert status == 503 and answer["error"]["message"] == "Pub/Sub is unreachable", answer
    [job] = uploads.jobs_of(name)  # left queued: the delete failed; recover-stalled-flow-ingest-jobs publishes it again
    [logged] = [r for r in caplog.records if "Firestore" in r.getMessage()]
    assert logged.levelno == logging.ERROR and logged.exc_info is not None, logged.getMessage()
    fields = logged.__dict__["fields"]
    assert fields["job_id"] == job["id"] and fields["failure"] == "DependencyError: Pub/Sub is unreachable", fields
