"""The README's run command, end to end: the whole stack on this run's own
ports, driven over HTTP and through the CLI as a person would."""

from __future__ import annotations

import json
import time

import pytest
import requests
from helpers import E2E_ADMIN_PASSWORD as PASSWORD
from helpers import stack_cli

pytestmark = pytest.mark.e2e


def test_summary_names_every_route_and_service(stack):
    out = (stack["state"] / "stack.out").read_text()
    for needle in (
        "/api/v1/auth",
        "/api/v1/admin",
        "/api/v1/iocs",
        "postgres",
        "redis",
        "pubsub",
        "firestore",
        "storage",
        "heartbeat",
        "Ctrl-C",
    ):
        assert needle in out
    status = stack_cli(stack, "devstack", "status")
    assert status.returncode == 0 and "/ready: 200" in status.stdout


def test_cli_user_reaches_protected_endpoint(stack, admin_headers, reader_headers):
    again = stack_cli(stack, "users", "create", "admin1", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert again.returncode == 2 and "already exists" in again.stderr
    listed = stack_cli(stack, "users", "list")
    assert "admin1" in listed.stdout and "reader1" in listed.stdout
    me = requests.get(f"{stack['url']}/api/v1/auth/me", headers=admin_headers, timeout=10)
    assert me.status_code == 200 and me.json()["role"] == "admin"
    assert requests.get(f"{stack['url']}/api/v1/auth/me", timeout=10).status_code == 401
    assert requests.get(f"{stack['url']}/api/v1/admin/users", headers=reader_headers, timeout=10).status_code == 403


def test_cli_api_client_mode(stack, admin_headers, tmp_path):
    env = {**stack["env"], "THREATFLOW_CREDENTIALS": str(tmp_path / "creds.json")}
    with_creds = {**stack, "env": env}
    login = stack_cli(with_creds, "login", "admin1", "--url", stack["url"], "--password-stdin", stdin=PASSWORD + "\n")
    assert login.returncode == 0, login.stderr
    whoami = stack_cli(with_creds, "whoami")
    assert whoami.returncode == 0 and json.loads(whoami.stdout)["username"] == "admin1"


def _wait_for_run(stack, headers, run_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = requests.get(f"{stack['url']}/api/v1/admin/runs/{run_id}", headers=headers, timeout=10)
        if response.status_code == 200 and response.json()["state"] == "succeeded":
            return response.json()
        time.sleep(0.5)
    pytest.fail(f"run {run_id} did not succeed within {timeout}s: {response.status_code} {response.text}")


def test_http_to_pubsub_to_function_round_trip(stack, admin_headers):
    accepted = requests.post(f"{stack['url']}/api/v1/admin/jobs/heartbeat/run", headers=admin_headers, timeout=10)
    assert accepted.status_code == 202
    run = _wait_for_run(stack, admin_headers, accepted.json()["run_id"])
    assert run["job"] == "heartbeat" and run["attempts"] == 1


def test_jobs_run_fires_a_schedule_now(stack, admin_headers):
    fired = stack_cli(stack, "jobs", "run", "purge-runs")
    assert fired.returncode == 0, fired.stderr
    run_id = fired.stdout.split(" run ", 1)[1].split()[0]  # "fired purge-runs: run <id> (message <id>); its record: ..."
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = requests.get(f"{stack['url']}/api/v1/admin/runs/{run_id}", headers=admin_headers, timeout=10)
        if response.status_code == 200 and response.json()["state"] == "succeeded":
            assert response.json()["job"] == "purge-runs"
            return
        time.sleep(0.5)
    pytest.fail(f"the fired purge-runs job never ran under the run id it printed: {fired.stdout!r}")


def test_flood_gets_429(stack, reader_headers):
    statuses = [requests.get(f"{stack['url']}/api/v1/auth/me", headers=reader_headers, timeout=10).status_code for _ in range(650)]
    assert statuses[0] == 200 and statuses[-1] == 429
    limited = requests.get(f"{stack['url']}/api/v1/auth/me", headers=reader_headers, timeout=10)
    assert int(limited.headers["Retry-After"]) >= 1
