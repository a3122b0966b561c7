"""The flow-event store: every SQL statement of the flows domain lives here.

Functions take a SQLAlchemy `Connection`; the caller owns the transaction (one
unit of work per request or message). Events are written in one statement per
batch (`jsonb_to_recordset` + `ON CONFLICT DO NOTHING RETURNING`), so a re-sent
batch inserts nothing twice and the caller learns which events are new.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from threatflow.platform.errors import ValidationError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

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

# What a search returns per event: exactly the covering indexes' columns, so the
# listing is an index-only scan. Times come as integer epoch microseconds, keys and
# addresses as text: decoding those is several times cheaper in the driver than
# timestamptz/uuid/inet values (measured on the search benchmark's hot path).
_LISTED = (
    "(extract(epoch FROM event_time) * 1000000)::bigint, event_key::text, host(srcip), sport, host(dstip), dsport, proto, service,"
    " state, sbytes, dbytes, label, attack_cat, predicted_attack, probability, predicted_cat, model_version"
)
_LISTED_FIELDS = (
    "event_time", "event_key", "srcip", "sport", "dstip", "dsport", "proto", "service", "state", "sbytes", "dbytes", "label",
    "attack_cat", "predicted_attack", "probability", "predicted_cat", "model_version",
)  # fmt: skip


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


_INSERT = """
WITH input AS (
    SELECT * FROM jsonb_to_recordset(CAST(:doc AS jsonb)) AS x(
        event_time timestamptz, event_key uuid, srcip inet, sport integer, dstip inet, dsport integer,
        proto text, service text, state text, stime timestamptz, ltime timestamptz, features real[],
        label smallint, attack_cat text, predicted_attack boolean, probability real, predicted_cat text,
        model_version text, source text)
)
INSERT INTO flow_events (event_time, event_key, srcip, sport, dstip, dsport, proto, service, state, stime, ltime,
                         dur, sbytes, dbytes, spkts, dpkts, features, label, attack_cat,
                         predicted_attack, probability, predicted_cat, model_version, source)
SELECT event_time, event_key, srcip, sport, dstip, dsport, proto, service, state, stime, ltime,
       features[1], features[4]::bigint, features[5]::bigint, features[2]::integer, features[3]::integer, features,
       label, attack_cat, predicted_attack, probability, predicted_cat, model_version, source
FROM input
ON CONFLICT DO NOTHING
RETURNING (extract(epoch FROM event_time) * 1000000)::bigint, event_key::text, host(srcip), predicted_attack, probability, predicted_cat
"""


def ensure_partitions(conn: Connection, days: Iterable[date]) -> list[str]:
    """Create the daily partitions these days need (idempotent, safe under concurrency)."""
    from sqlalchemy import text

    return [
        str(conn.execute(text("SELECT flow_events_ensure_partition(CAST(:d AS date))"), {"d": d}).scalar_one()) for d in sorted(set(days))
    ]


def insert_events(conn: Connection, rows: Sequence[EventRow]) -> list[StoredEvent]:
    """Insert a batch; returns only the events that were new (a re-send returns [])."""
    from sqlalchemy import text

    if not rows:
        return []
    doc = msgspec.json.encode([_row_doc(r) for r in rows]).decode()
    result = conn.execute(text(_INSERT), {"doc": doc}).all()
    return [StoredEvent(_EPOCH + timedelta(microseconds=int(r[0])), r[1], r[2], bool(r[3]), float(r[4]), r[5]) for r in result]


def _row_doc(row: EventRow) -> dict[str, Any]:
    return {
        "event_time": row.event_time,
        "event_key": row.event_key,
        "srcip": row.srcip,
        "sport": row.sport,
        "dstip": row.dstip,
        "dsport": row.dsport,
        "proto": row.proto,
        "service": row.service,
        "state": row.state,
        "stime": row.stime,
        "ltime": row.ltime,
        "features": row.features,
        "label": row.label,
        "attack_cat": row.attack_cat,
        "predicted_attack": row.predicted_attack,
        "probability": row.probability,
        "predicted_cat": row.predicted_cat,
        "model_version": row.model_version,
        "source": row.source,
    }


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


def search_sql(q: EventQuery) -> tuple[str, dict[str, Any]]:
    """The keyset query for a search; exposed so the benchmark can EXPLAIN it."""
    where = ["event_time >= :start", "event_time < :end"]
    params: dict[str, Any] = {"start": q.start, "end": q.end, "limit": q.limit}
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
    sql = f"SELECT {_LISTED} FROM flow_events WHERE {' AND '.join(where)} ORDER BY event_time DESC, event_key DESC LIMIT :limit"
    return sql, params


def set_timeout(conn: Connection, timeout_ms: int) -> None:
    """Bound the rest of this transaction's statements (a broad search fails fast instead of piling up)."""
    from sqlalchemy import text

    conn.execute(text(f"SET LOCAL statement_timeout = {int(timeout_ms)}"))


def search(conn: Connection, q: EventQuery) -> list[dict[str, Any]]:
    from sqlalchemy import text

    sql, params = search_sql(q)
    return [_listed(r) for r in conn.execute(text(sql), params)]


def _listed(row: Any) -> dict[str, Any]:
    out = dict(zip(_LISTED_FIELDS, row, strict=True))
    micros = int(out["event_time"])
    out["event_time"] = (_EPOCH + timedelta(microseconds=micros)).isoformat()
    out["probability"] = round(float(out["probability"]), 6)
    return out


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- hunting -------------------------------------------------------------------------------

# The hunting views and roll-ups read one address's (or the views') rows over a window of up to
# 92 days: a victim address with millions of events must not hold a connection for minutes.
HUNT_TIMEOUT_MS = 5000


_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def _bounded(what: str) -> Callable[[_Fn], _Fn]:
    """Run a hunting query (conn first) under HUNT_TIMEOUT_MS, for the rest of the caller's transaction;
    a cancelled statement becomes a 400 asking for a narrower window, not a 500."""

    def wrap(fn: _Fn) -> _Fn:
        @functools.wraps(fn)
        def bounded(conn: Connection, *args: Any, **kwargs: Any) -> Any:
            from sqlalchemy.exc import DBAPIError

            set_timeout(conn, HUNT_TIMEOUT_MS)
            try:
                return fn(conn, *args, **kwargs)
            except DBAPIError as exc:  # pg8000 raises the server's errors as DatabaseError, whatever the SQLSTATE
                if "57014" in str(exc) or "statement timeout" in str(exc):
                    raise ValidationError(f"this {what} covers too many events to answer in time; narrow from/to", field="from") from None
                raise

        return bounded  # type: ignore[return-value]

    return wrap


@_bounded("timeline")
def timeline(conn: Connection, *, srcip: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Per-hour event counts for one source, split by predicted category (index-only on srcip)."""
    from sqlalchemy import text

    rows = conn.execute(
        text(
            "SELECT date_trunc('hour', event_time) AS hour, predicted_cat, count(*), count(*) FILTER (WHERE predicted_attack),"
            " COALESCE(sum(sbytes), 0), COALESCE(sum(dbytes), 0)"
            " FROM flow_events WHERE srcip = CAST(:ip AS inet) AND event_time >= :start AND event_time < :end"
            " GROUP BY 1, 2 ORDER BY 1, 2"
        ),
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


@_bounded("host view")
def host_summary(conn: Connection, *, ip: str, start: datetime, end: datetime, top: int) -> dict[str, Any]:
    """First/last seen, peers, ports and predicted categories of one address, both directions."""
    from sqlalchemy import text

    params = {"ip": ip, "start": start, "end": end, "top": top}
    window = "event_time >= :start AND event_time < :end"
    out: dict[str, Any] = {}
    for role, column in (("as_source", "srcip"), ("as_destination", "dstip")):
        first, last, events, attacks, sbytes, dbytes = conn.execute(
            text(
                "SELECT min(event_time), max(event_time), count(*), count(*) FILTER (WHERE predicted_attack),"
                f" COALESCE(sum(sbytes), 0), COALESCE(sum(dbytes), 0) FROM flow_events WHERE {column} = CAST(:ip AS inet) AND {window}"
            ),
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
    peer_rows = conn.execute(
        text(
            "SELECT host(peer), sum(n)::bigint, sum(a)::bigint FROM ("
            f" SELECT dstip AS peer, count(*) AS n, count(*) FILTER (WHERE predicted_attack) AS a FROM flow_events"
            f"  WHERE srcip = CAST(:ip AS inet) AND {window} AND dstip IS NOT NULL GROUP BY 1"
            " UNION ALL"
            f" SELECT srcip, count(*), count(*) FILTER (WHERE predicted_attack) FROM flow_events"
            f"  WHERE dstip = CAST(:ip AS inet) AND {window} AND srcip IS NOT NULL GROUP BY 1"
            ") p GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT :top"
        ),
        params,
    )
    out["peers"] = [{"ip": r[0], "events": int(r[1]), "predicted_attacks": int(r[2])} for r in peer_rows]
    # destination ports it reached (as source) and the ports it was contacted on (as destination)
    for key, column in (("destination_ports", "srcip"), ("ports_contacted_on", "dstip")):
        port_rows = conn.execute(
            text(
                "SELECT dsport, proto, count(*) FROM flow_events"
                f" WHERE {column} = CAST(:ip AS inet) AND {window} AND dsport IS NOT NULL GROUP BY 1, 2 ORDER BY 3 DESC, 1 LIMIT :top"
            ),
            params,
        )
        out[key] = [{"port": int(r[0]), "proto": r[1], "events": int(r[2])} for r in port_rows]
    cat_rows = conn.execute(
        text(
            "SELECT predicted_cat, count(*), max(probability) FROM flow_events"
            f" WHERE srcip = CAST(:ip AS inet) AND {window} GROUP BY 1 ORDER BY 2 DESC"
        ),
        params,
    )
    out["predicted_categories"] = [{"category": r[0], "events": int(r[1]), "max_probability": round(float(r[2]), 6)} for r in cat_rows]
    return out


# -- roll-ups ----------------------------------------------------------------------------------


@_bounded("roll-up")
def top_attack_categories(conn: Connection, *, start: datetime, end: datetime, limit: int) -> list[dict[str, Any]]:
    from sqlalchemy import text

    rows = conn.execute(
        text(
            "SELECT predicted_cat, sum(events)::bigint, sum(labelled_attacks)::bigint, count(*) FROM flow_attack_categories_hourly"
            " WHERE hour >= date_trunc('hour', CAST(:start AS timestamptz)) AND hour < :end"
            " GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT :limit"
        ),
        {"start": start, "end": end, "limit": limit},
    )
    return [{"category": r[0], "events": int(r[1]), "labelled_attacks": int(r[2]), "active_hours": int(r[3])} for r in rows]


@_bounded("roll-up")
def bytes_by_proto(conn: Connection, *, start: datetime, end: datetime, limit: int) -> list[dict[str, Any]]:
    from sqlalchemy import text

    rows = conn.execute(
        text(
            "SELECT proto, sum(events)::bigint, sum(sbytes)::bigint, sum(dbytes)::bigint, sum(attack_events)::bigint"
            " FROM flow_bytes_by_proto_hourly"
            " WHERE hour >= date_trunc('hour', CAST(:start AS timestamptz)) AND hour < :end"
            " GROUP BY 1 ORDER BY sum(sbytes) + sum(dbytes) DESC, 1 LIMIT :limit"
        ),
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


@_bounded("roll-up")
def view_refreshed_at(conn: Connection) -> dict[str, str]:
    from sqlalchemy import text

    return {r[0]: r[1].isoformat() for r in conn.execute(text("SELECT view_name, refreshed_at FROM flow_view_refreshes"))}


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


def drop_partition(conn: Connection, partition: Partition) -> None:
    """Detach then drop: dropping a whole day is O(1), unlike DELETE, and leaves no bloat."""
    from sqlalchemy import text

    if not partition.name.startswith(PARTITION_PREFIX) or not partition.name[len(PARTITION_PREFIX) :].isdigit():
        raise ValueError(f"not a flow_events partition: {partition.name!r}")
    conn.execute(text(f'ALTER TABLE flow_events DETACH PARTITION "{partition.name}"'))
    conn.execute(text(f'DROP TABLE "{partition.name}"'))


def labelled_flows(conn: Connection, *, limit: int) -> Iterator[dict[str, Any]]:
    """Stored events with ground truth, newest first, as flows for retraining (the retrain-flows job).

    Each is a dict in the partitioned UNSW-NB15 layout: `proto`, `service`, `state`, the
    STORED_FEATURES (None where the flow did not carry one, never 0), `label` and `attack_cat`
    ("Normal" when a benign event carried no category)."""
    from sqlalchemy import text

    if limit < 1:
        raise ValueError("limit must be at least 1")
    result = conn.execute(
        text(
            "SELECT proto, service, state, features, label, attack_cat FROM flow_events"
            " WHERE label IS NOT NULL ORDER BY event_time DESC, event_key DESC LIMIT :limit"
        ),
        {"limit": limit},
    )
    for proto, service, state, features, label, attack_cat in result:
        flow: dict[str, Any] = {"proto": proto, "service": service, "state": state}
        flow.update(zip(STORED_FEATURES, (None if v is None else float(v) for v in features), strict=True))
        flow["label"] = int(label)
        flow["attack_cat"] = attack_cat if attack_cat else ("Normal" if label == 0 else None)
        yield flow


def count_events(conn: Connection) -> int:
    from sqlalchemy import text

    return int(conn.execute(text("SELECT count(*) FROM flow_events")).scalar_one())
