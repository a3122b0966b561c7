"""Routes of the iocs function (/api/v1/iocs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from threatflow.adapters.postgres import unit_of_work
from threatflow.auth import clearance as tlp_clearance
from threatflow.auth.api import authenticator
from threatflow.auth.model import Role
from threatflow.enrichment import api as enrichment_api
from threatflow.enrichment import handlers as enrichment_handlers
from threatflow.intel import api as intel_api
from threatflow.intel import relations_api
from threatflow.iocs import repository, search, service, warninglist_routes
from threatflow.iocs.model import DecayPolicy, IocRecord, Tlp
from threatflow.iocs.search import FindRequest, IocFilter
from threatflow.iocs.types import IocType
from threatflow.platform import limits
from threatflow.platform.errors import NotFoundError, ValidationError
from threatflow.platform.snapshots import Loaded
from threatflow.platform.vocabulary import new_record_tlp
from threatflow.platform.web import Request, Response, Router
from threatflow.runtime import Runtime

STATS_REFRESH_SECONDS = 60  # how old /stats counts may be
# IoCs one DELETE removes, by ids or by filter: one transaction holding locks on millions outlasted the statement timeout.
MAX_DELETE_PER_CALL = 10_000


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
    router = Router("iocs", runtime=runtime, authenticator=authenticator(runtime))

    def policies() -> dict[str, DecayPolicy]:
        return runtime.decay_policies().get()  # re-read every POLICY_REFRESH_SECONDS

    def readable(request: Request) -> list[str]:
        """The TLPs the caller may read, and so write or delete (auth/clearance.py)."""
        return tlp_clearance.allowed(tlp_clearance.of(request.principal))

    def ioc_id(request: Request) -> int:
        try:
            return int(request.path_params["ioc_id"])
        except ValueError:
            raise ValidationError("id must be an integer", field="id") from None

    def visible(request: Request, ioc: IocRecord) -> IocRecord:
        """An IoC above the caller's TLP clearance does not exist for them (404)."""
        tlp_clearance.require(tlp_clearance.of(request.principal), ioc.tlp, what=f"indicator with id {ioc.id}")
        return ioc

    def capped(request: Request, find_request: FindRequest) -> FindRequest:
        ceiling = tlp_clearance.cap(find_request.max_tlp.value if find_request.max_tlp else None, tlp_clearance.of(request.principal))
        return msgspec.structs.replace(find_request, max_tlp=Tlp(ceiling))

    def with_score(ioc: IocRecord) -> dict[str, Any]:
        return {**ioc.to_json(), "score_explanation": service.explain_score(ioc, policies=policies(), now=runtime.clock.now())}

    @router.route("POST", "/api/v1/iocs/batch", role=Role.ANALYST, body=service.BatchIn)
    def batch(request: Request, body: service.BatchIn) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            result = service.upsert_batch(
                body.iocs,
                conn=conn,
                now=runtime.clock.now(),
                policies=policies(),
                warninglists=runtime.warninglist_matcher(),
                clearance=(clearance := tlp_clearance.of(request.principal)),
                new_tlp=new_record_tlp(clearance),
            )
        assert request.principal is not None  # an analyst route
        # After commit; one small publish, within the writer's enrichment budget; never fails the upsert.
        result["auto_enrichment"] = enrichment_handlers.auto_enrich(runtime, result["results"], writer=request.principal.username)
        return result

    @router.route("POST", "/api/v1/iocs/find", role=Role.READER, body=FindRequest)
    def find(request: Request, body: FindRequest) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            return search.find(conn, capped(request, body), now=runtime.clock.now())

    @router.route("GET", "/api/v1/iocs/policies", role=Role.READER)
    def list_policies(request: Request) -> dict[str, Any]:
        now = runtime.clock.now()
        with unit_of_work(runtime.engine) as conn:
            return {"policies": [policy_json(p, now) for _, p in sorted(repository.policies(conn).items())]}

    @router.route("PUT", "/api/v1/iocs/policies/{ioc_type}", role=Role.ADMIN, body=PolicyIn)
    def set_policy(request: Request, body: PolicyIn) -> dict[str, Any]:
        name = request.path_params["ioc_type"].lower()
        if name not in {t.value for t in IocType}:
            raise NotFoundError(f"no IoC type {name!r}; types: {', '.join(t.value for t in IocType)}")
        wanted = DecayPolicy(name, body.ttl_days, body.decay_lifetime_days, body.decay_speed, body.expired_below)
        with unit_of_work(runtime.engine) as conn:
            updated = repository.set_policy(conn, wanted)
        if updated is None:
            raise NotFoundError(f"no policy row for {name!r}; run threatflow db migrate")
        runtime.decay_policies().invalidate()  # this instance at once; the others within POLICY_REFRESH_SECONDS
        return policy_json(updated, runtime.clock.now())

    @router.route("GET", "/api/v1/iocs/stats", role=Role.READER)
    def stats(request: Request) -> dict[str, Any]:
        visible = readable(request)

        def load(version: str | None) -> Loaded[dict[str, Any]]:
            now = runtime.clock.now()
            with unit_of_work(runtime.engine) as conn:
                return Loaded({**repository.stats(conn, now=now, visible_tlps=visible), "as_of": now.isoformat()})

        # Seven full-table counts (2.7 s on 1,000,000 IoCs): once per STATS_REFRESH_SECONDS per instance and clearance.
        counted = runtime.snapshot(f"ioc-stats:{','.join(visible)}", load=load, refresh_seconds=STATS_REFRESH_SECONDS, retry_seconds=0)
        return dict(counted.get())

    @router.route("GET", "/api/v1/iocs/expired", role=Role.READER)
    def expired(request: Request) -> dict[str, Any]:
        find_request = FindRequest(
            expired=True, limit=request.query_int("limit", 100, minimum=1, maximum=1000), cursor=request.query.get("cursor")
        )
        with unit_of_work(runtime.engine) as conn:
            return search.find(conn, capped(request, find_request), now=runtime.clock.now())

    @router.route("GET", "/api/v1/iocs/value/{value:path}", role=Role.READER)
    def by_value(request: Request) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            value, type_ = request.path_params["value"], request.query.get("type")
            return with_score(service.get_by_value(conn, value, type_, clearance=tlp_clearance.of(request.principal)))

    @router.route("GET", "/api/v1/iocs/{ioc_id:int}", role=Role.READER)
    def get(request: Request) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            record = visible(request, service.get_or_raise(conn, ioc_id(request)))
            ioc = with_score(record)
            ioc["sightings"] = repository.sightings(conn, record.id, limit=20)
        ioc["enrichment"] = enrichment_api.ioc_summary(runtime, record.id)
        return ioc

    @router.route("POST", "/api/v1/iocs/{ioc_id:int}/sightings", role=Role.ANALYST, body=SightingIn)
    def sighting(request: Request, body: SightingIn) -> Response:
        # Zone and range, as the batch checks them: 0001-01-01T00:00:00+05:00 (1 BC in UTC) reached PostgreSQL, a 500.
        now = runtime.clock.now()
        seen_at = limits.check_aware(body.seen_at, field="seen_at") if body.seen_at else now
        with unit_of_work(runtime.engine) as conn:
            ioc = service.add_sighting(
                conn, ioc_id(request), seen_at=seen_at, source=body.source, context=body.context, readable=readable(request), now=now
            )
        return Response(ioc, status=201)

    @router.route("DELETE", "/api/v1/iocs", role=Role.ADMIN, body=DeleteRequest)
    def delete(request: Request, body: DeleteRequest) -> dict[str, Any]:
        actor = request.principal.username if request.principal else None
        if body.ids:
            if body.filter is not None:
                raise ValidationError("give ids or filter, not both", field="filter")
            if len(body.ids) > MAX_DELETE_PER_CALL:  # read at call time, as tests lower it
                raise ValidationError(f"at most {MAX_DELETE_PER_CALL} ids per call", field="ids")
            with unit_of_work(runtime.engine) as conn:
                deleted = repository.delete_ids(conn, body.ids, actor=actor, reason={"ids": len(body.ids)}, readable=readable(request))
            return {"deleted": deleted, "more": False}
        if body.filter is None:
            raise ValidationError("give ids, or a filter with confirm: true", field="ids")
        if not body.confirm:
            raise ValidationError("deleting by filter needs confirm: true", field="confirm")
        compiled = search.compile_filter(body.filter, now=runtime.clock.now())
        if compiled.where == "TRUE":
            raise ValidationError("an empty filter would delete everything; name at least one filter", field="filter")
        with unit_of_work(runtime.engine) as conn:
            outcome = repository.delete_matching(
                conn,
                compiled,
                limit=MAX_DELETE_PER_CALL,
                actor=actor,
                reason={"filter": msgspec.to_builtins(body.filter)},
                readable=readable(request),
            )
        return {"deleted": outcome.deleted, "more": outcome.more}

    warninglist_routes.register(router, runtime)
    intel_api.register(router, runtime)
    relations_api.register(router, runtime)
    enrichment_api.register_ioc_routes(router, runtime)
    return router
