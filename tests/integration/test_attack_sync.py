"""sync-attack: ATT&CK fetched over HTTP by the maintenance function into the models
bucket (the Cloud Storage emulator), then used by the threats function to validate TTPs."""

import functools
import http.server
import json
import threading

import pytest
from helpers import create_user, require_shared_data, run_maintenance_job

pytestmark = pytest.mark.integration


@pytest.fixture
def attack_server(tmp_path):
    """A local HTTP server standing in for raw.githubusercontent.com: it serves tmp_path."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _threats_client(function_client, backend_env):
    auth = function_client("auth")
    password = create_user(backend_env["DATABASE_URL"], "analyst-attack", "analyst")
    token = auth.post("/api/v1/auth/token", json={"username": "analyst-attack", "password": password}).get_json()["access_token"]
    return function_client("threats"), {"Authorization": f"Bearer {token}"}


def test_sync_over_http_then_threats_validate_against_the_snapshot(function_client, backend_env, attack_server, models_bucket, monkeypatch):
    served, base = attack_server
    techniques = json.loads(require_shared_data("attack", "attack_techniques.json").read_text())
    (served / "enterprise-attack.json").write_text(json.dumps(techniques))
    monkeypatch.setenv("ATTACK_SOURCE", f"{base}/enterprise-attack.json")

    status, run = run_maintenance_job(function_client("maintenance"), "sync-attack")
    assert status == 200 and run["state"] == "succeeded", run
    result = run["result"]
    assert result["snapshot"] == f"gs://{models_bucket}/attack/techniques.json"
    assert result["techniques"] == len({t["external_id"] for t in techniques["techniques"]}) and result["revoked"] > 0
    # The first snapshot adds every technique (it reported "added": 0 for 835).
    assert (result["added"], result["removed"]) == (result["techniques"], 0), result

    threats, headers = _threats_client(function_client, backend_env)
    body = {"threats": [{"kind": "malware", "name": "Synced", "ttps": ["t1059.001"]}, {"kind": "tool", "name": "Bad", "ttps": ["T9999"]}]}
    response = threats.post("/api/v1/threats/batch", json=body, headers=headers)
    assert response.status_code == 200, response.get_json()
    results = response.get_json()["results"]
    assert results[0]["status"] == "created"
    assert results[1]["status"] == "rejected" and "T9999: unknown ATT&CK technique" in results[1]["reason"]

    # A truncated download must not replace a good snapshot; force does.
    (served / "enterprise-attack.json").write_text(json.dumps({"techniques": techniques["techniques"][:5]}))
    status, run = run_maintenance_job(function_client("maintenance"), "sync-attack")
    assert status == 200 and run["state"] == "failed" and "refusing to replace it" in run["error"]
    threats = function_client("threats")  # a new instance reads the snapshot afresh
    again = threats.post("/api/v1/threats/batch", json={"threats": [{"kind": "tool", "name": "Still", "ttps": ["T1566"]}]}, headers=headers)
    assert again.get_json()["results"][0]["status"] == "created"
    status, run = run_maintenance_job(function_client("maintenance"), "sync-attack", {"force": True})
    assert run["state"] == "succeeded" and run["result"]["techniques"] == 5 and run["result"]["removed"] > 500


def test_a_wrong_source_fails_the_run_without_retrying(function_client, backend_env, attack_server, models_bucket, monkeypatch):
    served, base = attack_server
    for source, expected in (
        (f"{base}/missing.json", "HTTP 404"),
        (str(served / "none.json"), "cannot read it"),
    ):
        monkeypatch.setenv("ATTACK_SOURCE", source)  # read when the function loads
        status, run = run_maintenance_job(function_client("maintenance"), "sync-attack")
        assert status == 200 and run["state"] == "failed" and expected in run["error"], run
    (served / "not-attack.json").write_text(json.dumps({"type": "bundle", "objects": [{"type": "malware", "id": "malware--1"}]}))
    monkeypatch.setenv("ATTACK_SOURCE", f"{base}/not-attack.json")
    status, run = run_maintenance_job(function_client("maintenance"), "sync-attack")
    assert run["state"] == "failed" and "holds no technique" in run["error"] and "not replaced" in run["error"]
    from threatflow.adapters.storage import GcsBlobs
    from threatflow.platform.errors import NotFoundError

    with pytest.raises(NotFoundError):  # a failed sync writes no snapshot
        GcsBlobs("threatflow-test").get(models_bucket, "attack/techniques.json")


def test_an_unreachable_source_is_retried(function_client, backend_env, models_bucket, monkeypatch, caplog):
    """A transient failure (a RetryableError: the source or a cloud service unreachable) is answered 503 so Pub/Sub
    redelivers, with the one "will retry" line: it was raised through functions-framework, which logged a full
    traceback on every redelivery of a job run while offline. A bug (any other exception) still gets its traceback."""
    monkeypatch.setenv("ATTACK_SOURCE", "http://127.0.0.1:9/enterprise-attack.json")
    status, run = run_maintenance_job(function_client("maintenance"), "sync-attack")
    assert status == 503 and run["state"] == "failed" and "fetch failed" in run["error"]
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage()[:120] for r in caplog.records if r.exc_info]
    assert any("will retry" in r.getMessage() for r in caplog.records)
