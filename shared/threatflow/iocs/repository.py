"""The IoC domain's one repository: plain, parameterised SQL on PostgreSQL.

Every function takes the caller's Connection (the unit of work the route or
handler opened); none opens or commits a transaction.

A batch is written by ONE statement: the items travel as one JSON document,
are unpacked by `jsonb_to_recordset`, and are merged by `INSERT ... ON CONFLICT
(type, value) DO UPDATE`. One statement means one round trip for 10,000 items,
and all-or-nothing on a database error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from threatflow.iocs.model import MAX_SOURCES_PER_IOC, MAX_TAGS_PER_IOC, DecayPolicy, IocFilter, IocRecord, UpsertItem
from threatflow.platform import limits
from threatflow.platform.vocabulary import Tlp

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

IOC_COLUMNS = (
    "id, type, value, tags, sources, tlp, confidence, verdict, base_score, score, severity, first_seen, last_seen,"
    " detection_count, expires_at, active, warninglists, description, created_at, updated_at"
)
_FIELDS = IOC_COLUMNS.replace(" ", "").split(",")

# Merge rules on re-sighting: tags and sources are unions; first_seen keeps the
# earliest and last_seen the latest; the count rises; the expiry moves out, never
# in; a given TLP, confidence or verdict replaces the stored one; an expired IoC
# seen again is active again. An item naming no TLP keeps the stored one (the flow bridge
# names none: its re-sightings turned a TLP:RED IoC amber, visible to every amber reader);
# so does one naming no confidence (it was reset to 50), and one naming no description.
# EXCLUDED cannot tell "not given" from the default, so the update looks the item up among the
# input rows that name none (an uncorrelated IN: one hashed set per statement) and keeps `i`'s
# value, which is the row's latest committed version, locked: a value committed while the upsert
# waited for the row (an analyst marking it TLP:RED, or creating it so, as the bridge sights it)
# is kept. Reading the stored values from the statement's snapshot lost both. Rows are taken in
# key order, so two batches lock the rows they share in the same order.
# Tags: an IoC keeps at most :max_tags, sorted. The merge keeps every tag it holds (`i.tags`, the latest committed
# version, locked), then the item's new ones in the order the item gives them (read from :item_tags: the input's
# are sorted, as a new IoC stores them; one value's merged items came in their order), while there is room; every
# write path ends here, so the bound holds for all of them and under concurrent writers. RETURNING counts, for
# an updated IoC that is full (below the bound nothing was cut; a new one holds its item's first :max_tags),
# the item's tags it does not hold (`tags_cut`), looked up in :item_tags, the items' tags keyed by "type value";
# and it gives the TLP the IoC had before this statement (`tlp_before`: a subquery sees the statement's snapshot,
# not its own writes), by primary key. Joining the written rows back to `input` instead was planned as a nested
# loop (the planner takes a jsonb_to_recordset for 100 rows): 16 times slower for 10,000 updates; returning a
# full IoC's tags to count here was 1.7 times slower for 10,000 updates of full IoCs (bench_upsert_ab.py --full).
# Sources: the same bound and order (:max_sources, `sources_cut` from :item_sources); they were a sorted union.
_UPSERT = """
WITH input AS (
    SELECT * FROM jsonb_to_recordset(CAST(:doc AS jsonb)) AS x(
        type text, value text, tags text[], sources text[], tlp text, confidence smallint, verdict text,
        seen_at timestamptz, first_seen timestamptz, expires_at timestamptz, description text, warninglists text[],
        base_score smallint)
)
INSERT INTO iocs AS i (type, value, tags, sources, tlp, confidence, verdict, base_score, score, severity,
                       first_seen, last_seen, last_seen_day, detection_count, expires_at, warninglists, description)
SELECT x.type, x.value, x.tags, x.sources[1:CAST(:max_sources AS int)], COALESCE(x.tlp, CAST(:default_tlp AS text)),
       COALESCE(x.confidence, 50),
       COALESCE(x.verdict, 'unknown'), x.base_score, x.base_score,
       CASE WHEN x.base_score >= 90 THEN 'critical' WHEN x.base_score >= 70 THEN 'high'
            WHEN x.base_score >= 40 THEN 'medium' WHEN x.base_score >= 15 THEN 'low' ELSE 'info' END,
       COALESCE(x.first_seen, x.seen_at), x.seen_at, (x.seen_at AT TIME ZONE 'UTC')::date, 1, x.expires_at, x.warninglists,
       x.description
FROM input x
ORDER BY x.type, x.value
ON CONFLICT (type, value) DO UPDATE SET
    tags = ARRAY(
        SELECT kept.t FROM (
            SELECT unnest(i.tags) AS t
            UNION ALL
            (SELECT n.t FROM jsonb_array_elements_text(CAST(:item_tags AS jsonb) -> (i.type || ' ' || i.value))
                 WITH ORDINALITY AS n(t, o)
             WHERE n.t <> ALL(i.tags) ORDER BY n.o LIMIT GREATEST(0, CAST(:max_tags AS int) - cardinality(i.tags)))
        ) AS kept ORDER BY 1),
    sources = ARRAY(
        SELECT kept.s FROM (
            SELECT unnest(i.sources) AS s
            UNION ALL
            (SELECT n.s FROM unnest(EXCLUDED.sources) WITH ORDINALITY AS n(s, o) WHERE n.s <> ALL(i.sources)
             ORDER BY n.o LIMIT GREATEST(0, CAST(:max_sources AS int) - cardinality(i.sources)))
        ) AS kept ORDER BY 1),
    warninglists = EXCLUDED.warninglists,
    tlp = CASE WHEN i.tlp <> ALL(CAST(:readable AS text[]))
                 OR (EXCLUDED.type, EXCLUDED.value) IN (SELECT type, value FROM input WHERE tlp IS NULL)
               THEN i.tlp ELSE EXCLUDED.tlp END,
    confidence = CASE WHEN i.tlp <> ALL(CAST(:readable AS text[]))
                        OR (EXCLUDED.type, EXCLUDED.value) IN (SELECT type, value FROM input WHERE confidence IS NULL)
                      THEN i.confidence ELSE EXCLUDED.confidence END,
    verdict = CASE WHEN i.tlp <> ALL(CAST(:readable AS text[])) OR EXCLUDED.verdict = 'unknown' THEN i.verdict ELSE EXCLUDED.verdict END,
    first_seen = LEAST(i.first_seen, EXCLUDED.first_seen),
    last_seen = GREATEST(i.last_seen, EXCLUDED.last_seen),
    last_seen_day = GREATEST(i.last_seen_day, EXCLUDED.last_seen_day),
    detection_count = i.detection_count + 1,
    expires_at = GREATEST(i.expires_at, EXCLUDED.expires_at),
    description = CASE WHEN i.tlp <> ALL(CAST(:readable AS text[])) THEN i.description
                       ELSE COALESCE(EXCLUDED.description, i.description) END,
    active = true,
    updated_at = now()
RETURNING id, type, value, (xmax = 0) AS inserted,
    COALESCE((SELECT b.tlp FROM iocs b WHERE b.id = i.id), i.tlp) AS tlp_before,
    CASE WHEN NOT (xmax = 0) AND cardinality(i.tags) >= CAST(:max_tags AS int) THEN (
        SELECT count(*) FROM jsonb_array_elements_text(CAST(:item_tags AS jsonb) -> (i.type || ' ' || i.value)) AS t(tag)
        WHERE t.tag <> ALL(i.tags)) ELSE 0 END AS tags_cut,
    CASE WHEN NOT (xmax = 0) AND cardinality(i.sources) >= CAST(:max_sources AS int) THEN (
        SELECT count(*) FROM jsonb_array_elements_text(CAST(:item_sources AS jsonb) -> (i.type || ' ' || i.value)) AS s(source)
        WHERE s.source <> ALL(i.sources)) ELSE 0 END AS sources_cut
"""


@dataclass(frozen=True)
class UpsertedRow:
    id: int
    type: str
    value: str
    inserted: bool
    tlp_before: str  # the TLP the IoC had when the item merged into it (a new one's own): could the writer read it?
    tags_cut: int  # the item's tags a full IoC does not hold (MAX_TAGS_PER_IOC); 0 for a new one
    sources_cut: int  # the item's sources a full IoC does not hold (MAX_SOURCES_PER_IOC); 0 for a new one
    active: bool = True  # False: expired when written (expire_written), stored inactive


def _item_doc(item: UpsertItem, *, base_score: int) -> dict[str, Any]:
    return {
        "type": item.type,
        "value": item.value,
        "tags": sorted(item.tags[:MAX_TAGS_PER_IOC]),  # as a new IoC stores them; the update takes the order from :item_tags
        "sources": item.sources,
        "tlp": item.tlp,  # None: the stored TLP, or the default for a new IoC (_UPSERT)
        "confidence": item.confidence,  # None: the stored confidence, or 50 for a new IoC (_UPSERT)
        "verdict": item.verdict or "unknown",
        "seen_at": item.seen_at,
        "first_seen": item.first_seen,  # None: seen_at (_UPSERT)
        "expires_at": item.expires_at,
        "description": item.description,
        "warninglists": item.warninglists,
        "base_score": base_score,
    }


def _policy(row: Any) -> DecayPolicy:
    """A DecayPolicy from (type, ttl_days, decay_lifetime_days, decay_speed, expired_below)."""
    return DecayPolicy(row[0], int(row[1]), int(row[2]), float(row[3]), int(row[4]))


def _text(sql: str) -> Any:
    from sqlalchemy import text

    return text(sql)


# -- writes ----------------------------------------------------------------------------


def upsert(
    conn: Connection, items: Sequence[UpsertItem], *, readable: Sequence[str], now: datetime, default_tlp: str = "amber"
) -> list[UpsertedRow]:
    """Merge items (unique by type and value) in one statement. `readable` is the TLPs the writer may read (its
    clearance): a stored IoC marked above them takes an item as a sighting only, its TLP, confidence, verdict and
    description kept (an amber analyst's item with tlp clear declassified a red IoC). An IoC keeps at most
    MAX_TAGS_PER_IOC tags: those it holds, then the item's new ones in the item's order (`UpsertedRow.tags_cut`), and
    MAX_SOURCES_PER_IOC sources by the same rule (`UpsertedRow.sources_cut`). The rows written are then judged by the
    decay-iocs job's expiry rule at `now` (expire_written): one expired when written is stored inactive
    (`UpsertedRow.active`), also a stale re-sighting of an expired one; a fresh sighting makes it active again."""
    if not items:
        return []
    doc = msgspec.json.encode([_item_doc(i, base_score=i.confidence if i.confidence is not None else 50) for i in items]).decode()
    item_tags = msgspec.json.encode({f"{i.type} {i.value}": i.tags for i in items if i.tags}).decode()
    item_sources = msgspec.json.encode({f"{i.type} {i.value}": i.sources for i in items if i.sources}).decode()
    params = {
        "doc": doc,
        "default_tlp": default_tlp,
        "readable": list(readable),
        "max_tags": MAX_TAGS_PER_IOC,
        "item_tags": item_tags,
        "max_sources": MAX_SOURCES_PER_IOC,
        "item_sources": item_sources,
    }
    rows = conn.execute(_text(_UPSERT), params).all()
    expired = expire_written(conn, [int(r[0]) for r in rows], now=now)
    return [UpsertedRow(int(r[0]), r[1], r[2], bool(r[3]), str(r[4]), int(r[5]), int(r[6]), int(r[0]) not in expired) for r in rows]


def set_policy(conn: Connection, policy: DecayPolicy) -> DecayPolicy | None:
    """Replace one type's TTL and decay; None when the type has no policy row."""
    row = conn.execute(
        _text(
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


def record_audit(conn: Connection, *, action: str, actor: str | None, detail: dict[str, Any]) -> None:
    conn.execute(
        _text("INSERT INTO ioc_audit (action, actor, detail) VALUES (:action, :actor, CAST(:detail AS jsonb))"),
        {"action": action, "actor": actor, "detail": msgspec.json.encode(detail).decode()},
    )


@dataclass(frozen=True)
class DeleteOutcome:
    deleted: int
    more: bool  # IoCs matching the filter, within the clearance, are left: the caller repeats the call


def delete_ids(conn: Connection, ids: Sequence[int], *, actor: str | None, reason: dict[str, Any], readable: Sequence[str]) -> int:
    where = "id = ANY(CAST(:ids AS bigint[]))"
    return _delete(conn, where, {"ids": list(ids)}, limit=None, actor=actor, reason=reason, readable=readable).deleted


def delete_matching(
    conn: Connection, compiled: Compiled, *, limit: int, actor: str | None, reason: dict[str, Any], readable: Sequence[str]
) -> DeleteOutcome:
    """Deletes at most `limit` of the matching IoCs, lowest ids first: all of millions in one transaction held locks on
    every one and outlasted the statement timeout, so it never succeeded (and cost a long rollback each try)."""
    return _delete(conn, compiled.where, compiled.params, limit=limit, actor=actor, reason=reason, readable=readable)


def _delete(
    conn: Connection,
    where: str,
    params: dict[str, Any],
    *,
    limit: int | None,
    actor: str | None,
    reason: dict[str, Any],
    readable: Sequence[str],
) -> DeleteOutcome:
    """Deletes the matching IoCs within `readable` (the admin's clearance: one above it does not exist for them), at most
    `limit` of them, lowest ids first.

    Locks in a fixed order first: the IoCs by id, then their links to threats in (threat_id, ioc_id, relation) order,
    as a threat delete locks the links it deletes (threats.repository.delete_threats). Left to the cascade, each
    delete locked the links in the order its own rows went, so an IoC delete and a threat delete unlinking pairs across
    each other (t1 - i2, t2 - i1) each waited for a link the other held: PostgreSQL aborted one, a 503. Their relations
    to other IoCs are locked in key order too, as two IoC deletes related across their sets (i1 -> i4, i2 -> i3;
    {i1, i3} and {i2, i4}) deadlocked the same way."""
    visible = {**params, "delete_readable": list(readable)}
    matching = f"({where}) AND tlp = ANY(CAST(:delete_readable AS text[]))"
    # LIMIT sits above the row locks in the plan: only the rows returned are locked.
    bound = "" if limit is None else " LIMIT :delete_limit"
    locked = [
        int(r[0])
        for r in conn.execute(
            _text(f"SELECT id FROM iocs WHERE {matching} ORDER BY id{bound} FOR UPDATE"), {**visible, "delete_limit": limit}
        )
    ]
    deleted = 0
    if locked:
        conn.execute(
            _text("SELECT 1 FROM threat_iocs WHERE ioc_id = ANY(CAST(:l AS bigint[])) ORDER BY threat_id, ioc_id, relation FOR UPDATE"),
            {"l": locked},
        )
        conn.execute(
            _text(
                "SELECT 1 FROM ioc_relations WHERE source_id = ANY(CAST(:l AS bigint[])) OR target_id = ANY(CAST(:l AS bigint[]))"
                " ORDER BY source_id, target_id, type FOR UPDATE"
            ),
            {"l": locked},
        )
        deleted = int(conn.execute(_text("DELETE FROM iocs WHERE id = ANY(CAST(:l AS bigint[]))"), {"l": locked}).rowcount)
    # Fewer than the bound locked: none were left as of the locking read (a match committed after it waits for the
    # next call; LockRows under Limit skips rows deleted meanwhile and reads on). Else ask, after the delete and within
    # the clearance (a red IoC matching an amber admin's filter must neither show nor keep their client calling),
    # without locking what is left.
    more = (
        limit is not None
        and len(locked) >= limit
        and bool(conn.execute(_text(f"SELECT EXISTS (SELECT 1 FROM iocs WHERE {matching})"), visible).scalar())
    )
    record_audit(conn, action="delete", actor=actor, detail={**reason, "deleted": deleted, "more": more})
    return DeleteOutcome(deleted=deleted, more=more)


def add_sighting(
    conn: Connection,
    ioc_id: int,
    *,
    seen_at: datetime,
    source: str | None,
    context: dict[str, Any],
    readable: Sequence[str],
    now: datetime,
) -> tuple[IocRecord, bool] | None:
    """Counts and keeps a sighting; None when there is no such IoC, or it is marked above `readable` (the writer's
    clearance: to them it does not exist; the answer, the whole IoC, let an amber analyst read every red one by id).
    `source` (clean: vocabulary.clean_sources) joins the IoC's sources, sorted, while it holds fewer than
    MAX_SOURCES_PER_IOC, decided on the row as locked (it was appended past the bound); also returns whether it was
    cut (named, and not among the sources the IoC now holds).

    The expiry follows a batch item's rule (service._default_expiry: the end of the UTC day the type's TTL after the
    sighting, never moved in, capped at datetime's range) and the IoC is judged by the decay rule at `now`
    (expire_written): it set `active` whatever the expiry, so a sighting of 100 days ago revived an expired IoC, and a
    fresh one showed it active with its expiry still past until the decay job's next run."""
    row = conn.execute(
        _text(
            "UPDATE iocs SET detection_count = detection_count + 1, last_seen = GREATEST(last_seen, :seen),"
            " last_seen_day = GREATEST(last_seen_day, (CAST(:seen AS timestamptz) AT TIME ZONE 'UTC')::date),"
            " first_seen = LEAST(first_seen, :seen), active = true, updated_at = now(),"
            " expires_at = GREATEST(expires_at, (SELECT LEAST(((CAST(:seen AS timestamptz) AT TIME ZONE 'UTC')::date"
            " + p.ttl_days + 1)::timestamp AT TIME ZONE 'UTC', TIMESTAMPTZ '9999-12-31 23:59:59.999999+00')"
            " FROM ioc_type_policies p WHERE p.type = iocs.type)),"
            " sources = CASE WHEN CAST(:source AS text) IS NULL OR CAST(:source AS text) = ANY(sources)"
            " OR cardinality(sources) >= CAST(:max_sources AS int) THEN sources"
            " ELSE ARRAY(SELECT s FROM unnest(array_append(sources, CAST(:source AS text))) AS s ORDER BY 1) END"
            f" WHERE id = :id AND tlp = ANY(CAST(:readable AS text[])) RETURNING {IOC_COLUMNS},"
            " CAST(:source AS text) IS NOT NULL AND CAST(:source AS text) <> ALL(sources) AS source_cut"
        ),
        {"id": ioc_id, "seen": seen_at, "source": source, "readable": list(readable), "max_sources": MAX_SOURCES_PER_IOC},
    ).first()
    if row is None:
        return None
    conn.execute(
        _text("INSERT INTO ioc_sightings (ioc_id, seen_at, source, context) VALUES (:id, :seen, :source, CAST(:ctx AS jsonb))"),
        {"id": ioc_id, "seen": seen_at, "source": source, "ctx": msgspec.json.encode(context).decode()},
    )
    record = IocRecord.from_row(row[: len(_FIELDS)])
    if expire_written(conn, [ioc_id], now=now):
        record = _one(conn, "id = :id", {"id": ioc_id}) or record  # inactive, with the job's score and severity
    return record, bool(row[len(_FIELDS)])


def stored_values(conn: Connection, addresses: Sequence[str]) -> set[str]:
    """Which of these addresses are stored as IPv4 or IPv6 IoCs; give them as the store keeps them (normalise:
    RFC 5952 IPv6, ::ffff:a.b.c.d as the IPv4), not as PostgreSQL writes an inet."""
    if not addresses:
        return set()
    rows = conn.execute(
        _text("SELECT value FROM iocs WHERE type IN ('ipv4', 'ipv6') AND value = ANY(CAST(:values AS text[]))"),
        {"values": list(addresses)},
    )
    return {str(r[0]) for r in rows}


def log_sightings(conn: Connection, sightings: Sequence[tuple[int, datetime, str | None, dict[str, Any]]]) -> int:
    """Record sightings (ioc_id, seen_at, source, context) whose counts an upsert already made, in one statement."""
    if not sightings:
        return 0
    doc = msgspec.json.encode([{"ioc_id": i, "seen_at": at, "source": src, "context": ctx} for i, at, src, ctx in sightings]).decode()
    result = conn.execute(
        _text(
            "INSERT INTO ioc_sightings (ioc_id, seen_at, source, context)"
            " SELECT ioc_id, seen_at, source, context FROM jsonb_to_recordset(CAST(:doc AS jsonb))"
            " AS x(ioc_id bigint, seen_at timestamptz, source text, context jsonb)"
        ),
        {"doc": doc},
    )
    return int(result.rowcount)


def prune_sightings(conn: Connection, *, before: datetime, limit: int) -> int:
    """Delete at most `limit` sightings seen before `before`, oldest first (ioc_sightings_seen_at_idx); returns how
    many. Rows another transaction holds (a concurrent prune, an IoC being deleted) are skipped, not waited for.
    The IoCs are not touched: their first_seen, last_seen and detection_count keep counting every sighting."""
    result = conn.execute(
        _text(
            "DELETE FROM ioc_sightings WHERE id IN (SELECT id FROM ioc_sightings WHERE seen_at < :before"
            " ORDER BY seen_at LIMIT :limit FOR UPDATE SKIP LOCKED)"
        ),
        {"before": before, "limit": limit},
    )
    return int(result.rowcount)


def sightings_before(conn: Connection, *, before: datetime) -> bool:
    """Whether any sighting seen before `before` is left."""
    return bool(conn.execute(_text("SELECT EXISTS (SELECT 1 FROM ioc_sightings WHERE seen_at < :before)"), {"before": before}).scalar_one())


def max_id(conn: Connection) -> int:
    return int(conn.execute(_text("SELECT COALESCE(max(id), 0) FROM iocs")).scalar_one())


def decay_range(conn: Connection, *, now: datetime, after_id: int, up_to_id: int) -> tuple[int, int]:
    """Recompute decayed scores and expiry for ids in (after_id, up_to_id]; returns (rescored, expired). Rows another
    transaction holds are skipped, left to the next run (_DECAY_JOB)."""
    sql = _DECAY_JOB.format(rows="i.id > :lo AND i.id <= :hi")
    result = conn.execute(_text(sql), {"now": now, "lo": after_id, "hi": up_to_id, "rescore": True}).one()
    return int(result[0] or 0), int(result[1] or 0)


def expire_written(conn: Connection, ioc_ids: Sequence[int], *, now: datetime) -> set[int]:
    """The decay-iocs rule (_DECAY) applied now to the IoCs just written: those it finds expired are made inactive,
    with the score and severity the job gives them; returns their ids. Other rows are left as written."""
    if not ioc_ids:
        return set()
    sql = _DECAY.format(rows="i.id = ANY(CAST(:ids AS bigint[]))")
    result = conn.execute(_text(sql), {"now": now, "ids": sorted(set(ioc_ids)), "rescore": False}).one()
    return {int(i) for i in result[2]}


# -- reads -----------------------------------------------------------------------------


def policies(conn: Connection) -> dict[str, DecayPolicy]:
    rows = conn.execute(_text("SELECT type, ttl_days, decay_lifetime_days, decay_speed, expired_below FROM ioc_type_policies"))
    return {r[0]: _policy(r) for r in rows}


def get(conn: Connection, ioc_id: int) -> IocRecord | None:
    return _one(conn, "id = :id", {"id": ioc_id})


def get_many(conn: Connection, ioc_ids: Sequence[int]) -> dict[int, IocRecord]:
    """The existing IoCs among ioc_ids, by id, in one query."""
    ids = sorted({int(i) for i in ioc_ids})
    if not ids:
        return {}
    rows = conn.execute(_text(f"SELECT {IOC_COLUMNS} FROM iocs WHERE id = ANY(CAST(:i AS bigint[]))"), {"i": _array(ids)})
    return {record.id: record for record in map(IocRecord.from_row, rows)}


def enrichable(conn: Connection, ioc_ids: Sequence[int]) -> dict[int, tuple[str, str, str]]:
    """id -> (type, value, tlp) of the existing IoCs among ioc_ids that are not warninglisted, in one narrow query:
    what a write's auto-enrichment is charged by (get_many's whole records took ~70 ms a 1,000, about the write's own time)."""
    rows = conn.execute(
        _text("SELECT id, type, value, tlp FROM iocs WHERE id = ANY(CAST(:i AS bigint[])) AND warninglists = '{}'"),
        {"i": _array(sorted({int(i) for i in ioc_ids}))},
    )
    return {int(r[0]): (str(r[1]), str(r[2]), str(r[3])) for r in rows}


def get_by_value(conn: Connection, type_: str, value: str) -> IocRecord | None:
    return _one(conn, "type = :t AND value = :v", {"t": type_, "v": value})


def first_by_values(conn: Connection, keys: Sequence[tuple[str, str]], *, readable: Callable[[str], bool]) -> IocRecord | None:
    """The stored IoC of the first (type, value) key whose TLP `readable` accepts, in one query: one above the
    caller's clearance does not exist for them, and the next key is tried."""
    if not keys:
        return None
    rows = conn.execute(
        _text(f"SELECT {IOC_COLUMNS} FROM iocs WHERE (type, value) IN (SELECT * FROM unnest(CAST(:t AS text[]), CAST(:v AS text[])))"),
        {"t": [k[0] for k in keys], "v": [k[1] for k in keys]},
    ).all()
    by_key = {(record.type, record.value): record for record in map(IocRecord.from_row, rows)}
    for key in keys:
        record = by_key.get(key)
        if record is not None and readable(record.tlp):
            return record
    return None


def _one(conn: Connection, where: str, params: dict[str, Any]) -> IocRecord | None:
    row = conn.execute(_text(f"SELECT {IOC_COLUMNS} FROM iocs WHERE {where}"), params).first()
    return IocRecord.from_row(row) if row else None


def row_to_dict(row: Any) -> dict[str, Any]:
    """An iocs row (IOC_COLUMNS) as the API shows it."""
    return IocRecord.from_row(row).to_json()


def sightings(conn: Connection, ioc_id: int, *, limit: int = 50) -> list[dict[str, Any]]:
    rows = conn.execute(
        _text("SELECT id, seen_at, source, context FROM ioc_sightings WHERE ioc_id = :id ORDER BY seen_at DESC LIMIT :l"),
        {"id": ioc_id, "l": limit},
    )
    return [{"id": r[0], "seen_at": r[1].isoformat(), "source": r[2], "context": r[3]} for r in rows]


def stats(conn: Connection, *, now: datetime, visible_tlps: list[str]) -> dict[str, Any]:
    """Counts over the IoCs whose TLP is in `visible_tlps` (the caller's clearance)."""
    seen = "(SELECT * FROM iocs WHERE tlp = ANY(CAST(:v AS text[]))) AS iocs"  # the caller's clearance
    queries = {
        "by_type": f"SELECT type, count(*) FROM {seen} GROUP BY 1 ORDER BY 2 DESC",
        "by_verdict": f"SELECT verdict, count(*) FROM {seen} GROUP BY 1 ORDER BY 2 DESC",
        "by_severity": f"SELECT severity, count(*) FROM {seen} GROUP BY 1 ORDER BY 2 DESC",
        "by_tlp": f"SELECT tlp, count(*) FROM {seen} GROUP BY 1 ORDER BY 2 DESC",
        "by_source": f"SELECT s, count(*) FROM {seen}, unnest(sources) s GROUP BY 1 ORDER BY 2 DESC LIMIT 100",
        "by_age": (
            "SELECT CASE WHEN last_seen >= CAST(:now AS timestamptz) - interval '1 day' THEN '<1d'"
            " WHEN last_seen >= CAST(:now AS timestamptz) - interval '7 days' THEN '1-7d'"
            " WHEN last_seen >= CAST(:now AS timestamptz) - interval '30 days' THEN '7-30d'"
            " WHEN last_seen >= CAST(:now AS timestamptz) - interval '90 days' THEN '30-90d' ELSE '>90d' END, count(*)"
            f" FROM {seen} GROUP BY 1"
        ),
    }
    out: dict[str, Any] = {}
    for name, sql in queries.items():
        out[name] = {str(k): int(v) for k, v in conn.execute(_text(sql), {"now": now, "v": visible_tlps})}
    total, active, listed = conn.execute(
        _text(f"SELECT count(*), count(*) FILTER (WHERE active), count(*) FILTER (WHERE warninglists <> '{{}}') FROM {seen}"),
        {"v": visible_tlps},
    ).one()
    out.update({"total": int(total), "active": int(active), "inactive": int(total) - int(active), "warninglisted": int(listed)})
    return out


# -- search ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Compiled:
    where: str
    params: dict[str, Any]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def compile_filter(f: IocFilter, *, now: datetime) -> Compiled:
    clauses: list[str] = []
    params: dict[str, Any] = {}

    def add(clause: str, **values: Any) -> None:
        clauses.append(clause)
        params.update(values)

    def one_of(column: str, name: str, values: list[str]) -> None:
        # One value as plain equality: the (column, id) index then yields rows already in
        # id order, where `= ANY(...)` makes PostgreSQL fetch every match and sort them.
        if len(values) == 1:
            add(f"{column} = :{name}", **{name: values[0]})
        else:
            add(f"{column} = ANY(CAST(:{name} AS text[]))", **{name: values})

    if f.type:
        one_of("type", "types", [t.value for t in f.type])
    if f.verdict:
        one_of("verdict", "verdicts", [v.value for v in f.verdict])
    if f.severity:
        one_of("severity", "severities", [s.value for s in f.severity])
    if f.tlp:
        one_of("tlp", "tlps", [t.value for t in f.tlp])
    if f.max_tlp:
        one_of("tlp", "max_tlps", f.max_tlp.at_most())
    if f.score_min is not None:
        add("score >= :score_min", score_min=f.score_min)
    if f.score_max is not None:
        add("score <= :score_max", score_max=f.score_max)
    if f.tags:
        add("tags @> CAST(:tags_all AS text[])", tags_all=sorted({t.strip().lower() for t in f.tags}))
    if f.tags_any:
        add("tags && CAST(:tags_any AS text[])", tags_any=sorted({t.strip().lower() for t in f.tags_any}))
    if f.source:
        add("sources @> CAST(:sources AS text[])", sources=[f.source])
    if f.active is not None:
        add("active = :active", active=f.active)
    if f.expired is True:
        add("(NOT active OR expires_at < :now)", now=now)
    elif f.expired is False:
        add("active AND (expires_at IS NULL OR expires_at >= :now)", now=now)
    if f.warninglisted is True:
        clauses.append("warninglists <> '{}'")
    elif f.warninglisted is False:
        clauses.append("warninglists = '{}'")
    for name, column, op in (
        ("first_seen_from", "first_seen", ">="),
        ("first_seen_to", "first_seen", "<"),
        ("last_seen_from", "last_seen", ">="),
        ("last_seen_to", "last_seen", "<"),
    ):
        value = getattr(f, name)
        if value is not None:
            # its zone, and its UTC instant in years 1 to 9999 (0001-01-01T00:00:00+05:00 was a 500, and left the
            # connection out of step: adapters.postgres._discard_on_driver_fault)
            value = limits.check_aware(value, field=name)
            add(f"{column} {op} :{name}", **{name: value})
            if column == "last_seen":  # the indexed day column narrows; the exact column decides
                day_op = ">=" if op == ">=" else "<="
                add(f"last_seen_day {day_op} :{name}_day", **{f"{name}_day": value.astimezone(UTC).date()})
    if f.value_prefix:
        add("value LIKE :prefix ESCAPE '\\'", prefix=_like_escape(f.value_prefix) + "%")
    if f.value_contains:
        add("value ILIKE :contains ESCAPE '\\'", contains="%" + _like_escape(f.value_contains) + "%")
    if f.ids:
        add("id = ANY(CAST(:ids AS bigint[]))", ids=f.ids)
    return Compiled(" AND ".join(clauses) if clauses else "TRUE", params)


def find_sql(flt: IocFilter, *, now: datetime, after_id: int | None, limit: int) -> tuple[str, dict[str, Any]]:
    """A keyset page (id descending) of IoCs matching flt, after after_id, at most limit rows."""
    compiled = compile_filter(flt, now=now)
    where, params = compiled.where, dict(compiled.params)
    if after_id is not None:
        where += " AND id < :after_id"
        params["after_id"] = after_id
    params["limit"] = limit
    return f"SELECT {IOC_COLUMNS} FROM iocs WHERE {where} ORDER BY id DESC LIMIT :limit", params


def find_page(conn: Connection, flt: IocFilter, *, now: datetime, after_id: int | None, limit: int) -> list[dict[str, Any]]:
    sql, params = find_sql(flt, now=now, after_id=after_id, limit=limit)
    return [row_to_dict(r) for r in conn.execute(_text(sql), params)]


# Polynomial decay in SQL, the same formula as DecayPolicy.score, and THE expiry rule: an IoC is expired (made
# inactive) when its expires_at is past or its decayed score is below its type's expired_below. The decay-iocs job
# runs it over id ranges (:rescore true: every changed score is written; _DECAY_JOB); every upsert runs it over the rows
# it wrote (:rescore false: only the expired ones are touched), so an IoC whose expiry is past when written is stored as
# the job would leave it, not active until the job's next run (a flow bridged at the retention edge was, and queued for
# enrichment). `{rows}` selects the rows; the last column names the ids made inactive.
_SCORED = """
    SELECT i.id, i.expires_at,
           GREATEST(0, LEAST(100, round(
               CASE WHEN extract(epoch FROM (:now - i.last_seen)) / 86400 >= p.decay_lifetime_days THEN 0
                    ELSE i.base_score * (1 - power(GREATEST(0, extract(epoch FROM (:now - i.last_seen)) / 86400)
                                                    / p.decay_lifetime_days, 1 / p.decay_speed)) END)))::smallint AS score,
           p.expired_below, i.score AS stored
    FROM iocs i JOIN ioc_type_policies p ON p.type = i.type
    WHERE {rows} AND i.active"""
_JUDGED_AND_CHANGED = """
), judged AS (
    SELECT s.id, s.score, ((s.expires_at IS NOT NULL AND s.expires_at < :now) OR s.score < s.expired_below) AS expired
    FROM scored s
), changed AS (
    UPDATE iocs i SET
        score = j.score,
        severity = CASE WHEN j.score >= 90 THEN 'critical' WHEN j.score >= 70 THEN 'high'
                        WHEN j.score >= 40 THEN 'medium' WHEN j.score >= 15 THEN 'low' ELSE 'info' END,
        active = NOT j.expired,
        updated_at = now()
    FROM judged j
    WHERE i.id = j.id AND (j.expired OR (CAST(:rescore AS boolean) AND i.score <> j.score))
    RETURNING i.id, i.active
)
SELECT count(*), count(*) FILTER (WHERE NOT active), COALESCE(array_agg(id) FILTER (WHERE NOT active), '{{}}') FROM changed
"""
# The upsert's own rows: its transaction holds them already.
_DECAY = "WITH scored AS (" + _SCORED + _JUDGED_AND_CHANGED
# The job's: it locks only the rows its snapshot says will change, skipping those a writer holds, and judges each from
# the row it locked. It updated them in scan (id) order, waiting for any a writer held, while an upsert locks its rows
# in (type, value) order: a batch and the job each waited for a row the other held, and PostgreSQL aborted one (the
# batch's 503, or the job's redelivery). Judged from its snapshot, a row a writer changed meanwhile (a fresh sighting)
# was written with the score and `active` of its stale read. A skipped row is left to the next run; the writer judged
# its expiry itself (expire_written).
_DECAY_JOB = (
    "WITH candidates AS ("
    + _SCORED
    + """
), changing AS (
    SELECT c.id FROM candidates c
    WHERE (c.expires_at IS NOT NULL AND c.expires_at < :now) OR c.score < c.expired_below OR c.score <> c.stored
), scored AS ("""
    + _SCORED.format(rows="i.id IN (SELECT id FROM changing)")
    + "\n    FOR UPDATE OF i SKIP LOCKED"
    + _JUDGED_AND_CHANGED
)


def apply_enrichment_verdict(conn: Connection, *, ioc_id: int, verdict: str, score: int) -> None:
    """The merged enrichment verdict becomes the IoC's verdict and base score (detection count untouched)."""
    conn.execute(
        _text(
            "UPDATE iocs SET verdict = :v, base_score = :s, score = :s, severity = CASE WHEN :s >= 90 THEN 'critical'"
            " WHEN :s >= 70 THEN 'high' WHEN :s >= 40 THEN 'medium' WHEN :s >= 15 THEN 'low' ELSE 'info' END,"
            " updated_at = now() WHERE id = :i AND (verdict IS DISTINCT FROM :v OR base_score IS DISTINCT FROM :s)"
        ),
        {"i": ioc_id, "v": verdict, "s": score},
    )


def get_many_by_value(conn: Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """id, type, value, tlp and warninglists of indicators by (type, value), in one query."""
    if not keys:
        return {}
    rows = conn.execute(
        _text(
            "SELECT id, type, value, tlp, warninglists FROM iocs"
            " WHERE (type, value) IN (SELECT * FROM unnest(CAST(:t AS text[]), CAST(:v AS text[])))"
        ),
        {"t": [k[0] for k in keys], "v": [k[1] for k in keys]},
    ).all()
    return {(r[1], r[2]): {"id": int(r[0]), "type": r[1], "value": r[2], "tlp": r[3], "warninglists": list(r[4] or [])} for r in rows}


# The records covering a host without holding it, one index scan each (sql/0017_ioc_address_cover.sql): CIDR IoCs
# containing an address, cidr and ipv6 IoCs overlapping a 6to4 /48, ipv6 IoCs whose Teredo client is an IPv4 address,
# cidr IoCs of Teredo addresses whose clients include it (sql/0018_ioc_teredo_cover.sql).
# Aggregated in SQL: a host inside 10,000 ranges is one row, the strictest TLP's rank.
# Each probe is a subquery of its own, so it can only be an index scan for that probe's value (as joins, the planner
# sorted every Teredo IoC for a batch, and started parallel workers, ~30-50 ms, for a single host); the probes are
# MATERIALIZED CTEs, which keep the plan out of parallel workers.
_RANK = "max(array_position(CAST(:order AS text[]), i.tlp))"
# A covering range's prefix (intel.enrichment.MIN_COVER_PREFIX_IPV4 …) is read from its value cast as inet, not through
# ioc_inet: the rows reaching it matched an index over ioc_inet, so their values are addresses, and ioc_inet's regex on
# each row made a host whose 6to4 /48 holds 10,000 IoCs cost 107 ms a lookup, against 18 ms so.
_COVERING_TLPS = (
    "WITH within AS MATERIALIZED (SELECT * FROM unnest(CAST(:within_k AS int[]), CAST(:within AS inet[]),"
    " CAST(:within_prefix AS int[])) AS p(k, net, shortest)),"
    " sites AS MATERIALIZED (SELECT * FROM unnest(CAST(:sites_k AS int[]), CAST(:sites AS inet[])) AS p(k, net)),"
    " teredo AS MATERIALIZED (SELECT * FROM unnest(CAST(:teredo_k AS int[]), CAST(:teredo AS bigint[])) AS p(k, client))"
    " SELECT k, max(rank) FROM ("
    f" SELECT p.k, (SELECT {_RANK} FROM iocs i WHERE ioc_inet(i.type, i.value) >>= p.net"
    "   AND i.type IN ('cidr', 'ipv6') AND i.type = 'cidr' AND masklen(CAST(i.value AS inet)) >= p.shortest) AS rank"
    " FROM within p"
    " UNION ALL"
    f" SELECT p.k, (SELECT {_RANK} FROM iocs i WHERE ioc_inet(i.type, i.value) && p.net"
    "   AND i.type IN ('cidr', 'ipv6') AND masklen(CAST(i.value AS inet)) >= :site_prefix) FROM sites p"
    " UNION ALL"
    f" SELECT p.k, (SELECT {_RANK} FROM iocs i WHERE ioc_teredo_client(i.type, i.value) = p.client"
    "   AND i.type = 'ipv6' AND ioc_teredo_client(i.type, i.value) IS NOT NULL) FROM teredo p"
    " UNION ALL"
    f" SELECT p.k, (SELECT {_RANK} FROM iocs i WHERE ioc_teredo_clients(i.type, i.value) @> p.client"
    "   AND i.type = 'cidr' AND ioc_teredo_clients(i.type, i.value) IS NOT NULL"
    "   AND masklen(CAST(i.value AS inet)) >= :teredo_prefix) FROM teredo p"
    ") covering GROUP BY k"
)


_ORDER = Tlp.RED.at_most()  # clear ... red: array_position's rank, 1-based
_JIT_PROBES = 14  # a single host's probes (at most 7) twice: planned below PostgreSQL's jit_above_cost


def _array(items: Sequence[int | str]) -> str:
    """An array literal of numbers or addresses (no comma, quote, brace or space in any): one text parameter, cast by
    the statement. pg8000 converted a list element by element, 1.9 s of a 10,000-host auto-enrichment message's 2.4."""
    return "{" + ",".join(map(str, items)) + "}"


def covering_tlps(
    conn: Connection,
    *,
    within: Sequence[tuple[int, str, int]],
    sites: Sequence[tuple[int, str]],
    teredo: Sequence[tuple[int, int]],
    min_site_prefix: int,
    min_teredo_prefix: int,
) -> dict[int, Tlp]:
    """The strictest TLP per key of the stored IoCs covering an address without holding it, in one query: the cidr
    IoCs containing an address of `within` (key, address, the shortest prefix of a range covering it), the cidr and
    ipv6 IoCs overlapping a network of `sites` (key, a 6to4 /48; ranges from `min_site_prefix` on), the ipv6 IoCs whose
    Teredo client is an IPv4 address of `teredo` (key, the address as a number)
    and the cidr IoCs of Teredo addresses whose clients include it (ranges from `min_teredo_prefix` on).
    A key nothing covers is left out."""
    if not (within or sites or teredo):
        return {}
    params = {
        "order": _ORDER,
        "within_k": _array([k for k, _, _ in within]),
        "within": _array([a for _, a, _ in within]),
        "within_prefix": _array([p for _, _, p in within]),
        "site_prefix": min_site_prefix,
        "teredo_prefix": min_teredo_prefix,
        "sites_k": _array([k for k, _ in sites]),
        "sites": _array([n for _, n in sites]),
        "teredo_k": _array([k for k, _ in teredo]),
        "teredo": _array([c for _, c in teredo]),
    }
    if len(within) + len(sites) + len(teredo) <= _JIT_PROBES:
        rows = conn.execute(_text(_COVERING_TLPS), params).all()
    else:
        # The planner costs each probe at hundreds of rows (inet's default selectivity), so a batch's plan crossed the
        # JIT thresholds and compiled for ~0.8 s a query that runs in ~0.15 s: off for this statement, as it was.
        was = conn.execute(_text("SELECT current_setting('jit'), set_config('jit', 'off', true)")).scalar_one()
        rows = conn.execute(_text(_COVERING_TLPS), params).all()
        conn.execute(_text("SELECT set_config('jit', :was, true)"), {"was": was})
    return {int(r[0]): Tlp(_ORDER[int(r[1]) - 1]) for r in rows if r[1] is not None}


def tlps_of(conn: Connection, ioc_ids: Sequence[int]) -> dict[int, str]:
    """The TLP of each existing IoC among ioc_ids (absent ids are left out)."""
    ids = sorted({int(i) for i in ioc_ids})
    if not ids:
        return {}
    rows = conn.execute(_text("SELECT id, tlp FROM iocs WHERE id = ANY(CAST(:i AS bigint[]))"), {"i": ids})
    return {int(r[0]): str(r[1]) for r in rows}
