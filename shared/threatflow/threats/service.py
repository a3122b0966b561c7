"""Threat use cases: batch upsert with per-item results, lookups, search, stats,
IoC links and correlation. Dependencies come in as keyword arguments."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from threatflow.platform.errors import NotFoundError, PayloadTooLargeError, ValidationError
from threatflow.threats import repository as store
from threatflow.threats.attack import check_id_format
from threatflow.threats.model import ResultStatus, ThreatIn, ThreatKind, ThreatResult, check_relation_verb, name_key

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


class LinkIn(msgspec.Struct, forbid_unknown_fields=True):
    ioc_ids: Annotated[list[int], msgspec.Meta(min_length=1, max_length=MAX_IDS)]
    relation: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "indicates"
    confidence: Annotated[int, msgspec.Meta(ge=0, le=100)] = 50


class UnlinkIn(msgspec.Struct, forbid_unknown_fields=True):
    ioc_ids: Annotated[list[int], msgspec.Meta(min_length=1, max_length=MAX_IDS)]
    relation: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


class CorrelateIn(msgspec.Struct, forbid_unknown_fields=True):
    threat_id: int
    threshold: Annotated[int, msgspec.Meta(ge=0, le=100)] = 70
    link: bool = True
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 200


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


def _visible(visible_tlps: Sequence[str], tlp: str | None) -> bool:
    """`visible_tlps`: the TLP levels the caller may read (auth.clearance.allowed), given by the route."""
    return tlp is None or tlp in visible_tlps


def get_or_raise(threat_id: int, *, engine: Engine, catalog: AttackCatalog | None, visible_tlps: Sequence[str]) -> dict[str, Any]:
    """One threat with its IoC link counts and its TTPs named from the catalog (when one is configured)."""
    with engine.connect() as conn:
        threat = store.get_threat(conn, threat_id)
        if threat is None or not _visible(visible_tlps, threat.get("tlp")):
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


def _page(
    sql_where: list[str], params: dict[str, Any], *, limit: int, cursor: str | None, engine: Engine, visible_tlps: Sequence[str]
) -> dict[str, Any]:
    from threatflow.iocs.search import decode_cursor, encode_cursor

    visible, visible_params = "tlp = ANY(CAST(:visible_tlps AS text[]))", {"visible_tlps": list(visible_tlps)}
    where = [*sql_where, visible]
    params = {**params, **visible_params}
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


def find(request: FindRequest, *, engine: Engine, visible_tlps: Sequence[str]) -> dict[str, Any]:
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
    return _page(where, params, limit=request.limit, cursor=request.cursor, engine=engine, visible_tlps=visible_tlps)


def by_ttp(
    technique: str,
    *,
    engine: Engine,
    catalog: AttackCatalog,
    visible_tlps: Sequence[str],
    exact: bool = False,
    limit: int = DEFAULT_PAGE,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Threats using a technique. A parent technique (T1059) also finds its sub-techniques
    (T1059.001...) unless exact; a sub-technique finds only itself. Unknown or revoked
    ids are a 400 that names them."""
    (tid,) = catalog.validate([technique])
    searched = [tid] if exact or "." in tid else [tid, *catalog.subtechniques(tid)]
    page = _page(
        ["ttps && CAST(:ttps AS text[])"], {"ttps": searched}, limit=limit, cursor=cursor, engine=engine, visible_tlps=visible_tlps
    )
    technique_info = catalog.get(tid)
    return {"technique": technique_info.to_json() if technique_info else {"id": tid}, "searched": searched, **page}


def by_ioc(ioc_id: int, *, engine: Engine, visible_tlps: Sequence[str]) -> dict[str, Any]:
    """Threats linked to an IoC, each with the link's relation, confidence and source."""
    ioc_visible, ioc_params = "tlp = ANY(CAST(:ioc_tlps AS text[]))", {"ioc_tlps": list(visible_tlps)}
    threat_visible, threat_params = "t.tlp = ANY(CAST(:threat_tlps AS text[]))", {"threat_tlps": list(visible_tlps)}
    with engine.connect() as conn:
        seen = conn.execute(_text(f"SELECT 1 FROM iocs WHERE id = :i AND {ioc_visible}"), {"i": ioc_id, **ioc_params}).first()  # noqa: S608
        if seen is None:
            raise NotFoundError(f"no indicator with id {ioc_id}")
        rows = conn.execute(
            _text(
                "SELECT t.id, t.kind, t.name, t.aliases, l.relation, l.confidence, l.source, l.created_at"  # noqa: S608 - constant clause
                f" FROM threat_iocs l JOIN threats t ON t.id = l.threat_id WHERE l.ioc_id = :i AND {threat_visible}"
                " ORDER BY l.confidence DESC, t.id, l.relation"
            ),
            {"i": ioc_id, **threat_params},
        ).all()
    threats = [
        {
            "id": int(r[0]),
            "kind": r[1],
            "name": r[2],
            "aliases": list(r[3]),
            "relation": r[4],
            "confidence": int(r[5]),
            "source": r[6],
            "linked_at": r[7].isoformat(),
        }
        for r in rows
    ]
    return {"ioc_id": ioc_id, "threats": threats, "count": len(threats)}


def delete(ids: Sequence[int], *, engine: Engine) -> dict[str, Any]:
    """Delete threats by id; their links and names go with them (ON DELETE CASCADE)."""
    with engine.begin() as conn:
        deleted = {
            int(r[0])
            for r in conn.execute(_text("DELETE FROM threats WHERE id = ANY(CAST(:i AS bigint[])) RETURNING id"), {"i": list(ids)})
        }
    return {"deleted": len(deleted), "not_found": sorted(set(ids) - deleted)}


def stats(*, engine: Engine, catalog: AttackCatalog | None, visible_tlps: Sequence[str]) -> dict[str, Any]:
    """Counts over the threats (and their links) the caller is cleared to see."""
    out: dict[str, Any] = {}
    visible = {"v": list(visible_tlps)}
    threats_seen = "(SELECT * FROM threats WHERE tlp = ANY(CAST(:v AS text[]))) AS threats"
    links_seen = (
        "(SELECT l.* FROM threat_iocs l JOIN threats t ON t.id = l.threat_id JOIN iocs i ON i.id = l.ioc_id"
        " WHERE t.tlp = ANY(CAST(:v AS text[])) AND i.tlp = ANY(CAST(:v AS text[]))) AS l"
    )
    sql = {  # constant clauses only; the clearance is a bound parameter
        "total": f"SELECT count(*) FROM {threats_seen}",  # noqa: S608
        "by_kind": f"SELECT kind, count(*) FROM {threats_seen} GROUP BY 1 ORDER BY 2 DESC, 1",  # noqa: S608
        "ttps": f"SELECT t, count(*) FROM {threats_seen}, unnest(ttps) AS t GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20",  # noqa: S608
        "tags": f"SELECT t, count(*) FROM {threats_seen}, unnest(tags) AS t GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20",  # noqa: S608
        "links": f"SELECT count(*), count(DISTINCT ioc_id), count(DISTINCT threat_id) FROM {links_seen}",  # noqa: S608
        "by_relation": f"SELECT relation, count(*) FROM {links_seen} GROUP BY 1 ORDER BY 2 DESC",  # noqa: S608
        "top": (
            f"SELECT t.id, t.name, count(DISTINCT l.ioc_id) FROM {links_seen} JOIN threats t ON t.id = l.threat_id"  # noqa: S608
            " GROUP BY 1, 2 ORDER BY 3 DESC, 1 LIMIT 20"
        ),
        "relations": (
            "SELECT count(*) FROM ioc_relations r JOIN iocs a ON a.id = r.source_id JOIN iocs b ON b.id = r.target_id"
            " WHERE a.tlp = ANY(CAST(:v AS text[])) AND b.tlp = ANY(CAST(:v AS text[]))"
        ),
    }
    with engine.connect() as conn:

        def rows(name: str) -> list[Any]:
            return list(conn.execute(_text(sql[name]), visible).all())

        out["total"] = int(rows("total")[0][0])
        out["by_kind"] = {str(k): int(v) for k, v in rows("by_kind")}
        out["top_ttps"] = [{"id": r[0], "name": catalog.name(r[0]) if catalog else None, "threats": int(r[1])} for r in rows("ttps")]
        out["top_tags"] = [{"tag": r[0], "threats": int(r[1])} for r in rows("tags")]
        links, iocs, threats = rows("links")[0]
        by_relation = {str(k): int(v) for k, v in rows("by_relation")}
        top = rows("top")
        relations = int(rows("relations")[0][0])
    out["links"] = {
        "total": int(links),
        "iocs_linked": int(iocs),
        "threats_with_iocs": int(threats),
        "by_relation": by_relation,
        "top_threats": [{"id": int(r[0]), "name": r[1], "iocs": int(r[2])} for r in top],
    }
    out["ioc_relations"] = relations
    return out


def link(threat_id: int, body: LinkIn, *, engine: Engine, source: str | None) -> dict[str, Any]:
    """Link IoCs to a threat; each id is reported: linked, already_linked or not_found."""
    relation = check_relation_verb(body.relation)
    with engine.begin() as conn:
        if not store.threat_exists(conn, threat_id):
            raise NotFoundError(f"no threat with id {threat_id}")
        known = store.existing_ioc_ids(conn, body.ioc_ids)
        new = store.link_iocs(
            conn, threat_id=threat_id, ioc_ids=sorted(known), relation=relation, confidence=body.confidence, source=source
        )
    results = []
    for ioc_id in dict.fromkeys(body.ioc_ids):
        status = "not_found" if ioc_id not in known else ("linked" if ioc_id in new else "already_linked")
        results.append(
            {"ioc_id": ioc_id, "status": status, **({"reason": f"no indicator with id {ioc_id}"} if status == "not_found" else {})}
        )
    return {"threat_id": threat_id, "relation": relation, "results": results, "summary": _count(results)}


def unlink(threat_id: int, body: UnlinkIn, *, engine: Engine) -> dict[str, Any]:
    """Remove links; each id is reported: unlinked (with the number of links removed) or not_linked."""
    if body.relation is not None:
        check_relation_verb(body.relation)
    with engine.begin() as conn:
        if not store.threat_exists(conn, threat_id):
            raise NotFoundError(f"no threat with id {threat_id}")
        removed = store.unlink_iocs(conn, threat_id=threat_id, ioc_ids=body.ioc_ids, relation=body.relation)
    results = [
        {"ioc_id": i, "status": "unlinked", "removed": removed[i]} if i in removed else {"ioc_id": i, "status": "not_linked"}
        for i in dict.fromkeys(body.ioc_ids)
    ]
    return {"threat_id": threat_id, "results": results, "summary": _count(results)}


def _count(results: Sequence[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for result in results:
        out[result["status"]] = out.get(result["status"], 0) + 1
    out["total"] = len(results)
    return out


def correlate(body: CorrelateIn, *, engine: Engine, visible_tlps: Sequence[str]) -> dict[str, Any]:
    """Correlation for a threat the caller may see; candidates above their clearance are left out of the answer."""
    from threatflow.intel import correlate as correlation

    with engine.begin() as conn:
        row = conn.execute(_text("SELECT tlp FROM threats WHERE id = :i"), {"i": body.threat_id}).first()
        if row is None or not _visible(visible_tlps, row[0]):
            raise NotFoundError(f"no threat with id {body.threat_id}")
        result = correlation.correlate(conn, threat_id=body.threat_id, threshold=body.threshold, link=body.link, limit=body.limit)
        ids = [c["ioc_id"] for c in result["candidates"]]
        seen = {
            int(r[0])
            for r in conn.execute(
                _text("SELECT id FROM iocs WHERE id = ANY(CAST(:i AS bigint[])) AND tlp = ANY(CAST(:v AS text[]))"),
                {"i": ids, "v": list(visible_tlps)},
            )
        }
    result["candidates"] = [c for c in result["candidates"] if c["ioc_id"] in seen]
    return result


def parse_bool(text: str | None, name: str) -> bool:
    if text is None or text == "":
        return False
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValidationError(f"query parameter {name!r} must be true or false", field=name)
