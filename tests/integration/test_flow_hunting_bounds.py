"""The hunting surface's roll-ups, bridge and query parameters at the edges an attacker picks
(review h/flowattack): byte counts the event store accepts per flow but not summed, IPv6 spellings of
addresses the bridge must not bridge or send to intel sources."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from flows_support import flows_api, json_flows
from helpers import push_envelope

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"


@pytest.fixture
def api(function_client, backend_env):
    return flows_api(function_client, backend_env["DATABASE_URL"], roles=("reader", "analyst", "admin"))


def _run_job(function_client, job: str) -> dict:
    from threatflow.adapters.firestore import FirestoreDocuments

    run_id = uuid.uuid4().hex
    push = push_envelope({"schema_version": 1}, {"job": job, "run_id": run_id}, "maintenance-push")
    function_client("maintenance").post("/", json=push)
    return FirestoreDocuments(PROJECT).get("maintenance_runs", run_id) or {}


def test_byte_counts_past_bigint_when_summed_keep_the_rollups_refreshing_and_answering(api, function_client):
    """A flow may carry up to 2**62 bytes each way (what the event store keeps), but the hourly roll-up summed an
    hour's bytes into a bigint: two such flows in one hour made every `refresh-flow-views` run fail with "bigint out
    of range" (a 500, retried to the dead letter), so the dashboards stayed frozen until retention dropped that day,
    90 days later; and bytes-by-proto summed the hours of its window into a bigint too."""
    hour = (datetime.now(UTC) - timedelta(days=1)).replace(minute=5, second=0, microsecond=0)
    flows = json_flows(4, seed=71)
    for k, flow in enumerate(flows):
        at = int((hour + timedelta(hours=k // 2)).timestamp())  # two flows in each of two hours
        flow.update(proto="tcp", sbytes=2**62, dbytes=2**62, stime=at, ltime=at)
    response = api.post("/api/v1/flows/batch", {"flows": flows})
    assert response.status_code == 200 and response.get_json()["stored"] == 4, response.get_data(as_text=True)[:300]
    run = _run_job(function_client, "refresh-flow-views")
    assert run.get("state") == "succeeded", run.get("error")
    query = {"from": (hour - timedelta(hours=1)).isoformat(), "to": (hour + timedelta(hours=3)).isoformat()}
    answer = api.get("/api/v1/events/stats/bytes-by-proto", query_string=query)
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    tcp = [p for p in answer.get_json()["protocols"] if p["proto"] == "tcp"]
    assert tcp and tcp[0]["sbytes"] == 4 * 2**62 and tcp[0]["bytes"] == 8 * 2**62, tcp
