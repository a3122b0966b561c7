"""Every import path checks the warninglists: a value on a list, imported through STIX, MISP, CSV, text
or JSON, synchronously or through the ioc-import function, is stored with the list's key.

(Before the snapshot cache the importer never passed the lists to the upsert, so none of these were flagged.)
"""

import contextlib
import json
import random
import uuid

import pytest
from helpers import SHARED_DATA, create_user, push_envelope, require_shared_data

pytestmark = pytest.mark.integration
ATTACK = SHARED_DATA / "attack" / "attack_techniques.json"


def _documents(ip: str) -> dict[str, object]:
    """The same warninglisted address (RFC 1918) in each import format."""
    return {
        "json": [{"value": ip}],
        "csv": f"value,type\n{ip},ipv4\n",
        "text": f"The implant beaconed to {ip} over port 443.",
        "stix": {
            "type": "bundle",
            "id": f"bundle--{uuid.uuid4()}",
            "objects": [
                {
                    "type": "indicator",
                    "spec_version": "2.1",
                    "id": f"indicator--{uuid.uuid4()}",
                    "created": "2026-11-01T00:00:00.000Z",
                    "modified": "2026-11-01T00:00:00.000Z",
                    "pattern": f"[ipv4-addr:value = '{ip}']",
                    "pattern_type": "stix",
                    "valid_from": "2026-11-01T00:00:00Z",
                }
            ],
        },
        "misp": {"Event": {"info": "beacon", "uuid": str(uuid.uuid4()), "Attribute": [{"type": "ip-dst", "value": ip, "to_ids": True}]}},
    }


@pytest.fixture
def lists_env(backend_env, storage_emulator, monkeypatch):
    """Warninglists compiled from the shared MISP lists (an empty models bucket: no snapshot to read)."""
    from threatflow.devstack.services import create_bucket

    source = require_shared_data("feeds", "misp-warninglists")
    bucket = f"models-{uuid.uuid4().hex[:10]}"
    create_bucket(storage_emulator.port, bucket)
    monkeypatch.setenv("BUCKET_MODELS", bucket)
    monkeypatch.setenv("WARNINGLISTS_SOURCE", str(source))
    monkeypatch.setenv("ATTACK_DATA_PATH", str(ATTACK))
    return backend_env


@pytest.fixture
def analyst(function_client, lists_env):
    password = create_user(lists_env["DATABASE_URL"], "wl-analyst", "analyst")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "wl-analyst", "password": password}).get_json()
    return {"Authorization": f"Bearer {token['access_token']}"}


def _flags(database_url: str, ip: str) -> list[str] | None:
    from sqlalchemy import text

    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": database_url}))
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT warninglists FROM iocs WHERE type = 'ipv4' AND value = :v"), {"v": ip}).first()
    finally:
        engine.dispose()
    return None if row is None else list(row[0])


def _private_ip() -> str:
    return f"10.{random.randint(0, 255)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


@pytest.mark.parametrize("fmt", ["json", "csv", "text", "stix", "misp"])
def test_a_warninglisted_value_imported_synchronously_is_flagged(fmt, function_client, lists_env, analyst):
    ip = _private_ip()
    client = function_client("iocs")
    response = client.post("/api/v1/iocs/import", json={"format": fmt, "content": _documents(ip)[fmt]}, headers=analyst)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["iocs"]["summary"]["created"] == 1
    assert "rfc1918" in _flags(lists_env["DATABASE_URL"], ip)


def _import_topic():
    """The ioc-import topic the iocs function publishes to (the local stack creates it from the manifest)."""
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    with contextlib.suppress(AlreadyExists):
        publisher.create_topic(name=publisher.topic_path("threatflow-test", "ioc-import"))


@pytest.mark.parametrize("fmt", ["csv", "stix", "misp"])
def test_a_warninglisted_value_imported_asynchronously_is_flagged(fmt, function_client, lists_env, analyst):
    """The ioc-import function, pushed the message the iocs function queued, runs the stored job."""
    from threatflow.platform import events

    _import_topic()
    ip = _private_ip()
    client = function_client("iocs")
    body = {"format": fmt, "content": _documents(ip)[fmt]}
    response = client.post("/api/v1/iocs/import?async=true", data=json.dumps(body), headers={**analyst, "Content-Type": "application/json"})
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_id"]
    push = push_envelope(events.encode({"job_id": job_id}), {"job_id": job_id}, "ioc-import-push")
    assert function_client("ioc-import").post("/", json=push).status_code == 200
    job = client.get(f"/api/v1/iocs/import/{job_id}", headers=analyst).get_json()
    assert job["state"] == "succeeded", job
    assert "rfc1918" in _flags(lists_env["DATABASE_URL"], ip)
