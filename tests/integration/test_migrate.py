import threading

import pg8000.exceptions
import pytest
import sqlalchemy

from threatflow.adapters.postgres import create_engine
from threatflow.db.migrate import DEFAULT_SQL_DIR, applied_versions, discover, migrate
from threatflow.platform.config import Settings
from threatflow.platform.errors import ConfigError

pytestmark = pytest.mark.integration


def _engine(url):
    return create_engine(Settings.from_env({"DATABASE_URL": url}))


def test_migrate_is_idempotent_and_recorded(fresh_database):
    engine = _engine(fresh_database)
    first = migrate(engine, progress=lambda _m: None)
    second = migrate(engine, progress=lambda _m: None)
    expected = tuple(m.version for m in discover())
    assert first.applied == expected and first.already_applied == ()
    assert second.applied == () and second.already_applied == expected
    assert [v for v, _ in applied_versions(engine)] == list(expected)
    engine.dispose()


def test_changed_migration_is_reported(fresh_database, tmp_path):
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x int);")
    engine = _engine(fresh_database)
    migrate(engine, sql_dir=tmp_path, progress=lambda _m: None)
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x bigint);")
    with pytest.raises(ConfigError, match="changed after it was applied"):
        migrate(engine, sql_dir=tmp_path, progress=lambda _m: None)
    engine.dispose()


def test_failed_migration_leaves_nothing_half_applied(fresh_database, tmp_path):
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok (x int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (x int); SELECT * FROM does_not_exist;")
    engine = _engine(fresh_database)
    with pytest.raises(pg8000.exceptions.DatabaseError, match="does_not_exist"):
        migrate(engine, sql_dir=tmp_path, progress=lambda _m: None)
    with engine.connect() as conn:
        tables = {r[0] for r in conn.execute(sqlalchemy.text("SELECT tablename FROM pg_tables WHERE schemaname='public'"))}
    assert "ok" in tables and "half" not in tables
    assert [v for v, _ in applied_versions(engine)] == [1]
    engine.dispose()


def test_concurrent_runners_apply_once(fresh_database):
    engines = [_engine(fresh_database) for _ in range(3)]
    reports = []
    threads = [threading.Thread(target=lambda e=e: reports.append(migrate(e, progress=lambda _m: None))) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    applied = [r.applied for r in reports if r.applied]
    assert len(applied) == 1, reports
    for e in engines:
        e.dispose()


def test_badly_named_file_is_refused(tmp_path):
    (tmp_path / "1_init.sql").write_text("")
    with pytest.raises(ConfigError, match=r"NNNN_name\.sql"):
        discover(tmp_path)


def test_repository_migrations_are_well_formed():
    assert discover(DEFAULT_SQL_DIR), "sql/ has migrations"
