"""The indicator store: plain, parameterised SQL on PostgreSQL.

A batch is written by ONE statement: the items travel as one JSON document,
are unpacked by `jsonb_to_recordset`, and are merged by `INSERT ... ON CONFLICT
(type, value) DO UPDATE`. One statement means one round trip for 10,000 items,
and all-or-nothing on a database error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from threatflow.iocs.model import DecayPolicy, UpsertItem

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

IOC_COLUMNS = (
    "id, type, value, tags, sources, tlp, confidence, verdict, base_score, score, severity, first_seen, last_seen,"
    " detection_count, expires_at, active, warninglists, description, created_at, updated_at"
)
_FIELDS = IOC_COLUMNS.replace(" ", "").split(",")

# Merge rules on re-sighting: tags and sources are unions; first_seen keeps the
# earliest and last_seen the latest; the count rises; the expiry moves out, never
# in; a given TLP, confidence or verdict replaces the stored one; an expired IoC
# seen again is active again.
_UPSERT = """
WITH input AS (
    SELECT * FROM jsonb_to_recordset(CAST(:doc AS jsonb)) AS x(
        type text, value text, tags text[], sources text[], tlp text, confidence smallint, verdict text,
        seen_at timestamptz, expires_at timestamptz, description text, warninglists text[], base_score smallint)
)
INSERT INTO iocs AS i (type, value, tags, sources, tlp, confidence, verdict, base_score, score, severity,
                       first_seen, last_seen, last_seen_day, detection_count, expires_at, warninglists, description)
SELECT x.type, x.value, x.tags, x.sources, COALESCE(x.tlp, 'amber'), COALESCE(x.confidence, 50),
       COALESCE(x.verdict, 'unknown'), x.base_score, x.base_score,
       CASE WHEN x.base_score >= 90 THEN 'critical' WHEN x.base_score >= 70 THEN 'high'
            WHEN x.base_score >= 40 THEN 'medium' WHEN x.base_score >= 15 THEN 'low' ELSE 'info' END,
       x.seen_at, x.seen_at, (x.seen_at AT TIME ZONE 'UTC')::date, 1, x.expires_at, x.warninglists, x.description
FROM input x
ON CONFLICT (type, value) DO UPDATE SET
    tags = ARRAY(SELECT DISTINCT unnest(i.tags || EXCLUDED.tags) ORDER BY 1),
    sources = ARRAY(SELECT DISTINCT unnest(i.sources || EXCLUDED.sources) ORDER BY 1),
    warninglists = EXCLUDED.warninglists,
    tlp = EXCLUDED.tlp,
    confidence = EXCLUDED.confidence,
    verdict = CASE WHEN EXCLUDED.verdict = 'unknown' THEN i.verdict ELSE EXCLUDED.verdict END,
    first_seen = LEAST(i.first_seen, EXCLUDED.first_seen),
    last_seen = GREATEST(i.last_seen, EXCLUDED.last_seen),
    last_seen_day = GREATEST(i.last_seen_day, EXCLUDED.last_seen_day),
    detection_count = i.detection_count + 1,
    expires_at = GREATEST(i.expires_at, EXCLUDED.expires_at),
    description = COALESCE(EXCLUDED.description, i.description),
    active = true,
    updated_at = now()
RETURNING id, type, value, (xmax = 0) AS inserted
"""


@dataclass(frozen=True)
class UpsertedRow:
    id: int
    type: str
    value: str
    inserted: bool


def _item_doc(item: UpsertItem, *, base_score: int, default_tlp: str) -> dict[str, Any]:
    return {
        "type": item.type,
        "value": item.value,
        "tags": item.tags,
        "sources": item.sources,
        "tlp": item.tlp or default_tlp,
        "confidence": item.confidence if item.confidence is not None else 50,
        "verdict": item.verdict or "unknown",
        "seen_at": item.seen_at,
        "expires_at": item.expires_at,
        "description": item.description,
        "warninglists": item.warninglists,
        "base_score": base_score,
    }


def _policy(row: Any) -> DecayPolicy:
    """A DecayPolicy from (type, ttl_days, decay_lifetime_days, decay_speed, expired_below)."""
    return DecayPolicy(row[0], int(row[1]), int(row[2]), float(row[3]), int(row[4]))


class IocStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def upsert(self, items: Sequence[UpsertItem], *, default_tlp: str = "amber", conn: Connection | None = None) -> list[UpsertedRow]:
        """Merge items (unique by type and value) in one statement. Pass `conn` to join a caller's transaction."""
        from sqlalchemy import text

        if not items:
            return []
        doc = msgspec.json.encode(
            [_item_doc(i, base_score=i.confidence if i.confidence is not None else 50, default_tlp=default_tlp) for i in items]
        ).decode()
        if conn is not None:
            rows = conn.execute(text(_UPSERT), {"doc": doc}).all()
        else:
            with self._engine.begin() as own:
                rows = own.execute(text(_UPSERT), {"doc": doc}).all()
        return [UpsertedRow(int(r[0]), r[1], r[2], bool(r[3])) for r in rows]

    def policies(self) -> dict[str, DecayPolicy]:
        from sqlalchemy import text

        with self._engine.connect() as conn:
            rows = conn.execute(text("SELECT type, ttl_days, decay_lifetime_days, decay_speed, expired_below FROM ioc_type_policies"))
            return {r[0]: _policy(r) for r in rows}

    def set_policy(self, policy: DecayPolicy) -> DecayPolicy | None:
        """Replace one type's TTL and decay; None when the type has no policy row."""
        from sqlalchemy import text

        with self._engine.begin() as conn:
            row = conn.execute(
                text(
                    "UPDATE ioc_type_policies SET ttl_days = :ttl, decay_lifetime_days = :lifetime, decay_speed = :speed,"
                    " expired_below = :below, updated_at = now() WHERE type = :type"
                    " RETURNING type, ttl_days, decay_lifetime_days, decay_speed, expired_below"
                ),
                {
                    "type": policy.type,
                    "ttl": policy.ttl_days,
                    "lifetime": policy.decay_lifetime_days,
                    "speed": policy.decay_speed,
                    "below": policy.expired_below,
                },
            ).first()
        return _policy(row) if row else None

    def get(self, ioc_id: int) -> dict[str, Any] | None:
        return self._one("id = :id", {"id": ioc_id})

    def get_by_value(self, type_: str, value: str) -> dict[str, Any] | None:
        return self._one("type = :t AND value = :v", {"t": type_, "v": value})

    def _one(self, where: str, params: dict[str, Any]) -> dict[str, Any] | None:
        from sqlalchemy import text

        with self._engine.connect() as conn:
            row = conn.execute(text(f"SELECT {IOC_COLUMNS} FROM iocs WHERE {where}"), params).first()
        return row_to_dict(row) if row else None

    def connection(self) -> Connection:
        return self._engine.connect()


def row_to_dict(row: Any) -> dict[str, Any]:
    out = dict(zip(_FIELDS, row, strict=True))
    for key in ("first_seen", "last_seen", "expires_at", "created_at", "updated_at"):
        if isinstance(out.get(key), datetime):
            out[key] = out[key].isoformat()
    return out


class IocAdmin:
    """Deletes, stats and sightings: the less frequent writes and reads."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def delete(self, where: str, params: dict[str, Any], *, actor: str | None, reason: dict[str, Any]) -> int:
        from sqlalchemy import text

        with self._engine.begin() as conn:
            deleted = conn.execute(text(f"DELETE FROM iocs WHERE {where}"), params).rowcount
            conn.execute(
                text("INSERT INTO ioc_audit (action, actor, detail) VALUES ('delete', :actor, CAST(:detail AS jsonb))"),
                {"actor": actor, "detail": msgspec.json.encode({**reason, "deleted": deleted}).decode()},
            )
        return int(deleted)

    def stats(self, *, now: datetime) -> dict[str, Any]:
        from sqlalchemy import text

        queries = {
            "by_type": "SELECT type, count(*) FROM iocs GROUP BY 1 ORDER BY 2 DESC",
            "by_verdict": "SELECT verdict, count(*) FROM iocs GROUP BY 1 ORDER BY 2 DESC",
            "by_severity": "SELECT severity, count(*) FROM iocs GROUP BY 1 ORDER BY 2 DESC",
            "by_tlp": "SELECT tlp, count(*) FROM iocs GROUP BY 1 ORDER BY 2 DESC",
            "by_source": "SELECT s, count(*) FROM iocs, unnest(sources) s GROUP BY 1 ORDER BY 2 DESC LIMIT 100",
            "by_age": (
                "SELECT CASE WHEN last_seen >= CAST(:now AS timestamptz) - interval '1 day' THEN '<1d'"
                " WHEN last_seen >= CAST(:now AS timestamptz) - interval '7 days' THEN '1-7d'"
                " WHEN last_seen >= CAST(:now AS timestamptz) - interval '30 days' THEN '7-30d'"
                " WHEN last_seen >= CAST(:now AS timestamptz) - interval '90 days' THEN '30-90d' ELSE '>90d' END, count(*)"
                " FROM iocs GROUP BY 1"
            ),
        }
        out: dict[str, Any] = {}
        with self._engine.connect() as conn:
            for name, sql in queries.items():
                out[name] = {str(k): int(v) for k, v in conn.execute(text(sql), {"now": now})}
            total, active, listed = conn.execute(
                text("SELECT count(*), count(*) FILTER (WHERE active), count(*) FILTER (WHERE warninglists <> '{}') FROM iocs")
            ).one()
        out.update({"total": int(total), "active": int(active), "inactive": int(total) - int(active), "warninglisted": int(listed)})
        return out

    def add_sighting(self, ioc_id: int, *, seen_at: datetime, source: str | None, context: dict[str, Any]) -> dict[str, Any] | None:
        from sqlalchemy import text

        with self._engine.begin() as conn:
            row = conn.execute(
                text(
                    "UPDATE iocs SET detection_count = detection_count + 1, last_seen = GREATEST(last_seen, :seen),"
                    " last_seen_day = GREATEST(last_seen_day, (CAST(:seen AS timestamptz) AT TIME ZONE 'UTC')::date),"
                    " first_seen = LEAST(first_seen, :seen), active = true, updated_at = now(),"
                    " sources = CASE WHEN CAST(:source AS text) IS NULL OR CAST(:source AS text) = ANY(sources) THEN sources"
                    " ELSE array_append(sources, CAST(:source AS text)) END"
                    f" WHERE id = :id RETURNING {IOC_COLUMNS}"
                ),
                {"id": ioc_id, "seen": seen_at, "source": source},
            ).first()
            if row is None:
                return None
            conn.execute(
                text("INSERT INTO ioc_sightings (ioc_id, seen_at, source, context) VALUES (:id, :seen, :source, CAST(:ctx AS jsonb))"),
                {"id": ioc_id, "seen": seen_at, "source": source, "ctx": msgspec.json.encode(context).decode()},
            )
        return row_to_dict(row)

    def sightings(self, ioc_id: int, *, limit: int = 50) -> list[dict[str, Any]]:
        from sqlalchemy import text

        with self._engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, seen_at, source, context FROM ioc_sightings WHERE ioc_id = :id ORDER BY seen_at DESC LIMIT :l"),
                {"id": ioc_id, "l": limit},
            )
            return [{"id": r[0], "seen_at": r[1].isoformat(), "source": r[2], "context": r[3]} for r in rows]

    def decay_and_expire(self, *, now: datetime, chunk: int = 50_000) -> dict[str, int]:
        """Recompute decayed scores and mark expired IoCs inactive, in short transactions. Nothing is deleted."""
        from sqlalchemy import text

        rescored = expired = 0
        last_id = 0
        with self._engine.connect() as conn:
            max_id = conn.execute(text("SELECT COALESCE(max(id), 0) FROM iocs")).scalar_one()
        while last_id < max_id:
            with self._engine.begin() as conn:
                result = conn.execute(
                    text(_DECAY),
                    {"now": now, "lo": last_id, "hi": last_id + chunk},
                ).one()
            rescored += int(result[0] or 0)
            expired += int(result[1] or 0)
            last_id += chunk
        return {"rescored": rescored, "expired": expired}


# Polynomial decay in SQL, the same formula as DecayPolicy.score.
_DECAY = """
WITH scored AS (
    SELECT i.id,
           GREATEST(0, LEAST(100, round(
               CASE WHEN extract(epoch FROM (:now - i.last_seen)) / 86400 >= p.decay_lifetime_days THEN 0
                    ELSE i.base_score * (1 - power(GREATEST(0, extract(epoch FROM (:now - i.last_seen)) / 86400)
                                                    / p.decay_lifetime_days, 1 / p.decay_speed)) END)))::smallint AS score,
           p.expired_below
    FROM iocs i JOIN ioc_type_policies p ON p.type = i.type
    WHERE i.id > :lo AND i.id <= :hi AND i.active
), changed AS (
    UPDATE iocs i SET
        score = s.score,
        severity = CASE WHEN s.score >= 90 THEN 'critical' WHEN s.score >= 70 THEN 'high'
                        WHEN s.score >= 40 THEN 'medium' WHEN s.score >= 15 THEN 'low' ELSE 'info' END,
        active = NOT ((i.expires_at IS NOT NULL AND i.expires_at < :now) OR s.score < s.expired_below),
        updated_at = now()
    FROM scored s
    WHERE i.id = s.id
      AND (i.score <> s.score OR (i.expires_at IS NOT NULL AND i.expires_at < :now) OR s.score < s.expired_below)
    RETURNING i.active
)
SELECT count(*), count(*) FILTER (WHERE NOT active) FROM changed
"""


def apply_enrichment_verdict(conn: Connection, *, ioc_id: int, verdict: str, score: int) -> None:
    """The merged enrichment verdict becomes the IoC's verdict and base score (detection count untouched)."""
    from sqlalchemy import text

    conn.execute(
        text(
            "UPDATE iocs SET verdict = :v, base_score = :s, score = :s, severity = CASE WHEN :s >= 90 THEN 'critical'"
            " WHEN :s >= 70 THEN 'high' WHEN :s >= 40 THEN 'medium' WHEN :s >= 15 THEN 'low' ELSE 'info' END,"
            " updated_at = now() WHERE id = :i AND (verdict IS DISTINCT FROM :v OR base_score IS DISTINCT FROM :s)"
        ),
        {"i": ioc_id, "v": verdict, "s": score},
    )


def get_many_by_value(conn: Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """id, type, value, tlp and warninglists of indicators by (type, value), in one query."""
    from sqlalchemy import text

    if not keys:
        return {}
    rows = conn.execute(
        text(
            "SELECT id, type, value, tlp, warninglists FROM iocs"
            " WHERE (type, value) IN (SELECT * FROM unnest(CAST(:t AS text[]), CAST(:v AS text[])))"
        ),
        {"t": [k[0] for k in keys], "v": [k[1] for k in keys]},
    ).all()
    return {(r[1], r[2]): {"id": int(r[0]), "type": r[1], "value": r[2], "tlp": r[3], "warninglists": list(r[4] or [])} for r in rows}
