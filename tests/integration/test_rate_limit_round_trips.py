"""The rate limits of a read cost one Redis round trip (both keys in one GCRA script), with the
refusals, their order and Retry-After of separate per-key checks; against the real Redis of the run."""

import uuid

import pytest
import redis
from helpers import create_user

pytestmark = pytest.mark.integration


def _commands(client):
    """Commands run by the Redis so far, by name (INFO commandstats, which also counts the commands a
    script runs), without INFO itself."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items() if name != "cmdstat_info"}


def _delta(before, after):
    return {name: calls - before.get(name, 0) for name, calls in after.items() if calls != before.get(name, 0)}


def test_a_read_costs_one_redis_command_for_its_ip_and_user_limits(function_client, backend_env):
    password = create_user(backend_env["DATABASE_URL"], "counted", "reader")
    client = function_client("auth")
    token = client.post("/api/v1/auth/token", json={"username": "counted", "password": password}).get_json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 200  # loads the script (EVALSHA, NOSCRIPT, LOAD)
    stats = redis.Redis.from_url(backend_env["REDIS_URL"])
    before = _commands(stats)
    assert [client.get("/api/v1/auth/me", headers=headers).status_code for _ in range(10)] == [200] * 10
    # One EVALSHA per request (two before); inside it one TIME, and a GET and a SET per key.
    assert _delta(before, _commands(stats)) == {"evalsha": 10, "time": 10, "get": 20, "set": 20}
    stats.close()
    keys = {key.decode() for key in redis.Redis.from_url(backend_env["REDIS_URL"]).keys("rl:*")}
    assert {"rl:user:counted"} < keys and any(key.startswith("rl:ip:default:") for key in keys)  # both limits charged


def test_hit_all_refuses_where_separate_hits_would(backend_env):
    from threatflow.adapters.redis import CircuitBreaker, RateLimiter, connect

    limiter = RateLimiter(connect(backend_env["REDIS_URL"]), breaker=CircuitBreaker(open_seconds=1))
    # The same history through `hit` per key and through `hit_all`: refusals at the same request.
    separate = []
    for _ in range(5):
        first = limiter.hit("sep:ip", limit=4, period_seconds=60)
        second = limiter.hit("sep:user", limit=2, period_seconds=60) if first.allowed else None
        separate.append(0 if not first.allowed else 1 if second is not None and not second.allowed else None)
    combined = []
    for _ in range(5):
        refusal = limiter.hit_all([("all:ip", 4, 60), ("all:user", 2, 60)])
        combined.append(None if refusal is None else refusal.index)
    assert combined == separate == [None, None, 1, 1, 0]  # user refused at 3 and 4 (IP still charged), IP at 5
    refusal = limiter.hit_all([("all:ip", 4, 60), ("all:user", 2, 60)])
    assert refusal is not None and refusal.index == 0 and 0 < refusal.retry_after_seconds <= 15  # 60 s / 4: one slot
    assert limiter.hit_all([("fresh:ip", 1, 60)]) is None
    refused = limiter.hit_all([("fresh:ip", 1, 60)])
    single = limiter.hit("fresh:ip", limit=1, period_seconds=60)
    assert refused is not None and not single.allowed and abs(refused.retry_after_seconds - single.retry_after_seconds) < 0.5


def test_over_the_ip_limit_a_valid_token_gets_429_and_its_user_is_not_charged(function_client, backend_env):
    password = create_user(backend_env["DATABASE_URL"], "spent", "reader")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "spent", "password": password}).get_json()["access_token"]
    client = function_client("auth", RATE_LIMIT_PER_IP="3/60", RATE_LIMIT_PER_USER="4/60", TRUSTED_PROXY_HOPS="1")
    headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": "198.51.100.7"}
    statuses = [client.get("/api/v1/auth/me", headers=headers).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    refused = client.get("/api/v1/auth/me", headers={**headers, "Authorization": "Bearer not-a-token"})
    assert refused.status_code == 429 and refused.get_json()["error"]["details"] == {"limit": 3, "period_seconds": 60}
    # The user's bucket took 3 of 4: from another address, one more read, then the user limit refuses.
    other = {**headers, "X-Forwarded-For": "198.51.100.8"}
    assert [client.get("/api/v1/auth/me", headers=other).status_code for _ in range(2)] == [200, 429]


def test_a_refused_address_is_answered_from_memory_until_its_retry_after(function_client, backend_env):
    """After Redis refuses an address, the instance answers its next requests with the same 429 without
    Redis or the token check, until the retry-after it was given; then Redis decides again."""
    import time

    password = create_user(backend_env["DATABASE_URL"], "flooder", "reader")
    token = (
        function_client("auth").post("/api/v1/auth/token", json={"username": "flooder", "password": password}).get_json()["access_token"]
    )
    client = function_client("auth", RATE_LIMIT_PER_IP="2/2", RATE_LIMIT_PER_USER="1000/60", TRUSTED_PROXY_HOPS="1")
    headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": "198.51.100.20"}
    assert [client.get("/api/v1/auth/me", headers=headers).status_code for _ in range(2)] == [200, 200]
    first = client.get("/api/v1/auth/me", headers=headers)
    assert first.status_code == 429  # Redis refused: one slot of 1 s
    stats = redis.Redis.from_url(backend_env["REDIS_URL"])
    before = _commands(stats)
    later = [client.get("/api/v1/auth/me", headers={**headers, "Authorization": f"Bearer {'x' * 40}"}) for _ in range(20)]
    assert {r.status_code for r in later} == {429}  # a forged token is not even looked at
    assert _delta(before, _commands(stats)) == {}  # no Redis command for any of the 20
    assert later[0].get_json()["error"]["details"] == first.get_json()["error"]["details"] == {"limit": 2, "period_seconds": 2}
    assert 0 < float(later[-1].headers["Retry-After"]) <= float(first.headers["Retry-After"]) <= 1
    # Another address and another instance's memory are untouched.
    assert client.get("/api/v1/auth/me", headers={**headers, "X-Forwarded-For": "198.51.100.21"}).status_code == 200
    time.sleep(float(first.headers["Retry-After"]) + 0.05)
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 200  # Redis allows it again
    assert _delta(before, _commands(stats)).get("evalsha", 0) >= 2
    stats.close()


def test_a_refused_user_is_remembered_after_the_token_check_and_a_refused_write_address_before_it(function_client, backend_env):
    password = create_user(backend_env["DATABASE_URL"], "busy", "reader")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "busy", "password": password}).get_json()["access_token"]
    client = function_client("auth", RATE_LIMIT_PER_IP="1000/60", RATE_LIMIT_PER_USER="1/60", TRUSTED_PROXY_HOPS="1")
    headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": "198.51.100.30"}
    assert [client.get("/api/v1/auth/me", headers=headers).status_code for _ in range(2)] == [200, 429]
    stats = redis.Redis.from_url(backend_env["REDIS_URL"])
    before = _commands(stats)
    # The user stays refused from memory, from any address; a bad token is still a 401, not the user's 429.
    assert client.get("/api/v1/auth/me", headers={**headers, "X-Forwarded-For": "198.51.100.31"}).status_code == 429
    assert _delta(before, _commands(stats)) == {}
    assert client.get("/api/v1/auth/me", headers={**headers, "Authorization": "Bearer nope"}).status_code == 401
    # A write route's IP limit (the write path: IP limit, then the account, then the user limit).
    writer = function_client("auth", RATE_LIMIT_LOGIN_PER_IP="1/60", TRUSTED_PROXY_HOPS="1")
    login = {"username": "busy", "password": "wrong"}
    assert [writer.post("/api/v1/auth/token", json=login, headers=headers).status_code for _ in range(2)] == [401, 429]
    before = _commands(stats)
    assert writer.post("/api/v1/auth/token", json=login, headers=headers).status_code == 429
    assert _delta(before, _commands(stats)) == {}  # neither the limiter nor the lockout script ran
    stats.close()


def _limiter(backend_env, *, open_seconds=0):
    from threatflow.adapters.redis import CircuitBreaker, RateLimiter, connect

    return RateLimiter(connect(backend_env["REDIS_URL"]), breaker=CircuitBreaker(open_seconds=open_seconds))


def _kill_other_clients(url):
    admin = redis.Redis.from_url(url)
    try:
        assert admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") >= 1
    finally:
        admin.close()


def test_hit_all_on_a_threads_own_connection_reloads_a_flushed_script_and_charges_once(backend_env):
    """A read's check runs on the thread's own connection with EVALSHA; a Redis that lost its scripts
    (SCRIPT FLUSH, a restart) is sent the script again, and the request is charged once, not twice."""
    limiter = _limiter(backend_env)
    key = f"flushed:{uuid.uuid4().hex}"
    assert limiter.hit_all([(key, 3, 60)]) is None
    admin = redis.Redis.from_url(backend_env["REDIS_URL"])
    admin.script_flush()
    before = _commands(admin)
    assert limiter.hit_all([(key, 3, 60)]) is None  # NOSCRIPT, SCRIPT LOAD, EVALSHA
    assert _delta(before, _commands(admin)) == {"evalsha": 2, "script|load": 1, "time": 1, "get": 1, "set": 1}
    assert limiter.hit_all([(key, 3, 60)]) is None
    refused = limiter.hit_all([(key, 3, 60)])  # the 4th request of 3 allowed: each was charged once
    assert refused is not None and refused.index == 0
    admin.close()


def test_a_kept_connection_that_redis_closed_is_replaced_and_the_request_charged_once(backend_env):
    """Each thread keeps its connection (no pool checkout per read). Redis closing them all (a restart,
    CLIENT KILL) costs no failure: each thread's next check is sent again on a new connection, as the pool's
    checkout check replaced a dead connection before, and Redis charges it once: the breaker stays closed."""
    import threading

    limiter = _limiter(backend_env, open_seconds=60)
    key = f"closed:{uuid.uuid4().hex}"
    kept, go, outcomes = threading.Event(), threading.Event(), []

    def other_thread() -> None:
        outcomes.append(limiter.hit_all([(key, 4, 60)]))  # keeps a connection of its own
        kept.set()
        go.wait(10)
        try:
            outcomes.append(limiter.hit_all([(key, 4, 60)]))
        except Exception as exc:
            outcomes.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    assert kept.wait(10)
    assert limiter.hit_all([(key, 4, 60)]) is None
    _kill_other_clients(backend_env["REDIS_URL"])  # both threads' connections
    assert limiter.hit_all([(key, 4, 60)]) is None  # no DependencyError
    go.set()
    thread.join(10)
    assert outcomes == [None, None]
    refused = limiter.hit_all([(key, 4, 60)])  # the 5th request of 4 allowed: none was charged twice
    assert refused is not None and refused.index == 0
