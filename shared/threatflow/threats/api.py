"""Routes of the threats function (/api/v1/threats).

    POST   /api/v1/threats/batch              {"threats": [ThreatIn...]} -> per-item results (analyst)
    POST   /api/v1/threats/find               filters kind, ttp, tag, alias, text; keyset pages
    GET    /api/v1/threats/stats              by kind, top TTPs and tags, link counts
    GET    /api/v1/threats/{id}               one threat, its IoC counts and named TTPs
    GET    /api/v1/threats/by-ioc/{ioc_id}    threats linked to an IoC
    GET    /api/v1/threats/by-ttp/{technique} threats using a technique (a parent includes its
                                              sub-techniques unless ?exact=true)
    POST   /api/v1/threats/{id}/link          {"ioc_ids", "relation", "confidence"} (analyst)
    POST   /api/v1/threats/{id}/unlink        {"ioc_ids", "relation"?} (analyst)
    POST   /api/v1/threats/{id}/relations     {"target_id", "type"?: related-to, "confidence"?} (analyst)
    DELETE /api/v1/threats/{id}/relations     {"target_id", "type"?} (analyst)
    POST   /api/v1/threats/correlate          {"threat_id", "threshold", "link", "limit"} (analyst)
    DELETE /api/v1/threats                    {"ids": [...]} (admin)

TTPs are checked against the runtime's ATT&CK snapshot (ATTACK_DATA_PATH or the synced one; see attack.py).
"""

from __future__ import annotations

from typing import Any

from threatflow.adapters.postgres import unit_of_work
from threatflow.auth import clearance as tlp_clearance
from threatflow.auth.api import authenticator
from threatflow.auth.model import Role
from threatflow.intel import links
from threatflow.intel.links import CorrelateIn, LinkIn, UnlinkIn
from threatflow.platform.errors import ConfigError
from threatflow.platform.web import Request, Response, Router
from threatflow.runtime import Runtime
from threatflow.threats.service import (
    DEFAULT_PAGE,
    MAX_PAGE,
    BatchIn,
    FindRequest,
    IdsIn,
    ThreatRelationDeleteIn,
    ThreatRelationIn,
)


def build_router(runtime: Runtime) -> Router:
    from threatflow.threats import attack, service

    router = Router("threats", runtime=runtime, authenticator=authenticator(runtime))

    def catalog() -> attack.AttackCatalog:
        return runtime.attack().get()  # the runtime's snapshot: loaded once, re-read when synced

    def optional_catalog() -> attack.AttackCatalog | None:
        # Reads still answer without ATT&CK data; TTP names are then null.
        try:
            return catalog()
        except ConfigError:
            return None

    def visible(request: Request) -> list[str]:
        """The TLP levels the caller is cleared for (auth/clearance.py)."""
        return tlp_clearance.allowed(tlp_clearance.of(request.principal))

    def actor(request: Request) -> str | None:
        return f"user:{request.principal.username}" if request.principal else None

    @router.route("POST", "/api/v1/threats/batch", role=Role.ANALYST, body=BatchIn)
    def batch(request: Request, body: BatchIn) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            return service.upsert_batch(body.threats, conn=conn, catalog=catalog, clearance=tlp_clearance.of(request.principal))

    @router.route("POST", "/api/v1/threats/find", role=Role.READER, body=FindRequest)
    def find(request: Request, body: FindRequest) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            return service.find(conn, body, visible_tlps=visible(request))

    @router.route("GET", "/api/v1/threats/stats", role=Role.READER)
    def stats(request: Request) -> dict[str, Any]:
        catalog_or_none = optional_catalog()
        with unit_of_work(runtime.engine) as conn:
            return service.stats(conn, catalog=catalog_or_none, visible_tlps=visible(request))

    @router.route("POST", "/api/v1/threats/correlate", role=Role.ANALYST, body=CorrelateIn)
    def correlate(request: Request, body: CorrelateIn) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            return links.correlate(conn, body, visible_tlps=visible(request))

    @router.route("GET", "/api/v1/threats/by-ioc/{ioc_id:int}", role=Role.READER)
    def by_ioc(request: Request) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            return links.by_ioc(conn, int(request.path_params["ioc_id"]), visible_tlps=visible(request))

    @router.route("GET", "/api/v1/threats/by-ttp/{technique}", role=Role.READER)
    def by_ttp(request: Request) -> dict[str, Any]:
        loaded = catalog()
        exact = service.parse_bool(request.query.get("exact"), "exact")
        limit = request.query_int("limit", DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)
        with unit_of_work(runtime.engine) as conn:
            return service.by_ttp(
                conn,
                request.path_params["technique"],
                catalog=loaded,
                visible_tlps=visible(request),
                exact=exact,
                limit=limit,
                cursor=request.query.get("cursor"),
            )

    @router.route("GET", "/api/v1/threats/{threat_id:int}", role=Role.READER)
    def get(request: Request) -> dict[str, Any]:
        catalog_or_none = optional_catalog()
        with unit_of_work(runtime.engine) as conn:
            return service.get_or_raise(conn, int(request.path_params["threat_id"]), catalog=catalog_or_none, visible_tlps=visible(request))

    @router.route("POST", "/api/v1/threats/{threat_id:int}/link", role=Role.ANALYST, body=LinkIn)
    def link(request: Request, body: LinkIn) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            return links.link(conn, int(request.path_params["threat_id"]), body, source=actor(request), visible_tlps=visible(request))

    @router.route("POST", "/api/v1/threats/{threat_id:int}/unlink", role=Role.ANALYST, body=UnlinkIn)
    def unlink(request: Request, body: UnlinkIn) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            return links.unlink(conn, int(request.path_params["threat_id"]), body, visible_tlps=visible(request))

    @router.route("POST", "/api/v1/threats/{threat_id:int}/relations", role=Role.ANALYST, body=ThreatRelationIn)
    def add_relation(request: Request, body: ThreatRelationIn) -> Response:
        with unit_of_work(runtime.engine) as conn:
            relation, created = service.relate(
                conn, int(request.path_params["threat_id"]), body, visible_tlps=visible(request), source=actor(request)
            )
        return Response({**relation, "created": created}, status=201 if created else 200)

    @router.route("DELETE", "/api/v1/threats/{threat_id:int}/relations", role=Role.ANALYST, body=ThreatRelationDeleteIn)
    def delete_relation(request: Request, body: ThreatRelationDeleteIn) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            return service.unrelate(conn, int(request.path_params["threat_id"]), body, visible_tlps=visible(request))

    @router.route("DELETE", "/api/v1/threats", role=Role.ADMIN, body=IdsIn)
    def delete(request: Request, body: IdsIn) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            return service.delete(conn, body.ids, visible_tlps=visible(request))

    return router
