"""Numbered SQL migrations (`sql/NNNN_name.sql`), applied once each, in order.

A session advisory lock makes concurrent runners (two deploys, a test and a dev
stack) wait for each other. Each file runs in its own transaction together with
its row in `schema_migrations`, so a failure leaves nothing half-applied. An
applied file whose text later changes is reported, never silently re-run.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from threatflow.platform.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

DEFAULT_SQL_DIR = Path(__file__).resolve().parents[3] / "sql"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_ID = 0x7F1A_0001  # arbitrary, constant: the advisory lock all runners share


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class MigrationReport:
    applied: tuple[int, ...]
    already_applied: tuple[int, ...]


def discover(sql_dir: Path = DEFAULT_SQL_DIR) -> list[Migration]:
    if not sql_dir.is_dir():
        raise ConfigError(f"migrations folder not found: {sql_dir}")
    migrations = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise ConfigError(f"{path}: migration files are named NNNN_name.sql (lowercase)")
        migrations.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ConfigError(f"{sql_dir}: two migrations share a number")
    return migrations


def migrate(engine: Engine, *, sql_dir: Path = DEFAULT_SQL_DIR, progress: Callable[[str], None] = print) -> MigrationReport:
    migrations = discover(sql_dir)
    applied: list[int] = []
    skipped: list[int] = []
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.autocommit = True
        cur = raw.cursor()
        cur.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("SELECT version, checksum FROM schema_migrations")
            done = {int(v): c for v, c in cur.fetchall()}
            for migration in migrations:
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise ConfigError(f"{migration.path.name} changed after it was applied; add a new migration instead")
                    skipped.append(migration.version)
                    continue
                progress(f"applying {migration.path.name}")
                raw.autocommit = False
                try:
                    cur.execute(migration.sql)
                    cur.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                    raw.commit()
                except Exception:
                    raw.rollback()
                    raise
                finally:
                    raw.autocommit = True
                applied.append(migration.version)
        finally:
            cur.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
            # The connection goes back to the pool: in autocommit it would commit each statement
            # of the next unit of work on its own (a COPY into an ON COMMIT DROP table then fails).
            raw.autocommit = False
    return MigrationReport(tuple(applied), tuple(skipped))


def applied_versions(engine: Engine) -> list[tuple[int, str]]:
    import sqlalchemy

    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text("SELECT version, name FROM schema_migrations ORDER BY version"))
        return [(int(r[0]), str(r[1])) for r in rows]
