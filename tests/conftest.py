"""Session fixtures: real PostgreSQL, Redis and the official emulators, each
started on free ports in this run's own temporary folder, so parallel or
repeated runs never share state. Services start only when a test asks."""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
PROJECT = "threatflow-test"
# Seeded by migrations; tests must not wipe them.
REFERENCE_TABLES = ("ioc_type_policies",)


def pytest_configure(config: pytest.Config) -> None:
    # The suite builds a runtime (and an engine) per test and drops it; the collector's process tuning
    # (threatflow.platform.collector, ~100x fewer full collections) left their pooled connections open
    # until PostgreSQL refused more clients. Each xdist worker runs this hook too. The tuning itself is
    # tested in a subprocess (tests/unit/test_collector.py), and the e2e gateways run with it.
    from threatflow.platform import collector

    collector.keep_defaults()
    # pytest's default /tmp/pytest-of-USER keeps only the last three runs and
    # deletes older ones, which would delete a concurrent run's live database.
    # Give every run its own base folder instead.
    if not config.option.basetemp:
        import tempfile

        base = tempfile.mkdtemp(prefix="threatflow-tests-")
        config.option.basetemp = base
        if not os.environ.get("THREATFLOW_KEEP_TEST_TMP"):
            import shutil

            config.add_cleanup(lambda: shutil.rmtree(base, ignore_errors=True))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`make test` runs `-n 2 --dist loadfile`: each test file goes whole to one worker, so its module fixtures
    are set up once. The e2e files count as one file: they share one local stack (session fixture) and run in
    file order on its worker, test_zz_outage_and_shutdown last. (Not `loadgroup`: pytest 9.2 ignores the node
    id suffix xdist 3.8 gives grouped tests.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class _FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/e2e" if path.startswith("tests/e2e/") else path

    return _FileScheduling(config, log)


@pytest.fixture(autouse=True)
def _cheap_password_hashing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside the unit tests (which keep the product's RFC 9106 profile, tests/unit/test_passwords.py),
    Argon2id runs with its smallest cost: the integration tests create and log in users in almost every
    fixture, and at ~0.16 s a hash or verify that alone was minutes of CI. Same library and code path;
    stored hashes carry their parameters, so a stack subprocess verifies them as any other."""
    if "tests/unit/" in request.node.path.as_posix():
        return
    from argon2 import PasswordHasher

    from threatflow.auth import passwords

    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    dummy = cheap.hash("dummy password for timing equalisation")
    monkeypatch.setattr(passwords, "_hasher", lambda: cheap)
    monkeypatch.setattr(passwords, "_dummy_hash", lambda: dummy)


@pytest.fixture(autouse=True)
def _restore_environ() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


def _service(name: str, start: Any) -> Iterator[Any]:
    from threatflow.devstack import services

    service = start()
    try:
        yield service
    finally:
        services.stop(service)


@pytest.fixture(scope="session")
def postgres(state_dir: Path) -> Iterator[Any]:
    from threatflow.devstack import services

    yield from _service("postgres", lambda: services.start_postgres(state_dir, database="threatflow_test"))


@pytest.fixture(scope="session")
def redis_server(state_dir: Path) -> Iterator[Any]:
    from threatflow.devstack import services

    yield from _service("redis", lambda: services.start_redis(state_dir))


@pytest.fixture
def frozen_redis(tmp_path: Path) -> Iterator[Any]:
    """A private redis-server for one test to freeze with SIGSTOP; resumed (SIGCONT) and stopped afterwards."""
    from threatflow.devstack import services

    server = services.start_redis(tmp_path)
    try:
        yield server
    finally:
        os.kill(server.pid, signal.SIGCONT)
        services.stop(server)


@pytest.fixture(scope="session")
def pubsub_emulator(state_dir: Path) -> Iterator[Any]:
    from threatflow.devstack import services

    yield from _service("pubsub", lambda: services.start_pubsub_emulator(state_dir, project=PROJECT))


@pytest.fixture(scope="session")
def firestore_emulator(state_dir: Path) -> Iterator[Any]:
    from threatflow.devstack import services

    yield from _service("firestore", lambda: services.start_firestore_emulator(state_dir, project=PROJECT))


@pytest.fixture(scope="session")
def storage_emulator(state_dir: Path) -> Iterator[Any]:
    from threatflow.devstack import services

    buckets = ["threatflow-uploads", "threatflow-reports", "threatflow-models"]
    yield from _service("storage", lambda: services.start_storage_emulator(state_dir, buckets=buckets))


@pytest.fixture(scope="session")
def migrated_database(postgres: Any) -> str:
    from threatflow.adapters.postgres import create_engine
    from threatflow.db.migrate import migrate
    from threatflow.platform.config import Settings

    url = postgres.env["DATABASE_URL"]
    engine = create_engine(Settings.from_env({"DATABASE_URL": url}))
    migrate(engine, progress=lambda _m: None)
    engine.dispose()
    return str(url)


@pytest.fixture
def fresh_database(postgres: Any) -> Iterator[str]:
    """A brand-new empty database for one test (migration tests)."""
    import pg8000.native

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = pg8000.native.Connection("postgres", host="127.0.0.1", port=postgres.port, database="postgres", ssl_context=False)
    admin.run(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+pg8000://postgres@127.0.0.1:{postgres.port}/{name}"
    finally:
        admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# Empties every table but the kept ones and restarts the sequences that were used, in one round trip. DELETE, not
# TRUNCATE: TRUNCATE gives each table and index a new file, ~100 ms for the schema's tables before every test, where
# deleting the few rows a test wrote costs ~2 ms. Replica mode skips the foreign keys' and triggers' checks, as
# everything goes. Partitions are deleted from directly (relkind 'r'), as TRUNCATE listed them.
_CLEAN_TABLES_SQL = """
DO $clean$
DECLARE
    item record;
BEGIN
    SET LOCAL session_replication_role = replica;
    FOR item IN
        SELECT c.oid::regclass AS name FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND c.relname <> ALL (ARRAY[{keep}])
    LOOP
        EXECUTE format('DELETE FROM %s', item.name);
    END LOOP;
    FOR item IN
        SELECT format('%I.%I', schemaname, sequencename) AS name, start_value FROM pg_sequences
        WHERE schemaname = 'public' AND last_value IS NOT NULL
    LOOP
        PERFORM setval(item.name, item.start_value, false);
    END LOOP;
END
$clean$
"""


@pytest.fixture(scope="session")
def _cleaner(migrated_database: str) -> Iterator[Any]:
    """One connection per worker that empties the tables before each test (a new one cost ~25 ms a test)."""
    import pg8000.native

    database = migrated_database.rsplit("/", 1)[1]
    port = int(migrated_database.rsplit(":", 1)[1].split("/", maxsplit=1)[0])
    keep = ", ".join(f"'{table}'" for table in ("schema_migrations", *REFERENCE_TABLES))
    sql = _CLEAN_TABLES_SQL.format(keep=keep)
    holder: dict[str, Any] = {}

    def clean() -> None:
        for attempt in (1, 2):  # a test may have terminated every backend, this one included: connect again
            try:
                if "conn" not in holder:
                    holder["conn"] = pg8000.native.Connection("postgres", host="127.0.0.1", port=port, database=database, ssl_context=False)
                holder["conn"].run(sql)
                return
            except (pg8000.native.InterfaceError, pg8000.native.DatabaseError, OSError):
                conn = holder.pop("conn", None)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                if attempt == 2:
                    raise

    yield clean
    if "conn" in holder:
        holder["conn"].close()


@pytest.fixture
def clean_tables(migrated_database: str, _cleaner: Any) -> str:
    _cleaner()
    return migrated_database


@pytest.fixture
def backend_env(
    clean_tables: str, redis_server: Any, pubsub_emulator: Any, firestore_emulator: Any, storage_emulator: Any
) -> dict[str, str]:
    """The environment a function sees on the local stack, pointing at this run's services."""
    import redis

    client = redis.Redis.from_url(redis_server.env["REDIS_URL"])
    client.flushdb()
    client.close()
    env = {
        "THREATFLOW_ENV": "local",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "DATABASE_URL": clean_tables,
        "JWT_SECRET": secrets.token_hex(32),
        "PUSH_AUTH_MODE": "token",
        "PUSH_AUTH_TOKEN": secrets.token_urlsafe(24),
        # Tests log in many times in a row on one instance; the hashing budget has its own test.
        "LOGIN_HASH_SHARE_PERCENT": "100",
        # The bridge's hourly enrichment budget is one row per hour for the whole run's database: a test
        # about the bridge must not depend on what earlier tests spent (the budget has its own test).
        "FLOWS_BRIDGE_ENRICH_PER_HOUR": "1000000",
        # The intel sources section, as Terraform and the local stack give it to the enrichment functions.
        **_sources_env(),
        **redis_server.env,
        **pubsub_emulator.env,
        **firestore_emulator.env,
        **storage_emulator.env,
    }
    os.environ.update(env)
    return env


def _sources_env() -> dict[str, str]:
    return _manifest().sources_env()


@functools.cache
def _manifest() -> Any:
    """functions/topology.yaml, read once a run: every test's environment and function load read it (~12 ms each)."""
    from threatflow.platform.manifest import load_manifest

    return load_manifest()


@pytest.fixture
def models_bucket(backend_env: dict[str, str], storage_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A models bucket of the test's own (BUCKET_MODELS), with ATTACK_DATA_PATH unset: the ATT&CK data comes from it."""
    from threatflow.devstack.services import create_bucket

    bucket = f"models-{uuid.uuid4().hex[:10]}"
    create_bucket(storage_emulator.port, bucket)
    monkeypatch.setenv("BUCKET_MODELS", bucket)
    monkeypatch.delenv("ATTACK_DATA_PATH", raising=False)
    return bucket  # each function loaded after this is a new instance, with its own snapshot cache


@pytest.fixture
def db(request: pytest.FixtureRequest, backend_env: dict[str, str]) -> Iterator[Any]:
    """Straight SQL on the run's database (`helpers.SqlDb`), its engine disposed after the test. A test file that needs
    reads of its own declares them in a module-level `Db(SqlDb)` and gets that class; a file with a `db` fixture of
    its own keeps it (test_ioc_import_export.py)."""
    from helpers import SqlDb

    cls = getattr(request.module, "Db", SqlDb)
    assert issubclass(cls, SqlDb), f"{request.module.__name__}.Db must subclass helpers.SqlDb to be the db fixture"
    handle = cls(backend_env["DATABASE_URL"])
    yield handle
    handle.close()


@pytest.fixture
def function_client(backend_env: dict[str, str]) -> Any:
    """Loads a real functions/<name>/main.py with functions-framework and returns its test client."""
    import functions_framework

    manifest = _manifest()

    def load(name: str, **extra_env: str) -> Any:
        os.environ.update(extra_env)
        fn = manifest.functions[name]
        source = REPO_ROOT / "functions" / name / "main.py"
        sys.modules.pop("main", None)
        app = functions_framework.create_app(target=fn.entry_point, source=str(source), signature_type=fn.signature_type)
        client = app.test_client()
        return PushClient(client, os.environ["PUSH_AUTH_TOKEN"]) if fn.signature_type == "cloudevent" else client

    return load


class PushClient:
    """A topic function's test client that pushes the way the local stack's push subscriptions do:
    with the push token in the URL. Pass `query_string=` to push without it (a forged push)."""

    def __init__(self, client: Any, token: str) -> None:
        self._client = client
        self._token = token

    def post(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("query_string", {"token": self._token})
        return self._client.post(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)
