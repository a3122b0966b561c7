"""Threat and relation routes that live on the iocs function (/api/v1/iocs/...).

    GET    /api/v1/iocs/{ioc_id}/related     linked threats, IoC-to-IoC relations both ways,
                                             and IoCs that share this one's uncommon tags
    POST   /api/v1/iocs/{ioc_id}/relations   {"target_id", "type", "confidence"?} (analyst)
    DELETE /api/v1/iocs/{ioc_id}/relations   {"target_id", "type"?} (analyst)

The iocs router calls `register(router, runtime)`.

Shared tags: a tag on more than COMMON_TAG_SHARE of all IoCs (and on more than
COMMON_TAG_FLOOR of them, so a small store does not call every tag common) says
little ("malicious", "phishing") and is left out; the IoCs sharing the most of
the remaining tags come first.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from threatflow.auth import clearance as tlp_clearance
from threatflow.auth.model import Role
from threatflow.platform.errors import NotFoundError
from threatflow.platform.web import Request, Response, Router
from threatflow.threats.model import RelationType

COMMON_TAG_SHARE = 0.05
COMMON_TAG_FLOOR = 50
SHARED_LIMIT = 20
RELATIONS_LIMIT = 500


class RelationIn(msgspec.Struct, forbid_unknown_fields=True):
    target_id: int
    type: RelationType
    confidence: Annotated[int, msgspec.Meta(ge=0, le=100)] = 50


class RelationDeleteIn(msgspec.Struct, forbid_unknown_fields=True):
    target_id: int
    type: RelationType | None = None


def _text(sql: str) -> Any:
    from sqlalchemy import text

    return text(sql)


def related(conn: Any, ioc_id: int, *, clearance: str) -> dict[str, Any]:
    """Everything shown is filtered by the caller's TLP clearance (threats, related and sharing IoCs)."""
    row = conn.execute(_text("SELECT tags, tlp FROM iocs WHERE id = :i"), {"i": ioc_id}).first()
    if row is None or not tlp_clearance.can_read(clearance, row[1]):
        raise NotFoundError(f"no indicator with id {ioc_id}")
    visible = tlp_clearance.allowed(clearance)
    tags = sorted(row[0])
    threats = [
        {"id": int(r[0]), "kind": r[1], "name": r[2], "relation": r[3], "confidence": int(r[4]), "source": r[5]}
        for r in conn.execute(
            _text(
                "SELECT t.id, t.kind, t.name, l.relation, l.confidence, l.source FROM threat_iocs l JOIN threats t ON t.id = l.threat_id"
                " WHERE l.ioc_id = :i AND t.tlp = ANY(CAST(:v AS text[])) ORDER BY l.confidence DESC, t.id, l.relation"
            ),
            {"i": ioc_id, "v": visible},
        )
    ]
    relations = [
        {"direction": r[0], "type": r[1], "confidence": int(r[2]), "source": r[3], "ioc": {"id": int(r[4]), "type": r[5], "value": r[6]}}
        for r in conn.execute(
            _text(
                "(SELECT 'out', r.type, r.confidence, r.source, i.id, i.type, i.value FROM ioc_relations r"
                " JOIN iocs i ON i.id = r.target_id WHERE r.source_id = :i AND i.tlp = ANY(CAST(:v AS text[])))"
                " UNION ALL (SELECT 'in', r.type, r.confidence, r.source, i.id, i.type, i.value FROM ioc_relations r"
                " JOIN iocs i ON i.id = r.source_id WHERE r.target_id = :i AND i.tlp = ANY(CAST(:v AS text[])))"
                " ORDER BY 1 DESC, 2, 5 LIMIT :l"
            ),
            {"i": ioc_id, "l": RELATIONS_LIMIT, "v": visible},
        )
    ]
    shared, common = _shared_tags(conn, ioc_id, tags, visible)
    return {
        "ioc_id": ioc_id,
        "threats": threats,
        "relations": relations,
        "shared_evidence": shared,
        "common_tags_ignored": common,
    }


def _shared_tags(conn: Any, ioc_id: int, tags: list[str], visible: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    if not tags:
        return [], []
    # The planner's row estimate is enough to size "common"; counting is capped per tag.
    total = max(
        0, int(conn.execute(_text("SELECT GREATEST(reltuples, 0)::bigint FROM pg_class WHERE oid = 'iocs'::regclass")).scalar_one())
    )
    cap = max(COMMON_TAG_FLOOR, int(total * COMMON_TAG_SHARE))
    counts = {
        str(r[0]): int(r[1])
        for r in conn.execute(
            _text(
                "SELECT t, (SELECT count(*) FROM (SELECT 1 FROM iocs WHERE tags @> ARRAY[t] LIMIT :cap + 1) AS c)"
                " FROM unnest(CAST(:tags AS text[])) AS t"
            ),
            {"tags": tags, "cap": cap},
        )
    }
    common = sorted(t for t, n in counts.items() if n > cap)
    rare = [t for t in tags if t not in common]
    if not rare:
        return [], common
    rows = conn.execute(
        _text(
            "SELECT id, type, value, ARRAY(SELECT unnest(tags) INTERSECT SELECT unnest(CAST(:rare AS text[])) ORDER BY 1) AS shared"
            " FROM iocs WHERE tags && CAST(:rare AS text[]) AND id <> :i AND tlp = ANY(CAST(:v AS text[]))"
            " ORDER BY cardinality(ARRAY(SELECT unnest(tags) INTERSECT SELECT unnest(CAST(:rare AS text[])))) DESC, id DESC LIMIT :l"
        ),
        {"rare": rare, "i": ioc_id, "l": SHARED_LIMIT, "v": visible},
    )
    return [{"ioc": {"id": int(r[0]), "type": r[1], "value": r[2]}, "shared_tags": list(r[3])} for r in rows], common


def register(router: Router, runtime: Any) -> None:
    from threatflow.threats import repository as store

    def clearance_of(request: Request) -> str:
        return tlp_clearance.of(request.principal)

    def ioc_id_of(request: Request) -> int:
        return int(request.path_params["ioc_id"])

    @router.route("GET", "/api/v1/iocs/{ioc_id:int}/related", role=Role.READER)
    def get_related(request: Request) -> dict[str, Any]:
        with runtime.engine.connect() as conn:
            return related(conn, ioc_id_of(request), clearance=clearance_of(request))

    @router.route("POST", "/api/v1/iocs/{ioc_id:int}/relations", role=Role.ANALYST, body=RelationIn)
    def add_relation(request: Request, body: RelationIn) -> Response:
        source = f"user:{request.principal.username}" if request.principal else None
        source_id = ioc_id_of(request)
        with runtime.engine.begin() as conn:
            created = store.add_ioc_relation(
                conn, source_id=source_id, target_id=body.target_id, type=body.type, confidence=body.confidence, source=source
            )
        relation = {"source_id": source_id, "target_id": body.target_id, "type": body.type.value, "created": created}
        return Response(relation, status=201 if created else 200)

    @router.route("DELETE", "/api/v1/iocs/{ioc_id:int}/relations", role=Role.ANALYST, body=RelationDeleteIn)
    def delete_relation(request: Request, body: RelationDeleteIn) -> dict[str, Any]:
        with runtime.engine.begin() as conn:
            removed = store.remove_ioc_relation(conn, source_id=ioc_id_of(request), target_id=body.target_id, type=body.type)
        return {"deleted": removed}
