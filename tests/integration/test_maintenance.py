"""The maintenance function receiving raw Pub/Sub push bodies, as the emulator sends them."""

import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from helpers import push_envelope

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"


def _push(job, run_id, *, published=None, data=None):
    return push_envelope(data or {"schema_version": 1}, {"job": job, "run_id": run_id}, "maintenance-push", published=published)


def _runs():
    from threatflow.adapters.firestore import FirestoreDocuments

    return FirestoreDocuments(PROJECT)


def test_heartbeat_runs_once_per_run_id(function_client, backend_env):
    client = function_client("maintenance")
    run_id = uuid.uuid4().hex
    assert client.post("/", json=_push("heartbeat", run_id)).status_code == 200
    run = _runs().get("maintenance_runs", run_id)
    assert run["state"] == "succeeded" and run["job"] == "heartbeat" and run["attempts"] == 1
    assert _runs().get("heartbeats", "maintenance")["run_id"] == run_id
    # Redelivery of the same run: acked, nothing re-run.
    assert client.post("/", json=_push("heartbeat", run_id)).status_code == 200
    assert _runs().get("maintenance_runs", run_id)["attempts"] == 1


def test_unknown_job_is_acked_not_retried(function_client, backend_env):
    run_id = uuid.uuid4().hex
    assert function_client("maintenance").post("/", json=_push("no-such-job", run_id)).status_code == 200
    assert _runs().get("maintenance_runs", run_id) is None


def test_stale_message_is_dropped(function_client, backend_env):
    run_id = uuid.uuid4().hex
    old = _push("heartbeat", run_id, published=datetime.now(UTC) - timedelta(days=3))
    assert function_client("maintenance").post("/", json=old).status_code == 200
    assert _runs().get("maintenance_runs", run_id) is None


def test_purge_runs_deletes_only_old_records(function_client, backend_env):
    docs = _runs()
    now = datetime.now(UTC)
    docs.set(
        "maintenance_runs",
        "old-run",
        {"state": "succeeded", "started_at": now - timedelta(days=90), "finished_at": now - timedelta(days=90)},
    )
    docs.set("maintenance_runs", "new-run", {"state": "succeeded", "started_at": now, "finished_at": now})
    run_id = uuid.uuid4().hex
    assert function_client("maintenance").post("/", json=_push("purge-runs", run_id)).status_code == 200
    assert docs.get("maintenance_runs", "old-run") is None
    assert docs.get("maintenance_runs", "new-run") is not None
    assert docs.get("maintenance_runs", run_id)["result"]["deleted"] >= 1


def test_transient_failure_is_a_5xx_so_pubsub_redelivers(function_client, backend_env):
    client = function_client("maintenance", FIRESTORE_EMULATOR_HOST="127.0.0.1:1")
    response = client.post("/", json=_push("heartbeat", uuid.uuid4().hex))
    assert response.status_code == 503


def test_admin_publishes_a_run(function_client, backend_env):
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1
    from helpers import create_user

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(PROJECT, "maintenance")
    with contextlib.suppress(AlreadyExists):  # created by an earlier test in this run
        publisher.create_topic(name=topic)
    sub = subscriber.subscription_path(PROJECT, f"check-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=sub, topic=topic)
    password = create_user(backend_env["DATABASE_URL"], "ops", "admin")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "ops", "password": password}).get_json()["access_token"]
    admin = function_client("admin")
    response = admin.post("/api/v1/admin/jobs/heartbeat/run", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 202
    body = response.get_json()
    pulled = subscriber.pull(request={"subscription": sub, "max_messages": 1}, timeout=10).received_messages[0].message
    assert pulled.attributes["job"] == "heartbeat" and pulled.attributes["run_id"] == body["run_id"]
    assert json.loads(pulled.data)["requested_by"] == "ops"
    unknown = admin.post("/api/v1/admin/jobs/nope/run", headers={"Authorization": f"Bearer {token}"})
    assert unknown.status_code == 400 and unknown.get_json()["error"]["details"]["field"] == "job"
    subscriber.close()
