"""Routes of the auth function."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from threatflow.adapters.postgres import unit_of_work
from threatflow.auth import service, tokens
from threatflow.auth.guard import LoginGuard
from threatflow.auth.model import Role
from threatflow.auth.repository import SecurityState, UserRepository
from threatflow.platform.web import Request, Router
from threatflow.runtime import Runtime


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


def authenticator(runtime: Runtime) -> service.BearerAuthenticator:
    """The wiring of the HTTP pipeline's authentication, shared by every function's router."""

    def security_state(user_id: int) -> SecurityState | None:
        with unit_of_work(runtime.engine) as conn:
            return UserRepository(conn).security_state(user_id)

    return service.BearerAuthenticator(settings=runtime.settings, security_state=security_state)


def build_router(runtime: Runtime) -> Router:
    router = Router("auth", runtime=runtime, authenticator=authenticator(runtime))
    config = tokens.TokenSettings.from_settings(runtime.settings)  # fails start-up without JWT_SECRET
    guard = login_guard(runtime)

    @router.route("POST", "/api/v1/auth/token", role=None, body=TokenRequest, rate_limit="login")
    def token(request: Request, body: TokenRequest) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            return service.login(
                username=body.username,
                password=body.password,
                users=UserRepository(conn),
                config=config,
                now=runtime.clock.now(),
                guard=guard,
                client_ip=request.client_ip,
            )

    @router.route("GET", "/api/v1/auth/me", role=Role.READER)
    def me(request: Request) -> dict[str, Any]:
        principal = request.principal
        assert principal is not None
        return {
            "username": principal.username,
            "role": principal.role.value,
            "user_id": principal.user_id,
            "clearance": principal.clearance,
        }

    @router.route("POST", "/api/v1/auth/revoke", role=Role.READER)
    def revoke(request: Request) -> dict[str, Any]:
        """End every token of the caller's account, this one included."""
        principal = request.principal
        assert principal is not None
        with unit_of_work(runtime.engine) as conn:
            service.revoke_tokens(
                username=principal.username,
                users=UserRepository(conn),
                actor=principal.username,
                actor_clearance=None,  # their own account
                token_version=principal.version,  # checked under the row lock: this reader route's check may be 30 s old
                via="api",
            )
        return {"username": principal.username, "tokens_revoked": True}

    return router


def login_guard(runtime: Runtime) -> LoginGuard:
    """Per-account lockout in Redis (behind the circuit breaker), bounded concurrent hashing, audit records."""
    from threatflow.adapters.redis import AccountLockout

    def record_event(kind: str, **fields: Any) -> None:
        # Its own unit of work: the audit record outlives the failed login's rolled-back one.
        with unit_of_work(runtime.engine) as conn:
            UserRepository(conn).record_event(kind, **fields)

    s = runtime.settings
    lockout = (
        AccountLockout(
            runtime.redis,
            breaker=runtime.redis_breaker,
            max_failures=s.login_max_failures,
            base_seconds=s.login_lockout_seconds,
            max_seconds=s.login_lockout_max_seconds,
        )
        if s.redis_url
        else None
    )
    return LoginGuard(
        lockout=lockout,
        concurrent_hashes=s.login_concurrent_hashes,
        hash_share_percent=s.login_hash_share_percent,
        record_event=record_event,
    )
