"""Threat use cases: batch upsert with per-item results, lookups, search, stats,
IoC links and correlation. Dependencies come in as keyword arguments."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from threatflow.platform.errors import ConflictError, NotFoundError, PayloadTooLargeError, ValidationError
from threatflow.platform.pagination import decode_cursor, encode_cursor
from threatflow.platform.vocabulary import Tlp
from threatflow.threats import repository as store
from threatflow.threats.attack import check_id_format
from threatflow.threats.model import (
    CUT_FIELDS,
    MAX_RELATIONS_PER_LINK,
    ResultStatus,
    ThreatIn,
    ThreatKind,
    ThreatResult,
    check_relation_verb,
    check_tie_tlp,
    clean_name,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from threatflow.threats.attack import AttackCatalog

MAX_BATCH = 1000
MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_IDS = 1000
RELATIONS_LIMIT = 500  # threat-to-threat relations GET /threats/{id} shows (`relations_truncated` past it)

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


class ThreatRelationIn(msgspec.Struct, forbid_unknown_fields=True):
    """`{id} <type> {target_id}`: an intrusion set `uses` a malware, a campaign is `attributed-to` an actor."""

    target_id: int
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "related-to"
    confidence: Annotated[int, msgspec.Meta(ge=0, le=100)] = 50
    tlp: Tlp | None = None  # the relation's own (none: the stricter of the two threats); read as every TLP is


class ThreatRelationDeleteIn(msgspec.Struct, forbid_unknown_fields=True):
    target_id: int
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


def _summary(results: Sequence[ThreatResult], started: float) -> dict[str, float]:
    summary: dict[str, float] = {status.value: 0 for status in ResultStatus}
    for result in results:
        summary[result.status] += 1
    summary["total"] = len(results)
    for key in CUT_FIELDS:  # what merges could not keep: a threat's MAX_TAGS tags, MAX_ALIASES aliases, MAX_TTPS, ...
        summary[key] = sum(r.cuts()[key] for r in results)
    summary["took_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return summary


def upsert_batch(
    raw_items: Sequence[msgspec.Raw | ThreatIn], *, conn: Connection, catalog: CatalogLoader, clearance: str
) -> dict[str, Any]:
    """Decode, validate and merge a batch in one transaction. Bad items are rejected one
    by one; a database error aborts the whole batch. The ATT&CK catalog is loaded only
    when an item names TTPs (a ConfigError names ATTACK_DATA_PATH when it is unset).
    `clearance` is the writer's: a threat above it is merged into, never re-marked (repository.upsert_threats)."""
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
    stored = store.upsert_threats(conn, [item for _, item in decoded], catalog=loaded, readable=Tlp(clearance).at_most())
    for (index, _), result in zip(decoded, stored, strict=True):
        results[index] = dataclasses.replace(result, index=index)
    ordered = [results[i] for i in range(len(raw_items))]
    return {"results": [r.to_json() for r in ordered], "summary": _summary(ordered, started)}


def _visible(visible_tlps: Sequence[str], tlp: str | None) -> bool:
    """`visible_tlps`: the TLP levels the caller may read (auth.clearance.allowed), given by the route."""
    return tlp is None or tlp in visible_tlps


def get_or_raise(conn: Connection, threat_id: int, *, catalog: AttackCatalog | None, visible_tlps: Sequence[str]) -> dict[str, Any]:
    """One threat with its IoC link counts and its TTPs named from the catalog (when one is configured).
    A threat above the caller's clearance does not exist for them (404)."""
    record = store.get_threat(conn, threat_id)
    if record is None or not _visible(visible_tlps, record.tlp):
        raise NotFoundError(f"no threat with id {threat_id}")
    count, by_relation, truncated = store.link_counts(conn, threat_id, visible_tlps=visible_tlps)
    threat = record.to_json()
    threat["ioc_count"] = count
    threat["ioc_count_by_relation"] = by_relation  # the MAX_RELATIONS_SHOWN most used relations
    threat["ioc_count_by_relation_truncated"] = truncated
    threat["ttp_details"] = catalog.describe(threat["ttps"]) if catalog else [{"id": t, "name": None} for t in threat["ttps"]]
    relations = store.relations_of_threat(conn, threat_id, limit=RELATIONS_LIMIT + 1, visible_tlps=visible_tlps)
    threat["relations"] = relations[:RELATIONS_LIMIT]  # other threats, both ways, those above the clearance left out
    threat["relations_truncated"] = len(relations) > RELATIONS_LIMIT
    return threat


def _require_visible(conn: Connection, ids: Sequence[int], *, visible_tlps: Sequence[str]) -> None:
    """NotFoundError naming the threats that do not exist or are above the caller's clearance (not told apart)."""
    missing = sorted(set(ids) - store.visible_threat_ids(conn, ids, visible_tlps=visible_tlps))
    if missing:
        raise NotFoundError(f"no threat with id {', '.join(str(m) for m in missing)}")


def relate(
    conn: Connection, threat_id: int, body: ThreatRelationIn, *, visible_tlps: Sequence[str], source: str | None
) -> tuple[dict[str, Any], bool]:
    """`threat_id <type> target_id`; both threats must be within the writer's clearance (404 otherwise, as links),
    and so must its `tlp` (403). Returns the relation, with its TLP now when the writer is cleared for it, and whether
    it is new; a pair already holding MAX_RELATIONS_PER_LINK verbs is a 409."""
    if body.target_id == threat_id:
        raise ValidationError("a threat cannot be related to itself", field="target_id")
    _require_visible(conn, [threat_id, body.target_id], visible_tlps=visible_tlps)
    verb = check_relation_verb(body.type)
    tlp = check_tie_tlp(body.tlp, visible_tlps=visible_tlps)
    key = (threat_id, body.target_id, verb)
    made = store.relate_threats(conn, [key], confidence=body.confidence, source=source, tlp=tlp, relabel_within=visible_tlps)
    if made.missing:  # deleted since it was looked up
        raise NotFoundError(f"no threat with id {', '.join(str(m) for m in sorted(made.missing))}")
    if made.full:
        raise ConflictError(f"threats {threat_id} and {body.target_id} already hold {MAX_RELATIONS_PER_LINK} relations; remove one first")
    relation: dict[str, Any] = {"source_id": threat_id, "target_id": body.target_id, "type": verb}
    if made.tlps.get(key) in visible_tlps:  # a held relation above the writer's clearance keeps its TLP, unshown
        relation["tlp"] = made.tlps[key]
    return relation, bool(made.new)


def unrelate(conn: Connection, threat_id: int, body: ThreatRelationDeleteIn, *, visible_tlps: Sequence[str]) -> dict[str, Any]:
    """Removes `threat_id -> target_id` relations (of one verb, or all); both threats within the clearance."""
    _require_visible(conn, [threat_id, body.target_id], visible_tlps=visible_tlps)
    return {
        "deleted": store.unrelate_threats(
            conn, source_id=threat_id, target_id=body.target_id, visible_tlps=visible_tlps, relation=body.type
        )
    }


def _page(rows: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    page = rows[:limit]
    return {"threats": page, "count": len(page), "next_cursor": encode_cursor(page[-1]["id"]) if len(rows) > limit else None}


def find(conn: Connection, request: FindRequest, *, visible_tlps: Sequence[str]) -> dict[str, Any]:
    """Keyset pages, newest first. Every filter uses an index except text (ILIKE over a small table)."""
    kinds = None if request.kind is None else [k.value for k in (request.kind if isinstance(request.kind, list) else [request.kind])]
    rows = store.find_threats(
        conn,
        kinds=kinds,
        ttp=check_id_format(request.ttp) if request.ttp is not None else None,
        tag=request.tag.strip().lower() if request.tag is not None else None,
        alias_name=clean_name(request.alias) if request.alias is not None else None,  # keyed in SQL (_THREATS_NAMED)
        text=request.text,
        after_id=decode_cursor(request.cursor) if request.cursor else None,
        limit=request.limit + 1,  # one extra row tells whether there is a next page
        visible_tlps=visible_tlps,
    )
    return _page(rows, request.limit)


def by_ttp(
    conn: Connection,
    technique: str,
    *,
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
    rows = store.find_threats(
        conn, ttps_any=searched, after_id=decode_cursor(cursor) if cursor else None, limit=limit + 1, visible_tlps=visible_tlps
    )
    page = _page(rows, limit)
    technique_info = catalog.get(tid)
    return {"technique": technique_info.to_json() if technique_info else {"id": tid}, "searched": searched, **page}


def delete(conn: Connection, ids: Sequence[int], *, visible_tlps: Sequence[str]) -> dict[str, Any]:
    """Delete threats by id; their links and names go with them (ON DELETE CASCADE). One above `visible_tlps`
    (the admin's clearance) is not found, as on every read."""
    deleted = store.delete_threats(conn, ids, visible_tlps=visible_tlps)
    return {"deleted": len(deleted), "not_found": sorted(set(ids) - deleted)}


def stats(conn: Connection, *, catalog: AttackCatalog | None, visible_tlps: Sequence[str]) -> dict[str, Any]:
    """Counts over the threats (and their links) the caller is cleared to see."""
    out = store.stats(conn, visible_tlps=visible_tlps)
    out["top_ttps"] = [
        {"id": t["id"], "name": catalog.name(t["id"]) if catalog else None, "threats": t["threats"]} for t in out["top_ttps"]
    ]
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
