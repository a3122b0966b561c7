"""Threat use cases: batch upsert with per-item results, lookups, search, stats,
IoC links and correlation. Dependencies come in as keyword arguments."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from threatflow.platform.errors import NotFoundError, PayloadTooLargeError, ValidationError
from threatflow.platform.pagination import decode_cursor, encode_cursor
from threatflow.threats import repository as store
from threatflow.threats.attack import check_id_format
from threatflow.threats.model import ResultStatus, ThreatIn, ThreatKind, ThreatResult, name_key

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from threatflow.threats.attack import AttackCatalog

MAX_BATCH = 1000
MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_IDS = 1000

CatalogLoader = Callable[[], "AttackCatalog"]


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    # Raw items: each is decoded alone, so one bad item is rejected without the rest.
    threats: list[msgspec.Raw]


class FindRequest(msgspec.Struct, forbid_unknown_fields=True):
    kind: ThreatKind | list[ThreatKind] | None = None
    ttp: str | None = None
    tag: str | None = None
    alias: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None  # a name or an alias, case-insensitive
    text: Annotated[str, msgspec.Meta(min_length=2, max_length=256)] | None = None  # in name, aliases or description
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE
    cursor: str | None = None


class IdsIn(msgspec.Struct, forbid_unknown_fields=True):
    ids: Annotated[list[int], msgspec.Meta(min_length=1, max_length=MAX_IDS)]


def _text(sql: str) -> Any:
    from sqlalchemy import text

    return text(sql)


def _summary(results: Sequence[ThreatResult], started: float) -> dict[str, float]:
    summary: dict[str, float] = {status.value: 0 for status in ResultStatus}
    for result in results:
        summary[result.status] += 1
    summary["total"] = len(results)
    summary["took_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return summary


def upsert_batch(raw_items: Sequence[msgspec.Raw | ThreatIn], *, engine: Engine, catalog: CatalogLoader) -> dict[str, Any]:
    """Decode, validate and merge a batch in one transaction. Bad items are rejected one
    by one; a database error aborts the whole batch. The ATT&CK catalog is loaded only
    when an item names TTPs (a ConfigError names ATTACK_DATA_PATH when it is unset)."""
    if len(raw_items) > MAX_BATCH:
        raise PayloadTooLargeError(f"at most {MAX_BATCH} threats per batch; got {len(raw_items)}")
    started = time.perf_counter()
    results: dict[int, ThreatResult] = {}
    decoded: list[tuple[int, ThreatIn]] = []
    for index, raw in enumerate(raw_items):
        try:
            decoded.append((index, raw if isinstance(raw, ThreatIn) else msgspec.json.decode(raw, type=ThreatIn)))
        except msgspec.ValidationError as exc:
            results[index] = ThreatResult(index, ResultStatus.REJECTED.value, reason=str(exc).replace("`$.", "`"))
    loaded = catalog() if any(item.ttps for _, item in decoded) else None
    with engine.begin() as conn:
        stored = store.upsert_threats(conn, [item for _, item in decoded], catalog=loaded)
    for (index, _), result in zip(decoded, stored, strict=True):
        results[index] = ThreatResult(index, result.status, id=result.id, reason=result.reason)
    ordered = [results[i] for i in range(len(raw_items))]
    return {"results": [r.to_json() for r in ordered], "summary": _summary(ordered, started)}


def get_or_raise(threat_id: int, *, engine: Engine, catalog: AttackCatalog | None) -> dict[str, Any]:
    """One threat with its IoC link counts and its TTPs named from the catalog (when one is configured)."""
    with engine.connect() as conn:
        threat = store.get_threat(conn, threat_id)
        if threat is None:
            raise NotFoundError(f"no threat with id {threat_id}")
        by_relation = {
            str(r[0]): int(r[1])
            for r in conn.execute(
                _text("SELECT relation, count(*) FROM threat_iocs WHERE threat_id = :i GROUP BY 1 ORDER BY 1"), {"i": threat_id}
            )
        }
        count = conn.execute(_text("SELECT count(DISTINCT ioc_id) FROM threat_iocs WHERE threat_id = :i"), {"i": threat_id}).scalar_one()
    threat["ioc_count"] = int(count)
    threat["ioc_count_by_relation"] = by_relation
    threat["ttp_details"] = catalog.describe(threat["ttps"]) if catalog else [{"id": t, "name": None} for t in threat["ttps"]]
    return threat


def _page(sql_where: list[str], params: dict[str, Any], *, limit: int, cursor: str | None, engine: Engine) -> dict[str, Any]:
    where = list(sql_where)
    if cursor:
        where.append("id < :after_id")
        params["after_id"] = decode_cursor(cursor)
    params["limit"] = limit + 1  # one extra row tells whether there is a next page
    sql = f"SELECT {store.THREAT_COLUMNS} FROM threats WHERE {' AND '.join(where) or 'TRUE'} ORDER BY id DESC LIMIT :limit"  # noqa: S608
    with engine.connect() as conn:
        rows = conn.execute(_text(sql), params).all()
    page = [store.row_to_threat(r) for r in rows[:limit]]
    return {"threats": page, "count": len(page), "next_cursor": encode_cursor(page[-1]["id"]) if len(rows) > limit else None}


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def find(request: FindRequest, *, engine: Engine) -> dict[str, Any]:
    """Keyset pages, newest first. Every filter uses an index except text (ILIKE over a small table)."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if request.kind is not None:
        kinds = request.kind if isinstance(request.kind, list) else [request.kind]
        where.append("kind = ANY(CAST(:kinds AS text[]))")
        params["kinds"] = [k.value for k in kinds]
    if request.ttp is not None:
        where.append("ttps @> CAST(:ttp AS text[])")
        params["ttp"] = [check_id_format(request.ttp)]
    if request.tag is not None:
        where.append("tags @> CAST(:tag AS text[])")
        params["tag"] = [request.tag.strip().lower()]
    if request.alias is not None:
        where.append("id IN (SELECT threat_id FROM threat_names WHERE name_key = :alias)")
        params["alias"] = name_key(request.alias)
    if request.text is not None:
        where.append(
            "(name ILIKE :text ESCAPE '\\' OR array_to_string(aliases, ' ') ILIKE :text ESCAPE '\\' OR description ILIKE :text ESCAPE '\\')"
        )
        params["text"] = _like(request.text)
    return _page(where, params, limit=request.limit, cursor=request.cursor, engine=engine)


def by_ttp(
    technique: str, *, engine: Engine, catalog: AttackCatalog, exact: bool = False, limit: int = DEFAULT_PAGE, cursor: str | None = None
) -> dict[str, Any]:
    """Threats using a technique. A parent technique (T1059) also finds its sub-techniques
    (T1059.001...) unless exact; a sub-technique finds only itself. Unknown or revoked
    ids are a 400 that names them."""
    (tid,) = catalog.validate([technique])
    searched = [tid] if exact or "." in tid else [tid, *catalog.subtechniques(tid)]
    page = _page(["ttps && CAST(:ttps AS text[])"], {"ttps": searched}, limit=limit, cursor=cursor, engine=engine)
    technique_info = catalog.get(tid)
    return {"technique": technique_info.to_json() if technique_info else {"id": tid}, "searched": searched, **page}


def delete(ids: Sequence[int], *, engine: Engine) -> dict[str, Any]:
    """Delete threats by id; their links and names go with them (ON DELETE CASCADE)."""
    with engine.begin() as conn:
        deleted = {
            int(r[0])
            for r in conn.execute(_text("DELETE FROM threats WHERE id = ANY(CAST(:i AS bigint[])) RETURNING id"), {"i": list(ids)})
        }
    return {"deleted": len(deleted), "not_found": sorted(set(ids) - deleted)}


def stats(*, engine: Engine, catalog: AttackCatalog | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        out["total"] = int(conn.execute(_text("SELECT count(*) FROM threats")).scalar_one())
        out["by_kind"] = {
            str(k): int(v) for k, v in conn.execute(_text("SELECT kind, count(*) FROM threats GROUP BY 1 ORDER BY 2 DESC, 1"))
        }
        top_ttps = conn.execute(_text("SELECT t, count(*) FROM threats, unnest(ttps) AS t GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20")).all()
        out["top_ttps"] = [{"id": r[0], "name": catalog.name(r[0]) if catalog else None, "threats": int(r[1])} for r in top_ttps]
        top_tags = conn.execute(_text("SELECT t, count(*) FROM threats, unnest(tags) AS t GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20")).all()
        out["top_tags"] = [{"tag": r[0], "threats": int(r[1])} for r in top_tags]
        links, iocs, threats = conn.execute(
            _text("SELECT count(*), count(DISTINCT ioc_id), count(DISTINCT threat_id) FROM threat_iocs")
        ).one()
        by_relation = {
            str(k): int(v) for k, v in conn.execute(_text("SELECT relation, count(*) FROM threat_iocs GROUP BY 1 ORDER BY 2 DESC"))
        }
        top = conn.execute(
            _text(
                "SELECT t.id, t.name, count(DISTINCT l.ioc_id) FROM threat_iocs l JOIN threats t ON t.id = l.threat_id"
                " GROUP BY 1, 2 ORDER BY 3 DESC, 1 LIMIT 20"
            )
        ).all()
        relations = int(conn.execute(_text("SELECT count(*) FROM ioc_relations")).scalar_one())
    out["links"] = {
        "total": int(links),
        "iocs_linked": int(iocs),
        "threats_with_iocs": int(threats),
        "by_relation": by_relation,
        "top_threats": [{"id": int(r[0]), "name": r[1], "iocs": int(r[2])} for r in top],
    }
    out["ioc_relations"] = relations
    return out


def parse_bool(text: str | None, name: str) -> bool:
    if text is None or text == "":
        return False
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValidationError(f"query parameter {name!r} must be true or false", field=name)
