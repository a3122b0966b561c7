"""Each adapter against the real server or the official emulator."""

import uuid

import pytest
from fakes.secret_manager import FakeSecretManager

from threatflow.platform.errors import ConfigError, NotFoundError

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"


def test_pubsub_publish_reaches_a_subscriber(backend_env):
    from google.cloud import pubsub_v1

    from threatflow.adapters.pubsub import PubSubPublisher

    topic = f"t-{uuid.uuid4().hex[:8]}"
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    publisher.create_topic(name=publisher.topic_path(PROJECT, topic))
    sub_path = subscriber.subscription_path(PROJECT, f"{topic}-sub")
    subscriber.create_subscription(name=sub_path, topic=publisher.topic_path(PROJECT, topic))
    message_id = PubSubPublisher(PROJECT).publish(topic, b'{"a":1}', {"job": "x"})
    assert message_id
    response = subscriber.pull(request={"subscription": sub_path, "max_messages": 1}, timeout=10)
    received = response.received_messages[0].message
    assert received.data == b'{"a":1}' and received.attributes["job"] == "x"
    subscriber.close()


def test_firestore_create_is_idempotent_and_queries(backend_env):
    from threatflow.adapters.firestore import FirestoreDocuments

    docs = FirestoreDocuments(PROJECT)
    collection = f"c{uuid.uuid4().hex[:8]}"
    assert docs.create(collection, "one", {"n": 1}) is True
    assert docs.create(collection, "one", {"n": 2}) is False
    assert docs.get(collection, "one") == {"n": 1}
    docs.set(collection, "two", {"n": 2})
    docs.set(collection, "two", {"m": 3}, merge=True)
    assert docs.get(collection, "two") == {"n": 2, "m": 3}
    found = docs.query(collection, where=[("n", ">", 1)])
    assert [d["id"] for d in found] == ["two"]
    ordered = docs.query(collection, order_by="n", descending=True, limit=1)
    assert ordered[0]["id"] == "two"
    docs.delete(collection, "one")
    assert docs.get(collection, "one") is None


def test_firestore_update_if_unchanged_is_a_compare_and_set_the_emulator_enforces(backend_env):
    """A write in between (another version) or a delete makes the compare-and-set write nothing and say so;
    at the version read it writes the named fields only, keeps the rest, and hands back the next version."""
    from threatflow.adapters.firestore import FirestoreDocuments

    docs = FirestoreDocuments(PROJECT)
    collection = f"c{uuid.uuid4().hex[:8]}"
    assert docs.get_versioned(collection, "absent") is None
    docs.set(collection, "run", {"status": "queued", "n": 1, "nested": {"a": 1, "b": 2}})
    read = docs.get_versioned(collection, "run")
    assert read is not None and read.data == {"status": "queued", "n": 1, "nested": {"a": 1, "b": 2}}

    newer = docs.update_if_unchanged(
        collection, "run", {"status": "requeued", "nested": {"a": 3}, "dotted.key": True}, version=read.version
    )
    assert newer is not None and newer != read.version
    assert docs.get(collection, "run") == {"status": "requeued", "n": 1, "nested": {"a": 3}, "dotted.key": True}
    again = docs.get_versioned(collection, "run")
    assert again is not None and again.version == newer  # the version handed back is the one a read sees

    # The version read before that write is stale now: nothing is written.
    assert docs.update_if_unchanged(collection, "run", {"status": "done"}, version=read.version) is None
    # Another writer (a dispatcher starting the run) between a read and the write: the same.
    docs.set(collection, "run", {"status": "running"}, merge=True)
    assert docs.update_if_unchanged(collection, "run", {"status": "done"}, version=newer) is None
    assert docs.get(collection, "run")["status"] == "running"
    # A document deleted since it was read is not written back into being.
    current = docs.get_versioned(collection, "run")
    assert current is not None
    docs.delete(collection, "run")
    assert docs.update_if_unchanged(collection, "run", {"status": "done"}, version=current.version) is None
    assert docs.get(collection, "run") is None


def test_storage_round_trip(backend_env):
    from threatflow.adapters.storage import GcsBlobs

    blobs = GcsBlobs(PROJECT)
    name = f"reports/{uuid.uuid4().hex}.json"
    blobs.put("threatflow-reports", name, b'{"ok":true}', content_type="application/json")
    assert blobs.exists("threatflow-reports", name)
    assert blobs.get("threatflow-reports", name) == b'{"ok":true}'
    assert name in blobs.list("threatflow-reports", prefix="reports/")
    blobs.delete("threatflow-reports", name)
    assert not blobs.exists("threatflow-reports", name)
    with pytest.raises(NotFoundError, match="no object"):
        blobs.get("threatflow-reports", name)
    blobs.ping("threatflow-reports")


def test_storage_streams_an_object_in_ranged_chunks_pinned_to_its_generation(backend_env, monkeypatch):
    """open_read returns the object's exact bytes through chunks far smaller than it (the emulator serves
    the client's ranged GETs), and names a missing object with our NotFoundError, never a client exception."""
    import hashlib
    import random

    from threatflow.adapters import storage

    monkeypatch.setattr(storage, "READ_CHUNK_BYTES", 4096)
    blobs = storage.GcsBlobs(PROJECT)
    name = f"flows/{uuid.uuid4().hex}.bin"
    data = random.Random(5).randbytes(100_003)
    blobs.put("threatflow-uploads", name, data)
    info = blobs.stat("threatflow-uploads", name)
    assert info.size == len(data) and info.generation > 0
    with blobs.open_read("threatflow-uploads", name, generation=info.generation) as stream:
        pieces = []
        while piece := stream.read(1000):
            pieces.append(piece)
    assert hashlib.sha256(b"".join(pieces)).digest() == hashlib.sha256(data).digest()
    blobs.put("threatflow-uploads", name, b"replaced")
    assert blobs.stat("threatflow-uploads", name).generation != info.generation
    blobs.delete("threatflow-uploads", name)
    with pytest.raises(NotFoundError, match="no object"):
        blobs.stat("threatflow-uploads", name)
    with pytest.raises(NotFoundError, match="no object"), blobs.open_read("threatflow-uploads", name) as stream:
        stream.read(10)


def test_secret_manager_against_fake_rest_api():
    from threatflow.adapters.secrets import SecretManagerSecrets

    with FakeSecretManager() as fake:
        fake.add_version(PROJECT, "vt-api-key", "first")
        fake.add_version(PROJECT, "vt-api-key", "second")
        source = SecretManagerSecrets(PROJECT, endpoint=fake.endpoint, cache_seconds=60)
        assert source.get("vt-api-key") == "second"
        assert source.get("vt-api-key") == "second"
        assert len(fake.requests) == 1, "second read must come from the cache"
        with pytest.raises(ConfigError, match="no enabled version"):
            source.get("missing")


def test_env_secrets_name_the_variable(monkeypatch):
    from threatflow.adapters.secrets import EnvSecrets

    monkeypatch.setenv("OTX_API_KEY", "k")
    assert EnvSecrets().get("otx-api-key") == "k"
    with pytest.raises(ConfigError, match="export NOPE_KEY"):
        EnvSecrets().get("nope-key")


def test_rate_limiter_allows_burst_then_refuses(backend_env):
    from threatflow.adapters.redis import CircuitBreaker, RateLimiter, connect

    limiter = RateLimiter(connect(backend_env["REDIS_URL"]), breaker=CircuitBreaker(open_seconds=1))
    key = uuid.uuid4().hex
    decisions = [limiter.hit(key, limit=3, period_seconds=60) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert 15 <= decisions[3].retry_after_seconds <= 20  # one slot refills every 20 s


def test_postgres_ping_and_dependency_error():
    from threatflow.adapters.postgres import create_engine, ping
    from threatflow.platform.config import Settings
    from threatflow.platform.errors import DependencyError

    engine = create_engine(Settings.from_env({"DATABASE_URL": "postgresql+pg8000://postgres@127.0.0.1:1/none"}))
    with pytest.raises(DependencyError, match="PostgreSQL is unreachable"):
        ping(engine)


def test_storage_put_file_uploads_a_file_in_resumable_chunks(backend_env, monkeypatch, tmp_path):
    """`threatflow flows load --upload` read the whole file into memory; put_file sends it from disk in
    resumable chunks (256 KiB here, the smallest the API takes), and the object is the file's exact bytes."""
    import hashlib
    import random

    from threatflow.adapters import storage

    monkeypatch.setattr(storage, "READ_CHUNK_BYTES", 256 * 1024)
    path = tmp_path / "flows.csv.gz"
    data = random.Random(6).randbytes(3 * 256 * 1024 + 1234)  # four chunks, the last short
    path.write_bytes(data)
    blobs = storage.GcsBlobs(PROJECT)
    name = f"flows/{uuid.uuid4().hex}/flows.csv.gz"
    blobs.put_file("threatflow-uploads", name, str(path))
    assert blobs.stat("threatflow-uploads", name).size == len(data)
    assert hashlib.sha256(blobs.get("threatflow-uploads", name)).digest() == hashlib.sha256(data).digest()
    blobs.delete("threatflow-uploads", name)


def test_every_database_session_runs_in_utc_whatever_the_databases_default(backend_env):
    """Hourly roll-ups (date_trunc on timestamptz, also when their views refresh) and the host view's times follow
    the session's time zone: a database defaulting to +05:45 shifted every bucket by 45 minutes."""
    import sqlalchemy

    from threatflow.adapters.postgres import ReadSession, create_engine, create_read_engine
    from threatflow.platform.config import Settings

    url = backend_env["DATABASE_URL"]
    database = url.rsplit("/", 1)[1].split("?")[0]
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    settings = Settings.from_env()
    engines = [create_engine(settings), create_read_engine(settings, session=ReadSession(statement_timeout_ms=1000))]
    hour = "SELECT current_setting('TimeZone'), date_trunc('hour', TIMESTAMPTZ '2026-03-01 10:30:00+00')::text"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE \"{database}\" SET timezone = 'Asia/Kathmandu'")
        plain = sqlalchemy.create_engine(url)  # a session that does not ask for UTC gets the database's default
        with plain.connect() as conn:
            assert conn.exec_driver_sql(hour).one() == ("Asia/Kathmandu", "2026-03-01 16:00:00+05:45")
        plain.dispose()
        for engine in engines:
            with engine.connect() as conn:
                assert conn.exec_driver_sql(hour).one() == ("UTC", "2026-03-01 10:00:00+00")
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{database}" RESET timezone')
        for engine in [*engines, admin]:
            engine.dispose()


def test_firestore_get_many_reads_every_named_document_and_many_writes_are_batched(backend_env):
    """GET /enrichment/batches/{id} read up to 1,000 run documents one by one; get_many reads them in batched
    gets (client.get_all). More than one 500-write batch of set_many / delete_many, ids repeated and absent."""
    from threatflow.adapters.firestore import FirestoreDocuments

    docs = FirestoreDocuments(PROJECT)
    collection = f"c{uuid.uuid4().hex[:8]}"
    ids = [f"run-{i:04d}" for i in range(1100)]
    docs.set_many(collection, {doc_id: {"n": i} for i, doc_id in enumerate(ids)})
    wanted = [*reversed(ids), "absent", ids[0]]
    found = docs.get_many(collection, wanted)
    assert set(found) == set(wanted)
    assert found["absent"] is None and all(found[doc_id] == {"n": i} for i, doc_id in enumerate(ids))
    assert docs.get_many(collection, []) == {}
    docs.delete_many(collection, ids[:600])
    after = docs.get_many(collection, ids)
    assert [doc_id for doc_id in ids if after[doc_id] is None] == ids[:600]


def test_firestore_delete_many_if_deletes_only_the_documents_whose_field_matches(backend_env):
    """A failed POST /batch deletes its runs still queued, more than one 500-document transaction of them; a run
    started (another status), an absent id and a repeated one are no error, and only the deleted ids come back."""
    from threatflow.adapters.firestore import FirestoreDocuments

    docs = FirestoreDocuments(PROJECT)
    collection = f"c{uuid.uuid4().hex[:8]}"
    ids = [f"run-{i:04d}" for i in range(600)]
    docs.set_many(collection, {doc_id: {"status": "running" if i % 100 == 7 else "queued"} for i, doc_id in enumerate(ids)})
    deleted = docs.delete_many_if(collection, [*ids, "absent", ids[0]], field="status", value="queued")
    started = [doc_id for i, doc_id in enumerate(ids) if i % 100 == 7]
    assert sorted(deleted) == sorted(set(ids) - set(started))
    after = docs.get_many(collection, ids)
    assert [doc_id for doc_id in ids if after[doc_id] is not None] == started


def test_firestore_set_many_splits_a_batch_too_large_for_one_request(backend_env):
    """500 documents may hold far more than one commit request carries (a batch's run records hold each URL value
    twice, and a percent-encoded 8,192-character URL grows): a batched write past the request size failed the
    whole POST /enrichment/batch. set_many bounds each commit by size as well as by count."""
    from threatflow.adapters.firestore import FirestoreDocuments

    docs = FirestoreDocuments(PROJECT)
    collection = f"c{uuid.uuid4().hex[:8]}"
    big = {f"d{i}": {"value": f"{i}" * 900_000} for i in range(6)}  # 5.4 MB in all, under 1 MiB each
    docs.set_many(collection, big)
    assert docs.get_many(collection, list(big)) == big


def test_a_deadlock_postgresql_broke_is_a_dependency_error_to_retry(backend_env):
    """Two transactions locking two rows in opposite orders: PostgreSQL aborts one (SQLSTATE 40P01) to break the
    deadlock. That transaction did nothing wrong and succeeds when run again, so it is a DependencyError (a 503
    with Retry-After, a message Pub/Sub delivers again), not a bug's 500 and an acked message."""
    import threading

    import sqlalchemy

    from threatflow.adapters.postgres import create_engine, unavailable
    from threatflow.platform.config import Settings
    from threatflow.platform.errors import DependencyError

    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"], "DB_POOL_SIZE": "2"}))
    table = f"deadlock_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {table} (id int PRIMARY KEY)")
        conn.exec_driver_sql(f"INSERT INTO {table} VALUES (1), (2)")
    both_hold = threading.Barrier(2, timeout=10)
    failures: list[BaseException] = []

    def lock(first: int, second: int) -> None:
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("SET LOCAL deadlock_timeout = '100ms'")
                conn.execute(sqlalchemy.text(f"SELECT 1 FROM {table} WHERE id = :i FOR UPDATE"), {"i": first})
                both_hold.wait()
                conn.execute(sqlalchemy.text(f"SELECT 1 FROM {table} WHERE id = :i FOR UPDATE"), {"i": second})
        except Exception as exc:
            failures.append(exc)

    try:
        threads = [threading.Thread(target=lock, args=pair) for pair in ((1, 2), (2, 1))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        [failure] = failures  # PostgreSQL aborted exactly one of them
        error = unavailable(failure)
        assert isinstance(error, DependencyError), (failure, error)
        assert "deadlock" in error.message and error.retry_after is not None
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        engine.dispose()


def test_a_value_the_driver_cannot_send_leaves_no_connection_out_of_step(backend_env):
    """pg8000 converts a statement's parameters after it has sent the request to describe the statement: a value it
    cannot convert (a datetime whose UTC instant is before year 1) raised there, the server's answer stayed unread on
    the connection, and the pool handed the connection on: each later statement on it read the answer of the one
    before (a 500 for whoever got it, "'NoneType' object has no attribute 'append'"). Such a connection is
    discarded, so the next unit of work on a one-connection pool is answered."""
    from datetime import datetime, timedelta, timezone

    import sqlalchemy

    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({**backend_env, "DB_POOL_SIZE": "1"}))
    early = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    for _ in range(2):
        with pytest.raises(OverflowError), unit_of_work(engine) as conn:
            conn.execute(sqlalchemy.text("SELECT CAST(:t AS timestamptz)"), {"t": early})
        with unit_of_work(engine) as conn:
            assert conn.execute(sqlalchemy.text("SELECT 41 + 1")).scalar_one() == 42
    engine.dispose()
