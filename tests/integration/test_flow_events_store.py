"""The flow-event store on real PostgreSQL: partitions, retention, roll-up refresh, keyset search, hunting queries."""

import json
import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(clean_tables):
    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": clean_tables, "DB_POOL_SIZE": "4"}))
    yield engine
    engine.dispose()


def _row(at, *, src="175.45.176.1", dst="149.171.126.6", attack=True, cat="Exploits", proto="tcp", sbytes=1000, key=None, prob=0.97):
    from threatflow.flows.repository import STORED_FEATURES, EventRow

    features = [float(i) for i in range(len(STORED_FEATURES))]
    features[STORED_FEATURES.index("sbytes")] = float(sbytes)
    features[STORED_FEATURES.index("dbytes")] = 10.0
    return EventRow(
        event_time=at,
        event_key=key or str(uuid.uuid4()),
        srcip=src,
        sport=1234,
        dstip=dst,
        dsport=80,
        proto=proto,
        service="http",
        state="FIN",
        stime=at,
        ltime=at + timedelta(seconds=1),
        features=features,
        label=1 if attack else 0,
        attack_cat=cat if attack else "Normal",
        predicted_attack=attack,
        probability=prob if attack else 0.01,
        predicted_cat=cat if attack else "Normal",
        model_version="test-v1",
        source="test",
    )


def _store(engine, rows):
    from threatflow.flows import ingest

    with engine.begin() as conn:
        return ingest.store(conn, rows)


def test_events_land_in_daily_partitions_and_resends_are_noops(engine):
    from threatflow.flows import repository

    now = datetime.now(UTC)
    rows = [_row(now - timedelta(days=d, minutes=1)) for d in range(3)]
    assert len(_store(engine, rows)) == 3
    assert _store(engine, rows) == []  # same keys and times: nothing inserted twice
    with engine.connect() as conn:
        names = {p.name for p in repository.partitions(conn)}
        assert {f"flow_events_p{(now - timedelta(days=d, minutes=1)).strftime('%Y%m%d')}" for d in range(3)} <= names
        assert repository.count_events(conn) == 3
        # features are stored for retraining, sbytes/dbytes/dur copied out of them
        features, sbytes = conn.exec_driver_sql("SELECT features, sbytes FROM flow_events LIMIT 1").one()
        assert len(features) == len(repository.STORED_FEATURES) and sbytes == 1000


def test_a_batch_of_new_and_already_stored_events_returns_only_the_new(engine):
    now = datetime.now(UTC)
    first = [_row(now - timedelta(minutes=i)) for i in range(4)]
    assert len(_store(engine, first)) == 4
    fresh = [_row(now - timedelta(minutes=10 + i), src=f"175.45.176.{10 + i}") for i in range(3)]
    mixed = [first[1], fresh[0], first[3], fresh[1], fresh[2], first[0]]
    new = _store(engine, mixed)
    assert sorted(e.event_key for e in new) == sorted(r.event_key for r in fresh)
    by_key = {e.event_key: e for e in new}
    for row in fresh:  # what the bridge reads comes back as stored
        event = by_key[row.event_key]
        assert (event.event_time, event.srcip, event.predicted_attack, event.predicted_cat) == (
            row.event_time,
            row.srcip,
            row.predicted_attack,
            row.predicted_cat,
        )
        assert event.probability == pytest.approx(row.probability, rel=1e-6)  # stored as real
    assert _store(engine, mixed) == []
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM flow_events").scalar_one() == 7


ADVERSARIAL = [
    "a,b",
    'say "hi"',
    "tab\there",
    "two\nlines",
    "cr\rlf\r\n",
    "back\\slash",
    "\\N",
    "\\.",
    "\\",
    "'; DROP TABLE flow_events; --",
    "NULL",
    "{1,2}",
    "ünïcødé ✓ 流量",
    " padded ",
]


@pytest.mark.parametrize("value", ADVERSARIAL)
def test_text_values_are_stored_exactly_through_copy(engine, value):
    now = datetime.now(UTC)
    row = replace(
        _row(now - timedelta(minutes=1)), proto=value, service=value, state=value, model_version=value, source=value, predicted_cat=value
    )
    assert len(_store(engine, [row, _row(now - timedelta(minutes=2))])) == 2
    with engine.connect() as conn:
        stored = conn.exec_driver_sql(
            "SELECT proto, service, state, model_version, source, predicted_cat FROM flow_events WHERE event_key = %s", (row.event_key,)
        ).one()
        assert tuple(stored) == (value,) * 6
        assert conn.exec_driver_sql("SELECT count(*) FROM flow_events").scalar_one() == 2  # no row split or swallowed


def test_missing_values_are_stored_as_null_never_zero(engine):
    from threatflow.flows.repository import STORED_FEATURES

    now = datetime.now(UTC)
    features = [None] * len(STORED_FEATURES)
    features[STORED_FEATURES.index("dur")] = 0.25
    sparse = replace(
        _row(now - timedelta(minutes=1)),
        srcip=None,
        sport=None,
        dstip=None,
        dsport=None,
        stime=None,
        ltime=None,
        label=None,
        attack_cat=None,
        features=features,
    )
    empty = replace(_row(now - timedelta(minutes=2)), features=[None] * len(STORED_FEATURES))
    assert len(_store(engine, [sparse, empty])) == 2
    with engine.connect() as conn:
        got = conn.exec_driver_sql(
            "SELECT srcip, sport, dstip, dsport, stime, ltime, label, attack_cat, features, dur, sbytes, spkts"
            " FROM flow_events WHERE event_key = %s",
            (sparse.event_key,),
        ).one()
        assert got[:8] == (None,) * 8
        assert got.features == [None if v is None else v for v in features] and got.dur == 0.25
        assert (got.sbytes, got.spkts) == (None, None)
        all_null = conn.exec_driver_sql("SELECT features, dur FROM flow_events WHERE event_key = %s", (empty.event_key,)).one()
        assert all_null.features == [None] * len(STORED_FEATURES) and all_null.dur is None


def test_a_database_error_rolls_back_the_whole_batch_and_the_connection_stays_usable(engine):
    import sqlalchemy.exc

    from threatflow.flows import ingest, repository

    now = datetime.now(UTC)
    good = [_row(now - timedelta(minutes=i)) for i in range(3)]
    bad = replace(_row(now - timedelta(minutes=5)), probability=1.5)  # violates the probability CHECK
    with pytest.raises(sqlalchemy.exc.DBAPIError, match="probability_check"):
        _store(engine, [*good, bad])
    huge = list(good[0].features)
    huge[repository.STORED_FEATURES.index("sbytes")] = 1e30  # beyond bigint: fails in the INSERT ... SELECT
    with pytest.raises(sqlalchemy.exc.DBAPIError, match="out of range"):
        _store(engine, [good[1], replace(good[2], features=huge)])
    unparsable = replace(good[0], srcip="not-an-address")  # rejected by COPY itself
    with pytest.raises(sqlalchemy.exc.DBAPIError, match="inet"):
        _store(engine, [good[1], unparsable])
    with pytest.raises(sqlalchemy.exc.DBAPIError, match="division by zero"), engine.begin() as conn:
        assert len(ingest.store(conn, good[:2])) == 2
        conn.exec_driver_sql("SELECT 1 / 0")  # a later failure in the unit of work undoes the inserted events too
    with engine.connect() as conn:
        assert repository.count_events(conn) == 0
    # the pool's connections are clean afterwards (no staging table or aborted transaction left)
    for _ in range(3):
        assert len(_store(engine, good)) == 3
        with engine.connect() as conn:
            conn.exec_driver_sql("DELETE FROM flow_events")
            conn.commit()


def test_two_batches_in_one_transaction(engine):
    from threatflow.flows import ingest

    now = datetime.now(UTC)
    first, second = [_row(now - timedelta(minutes=i)) for i in range(2)], [_row(now - timedelta(minutes=5 + i)) for i in range(2)]
    with engine.begin() as conn:
        assert len(ingest.store(conn, first)) == 2
        assert len(ingest.store(conn, [*second, first[0]])) == 2  # the first batch's staging rows are gone


def test_labelled_flows_feed_retraining_newest_first(engine):
    from threatflow.flows import repository, training
    from threatflow.flows.features import CATEGORICAL, NUMERIC_COLUMNS

    now = datetime.now(UTC)
    attack = _row(now - timedelta(minutes=1), cat="Exploits")
    normal = _row(now - timedelta(minutes=2), attack=False)
    unlabelled = replace(_row(now - timedelta(minutes=3)), label=None, attack_cat=None)
    features = list(normal.features)
    features[repository.STORED_FEATURES.index("rate")] = None  # the raw layout carries no rate
    older = replace(_row(now - timedelta(minutes=4), attack=False), features=features)
    _store(engine, [attack, normal, unlabelled, older])

    with engine.connect() as conn:
        flows = list(repository.labelled_flows(conn, limit=10))
        assert len(list(repository.labelled_flows(conn, limit=2))) == 2
    assert [(f["label"], f["attack_cat"]) for f in flows] == [(1, "Exploits"), (0, "Normal"), (0, "Normal")]  # no unlabelled event
    first = flows[0]
    assert (first["proto"], first["service"], first["state"]) == ("tcp", "http", "FIN")
    assert first["sbytes"] == 1000.0 and first["dbytes"] == 10.0 and first["dur"] == 0.0
    assert set(CATEGORICAL) | set(NUMERIC_COLUMNS) <= set(first)  # every model input, partitioned names
    assert flows[2]["rate"] is None  # missing stays missing, never 0

    dataset = training.dataset_from_flows(flows, source="flow_events")
    assert dataset.rows == 3 and dataset.skipped == {}
    assert dataset.label.tolist() == [1, 0, 0]


def test_concurrent_ingests_of_a_new_day_both_succeed(engine):
    day = datetime(2031, 5, 5, 12, tzinfo=UTC)
    errors = []

    def work():
        try:
            _store(engine, [_row(day + timedelta(seconds=i)) for i in range(50)])
        except Exception as exc:  # pragma: no cover - reported by the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_retention_drops_whole_old_days_and_creates_days_ahead(engine):
    from threatflow.flows import events_jobs, repository

    now = datetime.now(UTC)
    _store(engine, [_row(now - timedelta(days=40)), _row(now - timedelta(days=10)), _row(now)])
    result = events_jobs.retention(engine=engine, now=now, retention_days=30, ahead_days=3)
    old = f"flow_events_p{(now - timedelta(days=40)).strftime('%Y%m%d')}"
    assert old in result["dropped"]
    with engine.connect() as conn:
        names = {p.name for p in repository.partitions(conn)}
        assert old not in names
        assert f"flow_events_p{(now + timedelta(days=3)).strftime('%Y%m%d')}" in names
        assert repository.count_events(conn) == 2  # the 10-day-old and today's events stay
    # the dropped day can be ingested again (the partition comes back on demand)
    assert len(_store(engine, [_row(now - timedelta(days=40))])) == 1


def test_two_retention_runs_at_once_drop_each_old_day_once_and_both_succeed(engine):
    """flow-retention lists the partitions, then drops the old ones a transaction each. Two runs at once (the schedule
    and an admin's manual run, or a redelivery taking over a lapsed run) listed the same days, and the second to reach
    one failed on it, `relation "flow_events_p…" does not exist` (42P01): the run failed with a 500 and was redelivered.
    A drop now waits for any other retention's and skips a day already gone; each run lists only what it dropped."""
    from threatflow.flows import events_jobs, repository

    now = datetime.now(UTC)
    with engine.begin() as conn:
        repository.ensure_partitions(conn, [(now - timedelta(days=200 + d)).date() for d in range(40)])
        listed = [p for p in repository.partitions(conn) if p.day < (now - timedelta(days=100)).date()]
    assert len(listed) == 40
    # A run that listed the days before another dropped them: each is skipped, not an error.
    assert len(events_jobs.retention(engine=engine, now=now, retention_days=90)["dropped"]) == 40
    with engine.begin() as conn:
        assert repository.drop_partition(conn, listed[0]) is False
    # Two runs racing freely over the same 40 old days.
    with engine.begin() as conn:
        repository.ensure_partitions(conn, [p.day for p in listed])
    results, errors = [], []

    def run():
        try:
            results.append(events_jobs.retention(engine=engine, now=now, retention_days=90))
        except Exception as exc:
            errors.append(exc)

    racers = [threading.Thread(target=run) for _ in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
    assert errors == []
    dropped = [name for result in results for name in result["dropped"]]
    assert sorted(dropped) == sorted(p.name for p in listed)  # each old day once, by one run or the other


def test_refresh_concurrently_shows_new_events_and_never_blocks_readers(engine):
    from threatflow.flows import events_jobs, repository

    hour = datetime.now(UTC).replace(minute=5, second=0, microsecond=0) - timedelta(hours=2)
    _store(engine, [_row(hour, cat="DoS") for _ in range(3)] + [_row(hour, attack=False, proto="udp", sbytes=50)])
    events_jobs.refresh_views(engine=engine, now=datetime.now(UTC))
    window = {"start": hour - timedelta(hours=1), "end": hour + timedelta(hours=1)}
    with engine.connect() as conn:
        assert repository.top_attack_categories(conn, limit=10, **window) == [
            {"category": "DoS", "events": 3, "labelled_attacks": 3, "active_hours": 1}
        ]
    # New events are invisible until the next refresh, then counted.
    _store(engine, [_row(hour, cat="Worms"), _row(hour, cat="DoS")])
    with engine.connect() as conn:
        assert [c["category"] for c in repository.top_attack_categories(conn, limit=10, **window)] == ["DoS"]
    # A reader holding a transaction open on the view does not block CONCURRENTLY.
    reader = engine.connect()
    reader_tx = reader.begin()
    reader.exec_driver_sql("SELECT count(*) FROM flow_attack_categories_hourly").one()
    try:
        events_jobs.refresh_views(engine=engine, now=datetime.now(UTC))
    finally:
        reader_tx.rollback()
        reader.close()
    with engine.connect() as conn:
        top = repository.top_attack_categories(conn, limit=10, **window)
        by_proto = repository.bytes_by_proto(conn, limit=10, **window)
        refreshed = repository.view_refreshed_at(conn)
    assert [(c["category"], c["events"]) for c in top] == [("DoS", 4), ("Worms", 1)]
    assert {p["proto"]: (p["events"], p["sbytes"]) for p in by_proto} == {"tcp": (5, 5000), "udp": (1, 50)}
    assert set(refreshed) == set(repository.VIEWS)
    # A window that excludes the hour sees nothing.
    with engine.connect() as conn:
        assert repository.top_attack_categories(conn, start=hour + timedelta(hours=1), end=hour + timedelta(hours=5), limit=10) == []


def test_search_pages_by_keyset_without_gaps_or_repeats(engine):
    from threatflow.flows import search

    now = datetime.now(UTC)
    rows = [_row(now - timedelta(minutes=i % 40), src="175.45.176.2") for i in range(120)]  # equal times: keys break ties
    rows += [_row(now - timedelta(minutes=i), src="59.166.0.3", attack=False) for i in range(30)]
    _store(engine, rows)
    seen = []
    cursor = None
    while True:
        query = {"srcip": "175.45.176.2", "limit": "50", **({"cursor": cursor} if cursor else {})}
        with engine.begin() as conn:
            page = json.loads(search.search(search.parse_search(query, now=now + timedelta(seconds=1)), conn=conn))
        seen += [(e["event_time"], e["event_key"]) for e in page["events"]]
        assert all(e["srcip"] == "175.45.176.2" for e in page["events"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 120 and len(set(seen)) == 120
    assert seen == sorted(seen, reverse=True)
    with engine.begin() as conn:
        filtered = json.loads(
            search.search(
                search.parse_search({"dstip": "149.171.126.6", "predicted": "normal", "limit": "1000"}, now=now + timedelta(seconds=1)),
                conn=conn,
            )
        )
    assert filtered["count"] == 30 and {e["srcip"] for e in filtered["events"]} == {"59.166.0.3"}


def test_search_lists_each_event_exactly_as_python_formatted_it(engine):
    """PostgreSQL builds the page's JSON: times in UTC ISO form with microseconds only when there are some
    (as datetime.isoformat), probabilities rounded to 6 places as round(float, 6) rounds the stored real,
    addresses without a mask, nulls as null, the fields in the order the API always listed them."""
    import struct

    from threatflow.flows import search

    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    cases = [
        (base, 0.123456789),
        (base - timedelta(seconds=1) + timedelta(microseconds=123450), 0.9999996),  # a trailing zero in the microseconds
        (base - timedelta(seconds=2, microseconds=7), 1e-7),
        (base - timedelta(seconds=3, microseconds=500000), 0.5000005),
        (base - timedelta(seconds=4), 1.0),
    ]
    rows = [_row(at, src="175.45.176.30", dst="149.171.126.9", prob=p) for at, p in cases]
    rows.append(replace(_row(base - timedelta(seconds=5), dst="149.171.126.9", attack=False), srcip=None, label=None, attack_cat=None))
    _store(engine, rows)

    def as_python(r):
        stored = struct.unpack("f", struct.pack("f", r.probability))[0]  # the column is a real
        return {
            "event_time": r.event_time.astimezone(UTC).isoformat(),
            "event_key": r.event_key,
            "srcip": r.srcip,
            "sport": r.sport,
            "dstip": r.dstip,
            "dsport": r.dsport,
            "proto": r.proto,
            "service": r.service,
            "state": r.state,
            "sbytes": 1000,
            "dbytes": 10,
            "label": r.label,
            "attack_cat": r.attack_cat,
            "predicted_attack": r.predicted_attack,
            "probability": round(stored, 6),
            "predicted_cat": r.predicted_cat,
            "model_version": r.model_version,
        }

    with engine.begin() as conn:
        raw = search.search(search.parse_search({"dstip": "149.171.126.9", "limit": "10"}, now=base + timedelta(minutes=1)), conn=conn)
    page = json.loads(raw)
    assert page["count"] == 6 and page["next_cursor"] is None
    assert page["events"] == [as_python(r) for r in rows]
    assert [list(e) for e in page["events"]] == [list(as_python(r)) for r in rows]
    assert page["events"][1]["event_time"].endswith(".123450+00:00") and "." not in page["events"][0]["event_time"]


def _read_engine(url, *, timeout_ms=3000):
    from threatflow.adapters.postgres import ReadSession, create_read_engine
    from threatflow.platform.config import Settings

    settings = Settings.from_env({"DATABASE_URL": url, "DB_POOL_SIZE": "2"})
    return create_read_engine(settings, session=ReadSession(statement_timeout_ms=timeout_ms, generic_plans=True))


@pytest.mark.parametrize(
    ("params", "pool"),
    [({"srcip": "175.45.176.31"}, "engine"), ({"srcip": "175.45.176.31"}, "read pool"), ({"proto": "tcp"}, "engine")],
    ids=["by-address-prepared", "by-address-read-pool", "time-only-planned"],
)
def test_a_search_past_its_statement_timeout_is_a_400_and_the_connection_recovers(engine, clean_tables, monkeypatch, params, pool):
    """statement_timeout (SET LOCAL with the query, or the read pool's session setting) cancels a search
    stuck behind a lock; the caller gets the 400 that says to narrow it, and the pooled connection
    serves the next search."""
    from sqlalchemy import text

    from threatflow.flows import repository, search
    from threatflow.platform.errors import ValidationError

    now = datetime.now(UTC)
    _store(engine, [_row(now - timedelta(minutes=5), src="175.45.176.31")])
    partition = f"flow_events_p{(now - timedelta(minutes=5)).strftime('%Y%m%d')}"
    query = search.parse_search(params, now=now)
    monkeypatch.setattr(search, "SEARCH_TIMEOUT_MS", 300)
    reader = _read_engine(clean_tables, timeout_ms=300) if pool == "read pool" else engine
    try:
        with engine.connect() as locker:
            locker.execute(text(f'LOCK TABLE "{partition}" IN ACCESS EXCLUSIVE MODE'))
            with pytest.raises(ValidationError) as caught, repository.read_only(reader, wait_seconds=3) as conn:
                search.search(query, conn=conn)
            assert caught.value.field == "from" and "too broad" in caught.value.message
            locker.rollback()
        with repository.read_only(reader, wait_seconds=3) as conn:
            assert json.loads(search.search(query, conn=conn))["count"] == 1
    finally:
        if reader is not engine:
            reader.dispose()


def test_the_read_pool_is_read_only_bounded_autocommit_and_answers_a_search_as_the_engine_does(engine, clean_tables):
    """The read pool's sessions carry the search's settings from the start, cannot write, and a search
    by address on it sends its one statement and nothing else; its page is byte for byte the engine's."""
    import sqlalchemy.exc

    from threatflow.flows import repository, search

    now = datetime.now(UTC)
    _store(engine, [_row(now - timedelta(minutes=m), src="175.45.176.33") for m in range(1, 8)])
    query = search.parse_search({"srcip": "175.45.176.33", "limit": "5"}, now=now)
    reader = _read_engine(clean_tables, timeout_ms=search.SEARCH_TIMEOUT_MS)
    try:
        with repository.read_only(engine, wait_seconds=3) as conn:
            expected = search.search(query, conn=conn)
        with repository.read_only(reader, wait_seconds=3) as conn:
            assert conn.connection.dbapi_connection.autocommit is True
            assert search.search(query, conn=conn) == expected
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            settings = conn.exec_driver_sql(
                "SELECT current_setting('statement_timeout'), current_setting('plan_cache_mode'),"
                " current_setting('default_transaction_read_only')"
            ).one()
            assert tuple(settings) == ("3s", "force_generic_plan", "on")
            with pytest.raises(sqlalchemy.exc.DBAPIError, match="read-only transaction"):
                conn.exec_driver_sql("DELETE FROM flow_events")
        with repository.read_only(reader, wait_seconds=3) as conn:
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() == pid  # the same pooled session
            assert search.search(query, conn=conn) == expected
        with engine.connect() as conn:  # what that session ran last: the search itself, no COMMIT or SET after it
            last = conn.exec_driver_sql(f"SELECT query FROM pg_stat_activity WHERE pid = {int(pid)}").scalar_one()
        assert last.lstrip().startswith("SELECT count(*)::integer")
        with repository.read_only(engine, wait_seconds=3) as conn:
            assert json.loads(expected)["count"] == 5
    finally:
        reader.dispose()


def test_a_read_pool_search_refuses_a_session_that_does_not_fit_it(clean_tables):
    """A SET LOCAL would not hold on an autocommit session: a search that needs other settings than the
    pool's is a programming error, not a search run without its timeout or with the wrong plan."""
    from threatflow.flows import repository, search

    now = datetime.now(UTC)
    reader = _read_engine(clean_tables, timeout_ms=1234)
    try:
        for params in ({"srcip": "175.45.176.34"}, {"proto": "tcp"}):
            with pytest.raises(ValueError, match="cannot run a search"), repository.read_only(reader, wait_seconds=3) as conn:
                search.search(search.parse_search(params, now=now), conn=conn)
        assert search.uses_read_pool(search.parse_search({"dstip": "10.0.0.1"}, now=now))
        assert not search.uses_read_pool(search.parse_search({"proto": "tcp"}, now=now))
    finally:
        reader.dispose()


def test_the_read_pool_pings_only_idle_connections_and_a_lost_one_is_a_503_then_replaced(engine, clean_tables, monkeypatch):
    """A connection idle past READ_PING_IDLE_SECONDS is pinged at checkout and silently replaced when its
    backend is gone; a just-used one is not pinged, so losing it fails that search as a dependency
    error (503, retry) and the pool drops it: the next search works."""
    from threatflow.adapters import postgres
    from threatflow.flows import repository, search

    now = datetime.now(UTC)
    _store(engine, [_row(now - timedelta(minutes=1), src="175.45.176.35")])
    query = search.parse_search({"srcip": "175.45.176.35"}, now=now)
    reader = _read_engine(clean_tables, timeout_ms=search.SEARCH_TIMEOUT_MS)

    def backend_pid() -> int:
        with reader.connect() as conn:
            return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())

    def kill(pid: int) -> None:
        with engine.connect() as conn:
            assert conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)}, 5000)").scalar_one() is True

    try:
        monkeypatch.setattr(postgres, "READ_PING_IDLE_SECONDS", 0.0)  # every checkout counts as idle
        kill(backend_pid())
        with repository.read_only(reader, wait_seconds=3) as conn:
            assert json.loads(search.search(query, conn=conn))["count"] == 1

        monkeypatch.setattr(postgres, "READ_PING_IDLE_SECONDS", 3600.0)  # never idle: no ping
        kill(backend_pid())
        with pytest.raises(Exception) as caught, repository.read_only(reader, wait_seconds=3) as conn:
            search.search(query, conn=conn)
        assert isinstance(postgres.unavailable(caught.value), postgres.DependencyError)
        with repository.read_only(reader, wait_seconds=3) as conn:
            assert json.loads(search.search(query, conn=conn))["count"] == 1
    finally:
        reader.dispose()


def test_a_restart_fails_one_read_pool_search_not_one_per_pooled_connection(engine, clean_tables):
    """Every backend of the read pool gone at once (PostgreSQL restarted), its connections all used just now
    (so not pinged): the first search fails as a 503 and the pool's other connections are pinged before their
    next use, instead of each failing a search of its own."""
    from threatflow.adapters import postgres
    from threatflow.flows import repository, search

    query = search.parse_search({"srcip": "175.45.176.36"}, now=datetime.now(UTC))
    reader = _read_engine(clean_tables, timeout_ms=search.SEARCH_TIMEOUT_MS)  # DB_POOL_SIZE 2: 2 kept in the pool
    try:
        held = [reader.connect() for _ in range(2)]
        pids = [int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()) for conn in held]
        for conn in held:
            conn.close()
        with engine.connect() as conn:
            for pid in pids:
                assert conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid}, 5000)").scalar_one() is True
        outcomes = []
        for _ in range(3):
            try:
                with repository.read_only(reader, wait_seconds=3) as conn:
                    outcomes.append(json.loads(search.search(query, conn=conn))["count"])
            except Exception as exc:
                assert isinstance(postgres.unavailable(exc), postgres.DependencyError), exc
                outcomes.append("503")
        assert outcomes == ["503", 0, 0], outcomes
    finally:
        reader.dispose()


def test_search_statement_is_prepared_once_per_connection_and_leaves_nothing_set(clean_tables):
    """The page query is a prepared statement with a generic plan: prepared once per connection and shape,
    replanned when a partition appears, and its SET LOCALs end with the transaction."""
    from threatflow.adapters.postgres import create_engine
    from threatflow.flows import search
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": clean_tables}))
    try:
        now = datetime.now(UTC)
        _store(engine, [_row(now - timedelta(minutes=1), src="175.45.176.32")])
        query = search.parse_search({"srcip": "175.45.176.32"}, now=now)
        with engine.connect() as conn:  # one connection throughout (storing uses others)
            # the session's own default (a startup parameter under DB_TIMEOUT_SECONDS), as it was before the search
            default_timeout = conn.exec_driver_sql("SHOW statement_timeout").scalar_one()
            conn.commit()
            assert json.loads(search.search(query, conn=conn))["count"] == 1
            conn.commit()
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == default_timeout != "0"
            assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar_one() == "auto"
            conn.commit()
            # a day that had no partition when the statement was prepared
            _store(engine, [_row(now - timedelta(days=20), src="175.45.176.32")])
            assert json.loads(search.search(query, conn=conn))["count"] == 2
            conn.commit()
            prepared = conn.exec_driver_sql("SELECT count(*), sum(generic_plans) FROM pg_prepared_statements").one()
        assert prepared[0] == 1 and prepared[1] >= 2
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"srcip": "999.1.1.1"}, "srcip"),
        ({"srcip": "1.2.3.4", "limit": "1001"}, "limit"),
        ({"srcip": "1.2.3.4", "limit": "x"}, "limit"),
        ({"srcip": "1.2.3.4", "from": "2026-01-01"}, "from"),
        ({"srcip": "1.2.3.4", "from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
        ({"srcip": "1.2.3.4", "from": "2025-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-20T00:00:00Z"}, "from"),
        ({"srcip": "1.2.3.4", "predicted_cat": "Spam"}, "predicted_cat"),
        ({"srcip": "1.2.3.4", "label": "2"}, "label"),
        ({"srcip": "1.2.3.4", "min_probability": "1.5"}, "min_probability"),
        ({"srcip": "1.2.3.4", "proto": "tcp; drop"}, "proto"),
        ({"srcip": "1.2.3.4", "cursor": "garbage"}, "cursor"),
        ({"srcip": "1.2.3.4", "colour": "red"}, "colour"),
    ],
)
def test_bad_search_parameters_name_the_field(query, field):
    from threatflow.flows import search
    from threatflow.platform.errors import ValidationError

    with pytest.raises(ValidationError) as caught:
        search.parse_search(query, now=datetime(2026, 1, 10, tzinfo=UTC))
    assert caught.value.field == field


def test_timeline_and_host_summary(engine):
    from threatflow.flows import repository

    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    rows = [_row(base + timedelta(minutes=5), cat="Exploits") for _ in range(4)]
    rows += [_row(base + timedelta(hours=1, minutes=5), cat="DoS") for _ in range(2)]
    rows += [_row(base + timedelta(hours=1, minutes=6), attack=False)]
    rows += [_row(base + timedelta(minutes=7), src="59.166.0.9", dst="175.45.176.1", attack=False)]
    _store(engine, rows)
    window = {"start": base - timedelta(days=1), "end": base + timedelta(days=1)}
    with engine.connect() as conn:
        hours = repository.timeline(conn, srcip="175.45.176.1", **window)
        host = repository.host_summary(conn, ip="175.45.176.1", top=10, **window)
    assert [(h["events"], h["attacks"], h["categories"]) for h in hours] == [
        (4, 4, {"Exploits": 4}),
        (3, 2, {"DoS": 2, "Normal": 1}),
    ]
    assert host["as_source"]["events"] == 7 and host["as_source"]["predicted_attacks"] == 6
    assert host["as_destination"]["events"] == 1
    assert {p["ip"] for p in host["peers"]} == {"149.171.126.6", "59.166.0.9"}
    assert host["destination_ports"] == [{"port": 80, "proto": "tcp", "events": 7}]
    assert [c["category"] for c in host["predicted_categories"]] == ["Exploits", "DoS", "Normal"]


def test_retrain_flows_job_reads_the_labelled_events(engine, clean_tables):
    from threatflow.jobs import runs
    from threatflow.platform.config import Settings
    from threatflow.platform.ports import SystemClock

    now = datetime.now(UTC)
    _store(engine, [_row(now - timedelta(minutes=1)), _row(now - timedelta(minutes=2), attack=False)])
    settings = Settings.from_env({"DATABASE_URL": clean_tables})
    ctx = runs.JobContext(
        engine=engine, documents=None, blobs=None, clock=SystemClock(), settings=settings, run_id="t", params={"min_rows": 10}
    )
    result = runs.retrain_flows(ctx)  # too few to train on: skipped before any storage is touched
    assert result["status"] == "skipped" and result["rows"] == 2 and "at least 10" in result["reason"]
    assert runs.retrain_flows(replace(ctx, params={"enabled": False}))["status"] == "disabled"


def test_host_categories_name_the_attack_probability(engine):
    """A flow's `probability` is its attack probability, whatever category was predicted: under Normal the host view's
    `max_probability` was the highest attack probability of a flow judged normal (0.3 below), which read as the
    confidence in Normal. The field says what it is; `max_probability` stays as a deprecated alias."""
    from threatflow.flows import repository

    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    ip = "175.45.176.77"
    rows = [_row(base, src=ip, cat="DoS", prob=0.91), _row(base, src=ip, cat="DoS", prob=0.97)]
    normal = [_row(base, src=ip, attack=False) for _ in range(2)]
    normal[1] = replace(normal[1], probability=0.3)
    _store(engine, rows + normal)
    with engine.connect() as conn:
        host = repository.host_summary(conn, ip=ip, top=10, start=base - timedelta(days=1), end=base + timedelta(days=1))
    by_cat = {c["category"]: c for c in host["predicted_categories"]}
    assert by_cat["Normal"]["max_attack_probability"] == 0.3 and by_cat["DoS"]["max_attack_probability"] == 0.97
    assert by_cat["Normal"]["max_probability"] == 0.3  # the old name, kept for existing clients
