"""The flow-event store: every SQL statement of the flows domain lives here.

Functions take a SQLAlchemy `Connection`; the caller owns the transaction (one
unit of work per request or message). Events are written in one statement per
batch (`jsonb_to_recordset` + `ON CONFLICT DO NOTHING RETURNING`), so a re-sent
batch inserts nothing twice and the caller learns which events are new.
"""

from __future__ import annotations

import contextlib
import functools
import io
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from threatflow.adapters.postgres import READ_SESSION, checkout_within, unit_of_work
from threatflow.platform.errors import DependencyError, ValidationError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

# The numeric model inputs kept with each event, in the partitioned UNSW-NB15
# column order (ml's features module names the same columns). Stored as real[]
# (float32, the precision the model reads) so labelled events can be retrained on;
# a feature the flow did not carry (e.g. `rate` in the raw layout) is NULL.
STORED_FEATURES: tuple[str, ...] = (
    "dur", "spkts", "dpkts", "sbytes", "dbytes", "rate", "sttl", "dttl", "sload", "dload", "sloss", "dloss",
    "sinpkt", "dinpkt", "sjit", "djit", "swin", "stcpb", "dtcpb", "dwin", "tcprtt", "synack", "ackdat",
    "smean", "dmean", "trans_depth", "response_body_len", "ct_srv_src", "ct_state_ttl", "ct_dst_ltm",
    "ct_src_dport_ltm", "ct_dst_sport_ltm", "ct_dst_src_ltm", "is_ftp_login", "ct_ftp_cmd", "ct_flw_http_mthd",
    "ct_src_ltm", "ct_srv_dst", "is_sm_ips_ports",
)  # fmt: skip

VIEWS = ("flow_attack_categories_hourly", "flow_bytes_by_proto_hourly")
PARTITION_PREFIX = "flow_events_p"


@dataclass(frozen=True)
class EventRow:
    """One scored flow, ready to store."""

    event_time: datetime
    event_key: str
    srcip: str | None
    sport: int | None
    dstip: str | None
    dsport: int | None
    proto: str
    service: str
    state: str
    stime: datetime | None
    ltime: datetime | None
    features: list[float | None]
    label: int | None
    attack_cat: str | None
    predicted_attack: bool
    probability: float
    predicted_cat: str
    model_version: str
    source: str


@dataclass(frozen=True)
class StoredEvent:
    """What ingest needs to know about a newly stored event (for the flow→IoC bridge)."""

    event_time: datetime
    event_key: str
    srcip: str | None
    predicted_attack: bool
    probability: float
    predicted_cat: str


# The batch is COPY'd (text format) into a temporary staging table, then moved into
# flow_events by one INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING: COPY parses
# each value in the server's C input functions, where binding a jsonb document (the
# previous path) paid for a JSON parse plus a text round trip per field, and the conflict
# clause keeps a re-send a no-op that tells the caller which events are new. The staging
# table lives for the transaction (dropped after use, ON COMMIT DROP if an error cuts in),
# so a failed batch leaves nothing behind and a second batch in one transaction starts clean.
_STAGED_COLUMNS = (
    "event_time, event_key, srcip, sport, dstip, dsport, proto, service, state, stime, ltime, features, label, attack_cat,"
    " predicted_attack, probability, predicted_cat, model_version, source"
)
_STAGE = """
CREATE TEMP TABLE flow_events_staged (
    event_time timestamptz, event_key uuid, srcip inet, sport integer, dstip inet, dsport integer,
    proto text, service text, state text, stime timestamptz, ltime timestamptz, features real[],
    label smallint, attack_cat text, predicted_attack boolean, probability real, predicted_cat text,
    model_version text, source text
) ON COMMIT DROP
"""
_COPY = f"COPY flow_events_staged ({_STAGED_COLUMNS}) FROM STDIN"
_INSERT = """
INSERT INTO flow_events (event_time, event_key, srcip, sport, dstip, dsport, proto, service, state, stime, ltime,
                         dur, sbytes, dbytes, spkts, dpkts, features, label, attack_cat,
                         predicted_attack, probability, predicted_cat, model_version, source)
SELECT event_time, event_key, srcip, sport, dstip, dsport, proto, service, state, stime, ltime,
       features[1], features[4]::bigint, features[5]::bigint, features[2]::integer, features[3]::integer, features,
       label, attack_cat, predicted_attack, probability, predicted_cat, model_version, source
FROM flow_events_staged
ON CONFLICT DO NOTHING
RETURNING (extract(epoch FROM event_time) * 1000000)::bigint, event_key::text, host(srcip), predicted_attack, probability, predicted_cat
"""


def missing_partitions(conn: Connection, days: Iterable[date]) -> list[date]:
    """The days among `days` without an attached partition of flow_events, asked of the catalog (one statement)."""
    from sqlalchemy import text

    wanted = {f"{PARTITION_PREFIX}{d:%Y%m%d}": d for d in days}
    if not wanted:
        return []
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'flow_events'::regclass AND c.relname = ANY(CAST(:names AS text[]))"
        ),
        {"names": list(wanted)},
    )
    attached = {name for (name,) in rows}
    return sorted(day for name, day in wanted.items() if name not in attached)


def ensure_partitions(conn: Connection, days: Iterable[date]) -> list[str]:
    """Create the daily partitions these days need (idempotent, safe under concurrency)."""
    from sqlalchemy import text

    return [
        str(conn.execute(text("SELECT flow_events_ensure_partition(CAST(:d AS date))"), {"d": d}).scalar_one()) for d in sorted(set(days))
    ]


class MissingPartitionError(DependencyError):
    """The insert found no partition for a row's day: dropped (flow-retention, in another instance) between
    the batch's look at the catalog and its insert. Retryable: the retry looks again and creates it."""


def _no_partition(exc: Exception) -> bool:
    """PostgreSQL's 'no partition of relation ... found for row' (23514, also the code of a CHECK violation)."""
    fields = next((a for a in getattr(getattr(exc, "orig", None), "args", ()) if isinstance(a, dict)), {})
    return fields.get("C") == "23514" and str(fields.get("M", "")).startswith("no partition of relation")


def source_observed_at(conn: Connection, source: str, *, now: datetime, oldest: datetime) -> datetime:
    """When `source` was first observed (recorded now if never, or if its record is older than `oldest`,
    the retention window, whose events are gone): the event time of its flows without a stime of their own.
    One upsert; concurrent first batches of a source wait on its row and read the same time."""
    from sqlalchemy import text

    observed = conn.execute(
        text(
            "INSERT INTO flow_event_sources AS s (source, observed_at) VALUES (:source, :now)"
            " ON CONFLICT (source) DO UPDATE SET observed_at ="
            " CASE WHEN s.observed_at < :oldest THEN EXCLUDED.observed_at ELSE s.observed_at END"
            " RETURNING s.observed_at"
        ),
        {"source": source, "now": now, "oldest": oldest},
    ).scalar_one()
    return observed.astimezone(UTC)  # type: ignore[no-any-return]


def prune_sources(conn: Connection, *, oldest: datetime) -> int:
    """Delete the first-observed times older than the retention window (flow-retention); returns how many."""
    from sqlalchemy import text

    return int(conn.execute(text("DELETE FROM flow_event_sources WHERE observed_at < :oldest"), {"oldest": oldest}).rowcount)


def insert_events(conn: Connection, rows: Sequence[EventRow]) -> list[StoredEvent]:
    """Insert a batch; returns only the events that were new (a re-send returns []).

    In the caller's transaction: a database error (a value out of a column's range, a
    missing partition) fails the whole batch and the caller's rollback undoes it."""
    import sqlalchemy.exc

    if not rows:
        return []
    data = copy_text(rows)
    conn.exec_driver_sql(_STAGE)
    dbapi = conn.dialect.loaded_dbapi
    cursor: Any = conn.connection.cursor()  # pg8000's cursor: its execute takes stream=
    try:
        cursor.execute(_COPY, stream=io.BytesIO(data))
    except dbapi.Error as exc:  # as SQLAlchemy would raise it: unavailable() maps lost connections to a 503
        raise sqlalchemy.exc.DBAPIError.instance(_COPY, None, exc, dbapi.Error) from exc
    finally:
        cursor.close()
    try:
        result = conn.exec_driver_sql(_INSERT).all()
    except sqlalchemy.exc.DBAPIError as exc:
        if _no_partition(exc):
            raise MissingPartitionError(
                "a day of this batch has no flow_events partition any more (flow-retention dropped it); retry", retry_after=1
            ) from None
        raise
    conn.exec_driver_sql("DROP TABLE flow_events_staged")
    return [StoredEvent(_EPOCH + timedelta(microseconds=int(r[0])), r[1], r[2], bool(r[3]), float(r[4]), r[5]) for r in result]


_NULL = "\\N"
_BRACKETS = bytes.maketrans(b"[]", b"{}")
_FEATURES = msgspec.json.Encoder()


@functools.lru_cache(maxsize=4096)
def _copy_escaped(value: str) -> str:
    """A text value for COPY's text format: backslash, tab, newline and carriage return escaped.
    Cached: the text columns (proto, service, state, categories, version, source) repeat a few values."""
    if "\x00" in value:
        raise ValueError("PostgreSQL text cannot hold a NUL character")
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def copy_text(rows: Sequence[EventRow]) -> bytes:
    """The rows in COPY's text format (tab-separated, \\N for NULL), in _STAGED_COLUMNS order.

    Addresses and keys are already canonical (ipaddress/uuid text: no character to escape);
    the feature array goes through msgspec ([1.0,null] -> {1.0,null}: the array input reads
    null as NULL), which is several times cheaper than formatting 39 floats in Python."""
    esc = _copy_escaped
    encode = _FEATURES.encode
    lines = []
    for r in rows:
        lines.append(
            "\t".join(
                (
                    r.event_time.isoformat(),
                    r.event_key,
                    _NULL if r.srcip is None else r.srcip,
                    _NULL if r.sport is None else str(r.sport),
                    _NULL if r.dstip is None else r.dstip,
                    _NULL if r.dsport is None else str(r.dsport),
                    esc(r.proto),
                    esc(r.service),
                    esc(r.state),
                    _NULL if r.stime is None else r.stime.isoformat(),
                    _NULL if r.ltime is None else r.ltime.isoformat(),
                    encode(r.features).translate(_BRACKETS).decode(),
                    _NULL if r.label is None else str(int(r.label)),
                    _NULL if r.attack_cat is None else esc(r.attack_cat),
                    "t" if r.predicted_attack else "f",
                    repr(float(r.probability)),
                    esc(r.predicted_cat),
                    esc(r.model_version),
                    esc(r.source),
                )
            )
        )
    lines.append("")
    return "\n".join(lines).encode()


# -- search ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventQuery:
    """A validated search (see flows/search.py): every value here is already checked."""

    start: datetime
    end: datetime
    limit: int
    srcip: str | None = None
    dstip: str | None = None
    proto: str | None = None
    service: str | None = None
    label: int | None = None
    attack_cat: str | None = None
    predicted_attack: bool | None = None
    predicted_cat: str | None = None
    min_probability: float | None = None
    after_time: datetime | None = None
    after_key: str | None = None
    query_id: str = ""  # what its cursors are bound to (search.query_id)


# A search page is one statement that PostgreSQL answers with one row: the page's events
# as a JSON array (built by the server, passed through to the response untouched), their
# count, and the last event's time and key for the next cursor. The events are the
# covering indexes' columns, so the listing is an index-only scan; the server writes
# them as Python did (ISO times in UTC, addresses without a mask, probability to 6
# places: a real times 10^6 is exact in float8, so rounding it is Python's round(p, 6)),
# so the JSON a client sees is unchanged. Measured on the search benchmark:
# decoding 50 rows x 17 columns in pg8000 and re-encoding them cost more CPU than the
# query itself.
_ISO_UTC = (
    "to_char(e.event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS')"
    " || CASE WHEN mod(date_part('microseconds', e.event_time)::bigint, 1000000) = 0 THEN ''"
    " ELSE to_char(e.event_time AT TIME ZONE 'UTC', '.US') END || '+00:00'"
)
_PAGE = (
    "SELECT count(*)::integer,"
    " COALESCE('[' || string_agg(row_to_json(j)::text, ',' ORDER BY e.event_time DESC, e.event_key DESC) || ']', '[]'),"
    " (array_agg(j.event_time ORDER BY e.event_time, e.event_key))[1], (array_agg(j.event_key ORDER BY e.event_time, e.event_key))[1]"
    " FROM (SELECT event_time, event_key, srcip, sport, dstip, dsport, proto, service, state, sbytes, dbytes, label, attack_cat,"
    " predicted_attack, probability, predicted_cat, model_version FROM flow_events WHERE {where}"
    " ORDER BY event_time DESC, event_key DESC LIMIT :limit) e"
    f" CROSS JOIN LATERAL (SELECT {_ISO_UTC} AS event_time, e.event_key::text AS event_key, host(e.srcip) AS srcip, e.sport,"
    " host(e.dstip) AS dstip, e.dsport, e.proto, e.service, e.state, e.sbytes, e.dbytes, e.label, e.attack_cat, e.predicted_attack,"
    " round(e.probability::float8 * 1000000) / 1000000 AS probability, e.predicted_cat, e.model_version) j"
)
# Prepared statements kept per connection: one per shape of search (which filters are set).
_PREPARED = "threatflow.flows.search"
_MAX_PREPARED = 32


@dataclass(frozen=True)
class EventPage:
    """One page of a search: `events` is a JSON array (UTF-8), newest first."""

    count: int
    events: bytes
    last_time: str | None  # the last event's event_time and event_key, as listed
    last_key: str | None


class QueryTimeout(Exception):
    """The statement ran past the timeout its caller set."""


def search_sql(q: EventQuery) -> tuple[str, dict[str, Any]]:
    """The page query for a search (named :parameters); exposed so the benchmark can EXPLAIN it."""
    # A cursor means "older than this event": the window ends there, so the newer days are pruned
    # (a forged cursor at datetime.max must not overflow).
    end = q.end if q.after_time is None or q.after_time >= q.end else q.after_time + timedelta(microseconds=1)
    where = ["event_time >= :start", "event_time < :end"]
    params: dict[str, Any] = {"start": q.start, "end": end, "limit": q.limit}
    for column in ("srcip", "dstip"):
        value = getattr(q, column)
        if value is not None:
            where.append(f"{column} = CAST(:{column} AS inet)")
            params[column] = value
    for column in ("proto", "service", "label", "attack_cat", "predicted_attack", "predicted_cat"):
        value = getattr(q, column)
        if value is not None:
            where.append(f"{column} = :{column}")
            params[column] = value
    if q.min_probability is not None:
        where.append("probability >= :min_probability")
        params["min_probability"] = q.min_probability
    if q.after_time is not None and q.after_key is not None:
        where.append("(event_time, event_key) < (:after_time, CAST(:after_key AS uuid))")
        params.update(after_time=q.after_time, after_key=q.after_key)
    return _PAGE.format(where=" AND ".join(where)), params


@contextlib.contextmanager
def read_only(engine: Engine, *, wait_seconds: float) -> Iterator[Connection]:
    """The unit of work of a request that only reads (a search), waiting at most `wait_seconds`
    for a pooled connection (then sqlalchemy's TimeoutError: a 503 to retry).

    On a read pool's connection (adapters.postgres.create_read_engine: autocommit, read-only
    sessions) it sends nothing of its own. On the engine's, it is unit_of_work ending in one round
    trip: pg8000's commit() takes three (parse, describe, execute); COMMIT sent as a simple query
    takes one, and the pool's rollback on check-in then finds no transaction and sends nothing.
    On an error the block rolls back as unit_of_work does."""
    with checkout_within(wait_seconds), engine.connect() as conn:
        yield conn
        if not conn.connection.dbapi_connection.autocommit:  # type: ignore[union-attr]
            conn.exec_driver_sql("COMMIT")


def search_page(conn: Connection, q: EventQuery, *, timeout_ms: int) -> EventPage:
    """One page of events, newest first, in the caller's transaction, under `timeout_ms`
    (QueryTimeout past it; the transaction is then aborted).

    A search by address (up to 92 days) runs as a server-side prepared statement, kept per
    connection, with a generic plan: planning a month of daily partitions costs several ms,
    more than the scan, while the generic plan prunes the partitions outside the window when
    it runs and, newest partition first, stops at the page's last row. One round trip per page.
    A search without an address spans at most 7 days, so planning it is cheap, and a plan made
    for its values (a rare category, a narrow window) beats a generic one: it is planned each time.
    On a read pool's connection whose session already has this timeout (and, for an address,
    generic plans) nothing else is sent; otherwise the timeout and the plan mode are SET LOCAL in
    one statement: they end with the transaction and never leak to the connection's next user."""
    import sqlalchemy.exc
    from sqlalchemy import text

    sql, params = search_sql(q)
    generic = q.srcip is not None or q.dstip is not None
    session = conn.info.get(READ_SESSION)
    if session is None or session.statement_timeout_ms != timeout_ms or session.generic_plans != generic:
        if session is not None:  # autocommit: a SET LOCAL would not hold, so this pool cannot run this search
            raise ValueError(f"a read session {session} cannot run a search bounded at {timeout_ms} ms (generic plan: {generic})")
        settings = f"SET LOCAL statement_timeout = {int(timeout_ms)}"
        conn.exec_driver_sql(settings + ("; SET LOCAL plan_cache_mode = force_generic_plan" if generic else ""))
    if generic:
        count, events, last_time, last_key = _run_prepared(conn, sql, params)[0]
    else:
        try:
            count, events, last_time, last_key = conn.execute(text(sql), params).one()
        except sqlalchemy.exc.DBAPIError as exc:
            if exc.orig is not None and _timed_out(exc.orig):
                raise QueryTimeout(str(exc.orig)) from None
            raise
    return EventPage(int(count), events.encode(), last_time, last_key)


def _timed_out(exc: BaseException) -> bool:
    """pg8000's error for a statement cancelled by statement_timeout (SQLSTATE 57014)."""
    detail = exc.args[0] if exc.args else None
    return isinstance(detail, dict) and detail.get("C") == "57014"


def _run_prepared(conn: Connection, sql: str, params: dict[str, Any]) -> tuple[tuple[Any, ...], ...]:
    """Run `sql` as a named prepared statement of this connection (prepared on first use).

    SQLAlchemy and the DB-API have no prepared statements, so this is pg8000's own API on
    the connection SQLAlchemy checked out; its errors are raised as SQLAlchemy's, as any
    other statement's would be (a lost database is then a 503, and the connection is dropped)."""
    import sqlalchemy.exc

    fairy = conn.connection
    raw: Any = fairy.dbapi_connection
    dbapi = conn.dialect.loaded_dbapi
    prepared: dict[str, Any] = fairy.info.setdefault(_PREPARED, {})
    try:
        statement = prepared.get(sql)
        if statement is None or statement.con is not raw:
            if len(prepared) >= _MAX_PREPARED:
                prepared.pop(next(iter(prepared))).close()  # the oldest shape
            statement = prepared[sql] = raw.prepare(sql)
        return statement.run(**params)  # type: ignore[no-any-return]
    except dbapi.Error as exc:
        if _timed_out(exc):
            raise QueryTimeout(str(exc)) from None
        lost = isinstance(exc, dbapi.InterfaceError)
        if lost:
            conn.invalidate()
        raise sqlalchemy.exc.DBAPIError.instance(sql, params, exc, dbapi.Error, connection_invalidated=lost) from exc


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- hunting -------------------------------------------------------------------------------

# The hunting views and roll-ups read one address's (or the views') rows over a window of up to
# 92 days: a victim address with millions of events must not hold a connection for minutes. The
# budget is the request's, not each statement's: the host view runs six statements (seven with the
# linked IoC), and a 5 s timeout apiece held its connection for up to 35 s. It covers the wait for
# a pooled connection too: that wait was the pool's own 10 s, then a 503.
HUNT_TIMEOUT_MS = 5000  # FLOWS_HUNT_TIMEOUT_MS's default; the routes pass the configured budget
MIN_STATEMENT_MS = 1  # SET statement_timeout = 0 would mean no timeout at all


def set_timeout(conn: Connection, timeout_ms: int) -> None:
    """Bound the next statements of this transaction (SET LOCAL: it ends with the transaction)."""
    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout_ms)}")


class Deadline:
    """One hunting request's time budget (HUNT_TIMEOUT_MS unless given) from before it takes a
    connection to its last statement.

    `unit_of_work` waits for a pooled connection no longer than the budget; each statement runs
    under what is left of it (`arm`: SET LOCAL statement_timeout = the remaining milliseconds), so
    the whole request holds its connection for at most the budget plus the round trips; past it,
    when the server cancels a statement, the answer is a 400 asking for a narrower window (field
    `from`), not a 500; a budget spent in the pool's queue, wholly or half of it, is a 503 to retry.
    `clock` is monotonic seconds."""

    def __init__(self, what: str, *, budget_ms: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.budget_ms = HUNT_TIMEOUT_MS if budget_ms is None else budget_ms
        self._clock = clock
        self._ends = clock() + self.budget_ms / 1000
        self._queued_ms = 0  # how long unit_of_work waited for its connection

    def remaining_ms(self) -> int:
        return int((self._ends - self._clock()) * 1000)

    def exceeded(self) -> ValidationError | DependencyError:
        """The 400 asking for a narrower window; the 503 to retry when the wait for a connection took half the
        budget or more (then the instance's load, not the window, is what ran it out)."""
        if self._queued_ms * 2 >= self.budget_ms:
            return self._busy()
        return ValidationError(f"this {self.what} covers too many events to answer in time; narrow from/to", field="from")

    def _busy(self) -> DependencyError:
        message = f"PostgreSQL: this instance's connections were busy for most of this {self.what}'s {self.budget_ms} ms budget; retry"
        return DependencyError(message, retry_after=1)

    def arm(self, conn: Connection) -> None:
        """Give the next statement what is left of the budget; raise the 400 if nothing is."""
        remaining = self.remaining_ms()
        if remaining < MIN_STATEMENT_MS:
            raise self.exceeded()
        set_timeout(conn, remaining)

    @contextlib.contextmanager
    def cancellations(self) -> Iterator[None]:
        """A statement the server cancelled (statement_timeout, SQLSTATE 57014) becomes the 400."""
        from sqlalchemy.exc import DBAPIError

        try:
            yield
        except DBAPIError as exc:  # pg8000 raises the server's errors as DatabaseError, whatever the SQLSTATE
            if exc.orig is not None and _timed_out(exc.orig):
                raise self.exceeded() from None
            raise

    @contextlib.contextmanager
    def unit_of_work(self, engine: Engine) -> Iterator[Connection]:
        """The request's unit of work, its wait for a pooled connection within the budget. A pool
        with none free until the budget is spent is a 503 to retry (Retry-After 1), not the 400 of a
        window too wide: the caller's request is fine, the instance is busy."""
        from sqlalchemy.exc import TimeoutError as PoolTimeout

        asked = self._clock()
        try:
            with unit_of_work(engine, wait_seconds=max(0, self.remaining_ms()) / 1000) as conn:
                self._queued_ms = int((self._clock() - asked) * 1000)
                yield conn
        except PoolTimeout:
            raise self._busy() from None

    def execute(self, conn: Connection, sql: str, params: dict[str, Any] | None = None) -> Any:
        """Arm, then run one statement within the budget; returns its (buffered) result."""
        from sqlalchemy import text

        self.arm(conn)
        with self.cancellations():
            return conn.execute(text(sql), params or {})


def _deadline(deadline: Deadline | None, what: str) -> Deadline:
    return deadline if deadline is not None else Deadline(what)


def timeline(conn: Connection, *, srcip: str, start: datetime, end: datetime, deadline: Deadline | None = None) -> list[dict[str, Any]]:
    """Per-hour event counts for one source, split by predicted category (index-only on srcip)."""
    rows = _deadline(deadline, "timeline").execute(
        conn,
        "SELECT date_trunc('hour', event_time) AS hour, predicted_cat, count(*), count(*) FILTER (WHERE predicted_attack),"
        " COALESCE(sum(sbytes), 0), COALESCE(sum(dbytes), 0)"
        " FROM flow_events WHERE srcip = CAST(:ip AS inet) AND event_time >= :start AND event_time < :end"
        " GROUP BY 1, 2 ORDER BY 1, 2",
        {"ip": srcip, "start": start, "end": end},
    )
    hours: dict[datetime, dict[str, Any]] = {}
    for hour, cat, events, attacks, sbytes, dbytes in rows:
        bucket = hours.setdefault(hour, {"hour": hour.isoformat(), "events": 0, "attacks": 0, "sbytes": 0, "dbytes": 0, "categories": {}})
        bucket["events"] += int(events)
        bucket["attacks"] += int(attacks)
        bucket["sbytes"] += int(sbytes)
        bucket["dbytes"] += int(dbytes)
        bucket["categories"][cat] = int(events)
    return list(hours.values())


def host_summary(
    conn: Connection, *, ip: str, start: datetime, end: datetime, top: int, deadline: Deadline | None = None
) -> dict[str, Any]:
    """First/last seen, peers, ports and predicted categories of one address, both directions:
    six statements, all within one deadline (the caller's, to cover its own statements too)."""
    bound = _deadline(deadline, "host view")
    params = {"ip": ip, "start": start, "end": end, "top": top}
    window = "event_time >= :start AND event_time < :end"
    out: dict[str, Any] = {}
    for role, column in (("as_source", "srcip"), ("as_destination", "dstip")):
        first, last, events, attacks, sbytes, dbytes = bound.execute(
            conn,
            "SELECT min(event_time), max(event_time), count(*), count(*) FILTER (WHERE predicted_attack),"
            f" COALESCE(sum(sbytes), 0), COALESCE(sum(dbytes), 0) FROM flow_events WHERE {column} = CAST(:ip AS inet) AND {window}",
            params,
        ).one()
        out[role] = {
            "first_seen": first.isoformat() if first else None,
            "last_seen": last.isoformat() if last else None,
            "events": int(events),
            "predicted_attacks": int(attacks),
            "sbytes": int(sbytes),
            "dbytes": int(dbytes),
        }
    peer_rows = bound.execute(
        conn,
        "SELECT host(peer), sum(n)::bigint, sum(a)::bigint FROM ("
        f" SELECT dstip AS peer, count(*) AS n, count(*) FILTER (WHERE predicted_attack) AS a FROM flow_events"
        f"  WHERE srcip = CAST(:ip AS inet) AND {window} AND dstip IS NOT NULL GROUP BY 1"
        " UNION ALL"
        f" SELECT srcip, count(*), count(*) FILTER (WHERE predicted_attack) FROM flow_events"
        f"  WHERE dstip = CAST(:ip AS inet) AND {window} AND srcip IS NOT NULL GROUP BY 1"
        ") p GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT :top",
        params,
    )
    out["peers"] = [{"ip": r[0], "events": int(r[1]), "predicted_attacks": int(r[2])} for r in peer_rows]
    # destination ports it reached (as source) and the ports it was contacted on (as destination)
    for key, column in (("destination_ports", "srcip"), ("ports_contacted_on", "dstip")):
        port_rows = bound.execute(
            conn,
            "SELECT dsport, proto, count(*) FROM flow_events"
            f" WHERE {column} = CAST(:ip AS inet) AND {window} AND dsport IS NOT NULL GROUP BY 1, 2 ORDER BY 3 DESC, 1 LIMIT :top",
            params,
        )
        out[key] = [{"port": int(r[0]), "proto": r[1], "events": int(r[2])} for r in port_rows]
    cat_rows = bound.execute(
        conn,
        "SELECT predicted_cat, count(*), max(probability) FROM flow_events"
        f" WHERE srcip = CAST(:ip AS inet) AND {window} GROUP BY 1 ORDER BY 2 DESC",
        params,
    )
    # `probability` is a flow's attack probability whatever the category: under Normal its maximum is the most
    # attack-like flow judged normal, not a confidence in Normal. `max_probability` is the old name, kept for clients.
    categories = []
    for category, events, highest in cat_rows:
        most = round(float(highest), 6)
        categories.append({"category": category, "events": int(events), "max_attack_probability": most, "max_probability": most})
    out["predicted_categories"] = categories
    return out


# -- roll-ups ----------------------------------------------------------------------------------


def top_attack_categories(
    conn: Connection, *, start: datetime, end: datetime, limit: int, deadline: Deadline | None = None
) -> list[dict[str, Any]]:
    rows = _deadline(deadline, "roll-up").execute(
        conn,
        "SELECT predicted_cat, sum(events)::bigint, sum(labelled_attacks)::bigint, count(*) FROM flow_attack_categories_hourly"
        " WHERE hour >= date_trunc('hour', CAST(:start AS timestamptz)) AND hour < :end"
        " GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT :limit",
        {"start": start, "end": end, "limit": limit},
    )
    return [{"category": r[0], "events": int(r[1]), "labelled_attacks": int(r[2]), "active_hours": int(r[3])} for r in rows]


def bytes_by_proto(
    conn: Connection, *, start: datetime, end: datetime, limit: int, deadline: Deadline | None = None
) -> list[dict[str, Any]]:
    rows = _deadline(deadline, "roll-up").execute(
        conn,
        # Byte sums stay numeric (migration 0012): two flows may carry more bytes than a bigint holds.
        "SELECT proto, sum(events)::bigint, sum(sbytes), sum(dbytes), sum(attack_events)::bigint"
        " FROM flow_bytes_by_proto_hourly"
        " WHERE hour >= date_trunc('hour', CAST(:start AS timestamptz)) AND hour < :end"
        " GROUP BY 1 ORDER BY sum(sbytes) + sum(dbytes) DESC, 1 LIMIT :limit",
        {"start": start, "end": end, "limit": limit},
    )
    return [
        {
            "proto": r[0],
            "events": int(r[1]),
            "sbytes": int(r[2]),
            "dbytes": int(r[3]),
            "bytes": int(r[2]) + int(r[3]),
            "attack_events": int(r[4]),
        }
        for r in rows
    ]


def view_refreshed_at(conn: Connection, *, deadline: Deadline | None = None) -> dict[str, str]:
    rows = _deadline(deadline, "roll-up").execute(conn, "SELECT view_name, refreshed_at FROM flow_view_refreshes")
    return {r[0]: r[1].isoformat() for r in rows}


def refresh_view(conn: Connection, view: str, *, now: datetime) -> int:
    """REFRESH ... CONCURRENTLY (readers are never blocked); returns the time it took in ms.
    The caller commits per view, so a long refresh holds nothing else."""
    from sqlalchemy import text

    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}")
    began = time.perf_counter()
    conn.execute(text(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {view}"))
    took = round((time.perf_counter() - began) * 1000)
    conn.execute(
        text(
            "INSERT INTO flow_view_refreshes (view_name, refreshed_at, took_ms) VALUES (:v, :at, :ms)"
            " ON CONFLICT (view_name) DO UPDATE SET refreshed_at = EXCLUDED.refreshed_at, took_ms = EXCLUDED.took_ms"
        ),
        {"v": view, "at": now, "ms": took},
    )
    return took


# -- partitions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    name: str
    day: date

    @property
    def end(self) -> date:
        # 9999-12-31 + 1 day overflows date; that partition ends at the end of time (it is never "old")
        return self.day + timedelta(days=1) if self.day < date.max else date.max


def partitions(conn: Connection) -> list[Partition]:
    """The daily partitions of flow_events, oldest first (named flow_events_pYYYYMMDD)."""
    from sqlalchemy import text

    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'flow_events'::regclass ORDER BY 1"
        )
    )
    out = []
    for (name,) in rows:
        suffix = name.removeprefix(PARTITION_PREFIX)
        if len(suffix) == 8 and suffix.isdigit():
            out.append(Partition(name, date(int(suffix[:4]), int(suffix[4:6]), int(suffix[6:]))))
    return out


# The transaction-level advisory lock every partition drop takes first (a fixed key of this table's retention).
_RETENTION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('flow_events retention'))"


def drop_partition(conn: Connection, partition: Partition) -> bool:
    """Detach then drop: dropping a whole day is O(1), unlike DELETE, and leaves no bloat. False when the day is gone
    already: drops wait for each other (an advisory lock held to the end of the caller's transaction), then look, so
    two flow-retention runs that listed the same days drop each once (the second failed on it, 42P01)."""
    from sqlalchemy import text

    if not partition.name.startswith(PARTITION_PREFIX) or not partition.name[len(PARTITION_PREFIX) :].isdigit():
        raise ValueError(f"not a flow_events partition: {partition.name!r}")
    conn.execute(text(_RETENTION_LOCK))
    attached = conn.execute(
        text("SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(:n) AND inhparent = 'flow_events'::regclass)"),
        {"n": f'"{partition.name}"'},
    ).scalar_one()
    if not attached:
        return False
    conn.execute(text(f'ALTER TABLE flow_events DETACH PARTITION "{partition.name}"'))
    conn.execute(text(f'DROP TABLE "{partition.name}"'))
    return True


def labelled_flows(conn: Connection, *, limit: int) -> Iterator[dict[str, Any]]:
    """Stored events with ground truth, newest first, as flows for retraining (the retrain-flows job).

    Each is a dict in the partitioned UNSW-NB15 layout: `proto`, `service`, `state`, the
    STORED_FEATURES (None where the flow did not carry one, never 0), `label` and `attack_cat`
    ("Normal" when a benign event carried no category)."""
    from sqlalchemy import text

    if limit < 1:
        raise ValueError("limit must be at least 1")
    result = conn.execution_options(stream_results=True, max_row_buffer=5_000).execute(
        text(
            "SELECT proto, service, state, features, label, attack_cat FROM flow_events"
            " WHERE label IS NOT NULL ORDER BY event_time DESC, event_key DESC LIMIT :limit"
        ),
        {"limit": limit},
    )  # a server-side cursor: pg8000 otherwise reads every row into memory first (~280 MB for 200,000)
    for proto, service, state, features, label, attack_cat in result:
        flow: dict[str, Any] = {"proto": proto, "service": service, "state": state}
        flow.update(zip(STORED_FEATURES, (None if v is None else float(v) for v in features), strict=True))
        flow["label"] = int(label)
        flow["attack_cat"] = attack_cat if attack_cat else ("Normal" if label == 0 else None)
        yield flow


def count_events(conn: Connection) -> int:
    from sqlalchemy import text

    return int(conn.execute(text("SELECT count(*) FROM flow_events")).scalar_one())
