"""PostgreSQL through SQLAlchemy and pg8000, sized for serverless instances.

Each function instance handles one request at a time by default, so the pool is
small (DB_POOL_SIZE, default 2) and many instances share Cloud SQL's connection
budget. In the cloud the Cloud SQL Python Connector opens the connections over
the private IP; locally DATABASE_URL points at a plain server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from threatflow.platform.errors import DependencyError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from threatflow.platform.config import Settings


def create_engine(settings: Settings) -> Engine:
    import sqlalchemy

    settings.require_database()
    pool: dict[str, Any] = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_pool_size,
        "pool_timeout": 10,
        "pool_recycle": 1800,  # Cloud SQL closes idle connections; recycle before it does
        "pool_pre_ping": True,
    }
    if settings.database_url:
        return sqlalchemy.create_engine(settings.database_url, connect_args={"timeout": settings.db_timeout_seconds}, **pool)
    return sqlalchemy.create_engine("postgresql+pg8000://", creator=_cloud_sql_creator(settings), **pool)


def _cloud_sql_creator(settings: Settings) -> Any:
    from google.cloud.sql.connector import Connector, IPTypes

    connector = Connector(ip_type=IPTypes.PRIVATE, refresh_strategy="lazy")
    instance = settings.cloud_sql_instance

    def connect() -> Any:
        return connector.connect(
            instance or "",
            "pg8000",
            user=settings.db_user,
            password=settings.db_password,
            db=settings.db_name,
            enable_iam_auth=settings.db_password is None,
        )

    return connect


@contextlib.contextmanager
def unit_of_work(engine: Engine) -> Iterator[Connection]:
    """One transaction per request or message, the one convention for every handler:
    commit when the block ends, roll back when it raises. Services and repositories
    take the connection; they never open or commit a transaction themselves."""
    with engine.begin() as conn:
        yield conn


def ping(engine: Engine) -> None:
    import sqlalchemy

    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise DependencyError(f"PostgreSQL is unreachable: {exc.__class__.__name__}") from exc


def unavailable(exc: BaseException) -> DependencyError | None:
    """PostgreSQL unreachable, refusing connections or shutting down: a 503 naming it, not a 500.

    Connection-level failures only (OperationalError/InterfaceError, a pool
    timeout, a connection invalidated mid-query); a bad query stays a bug."""
    import sqlalchemy.exc

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.TimeoutError)):
            return DependencyError(f"PostgreSQL is unavailable ({seen.__class__.__name__}); retry later", retry_after=5)
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return DependencyError("PostgreSQL connection was lost; retry later", retry_after=5)
        seen = seen.__cause__ or seen.__context__
    return None
