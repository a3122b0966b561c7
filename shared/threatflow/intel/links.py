"""Threat-to-IoC links and correlation: the use cases that need both domains.

Each function takes the caller's connection (one unit of work per request or
message, opened by the route or handler)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from threatflow.intel import correlate as correlation
from threatflow.intel import repository
from threatflow.platform.errors import NotFoundError
from threatflow.platform.vocabulary import Tlp
from threatflow.threats.model import MAX_RELATIONS_PER_LINK, check_relation_verb, check_tie_tlp
from threatflow.threats.repository import get_threat

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

MAX_IDS = 1000
THREATS_LIMIT = 500  # threats one IoC's reads show (by-ioc, related); a hub IoC links to tens of thousands


class LinkIn(msgspec.Struct, forbid_unknown_fields=True):
    ioc_ids: Annotated[list[int], msgspec.Meta(min_length=1, max_length=MAX_IDS)]
    relation: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "indicates"
    confidence: Annotated[int, msgspec.Meta(ge=0, le=100)] = 50
    tlp: Tlp | None = None  # the links' own (none: the stricter of the two ends); read as every TLP is


class UnlinkIn(msgspec.Struct, forbid_unknown_fields=True):
    ioc_ids: Annotated[list[int], msgspec.Meta(min_length=1, max_length=MAX_IDS)]
    relation: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


class CorrelateIn(msgspec.Struct, forbid_unknown_fields=True):
    threat_id: int
    threshold: Annotated[int, msgspec.Meta(ge=0, le=100)] = 70
    link: bool = True
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 200


def by_ioc(conn: Connection, ioc_id: int, *, visible_tlps: Sequence[str]) -> dict[str, Any]:
    """Threats linked to an IoC, each with the link's relation, confidence and source, the strongest
    THREATS_LIMIT (`truncated` says more exist); the IoC and the threats are those the caller is
    cleared for (`visible_tlps`)."""
    if not repository.visible_ioc_ids(conn, [ioc_id], visible_tlps=visible_tlps):
        raise NotFoundError(f"no indicator with id {ioc_id}")
    threats = repository.threats_of_ioc(conn, ioc_id, limit=THREATS_LIMIT + 1, visible_tlps=visible_tlps)
    shown = threats[:THREATS_LIMIT]
    return {"ioc_id": ioc_id, "threats": shown, "count": len(shown), "truncated": len(threats) > THREATS_LIMIT}


def _require_visible_threat(conn: Connection, threat_id: int, *, visible_tlps: Sequence[str]) -> None:
    """A threat above the writer's clearance does not exist for them, as on every read (404)."""
    threat = get_threat(conn, threat_id)
    if threat is None or threat.tlp not in visible_tlps:
        raise NotFoundError(f"no threat with id {threat_id}")


def link(conn: Connection, threat_id: int, body: LinkIn, *, source: str | None, visible_tlps: Sequence[str]) -> dict[str, Any]:
    """Link IoCs to a threat; each id is reported: linked, already_linked (with the link's TLP now when the writer
    is cleared for it), relations_full (the pair holds MAX_RELATIONS_PER_LINK other relations) or not_found (also an
    IoC above `visible_tlps`, the writer's clearance, as is the threat itself: not found). A `tlp` above the
    clearance is a 403."""
    relation = check_relation_verb(body.relation)
    tlp = check_tie_tlp(body.tlp, visible_tlps=visible_tlps)
    _require_visible_threat(conn, threat_id, visible_tlps=visible_tlps)
    known = repository.visible_ioc_ids(conn, body.ioc_ids, visible_tlps=visible_tlps)
    linked = repository.link_iocs(
        conn,
        threat_id=threat_id,
        ioc_ids=sorted(known),
        relation=relation,
        confidence=body.confidence,
        source=source,
        tlp=tlp,
        relabel_within=visible_tlps,
    )
    reasons = {
        "not_found": lambda i: f"no indicator with id {i}",
        "relations_full": lambda i: f"threat {threat_id} and indicator {i} are linked by {MAX_RELATIONS_PER_LINK} relations, the most",
    }
    results = []
    for ioc_id in dict.fromkeys(body.ioc_ids):
        if ioc_id not in known:
            status = "not_found"
        elif ioc_id in linked.full:
            status = "relations_full"
        else:
            status = "linked" if ioc_id in linked.new else "already_linked"
        result: dict[str, Any] = {"ioc_id": ioc_id, "status": status}
        if status in reasons:
            result["reason"] = reasons[status](ioc_id)
        elif linked.tlps.get(ioc_id) in visible_tlps:  # a held link above the writer's clearance keeps its TLP, unshown
            result["tlp"] = linked.tlps[ioc_id]
        results.append(result)
    return {"threat_id": threat_id, "relation": relation, "results": results, "summary": _count(results)}


def unlink(conn: Connection, threat_id: int, body: UnlinkIn, *, visible_tlps: Sequence[str]) -> dict[str, Any]:
    """Remove links; each id is reported: unlinked (with the number of links removed) or not_linked (also an IoC
    above `visible_tlps`, the writer's clearance; a threat above it is not found)."""
    relation = check_relation_verb(body.relation) if body.relation is not None else None
    _require_visible_threat(conn, threat_id, visible_tlps=visible_tlps)
    visible = sorted(repository.visible_ioc_ids(conn, body.ioc_ids, visible_tlps=visible_tlps))
    removed = repository.unlink_iocs(conn, threat_id=threat_id, ioc_ids=visible, visible_tlps=visible_tlps, relation=relation)
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


def correlate(conn: Connection, body: CorrelateIn, *, visible_tlps: Sequence[str]) -> dict[str, Any]:
    """Correlation for a threat the caller may see; IoCs above their clearance are neither scored nor linked."""
    threat = get_threat(conn, body.threat_id)
    if threat is None or threat.tlp not in visible_tlps:
        raise NotFoundError(f"no threat with id {body.threat_id}")
    return correlation.correlate(
        conn, threat_id=body.threat_id, visible_tlps=visible_tlps, threshold=body.threshold, link=body.link, limit=body.limit
    )
