"""The README's run command, started once for the e2e session on this run's own ports."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def running_stack(state: Path, extra_env: dict[str, str] | None = None) -> Iterator[dict]:
    """`threatflow devstack up` on free ports with its state in `state`; stopped with Ctrl-C on exit."""
    from threatflow.devstack.services import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL") and not k.endswith("_EMULATOR_HOST")}
    env.update({"THREATFLOW_STATE_DIR": str(state), "THREATFLOW_PORT": str(port), "RATE_LIMIT_PER_USER": "600/3600"})
    # Burst 600 with a slow refill: the 650-request flood test is limited however slow the machine is.
    env["LOGIN_HASH_SHARE_PERCENT"] = "100"  # the tests log in several users at once; the login budget has its own tests
    warninglists = REPO.parent / "shared" / "data" / "feeds" / "misp-warninglists"
    if warninglists.exists():  # the product reads lists from a configured source; tests point it at the shared copy
        env["WARNINGLISTS_SOURCE"] = str(warninglists)
    attack = REPO.parent / "shared" / "data" / "attack" / "attack_techniques.json"
    if attack.exists():  # likewise ATT&CK: what the sync-attack job fetches (see attack_synced)
        env["ATTACK_SOURCE"] = str(attack)
    env.pop("ATTACK_DATA_PATH", None)
    env.update(extra_env or {})
    log = (state / "stack.out").open("wb")
    started = time.monotonic()
    from helpers import THREATFLOW

    proc = subprocess.Popen([THREATFLOW, "devstack", "up"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, (state / "stack.out").read_text()
        try:
            if requests.get(f"{url}/ready", timeout=5).status_code == 200 and (state / "stack.json").exists():
                break
        except (requests.ConnectionError, requests.Timeout):  # still starting; /ready may take its 5 s bound on a busy machine
            pass
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("stack did not become ready in 180 s:\n" + (state / "stack.out").read_text())
    print(f"\nlocal stack ready in {time.monotonic() - started:.1f}s")
    try:
        yield {"url": url, "env": env, "state": state, "proc": proc}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("devstack")) as running:
        yield running


@pytest.fixture(scope="module")
def fake_intel_stack(tmp_path_factory):
    """`FAKE_INTEL=1 make run`: the stack with every intel source pointed at tests/fakes/intel.

    Its own stack, for the module that asks for it (stopped at the module's end), so the other
    e2e files keep the session stack as it was. File order runs that module before any other
    e2e file starts the session stack, so the two never run at once on a CI machine."""
    with running_stack(tmp_path_factory.mktemp("devstack-fake-intel"), {"FAKE_INTEL": "1"}) as running:
        services = json.loads((running["state"] / "stack.json").read_text())
        running["fake_intel"] = services["env"]["INTEL_ABUSEIPDB_URL"].split("/abuseipdb", 1)[0]
        yield running


@pytest.fixture(scope="session")
def admin_headers(stack):
    from helpers import E2E_ADMIN_PASSWORD, stack_cli, stack_token

    created = stack_cli(stack, "users", "create", "admin1", "--role", "admin", "--password-stdin", stdin=E2E_ADMIN_PASSWORD + "\n")
    assert created.returncode == 0, created.stderr
    return stack_token(stack, "admin1", E2E_ADMIN_PASSWORD)


@pytest.fixture(scope="session")
def reader_headers(stack, admin_headers):
    from helpers import stack_cli, stack_token

    created = stack_cli(stack, "users", "create", "reader1", "--role", "reader", "--password-stdin", stdin="reader password 1\n")
    assert created.returncode == 0, created.stderr
    return stack_token(stack, "reader1", "reader password 1")


@pytest.fixture(scope="session")
def attack_synced(stack, admin_headers):
    """ATT&CK on the stack the way production gets it: the sync-attack job writes the snapshot."""
    if "ATTACK_SOURCE" not in stack["env"]:
        pytest.skip("shared ATT&CK data not found beside the checkout (../shared/data/attack)")
    accepted = requests.post(f"{stack['url']}/api/v1/admin/jobs/sync-attack/run", headers=admin_headers, timeout=10)
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["run_id"]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        run = requests.get(f"{stack['url']}/api/v1/admin/runs/{run_id}", headers=admin_headers, timeout=10)
        if run.status_code == 200 and run.json()["state"] in ("succeeded", "failed"):
            assert run.json()["state"] == "succeeded", run.json()
            assert run.json()["result"]["techniques"] > 600
            return run.json()["result"]
        time.sleep(0.5)
    pytest.fail(f"sync-attack run {run_id} did not finish in 90 s")
