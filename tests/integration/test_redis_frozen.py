"""Issue 7: a frozen Redis (SIGSTOP, not dead) costs one short timeout, then milliseconds (circuit breaker).

Uses its own real redis-server (the `frozen_redis` fixture), stopped with SIGSTOP and resumed with SIGCONT."""

import os
import signal

import pytest
from helpers import create_user

pytestmark = pytest.mark.integration


def test_a_hung_redis_opens_the_breaker_and_requests_still_answer(function_client, backend_env, frozen_redis):
    password = create_user(backend_env["DATABASE_URL"], "erin", "analyst")
    env = {"REDIS_URL": frozen_redis.env["REDIS_URL"], "REDIS_TIMEOUT_MS": "200", "REDIS_BREAKER_SECONDS": "30"}
    auth = function_client("auth", **env)
    token = auth.post("/api/v1/auth/token", json={"username": "erin", "password": password}).get_json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    main = __import__("sys").modules["main"]  # the auth function's module, as functions-framework loaded it
    breaker = main.router.runtime.redis_breaker
    assert auth.get("/api/v1/auth/me", headers=headers).status_code == 200 and not breaker.is_open

    os.kill(frozen_redis.pid, signal.SIGSTOP)
    assert auth.get("/api/v1/auth/me", headers=headers).status_code == 200  # one timeout, rate limit fails open
    assert breaker.is_open and breaker.last_error in ("TimeoutError", "ConnectionError")
    answers = [auth.get("/api/v1/auth/me", headers=headers).status_code for _ in range(20)]
    assert answers == [200] * 20  # served without touching Redis: the breaker is open
    login = auth.post("/api/v1/auth/token", json={"username": "erin", "password": password})
    assert login.status_code == 200  # the lockout is skipped, the in-process login limit applies

    os.kill(frozen_redis.pid, signal.SIGCONT)
    breaker._open_until = 0.0  # as if REDIS_BREAKER_SECONDS had passed: the next call is the trial
    assert auth.get("/api/v1/auth/me", headers=headers).status_code == 200
    assert not breaker.is_open
