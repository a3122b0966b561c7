"""One deadline per hunting request, not one timeout per statement.

The host view runs six statements (seven with the linked IoC); each under its own 5 s statement
timeout, one request could hold its connection ~35 s. Now every statement gets what is left of the
request's budget (SET LOCAL statement_timeout), and past it the answer is the 400 asking for a
narrower window. On real PostgreSQL; the first test drives the deadline's clock by the statements
the server really ran, the second runs on the wall clock over HTTP.
"""

import contextlib
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from helpers import create_user

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(clean_tables):
    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": clean_tables, "DB_POOL_SIZE": "4"}))
    yield engine
    engine.dispose()


def _record_statements(engine, clock):
    """Every statement the engine sends; each one that is not a SET moves `clock` on by one second."""
    from sqlalchemy import event

    sent = []

    def after(conn, cursor, statement, parameters, context, executemany):
        sent.append(statement)
        if not statement.startswith("SET LOCAL statement_timeout"):
            clock[0] += 1.0

    event.listen(engine, "after_cursor_execute", after)
    return sent


def test_the_host_view_stops_at_its_deadline_with_each_statement_given_what_is_left(engine):
    from threatflow.flows import repository
    from threatflow.platform.errors import ValidationError

    clock = [100.0]
    sent = _record_statements(engine, clock)
    now = datetime.now(UTC)
    window = {"start": now - timedelta(days=30), "end": now}
    deadline = repository.Deadline("host view", budget_ms=2500, clock=lambda: clock[0])
    with pytest.raises(ValidationError) as refused, engine.begin() as conn:
        repository.host_summary(conn, ip="175.45.176.1", top=10, deadline=deadline, **window)
    assert refused.value.field == "from" and "narrow from/to" in str(refused.value)
    timeouts = [s for s in sent if s.startswith("SET LOCAL statement_timeout")]
    queries = [s for s in sent if s not in timeouts]
    # three statements ran, with 2.5 s, 1.5 s and 0.5 s; the fourth found the budget spent and never ran
    assert timeouts == ["SET LOCAL statement_timeout = 2500", "SET LOCAL statement_timeout = 1500", "SET LOCAL statement_timeout = 500"]
    assert len(queries) == 3 and all("flow_events" in q for q in queries)

    # With the budget to spare the same view runs all six statements, each bounded by what is left.
    sent.clear()
    with engine.begin() as conn:
        summary = repository.host_summary(
            conn, ip="175.45.176.1", top=10, deadline=repository.Deadline("host view", budget_ms=10_000, clock=lambda: clock[0]), **window
        )
    assert summary["as_source"]["events"] == 0
    assert [s for s in sent if s.startswith("SET LOCAL")] == [f"SET LOCAL statement_timeout = {ms}" for ms in range(10_000, 4_000, -1000)]


def test_a_statement_cancelled_by_the_server_is_the_400(engine):
    """The remaining budget is the server's statement_timeout: a statement that outlives it is cancelled."""
    from threatflow.flows import repository
    from threatflow.platform.errors import ValidationError

    deadline = repository.Deadline("host view", budget_ms=200)
    with pytest.raises(ValidationError) as refused, engine.begin() as conn:
        deadline.execute(conn, "SELECT pg_sleep(2)")
    assert refused.value.field == "from"


@pytest.fixture
def reader(function_client, backend_env):
    password = create_user(backend_env["DATABASE_URL"], "hunter", "reader")
    body = function_client("auth").post("/api/v1/auth/token", json={"username": "hunter", "password": password}).get_json()
    return {"Authorization": f"Bearer {body['access_token']}"}


def test_a_host_view_slowed_at_every_step_answers_within_one_budget(function_client, backend_env, reader, engine):
    """Real time over HTTP: the first statement waits 1.5 s behind a lock on flow_events, the IoC lookup
    (the seventh) waits behind a lock on iocs. With a 2 s budget the request ends at ~2 s; with a
    2 s timeout per statement it ended at ~3.5 s (1.5 s + the lookup's own 2 s)."""
    flows = function_client("flows", FLOWS_HUNT_TIMEOUT_MS="2000")
    assert flows.get("/api/v1/events/hosts/1.2.3.4", headers=reader).status_code == 200  # warm: connections, token cache
    events_locked, iocs_locked, release = threading.Event(), threading.Event(), threading.Event()

    def hold(table, locked, hold_for):
        with engine.begin() as conn:
            conn.exec_driver_sql(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(hold_for)

    holders = [
        threading.Thread(target=hold, args=("iocs", iocs_locked, 30)),
        threading.Thread(target=hold, args=("flow_events", events_locked, 1.5)),
    ]
    try:
        holders[0].start()
        assert iocs_locked.wait(10)
        holders[1].start()
        assert events_locked.wait(10)
        began = time.monotonic()
        response = flows.get("/api/v1/events/hosts/1.2.3.4", headers=reader)
        took = time.monotonic() - began
    finally:
        release.set()
        for holder in holders:
            with contextlib.suppress(RuntimeError):
                holder.join()
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert "narrow from/to" in response.get_json()["error"]["message"]
    assert 1.4 < took < 2.8, took  # the budget (2 s) and its round trips, not 1.5 s + another 2 s
    assert flows.get("/api/v1/events/hosts/1.2.3.4", headers=reader).status_code == 200


def test_the_wait_for_a_pooled_connection_counts_against_the_deadline(function_client, backend_env, reader):
    """Every connection of the instance's pool taken (other requests' host views, a slow search): a hunting request
    waited the pool's own 10 s for one, past its 5 s budget, and then answered a 503. The wait is now part of the
    budget: the request gives up with it, with a 503 to retry soon (the window asked for is not what is wrong)."""
    import sys

    flows = function_client("flows", DB_POOL_SIZE="1", FLOWS_HUNT_TIMEOUT_MS="500")
    engine = sys.modules["main"].router.runtime.engine  # the instance's own pool: 1 kept, 1 overflow
    assert flows.get("/api/v1/events/hosts/1.2.3.4", headers=reader).status_code == 200  # warm: token cache
    held = [engine.connect(), engine.connect()]
    try:
        for path in ("/api/v1/events/hosts/1.2.3.4", "/api/v1/events/timeline?srcip=1.2.3.4", "/api/v1/events/top/attack-categories"):
            began = time.monotonic()
            response = flows.get(path, headers=reader)
            took = time.monotonic() - began
            assert response.status_code == 503, (path, response.status_code, response.get_data(as_text=True)[:300])
            assert response.get_json()["error"]["code"] == "dependency_unavailable"
            assert "busy" in response.get_json()["error"]["message"]
            assert response.headers["Retry-After"] == "1"
            assert took < 10, (path, took)  # not the pool's own timeout
    finally:
        for conn in held:
            conn.close()
    assert flows.get("/api/v1/events/hosts/1.2.3.4", headers=reader).status_code == 200


def test_a_search_waits_for_a_pooled_connection_no_longer_than_it_may_run(function_client, backend_env, reader):
    """A search by address runs on the read pool under a 3 s statement timeout, but waited the pool's own
    10 s for a connection when every one was taken, then answered a 503. It now gives up after the 3 s it
    may run: the same 503 to retry, sooner."""
    import sys

    from threatflow.flows import search

    flows = function_client("flows", DB_POOL_SIZE="1")
    path = "/api/v1/events/search?srcip=1.2.3.4"
    assert flows.get(path, headers=reader).status_code == 200  # warm: token cache, the read pool exists
    pool = sys.modules["main"].router.runtime.read_engine(search.SEARCH_SESSION)  # 1 kept, 1 overflow
    held = [pool.connect(), pool.connect()]
    try:
        began = time.monotonic()
        response = flows.get(path, headers=reader)
        took = time.monotonic() - began
        assert response.status_code == 503, (response.status_code, response.get_data(as_text=True)[:300])
        assert response.get_json()["error"]["code"] == "dependency_unavailable"
        assert search.SEARCH_TIMEOUT_MS / 1000 - 0.1 < took < 6, took  # its own 3 s, not the pool's 10 s
    finally:
        for conn in held:
            conn.close()
    assert flows.get(path, headers=reader).status_code == 200
