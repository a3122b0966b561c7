"""The enrichment tables (sql/0004_enrichment.sql). Every function takes a connection."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from threatflow.platform.errors import RetryableError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


def _text(sql: str) -> Any:
    from sqlalchemy import text

    return text(sql)


def cached_result(conn: Connection, *, source: str, ioc_type: str, value: str, now: datetime) -> dict[str, Any] | None:
    row = conn.execute(
        _text("SELECT result FROM enrichment_cache WHERE source = :s AND ioc_type = :t AND value = :v AND expires_at > :now"),
        {"s": source, "t": ioc_type, "v": value, "now": now},
    ).first()
    return dict(row[0]) if row else None


def put_cached_result(
    conn: Connection, *, source: str, ioc_type: str, value: str, result: Mapping[str, Any], fetched_at: datetime, expires_at: datetime
) -> None:
    conn.execute(
        _text(
            "INSERT INTO enrichment_cache (source, ioc_type, value, result, fetched_at, expires_at)"
            " VALUES (:s, :t, :v, CAST(:r AS jsonb), :f, :e)"
            " ON CONFLICT (source, ioc_type, value) DO UPDATE SET result = EXCLUDED.result,"
            " fetched_at = EXCLUDED.fetched_at, expires_at = EXCLUDED.expires_at"
            " WHERE enrichment_cache.fetched_at <= EXCLUDED.fetched_at"
        ),
        {"s": source, "t": ioc_type, "v": value, "r": json.dumps(dict(result)), "f": fetched_at, "e": expires_at},
    )


def insert_results(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """One row per (run, source); a repeat (redelivery) inserts nothing. Returns rows inserted."""
    if not rows:
        return 0
    import msgspec

    doc = msgspec.json.encode([dict(r) for r in rows], enc_hook=str).decode()
    inserted = conn.execute(
        _text(
            "INSERT INTO enrichment_results (run_id, ioc_id, source, status, verdict, score, evidence, detail, cached, fetched_at)"
            " SELECT x.run_id, x.ioc_id, x.source, x.status, x.verdict, x.score, COALESCE(x.evidence, '{}'), COALESCE(x.detail, ''),"
            " x.cached, x.fetched_at"
            " FROM jsonb_to_recordset(CAST(:doc AS jsonb)) AS x(run_id text, ioc_id bigint, source text, status text, verdict text,"
            " score smallint, evidence jsonb, detail text, cached boolean, fetched_at timestamptz)"
            " ON CONFLICT (run_id, source) DO NOTHING"
        ),
        {"doc": doc},
    )
    return int(inserted.rowcount)


def delete_timeout_rows(conn: Connection, run_id: str, *, sources: Sequence[str], detail: str) -> int:
    """Delete the run's timeout rows with `detail` for `sources` (a closer's own, written in vain); answers stay."""
    if not sources:
        return 0
    deleted = conn.execute(
        _text("DELETE FROM enrichment_results WHERE run_id = :r AND source = ANY(:s) AND status = 'timeout' AND detail = :d"),
        {"r": run_id, "s": list(sources), "d": detail},
    )
    return int(deleted.rowcount)


# How long a closer waits for another closer of the same run. A live close takes milliseconds; a
# holder that hangs (its instance lost, the connection not yet noticed dead) must not pin this
# delivery and its pooled connection for the OS's TCP keepalive time: past this, the delivery is
# retried (RetryableError), by which time the holder has finished or its session is gone.
LOCK_WAIT_MS = 15_000
# Evidence rows (ioc_evidence) one IoC keeps per source: a run's are bounded (50 values a list), but every run's were
# unioned without limit, so an IoC re-enriched by a source whose tags change grew at each run.
MAX_EVIDENCE_PER_SOURCE = 256


class RunBeingClosed(RetryableError):
    """Another closer holds the run's lock (lock_run waited `wait_ms` for it)."""


def lock_run(conn: Connection, run_id: str, *, wait_ms: int = LOCK_WAIT_MS) -> None:
    """Take the run's session-level advisory lock, waiting at most `wait_ms` for its holder (then
    RetryableError): one closer at a time per run. Session-level, so it outlives the commit (the
    lock_timeout is SET LOCAL and does not); unlock_run releases it, and so does closing the connection."""
    import sqlalchemy.exc

    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(wait_ms)}")
    try:
        conn.execute(_text("SELECT pg_advisory_lock(hashtextextended(:k, 0))"), {"k": _lock_key(run_id)})
    except sqlalchemy.exc.DBAPIError as exc:
        detail = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
        if isinstance(detail, dict) and detail.get("C") == "55P03":  # lock_not_available
            raise RunBeingClosed(f"enrichment run {run_id} is being closed by another delivery; retry") from None
        raise


def unlock_run(conn: Connection, run_id: str) -> None:
    conn.execute(_text("SELECT pg_advisory_unlock(hashtextextended(:k, 0))"), {"k": _lock_key(run_id)})


def _lock_key(run_id: str) -> str:
    return f"enrichment-run:{run_id}"


def run_results(conn: Connection, run_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        _text(
            "SELECT source, status, verdict, score, evidence, detail, cached, fetched_at, ioc_id FROM enrichment_results"
            " WHERE run_id = :r ORDER BY source"
        ),
        {"r": run_id},
    ).all()
    return [_result_row(r) for r in rows]


def runs_results(conn: Connection, run_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {r: [] for r in run_ids}
    for row in conn.execute(
        _text(
            "SELECT source, status, verdict, score, evidence, detail, cached, fetched_at, ioc_id, run_id FROM enrichment_results"
            " WHERE run_id = ANY(CAST(:r AS text[]))"
        ),
        {"r": list(run_ids)},
    ):
        out.setdefault(str(row[9]), []).append(_result_row(row))
    return out


def latest_results(conn: Connection, ioc_id: int) -> list[dict[str, Any]]:
    """The newest result per source for one IoC."""
    rows = conn.execute(
        _text(
            "SELECT DISTINCT ON (source) source, status, verdict, score, evidence, detail, cached, fetched_at, ioc_id, run_id"
            " FROM enrichment_results WHERE ioc_id = :i ORDER BY source, created_at DESC"
        ),
        {"i": ioc_id},
    ).all()
    return [{**_result_row(r), "run_id": r[9]} for r in rows]


def _result_row(r: Any) -> dict[str, Any]:
    return {
        "source": r[0],
        "status": r[1],
        "verdict": r[2],
        "score": r[3],
        "evidence": r[4],
        "detail": r[5],
        "cached": bool(r[6]),
        "fetched_at": r[7].isoformat() if r[7] else None,
        "ioc_id": int(r[8]),
    }


def ioc_exists(conn: Connection, ioc_id: int) -> bool:
    return conn.execute(_text("SELECT 1 FROM iocs WHERE id = :i"), {"i": ioc_id}).first() is not None


def put_evidence(conn: Connection, ioc_id: int, rows: Iterable[tuple[str, str, str]]) -> int:
    """(source, kind, value) evidence rows; repeats are ignored. An IoC keeps at most MAX_EVIDENCE_PER_SOURCE rows per
    source: those it holds, then the new ones in the order given while there is room (every run's evidence was
    unioned without limit). Writers of one IoC's evidence are serialised by its row lock (FOR NO KEY UPDATE, which
    the verdict's UPDATE of the same row takes next anyway). Returns how many new rows did not fit."""
    items = list(dict.fromkeys((s, k, v[:512]) for s, k, v in rows if v))
    if not items:
        return 0
    conn.execute(_text("SELECT 1 FROM iocs WHERE id = :i FOR NO KEY UPDATE"), {"i": ioc_id})
    params = {"i": ioc_id, "s": [i[0] for i in items], "k": [i[1] for i in items], "v": [i[2] for i in items]}
    held = {
        (str(r[0]), str(r[1]), str(r[2]))
        for r in conn.execute(
            _text(
                "SELECT e.source, e.kind, e.value FROM ioc_evidence e"
                " JOIN unnest(CAST(:s AS text[]), CAST(:k AS text[]), CAST(:v AS text[])) AS x(s, k, v)"
                " ON e.source = x.s AND e.kind = x.k AND e.value = x.v WHERE e.ioc_id = :i"
            ),
            params,
        )
    }
    room = {
        str(r[0]): MAX_EVIDENCE_PER_SOURCE - int(r[1])
        for r in conn.execute(
            _text("SELECT source, count(*) FROM ioc_evidence WHERE ioc_id = :i AND source = ANY(CAST(:s AS text[])) GROUP BY 1"),
            {"i": ioc_id, "s": sorted({i[0] for i in items})},
        )
    }
    kept: list[tuple[str, str, str]] = []
    cut = 0
    for item in items:
        if item in held:
            continue
        if room.get(item[0], MAX_EVIDENCE_PER_SOURCE) > 0:
            room[item[0]] = room.get(item[0], MAX_EVIDENCE_PER_SOURCE) - 1
            kept.append(item)
        else:
            cut += 1
    if kept:
        conn.execute(
            _text(
                "INSERT INTO ioc_evidence (ioc_id, source, kind, value)"
                " SELECT :i, x.s, x.k, x.v FROM unnest(CAST(:s AS text[]), CAST(:k AS text[]), CAST(:v AS text[])) AS x(s, k, v)"
                " ON CONFLICT DO NOTHING"
            ),
            {"i": ioc_id, "s": [i[0] for i in kept], "k": [i[1] for i in kept], "v": [i[2] for i in kept]},
        )
    return cut


def put_verdict(
    conn: Connection, *, ioc_id: int, run_id: str, verdict: str, score: int | None, reasons: Sequence[Mapping[str, Any]]
) -> None:
    conn.execute(
        _text(
            "INSERT INTO ioc_enrichment (ioc_id, run_id, verdict, score, reasons, updated_at)"
            " VALUES (:i, :r, :v, :s, CAST(:reasons AS jsonb), now())"
            " ON CONFLICT (ioc_id) DO UPDATE SET run_id = EXCLUDED.run_id, verdict = EXCLUDED.verdict, score = EXCLUDED.score,"
            " reasons = EXCLUDED.reasons, updated_at = now()"
        ),
        {"i": ioc_id, "r": run_id, "v": verdict, "s": score, "reasons": json.dumps(list(reasons), default=str)},
    )


def get_verdict(conn: Connection, ioc_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        _text("SELECT run_id, verdict, score, reasons, updated_at FROM ioc_enrichment WHERE ioc_id = :i"), {"i": ioc_id}
    ).first()
    if row is None:
        return None
    return {"run_id": row[0], "verdict": row[1], "score": row[2], "reasons": row[3], "updated_at": row[4].isoformat()}


def evidence_names(conn: Connection, ioc_id: int) -> list[str]:
    """Family, actor and tag values named by sources for one IoC (for threat correlation)."""
    rows = conn.execute(_text("SELECT DISTINCT value FROM ioc_evidence WHERE ioc_id = :i"), {"i": ioc_id}).all()
    return [str(r[0]) for r in rows]


def put_batch(conn: Connection, batch_id: str, runs: Sequence[Mapping[str, Any]]) -> None:
    conn.execute(
        _text("INSERT INTO enrichment_batches (batch_id, runs) VALUES (:b, CAST(:r AS jsonb)) ON CONFLICT (batch_id) DO NOTHING"),
        {"b": batch_id, "r": json.dumps(list(runs), default=str)},
    )


def get_batch(conn: Connection, batch_id: str) -> dict[str, Any] | None:
    row = conn.execute(_text("SELECT runs, created_at FROM enrichment_batches WHERE batch_id = :b"), {"b": batch_id}).first()
    return None if row is None else {"batch_id": batch_id, "runs": row[0], "created_at": row[1].isoformat()}
