"""Routes of the iocs function (/api/v1/iocs)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

import msgspec

from threatflow.auth.model import Role
from threatflow.iocs.search import FindRequest, IocFilter
from threatflow.platform.errors import NotFoundError, ValidationError
from threatflow.platform.web import Request, Response, Router
from threatflow.runtime import Runtime

POLICY_CACHE_SECONDS = 60.0


class DeleteRequest(msgspec.Struct, forbid_unknown_fields=True):
    ids: list[int] | None = None
    filter: IocFilter | None = None
    confirm: bool = False


class SightingIn(msgspec.Struct, forbid_unknown_fields=True):
    seen_at: datetime | None = None
    source: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    context: dict[str, Any] = {}


class PolicyIn(msgspec.Struct, forbid_unknown_fields=True):
    ttl_days: Annotated[int, msgspec.Meta(ge=1, le=3650)]
    decay_lifetime_days: Annotated[int, msgspec.Meta(ge=1, le=3650)]
    decay_speed: Annotated[float, msgspec.Meta(gt=0, le=10)]
    expired_below: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0


def policy_json(policy: Any, now: datetime) -> dict[str, Any]:
    """A policy with its decay curve for a base score of 100, so the numbers explain themselves."""
    from datetime import timedelta

    lifetime = policy.decay_lifetime_days
    curve = [
        {"age_days": round(lifetime * f, 1), "score": policy.score(100, now - timedelta(days=lifetime * f), now)}
        for f in (0, 0.1, 0.25, 0.5, 0.75, 0.9, 1)
    ]
    return {
        "type": policy.type,
        "ttl_days": policy.ttl_days,
        "decay_lifetime_days": lifetime,
        "decay_speed": policy.decay_speed,
        "expired_below": policy.expired_below,
        "curve_for_base_100": curve,
    }


def build_router(runtime: Runtime) -> Router:
    from threatflow.enrichment import handlers as enrichment_handlers
    from threatflow.enrichment import ioc_routes as enrichment_routes
    from threatflow.iocs import search, service, warninglist_routes, warninglists
    from threatflow.iocs.model import DecayPolicy
    from threatflow.iocs.store import IocAdmin, IocStore

    router = Router("iocs", runtime=runtime)
    policy_cache: dict[str, Any] = {"at": 0.0, "value": None}

    def store() -> IocStore:
        return IocStore(runtime.engine)

    def policies() -> dict[str, DecayPolicy]:
        if policy_cache["value"] is None or time.monotonic() - policy_cache["at"] > POLICY_CACHE_SECONDS:
            policy_cache["value"] = store().policies()
            policy_cache["at"] = time.monotonic()
        return policy_cache["value"]  # type: ignore[no-any-return]

    def ioc_id(request: Request) -> int:
        try:
            return int(request.path_params["ioc_id"])
        except ValueError:
            raise ValidationError("id must be an integer", field="id") from None

    def with_score(ioc: dict[str, Any]) -> dict[str, Any]:
        return {**ioc, "score_explanation": service.explain_score(ioc, policies=policies(), now=runtime.clock.now())}

    @router.route("POST", "/api/v1/iocs/batch", role=Role.ANALYST, body=service.BatchIn)
    def batch(request: Request, body: service.BatchIn) -> dict[str, Any]:
        result = service.upsert_batch(
            body.iocs, store=store(), now=runtime.clock.now(), policies=policies(), warninglists=warninglists.matcher_for(runtime)
        )
        enrichment_handlers.auto_enrich(runtime, result["results"])  # one small publish; never fails the upsert
        return result

    @router.route("POST", "/api/v1/iocs/find", role=Role.READER, body=FindRequest)
    def find(request: Request, body: FindRequest) -> dict[str, Any]:
        return search.find(body, engine=runtime.engine, now=runtime.clock.now())

    @router.route("GET", "/api/v1/iocs/policies", role=Role.READER)
    def list_policies(request: Request) -> dict[str, Any]:
        now = runtime.clock.now()
        return {"policies": [policy_json(p, now) for _, p in sorted(store().policies().items())]}

    @router.route("PUT", "/api/v1/iocs/policies/{ioc_type}", role=Role.ADMIN, body=PolicyIn)
    def set_policy(request: Request, body: PolicyIn) -> dict[str, Any]:
        from threatflow.iocs.types import IocType

        name = request.path_params["ioc_type"].lower()
        if name not in {t.value for t in IocType}:
            raise NotFoundError(f"no IoC type {name!r}; types: {', '.join(t.value for t in IocType)}")
        wanted = DecayPolicy(name, body.ttl_days, body.decay_lifetime_days, body.decay_speed, body.expired_below)
        updated = store().set_policy(wanted)
        if updated is None:
            raise NotFoundError(f"no policy row for {name!r}; run threatflow db migrate")
        policy_cache["value"] = None  # this instance at once; the others within POLICY_CACHE_SECONDS
        return policy_json(updated, runtime.clock.now())

    @router.route("GET", "/api/v1/iocs/stats", role=Role.READER)
    def stats(request: Request) -> dict[str, Any]:
        return IocAdmin(runtime.engine).stats(now=runtime.clock.now())

    @router.route("GET", "/api/v1/iocs/expired", role=Role.READER)
    def expired(request: Request) -> dict[str, Any]:
        find_request = FindRequest(
            expired=True, limit=request.query_int("limit", 100, minimum=1, maximum=1000), cursor=request.query.get("cursor")
        )
        return search.find(find_request, engine=runtime.engine, now=runtime.clock.now())

    @router.route("GET", "/api/v1/iocs/value/{value:path}", role=Role.READER)
    def by_value(request: Request) -> dict[str, Any]:
        return with_score(service.get_by_value(request.path_params["value"], request.query.get("type"), store=store()))

    @router.route("GET", "/api/v1/iocs/{ioc_id:int}", role=Role.READER)
    def get(request: Request) -> dict[str, Any]:
        ioc = with_score(service.get_or_raise(ioc_id(request), store=store()))
        ioc["sightings"] = IocAdmin(runtime.engine).sightings(ioc["id"], limit=20)
        ioc["enrichment"] = enrichment_routes.summary(runtime, ioc["id"])
        return ioc

    @router.route("POST", "/api/v1/iocs/{ioc_id:int}/sightings", role=Role.ANALYST, body=SightingIn)
    def sighting(request: Request, body: SightingIn) -> Response:
        seen_at = body.seen_at or runtime.clock.now()
        if seen_at.tzinfo is None:
            raise ValidationError("seen_at needs a time zone", field="seen_at")
        ioc = IocAdmin(runtime.engine).add_sighting(ioc_id(request), seen_at=seen_at, source=body.source, context=body.context)
        if ioc is None:
            raise NotFoundError(f"no indicator with id {request.path_params['ioc_id']}")
        return Response(ioc, status=201)

    @router.route("DELETE", "/api/v1/iocs", role=Role.ADMIN, body=DeleteRequest)
    def delete(request: Request, body: DeleteRequest) -> dict[str, Any]:
        actor = request.principal.username if request.principal else None
        if body.ids:
            if body.filter is not None:
                raise ValidationError("give ids or filter, not both", field="filter")
            if len(body.ids) > 10_000:
                raise ValidationError("at most 10000 ids per call", field="ids")
            deleted = IocAdmin(runtime.engine).delete(
                "id = ANY(CAST(:ids AS bigint[]))", {"ids": body.ids}, actor=actor, reason={"ids": len(body.ids)}
            )
            return {"deleted": deleted}
        if body.filter is None:
            raise ValidationError("give ids, or a filter with confirm: true", field="ids")
        if not body.confirm:
            raise ValidationError("deleting by filter needs confirm: true", field="confirm")
        compiled = search.compile_filter(body.filter, now=runtime.clock.now())
        if compiled.where == "TRUE":
            raise ValidationError("an empty filter would delete everything; name at least one filter", field="filter")
        deleted = IocAdmin(runtime.engine).delete(
            compiled.where, compiled.params, actor=actor, reason={"filter": msgspec.to_builtins(body.filter)}
        )
        return {"deleted": deleted}

    warninglist_routes.register(router, runtime)
    from threatflow.iocs import io_routes

    io_routes.register(router, runtime)
    from threatflow.threats import ioc_routes

    ioc_routes.register(router, runtime)
    enrichment_routes.register(router, runtime)
    return router
