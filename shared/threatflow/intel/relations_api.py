"""Threat and relation routes that live on the iocs function (/api/v1/iocs/...).

    GET    /api/v1/iocs/{ioc_id}/related     linked threats, IoC-to-IoC relations both ways,
                                             and IoCs that share this one's uncommon tags
    POST   /api/v1/iocs/{ioc_id}/relations   {"target_id", "type", "confidence"?} (analyst)
    DELETE /api/v1/iocs/{ioc_id}/relations   {"target_id", "type"?} (analyst)

The iocs router calls `register(router, runtime)`.

Shared tags: a tag on more than COMMON_TAG_SHARE of all IoCs (and on more than
COMMON_TAG_FLOOR of them, so a small store does not call every tag common) says
little ("malicious", "phishing") and is left out; its IoCs are counted within the
reader's clearance, as everything the route shows; the IoCs sharing the most of
the remaining tags come first. Only the IoC's first SHARED_TAGS_LIMIT tags (sorted) are compared;
`tags_truncated` says it has more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from threatflow.adapters.postgres import unit_of_work
from threatflow.auth import clearance as tlp_clearance
from threatflow.auth.model import Role
from threatflow.intel import repository
from threatflow.intel.links import THREATS_LIMIT
from threatflow.platform.errors import NotFoundError
from threatflow.platform.vocabulary import MAX_TAGS, Tlp
from threatflow.platform.web import Request, Response, Router
from threatflow.runtime import Runtime
from threatflow.threats.model import RelationType, check_tie_tlp

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

COMMON_TAG_SHARE = 0.05
COMMON_TAG_FLOOR = 50
SHARED_LIMIT = 20
# Tags compared with other IoCs': tags are unioned on every sighting, so one IoC can hold any number
# (a 1.2 MB batch of one value stored 19,200), and each is counted and intersected against the store.
SHARED_TAGS_LIMIT = MAX_TAGS
RELATIONS_LIMIT = 500


class RelationIn(msgspec.Struct, forbid_unknown_fields=True):
    target_id: int
    type: RelationType
    confidence: Annotated[int, msgspec.Meta(ge=0, le=100)] = 50
    tlp: Tlp | None = None  # the relation's own (none: the stricter of the two IoCs); read as every TLP is


class RelationDeleteIn(msgspec.Struct, forbid_unknown_fields=True):
    target_id: int
    type: RelationType | None = None


def related(conn: Connection, ioc_id: int, *, clearance: str) -> dict[str, Any]:
    """Everything shown is filtered by the caller's TLP clearance (the IoC itself, threats, related and sharing IoCs)."""
    visible = tlp_clearance.allowed(clearance)
    tags = repository.ioc_tags(conn, ioc_id, visible_tlps=visible)
    if tags is None:
        raise NotFoundError(f"no indicator with id {ioc_id}")
    linked = repository.threats_of_ioc(conn, ioc_id, limit=THREATS_LIMIT + 1, visible_tlps=visible)
    threats = [{k: t[k] for k in ("id", "kind", "name", "relation", "confidence", "source", "tlp")} for t in linked[:THREATS_LIMIT]]
    relations = repository.relations_of_ioc(conn, ioc_id, limit=RELATIONS_LIMIT, visible_tlps=visible)
    shared, common = _shared_tags(conn, ioc_id, tags[:SHARED_TAGS_LIMIT], visible)
    return {
        "ioc_id": ioc_id,
        "threats": threats,
        "threats_truncated": len(linked) > THREATS_LIMIT,
        "relations": relations,
        "shared_evidence": shared,
        "common_tags_ignored": common,
        "tags_truncated": len(tags) > SHARED_TAGS_LIMIT,
    }


def _shared_tags(conn: Connection, ioc_id: int, tags: list[str], visible: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    if not tags:
        return [], []
    cap = max(COMMON_TAG_FLOOR, int(repository.estimated_ioc_count(conn) * COMMON_TAG_SHARE))
    counts = repository.tag_counts(conn, tags, cap=cap, visible_tlps=visible)
    common = sorted(t for t, n in counts.items() if n > cap)
    rare = [t for t in tags if t not in common]
    if not rare:
        return [], common
    return repository.iocs_sharing_tags(conn, rare, exclude_id=ioc_id, limit=SHARED_LIMIT, visible_tlps=visible), common


def register(router: Router, runtime: Runtime) -> None:
    def clearance_of(request: Request) -> str:
        return tlp_clearance.of(request.principal)

    def ioc_id_of(request: Request) -> int:
        return int(request.path_params["ioc_id"])

    @router.route("GET", "/api/v1/iocs/{ioc_id:int}/related", role=Role.READER)
    def get_related(request: Request) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            return related(conn, ioc_id_of(request), clearance=clearance_of(request))

    @router.route("POST", "/api/v1/iocs/{ioc_id:int}/relations", role=Role.ANALYST, body=RelationIn)
    def add_relation(request: Request, body: RelationIn) -> Response:
        source = f"user:{request.principal.username}" if request.principal else None
        source_id = ioc_id_of(request)
        visible = tlp_clearance.allowed(clearance_of(request))
        tlp = check_tie_tlp(body.tlp, visible_tlps=visible)
        with unit_of_work(runtime.engine) as conn:
            created, stored = repository.add_ioc_relation(
                conn,
                source_id=source_id,
                target_id=body.target_id,
                type=body.type,
                visible_tlps=visible,
                confidence=body.confidence,
                source=source,
                tlp=tlp,
            )
        relation: dict[str, Any] = {"source_id": source_id, "target_id": body.target_id, "type": body.type.value, "created": created}
        if stored in visible:  # a held relation above the writer's clearance keeps its TLP, unshown
            relation["tlp"] = stored
        return Response(relation, status=201 if created else 200)

    @router.route("DELETE", "/api/v1/iocs/{ioc_id:int}/relations", role=Role.ANALYST, body=RelationDeleteIn)
    def delete_relation(request: Request, body: RelationDeleteIn) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            removed = repository.remove_ioc_relation(
                conn,
                source_id=ioc_id_of(request),
                target_id=body.target_id,
                visible_tlps=tlp_clearance.allowed(clearance_of(request)),
                type=body.type,
            )
        return {"deleted": removed}
