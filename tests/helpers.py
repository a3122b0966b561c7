"""Helpers the tests import (fixtures live in conftest.py)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TEST_PROJECT = "threatflow-test"


def push_envelope(
    data: Any,
    attributes: Mapping[str, str],
    subscription: str,
    *,
    message_id: str | None = None,
    published: datetime | None = None,
) -> dict[str, Any]:
    """A Pub/Sub push body as a push subscription delivers it: `data` as base64 (bytes as they were published,
    anything else as JSON), a fresh message id unless given, published now unless given."""
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return {
        "message": {
            "data": base64.b64encode(raw).decode(),
            "attributes": dict(attributes),
            "messageId": message_id or uuid.uuid4().hex,
            "publishTime": (published or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
        },
        "subscription": f"projects/{TEST_PROJECT}/subscriptions/{subscription}",
    }


def push_envelope_of(message: Any, subscription: str) -> dict[str, Any]:
    """The push body that delivers a message pulled from the emulator (a PubsubMessage): its own data,
    attributes and message id, so delivering it twice is a redelivery."""
    return push_envelope(message.data, message.attributes, subscription, message_id=message.message_id)


def run_maintenance_job(client: Any, job: str, params: dict[str, Any] | None = None) -> tuple[int, dict[str, Any] | None]:
    """Push one maintenance job (as the scheduler or the admin API publishes it) to the maintenance function's
    test client; returns the push's status and the run's record (keyed by the run id it was sent with)."""
    from threatflow.adapters.firestore import FirestoreDocuments

    run_id = uuid.uuid4().hex
    body = push_envelope(
        {"schema_version": 1, "params": params or {}}, {"job": job, "run_id": run_id}, "maintenance-push", message_id=run_id
    )
    response = client.post("/", json=body)
    return response.status_code, FirestoreDocuments(TEST_PROJECT).get("maintenance_runs", run_id)


def create_user(
    database_url: str, username: str, role: str, password: str = "correct horse battery staple", *, clearance: str | None = None
) -> str:
    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.auth import service
    from threatflow.auth.model import Role
    from threatflow.auth.repository import UserRepository
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": database_url}))
    try:
        with unit_of_work(engine) as conn:
            users = UserRepository(conn)
            service.create_user(
                username=username, password=password, role=Role(role), users=users, clearance=None, actor=None, actor_clearance=None
            )
            if clearance is not None:
                users.update(username, role=None, clearance=clearance, password_hash=None)
    finally:
        engine.dispose()
    return password


def require_shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path}; run with ../shared beside the checkout")
    return path


THREATFLOW = str(Path(sys.executable).parent / "threatflow")
E2E_ADMIN_PASSWORD = "an admin password that is long"


def stack_cli(stack: dict, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the threatflow CLI against the e2e stack's environment."""
    return subprocess.run([THREATFLOW, *args], env=stack["env"], input=stdin, capture_output=True, text=True, timeout=120, check=False)


def stack_token(stack: dict, username: str, password: str) -> dict[str, str]:
    import requests

    response = requests.post(f"{stack['url']}/api/v1/auth/token", json={"username": username, "password": password}, timeout=30)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def clear_enrichment_runs(documents: Any) -> None:
    """Delete every enrichment run and the overdue sweep's page cursor: other tests' runs share the emulator."""
    from threatflow.enrichment import runs

    while stale := documents.query(runs.RUNS, limit=500):
        for doc in stale:
            documents.delete(runs.RUNS, doc["id"])
    documents.delete(runs.SWEEPS, runs.OVERDUE_CURSOR)


def enrichment_ioc(runtime: Any, value: str) -> int:
    """The id of the IoC `value`, stored the way an enrichment request for a new value stores it."""
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.intel import enrichment as intel_enrichment

    policies = runtime.decay_policies().get()
    with unit_of_work(runtime.engine) as conn:
        ioc = intel_enrichment.resolve_ioc(
            conn, value, None, where="value", now=datetime.now(UTC), warninglists=None, policies=policies, clearance="red"
        )
    return int(ioc["id"])


def start_enrichment_run(runtime: Any, ioc_id: int, value: str, *, expected: list[str], deadline_in: float) -> str:
    """A run as enrich-dispatch leaves it (runs.create_run + runs.start_run): running, its expected sources,
    a deadline `deadline_in` seconds from now (negative: already past). Returns the run id."""
    from threatflow.enrichment import runs

    run_id = uuid.uuid4().hex
    runs.create_run(runtime.documents, {"run_id": run_id, "ioc_id": ioc_id, "type": "ipv4", "value": value, "created_at": time.time()})
    runs.start_run(
        runtime.documents,
        run_id,
        version=runs.get_run_versioned(runtime.documents, run_id).version,
        expected=expected,
        skipped={},
        deadline_at=time.time() + deadline_in,
    )
    return run_id


def store_enrichment_answer(runtime: Any, run_id: str, ioc_id: int, source: str, *, verdict: str = "malicious", score: int = 95) -> int:
    """A source's answer stored the way enrich-<source> stores it; returns the rows inserted."""
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.enrichment import repository

    row = {
        "run_id": run_id,
        "ioc_id": ioc_id,
        "source": source,
        "status": "ok",
        "verdict": verdict,
        "score": score,
        "evidence": {"tags": ["botnet"]},
        "detail": "",
        "cached": False,
        "fetched_at": datetime.now(UTC).isoformat(),
    }
    with unit_of_work(runtime.engine) as conn:
        return repository.insert_results(conn, [row])


def pull_published(
    publisher: Any,
    subscriber: Any,
    *,
    topic: str,
    subscription: str,
    expected: int,
    keep: Callable[[Any], bool],
    attempts: int = 10,
    max_messages: int = 50,
) -> list[Any]:
    """The messages on the test's `subscription` (to `topic`, both full paths) that `keep` accepts, all acked,
    waiting for `expected` of them for at most `attempts` pulls of up to 5 s. Expecting none, a sentinel
    published now marks the end: what came before it was all there was (the emulator delivers a topic's
    messages in order), without waiting out empty pulls."""
    found: list[Any] = []
    sentinel = uuid.uuid4().hex if not expected else None
    if sentinel:
        publisher.publish(topic, b"{}", sentinel=sentinel).result(timeout=30)
    for _ in range(attempts):
        received = subscriber.pull(subscription=subscription, max_messages=max_messages, timeout=5).received_messages
        if received:
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in received])
        found += [m.message for m in received if m.message.attributes.get("sentinel") is None and keep(m.message)]
        if sentinel and any(m.message.attributes.get("sentinel") == sentinel for m in received):
            break
        if expected and len(found) >= expected:
            break
    return found


class IntelApi:
    """The iocs and threats functions' test clients (a path goes to the function that serves it), one user per role
    with a bearer token (`roles`, created here): posts as the analyst, gets as the reader and deletes as the admin
    unless told otherwise."""

    def __init__(self, function_client: Callable[..., Any], database_url: str, roles: tuple[str, ...]) -> None:
        self._function_client = function_client
        auth = function_client("auth")
        self.headers: dict[str, dict[str, str]] = {}
        for role in roles:
            password = create_user(database_url, f"{role}1", role)
            response = auth.post("/api/v1/auth/token", json={"username": f"{role}1", "password": password})
            assert response.status_code == 200, response.get_json()
            self.headers[role] = {"Authorization": f"Bearer {response.get_json()['access_token']}"}
        self.analyst, self.reader, self.admin = (self.headers.get(r, {}) for r in ("analyst", "reader", "admin"))
        self.restart()

    def restart(self) -> None:
        """New function instances: configuration (the environment) is read when a function starts."""
        self.clients = {"threats": self._function_client("threats"), "iocs": self._function_client("iocs")}

    def client(self, path: str) -> Any:
        return self.clients["iocs"] if path.startswith("/api/v1/iocs") else self.clients["threats"]

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        return self.client(path).post(path, json=body, headers=self.analyst if headers is None else headers)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        return self.client(path).get(path, headers=self.reader if headers is None else headers)

    def delete(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        return self.client(path).delete(path, json=body, headers=self.admin if headers is None else headers)


class SqlDb:
    """Straight SQL on the run's database, for rows the API does not show (or set up past what it allows); its own
    engine, disposed by `close`. Subclasses add the reads a test file needs."""

    def __init__(self, database_url: str) -> None:
        from threatflow.adapters.postgres import create_engine
        from threatflow.platform.config import Settings

        self._engine = create_engine(Settings.from_env({"DATABASE_URL": database_url}))

    def one(self, sql: str, *params: Any) -> Any:
        with self._engine.connect() as conn:
            return conn.exec_driver_sql(sql, params).one()

    def execute(self, sql: str, *params: Any) -> None:
        with self._engine.begin() as conn:
            conn.exec_driver_sql(sql, params)

    def close(self) -> None:
        self._engine.dispose()


class FirestoreDownWithPubSub:
    """The real document store until `down` is set (by a publish that fails: Pub/Sub and Firestore unreachable
    together); from then on every write fails as Firestore unreachable."""

    def __init__(self, docs: Any) -> None:
        self._docs, self.down = docs, False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._docs, name)
        if not name.startswith(("set", "update", "delete")):
            return method

        def failing(*args: Any, **kwargs: Any) -> Any:
            from threatflow.platform.errors import DependencyError

            if self.down:
                raise DependencyError(f"Firestore {name} failed: unreachable")
            return method(*args, **kwargs)

        return failing


def copy_migrations(sql_dir: Path, versions: range) -> None:
    """Copies the project's migrations whose numbers are in `versions` into `sql_dir`: a test migrates a fresh database
    to just before a migration, writes rows as they were stored then, then copies that migration and migrates on."""
    import shutil

    from threatflow.db.migrate import DEFAULT_SQL_DIR

    for path in sorted(DEFAULT_SQL_DIR.glob("*.sql")):
        if int(path.name[:4]) in versions:
            shutil.copy(path, sql_dir / path.name)


def await_lock_waiters(db: Any, count: int) -> None:
    """Until `count` sessions of `db`'s database (a SqlDb) wait for a lock: what a race staged behind a held row lock
    needs before it goes on."""
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    for _ in range(400):
        if db.one(sql)[0] >= count:
            return
        time.sleep(0.025)
    raise AssertionError(f"{count} sessions never waited for a lock")
