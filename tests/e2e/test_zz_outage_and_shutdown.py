"""Destructive checks, run last (file order): a dependency outage, then Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import requests

pytestmark = pytest.mark.e2e


def test_killing_redis_turns_ready_503_and_health_stays_200(stack):
    services = json.loads((stack["state"] / "stack.json").read_text())["services"]
    os.kill(services["redis"]["pid"], signal.SIGKILL)
    time.sleep(0.5)
    ready = requests.get(f"{stack['url']}/ready", timeout=30)
    assert ready.status_code == 503
    assert "redis" in ready.json()["down"]
    assert "redis" in ready.json()["error"]["message"]
    assert requests.get(f"{stack['url']}/health", timeout=10).status_code == 200


def test_ctrl_c_stops_every_child(stack):
    services = json.loads((stack["state"] / "stack.json").read_text())["services"]
    stack["proc"].send_signal(signal.SIGINT)
    assert stack["proc"].wait(timeout=60) == 0
    for name, info in services.items():
        try:
            os.kill(info["pid"], 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive, f"{name} (pid {info['pid']}) survived Ctrl-C"
    assert not (stack["state"] / "stack.json").exists()
