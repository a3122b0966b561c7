"""Warninglists end to end on the emulators: the sync job writes the snapshot, functions load it, the routes answer."""

import json
import os
import uuid

import pytest
from helpers import create_user, push_envelope, require_shared_data

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"
MODELS = "threatflow-models"


def _push(job, run_id):
    return push_envelope({"schema_version": 1}, {"job": job, "run_id": run_id}, "maintenance-push")


def _blobs():
    from threatflow.adapters.storage import GcsBlobs

    return GcsBlobs(PROJECT)


def _run(run_id):
    from threatflow.adapters.firestore import FirestoreDocuments

    return FirestoreDocuments(PROJECT).get("maintenance_runs", run_id)


def test_sync_job_writes_the_snapshot_and_functions_load_it_from_the_bucket(function_client, backend_env):
    from threatflow.iocs import warninglists
    from threatflow.runtime import Runtime

    source = str(require_shared_data("feeds", "misp-warninglists"))
    client = function_client("maintenance", WARNINGLISTS_SOURCE=source)
    run_id = uuid.uuid4().hex
    assert client.post("/", json=_push("sync-warninglists", run_id)).status_code == 200

    run = _run(run_id)
    assert run["state"] == "succeeded", run
    assert run["result"]["loaded"] == 32 and run["result"]["rejected"] == []
    assert run["result"]["snapshot"] == f"gs://{MODELS}/warninglists/snapshot.json"
    stored = warninglists.load_snapshot(_blobs().get(MODELS, warninglists.SNAPSHOT_NAME))
    assert len(stored.lists) == 32 and stored.source == source

    # A function whose source is a bucket holding no lists can only have got them from the snapshot.
    os.environ["WARNINGLISTS_SOURCE"] = f"gs://threatflow-uploads/{uuid.uuid4().hex}"
    runtime = Runtime.from_env()
    match = runtime.warninglist_matcher()
    assert match is not None
    assert runtime.warninglist_index().origin == f"gs://{MODELS}/warninglists/snapshot.json"
    assert match("ipv4", "10.1.2.3") == ["rfc1918", "rfc5735"]
    assert match("md5", "d41d8cd98f00b204e9800998ecf8427e") == ["common-ioc-false-positive", "empty-hashes"]


def test_sync_job_from_a_bucket_reports_a_malformed_list(function_client, backend_env):
    prefix = f"warninglists-src-{uuid.uuid4().hex[:8]}"
    blobs = _blobs()
    good = {
        "name": "List of RFC 1918 CIDR blocks",
        "description": "private",
        "type": "cidr",
        "version": 5,
        "matching_attributes": ["ip-dst"],
        "list": ["10.0.0.0/8"],
    }
    blobs.put("threatflow-uploads", f"{prefix}/rfc1918/list.json", json.dumps(good).encode())
    blobs.put("threatflow-uploads", f"{prefix}/broken/list.json", b'{"name": "Broken", "type": "cidr"}')
    client = function_client("maintenance", WARNINGLISTS_SOURCE=f"gs://threatflow-uploads/{prefix}")
    run_id = uuid.uuid4().hex
    assert client.post("/", json=_push("sync-warninglists", run_id)).status_code == 200

    result = _run(run_id)["result"]
    assert result["loaded"] == 1 and [item["key"] for item in result["lists"]] == ["rfc1918"]
    assert [r["key"] for r in result["rejected"]] == ["broken"]
    assert "field 'version'" in result["rejected"][0]["error"]


def test_routes_list_and_check(function_client, backend_env):
    from werkzeug.test import EnvironBuilder

    from threatflow.auth.api import authenticator
    from threatflow.iocs import warninglist_routes
    from threatflow.platform.web import Router
    from threatflow.runtime import Runtime

    password = create_user(backend_env["DATABASE_URL"], "wl-reader", "reader")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "wl-reader", "password": password}).get_json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}

    def call(router, method, path, body=None):
        request = EnvironBuilder(method=method, path=path, json=body, headers=headers).get_request()
        response = router.handle(request)
        return response.status_code, json.loads(response.get_data() or b"null")

    # Nothing configured: the list route says so, and check refuses rather than answer "not listed".
    os.environ.pop("WARNINGLISTS_SOURCE", None)
    off = Router("iocs", runtime=(rt := Runtime.from_env()), authenticator=authenticator(rt))
    warninglist_routes.register(off, off.runtime)
    status, body = call(off, "GET", "/api/v1/iocs/warninglists")
    assert status == 200 and body == {"enabled": False, "reason": "WARNINGLISTS_SOURCE is not set", "lists": []}
    status, body = call(off, "POST", "/api/v1/iocs/warninglists/check", {"values": ["10.1.2.3"]})
    assert status == 503 and "WARNINGLISTS_SOURCE is not set" in body["error"]["message"]

    _blobs().delete(MODELS, "warninglists/snapshot.json")  # this test compiles the local source directly
    os.environ["WARNINGLISTS_SOURCE"] = str(require_shared_data("feeds", "misp-warninglists"))
    router = Router("iocs", runtime=(rt := Runtime.from_env()), authenticator=authenticator(rt))
    warninglist_routes.register(router, router.runtime)

    status, body = call(router, "GET", "/api/v1/iocs/warninglists")
    assert status == 200 and body["enabled"] is True
    lists = {item["key"]: item for item in body["lists"]}
    assert len(lists) == 32
    assert lists["rfc1918"]["name"] == "List of RFC 1918 CIDR blocks"
    assert lists["rfc1918"]["entries"] == 3 and lists["rfc1918"]["type"] == "cidr" and lists["rfc1918"]["version"] == 5
    assert lists["rfc1918"]["loaded_at"] and lists["rfc1918"]["description"]

    values = ["10.1.2.3", "HTTPS://WWW.GOOGLE.COM/search", "evil-xyz-123.biz", {"value": "not-an-ip", "type": "ipv4"}]
    status, body = call(router, "POST", "/api/v1/iocs/warninglists/check", {"values": values})
    assert status == 200, body
    results = body["results"]
    assert results[0] == {"value": "10.1.2.3", "type": "ipv4", "normalised": "10.1.2.3", "warninglists": ["rfc1918", "rfc5735"]}
    assert results[1]["normalised"] == "https://www.google.com/search" and "tranco10k" in results[1]["warninglists"]
    assert results[2]["warninglists"] == []
    assert results[3]["normalised"] is None and results[3]["reason"]
    assert body["lists"]["rfc1918"] == "List of RFC 1918 CIDR blocks"

    status, body = call(router, "POST", "/api/v1/iocs/warninglists/check", {"values": ["1.1.1.1"] * 1001})
    assert status == 400 and body["error"]["details"]["field"] == "values"
    status, body = call(router, "POST", "/api/v1/iocs/warninglists/check", {"values": []})
    assert status == 400
