"""PostgreSQL through SQLAlchemy and pg8000, sized for serverless instances.

Each function instance handles one request at a time by default, so the pool is
small (DB_POOL_SIZE, default 2) and many instances share Cloud SQL's connection
budget. In the cloud the Cloud SQL Python Connector opens the connections over
the private IP; locally DATABASE_URL points at a plain server.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from threatflow.platform.errors import DependencyError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from threatflow.platform.config import Settings


@dataclass(frozen=True)
class ReadSession:
    """The fixed settings of a read-only pool's sessions (see create_read_engine)."""

    statement_timeout_ms: int
    generic_plans: bool = False  # plan_cache_mode = force_generic_plan, for named prepared statements

    def startup_params(self) -> dict[str, str]:
        params = {"statement_timeout": str(int(self.statement_timeout_ms)), "default_transaction_read_only": "on"}
        if self.generic_plans:
            params["plan_cache_mode"] = "force_generic_plan"
        return params


# Every session runs in UTC, whatever the server's or the database's default: the hourly roll-ups
# (date_trunc on timestamptz, also when their views are refreshed) and the host view's times follow
# the session's time zone, and a +05:45 default would shift every bucket by 45 minutes.
SESSION_PARAMS = {"TimeZone": "UTC"}

# The client's socket timeout (DB_TIMEOUT_SECONDS) only stops the client: the statement went on in PostgreSQL
# and the connection went back to the pool with its answer still to come. PostgreSQL cancels a statement
# this long before the client would give up (statement_timeout, a session default: SET LOCAL overrides it).
STATEMENT_MARGIN_MS = 500


def statement_timeout_ms(settings: Settings) -> int:
    """The server-side bound of one statement on the engine's connections: under the socket timeout."""
    timeout_ms = int(settings.db_timeout_seconds) * 1000
    return max(1, timeout_ms - min(STATEMENT_MARGIN_MS, timeout_ms // 2))


READ_SESSION = "threatflow.read_session"  # connection info key: the ReadSession a pooled connection was opened with
# A read pool's connection used less than this long ago is not pinged at checkout (see create_read_engine).
READ_PING_IDLE_SECONDS = 10.0
_LAST_USED = "threatflow.last_used"


# When this context's wait for a pooled connection must end (time.monotonic()), if sooner than the
# pool's own timeout: a request's deadline (unit_of_work(wait_seconds=...)). A ContextVar, so each
# thread (each request) has its own.
_CHECKOUT_ENDS: contextvars.ContextVar[float | None] = contextvars.ContextVar("threatflow_checkout_ends", default=None)


def _bounded_pool() -> type[Any]:
    """A QueuePool whose wait for a free connection also ends at the context's _CHECKOUT_ENDS.

    The pool's timeout is one number per engine (pool_timeout, 10 s); a request with its own
    deadline must not wait past it. QueuePool takes its queue class as a class attribute, so
    the bound is the queue's `get`; an exhausted pool then raises sqlalchemy's TimeoutError
    as it does at its own timeout."""
    from sqlalchemy.pool import QueuePool
    from sqlalchemy.util import queue

    class DeadlineQueue(queue.Queue[Any]):
        def get(self, block: bool = True, timeout: float | None = None) -> Any:
            ends = _CHECKOUT_ENDS.get()
            if block and ends is not None:
                left = max(0.0, ends - time.monotonic())  # 0: take an idle connection, never wait
                timeout = left if timeout is None else min(timeout, left)
            return super().get(block, timeout)

    class DeadlineQueuePool(QueuePool):
        _queue_class = DeadlineQueue

    return DeadlineQueuePool


def _discard_on_driver_fault(engine: Engine) -> Engine:
    """Invalidate a connection when the driver raised an error of its own code, not the server's, mid-statement.

    pg8000 sends a statement's parse and describe requests, then converts its parameters: a value it cannot convert
    (a datetime whose UTC instant is before year 1: OverflowError) raised with the server's answers still unread on
    the socket, and the pool handed the connection on. Each later statement on it read the answer of the one before
    ("'NoneType' object has no attribute 'append'", the pre-ping included): a 500 for every request that got it, any
    user's. A server error (a DBAPI error) leaves the protocol in step and keeps the connection."""
    from sqlalchemy import event

    @event.listens_for(engine, "handle_error")
    def driver_fault(context: Any) -> None:
        if context.connection is not None and not isinstance(context.original_exception, engine.dialect.loaded_dbapi.Error):
            context.is_disconnect = True

    return engine


def _url_connect_args(settings: Settings, *, startup_params: dict[str, str]) -> dict[str, Any]:
    """pg8000's arguments for a DATABASE_URL: the socket timeout, the session's startup parameters, and the TLS the
    URL's host implies. A server on the loopback address is asked for no TLS: pg8000
    otherwise builds a TLS context for every connection (~23 ms of CPU loading the system's CA store) to offer TLS,
    unverified, to a server on the same machine, where it protects nothing. Any other host keeps pg8000's default.
    The host is the one pg8000 connects to: SQLAlchemy's dialect lets a `?host=` in the query override the one before
    the path (`@127.0.0.1/db?host=db.example.com` went to db.example.com without TLS)."""
    import ipaddress

    from sqlalchemy.engine import make_url

    args: dict[str, Any] = {"timeout": settings.db_timeout_seconds, "startup_params": startup_params}
    url = make_url(str(settings.database_url))
    host = url.query.get("host", url.host)
    if not isinstance(host, str):  # none, or the query's host given more than once
        return args
    try:
        loopback = host.lower() == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    return {**args, "ssl_context": False} if loopback else args


def create_engine(settings: Settings) -> Engine:
    import sqlalchemy

    settings.require_database()
    pool: dict[str, Any] = {
        "poolclass": _bounded_pool(),
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_pool_size,
        "pool_timeout": 10,
        "pool_recycle": 1800,  # Cloud SQL closes idle connections; recycle before it does
        "pool_pre_ping": True,
    }
    startup = {**SESSION_PARAMS, "statement_timeout": str(statement_timeout_ms(settings))}
    if settings.database_url:
        connect_args = _url_connect_args(settings, startup_params=startup)
        return _discard_on_driver_fault(sqlalchemy.create_engine(settings.database_url, connect_args=connect_args, **pool))
    engine = sqlalchemy.create_engine("postgresql+pg8000://", creator=_cloud_sql_creator(settings, startup_params=startup), **pool)
    return _discard_on_driver_fault(engine)


def create_read_engine(settings: Settings, *, session: ReadSession) -> Engine:
    """A pool for a hot read path that costs one round trip per statement.

    The engine's pool spends four more on every request: the pre-ping, pg8000's BEGIN, a SET LOCAL
    for the timeout, and the COMMIT; each is also a wait for the GIL when other threads are busy.
    Here the session's settings are startup parameters (sent once, with the connection), the
    connection is in autocommit (no BEGIN or COMMIT; every statement is its own read-only
    transaction), and a connection is pinged at checkout only after READ_PING_IDLE_SECONDS idle:
    a just-used one is alive, and if the server went away in between, the statement fails as a
    lost connection (a 503 to retry) and the pool drops it, then pings each of its other connections
    at its next checkout (a restart took them all: one failed search, not one per connection). `default_transaction_read_only` makes
    any write through this pool an error. A second small pool per instance, for the one function
    that uses it: its connections count against Cloud SQL's budget like the engine's."""
    import sqlalchemy
    from sqlalchemy import event

    settings.require_database()
    pool: dict[str, Any] = {
        "poolclass": _bounded_pool(),  # a search waits for a connection no longer than it may run (checkout_within)
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_pool_size,
        "pool_timeout": 10,
        "pool_recycle": 1800,
        "pool_pre_ping": False,  # the idle check below
        "isolation_level": "AUTOCOMMIT",
    }
    startup = {**SESSION_PARAMS, **session.startup_params()}
    if settings.database_url:
        connect_args = _url_connect_args(settings, startup_params=startup)
        engine = sqlalchemy.create_engine(settings.database_url, connect_args=connect_args, **pool)
    else:
        engine = sqlalchemy.create_engine("postgresql+pg8000://", creator=_cloud_sql_creator(settings, startup_params=startup), **pool)
    _discard_on_driver_fault(engine)

    @event.listens_for(engine, "connect")
    def opened(dbapi_connection: Any, record: Any) -> None:
        record.info[READ_SESSION] = session
        record.info[_LAST_USED] = time.monotonic()

    lost = {"at": 0.0}  # when a connection of this pool was last dropped as gone

    @event.listens_for(engine, "invalidate")
    def invalidated(dbapi_connection: Any, record: Any, exception: BaseException | None) -> None:
        lost["at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        last_used = record.info.get(_LAST_USED, 0.0)
        if time.monotonic() - last_used < READ_PING_IDLE_SECONDS and last_used > lost["at"]:
            return
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(";")
            finally:
                cursor.close()
        except engine.dialect.loaded_dbapi.Error as exc:
            # the pool retries the checkout with a new connection
            raise sqlalchemy.exc.DisconnectionError(f"idle read connection is gone: {exc.__class__.__name__}") from exc

    @event.listens_for(engine, "checkin")
    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info[_LAST_USED] = time.monotonic()

    return engine


def _cloud_sql_creator(settings: Settings, *, startup_params: dict[str, str] | None = None) -> Any:
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
            startup_params=startup_params,  # the connector passes it on to pg8000.connect
        )

    return connect


@contextlib.contextmanager
def unit_of_work(engine: Engine, *, wait_seconds: float | None = None) -> Iterator[Connection]:
    """One transaction per request or message, the one convention for every handler:
    commit when the block ends, roll back when it raises. Services and repositories
    take the connection; they never open or commit a transaction themselves.

    `wait_seconds` bounds the block's waits for a pooled connection (what is left of a
    request's deadline) below the pool's own timeout, for the engines create_engine makes:
    past it, sqlalchemy.exc.TimeoutError, as when the pool's timeout passes."""
    with checkout_within(wait_seconds), engine.begin() as conn:
        try:
            yield conn
        except TimeoutError:
            conn.invalidate()  # the socket timed out mid-answer: the connection is out of step, never reuse it
            raise


def delete_in_batches(
    engine: Engine, *, delete: Callable[[Connection, int], int], remaining: Callable[[Connection], bool], limit: int, batch: int
) -> tuple[int, int, bool]:
    """A retention job's delete, bounded: `delete(conn, n)` removes at most n rows and says how many it did, one
    transaction a batch (short locks and statements whatever the backlog), until `limit` rows or fewer than asked;
    then `remaining(conn)` says whether rows are left for the next run. (deleted, batches, more)."""
    deleted = batches = 0
    while deleted < limit:
        wanted = min(batch, limit - deleted)
        with unit_of_work(engine) as conn:
            done = delete(conn, wanted)
        deleted += done
        batches += 1
        if done < wanted:
            break
    with unit_of_work(engine) as conn:
        more = remaining(conn)
    return deleted, batches, more


@contextlib.contextmanager
def checkout_within(wait_seconds: float | None) -> Iterator[None]:
    """Within the block, a wait for a pooled connection (of the pools create_engine and
    create_read_engine make) ends after `wait_seconds` at most, whatever the pool's own timeout;
    past it, sqlalchemy.exc.TimeoutError, as when the pool's timeout passes. None: the pool's."""
    token = _CHECKOUT_ENDS.set(None if wait_seconds is None else time.monotonic() + wait_seconds)
    try:
        yield
    finally:
        _CHECKOUT_ENDS.reset(token)


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
    timeout, a connection invalidated mid-query), a statement cancelled at its timeout, and a transaction aborted
    for racing another (deadlock, serialization failure); a bad query stays a bug."""
    import sqlalchemy.exc

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.TimeoutError)):
            return DependencyError(f"PostgreSQL is unavailable ({seen.__class__.__name__}); retry later", retry_after=5)
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return DependencyError("PostgreSQL connection was lost; retry later", retry_after=5)
        if isinstance(seen, TimeoutError):  # pg8000's socket timeout, raised as it is
            return DependencyError("PostgreSQL did not answer within DB_TIMEOUT_SECONDS; retry later", retry_after=5)
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and _cancelled(seen.orig):
            return DependencyError("PostgreSQL cancelled a statement past its time (statement_timeout); retry later", retry_after=5)
        lost_race = _RETRY_SQLSTATES.get(_sqlstate(seen.orig) or "") if isinstance(seen, sqlalchemy.exc.DBAPIError) else None
        if lost_race:  # the transaction lost a race, not a bug: run again, it succeeds (writes lock in id order to make it rare)
            return DependencyError(f"PostgreSQL {lost_race}; retry", retry_after=1)
        seen = seen.__cause__ or seen.__context__
    return None


def lost_race(exc: BaseException) -> bool:
    """Whether `exc` (or an error it was raised from or during) is PostgreSQL aborting the transaction for racing
    another one: a deadlock (40P01) or a serialization failure (40001). The same work succeeds when run again."""
    import sqlalchemy.exc

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and (_sqlstate(seen.orig) or "") in _RETRY_SQLSTATES:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# SQLSTATEs of a transaction PostgreSQL aborted for racing another one: the same work succeeds when run again.
_RETRY_SQLSTATES = {
    "40P01": "aborted the transaction to break a deadlock",
    "40001": "aborted the transaction on a serialization failure",
}


def _sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE of pg8000's error for what PostgreSQL answered (its first argument: the server's fields)."""
    detail = exc.args[0] if exc is not None and exc.args else None
    return str(detail.get("C")) if isinstance(detail, dict) and detail.get("C") is not None else None


def _cancelled(exc: BaseException | None) -> bool:
    """pg8000's error for a statement PostgreSQL cancelled at its statement_timeout (SQLSTATE 57014)."""
    return _sqlstate(exc) == "57014"
