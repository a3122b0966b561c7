"""A batch's runs whose requests never reach enrich-dispatch (dead-lettered, or never delivered) are recorded
when the batch is accepted and closed by the same sweep as POST /enrich's runs.

POST /api/v1/enrichment/batch published one request per run and recorded nothing in Firestore: the run
existed only once the dispatcher started it. A dead-lettered request left a run no sweep could see, so
GET /batches/{id} showed it running forever and `threatflow enrich` waited out its timeout.
Real PostgreSQL, Pub/Sub and Firestore emulators; the requests are pulled from a test subscription and
never delivered, as a dead-lettered request is not."""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

import pytest
from helpers import clear_enrichment_runs, create_user, pull_published, push_envelope, push_envelope_of

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"


@pytest.fixture
def env(backend_env, function_client):
    from google.cloud import pubsub_v1

    from threatflow.runtime import Runtime

    publisher = pubsub_v1.PublisherClient()
    for name in ("ioc-enrichment-requested", "enrichment-tasks", "enrichment-completed"):
        with contextlib.suppress(Exception):  # already made by an earlier test in this run
            publisher.create_topic(name=publisher.topic_path(PROJECT, name))
    subscriber = pubsub_v1.SubscriberClient()
    subscription = subscriber.subscription_path(PROJECT, f"batch-requested-{uuid.uuid4().hex[:8]}")
    topic = publisher.topic_path(PROJECT, "ioc-enrichment-requested")
    subscriber.create_subscription(name=subscription, topic=topic)

    def requested(expected: int) -> list[Any]:
        return pull_published(publisher, subscriber, topic=topic, subscription=subscription, expected=expected, keep=lambda m: True)

    runtime = Runtime.from_env()
    clear_enrichment_runs(runtime.documents)
    password = create_user(backend_env["DATABASE_URL"], "batch-runs", "analyst")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "batch-runs", "password": password}).get_json()
    yield {
        "runtime": runtime,
        "docs": runtime.documents,
        "api": function_client("enrichment"),
        "headers": {"Authorization": f"Bearer {token['access_token']}"},
        "maintenance": function_client("maintenance"),
        "dispatch": function_client("enrich-dispatch"),
        "requested": requested,
    }
    subscriber.delete_subscription(subscription=subscription)
    subscriber.close()
    runtime.engine.dispose()


def _sweep(env: dict[str, Any]) -> dict[str, Any]:
    """One close-overdue-enrichment-runs tick, pushed to the real maintenance function: its `queued` result."""
    run_id = uuid.uuid4().hex
    push = push_envelope({"schema_version": 1}, {"job": "close-overdue-enrichment-runs", "run_id": run_id}, "maintenance-push")
    assert env["maintenance"].post("/", json=push).status_code == 200
    record = env["docs"].get("maintenance_runs", run_id)
    assert record is not None and record["state"] == "succeeded", record
    return dict(record["result"]["queued"])


def test_a_batch_whose_requests_never_arrive_is_recorded_and_closed_as_never_dispatched(env):
    from threatflow.enrichment import closing, runs

    docs, api, headers = env["docs"], env["api"], env["headers"]
    values = ["45.95.148.10", "45.95.148.11"]
    response = api.post("/api/v1/enrichment/batch", json={"iocs": values, "sources": ["virustotal"]}, headers=headers)
    assert response.status_code == 202, response.get_json()
    batch = response.get_json()
    run_ids = [r["run_id"] for r in batch["runs"]]
    messages = {m.attributes["run_id"]: m for m in env["requested"](expected=2)}  # published, never delivered
    assert set(messages) == set(run_ids)

    # Each run is recorded when the batch is accepted, queued with the request the sweep publishes again.
    for run_id in run_ids:
        run = docs.get(runs.RUNS, run_id)
        assert run is not None, "the batch's run has no record: no sweep can ever see it"
        assert run["status"] == "queued" and run["batch_id"] == batch["batch_id"] and run["request"]["run_id"] == run_id, run

    # Stalled as long as the sweep waits for any queued run: its request is published again, as /enrich's is.
    stalled = closing.QUEUED_STALL_SECONDS + 60
    for run_id in run_ids:
        docs.set(runs.RUNS, run_id, {"created_at": time.time() - stalled}, merge=True)
    assert _sweep(env)["redispatched"] == 2
    assert {m.attributes["run_id"] for m in env["requested"](expected=2)} == set(run_ids)
    # Never delivered again, up to the cap: closed as never dispatched, and the batch completes.
    capped = {"redispatches": closing.MAX_REDISPATCHES, "redispatched_at": time.time() - stalled}
    for run_id in run_ids:
        docs.set(runs.RUNS, run_id, capped, merge=True)
    assert _sweep(env)["closed"] == 2
    progress = api.get(f"/api/v1/enrichment/batches/{batch['batch_id']}", headers=headers).get_json()
    assert progress["complete"] and progress["done"] == 2, progress
    for item in progress["runs"]:
        assert item["status"] == "done" and item["verdict"] == "unknown", item
        assert item["reason"].startswith("never dispatched"), item

    # Replaying the dead-lettered request later (POST /dead-letters/replay publishes it as it was) starts that
    # same run: no second run, and a second delivery of it changes nothing; the other run stays closed.
    late, other = run_ids
    delivery = push_envelope_of(messages[late], "ioc-enrichment-requested-push")
    assert env["dispatch"].post("/", json=delivery).status_code == 200
    started = docs.get(runs.RUNS, late)
    assert started["status"] in ("running", "done") and started["dispatched"] is True and not started.get("reason"), started
    assert env["dispatch"].post("/", json=push_envelope_of(messages[late], "ioc-enrichment-requested-push")).status_code == 200
    assert docs.get(runs.RUNS, late) == started
    assert docs.get(runs.RUNS, other)["reason"].startswith("never dispatched")
    recorded = docs.query(runs.RUNS, where=[("batch_id", "==", batch["batch_id"])], limit=10)
    assert sorted(r["id"] for r in recorded) == sorted(run_ids)
