"""A request whose publish failed after Pub/Sub took (some of) its messages is never run.

POST /api/v1/enrichment/enrich and /batch record each run queued, then publish its request; when the publish
raises, the caller is answered an error (and never sees the run or batch id) and the runs are deleted. But a
message the broker had accepted before the failure (the batch's first ones; a single publish whose wait failed
after the broker took it) was still delivered: enrich-dispatch found no run, took it for auto-enrichment's
(whose runs are not recorded before the publish), created it started and asked its sources, for nobody.
Real PostgreSQL, Redis, the Pub/Sub and Firestore emulators and the real enrich-dispatch function; the failing
publish is a wrapper around the runtime's real publisher that lets the first messages through."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from helpers import clear_enrichment_runs, create_user, pull_published, push_envelope_of

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"
VALUES = ["45.95.149.10", "45.95.149.11", "45.95.149.12"]


class _FailsAfter:
    """The real publisher, except that a request's publish fails once `passed` of its messages went through (the
    broker took them): publish_many after the first `passed`, publish after the message went out, as a future
    whose wait fails. `before_failing` runs just before the failure (a dispatcher delivering what went out)."""

    def __init__(self, publisher: Any, *, passed: int) -> None:
        self._publisher, self._passed = publisher, passed
        self.before_failing: Callable[[], None] = lambda: None

    def publish(self, topic: str, data: bytes, attributes: Any = None) -> str:
        message_id = str(self._publisher.publish(topic, data, attributes))
        if topic == "ioc-enrichment-requested":
            self._fail()
        return message_id

    def publish_many(self, topic: str, messages: list[tuple[bytes, Any]]) -> list[str]:
        self._publisher.publish_many(topic, messages[: self._passed])
        self._fail()
        return []

    def _fail(self) -> None:
        from threatflow.platform.errors import DependencyError

        self.before_failing()
        raise DependencyError(f"Pub/Sub publish to 'ioc-enrichment-requested' failed after {self._passed} messages")


@pytest.fixture
def env(backend_env, function_client):
    from google.cloud import pubsub_v1
    from werkzeug.test import Client
    from werkzeug.wrappers import Request

    from threatflow.enrichment.api import build_router
    from threatflow.runtime import Runtime

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    pulls: dict[str, Callable[..., list[Any]]] = {}
    subscriptions = []
    for name in ("ioc-enrichment-requested", "enrichment-tasks", "enrichment-completed"):
        topic = publisher.topic_path(PROJECT, name)
        with contextlib.suppress(Exception):  # already made by an earlier test in this run
            publisher.create_topic(name=topic)
        subscription = subscriber.subscription_path(PROJECT, f"failed-requests-{name}-{uuid.uuid4().hex[:8]}")
        subscriber.create_subscription(name=subscription, topic=topic)
        subscriptions.append(subscription)

        def pull(expected: int, *, topic: str = topic, subscription: str = subscription) -> list[Any]:
            return pull_published(publisher, subscriber, topic=topic, subscription=subscription, expected=expected, keep=lambda m: True)

        pulls[name] = pull
    real = Runtime.from_env()
    clear_enrichment_runs(real.documents)
    failing = _FailsAfter(real.publisher, passed=1)
    runtime = Runtime(real.settings, clients={"publisher": failing, "documents": real.documents, "engine": real.engine})
    password = create_user(backend_env["DATABASE_URL"], "failed-requests", "analyst")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "failed-requests", "password": password}).get_json()
    dispatch = function_client("enrich-dispatch")

    def deliver(message: Any) -> None:
        assert dispatch.post("/", json=push_envelope_of(message, "ioc-enrichment-requested-push")).status_code == 200

    yield {
        "docs": real.documents,
        "api": Client(Request.application(build_router(runtime).handle)),
        "headers": {"Authorization": f"Bearer {token['access_token']}"},
        "publisher": failing,
        "requested": pulls["ioc-enrichment-requested"],
        "tasks": pulls["enrichment-tasks"],
        "deliver": deliver,
    }
    for subscription in subscriptions:
        subscriber.delete_subscription(subscription=subscription)
    subscriber.close()
    real.engine.dispose()


def _recorded(docs: Any) -> list[dict[str, Any]]:
    from threatflow.enrichment import runs

    return docs.query(runs.RUNS, limit=10)


@pytest.mark.parametrize("path", ["/api/v1/enrichment/batch", "/api/v1/enrichment/enrich"])
def test_a_request_that_went_out_before_its_publish_failed_is_dropped_not_run(env, path):
    body = {"iocs": VALUES, "sources": ["internetdb"]} if path.endswith("batch") else {"value": VALUES[0], "sources": ["internetdb"]}
    response = env["api"].post(path, json=body, headers=env["headers"])
    assert response.status_code == 503, response.get_json()
    assert _recorded(env["docs"]) == []  # the caller was answered an error: no run of it is left
    [went_out] = env["requested"](expected=1)

    env["deliver"](went_out)  # acked: Pub/Sub does not deliver it again

    assert _recorded(env["docs"]) == [], "enrich-dispatch created the deleted run started and ran it"
    assert env["tasks"](expected=0) == []  # no source was asked


def test_a_batch_request_dispatched_before_its_publish_failed_keeps_its_started_run(env):
    """The other order: enrich-dispatch started a run (its request went out first) before the batch's publish
    failed. Its run stays, and closes as any run does, rather than being deleted under the tasks it published
    (their answers were stored for a run nobody could close); the runs whose request never went out are deleted."""
    from threatflow.enrichment import runs

    env["publisher"].before_failing = lambda: [env["deliver"](message) for message in env["requested"](expected=1)]
    response = env["api"].post("/api/v1/enrichment/batch", json={"iocs": VALUES, "sources": ["internetdb"]}, headers=env["headers"])
    assert response.status_code == 503, response.get_json()

    [started] = _recorded(env["docs"])
    assert started["status"] == "running" and started["dispatched"] is True and started["expected"] == ["internetdb"], started
    [task] = env["tasks"](expected=1)
    assert task.attributes["run_id"] == started["id"] and env["docs"].get(runs.RUNS, started["id"]) is not None


class _RecordsFirstChunkOnly:
    """The real document store, except that a set_many commits its first document and then fails: the adapter writes
    a batch of runs in commits of at most 500 documents and about 3 MiB (firestore.py set_many), and a later commit can
    fail after the first ones landed."""

    def __init__(self, docs: Any) -> None:
        self._docs = docs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._docs, name)

    def set_many(self, collection: str, docs: Any) -> None:
        from threatflow.platform.errors import DependencyError

        first = dict(list(docs.items())[:1])
        self._docs.set_many(collection, first)
        raise DependencyError(f"Firestore commit to {collection!r} failed after {len(first)} of {len(docs)} documents")


def test_a_batch_whose_runs_were_recorded_in_part_leaves_no_queued_run(env, function_client):
    """POST /batch records its runs queued in several commits before publishing anything; when a later commit fails,
    the caller is answered an error and never sees the batch id. The runs of the commits that landed stayed queued,
    with their requests: the queued sweep published them again after 30 minutes and sources were asked for nobody."""
    from werkzeug.test import Client
    from werkzeug.wrappers import Request

    from threatflow.enrichment.api import build_router
    from threatflow.runtime import Runtime

    real = Runtime.from_env()
    clients = {"documents": _RecordsFirstChunkOnly(real.documents), "engine": real.engine}
    api = Client(Request.application(build_router(Runtime(real.settings, clients=clients)).handle))
    response = api.post("/api/v1/enrichment/batch", json={"iocs": VALUES, "sources": ["internetdb"]}, headers=env["headers"])
    assert response.status_code == 503, response.get_json()
    assert _recorded(env["docs"]) == [], "a run of the failed batch is left queued, for the queued sweep to publish"
    assert env["requested"](expected=0) == []  # nothing was published
    real.engine.dispose()


class _DispatchesBeforeDeleting:
    """The real document store, except that `before_deleting` runs just before a deletion is sent: enrich-dispatch
    starting a run after the batch's failure read its runs, before it deleted the queued ones (one round trip)."""

    def __init__(self, docs: Any) -> None:
        self._docs = docs
        self.before_deleting: Callable[[], None] = lambda: None

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._docs, name)
        if not name.startswith("delete"):
            return method

        def deleting(*args: Any, **kwargs: Any) -> Any:
            hook, self.before_deleting = self.before_deleting, lambda: None
            hook()
            return method(*args, **kwargs)

        return deleting


def test_a_batch_run_dispatched_while_its_failed_batch_deletes_its_queued_runs_is_kept(env):
    """The batch's publish failed after its first request went out; the request path read its runs (all queued) and
    then deleted them, and enrich-dispatch started the first one between: its run was deleted under the tasks it had
    published (their answers stored for a run nobody could close, the sources' quota spent for nobody)."""
    from werkzeug.test import Client
    from werkzeug.wrappers import Request

    from threatflow.enrichment import runs
    from threatflow.enrichment.api import build_router
    from threatflow.runtime import Runtime

    real = Runtime.from_env()
    docs = _DispatchesBeforeDeleting(real.documents)
    clients = {"publisher": env["publisher"], "documents": docs, "engine": real.engine}
    api = Client(Request.application(build_router(Runtime(real.settings, clients=clients)).handle))
    docs.before_deleting = lambda: [env["deliver"](message) for message in env["requested"](expected=1)]
    response = api.post("/api/v1/enrichment/batch", json={"iocs": VALUES, "sources": ["internetdb"]}, headers=env["headers"])
    assert response.status_code == 503, response.get_json()

    [task] = env["tasks"](expected=1)  # enrich-dispatch started one run and asked its source
    started = env["docs"].get(runs.RUNS, task.attributes["run_id"])
    assert started is not None, "the run enrich-dispatch started was deleted under its task"
    assert started["status"] == "running" and started["dispatched"] is True, started
    assert len(_recorded(env["docs"])) == 1  # the runs whose request never went out are deleted
    real.engine.dispose()


class _DeletesFail:
    """The real document store, except that every deletion fails as Firestore unreachable (down with Pub/Sub)."""

    def __init__(self, docs: Any) -> None:
        self._docs = docs

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._docs, name)
        if not name.startswith("delete"):
            return method

        def failing(*args: Any, **kwargs: Any) -> Any:
            from threatflow.platform.errors import DependencyError

            raise DependencyError(f"Firestore {name} failed: unreachable")

        return failing


@pytest.mark.parametrize("path", ["/api/v1/enrichment/batch", "/api/v1/enrichment/enrich"])
def test_a_failed_publish_is_the_error_answered_when_deleting_its_runs_fails_too(env, path, caplog):
    """The publish failed, then deleting its queued runs failed as well: the delete's error was raised over the
    publish's (its `__context__`), so the caller and the logs were told Firestore failed, never that the request
    could not be published. The publish's error is answered; the failed cleanup is logged, with the run ids."""
    from werkzeug.test import Client
    from werkzeug.wrappers import Request

    from threatflow.enrichment.api import build_router
    from threatflow.runtime import Runtime

    real = Runtime.from_env()
    clients = {"publisher": _FailsAfter(real.publisher, passed=0), "documents": _DeletesFail(real.documents), "engine": real.engine}
    api = Client(Request.application(build_router(Runtime(real.settings, clients=clients)).handle))
    body = {"iocs": VALUES, "sources": ["internetdb"]} if path.endswith("batch") else {"value": VALUES[0], "sources": ["internetdb"]}
    caplog.set_level(logging.WARNING, logger="threatflow.enrichment")
    try:
        response = api.post(path, json=body, headers=env["headers"])
    finally:
        real.engine.dispose()
    assert response.status_code == 503, response.get_json()
    message = response.get_json()["error"]["message"]
    assert "Pub/Sub publish to 'ioc-enrichment-requested' failed" in message and "Firestore" not in message, message
    recorded = [str(run["id"]) for run in _recorded(env["docs"])]  # left queued: the delete failed
    [logged] = [r for r in caplog.records if "Firestore" in r.getMessage()]
    assert logged.levelno == logging.ERROR and logged.exc_info is not None, logged.getMessage()
    fields = logged.__dict__["fields"]
    assert sorted(fields["run_ids"]) == sorted(recorded) and "Pub/Sub publish" in fields["failure"], fields
