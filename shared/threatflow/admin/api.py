"""Routes of the admin function: users, maintenance runs, and (via Router) /health and /ready."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec

from threatflow.adapters.postgres import unit_of_work
from threatflow.auth import clearance as tlp_clearance
from threatflow.auth import service
from threatflow.auth.api import authenticator
from threatflow.auth.model import Role
from threatflow.auth.repository import UserRepository
from threatflow.jobs import runs
from threatflow.platform import events
from threatflow.platform.errors import ValidationError
from threatflow.platform.web import Request, Response, Router, decode_body
from threatflow.runtime import Runtime

MAINTENANCE_TOPIC = "maintenance"
# Job params are a few small values (flags, limits, an object name). A body may hold MAX_REQUEST_BYTES (32 MiB)
# and a Pub/Sub message 10 MB: larger params were the publisher's MessageTooLargeError, a 500.
MAX_PARAMS_BYTES = 64 * 1024


class CreateUser(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(min_length=2, max_length=64)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    role: Role = Role.READER
    clearance: str | None = None  # at most the admin's own; none: the default, lowered to the admin's


class RunJob(msgspec.Struct, forbid_unknown_fields=True):
    params: dict[str, Any] = {}


class UpdateUser(msgspec.Struct, forbid_unknown_fields=True):
    role: Role | None = None
    clearance: str | None = None
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)] | None = None


def _actor(request: Request) -> str | None:
    return request.principal.username if request.principal else None


def build_router(runtime: Runtime) -> Router:
    router = Router("admin", runtime=runtime, authenticator=authenticator(runtime))

    @router.route("GET", "/api/v1/admin/users", role=Role.ADMIN)
    def list_users(request: Request) -> dict[str, Any]:
        limit = request.query_int("limit", 100, minimum=1, maximum=1000)
        after = request.query_int("after", 0)
        with unit_of_work(runtime.engine) as conn:
            page = UserRepository(conn).list(after_id=after, limit=limit)
        return {"users": [u.public() for u in page], "next_after": page[-1].id if len(page) == limit else None}

    @router.route("POST", "/api/v1/admin/users", role=Role.ADMIN, body=CreateUser)
    def create_user(request: Request, body: CreateUser) -> Response:
        with unit_of_work(runtime.engine) as conn:
            user = service.create_user(
                username=body.username,
                password=body.password,
                role=body.role,
                users=UserRepository(conn),
                clearance=body.clearance,
                actor=_actor(request),
                actor_clearance=tlp_clearance.of(request.principal),
            )
        return Response(user.public(), status=201)

    @router.route("PATCH", "/api/v1/admin/users/{username}", role=Role.ADMIN, body=UpdateUser)
    def update_user(request: Request, body: UpdateUser) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            user = service.update_user(
                username=request.path_params["username"],
                role=body.role,
                clearance=body.clearance,
                password=body.password,
                users=UserRepository(conn),
                actor=_actor(request),
                actor_clearance=tlp_clearance.of(request.principal),
            )
        return user.public()

    @router.route("GET", "/api/v1/admin/security-events", role=Role.ADMIN)
    def security_events(request: Request) -> dict[str, Any]:
        """Lockouts and account changes, newest first; `before` pages back."""
        limit = request.query_int("limit", 100, minimum=1, maximum=1000)
        before = request.query_int("before", 0) or None
        with unit_of_work(runtime.engine) as conn:
            page = UserRepository(conn).events(before_id=before, limit=limit)
        return {"events": page, "next_before": page[-1]["id"] if len(page) == limit else None}

    def set_disabled(request: Request, *, disabled: bool) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            service.set_disabled(
                username=request.path_params["username"],
                disabled=disabled,
                users=UserRepository(conn),
                actor=_actor(request),
                actor_clearance=tlp_clearance.of(request.principal),
                via="api",
            )
        return {"username": request.path_params["username"], "disabled": disabled}

    @router.route("POST", "/api/v1/admin/users/{username}/disable", role=Role.ADMIN)
    def disable_user(request: Request) -> dict[str, Any]:
        return set_disabled(request, disabled=True)

    @router.route("POST", "/api/v1/admin/users/{username}/enable", role=Role.ADMIN)
    def enable_user(request: Request) -> dict[str, Any]:
        return set_disabled(request, disabled=False)

    @router.route("POST", "/api/v1/admin/users/{username}/revoke", role=Role.ADMIN)
    def revoke_tokens(request: Request) -> dict[str, Any]:
        principal = request.principal
        assert principal is not None
        with unit_of_work(runtime.engine) as conn:
            service.revoke_tokens(
                username=request.path_params["username"],
                users=UserRepository(conn),
                actor=principal.username,
                actor_clearance=tlp_clearance.of(principal),
                token_version=None,  # an admin route: their own token was checked on this request
                via="api",
            )
        return {"username": request.path_params["username"], "tokens_revoked": True}

    @router.route("POST", "/api/v1/admin/jobs/{job}/run", role=Role.ADMIN)
    def run_job(request: Request) -> Response:
        job = request.path_params["job"]
        runs.require_job(job)
        body = decode_body(request.body, RunJob) if request.body else RunJob()
        data = events.encode({"params": body.params, "requested_by": request.principal.username if request.principal else None})
        if len(data) > MAX_PARAMS_BYTES:
            raise ValidationError(f"params take {len(data)} bytes as a message; at most {MAX_PARAMS_BYTES}", field="params")
        runs.validate_params(job, body.params)  # before anything is queued: a typo must not run with the defaults
        run_id = uuid.uuid4().hex
        message_id = runtime.publisher.publish(MAINTENANCE_TOPIC, data, {"job": job, "run_id": run_id})
        return Response(
            {"run_id": run_id, "job": job, "message_id": message_id, "status_url": f"/api/v1/admin/runs/{run_id}"},
            status=202,
        )

    @router.route("GET", "/api/v1/admin/runs/{run_id}", role=Role.ANALYST)
    def get_run(request: Request) -> dict[str, Any]:
        return runs.get_run(request.path_params["run_id"], documents=runtime.documents)

    @router.route("GET", "/api/v1/admin/runs", role=Role.ANALYST)
    def recent_runs(request: Request) -> dict[str, Any]:
        limit = request.query_int("limit", 50, minimum=1, maximum=500)
        return {"runs": runs.recent_runs(documents=runtime.documents, limit=limit)}

    return router
